//! The streaming engine against the golden fixtures and the engine's contract (docs/architecture.md):
//! parity, frame counts and tags, output sizes, determinism, reset, reconfigure and
//! invalid settings. Uses the small fixture models in `../shared/golden`.

mod common;

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use gstflashvsr::engine::memory::human_bytes;
use gstflashvsr::engine::{
    Engine, EngineError, EngineSettings, FixedNoise, LATENCY_FRAMES, ModelVersion, RgbFrame,
};
use gstflashvsr::model::color_fix::ColorFix;

/// Settings of the `tiny-v1` fixture case on a model of its sizes with random
/// weights (`common::tiny_model`), which the tests that compare with no
/// fixture use.
fn tiny_settings() -> EngineSettings {
    EngineSettings {
        model_dir: common::tiny_model(),
        model_version: ModelVersion::V1,
        sparse_ratio: 2.0,
        kv_ratio: 3.0,
        local_range: 11,
        ..EngineSettings::default()
    }
}

/// A frame that changes with `index` (a moving gradient), so frames are distinct.
fn synthetic_frame(width: u32, height: u32, index: usize) -> RgbFrame {
    let mut data = Vec::with_capacity((width * height * 3) as usize);
    for y in 0..height as usize {
        for x in 0..width as usize {
            let base = x * 7 + y * 5 + index * 3;
            data.extend_from_slice(&[
                (base % 256) as u8,
                ((base * 3 + 40) % 256) as u8,
                ((x * 11 + index * 13) % 256) as u8,
            ]);
        }
    }
    RgbFrame {
        width,
        height,
        data,
    }
}

/// Pushes `frames` tagged with their index, in bursts of the given sizes (cycled;
/// outputs collected after each burst), then finishes.
fn run_clip(
    engine: &mut Engine<usize>,
    frames: &[RgbFrame],
    bursts: &[usize],
) -> Vec<(RgbFrame, usize)> {
    let mut out = Vec::new();
    let mut next = 0;
    for &size in bursts.iter().cycle() {
        if next >= frames.len() {
            break;
        }
        let end = (next + size).min(frames.len());
        let mut ready = Vec::new();
        for (index, frame) in frames.iter().enumerate().take(end).skip(next) {
            ready.extend(engine.push(frame.clone(), index).unwrap());
        }
        out.extend(ready);
        next = end;
    }
    out.extend(engine.finish().unwrap());
    assert_eq!(engine.pending_frames(), 0);
    out
}

fn assert_tags_in_order(out: &[(RgbFrame, usize)], n: usize, what: &str) {
    let tags: Vec<usize> = out.iter().map(|(_, tag)| *tag).collect();
    assert_eq!(tags, (0..n).collect::<Vec<_>>(), "{what}: tags");
}

// ---------------------------------------------------------------- golden parity

struct GoldenCase {
    settings: EngineSettings,
    frames: Vec<RgbFrame>,
    expected: Vec<Vec<u8>>,
    out_size: (u32, u32),
    noise: Tensor,
}

/// The raw text of `"key": value` in a flat JSON file (enough for `case.json`).
fn json_value<'a>(json: &'a str, key: &str) -> &'a str {
    let pattern = format!("\"{key}\":");
    let start = json
        .find(&pattern)
        .unwrap_or_else(|| panic!("case.json has no {key}"));
    let rest = &json[start + pattern.len()..];
    let end = rest.find([',', '\n', '}']).unwrap_or(rest.len());
    rest[..end].trim().trim_matches('"')
}

