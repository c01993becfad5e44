//! Hostile weight files: each case copies the tiny fixture model folder, replaces one
//! file with a crafted one, and loads the folder in a child process (this test binary
//! run again, see [`child_loads_the_model_named_in_env`]) whose address space is capped
//! at [`ADDRESS_SPACE_LIMIT`]. The child must end normally (no signal), with an error
//! naming the file and what is wrong, and its peak resident memory must stay under
//! [`PEAK_LIMIT_KB`].

mod common;

use common::Scratch;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{DType, Device, Tensor};
use gstflashvsr::layers::kernels::KernelPath;
use gstflashvsr::model::{FlashVsrModel, ModelOptions};
use gstflashvsr::weights::pth::PthFile;
use gstflashvsr::weights::{DIT_FILE, LQ_PROJ_FILE, PROMPT_FILE};
use zip::CompressionMethod;
use zip::write::{SimpleFileOptions, ZipWriter};

/// The child's address-space cap: far below what the attacks used to allocate (2 GB
/// and more), well above what loading the tiny model needs.
const ADDRESS_SPACE_LIMIT: u64 = 1 << 30;
/// The child's peak resident memory must stay below this.
const PEAK_LIMIT_KB: u64 = 100 * 1024;

const CHILD_TEST: &str = "child_loads_the_model_named_in_env";
const CHILD_DIR_ENV: &str = "HOSTILE_WEIGHTS_MODEL_DIR";

/// In a child started by [`load_in_child`]: caps the address space, loads the model
/// folder named by [`CHILD_DIR_ENV`], and prints the outcome and the peak memory. In a
/// normal test run (no such variable) it does nothing.
#[test]
fn child_loads_the_model_named_in_env() {
    let Some(dir) = std::env::var_os(CHILD_DIR_ENV) else {
        return;
    };
    let limit = libc::rlimit {
        rlim_cur: ADDRESS_SPACE_LIMIT,
        rlim_max: ADDRESS_SPACE_LIMIT,
    };
    // SAFETY: setrlimit reads the struct passed; it only lowers this process's limit.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_AS, &limit) }, 0);
    let options = ModelOptions {
        device: Device::Cpu,
        dtype: DType::F32,
        kernels: KernelPath::Fast,
        attention: gstflashvsr::engine::AttentionKernel::Auto,
        decoder: gstflashvsr::model::decoder::DecoderKind::Tiny,
    };
    match FlashVsrModel::load(Path::new(&dir), &options) {
        Ok(_) => println!("OUTCOME: loaded"),
        Err(e) => println!("OUTCOME: error: {e}"),
    }
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let peak = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .expect("VmHWM in /proc/self/status");
    println!("PEAK_KB: {}", peak.trim().trim_end_matches("kB").trim());
}

/// What the child reported.
struct ChildReport {
    outcome: String,
    peak_kb: u64,
}

