//! Checkpoint files: single and sharded safetensors (read and write), legacy PyTorch `.bin` (read).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::{AllocationProperty, Bytes, DType, TensorData};
use safetensors::{Dtype, SafeTensors};

use crate::atomic::{write_atomic_with, write_json_atomic};
use crate::error::{io_err, Error, Result};
use crate::state_dict::StateDict;

pub const SAFE_WEIGHTS: &str = "model.safetensors";
pub const SAFE_INDEX: &str = "model.safetensors.index.json";
pub const BIN_WEIGHTS: &str = "pytorch_model.bin";
pub const BIN_INDEX: &str = "pytorch_model.bin.index.json";

/// transformers' default `max_shard_size` ("5GB").
pub const DEFAULT_MAX_SHARD_SIZE: usize = 5_000_000_000;

/// The weight files of a model directory, in the order transformers prefers them.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    for single in [SAFE_WEIGHTS, BIN_WEIGHTS] {
        let p = dir.join(single);
        if p.is_file() {
            return Ok(vec![p]);
        }
        let index = dir.join(if single == SAFE_WEIGHTS { SAFE_INDEX } else { BIN_INDEX });
        if index.is_file() {
            return shard_files(&index);
        }
    }
    Err(Error::ModelNotFound {
        id: dir.display().to_string(),
        tried: [SAFE_WEIGHTS, SAFE_INDEX, BIN_WEIGHTS, BIN_INDEX].iter().map(|f| dir.join(f)).collect(),
    })
}

/// Reads every tensor of a model directory (single file or sharded, safetensors or `.bin`).
pub fn load_dir(dir: &Path) -> Result<StateDict> {
    let mut sd = StateDict::new();
    for f in weight_files(dir)? {
        sd.extend(load_file(&f)?);
    }
    Ok(sd)
}

/// [`load_dir`] for a state dict that goes straight into a model: each safetensors tensor's
/// bytes stay in the memory-mapped file (zero-copy; the page cache holds them, not fresh heap
/// memory), so a model whose weights need no conversion holds them in the mapped file itself,
/// and a loader that frees each tensor once converted never holds more of the checkpoint than
/// the tensor at hand. A tensor that is written to is copied first (copy-on-write).
///
/// The mapped files must not be changed in place while the model lives (replacing them with a
/// rename, as every Hugging Face and trl-rs writer does, is safe: the mapping keeps the old
/// file). `TRL_MMAP=0` reads the tensors into memory instead.
pub fn load_dir_lazily(dir: &Path) -> Result<StateDict> {
    let mut sd = StateDict::new();
    for f in weight_files(dir)? {
        sd.extend(match f.extension().and_then(|e| e.to_str()) {
            Some("safetensors") => read_safetensors(&f, true)?,
            _ => crate::pickle::load_bin(&f)?,
        });
    }
    Ok(sd)
}

/// Reads one weight file, by its extension: `.safetensors` or PyTorch `.bin`/`.pt`.
pub fn load_file(path: &Path) -> Result<StateDict> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("safetensors") => load_safetensors(path),
        _ => crate::pickle::load_bin(path),
    }
}

/// The distinct shard files an index lists, in order, each checked to exist.
pub fn shard_files(index: &Path) -> Result<Vec<PathBuf>> {
    let map = read_index(index)?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let mut files: Vec<String> = map.into_values().collect();
    files.sort();
    files.dedup();
    files
        .into_iter()
        .map(|f| {
            // A shard is a file inside the model directory (or a subfolder of it): an absolute
            // name or `..` would make an index read files elsewhere.
            let inside = Path::new(&f)
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_) | std::path::Component::CurDir));
            if !inside || f.is_empty() {
                return Err(Error::Json {
                    path: index.to_path_buf(),
                    reason: format!("shard `{f}` is not a file name inside the model directory"),
                });
            }
            let p = dir.join(&f);
            if p.is_file() {
                Ok(p)
            } else {
                Err(Error::MissingShard { index: index.to_path_buf(), shard: f })
            }
        })
        .collect()
}

