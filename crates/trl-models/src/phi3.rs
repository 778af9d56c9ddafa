//! Phi-3 (`Phi3ForCausalLM`): the Llama layout with fused projections — `qkv_proj` (query,
//! key and value heads one after the other, not interleaved) and `gate_up_proj` (gate, then
//! up) — LongRoPE (`rope_scaling` of type `longrope`/`su`, the 128k configs), optional partial
//! rotary and sliding-window attention.

use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, Initializer};
use burn::prelude::*;
use serde::Deserialize;

use trl_core::HfConfig;

use crate::backbone::{ArchInfo, Backbone, CacheSlot};
use crate::batch::Context;
use crate::error::{ModelError, Result};
use crate::layers::{attend, embed_flat, linear, Activation, RmsNorm, Rope, RopeTables};
use crate::limits;
use crate::lora::{Adapters, Linear, LoraLayer};

/// What Phi-3 is, for the crate's list of architectures. PEFT has no default LoRA targets
/// for Phi-3; the fused attention projection is ours.
pub const INFO: ArchInfo = ArchInfo {
    model_types: &["phi3"],
    class_stems: &["Phi3"],
    default_lora_targets: &["qkv_proj"],
    fan_in_fan_out: false,
    lm_head: "lm_head",
};

fn rms_eps() -> f64 {
    1e-5
}
fn max_pos() -> usize {
    4096
}
fn silu() -> String {
    "silu".into()
}
fn init_range() -> f64 {
    0.02
}

/// The fields of Phi-3's `config.json` that the model uses.
#[derive(Debug, Clone, Deserialize)]
pub struct Phi3Config {
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
    #[serde(default = "silu")]
    pub hidden_act: String,
    #[serde(default)]
    pub sliding_window: Option<usize>,
    #[serde(default = "init_range")]
    pub initializer_range: f64,
}

impl Phi3Config {
    fn head_dim(&self) -> usize {
        self.head_dim.unwrap_or(self.hidden_size / self.num_attention_heads)
    }

    fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Parameters of the model and head.
    fn num_parameters(&self) -> u128 {
        let [v, h, i, l] =
            [self.vocab_size, self.hidden_size, self.intermediate_size, self.num_hidden_layers].map(|x| x as u128);
        let (q, k) = ((self.num_attention_heads * self.head_dim()) as u128, (self.kv_heads() * self.head_dim()) as u128);
        let layer = h * (q + 2 * k) + q * h + 3 * h * i + 2 * h;
        let head = if self.tie_word_embeddings { 0 } else { v * h };
        v * h + l * layer + h + head
    }

    /// Every size positive and consistent before anything is allocated.
    fn validate(&self) -> Result<()> {
        for (field, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.kv_heads()),
            ("max_position_embeddings", self.max_position_embeddings),
            ("head_dim", self.head_dim()),
        ] {
            limits::positive(field, v)?;
        }
        if !self.num_attention_heads.is_multiple_of(self.kv_heads()) {
            return Err(ModelError::Config(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads,
                self.kv_heads()
            )));
        }
        if let Some(w) = self.sliding_window {
            limits::positive("sliding_window", w)?;
        }
        limits::finite_at_least("rms_norm_eps", self.rms_norm_eps, 0.0)?;
        limits::finite_at_least("initializer_range", self.initializer_range, 0.0)?;
        limits::check_fits(self.num_parameters())
    }
}

#[derive(Module, Debug)]
pub struct Phi3Attention<B: Backend> {
    pub qkv_proj: Linear<B>,
    pub o_proj: Linear<B>,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    /// Rotated dimensions at the start of each head (`partial_rotary_factor`).
    pub rotary_ndims: usize,
}

#[derive(Module, Debug)]
pub struct Phi3Mlp<B: Backend> {
    pub gate_up_proj: Linear<B>,
    pub down_proj: Linear<B>,
    #[module(skip)]
    pub act: Activation,
}

#[derive(Module, Debug)]
pub struct Phi3DecoderLayer<B: Backend> {
    pub self_attn: Phi3Attention<B>,
    pub mlp: Phi3Mlp<B>,
    pub input_layernorm: RmsNorm<B>,
    pub post_attention_layernorm: RmsNorm<B>,
}

/// `Phi3Model`: embeddings, decoder layers, final norm.
#[derive(Module, Debug)]
pub struct Phi3Model<B: Backend> {
    pub embed_tokens: Embedding<B>,
    pub layers: Vec<Phi3DecoderLayer<B>>,
    pub norm: RmsNorm<B>,
}

/// `Phi3ForCausalLM`: the model plus an lm_head (absent when tied).
#[derive(Module, Debug)]
pub struct Phi3ForCausalLM<B: Backend> {
    pub model: Phi3Model<B>,
    pub lm_head: Option<burn::nn::Linear<B>>,
    #[module(skip)]
    pub rope: Rope,
    pub sliding_window: Option<usize>,
    pub max_position_embeddings: usize,
    /// LoRA adapters attached to the projections ([`crate::lora`]).
    #[module(skip)]
    pub adapters: Adapters,
}

