//! # trl-models
//!
//! Causal-LM backbones loaded from Hugging Face checkpoints and proven equal to transformers:
//! GPT-2 ([`gpt2`]) and the Llama family — Llama, Mistral, Qwen2, Qwen3 — ([`llama`]), one file
//! per architecture over shared blocks ([`layers`]: norms, RoPE, attention, KV cache). Module
//! fields mirror the HF parameter paths, so checkpoint keys load without a table. Masks and
//! position ids come from the attention mask, built once per batch ([`batch`]), so left and
//! right padding both give transformers' numbers. [`AnyCausalLm`] picks the architecture from
//! `config.json`. PEFT LoRA adapters ([`lora`]) attach to the projections: load, train, merge,
//! switch and save them. Generic over burn's `Backend`.

pub mod batch;
pub mod error;
pub mod gpt2;
pub mod layers;
mod limits;
pub mod llama;
pub mod lora;
pub mod loss;

use std::path::Path;

use burn::module::Module;
use burn::prelude::*;

use trl_core::{load_module, HfConfig, LoadReport, StateDict, Strictness};

pub use batch::{Context, Padding, TokenBatch};
pub use error::{ModelError, Result};
pub use layers::KvCache;
pub use lora::{Adapters, LoadedAdapter};

/// The `model_type` values this crate implements.
pub const SUPPORTED: &[&str] = &["gpt2", "llama", "mistral", "qwen2", "qwen3"];

/// Any supported causal LM, chosen from `config.json`.
#[derive(Module, Debug)]
pub enum AnyCausalLm<B: Backend> {
    Gpt2(gpt2::Gpt2LMHeadModel<B>),
    Llama(llama::LlamaForCausalLM<B>),
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
    /// A randomly initialised model for `config`.
    pub fn init(config: &HfConfig, device: &B::Device) -> Result<Self> {
        Self::init_unnamed(config, device).map_err(|e| match e {
            ModelError::Config(m) => ModelError::Config(format!("{}: {m}", config.path.display())),
            e => e,
        })
    }

    fn init_unnamed(config: &HfConfig, device: &B::Device) -> Result<Self> {
        match config.model_type() {
            Some("gpt2") => Ok(Self::Gpt2(config.parse::<gpt2::Gpt2Config>()?.init(device)?)),
            Some(t) if llama::LLAMA_TYPES.contains(&t) => {
                Ok(Self::Llama(llama::LlamaConfig::from_hf(config)?.init(device)))
            }
            other => Err(ModelError::Unsupported {
                found: other
                    .map(String::from)
                    .unwrap_or_else(|| format!("[{}] (no model_type)", config.architectures().join(", "))),
            }),
        }
    }

    /// Loads the backbone (and lm_head, if untied) from `sd`, by HF key.
    ///
    /// `sd` may carry keys of other parts (a value head, a score head): pass them in `extra`
    /// style by removing them first, or use `Strictness::Partial` and read the report.
    pub fn load(self, sd: &StateDict, strict: Strictness) -> Result<(Self, LoadReport)> {
        let mut sd = sd.clone();
        if self.lm_head_tied() {
            // Tied checkpoints may or may not store the shared matrix again.
            sd.remove("lm_head.weight");
        }
        Ok(load_module(self, &sd, strict)?)
    }

    /// Builds from `dir/config.json` and loads `dir`'s weights strictly. An adapter directory
    /// (`adapter_config.json`) gives its base model with the adapter attached
    /// ([`from_adapter`](Self::from_adapter)), as transformers' PEFT integration does.
    pub fn from_pretrained(dir: &Path, device: &B::Device) -> Result<(Self, HfConfig)> {
        if trl_core::peft::is_adapter_dir(dir) {
            return Self::from_adapter(dir, None, device);
        }
        let config = HfConfig::load(dir)?;
        let sd = trl_core::checkpoint::load_dir(dir)?;
        let (model, _) = Self::init(&config, device)?.load(&sd, Strictness::Strict)?;
        Ok((model, config))
    }

    fn lm_head_tied(&self) -> bool {
        match self {
            Self::Gpt2(m) => m.lm_head.is_none(),
            Self::Llama(m) => m.lm_head.is_none(),
        }
    }

