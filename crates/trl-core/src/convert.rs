//! Checkpoint tensors to the layout and dtype (f32, or bf16/f16 for half-precision weights) a
//! parameter needs, in one pass on the host: dtype conversion (from F32, F16, BF16, F64),
//! PyTorch `nn.Linear`'s `[out, in]` → burn's `[in, out]` transpose (cache-blocked), and a count
//! of NaN/infinite values, with no intermediate copy.

use burn::tensor::{DType, TensorData};
use half::{bf16, f16};

/// Side of the square tiles the transpose copies (both tiles stay in L1: 2 × 32² × 4 bytes).
const TILE: usize = 32;

/// `data` as f32, `[cols, rows]` when `transpose` (for a `[rows, cols]` input), plus how many
/// values are NaN or infinite. `None` for a dtype that is not F32, F16, BF16 or F64.
#[cfg(test)]
pub(crate) fn to_f32(data: &TensorData, transpose: bool) -> Option<(Vec<f32>, usize)> {
    let (out, bad) = to_dtype(data, transpose, DType::F32)?;
    Some((out.into_vec().ok()?, bad))
}

/// `data` as `target` (F32, BF16 or F16), `[cols, rows]` when `transpose` (for a `[rows, cols]`
/// input), plus how many values are NaN or infinite in `target` (so a value past f16's range
/// counts). `None` for a source dtype that is not F32, F16, BF16 or F64, or another target.
pub(crate) fn to_dtype(data: &TensorData, transpose: bool, target: DType) -> Option<(TensorData, usize)> {
    let (rows, cols) = match (transpose, data.shape.as_slice()) {
        (true, [r, c]) => (*r, *c),
        _ => (1, data.num_elements()),
    };
    let mut shape = data.shape.to_vec();
    if transpose {
        shape.reverse();
    }
    Some(match (data.dtype, target) {
        // same dtype: values moved as they are (only the layout changes)
        (DType::BF16, DType::BF16) => {
            counted(convert(data.as_slice::<bf16>().ok()?, rows, cols, transpose, |x| x), shape)
        }
        (DType::F16, DType::F16) => counted(convert(data.as_slice::<f16>().ok()?, rows, cols, transpose, |x| x), shape),
        (_, DType::F32) => counted(widened(data, rows, cols, transpose, |x| x)?, shape),
        (_, DType::BF16) => counted(widened(data, rows, cols, transpose, bf16::from_f32)?, shape),
        (_, DType::F16) => counted(widened(data, rows, cols, transpose, f16::from_f32)?, shape),
        _ => return None,
    })
}

/// [`to_dtype`] of data that may be owned: already in `target` and laid out as needed, it is
/// taken as it is (no copy: a checkpoint's embedding goes into the model in place).
pub(crate) fn into_dtype(
    data: std::borrow::Cow<'_, TensorData>,
    transpose: bool,
    target: DType,
) -> Option<(TensorData, usize)> {
    if transpose || data.dtype != target {
        return to_dtype(&data, transpose, target);
    }
    let bad = match target {
        DType::F32 => non_finite(data.as_slice::<f32>().ok()?),
        DType::BF16 => non_finite(data.as_slice::<bf16>().ok()?),
        DType::F16 => non_finite(data.as_slice::<f16>().ok()?),
        _ => return None,
    };
    Some((data.into_owned(), bad))
}

/// `data` through f32 into element type `U` by `narrow` (exact when the source is already `U`:
/// f32 holds every bf16 and f16 value).
fn widened<U: Copy + Send + Default>(
    data: &TensorData,
    rows: usize,
    cols: usize,
    transpose: bool,
    narrow: impl Fn(f32) -> U + Sync,
) -> Option<Vec<U>> {
    Some(match data.dtype {
        DType::F32 => convert(data.as_slice::<f32>().ok()?, rows, cols, transpose, narrow),
        DType::BF16 => convert(data.as_slice::<bf16>().ok()?, rows, cols, transpose, |x| narrow(x.to_f32())),
        DType::F16 => convert(data.as_slice::<f16>().ok()?, rows, cols, transpose, |x| narrow(x.to_f32())),
        DType::F64 => convert(data.as_slice::<f64>().ok()?, rows, cols, transpose, |x| narrow(x as f32)),
        _ => return None,
    })
}

/// The values as tensor data of `shape`, and how many of them are NaN or infinite.
fn counted<U: Float>(out: Vec<U>, shape: Vec<usize>) -> (TensorData, usize) {
    let bad = non_finite(&out);
    (TensorData::new(out, shape), bad)
}

/// A float element whose NaN and infinities are told by the bits: all exponent bits set.
trait Float: burn::tensor::Element + Copy {
    fn non_finite(self) -> bool;
}

impl Float for f32 {
    fn non_finite(self) -> bool {
        self.to_bits() & 0x7f80_0000 == 0x7f80_0000
    }
}

impl Float for bf16 {
    fn non_finite(self) -> bool {
        self.to_bits() & 0x7f80 == 0x7f80
    }
}

impl Float for f16 {
    fn non_finite(self) -> bool {
        self.to_bits() & 0x7c00 == 0x7c00
    }
}

/// How many of `values` are NaN or infinite (a branch-free count the compiler vectorises).
fn non_finite<U: Float>(values: &[U]) -> usize {
    values.iter().map(|v| v.non_finite() as usize).sum()
}

/// Below this many values a tensor is converted on one thread (spawning costs more).
const PARALLEL_FROM: usize = 1 << 20;

