//! The GStreamer pipelines of flashvsr-upscale: a file through the flashvsr
//! element to an encoded file (the whole file, or one segment's frames), and
//! the join of the segments with the source's audio and subtitles.

use parking_lot::Mutex;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use gst::prelude::*;

use crate::probe::{Probe, StreamKind};

/// What a probe returns for a buffer it removes: `Handled` (the bindings drop
/// the buffer), not `Drop`, after which GStreamer 1.22's core unrefs the
/// buffer the bindings already took, a NULL (a critical warning per buffer).
const DROP: gst::PadProbeReturn = gst::PadProbeReturn::Handled;

/// The default encoder: x264 at constant quantizer 18 (visually lossless for
/// most content), the medium preset.
pub const DEFAULT_ENCODER: &str = "x264enc pass=qual quantizer=18 speed-preset=medium";

pub fn make(factory: &str) -> Result<gst::Element, String> {
    gst::ElementFactory::make(factory).build().map_err(|_| {
        format!("GStreamer element {factory} is missing: install the plugin that provides it")
    })
}

/// A readable regular file, or an error naming it.
pub fn check_input(path: &Path) -> Result<(), String> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => std::fs::File::open(path)
            .map(|_| ())
            .map_err(|e| format!("cannot read the input {}: {e}", path.display())),
        Ok(_) => Err(format!("the input {} is not a file", path.display())),
        Err(e) => Err(format!(
            "the input {} cannot be opened: {e}",
            path.display()
        )),
    }
}

/// The muxer for `output`'s extension, or an error naming it.
pub fn muxer_for(output: &Path) -> Result<&'static str, String> {
    let ext = output
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("mp4" | "m4v" | "mov") => Ok("mp4mux"),
        Some("mkv") => Ok("matroskamux"),
        _ => Err(format!(
            "the output {} must end in .mp4, .m4v, .mov or .mkv",
            output.display()
        )),
    }
}

/// Creates (empties) `output` to prove it can be written, before any work.
pub fn check_output(output: &Path) -> Result<(), String> {
    muxer_for(output)?;
    std::fs::File::create(output)
        .map(|_| ())
        .map_err(|e| format!("cannot write the output {}: {e}", output.display()))
}

/// Runs `pipeline` to EOS; `tick` is called about twice a second.
pub fn run_to_end(
    pipeline: &gst::Pipeline,
    mut tick: Option<&mut dyn FnMut()>,
) -> Result<(), String> {
    let bus = pipeline.bus().ok_or("pipeline without bus")?;
    if pipeline.set_state(gst::State::Playing).is_err() {
        return Err(bus_error(&bus).unwrap_or_else(|| "the pipeline could not start".into()));
    }
    loop {
        match bus.timed_pop(gst::ClockTime::from_mseconds(500)) {
            Some(msg) => match msg.view() {
                gst::MessageView::Eos(_) => return Ok(()),
                gst::MessageView::Error(err) => return Err(describe_error(err)),
                gst::MessageView::Warning(w) => eprintln!("warning: {}", w.error()),
                gst::MessageView::Latency(_) => {
                    let _ = pipeline.recalculate_latency();
                }
                _ => {}
            },
            None => {
                if let Some(tick) = tick.as_mut() {
                    tick();
                }
            }
        }
    }
}

fn bus_error(bus: &gst::Bus) -> Option<String> {
    let msg = bus.pop_filtered(&[gst::MessageType::Error])?;
    match msg.view() {
        gst::MessageView::Error(err) => Some(describe_error(err)),
        _ => None,
    }
}

pub fn describe_error(err: &gst::message::Error) -> String {
    let source = err
        .src()
        .map(|s| s.path_string().to_string())
        .unwrap_or_default();
    match err.debug() {
        Some(debug) => format!("{source}: {}\n({debug})", err.error()),
        None => format!("{source}: {}", err.error()),
    }
}

