//! A golden case in compact form, for the GPU bundle (`scripts/gpu-bundle.sh`):
//! small enough to travel to a GPU machine beside the binary, and checked by
//! the same `check_pipeline` as the full case.
//!
//! It keeps the model folder, `case.json`, the inputs (`lr_frames`, `noise`),
//! the expected output frames (`out.frames_u8`), every block mask and KV-window
//! count, and the smaller intermediate tensors (`COMPACT_TENSOR_BYTES`). It
//! drops the pre-upscaled frames `lq_u8` only after checking that this crate's
//! bicubic pre-upscale makes them exactly, so that the compact case runs the
//! model on the same input as the full one (`GoldenCase::lq_frames`), and the
//! larger intermediates, whose chunks' smaller tensors still localise a fault.
//! `tolerances.txt` states the bounds each precision is held to.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Result, Tensor};

use super::{GoldenCase, Tolerances};

/// Intermediate tensors up to this size are kept; the inputs, output frames
/// and masks are kept whatever their size.
pub const COMPACT_TENSOR_BYTES: usize = 1 << 20;

/// Tensors a compact case keeps whatever their size.
const ALWAYS_KEPT: [&str; 3] = ["lr_frames", "noise", "out.frames_u8"];

/// What `write_compact` kept and dropped.
#[derive(Debug, Clone, Default)]
pub struct CompactReport {
    pub kept: Vec<String>,
    pub dropped: Vec<String>,
    /// Bytes of the tensors kept.
    pub bytes: usize,
}

fn io_error(path: &Path, e: std::io::Error) -> candle_core::Error {
    candle_core::Error::Msg(format!("{}: {e}", path.display()))
}

fn copy_file(from: &Path, to: &Path) -> Result<()> {
    std::fs::copy(from, to).map_err(|e| io_error(from, e))?;
    Ok(())
}

/// Whether this crate's pre-upscale gives the fixture's `lq_u8` bit for bit.
fn lq_u8_is_reproduced(case: &GoldenCase, lq_u8: &Tensor) -> Result<bool> {
    let without = GoldenCase {
        dir: case.dir.clone(),
        settings: case.settings.clone(),
        tensors: case
            .tensors
            .iter()
            .filter(|(name, _)| name.as_str() != "lq_u8")
            .map(|(n, t)| (n.clone(), t.clone()))
            .collect(),
    };
    let (ours, w, h) = without.lq_frames()?;
    let (f, lh, lw, _) = lq_u8.dims4()?;
    if (f, lh, lw) != (ours.len(), h, w) {
        return Ok(false);
    }
    let expected = lq_u8.flatten_all()?.to_vec1::<u8>()?;
    Ok(ours.concat() == expected)
}

/// Writes `case` in compact form into `out` (created; its `model/` too).
pub fn write_compact(case: &GoldenCase, out: &Path) -> Result<CompactReport> {
    let model_out = out.join("model");
    std::fs::create_dir_all(&model_out).map_err(|e| io_error(&model_out, e))?;
    copy_file(&case.dir.join("case.json"), &out.join("case.json"))?;
    let model_dir = case.model_dir();
    let entries = std::fs::read_dir(&model_dir).map_err(|e| io_error(&model_dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| io_error(&model_dir, e))?;
        if entry.path().is_file() {
            copy_file(&entry.path(), &model_out.join(entry.file_name()))?;
        }
    }

    let mut report = CompactReport::default();
    let mut kept: HashMap<String, Tensor> = HashMap::new();
    let mut names: Vec<&String> = case.tensors.keys().collect();
    names.sort();
    for name in names {
        let tensor = &case.tensors[name];
        let bytes = tensor.elem_count() * tensor.dtype().size_in_bytes();
        let keep = if name == "lq_u8" {
            !lq_u8_is_reproduced(case, tensor)?
        } else {
            ALWAYS_KEPT.contains(&name.as_str())
                || name.ends_with(".mask")
                || bytes <= COMPACT_TENSOR_BYTES
        };
        if keep {
            report.kept.push(name.clone());
            report.bytes += bytes;
            kept.insert(name.clone(), tensor.clone());
        } else {
            report.dropped.push(name.clone());
        }
    }
    let io = out.join("io.safetensors");
    candle_core::safetensors::save(&kept, &io)
        .map_err(|e| candle_core::Error::Msg(format!("{}: {e}", io.display())))?;

    let tolerances = out.join("tolerances.txt");
    let text = format!(
        "Bounds check_pipeline holds this case to (devtools::parity::Tolerances), \
         stated before any run:\nf32:  {}\nbf16: {}\nf16:  {}\n",
        Tolerances::for_dtype(DType::F32),
        Tolerances::for_dtype(DType::BF16),
        Tolerances::for_dtype(DType::F16),
    );
    std::fs::write(&tolerances, text).map_err(|e| io_error(&tolerances, e))?;
    Ok(report)
}
