//! One loaded model per process and key (docs/element.md, "Shared weights").
//!
//! A broadcast chain runs several channels in one process, each with its own
//! `flashvsr` element, and a control application takes pipelines from PLAYING
//! to READY and back. The weights depend only on the folder, the precision,
//! the device and the kernel path (`ModelKey`); everything that differs
//! between streams (scale, sparsity, colour fix, tiles, seed) lives in each
//! engine's stream state. So engines whose keys are equal share one
//! `Arc<FlashVsrModel>`: the registry keeps a weak reference per key, the
//! engines (and any `ModelHandle`) the strong ones, and the weights are freed
//! when the last of those is dropped.
//!
//! On a GPU the shared model's device is one stream (`cuda_device`): the
//! engines' model threads queue their work on it in turn, and the stream's
//! order keeps each engine's work after its own inputs.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::SystemTime;

use once_cell::sync::Lazy;
use parking_lot::Mutex;

use super::{AttentionKernel, DeviceSpec, EngineError, EngineSettings, KernelPath, Precision};
use crate::model::decoder::DecoderKind;
use crate::model::{FlashVsrModel, ModelOptions};

/// What the loaded weights depend on. The folder is canonical, so two
/// spellings of one folder share a model; its files' names, sizes and
/// modification times are part of the key, so that weights replaced on disk
/// are loaded anew rather than served from memory.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct ModelKey {
    dir: PathBuf,
    files: Vec<(OsString, u64, Option<SystemTime>)>,
    precision: Precision,
    device: DeviceSpec,
    kernels: KernelPath,
    attention: AttentionKernel,
    decoder: DecoderKind,
}

/// The regular files of `dir` as (name, size, modification time), by name;
/// empty when the folder cannot be read (`ModelKey::load` reports it).
fn folder_files(dir: &Path) -> Vec<(OsString, u64, Option<SystemTime>)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<_> = entries
        .flatten()
        .filter_map(|entry| {
            let meta = std::fs::metadata(entry.path()).ok()?;
            meta.is_file()
                .then(|| (entry.file_name(), meta.len(), meta.modified().ok()))
        })
        .collect();
    files.sort();
    files
}

impl ModelKey {
    pub(crate) fn of(settings: &EngineSettings) -> Result<Self, EngineError> {
        // a folder that cannot be resolved is reported by `load`
        let dir = std::fs::canonicalize(&settings.model_dir)
            .unwrap_or_else(|_| settings.model_dir.clone());
        Ok(Self {
            files: folder_files(&dir),
            dir,
            precision: settings.precision,
            device: settings.device_spec()?,
            kernels: settings.kernels,
            attention: settings.attention,
            decoder: settings.decoder,
        })
    }

    fn load(&self) -> Result<FlashVsrModel, EngineError> {
        if !self.dir.is_dir() {
            return Err(EngineError::setting(
                "model_dir",
                format!("{} is not a folder", self.dir.display()),
            ));
        }
        let options = ModelOptions {
            device: self.device.open()?,
            dtype: self.precision.dtype(),
            kernels: self.kernels,
            attention: self.attention,
            decoder: self.decoder,
        };
        // the loader's freed temporaries are not what a stream reuses
        let loaded = crate::without_keeping_blocks(|| FlashVsrModel::load(&self.dir, &options));
        loaded.map_err(|e| {
            EngineError::model(format!("loading the model from {}", self.dir.display()), e)
        })
    }
}

/// The models loaded in this process, by key; an entry whose model was
/// dropped is removed at the next look-up.
static LOADED: Lazy<Mutex<HashMap<ModelKey, Weak<FlashVsrModel>>>> = Lazy::new(Default::default);

/// Weight loads this process has made (`model_loads`).
static LOADS: AtomicU64 = AtomicU64::new(0);

/// The model of `key`: the one already loaded in this process while anything
/// holds it, else loaded now. The registry's lock is held while loading, so
/// that elements starting together with the same key load it once (and
/// others wait for that load).
pub(crate) fn shared_model(key: &ModelKey) -> Result<Arc<FlashVsrModel>, EngineError> {
    let mut loaded = LOADED.lock();
    loaded.retain(|_, model| model.strong_count() > 0);
    if let Some(model) = loaded.get(key).and_then(Weak::upgrade) {
        return Ok(model);
    }
    let model = Arc::new(key.load()?);
    LOADS.fetch_add(1, Ordering::Relaxed);
    loaded.insert(key.clone(), Arc::downgrade(&model));
    Ok(model)
}

/// How many times this process has loaded weights (each load that did not
/// find its model already loaded).
pub fn model_loads() -> u64 {
    LOADS.load(Ordering::Relaxed)
}

/// How many models this process holds loaded now (engines and handles hold
/// them; each distinct key once).
pub fn loaded_models() -> usize {
    LOADED
        .lock()
        .values()
        .filter(|model| model.strong_count() > 0)
        .count()
}

/// Keeps a loaded model alive without an engine (`Engine::model_handle`): an
/// element holds one between a stop and its next start, so that a restart
/// with the same settings finds the weights loaded.
#[derive(Clone)]
pub struct ModelHandle {
    key: ModelKey,
    model: Arc<FlashVsrModel>,
}

impl ModelHandle {
    pub(crate) fn new(key: &ModelKey, model: &Arc<FlashVsrModel>) -> Self {
        Self {
            key: key.clone(),
            model: Arc::clone(model),
        }
    }

    /// Whether `self` and `other` hold the same loaded model.
    pub fn same_model(&self, other: &ModelHandle) -> bool {
        Arc::ptr_eq(&self.model, &other.model)
    }

    /// Whether an engine with `settings` would use this model: the same
    /// folder, precision, device and kernel path. A holder lets go of a
    /// handle that does not before starting such an engine, so that its
    /// memory is free for the new model.
    pub fn serves(&self, settings: &EngineSettings) -> bool {
        ModelKey::of(settings).is_ok_and(|key| key == self.key)
    }
}

impl std::fmt::Debug for ModelHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelHandle")
            .field("key", &self.key)
            .field("weight_bytes", &self.model.weight_bytes())
            .finish()
    }
}
