//! Fused kernels for the element-wise hot spots of the `flex` CPU backend: the masked softmax of
//! attention, rotary embeddings, RMS norm and the SwiGLU of the gated MLPs, each with a backward pass of
//! its own under autodiff, and the AdamW update.
//!
//! burn decomposes softmax into max, subtract, exp, sum and divide, and `silu(gate) · up` into
//! sigmoid and two products; under autodiff each is a node (the mask fill another), and the
//! backward passes take as many sweeps again. Here each forward pass is one sweep per row
//! ([`rows`]: masked max, a vectorised `exp`, sum, divide), each backward pass another
//! (`dx = y · (dy − Σ dy·y)`; SwiGLU's two gradients at once), in place where the buffer is not
//! shared and spread over the cores. Other backends and dtypes keep burn's ops, so results on every
//! backend agree within f32 rounding (checked in the tests against burn's own ops).
//!
//! `TRL_FUSED_KERNELS=0` turns them off, to measure what they buy (docs/performance.md).

use burn::tensor::activation::silu;
use burn::tensor::{backend::Backend, Bool, DType, Tensor};

#[cfg(feature = "flex")]
mod flex;
#[cfg(feature = "flex")]
mod gemm;
#[cfg(feature = "flex")]
mod rows;

/// `softmax(scores, masked to −∞ where mask is true)` over the last dimension, where `scores`
/// is `[batch, heads, q, k]` and `mask` `[batch, 1, q, k]` (shared by the heads). A row with no
/// visible key comes out as zeros. `Err` gives the scores back, untouched, where this backend
/// or dtype has no fused kernel ([`fused`] says which).
pub fn masked_softmax<B: Backend>(
    scores: Tensor<B, 4>,
    mask: &Tensor<B, 4, Bool>,
) -> Result<Tensor<B, 4>, Tensor<B, 4>> {
    let [b, _, q, k] = scores.dims();
    if !fused::<B>(scores.dtype()) || mask.dims() != [b, 1, q, k] {
        return Err(scores);
    }
    #[cfg(feature = "flex")]
    {
        flex::masked_softmax(scores, mask)
    }
    #[cfg(not(feature = "flex"))]
    {
        Err(scores)
    }
}

/// `silu(gate) · up`, the gated MLP of Llama-style models; `gate` and `up` are
/// `[tokens, intermediate]`.
pub fn swiglu<B: Backend>(gate: Tensor<B, 2>, up: Tensor<B, 2>) -> Tensor<B, 2> {
    #[cfg(feature = "flex")]
    let (gate, up) = match fused::<B>(gate.dtype()) && gate.dims() == up.dims() && up.dtype() == DType::F32 {
        true => match flex::swiglu(gate, up) {
            Ok(h) => return h,
            Err(back) => back,
        },
        false => (gate, up),
    };
    silu(gate) * up
}

/// `a · b` for `a` `[.., m, k]` and `b` `[.., k, n]` with the same leading dimensions: on flex
/// f32 with AVX2 and no AVX-512 kernels, the AVX2 product of [`gemm`] (forward and backward),
/// read straight from strided views such as transposed weights or keys; burn's matmul elsewhere.
pub fn matmul<B: Backend, const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>) -> Tensor<B, D> {
    product(a, b, false)
}

/// `a · bᵀ` (b's last two dimensions swapped) for `a` `[.., m, k]` and `b` `[.., n, k]`, as
/// [`matmul`] with `b.swap_dims(D - 2, D - 1)`; under autodiff on flex, b's gradient comes out in
/// b's layout instead of as a swapped view (which the ops before it would copy, element by element).
pub fn matmul_bt<B: Backend, const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>) -> Tensor<B, D> {
    product(a, b, true)
}

fn product<B: Backend, const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>, bt: bool) -> Tensor<B, D> {
    #[cfg(feature = "flex")]
    let (a, b) = match D >= 2
        && fused::<B>(a.dtype())
        && b.dtype() == DType::F32
        && a.dims()[..D - 2] == b.dims()[..D - 2]
        && gemm::available()
    {
        true => match flex::matmul(a, b, bt) {
            Ok(c) => return c,
            Err(back) => back,
        },
        false => (a, b),
    };
    match bt {
        true => a.matmul(b.swap_dims(D - 2, D - 1)),
        false => a.matmul(b),
    }
}

/// `x · w + bias` over the last dimension of `x` (`w` `[in, out]`, as burn's `linear`), through
/// [`matmul`] where it has its own product; burn's `linear` elsewhere.
pub fn linear<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    w: Tensor<B, 2>,
    bias: Option<Tensor<B, 1>>,
) -> Tensor<B, D> {
    #[cfg(feature = "flex")]
    if D >= 2 && fused::<B>(x.dtype()) && w.dtype() == DType::F32 && gemm::available() {
        let mut dims = x.dims();
        let [d_in, d_out] = w.dims();
        let y = matmul(x.reshape([dims.iter().product::<usize>() / d_in.max(1), d_in]), w);
        let y = match bias {
            Some(b) => y + b.unsqueeze(),
            None => y,
        };
        dims[D - 1] = d_out;
        return y.reshape(dims);
    }
    burn::tensor::module::linear(x, w, bias)
}

