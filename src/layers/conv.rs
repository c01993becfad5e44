//! 2-D convolution: the CPU fast paths run Winograd F(2x2, 3x3) products or one
//! matrix product per kernel tap, every other device one candle `conv2d` per
//! layer.
//!
//! candle's CPU convolution runs far below its matrix-multiply rate (and has no
//! half-precision kernel), while the TCDecoder and the LQ projection are nearly
//! all convolution. On the CPU the weight is therefore transformed at load:
//! 3x3 layers with enough input channels ([`prefers_winograd`]) keep the
//! Winograd weights `[16, c_out, c_in]` ([`winograd`]: 16 products per strip of
//! 2x2-output tiles, 16 multiplications where direct convolution needs 36);
//! the others are split into their `k * k` taps, `[k * k, c_out, c_in]`, which
//! accumulate in one buffer through `gemm` ([`conv_taps`]). On other devices the
//! weight stays `[c_out, c_in, k, k]` and each layer is one `Tensor::conv2d` over
//! all its frames (on CUDA: im2col and one cuBLAS product, or cuDNN with the
//! `cudnn` feature; a few row strips when the im2col matrix would pass 2 GiB)
//! plus a broadcast bias add; see docs/device-path.md, section "Convolutions".
//! Only one layout is kept, so memory holds each weight once.

use std::sync::Arc;

use candle_core::{CpuStorage, DType, Device, Layout, Result, Storage, Tensor};

use super::cpu::bf16_gemm::PackedLhs;
use super::cpu::epilogue::Epilogue;
use super::cpu::{conv_taps, winograd, winograd_f4, winograd_transforms};
use super::kernels;
use super::products::{self, CpuProducts};
use super::shape_log::{self, ConvShape};

/// The weight in the layout its device's path reads.
#[derive(Debug, Clone)]
enum Weight {
    /// CPU: `[k * k, c_out, c_in]`, tap `(dy, dx)` at index `dy * k + dx`.
    Taps(Tensor),
    /// CPU, 3x3 kernels: the Winograd weights `G g G^T`, `[16, c_out, c_in]`
    /// for F(2x2, 3x3) or `[36, c_out, c_in]` for F(4x4, 3x3) (see [`winograd`]).
    Winograd(Tensor),
    /// CPU, 3x3 kernels, bf16 products (`layers::products`): the same Winograd
    /// weights, one packed bf16 `c_out x c_in` operand per transformed position.
    WinogradBf16(Arc<Vec<PackedLhs>>),
    /// Other devices: `[c_out, c_in, k, k]`, as `conv2d` takes it.
    Kernel(Tensor),
}

impl Weight {
    /// Whether the CPU's Winograd path runs this weight (f32 or bf16 products).
    fn is_cpu_winograd(&self) -> bool {
        matches!(self, Self::Winograd(_) | Self::WinogradBf16(_))
    }

    /// The dtype of the activations the path takes.
    fn dtype(&self) -> DType {
        match self {
            Self::Taps(t) | Self::Winograd(t) | Self::Kernel(t) => t.dtype(),
            Self::WinogradBf16(_) => DType::F32,
        }
    }

    /// The `[c_out, c_in, k, k]` kernel. From a CPU layout (the portable path
    /// forced on the CPU, i.e. tests) it is rebuilt per call: a weight-sized copy
    /// that a device never makes.
    fn kernel(&self, k: usize) -> Result<Tensor> {
        match self {
            Self::Kernel(w) => Ok(w.clone()),
            Self::Taps(taps) => {
                let (_, c_out, c_in) = taps.dims3()?;
                taps.reshape((k, k, c_out, c_in))?
                    .permute((2, 3, 0, 1))?
                    .contiguous()
            }
            Self::Winograd(u) => {
                let (xis, c_out, c_in) = u.dims3()?;
                let u = u.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
                let kernel = if xis == 16 {
                    winograd_transforms::kernels_from_weights(&u, c_out, c_in)
                } else {
                    winograd_f4::kernels_from_weights(&u, c_out, c_in)
                };
                Tensor::from_vec(kernel, (c_out, c_in, 3, 3), weight_device(self))?
                    .to_dtype(self.dtype())
            }
            Self::WinogradBf16(packed) => {
                let (c_out, c_in) = (packed[0].m, packed[0].k);
                let mut u = Vec::with_capacity(packed.len() * c_out * c_in);
                for xi in packed.iter() {
                    for o in 0..c_out {
                        u.extend((0..c_in).map(|i| xi.value(o, i)));
                    }
                }
                let kernel = if packed.len() == 16 {
                    winograd_transforms::kernels_from_weights(&u, c_out, c_in)
                } else {
                    winograd_f4::kernels_from_weights(&u, c_out, c_in)
                };
                Tensor::from_vec(kernel, (c_out, c_in, 3, 3), &Device::Cpu)
            }
        }
    }
}

/// The device a weight lives on.
fn weight_device(w: &Weight) -> &Device {
    match w {
        Weight::Taps(t) | Weight::Winograd(t) | Weight::Kernel(t) => t.device(),
        Weight::WinogradBf16(_) => &Device::Cpu,
    }
}

/// Which CPU fast path a layer runs (other devices ignore it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CpuConvKernel {
    /// Winograd where [`prefers_winograd`] says so (F(4x4) or F(2x2) as
    /// [`default_winograd_tile`] picks), taps otherwise.
    #[default]
    Auto,
    /// One matrix product per kernel tap ([`conv_taps`]).
    Taps,
    /// Winograd F(2x2, 3x3) ([`winograd`]); 3x3 kernels only.
    Winograd,
    /// Winograd F(4x4, 3x3) ([`winograd`], [`winograd_f4`]); 3x3 kernels only.
    Winograd4,
}

