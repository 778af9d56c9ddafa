//! TRL's `AutoModelForSeq2SeqLMWithValueHead` on T5: the LM's logits and a value per decoder
//! token, read from the decoder's last hidden state (transformers' `decoder_hidden_states[-1]`).
//! Checkpoints are TRL's: the backbone's keys plus `v_head.summary.weight` / `.bias`, in one file
//! or local shards.

use std::path::Path;

use burn::module::Module;
use burn::prelude::*;

use trl_core::{checkpoint, load_module, module_state_dict, peft, HfConfig, StateDict, Strictness};
use trl_models::t5::{T5ForConditionalGeneration, MODEL_TYPE};
use trl_models::TokenBatch;

use crate::error::{HeadError, Result};
use crate::shared::{head_hidden_size, prefix_error};
use crate::value_head::{VHeadSource, ValueHead, ValueHeadOptions, V_HEAD_PREFIX};

/// Where TRL looks for the LM head (`lm_head_namings`); a checkpoint that stores it under
/// another of these names loads as `lm_head`.
const LM_HEAD_NAMES: [&str; 3] = ["lm_head", "embed_out", "output_projection"];

/// What [`Seq2SeqLmWithValueHead::forward`] returns (TRL's `(lm_logits, loss, value)`, no loss).
#[derive(Debug, Clone)]
pub struct Seq2SeqOutput<B: Backend> {
    /// `[batch, decoder_seq, vocab]`, f32.
    pub logits: Tensor<B, 3>,
    /// `[batch, decoder_seq]`
    pub values: Tensor<B, 2>,
}

/// An encoder–decoder LM with a scalar value per decoder token.
#[derive(Module, Debug)]
pub struct Seq2SeqLmWithValueHead<B: Backend> {
    pub pretrained_model: T5ForConditionalGeneration<B>,
    pub v_head: ValueHead<B>,
}

impl<B: Backend> Seq2SeqLmWithValueHead<B> {
    /// Loads a T5 checkpoint and its value head: `v_head.*` keys restore it
    /// ([`VHeadSource::Restored`]), a plain LM checkpoint gives a fresh one. The backbone is held
    /// as `opts.holding` says; the value head stays f32.
    pub fn from_pretrained(
        dir: &Path,
        opts: &ValueHeadOptions,
        device: &B::Device,
    ) -> Result<(Self, HfConfig, VHeadSource)> {
        if peft::is_adapter_dir(dir) {
            return Err(HeadError::Config {
                path: dir.display().to_string(),
                reason: "PEFT adapters on encoder-decoder models are not supported yet; merge the adapter into \
                         the base (PEFT's merge_and_unload) and load the merged checkpoint"
                    .into(),
            });
        }
        let config = HfConfig::load(dir)?;
        if config.model_type() != Some(MODEL_TYPE) {
            return Err(HeadError::Config {
                path: config.path.display().to_string(),
                reason: format!(
                    "model_type {:?} is not an encoder-decoder trl-rs supports (\"{MODEL_TYPE}\")",
                    config.model_type().unwrap_or("none")
                ),
            });
        }
        let mut sd = checkpoint::load_dir_lazily(dir)?;
        let head_sd = sd.split_off_by(|k| k.starts_with(V_HEAD_PREFIX)).strip_prefix(V_HEAD_PREFIX);
        for name in &LM_HEAD_NAMES[1..] {
            if let Some(w) = sd.remove(&format!("{name}.weight")) {
                sd.insert("lm_head.weight", w);
            }
        }
        let (dtype, quantize) = (opts.holding.dtype.resolve(&config), opts.holding.quantize);
        let (model, _) = T5ForConditionalGeneration::init(&config, device)?.load_as(sd, dtype, quantize)?;
        let dropout = opts.summary_dropout_prob.or_else(|| config.get_f64("summary_dropout_prob")).unwrap_or(0.1);
        let head = ValueHead::new(head_hidden_size(&config)?, dropout, opts.init, device);
        let (v_head, source) = if head_sd.is_empty() {
            (head, VHeadSource::Fresh)
        } else {
            let (h, _) = load_module(head, &head_sd, Strictness::Strict).map_err(|e| prefix_error(e, V_HEAD_PREFIX))?;
            (h, VHeadSource::Restored)
        };
        Ok((Self { pretrained_model: model, v_head }, config, source))
    }

    /// Logits and per-token values of decoder inputs `decoder` (starting with the decoder start
    /// token, as TRL's callers pass `decoder_input_ids`) on the encoded `source`. Either batch
    /// may be padded on either side.
    pub fn forward(&self, source: &TokenBatch, decoder: &TokenBatch) -> Result<Seq2SeqOutput<B>> {
        if source.batch != decoder.batch {
            return Err(HeadError::Input(format!(
                "{} source rows but {} decoder rows: give one decoder input per source",
                source.batch, decoder.batch
            )));
        }
        let m = &self.pretrained_model;
        let encoded = m.encode(source)?;
        let ids = decoder.ids_tensor(&m.device());
        let hidden = m.decode(ids, &decoder.attention_mask, &encoded, &source.attention_mask, None)?;
        Ok(Seq2SeqOutput { logits: m.logits(hidden.clone()), values: self.v_head.forward(hidden) })
    }

    /// The merged state dict TRL saves: the backbone's keys (`lm_head.weight` only when untied)
    /// plus `v_head.summary.weight` `[1, d_model]` and `v_head.summary.bias` `[1]`.
    pub fn state_dict(&self) -> StateDict {
        let mut sd = module_state_dict(&self.pretrained_model);
        sd.extend(module_state_dict(&self.v_head).add_prefix(V_HEAD_PREFIX));
        sd
    }

    /// Writes `config.json` and the merged weights (sharded above `max_shard_size` bytes),
    /// loadable by TRL's `AutoModelForSeq2SeqLMWithValueHead.from_pretrained`.
    pub fn save_pretrained(&self, config: &HfConfig, dir: &Path, max_shard_size: usize) -> Result<()> {
        config.save(dir)?;
        checkpoint::save_weights(&self.state_dict(), dir, max_shard_size)?;
        Ok(())
    }
}
