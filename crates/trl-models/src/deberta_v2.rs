//! DeBERTa-v2 and v3 (`DebertaV2Model`): a bidirectional encoder with disentangled attention.
//! Each attention score adds to content·content the content→position (`c2p`) and
//! position→content (`p2c`) terms, read from a table of relative-position embeddings at the
//! (optionally log-bucketed) distance between the two tokens. Post-LayerNorm blocks; DeBERTa-v2's
//! `ConvLayer` after the first block; absolute positions only when `position_biased_input`.
//! Not a [`crate::Backbone`]: it has no causal mask, KV cache or LM head.
//!
//! Positions are the batch's column indices, as transformers uses them: rows are right padded
//! (the reward is read at the first token, `[CLS]`).

#![allow(non_snake_case)] // `LayerNorm` is the checkpoint's name for these modules

use burn::module::{Module, Param};
use burn::nn::{Embedding, EmbeddingConfig, Initializer};
use burn::prelude::*;
use burn::tensor::activation::softmax;
use burn::tensor::ops::ConvOptions;
use serde::{Deserialize, Deserializer};

use trl_core::HfConfig;

use crate::batch::TokenBatch;
use crate::error::{ModelError, Result};
use crate::layers::{embed, Activation, LayerNorm};
use crate::limits;
use crate::lora::{in_dtype, Linear};

/// `config.json`'s `model_type` of this family.
pub const MODEL_TYPE: &str = "deberta-v2";

/// The fields of a DeBERTa-v2 `config.json` the encoder uses, with transformers' defaults.
#[derive(Debug, Clone, Deserialize)]
pub struct DebertaV2Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default)]
    pub attention_head_size: Option<usize>,
    #[serde(default)]
    pub embedding_size: Option<usize>,
    #[serde(default = "gelu")]
    pub hidden_act: String,
    #[serde(default = "max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub type_vocab_size: usize,
    #[serde(default = "ln_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub relative_attention: bool,
    #[serde(default = "minus_one")]
    pub max_relative_positions: i64,
    #[serde(default = "minus_one")]
    pub position_buckets: i64,
    #[serde(default = "yes")]
    pub position_biased_input: bool,
    /// `["p2c", "c2p"]`, or the older string form `"p2c|c2p"`.
    #[serde(default, deserialize_with = "att_types")]
    pub pos_att_type: Vec<String>,
    #[serde(default)]
    pub share_att_key: bool,
    #[serde(default = "none")]
    pub norm_rel_ebd: String,
    #[serde(default)]
    pub conv_kernel_size: usize,
    #[serde(default = "one")]
    pub conv_groups: usize,
    #[serde(default = "tanh")]
    pub conv_act: String,
    #[serde(default)]
    pub pooler_hidden_size: Option<usize>,
    #[serde(default = "gelu")]
    pub pooler_hidden_act: String,
    #[serde(default = "init_range")]
    pub initializer_range: f64,
}

fn gelu() -> String {
    "gelu".into()
}
fn tanh() -> String {
    "tanh".into()
}
fn none() -> String {
    "none".into()
}
fn max_pos() -> usize {
    512
}
fn ln_eps() -> f64 {
    1e-7
}
fn minus_one() -> i64 {
    -1
}
fn yes() -> bool {
    true
}
fn one() -> usize {
    1
}
fn init_range() -> f64 {
    0.02
}

fn att_types<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Types {
        Joined(String),
        List(Vec<String>),
    }
    Ok(match Option::<Types>::deserialize(d)? {
        None => Vec::new(),
        Some(Types::Joined(s)) => s.to_lowercase().split('|').map(|t| t.trim().to_string()).collect(),
        Some(Types::List(l)) => l,
    })
}