/// The frames of one segment: those from `render_from` go through the model,
/// those from `start` are kept, the stream ends before `end` (timestamps, ns);
/// decoding starts at the keyframe `seek`.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub seek: u64,
    pub render_from: u64,
    pub start: u64,
    pub end: u64,
    /// Whether the stream needs a seek (not the whole file).
    pub partial: bool,
}

/// What a transcode counted.
#[derive(Debug, Default)]
pub struct Counts {
    /// Frames written (after the window).
    pub frames: AtomicU64,
    /// Timestamps of the first and last frame written.
    pub first_last: Mutex<Option<(u64, u64)>>,
}

/// The file-to-file pipeline: `input` decoded, its video through a flashvsr
/// element with `settings` and `encoder` into `output`'s container, with the
/// source's audio (re-encoded to AAC) and subtitles when `streams` says so.
pub struct Transcode<'a> {
    pub input: &'a Path,
    pub output: PathBuf,
    pub settings: &'a [(String, String)],
    pub encoder: &'a str,
    pub window: Option<Window>,
    /// Keep the first audio stream and the subtitles (the whole-file run).
    pub keep_other_streams: bool,
    pub probe: &'a Probe,
}

impl Transcode<'_> {
    /// Builds the pipeline; the counts fill in as frames are written.
    pub fn build(&self) -> Result<(gst::Pipeline, Arc<Counts>), String> {
        let pipeline = gst::Pipeline::new();
        let src = make("filesrc")?;
        src.set_property("location", self.input.to_string_lossy().as_ref());
        let decode = make("decodebin")?;
        let video_queue = make("queue")?;
        let upscale = make("flashvsr")?;
        crate::settings::apply(&upscale, self.settings)?;
        let convert = make("videoconvert")?;
        let encode = gst::parse::bin_from_description(self.encoder, true)
            .map_err(|e| format!("--encoder {:?}: {e}", self.encoder))?
            .upcast::<gst::Element>();
        let mux = make(muxer_for(&self.output)?)?;
        let sink = make("filesink")?;
        sink.set_property("location", self.output.to_string_lossy().as_ref());
        pipeline
            .add_many([
                &src,
                &decode,
                &video_queue,
                &upscale,
                &convert,
                &encode,
                &mux,
                &sink,
            ])
            .map_err(|e| e.to_string())?;
        src.link(&decode).map_err(|e| e.to_string())?;
        gst::Element::link_many([&video_queue, &upscale, &convert, &encode])
            .map_err(|e| e.to_string())?;
        link_video_to_mux(&encode, &mux).map_err(|e| {
            format!(
                "--encoder {:?} cannot feed {}: {e}",
                self.encoder,
                mux.name()
            )
        })?;
        mux.link(&sink).map_err(|e| e.to_string())?;

        let counts = Arc::new(Counts::default());
        self.count_output(&upscale, &counts)?;
        if let Some(window) = self.window {
            select_frames(&pipeline, &video_queue, window)?;
        }
        let other = if self.keep_other_streams {
            OtherStreams::request(&mux, self.probe)?
        } else {
            OtherStreams::default()
        };
        link_decoded(&pipeline, &decode, &video_queue, other);
        Ok((pipeline, counts))
    }

    /// Counts the frames leaving flashvsr, dropping those before the window.
    fn count_output(&self, upscale: &gst::Element, counts: &Arc<Counts>) -> Result<(), String> {
        let pad = upscale
            .static_pad("src")
            .ok_or("flashvsr without src pad")?;
        let start = self.window.map_or(0, |w| w.start);
        let counts = counts.clone();
        pad.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
            let Some(pts) = info.buffer().and_then(|b| b.pts()) else {
                return gst::PadProbeReturn::Ok;
            };
            let pts = pts.nseconds();
            if pts < start {
                return DROP;
            }
            counts.frames.fetch_add(1, Ordering::Relaxed);
            let mut span = counts.first_last.lock();
            *span = Some(span.map_or((pts, pts), |(first, _)| (first, pts)));
            gst::PadProbeReturn::Ok
        });
        Ok(())
    }
}

