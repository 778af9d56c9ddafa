//! The kernels' inner loops over host slices, in plain f32 arithmetic that the compiler
//! vectorises. Each is compiled twice, for the baseline x86-64 (SSE2) and for AVX2, and picked
//! at run time; nothing here fuses a multiply and an add, so both compute the same bits.

/// Defines `fn $name` as `$body`, compiled a second time with AVX2 enabled, and runs that copy
/// on CPUs that have AVX2.
macro_rules! simd_fn {
    ($(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),*) $body:block) => {
        $(#[$doc])*
        pub(super) fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn body($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2")]
            fn avx2($($arg: $ty),*) {
                body($($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU has AVX2, checked just above.
                return unsafe { avx2($($arg),*) };
            }
            body($($arg),*)
        }
    };
}

/// `eˣ` for `x ≤ 0` (softmax's shifted scores, sigmoid's `−|x|`): Cody–Waite reduction by ln 2
/// and a degree-7 polynomial (the coefficients of the Cephes library's `expf`), with `2ⁿ` built
/// from the bits of the rounding step. Within 2 ulp of the exact value (tested against `f64`);
/// results under `e⁻⁸⁷` are 0; NaN stays NaN.
#[inline(always)]
pub(super) fn exp(x: f32) -> f32 {
    const SHIFT: f32 = 12_582_912.0; // 1.5 · 2²³: adding it rounds to an integer in the low bits
    const LN2_HI: f32 = 0.693_359_4; // few mantissa bits, so n · LN2_HI is exact
    const LN2_LO: f32 = -2.121_944_4e-4;
    let xc = if x < -87.0 { -87.0 } else { x };
    let t = xc * std::f32::consts::LOG2_E + SHIFT;
    let n = t - SHIFT;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 1.666_666_5e-1)
        * r
        + 0.5;
    let e = p * r * r + r + 1.0;
    // t's bits are SHIFT's plus n, so these are 2ⁿ's: exponent n + 127, mantissa 0.
    let scale = f32::from_bits(t.to_bits().wrapping_sub(0x4B40_0000 - 127) << 23);
    if x < -87.0 {
        0.0
    } else {
        e * scale
    }
}

/// `1 / (1 + e⁻ˣ)`, from `e^−|x|` so that `exp` never overflows.
#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    let e = exp(-x.abs());
    if x >= 0.0 {
        1.0 / (1.0 + e)
    } else {
        e / (1.0 + e)
    }
}

simd_fn! {
    /// Softmax of one row in place; `masked[i] != 0` hides key `i`. No visible key: zeros.
    /// Keys past the last visible one (a causal row's future) are zeroed without an `exp`.
    fn softmax(row: &mut [f32], masked: &[u8]) {
        let end = masked.iter().rposition(|&m| m == 0).map_or(0, |last| last + 1);
        let (row, hidden) = row.split_at_mut(end);
        hidden.fill(0.0);
        let masked = &masked[..end];
        let mut lanes = [f32::NEG_INFINITY; 8];
        let (xs, x_tail) = row.as_chunks::<8>();
        let (ms, m_tail) = masked.as_chunks::<8>();
        for (x, m) in xs.iter().zip(ms) {
            for l in 0..8 {
                let v = if m[l] == 0 { x[l] } else { f32::NEG_INFINITY };
                lanes[l] = if v > lanes[l] { v } else { lanes[l] };
            }
        }
        let visible_tail = x_tail.iter().zip(m_tail).filter(|(_, &m)| m == 0).map(|(&x, _)| x);
        let max = lanes.into_iter().chain(visible_tail).fold(f32::NEG_INFINITY, f32::max);
        if max == f32::NEG_INFINITY {
            row.fill(0.0);
            return;
        }
        for (x, &m) in row.iter_mut().zip(masked) {
            let e = exp(*x - max);
            *x = if m == 0 { e } else { 0.0 };
        }
        let sum = lanes_dot(row, None);
        for x in row.iter_mut() {
            *x /= sum;
        }
    }
}

simd_fn! {
    /// Softmax's backward pass for one row, in place over `dy`: `dx = y · (dy − Σ dy·y)`.
    fn softmax_backward(dy: &mut [f32], y: &[f32]) {
        let dot = lanes_dot(dy, Some(y));
        for (g, &p) in dy.iter_mut().zip(y) {
            *g = p * (*g - dot);
        }
    }
}

simd_fn! {
    /// `h = silu(g) · u = g · σ(g) · u`.
    fn swiglu(g: &[f32], u: &[f32], h: &mut [f32]) {
        for ((h, &g), &u) in h.iter_mut().zip(g).zip(u) {
            *h = g * sigmoid(g) * u;
        }
    }
}

simd_fn! {
    /// SwiGLU's backward pass: `du = dh · g·σ(g)` and, in place over `dh`,
    /// `dg = dh · u · σ(g) · (1 + g·(1 − σ(g)))`.
    fn swiglu_backward(g: &[f32], u: &[f32], dh: &mut [f32], du: &mut [f32]) {
        for (((dh, du), &g), &u) in dh.iter_mut().zip(du.iter_mut()).zip(g).zip(u) {
            let s = sigmoid(g);
            *du = *dh * (g * s);
            *dh = *dh * u * (s * (1.0 + g * (1.0 - s)));
        }
    }
}

