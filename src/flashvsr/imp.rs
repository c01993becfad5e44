//! The `flashvsr` element: a plain `gst::Element` with one sink and one src pad,
//! and three threads (docs/element.md, "Threading"):
//! - the sink pad's (upstream's) converts each frame to RGB and queues it, with
//!   the serialized events, in arrival order; it waits only while a chunk's worth
//!   of frames is queued;
//! - the model thread feeds the engine, which holds frames until it can run a
//!   chunk, and queues the frames it returns (with their input's timestamps) and
//!   the events, in order; with `late-policy=bicubic` a frame the model would
//!   finish after its deadline is queued as its bicubic upscale instead (`late`);
//! - the src pad task pushes them downstream; its flow errors reach the chain
//!   function.
//!
//! A flush or PAUSED->READY cancels the chunk in progress (the model checks
//! between DiT blocks and decoder stages); FLUSH_STOP resets the engine and
//! restarts the queues. The LATENCY query adds the frames held plus the time a
//! chunk takes.

use std::path::PathBuf;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use parking_lot::Mutex;

use super::caps::{self, Direction};
use super::convert::FrameConverter;
use super::late::{self, ChunkForecast, LatePolicy};
use super::queue::{Answer, WorkQueue};
use super::state::{
    FrameTag, Item, Negotiated, NewCaps, ProcessError, State, Work, engine_error_text,
    survives_flush,
};
use super::tiles;
use crate::engine::{
    Engine, EngineError, EngineSettings, KV_RATIO_RANGE, LATENCY_FRAMES, LOCAL_RANGE_RANGE,
    RgbFrame, SCALE_RANGE, SPARSE_RATIO_RANGE, TILE_OVERLAP_RANGE, TILE_SIZE_RANGE, memory,
};
use crate::model::CancelToken;
use crate::model::schedule::CHUNK_STRIDE;

pub(super) static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "flashvsr",
        gst::DebugColorFlags::empty(),
        Some("FlashVSR video super-resolution"),
    )
});

/// Environment variable read for the weights folder when `model-dir` is unset.
pub const MODEL_DIR_ENV: &str = "FLASHVSR_MODEL_DIR";

/// Frames the sink pad may queue for the model thread before upstream waits: one
/// chunk.
const QUEUE_FRAMES: usize = CHUNK_STRIDE;

/// Output frames the model thread may queue ahead of downstream before it waits:
/// what a first chunk and a drain return. A synchronising sink takes each frame
/// only when it is due; the model meanwhile works on the next chunk.
const OUTPUT_FRAMES: usize = LATENCY_FRAMES as usize + CHUNK_STRIDE;

/// Property values as set by the application; copied out of the mutex before use and
/// applied at the next READY->PAUSED change. Defaults, ranges and the enums'
/// spellings all come from the engine (`EngineSettings::default()`, its `*_RANGE`
/// constants and its `Choice` tables).
#[derive(Debug, Clone, Default)]
struct Settings {
    /// `None`: read `$FLASHVSR_MODEL_DIR` at start.
    model_dir: Option<PathBuf>,
    /// Everything else; its `model_dir` is filled in at start.
    engine: EngineSettings,
    late_policy: LatePolicy,
}

/// The sink pad's side of the negotiated caps: how to read input frames.
struct SinkSide {
    in_info: gst_video::VideoInfo,
    converter: FrameConverter,
}

/// What the pipeline tells the element about time: the latency it configured,
/// upstream's, and downstream's QoS.
#[derive(Debug, Default, Clone, Copy)]
struct Timing {
    /// From the LATENCY event the sinks send upstream.
    pipeline_latency: Option<gst::ClockTime>,
    /// From the last LATENCY query answered.
    upstream_latency: gst::ClockTime,
    live: bool,
    /// Running time before which downstream wants no frame (QoS), in ns.
    qos_earliest: Option<u64>,
    qos_proportion: f64,
}

pub struct FlashVsr {
    sinkpad: gst::Pad,
    srcpad: gst::Pad,
    settings: Mutex<Settings>,
    /// The model thread's; see `state::State`.
    state: Mutex<Option<State>>,
    /// Frames and serialized events on their way to the model thread.
    input: WorkQueue<Work>,
    /// Buffers, events and errors on their way downstream (the src pad task).
    output: WorkQueue<Item>,
    model_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Whether downstream took the last event the src pad task pushed.
    last_event_taken: AtomicBool,
    /// Queued work kept over a flush (caps, sticky events), from FLUSH_START to
    /// FLUSH_STOP.
    kept: Mutex<Vec<Work>>,
    sink_side: Mutex<Option<SinkSide>>,
    /// The running engine's cancel token: stops a chunk from another thread.
    cancel: Mutex<Option<CancelToken>>,
    timing: Mutex<Timing>,
    /// The scale of the running engine, 0 when stopped: caps queries must use the
    /// scale the stream runs at, not a property value set since. Read without the
    /// state lock, which a running chunk holds.
    active_scale: AtomicU32,
    /// Longest time one engine call took in this run, in nanoseconds (added latency).
    processing_ns: AtomicU64,
    /// Processing time last reported in a LATENCY answer, in nanoseconds.
    reported_processing_ns: AtomicU64,
}

impl FlashVsr {
    fn scale(&self) -> u32 {
        match self.active_scale.load(Ordering::Acquire) {
            0 => self.settings.lock().engine.scale,
            s => s,
        }
    }

    /// READY->PAUSED: loads the weights into a new engine.
    fn start(&self) -> Result<(), gst::ErrorMessage> {
        let settings = self.settings.lock().clone();
        let model_dir = match settings.model_dir.clone() {
            Some(dir) => dir,
            None => match std::env::var_os(MODEL_DIR_ENV) {
                Some(dir) if !dir.is_empty() => PathBuf::from(dir),
                _ => {
                    return Err(gst::error_msg!(
                        gst::ResourceError::NotFound,
                        (
                            "No FlashVSR weights folder: set the model-dir property (or the {} environment variable) to the folder holding diffusion_pytorch_model_streaming_dmd.safetensors, LQ_proj_in.ckpt, TCDecoder.ckpt and posi_prompt.pth",
                            MODEL_DIR_ENV
                        )
                    ));
                }
            },
        };
        if !model_dir.is_dir() {
            return Err(gst::error_msg!(
                gst::ResourceError::NotFound,
                (
                    "FlashVSR weights folder '{}' does not exist or is not a folder: set model-dir to the folder holding the FlashVSR weights (diffusion_pytorch_model_streaming_dmd.safetensors, LQ_proj_in.ckpt, TCDecoder.ckpt, posi_prompt.pth)",
                    model_dir.display()
                )
            ));
        }

        gst::info!(
            CAT,
            imp = self,
            "Loading FlashVSR weights from {}",
            model_dir.display()
        );
        let started = Instant::now();
        let engine = Engine::new(EngineSettings {
            model_dir: model_dir.clone(),
            ..settings.engine.clone()
        })
        .map_err(|err| start_error(&settings, &model_dir, err))?;
        gst::info!(CAT, imp = self, "Weights loaded in {:?}", started.elapsed());

        self.active_scale
            .store(settings.engine.scale, Ordering::Release);
        self.processing_ns.store(0, Ordering::Relaxed);
        self.reported_processing_ns.store(0, Ordering::Relaxed);
        *self.cancel.lock() = Some(engine.cancel_token());
        *self.timing.lock() = Timing::default();
        *self.sink_side.lock() = None;
        self.kept.lock().clear();
        *self.state.lock() = Some(State::new(engine, settings.late_policy));
        self.output.start(Vec::new());
        self.input.start(Vec::new());
        if let Err(err) = self.start_model_thread() {
            *self.state.lock() = None;
            return Err(gst::error_msg!(
                gst::CoreError::Thread,
                ("Could not start the FlashVSR model thread: {}", err)
            ));
        }
        Ok(())
    }

