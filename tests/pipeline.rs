//! `flashvsr` in real pipelines, as users write them: files through decodebin and
//! x264enc into MP4 (frame count, size, pixel-aspect-ratio and timestamps checked by
//! decoding the result; the whole carphone clip takes minutes on 2 cores), a live
//! source, and `pipelines/upscale-file.sh` keeping audio.
//! A model of the tiny fixture's sizes with random weights (`common::tiny_model`)
//! stands in for the weights; the carphone clip comes from `../shared/media`.

mod common;
use common::init;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use gst::prelude::*;

/// The live tests measure lateness against the real clock, so they must not share
/// the two cores with the CPU-heavy file tests of this binary (cargo runs a
/// binary's tests in parallel): they take the CPU alone, the others share it.
static CPU: RwLock<()> = RwLock::new(());

fn cpu_alone() -> RwLockWriteGuard<'static, ()> {
    CPU.write().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn cpu_shared() -> RwLockReadGuard<'static, ()> {
    CPU.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("flashvsr-test-{}-{name}", std::process::id()))
}

/// Runs `pipeline` to EOS and stops it; panics with the bus error, or after `timeout`.
fn run(pipeline: &gst::Element, timeout: gst::ClockTime) {
    play_to_eos(pipeline, timeout);
    pipeline.set_state(gst::State::Null).unwrap();
}

/// Runs `pipeline` until EOS and leaves it there (its elements' stats still readable).
fn play_to_eos(pipeline: &gst::Element, timeout: gst::ClockTime) {
    pipeline.set_state(gst::State::Playing).unwrap();
    let bus = pipeline.bus().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_nanos(timeout.nseconds());
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        assert!(!left.is_zero(), "pipeline did not finish within {timeout}");
        let Some(msg) = bus.timed_pop(gst::ClockTime::from_mseconds(200)) else {
            continue;
        };
        match msg.view() {
            gst::MessageView::Eos(_) => break,
            gst::MessageView::Error(err) => {
                pipeline.set_state(gst::State::Null).unwrap();
                panic!(
                    "{}: {} ({:?})",
                    err.src().map(|s| s.path_string()).unwrap_or_default(),
                    err.error(),
                    err.debug()
                );
            }
            gst::MessageView::Latency(_) => {
                let _ = pipeline
                    .downcast_ref::<gst::Bin>()
                    .unwrap()
                    .recalculate_latency();
            }
            _ => {}
        }
    }
}

/// The decoded video of `file`: its caps and every frame's PTS.
fn decode(file: &Path) -> (gst::Caps, Vec<gst::ClockTime>) {
    let pipeline = gst::parse::launch(&format!(
        "filesrc location=\"{}\" ! decodebin ! video/x-raw ! fakesink name=sink sync=false",
        file.display()
    ))
    .unwrap();
    let pad = pipeline
        .downcast_ref::<gst::Bin>()
        .unwrap()
        .by_name("sink")
        .unwrap()
        .static_pad("sink")
        .unwrap();
    let pts = Arc::new(Mutex::new(Vec::new()));
    let sink = pts.clone();
    pad.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
        if let Some(gst::PadProbeData::Buffer(b)) = &info.data {
            sink.lock()
                .unwrap()
                .push(b.pts().expect("decoded frame without PTS"));
        }
        gst::PadProbeReturn::Ok
    });
    let caps = Arc::new(Mutex::new(None));
    let caps_sink = caps.clone();
    pad.add_probe(gst::PadProbeType::EVENT_DOWNSTREAM, move |_, info| {
        if let Some(gst::PadProbeData::Event(e)) = &info.data
            && let gst::EventView::Caps(c) = e.view()
        {
            *caps_sink.lock().unwrap() = Some(c.caps_owned());
        }
        gst::PadProbeReturn::Ok
    });
    run(&pipeline, gst::ClockTime::from_seconds(120));
    let caps = caps.lock().unwrap().clone().expect("no caps decoded");
    let pts = pts.lock().unwrap().clone();
    (caps, pts)
}

fn size_and_par(caps: &gst::Caps) -> (i32, i32, gst::Fraction) {
    let s = caps.structure(0).unwrap();
    (
        s.get("width").unwrap(),
        s.get("height").unwrap(),
        s.get("pixel-aspect-ratio")
            .unwrap_or(gst::Fraction::new(1, 1)),
    )
}

