//! TCDecoder: a tiny causal video decoder (TAEHV-style) that turns latents plus
//! pixel-unshuffled LQ frames into RGB frames (docs/model.md, section
//! "The decoder"). Time runs forward frame by frame; MemBlocks see what they saw one
//! frame earlier, across chunk boundaries. Large frames can be decoded in
//! overlapping spatial tiles, each with its own memory (`tiled`, docs/model.md,
//! section "Tiles").

#[cfg(test)]
mod tests;
mod tiled;

use candle_core::{DType, Result, Tensor};
use candle_nn::VarBuilder;

use super::cancel::CancelToken;
use crate::layers::conv::{Conv2d, Then};
use crate::layers::products::{self, CpuProducts};
use crate::model::tiling::Crop;

pub use tiled::DecoderTiling;
pub(crate) use tiled::check_halo;

/// LQ frames per latent frame (the decoder's 4x time upsampling).
pub const FRAMES_PER_LATENT: usize = 4;
/// Pixel-unshuffle factor of the LQ condition: one latent pixel per 8 x 8 pixels.
pub const COND_UNSHUFFLE: usize = 8;
/// Frames the very first decoded chunk drops (2^2 - 1, the time upsampling's warm-up).
pub const FIRST_CHUNK_TRIM: usize = 3;

/// Channel widths, read from the conv shapes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcDecoderConfig {
    /// Input channels of the first conv: 768 condition + latent channels.
    pub in_channels: usize,
    pub channels: [usize; 4],
}

impl TcDecoderConfig {
    pub fn from_shapes(shape: impl Fn(&str) -> Result<Vec<usize>>) -> Result<Self> {
        let first = shape("decoder.1.weight")?;
        let c = |key: &str| -> Result<usize> { Ok(shape(key)?[0]) };
        if first.len() != 4 {
            candle_core::bail!(
                "tensor 'decoder.1.weight': expected a 2-D conv weight, found {first:?}"
            )
        }
        Ok(Self {
            in_channels: first[1],
            channels: [
                first[0],
                c("decoder.10.weight")?,
                c("decoder.16.weight")?,
                c("decoder.22.weight")?,
            ],
        })
    }
}

/// A zero-padded 3x3 (or 1x1) convolution loaded from `<prefix>.weight` / `.bias`.
struct Conv(Conv2d);

impl Conv {
    fn load(vb: VarBuilder, in_c: usize, out_c: usize, k: usize, bias: bool) -> Result<Self> {
        let weight = vb.get((out_c, in_c, k, k), "weight")?;
        let bias = if bias {
            Some(vb.get(out_c, "bias")?)
        } else {
            None
        };
        Ok(Self(Conv2d::new(&weight, bias)?))
    }
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.0.forward(x)
    }
    fn forward_then(&self, x: &Tensor, then: Then<'_>) -> Result<Tensor> {
        self.0.forward_then(x, then)
    }
    /// Of `x` upsampled 2x (nearest).
    fn forward_upsampled_then(&self, x: &Tensor, then: Then<'_>) -> Result<Tensor> {
        self.0.forward_upsampled_then(x, then)
    }
}

/// `relu(conv(relu(conv(relu(conv(cat[x, past]))))) + x)`.
struct MemBlock {
    convs: [Conv; 3],
}

impl MemBlock {
    fn load(vb: VarBuilder, c: usize) -> Result<Self> {
        let vb = vb.pp("conv");
        Ok(Self {
            convs: [
                Conv::load(vb.pp("0"), 2 * c, c, 3, true)?,
                Conv::load(vb.pp("2"), c, c, 3, true)?,
                Conv::load(vb.pp("4"), c, c, 3, true)?,
            ],
        })
    }