impl<B: Backend> Phi3DecoderLayer<B> {
    fn forward(
        &self,
        x: Tensor<B, 2>,
        ctx: &Context<B>,
        rope: &RopeTables<B>,
        cache: Option<&mut CacheSlot<B>>,
    ) -> Tensor<B, 2> {
        let a = &self.self_attn;
        let qkv = a.qkv_proj.forward(self.input_layernorm.forward(x.clone()));
        let [n, width] = qkv.dims();
        let hd = width / (a.num_heads + 2 * a.num_kv_heads);
        let (q_end, k_end) = (a.num_heads * hd, (a.num_heads + a.num_kv_heads) * hd);
        // a block that keeps only some rows (`Context::picking`) needs only their queries
        let q = ctx.kept(qkv.clone().slice([0..n, 0..q_end]));
        let q = rope.kept(ctx).apply_partial(q, a.num_heads, a.rotary_ndims);
        let k = rope.apply_partial(qkv.clone().slice([0..n, q_end..k_end]), a.num_kv_heads, a.rotary_ndims);
        let v = qkv.slice([0..n, k_end..width]);
        let scale = 1.0 / (hd as f64).sqrt();
        let out = attend(q, k, v, (a.num_heads, a.num_kv_heads), ctx, cache, scale);
        let x = ctx.kept(x) + a.o_proj.forward(out);
        let m = &self.mlp;
        let gate_up = m.gate_up_proj.forward(self.post_attention_layernorm.forward(x.clone()));
        // the kept rows' (`x`'s), fewer than `n` in a last block that picks
        let [rows, width] = gate_up.dims();
        let i = width / 2;
        let gate = gate_up.clone().slice([0..rows, 0..i]);
        let up = gate_up.slice([0..rows, i..2 * i]);
        x + m.down_proj.forward(up * m.act.apply(gate))
    }
}

impl<B: Backend> Backbone<B> for Phi3ForCausalLM<B> {
    type Tables = RopeTables<B>;

    fn init(config: &HfConfig, device: &B::Device) -> Result<Self> {
        let c: Phi3Config = config.parse()?;
        c.validate()?;
        let pct = config
            .get("rope_parameters")
            .or_else(|| config.get("rope_scaling"))
            .and_then(|p| p.get("partial_rotary_factor"))
            .and_then(|v| v.as_f64())
            .or_else(|| config.get_f64("partial_rotary_factor"))
            .unwrap_or(1.0);
        let hd = c.head_dim();
        let rot = (hd as f64 * pct) as usize;
        if !(0.0..=1.0).contains(&pct) || !rot.is_multiple_of(2) {
            return Err(ModelError::Config(format!(
                "partial_rotary_factor {pct} must be in [0, 1] and give an even number of rotary dimensions \
                 (head_dim {hd} × {pct} = {rot})"
            )));
        }
        let rope = crate::rope::from_config(config, rot)?;
        let act = Activation::parse(&c.hidden_act)?;
        let (h, std, eps) = (c.hidden_size, c.initializer_range, c.rms_norm_eps);
        let (heads, kv, inter) = (c.num_attention_heads, c.kv_heads(), c.intermediate_size);
        let layers = (0..c.num_hidden_layers)
            .map(|_| Phi3DecoderLayer {
                self_attn: Phi3Attention {
                    qkv_proj: Linear::new(h, (heads + 2 * kv) * hd, false, std, device),
                    o_proj: Linear::new(heads * hd, h, false, std, device),
                    num_heads: heads,
                    num_kv_heads: kv,
                    rotary_ndims: rot,
                },
                mlp: Phi3Mlp {
                    gate_up_proj: Linear::new(h, 2 * inter, false, std, device),
                    down_proj: Linear::new(inter, h, false, std, device),
                    act,
                },
                input_layernorm: RmsNorm::new(h, eps, device),
                post_attention_layernorm: RmsNorm::new(h, eps, device),
            })
            .collect();
        Ok(Phi3ForCausalLM {
            model: Phi3Model {
                embed_tokens: EmbeddingConfig::new(c.vocab_size, h)
                    .with_initializer(Initializer::Normal { mean: 0.0, std })
                    .init(device),
                layers,
                norm: RmsNorm::new(h, eps, device),
            },
            lm_head: (!c.tie_word_embeddings).then(|| linear(h, c.vocab_size, false, std, device)),
            rope,
            sliding_window: c.sliding_window,
            max_position_embeddings: c.max_position_embeddings,
            adapters: Adapters::default(),
        })
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

    /// The four projections of every layer, by the fused names PEFT sees.
    fn lora_layers(&mut self) -> Vec<(String, &mut dyn LoraLayer<B>)> {
        let mut out: Vec<(String, &mut dyn LoraLayer<B>)> = Vec::new();
        for (i, layer) in self.model.layers.iter_mut().enumerate() {
            let (a, m) = (&mut layer.self_attn, &mut layer.mlp);
            let p = format!("model.layers.{i}");
            out.push((format!("{p}.self_attn.qkv_proj"), &mut a.qkv_proj));
            out.push((format!("{p}.self_attn.o_proj"), &mut a.o_proj));
            out.push((format!("{p}.mlp.gate_up_proj"), &mut m.gate_up_proj));
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
