//! The weight files of a FlashVSR model folder: opening them (safetensors memory-mapped,
//! torch.save archives through [`pth`]), checked tensor access, a
//! `candle_nn::VarBuilder` whose errors name the file, and conversion of the torch files
//! to safetensors so that later loads skip the pickle.
//!
//! Every error is a `candle_core::Error::Msg` starting with
//! `weight file '<path>': tensor '<name>': ...` or `model folder '<path>': ...`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Result, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;

mod finite;
pub mod pth;

use pth::{PthFile, error_text, message};

/// The DiT, as released (safetensors only).
pub const DIT_FILE: &str = "diffusion_pytorch_model_streaming_dmd.safetensors";
/// The LQ projection, as released; [`LQ_PROJ_SAFETENSORS_FILE`] is preferred when present.
pub const LQ_PROJ_FILE: &str = "LQ_proj_in.ckpt";
pub const LQ_PROJ_SAFETENSORS_FILE: &str = "LQ_proj_in.safetensors";
/// The TCDecoder, as released; [`DECODER_SAFETENSORS_FILE`] is preferred when present.
pub const DECODER_FILE: &str = "TCDecoder.ckpt";
pub const DECODER_SAFETENSORS_FILE: &str = "TCDecoder.safetensors";
/// The prompt embedding, as released (a bare tensor); [`PROMPT_SAFETENSORS_FILE`] (one
/// tensor, key [`PROMPT_KEY`]) is preferred when present.
pub const PROMPT_FILE: &str = "posi_prompt.pth";
pub const PROMPT_SAFETENSORS_FILE: &str = "posi_prompt.safetensors";
pub const PROMPT_KEY: &str = "posi_prompt";
/// The Wan2.1 video VAE, as released with Wan2.1 (a torch.save state dict of the whole
/// VAE); only its decoder is read, for `decoder=wan`. [`WAN_VAE_SAFETENSORS_FILE`]
/// (written by `convert`: the decoder's tensors only) is preferred when present.
pub const WAN_VAE_FILE: &str = "Wan2.1_VAE.pth";
pub const WAN_VAE_SAFETENSORS_FILE: &str = "Wan2.1_VAE.safetensors";
/// Tensor-name prefixes of the VAE file that the decoder reads: its decoder and the
/// 1x1 conv in front of it. The encoder's tensors are never loaded.
pub const WAN_VAE_DECODER_PREFIXES: [&str; 2] = ["decoder.", "conv2."];

/// The files a model folder needs, as released, in the order messages name them.
pub const RELEASED_FILES: [&str; 4] = [DIT_FILE, LQ_PROJ_FILE, DECODER_FILE, PROMPT_FILE];

/// `RELEASED_FILES` as one phrase for messages: "a, b, c and d".
pub fn released_files_phrase() -> String {
    let [first @ .., last] = RELEASED_FILES;
    format!("{} and {last}", first.join(", "))
}

/// Where the VAE comes from, appended to its "missing file" error.
const HOW_TO_GET_WAN_VAE: &str = "decoder=wan needs the Wan2.1 VAE: download \
     Wan2.1_VAE.pth (Wan-AI/Wan2.1-T2V-1.3B on Hugging Face, also in the FlashVSR \
     repositories) into this folder, or use decoder=tiny; see README";

/// Where the weights come from, appended to "missing file" errors.
const HOW_TO_GET_WEIGHTS: &str = "download the FlashVSR weights from Hugging Face \
     (JunhaoZhuang/FlashVSR for v1, JunhaoZhuang/FlashVSR-v1.1 for v1.1) into this folder; \
     see README";

enum Store {
    Safetensors(MmapedSafetensors),
    Torch(PthFile),
}

/// One weight file: safetensors (memory-mapped via candle's `MmapedSafetensors`) or a
/// torch.save zip archive. Safe to share between threads.
pub struct WeightFile {
    path: PathBuf,
    store: Store,
    /// Sorted tensor names.
    names: Vec<String>,
}

impl std::fmt::Debug for WeightFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WeightFile")
            .field("path", &self.path)
            .field("tensors", &self.names.len())
            .finish()
    }
}

