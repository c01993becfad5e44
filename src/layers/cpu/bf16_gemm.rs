//! Matrix products in bfloat16 with f32 accumulation, for processors with
//! AVX512_BF16: `vdpbf16ps` multiplies 32 bf16 pairs and adds them into 16 f32
//! sums in one instruction, twice the multiply-adds of an f32 FMA of the same
//! width. Neither candle nor `gemm` has such a kernel (their bf16 products
//! convert to f32 first), so this is the CPU's bf16 product.
//!
//! `dst (m x n) = lhs (m x k) @ rhs (k x n)` with both operands packed once:
//! - the left operand in panels of [`MR`] rows, `[panels, k / 2, MR]` pairs of
//!   bf16 (rows `r`, columns `2p` and `2p + 1` in one `u32`) — [`PackedLhs`];
//! - the right one as `[k / 2, ld]` pairs of rows (`(2p, j)` and `(2p + 1, j)`
//!   in one `u32`) — [`RhsRef`], written by [`pack_rhs`].
//!
//! An odd `k` is padded with a zero column / row. The kernel keeps an `MR x 32`
//! block of sums in 24 registers, broadcasting one left pair per row and
//! loading two right vectors per pair of `k`.

use std::sync::OnceLock;

use rayon::prelude::*;

/// Rows of a left panel: the kernel's block of sums is `MR x NR`.
pub(crate) const MR: usize = 12;
/// Columns of the kernel's block of sums: two vectors of 16 f32.
const NR: usize = 32;
/// Columns one thread takes per job when a product is split between threads.
const NC: usize = 256;
/// Left panels one thread takes per job when a product is split.
const MC_PANELS: usize = 8;

/// Whether this processor runs the kernel: AVX-512F and AVX512_BF16, detected
/// once.
pub(crate) fn available() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512bf16")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// The bf16 bits nearest to `x` (ties to even), as the kernel's operands hold
/// it; a NaN stays a NaN. Branch-free so that packing loops vectorise.
#[inline(always)]
pub(crate) fn bf16_bits(x: f32) -> u32 {
    let b = x.to_bits();
    let rounded = b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16;
    let nan = (b & 0x7fff_ffff) > 0x7f80_0000;
    if nan { (b >> 16) | 0x40 } else { rounded }
}

/// The f32 value of bf16 bits.
#[inline(always)]
pub(crate) fn bf16_value(bits: u32) -> f32 {
    f32::from_bits(bits << 16)
}

/// A left operand `m x k`, packed in panels of [`MR`] rows (the last one
/// padded with zero rows).
#[derive(Debug, Clone, Default)]
pub(crate) struct PackedLhs {
    pub m: usize,
    pub k: usize,
    data: Vec<u32>,
}

impl PackedLhs {
    /// Packs `m x k` f32 values read at `at(row, col)`.
    pub(crate) fn pack(m: usize, k: usize, at: impl Fn(usize, usize) -> f32) -> Self {
        let mut packed = Self::default();
        let kp = packed.reset(m, k);
        for (panel, block) in packed.data.chunks_exact_mut(kp * MR).enumerate() {
            for r in 0..MR.min(m - panel * MR) {
                let row = panel * MR + r;
                for p in 0..kp {
                    let lo = bf16_bits(at(row, 2 * p));
                    let hi = if 2 * p + 1 < k {
                        bf16_bits(at(row, 2 * p + 1))
                    } else {
                        0
                    };
                    block[p * MR + r] = lo | (hi << 16);
                }
            }
        }
        packed
    }

    /// Sizes the buffer for `m x k` values, all zero; returns the pairs per row.
    fn reset(&mut self, m: usize, k: usize) -> usize {
        let kp = k.div_ceil(2);
        self.m = m;
        self.k = k;
        self.data.clear();
        self.data.resize(m.div_ceil(MR) * kp * MR, 0);
        kp
    }

    /// Packs the rows of a row-major f32 matrix (`row_stride` apart) quickly,
    /// panels in parallel: the activations of a linear layer, packed per call.
    pub(crate) fn repack_rows(&mut self, m: usize, k: usize, src: &[f32], row_stride: usize) {
        self.repack_rows_on(m, k, src, row_stride, true)
    }

