//! `*ForSequenceClassification`: the reward model. A bias-free `score` Linear on the last
//! hidden state, read at the rightmost token that is not `pad_token_id`, as transformers does.

use std::path::Path;

use burn::module::Module;
use burn::nn::{Initializer, Linear, LinearConfig};
use burn::prelude::*;
use serde_json::{json, Map, Value};

use trl_core::{checkpoint, load_module, module_state_dict, HfConfig, StateDict, Strictness};
use trl_models::{AnyCausalLm, TokenBatch};

use crate::error::{HeadError, Result};
use crate::value_head::{head_hidden_size, prefix_error};

/// Key prefix of the score head.
pub const SCORE_PREFIX: &str = "score.";

/// Rewards of a batch.
#[derive(Debug, Clone)]
pub struct RewardOutput<B: Backend> {
    /// `[batch, num_labels]`, read at each row's last non-pad token.
    pub rewards: Tensor<B, 2>,
    /// `[batch, seq, num_labels]` per-token scores, when asked for.
    pub scores: Option<Tensor<B, 3>>,
}

/// A sequence-classification (reward) model over any supported backbone.
#[derive(Module, Debug)]
pub struct ForSequenceClassification<B: Backend> {
    pub backbone: AnyCausalLm<B>,
    pub score: Linear<B>,
    pub pad_token_id: Option<i64>,
}

/// `num_labels` as transformers derives it: the size of `id2label`, else `num_labels`, else 2.
pub fn num_labels(cfg: &HfConfig) -> usize {
    cfg.get("id2label")
        .and_then(Value::as_object)
        .map(Map::len)
        .or_else(|| cfg.get_usize("num_labels"))
        .unwrap_or(2)
}

/// The `*ForSequenceClassification` architecture name for a model type.
pub fn seq_cls_architecture(model_type: &str) -> String {
    let base = match model_type {
        "gpt2" => "GPT2",
        "llama" => "Llama",
        "mistral" => "Mistral",
        "qwen2" => "Qwen2",
        "qwen3" => "Qwen3",
        other => other,
    };
    format!("{base}ForSequenceClassification")
}

/// Sets `architectures`, `id2label` and `label2id` for a reward model with `n` labels.
pub fn mark_as_seq_cls(cfg: &mut HfConfig, n: usize) {
    let mt = cfg.model_type().unwrap_or("").to_string();
    cfg.set("architectures", json!([seq_cls_architecture(&mt)]));
    let id2label: Map<String, Value> = (0..n).map(|i| (i.to_string(), json!(format!("LABEL_{i}")))).collect();
    let label2id: Map<String, Value> = (0..n).map(|i| (format!("LABEL_{i}"), json!(i))).collect();
    cfg.set("id2label", Value::Object(id2label));
    cfg.set("label2id", Value::Object(label2id));
    cfg.raw.remove("num_labels");
}

/// Whether a checkpoint is a reward model rather than a causal LM.
pub fn is_seq_cls(cfg: &HfConfig) -> bool {
    cfg.architectures().iter().any(|a| a.ends_with("ForSequenceClassification"))
}

impl<B: Backend> ForSequenceClassification<B> {
    /// A reward model with a fresh `score` (N(0, initializer_range), as transformers) on `backbone`.
    pub fn with_fresh_score(backbone: AnyCausalLm<B>, cfg: &HfConfig, num_labels: usize, device: &B::Device) -> Result<Self> {
        let std = cfg.get_f64("initializer_range").unwrap_or(0.02);
        let score = LinearConfig::new(head_hidden_size(cfg)?, num_labels)
            .with_bias(false)
            .with_initializer(Initializer::Normal { mean: 0.0, std })
            .init(device);
        let pad_token_id = cfg.get("pad_token_id").and_then(Value::as_i64);
        Ok(Self { backbone: backbone.without_lm_head(), score, pad_token_id })
    }

