//! Legacy PyTorch `.bin` checkpoints (zip + pickle), read-only.
//!
//! `torch.save` (torch ≥ 1.6) writes a zip archive `<prefix>/data.pkl` + `<prefix>/data/<key>`.
//! The pickle (protocol 2) holds a dict whose values are built by
//! `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, meta])`
//! (or `_rebuild_tensor_v3(…, dtype, meta)` for dtypes without a legacy storage class, which
//! pair a `torch.storage.UntypedStorage` with a `torch.<dtype>` global), where `storage` is a
//! persistent id `('storage', torch.FloatStorage, key, location, numel)` naming the raw
//! little-endian bytes in `<prefix>/data/<key>`. A tiny pickle VM below evaluates just the
//! opcodes such files use; tensors are views (offset + strides) that are materialised, once
//! the whole pickle is read, into contiguous row-major bytes, so tied weights and slices work.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::io::{BufReader, Read};
use std::path::Path;
use std::rc::Rc;

use burn::tensor::{BoolStore, DType, TensorData};

use crate::error::{Error, Result};
use crate::state_dict::StateDict;

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

/// Drops values without recursion: a container's items are moved out (when this is its last
/// reference) before it is dropped, so that a deeply nested pickle (a million nested tuples
/// are a few megabytes) cannot overflow the stack. Reference cycles (a list appended to
/// itself) are leaked, as `Rc` cycles are.
fn dismantle(mut todo: Vec<Value>) {
    while let Some(v) = todo.pop() {
        match v {
            Value::Tuple(mut t) => {
                if let Some(items) = Rc::get_mut(&mut t) {
                    todo.extend(items.iter_mut().map(|x| std::mem::replace(x, Value::None)));
                }
            }
            Value::List(mut l) => {
                if let Some(cell) = Rc::get_mut(&mut l) {
                    todo.append(cell.get_mut());
                }
            }
            Value::Dict(mut d) => {
                if let Some(cell) = Rc::get_mut(&mut d) {
                    todo.extend(cell.get_mut().drain(..).flat_map(|(k, v)| [k, v]));
                }
            }
            _ => {}
        }
    }
}

fn read_entry<R: Read + std::io::Seek>(zip: &mut zip::ZipArchive<R>, name: &str) -> Result<Vec<u8>, String> {
    let mut f = zip.by_name(name).map_err(|e| format!("`{name}`: {e}"))?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).map_err(|e| format!("`{name}`: {e}"))?;
    Ok(buf)
}

/// Legacy storage class, torch dtype name, burn dtype, element size: the dtypes trl-rs holds.
#[rustfmt::skip]
const DTYPES: &[(&str, &str, DType, usize)] = &[
    ("FloatStorage", "float32", DType::F32, 4), ("HalfStorage", "float16", DType::F16, 2),
    ("BFloat16Storage", "bfloat16", DType::BF16, 2), ("DoubleStorage", "float64", DType::F64, 8),
    ("LongStorage", "int64", DType::I64, 8), ("IntStorage", "int32", DType::I32, 4),
    ("ShortStorage", "int16", DType::I16, 2), ("CharStorage", "int8", DType::I8, 1),
    ("ByteStorage", "uint8", DType::U8, 1), ("BoolStorage", "bool", DType::Bool(BoolStore::Native), 1),
];

/// The burn dtype and element size of a torch dtype name (`float32`).
fn dtype_of(torch: &str) -> Option<(DType, usize)> {
    DTYPES.iter().find(|d| d.1 == torch).map(|d| (d.2, d.3))
}

/// The torch dtype name of a storage class (`torch.FloatStorage` → `float32`); an untyped
/// storage is bytes (`_rebuild_tensor_v3` then names the dtype), and an unknown class keeps
/// its name so that the error can show it.
fn storage_dtype(class: &str) -> String {
    let name = class.strip_prefix("torch.").unwrap_or(class);
    let found = DTYPES.iter().find(|d| d.0 == name).map(|d| d.1);
    found.unwrap_or(if name == "storage.UntypedStorage" { "uint8" } else { name }).to_string()
}

