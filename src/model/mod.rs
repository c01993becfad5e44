//! The FlashVSR network in candle: weight loading, LQ projection, the streaming DiT
//! with locality-constrained sparse attention, the TCDecoder, colour fixes and the
//! PIL-compatible pre-upscale. No GStreamer here.

pub(crate) mod activation;
pub mod bicubic;
pub mod color_fix;
pub mod conv;
pub(crate) mod cpu_kernels;
pub mod dit;
pub(crate) mod fast_math;
pub mod frames;
pub mod lq_proj;
pub(crate) mod norm;
pub(crate) mod ops;
pub mod parity;
pub mod pipeline;
pub mod profile;
pub mod pth;
pub mod random_model;
pub mod rope;
pub mod schedule;
pub mod softmax;
pub mod sparse_attention;
pub mod tcdecoder;
pub mod weights;

pub use pipeline::{ChunkTrace, FlashVsrModel, LqVariant, ModelOptions, StreamConfig, StreamState};