/// Whether a 3x3 layer runs faster as Winograd than as taps on the CPU. With
/// the `conv_bench` example every decoder and LQ-projection layer with many
/// outputs was faster as Winograd; the input transform costs per input channel
/// what a product costs per channel pair, so layers with few input channels
/// keep the taps.
///
/// The layers to RGB (fewer than [`WINOGRAD_MIN_OUT_CHANNELS`] outputs) depend
/// on the processor, their few products weighing little against the
/// transforms. With `gemm`'s AVX-512 kernels the TCDecoder's 128 -> 3 layer took
/// 1.18x-1.19x the taps' time as Winograd at 512x512 (1.8x the processor time;
/// 2-core AMD EPYC, Zen 4, 2026-12-05), and in the whole decoder
/// (`decoder_bench`, f32, alternating) 16.38 s and 15.56 s per steady chunk
/// against the taps' 15.71 s and 15.65 s: no gain, so they keep the taps there.
/// With its AVX2 kernels the taps' products of 3 output rows run far below the
/// processor's rate, and F(2x2) took 0.49x-0.61x the taps' time on that layer
/// (`conv_bench --only decoder --filter conv_out2 --repeats 5`, 68-81 against
/// 133-139 ms; F(4x4) 0.61x-0.84x; 2-core first-generation Zen EPYC,
/// 2026-12-06), so without AVX-512 they take Winograd F(2x2)
/// ([`default_winograd_tile`]).
pub fn prefers_winograd(k: usize, c_in: usize, c_out: usize) -> bool {
    k == 3
        && c_in >= WINOGRAD_MIN_IN_CHANNELS
        && (c_out >= WINOGRAD_MIN_OUT_CHANNELS || !gemm_has_avx512())
}

/// Whether `gemm` runs its AVX-512 microkernels on this processor (the crate
/// builds them, `cpu::features`).
fn gemm_has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Fewest output channels of a layer taking the Winograd path by default.
const WINOGRAD_MIN_OUT_CHANNELS: usize = 8;

/// Fewest input channels of a layer taking the Winograd path by default.
const WINOGRAD_MIN_IN_CHANNELS: usize = 64;

/// The output tile side of the default Winograd path for a `c_in -> c_out`
/// layer built now: F(4x4, 3x3) for layers whose transformed f32 weights stay
/// within [`WINOGRAD4_MAX_WEIGHT_BYTES`] (every TCDecoder layer), F(2x2, 3x3)
/// for wider ones and wherever the layer takes bf16 products (F(4x4)'s
/// transforms grow bf16's rounding about 7x, so its products stay f32).
///
/// `conv_bench --tile 4` against `--tile 2` at 512x512 (2-core AMD EPYC, Zen
/// 4, 2026-12-05), once both transforms ran 16 tiles at a time: F(4x4) took
/// 0.57x-0.75x F(2x2)'s time on every TCDecoder layer (0.57x at 512 -> 512,
/// 0.71x at 128 -> 128 at 512x512), 0.67x over a steady chunk (7.1 s against
/// 10.6 s), and 0.59x on the LQ projection's two layers; its error against the
/// taps is about 20x F(2x2)'s (1.2e-4 against 6e-6 on unit-scale outputs).
/// Before that, F(4x4)'s transforms ran a scalar loop and made it slower below
/// 512 channels. On a first-generation Zen EPYC (AVX2, 2026-12-06) F(4x4) took
/// 0.51x-0.91x F(2x2)'s time on the same layers, 0.78x over a chunk (24.0 s
/// against 30.7 s), but 1.2x-2x on the 128 -> 3 layer to RGB (where
/// [`prefers_winograd`] has one), whose 3 output rows leave F(4x4)'s larger
/// transforms most of the work: layers with fewer than
/// [`WINOGRAD_MIN_OUT_CHANNELS`] outputs take F(2x2).
fn default_winograd_tile(c_in: usize, c_out: usize) -> usize {
    let f4_bytes = 36 * c_in * c_out * std::mem::size_of::<f32>();
    if products::at_load() == CpuProducts::Bf16
        || f4_bytes > WINOGRAD4_MAX_WEIGHT_BYTES
        || c_out < WINOGRAD_MIN_OUT_CHANNELS
    {
        2
    } else {
        winograd_f4::M
    }
}

/// Most memory a layer's F(4x4) weights take by default: 36/16 of F(2x2)'s.
/// The TCDecoder's widest layer (1024 -> 512) takes 75 MB. The LQ projection's
/// two layers would take 0.9 and 3.6 GB (2.5 GB more than as F(2x2)) for
/// about 8 % of an f32 chunk, so they keep F(2x2).
const WINOGRAD4_MAX_WEIGHT_BYTES: usize = 256 << 20;

/// What a convolution's input stands for beyond its own values, read in
/// place by the CPU's Winograd path ([`winograd::WinogradConv`]).
#[derive(Clone, Copy)]
struct Fused<'a> {
    /// See [`Conv2d::forward_with_previous`].
    previous: Option<&'a Tensor>,
    /// See [`Conv2d::forward_upsampled_then`].
    upsample: bool,
}

impl Fused<'_> {
    /// The input is what it holds.
    const NONE: Fused<'static> = Fused {
        previous: None,
        upsample: false,
    };
}

/// What [`Conv2d::forward_then`] applies after the bias: add `residual` (of the
/// output's shape), then ReLU where `relu`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Then<'a> {
    pub residual: Option<&'a Tensor>,
    pub relu: bool,
}

impl Then<'_> {
    /// ReLU only.
    pub const RELU: Then<'static> = Then {
        residual: None,
        relu: true,
    };
}

/// A stride-1, "same"-padded 2-D convolution with an odd square kernel.
#[derive(Debug, Clone)]
pub struct Conv2d {
    weight: Weight,
    /// `[1, c_out, 1, 1]`.
    bias: Option<Tensor>,
    /// The bias as the CPU path reads it, kept from load.
    cpu_bias: Option<Vec<f32>>,
    k: usize,
    c_in: usize,
    c_out: usize,
}

/// The dtype convolutions compute in on `device`: candle's CPU matmul is
/// fastest in f32 (and its CPU `conv2d` has no half-precision kernel), and the
/// reference runs these layers in f32 too.
fn compute_dtype(device: &Device, dtype: DType) -> DType {
    if device.is_cpu() { DType::F32 } else { dtype }
}

impl Conv2d {
    /// `weight`: `[c_out, c_in, k, k]` (k odd); `bias`: `[c_out]`.
    pub fn new(weight: &Tensor, bias: Option<Tensor>) -> Result<Self> {
        Self::with_cpu_kernel(weight, bias, CpuConvKernel::Auto)
    }

