//! Building blocks shared by every architecture: norms, rotary embeddings, multi-head attention
//! with grouped KV heads, and the KV cache. The projections (`Linear`, GPT-2's `Conv1D`) live in
//! [`crate::lora`], since they are what LoRA adapters attach to.
//!
//! Field names follow PyTorch (`weight`, `bias`), so checkpoint keys load without a table.

use std::borrow::Cow;
use std::cell::RefCell;

use burn::module::{Module, Param};
use burn::nn::Initializer;
use burn::prelude::*;
use burn::tensor::activation::{self, softmax};
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::TensorPrimitive;

use crate::batch::Context;
use crate::error::{ModelError, Result};
use crate::lora::in_dtype;
pub use crate::lora::Conv1D;

/// `torch.nn.LayerNorm` (weight and bias), through burn's fused kernel.
#[derive(Module, Debug)]
pub struct LayerNorm<B: Backend> {
    pub weight: Param<Tensor<B, 1>>,
    pub bias: Param<Tensor<B, 1>>,
    pub eps: f64,
}

impl<B: Backend> LayerNorm<B> {
    pub fn new(dim: usize, eps: f64, device: &B::Device) -> Self {
        Self { weight: Initializer::Ones.init([dim], device), bias: Initializer::Zeros.init([dim], device), eps }
    }

    /// `[..., dim]` → `[..., dim]`
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        Tensor::from_primitive(TensorPrimitive::Float(B::layer_norm(
            x.into_primitive().tensor(),
            self.weight.val().into_primitive().tensor(),
            Some(self.bias.val().into_primitive().tensor()),
            self.eps,
        )))
    }
}

/// RMSNorm as Llama computes it: `weight * x / sqrt(mean(x²) + eps)`.
#[derive(Module, Debug)]
pub struct RmsNorm<B: Backend> {
    pub weight: Param<Tensor<B, 1>>,
    pub eps: f64,
}

impl<B: Backend> RmsNorm<B> {
    pub fn new(dim: usize, eps: f64, device: &B::Device) -> Self {
        Self { weight: Initializer::Ones.init([dim], device), eps }
    }

    /// `[..., dim]` → `[..., dim]`
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let dims = x.dims();
        let rows = x.shape().num_elements() / dims[D - 1].max(1);
        let flat = x.reshape([rows, dims[D - 1]]);
        let flat = crate::kernels::rms_norm(flat, self.weight.val(), self.eps).unwrap_or_else(|x| {
            let inv = (x.clone().square().mean_dim(1) + self.eps).powf_scalar(-0.5);
            x * inv * self.weight.val().unsqueeze()
        });
        flat.reshape(dims)
    }
}

/// The activation functions configs name (`activation_function`, `hidden_act`), as
/// transformers' `ACT2FN` computes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    GeluNew,
    Gelu,
    Relu,
    Silu,
    Tanh,
}

impl Activation {
    pub fn parse(name: &str) -> Result<Self> {
        Ok(match name {
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Self::GeluNew,
            "gelu" => Self::Gelu,
            "relu" => Self::Relu,
            "silu" | "swish" => Self::Silu,
            "tanh" => Self::Tanh,
            other => {
                return Err(ModelError::Config(format!(
                    "activation `{other}` is not supported (gelu_new, gelu_pytorch_tanh, gelu, relu, silu, tanh)"
                )))
            }
        })
    }

    pub fn apply<B: Backend, const D: usize>(self, x: Tensor<B, D>) -> Tensor<B, D> {
        match self {
            Self::GeluNew => activation::gelu_approximate(x),
            Self::Gelu => activation::gelu(x),
            Self::Relu => activation::relu(x),
            Self::Silu => activation::silu(x),
            Self::Tanh => x.tanh(),
        }
    }
}

/// Token embeddings of `ids` `[batch, q_len]`, flat `[batch * q_len, hidden]`.
/// Rows of half-precision embeddings come out in the backend's float dtype.
pub fn embed_flat<B: Backend>(embedding: &burn::nn::Embedding<B>, ids: Tensor<B, 2, Int>) -> Tensor<B, 2> {
    let [b, t] = ids.dims();
    let x = embed(embedding, ids);
    let hidden = x.dims()[2];
    x.reshape([b * t, hidden])
}

/// `embedding.forward(ids)`, in the backend's float dtype when the table is held in half
/// precision ([`trl_core::dtype`]).
pub fn embed<B: Backend>(embedding: &burn::nn::Embedding<B>, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
    in_dtype(embedding.forward(ids), <B::FloatElem as burn::tensor::Element>::dtype())
}

