//! Converts the torch.save files of a FlashVSR model folder (`LQ_proj_in.ckpt`,
//! `TCDecoder.ckpt`, `posi_prompt.pth`) to safetensors, keeping tensor names and stored
//! dtypes, so that later loads memory-map them instead of reading the pickles. When the
//! folder also holds the Wan2.1 VAE (`Wan2.1_VAE.pth`, for the full-mode decoder), its
//! decoder's tensors (`decoder.*`, `conv2.*`; not the encoder) go to
//! `Wan2.1_VAE.safetensors`; a folder without it converts the other three alone.
//!
//! Usage: `cargo run --release --example convert -- <model-dir> [<out-dir>]`
//! (out-dir defaults to the model folder, where the converted files are then preferred).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use gstflashvsr::weights::{WeightFile, convert_to_safetensors};

/// Converts a FlashVSR model folder's torch.save files (LQ_proj_in.ckpt,
/// TCDecoder.ckpt, posi_prompt.pth, and the decoder part of Wan2.1_VAE.pth when
/// present) to safetensors, keeping tensor names and stored dtypes.
#[derive(Parser, Debug)]
struct Cli {
    /// Folder with the FlashVSR weight files
    #[arg(value_name = "MODEL_DIR")]
    model_dir: PathBuf,

    /// Where to write the converted files [default: MODEL_DIR, where they are then
    /// preferred over the pickles]
    #[arg(value_name = "OUT_DIR")]
    out_dir: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let model_dir = cli.model_dir;
    let out_dir = cli.out_dir.unwrap_or_else(|| model_dir.clone());
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
