//! Matrix products in bfloat16 with f32 accumulation, for processors with
//! AVX512_BF16: `vdpbf16ps` multiplies 32 bf16 pairs and adds them into 16 f32
//! sums in one instruction, twice the multiply-adds of an f32 FMA of the same
//! width. Neither candle nor `gemm` has such a kernel (their bf16 products
//! convert to f32 first), so this is the CPU's bf16 product.
//!
//! `dst (m x n) = lhs (m x k) @ rhs (k x n)` with both operands packed once:
//! - the left operand in panels of [`MR`] rows, `[panels, k / 2, MR]` pairs of
//!   bf16 (rows `r`, columns `2p` and `2p + 1` in one `u32`) — [`PackedLhs`];
//! - the right one in panels of [`NR`] columns, each `[k / 2, NR]` pairs of
//!   rows (`(2p, j)` and `(2p + 1, j)` in one `u32`) — [`RhsRef`], written by
//!   [`pack_rhs_panels`].
//!
//! An odd `k` is padded with a zero column / row. The kernel keeps an `MR x 32`
//! block of sums in 24 registers, broadcasting one left pair per row and
//! loading two right vectors per pair of `k`.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use rayon::prelude::*;

use super::bf16_emulated;

/// Rows of a left panel: the kernel's block of sums is `MR x NR`.
pub(crate) const MR: usize = 12;
/// Columns of the kernel's block of sums: two vectors of 16 f32.
pub(crate) const NR: usize = 32;
/// Columns one thread takes per job when a product is split between threads.
const NC: usize = 256;
/// Left panels one thread takes per job when a product is split.
const MC_PANELS: usize = 8;

/// Whether bf16 products run here: on the processor's AVX512_BF16 kernel
/// ([`native`]), or on the scalar emulation where it was asked for
/// ([`emulate`]; always in this crate's unit tests).
pub(crate) fn available() -> bool {
    native() || emulating()
}