    /// Before PAUSED->READY deactivates the pads: stops the chunk in progress and
    /// wakes the sink pad, the model thread and the output task, so that none
    /// holds a pad's lock.
    fn interrupt(&self) {
        self.input.close();
        self.output.flush();
        if let Some(token) = self.cancel.lock().as_ref() {
            token.cancel();
        }
    }

    fn stop(&self) {
        if let Err(err) = self.srcpad.stop_task() {
            gst::warning!(CAT, imp = self, "Could not stop the output task: {}", err);
        }
        self.input.close();
        if let Some(thread) = self.model_thread.lock().take()
            && thread.join().is_err()
        {
            gst::error!(CAT, imp = self, "The model thread panicked");
        }
        *self.state.lock() = None;
        *self.cancel.lock() = None;
        *self.sink_side.lock() = None;
        self.kept.lock().clear();
        self.active_scale.store(0, Ordering::Release);
    }

    /// Starts the thread that runs the model (READY->PAUSED).
    fn start_model_thread(&self) -> std::io::Result<()> {
        let element = self.obj().clone();
        let thread = std::thread::Builder::new()
            .name("flashvsr-model".into())
            .spawn(move || element.imp().model_loop())?;
        *self.model_thread.lock() = Some(thread);
        Ok(())
    }

    /// Starts the src pad task that pushes the model thread's output downstream.
    fn start_output_task(&self) -> Result<(), glib::BoolError> {
        let element = self.obj().downgrade();
        self.srcpad.start_task(move || {
            if let Some(element) = element.upgrade() {
                element.imp().output_iteration();
            }
        })
    }

    fn sink_chain(&self, buffer: gst::Buffer) -> Result<gst::FlowSuccess, gst::FlowError> {
        gst::trace!(CAT, imp = self, "Received {:?}", buffer);
        self.input.flow()?;
        let read = {
            let side = self.sink_side.lock();
            let Some(side) = side.as_ref() else {
                gst::element_imp_error!(
                    self,
                    gst::CoreError::Negotiation,
                    ("Received a buffer before any caps")
                );
                return Err(gst::FlowError::NotNegotiated);
            };
            side.converter.input_to_rgb(&buffer).map_err(|err| {
                let info = &side.in_info;
                Work::Unreadable {
                    message: format!(
                        "Could not read a {} {}x{} input frame",
                        info.format().to_str(),
                        info.width(),
                        info.height()
                    ),
                    details: format!(
                        "{err} (buffer of {} bytes, the caps need {})",
                        buffer.size(),
                        info.size()
                    ),
                }
            })
        };
        match read {
            Ok(frame) => {
                let tag = FrameTag::of(&buffer);
                self.input.push(Work::Frame { frame, tag }, true)?;
                self.input.flow()
            }
            Err(unreadable) => {
                // The held frames go out before the error, as for any error.
                let seq = self.input.push(unreadable, false)?;
                self.input.wait_for(seq);
                Err(gst::FlowError::Error)
            }
        }
    }

    /// The model thread: handles queued work until PAUSED->READY.
    fn model_loop(&self) {
        gst::debug!(CAT, imp = self, "Model thread started");
        while let Some((epoch, seq, work)) = self.input.pop_through_flush(Work::is_frame) {
            let mut guard = self.state.lock();
            // Popped before a flush that has been handled since: stale.
            if self.input.epoch() != epoch {
                continue;
            }
            let Some(state) = guard.as_mut() else {
                continue;
            };
            let items = self.handle(state, seq, work);
            // Queued under the state lock, so that a flush-stop (which takes it)
            // never sees output of the frames it dropped arrive after it.
            for item in items {
                let bounded = item.is_buffer();
                if self.output.push(item, bounded).is_err() {
                    break;
                }
            }
        }
        gst::debug!(CAT, imp = self, "Model thread stopped");
    }

    /// One turn of the src pad task: pushes the next output item downstream.
    fn output_iteration(&self) {
        let Some((_, item)) = self.output.pop(Item::is_buffer) else {
            gst::debug!(CAT, imp = self, "Flushing: pausing the output task");
            let _ = self.srcpad.pause_task();
            return;
        };
        match item {
            Item::Buffer(buffer) => {
                gst::trace!(CAT, imp = self, "Pushing {:?}", buffer);
                if let Err(err) = self.srcpad.push(buffer) {
                    gst::debug!(CAT, imp = self, "Pausing the output task: {:?}", err);
                    self.input.fail(err);
                    self.output.fail(err);
                    let _ = self.srcpad.pause_task();
                }
            }
            Item::Event(event) => {
                gst::debug!(CAT, imp = self, "Forwarding {:?}", event.type_());
                let taken = self.srcpad.push_event(event);
                if !taken {
                    gst::debug!(CAT, imp = self, "Downstream refused an event");
                }
                self.last_event_taken.store(taken, Ordering::Relaxed);
            }
            Item::Error(message) => self.post_error_message(message),
            Item::Answer(seq, answer) => {
                let answer =
                    answer.unwrap_or_else(|| self.last_event_taken.load(Ordering::Relaxed));
                self.input.finish(seq, answer);
            }
        }
    }

    /// Handles one item of work; returns what goes downstream, in order.
    fn handle(&self, state: &mut State, seq: u64, work: Work) -> Vec<Item> {
        match work {
            Work::Frame { frame, tag } => self.handle_frame(state, frame, tag),
            Work::Caps(new) => {
                let NewCaps {
                    caps,
                    out_caps,
                    in_info,
                    converter,
                } = *new;
                let (mut items, answer) =
                    self.handle_caps(state, &caps, out_caps, in_info, converter);
                items.push(Item::Answer(seq, answer));
                items
            }
            Work::Refuse(error) => {
                let mut items = self.refuse_caps(state, error);
                items.push(Item::Answer(seq, Some(false)));
                items
            }
            Work::Unreadable { message, details } => {
                let mut items = self.drained_or_logged(state);
                items.push(Item::Error(gst::error_msg!(
                    gst::StreamError::Format,
                    ("{}", message),
                    ["{}", details]
                )));
                items.push(Item::Answer(seq, Some(false)));
                items
            }
            Work::Event(event) => self.handle_event(state, event),
        }
    }