    /// `x`: consecutive frames `[n, C, H, W]`; `memory`: the frame before them.
    fn forward(&self, x: &Tensor, memory: &mut Option<Tensor>) -> Result<Tensor> {
        let n = x.dim(0)?;
        let before = match memory.take() {
            Some(m) => m,
            None => x.narrow(0, 0, 1)?.zeros_like()?,
        };
        // its own storage: a view would keep all `n` frames of `x` alive
        *memory = Some(x.narrow(0, n - 1, 1)?.force_contiguous()?);
        // conv(cat([x, each frame's previous frame])), without the copy where
        // the conv can read the frames in place
        let y = self.convs[0]
            .0
            .forward_with_previous(x, &before, Then::RELU)?;
        let y = self.convs[1].forward_then(&y, Then::RELU)?;
        let skip = Then {
            residual: Some(x),
            relu: true,
        };
        self.convs[2].forward_then(&y, skip)
    }
}

/// 1x1 conv to `stride * C` channels, split into `stride` consecutive frames.
struct TGrow {
    conv: Conv2d,
    stride: usize,
}

impl TGrow {
    fn load(vb: VarBuilder, c: usize, stride: usize) -> Result<Self> {
        let key = "conv.weight";
        let vb = vb.clone();
        // Released checkpoints may hold more output rows than this layer uses;
        // the reference keeps the last ones.
        let w = vb.get_unchecked(key)?;
        let dims = w.dims().to_vec();
        if dims.len() != 4 || dims[1] != c || dims[2..] != [1, 1] || dims[0] < c * stride {
            candle_core::bail!(
                "tensor '{}.{key}': expected [{}, {c}, 1, 1], found {dims:?}",
                vb.prefix(),
                c * stride
            )
        }
        let weight = w
            .narrow(0, dims[0] - c * stride, c * stride)?
            .to_dtype(vb.dtype())?;
        Ok(Self {
            conv: Conv2d::new(&weight, None)?,
            stride,
        })
    }
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (n, c, h, w) = x.dims4()?;
        self.conv.forward(x)?.reshape((n * self.stride, c, h, w))
    }
}

/// The temporal memory of one decoded region (the whole frame, or one tile): the
/// last input of each of the 9 MemBlocks.
#[derive(Debug, Clone)]
struct Memory([Option<Tensor>; 9]);

impl Default for Memory {
    fn default() -> Self {
        Self(std::array::from_fn(|_| None))
    }
}

/// Per-stream decoder state: the tiling the stream decodes with, one memory per
/// decoded region, and whether the first chunk
/// (which drops its first frames) has been decoded. The region layout is fixed
/// by the first chunk's frame size until `reset`.
#[derive(Debug, Clone)]
pub struct TcDecoderState {
    tiling: Option<DecoderTiling>,
    /// Context kept around each tile at each resolution, in output pixels.
    halo: [usize; 4],
    started: bool,
    /// Latent (height, width) the memories belong to.
    frame: Option<(usize, usize)>,
    memories: Vec<Memory>,
}

impl Default for TcDecoderState {
    /// Whole frames.
    fn default() -> Self {
        Self::new(None)
    }
}

impl TcDecoderState {
    /// A fresh stream decoded in `tiling`'s tiles (`None`: whole frames) with the
    /// default halo.
    pub fn new(tiling: Option<DecoderTiling>) -> Self {
        Self {
            tiling,
            halo: DecoderTiling::HALO,
            started: false,
            frame: None,
            memories: Vec::new(),
        }
    }

    /// The same with another halo (output pixels at the latent, 2x, 4x and 8x
    /// resolutions: multiples of 8, none larger than the one before): for
    /// measuring what the halo buys (examples/decoder_tiles.rs).
    pub fn with_halo(mut self, halo: [usize; 4]) -> Result<Self> {
        tiled::check_halo(&halo)?;
        self.halo = halo;
        Ok(self)
    }

    /// Moves every memory (of every tile) to `device`.
    pub fn move_to(&mut self, device: &candle_core::Device) -> Result<()> {
        self.memories
            .iter_mut()
            .flat_map(|m| m.0.iter_mut())
            .try_for_each(|t| crate::model::move_held(t, device))
    }
}

/// One upsampling stage: three MemBlocks, nearest 2x, TGrow, conv to the next width.
struct Stage {
    mem: [MemBlock; 3],
    grow: TGrow,
    conv: Conv,
}