    /// As [`PackedLhs::repack_rows`], on the caller's thread only (for callers
    /// that already run in parallel).
    pub(crate) fn repack_rows_here(&mut self, m: usize, k: usize, src: &[f32], row_stride: usize) {
        self.repack_rows_on(m, k, src, row_stride, false)
    }

    fn repack_rows_on(&mut self, m: usize, k: usize, src: &[f32], row_stride: usize, par: bool) {
        let kp = self.reset(m, k);
        let pack = |(panel, block): (usize, &mut [u32])| {
            for r in 0..MR.min(m - panel * MR) {
                let row = &src[(panel * MR + r) * row_stride..][..k];
                pack_row_into_panel(row, block, r);
            }
        };
        if par {
            self.data.par_chunks_mut(kp * MR).enumerate().for_each(pack);
        } else {
            self.data.chunks_mut(kp * MR).enumerate().for_each(pack);
        }
    }

    /// The f32 value at `(row, col)` (bf16-rounded), for the portable path.
    pub(crate) fn value(&self, row: usize, col: usize) -> f32 {
        let kp = self.k.div_ceil(2);
        let pair = self.data[(row / MR) * kp * MR + (col / 2) * MR + row % MR];
        bf16_value(if col.is_multiple_of(2) {
            pair & 0xffff
        } else {
            pair >> 16
        })
    }
}

super::fast_math::simd_kernel! {
    /// Writes one f32 row (`k` values) as bf16 pairs into row `r` of a panel.
    fn pack_row_into_panel(row: &[f32], block: &mut [u32], r: usize) {
        let pairs = row.chunks_exact(2);
        let last = pairs.remainder().first().map(|&x| bf16_bits(x));
        let kp = pairs.len();
        for (p, pair) in pairs.enumerate() {
            block[p * MR + r] = bf16_bits(pair[0]) | (bf16_bits(pair[1]) << 16);
        }
        if let Some(lo) = last {
            block[kp * MR + r] = lo;
        }
    }
}

/// A right operand `k x n` as `[k / 2, ld]` row pairs (`ld >= n`); `data`
/// starts at its first column (a view into a wider packed matrix may end
/// `ld - n` values early).
#[derive(Clone, Copy)]
pub(crate) struct RhsRef<'a> {
    pub data: &'a [u32],
    pub k: usize,
    pub n: usize,
    pub ld: usize,
}

super::fast_math::simd_kernel! {
    /// Packs `k x n` f32 values (row `i` at `src[i * src_stride..][..n]`) into
    /// `dst` as `[k / 2, n]` row pairs, the layout [`RhsRef`] reads with `ld = n`.
    pub(crate) fn pack_rhs(src: &[f32], k: usize, n: usize, src_stride: usize, dst: &mut [u32]) {
        for (p, out) in dst[..k.div_ceil(2) * n].chunks_exact_mut(n).enumerate() {
            let lo = &src[2 * p * src_stride..][..n];
            if 2 * p + 1 < k {
                let hi = &src[(2 * p + 1) * src_stride..][..n];
                for ((o, &a), &b) in out.iter_mut().zip(lo).zip(hi) {
                    *o = bf16_bits(a) | (bf16_bits(b) << 16);
                }
            } else {
                for (o, &a) in out.iter_mut().zip(lo) {
                    *o = bf16_bits(a);
                }
            }
        }
    }
}

/// A right operand packed once (a linear layer's weight): `[k / 2, n]` row
/// pairs.
#[derive(Debug, Clone)]
pub(crate) struct PackedRhs {
    pub k: usize,
    pub n: usize,
    data: Vec<u32>,
}

impl PackedRhs {
    /// Packs a row-major `k x n` f32 matrix.
    pub(crate) fn pack(src: &[f32], k: usize, n: usize) -> Self {
        let mut data = vec![0u32; k.div_ceil(2) * n];
        pack_rhs(src, k, n, n, &mut data);
        Self { k, n, data }
    }

