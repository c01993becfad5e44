//! CPU fast path of [`crate::layers::conv::Conv2d`] for stride-1 3x3 kernels:
//! Winograd F(2x2, 3x3), 16 multiplications per 2x2 outputs instead of 36.
//!
//! The padded frames are cut into 4x4 input tiles, 2 apart, each giving 2x2
//! outputs. A strip of whole tile rows (possibly spanning frames, so that small
//! frames still give long products) goes through
//! 1. the input transform, to 16 matrices `V[xi]` `[c_in, tiles]`;
//! 2. 16 products `M[xi] = U[xi] @ V[xi]`, `U[xi]` `[c_out, c_in]` being the
//!    weights transformed once at load;
//! 3. the output transform with the bias add, to the strip's output rows.
//!
//! The transforms are in [`winograd_transforms`]. Strips run in parallel (each
//! product on one thread) when there are enough of them, otherwise one after the
//! other with every thread in each product.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape};
use rayon::prelude::*;

use super::gemm::{Strided, contiguous_f32, gemm_f32};
use super::winograd_transforms;

/// Bytes of transformed inputs and products one strip aims at, so that they
/// stay near the caches between the transforms and the products.
const STRIP_BYTES: usize = 2 << 20;
/// Fewest tiles a strip takes whatever its size: shorter products waste the
/// weight reads (each product reads all of `U[xi]`).
const MIN_STRIP_TILES: usize = 64;

/// `[n, c_in, h, w]` (zero-padded by `pad` here) convolved with the transformed
/// weights `[16, c_out, c_in]`, plus `bias`; returns `[n, c_out, h + 2 pad - 2, ...]`.
pub(crate) struct WinogradConv<'a> {
    pub pad: usize,
    pub bias: Option<&'a [f32]>,
}

impl CustomOp2 for WinogradConv<'_> {
    fn name(&self) -> &'static str {
        "winograd-conv2d"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        u: &CpuStorage,
        u_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        const OP: &str = "winograd convolution";
        let x = contiguous_f32(x, x_layout, OP, "input")?;
        let u = contiguous_f32(u, u_layout, OP, "weight")?;
        let (n, c_in, xh, xw) = x_layout.shape().dims4()?;
        let (xis, c_out, wc) = u_layout.shape().dims3()?;
        let (ph, pw) = (xh + 2 * self.pad, xw + 2 * self.pad);
        if xis != 16
            || wc != c_in
            || ph < 3
            || pw < 3
            || self.bias.is_some_and(|b| b.len() != c_out)
        {
            candle_core::bail!(
                "winograd convolution: input {:?} does not fit weight {:?} with padding {}",
                x_layout.shape().dims(),
                u_layout.shape().dims(),
                self.pad
            )
        }
        let (h, w) = (ph - 2, pw - 2);
        let tiles = Tiles {
            n,
            c_in,
            c_out,
            th: h.div_ceil(2),
            tw: w.div_ceil(2),
            xh,
            xw,
            pad: self.pad,
        };
        let mut out = vec![0f32; n * c_out * h * w];
        let bias = self.bias;
        let threads = candle_core::utils::get_num_threads();
        let strips = tiles.strips();
        if strips.len() >= threads && threads > 1 {
            let mut scratch: Vec<Scratch> = (0..threads).map(|_| Scratch::default()).collect();
            for batch in strips.chunks(threads) {
                batch
                    .par_iter()
                    .zip(scratch.par_iter_mut())
                    .try_for_each(|(&(g0, rows), s)| tiles.strip(x, u, bias, g0, rows, 1, s))?;
                for (&(g0, rows), s) in batch.iter().zip(&scratch) {
                    tiles.scatter(&s.local, g0, rows, h, w, &mut out);
                }
            }
        } else {
            let mut s = Scratch::default();
            for &(g0, rows) in &strips {
                tiles.strip(x, u, bias, g0, rows, threads, &mut s)?;
                tiles.scatter(&s.local, g0, rows, h, w, &mut out);
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((n, c_out, h, w))))
    }
}

/// Buffers of one strip, kept from strip to strip so that each strip does not
/// fault in fresh pages: 4 padded input rows, transformed inputs
/// `[16, c_in, tiles]`, products `[16, c_out, tiles]` and outputs
/// `[rows, c_out, 2, 2 tw]`.
#[derive(Default)]
struct Scratch {
    rows: Vec<f32>,
    v: Vec<f32>,
    m: Vec<f32>,
    local: Vec<f32>,
}

/// Sets `buf` to `len` values without clearing them: every caller overwrites
/// all of them.
fn resize(buf: &mut Vec<f32>, len: usize) -> &mut [f32] {
    buf.resize(len, 0.0);
    &mut buf[..len]
}

/// The tiling of one call: `n` frames of `th x tw` tiles over `[n, c_in, xh,
/// xw]` inputs zero-padded by `pad`.
struct Tiles {
    n: usize,
    c_in: usize,
    c_out: usize,
    th: usize,
    tw: usize,
    xh: usize,
    xw: usize,
    pad: usize,
}

impl Tiles {
    /// Length of the tile-aligned padded rows that the input transform reads:
    /// every tile's 4 columns lie inside them, the partial last tile's reading
    /// zeros.
    fn aligned_width(&self) -> usize {
        2 * self.tw + 2
    }

