//! The Llama family in one implementation: Llama (incl. `llama3` RoPE scaling), Mistral,
//! Qwen2 (q/k/v bias) and Qwen3 (q/k RMSNorm, explicit `head_dim`). Grouped-query attention,
//! rotary positions, RMSNorm, SwiGLU MLP, tied or untied lm_head.

use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, Initializer};
use burn::prelude::*;
use serde::Deserialize;

use trl_core::HfConfig;

use crate::backbone::{ArchInfo, Backbone, CacheSlot};
use crate::batch::Context;
use crate::error::{ModelError, Result};
use crate::layers::{attend, embed_flat, linear, RmsNorm, Rope, RopeTables};
use crate::limits;
use crate::lora::{Adapters, Linear, LoraLayer};

/// The fields of a Llama-family `config.json` that the model uses.
#[derive(Debug, Clone, Deserialize)]
pub struct LlamaConfig {
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default)]
    pub head_dim: Option<usize>,
    #[serde(default = "rms_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub attention_bias: Option<bool>,
    #[serde(default)]
    pub mlp_bias: bool,
    #[serde(default = "silu_name")]
    pub hidden_act: String,
    #[serde(default)]
    pub sliding_window: Option<usize>,
    #[serde(default)]
    pub use_sliding_window: Option<bool>,
    #[serde(default = "init_range")]
    pub initializer_range: f64,
    /// Filled from `rope_theta` or `rope_parameters.rope_theta` by [`LlamaConfig::from_hf`].
    #[serde(skip)]
    pub rope: Option<Rope>,
}

fn rms_eps() -> f64 {
    1e-6
}
fn max_pos() -> usize {
    2048
}
fn silu_name() -> String {
    "silu".into()
}
fn init_range() -> f64 {
    0.02
}

/// Model types this file implements.
pub const LLAMA_TYPES: &[&str] = &["llama", "mistral", "qwen2", "qwen3"];

/// What the Llama family is, for the crate's list of architectures.
pub const INFO: ArchInfo = ArchInfo {
    model_types: LLAMA_TYPES,
    class_stems: &["Llama", "Mistral", "Qwen2", "Qwen3"],
    default_lora_targets: &["q_proj", "v_proj"],
    fan_in_fan_out: false,
    lm_head: "lm_head",
};

impl LlamaConfig {
    /// Parses and validates a Llama-family config, building the RoPE frequencies.
    pub fn from_hf(cfg: &HfConfig) -> Result<Self> {
        let mut c: LlamaConfig = cfg.parse()?;
        if !LLAMA_TYPES.contains(&c.model_type.as_str()) {
            return Err(ModelError::Config(format!("model_type `{}` is not a Llama-family model", c.model_type)));
        }
        if c.hidden_act != "silu" {
            return Err(ModelError::Config(format!("hidden_act `{}` is not supported (silu)", c.hidden_act)));
        }
        c.validate_sizes()?;
        let rope = crate::rope::from_config(cfg, c.head_dim())?;
        c.rope = Some(rope);
        Ok(c)
    }