fn convert<T: Copy + Sync, U: Copy + Send + Default>(
    src: &[T],
    rows: usize,
    cols: usize,
    transpose: bool,
    f: impl Fn(T) -> U + Sync,
) -> Vec<U> {
    let mut out = vec![U::default(); src.len()];
    // output rows: `cols` of `rows` values when transposing, else one row of everything
    let (out_rows, width) = if transpose { (cols, rows) } else { (1, src.len()) };
    let threads =
        if src.len() >= PARALLEL_FROM { std::thread::available_parallelism().map_or(1, |n| n.get()).min(8) } else { 1 };
    if threads == 1 || width == 0 {
        fill(&mut out, 0, src, rows, cols, transpose, &f);
        return out;
    }
    // Each thread fills a contiguous block of the output (and first touches its pages).
    let per = if transpose { out_rows.div_ceil(threads) * width } else { src.len().div_ceil(threads) };
    std::thread::scope(|scope| {
        for (k, block) in out.chunks_mut(per).enumerate() {
            let f = &f;
            scope.spawn(move || fill(block, k * per, src, rows, cols, transpose, f));
        }
    });
    out
}

/// Fills `out`, the block of the result that starts at flat index `start`.
fn fill<T: Copy, U>(
    out: &mut [U],
    start: usize,
    src: &[T],
    rows: usize,
    cols: usize,
    transpose: bool,
    f: &impl Fn(T) -> U,
) {
    if !transpose {
        let n = out.len();
        for (o, &x) in out.iter_mut().zip(&src[start..start + n]) {
            *o = f(x);
        }
        return;
    }
    // Output rows `c` of this block, tile by tile: each output row segment is written
    // contiguously from a column of the tile's source rows, which stay in L1.
    let (c_lo, c_hi) = (start / rows, (start + out.len()) / rows);
    for r0 in (0..rows).step_by(TILE) {
        let r1 = (r0 + TILE).min(rows);
        for c0 in (c_lo..c_hi).step_by(TILE) {
            for c in c0..(c0 + TILE).min(c_hi) {
                let o = (c - c_lo) * rows;
                for (d, r) in out[o + r0..o + r1].iter_mut().zip(r0..r1) {
                    *d = f(src[r * cols + c]);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_transposes_and_counts_bad_values() {
        // sizes that are not multiples of the tile; multiples of 0.5 below 100, which bf16
        // (8 significant bits) and f16 hold exactly
        let (r, c) = (37, 70);
        let value = |i: usize| (i % 200) as f32 * 0.5 - 3.0;
        let vals: Vec<f32> = (0..r * c).map(value).collect();
        let want_t: Vec<f32> = (0..c).flat_map(|j| (0..r).map(move |i| value(i * c + j))).collect();
        let f32_data = TensorData::new(vals.clone(), [r, c]);
        assert_eq!(to_f32(&f32_data, false).unwrap(), (vals.clone(), 0));
        assert_eq!(to_f32(&f32_data, true).unwrap(), (want_t.clone(), 0));
        let b = TensorData::new(vals.iter().map(|&x| bf16::from_f32(x)).collect::<Vec<_>>(), [r, c]);
        let h = TensorData::new(vals.iter().map(|&x| f16::from_f32(x)).collect::<Vec<_>>(), [r, c]);
        assert_eq!(to_f32(&b, false).unwrap().0, vals);
        assert_eq!(to_f32(&h, true).unwrap(), (want_t.clone(), 0));
        let bad = TensorData::new(vec![1.0f32, f32::NAN, f32::INFINITY, -2.0], [2, 2]);
        assert_eq!(to_f32(&bad, true).unwrap().1, 2);
        assert!(to_f32(&TensorData::new(vec![1i64, 2], [2]), false).is_none());
        // to half precision: bf16 kept bit for bit, f16 past its range counted as bad
        let (half, bad) = to_dtype(&b, true, DType::BF16).unwrap();
        assert_eq!((half.shape.to_vec(), bad), (vec![c, r], 0));
        let back: Vec<f32> = half.to_vec::<bf16>().unwrap().iter().map(|x| x.to_f32()).collect();
        assert_eq!(back, want_t);
        let big = TensorData::new(vec![1.0f32, 7.0e4, -1.0e5, 2.0], [4]);
        assert_eq!(to_dtype(&big, false, DType::F16).unwrap().1, 2);
        assert!(to_dtype(&f32_data, false, DType::F64).is_none());
        // already right: taken as it is, bad values still counted
        let nan = TensorData::new(vec![1.0f32, f32::NAN, f32::INFINITY, -2.0], [2, 2]);
        let (same, n) = into_dtype(std::borrow::Cow::Owned(nan.clone()), false, DType::F32).unwrap();
        let bits = |d: &TensorData| d.as_slice::<f32>().unwrap().iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!((bits(&same), n), (bits(&nan), 2));
    }

    #[test]
    fn large_tensors_convert_the_same_on_several_threads() {
        // above PARALLEL_FROM, with a row count that does not split evenly
        let (r, c) = (1031, 1037);
        let value = |i: usize| (i % 200) as f32 * 0.5 - 3.0;
        let b = TensorData::new((0..r * c).map(|i| bf16::from_f32(value(i))).collect::<Vec<_>>(), [r, c]);
        let (t, bad) = to_f32(&b, true).unwrap();
        assert_eq!(bad, 0);
        assert!((0..c).all(|j| (0..r).all(|i| t[j * r + i] == value(i * c + j))));
        let (flat, _) = to_f32(&b, false).unwrap();
        assert!(flat.iter().enumerate().all(|(i, &x)| x == value(i)));
    }
}
