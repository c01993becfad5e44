//! The Wan VAE decoder's layers (docs/model.md, "The Wan decoder"): causal 3-D
//! convolutions as 2-D ones over stacked frames, residual blocks, the per-frame
//! attention of the middle, and the upsamplings. Activations are `[t, c, h, w]`,
//! frames as the batch; each causal convolution reads and updates its own slot of
//! the region's cache list.

use candle_core::{DType, Result, Tensor};
use candle_nn::VarBuilder;

use crate::layers::conv::{Conv2d, Then};
use crate::layers::norm::channel_rms_norm;
use crate::layers::{shape_log, softmax};

/// Frames of a 3-D convolution's time kernel, and of the input it remembers.
pub(super) const KERNEL_T: usize = 3;
pub(super) const CACHE_T: usize = KERNEL_T - 1;

/// Most elements the stacked input of one causal convolution may have: larger
/// inputs are convolved a few frames at a time (the stack is 3x its input).
const STACK_ELEMENTS: usize = 1 << 26;

/// Most elements of one block of attention scores (f32: 256 MiB).
const SCORE_ELEMENTS: usize = 1 << 26;

/// The remembered input of every causal convolution of one decoded region,
/// indexed by the convolution's slot; `None` is the zeros before the first frame.
pub(super) type Caches = Vec<Option<Tensor>>;

/// A causal 3-D convolution with time kernel 3 (or 1) and "same" spatial zero
/// padding: output frame j sees input frames j-2, j-1, j, the ones before the call
/// from the cache. Computed as one 2-D convolution over the 3 frames stacked along
/// channels, ordered (time tap, channel), so its weight is `[out, 3 * in, kh, kw]`.
pub(super) struct CausalConv3d {
    conv: Conv2d,
    kernel_t: usize,
    in_c: usize,
    /// Its slot in [`Caches`] (time kernel 3 only).
    slot: usize,
}

impl CausalConv3d {
    /// Loads `<vb>.weight` `[out, in, kt, k, k]` and `.bias` (`kt` 3, or 1 for the
    /// pointwise shortcuts); takes the next cache slot from `slots`.
    pub(super) fn load(
        vb: VarBuilder,
        in_c: usize,
        out_c: usize,
        kernel: (usize, usize),
        slots: &mut usize,
    ) -> Result<Self> {
        let (kernel_t, k) = kernel;
        let w = vb.get((out_c, in_c, kernel_t, k, k), "weight")?;
        let weight =
            w.permute((0, 2, 1, 3, 4))?
                .contiguous()?
                .reshape((out_c, kernel_t * in_c, k, k))?;
        let bias = vb.get(out_c, "bias")?;
        let slot = *slots;
        if kernel_t > 1 {
            *slots += 1;
        }
        Ok(Self {
            conv: Conv2d::new(&weight, Some(bias))?,
            kernel_t,
            in_c,
            slot,
        })
    }

    /// `x`: `[t, in, h, w]`; returns `[t, out, h, w]` and keeps the last 2 input
    /// frames (of the cache and `x` together) for the next call.
    pub(super) fn forward(&self, x: &Tensor, caches: &mut Caches) -> Result<Tensor> {
        if self.kernel_t == 1 {
            return self.conv.forward(x);
        }
        let (t, c, h, w) = x.dims4()?;
        if c != self.in_c {
            candle_core::bail!(
                "Wan decoder: a causal conv of {} input channels got {:?}",
                self.in_c,
                x.dims()
            )
        }
        let cache = &mut caches[self.slot];
        let before = match cache.take() {
            Some(before) => before,
            None => Tensor::zeros((CACHE_T, c, h, w), x.dtype(), x.device())?,
        };
        let frames = Tensor::cat(&[&before, x], 0)?;
        // a copy of its own: a view (or `copy`, which clones the whole storage)
        // would keep all of `frames` alive until the next chunk
        *cache = Some(frames.narrow(0, t, CACHE_T)?.force_contiguous()?);
        let group = (STACK_ELEMENTS / (KERNEL_T * c * h * w).max(1)).clamp(1, t);
        let mut outputs = Vec::with_capacity(t.div_ceil(group));
        for start in (0..t).step_by(group) {
            let n = group.min(t - start);
            let taps: Vec<Tensor> = (0..KERNEL_T)
                .map(|tap| frames.narrow(0, start + tap, n))
                .collect::<Result<_>>()?;
            outputs.push(self.conv.forward(&Tensor::cat(&taps, 1)?)?);
        }
        Tensor::cat(&outputs, 0)
    }
}