fn load_case(shared: &Path, name: &str) -> GoldenCase {
    let dir = shared.join("golden").join(name);
    let json = std::fs::read_to_string(dir.join("case.json")).unwrap();
    let number = |key: &str| -> f64 { json_value(&json, key).parse().unwrap() };
    let settings = EngineSettings {
        model_dir: dir.join("model"),
        model_version: json_value(&json, "lq_variant").parse().unwrap(),
        scale: number("scale") as u32,
        color_fix: ColorFix::Adain,
        sparse_ratio: number("sparse_ratio"),
        kv_ratio: number("kv_ratio"),
        local_range: number("local_range") as u32,
        ..EngineSettings::default()
    };
    let io = candle_core::safetensors::load(dir.join("io.safetensors"), &Device::Cpu).unwrap();
    let per_frame = |name: &str| -> Vec<Vec<u8>> {
        let t = &io[name];
        (0..t.dim(0).unwrap())
            .map(|i| {
                t.get(i)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<u8>()
                    .unwrap()
            })
            .collect()
    };
    let (_, h, w, _) = io["lr_frames"].dims4().unwrap();
    let (_, out_h, out_w, _) = io["out.frames_u8"].dims4().unwrap();
    let frames = per_frame("lr_frames")
        .into_iter()
        .map(|data| RgbFrame {
            width: w as u32,
            height: h as u32,
            data,
        })
        .collect::<Vec<_>>();
    assert_eq!(frames.len(), number("frames") as usize);
    GoldenCase {
        settings,
        frames,
        expected: per_frame("out.frames_u8"),
        out_size: (out_w as u32, out_h as u32),
        noise: io["noise"].clone(),
    }
}

/// The parity check's tolerance on `out.frames_u8`.
fn assert_parity(case: &str, out: &[(RgbFrame, usize)], golden: &GoldenCase) {
    assert_eq!(out.len(), golden.expected.len(), "{case}: frame count");
    assert_tags_in_order(out, golden.expected.len(), case);
    let (mut total, mut within_one, mut worst, mut count) = (0u64, 0u64, 0u8, 0u64);
    for ((frame, index), expected) in out.iter().zip(&golden.expected) {
        assert_eq!(
            (frame.width, frame.height),
            golden.out_size,
            "{case}: frame {index}"
        );
        for (&a, &b) in frame.data.iter().zip(expected) {
            let d = a.abs_diff(b);
            total += d as u64;
            within_one += (d <= 1) as u64;
            worst = worst.max(d);
            count += 1;
        }
    }
    let mean = total as f64 / count as f64;
    let share_within_one = within_one as f64 / count as f64;
    eprintln!("{case}: mean abs {mean:.5}, within 1: {share_within_one:.6}, max {worst}");
    assert!(mean <= 0.05, "{case}: mean abs error {mean}");
    assert!(
        share_within_one >= 0.999,
        "{case}: within 1: {share_within_one}"
    );
    assert!(worst <= 8, "{case}: max error {worst}");
}

fn check_golden_case(name: &str) {
    let Some(shared) = common::shared_dir() else {
        return;
    };
    let golden = load_case(&shared, name);
    let noise = FixedNoise::new(golden.noise.clone()).unwrap();
    let mut engine = Engine::with_noise(golden.settings.clone(), Box::new(noise)).unwrap();

    let one_by_one = run_clip(&mut engine, &golden.frames, &[1]);
    assert_parity(&format!("{name}, frame by frame"), &one_by_one, &golden);

    // the same engine takes a second stream; bursts must not change a single byte
    let bursts = run_clip(&mut engine, &golden.frames, &[3, 24, 1, 9, 2]);
    assert_parity(&format!("{name}, in bursts"), &bursts, &golden);
    for ((a, _), (b, index)) in one_by_one.iter().zip(&bursts) {
        assert!(
            a.data == b.data,
            "{name}: frame {index} differs between feeds"
        );
    }
}

#[test]
fn golden_tiny_v1_parity() {
    check_golden_case("tiny-v1");
}

#[test]
fn golden_sparse_v1_1_parity() {
    check_golden_case("sparse-v1.1");
}

// ------------------------------------------------------- counts, order, sizes