impl WeightFile {
    /// Opens `path`: a `.safetensors` file is memory-mapped, anything else is read as a
    /// torch.save archive. Only the tensor table is read here.
    pub fn open(path: &Path) -> Result<Self> {
        let is_safetensors = path.extension().is_some_and(|e| e == "safetensors");
        let (store, mut names) = if is_safetensors {
            if let Err(e) = std::fs::metadata(path) {
                return Err(message(format!(
                    "weight file '{}': cannot open: {e}",
                    path.display()
                )));
            }
            // SAFETY: the file is mapped read-only; like every memory-mapped load (candle's
            // own VarBuilder::from_mmaped_safetensors included) this relies on nobody
            // truncating or rewriting the weight file while the model is loaded.
            let st = match unsafe { MmapedSafetensors::new(path) } {
                Ok(st) => st,
                Err(e) => {
                    return Err(message(format!(
                        "weight file '{}': not a readable safetensors file: {}",
                        path.display(),
                        error_text(&e)
                    )));
                }
            };
            let names: Vec<String> = st.tensors().into_iter().map(|(n, _)| n).collect();
            (Store::Safetensors(st), names)
        } else {
            let pth = PthFile::open(path)?;
            let names = pth.tensors().iter().map(|t| t.name.clone()).collect();
            (Store::Torch(pth), names)
        };
        names.sort();
        Ok(Self {
            path: path.to_path_buf(),
            store,
            names,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Tensor names, sorted.
    pub fn names(&self) -> Vec<String> {
        self.names.clone()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.names
            .binary_search_by(|n| n.as_str().cmp(name))
            .is_ok()
    }

    fn missing(&self, name: &str) -> candle_core::Error {
        message(format!(
            "weight file '{}': tensor '{name}' is missing (the file holds {} tensors)",
            self.path.display(),
            self.names.len()
        ))
    }

    fn fail(&self, name: &str, what: impl std::fmt::Display) -> candle_core::Error {
        message(format!(
            "weight file '{}': tensor '{name}': {what}",
            self.path.display()
        ))
    }

    /// The stored shape of tensor `name`.
    pub fn shape(&self, name: &str) -> Result<Vec<usize>> {
        match &self.store {
            Store::Safetensors(st) => match st.get(name) {
                Ok(view) => Ok(view.shape().to_vec()),
                Err(_) => Err(self.missing(name)),
            },
            Store::Torch(pth) => match pth.info(name) {
                Some(info) => Ok(info.shape.clone()),
                None => Err(self.missing(name)),
            },
        }
    }

    /// The stored element type of tensor `name`; an error unless it is f32, bf16 or f16.
    pub fn stored_dtype(&self, name: &str) -> Result<DType> {
        match &self.store {
            Store::Safetensors(st) => {
                let view = st.get(name).map_err(|_| self.missing(name))?;
                match view.dtype() {
                    safetensors::Dtype::F32 => Ok(DType::F32),
                    safetensors::Dtype::BF16 => Ok(DType::BF16),
                    safetensors::Dtype::F16 => Ok(DType::F16),
                    other => Err(self.fail(
                        name,
                        format!(
                            "stored dtype {other:?} is not supported (expected F32, BF16 or F16)"
                        ),
                    )),
                }
            }
            Store::Torch(pth) => {
                let info = pth.info(name).ok_or_else(|| self.missing(name))?;
                info.dtype().ok_or_else(|| {
                    self.fail(
                        name,
                        format!(
                            "storage type '{}' is not supported (expected FloatStorage, \
                             BFloat16Storage or HalfStorage)",
                            info.storage_type
                        ),
                    )
                })
            }
        }
    }

    /// Tensor `name` in its stored dtype (checked to be f32, bf16 or f16) on `device`.
    /// Every value is checked to be finite (error: file, tensor, element).
    fn load_stored(&self, name: &str, device: &Device) -> Result<Tensor> {
        let dtype = self.stored_dtype(name)?;
        match &self.store {
            Store::Safetensors(st) => {
                let view = st.get(name).map_err(|_| self.missing(name))?;
                // safetensors data is little-endian; the check reads the mapped bytes.
                if let Some(at) = finite::first_non_finite(view.data(), dtype, true) {
                    return Err(self.fail(name, format!("element {at} is NaN or infinite")));
                }
                st.load(name, device)
                    .map_err(|e| self.fail(name, error_text(&e)))
            }
            Store::Torch(pth) => pth
                .load(name)?
                .to_device(device)
                .map_err(|e| self.fail(name, error_text(&e))),
        }
    }

    /// Tensor `name` on the CPU in its stored dtype (f32, bf16 or f16), e.g. to re-save it.
    pub fn stored_tensor(&self, name: &str) -> Result<Tensor> {
        self.load_stored(name, &Device::Cpu)
    }

    /// Checks the shape (error: file, tensor, expected, found) and that the stored dtype is
    /// f32/bf16/f16 (error otherwise), converts to `dtype`, puts on `device`.
    pub fn tensor(
        &self,
        name: &str,
        shape: &[usize],
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        let found = self.shape(name)?;
        if found != shape {
            return Err(self.fail(name, format!("expected shape {shape:?}, found {found:?}")));
        }
        self.load_stored(name, device)?
            .to_dtype(dtype)
            .map_err(|e| self.fail(name, error_text(&e)))
    }

    /// A `candle_nn::VarBuilder` over this file; its `get(shape, name)` errors name the file.
    pub fn var_builder(
        self: &Arc<Self>,
        dtype: DType,
        device: &Device,
    ) -> candle_nn::VarBuilder<'static> {
        candle_nn::VarBuilder::from_backend(
            Box::new(FileBackend(self.clone())),
            dtype,
            device.clone(),
        )
    }
}

/// Lets a `VarBuilder` read from a [`WeightFile`].
struct FileBackend(Arc<WeightFile>);

impl SimpleBackend for FileBackend {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _init: candle_nn::Init,
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        self.0.tensor(name, shape.dims(), dtype, device)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, device: &Device) -> Result<Tensor> {
        let shape = self.0.shape(name)?;
        self.0.tensor(name, &shape, dtype, device)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.0.contains(name)
    }
}

/// The four files of a model folder, resolved (safetensors variants preferred), opened.
#[derive(Debug)]
pub struct ModelFiles {
    pub dir: PathBuf,
    pub dit: Arc<WeightFile>,
    pub lq_proj: Arc<WeightFile>,
    pub decoder: Arc<WeightFile>,
    pub prompt: Arc<WeightFile>,
}

/// A weight file of the folder: the released name and its converted variant, if any.
struct FileChoice {
    released: &'static str,
    converted: Option<&'static str>,
}

const DIT: FileChoice = FileChoice {
    released: DIT_FILE,
    converted: None,
};
const LQ_PROJ: FileChoice = FileChoice {
    released: LQ_PROJ_FILE,
    converted: Some(LQ_PROJ_SAFETENSORS_FILE),
};
const DECODER: FileChoice = FileChoice {
    released: DECODER_FILE,
    converted: Some(DECODER_SAFETENSORS_FILE),
};
const PROMPT: FileChoice = FileChoice {
    released: PROMPT_FILE,
    converted: Some(PROMPT_SAFETENSORS_FILE),
};
const WAN_VAE: FileChoice = FileChoice {
    released: WAN_VAE_FILE,
    converted: Some(WAN_VAE_SAFETENSORS_FILE),
};

impl FileChoice {
    /// The first of the converted and the released file that exists; one that
    /// exists but is not a regular file (a folder, a FIFO) is an error, not skipped.
    fn resolve(&self, dir: &Path) -> Result<Option<PathBuf>> {
        for path in self
            .converted
            .into_iter()
            .chain([self.released])
            .map(|n| dir.join(n))
        {
            match std::fs::metadata(&path) {
                Ok(meta) if meta.is_file() => return Ok(Some(path)),
                Ok(_) => {
                    return Err(message(format!(
                        "weight file '{}' is not a regular file: remove it or replace it with the weight file",
                        path.display()
                    )));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(message(format!("weight file '{}': {e}", path.display())));
                }
            }
        }
        Ok(None)
    }

