//! Gemma 2 and Gemma 3 (text): RMSNorm scaled by `1 + weight`, embeddings scaled by
//! `√hidden`, norms before *and* after both attention and MLP, `head_dim` independent of
//! hidden / heads, attention scaled by `query_pre_attn_scalar^-½`, `gelu_pytorch_tanh`, and
//! sliding-window layers alternating with global ones (`layer_types`). Gemma 2 soft-caps the
//! attention scores and the final logits; Gemma 3 adds q/k norms and gives its sliding layers
//! their own RoPE base (`rope_local_base_freq`, `rope_parameters.sliding_attention`).

use burn::module::{Module, Param};
use burn::nn::{Embedding, EmbeddingConfig, Initializer};
use burn::prelude::*;
use serde::Deserialize;
use serde_json::{json, Value};

use trl_core::HfConfig;

use crate::backbone::{ArchInfo, Backbone, CacheSlot};
use crate::batch::Context;
use crate::error::{ModelError, Result};
use crate::layers::{attend_capped, embed_flat, linear, Activation, Rope, RopeTables};
use crate::limits;
use crate::lora::{Adapters, Linear, LoraLayer};

/// Model types this file implements.
pub const GEMMA_TYPES: &[&str] = &["gemma2", "gemma3_text"];

/// What the Gemma family is, for the crate's list of architectures.
pub const INFO: ArchInfo = ArchInfo {
    model_types: GEMMA_TYPES,
    class_stems: &["Gemma2", "Gemma3Text"],
    default_lora_targets: &["q_proj", "v_proj"],
    fan_in_fan_out: false,
    lm_head: "lm_head",
};

fn head_dim() -> usize {
    256
}
fn eps() -> f64 {
    1e-6
}
fn yes() -> bool {
    true
}
fn gelu_tanh() -> String {
    "gelu_pytorch_tanh".into()
}
fn init_range() -> f64 {
    0.02
}
fn scalar() -> f64 {
    256.0
}

/// The fields of a Gemma 2 / Gemma 3 text `config.json` that the model uses.
#[derive(Debug, Clone, Deserialize)]
pub struct GemmaConfig {
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default = "head_dim")]
    pub head_dim: usize,
    #[serde(default = "gelu_tanh")]
    pub hidden_activation: String,
    #[serde(default)]
    pub max_position_embeddings: Option<usize>,
    #[serde(default = "eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "yes")]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default = "scalar")]
    pub query_pre_attn_scalar: f64,
    #[serde(default)]
    pub layer_types: Option<Vec<String>>,
    #[serde(default)]
    pub sliding_window_pattern: Option<usize>,
    #[serde(default = "init_range")]
    pub initializer_range: f64,
}

/// RMSNorm as Gemma computes it: `x / sqrt(mean(x²) + eps) · (1 + weight)`.
#[derive(Module, Debug)]
pub struct GemmaRmsNorm<B: Backend> {
    pub weight: Param<Tensor<B, 1>>,
    pub eps: f64,
}

impl<B: Backend> GemmaRmsNorm<B> {
    fn new(dim: usize, eps: f64, device: &B::Device) -> Self {
        Self { weight: Initializer::Zeros.init([dim], device), eps }
    }

    fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let inv = (x.clone().square().mean_dim(D - 1) + self.eps).powf_scalar(-0.5);
        x * inv * (self.weight.val() + 1.0).unsqueeze()
    }
}

#[derive(Module, Debug)]
pub struct GemmaAttention<B: Backend> {
    pub q_proj: Linear<B>,
    pub k_proj: Linear<B>,
    pub v_proj: Linear<B>,
    pub o_proj: Linear<B>,
    pub q_norm: Option<GemmaRmsNorm<B>>,
    pub k_norm: Option<GemmaRmsNorm<B>>,
    pub num_heads: usize,
    pub num_kv_heads: usize,
}

#[derive(Module, Debug)]
pub struct GemmaMlp<B: Backend> {
    pub gate_proj: Linear<B>,
    pub up_proj: Linear<B>,
    pub down_proj: Linear<B>,
    #[module(skip)]
    pub act: Activation,
}