/// `gamma` of an RMS norm over channels: `[c, 1, 1, 1]` (`images=False`) or
/// `[c, 1, 1]` (`images=True`), kept as `[c]` in f32.
fn load_gamma(vb: &VarBuilder, c: usize, images: bool) -> Result<Tensor> {
    let gamma = if images {
        vb.get((c, 1, 1), "gamma")?
    } else {
        vb.get((c, 1, 1, 1), "gamma")?
    };
    gamma.flatten_all()?.to_dtype(DType::F32)
}

/// `x + residual(x)`, residual = norm, SiLU, causal conv, norm, SiLU, causal conv;
/// a pointwise conv on the shortcut when the width changes.
pub(super) struct ResidualBlock {
    norm1: Tensor,
    conv1: CausalConv3d,
    norm2: Tensor,
    conv2: CausalConv3d,
    shortcut: Option<CausalConv3d>,
}

impl ResidualBlock {
    pub(super) fn load(
        vb: VarBuilder,
        in_c: usize,
        out_c: usize,
        slots: &mut usize,
    ) -> Result<Self> {
        let r = vb.pp("residual");
        Ok(Self {
            norm1: load_gamma(&r.pp("0"), in_c, false)?,
            conv1: CausalConv3d::load(r.pp("2"), in_c, out_c, (KERNEL_T, 3), slots)?,
            norm2: load_gamma(&r.pp("3"), out_c, false)?,
            conv2: CausalConv3d::load(r.pp("6"), out_c, out_c, (KERNEL_T, 3), slots)?,
            shortcut: if in_c != out_c {
                Some(CausalConv3d::load(
                    vb.pp("shortcut"),
                    in_c,
                    out_c,
                    (1, 1),
                    slots,
                )?)
            } else {
                None
            },
        })
    }

    pub(super) fn forward(&self, x: &Tensor, caches: &mut Caches) -> Result<Tensor> {
        let y = channel_rms_norm(x, &self.norm1, true)?;
        let y = self.conv1.forward(&y, caches)?;
        let y = channel_rms_norm(&y, &self.norm2, true)?;
        let y = self.conv2.forward(&y, caches)?;
        match &self.shortcut {
            Some(shortcut) => y + shortcut.forward(x, caches)?,
            None => y + x,
        }
    }
}

/// Single-head self-attention over the pixels of each frame (no time mixing):
/// norm, pointwise q/k/v, softmax(q k^T / sqrt(c)) v, pointwise projection, plus
/// the input.
pub(super) struct AttentionBlock {
    norm: Tensor,
    to_qkv: Conv2d,
    proj: Conv2d,
    c: usize,
}

impl AttentionBlock {
    pub(super) fn load(vb: VarBuilder, c: usize) -> Result<Self> {
        let conv = |name: &str, out_c: usize| -> Result<Conv2d> {
            let vb = vb.pp(name);
            Conv2d::new(
                &vb.get((out_c, c, 1, 1), "weight")?,
                Some(vb.get(out_c, "bias")?),
            )
        };
        Ok(Self {
            norm: load_gamma(&vb.pp("norm"), c, true)?,
            to_qkv: conv("to_qkv", 3 * c)?,
            proj: conv("proj", c)?,
            c,
        })
    }

