//! Writer for `torch.save` archives, in the layout torch 2.x writes and [`super::PthFile`]
//! reads: a zip archive of uncompressed records `<top>/data.pkl` (a protocol-2 pickle),
//! `<top>/.format_version`, `<top>/.storage_alignment`, `<top>/byteorder`, one record
//! `<top>/data/<key>` per storage, then `<top>/version`.
//!
//! The pickle is written opcode for opcode as Python's pickler writes torch's objects,
//! memo included: a `BINPUT` after every object Python memoizes, and a `BINGET` where
//! torch passes the same object again (classes, and the string constants `'storage'`,
//! `'cpu'`, `'version'`). A state dict written here therefore has the `data.pkl` bytes
//! of `torch.save` of the same tensors. Storage data is streamed into the archive by the
//! caller, never held whole.

use std::collections::HashMap;
use std::io::{self, Seek, Write};

use candle_core::DType;
use zip::write::{SimpleFileOptions, ZipWriter};
use zip::{CompressionMethod, DateTime};

use super::{PthTensorInfo, STORAGE_DTYPES};

// Pickle opcodes, with Python's `pickletools` names.
const PROTO: u8 = 0x80;
const STOP: u8 = b'.';
const MARK: u8 = b'(';
const GLOBAL: u8 = b'c';
const BINUNICODE: u8 = b'X';
const BININT1: u8 = b'K';
const BININT2: u8 = b'M';
const BININT: u8 = b'J';
const LONG1: u8 = 0x8a;
const EMPTY_TUPLE: u8 = b')';
const TUPLE: u8 = b't';
const TUPLE1: u8 = 0x85;
const EMPTY_DICT: u8 = b'}';
const SETITEM: u8 = b's';
const SETITEMS: u8 = b'u';
const REDUCE: u8 = b'R';
const BUILD: u8 = b'b';
const BINPERSID: u8 = b'Q';
const NEWFALSE: u8 = 0x89;
const BINPUT: u8 = b'q';
const LONG_BINPUT: u8 = b'r';
const BINGET: u8 = b'h';
const LONG_BINGET: u8 = b'j';

/// Python's pickler sets a dict's items in batches of this many.
const SETITEMS_BATCH: usize = 1000;

/// Records start at multiples of this many bytes, as torch writes them (and says in
/// `<top>/.storage_alignment`), so that `torch.load(mmap=True)` can map the storages.
pub const RECORD_ALIGNMENT: u16 = 64;

/// The torch storage class holding elements of `dtype` (`FloatStorage`, ...), for the
/// dtypes [`super::PthFile`] reads.
pub fn storage_class(dtype: DType) -> Option<&'static str> {
    STORAGE_DTYPES
        .iter()
        .find(|(_, d)| *d == dtype)
        .map(|&(class, _)| class)
}

/// Objects that torch pickles as one Python object however often they appear, so that
/// the second and later appearances are memo fetches.
#[derive(Debug, PartialEq, Eq, Hash)]
enum Shared {
    Global { module: String, name: String },
    Str(String),
}

/// Writes pickle opcodes (protocol 2) the way Python's pickler does, memo included.
#[derive(Debug)]
pub struct Pickler {
    bytes: Vec<u8>,
    shared: HashMap<Shared, u32>,
    memo_len: u32,
}

impl Default for Pickler {
    fn default() -> Self {
        Self::new()
    }
}

impl Pickler {
    /// A pickle that starts with `PROTO 2`.
    pub fn new() -> Self {
        Self {
            bytes: vec![PROTO, 2],
            shared: HashMap::new(),
            memo_len: 0,
        }
    }

    /// Appends one raw opcode (no memo), e.g. to hand-craft an unusual pickle.
    pub fn op(&mut self, op: u8) -> &mut Self {
        self.bytes.push(op);
        self
    }

    /// Stores the object just written in the next memo slot, as Python does for every
    /// string, non-empty tuple, dict, class and call result.
    fn memoize(&mut self) -> u32 {
        let slot = self.memo_len;
        match u8::try_from(slot) {
            Ok(short) => self.bytes.extend_from_slice(&[BINPUT, short]),
            Err(_) => {
                self.bytes.push(LONG_BINPUT);
                self.bytes.extend_from_slice(&slot.to_le_bytes());
            }
        }
        self.memo_len += 1;
        slot
    }

    fn fetch(&mut self, slot: u32) {
        match u8::try_from(slot) {
            Ok(short) => self.bytes.extend_from_slice(&[BINGET, short]),
            Err(_) => {
                self.bytes.push(LONG_BINGET);
                self.bytes.extend_from_slice(&slot.to_le_bytes());
            }
        }
    }

