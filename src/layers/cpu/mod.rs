//! CPU fast paths of the layers, for f32 tensors: each is called by the layer
//! beside its portable candle-op version, never on another device. They are
//! vectorised with [`fast_math`] (AVX-512, AVX2 + FMA or plain code, picked at
//! run time) and multiply through the `gemm` crate ([`gemm`]).

pub(crate) mod bf16_gemm;
pub(crate) mod conv_taps;
pub(crate) mod epilogue;
pub(crate) mod fast_math;
pub mod features;
pub(crate) mod gelu;
pub(crate) mod gemm;
pub(crate) mod norm;
pub(crate) mod softmax;
pub(crate) mod sparse_blocks;
pub(crate) mod winograd;
pub(crate) mod winograd_f4;
pub(crate) mod winograd_transforms;

/// The threads the fast paths split their work over: candle's own count
/// (`RAYON_NUM_THREADS`, else the physical cores), asked once. candle answers
/// by reading /proc/cpuinfo at every call, and the convolutions ask once per
/// tap product: about 59,000 reads per 41-frame 704x576 stream of the fixture
/// model (`element_bench`), a few percent of the run in the kernel.
pub(crate) fn threads() -> usize {
    static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *THREADS.get_or_init(candle_core::utils::get_num_threads)
}

/// Work cut into `strips`, each computed into a scratch buffer and then written
/// out, in order. With at least as many strips as threads, each thread takes
/// whole strips, `threads` at a time, with its products on its own
/// (`compute`'s last argument is 1): one hand-out to the threads per batch
/// rather than one per product, and each scratch stays in its own core's
/// cache. A batch of fewer strips, and every strip when there are fewer than
/// threads, runs one by one with each product split between the threads
/// instead. Scratch buffers are kept from strip to strip, one per thread.
pub(crate) fn strips_on_threads<J: Sync, S: Send + Default>(
    strips: &[J],
    threads: usize,
    compute: impl Fn(&J, &mut S, usize) -> candle_core::Result<()> + Sync,
    mut write: impl FnMut(&J, &S),
) -> candle_core::Result<()> {
    use rayon::prelude::*;
    let whole_strips = threads > 1 && strips.len() >= threads;
    let mut scratch: Vec<S> = (0..if whole_strips { threads } else { 1 })
        .map(|_| S::default())
        .collect();
    for batch in strips.chunks(threads.max(1)) {
        if whole_strips && batch.len() == threads {
            batch
                .par_iter()
                .zip(scratch.par_iter_mut())
                .try_for_each(|(strip, s)| compute(strip, s, 1))?;
            for (strip, s) in batch.iter().zip(&scratch) {
                write(strip, s);
            }
        } else {
            for strip in batch {
                compute(strip, &mut scratch[0], threads)?;
                write(strip, &scratch[0]);
            }
        }
    }
    Ok(())
}
