//! Converts the torch.save files of a FlashVSR model folder (`LQ_proj_in.ckpt`,
//! `TCDecoder.ckpt`, `posi_prompt.pth`) to safetensors, keeping tensor names and stored
//! dtypes, so that later loads memory-map them instead of reading the pickles.
//!
//! Usage: `cargo run --release --example convert -- <model-dir> [<out-dir>]`
//! (out-dir defaults to the model folder, where the converted files are then preferred).

use std::path::PathBuf;
use std::process::ExitCode;

use gstflashvsr::weights::{WeightFile, convert_to_safetensors};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (model_dir, out_dir) = match args.as_slice() {
        [model] => (PathBuf::from(model), PathBuf::from(model)),
        [model, out] => (PathBuf::from(model), PathBuf::from(out)),
        _ => {
            eprintln!("usage: convert <model-dir> [<out-dir>]");
            return ExitCode::from(2);
        }
    };
    let written = match convert_to_safetensors(&model_dir, &out_dir) {
        Ok(written) => written,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    for path in written {
        let summary = WeightFile::open(&path).and_then(|file| {
            let names = file.names();
            let dtypes = names
                .iter()
                .map(|n| file.stored_dtype(n).map(|d| d.as_str()))
                .collect::<candle_core::Result<std::collections::BTreeSet<_>>>()?;
            Ok(format!("{} tensors, {dtypes:?}", names.len()))
        });
        match summary {
            Ok(summary) => println!("wrote {} ({summary})", path.display()),
            Err(e) => {
                eprintln!("error: reading back {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}
