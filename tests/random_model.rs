//! Random model folders: the released tensor and parameter counts, the released stored
//! dtypes, a small folder that loads and runs one chunk to sane frames, and the Wan2.1
//! VAE written on request.

use candle_core::{DType, Device, Tensor};
mod common;

use common::Scratch;
use gstflashvsr::devtools::random_model::{
    NormalSource, RandomModelSpec, WanVaeSpec, write_model_dir,
};
use gstflashvsr::layers::kernels::KernelPath;
use gstflashvsr::model::color_fix::ColorFix;
use gstflashvsr::model::{FlashVsrModel, ModelOptions, ModelVersion, SequenceConfig};
use gstflashvsr::weights::{
    DECODER_FILE, DIT_FILE, LQ_PROJ_FILE, PROMPT_FILE, WAN_VAE_DECODER_PREFIXES, WAN_VAE_FILE,
    WeightFile,
};

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
    // The VAE only on request, then with the released VAE's counts (those of the
    // official VideoVAE_(dim=96, z_dim=16), encoder included).
    assert_eq!(files.len(), 4);
    assert!(files.iter().all(|f| f.name != WAN_VAE_FILE));
    let with_vae = RandomModelSpec {
        wan_vae: Some(WanVaeSpec::released()),
        ..RandomModelSpec::released(30)
    };
    with_vae.validate().unwrap();
    let files = with_vae.files();
    assert_eq!(files.len(), 5);
    let vae = files.iter().find(|f| f.name == WAN_VAE_FILE).unwrap();
    assert_eq!(
        (vae.tensors.len(), vae.parameters(), vae.dtype),
        (194, 126_892_531, DType::F32)
    );
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
        decoder: gstflashvsr::model::decoder::DecoderKind::Tiny,
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