    fn describe(&self) -> String {
        match self.converted {
            Some(converted) => format!("'{}' (or '{converted}')", self.released),
            None => format!("'{}'", self.released),
        }
    }
}

impl ModelFiles {
    /// Resolves and opens the four files of `dir`. The error for a missing folder or file
    /// names the folder and every missing file, and says how to get the weights.
    pub fn open(dir: &Path) -> Result<Self> {
        if !dir.exists() {
            return Err(message(format!(
                "model folder '{}' does not exist: {HOW_TO_GET_WEIGHTS}",
                dir.display()
            )));
        }
        if !dir.is_dir() {
            return Err(message(format!(
                "model folder '{}' is not a folder: {HOW_TO_GET_WEIGHTS}",
                dir.display()
            )));
        }
        let mut missing = Vec::new();
        for choice in [DIT, LQ_PROJ, DECODER, PROMPT] {
            if choice.resolve(dir)?.is_none() {
                missing.push(choice.describe());
            }
        }
        let missing_error = |missing: &[String]| {
            message(format!(
                "model folder '{}': missing {}; {HOW_TO_GET_WEIGHTS}",
                dir.display(),
                missing.join(", ")
            ))
        };
        if !missing.is_empty() {
            return Err(missing_error(&missing));
        }
        // Resolved again: a file removed since the check above is reported the same way.
        let open = |choice: FileChoice| match choice.resolve(dir)? {
            Some(path) => WeightFile::open(&path).map(Arc::new),
            None => Err(missing_error(&[choice.describe()])),
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            dit: open(DIT)?,
            lq_proj: open(LQ_PROJ)?,
            decoder: open(DECODER)?,
            prompt: open(PROMPT)?,
        })
    }