    /// The 4 input rows of tile row `ty` of channel `c` of frame `f`, padded
    /// with zeros (by `pad`, then up to the aligned width) into `rows`
    /// `[4, aligned_width]`, each row split into its even columns then its odd
    /// ones, so that the input transform reads every tile column contiguously.
    /// Padding row by row here, rather than the whole input up front, keeps the
    /// copy in the cache and the work in the threads.
    fn load_rows(&self, x: &[f32], f: usize, c: usize, ty: usize, rows: &mut [f32]) {
        let Tiles { xh, xw, pad, .. } = *self;
        let plane = &x[(f * self.c_in + c) * xh * xw..][..xh * xw];
        let half = self.tw + 1;
        rows.fill(0.0);
        for (i, dst) in rows.chunks_exact_mut(2 * half).enumerate() {
            let Some(sy) = (2 * ty + i).checked_sub(pad).filter(|&sy| sy < xh) else {
                continue;
            };
            let (even, odd) = dst.split_at_mut(half);
            for (sx, &v) in plane[sy * xw..(sy + 1) * xw].iter().enumerate() {
                let px = sx + pad;
                if px % 2 == 0 {
                    even[px / 2] = v;
                } else {
                    odd[px / 2] = v;
                }
            }
        }
    }

    /// `(first global tile row, tile rows)` of each strip; global tile row
    /// `g` is row `g % th` of frame `g / th`.
    fn strips(&self) -> Vec<(usize, usize)> {
        let per_tile = 16 * (self.c_in + self.c_out) * std::mem::size_of::<f32>();
        let want_tiles = (STRIP_BYTES / per_tile).max(MIN_STRIP_TILES);
        let total = self.n * self.th;
        let rows = want_tiles.div_ceil(self.tw).clamp(1, total.max(1));
        (0..total)
            .step_by(rows)
            .map(|g0| (g0, rows.min(total - g0)))
            .collect()
    }

    /// The outputs of tile rows `g0..g0 + rows` into `scratch.local` as
    /// `[rows, c_out, 2, 2 tw]`.
    #[allow(clippy::too_many_arguments)]
    fn strip(
        &self,
        input: &[f32],
        u: &[f32],
        bias: Option<&[f32]>,
        g0: usize,
        rows: usize,
        threads: usize,
        scratch: &mut Scratch,
    ) -> Result<()> {
        let Tiles {
            c_in,
            c_out,
            th,
            tw,
            ..
        } = *self;
        let aw = self.aligned_width();
        let t = rows * tw;
        let padded_rows = resize(&mut scratch.rows, 4 * aw);
        let v = resize(&mut scratch.v, 16 * c_in * t);
        for c in 0..c_in {
            for r in 0..rows {
                let (f, ty) = ((g0 + r) / th, (g0 + r) % th);
                self.load_rows(input, f, c, ty, padded_rows);
                let row = |i: usize| &padded_rows[i * aw..(i + 1) * aw];
                winograd_transforms::input_tile_row(
                    [row(0), row(1), row(2), row(3)],
                    tw,
                    &mut v[c * t + r * tw..],
                    c_in * t,
                );
            }
        }
        let m = resize(&mut scratch.m, 16 * c_out * t);
        if u.len() != 16 * c_out * c_in {
            candle_core::bail!("winograd convolution: weight of {} values", u.len())
        }
        for xi in 0..16 {
            let (dst, lhs, rhs) = (
                &mut m[xi * c_out * t..(xi + 1) * c_out * t],
                &u[xi * c_out * c_in..(xi + 1) * c_out * c_in],
                &v[xi * c_in * t..(xi + 1) * c_in * t],
            );
            // SAFETY: the three slices are exactly dst `c_out x t`, lhs
            // `c_out x c_in` and rhs `c_in x t`, all row-major with unit column
            // stride, so every element gemm touches lies inside them; `m` is a
            // separate allocation from `u` and `v`.
            unsafe {
                gemm_f32(
                    (c_out, t, c_in),
                    Strided {
                        ptr: dst.as_mut_ptr(),
                        row_stride: t,
                        col_stride: 1,
                    },
                    false,
                    Strided {
                        ptr: lhs.as_ptr(),
                        row_stride: c_in,
                        col_stride: 1,
                    },
                    Strided {
                        ptr: rhs.as_ptr(),
                        row_stride: t,
                        col_stride: 1,
                    },
                    threads,
                )
            }
        }
        let line = 2 * tw;
        let local = resize(&mut scratch.local, rows * c_out * 2 * line);
        for (r, tile_row) in local.chunks_exact_mut(c_out * 2 * line).enumerate() {
            for (o, pair) in tile_row.chunks_exact_mut(2 * line).enumerate() {
                let (top, bottom) = pair.split_at_mut(line);
                winograd_transforms::output_tile_row(
                    &m[o * t + r * tw..],
                    c_out * t,
                    tw,
                    bias.map_or(0.0, |b| b[o]),
                    top,
                    bottom,
                );
            }
        }
        Ok(())
    }

    /// Copies a strip's `[rows, c_out, 2, 2 tw]` outputs into `out`
    /// `[n, c_out, h, w]`, dropping what the partial last tiles computed beyond it.
    fn scatter(&self, local: &[f32], g0: usize, rows: usize, h: usize, w: usize, out: &mut [f32]) {
        let (c_out, th, line) = (self.c_out, self.th, 2 * self.tw);
        for r in 0..rows {
            let (f, ty) = ((g0 + r) / th, (g0 + r) % th);
            for o in 0..c_out {
                for dy in 0..2 {
                    let y = 2 * ty + dy;
                    if y >= h {
                        continue;
                    }
                    let src = ((r * c_out + o) * 2 + dy) * line;
                    let dst = ((f * c_out + o) * h + y) * w;
                    out[dst..dst + w].copy_from_slice(&local[src..src + w]);
                }
            }
        }
    }
}
