//! [`AnyCausalLm`]: any supported architecture, chosen from `config.json`'s `model_type`.
//!
//! The architectures are listed once, in `architectures!` (`lib.rs`); the enum, the
//! `model_type` dispatch and every per-architecture `match` here are generated from that list.
//! Adding a decoder architecture is one file implementing [`Backbone`] plus one line there.

// The enum (and the record types `derive(Module)` makes for it) is held once per model, never in
// bulk: boxing the larger variant would buy nothing.
#![allow(clippy::large_enum_variant)]

use burn::module::Module;
use burn::prelude::*;

use trl_core::{load_module_owned, HfConfig, LoadReport, Quantize, StateDict, Strictness, WeightDtype};

use crate::backbone::{decode, ArchInfo, Backbone};
use crate::batch::{Context, TokenBatch};
use crate::error::{ModelError, Result};
use crate::layers::KvCache;

macro_rules! define_enum {
    (() $($v:ident => $m:ident :: $t:ident),*) => {
        /// Any supported causal LM, chosen from `config.json`.
        #[derive(Module, Debug)]
        pub enum AnyCausalLm<B: Backend> {
            $($v(crate::$m::$t<B>)),*
        }

        /// What each supported architecture is, without a model of it.
        pub const ARCHITECTURES: &[ArchInfo] = &[$(crate::$m::INFO),*];

        impl<B: Backend> AnyCausalLm<B> {
            fn init_by_type(config: &HfConfig, device: &B::Device) -> Result<Self> {
                let model_type = config.model_type();
                $(
                    if model_type.is_some_and(|t| crate::$m::INFO.model_types.contains(&t)) {
                        return Ok(Self::$v(<crate::$m::$t<B> as Backbone<B>>::init(config, device)?));
                    }
                )*
                let mut supported = supported().join(", ");
                if model_type == Some(crate::deberta_v2::MODEL_TYPE) {
                    supported += " (deberta-v2 is an encoder: `score`, `eval` and `serve` take it; training, \
                                   `forward` and `generate` need one of these causal LMs)";
                }
                Err(ModelError::Unsupported {
                    found: model_type
                        .map(String::from)
                        .unwrap_or_else(|| format!("[{}] (no model_type)", config.architectures().join(", "))),
                    supported,
                })
            }
        }
    };
}
architectures!(define_enum);

/// `dispatch!(self, m => expr)`: `expr` with `m` bound to the architecture's model.
macro_rules! dispatch {
    ($self:expr, $m:ident => $body:expr) => {
        architectures!(dispatch_arms { $self, $m, $body })
    };
}

macro_rules! dispatch_arms {
    (({ $self:expr, $bind:ident, $body:expr }) $($v:ident => $m:ident :: $t:ident),*) => {
        match $self {
            $(AnyCausalLm::$v($bind) => $body),*
        }
    };
}
macro_rules! rebuild_without_lm_head {
    (($self:ident) $($v:ident => $m:ident :: $t:ident),*) => {
        match $self {
            $(AnyCausalLm::$v(m) => AnyCausalLm::$v(m.without_lm_head())),*
        }
    };
}

macro_rules! info_of {
    (($self:ident) $($v:ident => $m:ident :: $t:ident),*) => {
        match $self {
            $(AnyCausalLm::$v(_) => &crate::$m::INFO),*
        }
    };
}
pub(crate) use {dispatch, dispatch_arms};

/// What a `model_type` is, if it is supported.
pub fn arch_info(model_type: &str) -> Option<&'static ArchInfo> {
    ARCHITECTURES.iter().find(|a| a.model_types.contains(&model_type))
}

/// Every supported `model_type`.
pub fn supported() -> Vec<&'static str> {
    ARCHITECTURES.iter().flat_map(|a| a.model_types.iter().copied()).collect()
}

/// The output of a forward pass.
#[derive(Debug, Clone)]
pub struct LmOutput<B: Backend> {
    /// Last hidden state (after the final norm, as transformers' `hidden_states[-1]`).
    pub hidden: Tensor<B, 3>,
    /// `[batch, seq, vocab]`, when asked for.
    pub logits: Option<Tensor<B, 3>>,
}

impl<B: Backend> AnyCausalLm<B> {
    /// A randomly initialised model for `config`; every size is validated first.
    pub fn init(config: &HfConfig, device: &B::Device) -> Result<Self> {
        Self::init_by_type(config, device).map_err(|e| match e {
            ModelError::Config(m) => ModelError::Config(format!("{}: {m}", config.path.display())),
            e => e,
        })
    }

