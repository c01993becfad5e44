//! CPU fast path of [`crate::layers::conv::Conv2d`] for stride-1 3x3 kernels:
//! Winograd F(2x2, 3x3), 16 multiplications per 2x2 outputs instead of 36, or
//! F(4x4, 3x3), 36 per 4x4 outputs instead of 144.
//!
//! The padded frames are cut into input tiles of `m + 2` pixels a side, `m`
//! apart (`m` = 2 or 4), each giving `m x m` outputs. A strip of whole tile rows
//! (possibly spanning frames, so that small frames still give long products)
//! goes through
//! 1. the input transform, to `(m + 2)^2` matrices `V[xi]` `[c_in, tiles]`;
//! 2. as many products `M[xi] = U[xi] @ V[xi]`, `U[xi]` `[c_out, c_in]` being
//!    the weights transformed once at load;
//! 3. the output transform with the bias add, to the strip's output rows.
//!
//! The transforms are in [`winograd_transforms`] (F(2x2)) and [`winograd_f4`]
//! (F(4x4)); the weights' first dimension (16 or 36) says which. Strips run in
//! parallel (each product on one thread) when there are enough of them,
//! otherwise one after the other with every thread in each product.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape};

use super::StripOutput;
use super::bf16_gemm::{self, NR, PackedLhs, RhsRef, Start, pack_rhs_panels, panels_len};
use super::epilogue::Epilogue;
use super::fast_math::simd_kernel;
use super::gemm::{Strided, contiguous_f32, gemm_f32};
use super::{winograd_f4, winograd_transforms};

/// Bytes of transformed inputs and products one strip aims at, so that they
/// stay near the caches between the transforms and the products.
const STRIP_BYTES: usize = 2 << 20;
/// Fewest tiles a strip takes whatever its size: shorter products waste the
/// weight reads (each product reads all of `U[xi]`).
const MIN_STRIP_TILES: usize = 64;

/// `[n, c_in, h, w]` (zero-padded by `pad` here) convolved with the transformed
/// weights `[16 or 36, c_out, c_in]`, plus `bias`; returns `[n, c_out, h + 2 pad - 2, ...]`.
pub(crate) struct WinogradConv<'a> {
    pub pad: usize,
    pub bias: Option<&'a [f32]>,
    /// Applied as the outputs are written.
    pub epilogue: Epilogue<'a>,
    /// `[1, C, h, w]`: when given, the input `x` `[n, C, h, w]` stands for
    /// `cat([x, previous frames], channels)`, the previous frame of frame 0
    /// being this one (a causal block's input with its memory), read in place.
    pub previous: Option<&'a [f32]>,
    /// The input (and `previous`) stands for its nearest 2x upsampling,
    /// `[n, C, 2h, 2w]`, each pixel read in place for its 4 copies.
    pub upsample: bool,
}

/// The transformed weights of a layer as the products read them.
#[derive(Clone, Copy)]
pub(crate) enum Products<'a> {
    /// `[16 or 36, c_out, c_in]` f32, through `gemm`.
    F32(&'a [f32]),
    /// One packed bf16 `c_out x c_in` operand per transformed position, through
    /// `bf16_gemm` (f32 sums).
    Bf16(&'a [PackedLhs]),
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
        let u = contiguous_f32(u, u_layout, OP, "weight")?;
        let (xis, c_out, c_in) = u_layout.shape().dims3()?;
        if u.len() != xis * c_out * c_in {
            candle_core::bail!("winograd convolution: weight of {} values", u.len())
        }
        convolve(self, x, x_layout, (xis, c_out, c_in), Products::F32(u))
    }
}

/// [`WinogradConv`] with the products in bf16: the weights packed at load,
/// each strip's transformed inputs packed before its products.
pub(crate) struct WinogradConvBf16<'a> {
    pub conv: WinogradConv<'a>,
    /// One `c_out x c_in` operand per transformed position (16 or 36).
    pub u: &'a [PackedLhs],
}

