//! Reader for files written by PyTorch's `torch.save` (a zip archive holding a pickle and
//! one raw record per storage), executing nothing from the pickle.
//!
//! The pickle is decoded with candle's opcode interpreter (`candle_core::pickle::Stack`),
//! which only builds an object tree; the tensors are then recognised in that tree
//! (`torch._utils._rebuild_tensor_v2` and its wrappers) and their bytes read from the
//! archive's storage records on demand. Unlike candle's `read_all`/`PthTensors`, this
//! accepts a root that is a bare tensor (e.g. FlashVSR's `posi_prompt.pth`), any
//! storage offset and strides, and any name for the archive's top folder. Every size is
//! checked before use, so a damaged file gives an error naming the file (and tensor),
//! never a panic.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Cursor, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use candle_core::pickle::{Object, Stack};
use candle_core::{DType, Device, Error, Result, Tensor};
use half::{bf16, f16};
use parking_lot::Mutex;
use zip::ZipArchive;
use zip::result::ZipError;

pub mod writer;

/// Name given to the tensor of a file whose pickle root is a single tensor.
pub const BARE_TENSOR_NAME: &str = "<root>";

/// A state dict's pickle is a few MB even for billions of parameters; anything far larger
/// is not a weight file, and would only be read into memory for nothing.
const MAX_PICKLE_BYTES: u64 = 256 << 20;

/// Storage types whose data this reader decodes (and [`writer`] writes), with their dtypes.
pub(crate) const STORAGE_DTYPES: [(&str, DType); 3] = [
    ("FloatStorage", DType::F32),
    ("BFloat16Storage", DType::BF16),
    ("HalfStorage", DType::F16),
];
const SUPPORTED_STORAGES: &str = "FloatStorage, BFloat16Storage, HalfStorage";

/// Element byte order of the storage records (`<top>/byteorder`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ByteOrder {
    Little,
    Big,
}

/// Where a tensor's elements live and how they are laid out, as recorded in the pickle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PthTensorInfo {
    /// Key in the state dict (or [`BARE_TENSOR_NAME`]).
    pub name: String,
    /// Class name of the storage, e.g. `FloatStorage`.
    pub storage_type: String,
    /// Record key of the storage: its bytes are in `<top>/data/<key>`.
    pub storage_key: String,
    /// Element count of the storage, as declared in the pickle.
    pub storage_numel: usize,
    /// First element of the tensor in its storage.
    pub offset: usize,
    pub shape: Vec<usize>,
    /// Strides in elements, one per dimension.
    pub stride: Vec<usize>,
}

impl PthTensorInfo {
    /// The element type, for the storage types this reader decodes.
    pub fn dtype(&self) -> Option<DType> {
        STORAGE_DTYPES
            .iter()
            .find(|(class, _)| *class == self.storage_type)
            .map(|&(_, dtype)| dtype)
    }
}

/// Anything the archive can be read from (a file, or bytes in memory).
trait ArchiveSource: Read + Seek + Send {}
impl<T: Read + Seek + Send> ArchiveSource for T {}

/// An opened `torch.save` file: its tensor table, with data read on demand.
pub struct PthFile {
    path: PathBuf,
    /// Top folder of the archive, e.g. `TCDecoder.ckpt` in `TCDecoder.ckpt/data.pkl`.
    top: String,
    byte_order: ByteOrder,
    bare_tensor: bool,
    /// Sorted by name.
    tensors: Vec<PthTensorInfo>,
    index: HashMap<String, usize>,
    archive: Mutex<ZipArchive<Box<dyn ArchiveSource>>>,
}

