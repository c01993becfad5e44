//! Random model folders: the released tensor and parameter counts, the released stored
//! dtypes, and a small folder that loads and runs one chunk to sane frames.

use candle_core::{DType, Device, Tensor};
mod common;

use common::Scratch;
use gstflashvsr::devtools::random_model::{NormalSource, RandomModelSpec, write_model_dir};
use gstflashvsr::layers::kernels::KernelPath;
use gstflashvsr::model::color_fix::ColorFix;
use gstflashvsr::model::{FlashVsrModel, ModelOptions, ModelVersion, SequenceConfig};
use gstflashvsr::weights::{DECODER_FILE, DIT_FILE, LQ_PROJ_FILE, PROMPT_FILE, WeightFile};

/// Small widths (those of the tiny fixtures), two DiT blocks.
fn small_spec() -> RandomModelSpec {
    RandomModelSpec::tiny(5)
}

/// Counted from the tensor list alone: nothing is written.
#[test]
fn released_widths_give_the_released_counts() {
    let spec = RandomModelSpec::released(30);
    spec.validate().unwrap();
    let files = spec.files();
    let count = |name: &str| {
        let file = files.iter().find(|f| f.name == name).unwrap();
        (file.tensors.len(), file.parameters(), file.dtype)
    };
    assert_eq!(count(DIT_FILE), (825, 1_418_996_800, DType::F32));
    assert_eq!(count(LQ_PROJ_FILE), (8, 287_845_888, DType::BF16));
    assert_eq!(count(DECODER_FILE), (66, 45_338_371, DType::F32));
    assert_eq!(count(PROMPT_FILE), (1, 512 * 4096, DType::BF16));
    let prompt = &files
        .iter()
        .find(|f| f.name == PROMPT_FILE)
        .unwrap()
        .tensors[0];
    assert_eq!(prompt.shape, [1, 512, 4096]);
    // One block fewer removes exactly one block's 27 tensors.
    let one = RandomModelSpec::released(1).files();
    assert_eq!(one[0].tensors.len(), 825 - 29 * 27);
}

#[test]
fn small_model_loads_with_released_dtypes_and_runs_a_chunk() {
    let scratch = Scratch::new("run");
    let spec = small_spec();
    write_model_dir(&spec, &scratch.0).unwrap();

    for (file, dtype) in [
        (DIT_FILE, DType::F32),
        (LQ_PROJ_FILE, DType::BF16),
        (DECODER_FILE, DType::F32),
        (PROMPT_FILE, DType::BF16),
    ] {
        let weights = WeightFile::open(&scratch.0.join(file)).unwrap();
        let expected = spec.files().into_iter().find(|f| f.name == file).unwrap();
        let mut names: Vec<String> = expected.tensors.iter().map(|t| t.name.clone()).collect();
        names.sort();
        assert_eq!(weights.names(), names, "{file}");
        for t in &expected.tensors {
            assert_eq!(
                weights.stored_dtype(&t.name).unwrap(),
                dtype,
                "{file} {}",
                t.name
            );
            assert_eq!(
                weights.shape(&t.name).unwrap(),
                t.shape,
                "{file} {}",
                t.name
            );
        }
    }
    // Weights are scaled by fan-in: std 1/sqrt(256) for a [512, 256] linear.
    let dit = WeightFile::open(&scratch.0.join(DIT_FILE)).unwrap();
    let w = dit.stored_tensor("blocks.1.ffn.0.weight").unwrap();
    let std = w
        .sqr()
        .unwrap()
        .mean_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
        .sqrt();
    assert!((std * 16.0 - 1.0).abs() < 0.02, "std {std}");

    let opts = ModelOptions {
        device: Device::Cpu,
        dtype: DType::F32,
        kernels: KernelPath::Fast,
        attention: gstflashvsr::engine::AttentionKernel::Auto,
    };
    let model = FlashVsrModel::load(&scratch.0, &opts).unwrap();
    let cfg = SequenceConfig {
        height: 128,
        width: 128,
        version: ModelVersion::V1_1,
        sparse_ratio: 2.0,
        kv_ratio: 3.0,
        local_range: 11,
        color_fix: ColorFix::Adain,
        decoder_tiling: None,
        cancel: Default::default(),
    };
    let mut state = model.new_sequence(&cfg).unwrap();
    // A smooth moving pattern in [-1, 1], and unit noise.
    let lq = Tensor::arange(0f32, (25 * 3 * 128 * 128) as f32, &Device::Cpu)
        .unwrap()
        .affine(0.001, 0.0)
        .unwrap()
        .sin()
        .unwrap()
        .reshape((25, 3, 128, 128))
        .unwrap();
    let mut source = NormalSource::new(11);
    let noise: Vec<f32> = (0..16 * 6 * 16 * 16)
        .map(|_| source.next_normal())
        .collect();
    let noise = Tensor::from_vec(noise, (1, 16, 6, 16, 16), &Device::Cpu).unwrap();
    let out = model.run_chunk(&mut state, &lq, &noise).unwrap();
    assert_eq!(out.dims(), [21, 3, 128, 128]);
    let values = out.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert!(
        values
            .iter()
            .all(|v| v.is_finite() && (-1.0..=1.0).contains(v))
    );
    let mean = values.iter().sum::<f32>() / values.len() as f32;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / values.len() as f32;
    assert!(var > 1e-4, "output is flat (variance {var})");
}

#[test]
fn rewriting_a_folder_replaces_stale_conversions() {
    let scratch = Scratch::new("stale");
    let spec = small_spec();
    write_model_dir(&spec, &scratch.0).unwrap();
    let converted = gstflashvsr::weights::convert_to_safetensors(&scratch.0, &scratch.0).unwrap();
    assert_eq!(converted.len(), 3);
    let mut other = small_spec();
    other.seed = 6;
    write_model_dir(&other, &scratch.0).unwrap();
    assert!(converted.iter().all(|path| !path.exists()));
    // The new seed's values, not the old ones, are what the folder now holds.
    let read = |dir: &std::path::Path| {
        let file = WeightFile::open(&dir.join(LQ_PROJ_FILE)).unwrap();
        file.stored_tensor("linear_layers.0.bias")
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    let again = Scratch::new("again");
    write_model_dir(&other, &again.0).unwrap();
    assert_eq!(read(&scratch.0), read(&again.0));
    let first = Scratch::new("first");
    write_model_dir(&spec, &first.0).unwrap();
    assert_ne!(read(&scratch.0), read(&first.0));
}

#[test]
fn unwritable_folder_is_an_error_naming_it() {
    let scratch = Scratch::new("unwritable");
    std::fs::write(&scratch.0, b"a file, not a folder").unwrap();
    let dir = scratch.0.join("model");
    let err = write_model_dir(&small_spec(), &dir)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("model folder '{}'", dir.display())) && err.contains("cannot create"),
        "{err}"
    );
}
