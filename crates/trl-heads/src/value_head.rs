//! TRL's `ValueHead` and `AutoModelForCausalLMWithValueHead`, with TRL's PEFT layout: a LoRA
//! policy saves its adapter files plus the value head alone in `model.safetensors`, and may carry
//! a reward adapter ([`crate::reward_adapter`]) for `compute_reward_score`.

use std::path::Path;

use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig, Initializer, Linear, LinearConfig};
use burn::prelude::*;

use trl_core::peft;
use trl_core::{checkpoint, load_module, module_state_dict, HfConfig, Holding, StateDict, Strictness};
use trl_models::{AnyCausalLm, KvCache, TokenBatch};

use crate::error::{HeadError, Result};
use crate::reward_adapter::RewardAdapter;
use crate::seq_cls::RewardOutput;
use crate::shared::{head_hidden_size, prefix_error, train_adapter_and_head};

/// Prefix of the value head's keys in a TRL checkpoint.
pub(crate) const V_HEAD_PREFIX: &str = "v_head.";

/// Where a LoRA value-head model keeps `v_head.*` next to its adapter. TRL writes them to
/// `pytorch_model.bin` and reads `model.safetensors` first, then `pytorch_model.bin`; trl-rs
/// writes `model.safetensors` (v_head keys only) and reads both.
pub(crate) const PEFT_V_HEAD_FILES: [&str; 2] = [checkpoint::SAFE_WEIGHTS, checkpoint::BIN_WEIGHTS];

/// How to initialise a fresh value head (TRL's `v_head_init_strategy`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum VHeadInit {
    /// `nn.Linear`'s default (kaiming-uniform weight and bias), TRL's `None`.
    Default,
    /// weight ~ N(0, std) and bias 0 (TRL's `"normal"`; `v_head_initializer_range` default 0.2).
    Normal { std: f64 },
}

/// Options of [`CausalLmWithValueHead::from_pretrained`] (TRL's supported kwargs).
#[derive(Debug, Clone, PartialEq)]
pub struct ValueHeadOptions {
    /// `summary_dropout_prob`; `None` reads the config, else TRL's default 0.1.
    pub summary_dropout_prob: Option<f64>,
    pub init: VHeadInit,
    /// How the backbone's weights are held (dtype, int8); the value head stays f32. All f32
    /// by default.
    pub holding: Holding,
}

impl Default for ValueHeadOptions {
    fn default() -> Self {
        Self { summary_dropout_prob: None, init: VHeadInit::Default, holding: Holding::F32 }
    }
}

/// Dropout then `Linear(hidden, 1)` with bias, kept in f32.
#[derive(Module, Debug)]
pub struct ValueHead<B: Backend> {
    pub summary: Linear<B>,
    pub dropout: Option<Dropout>,
}

impl<B: Backend> ValueHead<B> {
    pub fn new(hidden: usize, dropout: f64, init: VHeadInit, device: &B::Device) -> Self {
        let mut cfg = LinearConfig::new(hidden, 1);
        if let VHeadInit::Normal { std } = init {
            cfg = cfg.with_initializer(Initializer::Normal { mean: 0.0, std });
        }
        let mut summary = cfg.init(device);
        if matches!(init, VHeadInit::Normal { .. }) {
            summary.bias = Some(Initializer::Zeros.init([1], device));
        }
        let dropout = (dropout > 0.0).then(|| DropoutConfig::new(dropout).init());
        Self { summary, dropout }
    }

    /// `[batch, seq, hidden]` → values `[batch, seq]`.
    pub fn forward(&self, hidden: Tensor<B, 3>) -> Tensor<B, 2> {
        let h = match &self.dropout {
            Some(d) => d.forward(hidden),
            None => hidden,
        };
        self.summary.forward(h).squeeze_dim(2)
    }
}

/// What a forward pass of a value-head model returns (TRL's `(lm_logits, loss, value)`).
#[derive(Debug, Clone)]
pub struct ValueHeadOutput<B: Backend> {
    /// `[batch, seq, vocab]`, f32.
    pub logits: Tensor<B, 3>,
    /// Causal LM loss when labels were given.
    pub loss: Option<Tensor<B, 1>>,
    /// `[batch, seq]`
    pub values: Tensor<B, 2>,
}

/// A causal LM with a scalar value per token (TRL's `AutoModelForCausalLMWithValueHead`).
#[derive(Module, Debug)]
pub struct CausalLmWithValueHead<B: Backend> {
    pub pretrained_model: AnyCausalLm<B>,
    pub v_head: ValueHead<B>,
    /// TRL's `reward_adapter`: a second adapter on `pretrained_model` and its frozen score head.
    pub reward_adapter: Option<RewardAdapter<B>>,
}

