//! CPU fast path of [`crate::layers::sparse_attention`]: the kept key windows are read
//! in place, never gathered.
//!
//! Kept key windows form runs of consecutive windows. For each batch of query
//! windows, every run's scores are written by `gemm` straight into their columns
//! of one score buffer (K^T is a strided view of the key rows), the softmax runs
//! in place on that buffer, and the output accumulates `probs[:, run] @ V[run]`
//! over the runs, again reading V where it lies. Batches run in parallel, one
//! single-threaded `gemm` each, with a score buffer per worker; nothing the size
//! of the kept keys is allocated or copied, where the candle-op path gathers K
//! and V for every batch.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape};
use rayon::prelude::*;

use super::bf16_gemm::{self, PackedLhs, RhsRef, bf16_bits, pack_rhs};
use super::gemm::{Strided, contiguous_f32, gemm_f32};
use super::softmax;
use crate::layers::shape_log::{self, MatmulShape};

/// Query windows per batch at most, so that a batch's score buffer stays small
/// (4 x 128 rows x keys).
const MAX_BATCH_WINDOWS: usize = 4;

/// Consecutive query windows `first .. first + count` (flattened over heads)
/// that keep the same key windows, as runs `(first key window, count)` into the
/// flattened `[heads * nk]` key windows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Batch {
    pub first: usize,
    pub count: usize,
    pub runs: Vec<(usize, usize)>,
}

/// Splits the rows' kept key windows (sorted indices) into batches.
pub(crate) fn batches(rows: &[Vec<u32>]) -> Vec<Batch> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < rows.len() {
        let mut end = start + 1;
        while end < rows.len() && end - start < MAX_BATCH_WINDOWS && rows[end] == rows[start] {
            end += 1;
        }
        let mut runs: Vec<(usize, usize)> = Vec::new();
        for &j in &rows[start] {
            let j = j as usize;
            match runs.last_mut() {
                Some((first, count)) if *first + *count == j => *count += 1,
                _ => runs.push((j, 1)),
            }
        }
        out.push(Batch {
            first: start,
            count: end - start,
            runs,
        });
        start = end;
    }
    out
}

/// Inputs: queries `[rows, wt, d]` (already scaled), keys and values
/// `[key windows, wt, d]`, all contiguous f32; output `[rows, wt, d]`.
pub(crate) struct BlockSparseAttention {
    pub batches: Vec<Batch>,
    /// Both products with bf16 operands and f32 sums (`bf16_gemm`): keys and
    /// values packed once per call, queries and probabilities per batch; the
    /// softmax stays f32. Needs an even `wt` (value rows are packed in pairs).
    pub bf16: bool,
}

impl BlockSparseAttention {
    /// The matrix products this op computes, for the benchmark's matmul log.
    pub fn log_products(&self, wt: usize, d: usize) {
        for b in &self.batches {
            let keys: usize = b.runs.iter().map(|r| r.1).sum::<usize>() * wt;
            if keys == 0 {
                continue;
            }
            let m = b.count * wt;
            shape_log::log_matmul(MatmulShape::f32(m, d, keys));
            shape_log::log_matmul(MatmulShape::f32(m, keys, d));
        }
    }
}

