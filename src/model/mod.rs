//! The FlashVSR network in candle: weight loading, LQ projection, the streaming DiT
//! with locality-constrained sparse attention, the TCDecoder, colour fixes and the
//! PIL-compatible pre-upscale. No GStreamer here.

pub mod bicubic;
pub mod color_fix;
pub mod frames;
pub mod pipeline;
pub mod pth;
pub mod schedule;
pub mod weights;

pub use pipeline::{FlashVsrModel, LqVariant, ModelOptions, StreamConfig, StreamState};
