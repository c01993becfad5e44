//! Reader for files written by PyTorch's `torch.save` (a zip archive holding a pickle and
//! one raw record per storage), executing nothing from the pickle.
//!
//! The pickle is decoded by [`pickle`] (this project's bounded reader, which builds plain
//! values and refuses any global but torch's rebuild functions, storage classes and
//! `OrderedDict`); [`table`] then recognises the tensors (`_rebuild_tensor_v2` and its
//! wrappers), whose bytes are read from the archive's storage records on demand. It
//! accepts a root that is a bare tensor (e.g. FlashVSR's `posi_prompt.pth`), any storage
//! offset and strides, and any name for the archive's top folder. Every size is checked
//! before use, declared sizes against the bytes really present before anything is
//! allocated, and every value is checked to be finite, so a damaged or crafted file gives
//! an error naming the file (and tensor), never a panic, a crash or a huge allocation.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Cursor, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Error, Result, Tensor};
use half::{bf16, f16};
use parking_lot::Mutex;
use zip::result::ZipError;
use zip::{CompressionMethod, ZipArchive};

mod pickle;
mod table;
pub mod writer;

use super::finite::first_non_finite;
use table::collect_tensors;

/// Name given to the tensor of a file whose pickle root is a single tensor.
pub const BARE_TENSOR_NAME: &str = "<root>";

/// The small text records (`byteorder`) hold a word; anything larger is not torch's.
const MAX_SMALL_RECORD_BYTES: u64 = 64;

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
    /// Length of the archive file, to check the sizes its zip directory claims.
    archive_len: u64,
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

    fn from_source(path: &Path, mut source: Box<dyn ArchiveSource>) -> Result<Self> {
        let fail = |what: String| message(format!("weight file '{}': {what}", path.display()));
        let archive_len = source
            .seek(SeekFrom::End(0))
            .map_err(|e| fail(format!("cannot read: {e}")))?;
        let mut archive = ZipArchive::new(source)
            .map_err(|e| fail(format!("not a readable PyTorch zip archive: {e}")))?;
        let top = find_top_folder(&archive).map_err(&fail)?;
        let byte_order = read_byte_order(&mut archive, &top).map_err(&fail)?;
        let pickle_name = format!("{top}/data.pkl");
        let pickle = {
            let entry = archive
                .by_name(&pickle_name)
                .map_err(|e| fail(format!("cannot read '{pickle_name}': {e}")))?;
            pickle::read_pickle(BufReader::new(entry))
                .map_err(|e| fail(format!("'{pickle_name}' {e}")))?
        };
        let (mut tensors, bare_tensor) = collect_tensors(&pickle).map_err(&fail)?;
        // The arena is dropped flat here, however the pickle nested its values.
        drop(pickle);
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
            archive_len,
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
        info.offset
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
        // A tensor never has more elements than its storage (only a broadcast view
        // repeats them, which no weight file holds): this bounds what a view can make
        // this reader allocate by the bytes the storage record really holds.
        if numel > info.storage_numel {
            return Err(format!(
                "has {numel} elements, more than the {} of storage '{}'",
                info.storage_numel, info.storage_key
            ));
        }
        let declared = info
            .storage_numel
            .checked_mul(elem)
            .ok_or_else(|| format!("storage of {} elements overflows", info.storage_numel))?;
        let record = format!("{}/data/{}", self.top, info.storage_key);
        let range = RecordRange {
            record: &record,
            // Within `declared` (end <= storage_numel above), so these cannot overflow.
            start: info.offset * elem,
            len: span * elem,
            declared,
            archive_len: self.archive_len,
        };
        let window = {
            let mut archive = self.archive.lock();
            read_record_range(&mut archive, &range)?
        };
        let contiguous = if is_row_major(&info.shape, &info.stride) {
            window
        } else {
            gather_strided(&window, &info.shape, &info.stride, elem, numel)?
        };
        if let Some(at) = first_non_finite(&contiguous, dtype, self.byte_order == ByteOrder::Little)
        {
            return Err(format!("element {at} is NaN or infinite"));
        }
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
    if entry.size() > MAX_SMALL_RECORD_BYTES {
        return Err(format!(
            "'{name}' is {} bytes, longer than the word torch writes there",
            entry.size()
        ));
    }
    let mut bytes = Vec::with_capacity(entry.size() as usize);
    entry
        .by_ref()
        .take(MAX_SMALL_RECORD_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read '{name}': {e}"))?;
    Ok(bytes)
}

/// Deflate turns one compressed byte into at most about 1032; a record declaring more
/// than this many bytes per compressed byte lies about its size.
const MAX_DEFLATE_RATIO: u64 = 1032;

/// Where a tensor's bytes lie in its storage record, and what the record must hold.
struct RecordRange<'a> {
    record: &'a str,
    /// First byte of the tensor in the record, and how many bytes from there.
    start: usize,
    len: usize,
    /// The storage's size as the pickle declares it (elements times element size).
    declared: usize,
    /// Length of the whole archive file.
    archive_len: u64,
}