/// Links `upstream`'s src pad to a video pad of `mux` (a plain link could take
/// an audio or subtitle pad when the caps are not fixed yet).
fn link_video_to_mux(upstream: &gst::Element, mux: &gst::Element) -> Result<(), String> {
    let src = upstream.static_pad("src").ok_or("no src pad")?;
    let sink = mux
        .request_pad_simple("video_%u")
        .ok_or_else(|| format!("{} takes no video", mux.name()))?;
    src.link(&sink).map(|_| ()).map_err(|e| format!("{e:?}"))
}

/// The muxer pads requested before any data flows (a muxer refuses new pads
/// once it has started writing), for the source's first audio stream and its
/// subtitles.
#[derive(Default, Clone)]
struct OtherStreams {
    audio: Option<(gst::Element, gst::Pad)>,
    subtitles: Vec<gst::Pad>,
}

impl OtherStreams {
    fn request(mux: &gst::Element, probe: &Probe) -> Result<Self, String> {
        let audio = if probe.audio_streams > 0 {
            let pad = mux
                .request_pad_simple("audio_%u")
                .ok_or_else(|| format!("{} takes no audio", mux.name()))?;
            Some((mux.clone(), pad))
        } else {
            None
        };
        let subtitles = (0..probe.subtitle_streams)
            .filter_map(|_| mux.request_pad_simple("subtitle_%u"))
            .collect();
        Ok(Self { audio, subtitles })
    }
}

/// Links decodebin's pads as they appear: the first video stream to
/// `video_queue`, the first audio stream and the subtitles to the pads of
/// `other` (the rest to fakesinks).
fn link_decoded(
    pipeline: &gst::Pipeline,
    decode: &gst::Element,
    video_queue: &gst::Element,
    other: OtherStreams,
) {
    let video_sink = video_queue.static_pad("sink");
    let pipeline_weak = pipeline.downgrade();
    let video_for_check = video_sink.clone();
    decode.connect_no_more_pads(move |_| {
        let Some(pipeline) = pipeline_weak.upgrade() else {
            return;
        };
        if !video_for_check.as_ref().is_some_and(|p| p.is_linked()) {
            gst::element_error!(
                pipeline,
                gst::StreamError::WrongType,
                ("The input has no video stream to upscale")
            );
        }
    });
    let pipeline_weak = pipeline.downgrade();
    let other = Arc::new(Mutex::new(other));
    decode.connect_pad_added(move |_, pad| {
        let Some(pipeline) = pipeline_weak.upgrade() else {
            return;
        };
        let caps = pad.current_caps().unwrap_or_else(|| pad.query_caps(None));
        let mut other = other.lock();
        let linked = match StreamKind::of(&caps) {
            StreamKind::Video => match &video_sink {
                Some(sink) if !sink.is_linked() => pad
                    .link(sink)
                    .map(|_| ())
                    .map_err(|e| format!("cannot feed the decoded video to flashvsr: {e:?}")),
                _ => discard(&pipeline, pad),
            },
            StreamKind::Audio => match other.audio.take() {
                Some((_, mux_pad)) => link_audio(&pipeline, pad, &mux_pad),
                None => discard(&pipeline, pad),
            },
            StreamKind::Subtitle => match other.subtitles.pop() {
                Some(mux_pad) if pad.can_link(&mux_pad) => link_subtitles(&pipeline, pad, &mux_pad),
                Some(mux_pad)
                    if is_markup(&caps) && mux_pad.query_caps(None).can_intersect(&utf8_caps()) =>
                {
                    link_markup_as_text(&pipeline, pad, &mux_pad)
                }
                Some(mux_pad) => {
                    eprintln!(
                        "warning: a subtitle stream ({caps}) is not kept: the output's muxer \
                         takes no such subtitles"
                    );
                    if let Some(mux) = mux_pad.parent_element() {
                        mux.release_request_pad(&mux_pad);
                    }
                    discard(&pipeline, pad)
                }
                None => discard(&pipeline, pad),
            },
            StreamKind::Other => discard(&pipeline, pad),
        };
        if let Err(err) = linked {
            gst::element_error!(pipeline, gst::CoreError::Negotiation, ("{}", err));
        }
    });
}

