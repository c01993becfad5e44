//! CPU fast path of [`crate::layers::conv::Conv2d`]: one accumulating matrix product per
//! kernel tap, read straight from the padded image.
//!
//! With the padded frame flattened to `[c_in, ph * pw]`, output pixel `(r, x)`
//! taken at flat position `q = r * pw + x` reads tap `(dy, dx)` at
//! `q + dy * pw + dx`. Computing outputs for every `x < pw` (the last `k - 1`
//! columns of each row are discarded) makes each tap's input a plain shifted
//! view of the image, with row stride `ph * pw`. `gemm` takes such strided
//! operands and adds into its destination, so the `k * k` products accumulate in
//! one strip-sized buffer with no im2col copy at all; candle's own matmul cannot
//! accumulate, which is why this path calls `gemm` directly.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape};

use super::StripOutput;
use super::epilogue::Epilogue;
use super::gemm::{Strided, contiguous_f32, gemm_f32};

/// Output columns computed per strip (`rows * pw`): the strip's accumulator
/// (`c_out` x this many f32) stays within the caches between the taps.
const STRIP_COLUMNS: usize = 16 * 1024;

/// `[n, c_in, h, w]` (zero-padded by `pad` here) convolved with the tap weights
/// `[k * k, c_out, c_in]`, plus `bias`; returns `[n, c_out, h + 2 pad - k + 1, ...]`.
pub(crate) struct TapConv<'a> {
    pub k: usize,
    pub pad: usize,
    pub bias: Option<&'a [f32]>,
    /// Applied as the outputs are written.
    pub epilogue: Epilogue<'a>,
}

impl CustomOp2 for TapConv<'_> {
    fn name(&self) -> &'static str {
        "tap-conv2d"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        w: &CpuStorage,
        w_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        const OP: &str = "tap convolution";
        let x = contiguous_f32(x, x_layout, OP, "input")?;
        let w = contiguous_f32(w, w_layout, OP, "weight")?;
        let (n, c_in, h0, w0_) = x_layout.shape().dims4()?;
        let (taps, c_out, wc) = w_layout.shape().dims3()?;
        let k = self.k;
        let (ph, pw) = (h0 + 2 * self.pad, w0_ + 2 * self.pad);
        if taps != k * k || wc != c_in || ph < k || pw < k {
            candle_core::bail!(
                "tap convolution: input {:?} does not fit weight {:?} with kernel {k} and padding {}",
                x_layout.shape().dims(),
                w_layout.shape().dims(),
                self.pad
            )
        }
        let geometry = Geometry::new(k, c_in, c_out, ph, pw);
        let frame_out = c_out * geometry.h * geometry.w;
        if self
            .epilogue
            .residual
            .is_some_and(|r| r.len() != n * frame_out)
        {
            candle_core::bail!(
                "tap convolution: residual does not match the output [{n}, {c_out}, {}, {}]",
                geometry.h,
                geometry.w
            )
        }
        let len = n * frame_out;
        let mut values = Vec::new();
        let out = StripOutput::new(&mut values, len);
        let mut padded = Vec::new();
        for i in 0..n {
            let src = &x[i * c_in * h0 * w0_..(i + 1) * c_in * h0 * w0_];
            let frame = if self.pad == 0 {
                src
            } else {
                pad_zeros(src, c_in, h0, w0_, self.pad, &mut padded);
                &padded[..]
            };
            let epilogue = Epilogue {
                residual: self
                    .epilogue
                    .residual
                    .map(|r| &r[i * frame_out..(i + 1) * frame_out]),
                relu: self.epilogue.relu,
            };
            let at = i * frame_out;
            geometry.frame(frame, w, self.bias, epilogue, (&out, at), super::threads())?;
        }
        // SAFETY: each frame's strips cover its output rows `0..h`, and
        // `Geometry::write` writes all `w` values of each of them for every
        // output channel: every value of every frame.
        unsafe { super::assume_written(&mut values, len) };
        Ok((
            CpuStorage::F32(values),
            Shape::from((n, c_out, geometry.h, geometry.w)),
        ))
    }
}

