//! What one architecture file provides ([`Backbone`]), and the one decoder loop that runs any
//! of them ([`decode`]): embeddings, then each block on the shared per-batch [`Context`] (and
//! KV-cache slot), then the final norm, collecting hidden states when asked.

use burn::module::Module;
use burn::prelude::*;

use trl_core::HfConfig;

use crate::batch::Context;
use crate::error::Result;
use crate::layers::KvCache;
use crate::lora::{held_linear, in_dtype, Adapters, LoraLayer};

/// One layer's slot of a [`KvCache`]: its keys and values so far.
pub type CacheSlot<B> = Option<(Tensor<B, 4>, Tensor<B, 4>)>;

/// What the rest of the crate knows of an architecture without holding a model of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArchInfo {
    /// The `model_type` values of `config.json` it implements.
    pub model_types: &'static [&'static str],
    /// transformers' class-name stem per model type (`GPT2` → `GPT2ForSequenceClassification`).
    pub class_stems: &'static [&'static str],
    /// PEFT's default LoRA target modules.
    pub default_lora_targets: &'static [&'static str],
    /// Its projections are GPT-2 `Conv1D`s (`[in, out]`): PEFT's `fan_in_fan_out`.
    pub fan_in_fan_out: bool,
    /// The output head's module name (`lm_head`, GPT-NeoX's `embed_out`).
    pub lm_head: &'static str,
}

impl ArchInfo {
    /// `{stem}ForSequenceClassification` for `model_type`.
    pub fn seq_cls_class(&self, model_type: &str) -> Option<String> {
        let i = self.model_types.iter().position(|t| *t == model_type)?;
        Some(format!("{}ForSequenceClassification", self.class_stems[i]))
    }
}

/// A causal-LM architecture: one file implements this (and a `pub const INFO: ArchInfo`), the
/// decoder loop and the heads do the rest. Activations between blocks are flat `[batch * q_len, hidden]`.
pub trait Backbone<B: Backend>: Module<B> + Sized {
    /// Built once per forward pass and shared by every block (e.g. RoPE tables).
    type Tables;

    /// A randomly initialised model for a validated `config`.
    fn init(config: &HfConfig, device: &B::Device) -> Result<Self>;

    fn tables(&self, ctx: &Context<B>) -> Self::Tables;

    /// Token (and learned position) embeddings of `ids` `[batch, q_len]`, flat.
    fn embed(&self, ids: Tensor<B, 2, Int>, ctx: &Context<B>) -> Tensor<B, 2>;

    fn num_layers(&self) -> usize;

    /// Block `i` on `x`, extending its cache slot when given.
    fn block(
        &self,
        i: usize,
        x: Tensor<B, 2>,
        ctx: &Context<B>,
        tables: &Self::Tables,
        cache: Option<&mut CacheSlot<B>>,
    ) -> Tensor<B, 2>;

    fn final_norm(&self, x: Tensor<B, 2>) -> Tensor<B, 2>;

    /// The token embedding matrix `[vocab, hidden]`.
    fn embedding(&self) -> Tensor<B, 2>;

    /// The untied lm_head (`None` when it is the token embedding).
    fn lm_head(&self) -> Option<&burn::nn::Linear<B>>;

    fn lm_head_slot(&mut self) -> &mut Option<burn::nn::Linear<B>>;

    /// `[batch, seq, hidden]` → `[batch, seq, vocab]`, soft-capped when the architecture
    /// caps its logits ([`Self::final_logit_softcap`]).
    fn logits(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        let logits = match self.lm_head() {
            Some(head) => held_linear(hidden, head.weight.val(), head.bias.as_ref().map(|b| b.val())),
            None => {
                // a placed model: the tied head is the embedding, on the first device
                let hidden = hidden.to_device(&self.embedding().device());
                // 2-D against the transposed view: a 3-D view of it would be copied (and the
                // embedding is the largest matrix of a small model) on every generated token
                let [b, t, h] = hidden.dims();
                let weight = in_dtype(self.embedding(), hidden.dtype());
                let vocab = weight.dims()[0];
                crate::kernels::matmul_bt(hidden.reshape([b * t, h]), weight).reshape([b, t, vocab])
            }
        };
        match self.final_logit_softcap() {
            Some(cap) => (logits / cap).tanh() * cap,
            None => logits,
        }
    }