fn utf8_caps() -> gst::Caps {
    gst::Caps::builder("text/x-raw")
        .field("format", "utf8")
        .build()
}

fn is_markup(caps: &gst::CapsRef) -> bool {
    caps.structure(0).is_some_and(|s| {
        s.name() == "text/x-raw" && s.get::<&str>("format").ok() == Some("pango-markup")
    })
}

/// Links decoded subtitles in Pango markup (what the demuxers give for plain
/// text subtitles) to a muxer pad that takes plain UTF-8 text: the caps say
/// utf8 and each buffer's markup is reduced to its text.
///
/// The rewrite sits on the subtitle queue's source pad, which this function
/// owns from the start, and not on decodebin's pad: decodebin can expose its
/// pad before the markup caps event has crossed it, and that event's
/// accept-caps check (carried through the queue to the muxer) would then fail
/// before any probe on decodebin's pad saw it, leaving the stream
/// not-negotiated and the muxer waiting for it forever.
fn link_markup_as_text(
    pipeline: &gst::Pipeline,
    pad: &gst::Pad,
    mux_pad: &gst::Pad,
) -> Result<(), String> {
    let queue = unbounded_queue()?;
    let src = queue.static_pad("src").ok_or("queue without src pad")?;
    let mux_for_queries = mux_pad.clone();
    src.add_probe(gst::PadProbeType::QUERY_DOWNSTREAM, move |_, info| {
        let Some(query) = info.query_mut() else {
            return gst::PadProbeReturn::Ok;
        };
        match query.view_mut() {
            gst::QueryViewMut::AcceptCaps(q) if is_markup(q.caps()) => {
                q.set_result(true);
                gst::PadProbeReturn::Handled
            }
            gst::QueryViewMut::Caps(q) => {
                let mut caps = mux_for_queries.query_caps(None);
                caps.make_mut().append(markup_caps());
                let caps = match q.filter() {
                    Some(filter) => {
                        filter.intersect_with_mode(&caps, gst::CapsIntersectMode::First)
                    }
                    None => caps,
                };
                q.set_result(&caps);
                gst::PadProbeReturn::Handled
            }
            _ => gst::PadProbeReturn::Ok,
        }
    });
    src.add_probe(
        gst::PadProbeType::BUFFER | gst::PadProbeType::EVENT_DOWNSTREAM,
        |_, info| {
            match &info.data {
                Some(gst::PadProbeData::Event(e)) if e.type_() == gst::EventType::Caps => {
                    info.data = Some(gst::PadProbeData::Event(
                        gst::event::Caps::new(&utf8_caps()),
                    ));
                }
                Some(gst::PadProbeData::Buffer(buffer)) => {
                    let Ok(map) = buffer.map_readable() else {
                        return gst::PadProbeReturn::Ok;
                    };
                    let text = markup_to_text(&String::from_utf8_lossy(map.as_slice()));
                    drop(map);
                    let mut plain = gst::Buffer::from_mut_slice(text.into_bytes());
                    if let Some(plain) = plain.get_mut() {
                        plain.set_pts(buffer.pts());
                        plain.set_duration(buffer.duration());
                    }
                    info.data = Some(gst::PadProbeData::Buffer(plain));
                }
                _ => {}
            }
            gst::PadProbeReturn::Ok
        },
    );
    // the caps change on the way: only the hierarchy is checked
    link_through_queue(pipeline, queue, pad, mux_pad, gst::PadLinkCheck::HIERARCHY)
}

fn markup_caps() -> gst::Caps {
    gst::Caps::builder("text/x-raw")
        .field("format", "pango-markup")
        .build()
}

