//! Tiled streams through the engine: a tile covering the frame is the untiled
//! output bit for bit (the golden fixture `sparse-v1.1`, real frames of
//! `bikes.mp4`), tiles run one sequence each and show no seam, the budget picks
//! tiles, and caps changes, resets and the end of stream still output every frame.

mod common;

use std::path::Path;

use candle_core::Device;
use gstflashvsr::devtools::seams::{SeamStats, borders};
use gstflashvsr::engine::{
    ColorFix, Engine, EngineError, EngineSettings, FixedNoise, KernelPath, ModelVersion, RgbFrame,
    SIZE_MULTIPLE, TILE_ALIGN,
};
use gstflashvsr::model::tiling::spans;

/// The `sparse-v1.1` case: its settings, real input frames and noise.
fn sparse_case(shared: &Path) -> (EngineSettings, Vec<RgbFrame>, candle_core::Tensor) {
    let dir = shared.join("golden/sparse-v1.1");
    let settings = EngineSettings {
        model_dir: dir.join("model"),
        model_version: ModelVersion::V1_1,
        scale: 4,
        sparse_ratio: 0.25,
        kv_ratio: 3.0,
        local_range: 3,
        ..EngineSettings::default()
    };
    let json = std::fs::read_to_string(dir.join("case.json")).unwrap();
    assert!(
        json.contains("\"sparse_ratio\": 0.25") && json.contains("\"local_range\": 3"),
        "sparse-v1.1/case.json changed: update the settings here"
    );
    let io = candle_core::safetensors::load(dir.join("io.safetensors"), &Device::Cpu).unwrap();
    let lr = &io["lr_frames"];
    let (n, h, w, _) = lr.dims4().unwrap();
    let frames = (0..n)
        .map(|i| RgbFrame {
            width: w as u32,
            height: h as u32,
            data: lr
                .get(i)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<u8>()
                .unwrap(),
        })
        .collect();
    (settings, frames, io["noise"].clone())
}

/// Pushes `frames` tagged with their index, then finishes; checks the tags.
fn run(engine: &mut Engine<usize>, frames: &[RgbFrame]) -> Vec<RgbFrame> {
    let mut out = Vec::new();
    for (i, f) in frames.iter().enumerate() {
        out.extend(engine.push(f.clone(), i).unwrap());
    }
    out.extend(engine.finish().unwrap());
    let tags: Vec<usize> = out.iter().map(|(_, t)| *t).collect();
    assert_eq!(tags, (0..frames.len()).collect::<Vec<_>>());
    out.into_iter().map(|(f, _)| f).collect()
}

#[test]
fn a_tile_covering_the_frame_is_the_untiled_output_bit_for_bit() {
    let Some(shared) = common::shared_dir() else {
        return;
    };
    let (settings, frames, noise) = sparse_case(&shared);
    let frames = &frames[..29];
    let upscale = |tile_size: u32| {
        let settings = EngineSettings {
            tile_size,
            ..settings.clone()
        };
        let noise = FixedNoise::new(noise.clone()).unwrap();
        let mut engine = Engine::with_noise(settings, Box::new(noise)).unwrap();
        // 96x64 x4 -> 384x256, padded the same
        let plan = engine.plan(96, 64).unwrap();
        assert_eq!(plan.sequences(), 1, "tile {tile_size}: {plan}");
        run(&mut engine, frames)
    };
    let untiled = upscale(0);
    for tile_size in [384, 512] {
        let tiled = upscale(tile_size);
        assert_eq!(tiled.len(), untiled.len());
        for (i, (a, b)) in untiled.iter().zip(&tiled).enumerate() {
            assert!(a == b, "tile {tile_size}: frame {i} differs from untiled");
        }
    }
}