    /// As [`Conv2d::new`], with the CPU fast path chosen by the caller
    /// (benchmarks and tests compare them).
    pub fn with_cpu_kernel(
        weight: &Tensor,
        bias: Option<Tensor>,
        cpu_kernel: CpuConvKernel,
    ) -> Result<Self> {
        let (c_out, c_in, k, k2) = weight.dims4()?;
        if k != k2 || k % 2 == 0 {
            candle_core::bail!("convolution kernel must be square and odd, found {k}x{k2}")
        }
        let winograd = match cpu_kernel {
            CpuConvKernel::Auto if prefers_winograd(k, c_in, c_out) => {
                Some(default_winograd_tile(c_in, c_out))
            }
            CpuConvKernel::Auto | CpuConvKernel::Taps => None,
            CpuConvKernel::Winograd if k == 3 => Some(2),
            CpuConvKernel::Winograd4 if k == 3 => Some(winograd_f4::M),
            CpuConvKernel::Winograd | CpuConvKernel::Winograd4 => {
                candle_core::bail!("the Winograd convolution takes 3x3 kernels, found {k}x{k}")
            }
        };
        let dtype = compute_dtype(weight.device(), weight.dtype());
        let weight = if let Some(tile) = winograd.filter(|_| weight.device().is_cpu()) {
            let kernel = weight
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            let (u, xis) = if tile == winograd_f4::M {
                (winograd_f4::weights(&kernel, c_out, c_in), 36)
            } else {
                (winograd_transforms::weights(&kernel, c_out, c_in), 16)
            };
            // F(4x4)'s transforms grow the rounding of bf16 operands about
            // 7x past F(2x2)'s (0.2 against 0.03 on unit-scale outputs in the
            // tests): its products stay in f32.
            if products::at_load() == CpuProducts::Bf16 && xis == 16 {
                let packed = u
                    .chunks_exact(c_out * c_in)
                    .map(|ui| PackedLhs::pack(c_out, c_in, |o, i| ui[o * c_in + i]))
                    .collect();
                Weight::WinogradBf16(Arc::new(packed))
            } else {
                Weight::Winograd(
                    Tensor::from_vec(u, (xis, c_out, c_in), weight.device())?.to_dtype(dtype)?,
                )
            }
        } else if weight.device().is_cpu() {
            Weight::Taps(
                weight
                    .permute((2, 3, 0, 1))?
                    .contiguous()?
                    .reshape((k * k, c_out, c_in))?
                    .to_dtype(dtype)?,
            )
        } else {
            Weight::Kernel(weight.to_dtype(dtype)?.contiguous()?)
        };
        let bias = bias
            .map(|b| {
                if b.elem_count() != c_out {
                    candle_core::bail!(
                        "convolution bias: expected {c_out} values, found shape {:?}",
                        b.dims()
                    )
                }
                b.to_dtype(dtype)?.reshape((1, c_out, 1, 1))
            })
            .transpose()?;
        let cpu_bias = match &bias {
            Some(b) if dtype == DType::F32 && b.device().is_cpu() => {
                Some(b.flatten_all()?.to_vec1::<f32>()?)
            }
            _ => None,
        };
        Ok(Self {
            weight,
            bias,
            cpu_bias,
            k,
            c_in,
            c_out,
        })
    }

    pub fn out_channels(&self) -> usize {
        self.c_out
    }

    /// The precision of this layer's CPU products: bf16 where its weights
    /// were packed for them (`layers::products`), f32 otherwise.
    pub fn cpu_products(&self) -> CpuProducts {
        match self.weight {
            Weight::WinogradBf16(_) => CpuProducts::Bf16,
            _ => CpuProducts::F32,
        }
    }

