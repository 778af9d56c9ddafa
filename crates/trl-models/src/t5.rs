//! T5 (`T5ForConditionalGeneration`): v1.0 (ReLU, the LM head tied to `shared` and fed
//! `d_model^-0.5`-scaled states) and v1.1 / flan-t5 (gated-gelu, an untied `lm_head`, no
//! scaling). Pre-norm blocks with T5's RMS norm and no biases; unscaled attention plus a
//! learned relative-position bias (bidirectional buckets in the encoder, causal ones in the
//! decoder) that the first block of each stack holds and every block adds; cross-attention on the
//! encoder's output. The decoder has a KV cache ([`T5Cache`]) whose cross-attention keys and
//! values are computed once. Not a [`crate::Backbone`]: an encoder–decoder has two inputs.
//!
//! Positions are the batch's column indices, as transformers uses them; only distances between
//! tokens matter, so left and right padding give the same numbers at real tokens.

#![allow(non_snake_case)] // `SelfAttention`, `EncDecAttention`, `DenseReluDense`: the checkpoint's names

use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, Initializer};
use burn::prelude::*;
use burn::tensor::activation::softmax;
use serde::Deserialize;

use trl_core::{load_module_owned, HfConfig, LoadReport, Quantize, StateDict, Strictness, WeightDtype};

use crate::batch::TokenBatch;
use crate::error::{ModelError, Result};
use crate::layers::{embed, Activation, RmsNorm};
use crate::limits;
use crate::lora::{held_linear, in_dtype, Linear};

/// `config.json`'s `model_type` of this family.
pub const MODEL_TYPE: &str = "t5";

/// The fields of a T5 `config.json` the model uses, with transformers' defaults.
#[derive(Debug, Clone, Deserialize)]
pub struct T5Config {
    pub vocab_size: usize,
    pub d_model: usize,
    pub d_kv: usize,
    pub d_ff: usize,
    pub num_layers: usize,
    #[serde(default)]
    pub num_decoder_layers: Option<usize>,
    pub num_heads: usize,
    #[serde(default = "buckets")]
    pub relative_attention_num_buckets: usize,
    #[serde(default = "max_distance")]
    pub relative_attention_max_distance: usize,
    #[serde(default = "eps")]
    pub layer_norm_epsilon: f64,
    #[serde(default = "relu")]
    pub feed_forward_proj: String,
    #[serde(default)]
    pub tie_word_embeddings: Option<bool>,
    /// Written by transformers 5 (which always ties the head): whether the decoder's output is
    /// scaled by `d_model^-0.5` before the LM head. Older configs say it with
    /// `tie_word_embeddings` (`false` for v1.1: no scaling).
    #[serde(default)]
    pub scale_decoder_outputs: Option<bool>,
    #[serde(default)]
    pub n_positions: Option<usize>,
    #[serde(default = "one")]
    pub initializer_factor: f64,
    /// The token the decoder starts from (T5's is `<pad>`, 0).
    #[serde(default)]
    pub decoder_start_token_id: Option<i64>,
    #[serde(default)]
    pub pad_token_id: Option<i64>,
}

fn buckets() -> usize {
    32
}
fn max_distance() -> usize {
    128
}
fn eps() -> f64 {
    1e-6
}
fn relu() -> String {
    "relu".into()
}
fn one() -> f64 {
    1.0
}

#[derive(Module, Debug)]
pub struct T5Attention<B: Backend> {
    pub q: Linear<B>,
    pub k: Linear<B>,
    pub v: Linear<B>,
    pub o: Linear<B>,
    /// `[buckets, heads]`, in the first block of each stack only.
    pub relative_attention_bias: Option<Embedding<B>>,
    pub n_heads: usize,
}

#[derive(Module, Debug)]
pub struct T5LayerSelfAttention<B: Backend> {
    pub SelfAttention: T5Attention<B>,
    pub layer_norm: RmsNorm<B>,
}

#[derive(Module, Debug)]
pub struct T5LayerCrossAttention<B: Backend> {
    pub EncDecAttention: T5Attention<B>,
    pub layer_norm: RmsNorm<B>,
}