impl CustomOp1 for WinogradConvBf16<'_> {
    fn name(&self) -> &'static str {
        "winograd-conv2d-bf16"
    }

    fn cpu_fwd(&self, x: &CpuStorage, x_layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (c_out, c_in) = self.u.first().map_or((0, 0), |u| (u.m, u.k));
        convolve(
            &self.conv,
            x,
            x_layout,
            (self.u.len(), c_out, c_in),
            Products::Bf16(self.u),
        )
    }
}

const OP: &str = "winograd convolution";

/// The convolution of `x` by weights of `(xis, c_out, c_in)` transformed values.
fn convolve(
    conv: &WinogradConv<'_>,
    x: &CpuStorage,
    x_layout: &Layout,
    (xis, c_out, wc): (usize, usize, usize),
    u: Products<'_>,
) -> Result<(CpuStorage, Shape)> {
    let x = contiguous_f32(x, x_layout, OP, "input")?;
    let (n, x_channels, sh, sw) = x_layout.shape().dims4()?;
    let up = if conv.upsample { 2 } else { 1 };
    let (xh, xw) = (up * sh, up * sw);
    let c_in = match conv.previous {
        Some(p) if p.len() != x_channels * sh * sw => candle_core::bail!(
            "winograd convolution: previous frame of {} values for frames {:?}",
            p.len(),
            x_layout.shape().dims()
        ),
        Some(_) => 2 * x_channels,
        None => x_channels,
    };
    let (ph, pw) = (xh + 2 * conv.pad, xw + 2 * conv.pad);
    let m = match xis {
        16 => 2,
        36 => winograd_f4::M,
        _ => 0,
    };
    if m == 0 || wc != c_in || ph < 3 || pw < 3 || conv.bias.is_some_and(|b| b.len() != c_out) {
        candle_core::bail!(
            "winograd convolution: input {:?} does not fit weight {:?} with padding {}",
            x_layout.shape().dims(),
            [xis, c_out, wc],
            conv.pad
        )
    }
    let (h, w) = (ph - 2, pw - 2);
    if conv
        .epilogue
        .residual
        .is_some_and(|r| r.len() != n * c_out * h * w)
    {
        candle_core::bail!(
            "winograd convolution: residual does not match the output [{n}, {c_out}, {h}, {w}]"
        )
    }
    let tiles = Tiles {
        x,
        previous: conv.previous,
        x_channels,
        n,
        c_in,
        c_out,
        m,
        th: h.div_ceil(m),
        tw: w.div_ceil(m),
        xh,
        xw,
        up,
        pad: conv.pad,
    };
    let len = n * c_out * h * w;
    let mut values = Vec::new();
    let out = StripOutput::new(&mut values, len);
    let bias = conv.bias;
    let threads = super::threads();
    super::strips_on_threads(
        &tiles.strips(),
        threads,
        |&(g0, rows), s: &mut Scratch, threads| {
            tiles.strip(u, bias, g0, rows, threads, s);
            Ok(())
        },
        |&(g0, rows), s| tiles.scatter(&s.local, g0, rows, (h, w), conv.epilogue, &out),
    )?;
    // SAFETY: the strips cover every tile row of every frame, and `scatter`
    // writes all `w` values of each of their output rows below `h`, for every
    // output channel: every value of the output.
    unsafe { super::assume_written(&mut values, len) };
    Ok((CpuStorage::F32(values), Shape::from((n, c_out, h, w))))
}

/// Buffers of one strip, kept from strip to strip so that each strip does not
/// fault in fresh pages: `m + 2` padded input rows, transformed inputs
/// `[(m + 2)^2, c_in, tiles]`, products `[(m + 2)^2, c_out, tiles]` and outputs
/// `[rows, c_out, m, m tw]`.
#[derive(Default)]
struct Scratch {
    rows: Vec<f32>,
    v: Vec<f32>,
    /// One position's transformed inputs packed in bf16 (bf16 products only).
    v_bf16: Vec<u32>,
    m: Vec<f32>,
    local: Vec<f32>,
    /// One upsampled input row (F(4x4) on an upsampled input only).
    upsampled_row: Vec<f32>,
}