    fn handle_frame(&self, state: &mut State, frame: RgbFrame, tag: FrameTag) -> Vec<Item> {
        if state.negotiated.is_none() {
            self.input.fail(gst::FlowError::NotNegotiated);
            return Vec::new();
        }
        // DISCONT: frames are missing before this one. The model's caches hold the
        // motion of the frames before the gap, so the stream is drained (every
        // held frame still gets the model) and a new one starts here.
        let mut drained = Vec::new();
        if tag.flags.contains(gst::BufferFlags::DISCONT) && state.stream_frames > 0 {
            gst::debug!(CAT, imp = self, "DISCONT at {:?}: draining", tag.pts);
            match self.drain(state) {
                Ok(items) => drained = items,
                Err(err) => {
                    let error = self.stream_error(err);
                    if error.is_some() {
                        self.input.fail(gst::FlowError::Error);
                    }
                    return error.map(Item::Error).into_iter().collect();
                }
            }
        }
        drained.extend(self.process_frame(state, frame, tag));
        drained
    }

    /// Gives one frame to the model, or its bicubic upscale when the model would
    /// be late; returns what goes downstream.
    fn process_frame(&self, state: &mut State, frame: RgbFrame, tag: FrameTag) -> Vec<Item> {
        let mut took = None;
        let mut degraded = Vec::new();
        let outputs = if state.late_policy == LatePolicy::Bicubic && self.is_late(state, &tag) {
            let result = state.degrade(Some((frame, tag)));
            if let Ok(outputs) = &result {
                degraded = outputs.iter().map(|(_, tag)| *tag).collect();
            }
            result
        } else {
            let started = Instant::now();
            match state.push(frame, tag) {
                Ok(outputs) => {
                    took = (!outputs.is_empty()).then(|| started.elapsed());
                    Ok(outputs)
                }
                Err(EngineError::Cancelled) => return Vec::new(),
                Err(err) => Err(ProcessError::Engine(err)),
            }
        };
        match outputs.and_then(|outputs| state.items_for(outputs)) {
            Ok(items) => {
                if let Some(took) = took {
                    self.note_processing_time(took);
                }
                self.post_qos(state, &degraded);
                items
            }
            Err(err) => {
                // the engine keeps the frames of a stream it refused to replace
                let mut items = self.drained_or_logged(state);
                items.extend(self.stream_error(err).map(Item::Error));
                self.input.fail(gst::FlowError::Error);
                items
            }
        }
    }

    /// Whether the model would output the frames it holds, or `tag`'s frame if
    /// none, after they are due downstream (or downstream's QoS already skips
    /// this frame): then they go out as their bicubic upscale.
    fn is_late(&self, state: &State, tag: &FrameTag) -> bool {
        let obj = self.obj();
        let (Some(clock), Some(base_time)) = (obj.clock(), obj.base_time()) else {
            return false;
        };
        let running_time = |pts: Option<gst::ClockTime>| {
            pts.and_then(|pts| state.segment.to_running_time(pts))
                .map(gst::ClockTime::nseconds)
        };
        let Some(this) = running_time(tag.pts) else {
            return false;
        };
        let frame_ns = self.frame_duration(state, tag);
        let timing = *self.timing.lock();
        if let Some(earliest) = timing.qos_earliest
            && this.saturating_add(frame_ns) <= earliest
        {
            gst::debug!(CAT, imp = self, "QoS: downstream skips frame at {}", this);
            return true;
        }
        let oldest = state
            .held_inputs
            .front()
            .and_then(|(_, t)| running_time(t.pts))
            .unwrap_or(this);
        let now = clock.time().nseconds();
        let base = base_time.nseconds();
        let taken = state.stream_frames + 1;
        let ahead = late::frames_for_chunk(taken) - taken;
        let inputs_ready = if ahead as usize <= self.input.waiting() {
            now
        } else {
            base.saturating_add(this)
                .saturating_add(ahead.saturating_mul(frame_ns))
                .saturating_add(timing.upstream_latency.nseconds())
        };
        let forecast = ChunkForecast {
            now,
            inputs_ready,
            chunk_time: self.chunk_time(state, tag),
            oldest_due: base
                .saturating_add(oldest)
                .saturating_add(self.pipeline_latency(&timing).nseconds()),
        };
        let late = forecast.misses_deadline();
        if late {
            gst::debug!(CAT, imp = self, "The model would be late: {:?}", forecast);
        }
        late
    }

    /// The latency the sinks render with: the pipeline's, once its LATENCY event
    /// has arrived, else what this element and upstream report.
    fn pipeline_latency(&self, timing: &Timing) -> gst::ClockTime {
        timing.pipeline_latency.unwrap_or_else(|| {
            timing
                .upstream_latency
                .saturating_add(self.reported_latency())
        })
    }

    fn frame_duration(&self, state: &State, tag: &FrameTag) -> u64 {
        let from_rate = state.negotiated.as_ref().and_then(|n| {
            let fps = n.in_info.fps();
            (fps.numer() > 0 && fps.denom() > 0).then(|| {
                gst::ClockTime::SECOND
                    .mul_div_ceil(fps.denom() as u64, fps.numer() as u64)
                    .map_or(0, gst::ClockTime::nseconds)
            })
        });
        from_rate
            .or(tag.duration.map(gst::ClockTime::nseconds))
            .unwrap_or(0)
    }

    /// How long the next chunk will take: the longest measured, or until one is
    /// measured the `CHUNK_STRIDE` frame durations the latency counts.
    fn chunk_time(&self, state: &State, tag: &FrameTag) -> u64 {
        match self.processing_ns.load(Ordering::Relaxed) {
            0 => self
                .frame_duration(state, tag)
                .saturating_mul(CHUNK_STRIDE as u64),
            ns => ns,
        }
    }

    /// Posts a QoS message per degraded frame, as `GstVideoDecoder` does per
    /// dropped frame ("dropped" counts the degraded ones).
    fn post_qos(&self, state: &State, degraded: &[FrameTag]) {
        let obj = self.obj();
        let timing = *self.timing.lock();
        let now_running = obj.current_running_time();
        for tag in degraded {
            let running_time = tag.pts.and_then(|p| state.segment.to_running_time(p));
            let jitter = match (now_running, running_time) {
                (Some(now), Some(rt)) => now.nseconds() as i64 - rt.nseconds() as i64,
                _ => 0,
            };
            let message = gst::message::Qos::builder(timing.live)
                .running_time(running_time)
                .stream_time(tag.pts.and_then(|p| state.segment.to_stream_time(p)))
                .timestamp(tag.pts)
                .duration(tag.duration)
                .values(jitter, timing.qos_proportion, 0)
                .stats(
                    gst::format::Buffers::from_u64(state.processed),
                    gst::format::Buffers::from_u64(state.degraded),
                )
                .src(&*obj)
                .build();
            let _ = obj.post_message(message);
        }
    }

