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
use super::convert::{self, InputConverter, OutputConverter};
use super::late::{self, ChunkForecast, LatePolicy};
use super::queue::{Answer, WorkQueue};
use super::state::{
    FrameTag, Item, Negotiated, NewCaps, ProcessError, State, Work, engine_error_text,
    survives_flush,
};
use crate::engine::{
    Engine, EngineError, EngineSettings, KV_RATIO_RANGE, LATENCY_FRAMES, LOCAL_RANGE_RANGE,
    ModelHandle, RgbFrame, SCALE_RANGE, SPARSE_RATIO_RANGE, TILE_OVERLAP_RANGE, TILE_SIZE_RANGE,
    loaded_models, memory,
};
use crate::model::CancelToken;
use crate::model::schedule::CHUNK_STRIDE;
use crate::weights;

mod events;
mod properties;
mod timing;

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
    converter: InputConverter,
}

/// What the pipeline tells the element about time: the latency it configured,
/// upstream's, and downstream's QoS.
#[derive(Debug, Clone, Copy)]
struct Timing {
    /// From the LATENCY event the sinks send upstream.
    pipeline_latency: Option<gst::ClockTime>,
    /// From the last LATENCY query answered.
    upstream_latency: gst::ClockTime,
    live: bool,
    /// Running time before which downstream wants no frame (QoS), in ns.
    qos_earliest: Option<u64>,
    /// From the last QoS event; 1.0 (downstream keeps up) until one arrives.
    qos_proportion: f64,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            pipeline_latency: None,
            upstream_latency: gst::ClockTime::ZERO,
            live: false,
            qos_earliest: None,
            qos_proportion: 1.0,
        }
    }
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
    /// The model of the last start, kept loaded from PAUSED->READY to
    /// READY->NULL, so that a restart with the same weights settings reuses it
    /// (`engine::model_registry`).
    kept_model: Mutex<Option<ModelHandle>>,
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
                            "No FlashVSR weights folder: set the model-dir property (or the {} environment variable) to the folder holding {}",
                            MODEL_DIR_ENV,
                            weights::released_files_phrase()
                        )
                    ));
                }
            },
        };
        if !model_dir.is_dir() {
            return Err(gst::error_msg!(
                gst::ResourceError::NotFound,
                (
                    "FlashVSR weights folder '{}' does not exist or is not a folder: set model-dir to the folder holding the FlashVSR weights ({})",
                    model_dir.display(),
                    weights::released_files_phrase()
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
        let engine_settings = EngineSettings {
            model_dir: model_dir.clone(),
            ..settings.engine.clone()
        };
        {
            // a model for other weights settings is let go first, so that its
            // memory is free for the new one (unless another element uses it)
            let mut kept = self.kept_model.lock();
            if kept.as_ref().is_some_and(|m| !m.serves(&engine_settings)) {
                *kept = None;
            }
        }
        let engine =
            Engine::new(engine_settings).map_err(|err| start_error(&settings, &model_dir, err))?;
        *self.kept_model.lock() = Some(engine.model_handle());
        gst::info!(
            CAT,
            imp = self,
            "Weights ready in {:?} ({} model(s) loaded in this process); {}",
            started.elapsed(),
            loaded_models(),
            engine.kernel_choice().kernels
        );
        for note in &engine.kernel_choice().notes {
            gst::warning!(CAT, imp = self, "{}", note);
        }

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
                let info = side.converter.info();
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
        if tag.flags.contains(gst::BufferFlags::DISCONT) && state.engine.stream_frames() > 0 {
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

/// A builder for the pad `name` from the class's template of that name. The
/// templates are built from fixed, valid arguments (`pad_templates`), so a
/// missing one is a bug: the pad is then built without a template (same name,
/// same direction, caps from its queries) rather than panicking in the
/// application.
fn pad_builder(
    klass: &<FlashVsr as ObjectSubclass>::Class,
    name: &str,
    direction: gst::PadDirection,
) -> gst::PadBuilder<gst::Pad> {
    match klass.pad_template(name) {
        Some(template) => gst::Pad::builder_from_template(&template),
        None => {
            gst::error!(CAT, "no {name} pad template; building the pad without one");
            gst::Pad::builder(direction).name(name)
        }
    }
}

#[glib::object_subclass]
impl ObjectSubclass for FlashVsr {
    const NAME: &'static str = "GstFlashVsr";
    type Type = super::FlashVsr;
    type ParentType = gst::Element;

    fn with_class(klass: &Self::Class) -> Self {
        let sinkpad = pad_builder(klass, "sink", gst::PadDirection::Sink)
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

        let srcpad = pad_builder(klass, "src", gst::PadDirection::Src)
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
            kept_model: Mutex::new(None),
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
            // the weights are released with the element's other resources
            gst::StateChange::ReadyToNull => *self.kept_model.lock() = None,
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

#[cfg(test)]
mod tests {
    use super::Timing;

    /// A QoS message posted before any QoS event arrived says downstream keeps
    /// up (proportion 1.0), as after a flush.
    #[test]
    fn timing_starts_with_downstream_keeping_up() {
        let timing = Timing::default();
        assert_eq!(timing.qos_proportion, 1.0);
        assert_eq!(timing.qos_earliest, None);
    }
}
