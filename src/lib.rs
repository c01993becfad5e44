//! gst-flashvsr: streaming video super-resolution with FlashVSR as a GStreamer
//! element. `layers` and `model` are the network, `weights` reads its files,
//! `pixels` converts frames, `engine` turns the network into frames in / frames
//! out, `flashvsr` is the element; `devtools` (feature `devtools`) holds the
//! parity check, random model folders and benchmark replays. `block_reuse` is
//! the global allocator: large freed blocks kept for the next of their size.

use gst::glib;

pub mod block_reuse;

#[cfg(feature = "devtools")]
pub mod devtools;
pub mod engine;
mod flashvsr;
pub mod layers;
pub mod model;
pub mod pixels;
pub mod weights;

#[cfg(test)]
mod test_util;

#[global_allocator]
static ALLOCATOR: block_reuse::BlockReuse = block_reuse::BlockReuse::new();

/// What the global allocator's cache of large blocks has done so far.
pub fn allocator_stats() -> block_reuse::Stats {
    ALLOCATOR.stats()
}

/// Sends the large blocks the global allocator keeps back to the system.
pub fn release_kept_blocks() {
    ALLOCATOR.release_kept();
}

/// Runs `f` with the global allocator keeping no freed block.
pub fn without_keeping_blocks<T>(f: impl FnOnce() -> T) -> T {
    ALLOCATOR.without_keeping(f)
}

pub use engine::{ColorFix, ModelVersion, Precision};
pub use flashvsr::{FlashVsr, MODEL_DIR_ENV};

fn plugin_init(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    flashvsr::register(plugin)
}

gst::plugin_define!(
    flashvsr,
    env!("CARGO_PKG_DESCRIPTION"),
    plugin_init,
    concat!(env!("CARGO_PKG_VERSION"), "-", env!("COMMIT_ID")),
    "MIT/X11",
    env!("CARGO_PKG_NAME"),
    env!("CARGO_PKG_NAME"),
    env!("CARGO_PKG_REPOSITORY"),
    env!("BUILD_REL_DATE")
);
