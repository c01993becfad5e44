//! The `flashvsr` element: a plain `gst::Element` with one sink and one src pad. The
//! chain function converts each frame to RGB and feeds the engine, which holds frames
//! until it can run a chunk; the frames it returns are converted back and pushed with
//! their input's timestamps after the state lock is dropped. EOS, segment and stream
//! changes drain the engine first; FLUSH_STOP resets it; the LATENCY query adds the
//! frames held plus the time a chunk takes. Chunks run synchronously in the chain
//! function, on the upstream streaming thread.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use parking_lot::Mutex;

use super::caps::{self, Direction};
use super::convert::FrameConverter;
use super::tiles;
use crate::engine::{
    Engine, EngineError, EngineSettings, KV_RATIO_RANGE, LATENCY_FRAMES, LOCAL_RANGE_RANGE,
    RgbFrame, SCALE_RANGE, SPARSE_RATIO_RANGE, TILE_OVERLAP_RANGE, TILE_SIZE_RANGE, memory,
};
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

/// Buffer flags that describe the frame itself and so travel with it to the output.
const CARRIED_FLAGS: gst::BufferFlags = gst::BufferFlags::DISCONT
    .union(gst::BufferFlags::RESYNC)
    .union(gst::BufferFlags::CORRUPTED)
    .union(gst::BufferFlags::MARKER)
    .union(gst::BufferFlags::DROPPABLE);

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
}

/// What an output buffer takes over from the input frame it was made from.
#[derive(Debug, Clone, Copy)]
struct FrameTag {
    pts: Option<gst::ClockTime>,
    dts: Option<gst::ClockTime>,
    duration: Option<gst::ClockTime>,
    offset: u64,
    offset_end: u64,
    flags: gst::BufferFlags,
}

impl FrameTag {
    fn of(buffer: &gst::BufferRef) -> Self {
        Self {
            pts: buffer.pts(),
            dts: buffer.dts(),
            duration: buffer.duration(),
            offset: buffer.offset(),
            offset_end: buffer.offset_end(),
            flags: buffer.flags() & CARRIED_FLAGS,
        }
    }

    fn apply(&self, buffer: &mut gst::BufferRef) {
        buffer.set_pts(self.pts);
        buffer.set_dts(self.dts);
        buffer.set_duration(self.duration);
        buffer.set_offset(self.offset);
        buffer.set_offset_end(self.offset_end);
        buffer.set_flags(self.flags);
    }
}

/// What caps negotiation settled: the input format and the pixel converters.
struct Negotiated {
    in_info: gst_video::VideoInfo,
    converter: FrameConverter,
}

/// Something to send downstream, in order, once the state lock is dropped.
enum Item {
    Buffer(gst::Buffer),
    Event(gst::Event),
}

/// Streaming state, from READY->PAUSED to PAUSED->READY.
struct State {
    engine: Engine<FrameTag>,
    negotiated: Option<Negotiated>,
    /// Frames given to the engine and frames it returned since the last drain or flush.
    frames_in: u64,
    frames_out: u64,
    /// Serialized events that arrived behind frames the engine still holds, each with
    /// the number of frames that must be output before it.
    held_events: VecDeque<(u64, gst::Event)>,
}

/// Why the stream cannot go on; posted as an element error by the caller.
enum ProcessError {
    Convert(glib::BoolError),
    Engine(EngineError),
}

/// An engine error as an element error's one-sentence message and its details.
fn engine_error_text(err: &EngineError) -> (String, String) {
    match err {
        EngineError::TooLarge { .. } | EngineError::Cancelled => (err.to_string(), String::new()),
        EngineError::Model { context, source } => {
            (format!("FlashVSR failed ({context})"), source.to_string())
        }
        EngineError::InvalidFrame(details) => (
            "FlashVSR could not take a frame".to_owned(),
            details.clone(),
        ),
        EngineError::InvalidSetting { .. } => (
            "FlashVSR has an invalid setting".to_owned(),
            err.to_string(),
        ),
    }
}