    /// Every size positive and consistent, and the weights small enough to hold, before
    /// anything is allocated.
    fn validate_sizes(&self) -> Result<()> {
        for (field, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.kv_heads()),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            limits::positive(field, v)?;
        }
        let (heads, kv) = (self.num_attention_heads, self.kv_heads());
        if !heads.is_multiple_of(kv) {
            return Err(ModelError::Config(format!(
                "num_attention_heads {heads} is not a multiple of num_key_value_heads {kv}"
            )));
        }
        if self.head_dim.is_none() && !self.hidden_size.is_multiple_of(heads) {
            return Err(ModelError::Config(format!(
                "hidden_size {} is not divisible by num_attention_heads {heads} (or set head_dim)",
                self.hidden_size
            )));
        }
        let hd = self.head_dim();
        if hd == 0 || !hd.is_multiple_of(2) {
            return Err(ModelError::Config(format!("head_dim {hd} must be even and at least 2 (rotary embeddings)")));
        }
        if let Some(w) = self.window() {
            limits::positive("sliding_window", w)?;
        }
        limits::finite_at_least("rms_norm_eps", self.rms_norm_eps, 0.0)?;
        limits::finite_at_least("initializer_range", self.initializer_range, 0.0)?;
        limits::check_fits(self.num_parameters())
    }

    /// Parameters of the backbone and lm_head (biases and norms included).
    fn num_parameters(&self) -> u128 {
        let [v, h, i, l] =
            [self.vocab_size, self.hidden_size, self.intermediate_size, self.num_hidden_layers].map(|x| x as u128);
        let (q, k) =
            ((self.num_attention_heads * self.head_dim()) as u128, (self.kv_heads() * self.head_dim()) as u128);
        let attn = 2 * h * q + 2 * h * k + q + 2 * k + h + 2 * self.head_dim() as u128;
        let layer = attn + 3 * h * i + i * 2 + h + 2 * h;
        let head = if self.tie_word_embeddings { 0 } else { v * h };
        v * h + l * layer + h + head
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim.unwrap_or(self.hidden_size / self.num_attention_heads)
    }

    fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Bias on q/k/v and on o: Qwen2 always has q/k/v bias; others follow `attention_bias`.
    fn biases(&self) -> (bool, bool) {
        match self.model_type.as_str() {
            "qwen2" => (true, false),
            "mistral" => (false, false),
            _ => {
                let b = self.attention_bias.unwrap_or(false);
                (b, b)
            }
        }
    }

    fn window(&self) -> Option<usize> {
        match self.model_type.as_str() {
            "mistral" => self.sliding_window,
            "qwen2" | "qwen3" if self.use_sliding_window == Some(true) => self.sliding_window,
            _ => None,
        }
    }

    /// A randomly initialised model.
    pub fn init<B: Backend>(&self, device: &B::Device) -> LlamaForCausalLM<B> {
        let (h, hd, std) = (self.hidden_size, self.head_dim(), self.initializer_range);
        let (heads, kv) = (self.num_attention_heads, self.kv_heads());
        let (qkv_bias, o_bias) = self.biases();
        let qk_norm = self.model_type == "qwen3";
        let layers = (0..self.num_hidden_layers)
            .map(|_| LlamaDecoderLayer {
                self_attn: LlamaAttention {
                    q_proj: Linear::new(h, heads * hd, qkv_bias, std, device),
                    k_proj: Linear::new(h, kv * hd, qkv_bias, std, device),
                    v_proj: Linear::new(h, kv * hd, qkv_bias, std, device),
                    o_proj: Linear::new(heads * hd, h, o_bias, std, device),
                    q_norm: qk_norm.then(|| RmsNorm::new(hd, self.rms_norm_eps, device)),
                    k_norm: qk_norm.then(|| RmsNorm::new(hd, self.rms_norm_eps, device)),
                    num_heads: heads,
                    num_kv_heads: kv,
                },
                mlp: LlamaMlp {
                    gate_proj: Linear::new(h, self.intermediate_size, self.mlp_bias, std, device),
                    up_proj: Linear::new(h, self.intermediate_size, self.mlp_bias, std, device),
                    down_proj: Linear::new(self.intermediate_size, h, self.mlp_bias, std, device),
                },
                input_layernorm: RmsNorm::new(h, self.rms_norm_eps, device),
                post_attention_layernorm: RmsNorm::new(h, self.rms_norm_eps, device),
            })
            .collect();
        LlamaForCausalLM {
            model: LlamaModel {
                embed_tokens: EmbeddingConfig::new(self.vocab_size, h)
                    .with_initializer(Initializer::Normal { mean: 0.0, std })
                    .init(device),
                layers,
                norm: RmsNorm::new(h, self.rms_norm_eps, device),
            },
            lm_head: (!self.tie_word_embeddings).then(|| linear(h, self.vocab_size, false, std, device)),
            rope: self.rope.clone().unwrap_or_else(|| Rope::new(hd, 10000.0)),
            head_dim: hd,
            sliding_window: self.window(),
            max_position_embeddings: self.max_position_embeddings,
            adapters: Adapters::default(),
        }
    }
}

#[derive(Module, Debug)]
pub struct LlamaAttention<B: Backend> {
    pub q_proj: Linear<B>,
    pub k_proj: Linear<B>,
    pub v_proj: Linear<B>,
    pub o_proj: Linear<B>,
    pub q_norm: Option<RmsNorm<B>>,
    pub k_norm: Option<RmsNorm<B>>,
    pub num_heads: usize,
    pub num_kv_heads: usize,
}