pub struct TcDecoder {
    cfg: TcDecoderConfig,
    /// Activation dtype between layers.
    dtype: DType,
    conv_in: Conv,
    conv_in2: Conv,
    stages: [Stage; 3],
    conv_out1: Conv,
    conv_out2: Conv,
}

impl TcDecoder {
    pub fn new(cfg: TcDecoderConfig, vb: VarBuilder) -> Result<Self> {
        let d = vb.pp("decoder");
        let [c0, c1, c2, c3] = cfg.channels;
        let stage = |first: usize, c: usize, stride: usize, next: usize| -> Result<Stage> {
            Ok(Stage {
                mem: [
                    MemBlock::load(d.pp(first), c)?,
                    MemBlock::load(d.pp(first + 1), c)?,
                    MemBlock::load(d.pp(first + 2), c)?,
                ],
                grow: TGrow::load(d.pp(first + 4), c, stride)?,
                conv: Conv::load(d.pp(first + 5), c, next, 3, false)?,
            })
        };
        // Only the middle stage takes the loader's products (bf16 where it
        // chose them): the rounding of the layers before it is upsampled and
        // carried through all the rest, and the layers after it put theirs
        // straight into the pixels. On a golden case with the released widths
        // the frames kept 99.80% of values within 1 level of the fixture with
        // this stage in bf16, 98.35% with every layer after the first stage
        // (docs/architecture.md, "bf16 products on the CPU").
        fn f32_products<T>(load: impl FnOnce() -> Result<T>) -> Result<T> {
            products::load_with(CpuProducts::F32, load)
        }
        Ok(Self {
            dtype: vb.dtype(),
            conv_in: f32_products(|| Conv::load(d.pp(1), cfg.in_channels, c0, 3, true))?,
            conv_in2: f32_products(|| Conv::load(d.pp(3), c0, c0, 3, false))?,
            stages: [
                f32_products(|| stage(5, c0, 1, c1))?,
                stage(11, c1, 2, c2)?,
                f32_products(|| stage(17, c2, 2, c3))?,
            ],
            conv_out1: f32_products(|| Conv::load(d.pp(24), c3, c3, 3, false))?,
            // taps or, without AVX-512, Winograd (`conv::prefers_winograd`)
            conv_out2: f32_products(|| Conv::load(d.pp(26), c3, 3, 3, true))?,
            cfg,
        })
    }

    pub fn config(&self) -> &TcDecoderConfig {
        &self.cfg
    }

    /// Decodes `latents` `[1, C, f, h, w]` with the LQ condition frames `cond`
    /// `[n, 3, 8h, 8w]` in [-1, 1] (n <= 4f; when n is not 4f, copies of its
    /// first frame are put in front). Returns frames `[m, 3, 8h, 8w]` in [-1, 1],
    /// f32, m = 4f, or 4f - 3 for the stream's first chunk. With a tiling in the
    /// state, decodes tile by tile. `cancel` is polled before every stage and
    /// tile: once it is cancelled, the decoder returns `Cancelled` within one
    /// stage.
    pub fn decode(
        &self,
        latents: &Tensor,
        cond: &Tensor,
        state: &mut TcDecoderState,
        cancel: &CancelToken,
    ) -> Result<Tensor> {
        let (_, lc, f, h, w) = latents.dims5()?;
        let n = cond.dim(0)?;
        let want = FRAMES_PER_LATENT * f;
        if n > want || n == 0 {
            candle_core::bail!("decoder condition: {n} frames for {f} latent frames")
        }
        let s = COND_UNSHUFFLE;
        if cond.dims()[1..] != [3, s * h, s * w] {
            candle_core::bail!(
                "decoder condition: frames {:?}, expected [3, {}, {}] for {h}x{w} latents",
                &cond.dims()[1..],
                s * h,
                s * w
            )
        }
        match state.frame {
            Some(frame) if frame != (h, w) => candle_core::bail!(
                "decoder: a {}x{} chunk in a stream of {}x{} frames (reset the stream first)",
                s * w,
                s * h,
                s * frame.1,
                s * frame.0
            ),
            _ => state.frame = Some((h, w)),
        }
        let dtype = self.dtype;
        let cond = cond.to_dtype(dtype)?;
        let cond = if n < want {
            let first = cond.narrow(0, 0, 1)?;
            let pad = first.repeat((want - n, 1, 1, 1))?;
            Tensor::cat(&[&pad, &cond], 0)?
        } else {
            cond
        };
        // [4f, 3, 8h, 8w] -> [f, 3 * 4 * 64, h, w], channel = c*256 + ft*64 + dy*8 + dx
        let cond = cond
            .reshape(&[f, FRAMES_PER_LATENT, 3, h, s, w, s][..])?
            .permute(vec![0, 2, 1, 4, 6, 3, 5])?
            .contiguous()?
            .reshape((f, 3 * FRAMES_PER_LATENT * s * s, h, w))?;
        let lat = latents.to_dtype(dtype)?.squeeze(0)?.transpose(0, 1)?;
        let x = Tensor::cat(&[&cond, &lat], 1)?;
        if x.dim(1)? != self.cfg.in_channels {
            candle_core::bail!(
                "decoder input: {} channels (768 condition + {lc} latent), weights expect {}",
                x.dim(1)?,
                self.cfg.in_channels
            )
        }
        let out = match state.tiling {
            None => {
                state.memories.resize_with(1, Memory::default);
                let no_crop = [Crop::default(); 3];
                self.decode_region(&x, &mut state.memories[0], &no_crop, cancel)?
            }
            Some(tiling) => self.decode_tiled(&x, &tiling, state, cancel)?,
        };
        if state.started {
            Ok(out)
        } else {
            state.started = true;
            out.narrow(0, FIRST_CHUNK_TRIM, out.dim(0)? - FIRST_CHUNK_TRIM)
        }
    }