/// Loads `dir` in a child process and returns its report, after checking that it ended
/// normally.
fn load_in_child(dir: &Path, case: &str) -> ChildReport {
    let exe = std::env::current_exe().expect("test binary path");
    let out = Command::new(exe)
        .args([CHILD_TEST, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_DIR_ENV, dir)
        .output()
        .expect("start the child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{case}: the child ended with {:?}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let field = |name: &str| {
        stdout
            .lines()
            .find_map(|l| l.split_once(name).map(|(_, value)| value))
            .unwrap_or_else(|| panic!("{case}: no {name} in the child's output: {stdout}"))
            .trim()
            .to_string()
    };
    let report = ChildReport {
        outcome: field("OUTCOME:"),
        peak_kb: field("PEAK_KB:").parse().expect("peak in kB"),
    };
    eprintln!(
        "{case}: peak {:.1} MB; {}",
        report.peak_kb as f64 / 1024.0,
        report.outcome
    );
    report
}

/// Loads `dir` in a child and checks that it fails with an error holding every one of
/// `parts`, within the memory bound.
fn assert_refused(dir: &Path, case: &str, parts: &[&str]) {
    let report = load_in_child(dir, case);
    assert!(
        report.outcome.starts_with("error: "),
        "{case}: {}",
        report.outcome
    );
    assert!(!report.outcome.contains('\n'));
    for part in parts {
        assert!(
            report.outcome.contains(part),
            "{case}: error {:?} does not name {part:?}",
            report.outcome
        );
    }
    assert!(
        report.peak_kb < PEAK_LIMIT_KB,
        "{case}: peak {} kB, limit {PEAK_LIMIT_KB} kB",
        report.peak_kb
    );
}

/// A writable copy of the tiny fixture model folder, or `None` when it is absent.
fn model_copy(tag: &str) -> Option<Scratch> {
    let source = common::golden_case("tiny-v1")?.join("model");
    let scratch = Scratch::created(tag);
    for entry in std::fs::read_dir(&source).expect("fixture model folder") {
        let from = entry.expect("fixture entry").path();
        let to = scratch.0.join(from.file_name().expect("file name"));
        std::fs::write(&to, std::fs::read(&from).expect("read fixture")).expect("copy");
    }
    Some(scratch)
}

/// Contents of a record: bytes, or `len` copies of one byte written in pieces (so that
/// a huge record is never held whole here either).
enum Bytes<'a> {
    Slice(&'a [u8]),
    Repeated { byte: u8, len: u64 },
}

/// Writes a torch.save-like archive at `path`: `<top>/data.pkl` then each
/// `<top>/<name>` record, all compressed with `method`.
fn write_archive(path: &Path, top: &str, records: &[(&str, Bytes)], method: CompressionMethod) {
    let mut zip = ZipWriter::new(std::fs::File::create(path).expect("create archive"));
    for (name, bytes) in records {
        let mut options = SimpleFileOptions::default()
            .compression_method(method)
            .large_file(true);
        // As tight as deflate goes, as an attacker would pack them.
        if method == CompressionMethod::Deflated {
            options = options.compression_level(Some(9));
        }
        zip.start_file(format!("{top}/{name}"), options)
            .expect("start record");
        match bytes {
            Bytes::Slice(b) => zip.write_all(b).expect("write record"),
            Bytes::Repeated { byte, len } => {
                let piece = vec![*byte; 1 << 20];
                let mut left = *len;
                while left > 0 {
                    let n = left.min(piece.len() as u64) as usize;
                    zip.write_all(&piece[..n]).expect("write record");
                    left -= n as u64;
                }
            }
        }
    }
    zip.finish().expect("finish archive");
}

/// A pickle: `PROTO 2`, `body`, `STOP`.
fn pickle(body: &[u8]) -> Vec<u8> {
    [&[0x80, 2][..], body, b"."].concat()
}

/// The pickle of `torch.save` of one f32 tensor of `shape` whose storage `"0"` declares
/// `numel` elements.
fn bare_tensor_pickle(shape: &[usize], numel: usize) -> Vec<u8> {
    use gstflashvsr::weights::pth::PthTensorInfo;
    use gstflashvsr::weights::pth::writer::bare_tensor_pickle;
    let mut stride = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        stride[i] = stride[i + 1] * shape[i + 1];
    }
    bare_tensor_pickle(&PthTensorInfo {
        name: String::new(),
        storage_type: "FloatStorage".into(),
        storage_key: "0".into(),
        storage_numel: numel,
        offset: 0,
        shape: shape.to_vec(),
        stride,
    })
}

#[test]
fn clean_fixture_loads_within_the_memory_bound() {
    let Some(model) = model_copy("clean") else {
        return;
    };
    let report = load_in_child(&model.0, "clean fixture");
    assert_eq!(report.outcome, "loaded");
    assert!(report.peak_kb < PEAK_LIMIT_KB, "peak {} kB", report.peak_kb);
}

