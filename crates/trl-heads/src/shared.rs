//! Helpers every head uses: the hidden size a head reads, load-report prefixes, the base of an
//! adapter directory, freezing all but the active adapter and a head, and the pooled-row
//! gather. This module depends on no other module of the crate except [`crate::error`], so
//! that the heads (`value_head`, `seq_cls`, `reward_adapter`) depend on it and never on each
//! other's internals.

use burn::module::Module;
use burn::prelude::*;
use serde_json::Value;

use trl_core::module_io::set_require_grad_where;
use trl_core::HfConfig;
use trl_models::AnyCausalLm;

use crate::error::{HeadError, Result};

/// Hidden size by TRL 1.x priority: `word_embed_proj_dim` > `hidden_size` (or its GPT-2 / T5
/// aliases `n_embd`, `d_model`) > `text_config.hidden_size` > `decoder.hidden_size` when
/// `is_encoder_decoder`.
pub(crate) fn head_hidden_size(cfg: &HfConfig) -> Result<usize> {
    let nested =
        |outer: &str| cfg.get(outer).and_then(|c| c.get("hidden_size")).and_then(Value::as_u64).map(|v| v as usize);
    cfg.get_usize("word_embed_proj_dim")
        .or_else(|| cfg.get_usize("hidden_size"))
        .or_else(|| cfg.get_usize("n_embd"))
        .or_else(|| cfg.get_usize("d_model"))
        .or_else(|| nested("text_config"))
        .or_else(|| cfg.get("is_encoder_decoder").and_then(Value::as_bool).filter(|&e| e).and_then(|_| nested("decoder")))
        .ok_or_else(|| HeadError::Config {
            path: cfg.path.display().to_string(),
            reason: "cannot find the hidden size (word_embed_proj_dim, hidden_size, text_config.hidden_size or decoder.hidden_size)".into(),
        })
}

/// Puts the prefix back on key names in a load report of a sub-module.
pub(crate) fn prefix_error(e: trl_core::Error, prefix: &str) -> HeadError {
    match e {
        trl_core::Error::Load(r) => HeadError::Core(trl_core::Error::Load(r.prefixed(prefix))),
        other => HeadError::Core(other),
    }
}

/// Freezes every parameter of `model` except the active adapter of its backbone (reached with
/// `backbone`) and the keys `head` accepts: the parameters PEFT trains with a head.
pub(crate) fn train_adapter_and_head<B: Backend, M: Module<B>>(
    model: M,
    backbone: fn(&M) -> &AnyCausalLm<B>,
    head: impl Fn(&str) -> bool,
) -> Result<M> {
    let is_adapter = backbone(&model).active_adapter_filter()?;
    Ok(set_require_grad_where(model, |k| Some(is_adapter(k) || head(k))))
}

/// Row `r` of `hidden` `[batch, seq, hidden]` at position `index[r]`: `[batch, hidden]`.
pub(crate) fn gather_rows<B: Backend>(hidden: Tensor<B, 3>, index: &[usize]) -> Tensor<B, 2> {
    let [b, t, h] = hidden.dims();
    let device = hidden.device();
    let flat: Vec<i64> = index.iter().enumerate().map(|(r, &i)| (r * t + i) as i64).collect();
    let flat = Tensor::<B, 1, Int>::from_data(TensorData::new(flat, [b]), &device);
    hidden.reshape([b * t, h]).select(0, flat)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn size(v: serde_json::Value) -> Result<usize> {
        head_hidden_size(&HfConfig::from_value(v).unwrap())
    }

    /// TRL 1.6+ priority: `word_embed_proj_dim` > `hidden_size` (GPT-2's `n_embd`) >
    /// `text_config.hidden_size` > `decoder.hidden_size` (encoder–decoder only), else an error.
    #[test]
    fn hidden_size_follows_trl_priority() {
        assert_eq!(size(json!({"word_embed_proj_dim": 16, "hidden_size": 32})).unwrap(), 16);
        assert_eq!(size(json!({"hidden_size": 32, "text_config": {"hidden_size": 8}})).unwrap(), 32);
        assert_eq!(size(json!({"n_embd": 24})).unwrap(), 24);
        assert_eq!(size(json!({"text_config": {"hidden_size": 8}})).unwrap(), 8);
        assert_eq!(size(json!({"is_encoder_decoder": true, "decoder": {"hidden_size": 12}})).unwrap(), 12);
        let err = size(json!({"is_encoder_decoder": false, "decoder": {"hidden_size": 12}})).unwrap_err();
        assert!(err.to_string().contains("hidden size"), "{err}");
    }
}