/// Decoded subtitles into `mux_pad` through an unbounded queue: the muxer
/// takes them only as fast as the slow video arrives, and a full queue in the
/// decoder's multiqueue would stop the demuxer, and with it the video.
fn link_subtitles(
    pipeline: &gst::Pipeline,
    pad: &gst::Pad,
    mux_pad: &gst::Pad,
) -> Result<(), String> {
    link_through_queue(
        pipeline,
        unbounded_queue()?,
        pad,
        mux_pad,
        gst::PadLinkCheck::DEFAULT,
    )
}

/// `pad` -> `queue` -> `mux_pad`, the queue added to `pipeline` and started.
fn link_through_queue(
    pipeline: &gst::Pipeline,
    queue: gst::Element,
    pad: &gst::Pad,
    mux_pad: &gst::Pad,
    check: gst::PadLinkCheck,
) -> Result<(), String> {
    pipeline.add(&queue).map_err(|e| e.to_string())?;
    let (sink, src) = (
        queue.static_pad("sink").ok_or("queue without sink pad")?,
        queue.static_pad("src").ok_or("queue without src pad")?,
    );
    src.link_full(mux_pad, check)
        .map_err(|e| format!("cannot keep a subtitle stream: {e:?}"))?;
    queue.sync_state_with_parent().map_err(|e| e.to_string())?;
    pad.link_full(&sink, check)
        .map(|_| ())
        .map_err(|e| format!("cannot keep a subtitle stream: {e:?}"))
}

/// A queue with no limit of buffers, bytes or time.
fn unbounded_queue() -> Result<gst::Element, String> {
    let queue = make("queue")?;
    for property in ["max-size-buffers", "max-size-bytes"] {
        queue.set_property(property, 0u32);
    }
    queue.set_property("max-size-time", 0u64);
    Ok(queue)
}

/// The text of Pango markup: tags removed, the five XML entities decoded.
fn markup_to_text(markup: &str) -> String {
    let mut text = String::with_capacity(markup.len());
    let mut in_tag = false;
    for c in markup.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => in_tag = false,
            _ if !in_tag => text.push(c),
            _ => {}
        }
    }
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

/// `pad`'s stream to a fakesink that neither syncs nor waits for preroll: a
/// stream nobody wants (an unlinked pad stops the demuxer), or one only
/// watched by a probe; one demuxer thread may feed several such sinks.
pub fn discard(pipeline: &gst::Pipeline, pad: &gst::Pad) -> Result<(), String> {
    let sink = make("fakesink")?;
    sink.set_property("sync", false);
    sink.set_property("async", false);
    pipeline.add(&sink).map_err(|e| e.to_string())?;
    sink.sync_state_with_parent().map_err(|e| e.to_string())?;
    let sink_pad = sink.static_pad("sink").ok_or("fakesink without pad")?;
    pad.link(&sink_pad)
        .map(|_| ())
        .map_err(|e| format!("{e:?}"))
}

/// Decoded audio re-encoded to AAC into `mux_pad`, through an unbounded queue
/// (the muxer takes audio only as fast as the slow video arrives).
fn link_audio(pipeline: &gst::Pipeline, pad: &gst::Pad, mux_pad: &gst::Pad) -> Result<(), String> {
    let elements = [
        unbounded_queue()?,
        make("audioconvert")?,
        make("audioresample")?,
        make("avenc_aac")?,
    ];
    pipeline.add_many(&elements).map_err(|e| e.to_string())?;
    gst::Element::link_many(&elements).map_err(|e| e.to_string())?;
    let encoded = elements[3]
        .static_pad("src")
        .ok_or("avenc_aac without src")?;
    encoded
        .link(mux_pad)
        .map_err(|e| format!("cannot mux the audio: {e:?}"))?;
    for element in &elements {
        element
            .sync_state_with_parent()
            .map_err(|e| e.to_string())?;
    }
    let sink = elements[0]
        .static_pad("sink")
        .ok_or("queue without sink pad")?;
    pad.link(&sink)
        .map(|_| ())
        .map_err(|e| format!("cannot link the audio: {e:?}"))
}

