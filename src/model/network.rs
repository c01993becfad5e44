//! The whole network, one streaming chunk at a time: LQ projection, one DiT
//! step, TCDecoder, colour fix (docs/model.md, sections "One chunk, step by
//! step" and "Caches and temporal state"). A *sequence* is one continuous run
//! of frames through the model: its temporal state lives in [`SequenceState`],
//! apart from the weights, so one loaded model serves many sequences.

use std::path::Path;

use candle_core::{DType, Device, Result, Tensor};

use super::attention_check::{self, KernelChoice};
use super::cancel::CancelToken;
use super::color_fix::ColorFix;
use super::decoder::{Decoder, DecoderKind, DecoderState};
use super::dit::{Dit, DitConfig, DitState, DitTrace};
use super::lq_proj::{LqProj, LqProjConfig, LqProjState};
use super::profile::{self, Stage, StageTimes};
use super::schedule;
use super::tcdecoder::{DecoderTiling, TcDecoder, TcDecoderConfig};
use super::wan_decoder::{WanDecoder, WanDecoderConfig};
use crate::layers::attention_path::{self, AttentionKernel};
use crate::layers::kernels::{self, KernelPath};
use crate::layers::products::{self, CpuProducts};
use crate::layers::shape_log;
use crate::layers::sparse_attention::SparseConfig;
use crate::weights::{ModelFiles, WAN_VAE_DECODER_PREFIXES};

/// Which release of the weights a model folder holds. Both have the same files
/// and tensor names (so the files cannot tell); they differ only in how the LQ
/// projection caches frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ModelVersion {
    /// FlashVSR (`Buffer_LQ4x_Proj`): each clip's conv cache is its own last frames.
    V1,
    /// FlashVSR-v1.1 (`Causal_LQ4x_Proj`): the cache is the previous clip's last frames.
    #[default]
    V1_1,
}

/// Where and in which precision the model runs.
#[derive(Debug, Clone)]
pub struct ModelOptions {
    pub device: Device,
    pub dtype: DType,
    /// CPU fast paths where they apply (the default), or the portable path that
    /// other devices take, forced on the CPU too (to prove the device path).
    pub kernels: KernelPath,
    /// The portable path's block-sparse attention (`attention_check::resolve`).
    pub attention: AttentionKernel,
    /// The decoder to load: the TCDecoder, or the Wan2.1 VAE's (which needs
    /// `Wan2.1_VAE.pth` in the folder too).
    pub decoder: DecoderKind,
}

/// Per-sequence settings. `height` and `width` are the (padded) output size, and
/// must be multiples of 128.
#[derive(Debug, Clone)]
pub struct SequenceConfig {
    pub height: usize,
    pub width: usize,
    pub version: ModelVersion,
    pub sparse_ratio: f64,
    pub kv_ratio: f64,
    pub local_range: usize,
    pub color_fix: ColorFix,
    /// Spatial tiles for the decoder (`None`: whole frames).
    pub decoder_tiling: Option<DecoderTiling>,
    /// Polled between stages; a cancelled chunk returns an error and leaves the
    /// sequence unusable (start a new one).
    pub cancel: CancelToken,
}

/// Output frames must tile into 2x8x8 token windows of 16x16-pixel tokens: the
/// side lengths the model works on (padded frames, tiles, decoder tiles) are
/// multiples of this. The one name of 128 pixels in the crate.
pub const SIZE_MULTIPLE: usize = 128;

impl SequenceConfig {
    pub fn validate(&self) -> Result<()> {
        if self.height == 0
            || self.width == 0
            || !self.height.is_multiple_of(SIZE_MULTIPLE)
            || !self.width.is_multiple_of(SIZE_MULTIPLE)
        {
            candle_core::bail!(
                "frame size {}x{} is not a non-zero multiple of {SIZE_MULTIPLE}",
                self.width,
                self.height
            )
        }
        if !(self.sparse_ratio.is_finite() && self.sparse_ratio > 0.0) {
            candle_core::bail!(
                "sparse_ratio {} must be a positive number",
                self.sparse_ratio
            )
        }
        if !(self.kv_ratio.is_finite() && self.kv_ratio >= 1.0) {
            candle_core::bail!("kv_ratio {} must be at least 1", self.kv_ratio)
        }
        if self.local_range == 0 {
            candle_core::bail!("local_range must be at least 1")
        }
        if let Some(tiling) = &self.decoder_tiling {
            tiling.validate()?;
        }
        Ok(())
    }
}

