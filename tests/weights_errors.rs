//! Weight loading on copies of the fixture model folders: every file of both cases loads
//! with the shapes and values the fixtures hold, the safetensors conversion round-trips,
//! and damaged copies give errors naming the folder, file and tensor at fault.

mod common;

use common::Scratch;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use gstflashvsr::devtools::random_model::{RandomModelSpec, WanVaeSpec, write_model_dir};
use gstflashvsr::weights::pth::PthFile;
use gstflashvsr::weights::{
    DECODER_FILE, DECODER_SAFETENSORS_FILE, DIT_FILE, LQ_PROJ_FILE, LQ_PROJ_SAFETENSORS_FILE,
    ModelFiles, PROMPT_FILE, PROMPT_KEY, PROMPT_SAFETENSORS_FILE, WAN_VAE_DECODER_PREFIXES,
    WAN_VAE_FILE, WAN_VAE_SAFETENSORS_FILE, WeightFile, convert_to_safetensors,
};

/// A writable copy of `<case>/model` (the fixtures are read-only), or `None` when the
/// shared fixtures are absent.
fn model_copy(case: &str) -> Option<Scratch> {
    let source = common::golden_case(case)?.join("model");
    let scratch = Scratch::created(case);
    for entry in std::fs::read_dir(&source).expect("fixture model folder") {
        let from = entry.expect("fixture entry").path();
        let to = scratch.0.join(from.file_name().expect("file name"));
        std::fs::copy(&from, &to).expect("copy fixture file");
        let mut perms = std::fs::metadata(&to).expect("metadata").permissions();
        #[allow(clippy::permissions_set_readonly_false)]
        perms.set_readonly(false);
        std::fs::set_permissions(&to, perms).expect("make writable");
    }
    Some(scratch)
}

/// Rewrites the zip archive at `path`, passing each entry through `edit` (`None` drops it).
fn rewrite_zip(path: &Path, edit: impl Fn(&str, Vec<u8>) -> Option<Vec<u8>>) {
    let mut archive = zip::ZipArchive::new(std::fs::File::open(path).unwrap()).unwrap();
    let mut entries = Vec::new();
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).unwrap();
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).unwrap();
        entries.push((entry.name().unwrap().to_string(), bytes));
    }
    let mut out = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .with_alignment(64);
    for (name, bytes) in entries {
        if let Some(bytes) = edit(&name, bytes) {
            out.start_file(name, options).unwrap();
            out.write_all(&bytes).unwrap();
        }
    }
    out.finish().unwrap();
}

fn truncate_file(path: &Path, keep: f64) {
    let bytes = std::fs::read(path).unwrap();
    std::fs::write(path, &bytes[..(bytes.len() as f64 * keep) as usize]).unwrap();
}

/// The error's text, checked to be a plain one-line message (no backtrace attached, even
/// with RUST_BACKTRACE set).
fn err_text<T: std::fmt::Debug>(r: candle_core::Result<T>) -> String {
    let err = r.expect_err("expected an error");
    assert!(matches!(err, candle_core::Error::Msg(_)), "{err:?}");
    let text = err.to_string();
    assert!(!text.contains('\n'), "{text}");
    text
}

fn assert_names(msg: &str, parts: &[&str]) {
    eprintln!("error text: {msg}");
    for part in parts {
        assert!(msg.contains(part), "error {msg:?} does not name {part:?}");
    }
}

fn cpu() -> Device {
    Device::Cpu
}

fn sum_f64(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64)
        .and_then(|t| t.sum_all())
        .and_then(|t| t.to_scalar::<f64>())
        .unwrap()
}

