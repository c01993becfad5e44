//! 2-D convolution as an explicit im2col and one matrix product.
//!
//! candle's CPU convolution runs far below its matrix-multiply rate (and has no
//! half-precision kernel), while the TCDecoder and the LQ projection are nearly
//! all convolution. Here the `k x k` shifted views of the zero-padded input are
//! stacked along channels (tap-major) and multiplied by the weight, reshaped once
//! at load to `[c_out, k * k * c_in]`. Rows are processed in strips so the stacked
//! columns stay within `COLUMN_BUDGET` elements. Every op is a plain candle op,
//! so this runs on every device.

use candle_core::{DType, Device, Result, Tensor};

use super::profile::{self, ConvShape};

/// Largest im2col buffer built at once, in elements (16 Mi f32 = 64 MiB): small
/// enough to stay near the caches, large enough for efficient products.
const COLUMN_BUDGET: usize = 1 << 24;

/// A stride-1, "same"-padded 2-D convolution with an odd square kernel.
#[derive(Debug, Clone)]
pub struct Conv2d {
    /// `[c_out, k * k * c_in]`, column index `(dy * k + dx) * c_in + c`.
    w_mat: Tensor,
    bias: Option<Tensor>,
    k: usize,
    c_in: usize,
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
        let w_mat = weight
            .permute((0, 2, 3, 1))?
            .contiguous()?
            .reshape((c_out, k * k * c_in))?
            .to_dtype(dtype)?;
        let bias = bias
            .map(|b| b.to_dtype(dtype)?.reshape((c_out, 1)))
            .transpose()?;
        Ok(Self {
            w_mat,
            bias,
            k,
            c_in,
        })
    }

    pub fn out_channels(&self) -> usize {
        self.w_mat.dims()[0]
    }

    /// `x`: `[n, c_in, h, w]`, zero-padded here; returns `[n, c_out, h, w]` in
    /// `x`'s dtype.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let pad = self.k / 2;
        let dtype = x.dtype();
        let x = x.to_dtype(self.w_mat.dtype())?;
        let padded = if pad > 0 {
            x.pad_with_zeros(2, pad, pad)?.pad_with_zeros(3, pad, pad)?
        } else {
            x
        };
        self.forward_padded(&padded)?.to_dtype(dtype)
    }

    /// `padded`: `[n, c_in, h + k - 1, w + k - 1]`, already padded by the caller
    /// (e.g. replicate padding); returns `[n, c_out, h, w]` in `padded`'s dtype.
    pub fn forward_padded(&self, padded: &Tensor) -> Result<Tensor> {
        let (n, c, ph, pw) = padded.dims4()?;
        if c != self.c_in || ph < self.k || pw < self.k {
            candle_core::bail!(
                "convolution expects {} input channels and at least {k}x{k} pixels, got {:?}",
                self.c_in,
                padded.dims(),
                k = self.k
            )
        }
        let (h, w) = (ph + 1 - self.k, pw + 1 - self.k);
        let c_out = self.out_channels();
        profile::log_conv(ConvShape {
            n,
            c_in: c,
            h,
            w,
            c_out,
            k: self.k,
            dtype: padded.dtype(),
        });
        let dtype = padded.dtype();
        let padded = padded.to_dtype(self.w_mat.dtype())?;
        let taps = self.k * self.k * c;
        let strip = (COLUMN_BUDGET / (taps * w).max(1)).clamp(1, h);
        let mut frames = Vec::with_capacity(n);
        for i in 0..n {
            let frame = padded.narrow(0, i, 1)?.squeeze(0)?;
            let mut strips = Vec::with_capacity(h.div_ceil(strip));
            let mut r0 = 0;
            while r0 < h {
                let rows = strip.min(h - r0);
                strips.push(self.strip(&frame, r0, rows, w)?);
                r0 += rows;
            }
            let out = if strips.len() == 1 {
                strips.remove(0)
            } else {
                Tensor::cat(&strips, 1)?
            };
            frames.push(out.reshape((1, c_out, h, w))?);
        }
        let y = if frames.len() == 1 {
            frames.remove(0)
        } else {
            Tensor::cat(&frames, 0)?
        };
        y.to_dtype(dtype)
    }

    /// Output rows `r0 .. r0 + rows` of one padded frame `[c, h + 2p, w + 2p]`.
    fn strip(&self, frame: &Tensor, r0: usize, rows: usize, w: usize) -> Result<Tensor> {
        let c_out = self.out_channels();
        let columns = if self.k == 1 {
            frame.narrow(1, r0, rows)?.reshape((self.c_in, rows * w))?
        } else {
            let mut taps = Vec::with_capacity(self.k * self.k);
            for dy in 0..self.k {
                let band = frame.narrow(1, r0 + dy, rows)?;
                for dx in 0..self.k {
                    taps.push(band.narrow(2, dx, w)?);
                }
            }
            Tensor::cat(&taps, 0)?.reshape((self.k * self.k * self.c_in, rows * w))?
        };
        let y = profile::matmul(&self.w_mat, &columns)?;
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        y.reshape((c_out, rows, w))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_candle_conv2d() -> Result<()> {
        let dev = Device::Cpu;
        for (k, c_in, c_out, h, w) in [(3, 5, 7, 9, 11), (1, 4, 6, 3, 5), (3, 2, 3, 1, 1)] {
            let x = Tensor::randn(0f32, 1.0, (2, c_in, h, w), &dev)?;
            let wt = Tensor::randn(0f32, 1.0, (c_out, c_in, k, k), &dev)?;
            let b = Tensor::randn(0f32, 1.0, c_out, &dev)?;
            let ours = Conv2d::new(&wt, Some(b.clone()))?.forward(&x)?;
            let want = x
                .conv2d(&wt, k / 2, 1, 1, 1)?
                .broadcast_add(&b.reshape((1, c_out, 1, 1))?)?;
            let err = (ours - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(err < 1e-4, "k={k}: {err}");
        }
        Ok(())
    }

    #[test]
    fn strips_do_not_change_the_result() -> Result<()> {
        let dev = Device::Cpu;
        let conv = Conv2d::new(&Tensor::randn(0f32, 1.0, (3, 2, 3, 3), &dev)?, None)?;
        let x = Tensor::randn(0f32, 1.0, (1, 2, 40, 8), &dev)?;
        let whole = conv.forward(&x)?;
        // one row per strip
        let rows: Vec<Tensor> = (0..40)
            .map(|r| {
                let padded = x
                    .pad_with_zeros(2, 1, 1)?
                    .pad_with_zeros(3, 1, 1)?
                    .squeeze(0)?;
                conv.strip(&padded, r, 1, 8)
            })
            .collect::<Result<_>>()?;
        let stitched = Tensor::cat(&rows, 1)?.unsqueeze(0)?;
        assert_eq!(
            (whole - stitched)?.abs()?.max_all()?.to_scalar::<f32>()?,
            0.0
        );
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
        assert!(Conv2d::new(&Tensor::zeros((3, 2, 2, 2), DType::F32, &dev)?, None).is_err());
        Ok(())
    }
}
