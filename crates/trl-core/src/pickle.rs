//! Legacy PyTorch `.bin` checkpoints (zip + pickle), read-only.
//!
//! `torch.save` (torch ≥ 1.6) writes a zip archive `<prefix>/data.pkl` + `<prefix>/data/<key>`.
//! The pickle (protocol 2) holds a dict whose values are built by
//! `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, meta])`
//! (or `_rebuild_tensor_v3(…, dtype, meta)` for dtypes without a legacy storage class, which
//! pair a `torch.storage.UntypedStorage` with a `torch.<dtype>` global), where `storage` is a
//! persistent id `('storage', torch.FloatStorage, key, location, numel)` naming the raw
//! little-endian bytes in `<prefix>/data/<key>`. A tiny pickle VM (`vm`) evaluates just the
//! opcodes such files use; tensors are views (offset + strides) that are materialised, once
//! the whole pickle is read, into contiguous row-major bytes, so tied weights and slices work.
//!
//! This file reads the zip container and assembles the state dict; `vm` runs the pickle and
//! `tensor` turns the views it describes into bytes.

mod tensor;
mod vm;

use std::collections::{BTreeMap, HashMap};
use std::io::{BufReader, Read};
use std::path::Path;

use burn::tensor::{BoolStore, DType, TensorData};

use crate::error::{Error, Result};
use crate::state_dict::StateDict;

use tensor::{dtype_of, materialise, TensorRef};
use vm::{dismantle, Value, Vm};
#[cfg(test)]
use {std::rc::Rc, tensor::StorageRef};

/// Reads a `torch.save`d state dict (zip format; the pre-1.6 legacy format is refused).
pub fn load_bin(path: &Path) -> Result<StateDict> {
    let err = |reason: String| Error::Pickle { path: path.to_path_buf(), reason };
    let file = std::fs::File::open(path).map_err(crate::error::io_err(path))?;
    let mut magic = [0u8; 4];
    let n = (&file).read(&mut magic).map_err(crate::error::io_err(path))?;
    if n >= 1 && magic[0] == 0x80 {
        return Err(err("legacy (pre-1.6, non-zip) torch.save format; re-save it with a recent torch: \
                        `torch.save(torch.load(p), p)`, or better, convert it to safetensors"
            .into()));
    }
    let mut zip = zip::ZipArchive::new(BufReader::new(file)).map_err(|e| err(format!("not a zip archive: {e}")))?;
    let pkl_name = zip
        .file_names()
        .filter(|n| *n == "data.pkl" || n.ends_with("/data.pkl"))
        .min_by_key(|n| n.len())
        .map(str::to_string)
        .ok_or_else(|| err("no `data.pkl` in the archive".into()))?;
    let prefix = &pkl_name[..pkl_name.len() - "data.pkl".len()];
    if let Ok(bo) = read_entry(&mut zip, &format!("{prefix}byteorder")) {
        if bo != b"little" {
            return Err(err(format!("byte order `{}` is not supported", String::from_utf8_lossy(&bo))));
        }
    }
    let pkl = read_entry(&mut zip, &pkl_name).map_err(&err)?;
    state_dict_from(path, &pkl, |key| read_entry(&mut zip, &format!("{prefix}data/{key}")))
}

/// Evaluates the pickle `pkl` and materialises its tensors; `storage(key)` reads a storage's
/// bytes. `path` is only used in errors.
fn state_dict_from(
    path: &Path,
    pkl: &[u8],
    mut storage: impl FnMut(&str) -> Result<Vec<u8>, String>,
) -> Result<StateDict> {
    let err = |reason: String| Error::Pickle { path: path.to_path_buf(), reason };
    let root = Vm::new(pkl).run().map_err(&err)?;
    let result = match &root {
        Value::Dict(items) => tensors_of(path, &items.borrow(), &mut storage),
        v => Err(err(format!("the pickle holds {}, not a dict of tensors", v.kind()))),
    };
    dismantle(vec![root]);
    result
}

/// How many bytes the copies of all views may take: 4× the storage they read (tied weights
/// take 2×) plus this much, so that expanded (stride 0) or overlapping views, or thousands of
/// views of one storage, cannot make a small file allocate without bound.
const VIEW_SLACK: usize = 16 << 20;

/// The tensors of the top-level dict `items`.
fn tensors_of(
    path: &Path,
    items: &[(Value, Value)],
    storage: &mut impl FnMut(&str) -> Result<Vec<u8>, String>,
) -> Result<StateDict> {
    let err = |reason: String| Error::Pickle { path: path.to_path_buf(), reason };
    // First every entry, in file order (a repeated key keeps its last value, as in Python)…
    let mut views: Vec<(&str, &TensorRef, DType, usize)> = Vec::new();
    let mut slot: HashMap<&str, usize> = HashMap::new();
    let mut nested = Vec::new();
    for (k, v) in items {
        let Value::Str(key) = k else { return Err(err(format!("a dict key is {}, not a string", k.kind()))) };
        let t = match v {
            Value::Tensor(t) => t,
            Value::Object(name) if name.starts_with("torch") => {
                return Err(err(format!("`{key}` is a `{name}`, which is not a plain dense tensor")))
            }
            Value::Dict(_) => {
                nested.push(key.to_string());
                continue;
            }
            _ => continue, // non-tensor entries (ints, strings) are not weights
        };
        let (dtype, esize) = dtype_of(&t.dtype).ok_or_else(|| Error::UnsupportedDtype {
            path: path.to_path_buf(),
            key: key.to_string(),
            dtype: t.dtype.clone(),
        })?;
        let view = (&**key, &**t, dtype, esize);
        match slot.get(&**key) {
            Some(&i) => views[i] = view,
            None => {
                slot.insert(key, views.len());
                views.push(view);
            }
        }
    }
    if views.is_empty() && !nested.is_empty() {
        let hint = "a training checkpoint? save its model state dict on its own";
        return Err(err(format!("no tensors at the top level, only the dicts {nested:?} ({hint})")));
    }
    // …then each storage is read once (at most one is held besides the tensors already built)
    // and its views copied out.
    let mut by_storage: BTreeMap<&str, Vec<(&str, &TensorRef, DType, usize)>> = BTreeMap::new();
    for v in views {
        by_storage.entry(v.1.storage.key.as_str()).or_default().push(v);
    }
    let (mut stored, mut copied) = (0usize, 0usize);
    let mut sd = StateDict::new();
    for (skey, list) in by_storage {
        let first = list[0].0;
        let bytes = storage(skey).map_err(|e| err(format!("`{first}`: storage `{skey}`: {e}")))?;
        stored = stored.saturating_add(bytes.len());
        for (key, t, dtype, esize) in list {
            let budget = stored.saturating_mul(4).saturating_add(VIEW_SLACK).saturating_sub(copied);
            let mut data = materialise(t, &bytes, esize, budget).map_err(|e| err(format!("`{key}`: {e}")))?;
            copied += data.len();
            if dtype == DType::Bool(BoolStore::Native) {
                data.iter_mut().for_each(|b| *b = (*b != 0) as u8); // a bool must be 0 or 1
            }
            sd.insert(key.to_string(), TensorData::from_bytes_vec(data, t.size.clone(), dtype));
        }
    }
    Ok(sd)
}

fn read_entry<R: Read + std::io::Seek>(zip: &mut zip::ZipArchive<R>, name: &str) -> Result<Vec<u8>, String> {
    let mut f = zip.by_name(name).map_err(|e| format!("`{name}`: {e}"))?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).map_err(|e| format!("`{name}`: {e}"))?;
    Ok(buf)
}

#[cfg(test)]
mod tests;