simd_fn! {
    /// RoPE in place on one token's heads (`x` is `[heads · dim]`, the tables `[dim]`):
    /// `y = x · cos + rotate_half(x) · sin`, where `sin` holds `−sin` in its first half as
    /// [`crate::layers::Rope::tables`] builds it; `transpose` applies the transposed rotation,
    /// the backward pass.
    fn rope(x: &mut [f32], cos: &[f32], sin: &[f32], transpose: bool) {
        let half = cos.len() / 2;
        let (c_lo, c_hi) = cos.split_at(half);
        let (s_lo, s_hi) = sin.split_at(half);
        let (s_a, s_b) = if transpose { (s_hi, s_lo) } else { (s_lo, s_hi) };
        for head in x.chunks_exact_mut(2 * half) {
            let (lo, hi) = head.split_at_mut(half);
            for i in 0..half {
                let (a, b) = (lo[i], hi[i]);
                lo[i] = a * c_lo[i] + b * s_a[i];
                hi[i] = b * c_hi[i] + a * s_b[i];
            }
        }
    }
}

simd_fn! {
    /// RMS norm of one row: `y = x · r · w` with `r = 1 / √(mean(x²) + eps)`, which it returns.
    fn rms_norm(x: &[f32], w: &[f32], eps: f32, y: &mut [f32], r: &mut f32) {
        let inv = 1.0 / (lanes_dot(x, Some(x)) / x.len() as f32 + eps).sqrt();
        for ((y, &x), &w) in y.iter_mut().zip(x).zip(w) {
            *y = x * inv * w;
        }
        *r = inv;
    }
}

simd_fn! {
    /// RMS norm's backward pass for one row with its `r`, in place over `dy`:
    /// `dx = r · (dy·w − x · r² · mean(dy·w·x))`; adds `dy · x · r` to `dw`.
    fn rms_norm_backward(x: &[f32], w: &[f32], r: f32, dy: &mut [f32], dw: &mut [f32]) {
        let mut lanes = [0f32; 8];
        for (i, ((&g, &x), &w)) in dy.iter().zip(x).zip(w).enumerate() {
            lanes[i % 8] += g * w * x;
        }
        let mean = lanes.iter().sum::<f32>() / x.len() as f32;
        for (((g, dw), &x), &w) in dy.iter_mut().zip(dw.iter_mut()).zip(x).zip(w) {
            *dw += *g * x * r;
            *g = r * (*g * w - x * (r * r * mean));
        }
    }
}

simd_fn! {
    /// AdamW on a slice of one parameter, in place (`first`: the moments start at zero).
    fn adamw(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], h: &super::AdamWStep, first: bool) {
        for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
            let (m1, v1) = if first {
                (g * h.one_minus_beta1, g * g * h.one_minus_beta2)
            } else {
                (*m + (g - *m) * h.one_minus_beta1, *v * h.beta2 + g * g * h.one_minus_beta2)
            };
            let denom = v1.sqrt() / h.bias_correction2_sqrt + h.eps;
            *p = *p * h.decay - m1 / denom * h.step_size;
            (*m, *v) = (m1, v1);
        }
    }
}

/// `Σ xᵢ·yᵢ` (or `Σ xᵢ` without `y`) in 8 interleaved lanes, so it vectorises, then across them.
#[inline(always)]
fn lanes_dot(x: &[f32], y: Option<&[f32]>) -> f32 {
    let mut lanes = [0f32; 8];
    let (xs, x_tail) = x.as_chunks::<8>();
    match y {
        None => {
            for c in xs {
                for l in 0..8 {
                    lanes[l] += c[l];
                }
            }
            lanes.iter().sum::<f32>() + x_tail.iter().sum::<f32>()
        }
        Some(y) => {
            let (ys, y_tail) = y.as_chunks::<8>();
            for (a, b) in xs.iter().zip(ys) {
                for l in 0..8 {
                    lanes[l] += a[l] * b[l];
                }
            }
            lanes.iter().sum::<f32>() + x_tail.iter().zip(y_tail).map(|(a, b)| a * b).sum::<f32>()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_two_ulp_of_f64() {
        let mut worst = 0f64;
        for i in 0..=200_000 {
            let x = -87.0 * i as f32 / 200_000.0;
            let exact = (x as f64).exp();
            let ulp = (exact as f32).abs() * f32::EPSILON;
            worst = worst.max((exp(x) as f64 - exact).abs() / ulp as f64);
        }
        assert!(worst <= 2.0, "worst error {worst} ulp");
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(-88.0), 0.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert!(exp(f32::NAN).is_nan());
    }

    #[test]
    fn a_row_with_no_visible_key_is_zero() {
        let mut row = [1.0, 2.0, 3.0];
        softmax(&mut row, &[1, 1, 1]);
        assert_eq!(row, [0.0; 3]);
        let mut row = [1.0, 2.0, 3.0];
        softmax(&mut row, &[0, 1, 0]);
        let e = (-2f32).exp();
        assert!((row[0] - e / (1.0 + e)).abs() < 1e-7 && row[1] == 0.0);
    }

    #[test]
    fn sigmoid_saturates_without_nan() {
        assert_eq!(sigmoid(200.0), 1.0);
        assert_eq!(sigmoid(-200.0), 0.0);
        assert!((sigmoid(0.5) as f64 - 1.0 / (1.0 + (-0.5f64).exp())).abs() < 1e-7);
    }
}
