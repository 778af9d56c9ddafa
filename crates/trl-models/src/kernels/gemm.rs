//! f32 matrix product for x86-64 CPUs with AVX2 and FMA but no AVX-512 kernels in this build,
//! where it runs the projections' shapes faster than the `gemm` crate that flex calls
//! (docs/performance.md, "An AVX2 matrix product"). Classic blocked layout: B is packed once into
//! strips 16 columns wide, each block of rows of A into strips 6 rows tall, and a 6×16 register
//! tile (12 accumulators) runs over `KC` steps of the shared dimension at a time; blocks of rows
//! are spread over rayon's threads.
//!
//! Operands are strided views (`rs`, `cs` per matrix), so transposed operands, such as weights
//! held `[out, in]` and read as `[in, out]`, are packed straight from their storage.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use rayon::prelude::*;

const MR: usize = 6;
const NR: usize = 16;
/// Shared-dimension steps per packed block: a strip of B (`KC × NR` f32, 16 KiB) stays in L1.
const KC: usize = 256;
/// Rows of A per block (`MC × KC` f32, 120 KiB) stay in L2.
const MC: usize = 120;
/// Below this many multiply-adds one thread does the whole product.
const SERIAL: usize = 1 << 18;

/// A strided view of a matrix in `data`: element `(i, j)` is `data[offset + i·rs + j·cs]`.
#[derive(Clone, Copy)]
pub(super) struct View<'a> {
    pub data: &'a [f32],
    pub offset: usize,
    pub rs: usize,
    pub cs: usize,
}

impl View<'_> {
    /// Whether every element of a `rows × cols` matrix lies inside `data`.
    fn holds(&self, rows: usize, cols: usize) -> bool {
        let last = (rows.max(1) - 1)
            .checked_mul(self.rs)
            .and_then(|r| (cols.max(1) - 1).checked_mul(self.cs).and_then(|c| r.checked_add(c)))
            .and_then(|x| x.checked_add(self.offset));
        last.is_some_and(|l| l < self.data.len())
    }
}

