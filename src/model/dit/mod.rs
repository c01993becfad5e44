//! The Wan2.1 DiT as FlashVSR streams it: one denoising step at t = 1000 over a
//! chunk of latent frames, with locality-constrained sparse self-attention over a
//! rolling KV cache and cross-attention to a fixed prompt
//! (docs/model.md, section "The DiT step"). Each block ([`block`]) and attention
//! ([`attention`]) is its own struct with `new` and `forward`.

mod attention;
mod block;

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::cancel::CancelToken;
use super::kv_cache::KvCache;
use super::profile::StageTimes;
use crate::layers::linear::Linear;
use crate::layers::norm;
use crate::layers::shape_log;
use crate::layers::sparse_attention::{SparseConfig, TokenGrid};
use crate::weights::indexed_count;
use attention::ChunkContext;
use block::DitBlock;

/// Every Wan model uses 128-wide attention heads.
pub const HEAD_DIM: usize = 128;
/// The single timestep the distilled model runs at.
pub const TIMESTEP: f64 = 1000.0;
const EPS: f64 = 1e-6;

/// Sizes of the DiT, read from the weight shapes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DitConfig {
    pub dim: usize,
    pub ffn_dim: usize,
    pub heads: usize,
    pub num_layers: usize,
    pub text_dim: usize,
    pub freq_dim: usize,
    pub in_channels: usize,
    pub out_channels: usize,
}

impl DitConfig {
    /// Reads the sizes from tensor shapes through `shape(name)`; `names` lists every
    /// tensor (to count the blocks).
    pub fn from_shapes(
        names: &[String],
        shape: impl Fn(&str) -> Result<Vec<usize>>,
    ) -> Result<Self> {
        let patch = shape("patch_embedding.weight")?;
        if patch.len() != 5 || patch[2..] != [1, 2, 2] {
            candle_core::bail!(
                "tensor 'patch_embedding.weight': expected [dim, 16, 1, 2, 2], found {patch:?}"
            )
        }
        let dim = patch[0];
        if dim == 0 || dim % HEAD_DIM != 0 {
            candle_core::bail!(
                "tensor 'patch_embedding.weight': model width {dim} is not a multiple of the head size {HEAD_DIM}"
            )
        }
        let num_layers = indexed_count(names, "blocks.");
        if num_layers == 0 {
            candle_core::bail!("no 'blocks.N.*' tensors: not a Wan DiT checkpoint")
        }
        let head = shape("head.head.weight")?;
        Ok(Self {
            dim,
            ffn_dim: shape("blocks.0.ffn.0.weight")?[0],
            heads: dim / HEAD_DIM,
            num_layers,
            text_dim: shape("text_embedding.0.weight")?[1],
            freq_dim: shape("time_embedding.0.weight")?[1],
            in_channels: patch[1],
            out_channels: head[0] / 4,
        })
    }
}

/// 1-D sinusoidal embedding of `t` over `dim` dims: cosines first, then sines,
/// frequencies `10000^(-i / (dim/2))`, computed in f64.
pub fn timestep_embedding(t: f64, dim: usize, device: &Device) -> Result<Tensor> {
    let half = dim / 2;
    let args: Vec<f64> = (0..half)
        .map(|i| t * 10000f64.powf(-(i as f64) / half as f64))
        .collect();
    let emb: Vec<f32> = args
        .iter()
        .map(|a| a.cos() as f32)
        .chain(args.iter().map(|a| a.sin() as f32))
        .collect();
    Tensor::from_vec(emb, (1, dim), device)
}

/// What one chunk's DiT pass can report: tensors for parity checks (when
/// `keep_tensors`), stage times for benchmarks.
#[derive(Debug, Default)]
pub struct DitTrace {
    pub keep_tensors: bool,
    pub block0_out: Option<Tensor>,
    pub masks: Vec<Tensor>,
    /// Time spent building block masks and in self-attention.
    pub times: StageTimes,
    /// Record the shape of every matrix product (see `shape_log::matmul`).
    pub log_matmuls: bool,
    pub matmuls: Vec<shape_log::MatmulShape>,
}

/// Per-stream DiT state: one KV cache per block.
#[derive(Debug, Default)]
pub struct DitState {
    pub caches: Vec<KvCache>,
}

impl DitState {
    /// Moves every block's cache to `device`.
    pub fn move_to(&mut self, device: &candle_core::Device) -> Result<()> {
        self.caches.iter_mut().try_for_each(|c| c.move_to(device))
    }

