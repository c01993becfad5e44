//! The LQ projection: turns the bicubic-upscaled input clip into DiT features
//! (docs/model.md, sections "The LQ projection" and "LQ projection caches"). Per 4-frame clip: pixel-unshuffle 16x16,
//! two causal 3-D convolutions (time kernel 4, stride 2) each followed by an RMS
//! norm over channels and SiLU, then one linear layer per fed DiT block.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::layers::conv::Conv2d;
use crate::layers::conv::pad_replicate_hw;
use crate::layers::linear::Linear;
use crate::model::ModelVersion;
use crate::weights::indexed_count;

/// Pixel-unshuffle factor: one token per 16 x 16 pixels.
pub const UNSHUFFLE: usize = 16;
/// Frames of a causal conv's time kernel and of its cache.
const KERNEL_T: usize = 4;
const CACHE_T: usize = 2;
/// Time stride of the causal convs.
const STRIDE_T: usize = 2;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LqProjConfig {
    pub in_channels: usize,
    pub hidden1: usize,
    pub hidden2: usize,
    pub out_dim: usize,
    /// Number of `linear_layers.N`: one feature map per leading DiT block.
    pub layers: usize,
}

impl LqProjConfig {
    pub fn from_shapes(
        names: &[String],
        shape: impl Fn(&str) -> Result<Vec<usize>>,
    ) -> Result<Self> {
        let conv1 = shape("conv1.weight")?;
        let conv2 = shape("conv2.weight")?;
        if conv1.len() != 5
            || conv1[2..] != [4, 3, 3]
            || conv2.len() != 5
            || conv2[2..] != [4, 3, 3]
            || conv2[1] != conv1[0]
        {
            candle_core::bail!(
                "LQ projection convs: expected [h1, 768, 4, 3, 3] and [h2, h1, 4, 3, 3], found {conv1:?} and {conv2:?}"
            )
        }
        let layers = indexed_count(names, "linear_layers.");
        if layers == 0 {
            candle_core::bail!("no 'linear_layers.N.weight' tensor in the LQ projection")
        }
        Ok(Self {
            in_channels: conv1[1],
            hidden1: conv1[0],
            hidden2: conv2[0],
            out_dim: shape("linear_layers.0.weight")?[0],
            layers,
        })
    }
}

/// A causal 3-D convolution, kernel (4, 3, 3), stride (2, 1, 1), spatial
/// replicate padding 1, computed as one 2-D convolution over the 4 stacked input
/// frames of each output frame, every output frame of a call in one batch.
struct CausalConv3d {
    /// A 2-D convolution over `4 * in` channels ordered (time tap, channel).
    conv: Conv2d,
}

impl CausalConv3d {
    fn new(vb: VarBuilder, in_c: usize, out_c: usize, dtype: DType) -> Result<Self> {
        let w = vb.get((out_c, in_c, KERNEL_T, 3, 3), "weight")?;
        let weight = w
            .permute((0, 2, 1, 3, 4))?
            .contiguous()?
            .reshape((out_c, KERNEL_T * in_c, 3, 3))?
            .to_dtype(dtype)?;
        let bias = vb.get(out_c, "bias")?.to_dtype(dtype)?;
        Ok(Self {
            conv: Conv2d::new(&weight, Some(bias))?,
        })
    }

    /// `x`: `[T, C, h, w]` with T = 4 + 2n (cache already in front); returns
    /// `[n + 1, out, h, w]`, all output frames from one 2-D convolution.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let padded = pad_replicate_hw(x, 1)?;
        self.conv.forward_padded(&stack_time_windows(&padded)?)
    }
}

/// The time windows of a kernel-4, stride-2 convolution over `x` `[T, C, h, w]`
/// (T = 4 + 2n), as the batch of one 2-D convolution: `[n + 1, 4 * C, h, w]`,
/// output `o` holding frames `2o .. 2o + 4` ordered (time tap, channel). Seen
/// as `T / 2` frame pairs, window `o` is pairs `o` and `o + 1`, so the windows
/// are two views of `x` joined along channels.
fn stack_time_windows(x: &Tensor) -> Result<Tensor> {
    let (t, c, h, w) = x.dims4()?;
    if t < KERNEL_T || !(t - KERNEL_T).is_multiple_of(STRIDE_T) {
        candle_core::bail!("causal conv: {t} input frames do not fit kernel 4 stride 2")
    }
    let outs = (t - KERNEL_T) / STRIDE_T + 1;
    let pairs = x.reshape((t / STRIDE_T, STRIDE_T * c, h, w))?;
    Tensor::cat(&[pairs.narrow(0, 0, outs)?, pairs.narrow(0, 1, outs)?], 1)
}