/// Copies a strided view of `bytes` into contiguous row-major order, refusing to make a copy
/// of more than `limit` bytes.
fn materialise(t: &TensorRef, bytes: &[u8], esize: usize, limit: usize) -> Result<Vec<u8>, String> {
    let overflow = || "shape or strides overflow".to_string();
    let numel = t.size.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or_else(overflow)?;
    if numel == 0 {
        return Ok(Vec::new());
    }
    let mut last = t.offset;
    for (&d, &s) in t.size.iter().zip(&t.stride) {
        last = (d - 1).checked_mul(s).and_then(|x| x.checked_add(last)).ok_or_else(overflow)?;
    }
    let need = last.checked_add(1).and_then(|x| x.checked_mul(esize)).ok_or_else(overflow)?;
    if need > bytes.len() {
        let (o, sz, st, have) = (t.offset, &t.size, &t.stride, bytes.len());
        return Err(format!("view (offset {o}, size {sz:?}, stride {st:?}) needs {need} bytes, storage has {have}"));
    }
    let total = numel.checked_mul(esize).ok_or_else(overflow)?;
    if total > limit {
        let (sz, st, have) = (&t.size, &t.stride, bytes.len());
        return Err(format!(
            "view (size {sz:?}, stride {st:?}) would copy {total} bytes out of a {have}-byte storage, more than \
             trl-rs copies for views that expand or repeat their storage; re-save the tensors contiguous \
             (`{{k: v.contiguous().clone() for k, v in sd.items()}}`)"
        ));
    }
    let mut out = Vec::new();
    out.try_reserve_exact(total).map_err(|e| format!("cannot allocate {total} bytes: {e}"))?;
    let mut expect = 1usize; // row-major strides, ignoring dims of size 1
    let contiguous = t.size.iter().zip(&t.stride).rev().all(|(&d, &s)| {
        let ok = d == 1 || s == expect;
        expect *= d;
        ok
    });
    if contiguous {
        out.extend_from_slice(&bytes[t.offset * esize..t.offset * esize + total]);
        return Ok(out);
    }
    // The stride of a size-1 dim is never used (and may be anything); with it zeroed, every
    // position below stays within `last + stride ≤ 2 · last`.
    let stride: Vec<usize> = t.size.iter().zip(&t.stride).map(|(&d, &s)| if d == 1 { 0 } else { s }).collect();
    let mut idx = vec![0usize; t.size.len()];
    let mut pos = t.offset;
    'outer: loop {
        out.extend_from_slice(&bytes[pos * esize..(pos + 1) * esize]);
        for d in (0..idx.len()).rev() {
            idx[d] += 1;
            pos += stride[d];
            if idx[d] < t.size[d] {
                continue 'outer;
            }
            pos -= stride[d] * t.size[d];
            idx[d] = 0;
        }
        return Ok(out);
    }
}

/// A tensor view as the pickle describes it.
#[derive(Debug)]
struct TensorRef {
    storage: Rc<StorageRef>,
    dtype: String,
    offset: usize,
    size: Vec<usize>,
    stride: Vec<usize>,
}

#[derive(Debug)]
struct StorageRef {
    key: String,
    dtype: String,
}

#[derive(Debug, Clone)]
enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Rc<str>),
    Tuple(Rc<[Value]>),
    List(Rc<RefCell<Vec<Value>>>),
    Dict(Rc<RefCell<Vec<(Value, Value)>>>),
    /// `module.name` of a GLOBAL.
    Global(Rc<str>),
    Storage(Rc<StorageRef>),
    Tensor(Rc<TensorRef>),
    /// What calling a global we do not model produced; carries the global's name.
    Object(Rc<str>),
}