    /// `x`: `[n, c_in, h, w]`, zero-padded here; returns `[n, c_out, h, w]` in
    /// `x`'s dtype.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.run(x, self.k / 2, Then::default(), Fused::NONE)
    }

    /// `relu(conv(x))`, or `relu(conv(x) + residual)` as `then` says, on the
    /// CPU in the same pass that writes the outputs.
    pub fn forward_then(&self, x: &Tensor, then: Then<'_>) -> Result<Tensor> {
        self.run(x, self.k / 2, then, Fused::NONE)
    }

    /// `conv(upsample_nearest2d(x, 2 h, 2 w))` then `then`: `x` `[n, c_in, h,
    /// w]`, the output `[n, c_out, 2 h, 2 w]`. The CPU's Winograd path reads
    /// each pixel of `x` in place for its 4 copies; other paths build the
    /// upsampled frames.
    pub fn forward_upsampled_then(&self, x: &Tensor, then: Then<'_>) -> Result<Tensor> {
        if self.weight.is_cpu_winograd() && kernels::cpu_fast_path(x) {
            let fused = Fused {
                previous: None,
                upsample: true,
            };
            return self.run(x, self.k / 2, then, fused);
        }
        let (_, _, h, w) = x.dims4()?;
        self.forward_then(&x.upsample_nearest2d(2 * h, 2 * w)?, then)
    }

    /// `conv(cat([x, previous], channels))` then `then`, where `previous` is
    /// `x` one frame later with `before` `[1, C, h, w]` first: a causal
    /// block's input and its memory. The CPU's Winograd path reads the frames
    /// where they lie; other paths build the concatenation.
    pub fn forward_with_previous(
        &self,
        x: &Tensor,
        before: &Tensor,
        then: Then<'_>,
    ) -> Result<Tensor> {
        let (n, c, h, w) = x.dims4()?;
        if before.dims() != [1, c, h, w] {
            candle_core::bail!(
                "convolution: previous frame {:?} for frames {:?}",
                before.dims(),
                x.dims()
            )
        }
        if self.weight.is_cpu_winograd() && kernels::cpu_fast_path(x) && 2 * c == self.c_in {
            let fused = Fused {
                previous: Some(before),
                upsample: false,
            };
            return self.run(x, self.k / 2, then, fused);
        }
        let past = if n > 1 {
            Tensor::cat(&[before, &x.narrow(0, 0, n - 1)?], 0)?
        } else {
            before.clone()
        };
        self.run(&Tensor::cat(&[x, &past], 1)?, self.k / 2, then, Fused::NONE)
    }

    /// `padded`: `[n, c_in, h + k - 1, w + k - 1]`, already padded by the caller
    /// (e.g. replicate padding); returns `[n, c_out, h, w]` in `padded`'s dtype.
    pub fn forward_padded(&self, padded: &Tensor) -> Result<Tensor> {
        self.run(padded, 0, Then::default(), Fused::NONE)
    }

    /// Convolves `x` zero-padded by `pad` on each side, then applies `then`;
    /// `x` stands for more than its values as `fused` says (the CPU's Winograd
    /// path only).
    fn run(&self, x: &Tensor, pad: usize, then: Then<'_>, fused: Fused<'_>) -> Result<Tensor> {
        let Fused { previous, upsample } = fused;
        let (n, x_channels, xh, xw) = x.dims4()?;
        let (xh, xw) = if upsample { (2 * xh, 2 * xw) } else { (xh, xw) };
        let c = if previous.is_some() {
            2 * x_channels
        } else {
            x_channels
        };
        let (ph, pw) = (xh + 2 * pad, xw + 2 * pad);
        if c != self.c_in || ph < self.k || pw < self.k {
            candle_core::bail!(
                "convolution expects {} input channels and at least {k}x{k} padded pixels, got {:?} padded by {pad}",
                self.c_in,
                x.dims(),
                k = self.k
            )
        }
        let (h, w) = (ph + 1 - self.k, pw + 1 - self.k);
        if let Some(r) = then.residual
            && r.dims() != [n, self.c_out, h, w]
        {
            candle_core::bail!(
                "convolution residual {:?} does not match the output {:?}",
                r.dims(),
                [n, self.c_out, h, w]
            )
        }
        shape_log::log_conv(ConvShape {
            n,
            c_in: c,
            h,
            w,
            c_out: self.c_out,
            k: self.k,
            dtype: x.dtype(),
        });
        let dtype = x.dtype();
        let x = x.to_dtype(self.weight.dtype())?;
        let fast = kernels::cpu_fast_path(&x) && !matches!(self.weight, Weight::Kernel(_));
        if (previous.is_some() || upsample) && !(fast && self.weight.is_cpu_winograd()) {
            candle_core::bail!(
                "convolution: only the CPU's Winograd path reads previous or upsampled frames in place"
            )
        }
        if !fast {
            let mut y = self.forward_portable(&x, pad)?;
            if let Some(r) = then.residual {
                let r = r.to_dtype(y.dtype())?;
                y = (y + r)?;
            }
            if then.relu {
                y = y.relu()?;
            }
            return y.to_dtype(dtype);
        }
        // The residual and the previous frame as the CPU ops read them:
        // contiguous f32 values.
        let as_f32 =
            |t: Option<&Tensor>| t.map(|t| t.to_dtype(DType::F32)?.contiguous()).transpose();
        let (residual, previous) = (as_f32(then.residual)?, as_f32(previous)?);
        let residual_guard = residual.as_ref().map(|r| r.storage_and_layout());
        let previous_guard = previous.as_ref().map(|p| p.storage_and_layout());
        let epilogue = Epilogue {
            residual: cpu_values(&residual_guard, "residual")?,
            relu: then.relu,
        };
        let conv = winograd::WinogradConv {
            pad,
            bias: self.cpu_bias.as_deref(),
            epilogue,
            previous: cpu_values(&previous_guard, "previous frame")?,
            upsample,
        };
        let x = x.contiguous()?;
        let y = match &self.weight {
            Weight::Taps(taps) => {
                let op = conv_taps::TapConv {
                    k: self.k,
                    pad,
                    bias: self.cpu_bias.as_deref(),
                    epilogue,
                };
                x.apply_op2_no_bwd(taps, &op)?
            }
            Weight::Winograd(u) => x.apply_op2_no_bwd(u, &conv)?,
            Weight::WinogradBf16(u) => {
                x.apply_op1_no_bwd(&winograd::WinogradConvBf16 { conv, u })?
            }
            Weight::Kernel(_) => unreachable!("device weights take the portable path"),
        };
        y.to_dtype(dtype)
    }

    /// The whole batch in one candle `conv2d` (zero padding by `pad` included),
    /// then the bias broadcast over batch and pixels; split into row strips only
    /// when the im2col matrix would pass [`IM2COL_BUDGET_BYTES`].
    fn forward_portable(&self, x: &Tensor, pad: usize) -> Result<Tensor> {
        self.forward_portable_within(x, pad, IM2COL_BUDGET_BYTES)
    }

    fn forward_portable_within(&self, x: &Tensor, pad: usize, budget: usize) -> Result<Tensor> {
        let kernel = self.weight.kernel(self.k)?;
        let (n, c, xh, xw) = x.dims4()?;
        let (h, w) = (xh + 2 * pad + 1 - self.k, xw + 2 * pad + 1 - self.k);
        // im2col holds k * k * c_in values per output pixel.
        let row_bytes = n * w * self.k * self.k * c * x.dtype().size_in_bytes();
        let strip = (budget / row_bytes.max(1)).clamp(1, h);
        let y = if strip == h {
            x.contiguous()?.conv2d(&kernel, pad, 1, 1, 1)?
        } else {
            // Zero padding must stay at the frame's border only, so it is
            // applied once here and each strip reads its rows plus a k - 1 halo.
            let padded = if pad > 0 {
                x.pad_with_zeros(2, pad, pad)?.pad_with_zeros(3, pad, pad)?
            } else {
                x.clone()
            };
            let strips = (0..h)
                .step_by(strip)
                .map(|r0| {
                    let rows = strip.min(h - r0);
                    padded
                        .narrow(2, r0, rows + self.k - 1)?
                        .contiguous()?
                        .conv2d(&kernel, 0, 1, 1, 1)
                })
                .collect::<Result<Vec<_>>>()?;
            Tensor::cat(&strips, 2)?
        };
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

/// The f32 values of a contiguous CPU tensor's storage, held by `guard`.
fn cpu_values<'a, G: std::ops::Deref<Target = Storage>>(
    guard: &'a Option<(G, &Layout)>,
    what: &str,
) -> Result<Option<&'a [f32]>> {
    match guard {
        Some((storage, layout)) => match (&**storage, layout.contiguous_offsets()) {
            (Storage::Cpu(CpuStorage::F32(v)), Some((start, end))) => Ok(Some(&v[start..end])),
            _ => candle_core::bail!("convolution {what}: not contiguous f32 values on the CPU"),
        },
        None => Ok(None),
    }
}

/// Largest im2col matrix one portable convolution builds. candle's CUDA
/// `conv2d` (without cuDNN) materialises `n * h * w * k * k * c_in` values; for
/// the decoder's last layers at 1080p that is about 19 GB in bf16, so such
/// layers run as a few row strips instead of one call.
const IM2COL_BUDGET_BYTES: usize = 2 << 30;