#[test]
fn every_frame_comes_out_in_order_with_its_tag() {
    let mut engine = Engine::new(tiny_settings()).unwrap();
    for n in [1, 2, 7, 21, 24, 25, 26, 33, 100] {
        let mut out = Vec::new();
        for index in 0..n {
            // where the stream is in the schedule: 25 frames to the first
            // chunk, then 8 to each next
            let to_next = if index < 25 {
                25 - index
            } else {
                8 - (index - 25) % 8
            };
            assert_eq!(
                engine.frames_to_next_chunk(),
                to_next,
                "n={n}, frame {index}"
            );
            assert_eq!(engine.stream_frames(), index, "n={n}");
            let ready = engine.push(synthetic_frame(8, 6, index), index).unwrap();
            // the schedule: 21 frames at the 25th input, then 8 for every 8 more
            let received = index + 1;
            let expected_total = if received < LATENCY_FRAMES as usize {
                0
            } else {
                21 + 8 * ((received - 25) / 8)
            };
            out.extend(ready);
            assert_eq!(out.len(), expected_total, "n={n}, after frame {index}");
            assert_eq!(engine.pending_frames(), received - out.len(), "n={n}");
        }
        out.extend(engine.finish().unwrap());
        assert_eq!(out.len(), n, "n={n}");
        assert_tags_in_order(&out, n, &format!("n={n}"));
        assert!(out.iter().all(|(f, _)| (f.width, f.height) == (32, 24)));
        assert_eq!(engine.pending_frames(), 0);
        // the stream ended: a new one starts from the beginning of the schedule
        assert_eq!(
            (engine.stream_frames(), engine.frames_to_next_chunk()),
            (0, 25)
        );
    }
    // nothing pending: finishing again gives nothing
    assert!(engine.finish().unwrap().is_empty());
}

#[test]
fn output_is_exactly_input_size_times_scale() {
    let mut engine = Engine::new(tiny_settings()).unwrap();
    let mut out = Vec::new();
    let sizes = [(1, 1, 2), (17, 9, 2), (176, 144, 1)];
    let mut index = 0;
    for (w, h, frames) in sizes {
        for _ in 0..frames {
            // a new size first drains the previous stream: its frames come out here
            out.extend(engine.push(synthetic_frame(w, h, index), index).unwrap());
            index += 1;
        }
    }
    out.extend(engine.finish().unwrap());
    assert_tags_in_order(&out, index, "x4 sizes");
    let got: Vec<(u32, u32)> = out.iter().map(|(f, _)| (f.width, f.height)).collect();
    assert_eq!(got, [(4, 4), (4, 4), (68, 36), (68, 36), (704, 576)]);
    for (frame, tag) in &out {
        assert_eq!(
            frame.data.len(),
            (frame.width * frame.height * 3) as usize,
            "{tag}"
        );
    }

    engine
        .reconfigure(EngineSettings {
            scale: 3,
            ..tiny_settings()
        })
        .unwrap();
    let mut out = Vec::new();
    for index in 0..2 {
        out.extend(engine.push(synthetic_frame(100, 75, index), index).unwrap());
    }
    out.extend(engine.finish().unwrap());
    assert_tags_in_order(&out, 2, "x3");
    assert!(out.iter().all(|(f, _)| (f.width, f.height) == (300, 225)));
}

// --------------------------------------------------------------- determinism

fn clip(n: usize) -> Vec<RgbFrame> {
    (0..n).map(|i| synthetic_frame(12, 10, i)).collect()
}

fn upscale_with_seed(seed: u64, frames: &[RgbFrame]) -> Vec<Vec<u8>> {
    let mut engine = Engine::new(EngineSettings {
        seed,
        ..tiny_settings()
    })
    .unwrap();
    run_clip(&mut engine, frames, &[1])
        .into_iter()
        .map(|(f, _)| f.data)
        .collect()
}

#[test]
fn same_seed_same_bytes_other_seed_other_bytes() {
    let frames = clip(3);
    let a = upscale_with_seed(5, &frames);
    let b = upscale_with_seed(5, &frames);
    let c = upscale_with_seed(6, &frames);
    assert_eq!(a.len(), 3);
    assert!(a == b, "same seed, different output");
    assert!(a != c, "different seeds, same output");
}

