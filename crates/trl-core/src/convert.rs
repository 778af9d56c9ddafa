//! Checkpoint tensors to the f32 layout a parameter needs, in one pass on the host: dtype
//! conversion (F32, F16, BF16, F64), PyTorch `nn.Linear`'s `[out, in]` → burn's `[in, out]`
//! transpose (cache-blocked), and a count of NaN/infinite values, with no intermediate copy.

use burn::tensor::{DType, TensorData};
use half::{bf16, f16};

/// Side of the square tiles the transpose copies (both tiles stay in L1: 2 × 32² × 4 bytes).
const TILE: usize = 32;

/// `data` as f32, `[cols, rows]` when `transpose` (for a `[rows, cols]` input), plus how many
/// values are NaN or infinite. `None` for a dtype that is not F32, F16, BF16 or F64.
pub(crate) fn to_f32(data: &TensorData, transpose: bool) -> Option<(Vec<f32>, usize)> {
    let (rows, cols) = match (transpose, data.shape.as_slice()) {
        (true, [r, c]) => (*r, *c),
        _ => (1, data.num_elements()),
    };
    let out = match data.dtype {
        DType::F32 => convert(data.as_slice::<f32>().ok()?, rows, cols, transpose, |x| x),
        DType::BF16 => convert(data.as_slice::<bf16>().ok()?, rows, cols, transpose, bf16::to_f32),
        DType::F16 => convert(data.as_slice::<f16>().ok()?, rows, cols, transpose, f16::to_f32),
        DType::F64 => convert(data.as_slice::<f64>().ok()?, rows, cols, transpose, |x| x as f32),
        _ => return None,
    };
    let bad = out.iter().filter(|v| !v.is_finite()).count();
    Some((out, bad))
}

/// Below this many values a tensor is converted on one thread (spawning costs more).
const PARALLEL_FROM: usize = 1 << 20;

fn convert<T: Copy + Sync>(
    src: &[T],
    rows: usize,
    cols: usize,
    transpose: bool,
    f: impl Fn(T) -> f32 + Sync,
) -> Vec<f32> {
    let mut out = vec![0f32; src.len()];
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
fn fill<T: Copy>(
    out: &mut [f32],
    start: usize,
    src: &[T],
    rows: usize,
    cols: usize,
    transpose: bool,
    f: &impl Fn(T) -> f32,
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
        assert_eq!(to_f32(&h, true).unwrap(), (want_t, 0));
        let bad = TensorData::new(vec![1.0f32, f32::NAN, f32::INFINITY, -2.0], [2, 2]);
        assert_eq!(to_f32(&bad, true).unwrap().1, 2);
        assert!(to_f32(&TensorData::new(vec![1i64, 2], [2]), false).is_none());
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
