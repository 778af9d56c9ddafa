//! The flex kernels against burn's own ops: values and gradients.

use burn::tensor::activation::{silu, softmax};
use burn::tensor::{Distribution, TensorData};

use super::*;

type Ad = Autodiff<Flex>;

fn values<B: Backend, const D: usize>(x: Tensor<B, D>) -> Vec<f32> {
    x.into_data().to_vec::<f32>().expect("f32 data")
}

/// `|a − r| ≤ bound` everywhere.
fn assert_close(a: &[f32], r: &[f32], bound: f32) {
    for (i, (a, r)) in a.iter().zip(r).enumerate() {
        assert!((a - r).abs() <= bound, "element {i}: {a} vs {r} (bound {bound})");
    }
}

/// The fused kernel against burn's decomposed softmax: values and input gradients.
#[test]
fn fused_masked_softmax_equals_burns() {
    let device = Default::default();
    let [b, h, q, k] = [3, 2, 5, 37];
    let scores = Tensor::<Ad, 4>::random([b, h, q, k], Distribution::Normal(0.0, 4.0), &device);
    let upstream = Tensor::<Ad, 4>::random([b, h, q, k], Distribution::Normal(0.0, 1.0), &device);
    // Keys past `query + 30` are hidden, and keys from 33 on in batch row 1 (padding).
    let mask: Vec<bool> =
        (0..b * q * k).map(|i| (i % k) > (i / k) % q + 30 || (i / (q * k) == 1 && i % k >= 33)).collect();
    let mask = Tensor::<Ad, 4, Bool>::from_data(TensorData::new(mask, [b, 1, q, k]), &device);

    let run = |fused: bool| {
        let x = scores.clone().detach().require_grad();
        let y = if fused {
            masked_softmax(x.clone(), &mask).map_err(|_| "no fused kernel").expect("flex has one")
        } else {
            softmax(x.clone().mask_fill(mask.clone().expand([b, h, q, k]), f32::NEG_INFINITY), 3)
        };
        let grads = (y.clone() * upstream.clone()).sum().backward();
        (values(y), values(x.grad(&grads).expect("x requires grad")))
    };
    let ((y, dx), (y_ref, dx_ref)) = (run(true), run(false));
    // Probabilities are ≤ 1, a few roundings each; a gradient is y·(dy − Σ dy·y) with a sum
    // of k products, each ≤ max|dy| ≈ 4 here, so its rounding is about k · 4 · ε.
    let eps = f32::EPSILON;
    assert_close(&y, &y_ref, 8.0 * eps);
    assert_close(&dx, &dx_ref, 4.0 * k as f32 * 5.0 * eps);
    assert_eq!(y.iter().filter(|&&p| p == 0.0).count(), y_ref.iter().filter(|&&p| p == 0.0).count());
    assert!(y.contains(&0.0), "masked keys get zero weight");
}

/// The fused RoPE against the generic path (`RopeTables` with the kernels off): values and
/// the input gradient, which is the transposed rotation.
#[test]
fn fused_rope_equals_the_generic_rotation() {
    let device = Default::default();
    let (n, heads, dim) = (6, 3, 8);
    let x = Tensor::<Ad, 2>::random([n, heads * dim], Distribution::Normal(0.0, 2.0), &device);
    let upstream = Tensor::<Ad, 2>::random([n, heads * dim], Distribution::Normal(0.0, 1.0), &device);
    let angle = |t: usize, i: usize| (t * (i % (dim / 2) + 1)) as f32 * 0.3;
    let table = |f: &dyn Fn(usize, usize) -> f32| {
        let v: Vec<f32> = (0..n * dim).map(|k| f(k / dim, k % dim)).collect();
        Tensor::<Ad, 2>::from_data(TensorData::new(v, [n, dim]), &device)
    };
    let cos = table(&|t, i| angle(t, i).cos());
    let sin = table(&|t, i| if i < dim / 2 { -angle(t, i).sin() } else { angle(t, i).sin() });
    let run = |fused: bool| {
        let xg = x.clone().detach().require_grad();
        let y = if fused {
            rope(xg.clone(), &cos, &sin).map_err(|_| "no fused kernel").expect("flex has one")
        } else {
            let perm: Vec<i64> = (0..dim).map(|i| ((i + dim / 2) % dim) as i64).collect();
            let perm = Tensor::<Ad, 1, burn::tensor::Int>::from_data(TensorData::new(perm, [dim]), &device);
            let x3 = xg.clone().reshape([n, heads, dim]);
            let (c, s) = (cos.clone().unsqueeze_dim::<3>(1), sin.clone().unsqueeze_dim::<3>(1));
            (x3.clone() * c + x3.select(2, perm) * s).reshape([n, heads * dim])
        };
        let grads = (y.clone() * upstream.clone()).sum().backward();
        (values(y), values(xg.grad(&grads).expect("x requires grad")))
    };
    let ((y, dx), (y_ref, dx_ref)) = (run(true), run(false));
    // The same two products and one sum per element, in the same order: the same bits.
    assert_close(&y, &y_ref, 0.0);
    assert_close(&dx, &dx_ref, 0.0);
}

