//! The `flashvsr` element in a `gst_check::Harness`: properties, caps, timestamps,
//! EOS, flush, caps changes, GAP, latency and the missing-weights error. Frames run
//! through a model of the tiny fixture's sizes with random weights (`common::tiny_model`) at 32x24 -> 128x96.

mod common;
use common::{init, tiny_model};

use std::sync::{Arc, Mutex};

use gst::prelude::*;
use gst_check::Harness;

const FRAME: gst::ClockTime = gst::ClockTime::from_mseconds(40);

/// What left the element's src pad, in order.
#[derive(Debug, Clone)]
enum Seen {
    Buffer(gst::Buffer),
    Caps(gst::Caps),
    Event(gst::EventType),
}

type Log = Arc<Mutex<Vec<Seen>>>;

fn record(pad: &gst::Pad) -> Log {
    let log: Log = Arc::default();
    let sink = log.clone();
    pad.add_probe(
        gst::PadProbeType::DATA_DOWNSTREAM | gst::PadProbeType::EVENT_FLUSH,
        move |_, info| {
            let seen = match &info.data {
                Some(gst::PadProbeData::Buffer(b)) => Some(Seen::Buffer(b.clone())),
                Some(gst::PadProbeData::Event(e)) => Some(match e.view() {
                    gst::EventView::Caps(c) => Seen::Caps(c.caps_owned()),
                    _ => Seen::Event(e.type_()),
                }),
                _ => None,
            };
            if let Some(seen) = seen {
                sink.lock().unwrap().push(seen);
            }
            gst::PadProbeReturn::Ok
        },
    );
    log
}

fn buffers(log: &Log) -> Vec<gst::Buffer> {
    log.lock()
        .unwrap()
        .iter()
        .filter_map(|s| match s {
            Seen::Buffer(b) => Some(b.clone()),
            _ => None,
        })
        .collect()
}

/// Waits (up to a minute) until `n` buffers have left the element, then checks
/// that no more did: the worker task outputs frames after `push` returns.
fn wait_for_buffers(log: &Log, n: usize) -> Vec<gst::Buffer> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while buffers(log).len() < n && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let out = buffers(log);
    assert_eq!(out.len(), n, "buffers out");
    out
}

/// Waits (up to a minute) until EOS has left the element.
fn wait_for_eos(log: &Log) {
    wait_for_event(log, gst::EventType::Eos);
}