/// Temporal state of one sequence: the LQ-projection caches, the KV caches and
/// the decoder memory.
pub struct SequenceState {
    cfg: SequenceConfig,
    sparse: SparseConfig,
    chunk: usize,
    lq: LqProjState,
    dit: DitState,
    decoder: DecoderState,
}

impl SequenceState {
    pub fn config(&self) -> &SequenceConfig {
        &self.cfg
    }
    /// Moves everything the sequence holds between chunks (caches, KV caches,
    /// decoder memories) to `device`. A tiled stream on a GPU parks each tile's
    /// state in host memory between its turns, so that the device holds one
    /// tile's state at a time (docs/element.md, "Memory and tiles"). The next
    /// chunk must run with the state back on the model's device.
    pub fn move_to(&mut self, device: &Device) -> Result<()> {
        self.lq.move_to(device)?;
        self.dit.move_to(device)?;
        self.decoder.move_to(device)
    }

    /// 128-token windows in the first DiT block's KV cache.
    pub fn kv_windows(&self) -> usize {
        self.dit.cached_windows()
    }
}

/// What one chunk can report: intermediate tensors for parity checks (when
/// `keep_tensors`) and stage times for benchmarks.
#[derive(Debug, Default)]
pub struct ChunkTrace {
    pub keep_tensors: bool,
    pub times: StageTimes,
    /// Record the shapes of the DiT's matrix products and the decoder's
    /// convolutions (in `dit.matmuls` and `decoder_convs`).
    pub log_shapes: bool,
    pub decoder_convs: Vec<shape_log::ConvShape>,
    /// LQ features added before DiT block 0, `[tokens, dim]`.
    pub lq_features: Option<Tensor>,
    pub dit: DitTrace,
    pub noise_pred: Option<Tensor>,
    pub latents: Option<Tensor>,
    /// Decoder output before the colour fix, `[m, 3, H, W]` in [-1, 1].
    pub decoded: Option<Tensor>,
}