/// A plain burn `Linear` for heads that never carry adapters (`lm_head`), weight ~ N(0, std).
pub fn linear<B: Backend>(d_in: usize, d_out: usize, bias: bool, std: f64, device: &B::Device) -> burn::nn::Linear<B> {
    burn::nn::LinearConfig::new(d_in, d_out)
        .with_bias(bias)
        .with_initializer(Initializer::Normal { mean: 0.0, std })
        .init(device)
}

/// Rotary position embedding: inverse frequencies fixed at build time; cos/sin tables made
/// once per forward pass from the batch's positions.
#[derive(Debug, Clone)]
pub struct Rope {
    pub inv_freq: Vec<f32>,
    /// Multiplies cos and sin (LongRoPE's attention factor; 1 otherwise).
    pub attention_scaling: f32,
    /// LongRoPE: the frequencies a forward pass uses instead when its largest position is at
    /// or past `.1` (the original context), as transformers switches per call.
    pub long: Option<(Vec<f32>, usize)>,
}

/// The cos and sin tables of one forward pass for activations `width = heads * head_dim` wide,
/// with the permutation that swaps the halves of every head (`rotate_half`, its sign folded
/// into `sin`).
/// RoPE tables of one forward pass: `cos` and `sin` (with `−sin` in its first half, so that
/// `rotate_half` is a plain permutation) `[tokens, head_dim]`, shared by every head and layer.
#[derive(Clone)]
pub struct RopeTables<B: Backend> {
    cos: Tensor<B, 2>,
    sin: Tensor<B, 2>,
    /// For backends without the fused kernel: the tables widened to `[tokens, heads · head_dim]`,
    /// once per width used (query heads, KV heads).
    wide: RefCell<Vec<RopeWidth<B>>>,
}

#[derive(Clone)]
struct RopeWidth<B: Backend> {
    width: usize,
    cos: Tensor<B, 2>,
    sin: Tensor<B, 2>,
    /// `rotate_half` as one gather: `i → i − i mod d + (i mod d + d/2) mod d`.
    perm: Tensor<B, 1, Int>,
}

impl Rope {
    /// Default RoPE: `inv_freq[i] = base^(-2i/dim)`, computed in f32 as transformers does.
    pub fn new(head_dim: usize, base: f64) -> Self {
        let inv_freq = (0..head_dim / 2).map(|i| 1.0 / (base as f32).powf((2 * i) as f32 / head_dim as f32)).collect();
        Self { inv_freq, attention_scaling: 1.0, long: None }
    }

    /// Tables for the positions of `ctx`, on its device, built once per forward pass and shared
    /// by every layer (on that device).
    pub fn tables<B: Backend>(&self, ctx: &Context<B>) -> RopeTables<B> {
        let device = &ctx.mask.device();
        let positions = ctx.token_positions();
        let inv_freq = match &self.long {
            Some((long, original)) if positions.iter().any(|&p| p >= *original as i64) => long,
            _ => &self.inv_freq,
        };
        let half = inv_freq.len();
        let dim = 2 * half;
        let n = positions.len();
        let (mut cos, mut sin) = (Vec::with_capacity(n * dim), Vec::with_capacity(n * dim));
        for &p in positions.iter() {
            let start = cos.len();
            for &f in inv_freq {
                let a = p as f32 * f;
                cos.push(a.cos() * self.attention_scaling);
                sin.push(-a.sin() * self.attention_scaling);
            }
            cos.extend_from_within(start..start + half);
            for i in start..start + half {
                sin.push(-sin[i]);
            }
        }
        RopeTables {
            cos: Tensor::from_data(TensorData::new(cos, [n, dim]), device),
            sin: Tensor::from_data(TensorData::new(sin, [n, dim]), device),
            wide: RefCell::new(Vec::new()),
        }
    }
}

impl<B: Backend> RopeTables<B> {
    /// Rotates flat `[tokens, heads * head_dim]` activations:
    /// `x · cos + rotate_half(x) · sin`, with `rotate_half` as one gather.
    pub fn apply(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        crate::kernels::rope(x, &self.cos, &self.sin).unwrap_or_else(|x| {
            let r = self.widened(x.dims()[1]);
            x.clone() * r.cos + x.select(1, r.perm) * r.sin
        })
    }