/// The fused RMS norm against the generic formula: values and the gradients of input and
/// weight.
#[test]
fn fused_rms_norm_equals_burns() {
    let device = Default::default();
    let (n, dim, eps) = (700, 24, 1e-6);
    let x = Tensor::<Ad, 2>::random([n, dim], Distribution::Normal(0.0, 3.0), &device);
    let w = Tensor::<Ad, 1>::random([dim], Distribution::Normal(1.0, 0.5), &device);
    let upstream = Tensor::<Ad, 2>::random([n, dim], Distribution::Normal(0.0, 1.0), &device);
    let run = |fused: bool| {
        let (xg, wg) = (x.clone().detach().require_grad(), w.clone().detach().require_grad());
        let y = if fused {
            rms_norm(xg.clone(), wg.clone(), eps).map_err(|_| "no fused kernel").expect("flex has one")
        } else {
            let inv = (xg.clone().square().mean_dim(1) + eps as f64).powf_scalar(-0.5);
            xg.clone() * inv * wg.clone().unsqueeze()
        };
        let grads = (y.clone() * upstream.clone()).sum().backward();
        (values(y), values(xg.grad(&grads).expect("grad")), values(wg.grad(&grads).expect("grad")))
    };
    let ((y, dx, dw), (y_ref, dx_ref, dw_ref)) = (run(true), run(false));
    // y = x·r·w with |x·r| ≲ 4 and |w| ≲ 3, a few roundings each (r from a sum of `dim`
    // squares); dx sums `dim` products of that size; dw sums `n` of them.
    let eps32 = f32::EPSILON;
    assert_close(&y, &y_ref, 12.0 * dim as f32 * eps32);
    assert_close(&dx, &dx_ref, 12.0 * 4.0 * dim as f32 * eps32);
    let scale = dw_ref.iter().fold(1f32, |m, v| m.max(v.abs()));
    assert_close(&dw, &dw_ref, 4.0 * n as f32 * eps32 * scale);
}

/// The fused AdamW (on `Flex`) against the same update as tensor ops (which `Autodiff<Flex>`
/// runs, having no fused optimizer step): the same bits, first step and later ones, with and
/// without decay.
#[test]
fn fused_adamw_equals_the_tensor_ops() {
    let device = Default::default();
    let n = 40_000; // more than one parallel task
    let data = |std: f64, seed: u64| {
        <Flex as Backend>::seed(&device, seed);
        Tensor::<Flex, 1>::random([n], Distribution::Normal(0.0, std), &device).into_data()
    };
    let (p0, grads) = (data(1.0, 1), [data(0.1, 2), data(0.3, 3), data(0.01, 4)]);
    fn run<B: Backend>(p0: &TensorData, grads: &[TensorData], device: &B::Device) -> Vec<Vec<f32>> {
        let mut p = Tensor::<B, 1>::from_data(p0.clone(), device);
        let mut moments = None;
        let mut out = Vec::new();
        for (t, g) in grads.iter().enumerate() {
            let t = t as i32 + 1;
            let h = crate::kernels::AdamWStep {
                beta2: 0.999,
                one_minus_beta1: (1.0 - 0.9f64) as f32,
                one_minus_beta2: (1.0 - 0.999f64) as f32,
                decay: if t == 2 { 1.0 } else { (1.0 - 1e-3 * 0.01f64) as f32 },
                bias_correction2_sqrt: (1.0 - 0.999f64.powi(t)).sqrt() as f32,
                eps: 1e-8,
                step_size: (1e-3 / (1.0 - 0.9f64.powi(t))) as f32,
            };
            let (p1, m, v) = crate::kernels::adamw(p, Tensor::from_data(g.clone(), device), moments, &h);
            out.extend([&p1, &m, &v].map(|x| x.to_data().to_vec::<f32>().expect("f32")));
            (p, moments) = (p1, Some((m, v)));
        }
        out
    }
    let fused = run::<Flex>(&p0, &grads, &device);
    let ops = run::<Ad>(&p0, &grads, &device);
    assert_eq!(fused.len(), 9);
    for (a, b) in fused.iter().zip(&ops) {
        assert!(a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()), "fused AdamW differs from the ops");
    }
    assert_ne!(fused[0], fused[3], "the parameters move");
}