/// Which relative-position terms an attention adds, and how distances are measured.
#[derive(Debug, Clone, Copy, Default)]
pub struct Relative {
    pub c2p: bool,
    pub p2c: bool,
    pub share_att_key: bool,
    /// `position_buckets` (log buckets beyond half of it) when positive.
    pub buckets: i64,
    /// `max_relative_positions` (the `max_position_embeddings` when unset).
    pub max_relative: i64,
    /// Half the relative-embedding table: distances are clamped to `[-span, span)`.
    pub span: i64,
}

impl Relative {
    /// transformers' `build_relative_position` (with `make_log_bucket_position`) between query
    /// position `q` and key position `k`, computed in f32 as torch does.
    fn distance(&self, q: i64, k: i64) -> i64 {
        let rel = q - k;
        if self.buckets <= 0 || self.max_relative <= 0 {
            return rel;
        }
        let mid = self.buckets / 2;
        let abs = if rel < mid && rel > -mid { mid - 1 } else { rel.abs() };
        if abs <= mid {
            return rel;
        }
        let base = (((self.max_relative - 1) as f64 / mid as f64) as f32).ln();
        let log_pos = ((abs as f32 / mid as f32).ln() / base * (mid - 1) as f32).ceil() as i64 + mid;
        log_pos * rel.signum()
    }

    /// The `[seq, seq]` table indices of the `c2p` term (`p2c` with `-1`): the distance shifted
    /// by `span` and clamped into the table.
    fn index<B: Backend>(&self, seq: usize, sign: i64, device: &B::Device) -> Tensor<B, 2, Int> {
        let top = 2 * self.span - 1;
        let idx: Vec<i64> = (0..seq as i64)
            .flat_map(|q| (0..seq as i64).map(move |k| (q, k)))
            .map(|(q, k)| (sign * self.distance(q, k) + self.span).clamp(0, top))
            .collect();
        Tensor::from_data(TensorData::new(idx, [seq, seq]), device)
    }
}

#[derive(Module, Debug)]
pub struct DebertaV2Embeddings<B: Backend> {
    pub word_embeddings: Embedding<B>,
    pub position_embeddings: Option<Embedding<B>>,
    pub embed_proj: Option<Linear<B>>,
    pub LayerNorm: LayerNorm<B>,
}

#[derive(Module, Debug)]
pub struct DisentangledSelfAttention<B: Backend> {
    pub query_proj: Linear<B>,
    pub key_proj: Linear<B>,
    pub value_proj: Linear<B>,
    pub pos_key_proj: Option<Linear<B>>,
    pub pos_query_proj: Option<Linear<B>>,
    pub heads: usize,
}

#[derive(Module, Debug)]
pub struct DebertaV2SelfOutput<B: Backend> {
    pub dense: Linear<B>,
    pub LayerNorm: LayerNorm<B>,
}

#[derive(Module, Debug)]
pub struct DebertaV2Attention<B: Backend> {
    /// `attention.self` in the checkpoint.
    pub self_: DisentangledSelfAttention<B>,
    pub output: DebertaV2SelfOutput<B>,
}

#[derive(Module, Debug)]
pub struct DebertaV2Dense<B: Backend> {
    pub dense: Linear<B>,
}

#[derive(Module, Debug)]
pub struct DebertaV2Layer<B: Backend> {
    pub attention: DebertaV2Attention<B>,
    pub intermediate: DebertaV2Dense<B>,
    pub output: DebertaV2SelfOutput<B>,
}

/// `torch.nn.Conv1d` weights: `weight` `[out, in / groups, kernel]`.
#[derive(Module, Debug)]
pub struct Conv1d<B: Backend> {
    pub weight: Param<Tensor<B, 3>>,
    pub bias: Param<Tensor<B, 1>>,
}

/// DeBERTa-v2's `ConvLayer`, applied to the embeddings and added to the first block's output.
#[derive(Module, Debug)]
pub struct ConvLayer<B: Backend> {
    pub conv: Conv1d<B>,
    pub LayerNorm: LayerNorm<B>,
    pub groups: usize,
}

