//! Model folders with random weights: the released file names, formats, key names and
//! widths, with a chosen number of DiT blocks, so that benchmarks run at the real
//! per-layer cost without the released weights.
//!
//! The four files are written as released: the DiT as f32 safetensors, the LQ
//! projection (`LQ_proj_in.ckpt`) as a bf16 torch.save state dict, the TCDecoder
//! (`TCDecoder.ckpt`) as an f32 state dict, and the prompt (`posi_prompt.pth`) as a
//! bare bf16 tensor [1, ctx_len, text_dim]. On request ([`RandomModelSpec::wan_vae`])
//! the Wan2.1 VAE (`Wan2.1_VAE.pth`, the full-mode decoder's weights) is written too, as
//! released: an f32 state dict of the whole VAE, encoder included. Values are seeded and well scaled (weights
//! normal with std 1/sqrt(fan_in), biases and modulations small, norm scales near 1) so
//! that activations stay finite and meaningful through any number of blocks. Data is
//! generated while it is written, one tensor (or one 256 KiB chunk) at a time.

use std::fs::File;
use std::io::{self, BufWriter};
use std::path::{Path, PathBuf};

use candle_core::{DType, Result};

use crate::model::dit::HEAD_DIM;
use crate::model::lq_proj::UNSHUFFLE;
use crate::model::schedule::LATENT_CHANNELS;
use crate::model::tcdecoder::{COND_UNSHUFFLE, FRAMES_PER_LATENT};
use crate::weights::pth::writer::{self, StorageRecord};
use crate::weights::pth::{BARE_TENSOR_NAME, PthTensorInfo, message};
use crate::weights::{
    DECODER_FILE, DECODER_SAFETENSORS_FILE, DIT_FILE, LQ_PROJ_FILE, LQ_PROJ_SAFETENSORS_FILE,
    PROMPT_FILE, PROMPT_SAFETENSORS_FILE, WAN_VAE_FILE, WAN_VAE_SAFETENSORS_FILE,
};

mod safetensors_out;
mod values;
mod wan_vae;

pub use values::{NormalSource, NormalValues, ValueEncoding};
pub use wan_vae::WanVaeSpec;

/// Width of the DiT's sinusoidal time embedding (fixed in every Wan model).
pub const FREQ_DIM: usize = 256;
/// Values per (1, 2, 2) DiT patch of one latent channel.
const PATCH_VALUES: usize = 4;
/// Std of biases, shifts and modulations: small next to the unit-scale signals.
const SMALL_STD: f32 = 0.02;
/// Std of norm scales around 1.
const SCALE_STD: f32 = 0.1;

/// Sizes of a random model. [`RandomModelSpec::released`] gives the released widths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RandomModelSpec {
    pub dit_blocks: usize,
    /// DiT width, a multiple of the head size 128.
    pub dim: usize,
    pub ffn_dim: usize,
    pub text_dim: usize,
    /// Prompt tokens.
    pub ctx_len: usize,
    /// Output channels of the LQ projection's two convs.
    pub lq_hidden: [usize; 2],
    /// LQ projection `linear_layers.N` (features for that many leading DiT blocks).
    pub lq_layers: usize,
    /// TCDecoder widths, first stage to last.
    pub tc_channels: [usize; 4],
    /// The Wan2.1 VAE (`Wan2.1_VAE.pth`) to write as well, if any: the released
    /// FlashVSR files do not include it, so the constructors leave it out.
    pub wan_vae: Option<WanVaeSpec>,
    pub seed: u64,
}

impl RandomModelSpec {
    /// The released FlashVSR widths with `dit_blocks` DiT blocks (30 as released).
    pub fn released(dit_blocks: usize) -> Self {
        Self {
            dit_blocks,
            dim: 1536,
            ffn_dim: 8960,
            text_dim: 4096,
            ctx_len: 512,
            lq_hidden: [2048, 3072],
            lq_layers: 1,
            tc_channels: [512, 256, 128, 128],
            wan_vae: None,
            seed: 0,
        }
    }

    /// The sizes of the `tiny-v1` golden fixture's model (DiT width 256, 2
    /// blocks, FFN 384, LQ widths 48/64, decoder widths 48/32/16/16): what the
    /// tests that compare with no fixture run on.
    pub fn tiny_fixture(seed: u64) -> Self {
        Self {
            ffn_dim: 384,
            text_dim: 32,
            ctx_len: 8,
            lq_hidden: [48, 64],
            tc_channels: [48, 32, 16, 16],
            ..Self::tiny(seed)
        }
    }