    /// Loads the backbone (and lm_head, if untied) from `sd`, by HF key, freeing each
    /// checkpoint tensor once it is converted.
    ///
    /// `sd` may carry keys of other parts (a value head, a score head): remove them first, or
    /// use `Strictness::Partial` and read the report.
    pub fn load(self, sd: StateDict, strict: Strictness) -> Result<(Self, LoadReport)> {
        self.load_as(sd, strict, WeightDtype::F32, Quantize::None)
    }

    /// [`Self::load`] with the weight matrices (projections, embeddings, lm_head) held in
    /// `dtype`, and the projections (not the embeddings or lm_head) quantized as `quantize`
    /// says; each layer widens its weight to the activations' dtype as it runs
    /// ([`trl_core::dtype`]). A dtype the backend cannot hold is an error.
    pub fn load_as(
        self,
        mut sd: StateDict,
        strict: Strictness,
        dtype: WeightDtype,
        quantize: Quantize,
    ) -> Result<(Self, LoadReport)> {
        let lm_head = self.lm_head_key();
        if dispatch!(&self, m => m.lm_head_tied()) {
            // Tied checkpoints may or may not store the shared matrix again.
            sd.remove(&lm_head);
        }
        let int8 = |key: &str| quantize == Quantize::Int8 && key != lm_head;
        Ok(load_module_owned(self, sd, strict, dtype, &int8)?)
    }

    /// The dtype the weight matrices are held in (the embedding's: projections may be
    /// quantized, see [`Self::quantized`]).
    pub fn weight_dtype(&self) -> burn::tensor::DType {
        dispatch!(self, m => m.embedding().dtype())
    }

    /// How many projection weights are held quantized.
    pub fn quantized(&self) -> usize {
        let mut count = QuantizedCount(0);
        self.visit(&mut count);
        count.0
    }

    /// The checkpoint key of the output head's weight (`lm_head.weight`, `embed_out.weight`).
    pub fn lm_head_key(&self) -> String {
        format!("{}.weight", self.info().lm_head)
    }

    /// Drops an untied lm_head (for models that put another head on the hidden states).
    pub fn without_lm_head(self) -> Self {
        architectures!(rebuild_without_lm_head self)
    }