    /// The element error for `err`; none for a cancelled chunk (a flush).
    fn stream_error(&self, err: ProcessError) -> Option<gst::ErrorMessage> {
        match err {
            ProcessError::Convert(err) => Some(gst::error_msg!(
                gst::StreamError::Format,
                ("Could not convert an output frame"),
                ["{}", err]
            )),
            ProcessError::Engine(EngineError::Cancelled) => {
                gst::debug!(CAT, imp = self, "Chunk cancelled by a flush");
                None
            }
            ProcessError::Engine(err) => {
                let (message, details) = engine_error_text(&err);
                Some(gst::error_msg!(
                    gst::StreamError::Failed,
                    ("{}", message),
                    ["{}", details]
                ))
            }
        }
    }

    /// Outputs everything held (the model's frames, or their bicubic upscale when
    /// `late-policy=bicubic` and the model would be late), then the held events.
    fn drain(&self, state: &mut State) -> Result<Vec<Item>, ProcessError> {
        let bicubic = state.late_policy == LatePolicy::Bicubic
            && !state.held_inputs.is_empty()
            && self.drain_is_late(state);
        let degraded: Vec<FrameTag> = if bicubic {
            state.held_inputs.iter().map(|(_, t)| *t).collect()
        } else {
            Vec::new()
        };
        // Not timed: a drain runs up to two chunks at the end of a stream, and the
        // latency counts one chunk (docs/element.md, "Latency").
        let items = state.drain(bicubic)?;
        if bicubic {
            self.post_qos(state, &degraded);
        }
        Ok(items)
    }

    /// Whether finishing the model stream now would output its oldest frame late.
    fn drain_is_late(&self, state: &State) -> bool {
        let Some((_, tag)) = state.held_inputs.front() else {
            return false;
        };
        let obj = self.obj();
        let (Some(clock), Some(base_time)) = (obj.clock(), obj.base_time()) else {
            return false;
        };
        let Some(oldest) = tag.pts.and_then(|p| state.segment.to_running_time(p)) else {
            return false;
        };
        let timing = *self.timing.lock();
        let now = clock.time().nseconds();
        // the held frames plus the padding `finish` adds take this many chunks
        let chunks = (state.held_inputs.len() as u64)
            .div_ceil(CHUNK_STRIDE as u64)
            .max(1);
        ChunkForecast {
            now,
            inputs_ready: now,
            chunk_time: self.chunk_time(state, tag).saturating_mul(chunks),
            oldest_due: base_time
                .nseconds()
                .saturating_add(oldest.nseconds())
                .saturating_add(self.pipeline_latency(&timing).nseconds()),
        }
        .misses_deadline()
    }

    /// Before an error ends the stream: what a drain gives back. A drain that
    /// failed itself is only logged, the error at hand is posted.
    fn drained_or_logged(&self, state: &mut State) -> Vec<Item> {
        match self.drain(state) {
            Ok(items) => items,
            Err(ProcessError::Engine(err)) => {
                gst::warning!(CAT, imp = self, "Could not drain the held frames: {}", err);
                Vec::new()
            }
            Err(ProcessError::Convert(err)) => {
                gst::warning!(
                    CAT,
                    imp = self,
                    "Could not convert the held frames: {}",
                    err
                );
                Vec::new()
            }
        }
    }

    /// Refused caps end the stream: outputs the frames of the previous caps
    /// first, then `error` (if any).
    fn refuse_caps(&self, state: &mut State, error: Option<gst::ErrorMessage>) -> Vec<Item> {
        let mut items = Vec::new();
        if state.negotiated.is_some() {
            items = self.drained_or_logged(state);
            state.negotiate(None);
        }
        items.extend(error.map(Item::Error));
        items
    }

    /// Records how long a chunk took; when it exceeds what the last LATENCY answer
    /// included, asks the pipeline to query the latency again.
    fn note_processing_time(&self, took: Duration) {
        gst::debug!(CAT, imp = self, "Chunk processed in {:?}", took);
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let previous = self.processing_ns.fetch_max(ns, Ordering::Relaxed);
        let reported = self.reported_processing_ns.load(Ordering::Relaxed);
        if ns > previous && ns > reported + reported / 10 + 1_000_000 {
            gst::debug!(
                CAT,
                imp = self,
                "A chunk took {:?}, more than the latency allowed for",
                took
            );
            self.post_latency_message();
        }
    }

    fn post_latency_message(&self) {
        let obj = self.obj();
        let _ = obj.post_message(gst::message::Latency::builder().src(&*obj).build());
    }

    /// A serialized event the model thread reached: EOS, segment and stream
    /// changes drain the model first; the others wait behind the frames before
    /// them.
    fn handle_event(&self, state: &mut State, event: gst::Event) -> Vec<Item> {
        use gst::EventView;
        match event.view() {
            EventView::Eos(_)
            | EventView::SegmentDone(_)
            | EventView::StreamStart(_)
            | EventView::Segment(_) => {
                let mut items = match self.drain(state) {
                    Ok(items) => items,
                    Err(err) => {
                        let error = self.stream_error(err);
                        if error.is_some() {
                            self.input.fail(gst::FlowError::Error);
                        }
                        return error.map(Item::Error).into_iter().collect();
                    }
                };
                if let EventView::Segment(s) = event.view()
                    && let Some(segment) = s.segment().downcast_ref::<gst::ClockTime>()
                {
                    state.segment = segment.clone();
                }
                items.push(Item::Event(event));
                items
            }
            _ => self.forward_in_order(state, event),
        }
    }

    /// Sends a serialized event behind the frames that arrived before it.
    fn forward_in_order(&self, state: &mut State, event: gst::Event) -> Vec<Item> {
        if state.frames_out < state.frames_in || !state.held_events.is_empty() {
            gst::debug!(
                CAT,
                imp = self,
                "Holding {:?} behind {} frames",
                event.type_(),
                state.frames_in - state.frames_out
            );
            let after = state.frames_in;
            state.held_events.push_back((after, event));
            return Vec::new();
        }
        vec![Item::Event(event)]
    }

    /// FLUSH_START: stops the chunk in progress and the output task; nothing is
    /// pushed after the flush.
    fn flush_start(&self, event: gst::Event) -> bool {
        let kept: Vec<Work> = self
            .input
            .flush()
            .into_iter()
            .filter(Work::survives_flush)
            .collect();
        self.kept.lock().extend(kept);
        self.output.flush();
        if let Some(token) = self.cancel.lock().as_ref() {
            token.cancel();
        }
        let forwarded = self.srcpad.push_event(event);
        if let Err(err) = self.srcpad.pause_task() {
            gst::debug!(CAT, imp = self, "Could not pause the output task: {}", err);
        }
        gst::debug!(CAT, imp = self, "Flush started");
        forwarded
    }