    /// Writes `key`'s object with `write` the first time, fetches it from the memo after.
    fn shared(&mut self, key: Shared, write: impl FnOnce(&mut Self)) -> &mut Self {
        match self.shared.get(&key) {
            Some(&slot) => self.fetch(slot),
            None => {
                write(self);
                let slot = self.memoize();
                self.shared.insert(key, slot);
            }
        }
        self
    }

    /// The class `module.name` (one object per class, so written once).
    pub fn global(&mut self, module: &str, name: &str) -> &mut Self {
        let key = Shared::Global {
            module: module.into(),
            name: name.into(),
        };
        self.shared(key, |p| {
            p.bytes.push(GLOBAL);
            p.bytes
                .extend_from_slice(format!("{module}\n{name}\n").as_bytes());
        })
    }

    fn unicode(&mut self, s: &str) {
        self.bytes.push(BINUNICODE);
        self.bytes
            .extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.bytes.extend_from_slice(s.as_bytes());
    }

    /// A string object of its own (e.g. a state-dict key).
    pub fn string(&mut self, s: &str) -> &mut Self {
        self.unicode(s);
        self.memoize();
        self
    }

    /// A string that torch passes as the same object each time (a literal of its code,
    /// such as `'storage'`), so written once and fetched after.
    pub fn constant_string(&mut self, s: &str) -> &mut Self {
        self.shared(Shared::Str(s.into()), |p| p.unicode(s))
    }

    /// A non-negative integer, in the shortest form Python uses.
    pub fn int(&mut self, v: u64) -> &mut Self {
        if v <= 0xff {
            self.bytes.extend_from_slice(&[BININT1, v as u8]);
        } else if v <= 0xffff {
            self.bytes.push(BININT2);
            self.bytes.extend_from_slice(&(v as u16).to_le_bytes());
        } else if v <= 0x7fff_ffff {
            self.bytes.push(BININT);
            self.bytes.extend_from_slice(&(v as u32).to_le_bytes());
        } else {
            // Little-endian two's complement with a sign bit: bit_length / 8 + 1 bytes.
            let len = (64 - v.leading_zeros() as usize) / 8 + 1;
            let mut le = v.to_le_bytes().to_vec();
            le.resize(len, 0);
            self.bytes.extend_from_slice(&[LONG1, len as u8]);
            self.bytes.extend_from_slice(&le);
        }
        self
    }

    pub fn mark(&mut self) -> &mut Self {
        self.op(MARK)
    }

    /// Closes the tuple opened by the last [`Self::mark`].
    pub fn tuple(&mut self) -> &mut Self {
        self.op(TUPLE).memoize();
        self
    }

    /// A tuple of integers (shape, stride), with the short forms Python uses for up to
    /// three items.
    pub fn int_tuple(&mut self, items: &[usize]) -> &mut Self {
        match items.len() {
            0 => return self.op(EMPTY_TUPLE),
            1..=3 => {
                for &v in items {
                    self.int(v as u64);
                }
                self.op(TUPLE1 + items.len() as u8 - 1);
            }
            _ => {
                self.mark();
                for &v in items {
                    self.int(v as u64);
                }
                self.op(TUPLE);
            }
        }
        self.memoize();
        self
    }

    pub fn empty_dict(&mut self) -> &mut Self {
        self.op(EMPTY_DICT).memoize();
        self
    }

    /// Calls the callable below its argument tuple.
    pub fn reduce(&mut self) -> &mut Self {
        self.op(REDUCE).memoize();
        self
    }

    /// `collections.OrderedDict()`.
    pub fn ordered_dict(&mut self) -> &mut Self {
        self.global("collections", "OrderedDict")
            .op(EMPTY_TUPLE)
            .reduce()
    }

    /// Sets `items` into the dict below, in batches as Python does (a lone item with
    /// `SETITEM`, more with `MARK ... SETITEMS`); `item` writes one key and value.
    pub fn set_items<T>(&mut self, items: &[T], mut item: impl FnMut(&mut Self, &T)) -> &mut Self {
        for batch in items.chunks(SETITEMS_BATCH) {
            if let [only] = batch {
                item(self, only);
                self.op(SETITEM);
            } else {
                self.mark();
                for i in batch {
                    item(self, i);
                }
                self.op(SETITEMS);
            }
        }
        self
    }

    /// `torch._utils._rebuild_tensor_v2(<storage>, offset, shape, stride, False,
    /// OrderedDict())`, the storage a persistent id `('storage', torch.<class>, key,
    /// 'cpu', numel)`.
    pub fn tensor(&mut self, t: &PthTensorInfo) -> &mut Self {
        self.global("torch._utils", "_rebuild_tensor_v2").mark();
        self.mark()
            .constant_string("storage")
            .global("torch", &t.storage_type)
            .string(&t.storage_key)
            .constant_string("cpu")
            .int(t.storage_numel as u64)
            .tuple()
            .op(BINPERSID);
        self.int(t.offset as u64)
            .int_tuple(&t.shape)
            .int_tuple(&t.stride)
            .op(NEWFALSE)
            .ordered_dict();
        self.tuple().reduce()
    }