/// How the value head was obtained at load time.
#[derive(Debug, Clone, PartialEq)]
pub enum VHeadSource {
    /// Restored from the checkpoint's `v_head.*` keys.
    Restored,
    /// No `v_head` weights found: a fresh head (expected unless resuming PPO training).
    Fresh,
}

impl<B: Backend> CausalLmWithValueHead<B> {
    /// Loads a causal LM and its value head from a model directory.
    ///
    /// A plain LM checkpoint gives a fresh head ([`VHeadSource::Fresh`]); a TRL checkpoint
    /// (single file or local shards) restores `v_head.summary.weight`/`bias`; head keys that
    /// are present but malformed are an error, never a silently random head.
    ///
    /// An adapter directory (`adapter_config.json`) loads its base and the adapter, and the
    /// value head saved next to it ([`from_adapter`](Self::from_adapter)), as TRL does.
    pub fn from_pretrained(
        dir: &Path,
        opts: &ValueHeadOptions,
        device: &B::Device,
    ) -> Result<(Self, HfConfig, VHeadSource)> {
        if peft::is_adapter_dir(dir) {
            return Self::from_adapter(dir, None, opts, device);
        }
        let config = HfConfig::load(dir)?;
        let mut sd = checkpoint::load_dir_lazily(dir)?;
        let head_sd = sd.split_off_by(|k| k.starts_with(V_HEAD_PREFIX)).strip_prefix(V_HEAD_PREFIX);
        let (dtype, quantize) = (opts.holding.dtype.resolve(&config), opts.holding.quantize);
        let (model, _) = AnyCausalLm::init(&config, device)?.load_as(sd, Strictness::Strict, dtype, quantize)?;
        let dropout = opts.summary_dropout_prob.or_else(|| config.get_f64("summary_dropout_prob")).unwrap_or(0.1);
        let head = ValueHead::new(head_hidden_size(&config)?, dropout, opts.init, device);
        let (v_head, source) = if head_sd.is_empty() {
            (head, VHeadSource::Fresh)
        } else {
            let (h, _) = load_module(head, &head_sd, Strictness::Strict).map_err(|e| prefix_error(e, V_HEAD_PREFIX))?;
            (h, VHeadSource::Restored)
        };
        Ok((Self { pretrained_model: model, v_head, reward_adapter: None }, config, source))
    }

    /// Logits (f32), optional LM loss and per-token values for a padded batch.
    pub fn forward(&self, batch: &TokenBatch, labels: Option<&[i64]>) -> Result<ValueHeadOutput<B>> {
        let out = self.pretrained_model.forward(batch, true)?;
        let logits = out.logits.expect("logits were requested");
        let loss = labels.map(|l| trl_models::loss::lm_loss(logits.clone(), l));
        Ok(ValueHeadOutput { values: self.v_head.forward(out.hidden), logits, loss })
    }

    /// Forward of new tokens on a KV cache (the value head takes part; generation does not need it).
    pub fn forward_cached(
        &self,
        ids: &[i64],
        mask: &[i64],
        q_len: usize,
        cache: &mut KvCache<B>,
    ) -> Result<(Tensor<B, 3>, Tensor<B, 2>)> {
        let hidden = self.pretrained_model.forward_cached(ids, mask, q_len, cache)?;
        Ok((self.pretrained_model.logits(hidden.clone()), self.v_head.forward(hidden)))
    }

    /// The merged state dict TRL saves: backbone keys plus `v_head.summary.weight` `[1, H]`
    /// and `v_head.summary.bias` `[1]`.
    pub fn state_dict(&self) -> StateDict {
        trl_core::module_io::read_params(self.params())
    }

    /// What [`Self::state_dict`] holds, each parameter read only when asked for.
    fn params(&self) -> Vec<trl_core::module_io::SavedParam> {
        trl_core::module_io::body_and_head_params(&self.pretrained_model, &self.v_head, V_HEAD_PREFIX)
    }

    /// Writes `config.json` and the merged weights (sharded above `max_shard_size` bytes),
    /// loadable by TRL's `AutoModelForCausalLMWithValueHead.from_pretrained`.
    pub fn save_pretrained(&self, config: &HfConfig, dir: &Path, max_shard_size: usize) -> Result<()> {
        config.save(dir)?;
        trl_core::module_io::save_params(dir, max_shard_size, self.params())?;
        Ok(())
    }
}

