//! The tensor table of a decoded `torch.save` pickle: the tensors of a state dict (or
//! the bare tensor at the root), found by the calls torch's pickler writes for them.
//!
//! Only the few shapes torch writes are followed (dict entry, parameter wrapper, tensor
//! rebuild call, storage descriptor), each step to a value created before the one it
//! comes from, so no walk here can loop or go deep, whatever the pickle shares.

use super::pickle::{Global, Id, Pickle, Value};
use super::{BARE_TENSOR_NAME, PthTensorInfo};

/// Wrappers followed at most around a tensor (a parameter of a subclass, say).
const MAX_WRAPPERS: usize = 4;

/// The tensors of the pickle's root: a dict of tensors (entries that are not tensors,
/// such as those of a nested dict, are skipped) or one bare tensor. The flag is true
/// for a bare tensor.
pub fn collect_tensors(pickle: &Pickle) -> Result<(Vec<PthTensorInfo>, bool), String> {
    let root = pickle.root();
    match pickle.get(root) {
        Value::Dict(entries) => {
            let mut tensors = Vec::new();
            for &(key, value) in entries {
                if !matches!(pickle.get(value), Value::Call { .. }) {
                    continue;
                }
                let Value::Str(name) = pickle.get(key) else {
                    return Err(format!(
                        "a tensor has a key that is {}, not a string",
                        pickle.get(key).kind()
                    ));
                };
                let info = tensor_info(pickle, name, value)
                    .map_err(|e| format!("tensor '{name}': {e}"))?;
                tensors.push(info);
            }
            if tensors.is_empty() {
                return Err("the pickle's dict holds no tensors".into());
            }
            Ok((tensors, false))
        }
        Value::Call { .. } => {
            let info = tensor_info(pickle, BARE_TENSOR_NAME, root)
                .map_err(|e| format!("tensor '{BARE_TENSOR_NAME}': {e}"))?;
            Ok((vec![info], true))
        }
        other => Err(format!(
            "the pickle's root is neither a tensor nor a dict of tensors but {}",
            other.kind()
        )),
    }
}

fn tensor_info(pickle: &Pickle, name: &str, mut id: Id) -> Result<PthTensorInfo, String> {
    for _ in 0..=MAX_WRAPPERS {
        let Value::Call { func, args } = *pickle.get(id) else {
            return Err(format!(
                "expected a tensor, found {}",
                pickle.get(id).kind()
            ));
        };
        let Value::Tuple(args) = pickle.get(args) else {
            return Err("the tensor's arguments are not a tuple".into());
        };
        id = match func {
            Global::RebuildTensorV2 => return rebuild_tensor_v2(pickle, name, args),
            // (data, requires_grad, backward_hooks[, state]): the data is the tensor.
            Global::RebuildParameter | Global::RebuildParameterWithState => {
                *args.first().ok_or("a parameter without data")?
            }
            // (func, new_type, args, state): a tensor subclass rebuilt by func(*args).
            Global::RebuildFromTypeV2 => {
                let [func, _, inner, ..] = args.as_slice() else {
                    return Err(format!(
                        "_rebuild_from_type_v2 with {} arguments",
                        args.len()
                    ));
                };
                match pickle.get(*func) {
                    Value::Global(Global::RebuildTensorV2) => {
                        let Value::Tuple(inner) = pickle.get(*inner) else {
                            return Err("the tensor's arguments are not a tuple".into());
                        };
                        return rebuild_tensor_v2(pickle, name, inner);
                    }
                    other => {
                        return Err(format!(
                            "_rebuild_from_type_v2 of {}, not of _rebuild_tensor_v2",
                            other.kind()
                        ));
                    }
                }
            }
            _ => return Err("unsupported tensor constructor".into()),
        };
    }
    Err(format!(
        "wrapped in more than {MAX_WRAPPERS} parameter calls"
    ))
}

/// `_rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, hooks, ..)`,
/// storage being the persistent id `('storage', <Type>Storage, key, location, numel)`.
fn rebuild_tensor_v2(pickle: &Pickle, name: &str, args: &[Id]) -> Result<PthTensorInfo, String> {
    let [storage, offset, size, stride, ..] = *args else {
        return Err(format!("_rebuild_tensor_v2 with {} arguments", args.len()));
    };
    let Value::PersistentId(storage) = *pickle.get(storage) else {
        return Err(format!(
            "storage is {}, not a persistent id",
            pickle.get(storage).kind()
        ));
    };
    let Value::Tuple(storage) = pickle.get(storage) else {
        return Err("storage id is not a tuple".into());
    };
    let [kind, storage_class, key, _location, numel] = *storage.as_slice() else {
        return Err(format!(
            "storage id has {} fields, expected 5",
            storage.len()
        ));
    };
    if !matches!(pickle.get(kind), Value::Str(k) if k == "storage") {
        return Err(format!(
            "storage id starts with {}, not 'storage'",
            pickle.get(kind).kind()
        ));
    }
    let Value::Global(Global::Storage(class)) = *pickle.get(storage_class) else {
        return Err(format!(
            "storage type is {}, not a torch storage class",
            pickle.get(storage_class).kind()
        ));
    };
    let storage_key = match pickle.get(key) {
        Value::Str(key) if is_record_key(key) => key.clone(),
        Value::Str(key) => return Err(format!("bad storage record key '{key}'")),
        other => return Err(format!("storage record key is {}", other.kind())),
    };
    let shape = usize_tuple(pickle, size, "size")?;
    let stride = usize_tuple(pickle, stride, "stride")?;
    if shape.len() != stride.len() {
        return Err(format!(
            "size {shape:?} and stride {stride:?} differ in rank"
        ));
    }
    Ok(PthTensorInfo {
        name: name.to_string(),
        storage_type: pickle.storage_class(class).to_string(),
        storage_key,
        storage_numel: to_usize(pickle, numel, "storage size")?,
        offset: to_usize(pickle, offset, "storage offset")?,
        shape,
        stride,
    })
}

/// Record keys are what torch writes (decimal numbers); refusing anything else keeps a
/// crafted key from naming another entry of the archive.
fn is_record_key(key: &str) -> bool {
    !key.is_empty() && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn to_usize(pickle: &Pickle, id: Id, what: &str) -> Result<usize, String> {
    match *pickle.get(id) {
        Value::Int(v) => usize::try_from(v).map_err(|_| format!("{what} is {v}")),
        ref other => Err(format!("{what} is {}, not an integer", other.kind())),
    }
}

fn usize_tuple(pickle: &Pickle, id: Id, what: &str) -> Result<Vec<usize>, String> {
    let Value::Tuple(items) = pickle.get(id) else {
        return Err(format!("{what} is {}, not a tuple", pickle.get(id).kind()));
    };
    items
        .iter()
        .map(|&item| to_usize(pickle, item, what))
        .collect()
}