/// Copies `[c, h, w]` into `buf` as `[c, h + 2 pad, w + 2 pad]` with zero borders.
fn pad_zeros(src: &[f32], c: usize, h: usize, w: usize, pad: usize, buf: &mut Vec<f32>) {
    let (ph, pw) = (h + 2 * pad, w + 2 * pad);
    buf.clear();
    buf.resize(c * ph * pw, 0.0);
    for (plane, dst) in src.chunks_exact(h * w).zip(buf.chunks_exact_mut(ph * pw)) {
        for (row, out) in plane
            .chunks_exact(w)
            .zip(dst[pad * pw..].chunks_exact_mut(pw))
        {
            out[pad..pad + w].copy_from_slice(row);
        }
    }
}

/// Sizes of one convolution over one padded frame.
struct Geometry {
    k: usize,
    c_in: usize,
    c_out: usize,
    ph: usize,
    pw: usize,
    h: usize,
    w: usize,
}

impl Geometry {
    /// A `k x k` kernel over a padded `ph x pw` frame: `(ph + 1 - k) x (pw + 1 - k)` outputs.
    fn new(k: usize, c_in: usize, c_out: usize, ph: usize, pw: usize) -> Self {
        Geometry {
            k,
            c_in,
            c_out,
            ph,
            pw,
            h: ph + 1 - k,
            w: pw + 1 - k,
        }
    }