/// Keeps only the window's frames on the way into flashvsr: on the first
/// frame, seeks (from the application thread) to the keyframe before the
/// warm-up with the window's end as the stop, drops everything until that
/// seek's flush has passed, then lets through the frames in
/// `[render_from, end)`. If the seek fails the frames are still selected by
/// timestamp, from the file's start.
fn select_frames(
    pipeline: &gst::Pipeline,
    video_queue: &gst::Element,
    window: Window,
) -> Result<(), String> {
    let pad = video_queue
        .static_pad("sink")
        .ok_or("queue without sink pad")?;
    // 0: no seek asked yet, 1: asked, waiting for its flush, 2: selecting
    // (also when the seek failed: the frames still come from the start)
    let phase = Arc::new(AtomicU64::new(if window.partial { 0 } else { 2 }));
    let pipeline_weak = pipeline.downgrade();
    pad.add_probe(
        gst::PadProbeType::BUFFER | gst::PadProbeType::EVENT_FLUSH,
        move |_, info| {
            if let Some(gst::PadProbeData::Event(event)) = &info.data {
                if event.type_() == gst::EventType::FlushStop && phase.load(Ordering::Acquire) == 1
                {
                    phase.store(2, Ordering::Release);
                }
                return gst::PadProbeReturn::Ok;
            }
            let Some(pts) = info.buffer().and_then(|b| b.pts()).map(|t| t.nseconds()) else {
                return DROP;
            };
            match phase.load(Ordering::Acquire) {
                0 => {
                    phase.store(1, Ordering::Release);
                    let phase = phase.clone();
                    if let Some(pipeline) = pipeline_weak.upgrade() {
                        pipeline.call_async(move |pipeline| {
                            let sought = pipeline.seek(
                                1.0,
                                gst::SeekFlags::FLUSH
                                    | gst::SeekFlags::KEY_UNIT
                                    | gst::SeekFlags::SNAP_BEFORE,
                                gst::SeekType::Set,
                                gst::ClockTime::from_nseconds(window.seek),
                                gst::SeekType::Set,
                                gst::ClockTime::from_nseconds(window.end),
                            );
                            if sought.is_err() {
                                phase.store(2, Ordering::Release);
                            }
                        });
                    }
                    DROP
                }
                1 => DROP,
                _ if pts < window.render_from || pts >= window.end => DROP,
                _ => gst::PadProbeReturn::Ok,
            }
        },
    );
    Ok(())
}

