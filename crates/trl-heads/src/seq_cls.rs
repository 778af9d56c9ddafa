//! `*ForSequenceClassification`: the reward model. A bias-free `score` Linear on the last
//! hidden state, read at the rightmost token that is not `pad_token_id`, as transformers does.
//! With LoRA (PEFT's `SEQ_CLS` task), `score` is in `modules_to_save`: trained whole and stored in
//! the adapter file as `base_model.model.score.weight`.

use std::path::Path;

use burn::module::Module;
use burn::nn::{Initializer, Linear, LinearConfig};
use burn::prelude::*;
use serde_json::{json, Map, Value};

use trl_core::peft::{self, AdapterKey, LoraConfig};
use trl_core::{checkpoint, load_module, module_state_dict, HfConfig, Holding, StateDict, Strictness};
use trl_models::{AnyCausalLm, TokenBatch};

use crate::error::{HeadError, Result};
use crate::shared::{gather_rows, head_hidden_size, prefix_error, train_adapter_and_head};

/// Key prefix of the score head.
pub(crate) const SCORE_PREFIX: &str = "score.";

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
    cfg.get("id2label").and_then(Value::as_object).map(Map::len).or_else(|| cfg.get_usize("num_labels")).unwrap_or(2)
}

/// The `*ForSequenceClassification` architecture name for a model type.
pub(crate) fn seq_cls_architecture(model_type: &str) -> String {
    trl_models::arch_info(model_type)
        .and_then(|a| a.seq_cls_class(model_type))
        .unwrap_or_else(|| format!("{model_type}ForSequenceClassification"))
}

/// Sets `architectures`, `id2label` and `label2id` for a reward model with `n` labels.
pub(crate) fn mark_as_seq_cls(cfg: &mut HfConfig, n: usize) {
    let mt = cfg.model_type().unwrap_or("").to_string();
    cfg.set("architectures", json!([seq_cls_architecture(&mt)]));
    let id2label: Map<String, Value> = (0..n).map(|i| (i.to_string(), json!(format!("LABEL_{i}")))).collect();
    let label2id: Map<String, Value> = (0..n).map(|i| (format!("LABEL_{i}"), json!(i))).collect();
    cfg.set("id2label", Value::Object(id2label));
    cfg.set("label2id", Value::Object(label2id));
    cfg.raw.remove("num_labels");
}

/// The reward normalisation a reward model's config.json stores (OpenRLHF's and
/// `normalize_reward`'s `mean` and `std`), when both are there, finite, and `std` positive.
pub fn reward_normalization(cfg: &HfConfig) -> Option<(f64, f64)> {
    match (cfg.get_f64("mean"), cfg.get_f64("std")) {
        (Some(mean), Some(std)) if mean.is_finite() && std.is_finite() && std > 0.0 => Some((mean, std)),
        _ => None,
    }
}

/// Whether a checkpoint is a reward model rather than a causal LM.
pub fn is_seq_cls(cfg: &HfConfig) -> bool {
    cfg.architectures().iter().any(|a| a.ends_with("ForSequenceClassification"))
}

/// Whether one row per pair ([`trl_models::SharedPairs`]) costs less than the padded batch of
/// both sequences. Norms, projections and MLPs run on real tokens only in both layouts (about
/// `26·H²` flops a token and layer); attention runs on every (query, key) slot of a row (`4·H`,
/// counted twice for its masking and softmax). A pair with little prompt in common can cost more
/// as one row of both sequences (attention grows with the square of the row) than as two rows.
fn shared_pays(pairs: &[(&[i64], &[i64])], shared: &trl_models::SharedPairs, hidden: usize) -> bool {
    let rows = shared.batch.shared.as_deref().unwrap_or_default();
    let tokens: usize = pairs.iter().map(|(c, r)| c.len() + r.len()).sum();
    let common: usize = rows.iter().map(|r| r.shared).sum();
    let longest = pairs.iter().map(|(c, r)| c.len().max(r.len())).max().unwrap_or(0);
    let per_token = 3 * hidden as u128; // 26·H² / (2 · 4·H), in attention-slot units
    let padded = tokens as u128 * per_token + 2 * (pairs.len() * longest * longest) as u128;
    let one_row = (tokens - common) as u128 * per_token + (pairs.len() * shared.batch.seq * shared.batch.seq) as u128;
    one_row < padded
}

