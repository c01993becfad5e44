//! TCDecoder: a tiny causal video decoder (TAEHV-style) that turns latents plus
//! pixel-unshuffled LQ frames into RGB frames (docs/model.md, section
//! "The decoder"). Time runs forward frame by frame; MemBlocks see what they saw one
//! frame earlier, across chunk boundaries.

use candle_core::{DType, Result, Tensor};
use candle_nn::VarBuilder;

use crate::layers::conv::Conv2d;

/// LQ frames per latent frame (the decoder's 4x time upsampling).
pub const FRAMES_PER_LATENT: usize = 4;
/// Pixel-unshuffle factor of the LQ condition: one latent pixel per 8 x 8 pixels.
pub const COND_UNSHUFFLE: usize = 8;
/// Frames the very first decoded chunk drops (2^2 - 1, the time upsampling's warm-up).
pub const FIRST_CHUNK_TRIM: usize = 3;

/// Spatial tiling of the decoder, in output pixels: tiles of `tile x tile`,
/// neighbours overlapping by `overlap`, blended over the overlap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecoderTiling {
    pub tile: usize,
    pub overlap: usize,
}

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
        let past = if n > 1 {
            Tensor::cat(&[&before, &x.narrow(0, 0, n - 1)?], 0)?
        } else {
            before
        };
        *memory = Some(x.narrow(0, n - 1, 1)?);
        let y = self.convs[0]
            .forward(&Tensor::cat(&[x, &past], 1)?)?
            .relu()?;
        let y = self.convs[1].forward(&y)?.relu()?;
        (self.convs[2].forward(&y)? + x)?.relu()
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

/// Per-stream decoder state: the last input of each MemBlock, and whether the
/// first chunk (which drops its first frames) has been decoded.
#[derive(Debug, Default, Clone)]
pub struct TcDecoderState {
    memory: Vec<Option<Tensor>>,
    started: bool,
}

impl TcDecoderState {
    pub fn reset(&mut self) {
        *self = Self::default();
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
        Ok(Self {
            dtype: vb.dtype(),
            conv_in: Conv::load(d.pp(1), cfg.in_channels, c0, 3, true)?,
            conv_in2: Conv::load(d.pp(3), c0, c0, 3, false)?,
            stages: [
                stage(5, c0, 1, c1)?,
                stage(11, c1, 2, c2)?,
                stage(17, c2, 2, c3)?,
            ],
            conv_out1: Conv::load(d.pp(24), c3, c3, 3, false)?,
            conv_out2: Conv::load(d.pp(26), c3, 3, 3, true)?,
            cfg,
        })
    }

    pub fn config(&self) -> &TcDecoderConfig {
        &self.cfg
    }

