//! One streaming chunk at a time: LQ projection, DiT, TCDecoder, colour fix.

use std::path::Path;

use candle_core::{DType, Device, Result, Tensor};

/// Weight version; the two releases differ only in the LQ projection's cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LqVariant {
    /// FlashVSR (`Buffer_LQ4x_Proj`).
    V1,
    /// FlashVSR-v1.1 (`Causal_LQ4x_Proj`).
    V1_1,
}

#[derive(Debug, Clone)]
pub struct ModelOptions {
    pub device: Device,
    pub dtype: DType,
}

#[derive(Debug, Clone)]
pub struct StreamConfig {
    pub height: usize,
    pub width: usize,
    pub variant: LqVariant,
    pub sparse_ratio: f64,
    pub kv_ratio: f64,
    pub local_range: usize,
    pub color_fix: crate::model::color_fix::ColorFix,
}

pub struct FlashVsrModel {
    device: Device,
}

pub struct StreamState {
    chunk: usize,
}

impl StreamState {
    pub fn chunk_index(&self) -> usize {
        self.chunk
    }
}

impl FlashVsrModel {
    pub fn load(dir: &Path, opts: &ModelOptions) -> Result<Self> {
        candle_core::bail!("model loading from {} not built yet", dir.display());
        #[allow(unreachable_code)]
        Ok(Self { device: opts.device.clone() })
    }
    pub fn device(&self) -> &Device {
        &self.device
    }
    pub fn new_stream(&self, _cfg: &StreamConfig) -> Result<StreamState> {
        Ok(StreamState { chunk: 0 })
    }
    pub fn run_chunk(&self, _state: &mut StreamState, _lq: &Tensor, _noise: &Tensor) -> Result<Tensor> {
        candle_core::bail!("not built yet")
    }
}