impl<B: Backend> ForSequenceClassification<B> {
    /// A reward model with a fresh `score` (N(0, initializer_range), as transformers) on `backbone`.
    pub fn with_fresh_score(
        backbone: AnyCausalLm<B>,
        cfg: &HfConfig,
        num_labels: usize,
        device: &B::Device,
    ) -> Result<Self> {
        if num_labels == 0 || num_labels > backbone.vocab_size().max(1 << 16) {
            return Err(HeadError::Config {
                path: cfg.path.display().to_string(),
                reason: format!(
                    "num_labels {num_labels} (from id2label / num_labels) must be at least 1 and not absurdly large"
                ),
            });
        }
        let std = cfg.get_f64("initializer_range").unwrap_or(0.02);
        let score = LinearConfig::new(head_hidden_size(cfg)?, num_labels)
            .with_bias(false)
            .with_initializer(Initializer::Normal { mean: 0.0, std })
            .init(device);
        let pad_token_id = cfg.get("pad_token_id").and_then(Value::as_i64);
        Ok(Self { backbone: backbone.without_lm_head(), score, pad_token_id })
    }

    /// A randomly initialised reward model for `config` (transformers' `from_config`): a fresh
    /// backbone and a fresh `score`, with `num_labels` as given, else the config's when it names a
    /// `*ForSequenceClassification`, else 1 (as TRL's RewardTrainer forces). Returns the config
    /// marked as a reward model. Seed the backend first (`B::seed`) for reproducible weights.
    pub fn from_config(
        config: &HfConfig,
        num_labels_override: Option<usize>,
        device: &B::Device,
    ) -> Result<(Self, HfConfig)> {
        let n = num_labels_override.unwrap_or(if is_seq_cls(config) { num_labels(config) } else { 1 });
        let backbone = AnyCausalLm::init(config, device)?;
        let model = Self::with_fresh_score(backbone, config, n, device)?;
        let mut config = config.clone();
        mark_as_seq_cls(&mut config, n);
        Ok((model, config))
    }

    /// Loads a `*ForSequenceClassification` checkpoint, or a causal-LM checkpoint with a fresh
    /// score head (`num_labels` then defaults to 1, as TRL's RewardTrainer forces). Returns
    /// whether the score head came from the checkpoint.
    ///
    /// An adapter directory (`adapter_config.json`) loads its base and the adapter
    /// ([`from_adapter`](Self::from_adapter)); the adapter's `score` decides `num_labels`.
    pub fn from_pretrained(
        dir: &Path,
        num_labels_override: Option<usize>,
        device: &B::Device,
    ) -> Result<(Self, HfConfig, bool)> {
        Self::from_pretrained_as(dir, num_labels_override, Holding::F32, device)
    }