    /// The tables of the rows a block keeps ([`Context::picking`]), for the picked queries:
    /// these tables where the block keeps every row.
    pub fn kept(&self, ctx: &Context<B>) -> Cow<'_, Self> {
        match ctx.picked() {
            Some(_) => Cow::Owned(Self {
                cos: ctx.kept(self.cos.clone()),
                sin: ctx.kept(self.sin.clone()),
                wide: RefCell::new(Vec::new()),
            }),
            None => Cow::Borrowed(self),
        }
    }

    fn widened(&self, width: usize) -> RopeWidth<B> {
        if let Some(r) = self.wide.borrow().iter().find(|r| r.width == width) {
            return r.clone();
        }
        let [n, dim] = self.cos.dims();
        let wide = |t: &Tensor<B, 2>| t.clone().reshape([n, 1, dim]).expand([n, width / dim, dim]).reshape([n, width]);
        let perm: Vec<i64> = (0..width).map(|i| (i - i % dim + (i % dim + dim / 2) % dim) as i64).collect();
        let perm = Tensor::from_data(TensorData::new(perm, [width]), &self.cos.device());
        let r = RopeWidth { width, cos: wide(&self.cos), sin: wide(&self.sin), perm };
        self.wide.borrow_mut().push(r.clone());
        r
    }

    /// Rotates the first `rot` dimensions of each of the `heads` heads of flat
    /// `[tokens, heads * head_dim]` activations and keeps the rest (partial rotary:
    /// `partial_rotary_factor`, GPT-NeoX's `rotary_pct`); the tables are for `rot`-wide heads.
    pub fn apply_partial(&self, x: Tensor<B, 2>, heads: usize, rot: usize) -> Tensor<B, 2> {
        let [n, d] = x.dims();
        let hd = d / heads;
        match rot {
            0 => x,
            r if r == hd => self.apply(x),
            r => {
                let x = x.reshape([n, heads, hd]);
                let rotated = self.apply(x.clone().slice([0..n, 0..heads, 0..r]).reshape([n, heads * r]));
                Tensor::cat(vec![rotated.reshape([n, heads, r]), x.slice([0..n, 0..heads, r..hd])], 2).reshape([n, d])
            }
        }
    }
}

/// Keys and values of the tokens seen so far, per layer, plus their attention mask.
#[derive(Debug, Clone)]
pub struct KvCache<B: Backend> {
    pub layers: Vec<Option<(Tensor<B, 4>, Tensor<B, 4>)>>,
    /// `[batch, len]` mask of every token in the cache, row-major, on the host.
    pub mask: Vec<i64>,
    pub batch: usize,
    pub len: usize,
}

impl<B: Backend> KvCache<B> {
    pub fn new(num_layers: usize, batch: usize) -> Self {
        Self { layers: vec![None; num_layers], mask: Vec::new(), batch, len: 0 }
    }

    /// Appends the mask of `q_len` new tokens and returns the mask of cache plus new tokens.
    pub fn extend_mask(&mut self, new_mask: &[i64], q_len: usize) -> Vec<i64> {
        let kv = self.len + q_len;
        let mut full = Vec::with_capacity(self.batch * kv);
        for b in 0..self.batch {
            full.extend_from_slice(&self.mask[b * self.len..(b + 1) * self.len]);
            full.extend_from_slice(&new_mask[b * q_len..(b + 1) * q_len]);
        }
        self.mask.clone_from(&full);
        self.len = kv;
        full
    }

    /// Keeps only the rows in `keep` (finished sequences dropped from a batch).
    pub fn select_rows(&mut self, keep: &[usize], device: &B::Device) {
        let idx = Tensor::<B, 1, Int>::from_data(
            TensorData::new(keep.iter().map(|&i| i as i64).collect::<Vec<_>>(), [keep.len()]),
            device,
        );
        for (k, v) in self.layers.iter_mut().flatten() {
            *k = k.clone().select(0, idx.clone());
            *v = v.clone().select(0, idx.clone());
        }
        self.mask = keep.iter().flat_map(|&b| self.mask[b * self.len..(b + 1) * self.len].to_vec()).collect();
        self.batch = keep.len();
    }
}

/// Scaled dot-product attention of one layer.
///
/// `q`: flat `[tokens, heads * head_dim]`; `k`, `v`: `[tokens, kv_heads * head_dim]`
/// for the new tokens (every `batch * q_len` slot, or only the real ones: [`Context::without_padding`]); `(heads, kv_heads)` their head counts. Activations are moved to the kernel's head-major layout with one row
/// gather each (which also repeats KV heads for grouped-query attention) and back with one
/// more. With a cache slot, new keys/values are appended to it first. Returns flat
/// `[tokens, heads * head_dim]`. Under a picking context ([`Context::picking`]) `q` holds only the
/// picked rows' queries, in the picks' order, and so does the result.
pub fn attend<B: Backend>(
    q: Tensor<B, 2>,
    k: Tensor<B, 2>,
    v: Tensor<B, 2>,
    heads: (usize, usize),
    ctx: &Context<B>,
    cache: Option<&mut Option<(Tensor<B, 4>, Tensor<B, 4>)>>,
    scale: f64,
) -> Tensor<B, 2> {
    attend_capped(q, k, v, heads, ctx, cache, scale, None)
}