/// The README's file pipeline on `input`, decoded again: the same frames with the same
/// timestamps, 4 times larger, same pixel-aspect-ratio.
fn upscale_file_keeps_every_frame(input: &Path) {
    let output = temp_path(&format!(
        "{}-x4.mp4",
        input.file_stem().unwrap().to_string_lossy()
    ));
    let pipeline = gst::parse::launch(&format!(
        "filesrc location=\"{}\" ! decodebin ! flashvsr scale=4 model-version=v1 model-dir=\"{}\" ! x264enc ! mp4mux ! filesink location=\"{}\"",
        input.display(),
        common::tiny_model().display(),
        output.display()
    ))
    .unwrap();
    run(&pipeline, gst::ClockTime::from_seconds(1800));

    let (in_caps, in_pts) = decode(input);
    let (out_caps, out_pts) = decode(&output);
    let (w, h, par) = size_and_par(&in_caps);
    assert_eq!(size_and_par(&out_caps), (w * 4, h * 4, par), "{out_caps}");
    assert_eq!(out_pts.len(), in_pts.len(), "frame count");
    assert_eq!(out_pts, in_pts, "frame timestamps");
    std::fs::remove_file(&output).unwrap();
}

#[test]
fn carphone_upscales_to_704x576_with_every_frame_and_timestamp() {
    init();
    let _cpu = cpu_shared();
    let Some(shared) = common::shared_dir() else {
        return;
    };
    let clip = shared.join("media/carphone_pristine.mp4");
    let (caps, _) = decode(&clip);
    assert_eq!(size_and_par(&caps).0, 176);
    upscale_file_keeps_every_frame(&clip);
}

#[test]
fn other_size_rate_and_aspect_keep_every_frame() {
    init();
    let _cpu = cpu_shared();
    // 37 frames (not 8k+1), 50x38, 24000/1001 fps, non-square pixels.
    let clip = temp_path("odd-size.mp4");
    let make = gst::parse::launch(&format!(
        "videotestsrc num-buffers=37 pattern=ball ! video/x-raw,format=I420,width=50,height=38,framerate=24000/1001,pixel-aspect-ratio=16/15 \
         ! x264enc ! mp4mux ! filesink location=\"{}\"",
        clip.display()
    ))
    .unwrap();
    run(&make, gst::ClockTime::from_seconds(60));
    let (caps, pts) = decode(&clip);
    assert_eq!(size_and_par(&caps), (50, 38, gst::Fraction::new(16, 15)));
    assert_eq!(pts.len(), 37);
    upscale_file_keeps_every_frame(&clip);
    std::fs::remove_file(&clip).unwrap();
}

#[test]
fn live_source_runs_with_the_reported_latency() {
    init();
    let _cpu = cpu_alone();
    // The sink drops frames later than 20 ms against the latency the pipeline
    // configured: every frame arriving means the latency covered the frames held and
    // the chunks. 2 fps leaves a chunk 4 s (the fixture model on a loaded 2-core
    // machine takes about 2.5 s for the first chunk, under 1 s for the others).
    let pipeline = gst::parse::launch(&format!(
        "videotestsrc is-live=true num-buffers=28 ! video/x-raw,format=I420,width=32,height=24,framerate=2/1 \
         ! flashvsr model-version=v1 model-dir=\"{}\" ! fakesink name=sink sync=true qos=true max-lateness=20000000",
        common::tiny_model().display()
    ))
    .unwrap();
    let bin = pipeline.downcast_ref::<gst::Bin>().unwrap();
    let sink = bin.by_name("sink").unwrap();
    play_to_eos(&pipeline, gst::ClockTime::from_seconds(120));
    let stats = sink.property::<gst::Structure>("stats");
    pipeline.set_state(gst::State::Null).unwrap();
    assert_eq!(stats.get::<u64>("rendered").unwrap(), 28, "{stats}");
    assert_eq!(stats.get::<u64>("dropped").unwrap(), 0, "{stats}");
}

#[test]
fn live_latency_query_counts_the_frames_held() {
    init();
    let _cpu = cpu_alone();
    let pipeline = gst::parse::launch(&format!(
        "videotestsrc is-live=true ! video/x-raw,format=I420,width=32,height=24,framerate=25/1 \
         ! flashvsr model-version=v1 model-dir=\"{}\" ! fakesink sync=true",
        common::tiny_model().display()
    ))
    .unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    // Wait for the caps to reach flashvsr (the live source starts in PLAYING).
    let bus = pipeline.bus().unwrap();
    bus.timed_pop_filtered(
        gst::ClockTime::from_seconds(10),
        &[gst::MessageType::AsyncDone],
    );
    std::thread::sleep(std::time::Duration::from_millis(300));
    let mut q = gst::query::Latency::new();
    assert!(pipeline.query(&mut q));
    let (live, min, _max) = q.result();
    pipeline.set_state(gst::State::Null).unwrap();
    assert!(live);
    // videotestsrc adds one frame; flashvsr 25 held + at least 8 for a chunk.
    assert!(
        min >= gst::ClockTime::from_mseconds(34 * 40),
        "latency {min}"
    );
}