/// Upscales `frames` of `sparse-v1.1` with its noise in tiles of `tile_size`.
fn sparse_upscale(
    shared: &Path,
    frames: usize,
    tile_size: u32,
    tile_overlap: u32,
) -> (Vec<RgbFrame>, usize) {
    let (settings, input, noise) = sparse_case(shared);
    let settings = EngineSettings {
        tile_size,
        tile_overlap,
        ..settings
    };
    let noise = FixedNoise::new(noise).unwrap();
    let mut engine = Engine::with_noise(settings, Box::new(noise)).unwrap();
    engine.push(input[0].clone(), 0).unwrap();
    let sequences = engine.stream_tiles();
    let mut out = Vec::new();
    for (i, f) in input.iter().enumerate().take(frames).skip(1) {
        out.extend(engine.push(f.clone(), i).unwrap());
    }
    out.extend(engine.finish().unwrap());
    let tags: Vec<usize> = out.iter().map(|(_, t)| *t).collect();
    assert_eq!(tags, (0..frames).collect::<Vec<_>>());
    (out.into_iter().map(|(f, _)| f).collect(), sequences)
}

#[test]
fn tiles_run_one_sequence_each_and_show_no_seam() {
    let Some(shared) = common::shared_dir() else {
        return;
    };
    // 384x256 output in tiles of 256 overlapping by at least 96: 2 columns
    // (0..256, 128..384), 1 row
    let (tiled, sequences) = sparse_upscale(&shared, 25, 256, 96);
    assert_eq!(sequences, 2);
    let columns = borders(
        &spans(384, 256, 96, TILE_ALIGN, SIZE_MULTIPLE).unwrap(),
        384,
    );
    assert_eq!(columns, [128, 256]);
    let (untiled, _) = sparse_upscale(&shared, 25, 0, 96);
    let stats = |frames: &[RgbFrame]| {
        let mut seams = SeamStats::default();
        for frame in frames {
            assert_eq!((frame.width, frame.height), (384, 256));
            seams.add_frame(&frame.data, 384, 256, &columns, &[]);
        }
        seams
    };
    let (tiled, untiled) = (stats(&tiled), stats(&untiled));
    eprintln!(
        "mean gradient across tile borders {:.3}, inside tiles {:.3}; untiled at the same places {:.3}, {:.3}",
        tiled.border(),
        tiled.inside(),
        untiled.border(),
        untiled.inside()
    );
    assert!(tiled.border_samples() > 0);
    // Two border columns of one small clip: the image itself is sharper there
    // than on average (the untiled output shows it too), so the tiled border is
    // held to the untiled output's own ratio at the same places, within 5%.
    let ratio = |s: &SeamStats| s.border() / s.inside();
    assert!(
        ratio(&tiled) <= 1.05 * ratio(&untiled),
        "a seam: tiled {tiled:?}, untiled {untiled:?}"
    );
}

/// Settings for a model of the `tiny-v1` fixture's sizes with random weights
/// (`common::tiny_model`).
fn tiny() -> EngineSettings {
    EngineSettings {
        model_dir: common::tiny_model(),
        model_version: ModelVersion::V1,
        ..EngineSettings::default()
    }
}

fn frame(width: u32, height: u32, index: usize) -> RgbFrame {
    let data = (0..width as usize * height as usize * 3)
        .map(|i| ((i * 7 + index * 13) % 256) as u8)
        .collect();
    RgbFrame {
        width,
        height,
        data,
    }
}

