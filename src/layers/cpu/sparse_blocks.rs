//! CPU fast path of [`crate::layers::sparse_attention`]: the kept key windows are read
//! in place, never gathered.
//!
//! Kept key windows form runs of consecutive windows. For each batch of query
//! windows, the kept keys are taken a chunk at a time in flash-attention order:
//! the chunk's scores (`gemm` reading K^T as a strided view of the key rows),
//! their exponentials against each row's running maximum, the output so far
//! rescaled where a maximum rose, and `probs @ V[chunk]` added to it, V read
//! where it lies; the rows are divided by their sums at the end. Batches run in
//! parallel, one single-threaded `gemm` each, with a chunk's score buffer per
//! worker; nothing the size of the kept keys is allocated or copied, where the
//! candle-op path gathers K and V for every batch. With bf16 products keys and
//! values are packed once per call and the exponentials packed as computed.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape};
use rayon::prelude::*;

use super::bf16_gemm::{
    self, NR, PackedLhs, RhsRef, Start, bf16_bits, map_row_into_panel, pack_rhs_panels, panels_len,
};
use super::fast_math;
use super::gemm::{Strided, contiguous_f32, gemm_f32};
use super::softmax::{self, RunningSoftmax};
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
    /// softmax stays f32. Needs a `wt` that is a multiple of
    /// `bf16_gemm::NR` (runs start whole panels of packed keys); with another,
    /// the f32 products run.
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
        if self.bf16 && wt.is_multiple_of(NR) {
            let packed = PackedKeysValues::pack(k, v, d);
            slices
                .into_par_iter()
                .for_each_init(Bf16Scratch::default, |scratch, (b, dst)| {
                    dims.batch_bf16(b, &q[b.first * window..], &packed, scratch, dst)
                });
        } else {
            slices
                .into_par_iter()
                .for_each_init(F32Scratch::default, |scratch, (b, dst)| {
                    dims.batch(b, &q[b.first * window..], k, v, scratch, dst)
                });
        }
        Ok((CpuStorage::F32(out), Shape::from((rows, wt, d))))
    }
}

/// Keys as `K^T` and values, in bf16 row pairs, for every key row of the
/// call, both in panels of [`NR`] columns (`bf16_gemm`'s streamed layout):
/// `K^T` `[keys / NR, d / 2, NR]`, so that a run of key windows (a multiple of
/// `NR` keys) starts a panel; values `[d / NR, keys / 2, NR]`, a run starting
/// at its first row pair of every panel.
struct PackedKeysValues {
    kt: Vec<u32>,
    v: Vec<u32>,
    keys: usize,
    d: usize,
}

impl PackedKeysValues {
    /// Needs an even count of key rows that is a multiple of [`NR`] (whole
    /// windows of a `wt` that is).
    fn pack(k: &[f32], v: &[f32], d: usize) -> Self {
        let keys = k.len() / d.max(1);
        let dp = d.div_ceil(2);
        let mut kt = vec![0u32; keys.div_ceil(NR) * dp * NR];
        for (j, row) in k.chunks_exact(d).enumerate() {
            let panel = &mut kt[(j / NR) * dp * NR + j % NR..];
            for p in 0..dp {
                let lo = bf16_bits(row[2 * p]);
                let hi = row.get(2 * p + 1).map_or(0, |&x| bf16_bits(x));
                panel[p * NR] = lo | (hi << 16);
            }
        }
        let mut vp = vec![0u32; panels_len(keys, d)];
        pack_rhs_panels(v, keys, d, d, &mut vp);
        Self { kt, v: vp, keys, d }
    }

    /// `K^T` of the `n` keys from key row `first` (a multiple of [`NR`]).
    fn keys_t(&self, first: usize, n: usize) -> RhsRef<'_> {
        let dp = self.d.div_ceil(2);
        RhsRef::panels(&self.kt[first * dp..], self.d, n, dp * NR)
    }

    /// The `n` value rows from row `first` (even).
    fn values(&self, first: usize, n: usize) -> RhsRef<'_> {
        RhsRef::panels(
            &self.v[first / 2 * NR..],
            n,
            self.d,
            self.keys.div_ceil(2) * NR,
        )
    }
}

/// Keys a batch takes at a time: the scores of 4 query windows against them
/// (512 x 256 f32, 512 KiB) stay in the L2 cache.
const KEY_CHUNK: usize = 256;

/// The key chunks of a batch's runs, `(first key row, keys)`: [`KEY_CHUNK`]
/// keys at a time within each run.
fn key_chunks(runs: &[(usize, usize)], wt: usize) -> impl Iterator<Item = (usize, usize)> + '_ {
    runs.iter().flat_map(move |&(first, count)| {
        let end = (first + count) * wt;
        (first * wt..end)
            .step_by(KEY_CHUNK)
            .map(move |key0| (key0, KEY_CHUNK.min(end - key0)))
    })
}

/// The per-worker buffers of the f32 batches.
#[derive(Default)]
struct F32Scratch {
    scores: Vec<f32>,
    running: RunningSoftmax,
}

