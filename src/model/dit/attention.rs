//! The two attentions of a DiT block: sparse self-attention over this chunk's
//! windows and the KV cache, and cross-attention to the fixed prompt
//! (docs/model.md, sections "The sparse mask" and "The DiT KV cache").

use candle_core::{Device, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::{EPS, HEAD_DIM};
use crate::layers::attention::{attention, merge_heads, split_heads};
use crate::layers::linear::Linear;
use crate::layers::norm;
use crate::layers::products::{self, CpuProducts};
use crate::layers::sparse_attention::{self, SparseConfig, TokenGrid};
use crate::model::kv_cache::KvCache;
use crate::model::profile::{self, Stage, StageTimes};
use crate::model::rope;

/// What every block of one chunk shares: the token grid, the RoPE tables of its
/// positions, the sparse-attention settings and the local bias (built once per
/// key-window count).
pub(crate) struct ChunkContext<'a> {
    pub grid: TokenGrid,
    pub tokens: usize,
    pub cos: Tensor,
    pub sin: Tensor,
    pub sparse: &'a SparseConfig,
    pub device: Device,
    local_bias: Option<(usize, Tensor)>,
}

impl<'a> ChunkContext<'a> {
    pub fn new(
        grid: TokenGrid,
        time_offset: usize,
        sparse: &'a SparseConfig,
        device: &Device,
    ) -> Result<Self> {
        let (cos, sin) = rope::rope_tables(
            HEAD_DIM,
            time_offset,
            grid.frames,
            grid.rows,
            grid.cols,
            device,
        )?;
        Ok(Self {
            grid,
            tokens: grid.frames * grid.rows * grid.cols,
            cos,
            sin,
            sparse,
            device: device.clone(),
            local_bias: None,
        })
    }

    /// The local-window bias for `nq` query and `nk` key windows.
    fn local_bias(&mut self, nq: usize, nk: usize) -> Result<Tensor> {
        match &self.local_bias {
            Some((n, b)) if *n == nk => Ok(b.clone()),
            _ => {
                let b = sparse_attention::local_bias(
                    self.grid,
                    nq,
                    nk,
                    self.sparse.local_range,
                    &self.device,
                )?;
                self.local_bias = Some((nk, b.clone()));
                Ok(b)
            }
        }
    }
}

/// Self-attention with RMS-normed queries and keys, RoPE, and the block-sparse
/// mask over the cached and current windows.
pub(crate) struct SelfAttention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    norm_q: Tensor,
    norm_k: Tensor,
    heads: usize,
    /// The precision of the attention's CPU products, as the linears' (`layers::products`).
    products: CpuProducts,
}

impl SelfAttention {
    pub fn new(dim: usize, heads: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            products: products::at_load(),
            q: Linear::load(&vb.pp("q"), dim, dim, true)?,
            k: Linear::load(&vb.pp("k"), dim, dim, true)?,
            v: Linear::load(&vb.pp("v"), dim, dim, true)?,
            o: Linear::load(&vb.pp("o"), dim, dim, true)?,
            norm_q: vb.pp("norm_q").get(dim, "weight")?,
            norm_k: vb.pp("norm_k").get(dim, "weight")?,
            heads,
        })
    }

    /// `x` `[tokens, dim]` (already normed and modulated) to `[tokens, dim]`;
    /// extends `cache` with this chunk's keys and values. Returns the output and
    /// the block mask it used.
    pub fn forward(
        &self,
        x: &Tensor,
        ctx: &mut ChunkContext,
        cache: &mut KvCache,
        mut times: Option<&mut StageTimes>,
    ) -> Result<(Tensor, Tensor)> {
        let (tokens, heads, grid) = (ctx.tokens, self.heads, ctx.grid);
        let q = norm::rms_norm(&self.q.forward(x)?, &self.norm_q, EPS)?
            .reshape((tokens, heads, HEAD_DIM))?;
        let k = norm::rms_norm(&self.k.forward(x)?, &self.norm_k, EPS)?
            .reshape((tokens, heads, HEAD_DIM))?;
        let v = self.v.forward(x)?.reshape((tokens, heads, HEAD_DIM))?;
        let q = rope::apply_rope_to_windows(&q, &ctx.cos, &ctx.sin, grid)?;
        let k = rope::apply_rope_to_windows(&k, &ctx.cos, &ctx.sin, grid)?;
        let v = sparse_attention::to_windows(&v, grid)?;
        let (k_all, v_all) = cache.extend(&k, &v)?;
        let bias = ctx.local_bias(q.dim(1)?, k_all.dim(1)?)?;
        let sparse = ctx.sparse;
        let mask = profile::timed(times.as_deref_mut(), Stage::Mask, &ctx.device, || {
            sparse_attention::block_mask(&q, &k_all, &bias, grid, sparse.topk_ratio)
        })?;
        let attn = profile::timed(times, Stage::Attention, &ctx.device, || {
            sparse_attention::sparse_attention_with(&q, &k_all, &v_all, &mask, self.products)
        })?;
        cache.store(
            k_all,
            v_all,
            grid.blocks_per_time_window(),
            sparse.kv_time_windows,
        )?;
        let out = self
            .o
            .forward(&sparse_attention::from_windows(&attn, grid)?)?;
        Ok((out, mask))
    }
}

/// Cross-attention to the prompt, whose keys and values are computed once at
/// load: the prompt never changes.
pub(crate) struct CrossAttention {
    q: Linear,
    o: Linear,
    norm_q: Tensor,
    /// Keys and values of the prompt, `[heads, ctx, head_dim]`.
    k: Tensor,
    v: Tensor,
    heads: usize,
}

impl CrossAttention {
    /// `context`: the embedded prompt, `[ctx, dim]`.
    pub fn new(dim: usize, heads: usize, context: &Tensor, vb: VarBuilder) -> Result<Self> {
        let k_proj = Linear::load(&vb.pp("k"), dim, dim, true)?;
        let v_proj = Linear::load(&vb.pp("v"), dim, dim, true)?;
        let norm_k = vb.pp("norm_k").get(dim, "weight")?;
        let k = split_heads(
            &norm::rms_norm(&k_proj.forward(context)?, &norm_k, EPS)?,
            heads,
        )?;
        let v = split_heads(&v_proj.forward(context)?, heads)?;
        Ok(Self {
            q: Linear::load(&vb.pp("q"), dim, dim, true)?,
            o: Linear::load(&vb.pp("o"), dim, dim, true)?,
            norm_q: vb.pp("norm_q").get(dim, "weight")?,
            k,
            v,
            heads,
        })
    }

    /// `x` `[tokens, dim]` (already normed) to `[tokens, dim]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let q = split_heads(
            &norm::rms_norm(&self.q.forward(x)?, &self.norm_q, EPS)?,
            self.heads,
        )?;
        self.o
            .forward(&merge_heads(&attention(&q, &self.k, &self.v)?)?)
    }
}