    /// FLUSH_STOP: drops every held frame (waiting for the model thread's item in
    /// progress, which the cancel token cuts short) and restarts the queues with
    /// the caps and sticky events that must survive.
    fn flush_stop(&self, event: gst::Event) -> bool {
        let _ = self.srcpad.pause_task();
        let mut kept: Vec<Work> = self
            .input
            .flush()
            .into_iter()
            .filter(Work::survives_flush)
            .collect();
        self.output.flush();
        let mut guard = self.state.lock();
        let held = guard.as_mut().map(State::reset).unwrap_or_default();
        let mut requeue: Vec<Work> = held.into_iter().map(Work::Event).collect();
        requeue.append(&mut self.kept.lock());
        requeue.append(&mut kept);
        if let Some(token) = self.cancel.lock().as_ref() {
            token.clear();
        }
        {
            let mut timing = self.timing.lock();
            timing.qos_earliest = None;
            timing.qos_proportion = 1.0;
        }
        gst::debug!(CAT, imp = self, "Flushed the frames held");
        let forwarded = self.srcpad.push_event(event);
        let active = guard.is_some();
        if active {
            self.output.start(Vec::new());
            self.input.start(requeue);
        }
        drop(guard);
        if active && let Err(err) = self.start_output_task() {
            gst::error!(
                CAT,
                imp = self,
                "Could not restart the output task: {}",
                err
            );
            return false;
        }
        forwarded
    }

    /// New caps on the sink pad: refuses what cannot be converted here, and hands
    /// the rest to the model thread, which drains the old caps' frames, checks the
    /// memory budget and sends the upscaled caps downstream. Waits for the answer.
    fn set_caps(&self, caps: &gst::Caps) -> bool {
        let work = match self.check_caps(caps) {
            Some((in_info, out_caps, converter)) => Work::Caps(Box::new(NewCaps {
                caps: caps.clone(),
                out_caps,
                in_info,
                converter,
            })),
            None => Work::Refuse(None),
        };
        let sink_side = match &work {
            Work::Caps(new) => self.sink_converter(&new.in_info, caps),
            _ => None,
        };
        let answer = match self.input.push(work, false) {
            Ok(seq) => self.input.wait_for(seq),
            Err(_) => Answer::Dropped,
        };
        // Dropped by a flush, the caps stay queued for after it (`Work::survives_flush`):
        // the frames that follow them are read with them.
        let keep = matches!(answer, Answer::Done(true) | Answer::Dropped);
        *self.sink_side.lock() = if keep { sink_side } else { None };
        answer == Answer::Done(true)
    }

    /// The converter the sink pad reads frames of `in_info` with.
    fn sink_converter(&self, in_info: &gst_video::VideoInfo, caps: &gst::Caps) -> Option<SinkSide> {
        let out_caps = caps::output_caps(caps, self.scale())?;
        let out_info = gst_video::VideoInfo::from_caps(&out_caps).ok()?;
        let converter = FrameConverter::new(in_info, &out_info).ok()?;
        Some(SinkSide {
            in_info: in_info.clone(),
            converter,
        })
    }

    /// Checks that `caps` are progressive raw video in a supported format whose
    /// upscale fits; returns the input info, the output caps and the converter.
    fn check_caps(
        &self,
        caps: &gst::Caps,
    ) -> Option<(gst_video::VideoInfo, gst::Caps, FrameConverter)> {
        let Ok(in_info) = gst_video::VideoInfo::from_caps(caps) else {
            gst::debug!(
                CAT,
                imp = self,
                "Refusing caps that are not raw video: {}",
                caps
            );
            return None;
        };
        if in_info.interlace_mode() != gst_video::VideoInterlaceMode::Progressive {
            gst::debug!(
                CAT,
                imp = self,
                "Refusing interlaced caps {}: deinterlace first",
                caps
            );
            return None;
        }
        if !caps::FORMATS.contains(&in_info.format()) {
            gst::debug!(
                CAT,
                imp = self,
                "Refusing unsupported format {:?}",
                in_info.format()
            );
            return None;
        }
        let scale = self.scale();
        let Some(out_caps) = caps::output_caps(caps, scale) else {
            gst::debug!(
                CAT,
                imp = self,
                "Refusing caps {}: x{} output exceeds {} pixels a side",
                caps,
                scale,
                caps::MAX_OUTPUT_DIM
            );
            return None;
        };
        let out_info = match gst_video::VideoInfo::from_caps(&out_caps) {
            Ok(info) => info,
            Err(err) => {
                gst::debug!(
                    CAT,
                    imp = self,
                    "Refusing caps {}: output caps {}: {}",
                    caps,
                    out_caps,
                    err
                );
                return None;
            }
        };
        match FrameConverter::new(&in_info, &out_info) {
            Ok(converter) => Some((in_info, out_caps, converter)),
            Err(err) => {
                gst::debug!(
                    CAT,
                    imp = self,
                    "Refusing caps {}: no converter: {}",
                    caps,
                    err
                );
                None
            }
        }
    }

    /// The model thread's side of new caps (see `set_caps`).
    fn handle_caps(
        &self,
        state: &mut State,
        caps: &gst::Caps,
        out_caps: gst::Caps,
        in_info: gst_video::VideoInfo,
        converter: FrameConverter,
    ) -> (Vec<Item>, Option<bool>) {
        if state
            .negotiated
            .as_ref()
            .is_some_and(|s| s.in_info == in_info)
        {
            gst::debug!(CAT, imp = self, "Caps unchanged");
            return (Vec::new(), Some(true));
        }
        // Refused before the old caps' frames are drained: `refuse_caps` outputs
        // them, then the error.
        if let Err(err) = tiles::check_caps(self.obj().upcast_ref(), &state.engine, &in_info) {
            let details = state
                .engine
                .memory_estimate(in_info.width(), in_info.height())
                .map(|e| {
                    format!(
                        "caps {caps}: padded to {}x{}, weights {}, held between chunks {}, peak working set {} ({})",
                        e.padded_width,
                        e.padded_height,
                        memory::human_bytes(e.weights),
                        memory::human_bytes(e.held),
                        memory::human_bytes(e.working),
                        e.peak_stage
                    )
                })
                .unwrap_or_else(|e| e.to_string());
            let (message, _) = engine_error_text(&err);
            let items = self.refuse_caps(
                state,
                Some(gst::error_msg!(
                    gst::CoreError::Negotiation,
                    ("{}", message),
                    ["{}", details]
                )),
            );
            return (items, Some(false));
        }
        let mut items = Vec::new();
        if state.negotiated.is_some() {
            match self.drain(state) {
                Ok(drained) => items = drained,
                Err(err) => {
                    items.extend(self.stream_error(err).map(Item::Error));
                    self.input.fail(gst::FlowError::Error);
                    return (items, Some(false));
                }
            }
        }
        state.negotiate(Some(Negotiated { in_info, converter }));
        gst::info!(CAT, imp = self, "Configured {} -> {}", caps, out_caps);
        items.push(Item::Event(gst::event::Caps::new(&out_caps)));
        // Live pipelines query the latency before any caps: the frames held are only
        // known now.
        self.post_latency_message();
        // answered by whether downstream takes the caps
        (items, None)
    }

