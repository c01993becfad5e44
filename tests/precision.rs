//! Half-precision compute paths against the f32 one on a golden case.

mod common;

use candle_core::{DType, Device, Result};
use gstflashvsr::devtools::parity::GoldenCase;
use gstflashvsr::layers::kernels::KernelPath;
use gstflashvsr::model::{FlashVsrModel, ModelOptions, schedule};
use gstflashvsr::pixels::frames;

/// Output frames of the first two chunks of `case` computed in `dtype`.
fn first_chunks(case: &GoldenCase, dtype: DType) -> Result<Vec<Vec<u8>>> {
    let model = FlashVsrModel::load(
        &case.model_dir(),
        &ModelOptions {
            device: Device::Cpu,
            dtype,
            kernels: KernelPath::Fast,
            attention: gstflashvsr::engine::AttentionKernel::Auto,
            decoder: gstflashvsr::model::decoder::DecoderKind::Tiny,
        },
    )?;
    let mut state = model.new_sequence(&case.stream_config())?;
    let lq_u8 = case.tensor("lq_u8")?;
    let (_, h, w, _) = lq_u8.dims4()?;
    let mut out = Vec::new();
    for k in 0..2 {
        let span = schedule::chunk_lq_span(k);
        let frames_u8: Vec<Vec<u8>> = span
            .clone()
            .map(|i| lq_u8.get(i)?.flatten_all()?.to_vec1::<u8>())
            .collect::<Result<_>>()?;
        let refs: Vec<&[u8]> = frames_u8.iter().map(Vec::as_slice).collect();
        let lq = frames::rgb_to_tensor(&refs, w, h, &Device::Cpu)?;
        let nf = schedule::chunk_noise_frames(k);
        let noise = case.noise()?.narrow(2, nf.start, nf.len())?;
        out.extend(frames::tensor_to_rgb(
            &model.run_chunk(&mut state, &lq, &noise)?,
        )?);
    }
    Ok(out)
}

#[test]
fn half_precision_stays_close_to_f32() -> Result<()> {
    let Some(dir) = common::golden_case("tiny-v1") else {
        return Ok(());
    };
    let case = GoldenCase::load(&dir)?;
    let reference = first_chunks(&case, DType::F32)?;
    for dtype in [DType::BF16, DType::F16] {
        let got = first_chunks(&case, dtype)?;
        assert_eq!(got.len(), reference.len());
        let (mut sum, mut n) = (0u64, 0u64);
        for (a, b) in got.iter().flatten().zip(reference.iter().flatten()) {
            sum += (*a as i64 - *b as i64).unsigned_abs();
            n += 1;
        }
        let mean = sum as f64 / n as f64;
        println!("{dtype:?}: mean abs difference to f32 = {mean:.3} (u8 levels)");
        assert!(
            mean < 4.0,
            "{dtype:?} drifts from f32 by {mean} levels on average"
        );
    }
    Ok(())
}