/// The fused SwiGLU against burn's `silu(gate) · up`: values and both gradients.
#[test]
fn fused_swiglu_equals_burns() {
    let device = Default::default();
    let shape = [7, 300];
    let gate = Tensor::<Ad, 2>::random(shape, Distribution::Normal(0.0, 6.0), &device);
    let up = Tensor::<Ad, 2>::random(shape, Distribution::Normal(0.0, 1.0), &device);
    let upstream = Tensor::<Ad, 2>::random(shape, Distribution::Normal(0.0, 1.0), &device);
    let run = |fused: bool| {
        let (g, u) = (gate.clone().detach().require_grad(), up.clone().detach().require_grad());
        let h = if fused {
            swiglu(g.clone(), u.clone()).map_err(|_| "no fused kernel").expect("flex has one")
        } else {
            silu(g.clone()) * u.clone()
        };
        let grads = (h.clone() * upstream.clone()).sum().backward();
        (values(h), values(g.grad(&grads).expect("grad")), values(u.grad(&grads).expect("grad")))
    };
    let ((h, dg, du), (h_ref, dg_ref, du_ref)) = (run(true), run(false));
    // Each value is a product of a few factors of size ≤ |g|·|u| ≈ 6·4 (and |dy| ≈ 4), each
    // rounded once or twice: about 8 ε relative to that size.
    let bound = 24.0 * 4.0 * 8.0 * f32::EPSILON;
    assert_close(&h, &h_ref, bound);
    assert_close(&dg, &dg_ref, 4.0 * bound);
    assert_close(&du, &du_ref, bound);
}

/// Widening a half-precision weight gives burn's cast, bit for bit, and keeps the layout: a
/// transposed view (how a Linear holds its checkpoint's `[out, in]` weight) stays one, plain and
/// under autodiff. A view of part of its buffer is given back for the generic path.
#[test]
fn widen_keeps_the_layout_and_equals_the_cast() {
    let device = Default::default();
    let x = Tensor::<Flex, 2>::random([7, 5], Distribution::Normal(0.0, 3.0), &device);
    for dtype in [DType::BF16, DType::F16] {
        let held = x.clone().cast(dtype);
        let view = held.clone().transpose();
        let want = values(view.clone().cast(DType::F32));
        let wide = super::widen(view).expect("flex widens a transposed view");
        assert_eq!(wide.dtype(), DType::F32);
        let [p] = plain::<Flex, 1>([unwrap(wide.clone())]);
        assert!(!p.is_contiguous(), "the transposed layout is kept");
        assert_eq!(values(wide), want);
        let tracked = Tensor::<Ad, 2>::from_data(x.to_data(), &device).cast(dtype).transpose();
        assert_eq!(values(super::widen(tracked).expect("and under autodiff")), want);
        assert!(super::widen(held.slice([0..3, 0..5])).is_err());
    }
}