    /// Small widths near the tiny-v1 fixture's (two DiT blocks): small enough
    /// for tests to write, load and run in seconds.
    pub fn tiny(seed: u64) -> Self {
        Self {
            dit_blocks: 2,
            dim: 256,
            ffn_dim: 512,
            text_dim: 64,
            ctx_len: 16,
            lq_hidden: [64, 96],
            lq_layers: 1,
            tc_channels: [64, 32, 16, 16],
            wan_vae: None,
            seed,
        }
    }

    /// Checks that the sizes make a model the loader accepts.
    pub fn validate(&self) -> Result<()> {
        let widths = [
            ("dit_blocks", self.dit_blocks),
            ("dim", self.dim),
            ("ffn_dim", self.ffn_dim),
            ("text_dim", self.text_dim),
            ("ctx_len", self.ctx_len),
            ("lq_hidden[0]", self.lq_hidden[0]),
            ("lq_hidden[1]", self.lq_hidden[1]),
            ("lq_layers", self.lq_layers),
            ("tc_channels[0]", self.tc_channels[0]),
            ("tc_channels[1]", self.tc_channels[1]),
            ("tc_channels[2]", self.tc_channels[2]),
            ("tc_channels[3]", self.tc_channels[3]),
        ];
        if let Some((name, _)) = widths.iter().find(|(_, v)| *v == 0) {
            return Err(message(format!("random model: {name} must be at least 1")));
        }
        if !self.dim.is_multiple_of(HEAD_DIM) {
            return Err(message(format!(
                "random model: dim {} is not a multiple of the head size {HEAD_DIM}",
                self.dim
            )));
        }
        if self.lq_layers > self.dit_blocks {
            return Err(message(format!(
                "random model: {} LQ projection layers for {} DiT blocks",
                self.lq_layers, self.dit_blocks
            )));
        }
        if let Some(vae) = &self.wan_vae {
            vae.validate()?;
        }
        Ok(())
    }

    /// The four files (and the Wan2.1 VAE when asked for), with their tensors in the
    /// order torch registers them.
    pub fn files(&self) -> Vec<RandomFile> {
        let mut files = vec![
            RandomFile {
                name: DIT_FILE,
                format: FileFormat::Safetensors,
                dtype: DType::F32,
                tensors: self.dit_tensors(),
            },
            RandomFile {
                name: LQ_PROJ_FILE,
                format: FileFormat::TorchStateDict {
                    top: "LQ_proj_in",
                    modules: self.lq_proj_modules(),
                },
                dtype: DType::BF16,
                tensors: self.lq_proj_tensors(),
            },
            RandomFile {
                name: DECODER_FILE,
                format: FileFormat::TorchStateDict {
                    top: "TCDecoder.ckpt",
                    modules: decoder_modules(),
                },
                dtype: DType::F32,
                tensors: self.decoder_tensors(),
            },
            RandomFile {
                name: PROMPT_FILE,
                format: FileFormat::TorchTensor { top: "posi_prompt" },
                dtype: DType::BF16,
                tensors: vec![RandomTensor::normal(
                    BARE_TENSOR_NAME,
                    &[1, self.ctx_len, self.text_dim],
                    0.0,
                    1.0,
                )],
            },
        ];
        if let Some(vae) = &self.wan_vae {
            let (tensors, modules) = vae.layout();
            files.push(RandomFile {
                name: WAN_VAE_FILE,
                format: FileFormat::TorchStateDict {
                    // what torch.save names the archive of a file "Wan2.1_VAE.pth"
                    top: "Wan2.1_VAE",
                    modules,
                },
                dtype: DType::F32,
                tensors,
            });
        }
        files
    }

