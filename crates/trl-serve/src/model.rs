//! The served network: a reward model (with any number of LoRA reward adapters over its one
//! base) or a TRL value-head model, and what the routes need to know about it.

use std::path::{Path, PathBuf};

use burn::nn::Linear;
use burn::prelude::*;
use serde_json::Value;

use trl_core::HfConfig;
use trl_heads::{
    seq_cls, CausalLmWithValueHead, DebertaV2ForSequenceClassification, ForSequenceClassification, ValueHeadOptions,
};
use trl_models::{Padding, TokenBatch};

use crate::error::ServeError;

/// What a checkpoint serves.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelKind {
    /// A `*ForSequenceClassification` reward model: `labels` are its `id2label` names in
    /// label order.
    Reward { labels: Vec<String> },
    /// A TRL value-head model: one value per token, at `/pooling` only.
    ValueHead,
}

/// What the routes need to know about the loaded model.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub kind: ModelKind,
    pub model_type: String,
    pub dtype: String,
    /// The model's position limit.
    pub max_positions: usize,
    pub pad_id: i64,
    /// The adapters' names, in `--adapter` order (request `model` field values).
    pub adapters: Vec<String>,
    /// Whether the base model has a trained score head of its own (else only adapters score).
    pub base_scores: bool,
    /// `(mean, std)` from config.json when rewards are normalised.
    pub normalization: Option<(f64, f64)>,
    /// An encoder (cross-encoder) reward model: a pair of texts is tokenized as a pair
    /// (`[CLS] first [SEP] second [SEP]`), not concatenated.
    pub encoder: bool,
}

/// What to load on the engine's thread.
pub struct Load {
    pub dir: PathBuf,
    pub value_head: bool,
    pub adapters: Vec<(String, PathBuf)>,
    pub normalize: bool,
    pub pad_id: i64,
    /// How the backbone's weights are held (`--dtype`, `--quantize`).
    pub holding: trl_core::Holding,
}

/// The loaded network. Lives on the engine's thread only.
pub(crate) enum Net<B: Backend> {
    Reward {
        model: Box<ForSequenceClassification<B>>,
        /// The base's score head, then each adapter's (an adapter without one uses the base's).
        heads: Vec<Linear<B>>,
    },
    Value(Box<CausalLmWithValueHead<B>>),
    Encoder(Box<DebertaV2ForSequenceClassification<B>>),
}

/// The label names of a reward model with `n` labels: its `id2label` in label order, or
/// `LABEL_0` … when it has none (or not `n` of them).
fn label_names(cfg: &HfConfig, n: usize) -> Vec<String> {
    let mut named: Vec<(usize, String)> = cfg
        .get("id2label")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter().map(|(k, v)| (k.parse().unwrap_or(usize::MAX), v.as_str().unwrap_or(k).to_string())).collect()
        })
        .unwrap_or_default();
    named.sort();
    if named.len() == n {
        named.into_iter().map(|(_, v)| v).collect()
    } else {
        (0..n).map(|i| format!("LABEL_{i}")).collect()
    }
}

/// `(mean, std)` of `config.json`, or an error naming the file and the fix.
fn normalization(cfg: &HfConfig, dir: &Path) -> Result<(f64, f64), ServeError> {
    seq_cls::reward_normalization(cfg).ok_or_else(|| {
        ServeError::Config(format!(
            "--normalize-reward: {} has no finite `mean` and positive `std`; train with normalize_reward = true \
             to store them, or serve without --normalize-reward",
            dir.join("config.json").display()
        ))
    })
}