/// Replicate-pads the last two dimensions of a 4-D tensor by `pad` on each side.
pub(crate) fn pad_replicate_hw(x: &Tensor, pad: usize) -> Result<Tensor> {
    if pad == 0 {
        return Ok(x.clone());
    }
    x.pad_with_same(2, pad, pad)?.pad_with_same(3, pad, pad)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::kernels::KernelPath;

    /// candle's own convolution (zero padding) plus bias: the reference.
    fn reference(x: &Tensor, wt: &Tensor, b: &Tensor) -> Result<Tensor> {
        let (c_out, _, k, _) = wt.dims4()?;
        x.conv2d(wt, k / 2, 1, 1, 1)?
            .broadcast_add(&b.reshape((1, c_out, 1, 1))?)
    }

    use crate::test_util::max_abs_diff as max_err;

    /// Both paths against candle's convolution, including shapes that take
    /// several strips on the CPU path (70 x 300 and 300 x 300 frames).
    #[test]
    fn both_paths_match_candle_conv2d() -> Result<()> {
        let dev = Device::Cpu;
        for (k, c_in, c_out, n, h, w) in [
            (3, 5, 7, 2, 9, 11),
            (1, 4, 6, 2, 3, 5),
            (3, 2, 3, 1, 1, 1),
            (3, 3, 4, 1, 70, 300),
            (3, 2, 2, 1, 300, 300),
        ] {
            let x = Tensor::randn(0f32, 1.0, (n, c_in, h, w), &dev)?;
            let wt = Tensor::randn(0f32, 1.0, (c_out, c_in, k, k), &dev)?;
            let b = Tensor::randn(0f32, 1.0, c_out, &dev)?;
            let conv = Conv2d::new(&wt, Some(b.clone()))?;
            let want = reference(&x, &wt, &b)?;
            let fast = conv.forward(&x)?;
            let portable = kernels::run_with(KernelPath::Portable, || conv.forward(&x))?;
            assert_eq!(fast.dims(), want.dims());
            assert_eq!(portable.dims(), want.dims());
            assert!(max_err(&fast, &want)? < 1e-4, "cpu path, k={k} {h}x{w}");
            assert!(
                max_err(&portable, &want)? < 1e-4,
                "portable path, k={k} {h}x{w}"
            );
        }
        Ok(())
    }

    /// The layer as a device loads it: the weight kept `[c_out, c_in, k, k]`.
    fn with_device_layout(conv: &Conv2d, weight: &Tensor) -> Conv2d {
        Conv2d {
            weight: Weight::Kernel(weight.clone()),
            ..conv.clone()
        }
    }

    /// The portable path (from CPU taps, and from the device's weight layout)
    /// equals the CPU fast path: k = 1 and 3, with and without bias, zero- and
    /// caller-padded, odd sizes, batches of several frames.
    #[test]
    fn portable_path_equals_cpu_fast_path() -> Result<()> {
        let dev = Device::Cpu;
        for (k, c_in, c_out, n, h, w) in [
            (3, 5, 7, 3, 9, 13),
            (1, 6, 5, 2, 7, 3),
            (3, 4, 3, 4, 1, 5),
            (3, 3, 2, 2, 17, 1),
        ] {
            let x = Tensor::randn(0f32, 1.0, (n, c_in, h, w), &dev)?;
            let wt = Tensor::randn(0f32, 1.0, (c_out, c_in, k, k), &dev)?;
            let padded = pad_replicate_hw(&x, k / 2)?;
            for bias in [None, Some(Tensor::randn(0f32, 1.0, c_out, &dev)?)] {
                let with_bias = bias.is_some();
                let conv = Conv2d::new(&wt, bias)?;
                let device_layout = with_device_layout(&conv, &wt);
                for (input, zero_pad) in [(&x, true), (&padded, false)] {
                    let run = |c: &Conv2d| -> Result<Tensor> {
                        if zero_pad {
                            c.forward(input)
                        } else {
                            c.forward_padded(input)
                        }
                    };
                    let fast = run(&conv)?;
                    let portable = kernels::run_with(KernelPath::Portable, || run(&conv))?;
                    let device = kernels::run_with(KernelPath::Portable, || run(&device_layout))?;
                    assert_eq!(fast.dims(), &[n, c_out, h, w]);
                    for (name, y) in [("portable", &portable), ("device layout", &device)] {
                        assert_eq!(y.dims(), fast.dims());
                        let err = max_err(y, &fast)?;
                        assert!(
                            err < 1e-4,
                            "{name}: k={k} n={n} {h}x{w} bias={with_bias} zero_pad={zero_pad}: {err}"
                        );
                    }
                }
            }
        }
        Ok(())
    }

    /// A small im2col budget splits the layer into row strips (one row each,
    /// and a few rows) with the same result as one call, zero and caller padding.
    #[test]
    fn portable_row_strips_equal_one_call() -> Result<()> {
        let dev = Device::Cpu;
        let (n, c_in, c_out, h, w) = (2, 3, 4, 7, 5);
        let x = Tensor::randn(0f32, 1.0, (n, c_in, h, w), &dev)?;
        for k in [1, 3] {
            let wt = Tensor::randn(0f32, 1.0, (c_out, c_in, k, k), &dev)?;
            let b = Tensor::randn(0f32, 1.0, c_out, &dev)?;
            let conv = Conv2d::new(&wt, Some(b))?;
            let padded = pad_replicate_hw(&x, k / 2)?;
            let row = n * w * k * k * c_in * 4;
            for (input, pad) in [(&x, k / 2), (&padded, 0)] {
                let whole = conv.forward_portable_within(input, pad, usize::MAX)?;
                assert_eq!(whole.dims(), &[n, c_out, h, w]);
                for budget in [0, row, 3 * row + 1] {
                    let strips = conv.forward_portable_within(input, pad, budget)?;
                    assert_eq!(strips.dims(), whole.dims());
                    let err = max_err(&strips, &whole)?;
                    assert!(err < 1e-5, "k={k} pad={pad} budget={budget}: {err}");
                }
            }
        }
        Ok(())
    }

    /// The Winograd paths, F(2x2, 3x3) and F(4x4, 3x3), equal the tap path and
    /// candle's portable convolution (F(4x4) within its larger rounding, on
    /// unit-scale weights over up to 24 x 9 inputs):
    /// odd and even sizes (partial last tiles), frames smaller than a tile,
    /// batches (strips spanning frames), zero and caller padding, with and
    /// without bias, and frames wide enough for several strips.
    #[test]
    fn winograd_equals_taps_and_portable() -> Result<()> {
        let dev = Device::Cpu;
        for (c_in, c_out, n, h, w) in [
            (5, 7, 3, 9, 13),
            (4, 3, 2, 8, 6),
            (3, 2, 2, 1, 1),
            (2, 3, 1, 17, 2),
            (3, 4, 1, 70, 300),
            (20, 24, 2, 33, 31),
        ] {
            let x = Tensor::randn(0f32, 1.0, (n, c_in, h, w), &dev)?;
            let wt = Tensor::randn(0f32, 1.0, (c_out, c_in, 3, 3), &dev)?;
            let padded = pad_replicate_hw(&x, 1)?;
            for (bias, kernel) in [
                (None, CpuConvKernel::Winograd),
                (
                    Some(Tensor::randn(0f32, 1.0, c_out, &dev)?),
                    CpuConvKernel::Winograd,
                ),
                (None, CpuConvKernel::Winograd4),
                (
                    Some(Tensor::randn(0f32, 1.0, c_out, &dev)?),
                    CpuConvKernel::Winograd4,
                ),
            ] {
                let with_bias = bias.is_some();
                let wino = Conv2d::with_cpu_kernel(&wt, bias.clone(), kernel)?;
                let taps = Conv2d::with_cpu_kernel(&wt, bias, CpuConvKernel::Taps)?;
                let xis = if kernel == CpuConvKernel::Winograd4 {
                    36
                } else {
                    16
                };
                assert!(matches!(&wino.weight, Weight::Winograd(u) if u.dim(0)? == xis));
                for (input, zero_pad) in [(&x, true), (&padded, false)] {
                    let run = |c: &Conv2d| -> Result<Tensor> {
                        if zero_pad {
                            c.forward(input)
                        } else {
                            c.forward_padded(input)
                        }
                    };
                    let fast = run(&wino)?;
                    assert_eq!(fast.dims(), &[n, c_out, h, w]);
                    let by_taps = run(&taps)?;
                    let portable = kernels::run_with(KernelPath::Portable, || run(&wino))?;
                    let bound = if xis == 36 { 2e-3 } else { 1e-4 };
                    for (name, y) in [("taps", &by_taps), ("portable", &portable)] {
                        let err = max_err(y, &fast)?;
                        assert!(
                            err < bound,
                            "{name} {kernel:?}: {c_in}->{c_out} n={n} {h}x{w} bias={with_bias} zero_pad={zero_pad}: {err}"
                        );
                    }
                }
            }
        }
        Ok(())
    }

    /// Built for bf16 products, an F(2x2) Winograd layer holds packed bf16
    /// weights and stays within bf16 rounding of the f32 taps (partial tiles,
    /// several strips, channel counts off the kernel's blocks), on the fast
    /// path and on the portable path rebuilt from the packed weights; F(4x4)
    /// keeps f32 products.
    #[test]
    fn bf16_winograd_stays_within_rounding() -> Result<()> {
        let dev = Device::Cpu;
        for (c_in, c_out, n, h, w) in [(65, 13, 2, 9, 13), (64, 40, 1, 70, 300), (3, 2, 1, 1, 1)] {
            let x = Tensor::randn(0f32, 1.0, (n, c_in, h, w), &dev)?;
            let wt = (Tensor::randn(0f32, 1.0, (c_out, c_in, 3, 3), &dev)?
                / (9.0 * c_in as f64).sqrt())?;
            let b = Tensor::randn(0f32, 1.0, c_out, &dev)?;
            let taps = Conv2d::with_cpu_kernel(&wt, Some(b.clone()), CpuConvKernel::Taps)?;
            let want = taps.forward(&x)?;
            let f4 = products::load_with(CpuProducts::Bf16, || {
                Conv2d::with_cpu_kernel(&wt, Some(b.clone()), CpuConvKernel::Winograd4)
            })?;
            assert!(matches!(&f4.weight, Weight::Winograd(_)));
            let conv = products::load_with(CpuProducts::Bf16, || {
                Conv2d::with_cpu_kernel(&wt, Some(b.clone()), CpuConvKernel::Winograd)
            })?;
            assert!(matches!(&conv.weight, Weight::WinogradBf16(_)));
            {
                // unit-scale outputs: bf16's relative step 2^-8 over 9 c_in
                // terms, grown by the transforms
                let bound = 0.03;
                for path in [KernelPath::Fast, KernelPath::Portable] {
                    let got = kernels::run_with(path, || conv.forward(&x))?;
                    assert_eq!(got.dtype(), DType::F32);
                    let err = max_err(&got, &want)?;
                    eprintln!("bf16 winograd {path:?} {c_in}->{c_out} {h}x{w}: {err}");
                    assert!(
                        err > 0.0 && err < bound,
                        "{path:?} {c_in}->{c_out} {h}x{w}: {err}"
                    );
                }
            }
        }
        Ok(())
    }

    /// `forward_then` equals the convolution followed by candle's add and
    /// ReLU, on the tap and Winograd paths and on the portable path, and
    /// refuses a residual of another shape.
    #[test]
    fn fused_residual_and_relu_equal_separate_ops() -> Result<()> {
        let dev = Device::Cpu;
        let (n, c_in, c_out, h, w) = (2, 5, 9, 11, 13);
        let x = Tensor::randn(0f32, 1.0, (n, c_in, h, w), &dev)?;
        let r = Tensor::randn(0f32, 1.0, (n, c_out, h, w), &dev)?;
        let wt = Tensor::randn(0f32, 1.0, (c_out, c_in, 3, 3), &dev)?;
        let b = Tensor::randn(0f32, 1.0, c_out, &dev)?;
        for kernel in [CpuConvKernel::Taps, CpuConvKernel::Winograd] {
            let conv = Conv2d::with_cpu_kernel(&wt, Some(b.clone()), kernel)?;
            let plain = conv.forward(&x)?;
            for (residual, relu) in [(None, true), (Some(&r), false), (Some(&r), true)] {
                let mut want = plain.clone();
                if let Some(r) = residual {
                    want = (want + r)?;
                }
                if relu {
                    want = want.relu()?;
                }
                let then = Then { residual, relu };
                for path in [KernelPath::Fast, KernelPath::Portable] {
                    let got = kernels::run_with(path, || conv.forward_then(&x, then))?;
                    let err = max_err(&got, &want)?;
                    assert!(
                        err < 1e-4,
                        "{kernel:?} {path:?} residual={} relu={relu}: {err}",
                        residual.is_some()
                    );
                }
            }
            let wrong = Tensor::zeros((n, c_out, h, w + 1), DType::F32, &dev)?;
            let then = Then {
                residual: Some(&wrong),
                relu: true,
            };
            let err = conv.forward_then(&x, then).unwrap_err().to_string();
            assert!(err.contains("residual"), "{err}");
        }
        Ok(())
    }

    /// `forward_with_previous` equals the convolution of the concatenated
    /// input (x, then x one frame later behind `before`) on the Winograd path
    /// that reads the frames in place (f32 and bf16 products), on the taps and
    /// on the portable path, and refuses a previous frame of another shape.
    #[test]
    fn previous_frames_read_in_place_equal_the_concatenation() -> Result<()> {
        let dev = Device::Cpu;
        let (n, c, c_out, h, w) = (3, 4, 6, 9, 7);
        let x = Tensor::randn(0f32, 1.0, (n, c, h, w), &dev)?;
        let before = Tensor::randn(0f32, 1.0, (1, c, h, w), &dev)?;
        // unit-scale outputs, for the bf16 bound
        let wt =
            (Tensor::randn(0f32, 1.0, (c_out, 2 * c, 3, 3), &dev)? / (18.0 * c as f64).sqrt())?;
        let b = Tensor::randn(0f32, 1.0, c_out, &dev)?;
        let past = Tensor::cat(&[&before, &x.narrow(0, 0, n - 1)?], 0)?;
        let input = Tensor::cat(&[&x, &past], 1)?;
        let mut convs = vec![
            (
                Conv2d::with_cpu_kernel(&wt, Some(b.clone()), CpuConvKernel::Winograd)?,
                1e-4,
            ),
            (
                Conv2d::with_cpu_kernel(&wt, Some(b.clone()), CpuConvKernel::Taps)?,
                1e-4,
            ),
        ];
        let bf16 = products::load_with(CpuProducts::Bf16, || {
            Conv2d::with_cpu_kernel(&wt, Some(b.clone()), CpuConvKernel::Winograd)
        })?;
        convs.push((bf16, 3e-2));
        for (conv, bound) in &convs {
            let want = conv.forward_then(&input, Then::RELU)?;
            for path in [KernelPath::Fast, KernelPath::Portable] {
                let got = kernels::run_with(path, || {
                    conv.forward_with_previous(&x, &before, Then::RELU)
                })?;
                let err = max_err(&got, &want)?;
                assert!(err < *bound, "{path:?}: {err}");
            }
            let one = conv.forward_with_previous(&x.narrow(0, 1, 1)?, &before, Then::default())?;
            let err = max_err(
                &one,
                &conv.forward(&Tensor::cat(&[&x.narrow(0, 1, 1)?, &before], 1)?)?,
            )?;
            assert!(err < *bound, "one frame: {err}");
            let wrong = Tensor::zeros((1, c, h, w + 1), DType::F32, &dev)?;
            assert!(conv.forward_with_previous(&x, &wrong, Then::RELU).is_err());
        }
        Ok(())
    }

    /// `forward_upsampled_then` equals the same layer on the upsampled input
    /// on the Winograd paths that read it in place (F(2x2) in f32 and bf16,
    /// F(4x4)), with partial last tiles, a residual and the ReLU, and on the
    /// taps and the portable path, which upsample first; the f32 paths agree
    /// with candle's own convolution of the upsampled input.
    #[test]
    fn upsampled_frames_read_in_place_equal_the_upsampling() -> Result<()> {
        let dev = Device::Cpu;
        let (n, c, c_out, h, w) = (2, 5, 6, 5, 7);
        let x = Tensor::randn(0f32, 1.0, (n, c, h, w), &dev)?;
        let up = x.upsample_nearest2d(2 * h, 2 * w)?;
        let wt = (Tensor::randn(0f32, 1.0, (c_out, c, 3, 3), &dev)? / (9.0 * c as f64).sqrt())?;
        let b = Tensor::randn(0f32, 1.0, c_out, &dev)?;
        let residual = Tensor::randn(0f32, 1.0, (n, c_out, 2 * h, 2 * w), &dev)?;
        let then = Then {
            residual: Some(&residual),
            relu: true,
        };
        let conv = |kernel| Conv2d::with_cpu_kernel(&wt, Some(b.clone()), kernel);
        let reference = kernels::run_with(KernelPath::Portable, || {
            conv(CpuConvKernel::Taps)?.forward_then(&up, then)
        })?;
        // (layer, bound against candle's convolution: none for bf16 products)
        let mut convs = vec![
            (conv(CpuConvKernel::Winograd)?, Some(1e-4)),
            (conv(CpuConvKernel::Winograd4)?, Some(1e-3)),
            (conv(CpuConvKernel::Taps)?, Some(1e-4)),
        ];
        let bf16 = products::load_with(CpuProducts::Bf16, || conv(CpuConvKernel::Winograd))?;
        convs.push((bf16, None));
        for (conv, bound) in &convs {
            for path in [KernelPath::Fast, KernelPath::Portable] {
                let (got, want) = kernels::run_with(path, || -> Result<_> {
                    Ok((
                        conv.forward_upsampled_then(&x, then)?,
                        conv.forward_then(&up, then)?,
                    ))
                })?;
                assert_eq!(got.dims(), [n, c_out, 2 * h, 2 * w]);
                // the same values through the same products
                let err = max_err(&got, &want)?;
                assert!(err < 1e-6, "{path:?}, against the same layer: {err}");
                if let Some(bound) = bound {
                    let err = max_err(&got, &reference)?;
                    assert!(err < *bound, "{path:?}, against candle: {err}");
                }
            }
        }
        Ok(())
    }

    /// An empty batch gives an empty result rather than a panic.
    #[test]
    fn winograd_takes_an_empty_batch() -> Result<()> {
        let dev = Device::Cpu;
        let wt = Tensor::randn(0f32, 1.0, (4, 3, 3, 3), &dev)?;
        let conv = Conv2d::with_cpu_kernel(&wt, None, CpuConvKernel::Winograd)?;
        let y = conv.forward(&Tensor::zeros((0, 3, 5, 6), DType::F32, &dev)?)?;
        assert_eq!(y.dims(), &[0, 4, 5, 6]);
        Ok(())
    }

    /// Only 3x3 kernels take the Winograd path, and by default only layers
    /// with enough input and output channels.
    #[test]
    fn winograd_is_chosen_for_wide_3x3_layers() -> Result<()> {
        let dev = Device::Cpu;
        let wide = Conv2d::new(&Tensor::zeros((64, 64, 3, 3), DType::F32, &dev)?, None)?;
        assert!(matches!(&wide.weight, Weight::Winograd(u) if u.dim(0)? == 36));
        // the layer to RGB: taps with gemm's AVX-512 kernels, F(2x2) without
        let to_rgb = Conv2d::new(&Tensor::zeros((3, 64, 3, 3), DType::F32, &dev)?, None)?;
        if gemm_has_avx512() {
            assert!(matches!(to_rgb.weight, Weight::Taps(_)));
        } else {
            assert!(matches!(&to_rgb.weight, Weight::Winograd(u) if u.dim(0)? == 16));
        }
        let narrow = Conv2d::new(&Tensor::zeros((64, 8, 3, 3), DType::F32, &dev)?, None)?;
        assert!(matches!(narrow.weight, Weight::Taps(_)));
        let point = Tensor::zeros((64, 64, 1, 1), DType::F32, &dev)?;
        assert!(matches!(Conv2d::new(&point, None)?.weight, Weight::Taps(_)));
        assert!(Conv2d::with_cpu_kernel(&point, None, CpuConvKernel::Winograd).is_err());
        Ok(())
    }

    /// F(4x4) by default up to its weight cap (the TCDecoder's widest layer
    /// within, the LQ projection's beyond), F(2x2) for layers with bf16 products.
    #[test]
    fn default_tile_is_f4_within_its_weight_cap() {
        assert_eq!(default_winograd_tile(1024, 512), winograd_f4::M);
        assert_eq!(default_winograd_tile(128, 128), winograd_f4::M);
        assert_eq!(default_winograd_tile(3 * 1024, 2048), 2);
        // layers to RGB: F(2x2) where they take Winograd, i.e. without AVX-512
        assert_eq!(default_winograd_tile(128, 3), 2);
        assert_eq!(prefers_winograd(3, 128, 3), !gemm_has_avx512());
        assert!(prefers_winograd(3, 128, 128) && !prefers_winograd(3, 16, 128));
        assert!(!prefers_winograd(1, 128, 128));
        let bf16_tile = products::load_with(CpuProducts::Bf16, || default_winograd_tile(128, 128));
        assert_eq!(bf16_tile, 2);
    }

    /// The CPU taps turn back into exactly the loaded `[c_out, c_in, k, k]` weight.
    #[test]
    fn taps_give_back_the_loaded_kernel() -> Result<()> {
        let wt = Tensor::randn(0f32, 1.0, (4, 3, 3, 3), &Device::Cpu)?;
        let conv = Conv2d::new(&wt, None)?;
        assert!(matches!(conv.weight, Weight::Taps(_)));
        let back = conv.weight.kernel(3)?;
        assert_eq!(back.dims(), wt.dims());
        assert_eq!(
            back.flatten_all()?.to_vec1::<f32>()?,
            wt.flatten_all()?.to_vec1::<f32>()?
        );
        Ok(())
    }

    /// A bias of the wrong length is refused at load, naming the sizes.
    #[test]
    fn rejects_wrong_bias() -> Result<()> {
        let dev = Device::Cpu;
        let wt = Tensor::zeros((3, 2, 3, 3), DType::F32, &dev)?;
        let err = Conv2d::new(&wt, Some(Tensor::zeros(4, DType::F32, &dev)?));
        assert!(format!("{:?}", err.err()).contains("expected 3 values"));
        Ok(())
    }

    /// A caller-padded input (here: replicate padding) and no bias.
    #[test]
    fn forward_padded_uses_the_given_border() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 3, 6, 5), &dev)?;
        let wt = Tensor::randn(0f32, 1.0, (4, 3, 3, 3), &dev)?;
        let conv = Conv2d::new(&wt, None)?;
        let padded = pad_replicate_hw(&x, 1)?;
        let ours = conv.forward_padded(&padded)?;
        let want = padded.conv2d(&wt, 0, 1, 1, 1)?;
        assert!(max_err(&ours, &want)? < 1e-4);
        Ok(())
    }

    /// Half-precision inputs come back in their dtype, on both paths (the
    /// CPU computes in f32 either way: its `conv2d` has no bf16 kernel).
    #[test]
    fn keeps_the_input_dtype() -> Result<()> {
        let dev = Device::Cpu;
        let wt = Tensor::randn(0f32, 1.0, (2, 3, 3, 3), &dev)?.to_dtype(DType::BF16)?;
        let conv = Conv2d::new(&wt, None)?;
        let x = Tensor::randn(0f32, 1.0, (1, 3, 4, 4), &dev)?.to_dtype(DType::BF16)?;
        assert_eq!(conv.forward(&x)?.dtype(), DType::BF16);
        let portable = kernels::run_with(KernelPath::Portable, || conv.forward(&x))?;
        assert_eq!(portable.dtype(), DType::BF16);
        Ok(())
    }

    #[test]
    fn rejects_wrong_channels() -> Result<()> {
        let dev = Device::Cpu;
        let conv = Conv2d::new(&Tensor::zeros((3, 2, 3, 3), DType::F32, &dev)?, None)?;
        assert!(
            conv.forward(&Tensor::zeros((1, 4, 5, 5), DType::F32, &dev)?)
                .is_err()
        );
        assert!(
            conv.forward_padded(&Tensor::zeros((1, 2, 2, 5), DType::F32, &dev)?)
                .is_err()
        );
        assert!(Conv2d::new(&Tensor::zeros((3, 2, 2, 2), DType::F32, &dev)?, None).is_err());
        Ok(())
    }

    #[test]
    fn replicate_padding_copies_edges() -> Result<()> {
        let x = Tensor::new(&[[1f32, 2.], [3., 4.]], &Device::Cpu)?.reshape((1, 1, 2, 2))?;
        let y = pad_replicate_hw(&x, 1)?.flatten_all()?.to_vec1::<f32>()?;
        assert_eq!(
            y,
            vec![
                1., 1., 2., 2., 1., 1., 2., 2., 3., 3., 4., 4., 3., 3., 4., 4.
            ]
        );
        Ok(())
    }
}
