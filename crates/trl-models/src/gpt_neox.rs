//! GPT-NeoX (`GPTNeoXForCausalLM`: Pythia, GPT-NeoX-20B): a fused `query_key_value`
//! projection whose output is laid out head by head (`[q, k, v]` of head 0, then of head 1…),
//! rotary positions on the first `partial_rotary_factor` (`rotary_pct`) of each head, LayerNorm
//! with bias, a parallel residual (`x + attn(ln₁ x) + mlp(ln₂ x)`, unless
//! `use_parallel_residual` is false) and an untied `embed_out` head.

use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, Initializer};
use burn::prelude::*;
use serde::Deserialize;

use trl_core::HfConfig;

use crate::backbone::{ArchInfo, Backbone, CacheSlot};
use crate::batch::Context;
use crate::error::{ModelError, Result};
use crate::layers::{attend, embed_flat, linear, Activation, LayerNorm, Rope, RopeTables};
use crate::limits;
use crate::lora::{Adapters, Linear, LoraLayer};

/// What GPT-NeoX is, for the crate's list of architectures.
pub const INFO: ArchInfo = ArchInfo {
    model_types: &["gpt_neox"],
    class_stems: &["GPTNeoX"],
    default_lora_targets: &["query_key_value"],
    fan_in_fan_out: false,
    lm_head: "embed_out",
};

fn yes() -> bool {
    true
}
fn gelu() -> String {
    "gelu".into()
}
fn ln_eps() -> f64 {
    1e-5
}
fn max_pos() -> usize {
    2048
}
fn init_range() -> f64 {
    0.02
}

/// The fields of GPT-NeoX's `config.json` that the model uses.
#[derive(Debug, Clone, Deserialize)]
pub struct GptNeoXConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "gelu")]
    pub hidden_act: String,
    #[serde(default = "max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default = "ln_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default = "yes")]
    pub use_parallel_residual: bool,
    #[serde(default = "yes")]
    pub attention_bias: bool,
    #[serde(default = "init_range")]
    pub initializer_range: f64,
}

impl GptNeoXConfig {
    fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Parameters of the model and head (biases and norms included).
    fn num_parameters(&self) -> u128 {
        let [v, h, i, l] =
            [self.vocab_size, self.hidden_size, self.intermediate_size, self.num_hidden_layers].map(|x| x as u128);
        let layer = 4 * h * h + 4 * h + 2 * h * i + i + h + 4 * h;
        let head = if self.tie_word_embeddings { 0 } else { v * h };
        v * h + l * layer + 2 * h + head
    }
}

#[derive(Module, Debug)]
pub struct GptNeoXAttention<B: Backend> {
    pub query_key_value: Linear<B>,
    pub dense: Linear<B>,
    pub num_heads: usize,
    /// Rotated dimensions at the start of each head.
    pub rotary_ndims: usize,
}

#[derive(Module, Debug)]
pub struct GptNeoXMlp<B: Backend> {
    pub dense_h_to_4h: Linear<B>,
    pub dense_4h_to_h: Linear<B>,
    #[module(skip)]
    pub act: Activation,
}

#[derive(Module, Debug)]
pub struct GptNeoXLayer<B: Backend> {
    pub input_layernorm: LayerNorm<B>,
    pub post_attention_layernorm: LayerNorm<B>,
    pub attention: GptNeoXAttention<B>,
    pub mlp: GptNeoXMlp<B>,
    pub use_parallel_residual: bool,
}

/// `GPTNeoXModel`: embeddings, layers and the final LayerNorm.
#[derive(Module, Debug)]
pub struct GptNeoXModel<B: Backend> {
    pub embed_in: Embedding<B>,
    pub layers: Vec<GptNeoXLayer<B>>,
    pub final_layer_norm: LayerNorm<B>,
}