#[test]
fn reset_mid_stream_starts_over_like_a_new_engine() {
    let mut engine = Engine::new(tiny_settings()).unwrap();
    // 30 frames: the first chunk has run (21 out), 9 are pending
    let mut out = Vec::new();
    for index in 0..30 {
        out.extend(
            engine
                .push(synthetic_frame(12, 10, 100 + index), index)
                .unwrap(),
        );
    }
    assert_eq!((out.len(), engine.pending_frames()), (21, 9));
    engine.reset();
    assert_eq!(engine.pending_frames(), 0);
    assert!(
        engine.finish().unwrap().is_empty(),
        "reset must drop pending frames"
    );

    let frames = clip(4);
    let after_reset = run_clip(&mut engine, &frames, &[1]);
    let fresh = upscale_with_seed(0, &frames);
    assert_tags_in_order(&after_reset, 4, "after reset");
    let after_reset: Vec<Vec<u8>> = after_reset.into_iter().map(|(f, _)| f.data).collect();
    assert!(
        after_reset == fresh,
        "after reset the output differs from a new engine"
    );
}

#[test]
fn reconfigure_mid_stream() {
    let settings = tiny_settings();
    let mut engine = Engine::new(settings.clone()).unwrap();
    for index in 0..3 {
        assert!(
            engine
                .push(synthetic_frame(12, 10, index), index)
                .unwrap()
                .is_empty()
        );
    }
    assert_eq!(engine.pending_frames(), 3);

    // invalid settings are refused and change nothing
    let bad = EngineSettings {
        kv_ratio: 0.0,
        ..settings.clone()
    };
    assert!(matches!(
        engine.reconfigure(bad),
        Err(EngineError::InvalidSetting {
            field: "kv_ratio",
            ..
        })
    ));
    assert_eq!(engine.pending_frames(), 3);
    assert_eq!(engine.settings(), &settings);

    // a new scale drops the pending frames; the next stream has the new size
    engine
        .reconfigure(EngineSettings {
            scale: 2,
            ..settings.clone()
        })
        .unwrap();
    assert_eq!(engine.pending_frames(), 0);
    let out = run_clip(&mut engine, &clip(2), &[1]);
    assert_tags_in_order(&out, 2, "scale 2");
    assert!(out.iter().all(|(f, _)| (f.width, f.height) == (24, 20)));

    // another weight folder and version: the model is reloaded
    let sparse = EngineSettings {
        model_dir: common::random_model(12),
        model_version: ModelVersion::V1_1,
        ..settings
    };
    engine.reconfigure(sparse).unwrap();
    let out = run_clip(&mut engine, &clip(2), &[1]);
    assert_tags_in_order(&out, 2, "other model");
    assert!(out.iter().all(|(f, _)| (f.width, f.height) == (48, 40)));
}

// --------------------------------------------------------------- bad input

fn setting_error_field(result: Result<Engine<()>, EngineError>) -> &'static str {
    match result {
        Err(EngineError::InvalidSetting { field, message }) => {
            assert!(!message.is_empty());
            field
        }
        Err(other) => panic!("expected an invalid setting, got {other}"),
        Ok(_) => panic!("expected an invalid setting, got an engine"),
    }
}

#[test]
fn invalid_settings_are_errors_naming_the_field() {
    // validation happens before any file is read: no fixtures needed
    let valid = EngineSettings {
        model_dir: PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../shared/golden/tiny-v1/model"
        )),
        ..EngineSettings::default()
    };
    let cases: [(&str, EngineSettings); 9] = [
        (
            "model_dir",
            EngineSettings {
                model_dir: PathBuf::new(),
                ..valid.clone()
            },
        ),
        (
            "model_dir",
            EngineSettings {
                model_dir: PathBuf::from("/nonexistent/flashvsr"),
                ..valid.clone()
            },
        ),
        (
            "scale",
            EngineSettings {
                scale: 8,
                ..valid.clone()
            },
        ),
        (
            "device",
            EngineSettings {
                device: "gpu0".into(),
                ..valid.clone()
            },
        ),
        (
            "sparse_ratio",
            EngineSettings {
                sparse_ratio: -1.0,
                ..valid.clone()
            },
        ),
        (
            "sparse_ratio",
            EngineSettings {
                sparse_ratio: f64::NAN,
                ..valid.clone()
            },
        ),
        (
            "kv_ratio",
            EngineSettings {
                kv_ratio: 100.0,
                ..valid.clone()
            },
        ),
        (
            "local_range",
            EngineSettings {
                local_range: 0,
                ..valid.clone()
            },
        ),
        (
            "local_range",
            EngineSettings {
                local_range: 1000,
                ..valid.clone()
            },
        ),
    ];
    for (field, settings) in cases {
        assert_eq!(
            setting_error_field(Engine::new(settings.clone())),
            field,
            "{settings:?}"
        );
    }
    assert!("v3".parse::<ModelVersion>().is_err());
    assert!("f8".parse::<gstflashvsr::engine::Precision>().is_err());
    assert!("sepia".parse::<gstflashvsr::engine::ColorFix>().is_err());
}

