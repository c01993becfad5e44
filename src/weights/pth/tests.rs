//! Tests of the torch.save reader on archives built here, opcode by opcode, the way
//! torch's pickler (protocol 2) writes them.

use super::writer::{self, ArchiveWriter, Pickler};
use super::*;
use zip::CompressionMethod;

/// Python's `False` opcode, for the hand-built parameter pickles.
const NEWFALSE: u8 = 0x89;

/// One tensor of a test archive: a view into a storage.
#[derive(Clone)]
struct View {
    name: &'static str,
    storage: &'static str,
    offset: usize,
    shape: Vec<usize>,
    stride: Vec<usize>,
}

fn view(
    name: &'static str,
    storage: &'static str,
    offset: usize,
    shape: &[usize],
    stride: &[usize],
) -> View {
    View {
        name,
        storage,
        offset,
        shape: shape.to_vec(),
        stride: stride.to_vec(),
    }
}

/// Row-major strides of `shape`.
fn contiguous(shape: &[usize]) -> Vec<usize> {
    let mut stride = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        stride[i] = stride[i + 1] * shape[i + 1];
    }
    stride
}

/// One storage record: its class (`FloatStorage`, ...), element count and bytes.
struct Storage {
    key: &'static str,
    class: &'static str,
    numel: usize,
    bytes: Vec<u8>,
}

fn f32_storage(key: &'static str, values: &[f32]) -> Storage {
    Storage {
        key,
        class: "FloatStorage",
        numel: values.len(),
        bytes: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}

fn values(n: usize) -> Vec<f32> {
    (0..n).map(|i| i as f32 * 0.5 - 3.0).collect()
}

enum Root {
    /// An OrderedDict state dict, with the `_metadata` attribute torch adds.
    Dict(Vec<View>),
    Bare(View),
    /// Each tensor wrapped in `_rebuild_parameter`, as torch saves an `nn.Parameter`.
    Parameters(Vec<View>),
}

fn storage_of<'a>(storages: &'a [Storage], v: &View) -> &'a Storage {
    storages
        .iter()
        .find(|s| s.key == v.storage)
        .expect("test view names a storage of the test")
}

/// The tensor table entry torch would pickle for `v`.
fn record(v: &View, storages: &[Storage]) -> PthTensorInfo {
    let storage = storage_of(storages, v);
    PthTensorInfo {
        name: v.name.to_string(),
        storage_type: storage.class.to_string(),
        storage_key: storage.key.to_string(),
        storage_numel: storage.numel,
        offset: v.offset,
        shape: v.shape.clone(),
        stride: v.stride.clone(),
    }
}

fn pickle_bytes(root: &Root, storages: &[Storage]) -> Vec<u8> {
    match root {
        Root::Bare(v) => writer::bare_tensor_pickle(&record(v, storages)),
        Root::Dict(views) => {
            let records: Vec<_> = views.iter().map(|v| record(v, storages)).collect();
            writer::state_dict_pickle(&records, &[String::new()])
        }
        Root::Parameters(views) => {
            // OrderedDict({name: _rebuild_parameter(<tensor>, False, OrderedDict())}).
            let records: Vec<_> = views.iter().map(|v| record(v, storages)).collect();
            let mut p = Pickler::new();
            p.ordered_dict();
            p.set_items(&records, |p, r| {
                p.string(&r.name)
                    .global("torch._utils", "_rebuild_parameter")
                    .mark();
                p.tensor(r).op(NEWFALSE).ordered_dict().tuple().reduce();
            });
            p.finish()
        }
    }
}

struct Archive {
    top: &'static str,
    byte_order: Option<&'static str>,
    compression: CompressionMethod,
    pickle: Vec<u8>,
    storages: Vec<Storage>,
}

impl Archive {
    fn new(root: Root, storages: Vec<Storage>) -> Self {
        Self {
            top: "archive",
            byte_order: Some("little"),
            compression: CompressionMethod::Stored,
            pickle: pickle_bytes(&root, &storages),
            storages,
        }
    }