impl<B: Backend> Net<B> {
    /// Loads `dir` (a reward model, or a value-head model when `value_head`) and each adapter
    /// `(name, dir)` over it.
    pub(crate) fn load(load: &Load, device: &B::Device) -> Result<(Self, ModelInfo), ServeError> {
        let Load { dir, value_head, adapters, normalize, pad_id, holding } = load;
        let (dir, value_head, normalize, pad_id) = (dir.as_path(), *value_head, *normalize, *pad_id);
        let cfg = HfConfig::load(dir)?;
        let model_type = cfg.model_type().unwrap_or("unknown").to_string();
        let dtype = holding.dtype.resolve(&cfg).torch_name().to_string();
        let normalization = if normalize { Some(normalization(&cfg, dir)?) } else { None };
        if model_type == trl_models::deberta_v2::MODEL_TYPE && !value_head {
            if !adapters.is_empty() {
                return Err(ServeError::Config(
                    "--adapter: LoRA adapters are supported on causal reward models only, not on DeBERTa".into(),
                ));
            }
            let (model, _, trained) =
                DebertaV2ForSequenceClassification::<B>::from_pretrained_as(dir, *holding, device)?;
            if !trained {
                return Err(ServeError::Config(format!(
                    "{} has no trained pooler and classifier (a bare encoder checkpoint): its rewards would be random",
                    dir.display()
                )));
            }
            let info = ModelInfo {
                kind: ModelKind::Reward { labels: label_names(&cfg, model.num_labels()) },
                model_type,
                dtype,
                max_positions: model.max_positions(),
                pad_id,
                adapters: Vec::new(),
                base_scores: true,
                normalization,
                encoder: true,
            };
            return Ok((Net::Encoder(Box::new(model)), info));
        }
        if value_head {
            if !adapters.is_empty() || normalize {
                return Err(ServeError::Config(
                    "--adapter and --normalize-reward need a reward model (*ForSequenceClassification); this is a \
                     value-head model"
                        .into(),
                ));
            }
            let (model, _, _) = CausalLmWithValueHead::<B>::from_pretrained(
                dir,
                &ValueHeadOptions { holding: *holding, ..Default::default() },
                device,
            )?;
            let max_positions = model.pretrained_model.max_positions();
            let info = ModelInfo {
                kind: ModelKind::ValueHead,
                model_type,
                dtype,
                max_positions,
                pad_id,
                adapters: Vec::new(),
                base_scores: true,
                normalization: None,
                encoder: false,
            };
            return Ok((Net::Value(Box::new(model)), info));
        }
        let (mut model, _, restored) = ForSequenceClassification::<B>::from_pretrained_as(dir, None, *holding, device)?;
        let base = model.score.clone();
        let mut heads = vec![base.clone()];
        let mut names = Vec::new();
        for (name, adapter) in adapters {
            let has_score = model.load_adapter(adapter, name)?;
            if !has_score && !restored {
                return Err(ServeError::Config(format!(
                    "adapter `{name}` ({}) has no `score` and neither has the base: its rewards would be random",
                    adapter.display()
                )));
            }
            heads.push(if has_score { model.score.clone() } else { base.clone() });
            model.score = base.clone();
            names.push(name.clone());
        }
        if !restored && adapters.is_empty() {
            return Err(ServeError::Config(format!(
                "{} has no trained `score` head: its rewards would be random (pass a reward model, or --adapter)",
                dir.display()
            )));
        }
        model.pad_token_id = model.pad_token_id.or(Some(pad_id));
        let labels = label_names(&cfg, model.score.weight.dims()[1]);
        let info = ModelInfo {
            kind: ModelKind::Reward { labels },
            model_type,
            dtype,
            max_positions: model.backbone.max_positions(),
            pad_id,
            adapters: names,
            base_scores: restored,
            normalization,
            encoder: false,
        };
        Ok((Net::Reward { model: Box::new(model), heads }, info))
    }

    /// Runs `rows` (token ids, none empty) on the base (`adapter` None) or an adapter. Per row:
    /// its `num_labels` rewards, or with `per_token` its per-token scores (`len × num_labels`,
    /// reward models) or values (`len`, value-head models).
    pub(crate) fn run(
        &mut self,
        adapter: Option<usize>,
        rows: &[Vec<i64>],
        per_token: bool,
        pad_id: i64,
    ) -> Result<Vec<Vec<f32>>, String> {
        let batch = TokenBatch::pad(rows, pad_id, Padding::Right, None).map_err(|e| e.to_string())?;
        let floats = |t: Tensor<B, 2>| t.into_data().convert::<f32>().to_vec::<f32>().map_err(|e| format!("{e:?}"));
        let floats3 = |t: Tensor<B, 3>| t.into_data().convert::<f32>().to_vec::<f32>().map_err(|e| format!("{e:?}"));
        let seq = batch.seq;
        match self {
            Net::Reward { model, heads } => {
                if heads.len() > 1 {
                    match adapter {
                        None => model.backbone.disable_adapters().map_err(|e| e.to_string())?,
                        Some(i) => {
                            let name = model.backbone.adapter_names()[i].to_string();
                            model.backbone.set_adapter(&name).map_err(|e| e.to_string())?;
                        }
                    }
                }
                model.score = heads[adapter.map_or(0, |i| i + 1)].clone();
                let out = model.forward(&batch, per_token).map_err(|e| e.to_string())?;
                let labels = model.score.weight.dims()[1];
                if per_token {
                    let all = floats3(out.scores.ok_or("no per-token scores")?)?;
                    Ok(rows
                        .iter()
                        .enumerate()
                        .map(|(b, r)| all[b * seq * labels..(b * seq + r.len()) * labels].to_vec())
                        .collect())
                } else {
                    let all = floats(out.rewards)?;
                    Ok(all.chunks(labels).map(<[f32]>::to_vec).collect())
                }
            }
            Net::Encoder(model) => {
                if per_token {
                    return Err("an encoder reward model has no per-token scores".into());
                }
                let all = floats(model.forward(&batch).map_err(|e| e.to_string())?)?;
                Ok(all.chunks(model.num_labels()).map(<[f32]>::to_vec).collect())
            }
            Net::Value(model) => {
                let out = model.pretrained_model.forward(&batch, false).map_err(|e| e.to_string())?;
                let values = floats(model.v_head.forward(out.hidden))?;
                Ok(rows.iter().enumerate().map(|(b, r)| values[b * seq..b * seq + r.len()].to_vec()).collect())
            }
        }
    }
}
