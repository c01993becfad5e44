//! The CPU's bf16 path against the golden fixtures on any processor: with the
//! bf16 products emulated where AVX512_BF16 is missing (exactly what its
//! instruction computes, in f32 arithmetic), a `precision=bf16` model runs the
//! LQ projection's, the DiT's and the decoder's middle stage's products in
//! bf16 and must stay within the bf16 bounds (`parity::Tolerances::BF16`).
//! Without it, CI on processors lacking the instruction would never run that
//! path. The emulation is process-wide, hence a test binary of its own.

mod common;

use candle_core::{DType, Device, Result};
use gstflashvsr::devtools::parity::{self, GoldenCase};
use gstflashvsr::layers::kernels::KernelPath;
use gstflashvsr::layers::products::{self, CpuProducts};
use gstflashvsr::model::{FlashVsrModel, ModelOptions};

fn cpu_bf16() -> ModelOptions {
    ModelOptions {
        device: Device::Cpu,
        dtype: DType::BF16,
        kernels: KernelPath::Fast,
        attention: gstflashvsr::engine::AttentionKernel::Auto,
        decoder: gstflashvsr::model::decoder::DecoderKind::Tiny,
    }
}

fn assert_bf16_parity(name: &str) -> Result<()> {
    let Some(dir) = common::golden_case(name) else {
        return Ok(());
    };
    products::emulate_bf16_products(true);
    let case = GoldenCase::load(&dir)?;
    let opts = cpu_bf16();
    let model = FlashVsrModel::load(&case.model_dir(), &opts)?;
    assert_eq!(model.cpu_products(), CpuProducts::Bf16);
    drop(model);
    let results = parity::check_pipeline(&case, &opts, |c| println!("{c}"))?;
    common::assert_comparisons_pass(&format!("{name} in bf16 (emulated products)"), &results);
    assert!(results.iter().any(|c| c.name == "out.frames_u8"));
    // The products did run in bf16: they move the latents by about 2^-8 of
    // their scale, where f32 stays within 1e-4 (2.5e-5 on tiny-v1).
    let latents = results
        .iter()
        .filter(|c| c.name.ends_with(".latents"))
        .map(|c| c.max_abs)
        .fold(0f32, f32::max);
    assert!(latents > 1e-3, "latents max_abs {latents}");
    Ok(())
}

#[test]
fn tiny_v1_in_bf16_products_stays_within_the_bf16_bounds() -> Result<()> {
    assert_bf16_parity("tiny-v1")
}

#[test]
fn sparse_v1_1_in_bf16_products_stays_within_the_bf16_bounds() -> Result<()> {
    assert_bf16_parity("sparse-v1.1")
}