    pub(crate) fn as_ref(&self) -> RhsRef<'_> {
        RhsRef {
            data: &self.data,
            k: self.k,
            n: self.n,
            ld: self.n,
        }
    }

    /// The row-major `k x n` f32 values (bf16-rounded), for the portable path.
    pub(crate) fn unpack(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.k * self.n];
        for (i, row) in out.chunks_exact_mut(self.n).enumerate() {
            let pairs = &self.data[(i / 2) * self.n..][..self.n];
            for (o, &pair) in row.iter_mut().zip(pairs) {
                *o = bf16_value(if i % 2 == 0 {
                    pair & 0xffff
                } else {
                    pair >> 16
                });
            }
        }
        out
    }
}

/// A `*mut f32` that jobs on other threads write through, each to its own
/// block of the destination.
#[derive(Clone, Copy)]
struct DstPtr(*mut f32);
// SAFETY: the jobs of `matmul` write disjoint blocks of one live buffer.
unsafe impl Send for DstPtr {}
unsafe impl Sync for DstPtr {}

/// `dst = lhs @ rhs` (or `dst += ...` when `accumulate`), `dst` being `m x n`
/// row-major with rows `ldc` apart, on `threads` threads (1: the caller's).
///
/// Panics if the operands' sizes disagree or `dst` is too short, and where the
/// processor lacks AVX512_BF16 ([`available`] says).
pub(crate) fn matmul(
    lhs: &PackedLhs,
    rhs: RhsRef<'_>,
    dst: &mut [f32],
    ldc: usize,
    accumulate: bool,
    threads: usize,
) {
    let (m, n, k) = (lhs.m, rhs.n, lhs.k);
    let kp = k.div_ceil(2);
    assert!(available(), "bf16 products need AVX512_BF16");
    assert_eq!(rhs.k, k, "bf16 product: inner sizes differ");
    assert!(
        rhs.ld >= n && (kp == 0 || rhs.data.len() >= (kp - 1) * rhs.ld + n),
        "bf16 product: short rhs"
    );
    assert!(
        m == 0 || n == 0 || dst.len() >= (m - 1) * ldc + n,
        "bf16 product: short dst"
    );
    assert!(ldc >= n || m <= 1, "bf16 product: rows overlap");
    if m == 0 || n == 0 {
        return;
    }
    let panels = m.div_ceil(MR);
    let dst_ptr = DstPtr(dst.as_mut_ptr());
    let job = |panel0: usize, panel1: usize, col0: usize, col1: usize| {
        let dst = dst_ptr;
        for col in (col0..col1).step_by(NR) {
            let cols = NR.min(col1 - col);
            for panel in panel0..panel1 {
                let rows = MR.min(m - panel * MR);
                let a = &lhs.data[panel * kp * MR..(panel + 1) * kp * MR];
                // SAFETY: `a` holds `kp` pairs of `MR` rows; rows `col..col +
                // cols` of each of `rhs`'s `kp` pair rows lie inside its data
                // (`ld >= n`, length checked above); the destination block
                // `rows x cols` at `(panel * MR, col)` lies inside `dst` (checked
                // above) and no other job writes it.
                unsafe {
                    kernel::block(
                        kp,
                        a.as_ptr(),
                        rhs.data.as_ptr().add(col),
                        rhs.ld,
                        dst.0.add(panel * MR * ldc + col),
                        ldc,
                        rows,
                        cols,
                        accumulate,
                    )
                }
            }
        }
    };
    if threads <= 1 {
        job(0, panels, 0, n);
        return;
    }
    // Jobs of whole panels and columns in multiples of NR, at least two per
    // thread where the product allows, so that uneven jobs even out.
    let panel_chunk = MC_PANELS.min(panels.div_ceil(threads));
    let panel_jobs = panels.div_ceil(panel_chunk);
    let mut col_chunk = NC;
    while panel_jobs * n.div_ceil(col_chunk) < 2 * threads && col_chunk > NR {
        col_chunk /= 2;
    }
    let mut jobs = Vec::new();
    for panel0 in (0..panels).step_by(panel_chunk) {
        for col0 in (0..n).step_by(col_chunk) {
            jobs.push((
                panel0,
                (panel0 + panel_chunk).min(panels),
                col0,
                (col0 + col_chunk).min(n),
            ));
        }
    }
    jobs.into_par_iter()
        .for_each(|(p0, p1, c0, c1)| job(p0, p1, c0, c1));
}