#[test]
fn the_budget_picks_tiles_that_fit_and_refuses_with_the_smallest() {
    let probe: Engine<usize> = Engine::new(EngineSettings {
        tile_size: 128,
        tile_overlap: 0,
        max_memory: None,
        ..tiny()
    })
    .unwrap();
    // 96x96 x4 -> 384x384: whole, or 9 tiles of 128
    let whole = probe.memory_estimate(96, 96).unwrap();
    let tiled = probe.plan(96, 96).unwrap();
    assert_eq!(tiled.sequences(), 9, "{tiled}");
    assert!(
        tiled.estimate.stream() < whole.stream(),
        "{tiled} / {whole:?}"
    );
    let budget = tiled.estimate.stream();
    let mut engine = Engine::new(EngineSettings {
        tile_overlap: 0,
        max_memory: Some(budget),
        ..tiny()
    })
    .unwrap();
    let chosen = engine.plan(96, 96).unwrap();
    assert!(chosen.automatic && chosen.sequences() > 1, "{chosen}");
    assert!(chosen.estimate.stream() <= budget, "{chosen}");
    let frames: Vec<RgbFrame> = (0..3).map(|i| frame(96, 96, i)).collect();
    assert_eq!(run(&mut engine, &frames).len(), 3);
    // a budget below the smallest tiles: refused with their figure
    let mut tight = Engine::<usize>::new(EngineSettings {
        tile_overlap: 0,
        max_memory: Some(budget / 4),
        ..tiny()
    })
    .unwrap();
    match tight.push(frame(96, 96, 0), 0) {
        Err(EngineError::TooLarge { estimate, tile, .. }) => {
            assert_eq!((estimate.stream(), tile), (budget, Some(128)));
        }
        other => panic!("expected TooLarge, got {:?}", other.map(|o| o.len())),
    }
}

/// One plan per stream: the plan made before the stream (the element makes it
/// when the caps arrive) is the one every stream of that size runs, after a
/// reset too; a size not planned is planned at its first frame.
#[test]
fn the_planned_layout_is_the_one_the_streams_run() {
    let probe: Engine<usize> = Engine::new(EngineSettings {
        tile_size: 128,
        tile_overlap: 0,
        ..tiny()
    })
    .unwrap();
    let budget = probe.plan(96, 96).unwrap().estimate.stream();
    let mut engine = Engine::new(EngineSettings {
        tile_overlap: 0,
        max_memory: Some(budget),
        ..tiny()
    })
    .unwrap();
    let planned = engine.plan_stream(96, 96).unwrap().clone();
    assert!(planned.sequences() > 1, "{planned}");
    assert_eq!(engine.plan(96, 96).unwrap(), planned);
    assert!(engine.push(frame(96, 96, 0), 0).unwrap().is_empty());
    assert_eq!(engine.stream_tiles(), planned.sequences());
    engine.reset();
    assert!(engine.push(frame(96, 96, 1), 1).unwrap().is_empty());
    assert_eq!(engine.stream_tiles(), planned.sequences());
    // another size: planned at its first frame (whole frames fit the budget)
    assert!(engine.push(frame(24, 16, 2), 2).unwrap().len() == 1);
    assert_eq!(engine.stream_tiles(), 1);
}

#[test]
fn tiled_streams_output_every_frame_across_caps_changes_and_resets() {
    let mut engine = Engine::new(EngineSettings {
        tile_size: 128,
        tile_overlap: 32,
        ..tiny()
    })
    .unwrap();
    // 40x40 -> 160x160 (padded 256: 3 x 3 tiles), then 24x40 -> 96x160 (padded
    // 128x256: 1 x 3 tiles)
    let mut out = Vec::new();
    for i in 0..30 {
        out.extend(engine.push(frame(40, 40, i), i).unwrap());
    }
    assert_eq!(engine.stream_tiles(), 9);
    for i in 30..35 {
        out.extend(engine.push(frame(24, 40, i), i).unwrap());
    }
    assert_eq!(engine.stream_tiles(), 3);
    out.extend(engine.finish().unwrap());
    let tags: Vec<usize> = out.iter().map(|(_, t)| *t).collect();
    assert_eq!(tags, (0..35).collect::<Vec<_>>());
    for (f, t) in &out {
        let expected = if *t < 30 { (160, 160) } else { (96, 160) };
        assert_eq!((f.width, f.height), expected, "frame {t}");
    }
    // a reset drops the held frames; the next stream starts over
    for i in 0..5 {
        assert!(engine.push(frame(40, 40, i), i).unwrap().is_empty());
    }
    engine.reset();
    assert_eq!(engine.pending_frames(), 0);
    let frames: Vec<RgbFrame> = (0..26).map(|i| frame(40, 40, i)).collect();
    assert_eq!(run(&mut engine, &frames).len(), 26);
}

