//! The portable path (the candle operations a CUDA device runs) proven on the
//! CPU against the official pipeline's golden fixtures.
//!
//! `KernelPath::Portable` makes every layer skip its CPU fast path, so these
//! runs take, operation for operation, the path of a non-CPU device: one
//! `conv2d` per convolution layer, the sparse mask by bisection and the masked
//! attention in chunks (every product's operands checked against CUDA's rules,
//! `layers::device_rules`, on in test builds), RoPE tables joined
//! by broadcasting. In f32 every golden comparison must meet the same
//! tolerances as the fast path (tests/golden.rs); sparse-v1.1 also runs with
//! the gathered attention (`attention=gathered`, what CUDA runs in f32 and
//! when the fused kernel fails its check at load).
//!
//! In bf16 the intermediate tensors are not held to f32 tolerances; the final
//! u8 frames are compared with the fixture's `out.frames_u8` (all chunks of
//! the case) and must stay within [`BF16_MEAN_ABS`] and [`BF16_MAX_ABS`]. On
//! the CPU the convolutions still compute in f32 (candle's CPU `conv2d` has no
//! bf16 kernel), so what bf16 changes here is the DiT, the LQ projection's
//! linears and the activations stored between layers.
//!
//! Measured against the fixtures' `out.frames_u8` (u8 levels, mean / max):
//!
//! | case        | bf16 fast path | bf16 portable path |
//! |-------------|----------------|--------------------|
//! | tiny-v1     | 0.131 / 3      | 0.130 / 2          |
//! | sparse-v1.1 | 0.140 / 5      | 0.141 / 6          |
//!
//! so the portable path loses nothing to the fast one in bf16. The bounds are
//! about twice the worst measurement (mean 0.3, max 12 levels): room for
//! rounding that differs with summation order, while a mean error of 0.3
//! levels is still well under the one-level rounding step of the output.

mod common;

use candle_core::{DType, Device, Result};
use gstflashvsr::devtools::parity::{self, Comparison, GoldenCase};
use gstflashvsr::engine::AttentionKernel;
use gstflashvsr::layers::kernels::KernelPath;
use gstflashvsr::model::ModelOptions;

/// Mean absolute difference, in u8 levels, allowed between the bf16 portable
/// path's output frames and the f32 fixture.
const BF16_MEAN_ABS: f32 = 0.3;
/// Largest single difference, in u8 levels, allowed for the bf16 portable path.
const BF16_MAX_ABS: f32 = 12.0;

fn portable(dtype: DType, attention: AttentionKernel) -> ModelOptions {
    ModelOptions {
        device: Device::Cpu,
        dtype,
        kernels: KernelPath::Portable,
        attention,
        decoder: gstflashvsr::model::decoder::DecoderKind::Tiny,
    }
}

/// Runs `case` on the portable path in `dtype` with `attention`, printing
/// every comparison.
fn run_case(
    case: &str,
    dtype: DType,
    attention: AttentionKernel,
) -> Result<Option<Vec<Comparison>>> {
    let Some(dir) = common::golden_case(case) else {
        return Ok(None);
    };
    let case = GoldenCase::load(&dir)?;
    let results = parity::check_pipeline(&case, &portable(dtype, attention), |c| {
        println!("{dtype:?} {attention} {c}")
    })?;
    Ok(Some(results))
}

/// Every comparison of the case within the fast path's f32 tolerances.
fn assert_f32_parity(case: &str) -> Result<()> {
    assert_f32_parity_with(case, AttentionKernel::Auto)
}

/// [`assert_f32_parity`] with the attention path `attention`.
fn assert_f32_parity_with(case: &str, attention: AttentionKernel) -> Result<()> {
    let Some(results) = run_case(case, DType::F32, attention)? else {
        return Ok(());
    };
    common::assert_comparisons_pass(case, &results);
    for kind in [
        "lq_latents",
        "block0.out",
        "mask",
        "noise_pred",
        "decoded",
        "out.frames_u8",
    ] {
        assert!(
            results.iter().any(|c| c.name.contains(kind)),
            "{case}: {kind} was not compared"
        );
    }
    Ok(())
}

/// The final frames of the bf16 run within the stated bounds.
fn assert_bf16_frames(case: &str) -> Result<()> {
    let Some(results) = run_case(case, DType::BF16, AttentionKernel::Auto)? else {
        return Ok(());
    };
    let Some(frames) = results.iter().find(|c| c.name == "out.frames_u8") else {
        panic!("{case}: the output frames were not compared");
    };
    assert!(
        frames.mean_abs <= BF16_MEAN_ABS && frames.max_abs <= BF16_MAX_ABS,
        "{case} in bf16: {frames}; bounds: mean {BF16_MEAN_ABS}, max {BF16_MAX_ABS}"
    );
    Ok(())
}

#[test]
fn tiny_v1_portable_f32_matches_the_official_pipeline() -> Result<()> {
    assert_f32_parity("tiny-v1")
}

#[test]
fn sparse_v1_1_portable_f32_matches_the_official_pipeline() -> Result<()> {
    assert_f32_parity("sparse-v1.1")
}

/// The gathered attention path (the one CUDA falls back to when the fused
/// kernel fails its check, and runs in f32) against the fixtures.
#[test]
fn sparse_v1_1_gathered_attention_f32_matches_the_official_pipeline() -> Result<()> {
    assert_f32_parity_with("sparse-v1.1", AttentionKernel::Gathered)
}

#[test]
fn tiny_v1_portable_bf16_frames_stay_close() -> Result<()> {
    assert_bf16_frames("tiny-v1")
}

#[test]
fn sparse_v1_1_portable_bf16_frames_stay_close() -> Result<()> {
    assert_bf16_frames("sparse-v1.1")
}