fn first_f32(t: &Tensor) -> f32 {
    t.flatten_all()
        .unwrap()
        .get(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Sizes and values of one fixture case, read from the files with Python's zipfile.
struct Expected {
    case: &'static str,
    prompt_shape: [usize; 3],
    prompt_first: f32,
    prompt_sum: f64,
    decoder_in: [usize; 4],
    decoder_weight_sum: f64,
    lq_conv1: [usize; 5],
    lq_bias_first: f32,
}

const CASES: [Expected; 2] = [
    Expected {
        case: "tiny-v1",
        prompt_shape: [1, 16, 64],
        prompt_first: -0.311_975_93,
        prompt_sum: 36.972_717_306_111,
        decoder_in: [64, 784, 3, 3],
        decoder_weight_sum: 0.629_346_643_633,
        lq_conv1: [64, 768, 4, 3, 3],
        lq_bias_first: 0.023_859_46,
    },
    Expected {
        case: "sparse-v1.1",
        prompt_shape: [1, 8, 32],
        prompt_first: -0.741_109_55,
        prompt_sum: 3.394_340_964_966,
        decoder_in: [48, 784, 3, 3],
        decoder_weight_sum: -0.054_575_534_480,
        lq_conv1: [48, 768, 4, 3, 3],
        lq_bias_first: 0.026_978_814,
    },
];

#[test]
fn fixture_folders_load_with_expected_shapes_and_values() {
    for exp in &CASES {
        let Some(dir) = common::golden_case(exp.case) else {
            return;
        };
        let files = ModelFiles::open(&dir.join("model")).unwrap();
        assert_eq!(files.dit.names().len(), 69, "{}: DiT tensors", exp.case);
        assert_eq!(files.lq_proj.names().len(), 8, "{}: LQ tensors", exp.case);
        assert_eq!(
            files.decoder.names().len(),
            66,
            "{}: decoder tensors",
            exp.case
        );
        assert_eq!(files.prompt.names().len(), 1);
        assert!(files.decoder.path().ends_with(DECODER_FILE));
        assert_eq!(
            files.dit.shape("patch_embedding.weight").unwrap(),
            [256, 16, 1, 2, 2]
        );
        assert_eq!(files.lq_proj.shape("conv1.weight").unwrap(), exp.lq_conv1);
        assert!(files.lq_proj.contains("linear_layers.0.bias"));
        assert!(!files.lq_proj.contains("_metadata"));

        let prompt = files
            .prompt_tensor(DType::F32, &cpu(), exp.prompt_shape[2])
            .unwrap();
        assert_eq!(prompt.dims(), exp.prompt_shape);
        assert_eq!(first_f32(&prompt), exp.prompt_first);
        assert!((sum_f64(&prompt) - exp.prompt_sum).abs() < 1e-9);

        let vb = files.decoder.var_builder(DType::F32, &cpu());
        let w = vb
            .pp("decoder")
            .pp(1)
            .get(exp.decoder_in.to_vec(), "weight")
            .unwrap();
        assert!((sum_f64(&w) - exp.decoder_weight_sum).abs() < 1e-9);
        let bias = files
            .lq_proj
            .tensor("linear_layers.0.bias", &[256], DType::F32, &cpu())
            .unwrap();
        assert_eq!(first_f32(&bias), exp.lq_bias_first);

        // Every tensor of every file reads, in its stored shape.
        for file in [&files.dit, &files.lq_proj, &files.decoder, &files.prompt] {
            for name in file.names() {
                let shape = file.shape(&name).unwrap();
                let t = file.tensor(&name, &shape, DType::F32, &cpu()).unwrap();
                assert_eq!(t.dims(), shape.as_slice(), "{name}");
            }
        }
    }
}

#[test]
fn convert_round_trip_keeps_names_dtypes_and_values() {
    let Some(model) = model_copy("tiny-v1") else {
        return;
    };
    let out = Scratch::created("converted");
    let written = convert_to_safetensors(&model.0, &out.0).unwrap();
    let expected: Vec<PathBuf> = [
        LQ_PROJ_SAFETENSORS_FILE,
        DECODER_SAFETENSORS_FILE,
        PROMPT_SAFETENSORS_FILE,
    ]
    .iter()
    .map(|name| out.0.join(name))
    .collect();
    assert_eq!(written, expected);
    let leftovers: Vec<_> = std::fs::read_dir(&out.0).unwrap().collect();
    assert_eq!(
        leftovers.len(),
        3,
        "nothing but the three files: {leftovers:?}"
    );

    for (torch_name, st_name) in [
        (LQ_PROJ_FILE, LQ_PROJ_SAFETENSORS_FILE),
        (DECODER_FILE, DECODER_SAFETENSORS_FILE),
    ] {
        let torch = WeightFile::open(&model.0.join(torch_name)).unwrap();
        let st = WeightFile::open(&out.0.join(st_name)).unwrap();
        assert_eq!(torch.names(), st.names());
        for name in torch.names() {
            let a = torch.stored_tensor(&name).unwrap();
            let b = st.stored_tensor(&name).unwrap();
            assert_eq!(a.dtype(), b.dtype(), "{name}");
            assert_eq!(a.dims(), b.dims(), "{name}");
            let same = a.eq(&b).unwrap().to_dtype(DType::F32).unwrap();
            assert_eq!(sum_f64(&same), a.elem_count() as f64, "{name} differs");
        }
    }
    let prompt = WeightFile::open(&out.0.join(PROMPT_SAFETENSORS_FILE)).unwrap();
    assert_eq!(prompt.names(), [PROMPT_KEY]);

    // Converted files next to the released ones are preferred, with equal tensors.
    let released = ModelFiles::open(&model.0).unwrap();
    let written = convert_to_safetensors(&model.0, &model.0).unwrap();
    assert_eq!(written.len(), 3);
    let converted = ModelFiles::open(&model.0).unwrap();
    for file in [&converted.lq_proj, &converted.decoder, &converted.prompt] {
        assert_eq!(file.path().extension().unwrap(), "safetensors");
    }
    let a = released.prompt_tensor(DType::F32, &cpu(), 64).unwrap();
    let b = converted.prompt_tensor(DType::F32, &cpu(), 64).unwrap();
    assert_eq!(a.to_vec3::<f32>().unwrap(), b.to_vec3::<f32>().unwrap());
}

/// A random model folder with the tiny fixture's sizes, with a Wan2.1 VAE of base width
/// `vae_dim` when given.
fn random_folder(tag: &str, vae_dim: Option<usize>) -> Scratch {
    let scratch = Scratch::new(tag);
    let spec = RandomModelSpec {
        wan_vae: vae_dim.map(WanVaeSpec::with_dim),
        ..RandomModelSpec::tiny_fixture(9)
    };
    write_model_dir(&spec, &scratch.0).unwrap();
    scratch
}

/// The Wan2.1 VAE converts to its decoder part alone (`decoder.*` and `conv2.*`, the
/// encoder left out), names, dtypes and values kept, and is then what the folder
/// opens for the full-mode decoder.
#[test]
fn convert_keeps_the_wan_vae_decoder_only() {
    let model = random_folder("wan-vae", Some(4));
    let out = Scratch::created("wan-vae-converted");
    let written = convert_to_safetensors(&model.0, &out.0).unwrap();
    let expected: Vec<PathBuf> = [
        LQ_PROJ_SAFETENSORS_FILE,
        DECODER_SAFETENSORS_FILE,
        PROMPT_SAFETENSORS_FILE,
        WAN_VAE_SAFETENSORS_FILE,
    ]
    .iter()
    .map(|name| out.0.join(name))
    .collect();
    assert_eq!(written, expected);
    let leftovers = std::fs::read_dir(&out.0).unwrap().count();
    assert_eq!(leftovers, 4, "nothing but the four files");

    let source = WeightFile::open(&model.0.join(WAN_VAE_FILE)).unwrap();
    let converted = WeightFile::open(&out.0.join(WAN_VAE_SAFETENSORS_FILE)).unwrap();
    let is_decoder = |n: &String| WAN_VAE_DECODER_PREFIXES.iter().any(|p| n.starts_with(p));
    let decoder: Vec<String> = source.names().into_iter().filter(is_decoder).collect();
    assert_eq!(decoder.len(), 108);
    assert_eq!(
        source.names().len(),
        194,
        "the source holds the encoder too"
    );
    assert_eq!(converted.names(), decoder);
    assert!(converted.contains("conv2.weight") && !converted.contains("conv1.weight"));
    for name in &decoder {
        let a = source.stored_tensor(name).unwrap();
        let b = converted.stored_tensor(name).unwrap();
        assert_eq!(b.dtype(), DType::F32, "{name}");
        assert_eq!(a.dims(), b.dims(), "{name}");
        let same = a.eq(&b).unwrap().to_dtype(DType::F32).unwrap();
        assert_eq!(sum_f64(&same), a.elem_count() as f64, "{name} differs");
    }

    // Converted in place, the VAE's safetensors is preferred over the pickle.
    assert!(
        ModelFiles::open(&model.0)
            .unwrap()
            .open_wan_vae()
            .unwrap()
            .path()
            .ends_with(WAN_VAE_FILE)
    );
    convert_to_safetensors(&model.0, &model.0).unwrap();
    let vae = ModelFiles::open(&model.0).unwrap().open_wan_vae().unwrap();
    assert!(vae.path().ends_with(WAN_VAE_SAFETENSORS_FILE));
    assert_eq!(vae.names(), decoder);
}

/// The VAE is optional: a folder without it converts its three files and writes no VAE
/// file.
#[test]
fn a_folder_without_the_wan_vae_still_converts() {
    let model = random_folder("no-wan-vae", None);
    let out = Scratch::created("no-wan-vae-converted");
    let written = convert_to_safetensors(&model.0, &out.0).unwrap();
    assert_eq!(written.len(), 3);
    assert!(
        written
            .iter()
            .all(|p| !p.ends_with(WAN_VAE_SAFETENSORS_FILE))
    );
    assert!(!out.0.join(WAN_VAE_SAFETENSORS_FILE).exists());
    assert_eq!(std::fs::read_dir(&out.0).unwrap().count(), 3);
}

/// A file in the VAE's place without a single decoder tensor is refused by name, and no
/// (empty) converted VAE is left for the loader to prefer.
#[test]
fn a_wan_vae_without_decoder_tensors_is_refused() {
    let model = random_folder("not-a-vae", None);
    std::fs::copy(model.0.join(PROMPT_FILE), model.0.join(WAN_VAE_FILE)).unwrap();
    let msg = err_text(convert_to_safetensors(&model.0, &model.0));
    let path = model.0.join(WAN_VAE_FILE);
    assert_names(
        &msg,
        &[
            &path.display().to_string(),
            "no decoder tensors",
            "'decoder.'",
        ],
    );
    assert!(!model.0.join(WAN_VAE_SAFETENSORS_FILE).exists());
}

/// A bf16 file (as the released LQ projection and prompt are) converts to the requested
/// dtype on load.
#[test]
fn bf16_safetensors_load_as_f32() {
    let Some(model) = model_copy("tiny-v1") else {
        return;
    };
    let source = WeightFile::open(&model.0.join(DECODER_FILE)).unwrap();
    let mut bf16 = HashMap::new();
    for name in source.names() {
        let t = source.stored_tensor(&name).unwrap();
        bf16.insert(name, t.to_dtype(DType::BF16).unwrap());
    }
    let st_path = model.0.join(DECODER_SAFETENSORS_FILE);
    candle_core::safetensors::save(&bf16, &st_path).unwrap();
    let files = ModelFiles::open(&model.0).unwrap();
    assert!(files.decoder.path().ends_with(DECODER_SAFETENSORS_FILE));
    assert_eq!(
        files.decoder.stored_dtype("decoder.1.bias").unwrap(),
        DType::BF16
    );
    let loaded = files
        .decoder
        .tensor("decoder.1.bias", &[64], DType::F32, &cpu())
        .unwrap();
    let original = source.stored_tensor("decoder.1.bias").unwrap();
    assert_eq!(loaded.dtype(), DType::F32);
    let diff = (loaded - &original)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap();
    let max_abs = original.abs().unwrap().max_all().unwrap();
    assert!(diff.to_scalar::<f32>().unwrap() <= max_abs.to_scalar::<f32>().unwrap() / 128.0);
}

#[test]
fn missing_or_non_folder_is_explained() {
    let scratch = Scratch::created("absent");
    let absent = scratch.0.join("no-such-model");
    let msg = err_text(ModelFiles::open(&absent));
    assert_names(
        &msg,
        &[
            &absent.display().to_string(),
            "does not exist",
            "Hugging Face",
        ],
    );

    let file = scratch.0.join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let msg = err_text(ModelFiles::open(&file));
    assert_names(
        &msg,
        &[&file.display().to_string(), "not a folder", "FlashVSR"],
    );
}

#[test]
fn each_missing_file_is_named() {
    let cases = [
        (DIT_FILE, format!("missing '{DIT_FILE}'")),
        (
            LQ_PROJ_FILE,
            format!("'{LQ_PROJ_FILE}' (or '{LQ_PROJ_SAFETENSORS_FILE}')"),
        ),
        (
            DECODER_FILE,
            format!("'{DECODER_FILE}' (or '{DECODER_SAFETENSORS_FILE}')"),
        ),
        (
            PROMPT_FILE,
            format!("'{PROMPT_FILE}' (or '{PROMPT_SAFETENSORS_FILE}')"),
        ),
    ];
    for (file, expected) in cases {
        let Some(model) = model_copy("tiny-v1") else {
            return;
        };
        std::fs::remove_file(model.0.join(file)).unwrap();
        let msg = err_text(ModelFiles::open(&model.0));
        let folder = format!("model folder '{}'", model.0.display());
        assert_names(&msg, &[&folder, &expected, "Hugging Face", "README"]);
    }
}

#[test]
fn truncated_dit_safetensors_names_the_file() {
    let Some(model) = model_copy("tiny-v1") else {
        return;
    };
    let path = model.0.join(DIT_FILE);
    truncate_file(&path, 0.5);
    let msg = err_text(ModelFiles::open(&model.0));
    assert_names(
        &msg,
        &[&format!("weight file '{}'", path.display()), "safetensors"],
    );
    // Cut inside the header itself.
    truncate_file(&path, 0.0001);
    let msg = err_text(WeightFile::open(&path));
    assert_names(&msg, &[&path.display().to_string()]);
}

#[test]
fn truncated_or_corrupt_ckpt_names_the_file() {
    let Some(model) = model_copy("tiny-v1") else {
        return;
    };
    let path = model.0.join(DECODER_FILE);
    let original = std::fs::read(&path).unwrap();

    truncate_file(&path, 0.6);
    let msg = err_text(ModelFiles::open(&model.0));
    assert_names(&msg, &[&format!("weight file '{}'", path.display()), "zip"]);

    // A damaged end-of-archive record.
    let mut bytes = original.clone();
    let n = bytes.len();
    bytes[n - 22..].fill(0x5a);
    std::fs::write(&path, &bytes).unwrap();
    let msg = err_text(WeightFile::open(&path));
    assert_names(&msg, &[&path.display().to_string(), "zip"]);

    // A pickle that stops half-way.
    std::fs::write(&path, &original).unwrap();
    rewrite_zip(&path, |name, bytes| {
        Some(if name.ends_with("data.pkl") {
            bytes[..bytes.len() / 2].to_vec()
        } else {
            bytes
        })
    });
    let msg = err_text(WeightFile::open(&path));
    assert_names(&msg, &[&path.display().to_string(), "data.pkl"]);
}

#[test]
fn short_storage_record_names_file_and_tensor() {
    let Some(model) = model_copy("tiny-v1") else {
        return;
    };
    let path = model.0.join(DECODER_FILE);
    let key = PthFile::open(&path)
        .unwrap()
        .info("decoder.3.weight")
        .unwrap()
        .storage_key
        .clone();
    let record = format!("/data/{key}");
    rewrite_zip(&path, |name, mut bytes| {
        if name.ends_with(&record) {
            bytes.truncate(bytes.len() - 4);
        }
        Some(bytes)
    });
    let files = ModelFiles::open(&model.0).unwrap();
    let shape = files.decoder.shape("decoder.3.weight").unwrap();
    let msg = err_text(
        files
            .decoder
            .tensor("decoder.3.weight", &shape, DType::F32, &cpu()),
    );
    assert_names(
        &msg,
        &[
            &format!("weight file '{}'", path.display()),
            "tensor 'decoder.3.weight'",
        ],
    );
    // The other tensors still load.
    files
        .decoder
        .tensor("decoder.1.bias", &[64], DType::F32, &cpu())
        .unwrap();
}

#[test]
fn missing_tensor_names_file_and_tensor() {
    let Some(model) = model_copy("tiny-v1") else {
        return;
    };
    let files = ModelFiles::open(&model.0).unwrap();
    let file = format!("weight file '{}'", model.0.join(DECODER_FILE).display());
    let msg = err_text(files.decoder.shape("decoder.99.weight"));
    assert_names(&msg, &[&file, "tensor 'decoder.99.weight'", "missing"]);

    let vb = files.decoder.var_builder(DType::F32, &cpu());
    let msg = err_text(vb.pp("decoder").pp(99).get(4, "bias"));
    assert_names(&msg, &[&file, "tensor 'decoder.99.bias'"]);

    let dit = format!("weight file '{}'", model.0.join(DIT_FILE).display());
    let msg = err_text(
        files
            .dit
            .tensor("blocks.7.ffn.0.weight", &[1], DType::F32, &cpu()),
    );
    assert_names(&msg, &[&dit, "tensor 'blocks.7.ffn.0.weight'"]);
}

#[test]
fn wrong_shape_names_file_tensor_expected_and_found() {
    let Some(model) = model_copy("tiny-v1") else {
        return;
    };
    let files = ModelFiles::open(&model.0).unwrap();
    let msg = err_text(
        files
            .lq_proj
            .tensor("conv1.weight", &[64, 768, 3, 3], DType::F32, &cpu()),
    );
    let file = model.0.join(LQ_PROJ_FILE).display().to_string();
    assert_eq!(
        msg,
        format!(
            "weight file '{file}': tensor 'conv1.weight': expected shape [64, 768, 3, 3], \
             found [64, 768, 4, 3, 3]"
        )
    );
    let vb = files.dit.var_builder(DType::F32, &cpu());
    let msg = err_text(vb.pp("patch_embedding").get((256, 64), "weight"));
    let dit = model.0.join(DIT_FILE).display().to_string();
    assert_names(
        &msg,
        &[
            &dit,
            "tensor 'patch_embedding.weight'",
            "[256, 64]",
            "[256, 16, 1, 2, 2]",
        ],
    );

    // A prompt whose width is not the DiT's text width.
    let msg = err_text(files.prompt_tensor(DType::F32, &cpu(), 32));
    assert_names(
        &msg,
        &[
            PROMPT_FILE,
            "[1, ctx_len, 32]",
            "DiT's text width",
            "[1, 16, 64]",
        ],
    );

    // A prompt that is not [1, ctx_len, text_dim].
    let prompt = files
        .prompt
        .stored_tensor(&files.prompt.names()[0])
        .unwrap();
    let flat = HashMap::from([(PROMPT_KEY.to_string(), prompt.reshape((16, 64)).unwrap())]);
    candle_core::safetensors::save(&flat, model.0.join(PROMPT_SAFETENSORS_FILE)).unwrap();
    let files = ModelFiles::open(&model.0).unwrap();
    let msg = err_text(files.prompt_tensor(DType::F32, &cpu(), 64));
    assert_names(
        &msg,
        &[PROMPT_SAFETENSORS_FILE, "tensor 'posi_prompt'", "[16, 64]"],
    );
}

#[test]
fn wrong_dtype_names_file_tensor_and_dtype() {
    let Some(model) = model_copy("tiny-v1") else {
        return;
    };
    // An integer tensor in the DiT.
    let dit_path = model.0.join(DIT_FILE);
    let mut tensors = candle_core::safetensors::load(&dit_path, &cpu()).unwrap();
    let bias = tensors["patch_embedding.bias"]
        .to_dtype(DType::I64)
        .unwrap();
    tensors.insert("patch_embedding.bias".to_string(), bias);
    candle_core::safetensors::save(&tensors, &dit_path).unwrap();
    let files = ModelFiles::open(&model.0).unwrap();
    let msg = err_text(
        files
            .dit
            .tensor("patch_embedding.bias", &[256], DType::F32, &cpu()),
    );
    assert_names(
        &msg,
        &[
            &dit_path.display().to_string(),
            "tensor 'patch_embedding.bias'",
            "I64",
        ],
    );
    let vb = files.dit.var_builder(DType::F32, &cpu());
    assert!(vb.get(256, "patch_embedding.bias").is_err());

    // Integer storages in the TCDecoder checkpoint.
    let ckpt = model.0.join(DECODER_FILE);
    rewrite_zip(&ckpt, |name, bytes| {
        if !name.ends_with("data.pkl") {
            return Some(bytes);
        }
        let text = b"torch\nFloatStorage\n";
        let at = bytes.windows(text.len()).position(|w| w == text)?;
        let mut out = bytes[..at].to_vec();
        out.extend_from_slice(b"torch\nLongStorage\n");
        out.extend_from_slice(&bytes[at + text.len()..]);
        Some(out)
    });
    let files = ModelFiles::open(&model.0).unwrap();
    assert_eq!(files.decoder.names().len(), 66, "the table still reads");
    let msg = err_text(
        files
            .decoder
            .tensor("decoder.1.bias", &[64], DType::F32, &cpu()),
    );
    assert_names(
        &msg,
        &[
            &ckpt.display().to_string(),
            "tensor 'decoder.1.bias'",
            "LongStorage",
        ],
    );
}

#[test]
fn shared_weight_file_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Arc<WeightFile>>();
    assert_send_sync::<ModelFiles>();
}