/// `GPTNeoXForCausalLM`: the model plus its `embed_out` head (absent when tied to `embed_in`).
#[derive(Module, Debug)]
pub struct GptNeoXForCausalLM<B: Backend> {
    pub gpt_neox: GptNeoXModel<B>,
    pub embed_out: Option<burn::nn::Linear<B>>,
    #[module(skip)]
    pub rope: Rope,
    pub max_position_embeddings: usize,
    /// LoRA adapters attached to the projections ([`crate::lora`]).
    #[module(skip)]
    pub adapters: Adapters,
}

impl<B: Backend> GptNeoXLayer<B> {
    fn forward(
        &self,
        x: Tensor<B, 2>,
        ctx: &Context<B>,
        rope: &RopeTables<B>,
        cache: Option<&mut CacheSlot<B>>,
    ) -> Tensor<B, 2> {
        let a = &self.attention;
        let [n, d] = x.dims();
        let (heads, rot) = (a.num_heads, a.rotary_ndims);
        let hd = d / heads;
        let qkv = a.query_key_value.forward(self.input_layernorm.forward(x.clone())).reshape([n, heads, 3 * hd]);
        let part = |i: usize| qkv.clone().slice([0..n, 0..heads, i * hd..(i + 1) * hd]).reshape([n, d]);
        let rotate = |x: Tensor<B, 2>| rope.apply_partial(x, heads, rot);
        let v = part(2);
        let scale = 1.0 / (hd as f64).sqrt();
        // a block that keeps only some rows (`Context::picking`) needs only their queries
        let q = rope.kept(ctx).apply_partial(ctx.kept(part(0)), heads, rot);
        let out = attend(q, rotate(part(1)), v, (heads, heads), ctx, cache, scale);
        let (attn, x) = (a.dense.forward(out), ctx.kept(x));
        let mlp = |h: Tensor<B, 2>| self.mlp.dense_4h_to_h.forward(self.mlp.act.apply(self.mlp.dense_h_to_4h.forward(h)));
        if self.use_parallel_residual {
            let m = mlp(self.post_attention_layernorm.forward(x.clone()));
            x + attn + m
        } else {
            let x = x + attn;
            x.clone() + mlp(self.post_attention_layernorm.forward(x))
        }
    }
}

impl<B: Backend> Backbone<B> for GptNeoXForCausalLM<B> {
    type Tables = RopeTables<B>;