/// [`attend`] with the scores soft-capped before the mask: `cap · tanh(scores / cap)`
/// (Gemma 2's `attn_logit_softcapping`).
#[allow(clippy::too_many_arguments)]
pub fn attend_capped<B: Backend>(
    q: Tensor<B, 2>,
    k: Tensor<B, 2>,
    v: Tensor<B, 2>,
    (heads, kv_heads): (usize, usize),
    ctx: &Context<B>,
    cache: Option<&mut Option<(Tensor<B, 4>, Tensor<B, 4>)>>,
    scale: f64,
    softcap: Option<f64>,
) -> Tensor<B, 2> {
    let (b, t, d) = (ctx.batch, ctx.q_len, q.dims()[1] / heads);
    let n = k.dims()[0];
    let to_heads = |x: Tensor<B, 2>, h: usize, groups: usize| {
        x.reshape([n * h, d]).select(0, ctx.to_heads_index(h, groups)).reshape([b, h * groups, t, d])
    };
    let groups = heads / kv_heads;
    // a block that keeps only the picked rows projects only their queries
    let picked = ctx.picked().filter(|_| cache.is_none());
    debug_assert!(picked.is_none_or(|rows| q.dims()[0] == rows.len()), "a picking block passes the picked queries");
    // queries in the head-major layout, their mask, and the gather back to activation rows
    let (q, q_len, mask, back) = match picked {
        Some(rows) => {
            let per_row = ctx.picked_per_row();
            let q = q.reshape([rows.len() * heads, d]).select(0, ctx.picked_to_heads_index(heads));
            (q.reshape([b, heads, per_row, d]), per_row, ctx.picked_mask(), ctx.picked_from_heads_index(heads))
        }
        None => (to_heads(q, heads, 1), t, ctx.mask.clone(), ctx.from_heads_index(heads)),
    };
    let (k, v) = match cache {
        None => (to_heads(k, kv_heads, groups), to_heads(v, kv_heads, groups)),
        Some(slot) => {
            let (k, v) = (to_heads(k, kv_heads, 1), to_heads(v, kv_heads, 1));
            let (k, v) = match slot.take() {
                Some((pk, pv)) => (Tensor::cat(vec![pk, k], 2), Tensor::cat(vec![pv, v], 2)),
                None => (k, v),
            };
            *slot = Some((k.clone(), v.clone()));
            let s = k.dims()[2];
            let rep =
                |x: Tensor<B, 4>| x.unsqueeze_dim::<5>(2).expand([b, kv_heads, groups, s, d]).reshape([b, heads, s, d]);
            if groups == 1 {
                (k, v)
            } else {
                (rep(k), rep(v))
            }
        }
    };
    let out = if B::ad_enabled(&q.device()) || crate::kernels::fused::<B>(q.dtype()) {
        // Backends that differentiate attention would decompose the fused op into burn's NaN-safe
        // fallback; no row here is fully masked (the diagonal stays visible, see `Context::new`),
        // so plain softmax is exact and takes fewer ops on `[batch, heads, q_len, kv_len]`. On
        // flex, two batched matmuls around the fused masked softmax beat flex's attention, whose
        // softmax is scalar (docs/performance.md).
        let mut scores = crate::kernels::matmul_bt(q * scale, k);
        if let Some(cap) = softcap {
            scores = (scores / cap).tanh() * cap;
        }
        let probs = crate::kernels::masked_softmax(scores, &mask).unwrap_or_else(|scores| {
            let mask = match picked {
                Some(_) => mask.clone().expand([b, heads, q_len, mask.dims()[3]]),
                None => ctx.mask_for_heads(heads),
            };
            softmax(scores.mask_fill(mask, f32::NEG_INFINITY), 3)
        });
        crate::kernels::matmul(probs, v)
    } else {
        let options = AttentionModuleOptions { scale: Some(scale), softcap, is_causal: false };
        attention(q, k, v, Some(mask), None, options)
    };
    out.reshape([b * heads * q_len, d]).select(0, back).reshape([ctx.output_rows(), heads * d])
}