    fn zip(&self) -> Vec<u8> {
        let mut archive = ArchiveWriter::new(Cursor::new(Vec::new()), self.top)
            .with_compression(self.compression);
        archive
            .record("data.pkl", &self.pickle)
            .expect("zip pickle");
        if let Some(order) = self.byte_order {
            archive
                .record("byteorder", order.as_bytes())
                .expect("zip byteorder");
        }
        for s in &self.storages {
            archive
                .record(&format!("data/{}", s.key), &s.bytes)
                .expect("zip storage");
        }
        archive.record("version", b"3\n").expect("zip version");
        archive.finish().expect("zip finish").into_inner()
    }

    fn open(&self) -> Result<PthFile> {
        PthFile::from_bytes(Path::new("/test/model.ckpt"), self.zip())
    }
}

fn f32_values(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f32>())
        .expect("tensor values")
}

/// The error's text, checked to be a plain one-line message.
fn err_text<T: std::fmt::Debug>(r: Result<T>) -> String {
    let err = r.expect_err("expected an error");
    assert!(matches!(err, Error::Msg(_)), "{err:?}");
    let text = err.to_string();
    assert!(!text.contains('\n'), "{text}");
    text
}

#[test]
fn dict_of_f32_tensors_round_trips() {
    let archive = Archive::new(
        Root::Dict(vec![
            view(
                "b.weight",
                "0",
                0,
                &[2, 3, 1, 2],
                &contiguous(&[2, 3, 1, 2]),
            ),
            view("a.bias", "1", 0, &[5], &[1]),
        ]),
        vec![f32_storage("0", &values(12)), f32_storage("1", &values(5))],
    );
    let file = archive.open().unwrap();
    assert!(!file.is_bare_tensor());
    let names: Vec<_> = file.tensors().iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["a.bias", "b.weight"], "sorted, _metadata skipped");
    let w = file.load("b.weight").unwrap();
    assert_eq!(w.dims(), [2, 3, 1, 2]);
    assert_eq!(w.dtype(), DType::F32);
    assert_eq!(f32_values(&w), values(12));
    assert_eq!(f32_values(&file.load("a.bias").unwrap()), values(5));
}

#[test]
fn bf16_and_f16_storages_keep_their_dtype() {
    let vals = [1.0f32, -2.5, 0.125, 24576.0];
    let bf = Storage {
        key: "0",
        class: "BFloat16Storage",
        numel: 4,
        bytes: vals
            .iter()
            .flat_map(|&v| bf16::from_f32(v).to_le_bytes())
            .collect(),
    };
    let hf = Storage {
        key: "1",
        class: "HalfStorage",
        numel: 4,
        bytes: vals
            .iter()
            .flat_map(|&v| f16::from_f32(v).to_le_bytes())
            .collect(),
    };
    let archive = Archive::new(
        Root::Dict(vec![
            view("bf", "0", 0, &[2, 2], &[2, 1]),
            view("hf", "1", 0, &[4], &[1]),
        ]),
        vec![bf, hf],
    );
    let file = archive.open().unwrap();
    let bf = file.load("bf").unwrap();
    assert_eq!(bf.dtype(), DType::BF16);
    assert_eq!(f32_values(&bf), vals, "all values exact in bf16");
    let hf = file.load("hf").unwrap();
    assert_eq!(hf.dtype(), DType::F16);
    assert_eq!(f32_values(&hf), vals, "all values exact in f16");
}

