//! One stream: frames of one size, the model's temporal state (one sequence per
//! tile, `engine::tiles`), the window of pre-upscaled frames the next chunk needs
//! and the tags of the frames not yet output.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::layers::shape_log::{ConvShape, MatmulShape};
use crate::model::profile::{Stage, StageTimes};
use crate::model::schedule::{
    LATENT_CHANNELS, chunk_lq_span, chunk_noise_frames, chunk_output_span, chunks_for,
};
use crate::model::{CancelToken, ChunkTrace};
use crate::pixels::bicubic::BicubicResizer;
use crate::pixels::frames::{pad_frame_rgb, tensor_to_rgb};

use super::chunk_model::ChunkModel;
use super::geometry::Geometry;
use super::noise::NoiseSource;
use super::sequences::Sequences;
use super::tiles::TileLayout;
use super::{EngineError, EngineSettings, RgbFrame};

/// Where one chunk's time went, for benchmarks (`Engine::set_profiling`).
#[derive(Debug, Clone, Default)]
pub struct ChunkProfile {
    pub chunk: usize,
    /// Frames the chunk output.
    pub frames: usize,
    /// Per stage; the pre-upscale of the frames the chunk waited for included.
    pub times: StageTimes,
    /// Wall time of the chunk, its pre-upscales included.
    pub total: Duration,
    /// Shapes of the DiT's matrix products and the decoder's convolutions.
    pub dit_matmuls: Vec<MatmulShape>,
    pub decoder_convs: Vec<ConvShape>,
}

