//! The model thread's streaming state (READY->PAUSED to PAUSED->READY) and what travels
//! through the queues: frames with the fields their output takes over, and
//! events. Only the model thread touches `State` while streaming; a flush-stop
//! takes its lock to reset it between two items.

use std::collections::VecDeque;

use gst::glib;

use super::convert::OutputConverter;
use super::late::LatePolicy;
use crate::engine::{Engine, EngineError, RgbFrame};
use crate::pixels::bicubic::BicubicResizer;

/// Buffer flags that describe the frame itself and so travel with it to the output.
const CARRIED_FLAGS: gst::BufferFlags = gst::BufferFlags::DISCONT
    .union(gst::BufferFlags::RESYNC)
    .union(gst::BufferFlags::CORRUPTED)
    .union(gst::BufferFlags::MARKER)
    .union(gst::BufferFlags::DROPPABLE);

/// What an output buffer takes over from the input frame it was made from.
#[derive(Debug, Clone, Copy)]
pub struct FrameTag {
    pub pts: Option<gst::ClockTime>,
    pub dts: Option<gst::ClockTime>,
    pub duration: Option<gst::ClockTime>,
    pub offset: u64,
    pub offset_end: u64,
    pub flags: gst::BufferFlags,
}

impl FrameTag {
    pub fn of(buffer: &gst::BufferRef) -> Self {
        Self {
            pts: buffer.pts(),
            dts: buffer.dts(),
            duration: buffer.duration(),
            offset: buffer.offset(),
            offset_end: buffer.offset_end(),
            flags: buffer.flags() & CARRIED_FLAGS,
        }
    }

    pub fn apply(&self, buffer: &mut gst::BufferRef) {
        buffer.set_pts(self.pts);
        buffer.set_dts(self.dts);
        buffer.set_duration(self.duration);
        buffer.set_offset(self.offset);
        buffer.set_offset_end(self.offset_end);
        buffer.set_flags(self.flags);
    }
}

/// Caps the sink pad checked; the model thread drains the old caps' frames,
/// checks the memory budget and sends `out_caps` downstream.
pub struct NewCaps {
    pub caps: gst::Caps,
    pub out_caps: gst::Caps,
    pub in_info: gst_video::VideoInfo,
    pub converter: OutputConverter,
}

/// What the sink pad hands the model thread, in arrival order.
pub enum Work {
    Frame {
        frame: RgbFrame,
        tag: FrameTag,
    },
    /// Caps the sink pad checked (boxed: far larger than a frame, and rare).
    Caps(Box<NewCaps>),
    /// Caps the sink pad refused: the old caps' frames go out, then `error`.
    Refuse(Option<gst::ErrorMessage>),
    /// An input frame the sink pad could not read: the held frames go out, then
    /// the error is posted.
    Unreadable {
        message: String,
        details: String,
    },
    Event(gst::Event),
}

impl Work {
    /// Frames count against the queue's bound; nothing else does.
    pub fn is_frame(&self) -> bool {
        matches!(self, Work::Frame { .. })
    }

    /// What must survive a flush: the stream's configuration (caps, and sticky
    /// events other than the segment and EOS, which a flush-stop clears).
    pub fn survives_flush(&self) -> bool {
        match self {
            Work::Caps { .. } => true,
            Work::Event(event) => survives_flush(event),
            _ => false,
        }
    }
}

pub fn survives_flush(event: &gst::Event) -> bool {
    event.is_sticky() && !matches!(event.type_(), gst::EventType::Segment | gst::EventType::Eos)
}

/// What caps negotiation settled: the input format and the pixel converters.
pub struct Negotiated {
    pub in_info: gst_video::VideoInfo,
    pub converter: OutputConverter,
}

/// What the model thread hands the src pad task, in output order.
pub enum Item {
    Buffer(gst::Buffer),
    Event(gst::Event),
    /// Posted once the items before it are downstream.
    Error(gst::ErrorMessage),
    /// Answers the sink pad waiting on queued work `seq` (`None`: whether
    /// downstream took the last event).
    Answer(u64, Option<bool>),
}

impl Item {
    /// Buffers count against the output queue's bound; nothing else does.
    pub fn is_buffer(&self) -> bool {
        matches!(self, Item::Buffer(_))
    }
}

/// Why the stream cannot go on; posted as an element error by the caller.
pub enum ProcessError {
    Convert(glib::BoolError),
    Engine(EngineError),
}