#[test]
fn deep_tuple_nesting_in_the_prompt() {
    let Some(model) = model_copy("deep-tuples") else {
        return;
    };
    let body = [&[b'N'][..], &[0x85; 200_000]].concat();
    let path = model.0.join(PROMPT_FILE);
    let pkl = pickle(&body);
    write_archive(
        &path,
        "p",
        &[("data.pkl", Bytes::Slice(&pkl))],
        CompressionMethod::Deflated,
    );
    assert!(std::fs::metadata(&path).unwrap().len() < 2000);
    assert_refused(&model.0, "deep tuples", &[PROMPT_FILE, "nesting limit"]);
}

#[test]
fn deeply_nested_dict_value_in_the_lq_projection() {
    let Some(model) = model_copy("nested-dict") else {
        return;
    };
    // {'k': {'k': {'k': ...}}}, 261,000 dicts: each pushed with its key, then closed by
    // as many SETITEMs.
    let levels = 261_000;
    let mut body = vec![b'}'];
    for _ in 0..levels {
        body.extend_from_slice(&[b'X', 1, 0, 0, 0, b'k', b'}']);
    }
    body.extend(std::iter::repeat_n(b's', levels));
    let pkl = pickle(&body);
    let path = model.0.join(LQ_PROJ_FILE);
    write_archive(
        &path,
        "LQ_proj_in",
        &[("data.pkl", Bytes::Slice(&pkl))],
        CompressionMethod::Deflated,
    );
    assert_refused(&model.0, "nested dict", &[LQ_PROJ_FILE, "nesting limit"]);
}

#[test]
fn memo_reuse_that_doubles_sixty_times() {
    let Some(model) = model_copy("memo") else {
        return;
    };
    // l = [None]; t = (l, l); t = (t, t); ... 60 times: 2^60 leaves if copied.
    let mut body = vec![b']', b'q', 0, b'N', b'a'];
    for _ in 0..60 {
        body.extend_from_slice(&[b'q', 1, b'h', 1, 0x86]);
    }
    let pkl = pickle(&body);
    write_archive(
        &model.0.join(PROMPT_FILE),
        "p",
        &[("data.pkl", Bytes::Slice(&pkl))],
        CompressionMethod::Stored,
    );
    assert_refused(
        &model.0,
        "memo doubling",
        &[PROMPT_FILE, "neither a tensor nor a dict"],
    );
}

#[test]
fn two_hundred_million_none_opcodes() {
    let Some(model) = model_copy("nones") else {
        return;
    };
    let path = model.0.join(PROMPT_FILE);
    write_archive(
        &path,
        "p",
        &[(
            "data.pkl",
            Bytes::Repeated {
                byte: b'N',
                len: 200_000_000,
            },
        )],
        CompressionMethod::Deflated,
    );
    assert!(std::fs::metadata(&path).unwrap().len() < 2_000_000);
    assert_refused(&model.0, "NONE flood", &[PROMPT_FILE, "object count limit"]);
}

#[test]
fn storage_record_far_smaller_than_declared() {
    let Some(model) = model_copy("short-record") else {
        return;
    };
    // [1, 16, 64] f32 is 4 KiB, as the record holds; the storage declares 2 GiB.
    let pkl = bare_tensor_pickle(&[1, 16, 64], 1 << 29);
    let data = vec![0u8; 4096];
    write_archive(
        &model.0.join(PROMPT_FILE),
        "p",
        &[
            ("data.pkl", Bytes::Slice(&pkl)),
            ("data/0", Bytes::Slice(&data)),
        ],
        CompressionMethod::Stored,
    );
    assert_refused(
        &model.0,
        "2 GiB declared, 4 KiB held",
        &[PROMPT_FILE, "holds 4096 bytes", "2147483648"],
    );
}