impl State {
    /// Converts the engine's outputs to buffers and interleaves the held events.
    fn items_for(&mut self, outputs: Vec<(RgbFrame, FrameTag)>) -> Result<Vec<Item>, ProcessError> {
        let mut items = Vec::with_capacity(outputs.len());
        let Some(negotiated) = self.negotiated.as_ref() else {
            return Ok(items);
        };
        for (frame, tag) in outputs {
            let mut buffer = negotiated
                .converter
                .rgb_to_output(&frame)
                .map_err(ProcessError::Convert)?;
            tag.apply(buffer.make_mut());
            items.push(Item::Buffer(buffer));
            self.frames_out += 1;
            while let Some((after, _)) = self.held_events.front()
                && *after <= self.frames_out
            {
                if let Some((_, event)) = self.held_events.pop_front() {
                    items.push(Item::Event(event));
                }
            }
        }
        Ok(items)
    }

    /// Outputs every frame the engine holds, then every held event, and starts a
    /// fresh engine stream.
    fn drain(&mut self) -> Result<Vec<Item>, ProcessError> {
        let outputs = self.engine.finish().map_err(ProcessError::Engine)?;
        let mut items = self.items_for(outputs)?;
        items.extend(self.held_events.drain(..).map(|(_, e)| Item::Event(e)));
        self.engine.reset();
        self.frames_in = 0;
        self.frames_out = 0;
        Ok(items)
    }

    /// Drops every held frame (flush); sticky events are kept for the next data.
    fn reset(&mut self) -> Vec<gst::Event> {
        self.engine.reset();
        self.frames_in = 0;
        self.frames_out = 0;
        self.held_events
            .drain(..)
            .map(|(_, e)| e)
            .filter(|e| e.is_sticky())
            .collect()
    }
}