/// Whether this processor has the kernel's instructions, AVX-512F and
/// AVX512_BF16, detected once.
pub(crate) fn native() -> bool {
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

static EMULATE: AtomicBool = AtomicBool::new(false);

/// Has [`matmul`] run the scalar emulation of `vdpbf16ps`
/// (`cpu::bf16_emulated`) where the processor lacks AVX512_BF16, so that the
/// bf16 path's numerics (the golden cases' bf16 bounds) and control flow can be
/// checked on any processor. Slow: a development check, never a speed path.
/// Layers built afterwards take bf16 products; those built before keep theirs.
pub(crate) fn emulate(on: bool) {
    EMULATE.store(on, Ordering::Relaxed);
}

/// Whether products without AVX512_BF16 run emulated: when asked, and always
/// in this crate's unit tests (so that they exercise the bf16 path on every
/// processor CI gets).
pub(crate) fn emulating() -> bool {
    cfg!(test) || EMULATE.load(Ordering::Relaxed)
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

    /// Sizes the buffer for `m x k` values; returns the pairs per row. The
    /// packers write every pair of rows `..m` (an odd `k`'s last pair with a
    /// zero high half), and the kernel never reads the padding rows of the last
    /// panel, so the buffer is not cleared.
    fn reset(&mut self, m: usize, k: usize) -> usize {
        let kp = k.div_ceil(2);
        self.m = m;
        self.k = k;
        self.data.resize(m.div_ceil(MR) * kp * MR, 0);
        kp
    }

    /// Sizes the panels for `m x k` values and has `fill(row, block, r)` write
    /// each row, on this thread: its `k.div_ceil(2)` pairs go to
    /// `block[p * MR + r]` (an odd `k`'s last pair with a zero high half).
    pub(crate) fn fill_rows(
        &mut self,
        m: usize,
        k: usize,
        mut fill: impl FnMut(usize, &mut [u32], usize),
    ) {
        let kp = self.reset(m, k);
        for (panel, block) in self.data.chunks_mut(kp * MR).enumerate() {
            for r in 0..MR.min(m - panel * MR) {
                fill(panel * MR + r, block, r);
            }
        }
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

/// Writes one f32 row (`k` values) as bf16 pairs into row `r` of a panel.
fn pack_row_into_panel(row: &[f32], block: &mut [u32], r: usize) {
    map_row_into_panel(row, block, r, |x| x);
}

/// Writes `f(x)` of each value `x` of `row` as bf16 pairs into row `r` of a
/// left panel (pair `p` at `block[p * MR + r]`, an odd length's last pair with
/// a zero high half) and returns the sum of the `f(x)` in f32: the packing of
/// a linear layer's input, and the attention's exponentials packed as they are
/// computed.
///
/// Panics unless `r < MR` and `block` holds the row's pairs.
#[inline(always)]
pub(crate) fn map_row_into_panel(
    row: &[f32],
    block: &mut [u32],
    r: usize,
    f: impl Fn(f32) -> f32,
) -> f32 {
    assert!(
        r < MR && row.len().div_ceil(2) * MR <= block.len(),
        "bf16 panel: row out of place"
    );
    #[cfg(target_arch = "x86_64")]
    if native() {
        // SAFETY: AVX-512F and AVX512_BF16 were detected; the panel holds the
        // row's pairs (asserted).
        return unsafe { convert::map_row_into_panel(row, block, r, f) };
    }
    map_row_into_panel_scalar(row, block, r, 0, f)
}

/// [`map_row_into_panel`] one value at a time, from pair `first_pair` on
/// (`row` starting there too).
#[inline(always)]
fn map_row_into_panel_scalar(
    row: &[f32],
    block: &mut [u32],
    r: usize,
    first_pair: usize,
    f: impl Fn(f32) -> f32,
) -> f32 {
    let mut sum = 0.0;
    for (p, pair) in row.chunks(2).enumerate() {
        let lo = f(pair[0]);
        let (hi, hi_bits) = match pair.get(1) {
            Some(&x) => {
                let hi = f(x);
                (hi, bf16_bits(hi))
            }
            None => (0.0, 0),
        };
        sum += lo + hi;
        block[(first_pair + p) * MR + r] = bf16_bits(lo) | (hi_bits << 16);
    }
    sum
}

#[cfg(target_arch = "x86_64")]
mod convert {
    use std::arch::x86_64::*;

    use super::MR;

    /// Values converted per step: two vectors, one vector of pairs.
    const STEP: usize = 32;

    /// [`super::map_row_into_panel`] 32 values at a time: `f` inlined and
    /// vectorised, `vcvtne2ps2bf16` rounding two vectors (nearest, ties to
    /// even, as `bf16_bits`) into 16 pairs in order, scattered `MR` apart.
    ///
    /// # Safety
    /// The processor has AVX-512F and AVX512_BF16; `r < MR` and `block` holds
    /// `row.len().div_ceil(2)` pairs of `MR` rows.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn map_row_into_panel(
        row: &[f32],
        block: &mut [u32],
        r: usize,
        f: impl Fn(f32) -> f32,
    ) -> f32 {
        let offsets = _mm512_mullo_epi32(
            _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
            _mm512_set1_epi32(MR as i32),
        );
        let mut sums = _mm512_setzero_ps();
        let mut chunks = row.chunks_exact(STEP);
        for (c, chunk) in (&mut chunks).enumerate() {
            let mut values = [0f32; STEP];
            for (v, &x) in values.iter_mut().zip(chunk) {
                *v = f(x);
            }
            // SAFETY: `values` holds 32 f32; pairs `16 c .. 16 c + 16` of row
            // `r` lie inside `block` (the caller's guarantee).
            unsafe {
                let lo = _mm512_loadu_ps(values.as_ptr());
                let hi = _mm512_loadu_ps(values.as_ptr().add(16));
                sums = _mm512_add_ps(sums, _mm512_add_ps(lo, hi));
                let pairs: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
                let at = block.as_mut_ptr().add(c * (STEP / 2) * MR + r);
                _mm512_i32scatter_epi32::<4>(at.cast(), offsets, pairs);
            }
        }
        let done = row.len() - chunks.remainder().len();
        _mm512_reduce_add_ps(sums)
            + super::map_row_into_panel_scalar(chunks.remainder(), block, r, done / 2, f)
    }
}

/// A right operand `k x n` in bf16 row pairs (rows `2p` and `2p + 1` of a
/// column in one `u32`), in panels of [`NR`] columns: panel `c` starts at
/// `data[c * panel_stride]` and holds its `k / 2` row pairs `NR` apart, as
/// [`pack_rhs_panels`] writes them. The kernel streams each panel from
/// consecutive addresses; with plain `[k / 2, n]` row pairs it stepped one
/// row a page and more apart for wide operands (a TLB miss per step that the
/// prefetcher did not hide: the DiT's linear layers ran at 240-280 GFLOP/s
/// instead of 400 on a 2-core Zen 4).
#[derive(Clone, Copy)]
pub(crate) struct RhsRef<'a> {
    data: &'a [u32],
    pub k: usize,
    pub n: usize,
    panel_stride: usize,
}

impl<'a> RhsRef<'a> {
    /// Panels from `data`'s start, `panel_stride` apart: `k.div_ceil(2) * NR`
    /// for a whole packed operand; a view of row pairs from the middle of
    /// packed panels starts at its first row pair of the first panel and keeps
    /// the whole operand's stride.
    pub(crate) fn panels(data: &'a [u32], k: usize, n: usize, panel_stride: usize) -> Self {
        Self {
            data,
            k,
            n,
            panel_stride,
        }
    }

    /// Whether `data` holds every row pair of every column the kernel reads.
    fn fits(&self) -> bool {
        let kp = self.k.div_ceil(2);
        if kp == 0 || self.n == 0 {
            return true;
        }
        let panels = self.n.div_ceil(NR);
        let last_cols = self.n - (panels - 1) * NR;
        // With panels at least NR apart, the last one reads furthest.
        self.panel_stride >= NR
            && self.data.len() >= (panels - 1) * self.panel_stride + (kp - 1) * NR + last_cols
    }
}

super::fast_math::simd_kernel! {
    /// Packs `k x n` f32 values (row `i` at `src[i * src_stride..][..n]`) into
    /// `dst` as panels of [`NR`] columns, each `[k / 2, NR]` row pairs (the
    /// layout [`RhsRef::panels`] reads with a stride of `k / 2 * NR`), the last
    /// panel padded with zero columns.
    pub(crate) fn pack_rhs_panels(src: &[f32], k: usize, n: usize, src_stride: usize, dst: &mut [u32]) {
        let kp = k.div_ceil(2);
        for (panel, out) in dst[..n.div_ceil(NR) * kp * NR].chunks_exact_mut(kp * NR).enumerate() {
            let col = panel * NR;
            let cols = NR.min(n - col);
            for (p, pairs) in out.chunks_exact_mut(NR).enumerate() {
                let lo = &src[2 * p * src_stride + col..][..cols];
                if 2 * p + 1 < k {
                    let hi = &src[(2 * p + 1) * src_stride + col..][..cols];
                    for ((o, &a), &b) in pairs.iter_mut().zip(lo).zip(hi) {
                        *o = bf16_bits(a) | (bf16_bits(b) << 16);
                    }
                } else {
                    for (o, &a) in pairs.iter_mut().zip(lo) {
                        *o = bf16_bits(a);
                    }
                }
                pairs[cols..].fill(0);
            }
        }
    }
}

/// The `u32`s [`pack_rhs_panels`] writes for `k x n`.
pub(crate) fn panels_len(k: usize, n: usize) -> usize {
    n.div_ceil(NR) * k.div_ceil(2) * NR
}

/// A right operand packed once (a linear layer's weight): panels of [`NR`]
/// columns, each `[k / 2, NR]` row pairs (the last panel padded with zero
/// columns), so that the kernel streams it.
#[derive(Debug, Clone)]
pub(crate) struct PackedRhs {
    pub k: usize,
    pub n: usize,
    data: Vec<u32>,
}

impl PackedRhs {
    /// Packs a row-major `k x n` f32 matrix.
    pub(crate) fn pack(src: &[f32], k: usize, n: usize) -> Self {
        let mut data = vec![0u32; panels_len(k, n)];
        pack_rhs_panels(src, k, n, n, &mut data);
        Self { k, n, data }
    }

    pub(crate) fn as_ref(&self) -> RhsRef<'_> {
        RhsRef::panels(&self.data, self.k, self.n, self.k.div_ceil(2) * NR)
    }

    /// The row-major `k x n` f32 values (bf16-rounded), for the portable path.
    pub(crate) fn unpack(&self) -> Vec<f32> {
        let kp = self.k.div_ceil(2);
        let mut out = vec![0f32; self.k * self.n];
        for (i, row) in out.chunks_exact_mut(self.n).enumerate() {
            for (j, o) in row.iter_mut().enumerate() {
                let pair = self.data[((j / NR) * kp + i / 2) * NR + j % NR];
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

/// What the sums of a product start from.
#[derive(Clone, Copy)]
pub(crate) enum Start<'a> {
    /// Zero: `dst = lhs @ rhs`.
    Zero,
    /// The destination's values: `dst += lhs @ rhs`.
    Dst,
    /// A bias per column (`n` values): `dst = lhs @ rhs + bias`, a linear
    /// layer's bias added in the kernel's registers rather than in a pass of
    /// its own over the output.
    Bias(&'a [f32]),
}

/// What the sums of one kernel block start from.
#[derive(Clone, Copy)]
pub(crate) enum Init {
    Zero,
    /// The destination's values.
    Dst,
    /// The same `cols` values for every row.
    Row(*const f32),
}

/// `dst = start + lhs @ rhs`, `dst` being `m x n` row-major with rows `ldc`
/// apart, on `threads` threads (1: the caller's).
///
/// Panics if the operands' sizes disagree or `dst` is too short, and where the
/// processor lacks AVX512_BF16 and emulation was not asked for ([`available`]
/// says).
pub(crate) fn matmul(
    lhs: &PackedLhs,
    rhs: RhsRef<'_>,
    dst: &mut [f32],
    ldc: usize,
    start: Start<'_>,
    threads: usize,
) {
    let kernel = if native() {
        Kernel::Native
    } else {
        assert!(emulating(), "bf16 products need AVX512_BF16");
        Kernel::Emulated
    };
    matmul_on(kernel, lhs, rhs, dst, ldc, start, threads)
}

/// Which kernel computes the blocks of a product.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kernel {
    /// `vdpbf16ps` (AVX512_BF16).
    Native,
    /// `cpu::bf16_emulated`, in f32 arithmetic.
    Emulated,
}

/// [`matmul`] on `kernel`.
///
/// Panics as [`matmul`] does, and for [`Kernel::Native`] where the processor
/// lacks its instructions.
pub(crate) fn matmul_on(
    kernel: Kernel,
    lhs: &PackedLhs,
    rhs: RhsRef<'_>,
    dst: &mut [f32],
    ldc: usize,
    start: Start<'_>,
    threads: usize,
) {
    let (m, n, k) = (lhs.m, rhs.n, lhs.k);
    let kp = k.div_ceil(2);
    let native = kernel == Kernel::Native;
    assert!(!native || self::native(), "bf16 products need AVX512_BF16");
    assert_eq!(rhs.k, k, "bf16 product: inner sizes differ");
    assert!(rhs.fits(), "bf16 product: short rhs");
    assert!(
        m == 0 || n == 0 || dst.len() >= (m - 1) * ldc + n,
        "bf16 product: short dst"
    );
    assert!(ldc >= n || m <= 1, "bf16 product: rows overlap");
    if let Start::Bias(bias) = start {
        assert!(bias.len() >= n, "bf16 product: short bias");
    }
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
                let init = match start {
                    Start::Zero => Init::Zero,
                    Start::Dst => Init::Dst,
                    // `bias` holds `n` values (asserted), so `cols` from `col`.
                    Start::Bias(bias) => Init::Row(bias[col..].as_ptr()),
                };
                let b = rhs.data[(col / NR) * rhs.panel_stride..].as_ptr();
                // SAFETY: the block's first value lies inside `dst` (below).
                let c = unsafe { dst.0.add(panel * MR * ldc + col) };
                // SAFETY: `a` holds `kp` pairs of `MR` rows; the `cols` columns
                // of `rhs`'s panel `col / NR`, `kp` row pairs `NR` apart, lie
                // inside its data (`fits`, checked above); the destination
                // block `rows x cols` at `(panel * MR, col)` lies inside `dst`
                // (checked above) and no other job writes it; the native
                // kernel runs only where its instructions were detected.
                unsafe {
                    if native {
                        kernel::block(kp, a.as_ptr(), b, c, ldc, rows, cols, init)
                    } else {
                        bf16_emulated::block(kp, a.as_ptr(), b, c, ldc, rows, cols, init)
                    }
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

    use super::{Init, MR, NR};

    /// One `rows x cols` block (at most `MR x NR`) of `dst`: the sums over `kp`
    /// pairs of `a` (a packed panel) and `b` (a panel: row pairs `NR` apart),
    /// started from `init`.
    ///
    /// # Safety
    /// The processor has AVX-512F and AVX512_BF16; `a` holds `kp * MR` values;
    /// `b + p * NR + j` is readable for `p < kp`, `j < cols`; `dst + i * ldc + j`
    /// is writable (and readable, with `Init::Dst`) for `i < rows`, `j < cols`;
    /// with `Init::Row(r)`, `r + j` is readable for `j < cols`.
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn block(
        kp: usize,
        a: *const u32,
        b: *const u32,
        dst: *mut f32,
        ldc: usize,
        rows: usize,
        cols: usize,
        init: Init,
    ) {
        // SAFETY: forwarded; each instance only touches `rows` rows.
        unsafe {
            match rows {
                12 => sums::<12>(kp, a, b, dst, ldc, cols, init),
                11 => sums::<11>(kp, a, b, dst, ldc, cols, init),
                10 => sums::<10>(kp, a, b, dst, ldc, cols, init),
                9 => sums::<9>(kp, a, b, dst, ldc, cols, init),
                8 => sums::<8>(kp, a, b, dst, ldc, cols, init),
                7 => sums::<7>(kp, a, b, dst, ldc, cols, init),
                6 => sums::<6>(kp, a, b, dst, ldc, cols, init),
                5 => sums::<5>(kp, a, b, dst, ldc, cols, init),
                4 => sums::<4>(kp, a, b, dst, ldc, cols, init),
                3 => sums::<3>(kp, a, b, dst, ldc, cols, init),
                2 => sums::<2>(kp, a, b, dst, ldc, cols, init),
                1 => sums::<1>(kp, a, b, dst, ldc, cols, init),
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
        dst: *mut f32,
        ldc: usize,
        cols: usize,
        init: Init,
    ) {
        const { assert!(R <= MR && NR == 32) };
        let (m0, m1) = (lanes(cols, 0), lanes(cols, 1));
        let mut acc = [[_mm512_setzero_ps(); 2]; R];
        // SAFETY (all pointer reads and writes below): within the bounds the
        // caller guarantees; masked lanes are neither read nor written.
        unsafe {
            match init {
                Init::Zero => {}
                Init::Dst => {
                    for (i, row) in acc.iter_mut().enumerate() {
                        let d = dst.add(i * ldc);
                        row[0] = _mm512_maskz_loadu_ps(m0, d);
                        row[1] = _mm512_maskz_loadu_ps(m1, d.add(16));
                    }
                }
                Init::Row(r) => {
                    let start = [
                        _mm512_maskz_loadu_ps(m0, r),
                        _mm512_maskz_loadu_ps(m1, r.add(16)),
                    ];
                    acc = [start; R];
                }
            }
            for p in 0..kp {
                let bp = b.add(p * NR);
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
    use super::Init;

    /// Never called: [`super::native`] is false off x86-64.
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn block(
        _: usize,
        _: *const u32,
        _: *const u32,
        _: *mut f32,
        _: usize,
        _: usize,
        _: usize,
        _: Init,
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
                let mut rb = vec![u32::MAX; panels_len(k, n)];
                pack_rhs_panels(&b, k, n, n, &mut rb);
                let rhs = RhsRef::panels(&rb, k, n, k.div_ceil(2) * NR);
                let ldc = n + 3;
                let mut dst = vec![f32::NAN; m * ldc];
                matmul(&lhs, rhs, &mut dst, ldc, Start::Zero, threads);
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
                matmul(&lhs, rhs, &mut dst, ldc, Start::Dst, threads);
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

    #[test]
    fn mapped_rows_land_in_their_panel_row_rounded_to_nearest_even() {
        // whole steps of 32 values, partial ones and an odd last value
        for len in [1, 2, 31, 32, 33, 64, 71] {
            let row = values(len, len as u32);
            let kp = len.div_ceil(2);
            for r in [0, 5, MR - 1] {
                let mut block = vec![u32::MAX; kp * MR];
                let sum = map_row_into_panel(&row, &mut block, r, |x| 3.0 * x);
                for p in 0..kp {
                    let lo = bf16_bits(3.0 * row[2 * p]);
                    let hi = row.get(2 * p + 1).map_or(0, |&x| bf16_bits(3.0 * x));
                    assert_eq!(block[p * MR + r], lo | (hi << 16), "len {len} pair {p}");
                    // the other rows' places are left alone
                    assert!(
                        (0..MR)
                            .filter(|&i| i != r)
                            .all(|i| block[p * MR + i] == u32::MAX)
                    );
                }
                let want: f32 = row.iter().map(|&x| 3.0 * x).sum();
                assert!(
                    (sum - want).abs() <= 1e-4 * len as f32,
                    "len {len}: {sum} vs {want}"
                );
            }
        }
    }

    #[test]
    fn views_into_panels_multiply_their_rows_and_columns_only() {
        // A 40 x 100 operand in panels; the view takes rows 10..30 (row pairs
        // 5..15) and columns 32..96 (panels 1 and 2), as the attention reads
        // a run of values and of keys.
        let (k, n, m) = (40, 100, 7);
        let b = values(k * n, 3);
        let mut rb = vec![0u32; panels_len(k, n)];
        pack_rhs_panels(&b, k, n, n, &mut rb);
        let stride = k.div_ceil(2) * NR;
        let (r0, rows, c0, cols) = (10, 20, 32, 64);
        let view = RhsRef::panels(&rb[(c0 / NR) * stride + r0 / 2 * NR..], rows, cols, stride);
        let a = values(m * rows, 4);
        let lhs = PackedLhs::pack(m, rows, |i, p| a[i * rows + p]);
        let sub: Vec<f32> = (0..rows)
            .flat_map(|i| b[(r0 + i) * n + c0..][..cols].to_vec())
            .collect();
        let want = reference(&a, &sub, m, cols, rows);
        let mut dst = vec![0f32; m * cols];
        matmul(&lhs, view, &mut dst, cols, Start::Zero, 2);
        for (got, w) in dst.iter().zip(&want) {
            assert!((f64::from(*got) - w).abs() <= 1e-5 * (1.0 + w.abs()));
        }
        // the whole operand unpacks to its bf16-rounded values
        let packed = PackedRhs::pack(&b, k, n);
        let rounded: Vec<f32> = b.iter().map(|&x| bf16_value(bf16_bits(x))).collect();
        assert_eq!(packed.unpack(), rounded);
        assert_eq!(packed.data, rb);
    }
}
