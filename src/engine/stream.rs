//! One stream: frames of one size, the model's temporal state, the window of
//! pre-upscaled frames the next chunk needs and the tags of the frames not yet output.

use std::collections::VecDeque;

use crate::model::bicubic::BicubicResizer;
use crate::model::frames::{crop_frame_rgb, pad_frame_rgb, rgb_to_tensor, tensor_to_rgb};
use crate::model::schedule::{
    LATENT_CHANNELS, chunk_lq_span, chunk_noise_frames, chunk_output_span, chunks_for,
};
use crate::model::{FlashVsrModel, StreamConfig, StreamState};

use super::noise::NoiseSource;
use super::{EngineError, EngineSettings, RgbFrame};

/// The frame side lengths the model works on are multiples of this (the sparse
/// attention's 8x8-token windows of 16x16-pixel tokens).
pub const PAD_MULTIPLE: usize = 128;

/// Sizes of one stream's frames: input, upscaled (the output) and padded (the model's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub in_width: usize,
    pub in_height: usize,
    pub out_width: usize,
    pub out_height: usize,
    pub padded_width: usize,
    pub padded_height: usize,
}

impl Geometry {
    pub fn new(in_width: u32, in_height: u32, scale: u32) -> Result<Self, EngineError> {
        let too_large = || {
            EngineError::InvalidFrame(format!(
                "{in_width}x{in_height} frames are too large to upscale x{scale}"
            ))
        };
        let out_width = (in_width as usize)
            .checked_mul(scale as usize)
            .ok_or_else(too_large)?;
        let out_height = (in_height as usize)
            .checked_mul(scale as usize)
            .ok_or_else(too_large)?;
        let padded_width = out_width.div_ceil(PAD_MULTIPLE) * PAD_MULTIPLE;
        let padded_height = out_height.div_ceil(PAD_MULTIPLE) * PAD_MULTIPLE;
        padded_width
            .checked_mul(padded_height)
            .and_then(|n| n.checked_mul(3))
            .ok_or_else(too_large)?;
        Ok(Self {
            in_width: in_width as usize,
            in_height: in_height as usize,
            out_width,
            out_height,
            padded_width,
            padded_height,
        })
    }
}

pub struct Stream<T> {
    geometry: Geometry,
    /// The pre-upscale to the output size, prepared once for the stream's size.
    resizer: BicubicResizer,
    state: StreamState,
    /// Frames received so far (real ones; drain copies are never stored).
    received: usize,
    /// Frames output so far; `tags[0]` belongs to frame `emitted`.
    emitted: usize,
    next_chunk: usize,
    /// Padded, pre-upscaled frames `window_start..received`, packed RGB.
    window: VecDeque<Vec<u8>>,
    window_start: usize,
    tags: VecDeque<T>,
}

impl<T> Stream<T> {
    pub fn new(
        model: &FlashVsrModel,
        settings: &EngineSettings,
        geometry: Geometry,
    ) -> Result<Self, EngineError> {
        let config = StreamConfig {
            height: geometry.padded_height,
            width: geometry.padded_width,
            variant: settings.model_version.lq_variant(),
            sparse_ratio: settings.sparse_ratio,
            kv_ratio: settings.kv_ratio,
            local_range: settings.local_range as usize,
            color_fix: settings.color_fix,
        };
        let context = format!(
            "starting a stream of {}x{} frames",
            geometry.in_width, geometry.in_height
        );
        let resizer = BicubicResizer::new(
            geometry.in_width,
            geometry.in_height,
            geometry.out_width,
            geometry.out_height,
        )
        .map_err(|e| EngineError::model(context.clone(), e))?;
        let state = model
            .new_stream(&config)
            .map_err(|e| EngineError::model(context, e))?;
        Ok(Self {
            geometry,
            resizer,
            state,
            received: 0,
            emitted: 0,
            next_chunk: 0,
            window: VecDeque::new(),
            window_start: 0,
            tags: VecDeque::new(),
        })
    }

    pub fn geometry(&self) -> Geometry {
        self.geometry
    }

    /// Frames received and not yet output.
    pub fn pending(&self) -> usize {
        self.tags.len()
    }

    /// Takes one frame of this stream's size; returns the frames whose chunk could run.
    pub fn push(
        &mut self,
        frame: &RgbFrame,
        tag: T,
        model: &FlashVsrModel,
        noise: &mut dyn NoiseSource,
    ) -> Result<Vec<(RgbFrame, T)>, EngineError> {
        let g = self.geometry;
        let padded = self
            .resizer
            .resize(&frame.data)
            .and_then(|upscaled| {
                pad_frame_rgb(
                    &upscaled,
                    g.out_width,
                    g.out_height,
                    g.padded_width,
                    g.padded_height,
                )
            })
            .map_err(|e| EngineError::model(format!("pre-upscaling frame {}", self.received), e))?;
        self.window.push_back(padded);
        self.tags.push_back(tag);
        self.received += 1;
        let mut out = Vec::new();
        while self.received >= chunk_lq_span(self.next_chunk).end {
            out.extend(self.run_chunk(model, noise)?);
        }
        Ok(out)
    }

