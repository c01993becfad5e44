//! `bf16_gemm`'s kernel block without AVX512_BF16: what `vdpbf16ps` computes,
//! in plain f32 arithmetic, so that the bf16 path (its packing, its attention
//! batches, the golden cases' bf16 bounds) runs and is tested on processors
//! that lack the instruction. Only when asked (`bf16_gemm::emulate`) or in unit
//! tests: it is slower than the f32 products it stands beside.
//!
//! The instruction, as Intel documents it, for each f32 lane and each pair of
//! bf16 operands: the odd elements' product is added to the sum, then the even
//! elements' product, each addition rounded to nearest (ties to even), with
//! denormal operands read as zero and denormal results flushed to zero. The
//! product of two bf16 values (8-bit significands) is exact in f32, so a
//! multiplication followed by an addition rounds once, as the instruction does.

use super::bf16_gemm::{Init, MR, NR};
use super::fast_math::simd_kernel;

/// The f32 value of the bf16 in the low 16 bits of `bits`, a denormal read as
/// a zero of its sign.
#[inline(always)]
fn widen(bits: u32) -> f32 {
    let b = bits & 0xffff;
    let denormal = b & 0x7f80 == 0;
    f32::from_bits(if denormal { b & 0x8000 } else { b } << 16)
}

/// `x` with a denormal flushed to a zero of its sign.
#[inline(always)]
fn flush(x: f32) -> f32 {
    if x.abs() < f32::MIN_POSITIVE {
        f32::from_bits(x.to_bits() & 0x8000_0000)
    } else {
        x
    }
}

/// One `rows x cols` block (at most `MR x NR`) of `dst`, as
/// `bf16_gemm::kernel::block` computes it.
///
/// # Safety
/// `a` holds `kp * MR` values; `b + p * NR + j` is readable for `p < kp`,
/// `j < cols`; `dst + i * ldc + j` is writable (and readable, with
/// `Init::Dst`) for `i < rows`, `j < cols`, and no other thread touches those
/// values meanwhile; with `Init::Row(r)`, `r + j` is readable for `j < cols`.
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
    if rows == 0 || cols == 0 {
        return;
    }
    // SAFETY: the spans the caller guarantees readable.
    let (a, b) = unsafe {
        (
            std::slice::from_raw_parts(a, kp * MR),
            std::slice::from_raw_parts(b, (kp * NR).saturating_sub(NR - cols)),
        )
    };
    let mut acc = [[0f32; NR]; MR];
    for (i, sums) in acc.iter_mut().enumerate().take(rows) {
        // SAFETY: with `Init::Dst` row `i`'s `cols` values are readable, with
        // `Init::Row(r)` the `cols` values from `r` (the caller's guarantees).
        let from = unsafe {
            match init {
                Init::Zero => continue,
                Init::Dst => std::slice::from_raw_parts(dst.add(i * ldc), cols),
                Init::Row(r) => std::slice::from_raw_parts(r, cols),
            }
        };
        sums[..cols].copy_from_slice(from);
    }
    sums(kp, a, b, rows, cols, &mut acc);
    for (i, sums) in acc.iter().enumerate().take(rows) {
        // SAFETY: row `i`'s `cols` values are the caller's to write.
        unsafe { std::ptr::copy_nonoverlapping(sums.as_ptr(), dst.add(i * ldc), cols) };
    }
}