#[cfg(target_arch = "x86_64")]
mod kernel {
    use std::arch::x86_64::*;

    use super::{MR, NR};

    /// One `rows x cols` block (at most `MR x NR`) of `dst`: the sums over `kp`
    /// pairs of `a` (a packed panel) and `b` (row pairs `ldb` apart), added to
    /// `dst` when `accumulate`.
    ///
    /// # Safety
    /// The processor has AVX-512F and AVX512_BF16; `a` holds `kp * MR` values;
    /// `b + p * ldb + j` is readable for `p < kp`, `j < cols`; `dst + i * ldc + j`
    /// is writable for `i < rows`, `j < cols`.
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn block(
        kp: usize,
        a: *const u32,
        b: *const u32,
        ldb: usize,
        dst: *mut f32,
        ldc: usize,
        rows: usize,
        cols: usize,
        accumulate: bool,
    ) {
        // SAFETY: forwarded; each instance only touches `rows` rows.
        unsafe {
            match rows {
                12 => sums::<12>(kp, a, b, ldb, dst, ldc, cols, accumulate),
                11 => sums::<11>(kp, a, b, ldb, dst, ldc, cols, accumulate),
                10 => sums::<10>(kp, a, b, ldb, dst, ldc, cols, accumulate),
                9 => sums::<9>(kp, a, b, ldb, dst, ldc, cols, accumulate),
                8 => sums::<8>(kp, a, b, ldb, dst, ldc, cols, accumulate),
                7 => sums::<7>(kp, a, b, ldb, dst, ldc, cols, accumulate),
                6 => sums::<6>(kp, a, b, ldb, dst, ldc, cols, accumulate),
                5 => sums::<5>(kp, a, b, ldb, dst, ldc, cols, accumulate),
                4 => sums::<4>(kp, a, b, ldb, dst, ldc, cols, accumulate),
                3 => sums::<3>(kp, a, b, ldb, dst, ldc, cols, accumulate),
                2 => sums::<2>(kp, a, b, ldb, dst, ldc, cols, accumulate),
                1 => sums::<1>(kp, a, b, ldb, dst, ldc, cols, accumulate),
                _ => {}
            }
        }
    }

    /// The lanes of vector `j` (columns `16 j..16 j + 16`) below `cols`.
    #[inline(always)]
    fn lanes(cols: usize, j: usize) -> __mmask16 {
        let n = cols.saturating_sub(16 * j).min(16);
        ((1u32 << n) - 1) as __mmask16
    }

