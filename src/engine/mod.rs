//! The streaming upscaler: frames in, upscaled frames out, in order, each with the
//! caller's tag. No GStreamer here; the element and the examples are front ends.
//!
//! - Schedule: the first frames come out after `LATENCY_FRAMES` (25) inputs, then 8 for
//!   every 8 more (`model::schedule`).
//! - Size: output frames are exactly the input size times `scale`. Inside, each frame
//!   is bicubic-upscaled, edge-padded to multiples of 128 for the model and cropped
//!   back afterwards.
//! - Memory: only the pre-upscaled frames the next chunk still reads are held (at most
//!   25), plus the tags of frames not yet output; streams can be unbounded. A stream
//!   whose estimated peak (`memory`) exceeds `EngineSettings::max_memory` (default:
//!   `MemAvailable`) is refused with `EngineError::TooLarge` before it starts; the
//!   stream before it is then left intact for `finish`. Streams too large for the
//!   budget whole run in tiles (`tiles`, `EngineSettings::tile_size`).
//! - `finish` (end of stream) extends the input with copies of the last frame as far
//!   as the last chunk needs and returns exactly the real frames.
//! - A frame whose size differs from the stream's finishes the current stream (its
//!   frames are returned first) and starts a new one with the new size.
//! - After an error from `push` or `finish` the current stream is dropped; the next
//!   frame starts a new one.

mod choices;
mod chunk_model;
mod cuda_device;
mod error;
mod geometry;
pub mod memory;
mod model_registry;
pub mod noise;
mod sequences;
mod settings;
mod stream;
pub mod tiles;

use std::sync::Arc;

pub use crate::layers::attention_path::AttentionKernel;
pub use crate::layers::kernels::KernelPath;
pub use crate::model::ModelVersion;
pub use crate::model::color_fix::ColorFix;
pub use crate::model::decoder::DecoderKind;
pub use crate::model::network::SIZE_MULTIPLE;
pub use choices::{Choice, ChoiceValue};
pub use cuda_device::PoolUsage;
pub use error::EngineError;
pub use memory::MemoryEstimate;
pub use model_registry::{ModelHandle, loaded_models, model_loads};
pub use noise::{FixedNoise, NoiseSource, SeededNoise};
pub use settings::{
    DeviceSpec, EngineSettings, KV_RATIO_RANGE, LOCAL_RANGE_RANGE, Precision, SCALE_RANGE,
    SPARSE_RATIO_RANGE, TILE_OVERLAP_MULTIPLE, TILE_OVERLAP_RANGE, TILE_SIZE_RANGE,
};
pub use stream::ChunkProfile;
pub use tiles::{TILE_ALIGN, TileLayout, TilePlan};

use crate::model::schedule::FIRST_CHUNK_INPUT;
use crate::model::{CancelToken, FlashVsrModel};
use geometry::Geometry;
use model_registry::ModelKey;
use stream::Stream;

/// Input frames a stream holds before its first output.
pub const LATENCY_FRAMES: u64 = FIRST_CHUNK_INPUT as u64;

/// A packed RGB24 image: `data` holds `width * height * 3` bytes, rows top to bottom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbFrame {
    pub width: u32,
    pub height: u32,
    pub data: Vec<u8>,
}

impl RgbFrame {
    /// Checks that the size is at least 1x1 and that `data` holds exactly one image.
    pub fn validate(&self) -> Result<(), EngineError> {
        if self.width == 0 || self.height == 0 {
            return Err(EngineError::InvalidFrame(format!(
                "{}x{}: a frame must be at least 1x1",
                self.width, self.height
            )));
        }
        let expected = (self.width as usize)
            .checked_mul(self.height as usize)
            .and_then(|n| n.checked_mul(3));
        if expected != Some(self.data.len()) {
            return Err(EngineError::InvalidFrame(format!(
                "{}x{} RGB24 needs {} bytes, got {}",
                self.width,
                self.height,
                expected.map_or_else(|| "too many".to_owned(), |n| n.to_string()),
                self.data.len()
            )));
        }
        Ok(())
    }
}

/// The streaming upscaler; `T` is the caller's per-frame tag (e.g. a timestamp).
pub struct Engine<T> {
    settings: EngineSettings,
    model: Arc<FlashVsrModel>,
    model_key: ModelKey,
    noise: Box<dyn NoiseSource>,
    /// The noise was given by the caller: kept across `reconfigure`.
    noise_injected: bool,
    stream: Option<Stream<T, FlashVsrModel>>,
    profiling: bool,
    /// Shared with every stream's model sequence (`cancel_token`).
    cancel: CancelToken,
    /// Profiles of streams that ended since the last `take_profiles`.
    profiles: Vec<ChunkProfile>,
    /// The plan streams of this size run (`plan_stream`).
    planned: Option<(Geometry, TilePlan)>,
}

impl<T> Engine<T> {
    /// Validates the settings and loads the weights (a bad folder fails here).
    pub fn new(settings: EngineSettings) -> Result<Self, EngineError> {
        let noise = Box::new(SeededNoise::with_offset(
            settings.seed,
            settings.noise_offset,
        ));
        Self::build(settings, noise, false)
    }