    fn sink_event(&self, pad: &gst::Pad, event: gst::Event) -> bool {
        use gst::EventView;
        gst::log!(CAT, obj = pad, "Handling {:?}", event);
        match event.view() {
            EventView::Caps(c) => {
                let caps = c.caps_owned();
                self.set_caps(&caps)
            }
            EventView::FlushStart(_) => self.flush_start(event),
            EventView::FlushStop(_) => self.flush_stop(event),
            _ if event.is_serialized() => {
                // A sticky event refused while flushing is stored on the pad and
                // sent again with the next data; the others are dropped.
                let sticky = survives_flush(&event);
                match self.input.push(Work::Event(event), false) {
                    Ok(_) => true,
                    Err(err) => {
                        gst::debug!(CAT, imp = self, "Serialized event refused: {:?}", err);
                        sticky && err == gst::FlowError::Flushing
                    }
                }
            }
            _ => gst::Pad::event_default(pad, Some(&*self.obj()), event),
        }
    }

    fn src_event(&self, pad: &gst::Pad, event: gst::Event) -> bool {
        use gst::EventView;
        gst::log!(CAT, obj = pad, "Handling {:?}", event);
        match event.view() {
            EventView::Qos(qos) => {
                let (_, proportion, diff, timestamp) = qos.get();
                if let Some(timestamp) = timestamp {
                    let frame_ns = self
                        .sinkpad
                        .current_caps()
                        .and_then(|c| gst_video::VideoInfo::from_caps(&c).ok())
                        .and_then(|info| {
                            let fps = info.fps();
                            (fps.numer() > 0 && fps.denom() > 0).then(|| {
                                gst::ClockTime::SECOND
                                    .mul_div_floor(fps.denom() as u64, fps.numer() as u64)
                                    .map_or(0, gst::ClockTime::nseconds)
                            })
                        })
                        .unwrap_or(0);
                    let mut timing = self.timing.lock();
                    timing.qos_earliest =
                        Some(late::qos_earliest(timestamp.nseconds(), diff, frame_ns));
                    timing.qos_proportion = proportion;
                }
            }
            EventView::Latency(l) => {
                gst::debug!(CAT, imp = self, "Pipeline latency {}", l.latency());
                self.timing.lock().pipeline_latency = Some(l.latency());
            }
            _ => {}
        }
        gst::Pad::event_default(pad, Some(&*self.obj()), event)
    }

    fn sink_query(&self, pad: &gst::Pad, query: &mut gst::QueryRef) -> bool {
        use gst::QueryViewMut;
        match query.view_mut() {
            QueryViewMut::Caps(q) => {
                let caps = self.peer_caps(q.filter(), Direction::Downscale);
                q.set_result(&caps);
                true
            }
            QueryViewMut::Allocation(q) => {
                // Upstream may give us frames with any strides; we map them with
                // their video meta. Never forwarded: downstream buffers are larger.
                q.add_allocation_meta::<gst_video::VideoMeta>(None);
                true
            }
            _ => gst::Pad::query_default(pad, Some(&*self.obj()), query),
        }
    }

    fn src_query(&self, pad: &gst::Pad, query: &mut gst::QueryRef) -> bool {
        use gst::QueryViewMut;
        match query.view_mut() {
            QueryViewMut::Caps(q) => {
                let caps = self.peer_caps(q.filter(), Direction::Upscale);
                q.set_result(&caps);
                true
            }
            QueryViewMut::Latency(q) => {
                let mut upstream = gst::query::Latency::new();
                if !self.sinkpad.peer_query(&mut upstream) {
                    return false;
                }
                let (live, min, max) = upstream.result();
                {
                    let mut timing = self.timing.lock();
                    timing.live = live;
                    timing.upstream_latency = min;
                }
                let added = self.added_latency();
                gst::debug!(
                    CAT,
                    imp = self,
                    "Upstream latency {} - {}, adding {}",
                    min,
                    max.display(),
                    added
                );
                q.set(
                    live,
                    min.saturating_add(added),
                    max.map(|m| m.saturating_add(added)),
                );
                true
            }
            _ => gst::Pad::query_default(pad, Some(&*self.obj()), query),
        }
    }
    /// Caps for one pad: what the other pad's peer can take, mapped through the scale
    /// (`Downscale` answers for the sink pad, `Upscale` for the src pad).
    fn peer_caps(&self, filter: Option<&gst::CapsRef>, direction: Direction) -> gst::Caps {
        let scale = self.scale();
        let (this_pad, other_pad, other_direction) = match direction {
            Direction::Downscale => (&self.sinkpad, &self.srcpad, Direction::Upscale),
            Direction::Upscale => (&self.srcpad, &self.sinkpad, Direction::Downscale),
        };
        let template = this_pad.pad_template_caps();
        let peer_filter = filter.map(|f| caps::transform(f, other_direction, scale));
        let peer = other_pad.peer_query_caps(peer_filter.as_ref());
        let mut result = if peer.is_any() {
            template
        } else {
            caps::transform(&peer, direction, scale)
                .intersect_with_mode(&template, gst::CapsIntersectMode::First)
        };
        if let Some(filter) = filter {
            result = filter.intersect_with_mode(&result, gst::CapsIntersectMode::First);
        }
        gst::log!(CAT, obj = this_pad, "Caps for {:?}: {}", direction, result);
        result
    }

    /// The latency this element adds: the frames held before the first output, plus
    /// the time a chunk takes. Until a chunk has been timed that is the budget of
    /// `CHUNK_STRIDE` frame durations (a slower chunk could not keep up with a live
    /// source anyway); a chunk that took longer raises it.
    fn added_latency(&self) -> gst::ClockTime {
        let (held, processing) = self.latency_terms();
        self.reported_processing_ns
            .store(processing.nseconds(), Ordering::Relaxed);
        held.saturating_add(processing)
    }

    /// What the last LATENCY answer added (the deadlines of `late-policy`
    /// count on it until the pipeline's LATENCY event arrives).
    fn reported_latency(&self) -> gst::ClockTime {
        let (held, _) = self.latency_terms();
        let processing =
            gst::ClockTime::from_nseconds(self.reported_processing_ns.load(Ordering::Relaxed));
        held.saturating_add(processing)
    }

    /// The two terms of the added latency: the frames held, and the time a chunk
    /// takes (measured, or its budget).
    fn latency_terms(&self) -> (gst::ClockTime, gst::ClockTime) {
        let fps = self
            .sinkpad
            .current_caps()
            .and_then(|caps| gst_video::VideoInfo::from_caps(&caps).ok())
            .map(|info| info.fps());
        // Absurd framerates (1/2147483647) overflow: every step saturates at
        // `ClockTime::MAX` rather than wrapping or dropping a term.
        let frames = |n: u64| match fps {
            Some(fps) if fps.numer() > 0 && fps.denom() > 0 => {
                let (numer, denom) = (fps.numer() as u64, fps.denom() as u64);
                n.checked_mul(denom)
                    .and_then(|frames| gst::ClockTime::SECOND.mul_div_ceil(frames, numer))
                    .unwrap_or(gst::ClockTime::MAX)
            }
            _ => gst::ClockTime::ZERO,
        };
        match fps {
            Some(fps) if fps.numer() == 0 => gst::warning!(
                CAT,
                imp = self,
                "Variable framerate: the {} frames held cannot be expressed as latency",
                LATENCY_FRAMES
            ),
            None => gst::debug!(
                CAT,
                imp = self,
                "No caps yet: the frames held are not counted"
            ),
            _ => {}
        }
        let measured = gst::ClockTime::from_nseconds(self.processing_ns.load(Ordering::Relaxed));
        let processing = measured.max(frames(CHUNK_STRIDE as u64));
        (frames(LATENCY_FRAMES), processing)
    }
}