/// An index's `weight_map`: parameter name → shard file name.
pub fn read_index(index: &Path) -> Result<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(index).map_err(io_err(index))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::Json { path: index.to_path_buf(), reason: e.to_string() })?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| Error::Json { path: index.to_path_buf(), reason: "no `weight_map` object".into() })?;
    map.iter()
        .map(|(k, v)| match v.as_str() {
            Some(s) => Ok((k.clone(), s.to_string())),
            None => {
                Err(Error::Json { path: index.to_path_buf(), reason: format!("weight_map[`{k}`] is not a string") })
            }
        })
        .collect()
}

fn dtype_from_safetensors(d: Dtype) -> Option<DType> {
    Some(match d {
        Dtype::F32 => DType::F32,
        Dtype::F16 => DType::F16,
        Dtype::BF16 => DType::BF16,
        Dtype::F64 => DType::F64,
        Dtype::I64 => DType::I64,
        Dtype::I32 => DType::I32,
        Dtype::I16 => DType::I16,
        Dtype::I8 => DType::I8,
        Dtype::U8 => DType::U8,
        Dtype::BOOL => DType::Bool(burn::tensor::BoolStore::Native),
        _ => return None,
    })
}

fn dtype_to_safetensors(d: DType) -> Option<Dtype> {
    Some(match d {
        DType::F32 | DType::Flex32 => Dtype::F32,
        DType::F16 => Dtype::F16,
        DType::BF16 => Dtype::BF16,
        DType::F64 => Dtype::F64,
        DType::I64 => Dtype::I64,
        DType::I32 => Dtype::I32,
        DType::I16 => Dtype::I16,
        DType::I8 => Dtype::I8,
        DType::U8 => Dtype::U8,
        DType::Bool(_) => Dtype::BOOL,
        _ => return None,
    })
}

/// Reads a `.safetensors` file through a memory map.
pub fn load_safetensors(path: &Path) -> Result<StateDict> {
    read_safetensors(path, false)
}

/// Reads a `.safetensors` file through a memory map; with `lazily`, each tensor's bytes are
/// left in the map ([`load_dir_lazily`]), where they are aligned for its dtype.
fn read_safetensors(path: &Path, lazily: bool) -> Result<StateDict> {
    let file = std::fs::File::open(path).map_err(io_err(path))?;
    // SAFETY: the map is read-only; a concurrent in-place change of the file by another
    // process is the only hazard, as for every mmap reader (see `load_dir_lazily`).
    let map = std::sync::Arc::new(unsafe { memmap2::Mmap::map(&file) }.map_err(io_err(path))?);
    let st = SafeTensors::deserialize(&map)
        .map_err(|e| Error::Safetensors { path: path.to_path_buf(), reason: e.to_string() })?;
    let in_place = lazily && mapping_allowed();
    let mut sd = StateDict::new();
    for (name, view) in st.iter() {
        let dtype = dtype_from_safetensors(view.dtype()).ok_or_else(|| Error::UnsupportedDtype {
            path: path.to_path_buf(),
            key: name.to_string(),
            dtype: format!("{:?}", view.dtype()),
        })?;
        let bytes = view.data();
        let data = if view.dtype() == Dtype::BOOL {
            // a bool byte other than 0/1 is undefined behaviour once read as `bool`; torch reads it as true
            let bytes = bytes.iter().map(|&b| (b != 0) as u8).collect();
            TensorData::from_bytes_vec(bytes, view.shape().to_vec(), dtype)
        } else {
            let at = bytes.as_ptr() as usize - map.as_ptr() as usize;
            if in_place && at.is_multiple_of(dtype.size()) {
                // the map's start is page-aligned, so `at` tells the alignment
                let mapped = Mapped { map: map.clone(), at, len: bytes.len() };
                let shared = Bytes::from_shared(bytes::Bytes::from_owner(mapped), AllocationProperty::File);
                TensorData::from_bytes(shared, view.shape().to_vec(), dtype)
            } else {
                TensorData::from_bytes_vec(bytes.to_vec(), view.shape().to_vec(), dtype)
            }
        };
        sd.insert(name, data);
    }
    Ok(sd)
}