#[test]
fn a_folder_without_weights_fails_at_new() {
    let empty = std::env::temp_dir().join(format!("flashvsr-empty-{}", std::process::id()));
    std::fs::create_dir_all(&empty).unwrap();
    let result = Engine::<()>::new(EngineSettings {
        model_dir: empty.clone(),
        ..EngineSettings::default()
    });
    std::fs::remove_dir_all(&empty).unwrap();
    match result {
        Err(e @ EngineError::Model { .. }) => {
            assert!(e.to_string().contains(&empty.display().to_string()), "{e}")
        }
        Err(other) => panic!("expected a model error, got {other}"),
        Ok(_) => panic!("an empty folder loaded"),
    }
}

#[test]
fn invalid_frames_are_errors_and_the_engine_goes_on() {
    let mut engine = Engine::new(tiny_settings()).unwrap();
    let short = RgbFrame {
        width: 4,
        height: 4,
        data: vec![0; 47],
    };
    let empty = RgbFrame {
        width: 0,
        height: 4,
        data: Vec::new(),
    };
    for frame in [short, empty] {
        assert!(matches!(
            engine.push(frame, 0),
            Err(EngineError::InvalidFrame(_))
        ));
    }
    let out = run_clip(&mut engine, &clip(1), &[1]);
    assert_eq!(out.len(), 1);
}

#[test]
fn a_stream_over_the_memory_budget_is_refused_with_the_figures() {
    let probe: Engine<usize> = Engine::new(tiny_settings()).unwrap();
    // 8x8 -> 32x32 (padded 128x128); 40x40 -> 160x160 (padded 256x256)
    let small = probe.memory_estimate(8, 8).unwrap();
    let big = probe.memory_estimate(40, 40).unwrap();
    assert_eq!((big.padded_width, big.padded_height), (256, 256));
    assert!(big.stream() > small.stream(), "{small:?} {big:?}");
    assert_eq!(small.weights, big.weights);
    let budget = (small.stream() + big.stream()) / 2;
    // tiles of 256 cover both sizes whole (left to itself the budget would pick
    // smaller tiles for 40x40: tests/tiles.rs)
    let mut engine = Engine::new(EngineSettings {
        max_memory: Some(budget),
        tile_size: 256,
        ..tiny_settings()
    })
    .unwrap();
    assert!(engine.check_size(8, 8).is_ok());
    for i in 0..5 {
        assert!(engine.push(synthetic_frame(8, 8, i), i).unwrap().is_empty());
    }
    match engine.push(synthetic_frame(40, 40, 5), 5) {
        Err(EngineError::TooLarge {
            out_width,
            out_height,
            available,
            tile,
            estimate,
        }) => {
            assert_eq!((out_width, out_height, tile), (160, 160, None));
            assert_eq!((estimate.stream(), available), (big.stream(), budget));
            assert_eq!(*estimate, big);
        }
        other => panic!("expected TooLarge, got {:?}", other.map(|o| o.len())),
    }
    let text = engine.check_size(40, 40).unwrap_err().to_string();
    assert!(
        text.contains(&format!(
            "needs about {} for 160x160 output",
            human_bytes(big.stream())
        )) && text.contains(&format!("{} available", human_bytes(budget))),
        "{text}"
    );
    // the refused frame left the 8x8 stream intact: its frames still come out
    let out = engine.finish().unwrap();
    assert_tags_in_order(&out, 5, "frames before the refused size");
}

#[test]
fn engine_can_move_to_a_worker_thread() {
    fn assert_send<S: Send>() {}
    assert_send::<Engine<u64>>();
}