#[test]
fn offsets_strides_and_shared_storage() {
    let data = values(24);
    let archive = Archive::new(
        Root::Dict(vec![
            // Elements 4..10 of the storage as a 2x3 matrix.
            view("slice", "0", 4, &[2, 3], &[3, 1]),
            // The transpose of a 3x4 matrix at offset 10: shape [4, 3], strides [1, 4].
            view("transposed", "0", 10, &[4, 3], &[1, 4]),
            // Every other element from 1 on, and a size-1 dim with an odd stride.
            view("stepped", "0", 1, &[5, 1], &[2, 1000]),
            // Broadcast along dim 0 (stride 0).
            view("expanded", "0", 22, &[3, 2], &[0, 1]),
            view("scalar", "0", 7, &[], &[]),
            view("empty", "0", 0, &[0, 4], &[4, 1]),
        ]),
        vec![f32_storage("0", &data)],
    );
    let file = archive.open().unwrap();
    assert_eq!(f32_values(&file.load("slice").unwrap()), &data[4..10]);
    let t = file.load("transposed").unwrap();
    assert_eq!(t.dims(), [4, 3]);
    let expected: Vec<f32> = (0..4)
        .flat_map(|i| (0..3).map(move |j| i + 4 * j))
        .map(|k| data[10 + k])
        .collect();
    assert_eq!(f32_values(&t), expected);
    assert!(t.is_contiguous());
    let stepped: Vec<f32> = (0..5).map(|i| data[1 + 2 * i]).collect();
    assert_eq!(f32_values(&file.load("stepped").unwrap()), stepped);
    let expanded = [data[22], data[23]].repeat(3);
    assert_eq!(f32_values(&file.load("expanded").unwrap()), expanded);
    let scalar = file.load("scalar").unwrap();
    assert_eq!(scalar.dims(), [] as [usize; 0]);
    assert_eq!(f32_values(&scalar), [data[7]]);
    assert_eq!(file.load("empty").unwrap().dims(), [0, 4]);
}

#[test]
fn bare_tensor_root_under_any_top_folder() {
    let mut archive = Archive::new(
        Root::Bare(view("", "0", 0, &[1, 4, 3], &[12, 3, 1])),
        vec![f32_storage("0", &values(12))],
    );
    archive.top = "posi_prompt";
    let file = archive.open().unwrap();
    assert!(file.is_bare_tensor());
    assert_eq!(file.tensors().len(), 1);
    assert_eq!(file.tensors()[0].name, BARE_TENSOR_NAME);
    let t = file.load(BARE_TENSOR_NAME).unwrap();
    assert_eq!(t.dims(), [1, 4, 3]);
    assert_eq!(f32_values(&t), values(12));

    archive.top = "TCDecoder.ckpt";
    assert_eq!(archive.open().unwrap().tensors().len(), 1);
}

#[test]
fn parameters_and_deflated_records_and_missing_byteorder() {
    let mut archive = Archive::new(
        Root::Parameters(vec![view("p", "7", 2, &[3], &[1])]),
        vec![f32_storage("7", &values(6))],
    );
    archive.compression = CompressionMethod::Deflated;
    archive.byte_order = None;
    let file = archive.open().unwrap();
    assert_eq!(f32_values(&file.load("p").unwrap()), &values(6)[2..5]);
}

#[test]
fn big_endian_records() {
    let vals = values(6);
    let storage = Storage {
        key: "0",
        class: "FloatStorage",
        numel: 6,
        bytes: vals.iter().flat_map(|v| v.to_be_bytes()).collect(),
    };
    let mut archive = Archive::new(
        Root::Dict(vec![view("x", "0", 0, &[6], &[1])]),
        vec![storage],
    );
    archive.byte_order = Some("big");
    assert_eq!(
        f32_values(&archive.open().unwrap().load("x").unwrap()),
        vals
    );
    archive.byte_order = Some("middle");
    let msg = err_text(archive.open());
    assert!(
        msg.contains("/test/model.ckpt") && msg.contains("middle"),
        "{msg}"
    );
}

#[test]
fn unsupported_storage_names_file_tensor_and_type() {
    let storage = Storage {
        key: "0",
        class: "LongStorage",
        numel: 2,
        bytes: vec![0; 16],
    };
    let archive = Archive::new(
        Root::Dict(vec![view("steps", "0", 0, &[2], &[1])]),
        vec![storage],
    );
    let file = archive.open().unwrap();
    assert_eq!(
        file.info("steps").unwrap().shape,
        [2],
        "shape still readable"
    );
    assert_eq!(file.info("steps").unwrap().dtype(), None);
    let msg = err_text(file.load("steps"));
    assert!(
        msg.contains("/test/model.ckpt") && msg.contains("'steps'") && msg.contains("LongStorage"),
        "{msg}"
    );
}