impl Value {
    /// What the value is, for error messages.
    fn kind(&self) -> String {
        match self {
            Value::Bool(b) => format!("the bool {b}"),
            Value::Int(i) => format!("the int {i}"),
            Value::Float(f) => format!("the float {f}"),
            Value::Global(g) => format!("the global `{g}`"),
            Value::Object(g) => format!("a `{g}` object"),
            Value::Str(_) => "a string".into(),
            Value::None => "None".into(),
            Value::Tuple(_) => "a tuple".into(),
            Value::List(_) => "a list".into(),
            Value::Dict(_) => "a dict".into(),
            Value::Storage(_) => "a storage".into(),
            Value::Tensor(_) => "a tensor".into(),
        }
    }

    fn usize(&self, what: &str) -> Result<usize, String> {
        match self {
            Value::Int(i) => usize::try_from(*i).map_err(|_| format!("{what} is negative ({i})")),
            v => Err(format!("{what} is {}, not an int", v.kind())),
        }
    }

    fn usizes(&self, what: &str) -> Result<Vec<usize>, String> {
        match self {
            Value::Tuple(t) => t.iter().map(|v| v.usize(what)).collect(),
            v => Err(format!("{what} is {}, not a tuple", v.kind())),
        }
    }
}

/// Just enough of the pickle machine for `torch.save`d state dicts.
struct Vm<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u64, Value>,
}

impl Drop for Vm<'_> {
    fn drop(&mut self) {
        let mut values = std::mem::take(&mut self.stack);
        values.extend(self.memo.drain().map(|(_, v)| v));
        dismantle(values);
    }
}

impl<'a> Vm<'a> {
    fn new(data: &'a [u8]) -> Self {
        Self { data, pos: 0, stack: Vec::new(), marks: Vec::new(), memo: HashMap::new() }
    }

    /// Runs to STOP; an error names the opcode and its byte offset.
    fn run(mut self) -> Result<Value, String> {
        loop {
            let at = self.pos;
            let op = *self.data.get(at).ok_or_else(|| format!("pickle truncated at byte {at} (no STOP)"))?;
            self.pos += 1;
            let Some(&(_, name, width)) = OPS.iter().find(|o| o.0 == op) else {
                return Err(format!("unsupported pickle opcode 0x{op:02x} at byte {at}"));
            };
            match self.uint(width).and_then(|arg| self.step(op, arg)) {
                Ok(Some(root)) => return Ok(root),
                Ok(None) => {}
                Err(e) => return Err(format!("{name} at byte {at}: {e}")),
            }
        }
    }

