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
use std::collections::HashMap;
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
    let root = Vm::new(&pkl).run().map_err(&err)?;
    let Value::Dict(items) = root else {
        return Err(err(format!("the pickle holds {}, not a dict of tensors", root.kind())));
    };
    let items = items.borrow();
    let mut entries = Vec::new();
    let mut uses: HashMap<&str, usize> = HashMap::new();
    for (k, v) in items.iter() {
        let Value::Str(key) = k else { return Err(err(format!("a dict key is {}, not a string", k.kind()))) };
        match v {
            Value::Tensor(t) => {
                *uses.entry(&t.storage.key).or_default() += 1;
                entries.push((key, t));
            }
            Value::Object(name) if name.starts_with("torch") => {
                return Err(err(format!("`{key}` is a `{name}`, which is not a plain dense tensor")))
            }
            _ => {} // non-tensor entries (ints, nested metadata) are not weights
        }
    }
    let mut cache: HashMap<&str, Rc<Vec<u8>>> = HashMap::new();
    let mut sd = StateDict::new();
    for (key, t) in entries {
        let skey = t.storage.key.as_str();
        let (dtype, esize) = dtype_of(&t.dtype).ok_or_else(|| Error::UnsupportedDtype {
            path: path.to_path_buf(),
            key: key.to_string(),
            dtype: t.dtype.clone(),
        })?;
        let bytes = match cache.get(skey) {
            Some(b) => b.clone(),
            None => {
                let b = read_entry(&mut zip, &format!("{prefix}data/{skey}"))
                    .map_err(|e| err(format!("`{key}`: storage `{skey}`: {e}")))?;
                cache.entry(skey).or_insert(Rc::new(b)).clone()
            }
        };
        let mut data = materialise(t, &bytes, esize).map_err(|e| err(format!("`{key}`: {e}")))?;
        if dtype == DType::Bool(BoolStore::Native) {
            data.iter_mut().for_each(|b| *b = (*b != 0) as u8); // a bool must be 0 or 1
        }
        if let Some(left) = uses.get_mut(skey) {
            *left -= 1;
            if *left == 0 {
                cache.remove(skey); // free each storage after its last view
            }
        }
        sd.insert(key.to_string(), TensorData::from_bytes_vec(data, t.size.clone(), dtype));
    }
    Ok(sd)
}

fn read_entry<R: Read + std::io::Seek>(zip: &mut zip::ZipArchive<R>, name: &str) -> Result<Vec<u8>, String> {
    let mut f = zip.by_name(name).map_err(|e| format!("`{name}`: {e}"))?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).map_err(|e| format!("`{name}`: {e}"))?;
    Ok(buf)
}

/// The burn dtype and element size of a torch dtype name, for the dtypes trl-rs holds.
fn dtype_of(torch: &str) -> Option<(DType, usize)> {
    Some(match torch {
        "float32" => (DType::F32, 4),
        "float16" => (DType::F16, 2),
        "bfloat16" => (DType::BF16, 2),
        "float64" => (DType::F64, 8),
        "int64" => (DType::I64, 8),
        "int32" => (DType::I32, 4),
        "int16" => (DType::I16, 2),
        "int8" => (DType::I8, 1),
        "uint8" => (DType::U8, 1),
        "bool" => (DType::Bool(BoolStore::Native), 1),
        _ => return None,
    })
}

/// The torch dtype name of a legacy typed storage class (`torch.FloatStorage` → `float32`).
fn storage_dtype(class: &str) -> String {
    let name = class.strip_prefix("torch.").unwrap_or(class);
    match name {
        "FloatStorage" => "float32",
        "HalfStorage" => "float16",
        "BFloat16Storage" => "bfloat16",
        "DoubleStorage" => "float64",
        "LongStorage" => "int64",
        "IntStorage" => "int32",
        "ShortStorage" => "int16",
        "CharStorage" => "int8",
        "ByteStorage" | "storage.UntypedStorage" => "uint8",
        "BoolStorage" => "bool",
        other => other,
    }
    .to_string()
}