    /// Decodes `x` `[f, in_channels, h, w]` (the whole frame or one tile's region)
    /// with that region's memory, cutting `crops[s]` off after stage `s`:
    /// `[4f, 3, 8h', 8w']` in [-1, 1], f32 (`h'`, `w'` what the crops leave).
    fn decode_region(
        &self,
        x: &Tensor,
        memory: &mut Memory,
        crops: &[Crop; 3],
        cancel: &CancelToken,
    ) -> Result<Tensor> {
        // One latent frame at a time keeps at most 4 full-size frames alive.
        let f = x.dim(0)?;
        let mut frames = Vec::with_capacity(FRAMES_PER_LATENT * f);
        for t in 0..f {
            frames.push(self.decode_frame(&x.narrow(0, t, 1)?, memory, crops, cancel)?);
        }
        let out = Tensor::cat(&frames, 0)?;
        // [0, 1] -> [-1, 1]
        ((out * 2.0)? - 1.0)?.to_dtype(DType::F32)
    }

    fn decode_frame(
        &self,
        x: &Tensor,
        memory: &mut Memory,
        crops: &[Crop; 3],
        cancel: &CancelToken,
    ) -> Result<Tensor> {
        cancel.check()?;
        let x = ((x / 3.0)?.tanh()? * 3.0)?;
        let x = self.conv_in.forward_then(&x, Then::RELU)?;
        let mut x = self.conv_in2.forward_then(&x, Then::RELU)?;
        let last = self.stages.len() - 1;
        for (s, stage) in self.stages.iter().enumerate() {
            cancel.check()?;
            for (m, block) in stage.mem.iter().enumerate() {
                x = block.forward(&x, &mut memory.0[3 * s + m])?;
            }
            // The reference upsamples, then grows; a 1x1 conv and a nearest
            // upsampling commute, so growing first is the same values for a
            // quarter of the products. The conv reads the upsampling in place
            // where it can, so no upsampled copy is made either.
            let grown = stage.grow.forward(&x)?;
            // The output layers start with a ReLU: done by the last stage's
            // conv as it writes (the crop takes whole pixels, so the order
            // does not matter).
            let then = if s == last {
                Then::RELU
            } else {
                Then::default()
            };
            x = stage.conv.forward_upsampled_then(&grown, then)?;
            x = crops[s].apply(&x)?;
        }
        cancel.check()?;
        let x = self.conv_out1.forward_then(&x, Then::RELU)?;
        self.conv_out2.forward(&x)
    }
}