    /// Decodes `latents` `[1, C, f, h, w]` with the LQ condition frames `cond`
    /// `[n, 3, 8h, 8w]` in [-1, 1] (n <= 4f; when n is not 4f, copies of its
    /// first frame are put in front). Returns frames `[m, 3, 8h, 8w]` in [-1, 1],
    /// m = 4f, or 4f - 3 for the stream's first chunk.
    pub fn decode(
        &self,
        latents: &Tensor,
        cond: &Tensor,
        state: &mut TcDecoderState,
    ) -> Result<Tensor> {
        let (_, lc, f, h, w) = latents.dims5()?;
        let n = cond.dim(0)?;
        let want = FRAMES_PER_LATENT * f;
        if n > want || n == 0 {
            candle_core::bail!("decoder condition: {n} frames for {f} latent frames")
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
        let s = COND_UNSHUFFLE;
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
        if state.memory.len() != 9 {
            state.memory = vec![None; 9];
        }
        // One latent frame at a time keeps at most 4 full-size frames alive.
        let mut frames = Vec::with_capacity(want);
        for t in 0..f {
            frames.push(self.decode_frame(&x.narrow(0, t, 1)?, state)?);
        }
        let out = Tensor::cat(&frames, 0)?;
        let out = if state.started {
            out
        } else {
            state.started = true;
            out.narrow(0, FIRST_CHUNK_TRIM, out.dim(0)? - FIRST_CHUNK_TRIM)?
        };
        // [0, 1] -> [-1, 1]
        ((out * 2.0)? - 1.0)?.to_dtype(DType::F32)
    }

    fn decode_frame(&self, x: &Tensor, state: &mut TcDecoderState) -> Result<Tensor> {
        let x = ((x / 3.0)?.tanh()? * 3.0)?;
        let mut x = self
            .conv_in2
            .forward(&self.conv_in.forward(&x)?.relu()?)?
            .relu()?;
        for (s, stage) in self.stages.iter().enumerate() {
            for (m, block) in stage.mem.iter().enumerate() {
                x = block.forward(&x, &mut state.memory[3 * s + m])?;
            }
            x = stage.conv.forward(
                &stage
                    .grow
                    .forward(&x.upsample_nearest2d(x.dim(2)? * 2, x.dim(3)? * 2)?)?,
            )?;
        }
        self.conv_out2
            .forward(&self.conv_out1.forward(&x.relu()?)?.relu()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};
    use std::collections::HashMap;

    /// A decoder with small random weights of the released layout.
    /// Deterministic pseudo-random values, uniform in [-scale, scale]: candle's
    /// CPU `randn` cannot be seeded, and some draws of a 4-channel network are
    /// dead (all-zero after its ReLUs), which made these tests flaky.
    fn values(shape: &[usize], seed: u64, scale: f32) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let data: Vec<f32> = (0..n)
            .map(|_| {
                // xorshift64*
                state ^= state >> 12;
                state ^= state << 25;
                state ^= state >> 27;
                let bits = state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40;
                (bits as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
            })
            .collect();
        Tensor::from_vec(data, shape, &Device::Cpu)
    }

    fn random_decoder(c: usize) -> Result<TcDecoder> {
        let dev = Device::Cpu;
        let mut t = HashMap::new();
        let mut seed = 0u64;
        let mut add = |name: String, shape: &[usize]| -> Result<()> {
            let fan_in: usize = shape[1..].iter().product::<usize>().max(1);
            // uniform in [-a, a] has deviation a / sqrt(3)
            let scale = (3.0 / fan_in as f64).sqrt() as f32;
            seed += 1;
            t.insert(name, values(shape, seed, scale)?);
            Ok(())
        };
        add("decoder.1.weight".into(), &[c, 784, 3, 3])?;
        add("decoder.1.bias".into(), &[c])?;
        add("decoder.3.weight".into(), &[c, c, 3, 3])?;
        for (first, grow, stride) in [(5, 9, 1), (11, 15, 2), (17, 21, 2)] {
            for m in first..first + 3 {
                for (j, cin) in [(0, 2 * c), (2, c), (4, c)] {
                    add(format!("decoder.{m}.conv.{j}.weight"), &[c, cin, 3, 3])?;
                    add(format!("decoder.{m}.conv.{j}.bias"), &[c])?;
                }
            }
            // stage 1's TGrow holds extra rows, as released checkpoints may
            add(
                format!("decoder.{grow}.conv.weight"),
                &[c * stride.max(2), c, 1, 1],
            )?;
            add(format!("decoder.{}.weight", grow + 1), &[c, c, 3, 3])?;
        }
        add("decoder.24.weight".into(), &[c, c, 3, 3])?;
        add("decoder.26.weight".into(), &[3, c, 3, 3])?;
        add("decoder.26.bias".into(), &[3])?;
        let vb = VarBuilder::from_tensors(t, DType::F32, &dev);
        TcDecoder::new(
            TcDecoderConfig {
                in_channels: 784,
                channels: [c; 4],
            },
            vb,
        )
    }

    #[test]
    fn memory_carries_across_chunks() -> Result<()> {
        let dec = random_decoder(4)?;
        let latents = values(&[1, 16, 4, 2, 2], 101, 1.7)?;
        let cond = values(&[16, 3, 16, 16], 102, 0.85)?;
        // all at once
        let mut whole = TcDecoderState::default();
        let all = dec.decode(&latents, &cond, &mut whole)?;
        assert_eq!(all.dims(), &[16 - FIRST_CHUNK_TRIM, 3, 16, 16]);
        // in two chunks with the same state: identical frames
        let mut split = TcDecoderState::default();
        let a = dec.decode(
            &latents.narrow(2, 0, 2)?,
            &cond.narrow(0, 0, 8)?,
            &mut split,
        )?;
        let b = dec.decode(
            &latents.narrow(2, 2, 2)?,
            &cond.narrow(0, 8, 8)?,
            &mut split,
        )?;
        assert_eq!(a.dim(0)?, 8 - FIRST_CHUNK_TRIM);
        assert_eq!(b.dim(0)?, 8);
        let joined = Tensor::cat(&[a, b], 0)?;
        let err = (joined - &all)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(err < 1e-5, "{err}");
        // without the memory, the second chunk comes out different
        let mut fresh = TcDecoderState {
            started: true,
            ..Default::default()
        };
        let cold = dec.decode(
            &latents.narrow(2, 2, 2)?,
            &cond.narrow(0, 8, 8)?,
            &mut fresh,
        )?;
        let diff = (cold - all.narrow(0, 5, 8)?)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(diff > 1e-4, "memory had no effect");
        // reset starts over: the first chunk is trimmed again
        split.reset();
        let again = dec.decode(
            &latents.narrow(2, 0, 2)?,
            &cond.narrow(0, 0, 8)?,
            &mut split,
        )?;
        assert_eq!(again.dim(0)?, 8 - FIRST_CHUNK_TRIM);
        Ok(())
    }

    #[test]
    fn short_condition_is_padded_with_its_first_frame() -> Result<()> {
        let dec = random_decoder(4)?;
        let latents = values(&[1, 16, 2, 2, 2], 103, 1.7)?;
        let cond = values(&[6, 3, 16, 16], 104, 0.85)?;
        let padded = Tensor::cat(
            &[cond.narrow(0, 0, 1)?, cond.narrow(0, 0, 1)?, cond.clone()],
            0,
        )?;
        let a = dec.decode(&latents, &cond, &mut TcDecoderState::default())?;
        let b = dec.decode(&latents, &padded, &mut TcDecoderState::default())?;
        assert_eq!((a - b)?.abs()?.max_all()?.to_scalar::<f32>()?, 0.0);
        assert!(
            dec.decode(
                &latents,
                &Tensor::cat(&[&padded, &padded], 0)?,
                &mut TcDecoderState::default()
            )
            .is_err()
        );
        Ok(())
    }
}