/// Waits (up to a minute) until an event of type `wanted` has left the element.
fn wait_for_event(log: &Log, wanted: gst::EventType) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let seen = || {
        log.lock()
            .unwrap()
            .iter()
            .any(|s| matches!(s, Seen::Event(t) if *t == wanted))
    };
    while !seen() {
        assert!(
            std::time::Instant::now() < deadline,
            "no {wanted:?} out within a minute"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// A harness around a started `flashvsr` (fixture model, scale 4) with `caps` set.
fn start(model: &std::path::Path, caps: &str) -> (Harness, Log) {
    // The harness starts a filter as soon as it wraps it: configure it first.
    let element = gst::ElementFactory::make("flashvsr")
        .property("model-dir", model.to_str().unwrap())
        .property_from_str("model-version", "v1")
        .build()
        .unwrap();
    let log = record(&element.static_pad("src").unwrap());
    let mut h = Harness::with_element(&element, Some("sink"), Some("src"));
    h.set_src_caps_str(caps);
    // The segment goes out on the model thread: wait for it, so that what the
    // tests send next (a flush) finds it downstream already.
    wait_for_event(&log, gst::EventType::Segment);
    (h, log)
}

fn caps_str(format: &str, w: u32, h: u32) -> String {
    format!(
        "video/x-raw,format={format},width={w},height={h},framerate=25/1,pixel-aspect-ratio=12/11"
    )
}

fn info_of(caps: &str) -> gst_video::VideoInfo {
    gst_video::VideoInfo::from_caps(&caps.parse::<gst::Caps>().unwrap()).unwrap()
}

/// Input frame `i` of a 25 fps stream whose first frame is at `start`.
fn frame(info: &gst_video::VideoInfo, i: u64, start: gst::ClockTime) -> gst::Buffer {
    let mut buffer = gst::Buffer::from_mut_slice(vec![(i * 37 % 251) as u8; info.size()]);
    {
        let b = buffer.get_mut().unwrap();
        b.set_pts(start + FRAME * i);
        b.set_dts(start + FRAME * i);
        b.set_duration(FRAME);
        b.set_offset(i);
        b.set_offset_end(i + 1);
        if i == 0 {
            b.set_flags(gst::BufferFlags::DISCONT);
        }
    }
    buffer
}

fn assert_buf(buffer: &gst::BufferRef, i: u64, start: gst::ClockTime, size: usize) {
    assert_eq!(buffer.pts(), Some(start + FRAME * i), "pts of output {i}");
    assert_eq!(buffer.dts(), Some(start + FRAME * i), "dts of output {i}");
    assert_eq!(buffer.duration(), Some(FRAME), "duration of output {i}");
    assert_eq!(buffer.offset(), i, "offset of output {i}");
    assert_eq!(buffer.offset_end(), i + 1, "offset_end of output {i}");
    assert_eq!(
        buffer.flags().contains(gst::BufferFlags::DISCONT),
        i == 0,
        "DISCONT of output {i}"
    );
    assert_eq!(buffer.size(), size, "size of output {i}");
}

#[test]
fn properties_have_their_documented_defaults_and_ranges() {
    init();
    let element = gst::ElementFactory::make("flashvsr").build().unwrap();
    assert_eq!(element.property::<Option<String>>("model-dir"), None);
    assert_eq!(element.property::<u32>("scale"), 4);
    assert_eq!(element.property::<String>("device"), "cpu");
    assert_eq!(element.property::<f64>("sparse-ratio"), 2.0);
    assert_eq!(element.property::<f64>("kv-ratio"), 3.0);
    assert_eq!(element.property::<u32>("local-range"), 11);
    assert_eq!(element.property::<u64>("seed"), 0);
    assert_eq!(element.property::<u64>("max-memory"), 0);
    for (name, nick) in [
        ("model-version", "v1-1"),
        ("precision", "f32"),
        ("attention", "auto"),
        ("color-fix", "adain"),
        ("late-policy", "wait"),
    ] {
        assert_eq!(
            enum_nick(&element.property_value(name)),
            nick,
            "default of {name}"
        );
    }

    let scale = element.find_property("scale").unwrap();
    let scale = scale.downcast_ref::<gst::glib::ParamSpecUInt>().unwrap();
    assert_eq!((scale.minimum(), scale.maximum()), (2, 4));
    element.set_property_from_str("model-version", "v1");
    assert_eq!(enum_nick(&element.property_value("model-version")), "v1");
    element.set_property_from_str("color-fix", "wavelet");
    assert_eq!(enum_nick(&element.property_value("color-fix")), "wavelet");
    element.set_property_from_str("attention", "gathered");
    assert_eq!(enum_nick(&element.property_value("attention")), "gathered");
    element.set_property_from_str("late-policy", "bicubic");
    assert_eq!(enum_nick(&element.property_value("late-policy")), "bicubic");
    element.set_property("model-dir", "/models/flashvsr");
    assert_eq!(
        element.property::<Option<String>>("model-dir").as_deref(),
        Some("/models/flashvsr")
    );
    for name in [
        "model-dir",
        "model-version",
        "scale",
        "device",
        "precision",
        "attention",
        "color-fix",
        "sparse-ratio",
        "kv-ratio",
        "local-range",
        "seed",
        "noise-offset",
        "max-memory",
    ] {
        let pspec = element.find_property(name).unwrap();
        assert!(
            !pspec.blurb().unwrap_or_default().is_empty(),
            "{name} has a blurb"
        );
        assert!(
            pspec.flags().contains(gst::PARAM_FLAG_MUTABLE_READY),
            "{name} is marked mutable in READY"
        );
    }
}

fn enum_nick(value: &gst::glib::Value) -> String {
    let (_class, v) = gst::glib::EnumValue::from_value(value).unwrap();
    v.nick().to_string()
}

#[test]
fn missing_weights_fail_ready_to_paused_naming_the_folder() {
    init();
    let pipeline = gst::parse::launch(
        "videotestsrc num-buffers=1 ! flashvsr name=vsr model-dir=/nonexistent/flashvsr-weights ! fakesink",
    )
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    assert!(pipeline.set_state(gst::State::Paused).is_err());
    let bus = pipeline.bus().unwrap();
    let msg = bus
        .timed_pop_filtered(gst::ClockTime::from_seconds(5), &[gst::MessageType::Error])
        .expect("an error message on the bus");
    let gst::MessageView::Error(err) = msg.view() else {
        unreachable!()
    };
    let text = err.error().to_string();
    assert!(text.contains("/nonexistent/flashvsr-weights"), "{text}");
    assert!(text.contains("model-dir"), "{text}");
    assert_eq!(msg.src().unwrap().name(), "vsr");
    pipeline.set_state(gst::State::Null).unwrap();
}

/// The fused kernel is CUDA's: asked for on the CPU, the start fails naming
/// the property and its value.
#[test]
fn fused_attention_on_the_cpu_fails_the_start_naming_the_setting() {
    init();
    let model = common::tiny_model();
    let element = gst::ElementFactory::make("flashvsr")
        .property("model-dir", model.to_str().unwrap())
        .build()
        .unwrap();
    element.set_property_from_str("attention", "fused");
    let text = common::start_error_text(&element);
    assert!(text.contains("attention \"fused\""), "{text}");
    assert!(text.contains("CUDA"), "{text}");
}

#[test]
fn bad_weights_fail_ready_to_paused_naming_the_folder() {
    init();
    // A folder that exists but holds no weights.
    let empty = std::env::temp_dir().join(format!("flashvsr-empty-{}", std::process::id()));
    std::fs::create_dir_all(&empty).unwrap();
    let element = gst::ElementFactory::make("flashvsr")
        .property("model-dir", empty.to_str().unwrap())
        .build()
        .unwrap();
    let text = common::start_error_text(&element);
    assert!(text.contains(empty.to_str().unwrap()), "{text}");
    assert!(text.contains("model-dir"), "{text}");
    std::fs::remove_dir(&empty).unwrap();
}

/// Starts a `flashvsr` on an existing folder with `device` and returns the error text.
fn device_error(device: &str) -> String {
    let element = gst::ElementFactory::make("flashvsr")
        .property("model-dir", std::env::temp_dir().to_str().unwrap())
        .property("device", device)
        .build()
        .unwrap();
    common::start_error_text(&element)
}

#[test]
fn unusable_device_fails_ready_to_paused_naming_the_property() {
    init();
    let text = device_error("tpu:0");
    assert!(text.contains("device") && text.contains("tpu:0"), "{text}");
}

#[cfg(not(feature = "cuda"))]
#[test]
fn cuda_without_the_cuda_feature_says_how_to_build() {
    init();
    let text = device_error("cuda:0");
    assert!(
        text.contains("device") && text.contains("--features cuda"),
        "{text}"
    );
}

#[test]
fn caps_queries_map_sizes_through_the_scale() {
    init();
    // Pads answer caps queries in any state: no weights needed.
    let pipeline = gst::parse::launch(
        "videotestsrc ! flashvsr name=vsr ! video/x-raw,format=I420,width=704,height=576,framerate=25/1 ! fakesink",
    )
    .unwrap()
    .downcast::<gst::Bin>()
    .unwrap();
    let element = pipeline.by_name("vsr").unwrap();
    let sinkpad = element.static_pad("sink").unwrap();
    let caps = sinkpad.query_caps(None);
    let s = caps.structure(0).unwrap();
    assert_eq!(caps.size(), 1, "{caps}");
    assert_eq!(s.get::<i32>("width").unwrap(), 176);
    assert_eq!(s.get::<i32>("height").unwrap(), 144);
    assert_eq!(s.get::<&str>("format").unwrap(), "I420");

    let good: gst::Caps = "video/x-raw,format=I420,width=176,height=144,framerate=25/1"
        .parse()
        .unwrap();
    assert!(sinkpad.query_accept_caps(&good));
    for bad in [
        "video/x-raw,format=I420,width=177,height=144,framerate=25/1",
        "video/x-raw,format=GRAY8,width=176,height=144,framerate=25/1",
        "video/x-raw,format=I420,width=176,height=144,framerate=30/1",
    ] {
        assert!(
            !sinkpad.query_accept_caps(&bad.parse().unwrap()),
            "accepted {bad}"
        );
    }

    // With scale 2 the same downstream caps need a 352x288 input.
    element.set_property("scale", 2u32);
    let caps = sinkpad.query_caps(None);
    assert_eq!(caps.structure(0).unwrap().get::<i32>("width").unwrap(), 352);

    // The src pad answers for what upstream can give, upscaled.
    let pipeline = gst::parse::launch(
        "videotestsrc ! video/x-raw,format=NV12,width=320,height=240,framerate=30/1 ! flashvsr name=vsr ! fakesink",
    )
    .unwrap()
    .downcast::<gst::Bin>()
    .unwrap();
    let srcpad = pipeline.by_name("vsr").unwrap().static_pad("src").unwrap();
    let caps = srcpad.query_caps(None);
    let s = caps.structure(0).unwrap();
    assert_eq!(
        (
            s.get::<i32>("width").unwrap(),
            s.get::<i32>("height").unwrap()
        ),
        (1280, 960)
    );
    assert_eq!(s.get::<&str>("format").unwrap(), "NV12");
}

#[test]
fn negotiates_every_format_with_scaled_size_and_carried_fields() {
    init();
    let model = tiny_model();
    for format in [
        "I420",
        "NV12",
        "RGB",
        "BGR",
        "RGBA",
        "BGRA",
        "RGBx",
        "BGRx",
        "YV12",
        "NV21",
        "Y42B",
        "Y444",
        "I420_10LE",
        "I422_10LE",
        "Y444_10LE",
        "P010_10LE",
    ] {
        let input = caps_str(format, 32, 24);
        let (mut h, log) = start(&model, &input);
        let out_caps: gst::Caps = caps_str(format, 128, 96).parse().unwrap();
        let src_caps = h
            .element()
            .unwrap()
            .static_pad("src")
            .unwrap()
            .current_caps()
            .unwrap();
        let s = src_caps.structure(0).unwrap();
        let expected = out_caps.structure(0).unwrap();
        for field in [
            "format",
            "width",
            "height",
            "framerate",
            "pixel-aspect-ratio",
        ] {
            assert_eq!(
                s.value(field).unwrap().serialize().unwrap(),
                expected.value(field).unwrap().serialize().unwrap(),
                "{format}: {field} in {src_caps}"
            );
        }
        let out_info = gst_video::VideoInfo::from_caps(&src_caps).unwrap();
        let in_info = info_of(&input);
        assert_eq!(
            out_info.colorimetry(),
            in_info.colorimetry(),
            "{format}: colorimetry"
        );

        h.push(frame(&in_info, 0, gst::ClockTime::ZERO)).unwrap();
        assert!(h.push_event(gst::event::Eos::new()));
        wait_for_eos(&log);
        let out = buffers(&log);
        assert_eq!(out.len(), 1, "{format}: one frame in, one out");
        assert_buf(&out[0], 0, gst::ClockTime::ZERO, out_info.size());
    }
}

#[test]
fn unsupported_caps_are_refused() {
    init();
    let model = tiny_model();
    let (h, _) = start(&model, &caps_str("I420", 32, 24));
    let element = h.element().unwrap();
    let (sinkpad, srcpad) = (
        element.static_pad("sink").unwrap(),
        element.static_pad("src").unwrap(),
    );
    let negotiated = srcpad.current_caps().unwrap();
    for bad in [
        caps_str("GRAY8", 32, 24),
        "video/x-raw,format=I420,width=32,height=24,framerate=25/1,interlace-mode=interleaved"
            .to_string(),
        caps_str("I420", 3000, 24),
    ] {
        let caps: gst::Caps = bad.parse().unwrap();
        assert!(
            !sinkpad.send_event(gst::event::Caps::new(&caps)),
            "accepted {bad}"
        );
        assert_eq!(srcpad.current_caps().unwrap(), negotiated);
    }
}

#[test]
fn every_output_carries_its_input_timestamps() {
    init();
    let model = tiny_model();
    let caps = caps_str("I420", 32, 24);
    let (mut h, log) = start(&model, &caps);
    let info = info_of(&caps);
    let out_size = info_of(&caps_str("I420", 128, 96)).size();
    let start_ts = gst::ClockTime::from_seconds(3);
    for i in 0..40 {
        h.push(frame(&info, i, start_ts)).unwrap();
        // Nothing comes out before the 25th frame; then frames 0..21 at once.
        let received = i + 1;
        let expected = if received < 25 {
            0
        } else {
            21 + 8 * ((received - 25) / 8) as usize
        };
        wait_for_buffers(&log, expected);
    }
    assert!(h.push_event(gst::event::Eos::new()));
    wait_for_eos(&log);
    let out = buffers(&log);
    assert_eq!(out.len(), 40);
    for (i, b) in out.iter().enumerate() {
        assert_buf(b, i as u64, start_ts, out_size);
    }
    assert!(matches!(
        log.lock().unwrap().last(),
        Some(Seen::Event(gst::EventType::Eos))
    ));
}

#[test]
fn eos_drains_fewer_than_25_frames() {
    init();
    let model = tiny_model();
    let caps = caps_str("RGB", 32, 24);
    let (mut h, log) = start(&model, &caps);
    let info = info_of(&caps);
    for i in 0..5 {
        h.push(frame(&info, i, gst::ClockTime::ZERO)).unwrap();
    }
    assert!(buffers(&log).is_empty(), "frames held before EOS");
    assert!(h.push_event(gst::event::Eos::new()));
    wait_for_eos(&log);
    let out_size = info_of(&caps_str("RGB", 128, 96)).size();
    for i in 0..5 {
        let b = h.pull().unwrap();
        assert_buf(&b, i, gst::ClockTime::ZERO, out_size);
    }
    assert!(h.try_pull().is_none(), "nothing after the 5 frames");
    let events: Vec<gst::EventType> = std::iter::from_fn(|| h.try_pull_event())
        .map(|e| e.type_())
        .collect();
    assert_eq!(
        events,
        [
            gst::EventType::StreamStart,
            gst::EventType::Caps,
            gst::EventType::Segment,
            gst::EventType::Eos
        ]
    );
}

#[test]
fn flush_drops_held_frames_and_restarts() {
    init();
    let model = tiny_model();
    let caps = caps_str("I420", 32, 24);
    let (mut h, log) = start(&model, &caps);
    let info = info_of(&caps);
    for i in 0..10 {
        h.push(frame(&info, i, gst::ClockTime::ZERO)).unwrap();
    }
    assert!(h.push_event(gst::event::FlushStart::new()));
    assert!(h.push_event(gst::event::FlushStop::new(true)));
    let mut segment = gst::FormattedSegment::<gst::ClockTime>::new();
    segment.set_start(gst::ClockTime::from_seconds(10));
    assert!(h.push_event(gst::event::Segment::new(&segment)));
    let after = gst::ClockTime::from_seconds(10);
    for i in 0..3 {
        h.push(frame(&info, i, after)).unwrap();
    }
    assert!(h.push_event(gst::event::Eos::new()));
    wait_for_eos(&log);
    let out = buffers(&log);
    assert_eq!(out.len(), 3, "only the frames after the flush");
    let out_size = info_of(&caps_str("I420", 128, 96)).size();
    for (i, b) in out.iter().enumerate() {
        assert_buf(b, i as u64, after, out_size);
    }
    let kinds: Vec<String> = log
        .lock()
        .unwrap()
        .iter()
        .filter_map(|s| match s {
            Seen::Event(t) if *t == gst::EventType::FlushStop || *t == gst::EventType::Segment => {
                Some(format!("{t:?}"))
            }
            _ => None,
        })
        .collect();
    assert_eq!(kinds, ["Segment", "FlushStop", "Segment"]);
}

#[test]
fn caps_change_drains_old_frames_at_the_old_size_first() {
    init();
    let model = tiny_model();
    let first = caps_str("I420", 32, 24);
    let (mut h, log) = start(&model, &first);
    for i in 0..5 {
        h.push(frame(&info_of(&first), i, gst::ClockTime::ZERO))
            .unwrap();
    }
    let second = caps_str("I420", 16, 16);
    assert!(h.push_event(gst::event::Caps::new(&second.parse().unwrap())));
    for i in 5..9 {
        h.push(frame(&info_of(&second), i, gst::ClockTime::ZERO))
            .unwrap();
    }
    assert!(h.push_event(gst::event::Eos::new()));
    wait_for_eos(&log);

    let big = info_of(&caps_str("I420", 128, 96)).size();
    let small = info_of(&caps_str("I420", 64, 64)).size();
    let seen = log.lock().unwrap().clone();
    let order: Vec<String> = seen
        .iter()
        .map(|s| match s {
            Seen::Buffer(b) if b.size() == big => "big".to_string(),
            Seen::Buffer(b) if b.size() == small => "small".to_string(),
            Seen::Buffer(b) => format!("buffer of {} bytes", b.size()),
            Seen::Caps(c) => {
                let s = c.structure(0).unwrap();
                format!(
                    "caps {}x{}",
                    s.get::<i32>("width").unwrap(),
                    s.get::<i32>("height").unwrap()
                )
            }
            Seen::Event(t) => format!("{t:?}"),
        })
        .collect();
    let mut expected = vec![
        "StreamStart".to_string(),
        "caps 128x96".into(),
        "Segment".into(),
    ];
    expected.extend(std::iter::repeat_n("big".to_string(), 5));
    expected.push("caps 64x64".into());
    expected.extend(std::iter::repeat_n("small".to_string(), 4));
    expected.push("Eos".into());
    assert_eq!(order, expected);
    for (i, b) in buffers(&log).iter().enumerate() {
        assert_eq!(b.pts(), Some(FRAME * i as u64));
    }
}

#[test]
fn gap_is_forwarded_behind_the_frames_before_it() {
    init();
    let model = tiny_model();
    let caps = caps_str("NV12", 32, 24);
    let (mut h, log) = start(&model, &caps);
    let info = info_of(&caps);
    for i in 0..3 {
        h.push(frame(&info, i, gst::ClockTime::ZERO)).unwrap();
    }
    assert!(h.push_event(gst::event::Gap::builder(FRAME * 3).duration(FRAME).build()));
    for i in 4..6 {
        h.push(frame(&info, i, gst::ClockTime::ZERO)).unwrap();
    }
    assert!(h.push_event(gst::event::Eos::new()));
    wait_for_eos(&log);
    let order: Vec<String> = log
        .lock()
        .unwrap()
        .iter()
        .skip(3)
        .map(|s| match s {
            Seen::Buffer(b) => format!("{}", b.pts().unwrap().mseconds()),
            Seen::Caps(_) => "caps".into(),
            Seen::Event(t) => format!("{t:?}"),
        })
        .collect();
    assert_eq!(order, ["0", "40", "80", "Gap", "160", "200", "Eos"]);
}

#[test]
fn latency_adds_held_frames_and_chunk_budget_to_upstream() {
    init();
    let model = tiny_model();
    let (mut h, _) = start(&model, &caps_str("I420", 32, 24));
    h.set_upstream_latency(gst::ClockTime::from_mseconds(10));
    let mut q = gst::query::Latency::new();
    assert!(h.sinkpad().unwrap().peer_query(&mut q));
    let (_live, min, max) = q.result();
    // 25 frames held at 25 fps, plus 8 frames for processing until a chunk has been
    // timed; no upstream maximum stays none.
    assert_eq!(min, gst::ClockTime::from_mseconds(10 + 33 * 40));
    assert_eq!(max, None);
}

/// A harness around a started `flashvsr` at `scale` with a memory budget, whose
/// element posts on a bus; also returns, per error posted, its message, how
/// many buffers had left the element when it was posted, and its details.
type Errors = Arc<Mutex<Vec<(String, usize, String)>>>;

fn start_on_bus(
    model: &std::path::Path,
    caps: &str,
    scale: u32,
    max_memory: u64,
) -> (Harness, Log, Errors) {
    let element = gst::ElementFactory::make("flashvsr")
        .property("model-dir", model.to_str().unwrap())
        .property_from_str("model-version", "v1")
        .property("scale", scale)
        .property("max-memory", max_memory)
        .build()
        .unwrap();
    let log = record(&element.static_pad("src").unwrap());
    let errors: Errors = Arc::default();
    let bus = gst::Bus::new();
    let (seen, sink) = (log.clone(), errors.clone());
    bus.set_sync_handler(move |_, message| {
        if let gst::MessageView::Error(e) = message.view() {
            let buffers = buffers(&seen).len();
            let details = e.debug().map(|d| d.to_string()).unwrap_or_default();
            sink.lock()
                .unwrap()
                .push((e.error().to_string(), buffers, details));
        }
        gst::BusSyncReply::Drop
    });
    element.set_bus(Some(&bus));
    let mut h = Harness::with_element(&element, Some("sink"), Some("src"));
    h.set_src_caps_str(caps);
    (h, log, errors)
}

#[test]
fn caps_beyond_the_memory_budget_are_refused_after_the_held_frames() {
    init();
    let model = tiny_model();
    let caps = caps_str("I420", 32, 24);
    let (mut h, log, errors) = start_on_bus(&model, &caps, 2, 1 << 30);
    let info = info_of(&caps);
    for i in 0..5 {
        h.push(frame(&info, i, gst::ClockTime::ZERO)).unwrap();
    }
    assert!(buffers(&log).is_empty());
    // 4096x4096 at x2 is inside the 8192 output limit but far beyond 1 GiB
    let huge: gst::Caps = caps_str("I420", 4096, 4096).parse().unwrap();
    let sinkpad = h.element().unwrap().static_pad("sink").unwrap();
    assert!(!sinkpad.send_event(gst::event::Caps::new(&huge)));
    let errors = errors.lock().unwrap().clone();
    assert_eq!(errors.len(), 1, "{errors:?}");
    let (message, buffers_before, details) = &errors[0];
    assert!(
        message.starts_with("FlashVSR needs about ")
            && message.contains(" GiB for 8192x8192 output, 1.0 GiB available")
            && message.ends_with("lower the scale or the input size"),
        "{message}"
    );
    // the details give the figures of the same layout as the message
    let needed = message
        .strip_prefix("FlashVSR needs about ")
        .and_then(|m| m.split(" for ").next())
        .unwrap();
    assert!(
        details.contains("caps video/x-raw") && details.ends_with(&format!("{needed} in all")),
        "{message} / {details}"
    );
    assert_eq!(
        *buffers_before, 5,
        "the held frames come out before the error"
    );
    let out = buffers(&log);
    assert_eq!(out.len(), 5);
    let out_size = info_of(&caps_str("I420", 64, 48)).size();
    for (i, b) in out.iter().enumerate() {
        assert_buf(b, i as u64, gst::ClockTime::ZERO, out_size);
    }
}

#[test]
fn a_bad_buffer_ends_the_stream_after_the_held_frames() {
    init();
    let model = tiny_model();
    let caps = caps_str("I420", 32, 24);
    let (mut h, log, errors) = start_on_bus(&model, &caps, 4, 0);
    let info = info_of(&caps);
    for i in 0..30 {
        h.push(frame(&info, i, gst::ClockTime::ZERO)).unwrap();
    }
    // the first chunk ran at frame 25: 21 out, 9 held
    wait_for_buffers(&log, 21);
    let short = gst::Buffer::from_mut_slice(vec![0u8; info.size() / 2]);
    assert_eq!(h.push(short), Err(gst::FlowError::Error));
    let errors: Vec<(String, usize)> = errors
        .lock()
        .unwrap()
        .iter()
        .map(|(message, buffers, _)| (message.clone(), *buffers))
        .collect();
    assert_eq!(
        errors,
        [("Could not read a I420 32x24 input frame".to_string(), 30)]
    );
    let out = buffers(&log);
    assert_eq!(out.len(), 30);
    let out_size = info_of(&caps_str("I420", 128, 96)).size();
    for (i, b) in out.iter().enumerate() {
        assert_buf(b, i as u64, gst::ClockTime::ZERO, out_size);
    }
}

#[test]
fn latency_at_absurd_framerates_saturates() {
    init();
    let model = tiny_model();
    for rate in ["1/2147483647", "1/858993459"] {
        let caps = format!("video/x-raw,format=I420,width=32,height=24,framerate={rate}");
        let (mut h, _) = start(&model, &caps);
        h.set_upstream_latency(gst::ClockTime::from_mseconds(10));
        let mut q = gst::query::Latency::new();
        assert!(h.sinkpad().unwrap().peer_query(&mut q));
        let (_live, min, max) = q.result();
        // 25 frames of 68 or 27 years each do not fit a ClockTime: the answer is
        // the largest one, not a wrapped or truncated sum
        assert_eq!(min, gst::ClockTime::MAX, "{rate}");
        assert_eq!(max, None, "{rate}");
    }
}

/// Input frames until the engine runs chunk `k` (0: the first, 25 frames).
fn frames_through_chunk(k: u64) -> u64 {
    25 + 8 * k
}

#[test]
fn a_flush_during_a_chunk_cancels_it_between_dit_blocks() {
    init();
    // Not the shared fixture: a model written here with 32 DiT blocks (the tiny
    // fixture's widths), so that a chunk is many blocks long and a flush that
    // waited for it would show. 32x32 input at x4 is 128x128 output.
    let scratch = common::Scratch::created("flush-model");
    let spec = gstflashvsr::devtools::random_model::RandomModelSpec {
        dit_blocks: 32,
        ..gstflashvsr::devtools::random_model::RandomModelSpec::tiny(3)
    };
    gstflashvsr::devtools::random_model::write_model_dir(&spec, &scratch.0).unwrap();
    let caps = caps_str("RGB", 32, 32);
    let (mut h, log) = start(&scratch.0, &caps);
    let info = info_of(&caps);

    // Chunks 0 and 1 run to the end: how long a chunk takes here and now.
    for i in 0..frames_through_chunk(0) {
        h.push(frame(&info, i, gst::ClockTime::ZERO)).unwrap();
    }
    wait_for_buffers(&log, 21);
    for i in frames_through_chunk(0)..frames_through_chunk(1) - 1 {
        h.push(frame(&info, i, gst::ClockTime::ZERO)).unwrap();
    }
    let started = std::time::Instant::now();
    h.push(frame(
        &info,
        frames_through_chunk(1) - 1,
        gst::ClockTime::ZERO,
    ))
    .unwrap();
    wait_for_buffers(&log, 29);
    let whole_chunk = started.elapsed();

    // Chunk 2 starts with its last frame; flush a quarter of a chunk into it.
    for i in frames_through_chunk(1)..frames_through_chunk(2) {
        h.push(frame(&info, i, gst::ClockTime::ZERO)).unwrap();
    }
    std::thread::sleep(whole_chunk / 4);
    // FLUSH_STOP waits for the model thread to leave the cancelled chunk.
    let flushing = std::time::Instant::now();
    assert!(h.push_event(gst::event::FlushStart::new()));
    let seen_at_flush = log.lock().unwrap().len();
    assert!(h.push_event(gst::event::FlushStop::new(true)));
    let flush_took = flushing.elapsed();
    assert!(
        flush_took < whole_chunk / 2,
        "the flush took {flush_took:?}: it waited for the chunk ({whole_chunk:?})"
    );
    // Nothing of the cancelled chunk comes out, before or after the flush.
    let after_flush: Vec<String> = log.lock().unwrap()[seen_at_flush..]
        .iter()
        .map(|s| match s {
            Seen::Buffer(b) => format!("buffer {:?}", b.pts()),
            Seen::Caps(_) => "caps".into(),
            Seen::Event(t) => format!("{t:?}"),
        })
        .collect();
    assert_eq!(after_flush, ["FlushStop"]);
    assert_eq!(buffers(&log).len(), 29, "only chunks 0 and 1's frames");

    // The model restarts cleanly after the flush.
    let mut segment = gst::FormattedSegment::<gst::ClockTime>::new();
    segment.set_start(gst::ClockTime::from_seconds(10));
    assert!(h.push_event(gst::event::Segment::new(&segment)));
    let after = gst::ClockTime::from_seconds(10);
    for i in 0..2 {
        h.push(frame(&info, i, after)).unwrap();
    }
    assert!(h.push_event(gst::event::Eos::new()));
    wait_for_eos(&log);
    let out = buffers(&log);
    assert_eq!(out.len(), 31);
    let out_size = info_of(&caps_str("RGB", 128, 128)).size();
    for (i, b) in out[29..].iter().enumerate() {
        assert_buf(b, i as u64, after, out_size);
    }
    eprintln!("whole chunk {whole_chunk:?}, flush {flush_took:?}");
}

#[test]
fn discont_drains_the_frames_before_the_gap() {
    init();
    let model = tiny_model();
    let caps = caps_str("I420", 32, 24);
    let (mut h, log) = start(&model, &caps);
    let info = info_of(&caps);
    for i in 0..30 {
        h.push(frame(&info, i, gst::ClockTime::ZERO)).unwrap();
    }
    // chunk 0 ran at frame 25: 21 out, 9 held
    wait_for_buffers(&log, 21);
    // frames 30..34 were lost upstream: 35 comes with DISCONT, and the 9 held
    // frames come out before it, without waiting for 3 more frames
    let mut after_gap = frame(&info, 35, gst::ClockTime::ZERO);
    after_gap
        .get_mut()
        .unwrap()
        .set_flags(gst::BufferFlags::DISCONT);
    h.push(after_gap).unwrap();
    wait_for_buffers(&log, 30);
    assert!(h.push_event(gst::event::Eos::new()));
    wait_for_eos(&log);
    let out = buffers(&log);
    let pts: Vec<u64> = out
        .iter()
        .map(|b| b.pts().unwrap().mseconds() / 40)
        .collect();
    let expected: Vec<u64> = (0..30).chain([35]).collect();
    assert_eq!(pts, expected);
    assert!(out[30].flags().contains(gst::BufferFlags::DISCONT));
}
