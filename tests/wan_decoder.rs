//! `decoder=wan` through the engine and the element: a model folder of the tiny
//! fixture's sizes with the golden case's reduced-width Wan2.1 VAE beside it
//! (tests/golden/wan-v1.1), every frame out with its tag, the decoder really
//! changed, and the VAE file's absence or damage a start error naming it. The
//! decoder's own parity is in `model::wan_decoder`'s tests and the `parity`
//! example.

mod common;

use std::path::{Path, PathBuf};

use gst::prelude::*;
use gstflashvsr::engine::{
    DecoderKind, Engine, EngineError, EngineSettings, ModelVersion, RgbFrame,
};
use gstflashvsr::weights::{WAN_VAE_FILE, WAN_VAE_SAFETENSORS_FILE};

fn golden_vae() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden/wan-v1.1/model")
        .join(WAN_VAE_FILE)
}

/// `common::tiny_model`'s files plus `vae` (when given) under `WAN_VAE_FILE`,
/// in a fresh folder.
fn folder_with_vae(tag: &str, vae: Option<&[u8]>) -> common::Scratch {
    let scratch = common::Scratch::created(tag);
    for entry in std::fs::read_dir(common::tiny_model()).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, scratch.0.join(path.file_name().unwrap())).unwrap();
    }
    if let Some(bytes) = vae {
        std::fs::write(scratch.0.join(WAN_VAE_FILE), bytes).unwrap();
    }
    scratch
}

fn settings(dir: &Path, decoder: DecoderKind) -> EngineSettings {
    EngineSettings {
        model_dir: dir.to_path_buf(),
        model_version: ModelVersion::V1,
        decoder,
        ..EngineSettings::default()
    }
}

fn frame(width: u32, height: u32, index: usize) -> RgbFrame {
    let mut data = Vec::with_capacity((width * height * 3) as usize);
    for y in 0..height as usize {
        for x in 0..width as usize {
            let v = x * 9 + y * 4 + index * 5;
            data.extend_from_slice(&[(v % 256) as u8, ((v * 3) % 256) as u8, (x * 17 % 256) as u8]);
        }
    }
    RgbFrame {
        width,
        height,
        data,
    }
}

fn upscale(dir: &Path, decoder: DecoderKind, n: usize) -> Vec<(RgbFrame, usize)> {
    let mut engine = Engine::<usize>::new(settings(dir, decoder)).unwrap();
    let mut out = Vec::new();
    for i in 0..n {
        out.extend(engine.push(frame(32, 24, i), i).unwrap());
    }
    out.extend(engine.finish().unwrap());
    out
}

#[test]
fn every_frame_comes_out_decoded_by_the_wan_decoder() {
    let vae = std::fs::read(golden_vae()).unwrap();
    let dir = folder_with_vae("wan-stream", Some(&vae));
    // 34 frames: the first chunk (21 out), two steady chunks, a drained tail
    let wan = upscale(&dir.0, DecoderKind::Wan, 34);
    assert_eq!(wan.len(), 34);
    for (i, (f, tag)) in wan.iter().enumerate() {
        assert_eq!(*tag, i);
        assert_eq!((f.width, f.height), (128, 96));
    }
    let tiny = upscale(&dir.0, DecoderKind::Tiny, 34);
    let differing = wan
        .iter()
        .zip(&tiny)
        .filter(|((a, _), (b, _))| a.data != b.data)
        .count();
    assert_eq!(differing, 34, "the wan decoder's frames are its own");
    // the same stream twice gives the same bytes (caches start fresh per stream)
    assert!(
        upscale(&dir.0, DecoderKind::Wan, 34)
            .iter()
            .zip(&wan)
            .all(|((a, _), (b, _))| a.data == b.data)
    );
}

#[test]
fn a_missing_vae_fails_at_new_naming_the_file() {
    let dir = folder_with_vae("wan-missing", None);
    let err = match Engine::<()>::new(settings(&dir.0, DecoderKind::Wan)) {
        Err(e @ EngineError::Model { .. }) => e.to_string(),
        Err(other) => panic!("expected a model error, got {other}"),
        Ok(_) => panic!("decoder=wan loaded without the VAE"),
    };
    assert!(
        err.contains(WAN_VAE_FILE) && err.contains(WAN_VAE_SAFETENSORS_FILE),
        "{err}"
    );
    assert!(err.contains(&dir.0.display().to_string()), "{err}");
    // the tiny decoder does not need it
    assert!(Engine::<()>::new(settings(&dir.0, DecoderKind::Tiny)).is_ok());
}

#[test]
fn a_damaged_vae_fails_naming_the_file() {
    let vae = std::fs::read(golden_vae()).unwrap();
    let truncated = folder_with_vae("wan-truncated", Some(&vae[..vae.len() / 2]));
    let err = Engine::<()>::new(settings(&truncated.0, DecoderKind::Wan))
        .err()
        .expect("a truncated VAE is an error")
        .to_string();
    assert!(err.contains(WAN_VAE_FILE), "{err}");
    // another model's VAE: latent channels that the DiT does not make
    let not_a_vae = std::fs::read(common::tiny_model().join("TCDecoder.ckpt")).unwrap();
    let wrong = folder_with_vae("wan-wrong", Some(&not_a_vae));
    let err = Engine::<()>::new(settings(&wrong.0, DecoderKind::Wan))
        .err()
        .expect("a TCDecoder under the VAE's name is an error")
        .to_string();
    assert!(
        err.contains(WAN_VAE_FILE) && err.contains("decoder.conv1.weight"),
        "{err}"
    );
}

#[test]
fn the_element_takes_the_decoder_property() {
    common::init();
    let dir = folder_with_vae("wan-element", None);
    let element = gst::ElementFactory::make("flashvsr")
        .property("model-dir", dir.0.to_str().unwrap())
        .build()
        .unwrap();
    let default = element.property_value("decoder");
    let (_, value) = gst::glib::EnumValue::from_value(&default).unwrap();
    assert_eq!(value.nick(), "tiny");
    element.set_property_from_str("decoder", "wan");
    let text = common::start_error_text(&element);
    assert!(text.contains(WAN_VAE_FILE), "{text}");
}