/// The AVX2 product (where this CPU and build take it) against burn's matmul: values and both
/// gradients, with the right operand a transposed view (as weights held `[out, in]` are read),
/// and a frozen right operand (LoRA's base weights), whose gradient is not computed.
#[test]
fn product_equals_burns_matmul() {
    let device = Default::default();
    let (m, k, n) = (70, 300, 37);
    let a = Tensor::<Ad, 2>::random([m, k], Distribution::Normal(0.0, 1.0), &device);
    let w = Tensor::<Ad, 2>::random([n, k], Distribution::Normal(0.0, 1.0), &device);
    let upstream = Tensor::<Ad, 2>::random([m, n], Distribution::Normal(0.0, 1.0), &device);
    let run = |ours: bool, frozen: bool| {
        let (x, wt) = (a.clone().detach().require_grad(), w.clone().detach());
        let wt = if frozen { wt } else { wt.require_grad() };
        let y = if ours {
            crate::kernels::matmul(x.clone(), wt.clone().transpose())
        } else {
            x.clone().matmul(wt.clone().transpose())
        };
        let grads = (y.clone() * upstream.clone()).sum().backward();
        (values(y), values(x.grad(&grads).expect("x requires grad")), wt.grad(&grads).map(values))
    };
    // each value is a sum of k products of N(0,1) terms (up to |a·b| ≈ 16 here), rounded at
    // most k times by either side: k · 16 · ε bounds the difference; the gradients sum m or n
    // such products
    let eps = f32::EPSILON;
    for frozen in [false, true] {
        let ((y, dx, dw), (y_ref, dx_ref, dw_ref)) = (run(true, frozen), run(false, frozen));
        assert_close(&y, &y_ref, k as f32 * 16.0 * eps);
        assert_close(&dx, &dx_ref, n as f32 * 16.0 * eps);
        assert_eq!(dw.is_some(), !frozen);
        if let (Some(dw), Some(dw_ref)) = (dw, dw_ref) {
            assert_close(&dw, &dw_ref, m as f32 * 16.0 * eps);
        }
    }
    // plain (inference) flex as well
    let (pa, pw) =
        (Tensor::<Flex, 2>::from_data(a.to_data(), &device), Tensor::<Flex, 2>::from_data(w.to_data(), &device));
    assert_close(
        &values(crate::kernels::matmul(pa.clone(), pw.clone().transpose())),
        &values(pa.matmul(pw.transpose())),
        k as f32 * 16.0 * eps,
    );
}

/// Batched, as attention runs it: `q · kᵀ`, with `kᵀ` a view of the keys ([`matmul`]) or the keys
/// themselves ([`matmul_bt`]), values and both gradients against burn's matmul; `matmul_bt` hands
/// the keys' gradient back in their own (contiguous) layout.
///
/// [`matmul`]: crate::kernels::matmul
/// [`matmul_bt`]: crate::kernels::matmul_bt
#[test]
fn batched_product_equals_burns_matmul() {
    let device = Default::default();
    let (b, h, q, t, d) = (2, 3, 5, 70, 16);
    let qs = Tensor::<Ad, 4>::random([b, h, q, d], Distribution::Normal(0.0, 1.0), &device);
    let ks = Tensor::<Ad, 4>::random([b, h, t, d], Distribution::Normal(0.0, 1.0), &device);
    let upstream = Tensor::<Ad, 4>::random([b, h, q, t], Distribution::Normal(0.0, 1.0), &device);
    // 0: burn's matmul, 1: ours on the swapped view, 2: ours on the keys as they are
    let run = |way: usize| {
        let (x, k) = (qs.clone().detach().require_grad(), ks.clone().detach().require_grad());
        let y = match way {
            0 => x.clone().matmul(k.clone().swap_dims(2, 3)),
            1 => crate::kernels::matmul(x.clone(), k.clone().swap_dims(2, 3)),
            _ => crate::kernels::matmul_bt(x.clone(), k.clone()),
        };
        let grads = (y.clone() * upstream.clone()).sum().backward();
        let dk = k.grad(&grads).expect("k requires grad");
        let [dk_plain] = plain::<Flex, 1>([unwrap(dk.clone())]);
        (values(y), values(x.grad(&grads).expect("q requires grad")), values(dk), dk_plain.is_contiguous())
    };
    let (y_ref, dq_ref, dk_ref, _) = run(0);
    let eps = f32::EPSILON;
    for way in [1, 2] {
        let (y, dq, dk, contiguous) = run(way);
        assert_close(&y, &y_ref, d as f32 * 16.0 * eps);
        assert_close(&dq, &dq_ref, t as f32 * 16.0 * eps);
        assert_close(&dk, &dk_ref, q as f32 * 16.0 * eps);
        if way == 2 && crate::kernels::gemm::available() {
            assert!(contiguous, "the keys' gradient comes back in their layout");
        }
    }
    let (pq, pk) =
        (Tensor::<Flex, 4>::from_data(qs.to_data(), &device), Tensor::<Flex, 4>::from_data(ks.to_data(), &device));
    assert_close(
        &values(crate::kernels::matmul_bt(pq.clone(), pk.clone())),
        &values(pq.matmul(pk.swap_dims(2, 3))),
        d as f32 * 16.0 * eps,
    );
}