#[derive(Module, Debug)]
pub struct DebertaV2Encoder<B: Backend> {
    pub layer: Vec<DebertaV2Layer<B>>,
    pub rel_embeddings: Option<Embedding<B>>,
    pub LayerNorm: Option<LayerNorm<B>>,
    pub conv: Option<ConvLayer<B>>,
}

/// `DebertaV2Model`: embeddings and the encoder, under `deberta.` in a checkpoint.
#[derive(Module, Debug)]
pub struct DebertaV2Model<B: Backend> {
    pub embeddings: DebertaV2Embeddings<B>,
    pub encoder: DebertaV2Encoder<B>,
    #[module(skip)]
    pub settings: Settings,
}

/// What the forward pass needs besides the weights.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub relative: Option<Relative>,
    pub act: Activation,
    pub conv_act: Activation,
    pub max_positions: usize,
}

impl DebertaV2Config {
    fn check(&self) -> Result<()> {
        for (field, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
            ("embedding_size", self.embedding_size.unwrap_or(1)),
            ("conv_groups", self.conv_groups),
        ] {
            limits::positive(field, v)?;
        }
        let d = self.hidden_size;
        let bad = |m: String| Err(ModelError::Config(m));
        if !d.is_multiple_of(self.num_attention_heads) {
            return bad(format!(
                "hidden_size {d} is not divisible by num_attention_heads {}",
                self.num_attention_heads
            ));
        }
        if self.attention_head_size.is_some_and(|s| s * self.num_attention_heads != d) {
            return bad("attention_head_size × num_attention_heads must equal hidden_size".into());
        }
        if self.pooler_hidden_size.is_some_and(|p| p != d) {
            return bad("pooler_hidden_size must equal hidden_size (transformers' classifier reads hidden_size)".into());
        }
        if self.type_vocab_size > 0 {
            return bad(format!(
                "type_vocab_size {} (token type embeddings) is not supported: DeBERTa-v2 and v3 checkpoints have 0",
                self.type_vocab_size
            ));
        }
        if self.conv_kernel_size > 0 && (self.conv_kernel_size.is_multiple_of(2) || !d.is_multiple_of(self.conv_groups))
        {
            return bad("conv_kernel_size must be odd and hidden_size divisible by conv_groups".into());
        }
        if let Some(t) = self.pos_att_type.iter().find(|t| !matches!(t.as_str(), "c2p" | "p2c")) {
            return bad(format!("pos_att_type `{t}` is not supported (c2p, p2c)"));
        }
        limits::finite_at_least("layer_norm_eps", self.layer_norm_eps, 0.0)?;
        limits::finite_at_least("initializer_range", self.initializer_range, 0.0)?;
        Ok(())
    }

    fn relative(&self) -> Option<Relative> {
        self.relative_attention.then(|| {
            let max_relative = if self.max_relative_positions < 1 {
                self.max_position_embeddings as i64
            } else {
                self.max_relative_positions
            };
            let span = if self.position_buckets > 0 { self.position_buckets } else { max_relative };
            let has = |t: &str| self.pos_att_type.iter().any(|x| x == t);
            Relative {
                c2p: has("c2p"),
                p2c: has("p2c"),
                share_att_key: self.share_att_key,
                buckets: self.position_buckets,
                max_relative,
                span,
            }
        })
    }

    fn num_parameters(&self) -> u128 {
        let [v, d, e, i, p, l] = [
            self.vocab_size,
            self.hidden_size,
            self.embedding_size.unwrap_or(self.hidden_size),
            self.intermediate_size,
            self.max_position_embeddings,
            self.num_hidden_layers,
        ]
        .map(|x| x as u128);
        let span = self.relative().map_or(0, |r| r.span.max(0) as u128);
        let block = 6 * d * d + 2 * d * i + 12 * d;
        (v + p) * e + e * d + l * block + 2 * span * d + 4 * d * d
    }