    /// `cap` of `cap · tanh(logits / cap)` on the LM logits (Gemma 2's
    /// `final_logit_softcapping`); none by default.
    fn final_logit_softcap(&self) -> Option<f64> {
        None
    }

    /// Whether the lm_head is the token embedding (no `lm_head.weight` of its own).
    fn lm_head_tied(&self) -> bool {
        self.lm_head().is_none()
    }

    /// Drops an untied lm_head (for models that put another head on the hidden states).
    fn without_lm_head(mut self) -> Self {
        *self.lm_head_slot() = None;
        self
    }

    fn max_positions(&self) -> usize;

    fn sliding_window(&self) -> Option<usize>;

    /// Every projection LoRA can wrap, by module name.
    fn lora_layers(&mut self) -> Vec<(String, &mut dyn LoraLayer<B>)>;

    fn adapters(&self) -> &Adapters;

    fn adapters_mut(&mut self) -> &mut Adapters;
}

/// The decoder loop of every architecture: last hidden state (after the final norm), flat
/// `[tokens, hidden]` (every `batch * q_len` slot, or the real tokens only when `ctx` is
/// [`Context::without_padding`]), for `ids` `[batch, q_len]` under `ctx`, extending `cache`
/// when given. With `hidden_states` (padded layout only), every block's input and the final
/// output are pushed there as `[batch, q_len, hidden]`, as transformers' `output_hidden_states`
/// (embeddings first, the last one after the norm). With `picks`, only those activation rows of
/// the last hidden state come back, in that order, and the last block computes only them past
/// attention (its queries' outputs, residual and MLP): what a reward read at one token per
/// sequence needs.
pub fn decode<B: Backend, M: Backbone<B>>(
    model: &M,
    ids: Tensor<B, 2, Int>,
    ctx: &Context<B>,
    mut cache: Option<&mut KvCache<B>>,
    mut hidden_states: Option<&mut Vec<Tensor<B, 3>>>,
    picks: Option<&[usize]>,
) -> Tensor<B, 2> {
    debug_assert!(picks.is_none() || hidden_states.is_none(), "every hidden state is whole");
    let [b, t] = ids.dims();
    let tables = model.tables(ctx);
    // a model placed over several devices (`crate::placement`): the activations, the
    // context and the tables follow the layers
    let devices = crate::placement::layer_devices(model);
    let home = ctx.mask.device();
    let mut moved: Option<(B::Device, Context<B>, M::Tables)> = None;
    let mut x = model.embed(ids, ctx);
    if let Some(rows) = ctx.token_rows() {
        x = x.select(0, rows);
    }
    let d = x.dims()[1];
    let shaped = |x: &Tensor<B, 2>| x.clone().reshape([b, t, d]);
    for i in 0..model.num_layers() {
        if let Some(all) = hidden_states.as_deref_mut() {
            all.push(shaped(&x));
        }
        let slot = cache.as_deref_mut().map(|c| &mut c.layers[i]);
        let here = devices.get(i).filter(|d| **d != home);
        if let Some(d) = here.filter(|d| moved.as_ref().is_none_or(|(m, _, _)| m != *d)) {
            let c = ctx.to_device(d);
            let t = model.tables(&c);
            moved = Some((d.clone(), c, t));
        }
        let (input, c, t) = match (here, &moved) {
            (Some(d), Some((_, c, t))) => (x.to_device(d), c, t),
            (None, Some(_)) => (x.to_device(&home), ctx, &tables),
            _ => (x, ctx, &tables),
        };
        // the last block computes only the picked rows past attention
        let picking = picks.filter(|_| i + 1 == model.num_layers()).map(|rows| c.picking(rows));
        x = model.block(i, input, picking.as_ref().unwrap_or(c), t, slot);
    }
    if let Some(rows) = picks.filter(|_| model.num_layers() == 0) {
        x = ctx.picking(rows).kept(x);
    }
    let out = model.final_norm(x);
    if let Some(all) = hidden_states {
        all.push(shaped(&out));
    }
    out
}