/// `wi` (v1.0) or the gated `wi_0` · `wi_1` (v1.1), then `wo`.
#[derive(Module, Debug)]
pub struct T5DenseActDense<B: Backend> {
    pub wi: Option<Linear<B>>,
    pub wi_0: Option<Linear<B>>,
    pub wi_1: Option<Linear<B>>,
    pub wo: Linear<B>,
}

#[derive(Module, Debug)]
pub struct T5LayerFF<B: Backend> {
    pub DenseReluDense: T5DenseActDense<B>,
    pub layer_norm: RmsNorm<B>,
}

/// One entry of a block's `layer` list: `layer.0` self-attention, then (decoder) `layer.1`
/// cross-attention, then the feed-forward layer.
#[derive(Module, Debug)]
pub enum T5SubLayer<B: Backend> {
    SelfAttention(T5LayerSelfAttention<B>),
    CrossAttention(T5LayerCrossAttention<B>),
    FeedForward(T5LayerFF<B>),
}

#[derive(Module, Debug)]
pub struct T5Block<B: Backend> {
    pub layer: Vec<T5SubLayer<B>>,
}

#[derive(Module, Debug)]
pub struct T5Stack<B: Backend> {
    pub block: Vec<T5Block<B>>,
    pub final_layer_norm: RmsNorm<B>,
}

/// `T5ForConditionalGeneration`.
#[derive(Module, Debug)]
pub struct T5ForConditionalGeneration<B: Backend> {
    pub shared: Embedding<B>,
    pub encoder: T5Stack<B>,
    pub decoder: T5Stack<B>,
    /// The untied head (`None`: `shared` is the head).
    pub lm_head: Option<burn::nn::Linear<B>>,
    #[module(skip)]
    pub settings: T5Settings,
}

/// What the forward pass needs besides the weights.
#[derive(Debug, Clone, Copy)]
pub struct T5Settings {
    pub act: Activation,
    pub num_buckets: i64,
    pub max_distance: i64,
    /// Multiply the decoder's output by `d_model^-0.5` before the LM head.
    pub scale_decoder_outputs: bool,
    pub max_positions: usize,
    pub decoder_start_token_id: i64,
}

/// The decoder's KV cache: self-attention keys and values per layer, grown token by token, and
/// cross-attention keys and values of the encoder's output, computed on the first step.
#[derive(Debug, Clone)]
pub struct T5Cache<B: Backend> {
    pub self_kv: Vec<Option<(Tensor<B, 4>, Tensor<B, 4>)>>,
    pub cross_kv: Vec<Option<(Tensor<B, 4>, Tensor<B, 4>)>>,
    /// The decoder's attention mask so far, `[batch, len]` row-major.
    pub mask: Vec<i64>,
    pub batch: usize,
    pub len: usize,
}

impl<B: Backend> T5Cache<B> {
    pub fn new(layers: usize, batch: usize) -> Self {
        Self { self_kv: vec![None; layers], cross_kv: vec![None; layers], mask: Vec::new(), batch, len: 0 }
    }

    /// Keeps only rows `keep` (ascending indices into the current rows).
    pub fn select_rows(&mut self, keep: &[usize], device: &B::Device) {
        let idx = Tensor::<B, 1, Int>::from_data(
            TensorData::new(keep.iter().map(|&i| i as i64).collect(), [keep.len()]),
            device,
        );
        for (k, v) in self.self_kv.iter_mut().chain(self.cross_kv.iter_mut()).flatten() {
            *k = k.clone().select(0, idx.clone());
            *v = v.clone().select(0, idx.clone());
        }
        let len = self.len;
        self.mask = keep.iter().flat_map(|&r| self.mask[r * len..(r + 1) * len].iter().copied()).collect();
        self.batch = keep.len();
    }
}

/// transformers' `T5Attention._relative_position_bucket` of `relative = key − query`, in f32 as
/// torch computes it.
pub fn relative_bucket(relative: i64, bidirectional: bool, num_buckets: i64, max_distance: i64) -> i64 {
    let (n, base, distance) = if bidirectional {
        let n = num_buckets / 2;
        (n, if relative > 0 { n } else { 0 }, relative.abs())
    } else {
        (num_buckets, 0, -relative.min(0))
    };
    let exact = n / 2;
    if distance < exact {
        return base + distance;
    }
    let scale = ((max_distance as f64 / exact as f64).ln()) as f32;
    let offset = ((distance as f32 / exact as f32).ln() / scale * (n - exact) as f32) as i64;
    // the clamp from below (and the saturation) only bite for configs `init` refuses
    base + exact.saturating_add(offset).clamp(exact, (n - 1).max(exact))
}