/// One tensor's bytes in a memory-mapped file, owned by the tensor that holds them.
struct Mapped {
    map: std::sync::Arc<memmap2::Mmap>,
    at: usize,
    len: usize,
}

impl AsRef<[u8]> for Mapped {
    fn as_ref(&self) -> &[u8] {
        &self.map[self.at..self.at + self.len]
    }
}

impl Drop for Mapped {
    /// The pages wholly inside these bytes leave the process's resident set (the page cache
    /// keeps them): a tensor converted on load (to f32, to int8) then leaves no trace in RSS.
    fn drop(&mut self) {
        const PAGE: usize = 4096; // where pages are larger, the call fails unaligned and does nothing
        let (start, end) = (self.at.next_multiple_of(PAGE), (self.at + self.len) / PAGE * PAGE);
        if end > start {
            // SAFETY: a read-only mapping of a file: a page dropped here reads back from the file
            // if touched again, and no other tensor's bytes lie in these pages.
            let _ = unsafe { self.map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start) };
        }
    }
}

/// Whether weights may stay in their mapped files: yes, unless `TRL_MMAP=0` (read once).
fn mapping_allowed() -> bool {
    static ALLOWED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ALLOWED.get_or_init(|| std::env::var("TRL_MMAP").map_or(true, |v| v != "0"))
}

/// Writes tensors to one `.safetensors` file (atomically), with `{"format": "pt"}` metadata
/// so that transformers accepts it. Each tensor's bytes go straight to the file: nothing is
/// assembled in memory first.
pub fn save_safetensors(sd: &StateDict, path: &Path) -> Result<()> {
    let (header, tensors) = header_of(sd);
    save_safetensors_with(path, header, |i| std::borrow::Cow::Borrowed(tensors[i]))
}

/// A tensor's key, dtype and shape, as the `_with` writers take them before its data.
pub type TensorHeader = (String, DType, Vec<usize>);

/// `sd`'s keys, dtypes and shapes for the `_with` writers, and its tensors in the same order.
fn header_of(sd: &StateDict) -> (Vec<TensorHeader>, Vec<&TensorData>) {
    sd.tensors.iter().map(|(k, t)| ((k.clone(), t.dtype, t.shape.to_vec()), t)).unzip()
}

/// Writes a `.safetensors` file (atomically) whose tensors are made one at a time: `tensors`
/// gives each key, dtype and shape, and `data(i)` the `i`-th tensor's data when the writer
/// reaches it, so a caller can read each tensor off its device just before it is written
/// (optimizer moments, weights) and memory never holds more than one of them at once.
pub fn save_safetensors_with<'a>(
    path: &Path,
    tensors: Vec<TensorHeader>,
    mut data: impl FnMut(usize) -> std::borrow::Cow<'a, TensorData>,
) -> Result<()> {
    let bad = |reason: String| Error::Safetensors { path: path.to_path_buf(), reason };
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!({ "format": "pt" }));
    let mut sizes = Vec::with_capacity(tensors.len());
    let mut at = 0usize;
    for (key, dtype, shape) in &tensors {
        if header.contains_key(key) {
            return Err(bad(format!("the key {key} is given twice")));
        }
        let st = dtype_to_safetensors(*dtype).ok_or_else(|| Error::UnsupportedDtype {
            path: path.to_path_buf(),
            key: key.clone(),
            dtype: format!("{dtype:?}"),
        })?;
        let n = shape
            .iter()
            .try_fold(st.bitsize() / 8, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| bad(format!("{key}: shape {shape:?} is too large")))?;
        let dt = serde_json::to_value(st).map_err(|e| bad(e.to_string()))?;
        header.insert(key.clone(), serde_json::json!({ "dtype": dt, "shape": shape, "data_offsets": [at, at + n] }));
        sizes.push(n);
        at += n;
    }
    let mut text = serde_json::to_string(&header).map_err(|e| bad(e.to_string()))?.into_bytes();
    // the data starts 8-byte aligned, as the safetensors crate writes it
    text.resize(text.len().div_ceil(8) * 8, b' ');
    let mut wrong = None;
    write_atomic_with(path, |f| {
        use std::io::Write;
        let mut w = std::io::BufWriter::new(f);
        w.write_all(&(text.len() as u64).to_le_bytes())?;
        w.write_all(&text)?;
        for (i, (key, dtype, _)) in tensors.iter().enumerate() {
            let t = data(i);
            if t.dtype != *dtype || t.bytes.len() != sizes[i] {
                wrong = Some(format!(
                    "{key}: given {:?} of {} bytes, declared {dtype:?} of {}",
                    t.dtype,
                    t.bytes.len(),
                    sizes[i]
                ));
                return Err(std::io::Error::other("tensor does not match its header"));
            }
            w.write_all(&t.bytes)?;
        }
        w.flush()
    })
    .map_err(|e| wrong.take().map(bad).unwrap_or(e))
}