/// The per-worker buffers of the bf16 batches.
#[derive(Default)]
struct Bf16Scratch {
    scores: Vec<f32>,
    q: PackedLhs,
    probs: PackedLhs,
    running: RunningSoftmax,
}

#[derive(Clone, Copy)]
struct Dims {
    wt: usize,
    d: usize,
}

impl Dims {
    /// One batch: `q` starts at its first query; `dst` is its `[count * wt, d]`
    /// output. The caller checked that every run lies in `k`/`v`. The keys are
    /// taken [`KEY_CHUNK`] at a time with a running softmax, as in
    /// [`Dims::batch_bf16`]: per chunk the scores `Q K^T`, their exponentials
    /// against each row's running maximum in place, the output so far rescaled
    /// where a row's maximum rose, and `P V` added to it; the rows divided by
    /// their sums at the end. A whole batch's scores (512 rows by thousands of
    /// keys, tens of MiB) went through memory three times: written, softmaxed,
    /// read by `P V`; a chunk's stay in cache.
    fn batch(
        self,
        b: &Batch,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        scratch: &mut F32Scratch,
        dst: &mut [f32],
    ) {
        let Dims { wt, d } = self;
        let m = b.count * wt;
        if b.runs.is_empty() {
            return; // no key window kept: the output stays zero
        }
        let F32Scratch { scores, running } = scratch;
        running.reset(m);
        scores.resize(m * KEY_CHUNK, 0.0);
        for (chunk, (key0, n)) in key_chunks(&b.runs, wt).enumerate() {
            let started = chunk > 0;
            let scores = &mut scores[..m * n];
            // SAFETY: dst is the `m x n` score block; lhs is the batch's
            // `m x d` queries; rhs is K^T of key rows `key0 .. key0 + n`,
            // inside `k` (checked by the caller).
            unsafe {
                gemm_f32(
                    (m, n, d),
                    Strided {
                        ptr: scores.as_mut_ptr(),
                        row_stride: n,
                        col_stride: 1,
                    },
                    false,
                    Strided {
                        ptr: q.as_ptr(),
                        row_stride: d,
                        col_stride: 1,
                    },
                    Strided {
                        ptr: k.as_ptr().add(key0 * d),
                        row_stride: 1,
                        col_stride: d,
                    },
                    1,
                )
            }
            for (i, row) in scores.chunks_exact_mut(n).enumerate() {
                running.take(i, row, &mut dst[i * d..][..d]);
            }
            // SAFETY: dst is the batch's `m x d` output; lhs the `m x n`
            // exponentials; rhs value rows `key0 .. key0 + n`, inside `v`.
            unsafe {
                gemm_f32(
                    (m, d, n),
                    Strided {
                        ptr: dst.as_mut_ptr(),
                        row_stride: d,
                        col_stride: 1,
                    },
                    started,
                    Strided {
                        ptr: scores.as_ptr(),
                        row_stride: n,
                        col_stride: 1,
                    },
                    Strided {
                        ptr: v.as_ptr().add(key0 * d),
                        row_stride: d,
                        col_stride: 1,
                    },
                    1,
                )
            }
        }
        running.normalise(dst, d);
    }
}

impl Dims {
    /// [`Dims::batch`] with bf16 operands, on this thread, the keys taken
    /// [`KEY_CHUNK`] at a time with a running softmax: per chunk, the scores
    /// `Q K^T` (f32 sums), each row's exponentials against its running maximum
    /// packed straight into bf16 panels, the output so far rescaled where a
    /// row's maximum rose, and the chunk's `P V` added to it; the rows divided
    /// by their sums at the end. So the scores of a batch never exist whole:
    /// over thousands of keys they ran to tens of MiB per batch, and the
    /// softmax, its normalisation and the packing each went through memory.
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
        if b.runs.is_empty() {
            return; // no key window kept: the output stays zero
        }
        let Bf16Scratch {
            scores,
            q: q_packed,
            probs,
            running,
        } = scratch;
        q_packed.repack_rows_here(m, d, q, d);
        running.reset(m);
        scores.resize(m * KEY_CHUNK, 0.0);
        for (chunk, (key0, n)) in key_chunks(&b.runs, wt).enumerate() {
            let scores = &mut scores[..m * n];
            bf16_gemm::matmul(q_packed, kv.keys_t(key0, n), scores, n, Start::Zero, 1);
            probs.fill_rows(m, n, |i, block, r| {
                let row = &scores[i * n..][..n];
                let max = running.raise(i, softmax::max_of(row), &mut dst[i * d..][..d]);
                running.add(
                    i,
                    map_row_into_panel(row, block, r, |x| fast_math::exp(x - max)),
                );
            });
            let start = if chunk > 0 { Start::Dst } else { Start::Zero };
            bf16_gemm::matmul(probs, kv.values(key0, n), dst, d, start, 1);
        }
        running.normalise(dst, d);
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
