//! One model per process and key (`engine::model_registry`): engines and
//! elements with the same weights settings share one loaded model, keep their
//! own streams, and give the same frames as engines with models of their own;
//! an element restarted with the same settings reuses its model; a process of
//! its own gives the same frames. On generated
//! tiny models, so these run without ../shared. Alone in their test binary,
//! and run one at a time, because they count the process's loaded models.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use gst::prelude::*;
use gstflashvsr::devtools::random_model::{RandomModelSpec, write_model_dir};
use gstflashvsr::engine::{
    Engine, EngineSettings, Precision, RgbFrame, loaded_models, model_loads,
};

/// The tests of this binary count process-wide state: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn tiny_model(scratch: &common::Scratch, seed: u64) -> PathBuf {
    let dir = scratch.0.join(format!("model-{seed}"));
    write_model_dir(&RandomModelSpec::tiny(seed), &dir).expect("writing a tiny model");
    dir
}

fn settings(dir: &Path) -> EngineSettings {
    EngineSettings {
        model_dir: dir.to_path_buf(),
        ..EngineSettings::default()
    }
}

fn frame(index: usize) -> RgbFrame {
    let (width, height) = (32u32, 24u32);
    let data = (0..width * height * 3)
        .map(|i| ((i as usize * 7 + index * 13) % 251) as u8)
        .collect();
    RgbFrame {
        width,
        height,
        data,
    }
}

/// Every output frame of `frames` input frames, in order.
fn run(engine: &mut Engine<usize>, frames: usize) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for i in 0..frames {
        out.extend(engine.push(frame(i), i).unwrap());
    }
    out.extend(engine.finish().unwrap());
    assert_eq!(out.len(), frames);
    out.into_iter().map(|(f, _)| f.data).collect()
}

#[test]
fn engines_with_the_same_weights_settings_share_one_model() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let scratch = common::Scratch::created("shared-engines");
    let dir = tiny_model(&scratch, 3);
    assert_eq!(loaded_models(), 0);
    let loads = model_loads();

    let mut first = Engine::<usize>::new(settings(&dir)).unwrap();
    // other stream settings and another spelling of the folder: the same model
    let other_spelling = dir.join("..").join(dir.file_name().unwrap());
    let mut second = Engine::<usize>::new(EngineSettings {
        scale: 2,
        seed: 7,
        ..settings(&other_spelling)
    })
    .unwrap();
    assert!(first.model_handle().same_model(&second.model_handle()));
    assert_eq!((loaded_models(), model_loads() - loads), (1, 1));
    // another precision is other weights
    let half = Engine::<usize>::new(EngineSettings {
        precision: Precision::Bf16,
        ..settings(&dir)
    })
    .unwrap();
    assert!(!half.model_handle().same_model(&first.model_handle()));
    assert_eq!(loaded_models(), 2);
    drop(half);
    assert_eq!(loaded_models(), 1);

    // each engine keeps its own stream: interleaved, they give what each
    // gives alone
    let mut interleaved = (Vec::new(), Vec::new());
    for i in 0..33 {
        interleaved.0.extend(first.push(frame(i), i).unwrap());
        interleaved.1.extend(second.push(frame(i), i).unwrap());
    }
    interleaved.0.extend(first.finish().unwrap());
    interleaved.1.extend(second.finish().unwrap());
    let shared_frames: Vec<Vec<u8>> = interleaved.0.into_iter().map(|(f, _)| f.data).collect();
    assert_eq!(interleaved.1.len(), 33);
    assert_eq!(interleaved.1[0].0.width, 64);

    // a handle keeps the model loaded without an engine
    let handle = first.model_handle();
    drop(first);
    drop(second);
    assert_eq!(loaded_models(), 1);
    let mut again = Engine::<usize>::new(settings(&dir)).unwrap();
    assert!(again.model_handle().same_model(&handle));
    assert_eq!(model_loads() - loads, 2, "the bf16 model and the f32 one");
    assert_eq!(run(&mut again, 33), shared_frames);
    drop(again);
    drop(handle);
    assert_eq!(loaded_models(), 0, "the last user frees the weights");

    // a model of its own (loaded anew) gives the same frames
    let mut alone = Engine::<usize>::new(settings(&dir)).unwrap();
    assert_eq!(model_loads() - loads, 3);
    assert_eq!(run(&mut alone, 33), shared_frames);
}

/// `flashvsr` elements, each fed the same frames, with their src pads' output
/// collected per element.
struct Branches {
    pipeline: gst::Pipeline,
    outputs: Vec<std::sync::Arc<Mutex<Vec<Vec<u8>>>>>,
}

/// `count` elements behind a tee, each with `model-dir=dir` (and its own
/// scale), to fakesinks that keep every buffer.
fn branches(dir: &Path, count: usize) -> Branches {
    let mut description = "videotestsrc num-buffers=33 pattern=ball ! \
        video/x-raw,format=RGB,width=32,height=24,framerate=25/1 ! tee name=t"
        .to_owned();
    for i in 0..count {
        description.push_str(&format!(
            " t. ! queue ! flashvsr name=vsr{i} model-version=v1-1 model-dir=\"{}\" ! fakesink name=sink{i} sync=false signal-handoffs=true",
            dir.display()
        ));
    }
    let pipeline = gst::parse::launch(&description)
        .unwrap()
        .downcast::<gst::Pipeline>()
        .unwrap();
    let outputs = (0..count)
        .map(|i| {
            let store = std::sync::Arc::new(Mutex::new(Vec::new()));
            let sink = pipeline.by_name(&format!("sink{i}")).unwrap();
            let kept = store.clone();
            sink.connect("handoff", false, move |values| {
                let buffer = values[1].get::<gst::Buffer>().unwrap();
                let map = buffer.map_readable().unwrap();
                kept.lock().unwrap().push(map.as_slice().to_vec());
                None
            });
            store
        })
        .collect();
    Branches { pipeline, outputs }
}