pub struct FlashVsr {
    sinkpad: gst::Pad,
    srcpad: gst::Pad,
    settings: Mutex<Settings>,
    state: Mutex<Option<State>>,
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
        *self.state.lock() = Some(State {
            engine,
            negotiated: None,
            frames_in: 0,
            frames_out: 0,
            held_events: VecDeque::new(),
        });
        Ok(())
    }

    fn stop(&self) {
        *self.state.lock() = None;
        self.active_scale.store(0, Ordering::Release);
    }

    fn sink_chain(&self, buffer: gst::Buffer) -> Result<gst::FlowSuccess, gst::FlowError> {
        gst::trace!(CAT, imp = self, "Received {:?}", buffer);
        let (items, took) = {
            let mut guard = self.state.lock();
            let state = guard.as_mut().ok_or(gst::FlowError::Flushing)?;
            let Some(negotiated) = state.negotiated.as_ref() else {
                gst::element_imp_error!(
                    self,
                    gst::CoreError::Negotiation,
                    ("Received a buffer before any caps")
                );
                return Err(gst::FlowError::NotNegotiated);
            };
            let frame = match negotiated.converter.input_to_rgb(&buffer) {
                Ok(frame) => frame,
                Err(err) => {
                    let info = &negotiated.in_info;
                    let message = format!(
                        "Could not read a {} {}x{} input frame",
                        info.format().to_str(),
                        info.width(),
                        info.height()
                    );
                    let details = format!(
                        "{err} (buffer of {} bytes, the caps need {})",
                        buffer.size(),
                        info.size()
                    );
                    let drained = state.drain();
                    drop(guard);
                    self.push_drained(drained);
                    gst::element_imp_error!(
                        self,
                        gst::StreamError::Format,
                        ("{}", message),
                        ["{}", details]
                    );
                    return Err(gst::FlowError::Error);
                }
            };

            let started = Instant::now();
            let outputs = match state.engine.push(frame, FrameTag::of(&buffer)) {
                Ok(outputs) => outputs,
                Err(err) => {
                    // the engine keeps the frames of a stream it refused to replace
                    let drained = state.drain();
                    drop(guard);
                    self.push_drained(drained);
                    self.post_stream_error(ProcessError::Engine(err));
                    return Err(gst::FlowError::Error);
                }
            };
            let took = (!outputs.is_empty()).then(|| started.elapsed());
            state.frames_in += 1;
            let items = state.items_for(outputs).map_err(|err| {
                self.post_stream_error(err);
                gst::FlowError::Error
            })?;
            (items, took)
        };
        if let Some(took) = took {
            self.note_processing_time(took);
        }
        self.push_items(items)
    }

    fn post_stream_error(&self, err: ProcessError) {
        match err {
            ProcessError::Convert(err) => gst::element_imp_error!(
                self,
                gst::StreamError::Format,
                ("Could not convert an output frame"),
                ["{}", err]
            ),
            ProcessError::Engine(err) => {
                let (message, details) = engine_error_text(&err);
                gst::element_imp_error!(
                    self,
                    gst::StreamError::Failed,
                    ("{}", message),
                    ["{}", details]
                )
            }
        }
    }

    /// Before an error ends the stream: sends downstream what a drain gave back.
    /// A drain that failed itself is only logged, the error at hand is posted.
    fn push_drained(&self, drained: Result<Vec<Item>, ProcessError>) {
        match drained {
            Ok(items) => {
                if let Err(err) = self.push_items(items) {
                    gst::debug!(
                        CAT,
                        imp = self,
                        "Pushing the held frames returned {:?}",
                        err
                    );
                }
            }
            Err(ProcessError::Engine(err)) => {
                gst::warning!(CAT, imp = self, "Could not drain the held frames: {}", err)
            }
            Err(ProcessError::Convert(err)) => {
                gst::warning!(
                    CAT,
                    imp = self,
                    "Could not convert the held frames: {}",
                    err
                )
            }
        }
    }

    /// A refused caps event ends the stream: outputs the frames of the previous
    /// caps first, then posts `error` (if any). Returns false, the event's answer.
    fn refuse_caps(&self, error: Option<gst::ErrorMessage>) -> bool {
        let drained = self.state.lock().as_mut().map(|state| {
            state.negotiated.as_ref()?;
            let drained = state.drain();
            state.negotiated = None;
            Some(drained)
        });
        if let Some(Some(drained)) = drained {
            self.push_drained(drained);
        }
        if let Some(error) = error {
            self.post_error_message(error);
        }
        false
    }

    fn push_items(&self, items: Vec<Item>) -> Result<gst::FlowSuccess, gst::FlowError> {
        for item in items {
            match item {
                Item::Buffer(buffer) => {
                    gst::trace!(CAT, imp = self, "Pushing {:?}", buffer);
                    self.srcpad.push(buffer)?;
                }
                Item::Event(event) => {
                    gst::debug!(CAT, imp = self, "Forwarding held {:?}", event.type_());
                    if !self.srcpad.push_event(event) {
                        gst::debug!(CAT, imp = self, "Downstream refused a held event");
                    }
                }
            }
        }
        Ok(gst::FlowSuccess::Ok)
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

    /// Outputs everything held, then forwards `event` (EOS, segment or stream change).
    fn drain_then_forward(&self, event: gst::Event) -> bool {
        let drained = self.state.lock().as_mut().map(State::drain);
        match drained {
            Some(Ok(items)) => {
                if let Err(err) = self.push_items(items) {
                    gst::debug!(CAT, imp = self, "Pushing drained frames returned {:?}", err);
                }
            }
            Some(Err(err)) => {
                self.post_stream_error(err);
                return false;
            }
            None => {}
        }
        self.srcpad.push_event(event)
    }

    /// Forwards a serialized event behind the frames that arrived before it.
    fn forward_in_order(&self, event: gst::Event) -> bool {
        {
            let mut guard = self.state.lock();
            if let Some(state) = guard.as_mut()
                && (state.frames_out < state.frames_in || !state.held_events.is_empty())
            {
                gst::debug!(
                    CAT,
                    imp = self,
                    "Holding {:?} behind {} frames",
                    event.type_(),
                    state.frames_in - state.frames_out
                );
                let after = state.frames_in;
                state.held_events.push_back((after, event));
                return true;
            }
        }
        self.srcpad.push_event(event)
    }

    fn flush_stop(&self, event: gst::Event) -> bool {
        let sticky = self
            .state
            .lock()
            .as_mut()
            .map(State::reset)
            .unwrap_or_default();
        gst::debug!(CAT, imp = self, "Flushed the frames held");
        let forwarded = self.srcpad.push_event(event);
        for e in sticky {
            self.srcpad.push_event(e);
        }
        forwarded
    }

    /// New caps on the sink pad: drains the frames of the old caps, configures the
    /// converters for the new ones, and sends the upscaled caps downstream.
    fn set_caps(&self, caps: &gst::Caps) -> bool {
        let Ok(in_info) = gst_video::VideoInfo::from_caps(caps) else {
            gst::debug!(
                CAT,
                imp = self,
                "Refusing caps that are not raw video: {}",
                caps
            );
            return self.refuse_caps(None);
        };
        if in_info.interlace_mode() != gst_video::VideoInterlaceMode::Progressive {
            gst::debug!(
                CAT,
                imp = self,
                "Refusing interlaced caps {}: deinterlace first",
                caps
            );
            return self.refuse_caps(None);
        }
        if !caps::FORMATS.contains(&in_info.format()) {
            gst::debug!(
                CAT,
                imp = self,
                "Refusing unsupported format {:?}",
                in_info.format()
            );
            return self.refuse_caps(None);
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
            return self.refuse_caps(None);
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
                return self.refuse_caps(None);
            }
        };
        let converter = match FrameConverter::new(&in_info, &out_info) {
            Ok(c) => c,
            Err(err) => {
                gst::debug!(
                    CAT,
                    imp = self,
                    "Refusing caps {}: no converter: {}",
                    caps,
                    err
                );
                return self.refuse_caps(None);
            }
        };

        let items = {
            let mut guard = self.state.lock();
            let Some(state) = guard.as_mut() else {
                gst::debug!(CAT, imp = self, "Caps before READY->PAUSED");
                return false;
            };
            if state
                .negotiated
                .as_ref()
                .is_some_and(|s| s.in_info == in_info)
            {
                gst::debug!(CAT, imp = self, "Caps unchanged");
                return true;
            }
            // Refused before the old caps' frames are drained: `refuse_caps` outputs
            // them, then posts the error.
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
                drop(guard);
                return self.refuse_caps(Some(gst::error_msg!(
                    gst::CoreError::Negotiation,
                    ("{}", message),
                    ["{}", details]
                )));
            }
            let items = if state.negotiated.is_some() {
                match state.drain() {
                    Ok(items) => items,
                    Err(err) => {
                        drop(guard);
                        self.post_stream_error(err);
                        return false;
                    }
                }
            } else {
                Vec::new()
            };
            state.negotiated = Some(Negotiated { in_info, converter });
            items
        };
        gst::info!(CAT, imp = self, "Configured {} -> {}", caps, out_caps);
        if let Err(err) = self.push_items(items) {
            gst::debug!(
                CAT,
                imp = self,
                "Pushing frames of the old caps returned {:?}",
                err
            );
        }
        let pushed = self.srcpad.push_event(gst::event::Caps::new(&out_caps));
        // Live pipelines query the latency before any caps: the frames held are only
        // known now.
        self.post_latency_message();
        pushed
    }

    fn sink_event(&self, pad: &gst::Pad, event: gst::Event) -> bool {
        use gst::EventView;
        gst::log!(CAT, obj = pad, "Handling {:?}", event);
        match event.view() {
            EventView::Caps(c) => {
                let caps = c.caps_owned();
                self.set_caps(&caps)
            }
            EventView::Eos(_)
            | EventView::SegmentDone(_)
            | EventView::StreamStart(_)
            | EventView::Segment(_) => self.drain_then_forward(event),
            EventView::FlushStop(_) => self.flush_stop(event),
            _ if event.is_serialized() => self.forward_in_order(event),
            _ => gst::Pad::event_default(pad, Some(&*self.obj()), event),
        }
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
        self.reported_processing_ns
            .store(processing.nseconds(), Ordering::Relaxed);
        frames(LATENCY_FRAMES).saturating_add(processing)
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
        let result = self.parent_change_state(transition);
        match transition {
            gst::StateChange::PausedToReady => self.stop(),
            gst::StateChange::ReadyToPaused if result.is_err() => self.stop(),
            _ => {}
        }
        result
    }
}