impl T5Config {
    fn decoder_layers(&self) -> usize {
        self.num_decoder_layers.unwrap_or(self.num_layers)
    }

    /// `(gated, activation)` from `feed_forward_proj` (`relu`, `gated-gelu`, …).
    fn activation(&self) -> Result<(bool, Activation)> {
        let parts: Vec<&str> = self.feed_forward_proj.split('-').collect();
        match parts.as_slice() {
            ["gated", "gelu"] => Ok((true, Activation::GeluNew)),
            ["gated", act] => Ok((true, Activation::parse(act)?)),
            [act] => Ok((false, Activation::parse(act)?)),
            _ => Err(ModelError::Config(format!(
                "feed_forward_proj `{}` is not `ACT` or `gated-ACT` (e.g. `relu`, `gated-gelu`)",
                self.feed_forward_proj
            ))),
        }
    }

    fn num_parameters(&self) -> u128 {
        let [v, d, inner, ff] =
            [self.vocab_size, self.d_model, self.num_heads * self.d_kv, self.d_ff].map(|x| x as u128);
        let attn = 4 * d * inner + d;
        let ffn = 3 * d * ff + d;
        v * d * 2 + self.num_layers as u128 * (attn + ffn) + self.decoder_layers() as u128 * (2 * attn + ffn)
    }

    /// A randomly initialised model (transformers' T5 initialisation scales).
    pub fn init<B: Backend>(&self, device: &B::Device) -> Result<T5ForConditionalGeneration<B>> {
        for (field, v) in [
            ("vocab_size", self.vocab_size),
            ("d_model", self.d_model),
            ("d_kv", self.d_kv),
            ("d_ff", self.d_ff),
            ("num_heads", self.num_heads),
            ("relative_attention_num_buckets", self.relative_attention_num_buckets),
            ("relative_attention_max_distance", self.relative_attention_max_distance),
        ] {
            limits::positive(field, v)?;
        }
        if self.relative_attention_num_buckets < 4
            || self.relative_attention_max_distance <= self.relative_attention_num_buckets / 4
        {
            return Err(ModelError::Config(format!(
                "relative_attention_num_buckets {} and relative_attention_max_distance {}: T5 needs at least 4 \
                 buckets and a max distance beyond the exact range (num_buckets / 4); the released models use 32 and 128",
                self.relative_attention_num_buckets, self.relative_attention_max_distance
            )));
        }
        limits::finite_at_least("layer_norm_epsilon", self.layer_norm_epsilon, 0.0)?;
        limits::finite_at_least("initializer_factor", self.initializer_factor, 0.0)?;
        limits::check_fits(self.num_parameters())?;
        let (gated, act) = self.activation()?;
        let (d, inner, f) = (self.d_model, self.num_heads * self.d_kv, self.initializer_factor);
        let std = |fan: usize| f * (fan as f64).powf(-0.5);
        let lin = |i: usize, o: usize, fan: usize| Linear::new(i, o, false, std(fan), device);
        let norm = || RmsNorm::new(d, self.layer_norm_epsilon, device);
        let attention = |bias: bool| T5Attention {
            q: lin(d, inner, d * self.d_kv),
            k: lin(d, inner, d),
            v: lin(d, inner, d),
            o: lin(inner, d, inner),
            relative_attention_bias: bias.then(|| {
                EmbeddingConfig::new(self.relative_attention_num_buckets, self.num_heads)
                    .with_initializer(Initializer::Normal { mean: 0.0, std: std(d) })
                    .init(device)
            }),
            n_heads: self.num_heads,
        };
        let ff = || {
            T5SubLayer::FeedForward(T5LayerFF {
                DenseReluDense: T5DenseActDense {
                    wi: (!gated).then(|| lin(d, self.d_ff, d)),
                    wi_0: gated.then(|| lin(d, self.d_ff, d)),
                    wi_1: gated.then(|| lin(d, self.d_ff, d)),
                    wo: lin(self.d_ff, d, self.d_ff),
                },
                layer_norm: norm(),
            })
        };
        let stack = |layers: usize, decoder: bool| T5Stack {
            block: (0..layers)
                .map(|i| {
                    let mut layer = vec![T5SubLayer::SelfAttention(T5LayerSelfAttention {
                        SelfAttention: attention(i == 0),
                        layer_norm: norm(),
                    })];
                    if decoder {
                        layer.push(T5SubLayer::CrossAttention(T5LayerCrossAttention {
                            EncDecAttention: attention(false),
                            layer_norm: norm(),
                        }));
                    }
                    layer.push(ff());
                    T5Block { layer }
                })
                .collect(),
            final_layer_norm: norm(),
        };
        let scale = self.scale_decoder_outputs.unwrap_or(self.tie_word_embeddings != Some(false));
        Ok(T5ForConditionalGeneration {
            shared: EmbeddingConfig::new(self.vocab_size, d)
                .with_initializer(Initializer::Normal { mean: 0.0, std: f })
                .init(device),
            encoder: stack(self.num_layers, false),
            decoder: stack(self.decoder_layers(), true),
            lm_head: (self.tie_word_embeddings == Some(false))
                .then(|| crate::layers::linear(d, self.vocab_size, false, std(d), device)),
            settings: T5Settings {
                act,
                num_buckets: self.relative_attention_num_buckets as i64,
                max_distance: self.relative_attention_max_distance as i64,
                scale_decoder_outputs: scale,
                max_positions: self.n_positions.unwrap_or(512),
                decoder_start_token_id: self.decoder_start_token_id.or(self.pad_token_id).unwrap_or(0),
            },
        })
    }
}