    fn dit_tensors(&self) -> Vec<RandomTensor> {
        let (d, mut t) = (self.dim, Vec::new());
        let patch = [d, LATENT_CHANNELS, 1, 2, 2];
        linear(&mut t, "patch_embedding", &patch);
        linear(&mut t, "text_embedding.0", &[d, self.text_dim]);
        linear(&mut t, "text_embedding.2", &[d, d]);
        linear(&mut t, "time_embedding.0", &[d, FREQ_DIM]);
        linear(&mut t, "time_embedding.2", &[d, d]);
        linear(&mut t, "time_projection.1", &[6 * d, d]);
        for b in 0..self.dit_blocks {
            for attn in ["self_attn", "cross_attn"] {
                for proj in ["q", "k", "v", "o"] {
                    linear(&mut t, &format!("blocks.{b}.{attn}.{proj}"), &[d, d]);
                }
                for norm in ["norm_q", "norm_k"] {
                    t.push(RandomTensor::scale(
                        &format!("blocks.{b}.{attn}.{norm}.weight"),
                        d,
                    ));
                }
            }
            t.push(RandomTensor::scale(&format!("blocks.{b}.norm3.weight"), d));
            t.push(RandomTensor::small(&format!("blocks.{b}.norm3.bias"), &[d]));
            linear(&mut t, &format!("blocks.{b}.ffn.0"), &[self.ffn_dim, d]);
            linear(&mut t, &format!("blocks.{b}.ffn.2"), &[d, self.ffn_dim]);
            t.push(RandomTensor::small(
                &format!("blocks.{b}.modulation"),
                &[1, 6, d],
            ));
        }
        linear(&mut t, "head.head", &[PATCH_VALUES * LATENT_CHANNELS, d]);
        t.push(RandomTensor::small("head.modulation", &[1, 2, d]));
        t
    }

    fn lq_proj_tensors(&self) -> Vec<RandomTensor> {
        let [h1, h2] = self.lq_hidden;
        let in_channels = 3 * UNSHUFFLE * UNSHUFFLE;
        let mut t = Vec::new();
        for (conv, norm, shape) in [
            ("conv1", "norm1", [h1, in_channels, 4, 3, 3]),
            ("conv2", "norm2", [h2, h1, 4, 3, 3]),
        ] {
            linear(&mut t, conv, &shape);
            t.push(RandomTensor::normal(
                &format!("{norm}.gamma"),
                &[shape[0], 1, 1, 1],
                1.0,
                SCALE_STD,
            ));
        }
        for i in 0..self.lq_layers {
            linear(&mut t, &format!("linear_layers.{i}"), &[self.dim, h2]);
        }
        t
    }

    /// Modules of the official `Buffer_LQ4x_Proj` / `Causal_LQ4x_Proj`, in order.
    fn lq_proj_modules(&self) -> Vec<String> {
        let fixed = [
            "",
            "pixel_shuffle",
            "conv1",
            "norm1",
            "act1",
            "conv2",
            "norm2",
            "act2",
        ];
        let mut modules: Vec<String> = fixed.iter().map(|m| m.to_string()).collect();
        modules.push("linear_layers".into());
        modules.extend((0..self.lq_layers).map(|i| format!("linear_layers.{i}")));
        modules
    }

    /// The TCDecoder's layers (docs/model.md, section "The decoder").
    fn decoder_tensors(&self) -> Vec<RandomTensor> {
        let [c0, c1, c2, c3] = self.tc_channels;
        let cond = 3 * FRAMES_PER_LATENT * COND_UNSHUFFLE * COND_UNSHUFFLE;
        let mut t = Vec::new();
        let conv = |t: &mut Vec<RandomTensor>, layer: &str, out_c, in_c, bias: bool| {
            let name = format!("decoder.{layer}");
            if bias {
                linear(t, &name, &[out_c, in_c, 3, 3]);
            } else {
                t.push(RandomTensor::fan_in(
                    &format!("{name}.weight"),
                    &[out_c, in_c, 3, 3],
                ));
            }
        };
        conv(&mut t, "1", c0, cond + LATENT_CHANNELS, true);
        conv(&mut t, "3", c0, c0, false);
        // Stages: three MemBlocks, upsample, TGrow (1x1 conv to time_stride * C), conv.
        for (first, c, time_stride, next) in [(5, c0, 1, c1), (11, c1, 2, c2), (17, c2, 2, c3)] {
            for block in first..first + 3 {
                conv(&mut t, &format!("{block}.conv.0"), c, 2 * c, true);
                conv(&mut t, &format!("{block}.conv.2"), c, c, true);
                conv(&mut t, &format!("{block}.conv.4"), c, c, true);
            }
            t.push(RandomTensor::fan_in(
                &format!("decoder.{}.conv.weight", first + 4),
                &[time_stride * c, c, 1, 1],
            ));
            conv(&mut t, &(first + 5).to_string(), next, c, false);
        }
        conv(&mut t, "24", c3, c3, false);
        conv(&mut t, "26", 3, c3, true);
        t
    }
}

