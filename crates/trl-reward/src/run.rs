//! The training loop of [`RewardTrainer`] ([`RewardTrainer::train`]): micro-batches, gradient
//! accumulation and clipping, AdamW steps, log lines, evaluation and checkpoints.
//!
//! Module layout (no cycles): `exact` ← `loss` ← `state` ← `trainer` (the trainer type, its
//! construction, scoring and evaluation) ← `checkpoint` (saving, resuming, final outputs) ←
//! `run` (this loop, which calls both). `report` depends on `state` only.

use std::ops::ControlFlow;
use std::time::Instant;

use burn::tensor::backend::AutodiffBackend;

use crate::collate::{epoch_order, SplitMix64};
use crate::data::TokenizedPair;
use crate::error::{Result, RewardError};
use crate::exact::json_exact;
use crate::loss::PairMetrics;
use crate::optim::clip_grad_norm;
use crate::parallel::{share_grads, split, Pool};
use crate::state::{LogEntry, Summary};
use crate::trainer::{Event, RewardTrainer};

/// The seed of the backend's RNG for optimizer step `step` (0-based): what dropout draws from.
fn step_seed(seed: u64, step: u64) -> u64 {
    SplitMix64(seed ^ step.wrapping_mul(0xE703_7ED1_A0B4_28DB)).next_u64()
}