    /// End of stream: runs the chunks still needed to output every received frame,
    /// feeding copies of the last frame where the input ran out.
    pub fn finish(
        &mut self,
        model: &FlashVsrModel,
        noise: &mut dyn NoiseSource,
    ) -> Result<Vec<(RgbFrame, T)>, EngineError> {
        let mut out = Vec::new();
        while self.next_chunk < chunks_for(self.received) {
            out.extend(self.run_chunk(model, noise)?);
        }
        Ok(out)
    }

    fn run_chunk(
        &mut self,
        model: &FlashVsrModel,
        noise: &mut dyn NoiseSource,
    ) -> Result<Vec<(RgbFrame, T)>, EngineError> {
        let k = self.next_chunk;
        let g = self.geometry;
        let context =
            |what: &str| format!("chunk {k} ({}x{} frames): {what}", g.in_width, g.in_height);
        let model_error = |what: &str, e| EngineError::model(context(what), e);

        let lq_frames = self.lq_frames(k)?;
        let lq = rgb_to_tensor(&lq_frames, g.padded_width, g.padded_height, model.device())
            .map_err(|e| model_error("building the LQ tensor", e))?;
        let noise_shape = [
            1,
            LATENT_CHANNELS,
            chunk_noise_frames(k).len(),
            g.padded_height / 8,
            g.padded_width / 8,
        ];
        let noise = noise
            .chunk_noise(k, noise_shape)
            .and_then(|n| n.to_device(model.device()))
            .map_err(|e| model_error("drawing the noise", e))?;
        let decoded = model
            .run_chunk(&mut self.state, &lq, &noise)
            .map_err(|e| model_error("running the model", e))?;
        let span = chunk_output_span(k);
        let expected = [span.len(), 3, g.padded_height, g.padded_width];
        if decoded.dims() != expected {
            return Err(EngineError::model(
                context("checking the model output"),
                candle_core::Error::Msg(format!(
                    "the model returned {:?}, expected {expected:?}",
                    decoded.dims()
                )),
            ));
        }
        let frames =
            tensor_to_rgb(&decoded).map_err(|e| model_error("converting the output", e))?;

        let mut out = Vec::new();
        for (index, padded) in span.zip(frames) {
            // frames past the real input are drain copies: never output
            if index >= self.received {
                break;
            }
            debug_assert_eq!(index, self.emitted);
            let Some(tag) = self.tags.pop_front() else {
                break;
            };
            let data = crop_frame_rgb(
                &padded,
                g.padded_width,
                g.padded_height,
                g.out_width,
                g.out_height,
            )
            .map_err(|e| model_error("cropping the output", e))?;
            out.push((
                RgbFrame {
                    width: g.out_width as u32,
                    height: g.out_height as u32,
                    data,
                },
                tag,
            ));
            self.emitted += 1;
        }
        self.next_chunk += 1;
        self.drop_frames_before(chunk_lq_span(self.next_chunk).start);
        Ok(out)
    }

    /// The padded frames of chunk `k`'s LQ span; indices past the input read the last
    /// frame (the end-of-stream extension).
    fn lq_frames(&self, k: usize) -> Result<Vec<&[u8]>, EngineError> {
        let last = self.received.checked_sub(1).ok_or_else(|| {
            EngineError::InvalidFrame(format!("chunk {k} asked for before any frame arrived"))
        })?;
        chunk_lq_span(k)
            .map(|i| {
                i.min(last)
                    .checked_sub(self.window_start)
                    .and_then(|slot| self.window.get(slot))
                    .map(Vec::as_slice)
                    .ok_or_else(|| {
                        EngineError::InvalidFrame(format!(
                            "chunk {k} needs frame {i}, no longer held (window starts at {})",
                            self.window_start
                        ))
                    })
            })
            .collect()
    }

    /// Forgets frames no later chunk reads; the last received frame is always kept
    /// because the end-of-stream extension copies it.
    fn drop_frames_before(&mut self, index: usize) {
        let keep_from = index.min(self.received.saturating_sub(1));
        while self.window_start < keep_from && !self.window.is_empty() {
            self.window.pop_front();
            self.window_start += 1;
        }
    }
}