/// The `libgstflashvsr.so` that `cargo build --release` made next to this test, for
/// the shell scripts (which load the plugin from GST_PLUGIN_PATH).
fn plugin_dir() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?.parent()?.to_path_buf();
    if dir.join("libgstflashvsr.so").is_file() {
        return Some(dir);
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!(
            "{} has no libgstflashvsr.so: run cargo build --release before the tests",
            dir.display()
        );
    }
    eprintln!(
        "skipping: no libgstflashvsr.so in {} (run cargo build --release)",
        dir.display()
    );
    None
}

fn script(name: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/pipelines")).join(name)
}

/// Media types of the streams in `file`, e.g. ["audio/mpeg", "video/x-h264"].
fn stream_types(file: &Path) -> Vec<String> {
    let pipeline = gst::parse::launch(&format!(
        "filesrc location=\"{}\" ! qtdemux name=demux",
        file.display()
    ))
    .unwrap()
    .downcast::<gst::Bin>()
    .unwrap();
    let demux = pipeline.by_name("demux").unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let pads = Arc::new(Mutex::new(Vec::new()));
    let found = pads.clone();
    demux.connect_pad_added(move |_, pad| {
        let caps = pad.current_caps().unwrap();
        found
            .lock()
            .unwrap()
            .push(caps.structure(0).unwrap().name().to_string());
    });
    demux.connect_no_more_pads(move |_| {
        let _ = tx.send(());
    });
    pipeline.set_state(gst::State::Paused).unwrap();
    rx.recv_timeout(std::time::Duration::from_secs(10))
        .expect("demuxer found no streams");
    pipeline.set_state(gst::State::Null).unwrap();
    let mut types = pads.lock().unwrap().clone();
    types.sort();
    types
}

#[test]
fn upscale_script_keeps_the_audio_track() {
    init();
    let _cpu = cpu_shared();
    let Some(plugins) = plugin_dir() else { return };
    const VIDEO: &str = "videotestsrc num-buffers=30 ! video/x-raw,format=I420,width=32,height=24,framerate=15/1 ! x264enc";
    const AUDIO: &str = "audiotestsrc num-buffers=50 ! audio/x-raw,rate=44100";
    // (input, how to make it, the streams the output must have)
    let cases = [
        // AAC is passed through.
        (
            "aac.mp4",
            format!(
                "{VIDEO} ! mp4mux name=m ! filesink location=LOCATION {AUDIO} ! avenc_aac ! m."
            ),
            &["audio/mpeg", "video/x-h264"][..],
        ),
        // Vorbis cannot go into MP4: re-encoded to AAC.
        (
            "vorbis.mkv",
            format!(
                "{VIDEO} ! matroskamux name=m ! filesink location=LOCATION {AUDIO} ! vorbisenc ! m."
            ),
            &["audio/mpeg", "video/x-h264"][..],
        ),
        (
            "silent.mp4",
            format!("{VIDEO} ! mp4mux ! filesink location=LOCATION"),
            &["video/x-h264"][..],
        ),
    ];
    for (name, launch, expected) in cases {
        let input = temp_path(name);
        let launch = launch.replace("LOCATION", &format!("\"{}\"", input.display()));
        run(
            &gst::parse::launch(&launch).unwrap(),
            gst::ClockTime::from_seconds(60),
        );

        let output = temp_path(&format!("{name}-x2.mp4"));
        // Bounded: a script that hangs must fail the test, not stall the suite.
        let status = std::process::Command::new("timeout")
            .args(["300", "sh"])
            .arg(script("upscale-file.sh"))
            .args([&input, &output])
            .arg("2")
            .env("GST_PLUGIN_PATH", &plugins)
            .env("FLASHVSR_MODEL_DIR", common::tiny_model())
            .env("FLASHVSR_OPTS", "model-version=v1")
            .status()
            .unwrap();
        assert!(status.success(), "upscale-file.sh failed on {name}");
        assert_eq!(
            stream_types(&output),
            expected,
            "streams of {name} upscaled"
        );
        let (caps, pts) = decode(&output);
        assert_eq!(size_and_par(&caps).0, 64, "{name}");
        assert_eq!(pts.len(), 30, "{name}");
        std::fs::remove_file(&output).unwrap();
        std::fs::remove_file(&input).unwrap();
    }
}
