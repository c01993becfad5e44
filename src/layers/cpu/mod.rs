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