    /// What this model's architecture is.
    pub fn info(&self) -> &'static ArchInfo {
        architectures!(info_of self)
    }

    pub fn num_layers(&self) -> usize {
        dispatch!(self, m => m.num_layers())
    }

    pub fn hidden_size(&self) -> usize {
        dispatch!(self, m => m.embedding().dims()[1])
    }

    pub fn vocab_size(&self) -> usize {
        dispatch!(self, m => m.embedding().dims()[0])
    }

    /// The longest sequence the model takes: GPT-2's `n_positions`, the Llama family's
    /// `max_position_embeddings`. Longer input is a [`ModelError::TooLong`], never a silent
    /// extrapolation or a mask of that size.
    pub fn max_positions(&self) -> usize {
        dispatch!(self, m => m.max_positions())
    }

    fn sliding_window(&self) -> Option<usize> {
        dispatch!(self, m => m.sliding_window())
    }

    /// The per-batch context (mask, positions) for a whole batch; a batch longer than the
    /// model's positions is refused before its `[batch, seq, seq]` mask is built.
    pub fn context(&self, batch: &TokenBatch, device: &B::Device) -> Result<Context<B>> {
        self.check_length(batch.seq)?;
        let ctx = Context::for_batch(batch, self.sliding_window(), device);
        self.check_positions(&ctx)?;
        Ok(ctx)
    }

    /// `Err(TooLong)` when `len` positions exceed [`Self::max_positions`].
    fn check_length(&self, len: usize) -> Result<()> {
        let max = self.max_positions();
        if len > max {
            return Err(ModelError::TooLong { len, max });
        }
        Ok(())
    }

    fn check_positions(&self, ctx: &Context<B>) -> Result<()> {
        match ctx.positions.iter().max() {
            Some(&p) => self.check_length(p.max(0) as usize + 1),
            None => Ok(()),
        }
    }

    /// Last hidden state for new tokens `ids` under `ctx`, extending `cache` if given.
    pub fn forward_hidden(
        &self,
        ids: Tensor<B, 2, Int>,
        ctx: &Context<B>,
        cache: Option<&mut KvCache<B>>,
    ) -> Result<Tensor<B, 3>> {
        self.check_positions(ctx)?;
        let [b, t] = ids.dims();
        let hidden = dispatch!(self, m => decode(m, ids, ctx, cache, None, None));
        let d = hidden.dims()[1];
        Ok(hidden.reshape([b, t, d]))
    }

    /// Last hidden state at `(row, position)` pairs of an uncached forward pass, `[picks, hidden]`,
    /// computed padding-free: only real tokens go through norms, projections and MLPs, and the
    /// last block past attention only the picked ones. Equal to reading those rows of
    /// [`Self::forward`]'s hidden state; each pick must be a real token.
    pub fn forward_picked(&self, batch: &TokenBatch, picks: &[(usize, usize)]) -> Result<Tensor<B, 2>> {
        let device = self.device();
        let ctx = self.context(batch, &device)?.without_padding(&batch.attention_mask);
        let rows = picks
            .iter()
            .map(|&(b, t)| {
                let slot = b.checked_mul(batch.seq).and_then(|s| s.checked_add(t)).filter(|_| t < batch.seq);
                let row = slot.and_then(|s| ctx.activation_row(s));
                row.ok_or_else(|| {
                    ModelError::Input(format!(
                        "row {b}, position {t} is not a real token of the batch (attention_mask 0 or out of range)"
                    ))
                })
            })
            .collect::<Result<Vec<usize>>>()?;
        Ok(dispatch!(self, m => decode(m, batch.ids_tensor(&device), &ctx, None, None, Some(&rows))))
    }

    /// Every hidden state of an uncached forward pass, as transformers' `hidden_states` with
    /// `output_hidden_states=True`: `layers + 1` tensors `[batch, seq, hidden]` — the
    /// embeddings, each layer's output, the last one after the final norm.
    pub fn hidden_states(&self, batch: &TokenBatch) -> Result<Vec<Tensor<B, 3>>> {
        let device = self.device();
        let ctx = self.context(batch, &device)?;
        let ids = batch.ids_tensor(&device);
        let mut all = Vec::with_capacity(self.num_layers() + 1);
        dispatch!(self, m => decode(m, ids, &ctx, None, Some(&mut all), None));
        Ok(all)
    }

    /// LM logits from hidden states.
    pub fn logits(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        dispatch!(self, m => m.logits(hidden))
    }

    /// One uncached forward pass over a padded batch.
    pub fn forward(&self, batch: &TokenBatch, with_logits: bool) -> Result<LmOutput<B>> {
        let device = self.device();
        let ctx = self.context(batch, &device)?;
        let hidden = self.forward_hidden(batch.ids_tensor(&device), &ctx, None)?;
        let logits = with_logits.then(|| self.logits(hidden.clone()));
        Ok(LmOutput { hidden, logits })
    }

    /// A fresh, empty KV cache for `batch` rows.
    pub fn new_cache(&self, batch: usize) -> KvCache<B> {
        KvCache::new(self.num_layers(), batch)
    }

    /// Forward of new tokens `ids` (`[batch, q_len]` row-major, with their mask) on top of
    /// `cache`, returning hidden states of the new tokens; positions continue from the cache.
    pub fn forward_cached(
        &self,
        ids: &[i64],
        mask: &[i64],
        q_len: usize,
        cache: &mut KvCache<B>,
    ) -> Result<Tensor<B, 3>> {
        let device = self.device();
        let batch = cache.batch;
        self.check_length(cache.len + q_len)?;
        let full = cache.extend_mask(mask, q_len);
        let ctx = Context::new(&full, batch, cache.len, q_len, None, self.sliding_window(), &device);
        let ids = Tensor::from_data(TensorData::new(ids.to_vec(), [batch, q_len]), &device);
        self.forward_hidden(ids, &ctx, Some(cache))
    }

    /// The device the weights live on.
    pub fn device(&self) -> B::Device {
        dispatch!(self, m => m.embedding().device())
    }
}

/// Counts the quantized float parameters of a module.
struct QuantizedCount(usize);

impl<B: Backend> burn::module::ModuleVisitor<B> for QuantizedCount {
    fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<B, D>>) {
        if matches!(param.val().dtype(), burn::tensor::DType::QFloat(_)) {
            self.0 += 1;
        }
    }
}