/// The element error for an engine that could not start: names the property at
/// fault, or the folder and file the weights failed in, and what to do.
fn start_error(
    settings: &Settings,
    model_dir: &std::path::Path,
    err: EngineError,
) -> gst::ErrorMessage {
    match err {
        EngineError::InvalidSetting { field, message } => gst::error_msg!(
            gst::LibraryError::Settings,
            (
                "Invalid {} for FlashVSR: {}. Change the {} property",
                field.replace('_', "-"),
                message,
                field.replace('_', "-")
            )
        ),
        // The loader's message names the file and tensor at fault and how to get
        // the weights; add which property holds the folder.
        err => gst::error_msg!(
            gst::LibraryError::Init,
            (
                "Could not start FlashVSR from model-dir '{}' (model-version {}, device {}): {}",
                model_dir.display(),
                settings.engine.model_version,
                settings.engine.device,
                err
            )
        ),
    }
}

#[glib::object_subclass]
impl ObjectSubclass for FlashVsr {
    const NAME: &'static str = "GstFlashVsr";
    type Type = super::FlashVsr;
    type ParentType = gst::Element;

    fn with_class(klass: &Self::Class) -> Self {
        let templ = klass.pad_template("sink");
        let sinkpad = gst::Pad::builder_from_template(&templ.expect("sink pad template"))
            .chain_function(|_pad, parent, buffer| {
                FlashVsr::catch_panic_pad_function(
                    parent,
                    || Err(gst::FlowError::Error),
                    |this| this.sink_chain(buffer),
                )
            })
            .event_function(|pad, parent, event| {
                FlashVsr::catch_panic_pad_function(
                    parent,
                    || false,
                    |this| this.sink_event(pad, event),
                )
            })
            .query_function(|pad, parent, query| {
                FlashVsr::catch_panic_pad_function(
                    parent,
                    || false,
                    |this| this.sink_query(pad, query),
                )
            })
            .build();

        let templ = klass.pad_template("src");
        let srcpad = gst::Pad::builder_from_template(&templ.expect("src pad template"))
            .event_function(|pad, parent, event| {
                FlashVsr::catch_panic_pad_function(
                    parent,
                    || false,
                    |this| this.src_event(pad, event),
                )
            })
            .query_function(|pad, parent, query| {
                FlashVsr::catch_panic_pad_function(
                    parent,
                    || false,
                    |this| this.src_query(pad, query),
                )
            })
            .build();

        Self {
            sinkpad,
            srcpad,
            settings: Mutex::new(Settings::default()),
            state: Mutex::new(None),
            input: WorkQueue::new(QUEUE_FRAMES),
            output: WorkQueue::new(OUTPUT_FRAMES),
            model_thread: Mutex::new(None),
            last_event_taken: AtomicBool::new(true),
            kept: Mutex::new(Vec::new()),
            sink_side: Mutex::new(None),
            cancel: Mutex::new(None),
            timing: Mutex::new(Timing::default()),
            active_scale: AtomicU32::new(0),
            processing_ns: AtomicU64::new(0),
            reported_processing_ns: AtomicU64::new(0),
        }
    }
}

