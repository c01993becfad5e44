//! The engine's cancel token stops a chunk at the model's checks (before every
//! DiT block and between the stages): a cancelled chunk returns
//! `EngineError::Cancelled` instead of frames, from the calling thread or from
//! another one mid-chunk, and the next frame after `clear` starts a new stream.
//! The model is written here (the tiny fixture's widths, 32 DiT blocks, so that a
//! chunk is long next to one block), so no shared fixture is needed.

mod common;

use std::time::{Duration, Instant};

use gstflashvsr::devtools::random_model::{RandomModelSpec, write_model_dir};
use gstflashvsr::engine::{Engine, EngineError, EngineSettings, ModelVersion, RgbFrame};

/// The tests compare times within a run: one at a time (cargo runs a binary's
/// tests in parallel).
static CPU: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn engine(scratch: &common::Scratch) -> Engine<u32> {
    let spec = RandomModelSpec {
        dit_blocks: 32,
        ..RandomModelSpec::tiny(5)
    };
    write_model_dir(&spec, &scratch.0).unwrap();
    Engine::new(EngineSettings {
        model_dir: scratch.0.clone(),
        model_version: ModelVersion::V1,
        ..Default::default()
    })
    .unwrap()
}

fn frame(i: u32) -> RgbFrame {
    RgbFrame {
        width: 32,
        height: 32,
        data: (0..32 * 32 * 3)
            .map(|v| ((v + i * 11) % 251) as u8)
            .collect(),
    }
}

#[test]
fn a_cancelled_token_stops_the_chunk_and_clear_starts_a_new_stream() {
    let _cpu = CPU.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let scratch = common::Scratch::created("cancel-model");
    let mut engine = engine(&scratch);
    for i in 0..24 {
        assert!(engine.push(frame(i), i).unwrap().is_empty());
    }
    let token = engine.cancel_token();
    token.cancel();
    // frame 25 would run chunk 0 and return 21 frames
    assert!(matches!(
        engine.push(frame(24), 24),
        Err(EngineError::Cancelled)
    ));
    assert_eq!(engine.pending_frames(), 0, "the stream is dropped");
    token.clear();
    for i in 0..24 {
        assert!(engine.push(frame(i), 100 + i).unwrap().is_empty());
    }
    let out = engine.push(frame(24), 124).unwrap();
    let tags: Vec<u32> = out.iter().map(|(_, t)| *t).collect();
    assert_eq!(
        tags,
        (100..121).collect::<Vec<_>>(),
        "a new stream from 100"
    );
}

#[test]
fn a_cancel_from_another_thread_cuts_a_running_chunk_short() {
    let _cpu = CPU.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let scratch = common::Scratch::created("cancel-model-thread");
    let mut engine = engine(&scratch);
    // chunk 0 run whole: how long a chunk takes here and now
    for i in 0..24 {
        engine.push(frame(i), i).unwrap();
    }
    let started = Instant::now();
    assert_eq!(engine.push(frame(24), 24).unwrap().len(), 21);
    let whole = started.elapsed();
    engine.reset();
    for i in 0..24 {
        engine.push(frame(i), i).unwrap();
    }
    let token = engine.cancel_token();
    let (result, after_cancel) = std::thread::scope(|scope| {
        let chunk = scope.spawn(|| {
            let result = engine.push(frame(24), 24);
            (result, Instant::now())
        });
        std::thread::sleep(whole / 3);
        let cancelled = Instant::now();
        token.cancel();
        let (result, returned) = chunk.join().unwrap();
        (result, returned.saturating_duration_since(cancelled))
    });
    assert!(
        matches!(result, Err(EngineError::Cancelled)),
        "the chunk was not cancelled: {:?}",
        result.map(|out| out.len())
    );
    assert!(
        after_cancel < whole / 2 + Duration::from_millis(50),
        "returned {after_cancel:?} after the cancel; a whole chunk takes {whole:?}"
    );
}