#[derive(Module, Debug)]
pub struct GemmaDecoderLayer<B: Backend> {
    pub self_attn: GemmaAttention<B>,
    pub mlp: GemmaMlp<B>,
    pub input_layernorm: GemmaRmsNorm<B>,
    pub post_attention_layernorm: GemmaRmsNorm<B>,
    pub pre_feedforward_layernorm: GemmaRmsNorm<B>,
    pub post_feedforward_layernorm: GemmaRmsNorm<B>,
    /// A sliding-window (local) layer rather than a global one.
    pub sliding: bool,
}

/// `Gemma2Model` / `Gemma3TextModel`: scaled embeddings, decoder layers, final norm.
#[derive(Module, Debug)]
pub struct GemmaModel<B: Backend> {
    pub embed_tokens: Embedding<B>,
    pub layers: Vec<GemmaDecoderLayer<B>>,
    pub norm: GemmaRmsNorm<B>,
}

/// What attention and the head need besides weights.
#[derive(Debug, Clone)]
pub struct GemmaSettings {
    /// RoPE of the global layers and of the sliding ones (the same for Gemma 2).
    pub rope_global: Rope,
    pub rope_local: Rope,
    pub sliding_window: Option<usize>,
    pub embed_scale: f32,
    pub scale: f64,
    pub attn_softcap: Option<f64>,
    pub final_softcap: Option<f64>,
    pub max_position_embeddings: usize,
}

/// `Gemma2ForCausalLM` / `Gemma3ForCausalLM`: the model plus an lm_head (absent when tied).
#[derive(Module, Debug)]
pub struct GemmaForCausalLM<B: Backend> {
    pub model: GemmaModel<B>,
    pub lm_head: Option<burn::nn::Linear<B>>,
    #[module(skip)]
    pub settings: GemmaSettings,
    /// LoRA adapters attached to the projections ([`crate::lora`]).
    #[module(skip)]
    pub adapters: Adapters,
}

/// What every layer of one forward pass shares: both RoPE tables, and the context of the
/// sliding layers (the pass's mask with keys outside the window blocked too) when the window
/// is shorter than the keys.
pub struct GemmaTables<B: Backend> {
    global: RopeTables<B>,
    local: RopeTables<B>,
    windowed: Option<Context<B>>,
}

/// A soft cap from config.json: `key` absent gives the model type's default, null none.
fn softcap(cfg: &HfConfig, key: &str, default: Option<f64>) -> Result<Option<f64>> {
    let cap = match cfg.get(key) {
        None => default,
        Some(Value::Null) => None,
        Some(v) => Some(v.as_f64().ok_or_else(|| ModelError::Config(format!("`{key}` must be a number or null")))?),
    };
    if let Some(c) = cap {
        limits::finite_at_least(key, c, f64::MIN_POSITIVE)?;
    }
    Ok(cap)
}

/// Gemma 3's RoPE of one layer type: `rope_parameters.<type>` (transformers 5), else the
/// global `rope_theta` with `rope_scaling`, or the local `rope_local_base_freq`.
fn gemma3_rope(cfg: &HfConfig, layer_type: &str, head_dim: usize) -> Result<Rope> {
    let mut view = json!({ "max_position_embeddings": cfg.get("max_position_embeddings") });
    match cfg.get("rope_parameters").and_then(|p| p.get(layer_type)) {
        Some(params) => view["rope_parameters"] = params.clone(),
        None if layer_type == "sliding_attention" => {
            view["rope_theta"] = json!(cfg.get_f64("rope_local_base_freq").unwrap_or(10_000.0));
        }
        None => {
            view["rope_theta"] = json!(cfg.get_f64("rope_theta").unwrap_or(1_000_000.0));
            if let Some(s) = cfg.get("rope_scaling") {
                view["rope_scaling"] = s.clone();
            }
        }
    }
    if view.get("rope_parameters").is_some_and(|p| p.get("rope_theta").is_none()) {
        let theta = if layer_type == "sliding_attention" { 10_000.0 } else { 1_000_000.0 };
        view["rope_parameters"]["rope_theta"] = json!(theta);
    }
    crate::rope::from_config(&HfConfig::from_value(view).map_err(|e| ModelError::Config(e.to_string()))?, head_dim)
}