impl CustomOp3 for BlockSparseAttention {
    fn name(&self) -> &'static str {
        "block-sparse-attention"
    }

    fn cpu_fwd(
        &self,
        q: &CpuStorage,
        q_layout: &Layout,
        k: &CpuStorage,
        k_layout: &Layout,
        v: &CpuStorage,
        v_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        const OP: &str = "block-sparse attention";
        let q = contiguous_f32(q, q_layout, OP, "queries")?;
        let k = contiguous_f32(k, k_layout, OP, "keys")?;
        let v = contiguous_f32(v, v_layout, OP, "values")?;
        let (rows, wt, d) = q_layout.shape().dims3()?;
        let (key_windows, kwt, kd) = k_layout.shape().dims3()?;
        if (kwt, kd) != (wt, d) || v_layout.shape().dims3()? != (key_windows, wt, d) {
            candle_core::bail!(
                "block-sparse attention: queries {:?}, keys {:?}, values {:?}",
                q_layout.shape().dims(),
                k_layout.shape().dims(),
                v_layout.shape().dims()
            )
        }
        for b in &self.batches {
            let runs_fit = b.runs.iter().all(|&(s, n)| s + n <= key_windows);
            if b.first + b.count > rows || !runs_fit {
                candle_core::bail!("block-sparse attention: a batch lies outside the inputs")
            }
        }
        let window = wt * d;
        let mut out = vec![0f32; rows * window];
        // One output slice per batch, in order, so batches can run in parallel.
        let mut slices = Vec::with_capacity(self.batches.len());
        let mut rest = &mut out[..];
        let mut at = 0;
        for b in &self.batches {
            let (_, tail) = rest.split_at_mut((b.first - at) * window);
            let (mine, tail) = tail.split_at_mut(b.count * window);
            slices.push((b, mine));
            rest = tail;
            at = b.first + b.count;
        }
        let dims = Dims { wt, d };
        if self.bf16 && wt % 2 == 0 {
            let packed = PackedKeysValues::pack(k, v, d);
            slices
                .into_par_iter()
                .for_each_init(Bf16Scratch::default, |scratch, (b, dst)| {
                    dims.batch_bf16(b, &q[b.first * window..], &packed, scratch, dst)
                });
        } else {
            slices
                .into_par_iter()
                .for_each_init(Vec::new, |scores, (b, dst)| {
                    dims.batch(b, &q[b.first * window..], k, v, scores, dst)
                });
        }
        Ok((CpuStorage::F32(out), Shape::from((rows, wt, d))))
    }
}

/// Keys as `K^T` row pairs `[d / 2, keys]` and values as row pairs
/// `[keys / 2, d]`, in bf16, for every key row of the call.
struct PackedKeysValues {
    kt: Vec<u32>,
    v: Vec<u32>,
    keys: usize,
}

impl PackedKeysValues {
    fn pack(k: &[f32], v: &[f32], d: usize) -> Self {
        let keys = k.len() / d.max(1);
        let dp = d.div_ceil(2);
        let mut kt = vec![0u32; dp * keys];
        for (j, row) in k.chunks_exact(d).enumerate() {
            for p in 0..dp {
                let lo = bf16_bits(row[2 * p]);
                let hi = row.get(2 * p + 1).map_or(0, |&x| bf16_bits(x));
                kt[p * keys + j] = lo | (hi << 16);
            }
        }
        let mut vp = vec![0u32; keys.div_ceil(2) * d];
        pack_rhs(v, keys, d, d, &mut vp);
        Self { kt, v: vp, keys }
    }
}

/// The per-worker buffers of the bf16 batches.
#[derive(Default)]
struct Bf16Scratch {
    scores: Vec<f32>,
    q: PackedLhs,
    probs: PackedLhs,
}

#[derive(Clone, Copy)]
struct Dims {
    wt: usize,
    d: usize,
}