/// The RMS norm over channels, then SiLU.
fn rms_norm_silu(x: &Tensor, gamma: &Tensor) -> Result<Tensor> {
    crate::layers::norm::channel_rms_norm(x, gamma, true)
}

/// Temporal state of the projection: what its causal convs remember.
#[derive(Debug, Default, Clone)]
pub struct LqProjState {
    conv1_cache: Option<Tensor>,
    conv2_cache: Option<Tensor>,
    clips: usize,
}

impl LqProjState {
    /// Moves the convs' caches to `device`.
    pub fn move_to(&mut self, device: &candle_core::Device) -> Result<()> {
        super::move_held(&mut self.conv1_cache, device)?;
        super::move_held(&mut self.conv2_cache, device)
    }
}

pub struct LqProj {
    cfg: LqProjConfig,
    conv1: CausalConv3d,
    norm1: Tensor,
    conv2: CausalConv3d,
    norm2: Tensor,
    linears: Vec<Linear>,
    conv_dtype: DType,
}

/// Pixel-unshuffles `[n, 3, H, W]` by `factor` into `[n, 3 * factor^2, H/f, W/f]`,
/// channel = c * f^2 + dy * f + dx.
pub fn pixel_unshuffle(x: &Tensor, factor: usize) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    if h % factor != 0 || w % factor != 0 {
        candle_core::bail!("pixel unshuffle: {h}x{w} is not a multiple of {factor}")
    }
    x.reshape(&[n, c, h / factor, factor, w / factor, factor][..])?
        .permute(vec![0, 1, 3, 5, 2, 4])?
        .contiguous()?
        .reshape((n, c * factor * factor, h / factor, w / factor))
}

impl LqProj {
    pub fn new(cfg: LqProjConfig, vb: VarBuilder, conv_dtype: DType) -> Result<Self> {
        let conv1 = CausalConv3d::new(vb.pp("conv1"), cfg.in_channels, cfg.hidden1, conv_dtype)?;
        let conv2 = CausalConv3d::new(vb.pp("conv2"), cfg.hidden1, cfg.hidden2, conv_dtype)?;
        let norm1 = vb
            .pp("norm1")
            .get((cfg.hidden1, 1, 1, 1), "gamma")?
            .reshape((1, cfg.hidden1, 1, 1))?
            .to_dtype(DType::F32)?;
        let norm2 = vb
            .pp("norm2")
            .get((cfg.hidden2, 1, 1, 1), "gamma")?
            .reshape((1, cfg.hidden2, 1, 1))?
            .to_dtype(DType::F32)?;
        let linears = (0..cfg.layers)
            .map(|i| {
                Linear::load(
                    &vb.pp("linear_layers").pp(i),
                    cfg.hidden2,
                    cfg.out_dim,
                    true,
                )
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            cfg,
            conv1,
            norm1,
            conv2,
            norm2,
            linears,
            conv_dtype,
        })
    }

    pub fn config(&self) -> &LqProjConfig {
        &self.cfg
    }