    #[target_feature(enable = "avx512f,avx512bf16")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn sums<const R: usize>(
        kp: usize,
        a: *const u32,
        b: *const u32,
        ldb: usize,
        dst: *mut f32,
        ldc: usize,
        cols: usize,
        accumulate: bool,
    ) {
        const { assert!(R <= MR && NR == 32) };
        let (m0, m1) = (lanes(cols, 0), lanes(cols, 1));
        let mut acc = [[_mm512_setzero_ps(); 2]; R];
        // SAFETY (all pointer reads and writes below): within the bounds the
        // caller guarantees; masked lanes are neither read nor written.
        unsafe {
            if accumulate {
                for (i, row) in acc.iter_mut().enumerate() {
                    let d = dst.add(i * ldc);
                    row[0] = _mm512_maskz_loadu_ps(m0, d);
                    row[1] = _mm512_maskz_loadu_ps(m1, d.add(16));
                }
            }
            for p in 0..kp {
                let bp = b.add(p * ldb);
                let b0: __m512bh = std::mem::transmute(_mm512_maskz_loadu_epi32(m0, bp.cast()));
                let b1: __m512bh =
                    std::mem::transmute(_mm512_maskz_loadu_epi32(m1, bp.add(16).cast()));
                let ap = a.add(p * MR);
                for (i, row) in acc.iter_mut().enumerate() {
                    let ai: __m512bh =
                        std::mem::transmute(_mm512_set1_epi32(ap.add(i).read() as i32));
                    row[0] = _mm512_dpbf16_ps(row[0], ai, b0);
                    row[1] = _mm512_dpbf16_ps(row[1], ai, b1);
                }
            }
            for (i, row) in acc.iter().enumerate() {
                let d = dst.add(i * ldc);
                _mm512_mask_storeu_ps(d, m0, row[0]);
                _mm512_mask_storeu_ps(d.add(16), m1, row[1]);
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod kernel {
    /// Never called: [`super::available`] is false off x86-64.
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn block(
        _: usize,
        _: *const u32,
        _: *const u32,
        _: usize,
        _: *mut f32,
        _: usize,
        _: usize,
        _: usize,
        _: bool,
    ) {
        unreachable!("bf16 products need AVX512_BF16")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(len: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2_654_435_761).max(1);
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn bf16_rounds_to_nearest_even_and_keeps_nan() {
        assert_eq!(bf16_bits(1.0), 0x3f80);
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to the even 1.0
        assert_eq!(bf16_bits(1.0 + 1.0 / 256.0), 0x3f80);
        // 1 + 3 * 2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6: ties to even
        assert_eq!(bf16_bits(1.0 + 3.0 / 256.0), 0x3f82);
        assert_eq!(bf16_bits(1.0 + 1.5 / 256.0), 0x3f81);
        assert!(bf16_value(bf16_bits(f32::NAN)).is_nan());
        assert_eq!(bf16_value(bf16_bits(f32::INFINITY)), f32::INFINITY);
        assert_eq!(bf16_value(bf16_bits(-0.0)).to_bits(), (-0f32).to_bits());
        for x in values(1000, 7) {
            let want = half::bf16::from_f32(x).to_bits() as u32;
            assert_eq!(bf16_bits(x), want, "{x}");
        }
    }

    /// The product of the bf16-rounded operands in f64.
    fn reference(a: &[f32], b: &[f32], m: usize, n: usize, k: usize) -> Vec<f64> {
        let r = |x: f32| f64::from(bf16_value(bf16_bits(x)));
        let mut out = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k).map(|p| r(a[i * k + p]) * r(b[p * n + j])).sum();
            }
        }
        out
    }

    #[test]
    fn products_match_the_rounded_operands_on_every_edge() {
        if !available() {
            eprintln!("skipped: this processor has no AVX512_BF16");
            return;
        }
        // rows and columns beyond one block, partial blocks, odd and tiny k
        for &(m, n, k) in &[
            (1, 1, 1),
            (13, 33, 7),
            (25, 70, 64),
            (12, 32, 2),
            (40, 300, 129),
        ] {
            for threads in [1, 2] {
                let a = values(m * k, (m + n + k) as u32);
                let b = values(k * n, (m * n * k) as u32);
                let lhs = PackedLhs::pack(m, k, |i, p| a[i * k + p]);
                let mut packed_rows = PackedLhs::default();
                packed_rows.repack_rows(m, k, &a, k);
                assert_eq!(packed_rows.data, lhs.data);
                let mut rb = vec![0u32; k.div_ceil(2) * n];
                pack_rhs(&b, k, n, n, &mut rb);
                let rhs = RhsRef {
                    data: &rb,
                    k,
                    n,
                    ld: n,
                };
                let ldc = n + 3;
                let mut dst = vec![f32::NAN; m * ldc];
                matmul(&lhs, rhs, &mut dst, ldc, false, threads);
                let want = reference(&a, &b, m, n, k);
                for i in 0..m {
                    for j in 0..n {
                        let (got, w) = (dst[i * ldc + j], want[i * n + j]);
                        assert!(
                            (f64::from(got) - w).abs() <= 1e-5 * (1.0 + w.abs()),
                            "{m}x{n}x{k} ({i},{j}): {got} vs {w}"
                        );
                    }
                    // the gap between rows is never written
                    assert!(dst[i * ldc + n..(i + 1) * ldc].iter().all(|x| x.is_nan()));
                }
                let before = dst.clone();
                matmul(&lhs, rhs, &mut dst, ldc, true, threads);
                for i in 0..m {
                    for j in 0..n {
                        let idx = i * ldc + j;
                        assert!(
                            (dst[idx] - 2.0 * before[idx]).abs()
                                <= 1e-5 * (1.0 + before[idx].abs())
                        );
                    }
                }
                assert_eq!(lhs.value(m - 1, k - 1), bf16_value(bf16_bits(a[m * k - 1])));
            }
        }
    }
}
