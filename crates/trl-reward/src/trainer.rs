//! The reward trainer: TRL 1.x's `RewardTrainer` loop with exact resume.
//!
//! One optimizer step = `gradient_accumulation_steps` micro-batches of
//! `per_device_train_batch_size` pairs (fewer for an epoch's last step when the epoch's
//! batches do not divide evenly, as in transformers), each scored in one forward pass
//! (chosen ++ rejected), loss divided by the step's number of micro-batches, gradients summed,
//! clipped by global norm, then AdamW at the linearly scheduled learning rate. Checkpoints hold
//! the model in HF layout plus optimizer moments, the data position and the logging window, so
//! `resume` continues bit for bit and writes the same `metrics.jsonl`.
//!
//! **LoRA.** When the model has an active adapter (one the trainer attached from
//! [`RewardConfig::lora`], or one loaded with the model), only that adapter and `score` train:
//! everything else is frozen, has no gradient and no optimizer moments. Checkpoints and the final
//! output are then PEFT adapter directories (`adapter_config.json`, `adapter_model.safetensors`
//! with `score` in `modules_to_save`) plus the trainer files, and [`RewardTrainer::resume_from`]
//! loads a checkpoint's adapter weights onto the same base. `disable_dropout` (the default) turns
//! the adapter's dropout off, as TRL does; when dropout stays on, the backend is reseeded from
//! `(seed, step)` before every step so that a resumed run draws the same masks.
//!
//! This module holds the trainer type, its construction, scoring and evaluation. The loop
//! ([`RewardTrainer::train`]) is in `run` and checkpoints in `checkpoint`, both `impl` blocks on
//! this type; this module calls neither, so there is no module cycle. What the trainer records
//! (log lines, state, summary, samples) is in `state`.

use std::path::Path;

use burn::module::AutodiffModule;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;

use trl_core::checkpoint;
use trl_core::{HfConfig, Tokenizer};
use trl_heads::ForSequenceClassification;

use crate::collate::{collate, margins};
use crate::config::RewardConfig;
use crate::data::TokenizedPair;
use crate::error::{Result, RewardError};
use crate::loss::{bradley_terry, preference_probability, PairMetrics};
use crate::optim::{AdamW, AdamWConfig};
use crate::state::{LogEntry, Sample, TrainerState};