#[test]
fn short_storage_record_names_file_and_tensor() {
    let mut storage = f32_storage("0", &values(8));
    storage.bytes.truncate(20);
    let archive = Archive::new(
        Root::Dict(vec![view("w", "0", 1, &[2, 3], &[3, 1])]),
        vec![storage],
    );
    let msg = err_text(archive.open().unwrap().load("w"));
    assert!(
        msg.contains("/test/model.ckpt") && msg.contains("'w'") && msg.contains("holds 20 bytes"),
        "{msg}"
    );
}

#[test]
fn view_past_declared_storage_size_is_an_error() {
    let archive = Archive::new(
        Root::Dict(vec![view("w", "0", 3, &[2, 3], &[3, 1])]),
        vec![f32_storage("0", &values(8))],
    );
    let msg = err_text(archive.open().unwrap().load("w"));
    assert!(
        msg.contains("'w'") && msg.contains("holds 8 elements"),
        "{msg}"
    );
}

#[test]
fn missing_storage_record_and_missing_tensor() {
    let mut archive = Archive::new(
        Root::Dict(vec![view("w", "0", 0, &[2], &[1])]),
        vec![f32_storage("0", &values(2))],
    );
    archive.storages[0].key = "5";
    let file = archive.open().unwrap();
    let msg = err_text(file.load("w"));
    assert!(
        msg.contains("'w'") && msg.contains("archive/data/0"),
        "{msg}"
    );
    let msg = err_text(file.load("nope"));
    assert!(
        msg.contains("/test/model.ckpt") && msg.contains("'nope'"),
        "{msg}"
    );
}

#[test]
fn not_a_zip_and_not_a_torch_archive() {
    let msg = err_text(PthFile::from_bytes(
        Path::new("/x/bad.ckpt"),
        b"not a zip".to_vec(),
    ));
    assert!(msg.contains("/x/bad.ckpt") && msg.contains("zip"), "{msg}");

    let mut zip = ArchiveWriter::new(Cursor::new(Vec::new()), "docs");
    zip.record("readme.txt", b"hello").unwrap();
    let bytes = zip.finish().unwrap().into_inner();
    let msg = err_text(PthFile::from_bytes(Path::new("/x/other.zip"), bytes));
    assert!(
        msg.contains("/x/other.zip") && msg.contains("data.pkl"),
        "{msg}"
    );

    let msg = err_text(PthFile::open(Path::new("/nonexistent/dir/w.ckpt")));
    assert!(msg.contains("/nonexistent/dir/w.ckpt"), "{msg}");
}

#[test]
fn root_that_holds_no_tensor_is_an_error() {
    let mut archive = Archive::new(
        Root::Dict(vec![view("w", "0", 0, &[2], &[1])]),
        vec![f32_storage("0", &values(2))],
    );
    let mut p = Pickler::new();
    p.empty_dict().string("epoch").int(3).op(b's');
    archive.pickle = p.finish();
    let msg = err_text(archive.open());
    assert!(msg.contains("no tensors"), "{msg}");
    let mut p = Pickler::new();
    p.int(3);
    archive.pickle = p.finish();
    let msg = err_text(archive.open());
    assert!(msg.contains("neither a tensor nor a dict"), "{msg}");
}

#[test]
fn every_truncation_of_the_pickle_is_an_error() {
    let full = Archive::new(
        Root::Dict(vec![
            view("a", "0", 0, &[2, 3], &[3, 1]),
            view("b", "0", 6, &[2], &[1]),
        ]),
        vec![f32_storage("0", &values(8))],
    );
    for len in 0..full.pickle.len() {
        let mut archive = Archive::new(Root::Dict(vec![]), vec![f32_storage("0", &values(8))]);
        archive.pickle = full.pickle[..len].to_vec();
        let msg = err_text(archive.open());
        assert!(msg.contains("/test/model.ckpt"), "length {len}: {msg}");
    }
}