/// `[batch, seq, heads · d]` → `[batch, heads, seq, d]`.
fn heads<B: Backend>(x: Tensor<B, 3>, n: usize) -> Tensor<B, 4> {
    let [b, t, hd] = x.dims();
    x.reshape([b, t, n, hd / n]).swap_dims(1, 2)
}

impl<B: Backend> T5Attention<B> {
    /// `o(softmax(q·kᵀ + bias, masked) · v)` for queries `x` `[batch, q_len, d_model]` and keys
    /// and values `kv` `[batch, heads, k_len, d_kv]`; `keep` broadcasts to `[batch, 1, q_len, k_len]`.
    fn attend(
        &self,
        x: Tensor<B, 3>,
        (k, v): (Tensor<B, 4>, Tensor<B, 4>),
        bias: Option<&Tensor<B, 4>>,
        keep: &Tensor<B, 4, Bool>,
    ) -> Tensor<B, 3> {
        let [b, t, _] = x.dims();
        let q = heads(self.q.forward(x), self.n_heads);
        let mut scores = q.matmul(k.swap_dims(2, 3));
        if let Some(bias) = bias {
            scores = scores + bias.clone();
        }
        let [_, _, tq, tk] = scores.dims();
        let probs = softmax(scores.mask_fill(keep.clone().bool_not().expand([b, 1, tq, tk]), f32::MIN), 3);
        let out = probs.matmul(v).swap_dims(1, 2);
        let inner = out.dims()[2] * out.dims()[3];
        self.o.forward(out.reshape([b, t, inner]))
    }

    fn keys_values(&self, x: Tensor<B, 3>) -> (Tensor<B, 4>, Tensor<B, 4>) {
        (heads(self.k.forward(x.clone()), self.n_heads), heads(self.v.forward(x), self.n_heads))
    }

    /// The relative-position bias `[1, heads, q_len, k_len]` of queries at positions
    /// `past..past + q_len` against keys `0..k_len`.
    fn bias(
        &self,
        settings: &T5Settings,
        q_len: usize,
        k_len: usize,
        past: usize,
        bidirectional: bool,
    ) -> Tensor<B, 4> {
        let table = self.relative_attention_bias.as_ref().expect("the first block holds the bias table");
        let weight = in_dtype(table.weight.val(), <B::FloatElem as burn::tensor::Element>::dtype());
        let idx: Vec<i64> = (0..q_len)
            .flat_map(|i| (0..k_len).map(move |j| j as i64 - (past + i) as i64))
            .map(|rel| relative_bucket(rel, bidirectional, settings.num_buckets, settings.max_distance))
            .collect();
        let device = weight.device();
        let h = weight.dims()[1];
        let idx = Tensor::<B, 1, Int>::from_data(TensorData::new(idx, [q_len * k_len]), &device);
        weight.select(0, idx).reshape([q_len, k_len, h]).permute([2, 0, 1]).unsqueeze_dim(0)
    }
}