/// Events the trainer reports while it runs (for progress bars and logs). The callback
/// returns [`ControlFlow::Break`](std::ops::ControlFlow::Break) to stop training once the current step is done (after its
/// log line, evaluation and checkpoint), as an interrupted run would.
pub enum Event<'a> {
    Step {
        step: u64,
        total: u64,
        loss: f64,
    },
    Log(&'a LogEntry),
    Checkpoint(&'a Path),
    /// Something the user should know that does not stop training.
    Warning(&'a str),
}

/// A trainer with the data it is to train on (what `cargo xtask train` sets up).
pub struct Job<B: AutodiffBackend> {
    pub trainer: RewardTrainer<B>,
    pub train: Vec<TokenizedPair>,
    pub eval: Vec<TokenizedPair>,
    /// Rows dropped as longer than `max_length`.
    pub dropped: usize,
}

/// A reward model under training, with its optimizer and position.
pub struct RewardTrainer<B: AutodiffBackend> {
    pub config: RewardConfig,
    pub model: ForSequenceClassification<B>,
    pub hf_config: HfConfig,
    pub tokenizer: Option<Tokenizer>,
    pub state: TrainerState,
    pub pad_id: i64,
    pub(crate) optimizer: AdamW<B::InnerBackend>,
    /// The LoRA adapter under training; `None` for a full fine-tune.
    pub(crate) adapter: Option<String>,
    /// Dropout is live (LoRA dropout with `disable_dropout` off): reseed before every step.
    pub(crate) reseed: bool,
    /// The lock on `config.output_dir`, held from [`Self::lock_output_dir`] on.
    pub(crate) lock: Option<trl_core::lock::DirLock>,
    /// The TensorBoard event file of this run (`report_to` tensorboard), opened at the first
    /// log line.
    pub(crate) tensorboard: Option<crate::tensorboard::EventWriter>,
    /// The data-parallel workers' devices (worker 0 first); empty: all on the model's.
    pub(crate) worker_devices: Vec<B::Device>,
    /// This process's node of a multi-node run.
    pub(crate) nodes: Option<crate::Nodes>,
}

/// Rewards of a batch of pairs, scored in one forward pass.
pub(crate) struct Scored<B: Backend> {
    pub(crate) chosen: Tensor<B, 1>,
    pub(crate) rejected: Tensor<B, 1>,
    pub(crate) margin: Option<Tensor<B, 1>>,
    /// Non-pad tokens in the batch.
    pub(crate) tokens: u64,
}

/// Scores `pairs` (chosen ++ rejected, right padded) with `model`, with the projections in
/// `config`'s mixed precision.
pub(crate) fn score<B: Backend>(
    model: &ForSequenceClassification<B>,
    pairs: &[&TokenizedPair],
    pad_id: i64,
    config: &RewardConfig,
) -> Result<Scored<B>> {
    let n = pairs.len();
    let half = config.half_dtype().map(|d| d.dtype());
    // the prompt once per pair where that gives the same rewards: with dropout off (one draw for
    // the shared prefix would stand for two) and no padding asked for
    let shared = match config.disable_dropout && config.pad_to_multiple_of.is_none() && trl_models::prefix_sharing() {
        true => {
            let rows: Vec<(&[i64], &[i64])> = pairs.iter().map(|p| (&p.chosen[..], &p.rejected[..])).collect();
            trl_models::autocast::scope(half, || model.forward_pairs(&rows))?
        }
        false => None,
    };
    let [chosen, rejected] = match shared {
        Some(r) => r.map(|r| r.slice([0..n, 0..1]).reshape([n])),
        None => {
            let (batch, _) = collate(pairs, pad_id, config.pad_to_multiple_of)?;
            let out = trl_models::autocast::scope(half, || model.forward(&batch, false))?;
            let r = out.rewards.slice([0..2 * n, 0..1]).reshape([2 * n]);
            [r.clone().narrow(0, 0, n), r.narrow(0, n, n)]
        }
    };
    let device = chosen.device();
    let margin = margins(pairs).map(|m| Tensor::from_data(TensorData::new(m, [n]), &device));
    // the tokens of the padded batch that are not padding, as TRL counts them
    let tokens = pairs.iter().map(|p| (p.chosen.len() + p.rejected.len()) as u64).sum();
    Ok(Scored { chosen, rejected, margin, tokens })
}

/// The name of the adapter the trainer attaches (PEFT's default).
pub const ADAPTER_NAME: &str = "default";

/// The directory `config.json` was read from, absolute, if it holds the config and weights.
fn base_dir(hf: &HfConfig) -> Option<String> {
    let dir = hf.path.parent().filter(|d| hf.path.is_file() && checkpoint::weight_files(d).is_ok())?;
    Some(std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf()).display().to_string())
}

impl<B: AutodiffBackend> RewardTrainer<B> {
    /// A trainer for `model`. With `config.lora` it first attaches a fresh adapter
    /// [`ADAPTER_NAME`] (drawn after seeding the backend with `config.seed`); a model that comes
    /// with an active adapter trains that one. In both cases only the adapter and `score` train.
    pub fn new(
        mut config: RewardConfig,
        mut model: ForSequenceClassification<B>,
        hf_config: HfConfig,
        tokenizer: Option<Tokenizer>,
        pad_id: i64,
    ) -> Result<Self> {
        config.validate()?;
        let attached = model.backbone.adapter_names().iter().map(|n| n.to_string()).collect::<Vec<_>>();
        if let Some(lora) = config.lora.as_mut() {
            if !attached.is_empty() {
                return Err(RewardError::Config(format!(
                    "the model already carries adapter(s) [{}]; leave `lora` unset to keep training the active one",
                    attached.join(", ")
                )));
            }
            if lora.base_model_name_or_path.is_none() {
                lora.base_model_name_or_path = Some(base_dir(&hf_config).ok_or_else(|| {
                    RewardError::Config(
                        "lora: the base model was not read from a checkpoint directory (random init?), and an \
                         adapter needs its base on disk: save the base and set lora.base_model_name_or_path"
                            .into(),
                    )
                })?);
            }
            let mt = hf_config.model_type().unwrap_or_default();
            B::seed(&model.backbone.device(), config.seed);
            model.add_adapter(ADAPTER_NAME, lora.lora_config(mt)?)?;
        }
        let adapter = model.backbone.active_adapter().map(String::from);
        if adapter.is_none() && !model.backbone.adapter_names().is_empty() {
            return Err(RewardError::Config(
                "the model carries adapters but none is active: activate the one to train (set_adapter)".into(),
            ));
        }
        let mut reseed = false;
        if let Some(name) = &adapter {
            model = model.train_adapter_only()?;
            if config.disable_dropout {
                model.backbone.set_lora_dropout(0.0);
            } else {
                reseed = model.backbone.adapter_config(name).is_some_and(|c| c.lora_dropout > 0.0);
            }
        }
        let adam = AdamWConfig {
            beta1: config.adam_beta1,
            beta2: config.adam_beta2,
            eps: config.adam_epsilon,
            weight_decay: config.weight_decay,
        };
        Ok(Self {
            config,
            model,
            hf_config,
            tokenizer,
            state: TrainerState::default(),
            pad_id,
            optimizer: AdamW::new(adam),
            adapter,
            reseed,
            lock: None,
            tensorboard: None,
            worker_devices: Vec::new(),
            nodes: None,
        })
    }

    /// Trains as node `nodes.rank` of a multi-node run (one process per node, see
    /// [`crate::Nodes`]): `data_parallel` then counts the workers of every node, each node
    /// running an even part of them. Set it before the worker devices.
    pub fn set_nodes(&mut self, nodes: crate::Nodes) -> Result<()> {
        nodes.check(self.config.data_parallel)?;
        self.nodes = (nodes.count > 1).then_some(nodes);
        Ok(())
    }

    /// This node's part of the `data_parallel` workers (all of them on one node).
    pub(crate) fn local_workers(&self) -> usize {
        self.nodes.as_ref().map_or(self.config.data_parallel, |n| n.local(self.config.data_parallel))
    }

    /// Where this node's data-parallel workers run, worker 0 (the trainer's own thread,
    /// which holds the model and optimizer) first: one device each, as many as the node's
    /// workers (`data_parallel`, over the node count). Without it they all run on the
    /// model's device.
    pub fn set_worker_devices(&mut self, devices: Vec<B::Device>) -> Result<()> {
        let local = self.local_workers();
        if devices.len() != local {
            return Err(RewardError::Config(format!(
                "{} worker devices for data_parallel = {} ({local} on this node): give one per worker of this node",
                devices.len(),
                self.config.data_parallel,
            )));
        }
        if devices[0] != self.model.backbone.device() {
            return Err(RewardError::Config("worker 0 runs on the model's device: list that one first".into()));
        }
        self.worker_devices = devices;
        Ok(())
    }

    /// The workers' devices ([`Self::set_worker_devices`], else the model's for each).
    pub(crate) fn worker_devices(&self, workers: usize) -> Result<Vec<B::Device>> {
        if self.worker_devices.is_empty() {
            Ok(vec![self.model.backbone.device(); workers])
        } else if self.worker_devices.len() == workers {
            Ok(self.worker_devices.clone())
        } else {
            Err(RewardError::Config(format!(
                "{} worker devices for data_parallel = {workers}",
                self.worker_devices.len()
            )))
        }
    }

    /// Takes `config.output_dir` for this trainer: a second run writing there fails at once
    /// with an error naming this process. [`Self::train`] does it itself when not done yet;
    /// call it earlier to fail before any work. Returns a warning when the directory was left
    /// by a run that was killed (its temp files are removed).
    pub fn lock_output_dir(&mut self) -> Result<Option<String>> {
        if self.lock.is_some() {
            return Ok(None);
        }
        let lock = trl_core::lock::DirLock::acquire(&self.config.output_dir)?;
        let warning = lock.stale_pid.map(|pid| {
            format!(
                "{} was left by a run (PID {pid}) that did not finish cleanly; removed {} temp file(s) it left",
                self.config.output_dir.display(),
                lock.removed.len()
            )
        });
        self.lock = Some(lock);
        Ok(warning)
    }

    /// The LoRA adapter being trained, if any (else the whole model trains).
    pub fn adapter(&self) -> Option<&str> {
        self.adapter.as_deref()
    }

    /// Loss and metrics on `eval` with the current weights (no gradients).
    pub fn evaluate(&self, eval: &[TokenizedPair]) -> Result<LogEntry> {
        let model = self.model.valid();
        let (mut loss_sum, mut parts, mut tokens) = (0.0, Vec::new(), 0u64);
        for chunk in eval.chunks(self.config.per_device_eval_batch_size) {
            let pairs: Vec<&TokenizedPair> = chunk.iter().collect();
            let Scored { chosen: rc, rejected: rr, margin, tokens: t } =
                score(&model, &pairs, self.pad_id, &self.config)?;
            let loss = bradley_terry(rc.clone(), rr.clone(), margin, self.config.center_rewards_coefficient);
            let host =
                Tensor::cat(vec![rc, rr, loss], 0).into_data().convert::<f32>().to_vec::<f32>().unwrap_or_default();
            let n = pairs.len();
            loss_sum += host[2 * n] as f64 * n as f64;
            parts.push(PairMetrics::from_rewards(&host[..n], &host[n..2 * n]));
            tokens += t;
        }
        let metrics = PairMetrics::merge(&parts);
        Ok(LogEntry {
            step: self.state.global_step,
            epoch: self.state.epoch as f64,
            split: "eval".into(),
            loss: loss_sum / eval.len().max(1) as f64,
            metrics,
            num_tokens: tokens,
            learning_rate: None,
            grad_norm: None,
            pairs_per_sec: None,
        })
    }

    /// Mean and (population) standard deviation of the rewards of `pairs`, chosen and rejected
    /// together, as OpenRLHF normalises rewards.
    pub fn reward_stats(&self, pairs: &[TokenizedPair]) -> Result<(f64, f64)> {
        let model = self.model.valid();
        let mut all = Vec::with_capacity(2 * pairs.len());
        for chunk in pairs.chunks(self.config.per_device_eval_batch_size) {
            let refs: Vec<&TokenizedPair> = chunk.iter().collect();
            let s = score(&model, &refs, self.pad_id, &self.config)?;
            let host = Tensor::cat(vec![s.chosen, s.rejected], 0).into_data().convert::<f32>().to_vec::<f32>();
            all.extend(host.unwrap_or_default().into_iter().map(f64::from));
        }
        let n = all.len().max(1) as f64;
        let mean = all.iter().sum::<f64>() / n;
        let std = (all.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / n).sqrt();
        Ok((mean, std))
    }

    /// Rewards of the first `n` pairs, for the sample table.
    pub fn samples(&self, pairs: &[TokenizedPair], n: usize) -> Result<Vec<Sample>> {
        let model = self.model.valid();
        let take: Vec<&TokenizedPair> = pairs.iter().take(n).collect();
        if take.is_empty() {
            return Ok(Vec::new());
        }
        let Scored { chosen: rc, rejected: rr, .. } = score(&model, &take, self.pad_id, &self.config)?;
        let rc = rc.into_data().convert::<f32>().to_vec::<f32>().unwrap_or_default();
        let rr = rr.into_data().convert::<f32>().to_vec::<f32>().unwrap_or_default();
        Ok(take
            .iter()
            .zip(rc.iter().zip(&rr))
            .map(|(p, (&c, &r))| Sample {
                chosen_text: p.chosen_text.clone(),
                rejected_text: p.rejected_text.clone(),
                chosen_reward: c,
                rejected_reward: r,
                probability: preference_probability(c, r),
            })
            .collect())
    }
}