/// Sets `buf` to `len` values without clearing them: every caller overwrites
/// all of them.
fn resize(buf: &mut Vec<f32>, len: usize) -> &mut [f32] {
    buf.resize(len, 0.0);
    &mut buf[..len]
}

/// The tiling of one call: `n` frames of `th x tw` tiles of `m x m` outputs
/// over `[n, c_in, xh, xw]` inputs zero-padded by `pad`: `x`'s channels, then
/// with `previous` as many again from the frame before (see
/// [`WinogradConv::previous`]).
struct Tiles<'a> {
    x: &'a [f32],
    previous: Option<&'a [f32]>,
    x_channels: usize,
    m: usize,
    n: usize,
    c_in: usize,
    c_out: usize,
    th: usize,
    tw: usize,
    /// The input's size as the convolution sees it (upsampled where `up` is 2).
    xh: usize,
    xw: usize,
    /// 2 where the input planes stand for their nearest 2x upsampling, else 1.
    up: usize,
    pad: usize,
}

impl Tiles<'_> {
    /// Input pixels per tile side.
    fn alpha(&self) -> usize {
        self.m + 2
    }

    /// Transformed values per tile.
    fn xis(&self) -> usize {
        self.alpha() * self.alpha()
    }

    /// Length of the tile-aligned padded rows that the input transform reads:
    /// every tile's `m + 2` columns lie inside them, the partial last tile's
    /// reading zeros.
    fn aligned_width(&self) -> usize {
        self.m * (self.tw + 1)
    }

    /// The `m + 2` input rows of tile row `ty` of channel `c` of frame `f`,
    /// padded with zeros (by `pad`, then up to the aligned width) into `rows`
    /// `[m + 2, aligned_width]`, each row split into its `m` column phases
    /// (phase `p`: columns `m k + p`), so that the input transform reads every
    /// tile column contiguously. Padding row by row here, rather than the whole
    /// input up front, keeps the copy in the cache and the work in the threads.
    ///
    /// `rows` must hold zeros wherever a row inside the input is not written:
    /// every such row is written at the same places (which depend only on the
    /// layer's shape), so the caller zeroes `rows` once per strip and rows
    /// outside the input are zeroed here. Zeroing all of `rows` per call was
    /// 1.5x the input's size in `memset`s per layer.
    fn load_rows(
        &self,
        (f, c, ty): (usize, usize, usize),
        rows: &mut [f32],
        upsampled: &mut Vec<f32>,
    ) {
        let Tiles {
            m, xh, xw, up, pad, ..
        } = *self;
        let plane = self.plane(f, c);
        let (sw, phase_len) = (xw / up, self.tw + 1);
        for (i, dst) in rows.chunks_exact_mut(m * phase_len).enumerate() {
            let Some(y) = (m * ty + i).checked_sub(pad).filter(|&y| y < xh) else {
                dst.fill(0.0);
                continue;
            };
            let src = &plane[(y / up) * sw..(y / up + 1) * sw];
            match (m, up) {
                (2, 1) => split_phases(src, pad, dst.split_at_mut(phase_len)),
                (2, _) => upsampled_phases(src, pad, dst.split_at_mut(phase_len)),
                (_, 1) => split_phases4(src, pad, dst, phase_len),
                _ => {
                    // the upsampled row first (a row, in the cache), then as above
                    upsampled.resize(2 * sw, 0.0);
                    duplicate(src, upsampled);
                    split_phases4(upsampled, pad, dst, phase_len);
                }
            }
        }
    }

    /// Input channel `c` of frame `f`: its `(xh / up) * (xw / up)` values.
    fn plane(&self, f: usize, c: usize) -> &[f32] {
        let (cx, hw) = (self.x_channels, (self.xh / self.up) * (self.xw / self.up));
        match (c.checked_sub(cx), f.checked_sub(1), self.previous) {
            (None, _, _) => &self.x[(f * cx + c) * hw..][..hw],
            (Some(pc), Some(pf), _) => &self.x[(pf * cx + pc) * hw..][..hw],
            (Some(pc), None, Some(previous)) => &previous[pc * hw..][..hw],
            (Some(_), None, None) => unreachable!("c_in is x's channels without `previous`"),
        }
    }

    /// `(first global tile row, tile rows)` of each strip; global tile row
    /// `g` is row `g % th` of frame `g / th`.
    fn strips(&self) -> Vec<(usize, usize)> {
        let per_tile = self.xis() * (self.c_in + self.c_out) * std::mem::size_of::<f32>();
        let want_tiles = (STRIP_BYTES / per_tile).max(MIN_STRIP_TILES);
        let total = self.n * self.th;
        let rows = want_tiles.div_ceil(self.tw).clamp(1, total.max(1));
        (0..total)
            .step_by(rows)
            .map(|g0| (g0, rows.min(total - g0)))
            .collect()
    }

    /// The outputs of tile rows `g0..g0 + rows` into `scratch.local` as
    /// `[rows, c_out, m, m tw]`.
    #[allow(clippy::too_many_arguments)]
    fn strip(
        &self,
        u: Products<'_>,
        bias: Option<&[f32]>,
        g0: usize,
        rows: usize,
        threads: usize,
        scratch: &mut Scratch,
    ) {
        let Tiles {
            m: size,
            c_in,
            c_out,
            th,
            tw,
            ..
        } = *self;
        let (aw, alpha, xis) = (self.aligned_width(), self.alpha(), self.xis());
        let t = rows * tw;
        let padded_rows = resize(&mut scratch.rows, alpha * aw);
        // the margins `load_rows` leaves as they are
        padded_rows.fill(0.0);
        let v = resize(&mut scratch.v, xis * c_in * t);
        for c in 0..c_in {
            for r in 0..rows {
                let (f, ty) = ((g0 + r) / th, (g0 + r) % th);
                self.load_rows((f, c, ty), padded_rows, &mut scratch.upsampled_row);
                let row = |i: usize| &padded_rows[i * aw..(i + 1) * aw];
                let out = &mut v[c * t + r * tw..];
                if size == winograd_f4::M {
                    winograd_f4::input_tile_row(std::array::from_fn(row), tw, out, c_in * t);
                } else {
                    winograd_transforms::input_tile_row(
                        [row(0), row(1), row(2), row(3)],
                        tw,
                        out,
                        c_in * t,
                    );
                }
            }
        }
        let m = resize(&mut scratch.m, xis * c_out * t);
        for xi in 0..xis {
            let (dst, rhs) = (
                &mut m[xi * c_out * t..(xi + 1) * c_out * t],
                &v[xi * c_in * t..(xi + 1) * c_in * t],
            );
            match u {
                Products::F32(u) => {
                    let lhs = &u[xi * c_out * c_in..(xi + 1) * c_out * c_in];
                    // SAFETY: the three slices are exactly dst `c_out x t`, lhs
                    // `c_out x c_in` and rhs `c_in x t`, all row-major with unit
                    // column stride, so every element gemm touches lies inside
                    // them; `m` is a separate allocation from `u` and `v`.
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
                Products::Bf16(u) => {
                    scratch.v_bf16.resize(panels_len(c_in, t), 0);
                    pack_rhs_panels(rhs, c_in, t, t, &mut scratch.v_bf16);
                    let rhs = RhsRef::panels(&scratch.v_bf16, c_in, t, c_in.div_ceil(2) * NR);
                    bf16_gemm::matmul(&u[xi], rhs, dst, t, Start::Zero, threads);
                }
            }
        }
        let line = size * tw;
        let local = resize(&mut scratch.local, rows * c_out * size * line);
        for (r, tile_row) in local.chunks_exact_mut(c_out * size * line).enumerate() {
            for (o, lines) in tile_row.chunks_exact_mut(size * line).enumerate() {
                let (products, b) = (&m[o * t + r * tw..], bias.map_or(0.0, |b| b[o]));
                if size == winograd_f4::M {
                    let [l0, l1, l2, l3] = split_lines(lines, line);
                    winograd_f4::output_tile_row(products, c_out * t, tw, b, [l0, l1, l2, l3]);
                } else {
                    let (top, bottom) = lines.split_at_mut(line);
                    winograd_transforms::output_tile_row(products, c_out * t, tw, b, top, bottom);
                }
            }
        }
    }

    /// Writes a strip's `[rows, c_out, m, m tw]` outputs into `out`
    /// `[n, c_out, h, w]` through `epilogue`, dropping what the partial last
    /// tiles computed beyond it. Only this strip's output rows are written, so
    /// strips may scatter from several threads at once.
    fn scatter(
        &self,
        local: &[f32],
        g0: usize,
        rows: usize,
        (h, w): (usize, usize),
        epilogue: Epilogue<'_>,
        out: &StripOutput<'_>,
    ) {
        let (m, c_out, th) = (self.m, self.c_out, self.th);
        let line = m * self.tw;
        for r in 0..rows {
            let (f, ty) = ((g0 + r) / th, (g0 + r) % th);
            for o in 0..c_out {
                for dy in 0..m {
                    let y = m * ty + dy;
                    if y >= h {
                        continue;
                    }
                    let src = ((r * c_out + o) * m + dy) * line;
                    let dst = ((f * c_out + o) * h + y) * w;
                    // SAFETY: output row `y` of frame `f` comes from tile
                    // row `g0 + r`, which belongs to this strip alone.
                    let row = unsafe { out.range(dst, w) };
                    epilogue.write(row, dst, &local[src..src + w]);
                }
            }
        }
    }
}