impl Dims {
    /// One batch: `q` starts at its first query; `dst` is its `[count * wt, d]`
    /// output, zero on entry. The caller checked that every run lies in `k`/`v`.
    fn batch(
        self,
        b: &Batch,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        scores: &mut Vec<f32>,
        dst: &mut [f32],
    ) {
        let Dims { wt, d } = self;
        let m = b.count * wt;
        let keys: usize = b.runs.iter().map(|r| r.1).sum::<usize>() * wt;
        if keys == 0 {
            return; // no key window kept: the output stays zero
        }
        scores.clear();
        scores.resize(m * keys, 0.0);
        let mut col = 0;
        for &(first, count) in &b.runs {
            let n = count * wt;
            // SAFETY: dst is `m x n` at column `col` of the `m x keys` buffer;
            // lhs is the batch's `m x d` queries; rhs is K^T of key rows
            // `first * wt ..` `+ n`, inside `k` (checked by the caller).
            unsafe {
                gemm_f32(
                    (m, n, d),
                    Strided {
                        ptr: scores.as_mut_ptr().add(col),
                        row_stride: keys,
                        col_stride: 1,
                    },
                    false,
                    Strided {
                        ptr: q.as_ptr(),
                        row_stride: d,
                        col_stride: 1,
                    },
                    Strided {
                        ptr: k.as_ptr().add(first * wt * d),
                        row_stride: 1,
                        col_stride: d,
                    },
                    1,
                )
            }
            col += n;
        }
        scores.chunks_exact_mut(keys).for_each(softmax::softmax_row);
        let mut col = 0;
        for &(first, count) in &b.runs {
            let n = count * wt;
            // SAFETY: dst is the batch's `m x d` output; lhs the `m x n` block of
            // probabilities at column `col`; rhs value rows `first * wt ..` `+ n`.
            unsafe {
                gemm_f32(
                    (m, d, n),
                    Strided {
                        ptr: dst.as_mut_ptr(),
                        row_stride: d,
                        col_stride: 1,
                    },
                    col > 0,
                    Strided {
                        ptr: scores.as_ptr().add(col),
                        row_stride: keys,
                        col_stride: 1,
                    },
                    Strided {
                        ptr: v.as_ptr().add(first * wt * d),
                        row_stride: d,
                        col_stride: 1,
                    },
                    1,
                )
            }
            col += n;
        }
    }
}

impl Dims {
    /// [`Dims::batch`] with bf16 operands: the same runs, the products through
    /// `bf16_gemm` on this thread.
    fn batch_bf16(
        self,
        b: &Batch,
        q: &[f32],
        kv: &PackedKeysValues,
        scratch: &mut Bf16Scratch,
        dst: &mut [f32],
    ) {
        let Dims { wt, d } = self;
        let m = b.count * wt;
        let keys: usize = b.runs.iter().map(|r| r.1).sum::<usize>() * wt;
        if keys == 0 {
            return; // no key window kept: the output stays zero
        }
        let Bf16Scratch {
            scores,
            q: q_packed,
            probs,
        } = scratch;
        q_packed.repack_rows_here(m, d, q, d);
        scores.clear();
        scores.resize(m * keys, 0.0);
        let mut col = 0;
        for &(first, count) in &b.runs {
            let n = count * wt;
            let kt = RhsRef {
                data: &kv.kt[first * wt..],
                k: d,
                n,
                ld: kv.keys,
            };
            bf16_gemm::matmul(q_packed, kt, &mut scores[col..], keys, false, 1);
            col += n;
        }
        scores.chunks_exact_mut(keys).for_each(softmax::softmax_row);
        let mut col = 0;
        for &(first, count) in &b.runs {
            let n = count * wt;
            probs.repack_rows_here(m, n, &scores[col..], keys);
            // `wt` is even, so the run's first value row starts a pair.
            let values = RhsRef {
                data: &kv.v[first * wt / 2 * d..],
                k: n,
                n: d,
                ld: d,
            };
            bf16_gemm::matmul(probs, values, dst, d, col > 0, 1);
            col += n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_group_equal_rows_and_merge_runs() {
        let rows: Vec<Vec<u32>> = vec![
            vec![0, 1, 2, 5],
            vec![0, 1, 2, 5],
            vec![],
            vec![3],
            vec![3],
            vec![3],
            vec![3],
            vec![3],
        ];
        let b = batches(&rows);
        assert_eq!(
            b,
            vec![
                Batch {
                    first: 0,
                    count: 2,
                    runs: vec![(0, 3), (5, 1)]
                },
                Batch {
                    first: 2,
                    count: 1,
                    runs: vec![]
                },
                Batch {
                    first: 3,
                    count: 4,
                    runs: vec![(3, 1)]
                },
                Batch {
                    first: 7,
                    count: 1,
                    runs: vec![(3, 1)]
                },
            ]
        );
    }
}
