//! The FlashVSR network in candle and its streaming state: the LQ projection, the
//! causal DiT with its KV cache, the TCDecoder, the colour fix, and the chunk
//! schedule that ties them together (docs/model.md). No GStreamer here.

pub mod attention_check;
pub mod cancel;
pub mod color_fix;
pub mod decoder;
pub mod dit;
pub mod kv_cache;
pub mod lq_proj;
pub mod network;
pub mod profile;
pub mod rope;
pub mod schedule;
pub mod tcdecoder;
pub mod tiling;
pub mod wan_decoder;

pub use cancel::CancelToken;

use candle_core::{Device, Result, Tensor};

/// Moves a held tensor to `device` (a no-op when it is there already): how a
/// sequence's state is parked in host memory between its turns
/// (`SequenceState::move_to`).
pub(crate) fn move_held(tensor: &mut Option<Tensor>, device: &Device) -> Result<()> {
    if let Some(t) = tensor.as_mut()
        && !t.device().same_device(device)
    {
        *t = t.to_device(device)?;
    }
    Ok(())
}
pub use network::{
    ChunkTrace, FlashVsrModel, ModelOptions, ModelVersion, SequenceConfig, SequenceState,
};