    /// 128-token windows held by block 0's cache.
    pub fn cached_windows(&self) -> usize {
        self.caches.first().map(KvCache::windows).unwrap_or(0)
    }
}

pub struct Dit {
    cfg: DitConfig,
    patch_embedding: Linear,
    blocks: Vec<DitBlock>,
    head: Linear,
    head_shift: Tensor,
    head_scale: Tensor,
    t: Tensor,
    t_mod: Tensor,
    dtype: DType,
}

impl Dit {
    /// Loads the DiT and precomputes everything that does not depend on the
    /// video: time embedding, modulations, and the prompt's cross-attention keys
    /// and values (`prompt`: `[1, ctx, text_dim]`).
    pub fn new(cfg: DitConfig, vb: VarBuilder, prompt: &Tensor) -> Result<Self> {
        let dim = cfg.dim;
        let dtype = vb.dtype();
        let device = vb.device().clone();
        let patch_w = vb
            .pp("patch_embedding")
            .get((dim, cfg.in_channels, 1, 2, 2), "weight")?
            .reshape((dim, cfg.in_channels * 4))?;
        let patch_embedding =
            Linear::new(patch_w, Some(vb.pp("patch_embedding").get(dim, "bias")?))?;

        let te = vb.pp("text_embedding");
        let text0 = Linear::load(&te.pp("0"), cfg.text_dim, dim, true)?;
        let text2 = Linear::load(&te.pp("2"), dim, dim, true)?;
        let prompt_dims = prompt.dims();
        if prompt_dims.len() != 3 || prompt_dims[0] != 1 || prompt_dims[2] != cfg.text_dim {
            candle_core::bail!(
                "prompt tensor: expected [1, ctx_len, {}], found {prompt_dims:?}",
                cfg.text_dim
            )
        }
        let context = text2.forward(
            &text0
                .forward(&prompt.to_dtype(dtype)?.squeeze(0)?)?
                .gelu()?,
        )?;

        let tb = vb.pp("time_embedding");
        let time0 = Linear::load(&tb.pp("0"), cfg.freq_dim, dim, true)?;
        let time2 = Linear::load(&tb.pp("2"), dim, dim, true)?;
        let proj = Linear::load(&vb.pp("time_projection").pp("1"), dim, 6 * dim, true)?;
        let sinus = timestep_embedding(TIMESTEP, cfg.freq_dim, &device)?.to_dtype(dtype)?;
        let t = time2.forward(&time0.forward(&sinus)?.silu()?)?;
        let t_mod = proj.forward(&t.silu()?)?.reshape((1, 6, dim))?;

        let blocks = (0..cfg.num_layers)
            .map(|i| {
                DitBlock::new(
                    dim,
                    cfg.ffn_dim,
                    cfg.heads,
                    &t_mod,
                    &context,
                    vb.pp("blocks").pp(i),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let hb = vb.pp("head");
        let head = Linear::load(&hb.pp("head"), dim, cfg.out_channels * 4, true)?;
        let head_mod = hb
            .get((1, 2, dim), "modulation")?
            .broadcast_add(&t.unsqueeze(1)?)?;
        let head_shift = head_mod.narrow(1, 0, 1)?.squeeze(1)?;
        let head_scale = head_mod.narrow(1, 1, 1)?.squeeze(1)?;
        Ok(Self {
            cfg,
            patch_embedding,
            blocks,
            head,
            head_shift,
            head_scale,
            t,
            t_mod,
            dtype,
        })
    }

    pub fn config(&self) -> &DitConfig {
        &self.cfg
    }

    /// Time embedding `[1, dim]` and its projection `[1, 6, dim]` for t = 1000.
    pub fn time_embeddings(&self) -> (&Tensor, &Tensor) {
        (&self.t, &self.t_mod)
    }

    pub fn new_state(&self) -> DitState {
        DitState {
            caches: vec![KvCache::default(); self.blocks.len()],
        }
    }

    /// One denoising pass over a chunk: `noise` `[1, C, f, h, w]` with the LQ
    /// features added to the leading blocks, at RoPE time positions from
    /// `time_offset`; updates the KV caches in `state`. Polls `cancel` before
    /// every block, so that a flush waits for one block at most
    /// (docs/element.md): a cancelled pass returns `Cancelled` and leaves
    /// `state` half-updated, and the sequence must restart.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        noise: &Tensor,
        lq_features: &[Tensor],
        time_offset: usize,
        sparse: &SparseConfig,
        state: &mut DitState,
        mut trace: Option<&mut DitTrace>,
        cancel: &CancelToken,
    ) -> Result<Tensor> {
        let (_, c, f, lh, lw) = noise.dims5()?;
        if c != self.cfg.in_channels || lh % 2 != 0 || lw % 2 != 0 {
            candle_core::bail!(
                "DiT input: expected [1, {}, f, even, even], found {:?}",
                self.cfg.in_channels,
                noise.dims()
            )
        }
        let grid = TokenGrid {
            frames: f,
            rows: lh / 2,
            cols: lw / 2,
        };
        grid.check()?;
        if trace.as_ref().is_some_and(|t| t.log_matmuls) {
            shape_log::start_matmul_log();
        }
        let tokens = f * grid.rows * grid.cols;
        // (c, f, y, py, x, px) -> tokens (f, y, x) x features (c, py, px)
        let patches = noise
            .to_dtype(self.dtype)?
            .reshape(&[c, f, grid.rows, 2, grid.cols, 2][..])?
            .permute(vec![1, 2, 4, 0, 3, 5])?
            .contiguous()?
            .reshape((tokens, c * 4))?;
        let mut x = self.patch_embedding.forward(&patches)?;

        if state.caches.len() != self.blocks.len() {
            *state = self.new_state();
        }
        let mut ctx = ChunkContext::new(grid, time_offset, sparse, noise.device())?;
        for (i, (block, cache)) in self.blocks.iter().zip(&mut state.caches).enumerate() {
            cancel.check()?;
            if let Some(features) = lq_features.get(i) {
                x = x.broadcast_add(&features.to_dtype(self.dtype)?)?;
            }
            let times = trace.as_deref_mut().map(|t| &mut t.times);
            let (out, mask) = block.forward(&x, &mut ctx, cache, times)?;
            x = out;
            if let Some(trace) = trace.as_deref_mut().filter(|t| t.keep_tensors) {
                if i == 0 {
                    trace.block0_out = Some(x.clone());
                }
                trace.masks.push(mask);
            }
        }

        let out = self.head.forward(&norm::layer_norm_modulate(
            &x,
            &self.head_shift,
            &self.head_scale,
            EPS,
        )?)?;
        if let Some(t) = trace.filter(|t| t.log_matmuls) {
            t.matmuls = shape_log::take_matmul_log();
        }
        // tokens (f, y, x) x (py, px, c) -> [1, c, f, 2y + py, 2x + px]
        let co = self.cfg.out_channels;
        out.reshape(&[f, grid.rows, grid.cols, 2, 2, co][..])?
            .permute(vec![5, 0, 1, 3, 2, 4])?
            .contiguous()?
            .reshape((1, co, f, lh, lw))?
            .to_dtype(DType::F32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sinusoid_is_cos_then_sin() -> Result<()> {
        let e = timestep_embedding(1000.0, 8, &Device::Cpu)?.to_vec2::<f32>()?;
        assert!((e[0][0] - 1000f32.cos()).abs() < 1e-5);
        assert!((e[0][4] - 1000f32.sin()).abs() < 1e-5);
        assert!((e[0][1] - (1000f64 * 10000f64.powf(-0.25)).cos() as f32).abs() < 1e-5);
        Ok(())
    }

    #[test]
    fn config_comes_from_shapes() -> Result<()> {
        let names: Vec<String> = [
            "blocks.0.ffn.0.weight",
            "blocks.29.norm3.bias",
            "head.head.weight",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let shape = |n: &str| -> Result<Vec<usize>> {
            Ok(match n {
                "patch_embedding.weight" => vec![1536, 16, 1, 2, 2],
                "blocks.0.ffn.0.weight" => vec![8960, 1536],
                "head.head.weight" => vec![64, 1536],
                "text_embedding.0.weight" => vec![1536, 4096],
                "time_embedding.0.weight" => vec![1536, 256],
                _ => candle_core::bail!("no {n}"),
            })
        };
        let cfg = DitConfig::from_shapes(&names, shape)?;
        assert_eq!(
            cfg,
            DitConfig {
                dim: 1536,
                ffn_dim: 8960,
                heads: 12,
                num_layers: 30,
                text_dim: 4096,
                freq_dim: 256,
                in_channels: 16,
                out_channels: 16
            }
        );
        Ok(())
    }
}