/// Whether this CPU and build take this kernel: AVX2 and FMA, and no AVX-512 gemm kernels in the
/// build that the CPU could run (those are faster than this AVX2 one).
pub(super) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *ON.get_or_init(|| {
            let avx512 = cfg!(feature = "avx512") && is_x86_feature_detected!("avx512f");
            is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && !avx512
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `c[i] = a[i] · b[i]` for each of the views in `a` (`[m, k]`) and `b` (`[k, n]`), into one
/// row-major `[batch, m, n]` (every element written). Small products run one per thread, large
/// ones one after another on every thread. `None` where the kernel is not [`available`], the
/// batches differ in length or a view does not hold its matrix.
pub(super) fn sgemm(m: usize, k: usize, n: usize, a: &[View], b: &[View]) -> Option<Vec<f32>> {
    if !available() || a.len() != b.len() || !a.iter().all(|v| v.holds(m, k)) || !b.iter().all(|v| v.holds(k, n)) {
        return None;
    }
    let size = m.checked_mul(n)?;
    let len = size.checked_mul(a.len())?;
    if k == 0 || len == 0 {
        return Some(vec![0.0; len]);
    }
    #[cfg(target_arch = "x86_64")]
    {
        let mut c: Vec<f32> = Vec::with_capacity(len);
        let threads = rayon::current_num_threads();
        let large = size.saturating_mul(k) >= SERIAL && threads > 1;
        let out = Out(c.as_mut_ptr());
        let one = |i: usize, parallel: bool| {
            // SAFETY: `available` checked AVX2 and FMA; the views hold their matrices (checked
            // above); matrix `i` of `c` is `size` elements from `i · size`, inside its capacity,
            // and `product` writes each of them (the first block of the shared dimension stores
            // without reading).
            unsafe { product(m, k, n, a[i], b[i], out.at(i * size), parallel) }
        };
        if large || a.len() == 1 {
            (0..a.len()).for_each(|i| one(i, large));
        } else {
            (0..a.len())
                .into_par_iter()
                .with_min_len((SERIAL / size.saturating_mul(k)).max(1))
                .for_each(|i| one(i, false));
        }
        // SAFETY: every element was written above.
        unsafe { c.set_len(len) };
        Some(c)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        None
    }
}

#[derive(Clone, Copy)]
struct Out(*mut f32);
// SAFETY: blocks of rows of the output are written by one task each.
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

impl Out {
    /// The output `offset` elements on (a method, so that closures capture the whole `Out`).
    ///
    /// # Safety
    /// `offset` is inside the output.
    unsafe fn at(self, offset: usize) -> *mut f32 {
        // SAFETY: as the caller's.
        unsafe { self.0.add(offset) }
    }
}

/// Packs rows `p0..p0 + kc` of B, columns `j0..j0 + w` (`w <= NR`), as `kc` rows of `NR`
/// (zero-padded).
fn pack_b(b: &View, p0: usize, kc: usize, j0: usize, w: usize, dst: &mut [f32]) {
    let at = |p: usize, j: usize| b.data[b.offset + (p0 + p) * b.rs + (j0 + j) * b.cs];
    if b.cs == 1 && w == NR {
        for (p, row) in dst.chunks_exact_mut(NR).take(kc).enumerate() {
            let s = b.offset + (p0 + p) * b.rs + j0;
            row.copy_from_slice(&b.data[s..s + NR]);
        }
    } else if b.rs == 1 {
        // columns are runs in memory (a weight held `[out, in]`): interleave them, eight steps of
        // eight columns at a time as 8×8 transposes
        let start = |j: usize| b.offset + p0 + (j0 + j) * b.cs;
        let cols: [&[f32]; NR] = std::array::from_fn(|j| if j < w { &b.data[start(j)..start(j) + kc] } else { &[] });
        #[allow(unused_mut)]
        let mut done = 0;
        #[cfg(target_arch = "x86_64")]
        if w == NR && available() {
            for (p, rows) in dst.chunks_exact_mut(8 * NR).take(kc / 8).enumerate() {
                for half in 0..NR / 8 {
                    let src: [&[f32; 8]; 8] =
                        std::array::from_fn(|j| cols[half * 8 + j][8 * p..].first_chunk().expect("8 steps"));
                    // SAFETY: `available` checked AVX2.
                    unsafe { transpose8(src, &mut rows[half * 8..]) };
                }
                done += 8;
            }
        }
        for (p, row) in dst.chunks_exact_mut(NR).take(kc).enumerate().skip(done) {
            for (j, x) in row.iter_mut().enumerate() {
                *x = cols[j].get(p).copied().unwrap_or(0.0);
            }
        }
    } else {
        for (p, row) in dst.chunks_exact_mut(NR).take(kc).enumerate() {
            for (j, x) in row.iter_mut().enumerate() {
                *x = if j < w { at(p, j) } else { 0.0 };
            }
        }
    }
}

/// Writes the transpose of the 8×8 block whose rows are `src` into `dst`, row `c` (column `c` of
/// the block) at `dst[c · NR..][..8]`.
///
/// # Safety
/// AVX2 is present.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn transpose8(src: [&[f32; 8]; 8], dst: &mut [f32]) {
    assert!(dst.len() >= 7 * NR + 8, "eight rows of the packed strip");
    let r: [__m256; 8] = std::array::from_fn(|i| _mm256_loadu_ps(src[i].as_ptr()));
    // pairs of rows interleaved, then pairs of pairs, then the 128-bit halves swapped in
    let t = [
        _mm256_unpacklo_ps(r[0], r[1]),
        _mm256_unpackhi_ps(r[0], r[1]),
        _mm256_unpacklo_ps(r[2], r[3]),
        _mm256_unpackhi_ps(r[2], r[3]),
        _mm256_unpacklo_ps(r[4], r[5]),
        _mm256_unpackhi_ps(r[4], r[5]),
        _mm256_unpacklo_ps(r[6], r[7]),
        _mm256_unpackhi_ps(r[6], r[7]),
    ];
    let q = [
        _mm256_shuffle_ps::<0x44>(t[0], t[2]),
        _mm256_shuffle_ps::<0xEE>(t[0], t[2]),
        _mm256_shuffle_ps::<0x44>(t[1], t[3]),
        _mm256_shuffle_ps::<0xEE>(t[1], t[3]),
        _mm256_shuffle_ps::<0x44>(t[4], t[6]),
        _mm256_shuffle_ps::<0xEE>(t[4], t[6]),
        _mm256_shuffle_ps::<0x44>(t[5], t[7]),
        _mm256_shuffle_ps::<0xEE>(t[5], t[7]),
    ];
    for c in 0..4 {
        let d = dst.as_mut_ptr();
        // SAFETY: rows `c` and `c + 4` of `dst` hold 8 elements each (asserted above).
        unsafe {
            _mm256_storeu_ps(d.add(c * NR), _mm256_permute2f128_ps::<0x20>(q[c], q[c + 4]));
            _mm256_storeu_ps(d.add((c + 4) * NR), _mm256_permute2f128_ps::<0x31>(q[c], q[c + 4]));
        }
    }
}

/// Packs rows `i0..i0 + mc` of A, columns `p0..p0 + kc`, as strips of `MR` rows, each `kc`
/// columns of `MR` (zero-padded).
fn pack_a(a: &View, i0: usize, mc: usize, p0: usize, kc: usize, dst: &mut [f32]) {
    for (s, strip) in dst.chunks_exact_mut(kc * MR).take(mc.div_ceil(MR)).enumerate() {
        let h = MR.min(mc - s * MR);
        let start = |i: usize| a.offset + (i0 + s * MR + i) * a.rs + p0 * a.cs;
        if a.cs == 1 && h == MR {
            // rows are runs in memory: interleave them
            let r: [&[f32]; MR] = std::array::from_fn(|i| &a.data[start(i)..start(i) + kc]);
            for (p, col) in strip.chunks_exact_mut(MR).enumerate().take(kc) {
                *col.first_chunk_mut::<MR>().expect("MR wide") = [r[0][p], r[1][p], r[2][p], r[3][p], r[4][p], r[5][p]];
            }
        } else if a.cs == 1 {
            // the last, partial strip
            let rows: [&[f32]; MR] =
                std::array::from_fn(|i| if i < h { &a.data[start(i)..start(i) + kc] } else { &[] });
            for (p, col) in strip.chunks_exact_mut(MR).enumerate() {
                for (i, x) in col.iter_mut().enumerate() {
                    *x = rows[i].get(p).copied().unwrap_or(0.0);
                }
            }
        } else if a.rs == 1 && h == MR {
            // columns are runs in memory: each column of the strip is one copy
            for (p, col) in strip.chunks_exact_mut(MR).enumerate() {
                let at = start(0) + p * a.cs;
                col.copy_from_slice(&a.data[at..at + MR]);
            }
        } else {
            for (p, col) in strip.chunks_exact_mut(MR).enumerate() {
                for (i, x) in col.iter_mut().enumerate() {
                    *x = if i < h { a.data[start(i) + p * a.cs] } else { 0.0 };
                }
            }
        }
    }
}

/// A scratch buffer of at least `len` elements, reused by each thread (packing writes every
/// element it reads back, padding included, so old contents do not matter).
fn scratch<R>(
    slot: &'static std::thread::LocalKey<std::cell::RefCell<Vec<f32>>>,
    len: usize,
    f: impl FnOnce(&mut [f32]) -> R,
) -> R {
    slot.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.len() < len {
                *buf = vec![0.0; len];
            }
            f(&mut buf[..len])
        }
        // a nested product on this thread (rayon runs other tasks while it waits): its own buffer
        Err(_) => f(&mut vec![0.0; len]),
    })
}