    /// [`Self::from_pretrained`] with the backbone's weights held as `holding` says (dtype,
    /// int8; [`trl_core::dtype`]); the score head stays f32.
    pub fn from_pretrained_as(
        dir: &Path,
        num_labels_override: Option<usize>,
        holding: Holding,
        device: &B::Device,
    ) -> Result<(Self, HfConfig, bool)> {
        if peft::is_adapter_dir(dir) {
            return Self::from_adapter_as(dir, None, holding, device);
        }
        let mut config = HfConfig::load(dir)?;
        let mut sd = checkpoint::load_dir_lazily(dir)?;
        let score_sd = sd.split_off_by(|k| k.starts_with(SCORE_PREFIX)).strip_prefix(SCORE_PREFIX);
        let n = num_labels_override.unwrap_or(if is_seq_cls(&config) { num_labels(&config) } else { 1 });
        let backbone = AnyCausalLm::init(&config, device)?;
        sd.remove(&backbone.lm_head_key());
        let backbone = backbone.without_lm_head();
        let (backbone, _) =
            backbone.load_as(sd, Strictness::Strict, holding.dtype.resolve(&config), holding.quantize)?;
        let mut model = Self::with_fresh_score(backbone, &config, n, device)?;
        let restored = !score_sd.is_empty();
        if restored {
            let (score, _) =
                load_module(model.score, &score_sd, Strictness::Strict).map_err(|e| prefix_error(e, SCORE_PREFIX))?;
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
                "cannot handle batch sizes > 1 if no padding token is defined: set `pad_token_id` in config.json"
                    .into(),
            )),
        }
    }

    /// Rewards (and per-token scores if `all_scores`) of a padded batch.
    ///
    /// Rewards alone are computed padding-free ([`AnyCausalLm::forward_picked`]) when every
    /// pooled token is a real one, as it is for right- or left-padded rows; otherwise (a pad id
    /// inside the attended tokens) over the padded batch, as transformers does.
    pub fn forward(&self, batch: &TokenBatch, all_scores: bool) -> Result<RewardOutput<B>> {
        let idx = self.pooled_index(batch)?;
        let real = |(b, &t): (usize, &usize)| batch.attention_mask.get(b * batch.seq + t).is_some_and(|&m| m != 0);
        if !all_scores && idx.iter().enumerate().all(real) {
            let picks: Vec<(usize, usize)> = idx.iter().copied().enumerate().collect();
            let pooled = self.backbone.forward_picked(batch, &picks)?;
            return Ok(RewardOutput { rewards: self.score.forward(pooled), scores: None });
        }
        let out = self.backbone.forward(batch, false)?;
        let pooled = gather_rows(out.hidden.clone(), &idx);
        let rewards = self.score.forward(pooled);
        let scores = all_scores.then(|| self.score.forward(out.hidden));
        Ok(RewardOutput { rewards, scores })
    }

    /// The rewards of `(chosen, rejected)` token rows (`[n, num_labels]` for the chosen rows,
    /// then the rejected), each pair's common token prefix (its prompt) computed once ([`SharedPairs`]):
    /// equal to [`Self::forward`]'s rewards of the padded `chosen ++ rejected` batch within f32
    /// rounding, for about half the prompt tokens' work. `None` where that does not hold or does
    /// not pay: no `pad_token_id` (a batch of several rows is then refused anyway), or a row
    /// longer than the model's positions (each sequence may still fit), or pairs sharing too
    /// little prompt for one row each to cost less than two (`shared_pays`).
    pub fn forward_pairs(&self, pairs: &[(&[i64], &[i64])]) -> Result<Option<[Tensor<B, 2>; 2]>> {
        let Some(pad) = self.pad_token_id else { return Ok(None) };
        let shared = trl_models::SharedPairs::new(pairs, pad)?;
        if shared.batch.seq > self.backbone.max_positions() || !shared_pays(pairs, &shared, self.backbone.hidden_size())
        {
            return Ok(None);
        }
        // where `forward` reads each sequence: its last token that is not the pad id
        let pooled = |ids: &[i64]| ids.iter().rposition(|&t| t != pad).unwrap_or(0);
        let picks: Vec<(usize, usize)> = [false, true]
            .into_iter()
            .flat_map(|second| {
                let shared = &shared;
                pairs
                    .iter()
                    .enumerate()
                    .map(move |(i, (c, r))| shared.slot(i, second, pooled(if second { r } else { c })))
            })
            .collect();
        let pooled = self.backbone.forward_picked(&shared.batch, &picks)?;
        let rewards = self.score.forward(pooled);
        let n = pairs.len();
        Ok(Some([rewards.clone().narrow(0, 0, n), rewards.narrow(0, n, n)]))
    }

    /// Backbone keys plus `score.weight` `[num_labels, H]`.
    pub fn state_dict(&self) -> StateDict {
        trl_core::module_io::read_params(self.params())
    }

    /// What [`Self::state_dict`] holds, each parameter read only when asked for.
    fn params(&self) -> Vec<trl_core::module_io::SavedParam> {
        trl_core::module_io::body_and_head_params(&self.backbone, &self.score, SCORE_PREFIX)
    }

    /// Writes a checkpoint transformers loads as `AutoModelForSequenceClassification`.
    pub fn save_pretrained(&self, config: &HfConfig, dir: &Path, max_shard_size: usize) -> Result<()> {
        let mut config = config.clone();
        mark_as_seq_cls(&mut config, self.score.weight.dims()[1]);
        if let Some(p) = self.pad_token_id {
            config.set("pad_token_id", p);
        }
        config.save(dir)?;
        trl_core::module_io::save_params(dir, max_shard_size, self.params())?;
        Ok(())
    }

    /// Loads a reward model with the LoRA adapter of `dir` attached as `default`: the base is
    /// `base` if given, else the adapter's `base_model_name_or_path` (relative to `dir`, or a hub
    /// id); a causal-LM base gets the adapter's `score`. Returns whether `score` came from the
    /// adapter or the base (not freshly drawn).
    pub fn from_adapter(dir: &Path, base: Option<&Path>, device: &B::Device) -> Result<(Self, HfConfig, bool)> {
        Self::from_adapter_as(dir, base, Holding::F32, device)
    }

    /// [`Self::from_adapter`] with the base's weights held as `holding` says.
    pub fn from_adapter_as(
        dir: &Path,
        base: Option<&Path>,
        holding: Holding,
        device: &B::Device,
    ) -> Result<(Self, HfConfig, bool)> {
        let base_dir = peft::base_of(dir, base)?;
        let (mut model, mut hf, restored) = Self::from_pretrained_as(&base_dir, None, holding, device)?;
        let from_adapter = model.load_adapter(dir, "default")?;
        mark_as_seq_cls(&mut hf, model.score.weight.dims()[1]);
        Ok((model, hf, restored || from_adapter))
    }

    /// Attaches a new adapter for reward-model training; as PEFT's `SEQ_CLS` task does, `score`
    /// joins `modules_to_save` (trained with the adapter and saved whole).
    pub fn add_adapter(&mut self, name: &str, mut config: LoraConfig) -> Result<()> {
        config.task_type.get_or_insert_with(|| "SEQ_CLS".into());
        if !config.modules_to_save.iter().any(|m| m == "score") {
            config.modules_to_save.push("score".into());
        }
        Ok(self.backbone.add_adapter(name, config)?)
    }

    /// Loads the adapter directory `dir` as adapter `name`. Its `score` (from `modules_to_save`),
    /// if any, replaces the head's weights (PEFT keeps one copy per adapter; trl-rs keeps the
    /// last loaded). Returns whether it had one.
    pub fn load_adapter(&mut self, dir: &Path, name: &str) -> Result<bool> {
        let mut extra = self.backbone.load_adapter(dir, name)?.modules_to_save;
        let score = extra.split_off_by(|k| k.starts_with(SCORE_PREFIX)).strip_prefix(SCORE_PREFIX);
        if !extra.is_empty() {
            let keys: Vec<&str> = extra.keys().collect();
            return Err(HeadError::Config {
                path: dir.display().to_string(),
                reason: format!(
                    "adapter `{name}` carries whole tensors a reward model has no place for: [{}]",
                    keys.join(", ")
                ),
            });
        }
        let Some(w) = score.get("weight") else { return Ok(false) };
        let [labels, hidden] = [w.shape[0], w.shape.get(1).copied().unwrap_or(0)];
        if labels != self.score.weight.dims()[1] {
            let device = self.score.weight.device();
            self.score = LinearConfig::new(hidden, labels).with_bias(false).init(&device);
        }
        let prefix = format!("{}{SCORE_PREFIX}", peft::KEY_PREFIX);
        let (s, _) =
            load_module(self.score.clone(), &score, Strictness::Strict).map_err(|e| prefix_error(e, &prefix))?;
        self.score = s;
        Ok(true)
    }

    /// Writes adapter `name` in PEFT's format (`adapter_config.json`, `adapter_model.safetensors`),
    /// with `base_model.model.score.weight` when `score` is in its `modules_to_save`.
    pub fn save_adapter(&self, dir: &Path, name: &str) -> Result<()> {
        let extra = if self.score_is_saved(name) {
            module_state_dict(&self.score).add_prefix(SCORE_PREFIX)
        } else {
            StateDict::new()
        };
        Ok(self.backbone.save_adapter(dir, name, &extra)?)
    }

    /// Loads the weights of the adapter directory `dir` into the attached adapter `name`, and its
    /// `score` (when `score` is in the adapter's `modules_to_save`), in place: parameter ids, the
    /// adapter's slot and `require_grad` stay as they are (resuming a training run on the same
    /// base). The file must fit the adapter exactly: same rank, alpha and modules, every tensor
    /// present, nothing else.
    pub fn load_adapter_weights(self, dir: &Path, name: &str) -> Result<Self> {
        let (file_cfg, sd) = peft::read_adapter(dir)?;
        let bad = |reason: String| HeadError::Config { path: dir.display().to_string(), reason };
        let slot = self
            .backbone
            .adapter_names()
            .iter()
            .position(|n| *n == name)
            .ok_or_else(|| bad(format!("the model has no adapter `{name}` to load weights into")))?;
        let cfg = self.backbone.adapter_config(name).expect("the adapter exists");
        let shape = |c: &LoraConfig| {
            (c.r, c.lora_alpha, c.use_rslora, c.target_modules.clone(), c.rank_pattern.clone(), c.alpha_pattern.clone())
        };
        if shape(&file_cfg) != shape(cfg) {
            return Err(bad(format!(
                "adapter config differs from adapter `{name}`'s (r, lora_alpha, use_rslora, target_modules, rank/alpha \
                 patterns): the file has r {}, lora_alpha {}, the model r {}, lora_alpha {}",
                file_cfg.r, file_cfg.lora_alpha, cfg.r, cfg.lora_alpha
            )));
        }
        let score = self.score_is_saved(name);
        let mut ours = StateDict::new();
        for (key, t) in sd.tensors {
            match peft::parse_key(&key) {
                Some(AdapterKey::Lora { module, a }) => {
                    ours.insert(format!("backbone.{module}.lora_{}.{slot}.weight", if a { 'A' } else { 'B' }), t)
                }
                Some(AdapterKey::Full(k)) if score && k.starts_with(SCORE_PREFIX) => ours.insert(k, t),
                _ => return Err(bad(format!("`{key}` has no place in adapter `{name}` of this model"))),
            }
        }
        let (model, report) = load_module(self, &ours, Strictness::Partial)?;
        let is_adapter = model.backbone.adapter_key_filter(name)?;
        let missing: Vec<&String> =
            report.missing.iter().filter(|k| is_adapter(k) || (score && k.starts_with(SCORE_PREFIX))).collect();
        if !missing.is_empty() || !report.unexpected.is_empty() {
            return Err(bad(format!(
                "adapter file does not fit adapter `{name}`: missing [{}], unexpected [{}]",
                missing.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(", "),
                report.unexpected.join(", ")
            )));
        }
        Ok(model)
    }

    fn score_is_saved(&self, adapter: &str) -> bool {
        self.backbone.adapter_config(adapter).is_some_and(|c| c.modules_to_save.iter().any(|m| m == "score"))
    }

    /// Freezes everything except the active adapter and, when it lists it in `modules_to_save`,
    /// `score`: the parameters PEFT trains.
    pub fn train_adapter_only(self) -> Result<Self> {
        let score = self.backbone.active_adapter().is_some_and(|name| self.score_is_saved(name));
        train_adapter_and_head(self, |m| &m.backbone, |k| score && k.starts_with(SCORE_PREFIX))
    }
}