impl<B: Backend> CausalLmWithValueHead<B> {
    /// TRL's PEFT value-head model: the base (`base`, else the adapter's
    /// `base_model_name_or_path`) with the adapter of `dir` as `default`, and the value head from
    /// `dir/model.safetensors` or `dir/pytorch_model.bin` (`v_head.*` keys), else a fresh one.
    pub fn from_adapter(
        dir: &Path,
        base: Option<&Path>,
        opts: &ValueHeadOptions,
        device: &B::Device,
    ) -> Result<(Self, HfConfig, VHeadSource)> {
        let base_dir = peft::base_of(dir, base)?;
        let (mut model, hf, mut source) = Self::from_pretrained(&base_dir, opts, device)?;
        let mut extra = model.pretrained_model.load_adapter(dir, "default")?.modules_to_save;
        let mut head = extra.split_off_by(|k| k.starts_with(V_HEAD_PREFIX)).strip_prefix(V_HEAD_PREFIX);
        if !extra.is_empty() {
            let keys: Vec<&str> = extra.keys().collect();
            return Err(HeadError::Config {
                path: dir.display().to_string(),
                reason: format!(
                    "the adapter carries whole tensors a value-head model has no place for: [{}]",
                    keys.join(", ")
                ),
            });
        }
        if let Some(file) = PEFT_V_HEAD_FILES.iter().map(|f| dir.join(f)).find(|p| p.is_file()) {
            head.extend(
                checkpoint::load_file(&file)?.filter(|k| k.starts_with(V_HEAD_PREFIX)).strip_prefix(V_HEAD_PREFIX),
            );
        }
        if !head.is_empty() {
            let (h, _) =
                load_module(model.v_head, &head, Strictness::Strict).map_err(|e| prefix_error(e, V_HEAD_PREFIX))?;
            model.v_head = h;
            source = VHeadSource::Restored;
        }
        Ok((model, hf, source))
    }

    /// TRL's PEFT save: adapter `name` in PEFT's format plus `model.safetensors` holding only
    /// `v_head.summary.weight` / `.bias` (read back from there or `pytorch_model.bin`).
    pub fn save_adapter(&self, dir: &Path, name: &str) -> Result<()> {
        self.pretrained_model.save_adapter(dir, name, &StateDict::new())?;
        let head = module_state_dict(&self.v_head).add_prefix(V_HEAD_PREFIX);
        checkpoint::save_safetensors(&head, &dir.join(checkpoint::SAFE_WEIGHTS))?;
        Ok(())
    }

    /// Freezes everything except the active adapter and the value head (what TRL's PPO trains
    /// with a LoRA policy); the reward adapter stays frozen.
    pub fn train_adapter_only(self) -> Result<Self> {
        train_adapter_and_head(self, |m| &m.pretrained_model, |k| k.starts_with(V_HEAD_PREFIX))
    }

    /// TRL's `reward_adapter`: loads `dir` (a `SEQ_CLS` adapter with `score` in
    /// `modules_to_save`) as adapter `name` on the policy's backbone, with its score head.
    pub fn add_reward_adapter(&mut self, dir: &Path, name: &str) -> Result<()> {
        self.reward_adapter = Some(RewardAdapter::load(&mut self.pretrained_model, dir, name)?);
        Ok(())
    }

    /// TRL's `compute_reward_score`: the reward adapter's score of every row at its last real
    /// token (`rewards` `[batch, num_labels]`) and, if `per_token`, at every position. Runs on a
    /// copy of the model switched to the reward adapter, without dropout, and returns detached
    /// tensors, so this model's active adapter and gradients are untouched.
    pub fn compute_reward_score(&self, batch: &TokenBatch, per_token: bool) -> Result<RewardOutput<B>> {
        let rm = self
            .reward_adapter
            .as_ref()
            .ok_or_else(|| HeadError::Input("this model has no reward adapter (add_reward_adapter)".into()))?;
        rm.compute_reward_score(&self.pretrained_model, batch, per_token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `summary_dropout_prob` 0 means no dropout layer; the `normal` init zeroes the bias.
    #[test]
    fn dropout_and_init_options() {
        type B = trl_core::backend::Default;
        let device = trl_core::backend::device();
        let head = ValueHead::<B>::new(8, 0.0, VHeadInit::Normal { std: 0.2 }, &device);
        assert!(head.dropout.is_none());
        let bias = head.summary.bias.as_ref().unwrap().val().into_data().to_vec::<f32>().unwrap();
        assert_eq!(bias, vec![0.0]);
        assert!(ValueHead::<B>::new(8, 0.1, VHeadInit::Default, &device).dropout.is_some());
    }
}