    /// Feeds one clip of LQ frames `[n, 3, H, W]` (n = 4; n = 1 for the stream's
    /// first clip, which only primes the caches). Returns, for every clip after
    /// the first, one feature map `[h * w, dim]` per linear layer.
    pub fn stream_clip(
        &self,
        clip: &Tensor,
        variant: ModelVersion,
        state: &mut LqProjState,
    ) -> Result<Option<Vec<Tensor>>> {
        let first = state.clips == 0;
        let clip = if first {
            // The stream's first frame, repeated to a full clip.
            let f0 = clip.narrow(0, 0, 1)?;
            Tensor::cat(&[&f0, &f0, &f0, &f0], 0)?
        } else {
            if clip.dim(0)? != KERNEL_T {
                candle_core::bail!("LQ projection: a clip has 4 frames, got {}", clip.dim(0)?)
            }
            clip.clone()
        };
        state.clips += 1;
        let x = pixel_unshuffle(&clip.to_dtype(self.conv_dtype)?, UNSHUFFLE)?;
        if x.dim(1)? != self.cfg.in_channels {
            candle_core::bail!(
                "LQ projection expects {} unshuffled channels, got {}",
                self.cfg.in_channels,
                x.dim(1)?
            )
        }
        let y = self.conv_with_cache(&self.conv1, &x, variant, &mut state.conv1_cache)?;
        let y = rms_norm_silu(&y, &self.norm1)?;
        if first {
            // Only primes conv2's cache with conv1's output.
            state.conv2_cache = Some(
                y.narrow(0, y.dim(0)? - CACHE_T, CACHE_T)?
                    .force_contiguous()?,
            );
            return Ok(None);
        }
        let z = self.conv_with_cache(&self.conv2, &y, variant, &mut state.conv2_cache)?;
        let z = rms_norm_silu(&z, &self.norm2)?;
        // [1, C, h, w] -> tokens (y, x) x C
        let (_, c, h, w) = z.dims4()?;
        let tokens = z.reshape((c, h * w))?.t()?.contiguous()?;
        self.linears
            .iter()
            .map(|l| l.forward(&tokens))
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    /// Runs a causal conv with the 2 frames in front that the weight version
    /// expects, and updates the cache.
    fn conv_with_cache(
        &self,
        conv: &CausalConv3d,
        x: &Tensor,
        variant: ModelVersion,
        cache: &mut Option<Tensor>,
    ) -> Result<Tensor> {
        // its own storage: a view would keep the whole clip alive in the cache
        let tail = x
            .narrow(0, x.dim(0)? - CACHE_T, CACHE_T)?
            .force_contiguous()?;
        let front = match variant {
            // v1 overwrites its cache with the current input before using it.
            ModelVersion::V1 => tail.clone(),
            ModelVersion::V1_1 => match cache.take() {
                Some(prev) => prev,
                // No previous clip: replicate the first frame.
                None => {
                    let f0 = x.narrow(0, 0, 1)?;
                    Tensor::cat(&[&f0, &f0], 0)?
                }
            },
        };
        *cache = Some(tail);
        conv.forward(&Tensor::cat(&[&front, x], 0)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn unshuffle_channel_order() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::arange(0f32, (3 * 4 * 4) as f32, &dev)?.reshape((1, 3, 4, 4))?;
        let y = pixel_unshuffle(&x, 2)?;
        assert_eq!(y.dims(), &[1, 12, 2, 2]);
        // channel c*4 + dy*2 + dx at (i, j) is pixel (c, 2i + dy, 2j + dx)
        let v = y
            .get(0)?
            .get(4 + 2 + 1)?
            .get(1)?
            .get(0)?
            .to_scalar::<f32>()?;
        assert_eq!(v as usize, 16 + 3 * 4 + 1);
        Ok(())
    }

    /// Output `o`'s window is input frames `2o .. 2o + 4`, channels ordered
    /// (time tap, channel), for one and for two output frames.
    #[test]
    fn time_windows_are_the_strided_frame_groups() -> Result<()> {
        let dev = Device::Cpu;
        let (c, h, w) = (3, 2, 5);
        for t in [4, 6, 8] {
            let x = Tensor::arange(0f32, (t * c * h * w) as f32, &dev)?.reshape((t, c, h, w))?;
            let stacked = stack_time_windows(&x)?;
            let outs = (t - KERNEL_T) / 2 + 1;
            assert_eq!(stacked.dims(), &[outs, KERNEL_T * c, h, w]);
            for o in 0..outs {
                let want = x
                    .narrow(0, 2 * o, KERNEL_T)?
                    .flatten_all()?
                    .to_vec1::<f32>()?;
                let got = stacked.get(o)?.flatten_all()?.to_vec1::<f32>()?;
                assert_eq!(got, want, "T={t}, output {o}");
            }
        }
        assert!(stack_time_windows(&Tensor::zeros((5, c, h, w), DType::F32, &dev)?).is_err());
        assert!(stack_time_windows(&Tensor::zeros((2, c, h, w), DType::F32, &dev)?).is_err());
        Ok(())
    }
}
