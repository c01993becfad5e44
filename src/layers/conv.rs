//! 2-D convolution as one matrix product per kernel tap.
//!
//! candle's CPU convolution runs far below its matrix-multiply rate (and has no
//! half-precision kernel), while the TCDecoder and the LQ projection are nearly
//! all convolution. The weight is split at load into its `k * k` taps,
//! `[k * k, c_out, c_in]`. With the padded frame flattened to `[c_in, ph * pw]`,
//! every tap's input is a shifted view of it when outputs are computed for all
//! `pw` columns of a row and the last `k - 1` are dropped, so no im2col copy is
//! built. On the CPU the taps accumulate in one buffer through `gemm`
//! ([`conv_taps`]); elsewhere they are candle matmuls summed with candle adds,
//! which every device has.

use candle_core::{DType, Device, Result, Tensor};

use super::cpu::conv_taps;
use super::kernels;
use super::shape_log::{self, ConvShape};

/// Output columns per product on the portable path, bounding its temporaries.
const PORTABLE_STRIP_COLUMNS: usize = 1 << 16;

/// A stride-1, "same"-padded 2-D convolution with an odd square kernel.
#[derive(Debug, Clone)]
pub struct Conv2d {
    /// `[k * k, c_out, c_in]`, tap `(dy, dx)` at index `dy * k + dx`.
    w_taps: Tensor,
    /// `[c_out, 1]`.
    bias: Option<Tensor>,
    /// The bias as the CPU path reads it, kept from load.
    cpu_bias: Option<Vec<f32>>,
    k: usize,
    c_in: usize,
    c_out: usize,
}

/// The dtype convolutions compute in on `device`: candle's CPU matmul is
/// fastest in f32, and the reference runs these layers in f32 too.
fn compute_dtype(device: &Device, dtype: DType) -> DType {
    if device.is_cpu() { DType::F32 } else { dtype }
}