/// Reads the bytes of `range`, after checking the record's size in the zip directory
/// against the storage size the pickle declares, and that directory against the bytes
/// present, so that no lying size makes it allocate: the buffer is reserved only for
/// bytes the record holds, and filled only as they are read.
fn read_record_range<R: Read + Seek>(
    archive: &mut ZipArchive<R>,
    range: &RecordRange,
) -> std::result::Result<Vec<u8>, String> {
    let RecordRange {
        record,
        start,
        len,
        declared,
        archive_len,
    } = *range;
    let unreadable =
        |e: &dyn std::fmt::Display| format!("storage record '{record}' is unreadable: {e}");
    let (size, stored) = {
        let entry = match archive.by_name(record) {
            Ok(entry) => entry,
            Err(ZipError::FileNotFound) => {
                return Err(format!("storage record '{record}' is missing"));
            }
            Err(e) => return Err(unreadable(&e)),
        };
        let (size, packed) = (entry.size(), entry.compressed_size());
        if size < declared as u64 {
            return Err(format!(
                "storage record '{record}' holds {size} bytes, fewer than the {declared} its \
                 declared elements need"
            ));
        }
        let stored = entry.compression() == CompressionMethod::Stored;
        let data_end = entry.data_start().map(|start| start.saturating_add(packed));
        if stored && (packed != size || data_end.is_none_or(|end| end > archive_len)) {
            return Err(format!(
                "storage record '{record}' says it holds {size} bytes, but the archive ends \
                 before them"
            ));
        }
        if !stored
            && size
                > packed
                    .saturating_mul(MAX_DEFLATE_RATIO)
                    .saturating_add(1024)
        {
            return Err(format!(
                "storage record '{record}' says it unpacks to {size} bytes from {packed}, \
                 more than compression can produce"
            ));
        }
        (size, stored)
    };
    let end = start.saturating_add(len) as u64;
    if end > size {
        return Err(format!(
            "storage record '{record}' holds {size} bytes, the tensor needs {end}"
        ));
    }
    let mut buf = Vec::new();
    buf.try_reserve_exact(len)
        .map_err(|e| format!("cannot allocate {len} bytes for the tensor: {e}"))?;
    let read = if stored {
        // Records are stored uncompressed by torch: seek straight to the tensor's bytes.
        let mut entry = archive.by_name_seek(record).map_err(|e| unreadable(&e))?;
        entry
            .seek(SeekFrom::Start(start as u64))
            .map_err(|e| unreadable(&e))?;
        entry.take(len as u64).read_to_end(&mut buf)
    } else {
        // A re-zipped (compressed) archive: decompress up to the tensor's bytes.
        let mut entry = archive.by_name(record).map_err(|e| unreadable(&e))?;
        std::io::copy(&mut entry.by_ref().take(start as u64), &mut std::io::sink())
            .and_then(|_| entry.take(len as u64).read_to_end(&mut buf))
    };
    read.map_err(|e| unreadable(&e))?;
    if buf.len() < len {
        return Err(format!(
            "storage record '{record}' ends after {} of the tensor's {len} bytes",
            buf.len()
        ));
    }
    Ok(buf)
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