impl GemmaConfig {
    fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    fn gemma3(&self) -> bool {
        self.model_type == "gemma3_text"
    }

    /// Parameters of the model and head.
    fn num_parameters(&self) -> u128 {
        let [v, h, i, l] =
            [self.vocab_size, self.hidden_size, self.intermediate_size, self.num_hidden_layers].map(|x| x as u128);
        let (q, k) = ((self.num_attention_heads * self.head_dim) as u128, (self.kv_heads() * self.head_dim) as u128);
        let layer = 2 * h * q + 2 * h * k + 3 * h * i + 4 * h + 2 * self.head_dim as u128;
        let head = if self.tie_word_embeddings { 0 } else { v * h };
        v * h + l * layer + h + head
    }

    /// Whether each layer is a sliding-window one: `layer_types`, else Gemma 2's alternation
    /// (local first) or Gemma 3's `sliding_window_pattern` (every 6th global).
    fn sliding_layers(&self) -> Result<Vec<bool>> {
        let n = self.num_hidden_layers;
        match &self.layer_types {
            Some(types) if types.len() != n => Err(ModelError::Config(format!(
                "layer_types has {} entries for {n} layers",
                types.len()
            ))),
            Some(types) => types
                .iter()
                .map(|t| match t.as_str() {
                    "sliding_attention" => Ok(true),
                    "full_attention" => Ok(false),
                    other => Err(ModelError::Config(format!(
                        "layer type `{other}` is not supported (sliding_attention, full_attention)"
                    ))),
                })
                .collect(),
            None => {
                let pattern = if self.gemma3() { self.sliding_window_pattern.unwrap_or(6) } else { 2 };
                limits::positive("sliding_window_pattern", pattern)?;
                Ok((0..n).map(|i| (i + 1) % pattern != 0).collect())
            }
        }
    }
}

impl<B: Backend> GemmaDecoderLayer<B> {
    fn forward(
        &self,
        x: Tensor<B, 2>,
        ctx: &Context<B>,
        rope: &RopeTables<B>,
        s: &GemmaSettings,
        cache: Option<&mut CacheSlot<B>>,
    ) -> Tensor<B, 2> {
        let a = &self.self_attn;
        let h = self.input_layernorm.forward(x.clone());
        // a block that keeps only some rows (`Context::picking`) needs only their queries
        let mut q = a.q_proj.forward(ctx.kept(h.clone()));
        let mut k = a.k_proj.forward(h.clone());
        let v = a.v_proj.forward(h);
        if let (Some(qn), Some(kn)) = (&a.q_norm, &a.k_norm) {
            let per_head = |norm: &GemmaRmsNorm<B>, x: Tensor<B, 2>, heads: usize| {
                let [n, w] = x.dims();
                norm.forward(x.reshape([n * heads, w / heads])).reshape([n, w])
            };
            q = per_head(qn, q, a.num_heads);
            k = per_head(kn, k, a.num_kv_heads);
        }
        let heads = (a.num_heads, a.num_kv_heads);
        let q = rope.kept(ctx).apply(q);
        let out = attend_capped(q, rope.apply(k), v, heads, ctx, cache, s.scale, s.attn_softcap);
        let x = ctx.kept(x) + self.post_attention_layernorm.forward(a.o_proj.forward(out));
        let h = self.pre_feedforward_layernorm.forward(x.clone());
        let m = &self.mlp;
        let y = m.down_proj.forward(m.act.apply(m.gate_proj.forward(h.clone())) * m.up_proj.forward(h));
        x + self.post_feedforward_layernorm.forward(y)
    }
}

impl<B: Backend> Backbone<B> for GemmaForCausalLM<B> {
    type Tables = GemmaTables<B>;