impl std::fmt::Debug for PthFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PthFile")
            .field("path", &self.path)
            .field("top", &self.top)
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl PthFile {
    /// Opens `path` and reads its tensor table (no tensor data yet).
    pub fn open(path: &Path) -> Result<Self> {
        let file = match File::open(path) {
            Ok(file) => file,
            Err(e) => {
                return Err(message(format!(
                    "weight file '{}': cannot open: {e}",
                    path.display()
                )));
            }
        };
        Self::from_source(path, Box::new(BufReader::new(file)))
    }

    /// Reads a `torch.save` archive held in memory; `path` is only used in messages.
    pub fn from_bytes(path: &Path, bytes: Vec<u8>) -> Result<Self> {
        Self::from_source(path, Box::new(Cursor::new(bytes)))
    }

    fn from_source(path: &Path, source: Box<dyn ArchiveSource>) -> Result<Self> {
        let fail = |what: String| message(format!("weight file '{}': {what}", path.display()));
        let mut archive = ZipArchive::new(source)
            .map_err(|e| fail(format!("not a readable PyTorch zip archive: {e}")))?;
        let top = find_top_folder(&archive).map_err(&fail)?;
        let byte_order = read_byte_order(&mut archive, &top).map_err(&fail)?;
        let pickle_name = format!("{top}/data.pkl");
        let pickle = read_small_record(&mut archive, &pickle_name).map_err(&fail)?;
        let root = run_pickle(&pickle).map_err(|e| fail(format!("'{pickle_name}': {e}")))?;
        let (mut tensors, bare_tensor) = collect_tensors(root).map_err(&fail)?;
        tensors.sort_by(|a, b| a.name.cmp(&b.name));
        let mut index = HashMap::with_capacity(tensors.len());
        for (i, info) in tensors.iter().enumerate() {
            if index.insert(info.name.clone(), i).is_some() {
                return Err(fail(format!("tensor '{}' appears twice", info.name)));
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            top,
            byte_order,
            bare_tensor,
            tensors,
            index,
            archive: Mutex::new(archive),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// True when the pickle root is one tensor rather than a dict; it is then named
    /// [`BARE_TENSOR_NAME`].
    pub fn is_bare_tensor(&self) -> bool {
        self.bare_tensor
    }

    /// The tensor table, sorted by name.
    pub fn tensors(&self) -> &[PthTensorInfo] {
        &self.tensors
    }

    pub fn info(&self, name: &str) -> Option<&PthTensorInfo> {
        self.index.get(name).map(|&i| &self.tensors[i])
    }

    /// Reads tensor `name` as a contiguous CPU tensor of its stored dtype.
    pub fn load(&self, name: &str) -> Result<Tensor> {
        let Some(info) = self.info(name) else {
            return Err(message(format!(
                "weight file '{}': tensor '{name}' is missing (the file holds {} tensors)",
                self.path.display(),
                self.tensors.len()
            )));
        };
        self.load_info(info).map_err(|what| {
            message(format!(
                "weight file '{}': tensor '{name}': {what}",
                self.path.display()
            ))
        })
    }

    fn load_info(&self, info: &PthTensorInfo) -> std::result::Result<Tensor, String> {
        let Some(dtype) = info.dtype() else {
            return Err(format!(
                "storage type '{}' is not supported (only {SUPPORTED_STORAGES})",
                info.storage_type
            ));
        };
        let elem = dtype.size_in_bytes();
        let numel = checked_product(&info.shape)
            .ok_or_else(|| format!("shape {:?} overflows", info.shape))?;
        if numel == 0 {
            return Tensor::zeros(info.shape.as_slice(), dtype, &Device::Cpu)
                .map_err(|e| error_text(&e));
        }
        let span = element_span(&info.shape, &info.stride).ok_or_else(|| {
            format!(
                "shape {:?} with strides {:?} overflows",
                info.shape, info.stride
            )
        })?;
        let end = info
            .offset
            .checked_add(span)
            .filter(|&end| end <= info.storage_numel)
            .ok_or_else(|| {
                format!(
                    "needs elements {}..{} of storage '{}', which holds {} elements",
                    info.offset,
                    info.offset as u128 + span as u128,
                    info.storage_key,
                    info.storage_numel
                )
            })?;
        let start_byte = info.offset * elem;
        let len_bytes = span
            .checked_mul(elem)
            .ok_or_else(|| format!("storage span of {span} elements overflows"))?;
        let needed_bytes = end
            .checked_mul(elem)
            .ok_or_else(|| format!("storage of {end} elements overflows"))?;
        let record = format!("{}/data/{}", self.top, info.storage_key);
        let window = {
            let mut archive = self.archive.lock();
            read_record_range(&mut archive, &record, start_byte, len_bytes, needed_bytes)?
        };
        let contiguous = if is_row_major(&info.shape, &info.stride) {
            window
        } else {
            gather_strided(&window, &info.shape, &info.stride, elem, numel)?
        };
        let shape = info.shape.as_slice();
        let order = self.byte_order;
        let tensor = match dtype {
            DType::F32 => Tensor::from_vec(
                decode(&contiguous, order, f32::from_le_bytes, f32::from_be_bytes),
                shape,
                &Device::Cpu,
            ),
            DType::BF16 => Tensor::from_vec(
                decode(
                    &contiguous,
                    order,
                    |b| bf16::from_bits(u16::from_le_bytes(b)),
                    |b| bf16::from_bits(u16::from_be_bytes(b)),
                ),
                shape,
                &Device::Cpu,
            ),
            _ => Tensor::from_vec(
                decode(
                    &contiguous,
                    order,
                    |b| f16::from_bits(u16::from_le_bytes(b)),
                    |b| f16::from_bits(u16::from_be_bytes(b)),
                ),
                shape,
                &Device::Cpu,
            ),
        };
        tensor.map_err(|e| error_text(&e))
    }
}

/// A message error. Unlike `bail!`, which attaches a backtrace when RUST_BACKTRACE is
/// set, this keeps the error's text to the one line that an element or a user sees.
pub(crate) fn message(text: String) -> Error {
    Error::Msg(text)
}

/// The text of a candle error without the backtrace or path candle may attach (these
/// messages name the file themselves).
pub(crate) fn error_text(e: &Error) -> String {
    match e {
        Error::WithBacktrace { inner, .. } | Error::WithPath { inner, .. } => error_text(inner),
        other => other.to_string(),
    }
}

/// The archive's top folder: the one whose `data.pkl` holds the pickle.
fn find_top_folder<R: Read + Seek>(archive: &ZipArchive<R>) -> std::result::Result<String, String> {
    let mut tops = Vec::new();
    for name in archive.file_names() {
        let name = name.map_err(|e| format!("unreadable entry name in the zip archive: {e}"))?;
        if let Some(top) = name.strip_suffix("/data.pkl")
            && !top.is_empty()
            && !top.contains('/')
        {
            tops.push(top.to_string());
        }
    }
    match tops.len() {
        1 => Ok(tops.remove(0)),
        0 => Err("no '<folder>/data.pkl' in the zip archive: not a torch.save file".into()),
        _ => Err(format!("several pickles in the zip archive: {tops:?}")),
    }
}

fn read_byte_order<R: Read + Seek>(
    archive: &mut ZipArchive<R>,
    top: &str,
) -> std::result::Result<ByteOrder, String> {
    let name = format!("{top}/byteorder");
    // Older torch versions wrote no byteorder record; their data is little-endian.
    if archive.index_for_name(&name).is_none() {
        return Ok(ByteOrder::Little);
    }
    let bytes = read_small_record(archive, &name)?;
    match bytes.trim_ascii() {
        b"little" => Ok(ByteOrder::Little),
        b"big" => Ok(ByteOrder::Big),
        other => Err(format!(
            "'{name}' says '{}', expected 'little' or 'big'",
            String::from_utf8_lossy(other)
        )),
    }
}

fn read_small_record<R: Read + Seek>(
    archive: &mut ZipArchive<R>,
    name: &str,
) -> std::result::Result<Vec<u8>, String> {
    let mut entry = archive
        .by_name(name)
        .map_err(|e| format!("cannot read '{name}': {e}"))?;
    if entry.size() > MAX_PICKLE_BYTES {
        return Err(format!(
            "'{name}' is {} bytes, larger than any weight file's",
            entry.size()
        ));
    }
    let mut bytes = Vec::with_capacity(entry.size() as usize);
    entry
        .by_ref()
        .take(MAX_PICKLE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read '{name}': {e}"))?;
    Ok(bytes)
}

/// Reads `len` bytes at `start` of storage record `record`, after checking that the record
/// holds at least `needed` bytes (the tensor's end in its storage).
fn read_record_range<R: Read + Seek>(
    archive: &mut ZipArchive<R>,
    record: &str,
    start: usize,
    len: usize,
    needed: usize,
) -> std::result::Result<Vec<u8>, String> {
    let short = |size: u64| {
        format!("storage record '{record}' holds {size} bytes, the tensor needs {needed}")
    };
    let unreadable = |e: std::io::Error| format!("storage record '{record}' is unreadable: {e}");
    let mut buf = Vec::new();
    buf.try_reserve_exact(len)
        .map_err(|e| format!("cannot allocate {len} bytes: {e}"))?;
    buf.resize(len, 0);
    // Records are stored uncompressed by torch: seek straight to the tensor's bytes.
    match archive.by_name_seek(record) {
        Ok(mut entry) => {
            if entry.size() < needed as u64 {
                return Err(short(entry.size()));
            }
            entry
                .seek(SeekFrom::Start(start as u64))
                .map_err(unreadable)?;
            entry.read_exact(&mut buf).map_err(unreadable)?;
            return Ok(buf);
        }
        Err(ZipError::UnsupportedArchive(_)) => {}
        Err(ZipError::FileNotFound) => {
            return Err(format!("storage record '{record}' is missing"));
        }
        Err(e) => return Err(format!("storage record '{record}' is unreadable: {e}")),
    }
    // A re-zipped (compressed) archive: decompress up to the tensor's bytes.
    let mut entry = archive
        .by_name(record)
        .map_err(|e| format!("storage record '{record}' is unreadable: {e}"))?;
    if entry.size() < needed as u64 {
        return Err(short(entry.size()));
    }
    let skipped = std::io::copy(&mut entry.by_ref().take(start as u64), &mut std::io::sink())
        .map_err(unreadable)?;
    if skipped < start as u64 {
        return Err(short(skipped));
    }
    entry.read_exact(&mut buf).map_err(unreadable)?;
    Ok(buf)
}

/// Runs the pickle's opcodes (building objects only) and returns the root object.
///
/// Before each opcode, the few whose arguments candle would trust blindly are checked:
/// a string length beyond the end of the data (candle would allocate it first) and an
/// integer wider than 8 bytes (candle would shift past 64 bits).
fn run_pickle(bytes: &[u8]) -> std::result::Result<Object, String> {
    const BINUNICODE: u8 = b'X';
    const LONG1: u8 = 0x8a;
    let mut reader = Cursor::new(bytes);
    let mut stack = Stack::empty();
    loop {
        let pos = reader.position() as usize;
        match bytes.get(pos) {
            None => return Err(format!("ends at byte {pos} without a STOP opcode")),
            Some(&BINUNICODE) => {
                if let Some(len) = bytes.get(pos + 1..pos + 5) {
                    let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
                    if len > bytes.len() - (pos + 5) {
                        return Err(format!(
                            "string of {len} bytes at byte {pos} runs past the end"
                        ));
                    }
                }
            }
            Some(&LONG1) => {
                if let Some(&n) = bytes.get(pos + 1)
                    && n > 8
                {
                    return Err(format!("integer of {n} bytes at byte {pos} is too wide"));
                }
            }
            Some(_) => {}
        }
        match stack.read(&mut reader) {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => return Err(format!("does not parse at byte {pos}: {}", error_text(&e))),
        }
    }
    stack
        .finalize()
        .map_err(|e| format!("does not parse: {}", error_text(&e)))
}

/// Finds the tensors in the pickle's root: a dict of tensors (entries that are not
/// tensors, such as an OrderedDict's `_metadata`, are skipped) or one bare tensor.
fn collect_tensors(root: Object) -> std::result::Result<(Vec<PthTensorInfo>, bool), String> {
    match root {
        Object::Dict(entries) => {
            let mut tensors = Vec::new();
            for (key, value) in entries {
                if !is_tensor_rebuild(&value) {
                    continue;
                }
                let Object::Unicode(name) = key else {
                    return Err(format!("a tensor has a key that is not a string: {key:?}"));
                };
                let info =
                    tensor_info(&name, value).map_err(|e| format!("tensor '{name}': {e}"))?;
                tensors.push(info);
            }
            if tensors.is_empty() {
                return Err("the pickle's dict holds no tensors".into());
            }
            Ok((tensors, false))
        }
        root if is_tensor_rebuild(&root) => {
            let info = tensor_info(BARE_TENSOR_NAME, root)
                .map_err(|e| format!("tensor '{BARE_TENSOR_NAME}': {e}"))?;
            Ok((vec![info], true))
        }
        other => Err(format!(
            "the pickle's root is neither a tensor nor a dict of tensors but {}",
            describe(&other)
        )),
    }
}

fn describe(object: &Object) -> String {
    match object {
        Object::Class {
            module_name,
            class_name,
        } => format!("class {module_name}.{class_name}"),
        Object::Reduce { callable, .. } => format!("a call of {}", describe(callable)),
        Object::Build { callable, .. } => format!("a built {}", describe(callable)),
        Object::Int(_) | Object::Long(_) => "an integer".into(),
        Object::Float(_) => "a float".into(),
        Object::Unicode(_) => "a string".into(),
        Object::Bool(_) => "a bool".into(),
        Object::None => "None".into(),
        Object::Tuple(_) => "a tuple".into(),
        Object::List(_) => "a list".into(),
        Object::Mark => "a mark".into(),
        Object::Dict(_) => "a dict".into(),
        Object::PersistentLoad(_) => "a persistent id".into(),
    }
}

fn class_is(object: &Object, module: &str, class: &str) -> bool {
    matches!(object, Object::Class { module_name, class_name }
        if module_name == module && class_name == class)
}

/// The calls torch's pickler emits for a tensor or a parameter.
fn is_tensor_rebuild(object: &Object) -> bool {
    let Object::Reduce { callable, .. } = object else {
        return false;
    };
    class_is(callable, "torch._utils", "_rebuild_tensor_v2")
        || class_is(callable, "torch._utils", "_rebuild_parameter")
        || class_is(callable, "torch._utils", "_rebuild_parameter_with_state")
        || class_is(callable, "torch._tensor", "_rebuild_from_type_v2")
}

fn tensor_info(name: &str, object: Object) -> std::result::Result<PthTensorInfo, String> {
    let Object::Reduce { callable, args } = object else {
        return Err(format!("expected a tensor, found {}", describe(&object)));
    };
    let Object::Tuple(mut args) = *args else {
        return Err("the tensor's arguments are not a tuple".into());
    };
    if class_is(&callable, "torch._utils", "_rebuild_tensor_v2") {
        return rebuild_tensor_v2(name, args);
    }
    if class_is(&callable, "torch._utils", "_rebuild_parameter")
        || class_is(&callable, "torch._utils", "_rebuild_parameter_with_state")
    {
        // (data, requires_grad, backward_hooks[, state]): the data is the tensor.
        if args.is_empty() {
            return Err("a parameter without data".into());
        }
        return tensor_info(name, args.swap_remove(0));
    }
    if class_is(&callable, "torch._tensor", "_rebuild_from_type_v2") && args.len() >= 3 {
        // (func, new_type, args, state): a tensor subclass rebuilt by func(*args).
        let inner_args = args.swap_remove(2);
        let func = args.swap_remove(0);
        return tensor_info(
            name,
            Object::Reduce {
                callable: Box::new(func),
                args: Box::new(inner_args),
            },
        );
    }
    Err(format!(
        "unsupported tensor constructor {}",
        describe(&callable)
    ))
}

/// `_rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, hooks, ..)`,
/// storage being the persistent id `('storage', <Type>Storage, key, location, numel)`.
fn rebuild_tensor_v2(name: &str, args: Vec<Object>) -> std::result::Result<PthTensorInfo, String> {
    let count = args.len();
    let mut args = args.into_iter();
    let (Some(storage), Some(offset), Some(size), Some(stride)) =
        (args.next(), args.next(), args.next(), args.next())
    else {
        return Err(format!("_rebuild_tensor_v2 with {count} arguments"));
    };
    let Object::PersistentLoad(storage) = storage else {
        return Err(format!(
            "storage is {}, not a persistent id",
            describe(&storage)
        ));
    };
    let Object::Tuple(storage) = *storage else {
        return Err("storage id is not a tuple".into());
    };
    let [kind, storage_class, key, _location, numel] = storage.as_slice() else {
        return Err(format!(
            "storage id has {} fields, expected 5",
            storage.len()
        ));
    };
    if !matches!(kind, Object::Unicode(k) if k == "storage") {
        return Err(format!(
            "storage id starts with {}, not 'storage'",
            describe(kind)
        ));
    }
    let Object::Class { class_name, .. } = storage_class else {
        return Err(format!("storage type is {}", describe(storage_class)));
    };
    let storage_key = match key {
        Object::Unicode(key) if is_record_key(key) => key.clone(),
        Object::Unicode(key) => return Err(format!("bad storage record key '{key}'")),
        other => return Err(format!("storage record key is {}", describe(other))),
    };
    let shape = usize_tuple(&size, "size")?;
    let stride = usize_tuple(&stride, "stride")?;
    if shape.len() != stride.len() {
        return Err(format!(
            "size {shape:?} and stride {stride:?} differ in rank"
        ));
    }
    Ok(PthTensorInfo {
        name: name.to_string(),
        storage_type: class_name.clone(),
        storage_key,
        storage_numel: to_usize(numel, "storage size")?,
        offset: to_usize(&offset, "storage offset")?,
        shape,
        stride,
    })
}

/// Record keys are what torch writes (decimal numbers); refusing anything else keeps a
/// crafted key from naming another entry of the archive.
fn is_record_key(key: &str) -> bool {
    !key.is_empty() && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn to_usize(object: &Object, what: &str) -> std::result::Result<usize, String> {
    let value = match object {
        Object::Int(v) => i64::from(*v),
        Object::Long(v) => *v,
        other => return Err(format!("{what} is {}, not an integer", describe(other))),
    };
    usize::try_from(value).map_err(|_| format!("{what} is {value}"))
}

fn usize_tuple(object: &Object, what: &str) -> std::result::Result<Vec<usize>, String> {
    let Object::Tuple(items) = object else {
        return Err(format!("{what} is {}, not a tuple", describe(object)));
    };
    items.iter().map(|item| to_usize(item, what)).collect()
}

fn checked_product(dims: &[usize]) -> Option<usize> {
    dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

/// Elements from the tensor's first to its last element in the storage, both included
/// (for a tensor with at least one element).
fn element_span(shape: &[usize], stride: &[usize]) -> Option<usize> {
    shape.iter().zip(stride).try_fold(1usize, |acc, (&d, &s)| {
        acc.checked_add(d.checked_sub(1)?.checked_mul(s)?)
    })
}

/// True when the strides are those of a row-major contiguous tensor (dimensions of size
/// 1 may have any stride).
fn is_row_major(shape: &[usize], stride: &[usize]) -> bool {
    let mut expected = 1usize;
    for (&d, &s) in shape.iter().zip(stride).rev() {
        if d != 1 && s != expected {
            return false;
        }
        expected = expected.saturating_mul(d);
    }
    true
}

/// Copies a strided view out of `window` (the storage bytes from the tensor's first
/// element on) into row-major order.
///
/// `element_span` has bounded every element offset by the window; the offset is still
/// tracked with wrapping arithmetic (a size-1 dimension may carry any stride, which is
/// added and taken back) and each read is checked, so a wrong offset is an error.
fn gather_strided(
    window: &[u8],
    shape: &[usize],
    stride: &[usize],
    elem: usize,
    numel: usize,
) -> std::result::Result<Vec<u8>, String> {
    let total = numel
        .checked_mul(elem)
        .ok_or_else(|| format!("{numel} elements overflow"))?;
    let mut out = Vec::new();
    out.try_reserve_exact(total)
        .map_err(|e| format!("cannot allocate {total} bytes: {e}"))?;
    let rank = shape.len();
    let mut index = vec![0usize; rank];
    let mut src = 0usize;
    for _ in 0..numel {
        let bytes = src
            .checked_mul(elem)
            .and_then(|from| window.get(from..from.checked_add(elem)?))
            .ok_or_else(|| format!("element offset {src} lies outside the storage"))?;
        out.extend_from_slice(bytes);
        // Advance the multi-index, last dimension fastest.
        for dim in (0..rank).rev() {
            index[dim] += 1;
            src = src.wrapping_add(stride[dim]);
            if index[dim] < shape[dim] {
                break;
            }
            src = src.wrapping_sub(stride[dim].wrapping_mul(shape[dim]));
            index[dim] = 0;
        }
    }
    Ok(out)
}

fn decode<T, const N: usize>(
    bytes: &[u8],
    order: ByteOrder,
    little: impl Fn([u8; N]) -> T,
    big: impl Fn([u8; N]) -> T,
) -> Vec<T> {
    let chunks = bytes.chunks_exact(N).map(|c| {
        let mut a = [0u8; N];
        a.copy_from_slice(c);
        a
    });
    match order {
        ByteOrder::Little => chunks.map(little).collect(),
        ByteOrder::Big => chunks.map(big).collect(),
    }
}

#[cfg(test)]
mod tests;