#[test]
fn decoder_tiles_inside_model_tiles_decode_as_whole_tiles_do() {
    let Some(shared) = common::shared_dir() else {
        return;
    };
    // 384x256 output in 2 tiles of 256 overlapping by 96 (as above), each
    // decoded in tiles of 128 (3 x 3 per model tile) or whole
    let (settings, input, noise) = sparse_case(&shared);
    let upscale = |decoder_tile_size: u32| {
        let settings = EngineSettings {
            tile_size: 256,
            tile_overlap: 96,
            decoder_tile_size,
            ..settings.clone()
        };
        let noise = FixedNoise::new(noise.clone()).unwrap();
        let mut engine = Engine::with_noise(settings, Box::new(noise)).unwrap();
        let plan = engine.plan(96, 64).unwrap();
        assert_eq!(plan.sequences(), 2, "{plan}");
        let decoder = plan.layout.decoder.map(|d| (d.tile, d.overlap));
        // decoder tiles overlap by their own small overlap, not the tiles'
        let expected = (decoder_tile_size > 0).then_some((128, 16));
        assert_eq!(decoder, expected, "{plan}");
        run(&mut engine, &input[..25])
    };
    let whole_tiles = upscale(0);
    let decoder_tiled = upscale(128);
    assert_eq!(decoder_tiled.len(), 25);
    // the decoder's tiles reproduce whole-tile decoding to float rounding
    // (docs/model.md, "Tiles"): the 8-bit frames agree within one level
    for (i, (a, b)) in whole_tiles.iter().zip(&decoder_tiled).enumerate() {
        let worst = a
            .data
            .iter()
            .zip(&b.data)
            .map(|(x, y)| x.abs_diff(*y))
            .max();
        assert!(worst <= Some(1), "frame {i}: off by {worst:?}");
    }
}

#[test]
fn tiles_work_at_every_scale_with_each_colour_fix_and_the_portable_path() {
    // 64x48 input: x2 -> 128x96 (one tile row of 128), x3 -> 192x144 and x4 ->
    // 256x192 (both padded to 256x256: 3 x 3 tiles of 128 overlapping by 32)
    let cases = [
        (2, ColorFix::Wavelet, KernelPath::Portable, 1),
        (3, ColorFix::None, KernelPath::Fast, 9),
        (4, ColorFix::Adain, KernelPath::Portable, 9),
    ];
    let frames: Vec<RgbFrame> = (0..26).map(|i| frame(64, 48, i)).collect();
    for (scale, color_fix, kernels, sequences) in cases {
        let settings = EngineSettings {
            scale,
            color_fix,
            kernels,
            tile_size: 128,
            tile_overlap: 32,
            decoder_tile_size: 128,
            ..tiny()
        };
        let case = format!("x{scale}, {color_fix:?}, {kernels:?}");
        let mut engine = Engine::new(settings.clone()).unwrap();
        let out = run(&mut engine, &frames);
        assert_eq!(out.len(), 26, "{case}");
        let size = (64 * scale, 48 * scale);
        assert!(
            out.iter().all(|f| (f.width, f.height) == size),
            "{case}: every frame {size:?}"
        );
        assert_eq!(
            engine.plan(64, 48).unwrap().sequences(),
            sequences,
            "{case}"
        );
        // a tile covering the frame is the untiled output, whatever the settings
        let covering = EngineSettings {
            tile_size: 512,
            decoder_tile_size: 0,
            ..settings.clone()
        };
        let untiled = EngineSettings {
            tile_size: 0,
            decoder_tile_size: 0,
            ..settings
        };
        let a = run(&mut Engine::new(covering).unwrap(), &frames[..25]);
        let b = run(&mut Engine::new(untiled).unwrap(), &frames[..25]);
        assert!(a == b, "{case}: a covering tile differs from untiled");
    }
}