impl<B: Backend> T5DenseActDense<B> {
    fn forward(&self, x: Tensor<B, 3>, act: Activation) -> Tensor<B, 3> {
        let h = match (&self.wi, &self.wi_0, &self.wi_1) {
            (Some(wi), _, _) => act.apply(wi.forward(x)),
            (None, Some(w0), Some(w1)) => act.apply(w0.forward(x.clone())) * w1.forward(x),
            _ => unreachable!("init builds wi or wi_0 and wi_1"),
        };
        self.wo.forward(h)
    }
}

/// `keep[b, 0, 0, j]`: key `j` of row `b` is a real token.
fn key_mask<B: Backend>(mask: &[i64], batch: usize, len: usize, device: &B::Device) -> Tensor<B, 4, Bool> {
    Tensor::<B, 2, Int>::from_data(TensorData::new(mask.to_vec(), [batch, len]), device)
        .equal_elem(1)
        .reshape([batch, 1, 1, len])
}

impl<B: Backend> T5ForConditionalGeneration<B> {
    /// A randomly initialised model for a `t5` `config.json`.
    pub fn init(config: &HfConfig, device: &B::Device) -> Result<Self> {
        config.parse::<T5Config>()?.init(device)
    }

    /// Loads a `T5ForConditionalGeneration` state dict (remove other parts, such as `v_head.*`,
    /// first), freeing each tensor once converted; weight matrices are held in `dtype`, and the
    /// projections quantized as `quantize` says. As transformers 5 does: the per-stack copies of
    /// `shared` and the decoder's unused cross-attention bias table are ignored, and the head is
    /// `lm_head.weight` when the checkpoint has one, else `shared`.
    pub fn load_as(mut self, mut sd: StateDict, dtype: WeightDtype, quantize: Quantize) -> Result<(Self, LoadReport)> {
        for key in [
            "encoder.embed_tokens.weight",
            "decoder.embed_tokens.weight",
            "decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",
        ] {
            sd.remove(key);
        }
        self.lm_head = sd.keys().any(|k| k == "lm_head.weight").then(|| {
            let [v, d] = self.shared.weight.dims();
            crate::layers::linear(d, v, false, 0.0, &self.device())
        });
        let int8 = |k: &str| {
            quantize == Quantize::Int8
                && k != "shared.weight"
                && k != "lm_head.weight"
                && !k.contains("relative_attention_bias")
        };
        Ok(load_module_owned(self, sd, Strictness::Strict, dtype, &int8)?)
    }

    /// `n_positions` of the config (512 when absent): the default longest input. T5's
    /// relative positions have no hard limit; this bounds what a row may cost.
    pub fn max_positions(&self) -> usize {
        self.settings.max_positions
    }

    /// The token every decoder input starts with (`decoder_start_token_id`).
    pub fn decoder_start_token_id(&self) -> i64 {
        self.settings.decoder_start_token_id
    }

    pub fn hidden_size(&self) -> usize {
        self.shared.weight.dims()[1]
    }

    pub fn vocab_size(&self) -> usize {
        self.shared.weight.dims()[0]
    }

    pub fn num_decoder_layers(&self) -> usize {
        self.decoder.block.len()
    }

    pub fn device(&self) -> B::Device {
        self.shared.weight.device()
    }

    /// The dtype the weight matrices are held in.
    pub fn weight_dtype(&self) -> burn::tensor::DType {
        self.shared.weight.val().dtype()
    }

    fn check(&self, len: usize) -> Result<()> {
        if len > self.max_positions() {
            return Err(ModelError::TooLong { len, max: self.max_positions() });
        }
        Ok(())
    }

