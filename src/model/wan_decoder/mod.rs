//! The Wan2.1 video VAE's decoder, FlashVSR's "full" decoder (docs/model.md, "The
//! Wan decoder"): a causal 3-D convolutional decoder from 16-channel latents to RGB
//! at 8x the size and 4 frames per latent frame (the first latent frame of a stream
//! gives one). Every 3-D convolution keeps the last 2 frames of its input, so the
//! decoder runs chunk by chunk, one latent frame at a time, with exactly the result
//! of decoding the whole video at once. Unlike the TCDecoder it takes no LQ
//! condition. Large frames are decoded in spatial tiles, each with its own caches
//! (`tiled`).

mod layers;
#[cfg(test)]
mod tests;
mod tiled;

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;

use super::cancel::CancelToken;
use super::tcdecoder::DecoderTiling;
use super::tiling::Crop;
use crate::layers::conv::Conv2d;
use crate::weights::indexed_count;
use layers::{AttentionBlock, Caches, CausalConv3d, Head, KERNEL_T, ResidualBlock, Upsample};

pub use tiled::WAN_HALO;

/// The per-channel mean and standard deviation of Wan2.1's latents (fixed with
/// the VAE; not in its weight file): latents are decoded as `z * std + mean`.
pub const LATENT_MEAN: [f32; 16] = [
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508, 0.4134, -0.0715, 0.5517,
    -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
];
pub const LATENT_STD: [f32; 16] = [
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743, 3.2687, 2.1526, 2.8652, 1.5579,
    1.6382, 1.1253, 2.8251, 1.9160,
];

/// One layer of the upsampling part, as the weight file lays it out
/// (`decoder.upsamples.N`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WanLayer {
    Residual {
        in_c: usize,
        out_c: usize,
    },
    Attention {
        c: usize,
    },
    /// 2x spatial upsampling to `c / 2` channels; `temporal`: frames doubled too.
    Upsample {
        c: usize,
        temporal: bool,
    },
}

/// The decoder's widths and layers, read from the tensor shapes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WanDecoderConfig {
    /// Latent channels (16).
    pub z_dim: usize,
    /// Width of the first conv and the middle blocks (384 as released).
    pub middle: usize,
    pub upsamples: Vec<WanLayer>,
    /// Width of the head's input (96 as released).
    pub head: usize,
}

/// Spatial and temporal upsamplings the FlashVSR schedule needs: 8x the latent
/// size, 4 frames per latent frame.
const SPATIAL_UPSAMPLES: usize = 3;
const TEMPORAL_UPSAMPLES: usize = 2;

impl WanDecoderConfig {
    /// Reads the layers from the VAE file's `decoder.*` and `conv2.*` shapes;
    /// errors name the tensor and the shapes expected and found.
    pub fn from_shapes(
        names: &[String],
        shape: impl Fn(&str) -> Result<Vec<usize>>,
    ) -> Result<Self> {
        let conv1 = shape("decoder.conv1.weight")?;
        let [middle, z_dim, 3, 3, 3] = conv1[..] else {
            candle_core::bail!(
                "tensor 'decoder.conv1.weight': expected [c, z_dim, 3, 3, 3], found {conv1:?}"
            )
        };
        let conv2 = shape("conv2.weight")?;
        if conv2 != [z_dim, z_dim, 1, 1, 1] {
            candle_core::bail!(
                "tensor 'conv2.weight': expected [{z_dim}, {z_dim}, 1, 1, 1], found {conv2:?}"
            )
        }
        let count = indexed_count(names, "decoder.upsamples.");
        let has = |name: String| names.binary_search(&name).is_ok();
        let mut upsamples = Vec::with_capacity(count);
        for i in 0..count {
            let p = format!("decoder.upsamples.{i}");
            let layer = if has(format!("{p}.residual.2.weight")) {
                let w = shape(&format!("{p}.residual.2.weight"))?;
                match w[..] {
                    [out_c, in_c, 3, 3, 3] => WanLayer::Residual { in_c, out_c },
                    _ => candle_core::bail!(
                        "tensor '{p}.residual.2.weight': expected [out, in, 3, 3, 3], found {w:?}"
                    ),
                }
            } else if has(format!("{p}.resample.1.weight")) {
                let w = shape(&format!("{p}.resample.1.weight"))?;
                match w[..] {
                    [half, c, 3, 3] if 2 * half == c => WanLayer::Upsample {
                        c,
                        temporal: has(format!("{p}.time_conv.weight")),
                    },
                    _ => candle_core::bail!(
                        "tensor '{p}.resample.1.weight': expected [c / 2, c, 3, 3], found {w:?}"
                    ),
                }
            } else if has(format!("{p}.to_qkv.weight")) {
                WanLayer::Attention {
                    c: shape(&format!("{p}.to_qkv.weight"))?[1],
                }
            } else {
                candle_core::bail!(
                    "'{p}': neither a residual block, an attention block nor an upsampling"
                )
            };
            upsamples.push(layer);
        }
        let head = shape("decoder.head.2.weight")?;
        let [3, head_c, 3, 3, 3] = head[..] else {
            candle_core::bail!(
                "tensor 'decoder.head.2.weight': expected [3, c, 3, 3, 3], found {head:?}"
            )
        };
        let cfg = Self {
            z_dim,
            middle,
            upsamples,
            head: head_c,
        };
        cfg.check_chain()?;
        Ok(cfg)
    }