/// Splits one input row, padded by `pad` on the left, into its even and odd
/// padded columns (`even[i]` = padded column `2 i`): a deinterleave that
/// vectorises, where the general loop divides per value.
fn split_phases(src: &[f32], pad: usize, (even, odd): (&mut [f32], &mut [f32])) {
    // Source column 2k is padded column 2k + pad, 2k + 1 the next one.
    let (first, second, at0, at1) = if pad.is_multiple_of(2) {
        (even, odd, pad / 2, pad / 2)
    } else {
        (odd, even, pad / 2, pad.div_ceil(2))
    };
    let k = src.len() / 2;
    deinterleave(
        &src[..2 * k],
        &mut first[at0..at0 + k],
        &mut second[at1..at1 + k],
    );
    if src.len() % 2 == 1 {
        first[at0 + k] = src[2 * k];
    }
}

/// One input row, padded by `pad` on the left, into its 4 column phases of
/// `phase_len` values each in `dst` (phase `p`: padded columns `4 k + p`), the
/// rest of `dst` left as it is (zero).
fn split_phases4(src: &[f32], pad: usize, dst: &mut [f32], phase_len: usize) {
    let mut by_phase = split_lines(dst, phase_len);
    // Source column 4 k + q is padded column 4 (k + (q + pad) / 4) + (q + pad) % 4.
    by_phase.rotate_left(pad % 4);
    let [p0, p1, p2, p3] = by_phase;
    let at = |q: usize| (q + pad) / 4;
    let k = src.len() / 4;
    deinterleave4(
        &src[..4 * k],
        &mut p0[at(0)..at(0) + k],
        &mut p1[at(1)..at(1) + k],
        &mut p2[at(2)..at(2) + k],
        &mut p3[at(3)..at(3) + k],
    );
    let tail: [&mut [f32]; 3] = [p0, p1, p2];
    for (q, (dst, &v)) in tail.into_iter().zip(&src[4 * k..]).enumerate() {
        dst[at(q) + k] = v;
    }
}

