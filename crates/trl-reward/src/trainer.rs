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

use std::ops::ControlFlow;
use std::path::Path;
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};

use trl_core::checkpoint;
use trl_core::{HfConfig, Tokenizer};
use trl_heads::ForSequenceClassification;

use crate::collate::{collate, epoch_order, SplitMix64};
use crate::config::RewardConfig;
use crate::data::TokenizedPair;
use crate::error::{Result, RewardError};
use crate::loss::{bradley_terry, preference_probability, PairMetrics};
use crate::optim::{add_grads, clip_grad_norm, linear_schedule, AdamW, AdamWConfig};

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogEntry {
    pub step: u64,
    pub epoch: f64,
    /// `train` or `eval`.
    pub split: String,
    pub loss: f64,
    #[serde(flatten)]
    pub metrics: PairMetrics,
    pub num_tokens: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub learning_rate: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grad_norm: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pairs_per_sec: Option<f64>,
}

/// `x` rounded to at most 15 significant digits and 22 decimal places: a value serde_json
/// writes and reads back bit for bit (its default float parser is exact for such decimals,
/// not for arbitrary 17-digit ones). Everything the trainer logs or keeps in
/// `trainer_state.json` goes through it, so a resumed run's `metrics.jsonl` is byte-identical.
pub fn json_exact(x: f64) -> f64 {
    if !x.is_finite() || x == 0.0 {
        return x;
    }
    let decimals = (14 - x.abs().log10().floor() as i32).clamp(0, 22) as usize;
    format!("{x:.decimals$}").parse().unwrap_or(x)
}

impl LogEntry {
    /// Every float through [`json_exact`].
    pub fn json_exact(self) -> Self {
        Self {
            epoch: json_exact(self.epoch),
            loss: json_exact(self.loss),
            metrics: self.metrics.json_exact(),
            learning_rate: self.learning_rate.map(json_exact),
            grad_norm: self.grad_norm.map(json_exact),
            pairs_per_sec: self.pairs_per_sec.map(json_exact),
            ..self
        }
    }
}

/// Where training stands; saved in every checkpoint as `trainer_state.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    pub global_step: u64,
    pub total_steps: u64,
    /// Epoch being read and the next micro-batch within it.
    pub epoch: u64,
    pub batch_in_epoch: usize,
    pub num_tokens: u64,
    pub log_history: Vec<LogEntry>,
    /// Sum of every optimizer step's loss so far (for `Summary::train_loss`).
    #[serde(default)]
    pub loss_sum: f64,
    /// Steps since the last training log line, not yet logged.
    #[serde(default)]
    pub window: LogWindow,
}

/// The training steps since the last log line (a log line averages them).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LogWindow {
    pub loss: f64,
    pub steps: u64,
    pub metrics: Vec<PairMetrics>,
}

/// What a finished run reports (`summary.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub global_step: u64,
    pub train_loss: f64,
    pub final_eval: Option<LogEntry>,
    pub train_pairs: usize,
    pub eval_pairs: usize,
    pub dropped_too_long: usize,
    pub seconds: f64,
    pub pairs_per_sec: f64,
}

/// One row of the sample-prediction table (TRL's `visualize_samples`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub chosen_text: String,
    pub rejected_text: String,
    pub chosen_reward: f32,
    pub rejected_reward: f32,
    /// `P(chosen ≻ rejected)`.
    pub probability: f32,
}

/// Events the trainer reports while it runs (for progress bars and logs). The callback
/// returns [`ControlFlow::Break`] to stop training once the current step is done (after its
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
}

/// Rewards of a batch of pairs, scored in one forward pass.
struct Scored<B: Backend> {
    chosen: Tensor<B, 1>,
    rejected: Tensor<B, 1>,
    margin: Option<Tensor<B, 1>>,
    /// Non-pad tokens in the batch.
    tokens: u64,
}

/// Scores `pairs` (chosen ++ rejected, right padded) with `model`.
fn score<B: Backend>(
    model: &ForSequenceClassification<B>,
    pairs: &[&TokenizedPair],
    pad_id: i64,
    multiple: Option<usize>,
) -> Result<Scored<B>> {
    let (batch, margins) = collate(pairs, pad_id, multiple)?;
    let n = pairs.len();
    let r = model.forward(&batch, false)?.rewards.slice([0..2 * n, 0..1]).reshape([2 * n]);
    let device = r.device();
    let margin = margins.map(|m| Tensor::from_data(TensorData::new(m, [n]), &device));
    Ok(Scored {
        chosen: r.clone().narrow(0, 0, n),
        rejected: r.narrow(0, n, n),
        margin,
        tokens: batch.num_tokens() as u64,
    })
}