/// `TRL_GEMM_PACK_A=1` packs A always (to measure what reading it in place buys).
fn pack_a_always() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("TRL_GEMM_PACK_A").is_ok_and(|v| v == "1"))
}

thread_local! {
    static PACKED_A: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    static PACKED_B: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The whole product into `c` (`m × n`, row-major), its blocks of rows spread over rayon's
/// threads when `parallel`.
///
/// # Safety
/// AVX2 and FMA are present; `c` has room for `m · n` elements.
#[cfg(target_arch = "x86_64")]
unsafe fn product(m: usize, k: usize, n: usize, a: View, b: View, c: *mut f32, parallel: bool) {
    let strips = n.div_ceil(NR);
    let kblocks = k.div_ceil(KC);
    let kc_of = |pc: usize| KC.min(k - pc * KC);
    // B, packed once (by every thread where it is large): block `pc` holds its `strips` strips
    // of `kc_of(pc) × NR`
    scratch(&PACKED_B, k * strips * NR, |packed_b| {
        let mut parts = Vec::with_capacity(kblocks * strips);
        let mut rest = &mut packed_b[..];
        for pc in 0..kblocks {
            for s in 0..strips {
                let (part, tail) = rest.split_at_mut(kc_of(pc) * NR);
                parts.push((pc, s, part));
                rest = tail;
            }
        }
        let pack = |(pc, s, part): (usize, usize, &mut [f32])| {
            pack_b(&b, pc * KC, kc_of(pc), s * NR, NR.min(n - s * NR), part)
        };
        if parallel && k * n >= SERIAL / 4 {
            parts.into_par_iter().for_each(pack);
        } else {
            parts.into_iter().for_each(pack);
        }
        // SAFETY: as `product`'s, shared with `blocks`.
        unsafe { blocks(m, k, n, a, packed_b, Out(c), parallel) }
    })
}

/// The product's blocks of rows of C, each packing its rows of A, over `packed_b`.
///
/// # Safety
/// As [`product`]'s; `packed_b` is B packed by `product`.
#[cfg(target_arch = "x86_64")]
unsafe fn blocks(m: usize, k: usize, n: usize, a: View, packed_b: &[f32], out: Out, parallel: bool) {
    let (strips, kblocks) = (n.div_ceil(NR), k.div_ceil(KC));
    // blocks of rows, as many per thread where there are few
    let threads = if parallel { rayon::current_num_threads() } else { 1 };
    let mut count = m.div_ceil(MC);
    if count < 4 * threads {
        count = count.div_ceil(threads) * threads;
    }
    let mc = m.div_ceil(count).div_ceil(MR) * MR;
    let block = |blk: usize| {
        let i0 = blk * mc;
        if i0 >= m {
            return;
        }
        let rows = mc.min(m - i0);
        // A is read in place where that is faster than packing it (measured, docs/performance.md):
        // short rows that are runs in memory, or few rows whose columns are
        let direct = ((a.cs == 1 && k < KC) || (a.rs == 1 && m <= 128)) && !pack_a_always();
        scratch(&PACKED_A, if direct { 0 } else { rows.div_ceil(MR) * MR * KC.min(k) }, |packed_a| {
            for pc in 0..kblocks {
                let kc = KC.min(k - pc * KC);
                if !direct {
                    pack_a(&a, i0, rows, pc * KC, kc, packed_a);
                }
                let bp = packed_b[pc * KC * strips * NR..].as_ptr();
                for s in 0..strips {
                    let w = NR.min(n - s * NR);
                    for t in 0..rows.div_ceil(MR) {
                        let h = MR.min(rows - t * MR);
                        // the strip's rows of A: packed, or in place (the last one repeated past `h`)
                        let lhs = match direct {
                            true => {
                                let first = a.offset + (i0 + t * MR) * a.rs + pc * KC * a.cs;
                                let at = |i: usize| a.data[first + i.min(h - 1) * a.rs..].as_ptr();
                                Lhs::Rows(std::array::from_fn(at), a.cs)
                            }
                            false => Lhs::Packed(packed_a[t * MR * kc..].as_ptr()),
                        };
                        // SAFETY: the tile `(i0 + t·MR, s·NR)`, `h × w`, lies inside `c`; each
                        // row of `lhs` holds `kc` steps (the views hold their matrices), and the
                        // packed strip of B `kc · NR` elements.
                        unsafe {
                            tile(kc, lhs, bp.add(s * kc * NR), out.at((i0 + t * MR) * n + s * NR), n, (h, w), pc > 0)
                        };
                    }
                }
            }
        })
    };
    if parallel {
        (0..count).into_par_iter().for_each(block);
    } else {
        (0..count).for_each(block);
    }
}

/// Where a tile reads its rows of A.
#[derive(Clone, Copy)]
enum Lhs {
    /// A strip packed by [`pack_a`]: step `p` of row `i` at `p · MR + i`.
    Packed(*const f32),
    /// Rows read in place: row `i` from `rows[i]`, each step `step` elements on.
    Rows([*const f32; MR], usize),
}

/// One `h × w` tile of C (`h <= MR`, `w <= NR`, row stride `ldc`) from `kc` steps of A's rows
/// and packed B: stored, or added to what is there when `add`.
///
/// The packed loop addresses A and B from one pointer each at fixed offsets, so the four
/// unrolled steps need no more registers than one (with six row pointers and a runtime step,
/// the compiler kept 24 addresses and reloaded 18 of them from the stack every four steps;
/// docs/performance.md has what the change bought).
///
/// # Safety
/// AVX2 and FMA are present; each row of A holds `kc` steps and `bp` `kc · NR` elements; the
/// tile lies in C.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile(kc: usize, lhs: Lhs, bp: *const f32, c: *mut f32, ldc: usize, (h, w): (usize, usize), add: bool) {
    for i in 0..h {
        _mm_prefetch::<_MM_HINT_T0>(c.add(i * ldc) as *const i8);
        _mm_prefetch::<_MM_HINT_T0>(c.add(i * ldc + w - 1) as *const i8);
    }
    let mut r = [[_mm256_setzero_ps(); 2]; MR];
    // one step: B's row at `b`, A's element of row `i` at `$a(i)`
    macro_rules! step {
        ($b:expr, $a:expr) => {{
            let b0 = _mm256_loadu_ps($b);
            let b1 = _mm256_loadu_ps($b.add(8));
            for (i, acc) in r.iter_mut().enumerate() {
                let a = _mm256_broadcast_ss(&*$a(i));
                acc[0] = _mm256_fmadd_ps(a, b0, acc[0]);
                acc[1] = _mm256_fmadd_ps(a, b1, acc[1]);
            }
        }};
    }
    match lhs {
        Lhs::Packed(ap) => {
            let (mut a, mut b, mut p) = (ap, bp, 0);
            while p + 4 <= kc {
                for u in 0..4 {
                    step!(b.add(u * NR), |i| a.add(u * MR + i));
                }
                (a, b, p) = (a.add(4 * MR), b.add(4 * NR), p + 4);
            }
            while p < kc {
                step!(b, |i| a.add(i));
                (a, b, p) = (a.add(MR), b.add(NR), p + 1);
            }
        }
        Lhs::Rows(rows, step_a) => {
            let (mut off, mut b) = (0, bp);
            for _ in 0..kc {
                step!(b, |i: usize| rows[i].add(off));
                (off, b) = (off + step_a, b.add(NR));
            }
        }
    }
    if h == MR && w == NR {
        for (i, acc) in r.iter_mut().enumerate() {
            let row = c.add(i * ldc);
            if add {
                acc[0] = _mm256_add_ps(acc[0], _mm256_loadu_ps(row));
                acc[1] = _mm256_add_ps(acc[1], _mm256_loadu_ps(row.add(8)));
            }
            _mm256_storeu_ps(row, acc[0]);
            _mm256_storeu_ps(row.add(8), acc[1]);
        }
    } else {
        let mut t = [0f32; MR * NR];
        for (i, acc) in r.iter().enumerate() {
            _mm256_storeu_ps(t.as_mut_ptr().add(i * NR), acc[0]);
            _mm256_storeu_ps(t.as_mut_ptr().add(i * NR + 8), acc[1]);
        }
        for i in 0..h {
            for j in 0..w {
                let x = c.add(i * ldc + j);
                *x = if add { *x + t[i * NR + j] } else { t[i * NR + j] };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The product of strided views against a plain triple loop in f64, within f32 accumulation
    /// error (`k` terms of magnitude up to 1: k·ε·Σ|a·b|).
    #[test]
    fn strided_products_match_the_definition() {
        if !available() {
            return;
        }
        for &(m, k, n) in &[(1, 1, 1), (7, 3, 17), (6, 256, 16), (130, 300, 33), (250, 513, 40), (13, 0, 5)] {
            let data: Vec<f32> =
                (0..(m + 3) * (k + 3) + n * (k + 3)).map(|i| ((i * 7919 % 211) as f32 / 105.0) - 1.0).collect();
            for (a_t, b_t) in [(false, false), (true, false), (false, true), (true, true)] {
                let a = if a_t {
                    View { data: &data, offset: 2, rs: 1, cs: m }
                } else {
                    View { data: &data, offset: 2, rs: k, cs: 1 }
                };
                let b = if b_t {
                    View { data: &data, offset: 5, rs: 1, cs: k.max(1) }
                } else {
                    View { data: &data, offset: 5, rs: n, cs: 1 }
                };
                let c = sgemm(m, k, n, &[a], &[b]).expect("views hold");
                for i in 0..m {
                    for j in 0..n {
                        let (mut exact, mut mag) = (0f64, 0f64);
                        for p in 0..k {
                            let x = a.data[a.offset + i * a.rs + p * a.cs] as f64
                                * b.data[b.offset + p * b.rs + j * b.cs] as f64;
                            exact += x;
                            mag += x.abs();
                        }
                        let tol = (k as f64 + 1.0) * f32::EPSILON as f64 * mag + 1e-30;
                        assert!((c[i * n + j] as f64 - exact).abs() <= tol, "{m}x{k}x{n} {a_t}/{b_t} at ({i},{j})");
                    }
                }
            }
        }
    }

    #[test]
    fn views_outside_their_data_are_refused() {
        let data = [0f32; 10];
        let a = View { data: &data, offset: 0, rs: 4, cs: 1 };
        assert!(sgemm(3, 4, 1, &[a], &[View { data: &data, offset: 0, rs: 1, cs: 1 }]).is_none());
    }
}