    /// Like `new`, but every stream takes its noise from `noise` instead of the seed
    /// (tests inject the golden fixtures' noise this way).
    pub fn with_noise(
        settings: EngineSettings,
        noise: Box<dyn NoiseSource>,
    ) -> Result<Self, EngineError> {
        Self::build(settings, noise, true)
    }

    fn build(
        settings: EngineSettings,
        noise: Box<dyn NoiseSource>,
        noise_injected: bool,
    ) -> Result<Self, EngineError> {
        settings.validate()?;
        let model_key = ModelKey::of(&settings)?;
        let model = model_registry::shared_model(&model_key)?;
        Ok(Self {
            settings,
            model,
            model_key,
            noise,
            noise_injected,
            stream: None,
            profiling: false,
            cancel: CancelToken::new(),
            profiles: Vec::new(),
            planned: None,
        })
    }

    pub fn settings(&self) -> &EngineSettings {
        &self.settings
    }

    /// A handle on the loaded model, which keeps it loaded after this engine
    /// is dropped: a later engine with the same folder, precision, device and
    /// kernel path then shares it instead of loading the weights again
    /// (`engine::model_registry`).
    pub fn model_handle(&self) -> ModelHandle {
        ModelHandle::new(&self.model_key, &self.model)
    }

    /// The attention and mask kernels the model runs with (resolved from the
    /// `attention` setting at load), with a note for each kernel that failed
    /// its check there.
    pub fn kernel_choice(&self) -> &crate::model::attention_check::KernelChoice {
        self.model.kernel_choice()
    }

    /// The precision of the CPU's large products in the loaded model (bf16 for
    /// `precision=bf16` where the processor has AVX512_BF16).
    pub fn cpu_products(&self) -> crate::layers::products::CpuProducts {
        self.model.cpu_products()
    }

    /// Output size for an input frame size: exactly `scale` times larger.
    pub fn output_size(&self, width: u32, height: u32) -> Option<(u32, u32)> {
        Some((
            width.checked_mul(self.settings.scale)?,
            height.checked_mul(self.settings.scale)?,
        ))
    }

    /// The memory estimate for a stream of `width x height` input frames run
    /// whole (`engine::memory`); `plan` gives the one of the tiles it would run in.
    pub fn memory_estimate(&self, width: u32, height: u32) -> Result<MemoryEstimate, EngineError> {
        let geometry = Geometry::new(width, height, self.settings.scale)?;
        Ok(memory::estimate(
            &memory::ModelShape::of(&self.model),
            geometry.padded_width,
            geometry.padded_height,
            self.settings.kv_ratio as usize,
        ))
    }

    /// How a stream of `width x height` input frames would run now: whole frames
    /// or tiles (the `tile_size` setting, or the largest tiles that fit in the
    /// memory budget, `EngineSettings::max_memory`), with its estimate; or
    /// `EngineError::TooLarge` with the figures. Nothing is kept: `plan_stream`
    /// makes the plan streams run.
    pub fn plan(&self, width: u32, height: u32) -> Result<TilePlan, EngineError> {
        self.plan_geometry(&Geometry::new(width, height, self.settings.scale)?)
    }

    /// Plans the streams of `width x height` input frames and keeps the plan:
    /// every stream of that size runs exactly it (after a `reset` too) until
    /// another size is planned or the settings change. Call it once the
    /// previous stream is finished, so that the budget read (available or
    /// free device memory) no longer counts that stream. A stream of a size
    /// not planned is planned when its first frame arrives.
    pub fn plan_stream(&mut self, width: u32, height: u32) -> Result<&TilePlan, EngineError> {
        let geometry = Geometry::new(width, height, self.settings.scale)?;
        let plan = self.plan_geometry(&geometry)?;
        Ok(&self.planned.insert((geometry, plan)).1)
    }

    /// The sizes of the loaded model the memory model reads.
    pub fn model_shape(&self) -> memory::ModelShape {
        memory::ModelShape::of(&self.model)
    }

    /// Checks that a stream of `width x height` input frames fits in the memory
    /// budget, tiled if need be (`plan`); returns the estimate of the plan.
    pub fn check_size(&self, width: u32, height: u32) -> Result<MemoryEstimate, EngineError> {
        self.plan(width, height).map(|plan| plan.estimate)
    }

    fn plan_geometry(&self, geometry: &Geometry) -> Result<TilePlan, EngineError> {
        let budget = match self.settings.max_memory {
            Some(bytes) => Some(bytes),
            None if self.model.device().is_cpu() => memory::available_memory(),
            None => memory::device_free_memory(self.model.device()),
        };
        tiles::plan(
            &memory::ModelShape::of(&self.model),
            geometry,
            &self.settings,
            budget,
        )
    }

