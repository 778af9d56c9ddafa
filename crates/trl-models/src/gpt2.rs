//! GPT-2 (`GPT2Model`, `GPT2LMHeadModel`): learned positions, Conv1D projections, `gelu_new`,
//! pre-LayerNorm blocks and an lm_head tied to the token embedding.

use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, Initializer, Linear};
use burn::prelude::*;
use serde::Deserialize;

use trl_core::HfConfig;

use crate::backbone::{ArchInfo, Backbone, CacheSlot};
use crate::batch::Context;
use crate::error::{ModelError, Result};
use crate::layers::{attend, embed, Activation, Conv1D, LayerNorm};
use crate::limits;
use crate::lora::{Adapters, LoraLayer};

/// What GPT-2 is, for the crate's list of architectures.
pub const INFO: ArchInfo = ArchInfo {
    model_types: &["gpt2"],
    class_stems: &["GPT2"],
    default_lora_targets: &["c_attn"],
    fan_in_fan_out: true,
    lm_head: "lm_head",
};

fn yes() -> bool {
    true
}

/// The fields of GPT-2's `config.json` that the model uses (others are kept by `HfConfig`).
#[derive(Debug, Clone, Deserialize)]
pub struct Gpt2Config {
    pub vocab_size: usize,
    pub n_positions: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    #[serde(default)]
    pub n_inner: Option<usize>,
    #[serde(default = "gelu_new")]
    pub activation_function: String,
    #[serde(default = "ln_eps")]
    pub layer_norm_epsilon: f64,
    #[serde(default = "yes")]
    pub scale_attn_weights: bool,
    #[serde(default)]
    pub scale_attn_by_inverse_layer_idx: bool,
    #[serde(default = "yes")]
    pub tie_word_embeddings: bool,
    #[serde(default = "init_range")]
    pub initializer_range: f64,
}

fn gelu_new() -> String {
    "gelu_new".into()
}
fn ln_eps() -> f64 {
    1e-5
}
fn init_range() -> f64 {
    0.02
}

#[derive(Module, Debug)]
pub struct Gpt2Attention<B: Backend> {
    pub c_attn: Conv1D<B>,
    pub c_proj: Conv1D<B>,
    pub n_head: usize,
    pub scale: f64,
}

#[derive(Module, Debug)]
pub struct Gpt2Mlp<B: Backend> {
    pub c_fc: Conv1D<B>,
    pub c_proj: Conv1D<B>,
    #[module(skip)]
    pub act: Activation,
}

#[derive(Module, Debug)]
pub struct Gpt2Block<B: Backend> {
    pub ln_1: LayerNorm<B>,
    pub attn: Gpt2Attention<B>,
    pub ln_2: LayerNorm<B>,
    pub mlp: Gpt2Mlp<B>,
}

/// `GPT2Model`: embeddings, blocks and the final LayerNorm.
#[derive(Module, Debug)]
pub struct Gpt2Model<B: Backend> {
    pub wte: Embedding<B>,
    pub wpe: Embedding<B>,
    pub h: Vec<Gpt2Block<B>>,
    pub ln_f: LayerNorm<B>,
}

/// `GPT2LMHeadModel`: the model plus an lm_head (absent when tied to `wte`).
#[derive(Module, Debug)]
pub struct Gpt2LMHeadModel<B: Backend> {
    pub transformer: Gpt2Model<B>,
    pub lm_head: Option<Linear<B>>,
    pub n_positions: usize,
    /// LoRA adapters attached to the Conv1D projections ([`crate::lora`]).
    #[module(skip)]
    pub adapters: Adapters,
}

impl Gpt2Config {
    /// Parameters of the model and lm_head (biases and norms included).
    fn num_parameters(&self) -> u128 {
        let [v, p, d, l] = [self.vocab_size, self.n_positions, self.n_embd, self.n_layer].map(|x| x as u128);
        let inner = self.n_inner.map_or(4 * d, |i| i as u128);
        let block = 3 * d * d + 3 * d + d * d + d + 2 * d * inner + inner + d + 4 * d;
        let head = if self.tie_word_embeddings { 0 } else { v * d };
        (v + p) * d + l * block + 2 * d + head
    }

