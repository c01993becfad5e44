//! The model against the official pipeline's golden fixtures.

mod common;

use candle_core::{DType, Device, Result, Tensor};
use gstflashvsr::devtools::parity::{self, GoldenCase};
use gstflashvsr::layers::kernels::KernelPath;
use gstflashvsr::layers::sparse_attention::SparseConfig;
use gstflashvsr::model::{CancelToken, FlashVsrModel, ModelOptions, schedule};

fn cpu_f32() -> ModelOptions {
    ModelOptions {
        device: Device::Cpu,
        dtype: DType::F32,
        kernels: KernelPath::Fast,
        attention: gstflashvsr::engine::AttentionKernel::Auto,
        decoder: gstflashvsr::model::decoder::DecoderKind::Tiny,
    }
}

/// The case's comparisons on the CPU in f32, every one within its bounds.
fn passing_pipeline(case: &GoldenCase) -> Result<Vec<parity::Comparison>> {
    passing_pipeline_with(case, &cpu_f32())
}

/// The case's comparisons with `opts`, every one within its dtype's bounds.
fn passing_pipeline_with(
    case: &GoldenCase,
    opts: &ModelOptions,
) -> Result<Vec<parity::Comparison>> {
    let results = parity::check_pipeline(case, opts, |c| println!("{c}"))?;
    common::assert_comparisons_pass(&case.dir.display().to_string(), &results);
    Ok(results)
}

fn assert_parity(case: &str) -> Result<()> {
    let Some(dir) = common::golden_case(case) else {
        return Ok(());
    };
    let case = GoldenCase::load(&dir)?;
    let bicubic = parity::check_bicubic(&case)?.expect("the fixture holds lq_u8");
    assert!(bicubic.ok, "{bicubic}");
    let results = passing_pipeline(&case)?;
    // every kind of tensor the case holds was compared
    for kind in [
        "lq_latents",
        "block0.out",
        "noise_pred",
        "latents",
        "decoded",
        "mask",
        "kv_windows",
        "out.frames_u8",
    ] {
        assert!(
            results.iter().any(|c| c.name.contains(kind)),
            "{kind} was not compared"
        );
    }
    Ok(())
}

#[test]
fn tiny_v1_matches_the_official_pipeline() -> Result<()> {
    assert_parity("tiny-v1")
}

#[test]
fn sparse_v1_1_matches_the_official_pipeline() -> Result<()> {
    assert_parity("sparse-v1.1")
}

/// bf16 on the CPU: with AVX512_BF16 the LQ projection's and the DiT's
/// products run in bf16 (f32 sums, f32 activations) and the whole case stays
/// within the bf16 bounds stated in `parity::Tolerances::BF16`; elsewhere bf16
/// runs candle's ops, held to the same bounds.
#[test]
fn tiny_v1_in_bf16_stays_within_the_bf16_bounds() -> Result<()> {
    let Some(dir) = common::golden_case("tiny-v1") else {
        return Ok(());
    };
    let case = GoldenCase::load(&dir)?;
    let opts = ModelOptions {
        dtype: DType::BF16,
        ..cpu_f32()
    };
    let model = FlashVsrModel::load(&case.model_dir(), &opts)?;
    let want = if gstflashvsr::layers::products::bf16_available() {
        gstflashvsr::layers::products::CpuProducts::Bf16
    } else {
        gstflashvsr::layers::products::CpuProducts::F32
    };
    assert_eq!(model.cpu_products(), want);
    drop(model);
    let results = passing_pipeline_with(&case, &opts)?;
    assert!(results.iter().any(|c| c.name == "out.frames_u8"));
    Ok(())
}

/// Runs chunk 0's DiT pass of the tiny-v1 case with its RoPE time positions
/// starting at `time_offset`, on a fresh KV cache.
fn dit_chunk0_at(model: &FlashVsrModel, case: &GoldenCase, time_offset: usize) -> Result<Tensor> {
    let noise = case.noise()?.narrow(2, 0, 6)?;
    let features = case.tensor("chunk0.lq_latents")?.squeeze(0)?;
    let s = &case.settings;
    let sparse = SparseConfig::new(s.sparse_ratio, s.kv_ratio, s.local_range, s.height, s.width);
    let mut state = model.dit().new_state();
    model.dit().forward(
        &noise,
        &[features],
        time_offset,
        &sparse,
        &mut state,
        None,
        &CancelToken::new(),
    )
}

#[test]
fn rope_positions_are_unbounded_and_only_differences_matter() -> Result<()> {
    let Some(dir) = common::golden_case("tiny-v1") else {
        return Ok(());
    };
    let case = GoldenCase::load(&dir)?;
    let model = FlashVsrModel::load(&case.model_dir(), &cpu_f32())?;
    let at_zero = dit_chunk0_at(&model, &case, 0)?;
    // chunk 1001's positions: past the official 1,024-entry table
    let far = schedule::chunk_noise_frames(1001).start;
    assert!(far > 1024);
    for offset in [far, 1_000_000] {
        let shifted = dit_chunk0_at(&model, &case, offset)?;
        let diff = (&shifted - &at_zero)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(
            diff < 1e-4,
            "shifting RoPE by {offset} changed the output by {diff}"
        );
    }
    // and the unshifted pass is the fixture's chunk 0
    let want = case.tensor("chunk0.noise_pred")?;
    let err = (at_zero - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
    assert!(err < 1e-3, "{err}");
    Ok(())
}

/// The GPU bundle's compact form of a case (`scripts/gpu-bundle.sh`) checks the
/// model as the full case does: the same input frames (made from `lr_frames`
/// exactly), the same masks and output frames.
#[test]
fn a_compact_case_checks_as_the_full_one() -> Result<()> {
    let Some(dir) = common::golden_case("sparse-v1.1") else {
        return Ok(());
    };
    let full = GoldenCase::load(&dir)?;
    let scratch = common::Scratch::new("compact");
    let report = parity::write_compact(&full, &scratch.0)?;
    assert!(report.dropped.contains(&"lq_u8".to_owned()), "{report:?}");
    for kept in ["lr_frames", "noise", "out.frames_u8", "chunk3.block1.mask"] {
        assert!(report.kept.contains(&kept.to_owned()), "{kept}: {report:?}");
    }
    assert!(scratch.0.join("tolerances.txt").is_file());
    let compact = GoldenCase::load(&scratch.0)?;
    assert!(parity::check_bicubic(&compact)?.is_none());
    assert_eq!(compact.lq_frames()?, full.lq_frames()?);
    let results = passing_pipeline(&compact)?;
    for kind in ["mask", "latents", "kv_windows", "out.frames_u8"] {
        assert!(results.iter().any(|c| c.name.contains(kind)), "{kind}");
    }
    Ok(())
}
