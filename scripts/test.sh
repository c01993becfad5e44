#!/usr/bin/env bash
# Runs the test suite on a fresh Debian machine: installs the system packages,
# builds the plugin file (the pipeline tests load target/release/libgstflashvsr.so)
# and runs every test, optimised (candle's CPU kernels are very slow unoptimised).
# The golden fixtures and clips are read from ../shared beside the checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo build --release
cargo test --release "$@"
