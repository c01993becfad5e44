//! The generator's statistics, and the torch files' pickles against those that
//! `torch.save` wrote for the fixtures.

use std::io::Read;
use std::path::{Path, PathBuf};

use super::*;

/// `<case>/model` of the shared fixtures, or `None` (with a notice) when they are
/// absent; under `CI=true` their absence is a failure.
fn fixture_model_dir(case: &str) -> Option<PathBuf> {
    let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/golden"))
        .join(case)
        .join("model");
    if dir.is_dir() {
        return Some(dir);
    }
    assert_ne!(
        std::env::var("CI").as_deref(),
        Ok("true"),
        "fixtures missing at {}",
        dir.display()
    );
    eprintln!("skipping: fixtures not found at {}", dir.display());
    None
}

/// The sizes of the tiny-v1 fixture (its `case.json`).
fn tiny_v1_spec() -> RandomModelSpec {
    RandomModelSpec::tiny(1)
}

/// The sizes of the sparse-v1.1 fixture (its `case.json`).
fn sparse_v1_1_spec() -> RandomModelSpec {
    RandomModelSpec {
        ffn_dim: 384,
        text_dim: 32,
        ctx_len: 8,
        lq_hidden: [48, 64],
        tc_channels: [48, 32, 16, 16],
        ..tiny_v1_spec()
    }
}

fn stored_pickle(path: &Path) -> Vec<u8> {
    let file = std::fs::File::open(path).expect("open fixture");
    let mut archive = zip::ZipArchive::new(file).expect("fixture is a zip");
    let name = archive
        .file_names()
        .map(|n| n.expect("entry name").to_string())
        .find(|n| n.ends_with("/data.pkl"))
        .expect("fixture has a pickle");
    let mut bytes = Vec::new();
    archive
        .by_name(&name)
        .expect("fixture pickle")
        .read_to_end(&mut bytes)
        .expect("read fixture pickle");
    bytes
}

#[test]
fn normal_source_has_unit_moments_and_bounded_values() {
    let mut source = NormalSource::new(7);
    let n = 1_000_000;
    let (mut sum, mut sum_sq, mut max_abs) = (0f64, 0f64, 0f32);
    for _ in 0..n {
        let v = source.next_normal();
        sum += f64::from(v);
        sum_sq += f64::from(v) * f64::from(v);
        max_abs = max_abs.max(v.abs());
    }
    let mean = sum / n as f64;
    let std = (sum_sq / n as f64 - mean * mean).sqrt();
    assert!(mean.abs() < 0.005, "mean {mean}");
    assert!((std - 1.0).abs() < 0.005, "std {std}");
    assert!(max_abs <= 3.47 && max_abs > 3.0, "max |v| {max_abs}");
}

#[test]
fn values_depend_on_seed_and_name_and_keep_mean_and_std() {
    let t = RandomTensor::fan_in("blocks.0.ffn.0.weight", &[64, 400]);
    let bytes = |t: &RandomTensor, seed| t.values(seed).to_bytes(ValueEncoding::F32);
    assert_eq!(bytes(&t, 3), bytes(&t, 3));
    assert_ne!(bytes(&t, 3), bytes(&t, 4));
    let mut renamed = t.clone();
    renamed.name = "blocks.1.ffn.0.weight".into();
    assert_ne!(bytes(&t, 3), bytes(&renamed, 3));

    let values: Vec<f32> = bytes(&t, 3)
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    assert_eq!(values.len(), 64 * 400);
    let mean = values.iter().sum::<f32>() / values.len() as f32;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / values.len() as f32;
    assert!(mean.abs() < 0.002, "mean {mean}");
    assert!(
        (var.sqrt() * 20.0 - 1.0).abs() < 0.02,
        "std {} != 1/20",
        var.sqrt()
    );

    let norm = RandomTensor::scale("norm3.weight", 10_000);
    let half = norm.values(1).to_bytes(ValueEncoding::Bf16);
    assert_eq!(half.len(), 20_000);
    let mean = half
        .chunks_exact(2)
        .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
        .sum::<f32>()
        / 10_000.0;
    assert!((mean - 1.0).abs() < 0.01, "norm scale mean {mean}");
}

#[test]
fn invalid_specs_are_refused_by_name() {
    let mut spec = tiny_v1_spec();
    spec.dim = 200;
    let text = spec.validate().unwrap_err().to_string();
    assert!(text.contains("dim 200") && text.contains("128"), "{text}");
    let mut spec = tiny_v1_spec();
    spec.tc_channels[2] = 0;
    let text = spec.validate().unwrap_err().to_string();
    assert!(text.contains("tc_channels[2]"), "{text}");
    let mut spec = tiny_v1_spec();
    spec.lq_layers = 3;
    let text = spec.validate().unwrap_err().to_string();
    assert!(
        text.contains("3 LQ projection layers for 2 DiT blocks"),
        "{text}"
    );
    let mut spec = tiny_v1_spec();
    spec.wan_vae = Some(WanVaeSpec::with_dim(0));
    let text = spec.validate().unwrap_err().to_string();
    assert!(text.contains("Wan VAE dim"), "{text}");
    let dir = std::env::temp_dir().join("gst-flashvsr-never-written");
    assert!(write_model_dir(&spec, &dir).is_err());
    assert!(!dir.exists(), "nothing written for an invalid spec");
}

/// With a fixture's sizes and its stored dtype (f32 throughout), each torch file's
/// pickle is byte for byte the one `torch.save` wrote: same keys, order, shapes,
/// strides, storage keys, module metadata and opcodes.
#[test]
fn pickles_match_the_fixtures_byte_for_byte() {
    for (case, spec) in [
        ("tiny-v1", tiny_v1_spec()),
        ("sparse-v1.1", sparse_v1_1_spec()),
    ] {
        let Some(dir) = fixture_model_dir(case) else {
            return;
        };
        let mut compared = 0;
        for file in spec.files() {
            if file.format == FileFormat::Safetensors {
                continue;
            }
            let ours = torch_pickle(&file, DType::F32).expect("pickle");
            let theirs = stored_pickle(&dir.join(file.name));
            assert!(ours == theirs, "{case}/{}: pickles differ", file.name);
            compared += 1;
        }
        assert_eq!(compared, 3, "{case}");
    }
}