fn play_to_end(pipeline: &gst::Pipeline) {
    pipeline.set_state(gst::State::Playing).unwrap();
    let bus = pipeline.bus().unwrap();
    let msg = bus
        .timed_pop_filtered(
            gst::ClockTime::from_seconds(120),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        )
        .expect("no EOS in two minutes");
    assert_eq!(msg.type_(), gst::MessageType::Eos, "{msg:?}");
}

#[test]
fn elements_in_one_process_hold_the_weights_once_and_restart_without_loading() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    common::init();
    let scratch = common::Scratch::created("shared-elements");
    let dir = tiny_model(&scratch, 4);
    assert_eq!(loaded_models(), 0);
    let loads = model_loads();

    // four elements behind a tee: one model, four identical outputs
    let four = branches(&dir, 4);
    four.pipeline.set_state(gst::State::Paused).unwrap();
    assert_eq!((loaded_models(), model_loads() - loads), (1, 1));
    play_to_end(&four.pipeline);
    let first = four.outputs[0].lock().unwrap().clone();
    assert_eq!(first.len(), 33);
    for out in &four.outputs[1..] {
        assert_eq!(*out.lock().unwrap(), first);
    }

    // a process of its own (this binary again, running only the helper below)
    // gives the same frames
    assert_eq!(frames_of_another_process(&dir), first);

    // a second pipeline with the same weights shares the loaded model too
    let other = branches(&dir, 1);
    other.pipeline.set_state(gst::State::Paused).unwrap();
    assert_eq!((loaded_models(), model_loads() - loads), (1, 1));
    play_to_end(&other.pipeline);
    assert_eq!(*other.outputs[0].lock().unwrap(), first);

    // PAUSED -> READY -> PAUSED keeps the weights: no load
    four.pipeline.set_state(gst::State::Ready).unwrap();
    other.pipeline.set_state(gst::State::Null).unwrap();
    assert_eq!(loaded_models(), 1, "READY keeps the model");
    let restart = std::time::Instant::now();
    four.pipeline.set_state(gst::State::Paused).unwrap();
    four.pipeline
        .state(gst::ClockTime::from_seconds(30))
        .0
        .unwrap();
    eprintln!("restart to PAUSED took {:?}", restart.elapsed());
    assert_eq!(model_loads() - loads, 1, "the restart reused the model");

    // another precision on one element: that element loads its own, the
    // others keep sharing
    let vsr0 = four.pipeline.by_name("vsr0").unwrap();
    four.pipeline.set_state(gst::State::Ready).unwrap();
    vsr0.set_property_from_str("precision", "bf16");
    four.pipeline.set_state(gst::State::Paused).unwrap();
    four.pipeline
        .state(gst::ClockTime::from_seconds(30))
        .0
        .unwrap();
    assert_eq!((loaded_models(), model_loads() - loads), (2, 2));

    // NULL lets go of everything
    four.pipeline.set_state(gst::State::Null).unwrap();
    assert_eq!(loaded_models(), 0, "NULL frees the weights");
}

/// Set for the helper run in a child process: the model folder, and the file
/// the helper writes its frames to.
const HELPER_MODEL: &str = "FLASHVSR_TEST_HELPER_MODEL";
const HELPER_OUT: &str = "FLASHVSR_TEST_HELPER_OUT";

/// The frames one `flashvsr` element gives for `branches`' input in a process
/// of its own: this test binary run again with only
/// `separate_process_helper`.
fn frames_of_another_process(dir: &Path) -> Vec<Vec<u8>> {
    let scratch = common::Scratch::created("shared-child");
    let out = scratch.0.join("frames");
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "separate_process_helper", "--test-threads=1"])
        .env(HELPER_MODEL, dir)
        .env(HELPER_OUT, &out)
        .status()
        .unwrap();
    assert!(status.success(), "the helper process failed: {status}");
    let bytes = std::fs::read(&out).unwrap();
    let frame_len = 128 * 96 * 3;
    assert_eq!(bytes.len() % frame_len, 0);
    bytes.chunks(frame_len).map(<[u8]>::to_vec).collect()
}

/// Runs only when [`frames_of_another_process`] starts this binary for it:
/// one element on its own model, its frames written to a file.
#[test]
fn separate_process_helper() {
    let (Some(dir), Some(out)) = (std::env::var_os(HELPER_MODEL), std::env::var_os(HELPER_OUT))
    else {
        return;
    };
    common::init();
    let one = branches(Path::new(&dir), 1);
    play_to_end(&one.pipeline);
    one.pipeline.set_state(gst::State::Null).unwrap();
    assert_eq!(model_loads(), 1, "the helper loaded its own model");
    std::fs::write(out, one.outputs[0].lock().unwrap().concat()).unwrap();
}

#[test]
fn weights_replaced_on_disk_are_loaded_anew() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let scratch = common::Scratch::created("shared-replaced");
    let dir = tiny_model(&scratch, 5);
    let loaded_before = loaded_models();
    let first = Engine::<usize>::new(settings(&dir)).unwrap();
    // other random weights written over the same files, while the first
    // model is still held
    std::thread::sleep(std::time::Duration::from_millis(20));
    write_model_dir(&RandomModelSpec::tiny(6), &dir).unwrap();
    let second = Engine::<usize>::new(settings(&dir)).unwrap();
    assert!(!second.model_handle().same_model(&first.model_handle()));
    assert_eq!(loaded_models() - loaded_before, 2);
}