impl ObjectImpl for FlashVsr {
    fn properties() -> &'static [glib::ParamSpec] {
        static PROPERTIES: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
            let defaults = EngineSettings::default();
            vec![
                glib::ParamSpecString::builder("model-dir")
                    .nick("Model folder")
                    .blurb("Folder with the FlashVSR weights (diffusion_pytorch_model_streaming_dmd.safetensors, LQ_proj_in.ckpt, TCDecoder.ckpt, posi_prompt.pth); when unset, $FLASHVSR_MODEL_DIR. Read at READY->PAUSED")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("model-version", defaults.model_version)
                    .nick("Model version")
                    .blurb("FlashVSR release the weights come from (the files look the same). Read at READY->PAUSED")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("scale")
                    .nick("Scale")
                    .blurb("Upscaling factor: output width and height are the input's times this. Read at READY->PAUSED")
                    .minimum(*SCALE_RANGE.start())
                    .maximum(*SCALE_RANGE.end())
                    .default_value(defaults.scale)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("device")
                    .nick("Device")
                    .blurb("Where the network runs: \"cpu\", or \"cuda:N\" in builds with the cuda feature. Read at READY->PAUSED")
                    .default_value(Some(defaults.device.as_str()))
                    .mutable_ready()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("precision", defaults.precision)
                    .nick("Precision")
                    .blurb("Floating-point type the network runs in (bf16/f16 are for GPUs). Read at READY->PAUSED")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("color-fix", defaults.color_fix)
                    .nick("Colour fix")
                    .blurb("Colour correction of the output towards the input. Read at READY->PAUSED")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecDouble::builder("sparse-ratio")
                    .nick("Sparse ratio")
                    .blurb("Share of attention blocks kept by the sparse attention (higher: more blocks, slower). Read at READY->PAUSED")
                    .minimum(*SPARSE_RATIO_RANGE.start())
                    .maximum(*SPARSE_RATIO_RANGE.end())
                    .default_value(defaults.sparse_ratio)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecDouble::builder("kv-ratio")
                    .nick("KV ratio")
                    .blurb("Time windows of past frames kept in the attention cache. Read at READY->PAUSED")
                    .minimum(*KV_RATIO_RANGE.start())
                    .maximum(*KV_RATIO_RANGE.end())
                    .default_value(defaults.kv_ratio)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("local-range")
                    .nick("Local range")
                    .blurb("Width, in 8x8-token blocks, of the neighbourhood each block attends to. Read at READY->PAUSED")
                    .minimum(*LOCAL_RANGE_RANGE.start())
                    .maximum(*LOCAL_RANGE_RANGE.end())
                    .default_value(defaults.local_range)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt64::builder("max-memory")
                    .nick("Memory budget")
                    .blurb("Bytes a stream may use; a size whose estimated need (weights excluded) is larger runs in the largest tiles that fit (when tile-size is 0), or is refused at caps time with an error giving both figures. 0: the memory available when the caps arrive (MemAvailable) on the CPU, no limit on CUDA. Read at READY->PAUSED")
                    .default_value(0)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("tile-size")
                    .nick("Tile size")
                    .blurb("Side, in output pixels, of the square tiles each frame is upscaled in (each tile its own model sequence, blended over the overlap): a multiple of 128. 0: whole frames, or the largest tiles that fit in max-memory when whole frames do not. Read at READY->PAUSED")
                    .minimum(*TILE_SIZE_RANGE.start())
                    .maximum(*TILE_SIZE_RANGE.end())
                    .default_value(defaults.tile_size)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("tile-overlap")
                    .nick("Tile overlap")
                    .blurb("Output pixels neighbouring tiles share and blend over: a multiple of 8, less than the tile size. Read at READY->PAUSED")
                    .minimum(*TILE_OVERLAP_RANGE.start())
                    .maximum(*TILE_OVERLAP_RANGE.end())
                    .default_value(defaults.tile_overlap)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt64::builder("seed")
                    .nick("Seed")
                    .blurb("Seed of the noise the network starts from (same seed, same output). Read at READY->PAUSED")
                    .default_value(defaults.seed)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("late-policy", LatePolicy::default())
                    .nick("Late policy")
                    .blurb("What a frame the model cannot finish before its deadline becomes: \"wait\" (every frame through the model, however late; files) or \"bicubic\" (its bicubic upscale, and the model restarts; live). Read at READY->PAUSED")
                    .mutable_ready()
                    .build(),
            ]
        });
        PROPERTIES.as_ref()
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        let mut settings = self.settings.lock();
        let engine = &mut settings.engine;
        // GObject checks the value's type against the ParamSpec before calling
        // here, so a mismatch is a bug in this file (as in gst-plugins-rs).
        match pspec.name() {
            "model-dir" => {
                settings.model_dir = value
                    .get::<Option<String>>()
                    .expect("type checked upstream")
                    .filter(|s| !s.is_empty())
                    .map(PathBuf::from);
            }
            "model-version" => engine.model_version = value.get().expect("type checked upstream"),
            "scale" => engine.scale = value.get().expect("type checked upstream"),
            "device" => {
                engine.device = value
                    .get::<Option<String>>()
                    .expect("type checked upstream")
                    .unwrap_or_else(|| EngineSettings::default().device);
            }
            "precision" => engine.precision = value.get().expect("type checked upstream"),
            "color-fix" => engine.color_fix = value.get().expect("type checked upstream"),
            "sparse-ratio" => engine.sparse_ratio = value.get().expect("type checked upstream"),
            "kv-ratio" => engine.kv_ratio = value.get().expect("type checked upstream"),
            "local-range" => engine.local_range = value.get().expect("type checked upstream"),
            "seed" => engine.seed = value.get().expect("type checked upstream"),
            "late-policy" => settings.late_policy = value.get().expect("type checked upstream"),
            "max-memory" => {
                let bytes: u64 = value.get().expect("type checked upstream");
                engine.max_memory = (bytes > 0).then_some(bytes);
            }
            "tile-size" => engine.tile_size = value.get().expect("type checked upstream"),
            "tile-overlap" => engine.tile_overlap = value.get().expect("type checked upstream"),
            other => unreachable!("flashvsr has no property {other}"),
        }
        drop(settings);
        // Not the state lock: a chunk may be running under it.
        if self.active_scale.load(Ordering::Acquire) != 0 {
            gst::info!(
                CAT,
                imp = self,
                "{} changed while running: it takes effect at the next READY->PAUSED change",
                pspec.name()
            );
        }
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        let settings = self.settings.lock();
        let engine = &settings.engine;
        match pspec.name() {
            "model-dir" => settings
                .model_dir
                .as_ref()
                .map(|p| p.to_string_lossy().into_owned())
                .to_value(),
            "model-version" => engine.model_version.to_value(),
            "scale" => engine.scale.to_value(),
            "device" => engine.device.to_value(),
            "precision" => engine.precision.to_value(),
            "color-fix" => engine.color_fix.to_value(),
            "sparse-ratio" => engine.sparse_ratio.to_value(),
            "kv-ratio" => engine.kv_ratio.to_value(),
            "local-range" => engine.local_range.to_value(),
            "seed" => engine.seed.to_value(),
            "late-policy" => settings.late_policy.to_value(),
            "max-memory" => engine.max_memory.unwrap_or(0).to_value(),
            "tile-size" => engine.tile_size.to_value(),
            "tile-overlap" => engine.tile_overlap.to_value(),
            other => unreachable!("flashvsr has no property {other}"),
        }
    }

    fn constructed(&self) {
        self.parent_constructed();
        let obj = self.obj();
        for pad in [&self.sinkpad, &self.srcpad] {
            if let Err(err) = obj.add_pad(pad) {
                gst::error!(CAT, imp = self, "Could not add pad {}: {}", pad.name(), err);
            }
        }
    }
}

impl GstObjectImpl for FlashVsr {}

impl ElementImpl for FlashVsr {
    fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
        static ELEMENT_METADATA: LazyLock<gst::subclass::ElementMetadata> = LazyLock::new(|| {
            gst::subclass::ElementMetadata::new(
                "FlashVSR super-resolution",
                "Filter/Effect/Video/Scaler",
                "Upscales video 2-4x with the FlashVSR one-step diffusion network, streaming (holds 25 frames before the first output)",
                "gst-flashvsr developers",
            )
        });
        Some(&*ELEMENT_METADATA)
    }

    fn pad_templates() -> &'static [gst::PadTemplate] {
        static PAD_TEMPLATES: LazyLock<Vec<gst::PadTemplate>> = LazyLock::new(|| {
            let sink = gst::PadTemplate::new(
                "sink",
                gst::PadDirection::Sink,
                gst::PadPresence::Always,
                &caps::sink_template_caps(),
            );
            let src = gst::PadTemplate::new(
                "src",
                gst::PadDirection::Src,
                gst::PadPresence::Always,
                &caps::src_template_caps(),
            );
            // Both are built from fixed, valid arguments; `new` only fails on a
            // name template that does not match the presence.
            sink.into_iter().chain(src).collect()
        });
        PAD_TEMPLATES.as_ref()
    }

    fn change_state(
        &self,
        transition: gst::StateChange,
    ) -> Result<gst::StateChangeSuccess, gst::StateChangeError> {
        gst::trace!(CAT, imp = self, "Changing state {:?}", transition);
        if transition == gst::StateChange::ReadyToPaused
            && let Err(err) = self.start()
        {
            self.post_error_message(err);
            return Err(gst::StateChangeError);
        }
        if transition == gst::StateChange::PausedToReady {
            self.interrupt();
        }
        let result = self.parent_change_state(transition);
        match transition {
            gst::StateChange::PausedToReady => self.stop(),
            gst::StateChange::ReadyToPaused if result.is_err() => self.stop(),
            gst::StateChange::ReadyToPaused => {
                if let Err(err) = self.start_output_task() {
                    gst::element_imp_error!(
                        self,
                        gst::CoreError::Thread,
                        ("Could not start the FlashVSR output task: {}", err)
                    );
                    self.stop();
                    return Err(gst::StateChangeError);
                }
            }
            _ => {}
        }
        result
    }
}