    /// `frame`: `[c_in, ph, pw]`; `weight`: `[k * k, c_out, c_in]`; the
    /// output `[c_out, h, w]` is written to `out` from value `out_at` on; on
    /// `threads` threads, in strips of output rows handed out by
    /// [`super::strips_on_threads`].
    #[allow(clippy::too_many_arguments)]
    fn frame(
        &self,
        frame: &[f32],
        weight: &[f32],
        bias: Option<&[f32]>,
        epilogue: Epilogue<'_>,
        (out, out_at): (&StripOutput<'_>, usize),
        threads: usize,
    ) -> Result<()> {
        let strip_rows = (STRIP_COLUMNS / self.pw).clamp(1, self.h);
        let strips: Vec<(usize, usize)> = (0..self.h)
            .step_by(strip_rows)
            .map(|r0| (r0, strip_rows.min(self.h - r0)))
            .collect();
        let wide_len = self.c_out * strip_rows * self.pw;
        super::strips_on_threads(
            &strips,
            threads,
            |&(r0, rows), wide: &mut Vec<f32>, threads| {
                wide.resize(wide_len, 0.0);
                self.strip(frame, weight, bias, r0, rows, wide, threads)
            },
            |&(r0, rows), wide| self.write(wide, r0, rows, epilogue, (out, out_at)),
        )
    }

    /// Output rows `r0..r0 + rows` before the epilogue, into `wide` as
    /// `[c_out, rows * pw]` (the last `k - 1` columns of each row are not
    /// outputs), with each product split between `threads` threads.
    #[allow(clippy::too_many_arguments)]
    fn strip(
        &self,
        frame: &[f32],
        weight: &[f32],
        bias: Option<&[f32]>,
        r0: usize,
        rows: usize,
        wide: &mut [f32],
        threads: usize,
    ) -> Result<()> {
        let Geometry { k, pw, w, .. } = *self;
        // The last row needs only its `w` valid columns, which keeps every
        // tap's reads inside the frame.
        let cols = (rows - 1) * pw + w;
        let row_stride = rows * pw;
        if let Some(bias) = bias {
            for (acc, &b) in wide.chunks_exact_mut(row_stride).zip(bias) {
                acc[..cols].fill(b);
            }
        }
        for tap in 0..k * k {
            let (dy, dx) = (tap / k, tap % k);
            let start = (r0 + dy) * pw + dx;
            self.accumulate(
                wide,
                row_stride,
                cols,
                &weight[tap * self.c_out * self.c_in..(tap + 1) * self.c_out * self.c_in],
                &frame[start..],
                bias.is_some() || tap > 0,
                threads,
            )?;
        }
        Ok(())
    }

    /// A strip's accumulators (`wide`, from [`Geometry::strip`]) through the
    /// epilogue into output rows `r0..r0 + rows` of `out`.
    fn write(
        &self,
        wide: &[f32],
        r0: usize,
        rows: usize,
        epilogue: Epilogue<'_>,
        (out, out_at): (&StripOutput<'_>, usize),
    ) {
        let Geometry { pw, h, w, .. } = *self;
        for (o, acc) in wide.chunks_exact(rows * pw).take(self.c_out).enumerate() {
            for r in 0..rows {
                let dst = (o * h + r0 + r) * w;
                // SAFETY: output rows `r0..r0 + rows` belong to this strip alone.
                let row = unsafe { out.range(out_at + dst, w) };
                epilogue.write(row, dst, &acc[r * pw..r * pw + w]);
            }
        }
    }

    /// `wide[:, ..cols] (+)= weight @ image[:, ..cols]`, where `image` rows are
    /// `ph * pw` apart, on `threads` threads.
    #[allow(clippy::too_many_arguments)]
    fn accumulate(
        &self,
        wide: &mut [f32],
        row_stride: usize,
        cols: usize,
        weight: &[f32],
        image: &[f32],
        add: bool,
        threads: usize,
    ) -> Result<()> {
        let image_rows = self.ph * self.pw;
        if wide.len() < (self.c_out - 1) * row_stride + cols
            || weight.len() != self.c_out * self.c_in
            || image.len() < (self.c_in - 1) * image_rows + cols
        {
            candle_core::bail!("tap convolution: operands out of bounds")
        }
        // SAFETY: the check above keeps every element gemm reads or writes
        // inside the three slices: dst `c_out x cols` with row stride
        // `row_stride`, lhs `c_out x c_in` row-major, rhs `c_in x cols` with row
        // stride `image_rows`; all column strides are 1.
        unsafe {
            gemm_f32(
                (self.c_out, cols, self.c_in),
                Strided {
                    ptr: wide.as_mut_ptr(),
                    row_stride,
                    col_stride: 1,
                },
                add,
                Strided {
                    ptr: weight.as_ptr(),
                    row_stride: self.c_in,
                    col_stride: 1,
                },
                Strided {
                    ptr: image.as_ptr(),
                    row_stride: image_rows,
                    col_stride: 1,
                },
                threads,
            )
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Strips handed out whole to the threads (with a leftover strip whose
    /// products are split instead) give what one thread gives, through the
    /// bias and the epilogue.
    #[test]
    fn strips_split_between_threads_equal_one_thread() -> Result<()> {
        let (k, c_in, c_out) = (3, 3, 5);
        // 302 columns a row: 54 rows a strip, so 3 strips of 54, 54 and 12 rows
        let (ph, pw) = (122, 302);
        let geometry = Geometry::new(k, c_in, c_out, ph, pw);
        let value = |i: usize| ((i * 7919 % 1013) as f32 / 1013.0) - 0.5;
        let frame: Vec<f32> = (0..c_in * ph * pw).map(value).collect();
        let weight: Vec<f32> = (0..k * k * c_out * c_in).map(|i| value(i + 11)).collect();
        let bias: Vec<f32> = (0..c_out).map(|i| value(i + 5)).collect();
        let frame_out = c_out * geometry.h * geometry.w;
        let residual: Vec<f32> = (0..frame_out).map(|i| value(i + 3)).collect();
        let epilogue = Epilogue {
            residual: Some(&residual),
            relu: true,
        };
        let run = |threads: usize| -> Result<Vec<f32>> {
            // NaN wherever a value was left unwritten
            let mut out = vec![f32::NAN; frame_out];
            let to = StripOutput::over(&mut out);
            geometry.frame(&frame, &weight, Some(&bias), epilogue, (&to, 0), threads)?;
            Ok(out)
        };
        let one = run(1)?;
        assert!(one.iter().all(|v| v.is_finite() && *v >= 0.0));
        assert!(one.iter().any(|v| *v > 0.0));
        for threads in [2, 3, 4] {
            let split = run(threads)?;
            let err = one
                .iter()
                .zip(&split)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(err < 1e-5, "{threads} threads: {err}");
        }
        Ok(())
    }
}