pub struct Stream<T, M: ChunkModel> {
    /// Record a `ChunkProfile` per chunk.
    profiling: bool,
    profiles: Vec<ChunkProfile>,
    /// Time spent on frames since the last chunk (pre-upscale, padding).
    frame_times: StageTimes,
    geometry: Geometry,
    /// The pre-upscale to the output size, prepared once for the stream's size.
    resizer: BicubicResizer,
    /// One model sequence per tile of the padded frame (one tile: whole frames).
    sequences: Sequences<M::State>,
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

impl<T, M: ChunkModel> Stream<T, M> {
    pub fn new(
        model: &M,
        settings: &EngineSettings,
        geometry: Geometry,
        layout: TileLayout,
        cancel: &CancelToken,
    ) -> Result<Self, EngineError> {
        let sequences = Sequences::new(model, settings, geometry, layout, cancel)?;
        let resizer = BicubicResizer::new(
            geometry.in_width,
            geometry.in_height,
            geometry.out_width,
            geometry.out_height,
        )
        .map_err(|e| {
            EngineError::model(
                format!(
                    "starting a stream of {}x{} frames",
                    geometry.in_width, geometry.in_height
                ),
                e,
            )
        })?;
        Ok(Self {
            profiling: false,
            profiles: Vec::new(),
            frame_times: StageTimes::default(),
            geometry,
            resizer,
            sequences,
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

    /// The model sequences this stream runs, one per tile.
    pub fn tile_count(&self) -> usize {
        self.sequences.len()
    }

    pub fn set_profiling(&mut self, on: bool) {
        self.profiling = on;
    }

    /// The profiles of the chunks run since the last call.
    pub fn take_profiles(&mut self) -> Vec<ChunkProfile> {
        std::mem::take(&mut self.profiles)
    }

    /// Frames received and not yet output.
    pub fn pending(&self) -> usize {
        self.tags.len()
    }

    /// Frames received so far.
    pub fn received(&self) -> usize {
        self.received
    }

    /// Frames still to receive before the next chunk runs (at least 1: a chunk
    /// runs as soon as its last frame arrives).
    pub fn frames_to_next_chunk(&self) -> usize {
        chunk_lq_span(self.next_chunk).end - self.received
    }

    /// Takes one frame of this stream's size; returns the frames whose chunk could run.
    pub fn push(
        &mut self,
        frame: &RgbFrame,
        tag: T,
        model: &M,
        noise: &mut dyn NoiseSource,
    ) -> Result<Vec<(RgbFrame, T)>, EngineError> {
        let g = self.geometry;
        let context = || format!("pre-upscaling frame {}", self.received);
        let started = Instant::now();
        let upscaled = self
            .resizer
            .resize(&frame.data)
            .map_err(|e| EngineError::model(context(), e))?;
        let upscaled_at = Instant::now();
        let padded = pad_frame_rgb(
            &upscaled,
            g.out_width,
            g.out_height,
            g.padded_width,
            g.padded_height,
        )
        .map_err(|e| EngineError::model(context(), e))?;
        if self.profiling {
            self.frame_times
                .add(Stage::PreUpscale, upscaled_at - started);
            self.frame_times
                .add(Stage::Conversions, upscaled_at.elapsed());
        }
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
        model: &M,
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
        model: &M,
        noise: &mut dyn NoiseSource,
    ) -> Result<Vec<(RgbFrame, T)>, EngineError> {
        let k = self.next_chunk;
        let g = self.geometry;
        let context =
            |what: &str| format!("chunk {k} ({}x{} frames): {what}", g.in_width, g.in_height);
        let model_error = |what: &str, e| EngineError::model(context(what), e);

        let chunk_start = Instant::now();
        let mut trace = self.profiling.then(ChunkTrace::profiling);
        let lq_frames = lq_frames(&self.window, self.window_start, self.received, k)?;
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
        let span = chunk_output_span(k);
        // The output frames, each `[1, 3, H, W]`.
        let decoded = self.sequences.run_chunk(
            model,
            &lq_frames,
            &noise,
            span.len(),
            trace.as_mut(),
            &context,
        )?;
        let output_start = Instant::now();
        drop(lq_frames);

        let mut out = Vec::new();
        for (slot, index) in span.enumerate() {
            // frames past the real input are drain copies: never output
            if index >= self.received {
                break;
            }
            debug_assert_eq!(index, self.emitted);
            let Some(tag) = self.tags.pop_front() else {
                break;
            };
            // One frame at a time, cropped to the output size before it leaves
            // the tensor (on the model's device): the host converts only the
            // frame's own pixels, once.
            let data = decoded[slot]
                .narrow(2, 0, g.out_height)
                .and_then(|t| t.narrow(3, 0, g.out_width))
                .and_then(|t| tensor_to_rgb(&t))
                .map_err(|e| model_error("converting the output", e))?
                .pop()
                .unwrap_or_default();
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
        if let Some(trace) = trace {
            // the pushes' pre-upscales and padding since the last chunk, then
            // the chunk's own stages
            let mut times = std::mem::take(&mut self.frame_times);
            let frame_work = times.get(Stage::PreUpscale) + times.get(Stage::Conversions);
            times.merge(&trace.times);
            times.add(Stage::Conversions, output_start.elapsed());
            self.profiles.push(ChunkProfile {
                chunk: k,
                frames: out.len(),
                total: frame_work + chunk_start.elapsed(),
                times,
                dit_matmuls: trace.dit.matmuls,
                decoder_convs: trace.decoder_convs,
            });
        }
        self.next_chunk += 1;
        self.drop_frames_before(chunk_lq_span(self.next_chunk).start);
        Ok(out)
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

/// The padded frames of chunk `k`'s LQ span from the `window` of frames
/// `window_start..received`; indices past the input read the last frame (the
/// end-of-stream extension).
fn lq_frames(
    window: &VecDeque<Vec<u8>>,
    window_start: usize,
    received: usize,
    k: usize,
) -> Result<Vec<&[u8]>, EngineError> {
    let last = received.checked_sub(1).ok_or_else(|| {
        EngineError::InvalidFrame(format!("chunk {k} asked for before any frame arrived"))
    })?;
    chunk_lq_span(k)
        .map(|i| {
            i.min(last)
                .checked_sub(window_start)
                .and_then(|slot| window.get(slot))
                .map(Vec::as_slice)
                .ok_or_else(|| {
                    EngineError::InvalidFrame(format!(
                        "chunk {k} needs frame {i}, no longer held (window starts at {window_start})"
                    ))
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use candle_core::{Device, Result, Tensor};

    use super::*;
    use crate::engine::SeededNoise;
    use crate::engine::tiles::TileLayout;
    use crate::model::SequenceConfig;
    use crate::model::schedule::{FIRST_CHUNK_INPUT, FIRST_CHUNK_OUTPUT};
    use crate::pixels::bicubic::resize_rgb;

    /// A stand-in model whose output frames are its LQ input frames (output frame i
    /// comes from LQ frame i, as in the real model); it checks every input shape and
    /// keeps the last LQ tensor it saw.
    struct EchoModel {
        device: Device,
        last_lq: RefCell<Option<Tensor>>,
        /// Sequences started.
        sequences: RefCell<usize>,
        /// The decoder tiling of the last sequence started.
        decoder_tiling: RefCell<Option<crate::model::tcdecoder::DecoderTiling>>,
        /// Output the first noise channel of the first latent frame, upsampled to
        /// pixels, instead of the LQ frames.
        show_noise: bool,
    }

    struct EchoState {
        config: SequenceConfig,
        chunk: usize,
        /// `move_state` calls: with parking, odd while a chunk runs (moved to
        /// the model's device before it, back to the host after it).
        moves: usize,
        /// Whether a chunk ran while `moves` was even.
        ran_parked: bool,
    }

    impl ChunkModel for EchoModel {
        type State = EchoState;

        fn device(&self) -> &Device {
            &self.device
        }

        fn new_sequence(&self, config: &SequenceConfig) -> Result<EchoState> {
            *self.sequences.borrow_mut() += 1;
            *self.decoder_tiling.borrow_mut() = config.decoder_tiling;
            Ok(EchoState {
                config: config.clone(),
                chunk: 0,
                moves: 0,
                ran_parked: false,
            })
        }

        fn move_state(&self, state: &mut EchoState, _: &Device) -> Result<()> {
            state.moves += 1;
            Ok(())
        }

        fn run_chunk(
            &self,
            state: &mut EchoState,
            lq: &Tensor,
            noise: &Tensor,
            _: Option<&mut crate::model::ChunkTrace>,
        ) -> Result<Tensor> {
            let k = state.chunk;
            let (h, w) = (state.config.height, state.config.width);
            if lq.dims() != [chunk_lq_span(k).len(), 3, h, w] {
                candle_core::bail!("chunk {k}: lq {:?}", lq.dims());
            }
            let f = chunk_noise_frames(k).len();
            if noise.dims() != [1, LATENT_CHANNELS, f, h / 8, w / 8] {
                candle_core::bail!("chunk {k}: noise {:?}", noise.dims());
            }
            state.chunk += 1;
            state.ran_parked |= state.moves.is_multiple_of(2);
            *self.last_lq.borrow_mut() = Some(lq.clone());
            let frames = chunk_output_span(k).len();
            if self.show_noise {
                let plane = noise.narrow(1, 0, 1)?.narrow(2, 0, 1)?.squeeze(2)?;
                let pixels = plane.upsample_nearest2d(h, w)?.tanh()?;
                return pixels.broadcast_as((frames, 3, h, w))?.contiguous();
            }
            lq.narrow(0, 0, frames)
        }
    }

    fn echo() -> EchoModel {
        EchoModel {
            device: Device::Cpu,
            last_lq: RefCell::new(None),
            sequences: RefCell::new(0),
            decoder_tiling: RefCell::new(None),
            show_noise: false,
        }
    }

    fn frame(width: u32, height: u32, index: usize) -> RgbFrame {
        let data = (0..width as usize * height as usize * 3)
            .map(|i| ((i * 37 + index * 101) % 251) as u8)
            .collect();
        RgbFrame {
            width,
            height,
            data,
        }
    }

    /// Pushes `frames` tagged with their index, then finishes: every output.
    fn run_frames(
        s: &mut Stream<usize, EchoModel>,
        frames: &[RgbFrame],
        model: &EchoModel,
        noise: &mut SeededNoise,
    ) -> Vec<(RgbFrame, usize)> {
        let mut out = Vec::new();
        for (i, f) in frames.iter().enumerate() {
            out.extend(s.push(f, i, model, noise).unwrap());
        }
        out.extend(s.finish(model, noise).unwrap());
        out
    }

    fn stream(model: &EchoModel, w: u32, h: u32, scale: u32) -> Stream<usize, EchoModel> {
        let settings = EngineSettings {
            scale,
            ..EngineSettings::default()
        };
        Stream::new(
            model,
            &settings,
            Geometry::new(w, h, scale).unwrap(),
            TileLayout::WHOLE,
            &CancelToken::new(),
        )
        .unwrap()
    }

    fn tiled_stream(
        model: &EchoModel,
        (w, h, scale): (u32, u32, u32),
        tile: usize,
        overlap: usize,
    ) -> Stream<usize, EchoModel> {
        let settings = EngineSettings {
            scale,
            ..EngineSettings::default()
        };
        let layout = TileLayout {
            tile: Some(tile),
            overlap,
            decoder: None,
            park: false,
        };
        Stream::new(
            model,
            &settings,
            Geometry::new(w, h, scale).unwrap(),
            layout,
            &CancelToken::new(),
        )
        .unwrap()
    }

    #[test]
    fn schedule_counts_tags_and_bounded_window() {
        let model = echo();
        let mut noise = SeededNoise::new(0);
        for n in [1, 2, 7, 21, 24, 25, 26, 33, 100] {
            let mut s = stream(&model, 5, 3, 4);
            let mut out = Vec::new();
            for i in 0..n {
                let ready = s.push(&frame(5, 3, i), i, &model, &mut noise).unwrap();
                let received = i + 1;
                let due = if received < FIRST_CHUNK_INPUT {
                    0
                } else {
                    FIRST_CHUNK_OUTPUT + (received - FIRST_CHUNK_INPUT) / 8 * 8
                };
                out.extend(ready);
                assert_eq!(out.len(), due, "n={n} i={i}");
                assert_eq!(s.pending(), received - due);
                assert!(
                    s.window.len() <= FIRST_CHUNK_INPUT,
                    "n={n}: {}",
                    s.window.len()
                );
            }
            out.extend(s.finish(&model, &mut noise).unwrap());
            let tags: Vec<usize> = out.iter().map(|(_, t)| *t).collect();
            assert_eq!(tags, (0..n).collect::<Vec<_>>(), "n={n}");
            assert_eq!(s.pending(), 0);
            // finishing twice adds nothing
            assert!(s.finish(&model, &mut noise).unwrap().is_empty());
        }
    }

    #[test]
    fn output_is_the_upscaled_input_cropped_back() {
        let model = echo();
        let mut noise = SeededNoise::new(0);
        for (w, h, scale, n) in [
            (1, 1, 4, 2),
            (17, 9, 4, 30),
            (100, 75, 3, 3),
            (40, 33, 2, 27),
        ] {
            let mut s = stream(&model, w, h, scale);
            let frames: Vec<RgbFrame> = (0..n).map(|i| frame(w, h, i)).collect();
            let out = run_frames(&mut s, &frames, &model, &mut noise);
            assert_eq!(out.len(), n);
            let (ow, oh) = ((w * scale) as usize, (h * scale) as usize);
            for ((got, i), src) in out.iter().zip(&frames) {
                assert_eq!((got.width as usize, got.height as usize), (ow, oh));
                let up = resize_rgb(&src.data, w as usize, h as usize, ow, oh).unwrap();
                assert!(got.data == up, "{w}x{h} x{scale}: frame {i} differs");
            }
        }
    }

    #[test]
    fn drain_extends_with_copies_of_the_last_frame() {
        let model = echo();
        let mut noise = SeededNoise::new(0);
        // 23 frames: chunk 1 (LQ 21..33) runs at the drain with frames 21, 22 and then
        // 10 copies of frame 22
        let mut s = stream(&model, 8, 8, 4);
        for i in 0..23 {
            assert!(
                s.push(&frame(8, 8, i), i, &model, &mut noise)
                    .unwrap()
                    .is_empty()
            );
        }
        let out = s.finish(&model, &mut noise).unwrap();
        assert_eq!(out.len(), 23);
        let lq = model.last_lq.borrow().clone().unwrap();
        let lq_frame =
            |i: usize| -> Vec<f32> { lq.get(i).unwrap().flatten_all().unwrap().to_vec1().unwrap() };
        assert_eq!(lq.dim(0).unwrap(), 12);
        let last_real = lq_frame(1);
        assert!(lq_frame(0) != last_real, "frames 21 and 22 must differ");
        for copy in 2..12 {
            assert!(
                lq_frame(copy) == last_real,
                "LQ frame {} is not a copy of frame 22",
                21 + copy
            );
        }
    }

    #[test]
    fn a_model_error_is_reported_with_the_chunk() {
        struct Failing;
        impl ChunkModel for Failing {
            type State = ();
            fn device(&self) -> &Device {
                &Device::Cpu
            }
            fn new_sequence(&self, _: &SequenceConfig) -> Result<()> {
                Ok(())
            }
            fn move_state(&self, _: &mut (), _: &Device) -> Result<()> {
                Ok(())
            }
            fn run_chunk(
                &self,
                _: &mut (),
                _: &Tensor,
                _: &Tensor,
                _: Option<&mut crate::model::ChunkTrace>,
            ) -> Result<Tensor> {
                candle_core::bail!("out of memory")
            }
        }
        let settings = EngineSettings::default();
        let mut s: Stream<(), Failing> = Stream::new(
            &Failing,
            &settings,
            Geometry::new(4, 4, 2).unwrap(),
            TileLayout::WHOLE,
            &CancelToken::new(),
        )
        .unwrap();
        s.push(&frame(4, 4, 0), (), &Failing, &mut SeededNoise::new(0))
            .unwrap();
        let err = s
            .finish(&Failing, &mut SeededNoise::new(0))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("chunk 0") && err.contains("out of memory"),
            "{err}"
        );
    }

    #[test]
    fn tiles_are_separate_sequences_blended_back_into_the_frame() {
        // 100x75 x3 -> 300x225, padded 384x256: tiles of 128 overlapping by 48
        // (stride 80): 5 columns, 3 rows
        let model = echo();
        let mut noise = SeededNoise::new(0);
        for (size, tile, overlap, sequences, n) in [
            ((100, 75, 3), 128, 48, 15, 30),
            ((40, 33, 4), 128, 0, 4, 26),
            ((40, 33, 4), 256, 64, 1, 3),
        ] {
            let (w, h, scale) = size;
            let mut s = tiled_stream(&model, size, tile, overlap);
            assert_eq!(s.tile_count(), sequences, "{size:?} tile {tile}");
            let frames: Vec<RgbFrame> = (0..n).map(|i| frame(w, h, i)).collect();
            let out = run_frames(&mut s, &frames, &model, &mut noise);
            assert_eq!(out.len(), n);
            // every sequence ran every chunk, on its own tile-sized frames
            assert_eq!(*model.sequences.borrow(), sequences);
            model.sequences.replace(0);
            let (ow, oh) = ((w * scale) as usize, (h * scale) as usize);
            for ((got, i), src) in out.iter().zip(&frames) {
                assert_eq!((got.width as usize, got.height as usize), (ow, oh));
                let up = resize_rgb(&src.data, w as usize, h as usize, ow, oh).unwrap();
                // a blend of crops of one image is that image, within rounding
                let worst = got
                    .data
                    .iter()
                    .zip(&up)
                    .map(|(a, b)| a.abs_diff(*b))
                    .max()
                    .unwrap();
                assert!(worst <= 1, "{size:?} tile {tile}: frame {i} off by {worst}");
            }
        }
    }

    /// With parking on (a layout that parks: a model on a GPU), every tile's
    /// state is moved to the model's device before each of its chunks and back
    /// after it; a layout that does not park and a whole-frame stream never
    /// move it.
    #[test]
    fn tiles_park_their_state_between_turns() {
        let model = echo();
        let mut noise = SeededNoise::new(0);
        let resident = tiled_stream(&model, (40, 33, 4), 128, 0);
        assert!(
            resident
                .sequences
                .tiles()
                .iter()
                .all(|t| t.parking.is_none()),
            "a layout that does not park parks nothing"
        );
        let mut s: Stream<usize, EchoModel> = Stream::new(
            &model,
            &EngineSettings::default(),
            Geometry::new(40, 33, 4).unwrap(),
            TileLayout {
                tile: Some(128),
                overlap: 0,
                decoder: None,
                park: true,
            },
            &CancelToken::new(),
        )
        .unwrap();
        assert_eq!(s.tile_count(), 4);
        assert!(
            s.sequences
                .tiles()
                .iter()
                .all(|t| matches!(t.parking, Some(Device::Cpu)))
        );
        let mut out = 0;
        for i in 0..34 {
            out += s
                .push(&frame(40, 33, i), i, &model, &mut noise)
                .unwrap()
                .len();
        }
        out += s.finish(&model, &mut noise).unwrap().len();
        assert_eq!(out, 34);
        for t in s.sequences.tiles() {
            assert_eq!(t.state.chunk, 3);
            assert_eq!(t.state.moves, 2 * 3, "moved in and out around each chunk");
            assert!(!t.state.ran_parked, "a chunk ran on a parked state");
        }
        let mut whole = stream(&model, 40, 33, 4);
        for i in 0..30 {
            whole
                .push(&frame(40, 33, i), i, &model, &mut noise)
                .unwrap();
        }
        whole.finish(&model, &mut noise).unwrap();
        assert!(whole.sequences.tiles()[0].parking.is_none());
        assert!(whole.sequences.tiles().iter().all(|t| t.state.moves == 0));
    }

    #[test]
    fn each_tile_gets_its_crop_of_the_noise() {
        // the model outputs its noise (upsampled to pixels) instead of the frames:
        // the blended tiles must be the whole frame's noise, so every tile read
        // the noise under it
        let model = EchoModel {
            show_noise: true,
            ..echo()
        };
        let run = |tile: Option<usize>| -> Vec<Vec<u8>> {
            let mut noise = SeededNoise::new(7);
            let settings = EngineSettings::default();
            let layout = TileLayout {
                tile,
                overlap: 40,
                decoder: None,
                park: false,
            };
            let mut s: Stream<usize, EchoModel> = Stream::new(
                &model,
                &settings,
                Geometry::new(64, 64, 4).unwrap(),
                layout,
                &CancelToken::new(),
            )
            .unwrap();
            let frames: Vec<RgbFrame> = (0..25).map(|i| frame(64, 64, i)).collect();
            let out = run_frames(&mut s, &frames, &model, &mut noise);
            out.into_iter().map(|(f, _)| f.data).collect()
        };
        let whole = run(None);
        let tiled = run(Some(128));
        assert_eq!(whole.len(), 25);
        for (i, (a, b)) in whole.iter().zip(&tiled).enumerate() {
            let worst = a.iter().zip(b).map(|(x, y)| x.abs_diff(*y)).max().unwrap();
            assert!(worst <= 1, "frame {i}: tiled noise off by {worst}");
        }
    }

    #[test]
    fn decoder_tiles_reach_every_sequence() {
        use crate::model::tcdecoder::DecoderTiling;
        let model = echo();
        let decoder = DecoderTiling {
            tile: 128,
            overlap: 32,
        };
        let settings = EngineSettings::default();
        for (tile, sequences) in [(None, 1), (Some(128), 4)] {
            model.sequences.replace(0);
            let layout = TileLayout {
                tile,
                overlap: 0,
                decoder: Some(decoder),
                park: false,
            };
            let s: Stream<usize, EchoModel> = Stream::new(
                &model,
                &settings,
                Geometry::new(64, 64, 4).unwrap(),
                layout,
                &CancelToken::new(),
            )
            .unwrap();
            assert_eq!(s.tile_count(), sequences);
            assert_eq!(*model.sequences.borrow(), sequences);
            assert_eq!(*model.decoder_tiling.borrow(), Some(decoder));
        }
    }
}