/// Any single corrupted byte of the pickle gives a file or an error, never a panic, and
/// whatever tensor table results can be read or refused cleanly.
#[test]
fn corrupted_pickle_bytes_never_panic() {
    let clean = Archive::new(
        Root::Dict(vec![
            view("a", "0", 0, &[2, 3], &[3, 1]),
            view("b", "0", 6, &[2], &[1]),
        ]),
        vec![f32_storage("0", &values(8))],
    );
    let (mut opened, mut loaded) = (0, 0);
    for pos in 0..clean.pickle.len() {
        for byte in [0u8, 1, 7, 0x7f, 0x80, 0xff, b'X', 0x8a, b'(', b'h', b'R'] {
            let mut archive = Archive::new(Root::Dict(vec![]), vec![f32_storage("0", &values(8))]);
            archive.pickle = clean.pickle.clone();
            archive.pickle[pos] = byte;
            let Ok(file) = archive.open() else { continue };
            opened += 1;
            for info in file.tensors().to_vec() {
                loaded += usize::from(file.load(&info.name).is_ok());
            }
        }
    }
    // Some corruptions (e.g. in a string) leave a readable file: both paths were taken.
    assert!(opened > 0 && loaded > 0, "opened {opened}, loaded {loaded}");
}

#[test]
fn fixture_prompt_is_a_bare_f32_tensor() {
    let dir = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/golden/tiny-v1/model"
    ));
    if !dir.is_dir() {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "fixtures missing at {}",
            dir.display()
        );
        eprintln!("skipping: fixtures not found at {}", dir.display());
        return;
    }
    let file = PthFile::open(&dir.join("posi_prompt.pth")).unwrap();
    assert!(file.is_bare_tensor());
    let t = file.load(BARE_TENSOR_NAME).unwrap();
    assert_eq!((t.dims(), t.dtype()), (&[1usize, 16, 64][..], DType::F32));
    let file = PthFile::open(&dir.join("TCDecoder.ckpt")).unwrap();
    assert_eq!(file.tensors().len(), 66);
}

#[test]
fn integers_past_32_bits_round_trip() {
    let storage = Storage {
        key: "0",
        class: "FloatStorage",
        numel: 3_000_000_000,
        bytes: Vec::new(),
    };
    let archive = Archive::new(
        Root::Dict(vec![view(
            "huge",
            "0",
            5_000_000_000,
            &[0, 70_000],
            &[1 << 40, 1],
        )]),
        vec![storage],
    );
    let file = archive.open().unwrap();
    let info = file.info("huge").unwrap();
    assert_eq!(info.storage_numel, 3_000_000_000);
    assert_eq!(info.offset, 5_000_000_000);
    assert_eq!(
        (info.shape.as_slice(), info.stride.as_slice()),
        (&[0, 70_000][..], &[1 << 40, 1][..])
    );
}

#[test]
fn write_torch_save_streams_storages_and_checks_their_length() {
    let records = vec![
        record(
            &view("w", "0", 0, &[2, 3], &[3, 1]),
            &[f32_storage("0", &values(6))],
        ),
        record(
            &view("b", "1", 0, &[2], &[1]),
            &[f32_storage("1", &values(2))],
        ),
    ];
    let pickle = writer::state_dict_pickle(&records, &[String::new()]);
    let storages = [
        writer::StorageRecord {
            key: "0".into(),
            bytes: 24,
        },
        writer::StorageRecord {
            key: "1".into(),
            bytes: 8,
        },
    ];
    let fill = |i: usize, out: &mut dyn std::io::Write| {
        let n = [6, 2][i];
        out.write_all(&f32_storage("x", &values(n)).bytes)
    };
    let bytes = writer::write_torch_save(Cursor::new(Vec::new()), "m", &pickle, &storages, fill)
        .unwrap()
        .into_inner();
    let file = PthFile::from_bytes(Path::new("/test/m.ckpt"), bytes).unwrap();
    assert_eq!(f32_values(&file.load("w").unwrap()), values(6));
    assert_eq!(f32_values(&file.load("b").unwrap()), values(2));

    let short = |_: usize, out: &mut dyn std::io::Write| out.write_all(&[0; 4]);
    let err = writer::write_torch_save(Cursor::new(Vec::new()), "m", &pickle, &storages, short)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("storage '0'") && err.contains("4 bytes written, 24 expected"),
        "{err}"
    );
}