simd_kernel! {
    /// Each value of `src` twice into `dst`: a row upsampled 2x.
    fn duplicate(src: &[f32], dst: &mut [f32]) {
        for (pair, &v) in dst.chunks_exact_mut(2).zip(src) {
            pair[0] = v;
            pair[1] = v;
        }
    }
}

simd_kernel! {
    /// `src[4 k + q]` into `q`'s output at `k`.
    fn deinterleave4(src: &[f32], d0: &mut [f32], d1: &mut [f32], d2: &mut [f32], d3: &mut [f32]) {
        let outs = d0.iter_mut().zip(d1.iter_mut()).zip(d2.iter_mut()).zip(d3.iter_mut());
        for (quad, (((a, b), c), d)) in src.chunks_exact(4).zip(outs) {
            *a = quad[0];
            *b = quad[1];
            *c = quad[2];
            *d = quad[3];
        }
    }
}

/// One source row of an input that stands for its nearest 2x upsampling,
/// padded by `pad` on the left, into the even and odd padded columns of the
/// upsampled row: upsampled column `x` is `src[x / 2]`, so each phase is
/// `src` itself, the odd one from padded column `pad / 2`, the even one from
/// `pad.div_ceil(2)`.
fn upsampled_phases(src: &[f32], pad: usize, (even, odd): (&mut [f32], &mut [f32])) {
    let n = src.len();
    even[pad.div_ceil(2)..][..n].copy_from_slice(src);
    odd[pad / 2..][..n].copy_from_slice(src);
}

