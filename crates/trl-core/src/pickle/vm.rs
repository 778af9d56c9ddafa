//! Just enough of the pickle machine (protocol 2) for `torch.save`d state dicts: the values it
//! builds, the opcodes it runs, and the few callables (`_rebuild_tensor_v2`/`v3`,
//! `OrderedDict`) and persistent ids (storages) it understands.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use super::tensor::{storage_dtype, StorageRef, TensorRef};

#[derive(Debug, Clone)]
pub(super) enum Value {
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
    pub(super) fn kind(&self) -> String {
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
pub(super) struct Vm<'a> {
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
    pub(super) fn new(data: &'a [u8]) -> Self {
        Self { data, pos: 0, stack: Vec::new(), marks: Vec::new(), memo: HashMap::new() }
    }

    /// Runs to STOP; an error names the opcode and its byte offset.
    pub(super) fn run(mut self) -> Result<Value, String> {
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

/// Drops values without recursion: a container's items are moved out (when this is its last
/// reference) before it is dropped, so that a deeply nested pickle (a million nested tuples
/// are a few megabytes) cannot overflow the stack. Reference cycles (a list appended to
/// itself) are leaked, as `Rc` cycles are.
pub(super) fn dismantle(mut todo: Vec<Value>) {
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