    /// Opens the folder's Wan2.1 VAE (converted file preferred), which only
    /// `decoder=wan` needs; the error for a missing file names the folder and the file
    /// and says where to get it.
    pub fn open_wan_vae(&self) -> Result<Arc<WeightFile>> {
        match WAN_VAE.resolve(&self.dir)? {
            Some(path) => WeightFile::open(&path).map(Arc::new),
            None => Err(message(format!(
                "model folder '{}': missing {}; {HOW_TO_GET_WAN_VAE}",
                self.dir.display(),
                WAN_VAE.describe()
            ))),
        }
    }

    /// The prompt tensor [1, ctx_len, text_dim] (the single tensor of the prompt file),
    /// its shape checked before anything is read: `text_dim` must be the DiT's text
    /// width and ctx_len at most [`MAX_PROMPT_LEN`].
    pub fn prompt_tensor(&self, dtype: DType, device: &Device, text_dim: usize) -> Result<Tensor> {
        let (name, shape) = prompt_shape(&self.prompt)?;
        if shape[2] != text_dim {
            return Err(self.prompt.fail(
                &name,
                format!(
                    "expected shape [1, ctx_len, {text_dim}] (the DiT's text width), found \
                     {shape:?}"
                ),
            ));
        }
        self.prompt.tensor(&name, &shape, dtype, device)
    }
}

/// The longest prompt: the released one is [1, 512, 4096], umT5's full text length.
pub const MAX_PROMPT_LEN: usize = 512;

/// The name and shape of the prompt file's tensor, checked to be [1, ctx_len, text_dim]
/// with 1 <= ctx_len <= [`MAX_PROMPT_LEN`], from the file's table alone.
fn prompt_shape(file: &WeightFile) -> Result<(String, Vec<usize>)> {
    let name = single_tensor_name(file)?;
    let shape = file.shape(&name)?;
    match shape.as_slice() {
        [1, ctx, _] if (1..=MAX_PROMPT_LEN).contains(ctx) => Ok((name, shape)),
        [1, ctx, _] if *ctx > MAX_PROMPT_LEN => Err(file.fail(
            &name,
            format!(
                "the prompt {shape:?} holds {ctx} tokens, more than the model's \
                 {MAX_PROMPT_LEN}"
            ),
        )),
        _ => Err(file.fail(
            &name,
            format!("expected shape [1, ctx_len, text_dim], found {shape:?}"),
        )),
    }
}

/// The name of the only tensor of `file` (the prompt files hold exactly one).
fn single_tensor_name(file: &WeightFile) -> Result<String> {
    match file.names.as_slice() {
        [name] => Ok(name.clone()),
        names => Err(message(format!(
            "weight file '{}': expected a single tensor [1, ctx_len, text_dim], found {} tensors",
            file.path.display(),
            names.len()
        ))),
    }
}

/// Converts the torch.save files of `model_dir` (LQ projection, TCDecoder, prompt) to
/// safetensors in `out_dir` (created if needed), with the same tensor names (the prompt's
/// under [`PROMPT_KEY`]) and stored dtypes. When the folder holds the Wan2.1 VAE
/// ([`WAN_VAE_FILE`], optional: without it this step is skipped), its decoder's tensors
/// (names starting with one of [`WAN_VAE_DECODER_PREFIXES`]; the encoder's are left out)
/// are written to [`WAN_VAE_SAFETENSORS_FILE`] the same way. Each file is written under
/// a temporary name and renamed when complete, so that a failed run never leaves a
/// partial file that [`ModelFiles::open`] would prefer. Returns the paths written.
pub fn convert_to_safetensors(model_dir: &Path, out_dir: &Path) -> Result<Vec<PathBuf>> {
    if let Err(e) = std::fs::create_dir_all(out_dir) {
        return Err(message(format!(
            "output folder '{}': cannot create: {e}",
            out_dir.display()
        )));
    }
    let mut written = Vec::new();
    for choice in [LQ_PROJ, DECODER, PROMPT] {
        let Some(converted) = choice.converted else {
            continue;
        };
        let source = WeightFile::open(&model_dir.join(choice.released))?;
        let mut tensors = HashMap::new();
        if choice.released == PROMPT_FILE {
            let (name, _) = prompt_shape(&source)?;
            tensors.insert(PROMPT_KEY.to_string(), source.stored_tensor(&name)?);
        } else {
            for name in source.names() {
                let tensor = source.stored_tensor(&name)?;
                tensors.insert(name, tensor);
            }
        }
        let target = out_dir.join(converted);
        write_safetensors_atomically(&tensors, &target)?;
        written.push(target);
    }
    if let Some(target) = convert_wan_vae_decoder(model_dir, out_dir)? {
        written.push(target);
    }
    Ok(written)
}