impl<B: AutodiffBackend> RewardTrainer<B> {
    /// Trains on `train` until `total_steps`, evaluating on `eval`; calls `on_event` as it goes.
    ///
    /// When `on_event` breaks, training stops after the current step and nothing final is
    /// written (no final model, summary or plots): the returned summary's `global_step` is
    /// then below `state.total_steps`, and the run continues with [`Self::resume_from`].
    ///
    /// With `data_parallel` workers, each micro-batch's pairs are split over them and their
    /// gradients summed by burn's collective all-reduce ([`crate::parallel`]); the workers run
    /// on [`Self::set_worker_devices`]' devices (by default all on the model's), and over the
    /// nodes of [`Self::set_nodes`] (one process each) when set.
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
        let workers = self.config.data_parallel;
        let nodes = self.nodes.clone();
        if workers == 1 && nodes.is_none() {
            return self.train_on(train, eval, dropped, on_event, None);
        }
        if self.reseed {
            return Err(RewardError::Config(
                "data_parallel > 1 with live LoRA dropout: the workers would draw their masks from one generator \
                 in no fixed order; set disable_dropout = true (TRL's default) or train with one worker"
                    .into(),
            ));
        }
        if let Some(n) = &nodes {
            n.check(workers)?;
        }
        let devices = self.worker_devices(self.local_workers())?;
        let cfg = self.config.clone();
        let fingerprint = self.run_fingerprint(train);
        let _turn = crate::parallel::turn();
        std::thread::scope(|s| {
            let pool = Pool::start(s, devices, workers, nodes.as_ref(), fingerprint, train, self.pad_id, &cfg)?;
            self.train_on(train, eval, dropped, on_event, Some(&pool))
        })
    }

    /// What the nodes of a multi-node run compare when they join: the settings that split and
    /// order the batches, the model's size and the training tokens.
    fn run_fingerprint(&self, train: &[TokenizedPair]) -> u64 {
        let c = &self.config;
        let settings = [
            c.data_parallel as u64,
            c.per_device_train_batch_size as u64,
            c.gradient_accumulation_steps as u64,
            c.total_steps(train.len()),
            c.shuffle as u64,
            burn::module::Module::num_params(&self.model) as u64,
            train.len() as u64,
            c.seed,
            c.data_seed.unwrap_or(c.seed),
        ];
        let tokens = train.iter().flat_map(|p| p.chosen.iter().chain(&p.rejected).chain([&-1]));
        crate::nodes::fingerprint(settings.into_iter().chain(tokens.map(|&t| t as u64)))
    }

    fn train_on(
        &mut self,
        train: &[TokenizedPair],
        eval: &[TokenizedPair],
        dropped: usize,
        on_event: &mut dyn FnMut(Event) -> ControlFlow<()>,
        pool: Option<&Pool<B>>,
    ) -> Result<Summary> {
        let cfg = self.config.clone();
        let total = cfg.total_steps(train.len());
        let schedule = cfg.schedule(total)?;
        self.state.total_steps = total;
        let global = cfg.global_batch();
        let batches_per_epoch = train.len().div_ceil(global);
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
            let lr = schedule.lr(self.state.global_step);
            if self.reseed {
                B::seed(&self.model.backbone.device(), step_seed(cfg.seed, self.state.global_step));
            }
            if self.state.batch_in_epoch >= batches_per_epoch {
                self.state.epoch += 1;
                self.state.batch_in_epoch = 0;
            }
            let order = if cfg.shuffle {
                epoch_order(train.len(), cfg.data_seed.unwrap_or(cfg.seed), self.state.epoch)
            } else {
                (0..train.len()).collect()
            };
            // transformers: an epoch's last step takes the remaining micro-batches and divides by their number
            let micro = cfg.gradient_accumulation_steps.min(batches_per_epoch - self.state.batch_in_epoch);
            let mut batches = Vec::with_capacity(micro);
            for _ in 0..micro {
                let lo = self.state.batch_in_epoch * global;
                batches.push(&order[lo..(lo + global).min(train.len())]);
                self.state.batch_in_epoch += 1;
            }
            let bs = cfg.per_device_train_batch_size;
            let shares = split(&batches, cfg.data_parallel, bs);
            let totals = shares[0].totals.clone();
            let (mut grads, report) = match pool {
                Some(pool) => pool.step(&self.model, train, shares, self.state.global_step, self.pad_id, &cfg)?,
                None => share_grads(&self.model, train, &shares[0], self.pad_id, &cfg)?
                    .ready(0, bs, 1)
                    .expect("at least one micro-batch"),
            };
            let (step_metrics, step_loss, tokens) = report.read(&totals);
            self.state.num_tokens += tokens;
            pairs_done += totals.iter().sum::<usize>();
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
            let epoch_end = self.state.batch_in_epoch >= batches_per_epoch;
            if step.is_multiple_of(cfg.logging_steps) || step == total || (step == 1 && cfg.logging_first_step) {
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
            if !eval.is_empty() && (cfg.eval_strategy.due(step, cfg.eval_steps, epoch_end) || step == total) {
                let entry = self.evaluate(eval)?;
                self.track_best(&entry)?;
                stop |= self.log(entry, on_event)?;
            }
            if cfg.save_strategy.due(step, Some(cfg.save_steps), epoch_end) || step == total {
                let dir = self.save_checkpoint()?;
                self.prune_checkpoints()?;
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
            backend: B::name(&self.model.backbone.device()),
        };
        if self.state.global_step >= total {
            if let Some(note) = self.load_best()? {
                let _ = on_event(Event::Warning(&note));
            }
            self.save_final(&summary, if eval.is_empty() { train } else { eval })?;
        }
        Ok(summary)
    }

    /// Records `entry` as the best evaluation if it beats the best so far on
    /// `metric_for_best_model` (with `load_best_model_at_end`).
    fn track_best(&mut self, entry: &LogEntry) -> Result<()> {
        if !self.config.load_best_model_at_end {
            return Ok(());
        }
        let (name, greater) = self.config.best_metric()?;
        let m = &entry.metrics;
        let value = match name.as_str() {
            "loss" => entry.loss,
            "accuracy" => m.accuracy,
            "margin" => m.margin,
            "min_reward" => m.min_reward,
            "mean_reward" => m.mean_reward,
            _ => m.max_reward,
        };
        let better = match self.state.best_metric {
            None => true,
            Some(best) => (greater && value > best) || (!greater && value < best),
        };
        if better {
            self.state.best_metric = Some(value);
            self.state.best_step = Some(entry.step);
        }
        Ok(())
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
        if self.config.report_to.iter().any(|r| r == "tensorboard") {
            if self.tensorboard.is_none() {
                self.tensorboard = Some(crate::tensorboard::EventWriter::create(&self.config.output_dir.join("runs"))?);
            }
            if let Some(tb) = self.tensorboard.as_mut() {
                tb.log(&entry)?;
            }
        }
        let stop = on_event(Event::Log(&entry)).is_break();
        self.state.log_history.push(entry);
        Ok(stop)
    }
}