/// The Wan2.1 VAE at base width 4 (decoder widths 16, 16, 8, 4): a torch.save archive
/// of the whole official `VideoVAE_` in f32, encoder included, with the decoder's key
/// names and shapes, and weights at the module's scales.
#[test]
fn wan_vae_is_a_torch_archive_of_the_whole_vae() {
    let scratch = Scratch::new("wan-vae");
    let spec = RandomModelSpec {
        wan_vae: Some(WanVaeSpec::with_dim(4)),
        ..small_spec()
    };
    assert_eq!(spec.wan_vae.unwrap().decoder_widths(), [16, 16, 8, 4]);
    write_model_dir(&spec, &scratch.0).unwrap();
    let path = scratch.0.join(WAN_VAE_FILE);
    // A zip archive (torch.save's format), read through its pickle.
    assert_eq!(&std::fs::read(&path).unwrap()[..4], b"PK\x03\x04");
    let vae = WeightFile::open(&path).unwrap();
    let names = vae.names();
    assert_eq!(names.len(), 194);
    let count = |prefix: &str| names.iter().filter(|n| n.starts_with(prefix)).count();
    assert_eq!(
        (
            count("encoder."),
            count("conv1."),
            count("conv2."),
            count("decoder.")
        ),
        (84, 2, 2, 106)
    );
    let decoder = names
        .iter()
        .filter(|n| WAN_VAE_DECODER_PREFIXES.iter().any(|p| n.starts_with(p)))
        .count();
    assert_eq!(decoder, 108);

    // As the file list says, every tensor f32.
    let expected = spec
        .files()
        .into_iter()
        .find(|f| f.name == WAN_VAE_FILE)
        .unwrap();
    assert_eq!(expected.parameters(), 243_583);
    let mut listed: Vec<String> = expected.tensors.iter().map(|t| t.name.clone()).collect();
    listed.sort();
    assert_eq!(names, listed);
    for t in &expected.tensors {
        assert_eq!(vae.shape(&t.name).unwrap(), t.shape, "{}", t.name);
        assert_eq!(vae.stored_dtype(&t.name).unwrap(), DType::F32, "{}", t.name);
    }

    // The official names and shapes: causal 3-D convs [out, in, kt, kh, kw], video
    // norms [C, 1, 1, 1], the attention's image norm [C, 1, 1], 2-D convs in the
    // resamplings and the attention.
    for (name, shape) in [
        ("conv1.weight", &[32, 32, 1, 1, 1][..]),
        ("conv2.weight", &[16, 16, 1, 1, 1]),
        ("conv2.bias", &[16]),
        ("decoder.conv1.weight", &[16, 16, 3, 3, 3]),
        ("decoder.middle.0.residual.0.gamma", &[16, 1, 1, 1]),
        ("decoder.middle.0.residual.2.weight", &[16, 16, 3, 3, 3]),
        ("decoder.middle.0.residual.3.gamma", &[16, 1, 1, 1]),
        ("decoder.middle.0.residual.6.bias", &[16]),
        ("decoder.middle.1.norm.gamma", &[16, 1, 1]),
        ("decoder.middle.1.to_qkv.weight", &[48, 16, 1, 1]),
        ("decoder.middle.1.to_qkv.bias", &[48]),
        ("decoder.middle.1.proj.weight", &[16, 16, 1, 1]),
        ("decoder.middle.2.residual.6.weight", &[16, 16, 3, 3, 3]),
        ("decoder.upsamples.2.residual.6.weight", &[16, 16, 3, 3, 3]),
        ("decoder.upsamples.3.resample.1.weight", &[8, 16, 3, 3]),
        ("decoder.upsamples.3.time_conv.weight", &[32, 16, 3, 1, 1]),
        ("decoder.upsamples.3.time_conv.bias", &[32]),
        ("decoder.upsamples.4.residual.0.gamma", &[8, 1, 1, 1]),
        ("decoder.upsamples.4.residual.2.weight", &[16, 8, 3, 3, 3]),
        ("decoder.upsamples.4.shortcut.weight", &[16, 8, 1, 1, 1]),
        ("decoder.upsamples.7.time_conv.weight", &[32, 16, 3, 1, 1]),
        ("decoder.upsamples.8.residual.2.weight", &[8, 8, 3, 3, 3]),
        ("decoder.upsamples.11.resample.1.weight", &[4, 8, 3, 3]),
        ("decoder.upsamples.12.residual.2.weight", &[4, 4, 3, 3, 3]),
        ("decoder.upsamples.14.residual.6.weight", &[4, 4, 3, 3, 3]),
        ("decoder.head.0.gamma", &[4, 1, 1, 1]),
        ("decoder.head.2.weight", &[3, 4, 3, 3, 3]),
        ("decoder.head.2.bias", &[3]),
        ("encoder.conv1.weight", &[4, 3, 3, 3, 3]),
        ("encoder.downsamples.2.resample.1.weight", &[4, 4, 3, 3]),
        ("encoder.downsamples.3.shortcut.weight", &[8, 4, 1, 1, 1]),
        ("encoder.downsamples.5.time_conv.weight", &[8, 8, 3, 1, 1]),
        ("encoder.downsamples.8.time_conv.weight", &[16, 16, 3, 1, 1]),
        ("encoder.middle.1.norm.gamma", &[16, 1, 1]),
        ("encoder.head.2.weight", &[32, 16, 3, 3, 3]),
    ] {
        assert_eq!(vae.shape(name).unwrap(), shape, "{name}");
    }
    // No temporal conv in the 2-D resamplings, no shortcut where the widths match,
    // nothing past the last stage.
    for absent in [
        "decoder.upsamples.11.time_conv.weight",
        "encoder.downsamples.2.time_conv.weight",
        "decoder.upsamples.8.shortcut.weight",
        "decoder.middle.0.shortcut.weight",
        "decoder.upsamples.15.resample.1.weight",
        "decoder.middle.1.norm.bias",
    ] {
        assert!(!vae.contains(absent), "{absent}");
    }

    // Scales: gammas near 1, weights with std 1/sqrt(fan_in), the attention's output
    // conv random (the official init zeroes it).
    let values = |name: &str| {
        vae.stored_tensor(name)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    let moments = |v: &[f32]| {
        let mean = v.iter().sum::<f32>() / v.len() as f32;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / v.len() as f32;
        (mean, var.sqrt())
    };
    let (mean, _) = moments(&values("decoder.middle.0.residual.0.gamma"));
    assert!((mean - 1.0).abs() < 0.1, "gamma mean {mean}");
    // fan-in 16 * 27 = 432 over 16 * 432 values
    let (mean, std) = moments(&values("decoder.middle.0.residual.2.weight"));
    assert!(mean.abs() < 0.01, "weight mean {mean}");
    assert!((std * 432f32.sqrt() - 1.0).abs() < 0.05, "weight std {std}");
    let (_, std) = moments(&values("decoder.middle.1.proj.weight"));
    assert!((std * 4.0 - 1.0).abs() < 0.2, "proj std {std}");
    let (_, std) = moments(&values("decoder.head.2.bias"));
    assert!(std < 0.1, "bias std {std}");
}