simd_kernel! {
    /// `src`'s even values into `first`, its odd ones into `second`.
    fn deinterleave(src: &[f32], first: &mut [f32], second: &mut [f32]) {
        for ((pair, x), y) in src.chunks_exact(2).zip(first.iter_mut()).zip(second.iter_mut()) {
            *x = pair[0];
            *y = pair[1];
        }
    }
}

/// The 4 lines of `lines` (`4 * line` values), each `line` long: a tile row's
/// output lines, or an input row's column phases.
fn split_lines(lines: &mut [f32], line: usize) -> [&mut [f32]; 4] {
    let (l0, rest) = lines.split_at_mut(line);
    let (l1, rest) = rest.split_at_mut(line);
    let (l2, l3) = rest.split_at_mut(line);
    [l0, l1, l2, l3]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The 4 column phases of a padded row, for every padding modulo 4 and
    /// every length modulo 4.
    #[test]
    fn four_phases_hold_every_fourth_padded_column() {
        for len in 9usize..13 {
            let src: Vec<f32> = (1..=len).map(|v| v as f32).collect();
            for pad in 0..5 {
                let phase_len = (len + 2 * pad).div_ceil(4) + 1;
                let mut got = vec![0f32; 4 * phase_len];
                split_phases4(&src, pad, &mut got, phase_len);
                let mut want = vec![0f32; 4 * phase_len];
                for (x, &v) in src.iter().enumerate() {
                    let px = x + pad;
                    want[(px % 4) * phase_len + px / 4] = v;
                }
                assert_eq!(got, want, "{len} values, pad {pad}");
            }
        }
    }

    /// The even and odd phases of an upsampled row are those of the row
    /// upsampled first, for even and odd paddings.
    #[test]
    fn upsampled_phases_equal_the_upsampled_row() {
        let src: Vec<f32> = (1..=5).map(|v| v as f32).collect();
        let up: Vec<f32> = src.iter().flat_map(|&v| [v, v]).collect();
        for pad in 0..4 {
            let half = (up.len() + 2 * pad).div_ceil(2) + 1;
            let (mut want, mut got) = (vec![0f32; 2 * half], vec![0f32; 2 * half]);
            let (even, odd) = want.split_at_mut(half);
            split_phases(&up, pad, (even, odd));
            let (even, odd) = got.split_at_mut(half);
            upsampled_phases(&src, pad, (even, odd));
            assert_eq!(got, want, "pad {pad}");
        }
    }
}