    /// Drops an untied lm_head (for models that put another head on the hidden states).
    pub fn without_lm_head(self) -> Self {
        match self {
            Self::Gpt2(mut m) => {
                m.lm_head = None;
                Self::Gpt2(m)
            }
            Self::Llama(mut m) => {
                m.lm_head = None;
                Self::Llama(m)
            }
        }
    }

    pub fn num_layers(&self) -> usize {
        match self {
            Self::Gpt2(m) => m.num_layers(),
            Self::Llama(m) => m.num_layers(),
        }
    }

    pub fn hidden_size(&self) -> usize {
        match self {
            Self::Gpt2(m) => m.transformer.wte.weight.dims()[1],
            Self::Llama(m) => m.model.embed_tokens.weight.dims()[1],
        }
    }

    pub fn vocab_size(&self) -> usize {
        match self {
            Self::Gpt2(m) => m.transformer.wte.weight.dims()[0],
            Self::Llama(m) => m.model.embed_tokens.weight.dims()[0],
        }
    }

    /// The longest sequence the model takes: GPT-2's `n_positions`, the Llama family's
    /// `max_position_embeddings`. Longer input is a [`ModelError::TooLong`], never a silent
    /// extrapolation or a mask of that size.
    pub fn max_positions(&self) -> usize {
        match self {
            Self::Gpt2(m) => m.n_positions,
            Self::Llama(m) => m.max_position_embeddings,
        }
    }

    fn sliding_window(&self) -> Option<usize> {
        match self {
            Self::Gpt2(_) => None,
            Self::Llama(m) => m.sliding_window,
        }
    }

    /// The per-batch context (mask, positions) for a whole batch; a batch longer than the
    /// model's positions is refused before its `[batch, seq, seq]` mask is built.
    pub fn context(&self, batch: &TokenBatch, device: &B::Device) -> Result<Context<B>> {
        self.check_length(batch.seq)?;
        Ok(Context::for_batch(batch, self.sliding_window(), device))
    }

    /// `Err(TooLong)` when `len` positions exceed [`Self::max_positions`].
    fn check_length(&self, len: usize) -> Result<()> {
        let max = self.max_positions();
        if len > max {
            return Err(ModelError::TooLong { len, max });
        }
        Ok(())
    }

    /// Last hidden state for new tokens `ids` under `ctx`, extending `cache` if given.
    pub fn forward_hidden(
        &self,
        ids: Tensor<B, 2, Int>,
        ctx: &Context<B>,
        cache: Option<&mut KvCache<B>>,
    ) -> Result<Tensor<B, 3>> {
        if let Some(&p) = ctx.positions.iter().max() {
            self.check_length(p.max(0) as usize + 1)?;
        }
        match self {
            Self::Gpt2(m) => m.forward_hidden(ids, ctx, cache, None),
            Self::Llama(m) => m.forward_hidden(ids, ctx, cache, None),
        }
    }

    /// Every hidden state of an uncached forward pass, as transformers' `hidden_states` with
    /// `output_hidden_states=True`: `layers + 1` tensors `[batch, seq, hidden]` — the
    /// embeddings, each layer's output, the last one after the final norm.
    pub fn hidden_states(&self, batch: &TokenBatch) -> Result<Vec<Tensor<B, 3>>> {
        let device = self.device();
        let ctx = self.context(batch, &device)?;
        let ids = batch.ids_tensor(&device);
        let mut all = Vec::with_capacity(self.num_layers() + 1);
        match self {
            Self::Gpt2(m) => m.forward_hidden(ids, &ctx, None, Some(&mut all)),
            Self::Llama(m) => m.forward_hidden(ids, &ctx, None, Some(&mut all)),
        }?;
        Ok(all)
    }

    /// LM logits from hidden states.
    pub fn logits(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        match self {
            Self::Gpt2(m) => m.logits(hidden),
            Self::Llama(m) => m.logits(hidden),
        }
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
        match self {
            Self::Gpt2(m) => m.transformer.wte.weight.device(),
            Self::Llama(m) => m.model.embed_tokens.weight.device(),
        }
    }
}
