//! `DebertaV2ForSequenceClassification`: an encoder reward model (DeBERTa-v2 / v3 cross-encoders
//! such as the widely used preference reward models). transformers' `ContextPooler` (the first
//! token, `[CLS]`, through a dense layer and `pooler_hidden_act`) and a `classifier` Linear with
//! bias. The prompt and response go in as a text pair (`[CLS] prompt [SEP] response [SEP]`).

use std::path::Path;

use burn::module::Module;
use burn::nn::Linear;
use burn::prelude::*;
use serde_json::Value;

use trl_core::{checkpoint, load_module_owned, HfConfig, Holding, Quantize, Strictness};
use trl_models::deberta_v2::{DebertaV2Config, DebertaV2Model};
use trl_models::{held_linear, Activation, TokenBatch};

use crate::error::{HeadError, Result};
use crate::seq_cls::num_labels;

/// transformers' `ContextPooler`: `act(dense(hidden[:, 0]))`.
#[derive(Module, Debug)]
pub struct ContextPooler<B: Backend> {
    pub dense: Linear<B>,
}

/// A DeBERTa-v2 / v3 sequence classifier: keys `deberta.*`, `pooler.dense.*`, `classifier.*`.
#[derive(Module, Debug)]
pub struct DebertaV2ForSequenceClassification<B: Backend> {
    pub deberta: DebertaV2Model<B>,
    pub pooler: ContextPooler<B>,
    pub classifier: Linear<B>,
    #[module(skip)]
    pub pooler_act: Activation,
}

fn linear<B: Backend>(i: usize, o: usize, std: f64, device: &B::Device) -> Linear<B> {
    burn::nn::LinearConfig::new(i, o).with_initializer(burn::nn::Initializer::Normal { mean: 0.0, std }).init(device)
}

impl<B: Backend> DebertaV2ForSequenceClassification<B> {
    /// A randomly initialised classifier for `config` with its `num_labels`.
    pub fn init(config: &HfConfig, device: &B::Device) -> Result<Self> {
        let cfg: DebertaV2Config = config.parse()?;
        let (d, std) = (cfg.hidden_size, cfg.initializer_range);
        let n = num_labels(config);
        if n == 0 || n > 1 << 16 {
            return Err(HeadError::Config {
                path: config.path.display().to_string(),
                reason: format!("num_labels {n} (from id2label / num_labels) must be between 1 and 65536"),
            });
        }
        Ok(Self {
            deberta: cfg.init(device)?,
            pooler: ContextPooler { dense: linear(d, d, std, device) },
            classifier: linear(d, n, std, device),
            pooler_act: Activation::parse(&cfg.pooler_hidden_act)?,
        })
    }

    /// Loads a `DebertaV2ForSequenceClassification` checkpoint (the encoder's weights held as
    /// `holding` says). Returns its config and whether the pooler and classifier came from the
    /// checkpoint (a bare `DebertaV2Model` or masked-LM checkpoint has none: they are drawn
    /// fresh, as transformers does, and its scores mean nothing until trained).
    pub fn from_pretrained_as(dir: &Path, holding: Holding, device: &B::Device) -> Result<(Self, HfConfig, bool)> {
        let config = HfConfig::load(dir)?;
        let model = Self::init(&config, device)?;
        let mut sd = checkpoint::load_dir_lazily(dir)?;
        // what transformers also ignores: the position-id buffer, an unused absolute-position
        // table (`_keys_to_ignore_on_load_unexpected`) and a masked-LM head
        sd.remove("deberta.embeddings.position_ids");
        if model.deberta.embeddings.position_embeddings.is_none() {
            sd.remove("deberta.embeddings.position_embeddings.weight");
        }
        sd.split_off_by(|k| ["lm_predictions.", "cls.", "mask_predictions."].iter().any(|p| k.starts_with(p)));
        if !sd.keys().any(|k| k.starts_with("deberta.")) {
            // a bare `DebertaV2Model` checkpoint stores the encoder without the prefix
            let bare = std::mem::take(&mut sd.tensors);
            sd.tensors = bare.into_iter().map(|(k, v)| (format!("deberta.{k}"), v)).collect();
        }
        let head = |k: &str| k.starts_with("pooler.") || k.starts_with("classifier.");
        let int8 = |k: &str| holding.quantize == Quantize::Int8 && !head(k);
        let dtype = holding.dtype.resolve(&config);
        let (model, report) = load_module_owned(model, sd, Strictness::Partial, dtype, &int8)?;
        let missing: Vec<&str> = report.missing.iter().map(String::as_str).filter(|k| !head(k)).collect();
        let head_missing = report.missing.iter().filter(|k| head(k)).count();
        if !missing.is_empty() || !report.unexpected.is_empty() || (head_missing != 0 && head_missing != 4) {
            return Err(HeadError::Config {
                path: dir.display().to_string(),
                reason: format!(
                    "the weights do not fit DebertaV2ForSequenceClassification of config.json: missing [{}], \
                     unexpected [{}]; check that config.json belongs to these weights",
                    report.missing.join(", "),
                    report.unexpected.join(", ")
                ),
            });
        }
        Ok((model, config, head_missing == 0))
    }

    /// The pad id rows are padded with (`config.json`'s `pad_token_id`).
    pub fn pad_token_id(config: &HfConfig) -> Option<i64> {
        config.get("pad_token_id").and_then(Value::as_i64)
    }

    pub fn num_labels(&self) -> usize {
        self.classifier.weight.dims()[1]
    }

    pub fn max_positions(&self) -> usize {
        self.deberta.max_positions()
    }

    /// Logits `[batch, num_labels]` of a right-padded batch, read at each row's first token.
    pub fn forward(&self, batch: &TokenBatch) -> Result<Tensor<B, 2>> {
        let hidden = self.deberta.forward(batch)?;
        let [b, _, d] = hidden.dims();
        let first = hidden.slice([0..b, 0..1]).reshape([b, d]);
        let dense = &self.pooler.dense;
        let pooled = held_linear(first, dense.weight.val(), dense.bias.as_ref().map(|p| p.val()));
        let pooled = self.pooler_act.apply(pooled);
        let c = &self.classifier;
        Ok(held_linear(pooled, c.weight.val(), c.bias.as_ref().map(|p| p.val())))
    }
}