/// Copies a strided view of `bytes` into contiguous row-major order.
fn materialise(t: &TensorRef, bytes: &[u8], esize: usize) -> Result<Vec<u8>, String> {
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
        return Err(format!(
            "view (offset {}, size {:?}, stride {:?}) needs {need} bytes, storage has {}",
            t.offset,
            t.size,
            t.stride,
            bytes.len()
        ));
    }
    let total = numel.checked_mul(esize).ok_or_else(overflow)?;
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
    let mut idx = vec![0usize; t.size.len()];
    let mut pos = t.offset;
    'outer: loop {
        out.extend_from_slice(&bytes[pos * esize..(pos + 1) * esize]);
        for d in (0..idx.len()).rev() {
            idx[d] += 1;
            pos += t.stride[d];
            if idx[d] < t.size[d] {
                continue 'outer;
            }
            pos -= t.stride[d] * t.size[d];
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
    fn kind(&self) -> String {
        match self {
            Value::None => "None".into(),
            Value::Bool(b) => format!("the bool {b}"),
            Value::Int(i) => format!("the int {i}"),
            Value::Float(f) => format!("the float {f}"),
            Value::Str(_) => "a string".into(),
            Value::Tuple(_) => "a tuple".into(),
            Value::List(_) => "a list".into(),
            Value::Dict(_) => "a dict".into(),
            Value::Global(g) => format!("the global `{g}`"),
            Value::Storage(_) => "a storage".into(),
            Value::Tensor(_) => "a tensor".into(),
            Value::Object(g) => format!("a `{g}` object"),
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
    memo: HashMap<u32, Value>,
}

impl<'a> Vm<'a> {
    fn new(data: &'a [u8]) -> Self {
        Self { data, pos: 0, stack: Vec::new(), marks: Vec::new(), memo: HashMap::new() }
    }

    fn take(&mut self, n: usize, op: &str) -> Result<&'a [u8], String> {
        let start = self.pos;
        let end = start.checked_add(n).filter(|&e| e <= self.data.len());
        let end = end.ok_or_else(|| format!("pickle truncated in {op} at byte {start}"))?;
        self.pos = end;
        Ok(&self.data[start..end])
    }

    fn uint(&mut self, n: usize, op: &str) -> Result<u64, String> {
        Ok(self.take(n, op)?.iter().rev().fold(0u64, |a, &b| (a << 8) | b as u64))
    }

    fn line(&mut self, op: &str) -> Result<String, String> {
        let rest = &self.data[self.pos..];
        let n = rest.iter().position(|&b| b == b'\n').ok_or_else(|| format!("pickle truncated in {op}"))?;
        let s = String::from_utf8_lossy(&rest[..n]).into_owned();
        self.pos += n + 1;
        Ok(s)
    }

    fn string(&mut self, n: u64, op: &str) -> Result<Value, String> {
        let n = usize::try_from(n).map_err(|_| format!("{op}: length {n} too large"))?;
        let bytes = self.take(n, op)?;
        let s = std::str::from_utf8(bytes).map_err(|e| format!("{op}: invalid UTF-8: {e}"))?;
        Ok(Value::Str(s.into()))
    }

    fn pop(&mut self, op: &str) -> Result<Value, String> {
        self.stack.pop().ok_or_else(|| format!("stack underflow in {op} at byte {}", self.pos))
    }

    fn pop_mark(&mut self, op: &str) -> Result<Vec<Value>, String> {
        let m = self.marks.pop().filter(|&m| m <= self.stack.len());
        let m = m.ok_or_else(|| format!("{op} without a matching MARK at byte {}", self.pos))?;
        Ok(self.stack.split_off(m))
    }

    fn top(&mut self, op: &str) -> Result<&mut Value, String> {
        let pos = self.pos;
        self.stack.last_mut().ok_or_else(|| format!("stack underflow in {op} at byte {pos}"))
    }

    fn memo_put(&mut self, idx: u32, op: &str) -> Result<(), String> {
        let v = self.top(op)?.clone();
        self.memo.insert(idx, v);
        Ok(())
    }

    fn memo_get(&mut self, idx: u32, op: &str) -> Result<(), String> {
        let v = self.memo.get(&idx).cloned().ok_or_else(|| format!("{op}: memo slot {idx} is empty"))?;
        self.stack.push(v);
        Ok(())
    }

    fn set_items(&mut self, items: Vec<Value>, op: &str) -> Result<(), String> {
        if items.len() % 2 != 0 {
            return Err(format!("{op}: odd number of items"));
        }
        let Value::Dict(d) = self.top(op)? else { return Err(format!("{op} on a non-dict")) };
        let mut d = d.borrow_mut();
        let mut it = items.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            d.push((k, v));
        }
        Ok(())
    }

    fn append(&mut self, items: Vec<Value>, op: &str) -> Result<(), String> {
        let Value::List(l) = self.top(op)? else { return Err(format!("{op} on a non-list")) };
        l.borrow_mut().extend(items);
        Ok(())
    }

    fn run(mut self) -> Result<Value, String> {
        loop {
            let at = self.pos;
            let op = *self.take(1, "opcode")?.first().expect("one byte");
            match op {
                0x80 => drop(self.take(1, "PROTO")?),
                0x95 => drop(self.take(8, "FRAME")?),
                b'}' => self.stack.push(Value::Dict(Default::default())),
                b']' => self.stack.push(Value::List(Default::default())),
                b')' => self.stack.push(Value::Tuple(Rc::new([]))),
                b'(' => self.marks.push(self.stack.len()),
                b't' => {
                    let items = self.pop_mark("TUPLE")?;
                    self.stack.push(Value::Tuple(items.into()));
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let len = self.stack.len();
                    if len < n {
                        return Err(format!("stack underflow in TUPLE{n} at byte {at}"));
                    }
                    let items = self.stack.split_off(len - n);
                    self.stack.push(Value::Tuple(items.into()));
                }
                b'X' => {
                    let n = self.uint(4, "BINUNICODE")?;
                    let s = self.string(n, "BINUNICODE")?;
                    self.stack.push(s);
                }
                0x8c => {
                    let n = self.uint(1, "SHORT_BINUNICODE")?;
                    let s = self.string(n, "SHORT_BINUNICODE")?;
                    self.stack.push(s);
                }
                0x8d => {
                    let n = self.uint(8, "BINUNICODE8")?;
                    let s = self.string(n, "BINUNICODE8")?;
                    self.stack.push(s);
                }
                b'J' => {
                    let v = self.uint(4, "BININT")? as u32 as i32;
                    self.stack.push(Value::Int(v as i64));
                }
                b'K' => {
                    let v = self.uint(1, "BININT1")?;
                    self.stack.push(Value::Int(v as i64));
                }
                b'M' => {
                    let v = self.uint(2, "BININT2")?;
                    self.stack.push(Value::Int(v as i64));
                }
                0x8a | 0x8b => {
                    let name = if op == 0x8a { "LONG1" } else { "LONG4" };
                    let n = self.uint(if op == 0x8a { 1 } else { 4 }, name)? as usize;
                    if n > 8 {
                        return Err(format!("{name} at byte {at}: {n}-byte integer does not fit in 64 bits"));
                    }
                    let b = self.take(n, name)?;
                    let neg = b.last().is_some_and(|&x| x & 0x80 != 0);
                    let mut buf = [if neg { 0xff } else { 0 }; 8];
                    buf[..n].copy_from_slice(b);
                    self.stack.push(Value::Int(i64::from_le_bytes(buf)));
                }
                0x88 => self.stack.push(Value::Bool(true)),
                0x89 => self.stack.push(Value::Bool(false)),
                b'N' => self.stack.push(Value::None),
                b'G' => {
                    let b = self.take(8, "BINFLOAT")?;
                    self.stack.push(Value::Float(f64::from_be_bytes(b.try_into().expect("8 bytes"))));
                }
                b'c' => {
                    let module = self.line("GLOBAL")?;
                    let name = self.line("GLOBAL")?;
                    self.stack.push(Value::Global(format!("{module}.{name}").into()));
                }
                0x93 => {
                    let (name, module) = (self.pop("STACK_GLOBAL")?, self.pop("STACK_GLOBAL")?);
                    let (Value::Str(m), Value::Str(n)) = (&module, &name) else {
                        return Err(format!("STACK_GLOBAL at byte {at}: module and name must be strings"));
                    };
                    self.stack.push(Value::Global(format!("{m}.{n}").into()));
                }
                b'R' | 0x81 => {
                    let name = if op == b'R' { "REDUCE" } else { "NEWOBJ" };
                    let args = self.pop(name)?;
                    let f = self.pop(name)?;
                    let v = call(&f, &args).map_err(|e| format!("{name} at byte {at}: {e}"))?;
                    self.stack.push(v);
                }
                b'b' => {
                    self.pop("BUILD")?; // state (e.g. a state dict's `_metadata`) is not needed
                    self.top("BUILD")?;
                }
                b'Q' => {
                    let pid = self.pop("BINPERSID")?;
                    let v = persistent_load(&pid).map_err(|e| format!("BINPERSID at byte {at}: {e}"))?;
                    self.stack.push(v);
                }
                b'q' => {
                    let i = self.uint(1, "BINPUT")? as u32;
                    self.memo_put(i, "BINPUT")?;
                }
                b'r' => {
                    let i = self.uint(4, "LONG_BINPUT")? as u32;
                    self.memo_put(i, "LONG_BINPUT")?;
                }
                0x94 => {
                    let i = self.memo.len() as u32;
                    self.memo_put(i, "MEMOIZE")?;
                }
                b'h' => {
                    let i = self.uint(1, "BINGET")? as u32;
                    self.memo_get(i, "BINGET")?;
                }
                b'j' => {
                    let i = self.uint(4, "LONG_BINGET")? as u32;
                    self.memo_get(i, "LONG_BINGET")?;
                }
                b's' => {
                    let v = self.pop("SETITEM")?;
                    let k = self.pop("SETITEM")?;
                    self.set_items(vec![k, v], "SETITEM")?;
                }
                b'u' => {
                    let items = self.pop_mark("SETITEMS")?;
                    self.set_items(items, "SETITEMS")?;
                }
                b'a' => {
                    let v = self.pop("APPEND")?;
                    self.append(vec![v], "APPEND")?;
                }
                b'e' => {
                    let items = self.pop_mark("APPENDS")?;
                    self.append(items, "APPENDS")?;
                }
                b'0' => drop(self.pop("POP")?),
                b'1' => drop(self.pop_mark("POP_MARK")?),
                b'2' => {
                    let v = self.top("DUP")?.clone();
                    self.stack.push(v);
                }
                b'.' => return self.pop("STOP"),
                _ => return Err(format!("unsupported pickle opcode 0x{op:02x} at byte {at}")),
            }
        }
    }
}

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
mod tests {
    use super::*;