simd_kernel! {
    /// Adds the `kp` pairs of `a` (a packed left panel) times `b` (a right
    /// panel's row pairs, `NR` apart, `cols` wide) to the first `rows` rows of
    /// `acc`, the odd product before the even one, as `vdpbf16ps` does.
    fn sums(kp: usize, a: &[u32], b: &[u32], rows: usize, cols: usize, acc: &mut [[f32; NR]; MR]) {
        let (mut even, mut odd) = ([0f32; NR], [0f32; NR]);
        for p in 0..kp {
            for (j, &pair) in b[p * NR..][..cols].iter().enumerate() {
                even[j] = widen(pair);
                odd[j] = widen(pair >> 16);
            }
            for (i, sums) in acc.iter_mut().enumerate().take(rows) {
                let pair = a[p * MR + i];
                let (ae, ao) = (widen(pair), widen(pair >> 16));
                for j in 0..NR {
                    sums[j] = flush(flush(sums[j] + ao * odd[j]) + ae * even[j]);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::bf16_gemm::{self, Kernel, Start, bf16_bits, bf16_value};
    use super::*;

    fn pair(even: f32, odd: f32) -> u32 {
        bf16_bits(even) | (bf16_bits(odd) << 16)
    }

    /// `from` plus one pair of products, through a 1 x 1 block.
    fn one(a: u32, b: u32, from: f32) -> f32 {
        let (mut pa, mut pb) = ([0u32; MR], [0u32; NR]);
        (pa[0], pb[0]) = (a, b);
        let mut dst = [from];
        // SAFETY: one pair of one row and one column, a 1 x 1 destination.
        unsafe {
            block(
                1,
                pa.as_ptr(),
                pb.as_ptr(),
                dst.as_mut_ptr(),
                1,
                1,
                1,
                Init::Dst,
            )
        };
        dst[0]
    }

    #[test]
    fn the_odd_product_is_added_first_and_each_sum_rounds() {
        // From a sum of 1: odd product -1, even 2^-24. Odd first: 1 - 1 = 0,
        // then 2^-24.
        let tiny = 2f32.powi(-24);
        let ones = pair(1.0, 1.0);
        assert_eq!(one(pair(tiny, -1.0), ones, 1.0), tiny);
        // Odd 2^-24 first: 1 + 2^-24 rounds back to 1 (a tie, to even), then
        // -1 gives 0, where one rounding of the whole sum would give 2^-24.
        assert_eq!(one(pair(-1.0, tiny), ones, 1.0), 0.0);
    }

    #[test]
    fn denormal_operands_read_as_zero_and_denormal_sums_flush() {
        let denormal = f32::MIN_POSITIVE / 4.0;
        assert_eq!(bf16_value(bf16_bits(denormal)), denormal);
        assert_eq!(one(pair(denormal, 0.0), pair(1.0, 0.0), 0.0), 0.0);
        assert_eq!(one(pair(0.0, -denormal), pair(0.0, 1.0), 0.0), 0.0);
        // 2^-70 * 2^-60 is a denormal product: flushed; 2^-120 is not
        let (p60, p70) = (2f32.powi(-60), 2f32.powi(-70));
        assert_eq!(one(pair(p70, 0.0), pair(p60, 0.0), 0.0), 0.0);
        assert_eq!(one(pair(p60, 0.0), pair(p60, 0.0), 0.0), 2f32.powi(-120));
        // a denormal start is flushed by the first sum, as the hardware's is
        assert_eq!(one(0, 0, denormal), 0.0);
    }

    #[test]
    fn a_block_starts_from_its_init_and_writes_its_rows_and_columns_only() {
        let (rows, cols, kp, ldc) = (3, 5, 2, 7);
        let a: Vec<u32> = (0..kp * MR).map(|x| pair(x as f32, 1.0)).collect();
        let b: Vec<u32> = (0..kp * NR).map(|x| pair(0.5, x as f32)).collect();
        let sum = |i: usize, j: usize| -> f32 {
            (0..kp)
                .map(|p| (p * MR + i) as f32 * 0.5 + (p * NR + j) as f32)
                .sum()
        };
        let bias: Vec<f32> = (0..cols).map(|j| 100.0 * j as f32).collect();
        let before = |i: usize, j: usize| (i * 10 + j) as f32;
        for (init, start) in [
            (Init::Zero, (|_, _| 0.0) as fn(usize, usize) -> f32),
            (Init::Dst, |i, j| (i * 10 + j) as f32),
            (Init::Row(bias.as_ptr()), |_, j| 100.0 * j as f32),
        ] {
            let mut dst: Vec<f32> = (0..rows * ldc).map(|x| before(x / ldc, x % ldc)).collect();
            // SAFETY: `a` and `b` hold `kp` pairs of whole panels; `dst` holds
            // `rows` rows `ldc` apart; the bias `cols` values.
            unsafe {
                block(
                    kp,
                    a.as_ptr(),
                    b.as_ptr(),
                    dst.as_mut_ptr(),
                    ldc,
                    rows,
                    cols,
                    init,
                )
            };
            for i in 0..rows {
                for j in 0..ldc {
                    let got = dst[i * ldc + j];
                    if j < cols {
                        assert_eq!(got, start(i, j) + sum(i, j), "({i}, {j})");
                    } else {
                        assert_eq!(got, before(i, j), "gap ({i}, {j}) written");
                    }
                }
            }
        }
    }

    /// Where the processor has the instruction, the emulation gives its sums:
    /// bit for bit unless the hardware orders the two additions otherwise, and
    /// then within a rounding of the sum's magnitude.
    #[test]
    fn the_emulation_matches_the_instruction() {
        if !bf16_gemm::native() {
            eprintln!("skipped: this processor has no AVX512_BF16 to compare with");
            return;
        }
        let (m, n, k) = (37, 70, 301);
        let mut s = 12345u32;
        let mut next = || {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s % 20001) as f32 / 1000.0 - 10.0
        };
        let a: Vec<f32> = (0..m * k).map(|_| next()).collect();
        let b: Vec<f32> = (0..k * n).map(|_| next()).collect();
        let lhs = bf16_gemm::PackedLhs::pack(m, k, |i, p| a[i * k + p]);
        let rhs = bf16_gemm::PackedRhs::pack(&b, k, n);
        let product = |kernel: Kernel| {
            let mut dst = vec![0f32; m * n];
            bf16_gemm::matmul_on(kernel, &lhs, rhs.as_ref(), &mut dst, n, Start::Zero, 2);
            dst
        };
        let (native, emulated) = (product(Kernel::Native), product(Kernel::Emulated));
        let rounded_b = rhs.unpack();
        let mut exact = 0;
        for i in 0..m {
            for j in 0..n {
                let magnitude: f32 = (0..k)
                    .map(|p| (lhs.value(i, p) * rounded_b[p * n + j]).abs())
                    .sum();
                let (x, y) = (native[i * n + j], emulated[i * n + j]);
                exact += usize::from(x.to_bits() == y.to_bits());
                assert!(
                    (x - y).abs() <= 4.0 * f32::EPSILON * magnitude,
                    "({i}, {j}): {x} vs {y}"
                );
            }
        }
        eprintln!("{exact} of {} sums bit for bit", m * n);
    }
}