    /// Ends the pickle with `STOP`.
    pub fn finish(mut self) -> Vec<u8> {
        self.bytes.push(STOP);
        self.bytes
    }
}

/// The pickle of a state dict as `torch.save(module.state_dict())` writes it: an
/// `OrderedDict` of `tensors` in order, whose `_metadata` gives each of `modules`
/// (`""` for the root module, then dotted paths in registration order) version 1.
pub fn state_dict_pickle(tensors: &[PthTensorInfo], modules: &[String]) -> Vec<u8> {
    let mut p = Pickler::new();
    p.ordered_dict();
    p.set_items(tensors, |p, t| {
        p.string(&t.name).tensor(t);
    });
    // The state: {'_metadata': OrderedDict({module: {'version': 1}, ...})}, then BUILD.
    p.empty_dict().string("_metadata").ordered_dict();
    p.set_items(modules, |p, module| {
        p.string(module)
            .empty_dict()
            .constant_string("version")
            .int(1)
            .op(SETITEM);
    });
    p.op(SETITEM).op(BUILD);
    p.finish()
}

/// The pickle of `torch.save(tensor)`: the tensor itself is the root.
pub fn bare_tensor_pickle(tensor: &PthTensorInfo) -> Vec<u8> {
    let mut p = Pickler::new();
    p.tensor(tensor);
    p.finish()
}

/// Writes the records of a torch.save archive under its top folder, each aligned to
/// [`RECORD_ALIGNMENT`], stored (uncompressed) unless told otherwise.
pub struct ArchiveWriter<W: Write + Seek> {
    zip: ZipWriter<W>,
    top: String,
    compression: CompressionMethod,
}

impl<W: Write + Seek> ArchiveWriter<W> {
    pub fn new(out: W, top: &str) -> Self {
        Self {
            zip: ZipWriter::new(out),
            top: top.to_string(),
            compression: CompressionMethod::Stored,
        }
    }

    /// Compresses the records (torch never does; readers must cope with re-zipped files).
    pub fn with_compression(mut self, method: CompressionMethod) -> Self {
        self.compression = method;
        self
    }

    /// Starts record `<top>/<name>` of `len` bytes; write its bytes next.
    pub fn start_record(&mut self, name: &str, len: u64) -> io::Result<&mut ZipWriter<W>> {
        let options = SimpleFileOptions::default()
            .compression_method(self.compression)
            // A fixed date, as torch writes, so that equal inputs give equal files.
            .last_modified_time(DateTime::default())
            .with_alignment(RECORD_ALIGNMENT)
            .large_file(len >= u64::from(u32::MAX));
        self.zip
            .start_file(format!("{}/{name}", self.top), options)?;
        Ok(&mut self.zip)
    }

    /// Writes record `<top>/<name>`.
    pub fn record(&mut self, name: &str, bytes: &[u8]) -> io::Result<()> {
        self.start_record(name, bytes.len() as u64)?
            .write_all(bytes)
    }

    /// Writes the central directory and returns the output.
    pub fn finish(self) -> io::Result<W> {
        Ok(self.zip.finish()?)
    }
}

/// One storage of an archive: its record key and byte length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageRecord {
    pub key: String,
    pub bytes: u64,
}

/// Writes a complete torch.save archive in torch's record order: `pickle`, the format
/// records, then each of `storages` in order, its bytes written by `fill(i, writer)`
/// (checked to be exactly `storages[i].bytes`), then the version.
pub fn write_torch_save<W: Write + Seek>(
    out: W,
    top: &str,
    pickle: &[u8],
    storages: &[StorageRecord],
    mut fill: impl FnMut(usize, &mut dyn Write) -> io::Result<()>,
) -> io::Result<W> {
    let mut archive = ArchiveWriter::new(out, top);
    archive.record("data.pkl", pickle)?;
    archive.record(".format_version", b"1")?;
    archive.record(
        ".storage_alignment",
        RECORD_ALIGNMENT.to_string().as_bytes(),
    )?;
    archive.record("byteorder", b"little")?;
    for (i, storage) in storages.iter().enumerate() {
        let zip = archive.start_record(&format!("data/{}", storage.key), storage.bytes)?;
        let mut counted = CountingWriter {
            inner: zip,
            written: 0,
        };
        fill(i, &mut counted)?;
        if counted.written != storage.bytes {
            return Err(io::Error::other(format!(
                "storage '{}': {} bytes written, {} expected",
                storage.key, counted.written, storage.bytes
            )));
        }
    }
    archive.record("version", b"3\n")?;
    archive.finish()
}

/// Counts what passes through, to check each storage's length.
struct CountingWriter<'a, W: Write> {
    inner: &'a mut W,
    written: u64,
}

impl<W: Write> Write for CountingWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
