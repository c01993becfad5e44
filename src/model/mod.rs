//! The FlashVSR network in candle: weight loading, LQ projection, the streaming DiT
//! with locality-constrained sparse attention, the TCDecoder, colour fixes and the
//! PIL-compatible pre-upscale. No GStreamer here.

pub mod bicubic;
pub mod color_fix;
pub mod dit;
pub mod frames;
pub mod lq_proj;
mod ops;
pub mod parity;
pub mod pipeline;
pub mod pth;
pub mod rope;
pub mod schedule;
pub mod sparse_attention;
pub mod tcdecoder;
pub mod weights;

pub use pipeline::{ChunkTrace, FlashVsrModel, LqVariant, ModelOptions, StreamConfig, StreamState};