impl ChunkTrace {
    /// A trace that keeps every intermediate tensor.
    pub fn with_tensors() -> Self {
        Self {
            keep_tensors: true,
            dit: DitTrace {
                keep_tensors: true,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    /// A trace for benchmarks: stage times and the shapes of the heavy products.
    pub fn profiling() -> Self {
        Self {
            log_shapes: true,
            dit: DitTrace {
                log_matmuls: true,
                ..Default::default()
            },
            ..Default::default()
        }
    }
}

/// All weights of one model folder, loaded once and shared between streams.
pub struct FlashVsrModel {
    device: Device,
    dtype: DType,
    kernels: KernelPath,
    /// The attention and mask kernels the chunks run with, checked at load.
    kernel_choice: KernelChoice,
    lq_proj: LqProj,
    dit: Dit,
    decoder: Decoder,
    /// Bytes of the weights as loaded (see `weight_bytes`).
    weight_bytes: u64,
    /// The precision of the CPU's large products (`layers::products`).
    cpu_products: CpuProducts,
}

impl FlashVsrModel {
    /// Loads the model folder `dir` (released file names; see `weights`). Sizes
    /// come from the tensor shapes. Errors name the folder, file and tensor.
    ///
    /// bf16 on the CPU's fast path, where the processor has AVX512_BF16, runs
    /// the DiT's and the LQ projection's products (linear layers, block-sparse
    /// self-attention, Winograd convolutions) and those of the TCDecoder's
    /// middle stage in bf16 with f32 sums, on weights held in bf16, and
    /// everything else in f32: candle's CPU ops in bf16 are slower than in
    /// f32. Elsewhere the model computes in `opts.dtype` (a CPU without
    /// AVX512_BF16 keeps f32 convolutions, as before).
    pub fn load(dir: &Path, opts: &ModelOptions) -> Result<Self> {
        if !matches!(opts.dtype, DType::F32 | DType::BF16 | DType::F16) {
            candle_core::bail!(
                "compute dtype {:?} is not one of f32, bf16, f16",
                opts.dtype
            )
        }
        let products = if opts.device.is_cpu() && opts.kernels == KernelPath::Fast {
            CpuProducts::for_cpu_precision(opts.dtype == DType::BF16)
        } else {
            CpuProducts::F32
        };
        let dtype = match products {
            CpuProducts::Bf16 => DType::F32,
            CpuProducts::F32 => opts.dtype,
        };
        products::load_with(products, || Self::load_as(dir, opts, dtype, products))
    }

    /// [`FlashVsrModel::load`] with activations in `dtype` and the layers built
    /// for `products`.
    fn load_as(
        dir: &Path,
        opts: &ModelOptions,
        dtype: DType,
        products: CpuProducts,
    ) -> Result<Self> {
        let files = ModelFiles::open(dir)?;
        let device = &opts.device;
        // candle has no half-precision convolutions on the CPU.
        let conv_dtype = if device.is_cpu() { DType::F32 } else { dtype };
        let with_file = |file: &Path, e: candle_core::Error| {
            candle_core::Error::Msg(format!("weight file '{}': {e}", file.display()))
        };

        let dit_names = files.dit.names();
        let dit_cfg = DitConfig::from_shapes(&dit_names, |n| files.dit.shape(n))
            .map_err(|e| with_file(files.dit.path(), e))?;
        let prompt = files.prompt_tensor(dtype, device, dit_cfg.text_dim)?;
        let dit = Dit::new(
            dit_cfg.clone(),
            files.dit.var_builder(dtype, device),
            &prompt,
        )?;

        let lq_names = files.lq_proj.names();
        let lq_cfg = LqProjConfig::from_shapes(&lq_names, |n| files.lq_proj.shape(n))
            .map_err(|e| with_file(files.lq_proj.path(), e))?;
        if lq_cfg.out_dim != dit_cfg.dim {
            return Err(with_file(
                files.lq_proj.path(),
                candle_core::Error::Msg(format!(
                    "LQ projection width {} does not match the DiT width {}",
                    lq_cfg.out_dim, dit_cfg.dim
                )),
            ));
        }
        let lq_proj = LqProj::new(lq_cfg, files.lq_proj.var_builder(dtype, device), conv_dtype)?;

        // Values of the tensors of a file that are read.
        let values =
            |file: &crate::weights::WeightFile, read: &dyn Fn(&str) -> bool| -> Result<u64> {
                file.names()
                    .iter()
                    .filter(|name| read(name))
                    .try_fold(0u64, |sum, name| {
                        let n: usize = file.shape(name)?.iter().product();
                        Ok(sum.saturating_add(n as u64))
                    })
            };
        // The TCDecoder takes the model's products in its middle stage only
        // (`TcDecoder::new`, which says why). The Wan decoder keeps f32
        // products: no golden case measures it with bf16 ones.
        let decoder_products = match opts.decoder {
            DecoderKind::Tiny => products,
            DecoderKind::Wan => CpuProducts::F32,
        };
        let (decoder, decoder_values) = products::load_with(decoder_products, || -> Result<_> {
            Ok(match opts.decoder {
                DecoderKind::Tiny => {
                    let tc_cfg = TcDecoderConfig::from_shapes(|n| files.decoder.shape(n))
                        .map_err(|e| with_file(files.decoder.path(), e))?;
                    let expected_in = 3 * 4 * 64 + dit_cfg.out_channels;
                    if tc_cfg.in_channels != expected_in {
                        return Err(with_file(
                            files.decoder.path(),
                            candle_core::Error::Msg(format!(
                                "tensor 'decoder.1.weight': expected {expected_in} input channels, found {}",
                                tc_cfg.in_channels
                            )),
                        ));
                    }
                    let decoder =
                        TcDecoder::new(tc_cfg, files.decoder.var_builder(conv_dtype, device))?;
                    (
                        Decoder::Tiny(Box::new(decoder)),
                        values(&files.decoder, &|_| true)?,
                    )
                }
                DecoderKind::Wan => {
                    let vae = files.open_wan_vae()?;
                    let names = vae.names();
                    let cfg = WanDecoderConfig::from_shapes(&names, |n| vae.shape(n))
                        .map_err(|e| with_file(vae.path(), e))?;
                    if cfg.z_dim != dit_cfg.out_channels {
                        return Err(with_file(
                            vae.path(),
                            candle_core::Error::Msg(format!(
                                "tensor 'decoder.conv1.weight': {} latent channels, the DiT makes {}",
                                cfg.z_dim, dit_cfg.out_channels
                            )),
                        ));
                    }
                    let decoder = WanDecoder::new(cfg, vae.var_builder(conv_dtype, device))?;
                    let read = |n: &str| WAN_VAE_DECODER_PREFIXES.iter().any(|p| n.starts_with(p));
                    (Decoder::Wan(Box::new(decoder)), values(&vae, &read)?)
                }
            })
        })?;
        // Values of each file times the size they are held in: the DiT and the
        // prompt in the compute dtype, the LQ projection and the decoder in the
        // convolutions' (the larger of the two, for the LQ projection's linears).
        // With bf16 products the DiT's and the LQ projection's weights are held
        // in bf16 but for the few vectors (norms, biases) that stay f32; the
        // decoder's stay f32.
        let (size, lq_size, decoder_size) = match products {
            CpuProducts::Bf16 => (2, 2, 4),
            CpuProducts::F32 => {
                let conv_size = conv_dtype.size_in_bytes().max(dtype.size_in_bytes()) as u64;
                (dtype.size_in_bytes() as u64, conv_size, conv_size)
            }
        };
        let all = |_: &str| true;
        let weight_bytes = values(&files.dit, &all)? * size
            + values(&files.prompt, &all)? * dtype.size_in_bytes() as u64
            + values(&files.lq_proj, &all)? * lq_size
            + decoder_values * decoder_size;
        let kernel_choice = attention_check::resolve(opts.attention, device, dtype)?;
        // The weights were uploaded from this thread; the model usually runs on
        // another (the element's model thread). Wait for every copy and
        // conversion to finish here, so that no use depends on the device's
        // stream discipline and a failed upload is reported as a load error.
        device.synchronize()?;
        Ok(Self {
            device: device.clone(),
            dtype,
            kernels: opts.kernels,
            kernel_choice,
            lq_proj,
            dit,
            decoder,
            weight_bytes,
            cpu_products: products,
        })
    }

    /// Bytes the loaded weights take: every tensor of the files at the dtype it is
    /// held in.
    pub fn weight_bytes(&self) -> u64 {
        self.weight_bytes
    }

    pub fn device(&self) -> &Device {
        &self.device
    }
    /// The attention and mask kernels the chunks run with, and the notes of
    /// any kernel that failed its check at load.
    pub fn kernel_choice(&self) -> &KernelChoice {
        &self.kernel_choice
    }
    /// The dtype of the activations (f32 where the CPU runs bf16 products).
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    /// The precision of the CPU's linear and convolution products.
    pub fn cpu_products(&self) -> CpuProducts {
        self.cpu_products
    }
    pub fn dit(&self) -> &Dit {
        &self.dit
    }
    pub fn lq_proj(&self) -> &LqProj {
        &self.lq_proj
    }
    pub fn decoder(&self) -> &Decoder {
        &self.decoder
    }

    pub fn new_sequence(&self, cfg: &SequenceConfig) -> Result<SequenceState> {
        cfg.validate()?;
        Ok(SequenceState {
            sparse: SparseConfig::new(
                cfg.sparse_ratio,
                cfg.kv_ratio,
                cfg.local_range,
                cfg.height,
                cfg.width,
            ),
            cfg: cfg.clone(),
            chunk: 0,
            lq: LqProjState::default(),
            dit: self.dit.new_state(),
            decoder: self.decoder.new_state(cfg.decoder_tiling),
        })
    }

    /// Runs the next chunk k of `state`.
    /// `lq`: `[n, 3, H, W]` f32 in [-1, 1], the LQ frames `schedule::chunk_lq_span(k)`.
    /// `noise`: `[1, 16, f, H/8, W/8]` f32, latent frames `schedule::chunk_noise_frames(k)`.
    /// Returns the output frames `schedule::chunk_output_span(k)`, `[m, 3, H, W]`
    /// f32 in [-1, 1], colour fix applied.
    pub fn run_chunk(
        &self,
        state: &mut SequenceState,
        lq: &Tensor,
        noise: &Tensor,
    ) -> Result<Tensor> {
        self.run_chunk_traced(state, lq, noise, None)
    }

    /// [`Self::run_chunk`], optionally recording intermediate tensors.
    pub fn run_chunk_traced(
        &self,
        state: &mut SequenceState,
        lq: &Tensor,
        noise: &Tensor,
        trace: Option<&mut ChunkTrace>,
    ) -> Result<Tensor> {
        kernels::run_with(self.kernels, || {
            attention_path::run_with(self.kernel_choice.kernels, || {
                self.chunk(state, lq, noise, trace)
            })
        })
    }

    fn chunk(
        &self,
        state: &mut SequenceState,
        lq: &Tensor,
        noise: &Tensor,
        mut trace: Option<&mut ChunkTrace>,
    ) -> Result<Tensor> {
        let k = state.chunk;
        let cfg = &state.cfg;
        let span = schedule::chunk_lq_span(k);
        let (n, c, h, w) = lq.dims4()?;
        if n != span.len() || c != 3 || h != cfg.height || w != cfg.width {
            candle_core::bail!(
                "chunk {k}: expected LQ frames [{}, 3, {}, {}], got {:?}",
                span.len(),
                cfg.height,
                cfg.width,
                lq.dims()
            )
        }
        let latent_frames = schedule::chunk_noise_frames(k);
        let expected_noise = [
            1,
            schedule::LATENT_CHANNELS,
            latent_frames.len(),
            h / 8,
            w / 8,
        ];
        if noise.dims() != expected_noise {
            candle_core::bail!(
                "chunk {k}: expected noise {expected_noise:?}, got {:?}",
                noise.dims()
            )
        }
        cfg.cancel.check()?;
        let lq = lq.to_device(&self.device)?.to_dtype(DType::F32)?;
        let noise = noise.to_device(&self.device)?.to_dtype(DType::F32)?;

        // LQ projection, one clip of 4 frames per latent frame.
        let proj = schedule::chunk_projection_span(k);
        let mut clips: Vec<(usize, usize)> = Vec::new();
        if k == 0 {
            clips.push((0, 1));
        }
        let mut start = if k == 0 { 1 } else { proj.start };
        while start < proj.end {
            clips.push((start, schedule::CLIP_FRAMES));
            start += schedule::CLIP_FRAMES;
        }
        let device = &self.device;
        let mut features: Vec<Vec<Tensor>> = Vec::new();
        profile::timed(
            trace.as_deref_mut().map(|t| &mut t.times),
            Stage::LqProjection,
            device,
            || {
                for (first, len) in clips {
                    let clip = lq.narrow(0, first - span.start, len)?;
                    if let Some(f) = self
                        .lq_proj
                        .stream_clip(&clip, cfg.version, &mut state.lq)?
                    {
                        features.push(f);
                    }
                }
                Ok(())
            },
        )?;
        let layers = features.first().map(Vec::len).unwrap_or(0);
        let lq_features: Vec<Tensor> = (0..layers)
            .map(|l| Tensor::cat(&features.iter().map(|f| &f[l]).collect::<Vec<_>>(), 0))
            .collect::<Result<_>>()?;

        // One denoising step.
        let dit_start = std::time::Instant::now();
        cfg.cancel.check()?;
        let noise_pred = self.dit.forward(
            &noise,
            &lq_features,
            latent_frames.start,
            &state.sparse,
            &mut state.dit,
            trace.as_deref_mut().map(|t| &mut t.dit),
            &cfg.cancel,
        )?;
        if let Some(t) = trace.as_deref_mut() {
            device.synchronize()?;
            t.times.add(Stage::Dit, dit_start.elapsed());
            let dit_times = std::mem::take(&mut t.dit.times);
            t.times.merge(&dit_times);
        }
        let latents = (&noise - &noise_pred)?;

        // The DiT's last block may have run past a flush: stop before the decoder.
        cfg.cancel.check()?;
        // Decode with the LQ frames of the output span as condition.
        let out_span = schedule::chunk_output_span(k);
        let cond = lq.narrow(0, out_span.start - span.start, out_span.len())?;
        let log_shapes = trace.as_ref().is_some_and(|t| t.log_shapes);
        if log_shapes {
            shape_log::start_conv_log();
        }
        let decoded = profile::timed(
            trace.as_deref_mut().map(|t| &mut t.times),
            Stage::Decoder,
            device,
            || {
                self.decoder
                    .decode(&latents, &cond, &mut state.decoder, &cfg.cancel)
            },
        )?;
        if let Some(t) = trace.as_deref_mut().filter(|_| log_shapes) {
            t.decoder_convs = shape_log::take_conv_log();
        }
        if decoded.dim(0)? != out_span.len() {
            candle_core::bail!(
                "chunk {k}: decoder returned {} frames, expected {}",
                decoded.dim(0)?,
                out_span.len()
            )
        }
        cfg.cancel.check()?;
        let out = profile::timed(
            trace.as_deref_mut().map(|t| &mut t.times),
            Stage::ColorFix,
            device,
            || cfg.color_fix.apply(&decoded, &cond),
        )?;
        if let Some(t) = trace.filter(|t| t.keep_tensors) {
            t.lq_features = lq_features.into_iter().next();
            t.noise_pred = Some(noise_pred);
            t.latents = Some(latents);
            t.decoded = Some(decoded);
        }
        state.chunk += 1;
        Ok(out)
    }
}