/// Writes a model's weights into `dir` as transformers does: one `model.safetensors`, or
/// shards `model-0000N-of-0000M.safetensors` plus `model.safetensors.index.json` when the
/// total exceeds `max_shard_size` bytes. Stale weight files of the other layout are removed.
pub fn save_weights(sd: &StateDict, dir: &Path, max_shard_size: usize) -> Result<()> {
    let (header, tensors) = header_of(sd);
    save_weights_with(dir, max_shard_size, header, |i| std::borrow::Cow::Borrowed(tensors[i]))
}

/// [`save_weights`] of tensors made one at a time, as [`save_safetensors_with`] writes them:
/// `tensors` gives each key, dtype and shape, `data(i)` the `i`-th tensor when it is written.
pub fn save_weights_with<'a>(
    dir: &Path,
    max_shard_size: usize,
    tensors: Vec<TensorHeader>,
    mut data: impl FnMut(usize) -> std::borrow::Cow<'a, TensorData>,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let bytes = |(_, d, shape): &TensorHeader| shape.iter().product::<usize>() * d.size();
    let total_size: usize = tensors.iter().map(bytes).sum();
    // shards of consecutive tensors (their indices), each at most `max_shard_size` bytes
    let mut shards: Vec<Vec<usize>> = vec![Vec::new()];
    let mut size = 0usize;
    for (i, t) in tensors.iter().enumerate() {
        let n = bytes(t);
        if size > 0 && size + n > max_shard_size {
            shards.push(Vec::new());
            size = 0;
        }
        size += n;
        shards.last_mut().expect("one shard").push(i);
    }
    let mut save = |shard: &[usize], path: &Path| {
        let header = shard.iter().map(|&i| tensors[i].clone()).collect();
        save_safetensors_with(path, header, |j| data(shard[j]))
    };
    let remove = |name: &str| {
        let p = dir.join(name);
        if p.exists() {
            std::fs::remove_file(&p).map_err(io_err(&p))
        } else {
            Ok(())
        }
    };
    if shards.len() == 1 {
        save(&shards[0], &dir.join(SAFE_WEIGHTS))?;
        return remove(SAFE_INDEX);
    }
    let total = shards.len();
    let mut weight_map = serde_json::Map::new();
    for (i, shard) in shards.iter().enumerate() {
        let name = format!("model-{:05}-of-{:05}.safetensors", i + 1, total);
        save(shard, &dir.join(&name))?;
        for &j in shard {
            weight_map.insert(tensors[j].0.clone(), serde_json::Value::String(name.clone()));
        }
    }
    let index = serde_json::json!({
        "metadata": { "total_size": total_size },
        "weight_map": weight_map,
    });
    write_json_atomic(&dir.join(SAFE_INDEX), &index)?;
    remove(SAFE_WEIGHTS)
}
