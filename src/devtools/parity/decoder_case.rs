//! Golden cases of a decoder alone (tests/golden/README.md): latents of a golden
//! run, the official decoder's frames from them, and the frames after the colour
//! fix. `tests/golden/wan-v1.1` holds the Wan2.1 VAE decoder's, made by
//! `scripts/golden/wan_decoder_case.py`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Result, Tensor};

use super::{Comparison, Tolerances, compare_float, compare_frames};
use crate::layers::kernels;
use crate::model::ModelOptions;
use crate::model::cancel::CancelToken;
use crate::model::color_fix::ColorFix;
use crate::model::wan_decoder::{WanDecoder, WanDecoderConfig, WanDecoderState};
use crate::pixels::frames;
use crate::weights::{WAN_VAE_FILE, WeightFile};

/// A decoder case folder: `model/Wan2.1_VAE.pth` and `io.safetensors` with
/// `latents`, `lq_u8`, `decoded`, `out.frames_u8` and the chunks' latent and
/// output frame counts.
pub struct DecoderCase {
    pub dir: PathBuf,
    pub tensors: HashMap<String, Tensor>,
}

impl DecoderCase {
    /// Whether `dir` holds a decoder case rather than a whole-pipeline one.
    pub fn is_decoder_case(dir: &Path) -> bool {
        dir.join("model").join(WAN_VAE_FILE).is_file()
            && !dir.join("model").join(crate::weights::DIT_FILE).exists()
    }

    pub fn load(dir: &Path) -> Result<Self> {
        let io = dir.join("io.safetensors");
        let tensors = candle_core::safetensors::load(&io, &Device::Cpu)
            .map_err(|e| candle_core::Error::Msg(format!("{}: {e}", io.display())))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            tensors,
        })
    }

    pub fn tensor(&self, name: &str) -> Result<&Tensor> {
        self.tensors.get(name).ok_or_else(|| {
            candle_core::Error::Msg(format!("{}: no tensor '{name}'", self.dir.display()))
        })
    }

    fn counts(&self, name: &str) -> Result<Vec<usize>> {
        Ok(self
            .tensor(name)?
            .to_vec1::<i64>()?
            .into_iter()
            .map(|n| n as usize)
            .collect())
    }

    /// The Wan decoder of the case's VAE file, on `opts`' device and dtype (f32
    /// convolutions on the CPU, as the model loads them).
    pub fn load_decoder(&self, opts: &ModelOptions) -> Result<WanDecoder> {
        let file = Arc::new(WeightFile::open(
            &self.dir.join("model").join(WAN_VAE_FILE),
        )?);
        let cfg = WanDecoderConfig::from_shapes(&file.names(), |n| file.shape(n))?;
        let dtype = if opts.device.is_cpu() {
            DType::F32
        } else {
            opts.dtype
        };
        WanDecoder::new(cfg, file.var_builder(dtype, &opts.device))
    }
}

/// Decodes the case's latents chunk by chunk as a stream does, on `opts`'
/// device, dtype and kernel path, and compares: each chunk's frame count
/// (exact), the decoded frames, and the frames after the AdaIN colour fix,
/// within `Tolerances::for_dtype`.
pub fn check_decoder(
    case: &DecoderCase,
    opts: &ModelOptions,
    mut report: impl FnMut(&Comparison),
) -> Result<Vec<Comparison>> {
    let decoder = case.load_decoder(opts)?;
    let bounds = Tolerances::for_dtype(opts.dtype);
    let latents = case.tensor("latents")?.to_device(&opts.device)?;
    let latent_counts = case.counts("chunk_latent_frames")?;
    let output_counts = case.counts("chunk_output_frames")?;
    let mut state = WanDecoderState::default();
    let mut all = Vec::new();
    let mut decoded = Vec::new();
    let mut start = 0;
    kernels::run_with(opts.kernels, || -> Result<()> {
        for (k, (&n, &want)) in latent_counts.iter().zip(&output_counts).enumerate() {
            let chunk = latents.narrow(2, start, n)?;
            let out = decoder.decode(&chunk, &mut state, &CancelToken::new())?;
            let got = out.dim(0)?;
            let c = Comparison {
                name: format!("chunk{k}.frames"),
                max_abs: got.abs_diff(want) as f32,
                mean_abs: got.abs_diff(want) as f32,
                ok: got == want,
                detail: format!("{got} frames from {n} latent frames, expected {want}"),
            };
            report(&c);
            all.push(c);
            decoded.push(out);
            start += n;
        }
        Ok(())
    })?;
    let decoded = Tensor::cat(&decoded, 0)?.to_device(&Device::Cpu)?;
    // the fixture's [1, 3, f, H, W] as [f, 3, H, W]
    let want = case.tensor("decoded")?.squeeze(0)?.transpose(0, 1)?;
    let c = compare_float("decoded", &decoded, &want, bounds.decoded)?;
    report(&c);
    all.push(c);
    let lq = ((case
        .tensor("lq_u8")?
        .permute((0, 3, 1, 2))?
        .to_dtype(DType::F32)?
        / 127.5)?
        - 1.0)?;
    let fixed = ColorFix::Adain.apply(&decoded, &lq)?;
    let c = compare_frames(
        "out.frames_u8",
        &frames::tensor_to_rgb(&fixed)?,
        case.tensor("out.frames_u8")?,
        &bounds.frames,
    )?;
    report(&c);
    all.push(c);
    Ok(all)
}