    /// The encoder's last hidden state `[batch, seq, d_model]`.
    pub fn encode(&self, batch: &TokenBatch) -> Result<Tensor<B, 3>> {
        self.check(batch.seq)?;
        let device = self.device();
        let (b, s) = (batch.batch, batch.seq);
        if batch.input_ids.len() != b * s || batch.attention_mask.len() != b * s {
            return Err(ModelError::Input(format!(
                "a [{b}, {s}] batch needs {} ids and mask values; got {} and {}",
                b * s,
                batch.input_ids.len(),
                batch.attention_mask.len()
            )));
        }
        let keep = key_mask::<B>(&batch.attention_mask, b, s, &device);
        let mut x = embed(&self.shared, batch.ids_tensor(&device));
        let mut bias = None;
        for block in &self.encoder.block {
            for layer in &block.layer {
                x = match layer {
                    T5SubLayer::SelfAttention(l) => {
                        let a = &l.SelfAttention;
                        if a.relative_attention_bias.is_some() {
                            bias = Some(a.bias(&self.settings, s, s, 0, true));
                        }
                        let h = l.layer_norm.forward(x.clone());
                        x + a.attend(h.clone(), a.keys_values(h), bias.as_ref(), &keep)
                    }
                    T5SubLayer::FeedForward(l) => {
                        x.clone() + l.DenseReluDense.forward(l.layer_norm.forward(x), self.settings.act)
                    }
                    T5SubLayer::CrossAttention(_) => unreachable!("the encoder has no cross-attention"),
                };
            }
        }
        Ok(self.encoder.final_layer_norm.forward(x))
    }

    /// The decoder's last hidden state (after its final norm, as transformers'
    /// `decoder_hidden_states[-1]`) for decoder tokens `ids` `[batch, q_len]` with their `mask`,
    /// attending to `encoded` under `encoder_mask` `[batch, seq]`; with a `cache`, the tokens
    /// continue it and are added to it.
    pub fn decode(
        &self,
        ids: Tensor<B, 2, Int>,
        mask: &[i64],
        encoded: &Tensor<B, 3>,
        encoder_mask: &[i64],
        mut cache: Option<&mut T5Cache<B>>,
    ) -> Result<Tensor<B, 3>> {
        let device = self.device();
        let [b, q] = ids.dims();
        let s = encoded.dims()[1];
        let past = cache.as_ref().map_or(0, |c| c.len);
        self.check(past + q)?;
        let rows = cache.as_ref().map_or(b, |c| c.batch);
        if mask.len() != b * q || encoder_mask.len() != b * s || encoded.dims()[0] != b || rows != b {
            return Err(ModelError::Input(format!(
                "decoder ids [{b}, {q}] need a mask of {} values, encoder states and a cache of {b} rows and an \
                 encoder mask of {} values; got {}, {}, {rows} and {}",
                b * q,
                b * s,
                mask.len(),
                encoded.dims()[0],
                encoder_mask.len()
            )));
        }
        let full: Vec<i64> = match cache.as_deref_mut() {
            Some(c) => {
                let old = std::mem::take(&mut c.mask);
                let l = c.len;
                let full = (0..b)
                    .flat_map(|r| old[r * l..(r + 1) * l].iter().chain(&mask[r * q..(r + 1) * q]).copied())
                    .collect();
                c.mask.clone_from(&full);
                c.len += q;
                full
            }
            None => mask.to_vec(),
        };
        let k_len = past + q;
        let causal: Vec<bool> = (0..q).flat_map(|i| (0..k_len).map(move |j| j <= past + i)).collect();
        let causal =
            Tensor::<B, 2, Bool>::from_data(TensorData::new(causal, [q, k_len]), &device).reshape([1, 1, q, k_len]);
        let keep =
            key_mask::<B>(&full, b, k_len, &device).expand([b, 1, q, k_len]).bool_and(causal.expand([b, 1, q, k_len]));
        let cross_keep = key_mask::<B>(encoder_mask, b, s, &device);
        let mut x = embed(&self.shared, ids);
        let mut bias = None;
        for (i, block) in self.decoder.block.iter().enumerate() {
            for layer in &block.layer {
                x = match layer {
                    T5SubLayer::SelfAttention(l) => {
                        let a = &l.SelfAttention;
                        if a.relative_attention_bias.is_some() {
                            bias = Some(a.bias(&self.settings, q, k_len, past, false));
                        }
                        let h = l.layer_norm.forward(x.clone());
                        let (mut k, mut v) = a.keys_values(h.clone());
                        if let Some(c) = cache.as_deref_mut() {
                            if let Some((pk, pv)) = c.self_kv[i].take() {
                                k = Tensor::cat(vec![pk, k], 2);
                                v = Tensor::cat(vec![pv, v], 2);
                            }
                            c.self_kv[i] = Some((k.clone(), v.clone()));
                        }
                        x + a.attend(h, (k, v), bias.as_ref(), &keep)
                    }
                    T5SubLayer::CrossAttention(l) => {
                        let a = &l.EncDecAttention;
                        let kv = match cache.as_deref_mut() {
                            Some(c) => c.cross_kv[i].get_or_insert_with(|| a.keys_values(encoded.clone())).clone(),
                            None => a.keys_values(encoded.clone()),
                        };
                        x.clone() + a.attend(l.layer_norm.forward(x), kv, None, &cross_keep)
                    }
                    T5SubLayer::FeedForward(l) => {
                        x.clone() + l.DenseReluDense.forward(l.layer_norm.forward(x), self.settings.act)
                    }
                };
            }
        }
        Ok(self.decoder.final_layer_norm.forward(x))
    }