    /// A randomly initialised encoder (N(0, initializer_range) weights, as transformers).
    pub fn init<B: Backend>(&self, device: &B::Device) -> Result<DebertaV2Model<B>> {
        self.check()?;
        limits::check_fits(self.num_parameters())?;
        let relative = self.relative();
        let (d, eps, std) = (self.hidden_size, self.layer_norm_eps, self.initializer_range);
        let e = self.embedding_size.unwrap_or(d);
        let emb = |n: usize, w: usize| {
            EmbeddingConfig::new(n, w).with_initializer(Initializer::Normal { mean: 0.0, std }).init(device)
        };
        let lin = |i: usize, o: usize| Linear::new(i, o, true, std, device);
        let separate = |t: bool| relative.filter(|r| t && !r.share_att_key).map(|_| lin(d, d));
        let norm = || LayerNorm::new(d, eps, device);
        let layer = (0..self.num_hidden_layers)
            .map(|_| DebertaV2Layer {
                attention: DebertaV2Attention {
                    self_: DisentangledSelfAttention {
                        query_proj: lin(d, d),
                        key_proj: lin(d, d),
                        value_proj: lin(d, d),
                        pos_key_proj: separate(relative.is_some_and(|r| r.c2p)),
                        pos_query_proj: separate(relative.is_some_and(|r| r.p2c)),
                        heads: self.num_attention_heads,
                    },
                    output: DebertaV2SelfOutput { dense: lin(d, d), LayerNorm: norm() },
                },
                intermediate: DebertaV2Dense { dense: lin(d, self.intermediate_size) },
                output: DebertaV2SelfOutput { dense: lin(self.intermediate_size, d), LayerNorm: norm() },
            })
            .collect();
        let k = self.conv_kernel_size;
        let conv = (k > 0).then(|| ConvLayer {
            conv: Conv1d {
                weight: Initializer::Normal { mean: 0.0, std }.init([d, d / self.conv_groups, k], device),
                bias: Initializer::Zeros.init([d], device),
            },
            LayerNorm: norm(),
            groups: self.conv_groups,
        });
        let rel_norm = self.norm_rel_ebd.to_lowercase().split('|').any(|t| t.trim() == "layer_norm");
        Ok(DebertaV2Model {
            embeddings: DebertaV2Embeddings {
                word_embeddings: emb(self.vocab_size, e),
                position_embeddings: self.position_biased_input.then(|| emb(self.max_position_embeddings, e)),
                embed_proj: (e != d).then(|| Linear::new(e, d, false, std, device)),
                LayerNorm: norm(),
            },
            encoder: DebertaV2Encoder {
                layer,
                rel_embeddings: relative.map(|r| emb(2 * r.span as usize, d)),
                LayerNorm: (relative.is_some() && rel_norm).then(norm),
                conv,
            },
            settings: Settings {
                relative,
                act: Activation::parse(&self.hidden_act)?,
                conv_act: Activation::parse(&self.conv_act)?,
                max_positions: self.max_position_embeddings,
            },
        })
    }
}

/// `[n, heads · d]` → `[batch, heads, seq, d]` for `n = batch · seq` rows.
fn split_heads<B: Backend>(x: Tensor<B, 3>, heads: usize) -> Tensor<B, 4> {
    let [b, t, hd] = x.dims();
    x.reshape([b, t, heads, hd / heads]).swap_dims(1, 2)
}

