//! The element's tile properties: defaults, ranges and round trips, bad values
//! refused at READY->PAUSED naming the property, and a tiled element that
//! outputs every frame (a model of the tiny fixture's sizes, `common::tiny_model`).

mod common;
use common::init;

use gst::prelude::*;
use gst_check::Harness;
use gstflashvsr::engine::EngineSettings;

#[test]
fn tile_properties_round_trip_with_their_defaults_and_ranges() {
    init();
    let element = gst::ElementFactory::make("flashvsr").build().unwrap();
    let defaults = EngineSettings::default();
    assert_eq!(element.property::<u32>("tile-size"), defaults.tile_size);
    assert_eq!(
        element.property::<u32>("tile-overlap"),
        defaults.tile_overlap
    );
    assert_eq!(
        element.property::<u32>("decoder-tile-size"),
        defaults.decoder_tile_size
    );
    assert_eq!(
        (
            defaults.tile_size,
            defaults.tile_overlap,
            defaults.decoder_tile_size
        ),
        (0, 64, 0)
    );
    for (name, max) in [
        ("tile-size", 8192),
        ("tile-overlap", 8184),
        ("decoder-tile-size", 8192),
    ] {
        let pspec = element.find_property(name).unwrap();
        let spec = pspec.downcast_ref::<gst::glib::ParamSpecUInt>().unwrap();
        assert_eq!((spec.minimum(), spec.maximum()), (0, max), "{name}");
        assert!(
            pspec.flags().contains(gst::PARAM_FLAG_MUTABLE_READY),
            "{name} is marked mutable in READY"
        );
        assert!(!pspec.blurb().unwrap_or_default().is_empty());
    }
    element.set_property("tile-size", 512u32);
    element.set_property("tile-overlap", 96u32);
    assert_eq!(element.property::<u32>("tile-size"), 512);
    assert_eq!(element.property::<u32>("tile-overlap"), 96);
    element.set_property_from_str("tile-size", "0");
    assert_eq!(element.property::<u32>("tile-size"), 0);
    element.set_property("decoder-tile-size", 384u32);
    assert_eq!(element.property::<u32>("decoder-tile-size"), 384);
}

/// Starts a `flashvsr` with the given tile properties on an existing folder and
/// returns the error text of READY->PAUSED.
fn start_error(tile_size: u32, tile_overlap: u32, decoder_tile_size: u32) -> String {
    let element = gst::ElementFactory::make("flashvsr")
        .property("model-dir", std::env::temp_dir().to_str().unwrap())
        .property("tile-size", tile_size)
        .property("tile-overlap", tile_overlap)
        .property("decoder-tile-size", decoder_tile_size)
        .build()
        .unwrap();
    common::start_error_text(&element)
}

#[test]
fn bad_tile_values_fail_ready_to_paused_naming_the_property() {
    init();
    let text = start_error(100, 64, 0);
    assert!(
        text.contains("tile-size") && text.contains("multiple of 128") && text.contains("100"),
        "{text}"
    );
    let text = start_error(256, 12, 0);
    assert!(
        text.contains("tile-overlap") && text.contains("multiple of 8") && text.contains("12"),
        "{text}"
    );
    let text = start_error(256, 256, 0);
    assert!(
        text.contains("tile-overlap") && text.contains("less than the tile size 256"),
        "{text}"
    );
    let text = start_error(0, 64, 200);
    assert!(
        text.contains("decoder-tile-size")
            && text.contains("multiple of 128")
            && text.contains("200"),
        "{text}"
    );
}

#[test]
fn a_tiled_element_outputs_every_frame() {
    init();
    let model = common::tiny_model();
    // 40x40 x4 -> 160x160, padded 256x256: tiles of 128 overlapping by 32, 3 x 3,
    // each decoded in one decoder tile
    let element = gst::ElementFactory::make("flashvsr")
        .property("model-dir", model.to_str().unwrap())
        .property_from_str("model-version", "v1")
        .property("tile-size", 128u32)
        .property("tile-overlap", 32u32)
        .property("decoder-tile-size", 128u32)
        .build()
        .unwrap();
    let mut h = Harness::with_element(&element, Some("sink"), Some("src"));
    h.set_src_caps_str("video/x-raw,format=RGB,width=40,height=40,framerate=25/1");
    let frame_time = gst::ClockTime::from_mseconds(40);
    let frames = 27u64;
    for i in 0..frames {
        let mut buffer = gst::Buffer::from_mut_slice(vec![(i * 37 % 251) as u8; 40 * 40 * 3]);
        buffer.get_mut().unwrap().set_pts(frame_time * i);
        h.push(buffer).unwrap();
    }
    assert!(h.push_event(gst::event::Eos::new()));
    for i in 0..frames {
        let b = h.pull().unwrap();
        assert_eq!(b.pts(), Some(frame_time * i), "pts of output {i}");
        assert_eq!(b.size(), 160 * 160 * 3, "size of output {i}");
    }
    assert!(h.try_pull().is_none(), "nothing after the {frames} frames");
}