/// Modules of the official TCDecoder (`decoder.0` to `decoder.26`, then the pixel
/// shuffle), in order.
fn decoder_modules() -> Vec<String> {
    const MEM_BLOCKS: [usize; 9] = [5, 6, 7, 11, 12, 13, 17, 18, 19];
    const TGROWS: [usize; 3] = [9, 15, 21];
    let mut modules = vec![String::new(), "decoder".to_string()];
    for layer in 0..=26 {
        let name = format!("decoder.{layer}");
        if MEM_BLOCKS.contains(&layer) {
            modules.push(name.clone());
            modules.push(format!("{name}.conv"));
            modules.extend((0..5).map(|i| format!("{name}.conv.{i}")));
            modules.push(format!("{name}.skip"));
            modules.push(format!("{name}.act"));
        } else if TGROWS.contains(&layer) {
            modules.push(name.clone());
            modules.push(format!("{name}.conv"));
        } else {
            modules.push(name);
        }
    }
    modules.push("pixel_shuffle".into());
    modules
}

/// `<name>.weight` with std 1/sqrt(fan_in) and a small `<name>.bias`.
fn linear(t: &mut Vec<RandomTensor>, name: &str, weight_shape: &[usize]) {
    t.push(RandomTensor::fan_in(
        &format!("{name}.weight"),
        weight_shape,
    ));
    t.push(RandomTensor::small(
        &format!("{name}.bias"),
        &weight_shape[..1],
    ));
}

/// How a file is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileFormat {
    Safetensors,
    /// A torch.save'd state dict under archive folder `top`, with torch's `_metadata`
    /// naming `modules`.
    TorchStateDict {
        top: &'static str,
        modules: Vec<String>,
    },
    /// A torch.save'd bare tensor under archive folder `top`.
    TorchTensor {
        top: &'static str,
    },
}

/// One file of a random model folder.
#[derive(Debug, Clone, PartialEq)]
pub struct RandomFile {
    /// File name in the folder.
    pub name: &'static str,
    pub format: FileFormat,
    /// Stored dtype of every tensor.
    pub dtype: DType,
    pub tensors: Vec<RandomTensor>,
}

impl RandomFile {
    pub fn parameters(&self) -> usize {
        self.tensors.iter().map(RandomTensor::elements).sum()
    }
}

/// One tensor: its values are `mean + std * normal`.
#[derive(Debug, Clone, PartialEq)]
pub struct RandomTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub mean: f32,
    pub std: f32,
}

impl RandomTensor {
    fn normal(name: &str, shape: &[usize], mean: f32, std: f32) -> Self {
        Self {
            name: name.to_string(),
            shape: shape.to_vec(),
            mean,
            std,
        }
    }

    /// A weight whose outputs keep the scale of its inputs.
    fn fan_in(name: &str, shape: &[usize]) -> Self {
        let fan_in: usize = shape[1..].iter().product();
        Self::normal(name, shape, 0.0, 1.0 / (fan_in.max(1) as f32).sqrt())
    }

    /// A bias, shift or modulation.
    fn small(name: &str, shape: &[usize]) -> Self {
        Self::normal(name, shape, 0.0, SMALL_STD)
    }

    /// A norm scale around 1.
    fn scale(name: &str, width: usize) -> Self {
        Self::normal(name, &[width], 1.0, SCALE_STD)
    }

    pub fn elements(&self) -> usize {
        self.shape.iter().product()
    }

    /// The generator of this tensor's values: a function of the model seed and the
    /// tensor's name only, so the values do not depend on the order of writing.
    fn source(&self, seed: u64) -> NormalSource {
        // FNV-1a of the name, mixed into the seed.
        let name_hash = self.name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        NormalSource::new(seed ^ name_hash)
    }

    /// This tensor's values for model seed `seed`.
    pub fn values(&self, seed: u64) -> NormalValues {
        NormalValues {
            source: self.source(seed),
            count: self.elements(),
            mean: self.mean,
            std: self.std,
        }
    }
}