#[derive(Module, Debug)]
pub struct LlamaMlp<B: Backend> {
    pub gate_proj: Linear<B>,
    pub up_proj: Linear<B>,
    pub down_proj: Linear<B>,
}

#[derive(Module, Debug)]
pub struct LlamaDecoderLayer<B: Backend> {
    pub self_attn: LlamaAttention<B>,
    pub mlp: LlamaMlp<B>,
    pub input_layernorm: RmsNorm<B>,
    pub post_attention_layernorm: RmsNorm<B>,
}

/// `LlamaModel` (and Mistral / Qwen2 / Qwen3): embeddings, decoder layers, final norm.
#[derive(Module, Debug)]
pub struct LlamaModel<B: Backend> {
    pub embed_tokens: Embedding<B>,
    pub layers: Vec<LlamaDecoderLayer<B>>,
    pub norm: RmsNorm<B>,
}

/// `LlamaForCausalLM`: the model plus an lm_head (absent when tied to `embed_tokens`).
#[derive(Module, Debug)]
pub struct LlamaForCausalLM<B: Backend> {
    pub model: LlamaModel<B>,
    pub lm_head: Option<burn::nn::Linear<B>>,
    #[module(skip)]
    pub rope: Rope,
    pub head_dim: usize,
    pub sliding_window: Option<usize>,
    pub max_position_embeddings: usize,
    /// LoRA adapters attached to the projections ([`crate::lora`]).
    #[module(skip)]
    pub adapters: Adapters,
}

impl<B: Backend> LlamaDecoderLayer<B> {
    /// `x`: flat `[batch * q_len, hidden]` → the same.
    fn forward(
        &self,
        x: Tensor<B, 2>,
        ctx: &Context<B>,
        rope: &RopeTables<B>,
        cache: Option<&mut CacheSlot<B>>,
    ) -> Tensor<B, 2> {
        let a = &self.self_attn;
        let h = self.input_layernorm.forward(x.clone());
        // a block that keeps only some rows (`Context::picking`) needs only their queries
        let mut q = a.q_proj.forward(ctx.kept(h.clone()));
        let mut k = a.k_proj.forward(h.clone());
        let v = a.v_proj.forward(h);
        if let (Some(qn), Some(kn)) = (&a.q_norm, &a.k_norm) {
            let per_head = |norm: &RmsNorm<B>, x: Tensor<B, 2>, heads: usize| {
                let [n, w] = x.dims();
                norm.forward(x.reshape([n * heads, w / heads])).reshape([n, w])
            };
            q = per_head(qn, q, a.num_heads);
            k = per_head(kn, k, a.num_kv_heads);
        }
        let head_dim = q.dims()[1] / a.num_heads;
        let scale = 1.0 / (head_dim as f64).sqrt();
        let q = rope.kept(ctx).apply(q);
        let out = attend(q, rope.apply(k), v, (a.num_heads, a.num_kv_heads), ctx, cache, scale);
        let x = ctx.kept(x) + a.o_proj.forward(out);
        let h = self.post_attention_layernorm.forward(x.clone());
        let m = &self.mlp;
        x + m.down_proj.forward(crate::kernels::swiglu(m.gate_proj.forward(h.clone()), m.up_proj.forward(h)))
    }
}

impl<B: Backend> Backbone<B> for LlamaForCausalLM<B> {
    type Tables = RopeTables<B>;

    fn init(config: &HfConfig, device: &B::Device) -> Result<Self> {
        Ok(LlamaConfig::from_hf(config)?.init(device))
    }

    fn tables(&self, ctx: &Context<B>) -> RopeTables<B> {
        self.rope.tables(ctx)
    }

    fn embed(&self, ids: Tensor<B, 2, Int>, _ctx: &Context<B>) -> Tensor<B, 2> {
        embed_flat(&self.model.embed_tokens, ids)
    }

    fn num_layers(&self) -> usize {
        self.model.layers.len()
    }

    fn block(
        &self,
        i: usize,
        x: Tensor<B, 2>,
        ctx: &Context<B>,
        rope: &RopeTables<B>,
        cache: Option<&mut CacheSlot<B>>,
    ) -> Tensor<B, 2> {
        self.model.layers[i].forward(x, ctx, rope, cache)
    }

    fn final_norm(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        self.model.norm.forward(x)
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
        self.max_position_embeddings
    }

    fn sliding_window(&self) -> Option<usize> {
        self.sliding_window
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