    /// A randomly initialised model (normal(0, initializer_range) weights, as transformers).
    pub fn init<B: Backend>(&self, device: &B::Device) -> Result<Gpt2LMHeadModel<B>> {
        for (field, v) in [
            ("vocab_size", self.vocab_size),
            ("n_positions", self.n_positions),
            ("n_embd", self.n_embd),
            ("n_head", self.n_head),
            ("n_inner", self.n_inner.unwrap_or(1)),
        ] {
            limits::positive(field, v)?;
        }
        if !self.n_embd.is_multiple_of(self.n_head) {
            return Err(ModelError::Config(format!(
                "n_embd {} is not divisible by n_head {}",
                self.n_embd, self.n_head
            )));
        }
        limits::finite_at_least("layer_norm_epsilon", self.layer_norm_epsilon, 0.0)?;
        limits::finite_at_least("initializer_range", self.initializer_range, 0.0)?;
        limits::check_fits(self.num_parameters())?;
        let act = Activation::parse(&self.activation_function)?;
        let (d, std) = (self.n_embd, self.initializer_range);
        let inner = self.n_inner.unwrap_or(4 * d);
        let emb =
            |n: usize| EmbeddingConfig::new(n, d).with_initializer(Initializer::Normal { mean: 0.0, std }).init(device);
        let h = (0..self.n_layer)
            .map(|i| {
                let mut scale = if self.scale_attn_weights { 1.0 / ((d / self.n_head) as f64).sqrt() } else { 1.0 };
                if self.scale_attn_by_inverse_layer_idx {
                    scale /= (i + 1) as f64;
                }
                Gpt2Block {
                    ln_1: LayerNorm::new(d, self.layer_norm_epsilon, device),
                    attn: Gpt2Attention {
                        c_attn: Conv1D::new(d, 3 * d, std, device),
                        c_proj: Conv1D::new(d, d, std, device),
                        n_head: self.n_head,
                        scale,
                    },
                    ln_2: LayerNorm::new(d, self.layer_norm_epsilon, device),
                    mlp: Gpt2Mlp {
                        c_fc: Conv1D::new(d, inner, std, device),
                        c_proj: Conv1D::new(inner, d, std, device),
                        act,
                    },
                }
            })
            .collect();
        Ok(Gpt2LMHeadModel {
            transformer: Gpt2Model {
                wte: emb(self.vocab_size),
                wpe: emb(self.n_positions),
                h,
                ln_f: LayerNorm::new(d, self.layer_norm_epsilon, device),
            },
            lm_head: (!self.tie_word_embeddings).then(|| crate::layers::linear(d, self.vocab_size, false, std, device)),
            n_positions: self.n_positions,
            adapters: Adapters::default(),
        })
    }
}

impl<B: Backend> Gpt2Block<B> {
    fn forward(&self, x: Tensor<B, 2>, ctx: &Context<B>, cache: Option<&mut CacheSlot<B>>) -> Tensor<B, 2> {
        let [n, d] = x.dims();
        let heads = self.attn.n_head;
        let qkv = self.attn.c_attn.forward(self.ln_1.forward(x.clone()));
        let part = |i: usize| qkv.clone().slice([0..n, i * d..(i + 1) * d]);
        // a block that keeps only some rows (`Context::picking`) needs only their queries
        let a = attend(ctx.kept(part(0)), part(1), part(2), (heads, heads), ctx, cache, self.attn.scale);
        let x = ctx.kept(x) + self.attn.c_proj.forward(a);
        let m = self.mlp.c_proj.forward(self.mlp.act.apply(self.mlp.c_fc.forward(self.ln_2.forward(x.clone()))));
        x + m
    }
}

impl<B: Backend> Backbone<B> for Gpt2LMHeadModel<B> {
    type Tables = ();

    fn init(config: &HfConfig, device: &B::Device) -> Result<Self> {
        config.parse::<Gpt2Config>()?.init(device)
    }

    fn tables(&self, _ctx: &Context<B>) {}

    /// Token plus learned position embeddings; positions are below `n_positions` (checked by
    /// the caller, [`crate::AnyCausalLm`]).
    fn embed(&self, ids: Tensor<B, 2, Int>, ctx: &Context<B>) -> Tensor<B, 2> {
        let device = ids.device();
        let pos =
            Tensor::<B, 2, Int>::from_data(TensorData::new(ctx.positions.clone(), [ctx.batch, ctx.q_len]), &device);
        let tr = &self.transformer;
        let [b, t] = ids.dims();
        let x = embed(&tr.wte, ids) + embed(&tr.wpe, pos);
        let d = x.dims()[2];
        x.reshape([b * t, d])
    }

    fn num_layers(&self) -> usize {
        self.transformer.h.len()
    }

    fn block(
        &self,
        i: usize,
        x: Tensor<B, 2>,
        ctx: &Context<B>,
        _tables: &(),
        cache: Option<&mut CacheSlot<B>>,
    ) -> Tensor<B, 2> {
        self.transformer.h[i].forward(x, ctx, cache)
    }

    fn final_norm(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        self.transformer.ln_f.forward(x)
    }

    fn embedding(&self) -> Tensor<B, 2> {
        self.transformer.wte.weight.val()
    }

    fn lm_head(&self) -> Option<&burn::nn::Linear<B>> {
        self.lm_head.as_ref()
    }

    fn lm_head_slot(&mut self) -> &mut Option<burn::nn::Linear<B>> {
        &mut self.lm_head
    }

    fn max_positions(&self) -> usize {
        self.n_positions
    }

    fn sliding_window(&self) -> Option<usize> {
        None
    }

    /// The four Conv1D projections of every block.
    fn lora_layers(&mut self) -> Vec<(String, &mut dyn LoraLayer<B>)> {
        let mut out: Vec<(String, &mut dyn LoraLayer<B>)> = Vec::new();
        for (i, block) in self.transformer.h.iter_mut().enumerate() {
            let (a, m) = (&mut block.attn, &mut block.mlp);
            let p = format!("transformer.h.{i}");
            out.push((format!("{p}.attn.c_attn"), &mut a.c_attn));
            out.push((format!("{p}.attn.c_proj"), &mut a.c_proj));
            out.push((format!("{p}.mlp.c_fc"), &mut m.c_fc));
            out.push((format!("{p}.mlp.c_proj"), &mut m.c_proj));
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