    /// The layout of the official `Decoder3d` with base width `dim` (96 as
    /// released: widths 384, 384, 192, 96), for estimates without a weight file.
    pub fn official(dim: usize) -> Self {
        let residual = |in_c, out_c| WanLayer::Residual { in_c, out_c };
        let (c4, c2) = (4 * dim, 2 * dim);
        let mut upsamples = Vec::new();
        for (in_c, out_c, up) in [
            (c4, c4, Some((c4, true))),
            (c2, c4, Some((c4, true))),
            (c2, c2, Some((c2, false))),
            (dim, dim, None),
        ] {
            upsamples.push(residual(in_c, out_c));
            upsamples.push(residual(out_c, out_c));
            upsamples.push(residual(out_c, out_c));
            if let Some((c, temporal)) = up {
                upsamples.push(WanLayer::Upsample { c, temporal });
            }
        }
        Self {
            z_dim: LATENT_MEAN.len(),
            middle: c4,
            upsamples,
            head: dim,
        }
    }

    /// Checks that each layer takes the width the one before gives, and that the
    /// upsamplings make 8x the size and 4 frames per latent frame.
    fn check_chain(&self) -> Result<()> {
        let mut c = self.middle;
        let (mut spatial, mut temporal) = (0, 0);
        for (i, layer) in self.upsamples.iter().enumerate() {
            let (takes, gives) = match *layer {
                WanLayer::Residual { in_c, out_c } => (in_c, out_c),
                WanLayer::Attention { c } => (c, c),
                WanLayer::Upsample { c, temporal: t } => {
                    spatial += 1;
                    temporal += usize::from(t);
                    (c, c / 2)
                }
            };
            if takes != c {
                candle_core::bail!(
                    "'decoder.upsamples.{i}' takes {takes} channels, the layer before gives {c}"
                )
            }
            c = gives;
        }
        if c != self.head {
            candle_core::bail!(
                "'decoder.head' takes {} channels, the last upsampling layer gives {c}",
                self.head
            )
        }
        if spatial != SPATIAL_UPSAMPLES || temporal != TEMPORAL_UPSAMPLES {
            candle_core::bail!(
                "'decoder.upsamples': {spatial} spatial and {temporal} temporal upsamplings, \
                 FlashVSR needs {SPATIAL_UPSAMPLES} and {TEMPORAL_UPSAMPLES}"
            )
        }
        Ok(())
    }

    /// The widest activation at each resolution (latent, 2x, 4x, 8x) and the
    /// frames per latent frame there, for the memory model; with the input
    /// widths of the time-3 convolutions at that resolution, whose last 2 input
    /// frames are held between chunks.
    pub fn levels(&self) -> [WanLevel; 4] {
        let mut levels = [WanLevel::default(); 4];
        levels[0] = WanLevel {
            widest: self.middle,
            frames: 1,
            cached_channels: self.z_dim + 4 * self.middle,
        };
        let (mut level, mut frames) = (0, 1);
        for layer in &self.upsamples {
            match *layer {
                WanLayer::Residual { in_c, out_c } => {
                    let l = &mut levels[level];
                    l.widest = l.widest.max(in_c).max(out_c);
                    l.cached_channels += in_c + out_c;
                }
                WanLayer::Attention { .. } => {}
                WanLayer::Upsample { c, temporal } => {
                    if temporal {
                        levels[level].cached_channels += c;
                        levels[level].widest = levels[level].widest.max(2 * c);
                        frames *= 2;
                    }
                    level += 1;
                    levels[level].frames = frames;
                    levels[level].widest = levels[level].widest.max(c);
                }
            }
        }
        levels[SPATIAL_UPSAMPLES].cached_channels += self.head;
        levels
    }
}