/// The segment files joined into `output` (their video as encoded, one after
/// the other) with the source's first audio stream and its subtitles.
pub fn join(
    input: &Path,
    probe: &Probe,
    segments: &[PathBuf],
    output: &Path,
) -> Result<(), String> {
    let pipeline = gst::Pipeline::new();
    let concat = make("concat")?;
    let mux = make(muxer_for(output)?)?;
    let sink = make("filesink")?;
    sink.set_property("location", output.to_string_lossy().as_ref());
    pipeline
        .add_many([&concat, &mux, &sink])
        .map_err(|e| e.to_string())?;
    link_video_to_mux(&concat, &mux)
        .map_err(|e| format!("the segments' video cannot go into {}: {e}", mux.name()))?;
    mux.link(&sink).map_err(|e| e.to_string())?;
    for segment in segments {
        let src = make("filesrc")?;
        src.set_property("location", segment.to_string_lossy().as_ref());
        let parse = make("parsebin")?;
        pipeline
            .add_many([&src, &parse])
            .map_err(|e| e.to_string())?;
        src.link(&parse).map_err(|e| e.to_string())?;
        let concat_pad = concat
            .request_pad_simple("sink_%u")
            .ok_or("concat gives no more pads")?;
        let name = segment.display().to_string();
        let pipeline_weak = pipeline.downgrade();
        parse.connect_pad_added(move |_, pad| {
            let caps = pad.current_caps().unwrap_or_else(|| pad.query_caps(None));
            if StreamKind::of(&caps) != StreamKind::Video || concat_pad.is_linked() {
                return;
            }
            if let Err(e) = pad.link(&concat_pad)
                && let Some(pipeline) = pipeline_weak.upgrade()
            {
                gst::element_error!(
                    pipeline,
                    gst::CoreError::Negotiation,
                    ("segment {} cannot be joined: {:?}", name, e)
                );
            }
        });
    }
    // the source's audio and subtitles; its video is decoded and dropped
    let src = make("filesrc")?;
    src.set_property("location", input.to_string_lossy().as_ref());
    let decode = make("decodebin")?;
    let dropped_video = make("fakesink")?;
    dropped_video.set_property("sync", false);
    dropped_video.set_property("async", false);
    pipeline
        .add_many([&src, &decode, &dropped_video])
        .map_err(|e| e.to_string())?;
    src.link(&decode).map_err(|e| e.to_string())?;
    let other = OtherStreams::request(&mux, probe)?;
    link_decoded(&pipeline, &decode, &dropped_video, other);
    let result = run_to_end(&pipeline, None);
    let _ = pipeline.set_state(gst::State::Null);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The markup's caps event crosses the linked pad only after the link,
    /// as when decodebin exposes a pad from the demuxer's thread: the pad is
    /// a ghost pad of a bin whose subparse (held to markup, as a demuxer
    /// gives) starts only when the pipeline plays, so the accept-caps check
    /// runs through the subtitle queue.
    #[test]
    fn markup_caps_that_arrive_after_the_link_still_reach_the_muxer_as_text() {
        gst::init().unwrap();
        let dir = std::env::temp_dir().join(format!("flashvsr-markup-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (srt, mkv) = (dir.join("in.srt"), dir.join("out.mkv"));
        std::fs::write(
            &srt,
            "1\n00:00:00,000 --> 00:00:00,800\n<i>hello</i> & bye\n\n",
        )
        .unwrap();
        let subtitles = gst::parse::bin_from_description(
            &format!(
                "filesrc location=\"{}\" ! subparse ! capsfilter caps=text/x-raw,format=pango-markup",
                srt.display()
            ),
            true,
        )
        .unwrap();
        let pipeline = gst::Pipeline::new();
        let mux = make("matroskamux").unwrap();
        let sink = make("filesink").unwrap();
        sink.set_property("location", mkv.to_string_lossy().as_ref());
        pipeline
            .add_many([subtitles.upcast_ref(), &mux, &sink])
            .unwrap();
        mux.link(&sink).unwrap();
        let mux_pad = mux.request_pad_simple("subtitle_%u").unwrap();
        assert!(
            !mux_pad.query_caps(None).can_intersect(&markup_caps()),
            "matroskamux takes only plain text here"
        );
        let pad = subtitles.static_pad("src").unwrap();
        assert!(
            pad.current_caps().is_none(),
            "no caps crossed before the link"
        );
        link_markup_as_text(&pipeline, &pad, &mux_pad).unwrap();

        let result = run_to_end(&pipeline, None);
        pipeline.set_state(gst::State::Null).unwrap();
        result.unwrap();
        let written = std::fs::read(&mkv).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let has = |needle: &[u8]| written.windows(needle.len()).any(|w| w == needle);
        // subparse gives the '&' as "&amp;" in its markup
        assert!(has(b"hello & bye"), "the subtitle's text is in the file");
        assert!(!has(b"<i>") && !has(b"</i>"), "its markup is not");
    }

    #[test]
    fn markup_becomes_its_text() {
        assert_eq!(
            markup_to_text("<i>caf&amp;é</i> &lt;1&gt; it&apos;s"),
            "caf&é <1> it's"
        );
    }
}