#[test]
fn deflated_prompt_longer_than_the_model_allows() {
    let Some(model) = model_copy("long-prompt") else {
        return;
    };
    let shape = [1, 4_194_304, 64];
    let numel = shape.iter().product::<usize>();
    let pkl = bare_tensor_pickle(&shape, numel);
    let path = model.0.join(PROMPT_FILE);
    write_archive(
        &path,
        "p",
        &[
            ("data.pkl", Bytes::Slice(&pkl)),
            (
                "data/0",
                Bytes::Repeated {
                    byte: 0,
                    len: numel as u64 * 4,
                },
            ),
        ],
        CompressionMethod::Deflated,
    );
    assert!(std::fs::metadata(&path).unwrap().len() < 8_000_000);
    assert_refused(
        &model.0,
        "[1, 4194304, 64] prompt",
        &[PROMPT_FILE, "4194304 tokens", "512"],
    );
}

#[test]
fn nan_in_the_dit_safetensors() {
    let Some(model) = model_copy("nan-dit") else {
        return;
    };
    let path = model.0.join(DIT_FILE);
    let mut tensors: HashMap<String, Tensor> =
        candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    let name = "blocks.0.ffn.0.weight";
    let nan = Tensor::full(f32::NAN, tensors[name].shape(), &Device::Cpu).unwrap();
    tensors.insert(name.to_string(), nan);
    candle_core::safetensors::save(&tensors, &path).unwrap();
    assert_refused(
        &model.0,
        "NaN in safetensors",
        &[DIT_FILE, &format!("tensor '{name}'"), "NaN or infinite"],
    );
}

#[test]
fn nan_in_the_lq_projection_ckpt() {
    let Some(model) = model_copy("nan-ckpt") else {
        return;
    };
    let path = model.0.join(LQ_PROJ_FILE);
    let name = "linear_layers.0.bias";
    let info = PthFile::open(&path).unwrap().info(name).unwrap().clone();
    let record = format!("/data/{}", info.storage_key);
    // Rewrite the archive with the tensor's first element made infinite.
    let mut archive = zip::ZipArchive::new(std::fs::File::open(&path).unwrap()).unwrap();
    let mut entries = Vec::new();
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).unwrap();
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).unwrap();
        let entry_name = entry.name().unwrap().to_string();
        if entry_name.ends_with(&record) {
            let at = info.offset * 4;
            bytes[at..at + 4].copy_from_slice(&f32::INFINITY.to_le_bytes());
        }
        entries.push((entry_name, bytes));
    }
    let mut out = ZipWriter::new(std::fs::File::create(&path).unwrap());
    for (entry_name, bytes) in entries {
        let options = SimpleFileOptions::default()
            .compression_method(CompressionMethod::Stored)
            .with_alignment(64);
        out.start_file(entry_name, options).unwrap();
        out.write_all(&bytes).unwrap();
    }
    out.finish().unwrap();
    assert_refused(
        &model.0,
        "infinity in a ckpt",
        &[
            LQ_PROJ_FILE,
            &format!("tensor '{name}'"),
            "element 0 is NaN or infinite",
        ],
    );
}

#[test]
fn unknown_global_is_refused_without_running_it() {
    let Some(model) = model_copy("global") else {
        return;
    };
    let marker: PathBuf = model.0.join("ran");
    let command = format!("touch {}", marker.display());
    let mut body = b"cos\nsystem\nX".to_vec();
    body.extend_from_slice(&(command.len() as u32).to_le_bytes());
    body.extend_from_slice(command.as_bytes());
    body.extend_from_slice(&[0x85, b'R']);
    let pkl = pickle(&body);
    write_archive(
        &model.0.join(LQ_PROJ_FILE),
        "LQ_proj_in",
        &[("data.pkl", Bytes::Slice(&pkl))],
        CompressionMethod::Stored,
    );
    assert_refused(
        &model.0,
        "os.system",
        &[LQ_PROJ_FILE, "'os.system'", "refused"],
    );
    assert!(!marker.exists(), "the pickle's command ran");
}