/// One resolution of the decoder, for the memory model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WanLevel {
    /// The widest activation (channels).
    pub widest: usize,
    /// Frames per latent frame.
    pub frames: usize,
    /// Channels of the 2 frames every causal convolution here remembers, summed.
    pub cached_channels: usize,
}

enum Layer {
    Residual(ResidualBlock),
    Attention(AttentionBlock),
    Upsample(Upsample),
}

pub struct WanDecoder {
    cfg: WanDecoderConfig,
    dtype: DType,
    /// `conv2`: the pointwise conv on the rescaled latents.
    conv_latent: Conv2d,
    conv1: CausalConv3d,
    middle: [Layer; 3],
    upsamples: Vec<Layer>,
    head: Head,
    /// Cache slots: one per time-3 causal convolution.
    slots: usize,
    /// `[1, z_dim, 1, 1]` each, in the compute dtype.
    mean: Tensor,
    std: Tensor,
}

impl WanDecoder {
    /// `vb` over the VAE file (`decoder.*`, `conv2.*`; the encoder is not read).
    pub fn new(cfg: WanDecoderConfig, vb: VarBuilder) -> Result<Self> {
        if cfg.z_dim != LATENT_MEAN.len() {
            candle_core::bail!(
                "tensor 'decoder.conv1.weight': {} latent channels, Wan2.1 has {}",
                cfg.z_dim,
                LATENT_MEAN.len()
            )
        }
        let mut slots = 0;
        let d = vb.pp("decoder");
        let z = cfg.z_dim;
        let c2 = vb.pp("conv2");
        let conv_latent = Conv2d::new(
            &c2.get((z, z, 1, 1, 1), "weight")?.reshape((z, z, 1, 1))?,
            Some(c2.get(z, "bias")?),
        )?;
        let conv1 = CausalConv3d::load(d.pp("conv1"), z, cfg.middle, (KERNEL_T, 3), &mut slots)?;
        let m = d.pp("middle");
        let c = cfg.middle;
        let middle = [
            Layer::Residual(ResidualBlock::load(m.pp("0"), c, c, &mut slots)?),
            Layer::Attention(AttentionBlock::load(m.pp("1"), c)?),
            Layer::Residual(ResidualBlock::load(m.pp("2"), c, c, &mut slots)?),
        ];
        let u = d.pp("upsamples");
        let upsamples = cfg
            .upsamples
            .iter()
            .enumerate()
            .map(|(i, layer)| {
                Ok(match *layer {
                    WanLayer::Residual { in_c, out_c } => {
                        Layer::Residual(ResidualBlock::load(u.pp(i), in_c, out_c, &mut slots)?)
                    }
                    WanLayer::Attention { c } => {
                        Layer::Attention(AttentionBlock::load(u.pp(i), c)?)
                    }
                    WanLayer::Upsample { c, temporal } => {
                        Layer::Upsample(Upsample::load(u.pp(i), c, temporal, &mut slots)?)
                    }
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let head = Head::load(d.pp("head"), cfg.head, &mut slots)?;
        let dtype = vb.dtype();
        let device = vb.device();
        let per_channel = |values: &[f32; 16]| -> Result<Tensor> {
            Tensor::new(values, device)?
                .reshape((1, z, 1, 1))?
                .to_dtype(dtype)
        };
        Ok(Self {
            mean: per_channel(&LATENT_MEAN)?,
            std: per_channel(&LATENT_STD)?,
            cfg,
            dtype,
            conv_latent,
            conv1,
            middle,
            upsamples,
            head,
            slots,
        })
    }

    pub fn config(&self) -> &WanDecoderConfig {
        &self.cfg
    }

    /// Decodes `latents` `[1, 16, f, h, w]` with the stream's caches in `state`:
    /// frames `[m, 3, 8h, 8w]` f32 in [-1, 1], m = 4f, or 4f - 3 for the stream's
    /// first chunk. `cancel` is polled before every latent frame, stage and tile.
    pub fn decode(
        &self,
        latents: &Tensor,
        state: &mut WanDecoderState,
        cancel: &CancelToken,
    ) -> Result<Tensor> {
        let (_, z, f, h, w) = latents.dims5()?;
        if z != self.cfg.z_dim || f == 0 {
            candle_core::bail!(
                "Wan decoder: latents {:?}, expected [1, {}, f >= 1, h, w]",
                latents.dims(),
                self.cfg.z_dim
            )
        }
        match state.frame {
            Some(frame) if frame != (h, w) => candle_core::bail!(
                "Wan decoder: a {}x{} chunk in a stream of {}x{} frames (reset the stream first)",
                8 * w,
                8 * h,
                8 * frame.1,
                8 * frame.0
            ),
            _ => state.frame = Some((h, w)),
        }
        // [1, z, f, h, w] -> [f, z, h, w], z * std + mean, then conv2
        let x = latents
            .to_dtype(self.dtype)?
            .squeeze(0)?
            .transpose(0, 1)?
            .contiguous()?;
        let x = x.broadcast_mul(&self.std)?.broadcast_add(&self.mean)?;
        let x = self.conv_latent.forward(&x)?;
        let out = match state.tiling {
            None => {
                state.regions.resize_with(1, || vec![None; self.slots]);
                let no_crop = [Crop::default(); SPATIAL_UPSAMPLES];
                self.decode_region(&x, &mut state.regions[0], state.started, &no_crop, cancel)?
            }
            Some(tiling) => self.decode_tiled(&x, &tiling, state, cancel)?,
        };
        state.started = true;
        Ok(out)
    }

    /// Decodes `x` `[f, z, h, w]` (rescaled latents of the whole frame or one
    /// region) one latent frame at a time with the region's caches, cutting
    /// `crops[s]` off after upsampling `s`: `[m, 3, h', w']` f32 in [-1, 1].
    fn decode_region(
        &self,
        x: &Tensor,
        caches: &mut Caches,
        started: bool,
        crops: &[Crop; SPATIAL_UPSAMPLES],
        cancel: &CancelToken,
    ) -> Result<Tensor> {
        let f = x.dim(0)?;
        let mut frames = Vec::with_capacity(f);
        for t in 0..f {
            let first = !started && t == 0;
            frames.push(self.decode_latent(&x.narrow(0, t, 1)?, caches, first, crops, cancel)?);
        }
        Tensor::cat(&frames, 0)?
            .clamp(-1f32, 1f32)?
            .to_dtype(DType::F32)
    }

    fn decode_latent(
        &self,
        x: &Tensor,
        caches: &mut Caches,
        first: bool,
        crops: &[Crop; SPATIAL_UPSAMPLES],
        cancel: &CancelToken,
    ) -> Result<Tensor> {
        cancel.check()?;
        let mut x = self.conv1.forward(x, caches)?;
        for layer in &self.middle {
            x = Self::layer(layer, &x, caches, first)?;
        }
        let mut upsampled = 0;
        for layer in &self.upsamples {
            x = Self::layer(layer, &x, caches, first)?;
            if let Layer::Upsample(_) = layer {
                x = crops[upsampled].apply(&x)?;
                upsampled += 1;
                cancel.check()?;
            }
        }
        self.head.forward(&x, caches)
    }

    fn layer(layer: &Layer, x: &Tensor, caches: &mut Caches, first: bool) -> Result<Tensor> {
        match layer {
            Layer::Residual(block) => block.forward(x, caches),
            Layer::Attention(block) => block.forward(x),
            Layer::Upsample(up) => up.forward(x, caches, first),
        }
    }

    /// Temporal upsamplings before each spatial one's output (for tests).
    #[cfg(test)]
    fn temporal_upsamplings(&self) -> usize {
        self.upsamples
            .iter()
            .filter(|l| matches!(l, Layer::Upsample(u) if u.is_temporal()))
            .count()
    }
}

/// Per-stream state of the Wan decoder: the tiling, one cache list per decoded
/// region, and whether the stream's first latent frame has been decoded.
#[derive(Debug, Clone)]
pub struct WanDecoderState {
    tiling: Option<DecoderTiling>,
    halo: [usize; 4],
    started: bool,
    /// Latent (height, width) the caches belong to.
    frame: Option<(usize, usize)>,
    regions: Vec<Caches>,
}

impl Default for WanDecoderState {
    fn default() -> Self {
        Self::new(None)
    }
}

impl WanDecoderState {
    /// A fresh stream decoded in `tiling`'s tiles (`None`: whole frames).
    pub fn new(tiling: Option<DecoderTiling>) -> Self {
        Self {
            tiling,
            halo: WAN_HALO,
            started: false,
            frame: None,
            regions: Vec::new(),
        }
    }

    /// The same with another halo (output pixels after the input and each
    /// upsampling: multiples of 8, none larger than the one before).
    pub fn with_halo(mut self, halo: [usize; 4]) -> Result<Self> {
        super::tcdecoder::check_halo(&halo)?;
        self.halo = halo;
        Ok(self)
    }

    /// Moves every cache (of every region) to `device`.
    pub fn move_to(&mut self, device: &Device) -> Result<()> {
        self.regions
            .iter_mut()
            .flat_map(|r| r.iter_mut())
            .try_for_each(|t| crate::model::move_held(t, device))
    }
}