    /// Loads a `*ForSequenceClassification` checkpoint, or a causal-LM checkpoint with a fresh
    /// score head (`num_labels` then defaults to 1, as TRL's RewardTrainer forces). Returns
    /// whether the score head came from the checkpoint.
    pub fn from_pretrained(dir: &Path, num_labels_override: Option<usize>, device: &B::Device) -> Result<(Self, HfConfig, bool)> {
        let mut config = HfConfig::load(dir)?;
        let mut sd = checkpoint::load_dir(dir)?;
        let score_sd = sd.split_off_by(|k| k.starts_with(SCORE_PREFIX)).strip_prefix(SCORE_PREFIX);
        sd.remove("lm_head.weight");
        let n = num_labels_override.unwrap_or(if is_seq_cls(&config) { num_labels(&config) } else { 1 });
        let backbone = AnyCausalLm::init(&config, device)?.without_lm_head();
        let (backbone, _) = backbone.load(&sd, Strictness::Strict)?;
        let mut model = Self::with_fresh_score(backbone, &config, n, device)?;
        let restored = !score_sd.is_empty();
        if restored {
            let (score, _) = load_module(model.score, &score_sd, Strictness::Strict).map_err(|e| prefix_error(e, SCORE_PREFIX))?;
            model.score = score;
        }
        mark_as_seq_cls(&mut config, n);
        Ok((model, config, restored))
    }

    /// Index of the rightmost token that is not `pad_token_id` in each row (transformers'
    /// pooling since PR #35911; with no pad id, only a single row is allowed and the last
    /// position is used).
    pub fn pooled_index(&self, batch: &TokenBatch) -> Result<Vec<usize>> {
        match self.pad_token_id {
            Some(pad) => Ok((0..batch.batch)
                .map(|b| {
                    let row = &batch.input_ids[b * batch.seq..(b + 1) * batch.seq];
                    row.iter().rposition(|&t| t != pad).unwrap_or(0)
                })
                .collect()),
            None if batch.batch == 1 => Ok(vec![batch.seq - 1]),
            None => Err(HeadError::Input(
                "cannot handle batch sizes > 1 if no padding token is defined: set `pad_token_id` in config.json".into(),
            )),
        }
    }

    /// Rewards (and per-token scores if `all_scores`) of a padded batch.
    pub fn forward(&self, batch: &TokenBatch, all_scores: bool) -> Result<RewardOutput<B>> {
        let idx = self.pooled_index(batch)?;
        let out = self.backbone.forward(batch, false)?;
        let [b, t, h] = out.hidden.dims();
        let device = out.hidden.device();
        let flat: Vec<i64> = idx.iter().enumerate().map(|(r, &i)| (r * t + i) as i64).collect();
        let flat = Tensor::<B, 1, Int>::from_data(TensorData::new(flat, [b]), &device);
        let pooled = out.hidden.clone().reshape([b * t, h]).select(0, flat);
        let rewards = self.score.forward(pooled);
        let scores = all_scores.then(|| self.score.forward(out.hidden));
        Ok(RewardOutput { rewards, scores })
    }

    /// Backbone keys plus `score.weight` `[num_labels, H]`.
    pub fn state_dict(&self) -> StateDict {
        let mut sd = module_state_dict(&self.backbone);
        sd.extend(module_state_dict(&self.score).add_prefix(SCORE_PREFIX));
        sd
    }

    /// Writes a checkpoint transformers loads as `AutoModelForSequenceClassification`.
    pub fn save_pretrained(&self, config: &HfConfig, dir: &Path, max_shard_size: usize) -> Result<()> {
        let mut config = config.clone();
        mark_as_seq_cls(&mut config, self.score.weight.dims()[1]);
        if let Some(p) = self.pad_token_id {
            config.set("pad_token_id", p);
        }
        config.save(dir)?;
        checkpoint::save_weights(&self.state_dict(), dir, max_shard_size)?;
        Ok(())
    }
}