/// An engine error as an element error's one-sentence message and its details.
pub fn engine_error_text(err: &EngineError) -> (String, String) {
    match err {
        EngineError::TooLarge { .. }
        | EngineError::TensorTooLarge { .. }
        | EngineError::Cancelled => (err.to_string(), String::new()),
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

pub struct State {
    pub engine: Engine<FrameTag>,
    pub negotiated: Option<Negotiated>,
    /// Frames given to the engine (or degraded) and frames output since the last
    /// drain or flush.
    pub frames_in: u64,
    pub frames_out: u64,
    /// Serialized events that arrived behind frames the engine still holds, each
    /// with the number of frames that must be output before it.
    pub held_events: VecDeque<(u64, gst::Event)>,
    /// The segment of the frames now arriving (their running times).
    pub segment: gst::FormattedSegment<gst::ClockTime>,
    pub late_policy: LatePolicy,
    /// With `late-policy=bicubic`: the inputs of the frames the engine holds,
    /// oldest first, to output their bicubic upscale if the model is late.
    pub held_inputs: VecDeque<(RgbFrame, FrameTag)>,
    /// The bicubic upscaler for degraded frames, for the negotiated sizes.
    resizer: Option<BicubicResizer>,
    /// Frames output in this run, and how many of them were degraded.
    pub processed: u64,
    pub degraded: u64,
}

impl State {
    pub fn new(engine: Engine<FrameTag>, late_policy: LatePolicy) -> Self {
        Self {
            engine,
            negotiated: None,
            frames_in: 0,
            frames_out: 0,
            held_events: VecDeque::new(),
            segment: gst::FormattedSegment::new(),
            late_policy,
            held_inputs: VecDeque::new(),
            resizer: None,
            processed: 0,
            degraded: 0,
        }
    }

    /// New caps: the old ones' frames must have been drained.
    pub fn negotiate(&mut self, negotiated: Option<Negotiated>) {
        self.negotiated = negotiated;
        self.resizer = None;
    }

    /// Gives `frame` to the model: returns the frames that became ready.
    pub fn push(
        &mut self,
        frame: RgbFrame,
        tag: FrameTag,
    ) -> Result<Vec<(RgbFrame, FrameTag)>, EngineError> {
        if self.late_policy == LatePolicy::Bicubic {
            self.held_inputs.push_back((frame.clone(), tag));
        }
        let outputs = self.engine.push(frame, tag)?;
        self.frames_in += 1;
        self.forget_inputs(outputs.len());
        Ok(outputs)
    }

    fn forget_inputs(&mut self, outputs: usize) {
        let n = outputs.min(self.held_inputs.len());
        self.held_inputs.drain(..n);
    }

    /// The model is late: every frame it holds, then `current`, is given back as
    /// its bicubic upscale (with its tag), and the model stream restarts.
    pub fn degrade(
        &mut self,
        current: Option<(RgbFrame, FrameTag)>,
    ) -> Result<Vec<(RgbFrame, FrameTag)>, ProcessError> {
        self.engine.reset();
        if current.is_some() {
            self.frames_in += 1;
        }
        let frames: Vec<_> = self.held_inputs.drain(..).chain(current).collect();
        let mut out = Vec::with_capacity(frames.len());
        for (frame, tag) in frames {
            out.push((self.bicubic(&frame)?, tag));
        }
        self.degraded += out.len() as u64;
        Ok(out)
    }

    /// `frame` upscaled to the output size as the model's own pre-upscale does.
    fn bicubic(&mut self, frame: &RgbFrame) -> Result<RgbFrame, ProcessError> {
        let (w, h) = (frame.width as usize, frame.height as usize);
        let (ow, oh) = self
            .engine
            .output_size(frame.width, frame.height)
            .ok_or_else(|| {
                ProcessError::Engine(EngineError::InvalidFrame(format!(
                    "{w}x{h}: the output size overflows"
                )))
            })?;
        if self
            .resizer
            .as_ref()
            .is_none_or(|r| r.src_size() != (w, h) || r.dst_size() != (ow as usize, oh as usize))
        {
            let resizer = BicubicResizer::new(w, h, ow as usize, oh as usize).map_err(|e| {
                ProcessError::Engine(EngineError::model("the bicubic upscale of a late frame", e))
            })?;
            self.resizer = Some(resizer);
        }
        let data = self
            .resizer
            .as_ref()
            .map(|r| r.resize(&frame.data))
            .transpose()
            .map_err(|e| {
                ProcessError::Engine(EngineError::model("the bicubic upscale of a late frame", e))
            })?
            .unwrap_or_default();
        Ok(RgbFrame {
            width: ow,
            height: oh,
            data,
        })
    }

    /// Converts frames to output buffers and interleaves the held events.
    pub fn items_for(
        &mut self,
        outputs: Vec<(RgbFrame, FrameTag)>,
    ) -> Result<Vec<Item>, ProcessError> {
        let mut items = Vec::with_capacity(outputs.len());
        let Some(negotiated) = self.negotiated.as_ref() else {
            return Ok(items);
        };
        for (frame, tag) in outputs {
            let mut buffer = negotiated
                .converter
                .rgb_to_output(frame)
                .map_err(ProcessError::Convert)?;
            tag.apply(buffer.make_mut());
            items.push(Item::Buffer(buffer));
            self.frames_out += 1;
            self.processed += 1;
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

    /// Outputs every frame the engine holds (`bicubic`: degraded instead of run
    /// through the model), then every held event, and starts a fresh model stream.
    pub fn drain(&mut self, bicubic: bool) -> Result<Vec<Item>, ProcessError> {
        let outputs = if bicubic {
            self.degrade(None)?
        } else {
            self.engine.finish().map_err(ProcessError::Engine)?
        };
        let mut items = self.items_for(outputs)?;
        items.extend(self.held_events.drain(..).map(|(_, e)| Item::Event(e)));
        self.restart();
        Ok(items)
    }

    /// Drops every held frame (flush); returns the held events that must survive.
    pub fn reset(&mut self) -> Vec<gst::Event> {
        self.restart();
        self.held_events
            .drain(..)
            .map(|(_, e)| e)
            .filter(survives_flush)
            .collect()
    }

    fn restart(&mut self) {
        self.engine.reset();
        self.held_inputs.clear();
        self.frames_in = 0;
        self.frames_out = 0;
    }
}