    fn init(config: &HfConfig, device: &B::Device) -> Result<Self> {
        let c: GemmaConfig = config.parse()?;
        if !GEMMA_TYPES.contains(&c.model_type.as_str()) {
            return Err(ModelError::Config(format!("model_type `{}` is not Gemma 2 or 3", c.model_type)));
        }
        let max_positions = c.max_position_embeddings.unwrap_or(if c.gemma3() { 131_072 } else { 8192 });
        for (field, v) in [
            ("vocab_size", c.vocab_size),
            ("hidden_size", c.hidden_size),
            ("intermediate_size", c.intermediate_size),
            ("num_attention_heads", c.num_attention_heads),
            ("num_key_value_heads", c.kv_heads()),
            ("max_position_embeddings", max_positions),
        ] {
            limits::positive(field, v)?;
        }
        if c.head_dim == 0 || !c.head_dim.is_multiple_of(2) {
            return Err(ModelError::Config(format!("head_dim {} must be even and at least 2", c.head_dim)));
        }
        if !c.num_attention_heads.is_multiple_of(c.kv_heads()) {
            return Err(ModelError::Config(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                c.num_attention_heads,
                c.kv_heads()
            )));
        }
        limits::finite_at_least("rms_norm_eps", c.rms_norm_eps, 0.0)?;
        limits::finite_at_least("query_pre_attn_scalar", c.query_pre_attn_scalar, f64::MIN_POSITIVE)?;
        limits::finite_at_least("initializer_range", c.initializer_range, 0.0)?;
        limits::check_fits(c.num_parameters())?;
        let sliding_window = match config.get("sliding_window") {
            None => Some(4096),
            Some(Value::Null) => None,
            Some(v) => Some(v.as_u64().filter(|&w| w > 0).ok_or_else(|| {
                ModelError::Config("`sliding_window` must be a positive integer or null".into())
            })? as usize),
        };
        let (rope_global, rope_local) = if c.gemma3() {
            (gemma3_rope(config, "full_attention", c.head_dim)?, gemma3_rope(config, "sliding_attention", c.head_dim)?)
        } else {
            let r = crate::rope::from_config(config, c.head_dim)?;
            (r.clone(), r)
        };
        let gemma2 = !c.gemma3();
        let settings = GemmaSettings {
            rope_global,
            rope_local,
            sliding_window,
            embed_scale: (c.hidden_size as f64).sqrt() as f32,
            scale: c.query_pre_attn_scalar.powf(-0.5),
            attn_softcap: softcap(config, "attn_logit_softcapping", gemma2.then_some(50.0))?,
            final_softcap: softcap(config, "final_logit_softcapping", gemma2.then_some(30.0))?,
            max_position_embeddings: max_positions,
        };
        let act = Activation::parse(&c.hidden_activation)?;
        let (h, hd, std, eps) = (c.hidden_size, c.head_dim, c.initializer_range, c.rms_norm_eps);
        let (heads, kv, inter, bias) = (c.num_attention_heads, c.kv_heads(), c.intermediate_size, c.attention_bias);
        let norm = |d: usize| GemmaRmsNorm::new(d, eps, device);
        let layers = c
            .sliding_layers()?
            .into_iter()
            .map(|sliding| GemmaDecoderLayer {
                self_attn: GemmaAttention {
                    q_proj: Linear::new(h, heads * hd, bias, std, device),
                    k_proj: Linear::new(h, kv * hd, bias, std, device),
                    v_proj: Linear::new(h, kv * hd, bias, std, device),
                    o_proj: Linear::new(heads * hd, h, bias, std, device),
                    q_norm: c.gemma3().then(|| norm(hd)),
                    k_norm: c.gemma3().then(|| norm(hd)),
                    num_heads: heads,
                    num_kv_heads: kv,
                },
                mlp: GemmaMlp {
                    gate_proj: Linear::new(h, inter, false, std, device),
                    up_proj: Linear::new(h, inter, false, std, device),
                    down_proj: Linear::new(inter, h, false, std, device),
                    act,
                },
                input_layernorm: norm(h),
                post_attention_layernorm: norm(h),
                pre_feedforward_layernorm: norm(h),
                post_feedforward_layernorm: norm(h),
                sliding,
            })
            .collect();
        Ok(GemmaForCausalLM {
            model: GemmaModel {
                embed_tokens: EmbeddingConfig::new(c.vocab_size, h)
                    .with_initializer(Initializer::Normal { mean: 0.0, std })
                    .init(device),
                layers,
                norm: norm(h),
            },
            lm_head: (!c.tie_word_embeddings).then(|| linear(h, c.vocab_size, false, std, device)),
            settings,
            adapters: Adapters::default(),
        })
    }

    fn tables(&self, ctx: &Context<B>) -> GemmaTables<B> {
        let s = &self.settings;
        let any_sliding = self.model.layers.iter().any(|l| l.sliding);
        GemmaTables {
            global: s.rope_global.tables(ctx),
            local: s.rope_local.tables(ctx),
            windowed: s.sliding_window.filter(|&w| any_sliding && w < ctx.kv_len).map(|w| ctx.windowed(w)),
        }
    }

    fn embed(&self, ids: Tensor<B, 2, Int>, _ctx: &Context<B>) -> Tensor<B, 2> {
        embed_flat(&self.model.embed_tokens, ids) * self.settings.embed_scale
    }

    fn num_layers(&self) -> usize {
        self.model.layers.len()
    }

    fn block(
        &self,
        i: usize,
        x: Tensor<B, 2>,
        ctx: &Context<B>,
        t: &GemmaTables<B>,
        cache: Option<&mut CacheSlot<B>>,
    ) -> Tensor<B, 2> {
        let layer = &self.model.layers[i];
        // the windowed context of a block that keeps only some rows keeps them too
        let picked = t.windowed.as_ref().zip(ctx.picked()).filter(|_| layer.sliding).map(|(w, rows)| w.picking(rows));
        let (ctx, rope) = match layer.sliding {
            true => (picked.as_ref().or(t.windowed.as_ref()).unwrap_or(ctx), &t.local),
            false => (ctx, &t.global),
        };
        layer.forward(x, ctx, rope, &self.settings, cache)
    }

    fn final_norm(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        self.model.norm.forward(x)
    }

    fn final_logit_softcap(&self) -> Option<f64> {
        self.settings.final_softcap
    }

    fn embedding(&self) -> Tensor<B, 2> {
        self.model.embed_tokens.weight.val()
    }

    fn lm_head(&self) -> Option<&burn::nn::Linear<B>> {
        self.lm_head.as_ref()
    }

    fn lm_head_slot(&mut self) -> &mut Option<burn::nn::Linear<B>> {
        &mut self.lm_head
    }

    fn max_positions(&self) -> usize {
        self.settings.max_position_embeddings
    }

    /// None: the pass's context is the global layers'; the sliding layers window it
    /// themselves ([`GemmaTables`]).
    fn sliding_window(&self) -> Option<usize> {
        None
    }

    /// The seven projections of every layer.
    fn lora_layers(&mut self) -> Vec<(String, &mut dyn LoraLayer<B>)> {
        let mut out: Vec<(String, &mut dyn LoraLayer<B>)> = Vec::new();
        for (i, layer) in self.model.layers.iter_mut().enumerate() {
            let (a, m) = (&mut layer.self_attn, &mut layer.mlp);
            let p = format!("model.layers.{i}");
            out.push((format!("{p}.self_attn.q_proj"), &mut a.q_proj));
            out.push((format!("{p}.self_attn.k_proj"), &mut a.k_proj));
            out.push((format!("{p}.self_attn.v_proj"), &mut a.v_proj));
            out.push((format!("{p}.self_attn.o_proj"), &mut a.o_proj));
            out.push((format!("{p}.mlp.gate_proj"), &mut m.gate_proj));
            out.push((format!("{p}.mlp.up_proj"), &mut m.up_proj));
            out.push((format!("{p}.mlp.down_proj"), &mut m.down_proj));
        }
        out
    }

    fn adapters(&self) -> &Adapters {
        &self.adapters
    }

    fn adapters_mut(&mut self) -> &mut Adapters {
        &mut self.adapters
    }
}
