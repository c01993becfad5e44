//! The memory and start time of `flashvsr` elements sharing one model
//! (`engine::model_registry`). Alone in its test binary: the process's
//! resident memory is measured, and heap that other tests freed (kept by the
//! allocator for reuse) would hide the weights' own growth.

mod common;

use gstflashvsr::devtools::random_model::{RandomModelSpec, write_model_dir};
use gstflashvsr::engine::loaded_models;

use gst::prelude::*;

/// Resident memory of this process, in bytes.
fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib * 1024
}

/// A model whose weights (about 140 MB in f32) dwarf everything else an
/// element holds: four elements' memory and a restart's time show whether the
/// weights are held and loaded once.
#[test]
fn four_elements_hold_the_memory_of_one_and_a_restart_is_ten_times_faster() {
    common::init();
    let scratch = common::Scratch::created("shared-rss");
    let dir = scratch.0.join("model");
    let spec = RandomModelSpec {
        dit_blocks: 8,
        dim: 512,
        ffn_dim: 2048,
        ..RandomModelSpec::tiny(8)
    };
    write_model_dir(&spec, &dir).unwrap();
    // the elements alone: READY->PAUSED is their start, weights loaded then
    let element = || {
        gst::ElementFactory::make("flashvsr")
            .property("model-dir", dir.to_str().unwrap())
            .build()
            .unwrap()
    };
    let paused = |element: &gst::Element| {
        let started = std::time::Instant::now();
        assert_eq!(
            element.set_state(gst::State::Paused).unwrap(),
            gst::StateChangeSuccess::Success
        );
        started.elapsed()
    };
    let before = resident_bytes();
    let first = element();
    let first_start = paused(&first);
    let one = resident_bytes().saturating_sub(before);
    let others: Vec<gst::Element> = (0..3).map(|_| element()).collect();
    for other in &others {
        paused(other);
    }
    let four = resident_bytes().saturating_sub(before);
    eprintln!("resident: one element {one} bytes, four elements {four} bytes");
    assert!(one > 100_000_000, "the weights are resident: {one}");
    // separate copies would take four times one element's weights
    assert!(
        four < one + one / 2,
        "four elements hold {four} bytes, one {one}"
    );
    // a restart with the same settings reuses the weights
    first.set_state(gst::State::Ready).unwrap();
    let restart = paused(&first);
    eprintln!("first start {first_start:?}, restart {restart:?}");
    assert!(
        restart * 10 <= first_start,
        "first start {first_start:?}, restart {restart:?}"
    );
    for element in others.iter().chain([&first]) {
        element.set_state(gst::State::Null).unwrap();
    }
    assert_eq!(loaded_models(), 0);
}