    /// LM logits `[batch, q_len, vocab]` from decoder states: scaled by `d_model^-0.5` first
    /// when the config says so, through `lm_head` or `shared`.
    pub fn logits(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        let [b, t, d] = hidden.dims();
        let hidden = if self.settings.scale_decoder_outputs { hidden * (d as f64).powf(-0.5) } else { hidden };
        match &self.lm_head {
            Some(head) => held_linear(hidden, head.weight.val(), None),
            None => {
                let weight = in_dtype(self.shared.weight.val(), hidden.dtype());
                let v = weight.dims()[0];
                hidden.reshape([b * t, d]).matmul(weight.transpose()).reshape([b, t, v])
            }
        }
    }

    /// `[batch, 1]` decoder start tokens.
    pub fn start_tokens(&self, batch: usize) -> Tensor<B, 2, Int> {
        Tensor::full([batch, 1], self.decoder_start_token_id(), &self.device())
    }

    /// A fresh decoder cache for `batch` rows.
    pub fn new_cache(&self, batch: usize) -> T5Cache<B> {
        T5Cache::new(self.num_decoder_layers(), batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// transformers' `_relative_position_bucket` (32 buckets, max distance 128): exact below 8
    /// (16 in the causal case), log-spaced above, both directions apart when bidirectional.
    #[test]
    fn buckets_follow_transformers() {
        let bi: Vec<i64> =
            [-200, -20, -8, -7, -1, 0, 1, 7, 8, 20, 200].iter().map(|&r| relative_bucket(r, true, 32, 128)).collect();
        let causal: Vec<i64> =
            [-200, -20, -16, -15, -1, 0, 5].iter().map(|&r| relative_bucket(r, false, 32, 128)).collect();
        // torch: T5Attention._relative_position_bucket(torch.tensor([...]), bidirectional, 32, 128)
        assert_eq!(bi, vec![15, 10, 8, 7, 1, 0, 17, 23, 24, 26, 31]);
        assert_eq!(causal, vec![31, 17, 16, 15, 1, 0, 0]);
    }

    /// Configs that would index outside the bias table are refused, and the bucket function
    /// stays inside the table even for them.
    #[test]
    fn degenerate_bucket_configs_are_refused() {
        let base =
            serde_json::json!({"vocab_size": 8, "d_model": 4, "d_kv": 2, "d_ff": 4, "num_layers": 1, "num_heads": 2});
        for (buckets, max) in [(2, 128), (32, 8), (1, 1)] {
            let mut c = base.clone();
            c["relative_attention_num_buckets"] = buckets.into();
            c["relative_attention_max_distance"] = max.into();
            let cfg: T5Config = serde_json::from_value(c).unwrap();
            let e = cfg.init::<trl_core::backend::Default>(&trl_core::backend::device()).unwrap_err().to_string();
            assert!(e.contains("relative_attention_num_buckets"), "{e}");
            for rel in [-1000, -9, -1, 0, 1, 9, 1000] {
                for bi in [true, false] {
                    let b = relative_bucket(rel, bi, buckets, max);
                    assert!((0..buckets.max(1)).contains(&b), "bucket {b} of {rel} ({buckets}, {max})");
                }
            }
        }
    }
}