    pub(super) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (t, c, h, w) = x.dims4()?;
        let qkv = self
            .to_qkv
            .forward(&channel_rms_norm(x, &self.norm, false)?)?;
        let pixels = h * w;
        // q, k, v of a frame as contiguous [pixels, c] (the products' operands
        // must be contiguous or transposed-contiguous on CUDA)
        let part = |frame: &Tensor, i: usize| -> Result<Tensor> {
            frame
                .narrow(0, i * c, c)?
                .reshape((c, pixels))?
                .t()?
                .contiguous()
        };
        let scale = 1.0 / (self.c as f64).sqrt();
        let rows = (SCORE_ELEMENTS / pixels.max(1)).clamp(1, pixels);
        let mut frames = Vec::with_capacity(t);
        for f in 0..t {
            let frame = qkv.get(f)?;
            let (q, k, v) = (part(&frame, 0)?, part(&frame, 1)?, part(&frame, 2)?);
            let kt = k.t()?;
            let mut blocks = Vec::with_capacity(pixels.div_ceil(rows));
            for start in (0..pixels).step_by(rows) {
                let q = (q.narrow(0, start, rows.min(pixels - start))? * scale)?;
                let scores = shape_log::matmul_named("wan attention scores", &q, &kt)?;
                let probs = softmax::softmax_last_dim_in_place(scores)?.to_dtype(v.dtype())?;
                blocks.push(shape_log::matmul_named("wan attention values", &probs, &v)?);
            }
            // [pixels, c] -> [c, h, w]
            let out = Tensor::cat(&blocks, 0)?.t()?.contiguous()?;
            frames.push(out.reshape((1, c, h, w))?);
        }
        self.proj.forward(&Tensor::cat(&frames, 0)?)? + x
    }
}

/// 2x nearest upsampling of each frame and a 3x3 conv to half the channels; the
/// temporal kind first doubles the frames with a causal time conv to twice the
/// channels, split into two consecutive frames (not on the stream's first frame,
/// which stays one frame).
pub(super) struct Upsample {
    time_conv: Option<CausalConv3d>,
    conv: Conv2d,
    c: usize,
}

impl Upsample {
    pub(super) fn load(
        vb: VarBuilder,
        c: usize,
        temporal: bool,
        slots: &mut usize,
    ) -> Result<Self> {
        let time_conv = if temporal {
            Some(CausalConv3d::load(
                vb.pp("time_conv"),
                c,
                2 * c,
                (KERNEL_T, 1),
                slots,
            )?)
        } else {
            None
        };
        let r = vb.pp("resample").pp("1");
        Ok(Self {
            time_conv,
            conv: Conv2d::new(
                &r.get((c / 2, c, 3, 3), "weight")?,
                Some(r.get(c / 2, "bias")?),
            )?,
            c,
        })
    }

    #[cfg(test)]
    pub(super) fn is_temporal(&self) -> bool {
        self.time_conv.is_some()
    }

    /// `first`: the stream's very first latent frame, which the time conv skips
    /// (its cache stays empty, as the reference's `'Rep'` marker leaves it).
    pub(super) fn forward(&self, x: &Tensor, caches: &mut Caches, first: bool) -> Result<Tensor> {
        let x = match &self.time_conv {
            Some(time_conv) if !first => {
                let (t, _, h, w) = x.dims4()?;
                // [t, 2c, h, w] = [t, 2, c, h, w]: frame 2i takes the first half
                time_conv
                    .forward(x, caches)?
                    .reshape((2 * t, self.c, h, w))?
            }
            _ => x.clone(),
        };
        // read in place by the CPU's Winograd path, upsampled first elsewhere
        self.conv.forward_upsampled_then(&x, Then::default())
    }
}

/// The decoder's head: norm, SiLU, causal conv to RGB.
pub(super) struct Head {
    norm: Tensor,
    conv: CausalConv3d,
}

impl Head {
    pub(super) fn load(vb: VarBuilder, c: usize, slots: &mut usize) -> Result<Self> {
        Ok(Self {
            norm: load_gamma(&vb.pp("0"), c, false)?,
            conv: CausalConv3d::load(vb.pp("2"), c, 3, (KERNEL_T, 3), slots)?,
        })
    }

    pub(super) fn forward(&self, x: &Tensor, caches: &mut Caches) -> Result<Tensor> {
        self.conv
            .forward(&channel_rms_norm(x, &self.norm, true)?, caches)
    }
}
