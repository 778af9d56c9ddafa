//! Tensor views as a pickle describes them ([`TensorRef`] over a [`StorageRef`]), the torch
//! dtypes trl-rs holds, and the copy of a strided view into contiguous row-major bytes.

use std::rc::Rc;

use burn::tensor::{BoolStore, DType};

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
pub(super) fn dtype_of(torch: &str) -> Option<(DType, usize)> {
    DTYPES.iter().find(|d| d.1 == torch).map(|d| (d.2, d.3))
}

/// The torch dtype name of a storage class (`torch.FloatStorage` → `float32`); an untyped
/// storage is bytes (`_rebuild_tensor_v3` then names the dtype), and an unknown class keeps
/// its name so that the error can show it.
pub(super) fn storage_dtype(class: &str) -> String {
    let name = class.strip_prefix("torch.").unwrap_or(class);
    let found = DTYPES.iter().find(|d| d.0 == name).map(|d| d.1);
    found.unwrap_or(if name == "storage.UntypedStorage" { "uint8" } else { name }).to_string()
}

/// Copies a strided view of `bytes` into contiguous row-major order, refusing to make a copy
/// of more than `limit` bytes.
pub(super) fn materialise(t: &TensorRef, bytes: &[u8], esize: usize, limit: usize) -> Result<Vec<u8>, String> {
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
pub(super) struct TensorRef {
    pub(super) storage: Rc<StorageRef>,
    pub(super) dtype: String,
    pub(super) offset: usize,
    pub(super) size: Vec<usize>,
    pub(super) stride: Vec<usize>,
}

#[derive(Debug)]
pub(super) struct StorageRef {
    pub(super) key: String,
    pub(super) dtype: String,
}