impl Conv2d {
    /// `weight`: `[c_out, c_in, k, k]` (k odd); `bias`: `[c_out]`.
    pub fn new(weight: &Tensor, bias: Option<Tensor>) -> Result<Self> {
        let (c_out, c_in, k, k2) = weight.dims4()?;
        if k != k2 || k % 2 == 0 {
            candle_core::bail!("convolution kernel must be square and odd, found {k}x{k2}")
        }
        let dtype = compute_dtype(weight.device(), weight.dtype());
        let w_taps = weight
            .permute((2, 3, 0, 1))?
            .contiguous()?
            .reshape((k * k, c_out, c_in))?
            .to_dtype(dtype)?;
        let bias = bias
            .map(|b| b.to_dtype(dtype)?.reshape((c_out, 1)))
            .transpose()?;
        let cpu_bias = match &bias {
            Some(b) if dtype == DType::F32 && b.device().is_cpu() => {
                Some(b.flatten_all()?.to_vec1::<f32>()?)
            }
            _ => None,
        };
        Ok(Self {
            w_taps,
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

    /// `x`: `[n, c_in, h, w]`, zero-padded here; returns `[n, c_out, h, w]` in
    /// `x`'s dtype.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.run(x, self.k / 2)
    }

    /// `padded`: `[n, c_in, h + k - 1, w + k - 1]`, already padded by the caller
    /// (e.g. replicate padding); returns `[n, c_out, h, w]` in `padded`'s dtype.
    pub fn forward_padded(&self, padded: &Tensor) -> Result<Tensor> {
        self.run(padded, 0)
    }

    /// Convolves `x` zero-padded by `pad` on each side.
    fn run(&self, x: &Tensor, pad: usize) -> Result<Tensor> {
        let (n, c, xh, xw) = x.dims4()?;
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
        let x = x.to_dtype(self.w_taps.dtype())?;
        let y = if kernels::cpu_fast_path(&x) {
            self.forward_cpu(&x, pad)?
        } else {
            let padded = if pad > 0 {
                x.pad_with_zeros(2, pad, pad)?.pad_with_zeros(3, pad, pad)?
            } else {
                x
            };
            self.forward_portable(&padded)?
        };
        y.to_dtype(dtype)
    }

    fn forward_cpu(&self, x: &Tensor, pad: usize) -> Result<Tensor> {
        let op = conv_taps::TapConv {
            k: self.k,
            pad,
            bias: self.cpu_bias.as_deref(),
        };
        x.contiguous()?.apply_op2_no_bwd(&self.w_taps, &op)
    }

    /// The same products with candle ops only: `k * k` matmuls over shifted
    /// views of each flattened padded frame, summed.
    fn forward_portable(&self, padded: &Tensor) -> Result<Tensor> {
        let (n, c, ph, pw) = padded.dims4()?;
        let (h, w) = (ph + 1 - self.k, pw + 1 - self.k);
        let strip = (PORTABLE_STRIP_COLUMNS / pw).clamp(1, h);
        let mut frames = Vec::with_capacity(n);
        for i in 0..n {
            let flat = padded.get(i)?.contiguous()?.reshape((c, ph * pw))?;
            let mut strips = Vec::with_capacity(h.div_ceil(strip));
            let mut r0 = 0;
            while r0 < h {
                let rows = strip.min(h - r0);
                strips.push(self.portable_strip(&flat, pw, r0, rows)?);
                r0 += rows;
            }
            let wide = Tensor::cat(&strips, 1)?;
            // Each row's last k - 1 columns are not outputs.
            frames.push(wide.reshape((self.c_out, h, pw))?.narrow(2, 0, w)?);
        }
        Tensor::stack(&frames, 0)
    }

    /// Output rows `r0 .. r0 + rows` of a flattened padded frame `[c_in, ph * pw]`,
    /// as `[c_out, rows * pw]` (the last `k - 1` columns of each row unused).
    fn portable_strip(&self, flat: &Tensor, pw: usize, r0: usize, rows: usize) -> Result<Tensor> {
        // The last row needs only its w valid columns; the rest is zero-filled.
        let w = pw + 1 - self.k;
        let cols = (rows - 1) * pw + w;
        let mut acc: Option<Tensor> = None;
        for tap in 0..self.k * self.k {
            let (dy, dx) = (tap / self.k, tap % self.k);
            let view = flat.narrow(1, (r0 + dy) * pw + dx, cols)?;
            // candle's CPU matmul takes the strided view as it is; others want it packed.
            let view = if view.device().is_cpu() {
                view
            } else {
                view.contiguous()?
            };
            let y = self.w_taps.get(tap)?.matmul(&view)?;
            acc = Some(match acc {
                None => y,
                Some(a) => (a + y)?,
            });
        }
        let acc = match acc {
            Some(a) => a,
            None => candle_core::bail!("convolution without taps"),
        };
        let acc = match &self.bias {
            Some(b) => acc.broadcast_add(b)?,
            None => acc,
        };
        acc.pad_with_zeros(1, 0, self.k - 1)
    }
}

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

    /// candle's own convolution (zero padding) plus bias: the reference.
    fn reference(x: &Tensor, wt: &Tensor, b: &Tensor) -> Result<Tensor> {
        let (c_out, _, k, _) = wt.dims4()?;
        x.conv2d(wt, k / 2, 1, 1, 1)?
            .broadcast_add(&b.reshape((1, c_out, 1, 1))?)
    }

    fn max_err(a: &Tensor, b: &Tensor) -> Result<f32> {
        (a - b)?.abs()?.max_all()?.to_scalar::<f32>()
    }

    /// Both paths against candle's convolution, including shapes that take
    /// several strips on either path (70 x 300 and 300 x 300 frames).
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
            let pad = k / 2;
            let padded = x.pad_with_zeros(2, pad, pad)?.pad_with_zeros(3, pad, pad)?;
            let portable = conv.forward_portable(&padded)?;
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

    /// Half-precision inputs come back in their dtype.
    #[test]
    fn keeps_the_input_dtype() -> Result<()> {
        let dev = Device::Cpu;
        let wt = Tensor::randn(0f32, 1.0, (2, 3, 3, 3), &dev)?.to_dtype(DType::BF16)?;
        let conv = Conv2d::new(&wt, None)?;
        let x = Tensor::randn(0f32, 1.0, (1, 3, 4, 4), &dev)?.to_dtype(DType::BF16)?;
        assert_eq!(conv.forward(&x)?.dtype(), DType::BF16);
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
