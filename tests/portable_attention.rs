//! The golden cases through the portable path (the operations CUDA runs),
//! forced on the CPU: the sparse mask by bisection and the masked attention
//! in chunks, with every product's operands checked against CUDA's rules
//! (`layers::device_rules`, on in test builds).

mod common;

use candle_core::{DType, Device, Result};
use gstflashvsr::devtools::parity::{self, GoldenCase};
use gstflashvsr::layers::kernels::KernelPath;
use gstflashvsr::model::ModelOptions;

fn portable_cpu_f32() -> ModelOptions {
    ModelOptions {
        device: Device::Cpu,
        dtype: DType::F32,
        kernels: KernelPath::Portable,
    }
}

/// Every tensor of `case` within the fixtures' f32 tolerances (the same
/// comparisons as tests/golden.rs), masks included.
fn assert_portable_parity(case: &str) -> Result<()> {
    let Some(dir) = common::golden_case(case) else {
        return Ok(());
    };
    let case = GoldenCase::load(&dir)?;
    let results = parity::check_pipeline(&case, &portable_cpu_f32(), |c| println!("{c}"))?;
    let failed: Vec<String> = results
        .iter()
        .filter(|c| !c.ok)
        .map(|c| c.to_string())
        .collect();
    assert!(failed.is_empty(), "{}", failed.join("\n"));
    for kind in ["block0.out", "noise_pred", "mask", "out.frames_u8"] {
        assert!(
            results.iter().any(|c| c.name.contains(kind)),
            "{kind} was not compared"
        );
    }
    Ok(())
}

#[test]
fn golden_attention_portable_path_matches() -> Result<()> {
    assert_portable_parity("tiny-v1")?;
    assert_portable_parity("sparse-v1.1")
}