/// Writes the four files of `spec` (and its Wan2.1 VAE, if any) into `dir` (created if
/// needed), each complete under a temporary name before it takes its real one.
/// Converted variants of the torch files (e.g. `LQ_proj_in.safetensors`) left in `dir`
/// by an earlier model would be preferred by the loader over the files written here, so
/// they are removed; the VAE's (`Wan2.1_VAE.safetensors`) only when a VAE is written (a
/// VAE already in the folder is otherwise left as it is, with its conversion).
pub fn write_model_dir(spec: &RandomModelSpec, dir: &Path) -> Result<()> {
    spec.validate()?;
    let folder_error = |what: String| message(format!("model folder '{}': {what}", dir.display()));
    std::fs::create_dir_all(dir).map_err(|e| folder_error(format!("cannot create: {e}")))?;
    let stale_vae = spec.wan_vae.map(|_| WAN_VAE_SAFETENSORS_FILE);
    for stale in [
        LQ_PROJ_SAFETENSORS_FILE,
        DECODER_SAFETENSORS_FILE,
        PROMPT_SAFETENSORS_FILE,
    ]
    .into_iter()
    .chain(stale_vae)
    {
        match std::fs::remove_file(dir.join(stale)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(folder_error(format!(
                    "cannot remove the stale '{stale}': {e}"
                )));
            }
            _ => {}
        }
    }
    for file in spec.files() {
        let path = dir.join(file.name);
        let written = match &file.format {
            FileFormat::Safetensors => safetensors_out::write(&file, spec.seed, &path),
            FileFormat::TorchStateDict { top, .. } | FileFormat::TorchTensor { top } => {
                write_torch_file(&file, top, spec.seed, &path)
            }
        };
        written.map_err(|e| {
            message(format!(
                "weight file '{}': cannot write: {e}",
                path.display()
            ))
        })?;
    }
    Ok(())
}

fn encoding_of(file: &RandomFile) -> io::Result<ValueEncoding> {
    ValueEncoding::of(file.dtype).ok_or_else(|| {
        io::Error::other(format!("values of dtype {:?} cannot be stored", file.dtype))
    })
}

/// Contiguous tensors of `dtype`, each with a storage of its own keyed "0", "1", ...
fn torch_records(file: &RandomFile, dtype: DType) -> io::Result<Vec<PthTensorInfo>> {
    let Some(class) = writer::storage_class(dtype) else {
        return Err(io::Error::other(format!(
            "no torch storage for dtype {dtype:?}"
        )));
    };
    let records = file.tensors.iter().enumerate().map(|(i, t)| {
        let mut stride = vec![1; t.shape.len()];
        for d in (1..t.shape.len()).rev() {
            stride[d - 1] = stride[d] * t.shape[d];
        }
        PthTensorInfo {
            name: t.name.clone(),
            storage_type: class.to_string(),
            storage_key: i.to_string(),
            storage_numel: t.elements(),
            offset: 0,
            shape: t.shape.clone(),
            stride,
        }
    });
    Ok(records.collect())
}

/// The pickle of `file` with its tensors stored as `dtype`.
fn torch_pickle(file: &RandomFile, dtype: DType) -> io::Result<Vec<u8>> {
    let records = torch_records(file, dtype)?;
    match (&file.format, records.as_slice()) {
        (FileFormat::TorchStateDict { modules, .. }, _) => {
            Ok(writer::state_dict_pickle(&records, modules))
        }
        (FileFormat::TorchTensor { .. }, [tensor]) => Ok(writer::bare_tensor_pickle(tensor)),
        (format, _) => Err(io::Error::other(format!(
            "{} tensors cannot be stored as {format:?}",
            records.len()
        ))),
    }
}

fn write_torch_file(file: &RandomFile, top: &str, seed: u64, path: &Path) -> io::Result<()> {
    let encoding = encoding_of(file)?;
    let pickle = torch_pickle(file, file.dtype)?;
    let storages: Vec<StorageRecord> = file
        .tensors
        .iter()
        .enumerate()
        .map(|(i, t)| StorageRecord {
            key: i.to_string(),
            bytes: (t.elements() * file.dtype.size_in_bytes()) as u64,
        })
        .collect();
    write_then_rename(path, |partial| {
        let out = BufWriter::with_capacity(1 << 20, File::create(partial)?);
        let out = writer::write_torch_save(out, top, &pickle, &storages, |i, w| {
            file.tensors[i].values(seed).write(encoding, w)
        })?;
        out.into_inner().map_err(|e| e.into_error())?;
        Ok(())
    })
}

/// Runs `write` on `<path>.partial`, then renames it to `path`; removes the partial file
/// on failure.
fn write_then_rename(path: &Path, write: impl FnOnce(&Path) -> io::Result<()>) -> io::Result<()> {
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let result = write(&partial).and_then(|()| std::fs::rename(&partial, path));
    if result.is_err() {
        // Best effort: the error returned says what failed.
        let _ = std::fs::remove_file(&partial);
    }
    result
}

#[cfg(test)]
mod tests;