    /// Takes one frame; returns the upscaled frames that became ready, in input order,
    /// each with its tag. A frame of a new size first finishes the current stream.
    pub fn push(&mut self, frame: RgbFrame, tag: T) -> Result<Vec<(RgbFrame, T)>, EngineError> {
        frame.validate()?;
        let geometry = Geometry::new(frame.width, frame.height, self.settings.scale)?;
        let same_stream = self
            .stream
            .as_ref()
            .is_some_and(|s| s.geometry() == geometry);
        let mut out = Vec::new();
        let mut layout = TileLayout::WHOLE;
        if !same_stream {
            // Refused before the current stream is finished: its frames stay held
            // and `finish` still returns them.
            layout = match &self.planned {
                Some((planned, plan)) if *planned == geometry => plan.layout,
                _ => {
                    let plan = self.plan_geometry(&geometry)?;
                    self.planned.insert((geometry, plan)).1.layout
                }
            };
            out = self.finish()?;
        }
        let stream = match &mut self.stream {
            Some(stream) => stream,
            None => {
                let mut stream = Stream::new(
                    self.model.as_ref(),
                    &self.settings,
                    geometry,
                    layout,
                    &self.cancel,
                )?;
                stream.set_profiling(self.profiling);
                self.stream.insert(stream)
            }
        };
        match stream.push(&frame, tag, self.model.as_ref(), self.noise.as_mut()) {
            Ok(ready) => {
                out.extend(ready);
                Ok(out)
            }
            Err(e) => {
                self.stream = None;
                Err(e)
            }
        }
    }

    /// End of stream: returns every frame still pending, in order. The engine then
    /// accepts a new stream.
    pub fn finish(&mut self) -> Result<Vec<(RgbFrame, T)>, EngineError> {
        match self.stream.take() {
            Some(mut stream) => {
                let out = stream.finish(self.model.as_ref(), self.noise.as_mut());
                self.profiles.extend(stream.take_profiles());
                drop(stream);
                // an ended stream's blocks are not held while the engine idles
                crate::release_kept_blocks();
                out
            }
            None => Ok(Vec::new()),
        }
    }

    /// Records where each chunk's time goes (see [`ChunkProfile`]); off by default.
    /// Applies to the current stream as well.
    pub fn set_profiling(&mut self, on: bool) {
        self.profiling = on;
        if let Some(stream) = &mut self.stream {
            stream.set_profiling(on);
        }
    }

    /// Profiles of the chunks run since the last call, in order.
    pub fn take_profiles(&mut self) -> Vec<ChunkProfile> {
        let mut out = std::mem::take(&mut self.profiles);
        if let Some(stream) = &mut self.stream {
            out.extend(stream.take_profiles());
        }
        out
    }

    /// A handle that stops the chunk in progress from another thread: the model
    /// checks it between DiT blocks and decoder stages, and `push` or `finish`
    /// then returns `EngineError::Cancelled` and drops the stream. The token
    /// stays cancelled (every later chunk stops at once) until it is cleared.
    pub fn cancel_token(&self) -> CancelToken {
        self.cancel.clone()
    }

    /// The device the model runs on.
    pub fn device(&self) -> &candle_core::Device {
        self.model.device()
    }

    /// Flush or seek: drops the pending frames and the stream state; the next frame
    /// starts a new stream, exactly as on a new engine.
    pub fn reset(&mut self) {
        self.stream = None;
        crate::release_kept_blocks();
    }

    /// New settings. Pending frames are dropped (call `finish` first to keep them).
    /// The weights are reloaded only when the folder, precision or device change.
    /// On error the engine keeps its previous settings.
    pub fn reconfigure(&mut self, settings: EngineSettings) -> Result<(), EngineError> {
        settings.validate()?;
        let model_key = ModelKey::of(&settings)?;
        if model_key != self.model_key {
            self.model = model_registry::shared_model(&model_key)?;
            self.model_key = model_key;
        }
        if !self.noise_injected {
            self.noise = Box::new(SeededNoise::with_offset(
                settings.seed,
                settings.noise_offset,
            ));
        }
        self.settings = settings;
        self.stream = None;
        self.planned = None;
        Ok(())
    }

    /// The model sequences the current stream runs (one per tile; 0 without a
    /// stream).
    pub fn stream_tiles(&self) -> usize {
        self.stream.as_ref().map_or(0, Stream::tile_count)
    }

    /// Frames received and not yet returned.
    pub fn pending_frames(&self) -> usize {
        self.stream.as_ref().map_or(0, Stream::pending)
    }

    /// Frames the current stream has received since it started (0 without a
    /// stream): where the stream is in the chunk schedule.
    pub fn stream_frames(&self) -> usize {
        self.stream.as_ref().map_or(0, Stream::received)
    }

    /// Frames the current stream still needs before its next chunk runs,
    /// counting the next one pushed: `FIRST_CHUNK_INPUT` before a stream's
    /// first frame, then down to 1 before each chunk (`model::schedule`).
    pub fn frames_to_next_chunk(&self) -> usize {
        self.stream
            .as_ref()
            .map_or(FIRST_CHUNK_INPUT, Stream::frames_to_next_chunk)
    }
}
