//! The DiT file: safetensors whose tensor data is generated as the file is written, one
//! tensor at a time, so that a 5.7 GB DiT never sits whole in memory.

use std::borrow::Cow;
use std::fs::File;
use std::io;
use std::path::Path;

use safetensors::{Dtype, View};

use super::{RandomFile, RandomTensor, ValueEncoding, encoding_of};

/// A tensor whose bytes are generated when the writer asks for them.
struct Generated<'a> {
    tensor: &'a RandomTensor,
    encoding: ValueEncoding,
    st_dtype: Dtype,
    elem_bytes: usize,
    seed: u64,
}

impl View for Generated<'_> {
    fn dtype(&self) -> Dtype {
        self.st_dtype
    }

    fn shape(&self) -> &[usize] {
        &self.tensor.shape
    }

    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Owned(self.tensor.values(self.seed).to_bytes(self.encoding))
    }

    fn data_len(&self) -> usize {
        self.tensor.elements() * self.elem_bytes
    }
}

/// Writes `file` to `path` (safetensors writes a temporary file and renames it).
pub(super) fn write(file: &RandomFile, seed: u64, path: &Path) -> io::Result<()> {
    // safetensors writes through a private (0600) temporary file: give the result the
    // permissions any other new file of the folder gets, like the torch files.
    let mut probe = path.as_os_str().to_owned();
    probe.push(".partial");
    let permissions = File::create(&probe)?.metadata()?.permissions();
    std::fs::remove_file(&probe)?;
    let encoding = encoding_of(file)?;
    let st_dtype = match encoding {
        ValueEncoding::F32 => Dtype::F32,
        ValueEncoding::Bf16 => Dtype::BF16,
        ValueEncoding::F16 => Dtype::F16,
    };
    let tensors = file.tensors.iter().map(|tensor| {
        let view = Generated {
            tensor,
            encoding,
            st_dtype,
            elem_bytes: file.dtype.size_in_bytes(),
            seed,
        };
        (tensor.name.as_str(), view)
    });
    safetensors::serialize_to_file(tensors, None, path).map_err(io::Error::other)?;
    std::fs::set_permissions(path, permissions)
}