    /// One opcode with its fixed-size argument; `Some` once STOP pops the result.
    fn step(&mut self, op: u8, arg: u64) -> Result<Option<Value>, String> {
        let value = match op {
            b'.' => return self.pop().map(Some),
            0x80 | 0x95 => return Ok(None), // PROTO, FRAME: nothing beyond the argument
            b'(' => {
                self.marks.push(self.stack.len());
                return Ok(None);
            }
            b'}' => Value::Dict(Default::default()),
            b']' => Value::List(Default::default()),
            b')' => Value::Tuple(Rc::new([])),
            b't' => Value::Tuple(self.pop_mark()?.into()),
            0x85..=0x87 => {
                let start = self.stack.len().checked_sub((op - 0x84) as usize).ok_or("stack underflow")?;
                Value::Tuple(self.stack.split_off(start).into())
            }
            b'X' | 0x8c | 0x8d => {
                let n = usize::try_from(arg).map_err(|_| format!("length {arg} too large"))?;
                Value::Str(std::str::from_utf8(self.take(n)?).map_err(|e| format!("invalid UTF-8: {e}"))?.into())
            }
            b'K' | b'M' => Value::Int(arg as i64),
            b'J' => Value::Int(arg as u32 as i32 as i64),
            0x8a | 0x8b => {
                let b = self.take(arg as usize)?;
                if b.len() > 8 {
                    return Err(format!("{}-byte integer does not fit in 64 bits", b.len()));
                }
                let mut buf = [if b.last().is_some_and(|&x| x & 0x80 != 0) { 0xff } else { 0 }; 8];
                buf[..b.len()].copy_from_slice(b);
                Value::Int(i64::from_le_bytes(buf))
            }
            0x88 | 0x89 => Value::Bool(op == 0x88),
            b'N' => Value::None,
            b'G' => Value::Float(f64::from_bits(arg.swap_bytes())), // the one big-endian argument
            b'c' => Value::Global(format!("{}.{}", self.line()?, self.line()?).into()),
            0x93 => match (self.pop()?, self.pop()?) {
                (Value::Str(attr), Value::Str(module)) => Value::Global(format!("{module}.{attr}").into()),
                _ => return Err("module and name must be strings".into()),
            },
            b'R' | 0x81 => {
                let (args, f) = (self.pop()?, self.pop()?);
                call(&f, &args)?
            }
            b'b' => {
                self.pop()?; // BUILD's state (a state dict's `_metadata`) is not needed
                return self.top().map(|_| None);
            }
            b'Q' => persistent_load(&self.pop()?)?,
            b'q' | b'r' | 0x94 => {
                let v = self.top()?.clone();
                self.memo.insert(if op == 0x94 { self.memo.len() as u64 } else { arg }, v);
                return Ok(None);
            }
            b'h' | b'j' => self.memo.get(&arg).cloned().ok_or_else(|| format!("memo slot {arg} is empty"))?,
            b's' | b'u' | b'a' | b'e' => {
                let items = match op {
                    b's' => self.stack.split_off(self.stack.len().saturating_sub(2)),
                    b'a' => vec![self.pop()?],
                    _ => self.pop_mark()?,
                };
                match self.top()? {
                    Value::Dict(d) if op == b's' || op == b'u' => {
                        if !items.len().is_multiple_of(2) {
                            return Err("odd number of items".into());
                        }
                        let mut it = items.into_iter();
                        while let (Some(k), Some(v)) = (it.next(), it.next()) {
                            d.borrow_mut().push((k, v));
                        }
                    }
                    Value::List(l) if op == b'a' || op == b'e' => l.borrow_mut().extend(items),
                    v => return Err(format!("cannot add items to {}", v.kind())),
                }
                return Ok(None);
            }
            b'0' => return self.pop().map(|_| None),
            b'1' => return self.pop_mark().map(|_| None),
            b'2' => self.top()?.clone(),
            _ => return Err("not supported by this reader".into()),
        };
        self.stack.push(value);
        Ok(None)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len()).ok_or("pickle truncated")?;
        let bytes = &self.data[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    /// A little-endian unsigned argument of `n` bytes (0 → 0).
    fn uint(&mut self, n: usize) -> Result<u64, String> {
        Ok(self.take(n)?.iter().rev().fold(0u64, |a, &b| (a << 8) | b as u64))
    }

    fn line(&mut self) -> Result<String, String> {
        let rest = &self.data[self.pos..];
        let n = rest.iter().position(|&b| b == b'\n').ok_or("pickle truncated")?;
        self.pos += n + 1;
        Ok(String::from_utf8_lossy(&rest[..n]).into_owned())
    }

    fn pop(&mut self) -> Result<Value, String> {
        self.stack.pop().ok_or_else(|| "stack underflow".into())
    }

    fn top(&mut self) -> Result<&mut Value, String> {
        self.stack.last_mut().ok_or_else(|| "stack underflow".into())
    }

    fn pop_mark(&mut self) -> Result<Vec<Value>, String> {
        let m = self.marks.pop().filter(|&m| m <= self.stack.len()).ok_or("no matching MARK")?;
        Ok(self.stack.split_off(m))
    }
}

/// The opcodes the VM runs: byte, name (for errors), size of the fixed argument that follows.
#[rustfmt::skip]
const OPS: &[(u8, &str, usize)] = &[
    (b'.', "STOP", 0), (0x80, "PROTO", 1), (0x95, "FRAME", 8), (b'(', "MARK", 0), (b'}', "EMPTY_DICT", 0),
    (b']', "EMPTY_LIST", 0), (b')', "EMPTY_TUPLE", 0), (b't', "TUPLE", 0), (0x85, "TUPLE1", 0),
    (0x86, "TUPLE2", 0), (0x87, "TUPLE3", 0), (b'X', "BINUNICODE", 4), (0x8c, "SHORT_BINUNICODE", 1),
    (0x8d, "BINUNICODE8", 8), (b'K', "BININT1", 1), (b'M', "BININT2", 2), (b'J', "BININT", 4),
    (0x8a, "LONG1", 1), (0x8b, "LONG4", 4), (0x88, "NEWTRUE", 0), (0x89, "NEWFALSE", 0), (b'N', "NONE", 0),
    (b'G', "BINFLOAT", 8), (b'c', "GLOBAL", 0), (0x93, "STACK_GLOBAL", 0), (b'R', "REDUCE", 0),
    (0x81, "NEWOBJ", 0), (b'b', "BUILD", 0), (b'Q', "BINPERSID", 0), (b'q', "BINPUT", 1),
    (b'r', "LONG_BINPUT", 4), (0x94, "MEMOIZE", 0), (b'h', "BINGET", 1), (b'j', "LONG_BINGET", 4),
    (b's', "SETITEM", 0), (b'u', "SETITEMS", 0), (b'a', "APPEND", 0), (b'e', "APPENDS", 0),
    (b'0', "POP", 0), (b'1', "POP_MARK", 0), (b'2', "DUP", 0),
];

/// REDUCE / NEWOBJ: the few callables state dicts use; anything else becomes an opaque object.
fn call(f: &Value, args: &Value) -> Result<Value, String> {
    let Value::Global(name) = f else { return Err(format!("cannot call {}", f.kind())) };
    let Value::Tuple(args) = args else { return Err(format!("`{name}` called with {}", args.kind())) };
    match &**name {
        "collections.OrderedDict" | "builtins.dict" | "__builtin__.dict" => Ok(Value::Dict(Default::default())),
        "torch._utils._rebuild_tensor_v2" | "torch._utils._rebuild_tensor_v3" => {
            let v3 = name.ends_with("v3");
            if args.len() < if v3 { 7 } else { 6 } {
                return Err(format!("`{name}` needs more arguments than {}", args.len()));
            }
            let Value::Storage(storage) = &args[0] else {
                return Err(format!("`{name}`: first argument is {}, not a storage", args[0].kind()));
            };
            let dtype = match &args[if v3 { 6 } else { 0 }] {
                _ if !v3 => storage.dtype.clone(),
                Value::Global(g) => g.strip_prefix("torch.").unwrap_or(g).to_string(),
                v => return Err(format!("`{name}`: dtype is {}", v.kind())),
            };
            let (size, stride) = (args[2].usizes("size")?, args[3].usizes("stride")?);
            if size.len() != stride.len() {
                return Err(format!("size {size:?} and stride {stride:?} differ in rank"));
            }
            let offset = args[1].usize("storage_offset")?;
            Ok(Value::Tensor(Rc::new(TensorRef { storage: storage.clone(), dtype, offset, size, stride })))
        }
        "torch._utils._rebuild_parameter" | "torch._utils._rebuild_parameter_with_state" => {
            args.first().cloned().ok_or_else(|| format!("`{name}` without arguments"))
        }
        _ => Ok(Value::Object(name.clone())),
    }
}

/// BINPERSID: `('storage', <storage class>, key, location, numel)`.
fn persistent_load(pid: &Value) -> Result<Value, String> {
    let Value::Tuple(t) = pid else { return Err(format!("persistent id is {}, not a tuple", pid.kind())) };
    match &t[..] {
        [Value::Str(tag), Value::Global(class), Value::Str(key), ..] if &**tag == "storage" => {
            Ok(Value::Storage(Rc::new(StorageRef { key: key.to_string(), dtype: storage_dtype(class) })))
        }
        _ => Err("persistent id is not ('storage', class, key, location, numel)".into()),
    }
}

#[cfg(test)]
mod tests;