/// RoPE on flat `[tokens, heads · dim]` activations with `[tokens, dim]` tables (see
/// [`crate::layers::RopeTables`]). `Err` gives `x` back where there is no fused kernel.
pub fn rope<B: Backend>(x: Tensor<B, 2>, cos: &Tensor<B, 2>, sin: &Tensor<B, 2>) -> Result<Tensor<B, 2>, Tensor<B, 2>> {
    let ([n, width], [tn, dim]) = (x.dims(), cos.dims());
    if !fused::<B>(x.dtype()) || n != tn || dim % 2 != 0 || width % dim != 0 || sin.dims() != cos.dims() {
        return Err(x);
    }
    #[cfg(feature = "flex")]
    {
        flex::rope(x, cos, sin)
    }
    #[cfg(not(feature = "flex"))]
    {
        Err(x)
    }
}

/// RMS norm over the last dimension of flat `[rows, dim]` activations with an f32 weight `[dim]`,
/// as Llama computes it in f32: `x · w / √(mean(x²) + eps)`. `Err` gives `x` back where there is
/// no fused kernel.
pub fn rms_norm<B: Backend>(x: Tensor<B, 2>, weight: Tensor<B, 1>, eps: f64) -> Result<Tensor<B, 2>, Tensor<B, 2>> {
    if !fused::<B>(x.dtype()) || weight.dtype() != DType::F32 || weight.dims()[0] != x.dims()[1] {
        return Err(x);
    }
    #[cfg(feature = "flex")]
    {
        flex::rms_norm(x, weight, eps as f32)
    }
    #[cfg(not(feature = "flex"))]
    {
        let _ = (weight, eps);
        Err(x)
    }
}

/// `w`, held in bf16 or f16, as f32 with its layout kept: a weight held as a transposed view of
/// its checkpoint's `[out, in]` stays one, so the widening is one sweep in storage order on every
/// core (no gather, no intermediate copy). The result is not tracked by autodiff: this is for
/// frozen weights. `Err` gives `w` back where there is no kernel (another backend or dtype, a
/// weight that takes gradients, or a view that is not a reordering of its whole buffer).
pub fn widen<B: Backend, const D: usize>(w: Tensor<B, D>) -> Result<Tensor<B, D>, Tensor<B, D>> {
    if !matches!(w.dtype(), DType::BF16 | DType::F16) || w.is_require_grad() || !enabled() {
        return Err(w);
    }
    #[cfg(feature = "flex")]
    {
        flex::widen(w)
    }
    #[cfg(not(feature = "flex"))]
    {
        Err(w)
    }
}

/// One AdamW step's constants, as the f32 factors the update multiplies by (see
/// [`adamw`]).
#[derive(Debug, Clone, Copy)]
pub struct AdamWStep {
    pub beta2: f32,
    pub one_minus_beta1: f32,
    pub one_minus_beta2: f32,
    /// `1 − lr · weight_decay`, or 1 where the parameter does not decay.
    pub decay: f32,
    /// `√(1 − β₂ᵗ)`.
    pub bias_correction2_sqrt: f32,
    pub eps: f32,
    /// `lr / (1 − β₁ᵗ)`.
    pub step_size: f32,
}

/// One AdamW update of a flat f32 parameter `p` with gradient `g` and moments `(m, v)` (`None`
/// before the first step), as torch's `AdamW` computes it: returns `(p, m, v)`. On flex one sweep
/// updates all three in place; elsewhere the same arithmetic runs as tensor ops, with the same
/// bits.
pub fn adamw<B: Backend>(
    p: Tensor<B, 1>,
    g: Tensor<B, 1>,
    moments: Option<(Tensor<B, 1>, Tensor<B, 1>)>,
    h: &AdamWStep,
) -> (Tensor<B, 1>, Tensor<B, 1>, Tensor<B, 1>) {
    #[cfg(feature = "flex")]
    let (p, g, moments) = match fused::<B>(p.dtype()) {
        true => match flex::adamw(p, g, moments, h) {
            Ok(updated) => return updated,
            Err(back) => back,
        },
        false => (p, g, moments),
    };
    // torch: exp_avg.lerp_(grad, 1 - beta1); exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    let (m, v) = match moments {
        Some((m, v)) => {
            (m.clone() + (g.clone() - m) * h.one_minus_beta1, v * h.beta2 + g.clone() * g * h.one_minus_beta2)
        }
        None => (g.clone() * h.one_minus_beta1, g.clone() * g * h.one_minus_beta2),
    };
    let denom = v.clone().sqrt() / h.bias_correction2_sqrt + h.eps;
    (p * h.decay - m.clone() / denom * h.step_size, m, v)
}

/// Whether this backend has the fused kernels for tensors of this dtype.
pub fn fused<B: Backend>(dtype: DType) -> bool {
    #[cfg(feature = "flex")]
    let known = flex::known::<B>();
    #[cfg(not(feature = "flex"))]
    let known = false;
    known && enabled() && dtype == DType::F32
}

/// Whether the fused kernels run: yes, unless `TRL_FUSED_KERNELS=0` (read once) asks for burn's
/// generic ops.
fn enabled() -> bool {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ENABLED.get_or_init(|| std::env::var("TRL_FUSED_KERNELS").map_or(true, |v| v != "0"))
}