/// Writes the decoder part of `model_dir`'s [`WAN_VAE_FILE`] to `out_dir`'s
/// [`WAN_VAE_SAFETENSORS_FILE`]; `None` when the folder has no VAE. A VAE without a
/// single decoder tensor is an error rather than an empty file the loader would prefer.
fn convert_wan_vae_decoder(model_dir: &Path, out_dir: &Path) -> Result<Option<PathBuf>> {
    let released = model_dir.join(WAN_VAE_FILE);
    match std::fs::metadata(&released) {
        Ok(meta) if meta.is_file() => {}
        Ok(_) => {
            return Err(message(format!(
                "weight file '{}' is not a regular file: remove it or replace it with the weight file",
                released.display()
            )));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(message(format!(
                "weight file '{}': {e}",
                released.display()
            )));
        }
    }
    let source = WeightFile::open(&released)?;
    let mut tensors = HashMap::new();
    for name in source.names() {
        if WAN_VAE_DECODER_PREFIXES
            .iter()
            .any(|prefix| name.starts_with(prefix))
        {
            let tensor = source.stored_tensor(&name)?;
            tensors.insert(name, tensor);
        }
    }
    if tensors.is_empty() {
        return Err(message(format!(
            "weight file '{}': no decoder tensors (names starting with {}) among its {} \
             tensors: not the Wan2.1 VAE",
            released.display(),
            WAN_VAE_DECODER_PREFIXES
                .map(|p| format!("'{p}'"))
                .join(" or "),
            source.names.len()
        )));
    }
    let target = out_dir.join(WAN_VAE_SAFETENSORS_FILE);
    write_safetensors_atomically(&tensors, &target)?;
    Ok(Some(target))
}

fn write_safetensors_atomically(tensors: &HashMap<String, Tensor>, target: &Path) -> Result<()> {
    let mut partial = target.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let result = candle_core::safetensors::save(tensors, &partial)
        .and_then(|()| std::fs::rename(&partial, target).map_err(candle_core::Error::from));
    if let Err(e) = result {
        // Best effort: the partial file is useless, and the error below says what failed.
        let _ = std::fs::remove_file(&partial);
        return Err(message(format!(
            "weight file '{}': cannot write: {}",
            target.display(),
            error_text(&e)
        )));
    }
    Ok(())
}

/// Number of `<prefix>N.*` entries in a checkpoint's tensor names: one more than
/// the largest index N found (0 when there is none).
pub fn indexed_count(names: &[String], prefix: &str) -> usize {
    names
        .iter()
        .filter_map(|n| {
            n.strip_prefix(prefix)?
                .split('.')
                .next()?
                .parse::<usize>()
                .ok()
        })
        .map(|i| i + 1)
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_indexed_tensors() {
        let names: Vec<String> = ["blocks.0.a", "blocks.11.b", "blocks.x.c", "head.w"]
            .map(String::from)
            .to_vec();
        assert_eq!(indexed_count(&names, "blocks."), 12);
        assert_eq!(indexed_count(&names, "linear_layers."), 0);
    }

    #[test]
    fn a_fifo_in_place_of_a_weight_file_is_named_not_skipped() {
        let dir = std::env::temp_dir().join(format!("flashvsr-fifo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join(LQ_PROJ_SAFETENSORS_FILE);
        let _ = std::fs::remove_file(&fifo);
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        std::fs::write(dir.join(LQ_PROJ_FILE), b"not read").unwrap();
        let err = LQ_PROJ.resolve(&dir).unwrap_err().to_string();
        assert!(
            err.contains(&fifo.display().to_string()) && err.contains("not a regular file"),
            "{err}"
        );
        // the folder check reports it too, before any file is opened
        let err = ModelFiles::open(&dir).unwrap_err().to_string();
        assert!(err.contains(LQ_PROJ_SAFETENSORS_FILE), "{err}");
        // without the FIFO the released file is chosen
        std::fs::remove_file(&fifo).unwrap();
        assert_eq!(LQ_PROJ.resolve(&dir).unwrap(), Some(dir.join(LQ_PROJ_FILE)));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
