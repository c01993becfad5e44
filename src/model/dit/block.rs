//! One Wan DiT block: adaLN-modulated sparse self-attention, cross-attention to
//! the prompt, and a GELU feed-forward, each added back to the residual stream.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::EPS;
use super::attention::{ChunkContext, CrossAttention, SelfAttention};
use crate::layers::linear::Linear;
use crate::layers::{norm, residual};
use crate::model::kv_cache::KvCache;
use crate::model::profile::StageTimes;

pub(crate) struct DitBlock {
    self_attn: SelfAttention,
    cross_attn: CrossAttention,
    norm3_w: Tensor,
    norm3_b: Tensor,
    ffn0: Linear,
    ffn2: Linear,
    /// `modulation + t_mod`, split: shift / scale / gate for the self-attention,
    /// then for the feed-forward. The timestep is fixed, so this is a constant.
    modulation: [Tensor; 6],
}

impl DitBlock {
    /// `t_mod`: the projected time embedding `[1, 6, dim]`; `context`: the
    /// embedded prompt `[ctx, dim]`.
    pub fn new(
        dim: usize,
        ffn_dim: usize,
        heads: usize,
        t_mod: &Tensor,
        context: &Tensor,
        vb: VarBuilder,
    ) -> Result<Self> {
        let modulation = vb.get((1, 6, dim), "modulation")?.broadcast_add(t_mod)?;
        let part = |i| modulation.narrow(1, i, 1)?.squeeze(1);
        Ok(Self {
            self_attn: SelfAttention::new(dim, heads, vb.pp("self_attn"))?,
            cross_attn: CrossAttention::new(dim, heads, context, vb.pp("cross_attn"))?,
            norm3_w: vb.pp("norm3").get(dim, "weight")?,
            norm3_b: vb.pp("norm3").get(dim, "bias")?,
            ffn0: Linear::load(&vb.pp("ffn").pp("0"), dim, ffn_dim, true)?,
            ffn2: Linear::load(&vb.pp("ffn").pp("2"), ffn_dim, dim, true)?,
            modulation: [part(0)?, part(1)?, part(2)?, part(3)?, part(4)?, part(5)?],
        })
    }

    /// `x` `[tokens, dim]` to `[tokens, dim]`; returns the block mask too.
    pub fn forward(
        &self,
        x: &Tensor,
        ctx: &mut ChunkContext,
        cache: &mut KvCache,
        times: Option<&mut StageTimes>,
    ) -> Result<(Tensor, Tensor)> {
        let [shift1, scale1, gate1, shift2, scale2, gate2] = &self.modulation;
        let input = norm::layer_norm_modulate(x, shift1, scale1, EPS)?;
        let (attn, mask) = self.self_attn.forward(&input, ctx, cache, times)?;
        let x = residual::gated_in_place(x, attn, gate1)?;

        let normed = norm::layer_norm_affine(&x, &self.norm3_w, &self.norm3_b, EPS)?;
        let x = residual::add_in_place(&x, self.cross_attn.forward(&normed)?)?;

        let input = norm::layer_norm_modulate(&x, shift2, scale2, EPS)?;
        let ffn = self.ffn2.forward(&self.ffn0.forward_gelu(&input)?)?;
        Ok((residual::gated_in_place(&x, ffn, gate2)?, mask))
    }
}
