//! The layers the network is built from: linear, norms, softmax, activation,
//! attention (plain and block-sparse) and convolution. Each is written with
//! candle ops that exist on every candle device (the portable path, the one CUDA
//! takes); where candle's CPU kernels are slow, a fast path for f32 CPU tensors
//! sits beside it in [`cpu`], and unit tests compare the two.

pub mod activation;
pub mod attention;
pub mod attention_path;
pub mod conv;
pub(crate) mod cpu;
pub mod device_kernels;
pub mod device_rules;
pub mod gathered_attention;
pub mod kernels;
pub mod linear;
pub mod masked_attention;
pub mod norm;
pub mod products;
pub(crate) mod residual;
pub mod shape_log;
pub mod softmax;
pub mod sparse_attention;
pub mod topk;

pub use cpu::features::CpuFeatures;