/// The name of the adapter the trainer attaches (PEFT's default).
pub const ADAPTER_NAME: &str = "default";

/// The seed of the backend's RNG for optimizer step `step` (0-based): what dropout draws from.
fn step_seed(seed: u64, step: u64) -> u64 {
    SplitMix64(seed ^ step.wrapping_mul(0xE703_7ED1_A0B4_28DB)).next_u64()
}

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
        })
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

    /// Trains on `train` until `total_steps`, evaluating on `eval`; calls `on_event` as it goes.
    ///
    /// When `on_event` breaks, training stops after the current step and nothing final is
    /// written (no final model, summary or plots): the returned summary's `global_step` is
    /// then below `state.total_steps`, and the run continues with [`Self::resume_from`].
    pub fn train(
        &mut self,
        train: &[TokenizedPair],
        eval: &[TokenizedPair],
        dropped: usize,
        on_event: &mut dyn FnMut(Event) -> ControlFlow<()>,
    ) -> Result<Summary> {
        if train.is_empty() {
            return Err(RewardError::Config("no training pairs left (all dropped by max_length?)".into()));
        }
        let cfg = self.config.clone();
        let total = cfg.total_steps(train.len());
        let warmup = cfg.warmup(total);
        self.state.total_steps = total;
        let bs = cfg.per_device_train_batch_size;
        let batches_per_epoch = train.len().div_ceil(bs);
        // One writer per output directory, for the whole run.
        if let Some(msg) = self.lock_output_dir()? {
            let _ = on_event(Event::Warning(&msg));
        }
        // A fresh run starts `metrics.jsonl` afresh; a resumed one continues the checkpoint's.
        self.write_metrics()?;
        let start = Instant::now();
        let mut pairs_done = 0usize;
        let mut stop = false;
        while self.state.global_step < total && !stop {
            let lr = linear_schedule(cfg.learning_rate, self.state.global_step, warmup, total);
            if self.reseed {
                B::seed(&self.model.backbone.device(), step_seed(cfg.seed, self.state.global_step));
            }
            if self.state.batch_in_epoch >= batches_per_epoch {
                self.state.epoch += 1;
                self.state.batch_in_epoch = 0;
            }
            let order = if cfg.shuffle {
                epoch_order(train.len(), cfg.seed, self.state.epoch)
            } else {
                (0..train.len()).collect()
            };
            // transformers: an epoch's last step takes the remaining micro-batches and divides by their number
            let micro = cfg.gradient_accumulation_steps.min(batches_per_epoch - self.state.batch_in_epoch);
            let mut grads: Option<GradientsParams> = None;
            let mut step_loss = 0.0;
            let mut step_metrics = Vec::new();
            for _ in 0..micro {
                let lo = self.state.batch_in_epoch * bs;
                let idx = &order[lo..(lo + bs).min(train.len())];
                let pairs: Vec<&TokenizedPair> = idx.iter().map(|&i| &train[i]).collect();
                let Scored { chosen: rc, rejected: rr, margin, tokens } =
                    score(&self.model, &pairs, self.pad_id, cfg.pad_to_multiple_of)?;
                let loss = bradley_terry(rc.clone(), rr.clone(), margin, cfg.center_rewards_coefficient) / micro as f64;
                let host = Tensor::cat(vec![rc.inner(), rr.inner(), loss.clone().inner()], 0)
                    .into_data()
                    .convert::<f32>()
                    .to_vec::<f32>()
                    .unwrap_or_default();
                let n = pairs.len();
                step_loss += host[2 * n] as f64;
                step_metrics.push(PairMetrics::from_rewards(&host[..n], &host[n..2 * n]));
                let g = GradientsParams::from_grads(loss.backward(), &self.model);
                grads = Some(match grads {
                    Some(mut acc) => {
                        add_grads(&self.model, &mut acc, g);
                        acc
                    }
                    None => g,
                });
                self.state.batch_in_epoch += 1;
                self.state.num_tokens += tokens;
                pairs_done += n;
            }
            let mut grads = grads.expect("at least one micro-batch");
            let norm = clip_grad_norm(&self.model, &mut grads, cfg.max_grad_norm);
            let step = self.state.global_step + 1;
            if !step_loss.is_finite() || !norm.is_finite() {
                return Err(RewardError::Diverged {
                    step,
                    what: format!("loss {step_loss}, gradient norm {norm}"),
                    lr,
                });
            }
            self.model = self.optimizer.step(self.model.clone(), lr, &mut grads);
            self.state.global_step = step;
            self.state.loss_sum = json_exact(self.state.loss_sum + step_loss);
            self.state.window.loss = json_exact(self.state.window.loss + step_loss);
            self.state.window.steps += 1;
            self.state.window.metrics.extend(step_metrics.into_iter().map(PairMetrics::json_exact));
            stop |= on_event(Event::Step { step, total, loss: step_loss }).is_break();
            if step.is_multiple_of(cfg.logging_steps) || step == total {
                let window = std::mem::take(&mut self.state.window);
                let secs = start.elapsed().as_secs_f64().max(1e-9);
                let entry = LogEntry {
                    step,
                    epoch: self.epoch_float(batches_per_epoch),
                    split: "train".into(),
                    loss: window.loss / window.steps as f64,
                    metrics: PairMetrics::merge(&window.metrics),
                    num_tokens: self.state.num_tokens,
                    learning_rate: Some(lr),
                    grad_norm: Some(norm),
                    pairs_per_sec: Some(pairs_done as f64 / secs),
                };
                stop |= self.log(entry, on_event)?;
            }
            if !eval.is_empty() && (cfg.eval_steps.is_some_and(|e| step.is_multiple_of(e)) || step == total) {
                let entry = self.evaluate(eval)?;
                stop |= self.log(entry, on_event)?;
            }
            if step.is_multiple_of(cfg.save_steps) || step == total {
                let dir = self.save_checkpoint()?;
                stop |= on_event(Event::Checkpoint(&dir)).is_break();
            }
        }
        let seconds = start.elapsed().as_secs_f64();
        let summary = Summary {
            global_step: self.state.global_step,
            train_loss: self.state.loss_sum / self.state.global_step.max(1) as f64,
            final_eval: self.state.log_history.iter().rev().find(|e| e.split == "eval").cloned(),
            train_pairs: train.len(),
            eval_pairs: eval.len(),
            dropped_too_long: dropped,
            seconds,
            pairs_per_sec: pairs_done as f64 / seconds.max(1e-9),
        };
        if self.state.global_step >= total {
            self.save_final(&summary, if eval.is_empty() { train } else { eval })?;
        }
        Ok(summary)
    }

    fn epoch_float(&self, batches_per_epoch: usize) -> f64 {
        self.state.epoch as f64 + self.state.batch_in_epoch as f64 / batches_per_epoch.max(1) as f64
    }

    /// Appends `entry` to `metrics.jsonl` and the history; returns whether `on_event` broke.
    fn log(&mut self, entry: LogEntry, on_event: &mut dyn FnMut(Event) -> ControlFlow<()>) -> Result<bool> {
        use std::io::Write;
        let entry = entry.json_exact();
        let path = self.config.output_dir.join("metrics.jsonl");
        std::fs::create_dir_all(&self.config.output_dir).map_err(|e| RewardError::io(&self.config.output_dir, e))?;
        let mut f =
            std::fs::OpenOptions::new().create(true).append(true).open(&path).map_err(|e| RewardError::io(&path, e))?;
        let line = serde_json::to_string(&entry).expect("log entries serialise");
        writeln!(f, "{line}").map_err(|e| RewardError::io(&path, e))?;
        let stop = on_event(Event::Log(&entry)).is_break();
        self.state.log_history.push(entry);
        Ok(stop)
    }

    /// Loss and metrics on `eval` with the current weights (no gradients).
    pub fn evaluate(&self, eval: &[TokenizedPair]) -> Result<LogEntry> {
        let model = self.model.valid();
        let (mut loss_sum, mut parts, mut tokens) = (0.0, Vec::new(), 0u64);
        for chunk in eval.chunks(self.config.per_device_eval_batch_size) {
            let pairs: Vec<&TokenizedPair> = chunk.iter().collect();
            let Scored { chosen: rc, rejected: rr, margin, tokens: t } =
                score(&model, &pairs, self.pad_id, self.config.pad_to_multiple_of)?;
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

    /// Rewards of the first `n` pairs, for the sample table.
    pub fn samples(&self, pairs: &[TokenizedPair], n: usize) -> Result<Vec<Sample>> {
        let model = self.model.valid();
        let take: Vec<&TokenizedPair> = pairs.iter().take(n).collect();
        if take.is_empty() {
            return Ok(Vec::new());
        }
        let Scored { chosen: rc, rejected: rr, .. } = score(&model, &take, self.pad_id, None)?;
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