/// Sets the sizes that the zip central directory gives record `name` (the local header
/// is left as written), as a crafted archive would.
fn patch_directory_sizes(zip: &mut [u8], name: &str, compressed: u32, size: u32) {
    const CENTRAL_HEADER: &[u8] = b"PK\x01\x02";
    let at = (0..zip.len().saturating_sub(46))
        .find(|&i| {
            zip[i..].starts_with(CENTRAL_HEADER) && {
                let len = usize::from(u16::from_le_bytes([zip[i + 28], zip[i + 29]]));
                zip.get(i + 46..i + 46 + len) == Some(name.as_bytes())
            }
        })
        .expect("central directory entry of the record");
    zip[at + 20..at + 24].copy_from_slice(&compressed.to_le_bytes());
    zip[at + 24..at + 28].copy_from_slice(&size.to_le_bytes());
}

#[test]
fn zip_directory_sizes_beyond_the_bytes_present_are_refused_before_reading() {
    // The pickle declares 256 Mi elements (1 GiB); the record holds 16 bytes.
    let mut storage = f32_storage("0", &values(4));
    storage.numel = 1 << 28;
    let archive = Archive::new(
        Root::Dict(vec![view("w", "0", 0, &[4], &[1])]),
        vec![storage],
    );
    let mut zip = archive.zip();
    patch_directory_sizes(&mut zip, "archive/data/0", 1 << 30, 1 << 30);
    let file = PthFile::from_bytes(Path::new("/test/model.ckpt"), zip).unwrap();
    let msg = err_text(file.load("w"));
    assert!(
        msg.contains("'w'") && msg.contains("archive ends before them"),
        "{msg}"
    );

    // Deflated: the directory claims 1 GiB unpacked from a few compressed bytes.
    let mut storage = f32_storage("0", &values(4));
    storage.numel = 1 << 28;
    let mut archive = Archive::new(
        Root::Dict(vec![view("w", "0", 0, &[4], &[1])]),
        vec![storage],
    );
    archive.compression = CompressionMethod::Deflated;
    let mut zip = archive.zip();
    let packed = {
        let mut z = zip::ZipArchive::new(Cursor::new(zip.clone())).unwrap();
        z.by_name("archive/data/0").unwrap().compressed_size() as u32
    };
    patch_directory_sizes(&mut zip, "archive/data/0", packed, 1 << 30);
    let file = PthFile::from_bytes(Path::new("/test/model.ckpt"), zip).unwrap();
    let msg = err_text(file.load("w"));
    assert!(
        msg.contains("'w'") && msg.contains("more than compression can produce"),
        "{msg}"
    );
}

#[test]
fn a_view_with_more_elements_than_its_storage_is_refused() {
    // A broadcast of 6 stored elements to 4 million: the storage is within bounds, the
    // tensor would not be.
    let archive = Archive::new(
        Root::Dict(vec![view("w", "0", 0, &[1 << 22, 6], &[0, 1])]),
        vec![f32_storage("0", &values(6))],
    );
    let msg = err_text(archive.open().unwrap().load("w"));
    assert!(
        msg.contains("'w'") && msg.contains("more than the 6 of storage '0'"),
        "{msg}"
    );
}

/// `torch._tensor._rebuild_from_type_v2(_rebuild_tensor_v2, Parameter, (args..), {})`,
/// as torch saves a tensor subclass, with the tensor's arguments written by hand.
#[test]
fn tensor_subclass_rebuilt_from_type() {
    let mut archive = Archive::new(
        Root::Bare(view("", "0", 0, &[3], &[1])),
        vec![f32_storage("0", &values(3))],
    );
    let mut p = Pickler::new();
    p.global("torch._tensor", "_rebuild_from_type_v2").mark();
    p.global("torch._utils", "_rebuild_tensor_v2")
        .global("torch.nn.parameter", "Parameter")
        .mark();
    p.mark()
        .constant_string("storage")
        .global("torch", "FloatStorage")
        .string("0")
        .constant_string("cpu")
        .int(3)
        .tuple()
        .op(b'Q');
    p.int(0)
        .int_tuple(&[3])
        .int_tuple(&[1])
        .op(NEWFALSE)
        .ordered_dict()
        .tuple();
    p.empty_dict().tuple().reduce();
    archive.pickle = p.finish();
    let file = archive.open().unwrap();
    assert!(file.is_bare_tensor());
    assert_eq!(f32_values(&file.load(BARE_TENSOR_NAME).unwrap()), values(3));
}