impl<B: Backend> DisentangledSelfAttention<B> {
    /// `x` `[batch, seq, hidden]`, `keep` `[batch, 1, seq, seq]` (both tokens real), the relative
    /// embeddings `[2 · span, hidden]` with their c2p / p2c table indices `[seq, seq]`.
    fn forward(&self, x: Tensor<B, 3>, keep: &Tensor<B, 4, Bool>, rel: Option<&RelativeInputs<B>>) -> Tensor<B, 3> {
        let [b, t, d] = x.dims();
        let h = self.heads;
        let q = split_heads(self.query_proj.forward(x.clone()), h);
        let k = split_heads(self.key_proj.forward(x.clone()), h);
        let v = split_heads(self.value_proj.forward(x), h);
        let factor = 1 + rel.map_or(0, |r| usize::from(r.c2p.is_some()) + usize::from(r.p2c.is_some()));
        let scale = (((d / h) * factor) as f64).sqrt();
        let mut scores = q.clone().matmul(k.clone().swap_dims(2, 3)) / scale;
        if let Some(r) = rel {
            let span2 = r.table.dims()[0];
            let table = r.table.clone().unsqueeze::<3>();
            let pos = |proj: &Linear<B>| split_heads(proj.forward(table.clone()), h).expand([b, h, span2, d / h]);
            if let Some(index) = &r.c2p {
                let pos_key = pos(self.pos_key_proj.as_ref().unwrap_or(&self.key_proj));
                let c2p = q.clone().matmul(pos_key.swap_dims(2, 3)).gather(3, index.clone());
                scores = scores + c2p / scale;
            }
            if let Some(index) = &r.p2c {
                let pos_query = pos(self.pos_query_proj.as_ref().unwrap_or(&self.query_proj));
                let p2c = k.matmul(pos_query.swap_dims(2, 3)).gather(3, index.clone()).swap_dims(2, 3);
                scores = scores + p2c / scale;
            }
        }
        let probs = softmax(scores.mask_fill(keep.clone().bool_not(), f32::MIN), 3);
        probs.matmul(v).swap_dims(1, 2).reshape([b, t, d])
    }
}

/// The relative-position inputs every layer shares.
struct RelativeInputs<B: Backend> {
    table: Tensor<B, 2>,
    c2p: Option<Tensor<B, 4, Int>>,
    p2c: Option<Tensor<B, 4, Int>>,
}

impl<B: Backend> DebertaV2SelfOutput<B> {
    fn forward(&self, x: Tensor<B, 3>, residual: Tensor<B, 3>) -> Tensor<B, 3> {
        self.LayerNorm.forward(self.dense.forward(x) + residual)
    }
}

impl<B: Backend> DebertaV2Model<B> {
    /// A randomly initialised encoder for a `deberta-v2` `config.json`.
    pub fn init(config: &HfConfig, device: &B::Device) -> Result<Self> {
        config.parse::<DebertaV2Config>()?.init(device)
    }

    /// The longest input: `max_position_embeddings` (what the model was trained on, and the
    /// size of its absolute-position table when it has one).
    pub fn max_positions(&self) -> usize {
        self.settings.max_positions
    }

    pub fn hidden_size(&self) -> usize {
        self.embeddings.LayerNorm.weight.dims()[0]
    }

    pub fn num_layers(&self) -> usize {
        self.encoder.layer.len()
    }

    /// The dtype the weight matrices are held in.
    pub fn weight_dtype(&self) -> burn::tensor::DType {
        self.embeddings.word_embeddings.weight.val().dtype()
    }

    pub fn device(&self) -> B::Device {
        self.embeddings.LayerNorm.weight.device()
    }

