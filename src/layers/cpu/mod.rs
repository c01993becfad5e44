//! CPU fast paths of the layers, for f32 tensors: each is called by the layer
//! beside its portable candle-op version, never on another device. They are
//! vectorised with [`fast_math`] (AVX-512, AVX2 + FMA or plain code, picked at
//! run time) and multiply through the `gemm` crate ([`gemm`]).

mod bf16_emulated;
pub(crate) mod bf16_gemm;
pub(crate) mod conv_taps;
pub(crate) mod epilogue;
pub(crate) mod fast_math;
pub mod features;
pub(crate) mod gelu;
pub(crate) mod gemm;
pub(crate) mod norm;
pub(crate) mod residual;
pub(crate) mod rope;
pub(crate) mod softmax;
pub(crate) mod sparse_blocks;
mod strips;
pub(crate) mod window_mean;
pub(crate) mod winograd;
pub(crate) mod winograd_f4;
pub(crate) mod winograd_transforms;

pub(crate) use strips::{StripOutput, assume_written, strips_on_threads};

/// The threads the fast paths split their work over: candle's own count
/// (`RAYON_NUM_THREADS`, else the physical cores), asked once. candle answers
/// by reading /proc/cpuinfo at every call, and the convolutions ask once per
/// tap product: about 59,000 reads per 41-frame 704x576 stream of the fixture
/// model (`element_bench`), a few percent of the run in the kernel.
pub(crate) fn threads() -> usize {
    static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *THREADS.get_or_init(candle_core::utils::get_num_threads)
}