    fn init(config: &HfConfig, device: &B::Device) -> Result<Self> {
        let c: GptNeoXConfig = config.parse()?;
        for (field, v) in [
            ("vocab_size", c.vocab_size),
            ("hidden_size", c.hidden_size),
            ("intermediate_size", c.intermediate_size),
            ("num_attention_heads", c.num_attention_heads),
            ("max_position_embeddings", c.max_position_embeddings),
        ] {
            limits::positive(field, v)?;
        }
        if !c.hidden_size.is_multiple_of(c.num_attention_heads) {
            return Err(ModelError::Config(format!(
                "hidden_size {} is not divisible by num_attention_heads {}",
                c.hidden_size, c.num_attention_heads
            )));
        }
        // transformers 5: rope_parameters.partial_rotary_factor; 4: rotary_pct (default 0.25)
        let pct = config
            .get("rope_parameters")
            .and_then(|p| p.get("partial_rotary_factor"))
            .and_then(|v| v.as_f64())
            .or_else(|| config.get_f64("rotary_pct"))
            .unwrap_or(0.25);
        if !(0.0..=1.0).contains(&pct) {
            return Err(ModelError::Config(format!("partial_rotary_factor (rotary_pct) {pct} must be in [0, 1]")));
        }
        let hd = c.head_dim();
        let rot = (hd as f64 * pct) as usize;
        if !rot.is_multiple_of(2) {
            return Err(ModelError::Config(format!(
                "rotary dimensions {rot} (head_dim {hd} × partial_rotary_factor {pct}) must be even"
            )));
        }
        limits::finite_at_least("layer_norm_eps", c.layer_norm_eps, 0.0)?;
        limits::finite_at_least("initializer_range", c.initializer_range, 0.0)?;
        limits::check_fits(c.num_parameters())?;
        let rope = crate::rope::from_config(config, rot)?;
        let act = Activation::parse(&c.hidden_act)?;
        let (h, std, bias, eps) = (c.hidden_size, c.initializer_range, c.attention_bias, c.layer_norm_eps);
        let layers = (0..c.num_hidden_layers)
            .map(|_| GptNeoXLayer {
                input_layernorm: LayerNorm::new(h, eps, device),
                post_attention_layernorm: LayerNorm::new(h, eps, device),
                attention: GptNeoXAttention {
                    query_key_value: Linear::new(h, 3 * h, bias, std, device),
                    dense: Linear::new(h, h, bias, std, device),
                    num_heads: c.num_attention_heads,
                    rotary_ndims: rot,
                },
                mlp: GptNeoXMlp {
                    dense_h_to_4h: Linear::new(h, c.intermediate_size, true, std, device),
                    dense_4h_to_h: Linear::new(c.intermediate_size, h, true, std, device),
                    act,
                },
                use_parallel_residual: c.use_parallel_residual,
            })
            .collect();
        Ok(GptNeoXForCausalLM {
            gpt_neox: GptNeoXModel {
                embed_in: EmbeddingConfig::new(c.vocab_size, h)
                    .with_initializer(Initializer::Normal { mean: 0.0, std })
                    .init(device),
                layers,
                final_layer_norm: LayerNorm::new(h, eps, device),
            },
            embed_out: (!c.tie_word_embeddings).then(|| linear(h, c.vocab_size, false, std, device)),
            rope,
            max_position_embeddings: c.max_position_embeddings,
            adapters: Adapters::default(),
        })
    }

    fn tables(&self, ctx: &Context<B>) -> RopeTables<B> {
        self.rope.tables(ctx)
    }

    fn embed(&self, ids: Tensor<B, 2, Int>, _ctx: &Context<B>) -> Tensor<B, 2> {
        embed_flat(&self.gpt_neox.embed_in, ids)
    }

    fn num_layers(&self) -> usize {
        self.gpt_neox.layers.len()
    }

    fn block(
        &self,
        i: usize,
        x: Tensor<B, 2>,
        ctx: &Context<B>,
        rope: &RopeTables<B>,
        cache: Option<&mut CacheSlot<B>>,
    ) -> Tensor<B, 2> {
        self.gpt_neox.layers[i].forward(x, ctx, rope, cache)
    }

    fn final_norm(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        self.gpt_neox.final_layer_norm.forward(x)
    }

    fn embedding(&self) -> Tensor<B, 2> {
        self.gpt_neox.embed_in.weight.val()
    }

    fn lm_head(&self) -> Option<&burn::nn::Linear<B>> {
        self.embed_out.as_ref()
    }

    fn lm_head_slot(&mut self) -> &mut Option<burn::nn::Linear<B>> {
        &mut self.embed_out
    }

    fn max_positions(&self) -> usize {
        self.max_position_embeddings
    }

    fn sliding_window(&self) -> Option<usize> {
        None
    }

    /// The four projections of every layer.
    fn lora_layers(&mut self) -> Vec<(String, &mut dyn LoraLayer<B>)> {
        let mut out: Vec<(String, &mut dyn LoraLayer<B>)> = Vec::new();
        for (i, layer) in self.gpt_neox.layers.iter_mut().enumerate() {
            let (a, m) = (&mut layer.attention, &mut layer.mlp);
            let p = format!("gpt_neox.layers.{i}");
            out.push((format!("{p}.attention.query_key_value"), &mut a.query_key_value));
            out.push((format!("{p}.attention.dense"), &mut a.dense));
            out.push((format!("{p}.mlp.dense_h_to_4h"), &mut m.dense_h_to_4h));
            out.push((format!("{p}.mlp.dense_4h_to_h"), &mut m.dense_4h_to_h));
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
