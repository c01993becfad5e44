//! flashvsr-upscale, the program: a whole file in one process, and a file as
//! segment jobs run as separate processes (one killed part-way and run again),
//! joined with the source's audio; bad input, indices from the job systems'
//! variables, damaged segments. On a generated tiny model and a generated clip
//! with audio, so these run without ../shared.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gst::prelude::*;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_flashvsr-upscale"));
    // no model folder from the environment: each test sets its own
    c.env_remove("FLASHVSR_MODEL_DIR")
        .env_remove("JOB_COMPLETION_INDEX")
        .env_remove("SLURM_ARRAY_TASK_ID");
    c
}

fn run(c: &mut Command) -> Output {
    let out = c.output().expect("flashvsr-upscale runs");
    eprintln!(
        "{:?}\nstdout:\n{}\nstderr:\n{}",
        c,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn ok(c: &mut Command) -> String {
    let out = run(c);
    assert!(out.status.success(), "{c:?} failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn fails(c: &mut Command) -> String {
    let out = run(c);
    assert!(!out.status.success(), "{c:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A 64x48 H.264 clip of `frames` frames at 25 fps, with AAC audio when
/// `audio`, keyframes every 30 frames.
fn clip(dir: &Path, frames: u32, audio: bool) -> PathBuf {
    common::init();
    let path = dir.join(if audio { "clip.mp4" } else { "silent.mp4" });
    let mut desc = format!(
        "videotestsrc num-buffers={frames} pattern=ball ! video/x-raw,format=I420,width=64,height=48,framerate=25/1 \
         ! x264enc key-int-max=30 ! h264parse ! mp4mux name=m ! filesink location=\"{}\"",
        path.display()
    );
    if audio {
        desc.push_str(
            " audiotestsrc num-buffers=200 ! audio/x-raw,rate=44100,channels=2 ! avenc_aac ! m.",
        );
    }
    play(&desc);
    path
}

fn play(desc: &str) {
    play_to_end(&gst::parse::launch(desc).unwrap());
}

/// Plays `pipeline` to EOS (within a minute), then stops it.
fn play_to_end(pipeline: &gst::Element) {
    pipeline.set_state(gst::State::Playing).unwrap();
    let msg = pipeline
        .bus()
        .unwrap()
        .timed_pop_filtered(
            gst::ClockTime::from_seconds(60),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        )
        .unwrap();
    assert_eq!(msg.type_(), gst::MessageType::Eos, "{msg:?}");
    pipeline.set_state(gst::State::Null).unwrap();
}

/// What a file holds: its video frames' timestamps (presentation order), the
/// video size, and whether it has audio.
#[derive(Debug)]
struct Contents {
    pts: Vec<u64>,
    size: (i32, i32),
    audio: bool,
    subtitles: bool,
}

fn contents(path: &Path) -> Contents {
    common::init();
    let pipeline = gst::parse::launch(&format!(
        "filesrc location=\"{}\" ! parsebin name=p",
        path.display()
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let seen = Arc::new(Mutex::new((Vec::new(), (0, 0), false, false)));
    let parse = pipeline.by_name("p").unwrap();
    let weak = pipeline.downgrade();
    let kept = seen.clone();
    parse.connect_pad_added(move |_, pad| {
        let pipeline = weak.upgrade().unwrap();
        let sink = gst::ElementFactory::make("fakesink")
            .property("sync", false)
            .property("async", false)
            .build()
            .unwrap();
        pipeline.add(&sink).unwrap();
        sink.sync_state_with_parent().unwrap();
        let caps = pad.current_caps().unwrap();
        let s = caps.structure(0).unwrap();
        if s.name().starts_with("audio/") {
            kept.lock().unwrap().2 = true;
        } else if s.name().starts_with("text/") {
            kept.lock().unwrap().3 = true;
        } else if s.name().starts_with("video/") {
            kept.lock().unwrap().1 = (
                s.get::<i32>("width").unwrap(),
                s.get::<i32>("height").unwrap(),
            );
            let frames = kept.clone();
            sink.static_pad("sink").unwrap().add_probe(
                gst::PadProbeType::BUFFER,
                move |_, info| {
                    let pts = info.buffer().unwrap().pts().unwrap().nseconds();
                    frames.lock().unwrap().0.push(pts);
                    gst::PadProbeReturn::Ok
                },
            );
        }
        pad.link(&sink.static_pad("sink").unwrap()).unwrap();
    });
    play_to_end(pipeline.upcast_ref());
    let (mut pts, size, audio, subtitles) = std::mem::take(&mut *seen.lock().unwrap());
    pts.sort_unstable();
    Contents {
        pts,
        size,
        audio,
        subtitles,
    }
}

fn model_set() -> String {
    format!("model-dir={}", common::tiny_model().display())
}

#[test]
fn a_whole_file_keeps_every_frame_its_timestamps_and_the_audio() {
    let scratch = common::Scratch::created("upscale-whole");
    let input = clip(&scratch.0, 40, true);
    let output = scratch.0.join("out.mp4");
    let stdout =
        ok(bin()
            .arg(&input)
            .arg(&output)
            .args(["--set", &model_set(), "--set", "scale=2"]));
    assert!(stdout.contains("40 frames"), "{stdout}");
    let (src, out) = (contents(&input), contents(&output));
    assert_eq!(out.pts, src.pts);
    assert_eq!(out.size, (128, 96));
    assert!(out.audio, "the audio was kept");
}

/// Text subtitles (which demuxers give as Pango markup) are kept, as plain
/// text, in Matroska and in MP4.
#[test]
fn subtitles_are_kept_in_mkv_and_mp4() {
    let scratch = common::Scratch::created("upscale-subtitles");
    let srt = scratch.0.join("subs.srt");
    std::fs::write(
        &srt,
        "1\n00:00:00,000 --> 00:00:00,800\n<i>hello</i> &amp; bye\n\n",
    )
    .unwrap();
    let input = scratch.0.join("subs.mkv");
    common::init();
    play(&format!(
        "videotestsrc num-buffers=30 ! video/x-raw,format=I420,width=64,height=48,framerate=25/1 \
         ! x264enc ! h264parse ! matroskamux name=m ! filesink location=\"{}\" \
         filesrc location=\"{}\" ! subparse ! m.subtitle_%u",
        input.display(),
        srt.display()
    ));
    assert!(contents(&input).subtitles);
    for name in ["out.mkv", "out.mp4"] {
        let output = scratch.0.join(name);
        ok(bin()
            .arg(&input)
            .arg(&output)
            .args(["--set", &model_set(), "--set", "scale=2"]));
        let out = contents(&output);
        assert!(out.subtitles, "{name} kept the subtitles");
        assert_eq!(out.pts.len(), 30);
    }
}

#[test]
fn bad_input_output_and_settings_are_named() {
    let scratch = common::Scratch::created("upscale-bad");
    let out = scratch.0.join("out.mp4");
    let missing = scratch.0.join("missing.mp4");
    let err = fails(bin().arg(&missing).arg(&out).args(["--set", &model_set()]));
    assert!(err.contains(&missing.display().to_string()), "{err}");

    // a file with audio and no video
    let audio_only = scratch.0.join("audio.mp4");
    common::init();
    play(&format!(
        "audiotestsrc num-buffers=20 ! avenc_aac ! mp4mux ! filesink location=\"{}\"",
        audio_only.display()
    ));
    let err = fails(
        bin()
            .arg(&audio_only)
            .arg(&out)
            .args(["--set", &model_set()]),
    );
    assert!(err.contains("no video stream"), "{err}");

    let input = clip(&scratch.0, 5, false);
    let unwritable = Path::new("/nonexistent-folder/out.mp4");
    let err = fails(
        bin()
            .arg(&input)
            .arg(unwritable)
            .args(["--set", &model_set()]),
    );
    assert!(err.contains("/nonexistent-folder/out.mp4"), "{err}");
    let err = fails(
        bin()
            .arg(&input)
            .arg(scratch.0.join("out.avi"))
            .args(["--set", &model_set()]),
    );
    assert!(err.contains(".mkv"), "{err}");
    let err = fails(bin().arg(&input).arg(&out).args(["--set", "scale=7"]));
    assert!(err.contains("scale=7"), "{err}");
    let err = fails(
        bin()
            .arg(&input)
            .arg(&out)
            .args(["--set", "model-dir=/nonexistent/weights"]),
    );
    assert!(err.contains("/nonexistent/weights"), "{err}");
}

/// A clip of 136 frames with audio in 3 segments, each run as a process of its
/// own: the first by --index, the second by $JOB_COMPLETION_INDEX but killed
/// part-way (nothing looks finished) and run again by $SLURM_ARRAY_TASK_ID,
/// the third by `run --all` (which skips the finished ones). The join has
/// every input frame once, the input's timestamps, the output size and the
/// audio; a damaged or missing segment stops the join, named.
#[test]
fn segments_in_separate_processes_resume_and_join_exactly() {
    let scratch = common::Scratch::created("upscale-segments");
    let input = clip(&scratch.0, 136, true);
    let work = scratch.0.join("work");
    let stdout = ok(bin()
        .arg("plan")
        .arg(&input)
        .arg("--work")
        .arg(&work)
        .args([
            "--segments",
            "3",
            "--warmup",
            "25",
            "--set",
            &model_set(),
            "--set",
            "scale=2",
        ]));
    assert!(
        stdout.contains("[0, 45)") && stdout.contains("[90, 136)"),
        "{stdout}"
    );
    // warm-ups from frames 16 and 64 (multiples of 8): (45 + 74 + 72) / 136
    assert!(
        stdout.contains("1.404 frames rendered per frame owned"),
        "{stdout}"
    );

    // the index comes from somewhere, and must be in the plan
    let err = fails(bin().arg("run").arg(&work));
    assert!(err.contains("JOB_COMPLETION_INDEX"), "{err}");
    let err = fails(
        bin()
            .arg("run")
            .arg(&work)
            .env("JOB_COMPLETION_INDEX", "x1"),
    );
    assert!(err.contains("$JOB_COMPLETION_INDEX=\"x1\""), "{err}");
    let err = fails(bin().arg("run").arg(&work).args(["--index", "3"]));
    assert!(err.contains("3 segments"), "{err}");

    ok(bin().arg("run").arg(&work).args(["--index", "0"]));

    // killed part-way: its partial file is there, no record
    let mut child = bin()
        .arg("run")
        .arg(&work)
        .env("JOB_COMPLETION_INDEX", "1")
        .spawn()
        .unwrap();
    let partial = work.join("segment-00001.partial.mp4");
    let until = Instant::now() + Duration::from_secs(120);
    while !(partial.exists() && std::fs::metadata(&partial).unwrap().len() > 0)
        && Instant::now() < until
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        !work.join("segment-00001.json").exists(),
        "a killed segment looks finished"
    );
    let status = ok(bin().arg("status").arg(&work));
    assert!(status.contains("1 done, 1 running, 1 pending"), "{status}");
    let err = fails(
        bin()
            .arg("join")
            .arg(&work)
            .arg(scratch.0.join("joined.mp4")),
    );
    assert!(err.contains("segment 1"), "{err}");

    ok(bin().arg("run").arg(&work).env("SLURM_ARRAY_TASK_ID", "1"));
    let stdout = ok(bin().arg("run").arg(&work).args(["--all"]));
    assert!(stdout.contains("1 of 3 segments to render"), "{stdout}");
    let again = ok(bin().arg("run").arg(&work).args(["--index", "2"]));
    assert!(again.contains("already finished"), "{again}");

    // a damaged segment is named
    let second = work.join("segment-00001.mp4");
    let original = std::fs::read(&second).unwrap();
    let mut damaged = original.clone();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0xff;
    std::fs::write(&second, &damaged).unwrap();
    let joined = scratch.0.join("joined.mp4");
    let err = fails(bin().arg("join").arg(&work).arg(&joined));
    assert!(
        err.contains("segment 1") && err.contains("damaged"),
        "{err}"
    );
    std::fs::write(&second, &original).unwrap();

    let stdout = ok(bin().arg("join").arg(&work).arg(&joined));
    assert!(stdout.contains("136 frames from 3 segments"), "{stdout}");
    let (src, out) = (contents(&input), contents(&joined));
    assert_eq!(out.pts.len(), 136);
    assert_eq!(
        out.pts, src.pts,
        "the joined file has the input's timestamps"
    );
    assert_eq!(out.size, (128, 96));
    assert!(out.audio, "the joined file has the audio");
}
