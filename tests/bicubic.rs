//! The PIL-exact bicubic pre-upscale against the fixtures made with Pillow:
//! `golden/bicubic.safetensors` (odd sizes, 1x1, several scales) and the
//! `lq_u8` frames of the pipeline fixtures.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use candle_core::{Device, Tensor};
use gstflashvsr::pixels::bicubic::{BicubicResizer, resize_rgb, upscaled_size};

fn load(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("cannot load {}: {e}", path.display()))
}

fn get<'a>(tensors: &'a HashMap<String, Tensor>, name: &str, file: &Path) -> &'a Tensor {
    tensors
        .get(name)
        .unwrap_or_else(|| panic!("{}: no tensor {name}", file.display()))
}

fn bytes(t: &Tensor) -> Vec<u8> {
    t.flatten_all().unwrap().to_vec1::<u8>().unwrap()
}

/// (largest difference, number of differing bytes).
fn compare(got: &[u8], want: &[u8]) -> (u8, usize) {
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(want)
        .map(|(&a, &b)| a.abs_diff(b))
        .fold((0, 0), |(worst, count), d| {
            (worst.max(d), count + usize::from(d > 0))
        })
}

#[test]
fn matches_pillow_on_the_bicubic_cases() {
    let Some(shared) = common::shared_dir() else {
        return;
    };
    let file = shared.join("golden/bicubic.safetensors");
    let tensors = load(&file);
    let mut cases = 0;
    while tensors.contains_key(&format!("case{cases}.src")) {
        let src = get(&tensors, &format!("case{cases}.src"), &file);
        let up = get(&tensors, &format!("case{cases}.up"), &file);
        let scale = get(&tensors, &format!("case{cases}.scale"), &file)
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()[0];
        let (h, w, _) = src.dims3().unwrap();
        let (up_h, up_w, _) = up.dims3().unwrap();
        assert_eq!(
            upscaled_size(w, h, f64::from(scale)),
            (up_w, up_h),
            "case{cases}: {w}x{h} x {scale}"
        );

        let src_bytes = bytes(src);
        let started = Instant::now();
        let got = resize_rgb(&src_bytes, w, h, up_w, up_h).unwrap();
        let elapsed = started.elapsed();
        let (worst, differing) = compare(&got, &bytes(up));
        println!(
            "case{cases}: {w}x{h} -> {up_w}x{up_h} (x{scale}): max error {worst}, \
             {differing} bytes differ, {elapsed:?}"
        );
        assert!(worst <= 1, "case{cases}: max error {worst}");
        cases += 1;
    }
    assert!(cases > 0, "{}: no case0.src", file.display());
}

#[test]
fn matches_the_pipeline_lq_frames() {
    let Some(shared) = common::shared_dir() else {
        return;
    };
    for case in ["tiny-v1", "sparse-v1.1"] {
        let file = shared.join("golden").join(case).join("io.safetensors");
        let tensors = load(&file);
        let lr = get(&tensors, "lr_frames", &file);
        let lq = get(&tensors, "lq_u8", &file);
        let (n, h, w, _) = lr.dims4().unwrap();
        let (padded, up_h, up_w, _) = lq.dims4().unwrap();
        assert_eq!(
            padded,
            n + 4,
            "{case}: lq_u8 has {padded} frames for {n} inputs"
        );

        let resizer = BicubicResizer::new(w, h, up_w, up_h).unwrap();
        let (mut worst, mut differing) = (0, 0);
        for index in 0..padded {
            // The last 4 LQ frames repeat the last input frame.
            let source = lr.get(index.min(n - 1)).unwrap();
            let got = resizer.resize(&bytes(&source)).unwrap();
            let (frame_worst, frame_differing) = compare(&got, &bytes(&lq.get(index).unwrap()));
            worst = worst.max(frame_worst);
            differing += frame_differing;
        }
        println!(
            "{case}: {padded} frames {w}x{h} -> {up_w}x{up_h}: max error {worst}, {differing} bytes differ"
        );
        assert!(worst <= 1, "{case}: max error {worst}");
    }
}

#[test]
fn cif_to_4cif_is_fast() {
    // The per-frame cost of a 176x144 stream at scale 4; printed, and checked
    // only against a bound loose enough for a loaded CI machine.
    let src: Vec<u8> = (0..176 * 144 * 3).map(|v| (v * 7 % 251) as u8).collect();
    let resizer = BicubicResizer::new(176, 144, 704, 576).unwrap();
    let started = Instant::now();
    let rounds = 20;
    for _ in 0..rounds {
        std::hint::black_box(resizer.resize(std::hint::black_box(&src)).unwrap());
    }
    let per_frame = started.elapsed() / rounds;
    println!("176x144 -> 704x576: {per_frame:?} per frame");
    assert!(per_frame.as_millis() < 500, "{per_frame:?} per frame");
}