    /// Last hidden state `[batch, seq, hidden]` of a right-padded batch.
    pub fn forward(&self, batch: &TokenBatch) -> Result<Tensor<B, 3>> {
        let (b, t) = (batch.batch, batch.seq);
        if t > self.max_positions() {
            return Err(ModelError::TooLong { len: t, max: self.max_positions() });
        }
        let device = self.device();
        let mask = Tensor::<B, 2, Int>::from_data(TensorData::new(batch.attention_mask.clone(), [b, t]), &device);
        let real = mask.equal_elem(1);
        let keep = real.clone().reshape([b, 1, 1, t]).bool_and(real.clone().reshape([b, 1, t, 1]));
        let keep = keep.expand([b, 1, t, t]);
        let real3 = real.clone().reshape([b, t, 1]);
        let x = self.embed(batch.ids_tensor(&device), &real3);
        let rel = self.settings.relative.map(|r| {
            let weight = self.encoder.rel_embeddings.as_ref().expect("relative attention has a table").weight.val();
            let weight = in_dtype(weight, x.dtype());
            let index = |sign| r.index::<B>(t, sign, &device).reshape([1, 1, t, t]).expand([b, self.heads(), t, t]);
            RelativeInputs {
                table: match &self.encoder.LayerNorm {
                    Some(norm) => norm.forward(weight),
                    None => weight,
                },
                c2p: r.c2p.then(|| index(1)),
                p2c: r.p2c.then(|| index(-1)),
            }
        });
        let mut h = x.clone();
        for (i, layer) in self.encoder.layer.iter().enumerate() {
            let a = &layer.attention;
            let attended = a.output.forward(a.self_.forward(h.clone(), &keep, rel.as_ref()), h);
            let inner = self.settings.act.apply(layer.intermediate.dense.forward(attended.clone()));
            h = layer.output.forward(inner, attended);
            if let (0, Some(conv)) = (i, &self.encoder.conv) {
                h = conv.forward(x.clone(), h, &real3, self.settings.conv_act);
            }
        }
        Ok(h)
    }

    fn heads(&self) -> usize {
        self.encoder.layer.first().map_or(1, |l| l.attention.self_.heads)
    }

    /// Word (plus absolute position) embeddings, projected to the hidden size, normalised and
    /// zeroed at padding.
    fn embed(&self, ids: Tensor<B, 2, Int>, real: &Tensor<B, 3, Bool>) -> Tensor<B, 3> {
        let e = &self.embeddings;
        let [b, t] = ids.dims();
        let mut x = embed(&e.word_embeddings, ids);
        if let Some(pos) = &e.position_embeddings {
            let device = x.device();
            x = x + embed(pos, Tensor::<B, 1, Int>::arange(0..t as i64, &device).reshape([1, t]).expand([b, t]));
        }
        if let Some(proj) = &e.embed_proj {
            x = proj.forward(x);
        }
        e.LayerNorm.forward(x).mask_fill(real.clone().bool_not(), 0.0)
    }
}

impl<B: Backend> ConvLayer<B> {
    /// `LayerNorm(residual + act(conv(embeddings)))`, zero at padding (the conv's output too).
    fn forward(
        &self,
        x: Tensor<B, 3>,
        residual: Tensor<B, 3>,
        real: &Tensor<B, 3, Bool>,
        act: Activation,
    ) -> Tensor<B, 3> {
        let k = self.conv.weight.dims()[2];
        let weight = in_dtype(self.conv.weight.val(), x.dtype());
        let options = ConvOptions::new([1], [(k - 1) / 2], [1], self.groups);
        let out = burn::tensor::module::conv1d(x.swap_dims(1, 2), weight, Some(self.conv.bias.val()), options);
        let pad = real.clone().bool_not();
        let out = act.apply(out.swap_dims(1, 2).mask_fill(pad.clone(), 0.0));
        self.LayerNorm.forward(residual + out).mask_fill(pad, 0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// transformers' `make_log_bucket_position(q - k, 8, 64)`: exact within ±4, log buckets beyond.
    #[test]
    fn log_buckets_follow_transformers() {
        let r = Relative { buckets: 8, max_relative: 64, span: 8, ..Default::default() };
        let got: Vec<i64> = [0, 1, 3, 4, 5, 6, 8, 12, 20, 40, 63, 100].iter().map(|&d| r.distance(d, 0)).collect();
        // torch: make_log_bucket_position(torch.tensor([...]), 8, 64)
        assert_eq!(got, vec![0, 1, 3, 4, 5, 5, 5, 6, 6, 7, 7, 8]);
        assert_eq!(r.distance(0, 20), -6);
        let plain = Relative { buckets: -1, max_relative: 6, span: 6, ..Default::default() };
        assert_eq!(plain.distance(2, 30), -28);
    }
}