    fn run(bytes: &[u8]) -> Result<Value, String> {
        Vm::new(bytes).run()
    }

    #[test]
    fn vm_reads_basic_values() {
        // {'a': (1, -2, 300, True, None, 1.5)} built by hand, protocol 2.
        let mut p = vec![0x80, 2, b'}', b'q', 0, b'X', 1, 0, 0, 0, b'a', b'(', b'K', 1];
        p.extend([0x8a, 1, 0xfe, b'M', 0x2c, 1, 0x88, b'N', b'G']);
        p.extend(1.5f64.to_be_bytes());
        p.extend([b't', b's', b'.']);
        let Value::Dict(d) = run(&p).unwrap() else { panic!("not a dict") };
        let d = d.borrow();
        let Value::Tuple(t) = &d[0].1 else { panic!("not a tuple") };
        assert!(matches!(t[..], [Value::Int(1), Value::Int(-2), Value::Int(300), Value::Bool(true), Value::None, _]));
        assert!(matches!(t[5], Value::Float(f) if f == 1.5));
    }

    #[test]
    fn vm_errors_name_the_opcode() {
        assert!(run(&[0x80, 2, b'X', 9, 0]).unwrap_err().contains("BINUNICODE"));
        assert!(run(&[0x80, 2, b'h', 3]).unwrap_err().contains("memo slot 3"));
        assert!(run(&[0x80, 2, b'u']).unwrap_err().contains("SETITEMS"));
        assert!(run(&[0x80, 2, 0xff]).unwrap_err().contains("0xff"));
        assert!(run(&[0x80, 2]).unwrap_err().contains("truncated"));
    }

    #[test]
    fn strided_views_materialise_row_major() {
        let storage = Rc::new(StorageRef { key: "0".into(), dtype: "uint8".into() });
        let bytes: Vec<u8> = (0..12).collect();
        let view = |offset, size: Vec<usize>, stride: Vec<usize>| TensorRef {
            storage: storage.clone(),
            dtype: "uint8".into(),
            offset,
            size,
            stride,
        };
        // [3, 4] transposed to [4, 3].
        assert_eq!(materialise(&view(0, vec![4, 3], vec![1, 4]), &bytes, 1).unwrap(), [0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11]);
        assert_eq!(materialise(&view(4, vec![2, 4], vec![4, 1]), &bytes, 1).unwrap(), (4..12).collect::<Vec<u8>>());
        assert_eq!(materialise(&view(2, vec![], vec![]), &bytes, 1).unwrap(), [2]);
        assert!(materialise(&view(5, vec![2, 4], vec![4, 1]), &bytes, 1).unwrap_err().contains("needs 13 bytes"));
        assert!(materialise(&view(0, vec![usize::MAX, 2], vec![1, 1]), &bytes, 1).is_err());
    }
}
