//! Checkpoints of a [`RewardTrainer`]: the model (HF layout, or a PEFT adapter under LoRA),
//! optimizer moments and `trainer_state.json`, written through a temp directory and a rename;
//! finding the newest one and resuming from it; and the final outputs of a run.
//!
//! An `impl` block of [`RewardTrainer`] over the type defined in `trainer`; `trainer` never
//! calls into this module (the training loop in `run` calls both), so the two form no cycle.

use std::path::{Path, PathBuf};

use burn::tensor::backend::AutodiffBackend;

use trl_core::atomic::{write_atomic, write_json_atomic};
use trl_core::checkpoint::{self, DEFAULT_MAX_SHARD_SIZE};
use trl_core::module_io::param_ids;
use trl_core::peft;
use trl_heads::ForSequenceClassification;

use crate::data::TokenizedPair;
use crate::error::{Result, RewardError};
use crate::report;
use crate::state::Summary;
use crate::trainer::RewardTrainer;

pub(crate) const STATE_FILE: &str = "trainer_state.json";
pub(crate) const OPTIMIZER_FILE: &str = "optimizer.safetensors";

/// Where [`RewardTrainer::resume_newest`] resumed from.
#[derive(Debug, Clone, PartialEq)]
pub struct Resumed {
    pub checkpoint: PathBuf,
    /// Newer checkpoints that could not be loaded, with why (newest first).
    pub damaged: Vec<(PathBuf, String)>,
    /// Settings that differ from the checkpoint's run (`name: old → new`).
    pub changed: Vec<String>,
}

/// The `checkpoint-N` directories of `output_dir`, highest N first.
fn checkpoints_newest_first(output_dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(output_dir) else { return Vec::new() };
    let mut found: Vec<(u64, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let step = e.file_name().to_str()?.strip_prefix("checkpoint-")?.parse().ok()?;
            e.path().is_dir().then_some((step, e.path()))
        })
        .collect();
    found.sort_by_key(|(step, _)| std::cmp::Reverse(*step));
    found.into_iter().map(|(_, p)| p).collect()
}

impl<B: AutodiffBackend> RewardTrainer<B> {
    /// The newest `checkpoint-N` directory under `output_dir`, if any.
    pub fn latest_checkpoint(output_dir: &Path) -> Option<PathBuf> {
        checkpoints_newest_first(output_dir).into_iter().find(|p| p.join(STATE_FILE).is_file())
    }

    /// Restores weights, optimizer moments and position from a checkpoint directory, all or
    /// nothing: a damaged file leaves the trainer as it was. With LoRA the checkpoint's adapter
    /// (and `score`) is loaded onto this trainer's base, which must be the base the run started
    /// from. Returns the settings that differ from the checkpoint's `training_config.json`
    /// (`name: old → new`), which the caller should show.
    pub fn resume_from(&mut self, dir: &Path) -> Result<Vec<String>> {
        let device = self.model.backbone.device();
        let model = self.weights_from(dir)?;
        let state_path = dir.join(STATE_FILE);
        let text = std::fs::read_to_string(&state_path).map_err(|e| RewardError::io(&state_path, e))?;
        let state = serde_json::from_str(&text)
            .map_err(|e| RewardError::Data { path: state_path.clone(), reason: e.to_string() })?;
        let sd = checkpoint::load_safetensors(&dir.join(OPTIMIZER_FILE))?;
        // trainable weights laid out as training leaves them: a view read from the checkpoint
        // would sum in another order in a small matmul, and the resumed run drift by roundings
        self.model = trl_core::module_io::contiguous_where(model, |_, trainable| trainable);
        self.state = state;
        self.optimizer.load_state_dict(&sd, &param_ids(&self.model), self.state.global_step, &device);
        Ok(self.changed_settings(dir))
    }

    /// The model (or adapter) weights of checkpoint `dir`, for this trainer's kind of run.
    fn weights_from(&self, dir: &Path) -> Result<ForSequenceClassification<B>> {
        let device = self.model.backbone.device();
        let is_adapter = peft::is_adapter_dir(dir);
        Ok(match &self.adapter {
            Some(name) if is_adapter => self.model.clone().load_adapter_weights(dir, name)?,
            None if !is_adapter => ForSequenceClassification::<B>::from_pretrained(dir, None, &device)?.0,
            Some(name) => {
                return Err(RewardError::Config(format!(
                    "{}: not a LoRA checkpoint (no adapter_config.json), but this trainer trains adapter `{name}`; \
                     resume without the lora settings",
                    dir.display()
                )))
            }
            None => {
                return Err(RewardError::Config(format!(
                    "{}: a LoRA checkpoint, but this trainer fine-tunes the whole model; resume with the lora \
                     settings the run used (see its training_config.json)",
                    dir.display()
                )))
            }
        })
    }

    /// Resumes from the newest checkpoint in `output_dir` that loads; damaged or incomplete
    /// newer ones (a truncated model or optimizer file, a missing state file) are passed over
    /// and reported in [`Resumed::damaged`].
    pub fn resume_newest(&mut self, output_dir: &Path) -> Result<Resumed> {
        let mut damaged = Vec::new();
        for dir in checkpoints_newest_first(output_dir) {
            match self.resume_from(&dir) {
                Ok(changed) => return Ok(Resumed { checkpoint: dir, damaged, changed }),
                Err(e @ RewardError::Config(_)) => return Err(e),
                Err(e) => damaged.push((dir, e.to_string())),
            }
        }
        let found = if damaged.is_empty() {
            "no checkpoint-N directory".to_string()
        } else {
            let list: Vec<String> = damaged.iter().map(|(d, e)| format!("{} ({e})", d.display())).collect();
            format!("no complete checkpoint; damaged: {}", list.join("; "))
        };
        Err(RewardError::Data { path: output_dir.to_path_buf(), reason: format!("cannot resume: {found}") })
    }

    /// The settings (`training_config.json` keys) that differ between `dir`'s run and this one.
    fn changed_settings(&self, dir: &Path) -> Vec<String> {
        let Ok(text) = std::fs::read_to_string(dir.join("training_config.json")) else { return Vec::new() };
        let (Ok(serde_json::Value::Object(old)), Ok(serde_json::Value::Object(new))) =
            (serde_json::from_str(&text), serde_json::to_value(&self.config))
        else {
            return Vec::new();
        };
        new.iter()
            .filter(|(k, v)| old.get(*k).is_some_and(|o| o != *v))
            .map(|(k, v)| format!("{k}: {} → {v}", old[k]))
            .collect()
    }
    /// Writes `metrics.jsonl` from the history (one JSON object a line).
    pub(crate) fn write_metrics(&self) -> Result<()> {
        let out = &self.config.output_dir;
        std::fs::create_dir_all(out).map_err(|e| RewardError::io(out, e))?;
        let text: String = self
            .state
            .log_history
            .iter()
            .map(|e| serde_json::to_string(e).expect("log entries serialise") + "\n")
            .collect();
        write_atomic(&out.join("metrics.jsonl"), text.as_bytes())?;
        Ok(())
    }

    /// Writes the model into `dir` with the tokenizer: in HF layout (config, weights), or with
    /// LoRA as a PEFT adapter (`adapter_config.json`, `adapter_model.safetensors` with `score`).
    pub fn save_model(&self, dir: &Path) -> Result<()> {
        match &self.adapter {
            Some(name) => self.model.save_adapter(dir, name)?,
            None => self.model.save_pretrained(&self.hf_config, dir, DEFAULT_MAX_SHARD_SIZE)?,
        }
        if let Some(t) = &self.tokenizer {
            t.save(dir)?;
        }
        Ok(())
    }

    /// `Err` when a trainable weight holds NaN or inf: such a model is never written.
    fn check_finite(&self) -> Result<()> {
        let bad = trl_core::module_io::non_finite_params(&self.model);
        if bad.is_empty() {
            return Ok(());
        }
        Err(RewardError::Diverged {
            step: self.state.global_step,
            what: format!("weights became NaN or infinite ({})", bad.join(", ")),
            lr: self.config.learning_rate,
        })
    }

    /// Removes the oldest `checkpoint-N` directories beyond `save_total_limit`.
    pub(crate) fn prune_checkpoints(&self) -> Result<()> {
        let Some(limit) = self.config.save_total_limit else { return Ok(()) };
        // the best checkpoint stays (as transformers keeps it), besides the newest others
        let best = self.best_checkpoint();
        let mut others = checkpoints_newest_first(&self.config.output_dir);
        // besides the best: the newest limit − 1 others, and always the newest checkpoint
        let keep = match &best {
            None => limit,
            Some(b) if others.first() == Some(b) => limit - 1,
            Some(_) => (limit - 1).max(1),
        };
        others.retain(|d| Some(d) != best.as_ref());
        for old in others.into_iter().skip(keep) {
            std::fs::remove_dir_all(&old).map_err(|e| RewardError::io(&old, e))?;
        }
        Ok(())
    }

    /// The checkpoint of the best evaluation so far, with `load_best_model_at_end`.
    pub(crate) fn best_checkpoint(&self) -> Option<PathBuf> {
        let step = self.state.best_step.filter(|_| self.config.load_best_model_at_end)?;
        Some(self.config.output_dir.join(format!("checkpoint-{step}")))
    }

    /// With `load_best_model_at_end`, makes the model the best checkpoint's; returns a line to
    /// tell the user, if it changed anything.
    pub(crate) fn load_best(&mut self) -> Result<Option<String>> {
        let Some(dir) = self.best_checkpoint() else { return Ok(None) };
        if self.state.best_step == Some(self.state.global_step) {
            return Ok(None);
        }
        self.model = self.weights_from(&dir)?;
        let (name, _) = self.config.best_metric()?;
        let value = self.state.best_metric.unwrap_or(f64::NAN);
        Ok(Some(format!("the final model is {}'s, the best eval {name} ({value})", dir.display())))
    }

    /// Writes `checkpoint-<step>` (model, optimizer, state) via a temp directory (unique to this
    /// process) and a rename.
    pub fn save_checkpoint(&self) -> Result<PathBuf> {
        self.check_finite()?;
        let out = &self.config.output_dir;
        let dir = out.join(format!("checkpoint-{}", self.state.global_step));
        let tmp = out.join(format!(".checkpoint-{}.tmp{}", self.state.global_step, std::process::id()));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| RewardError::io(&tmp, e))?;
        }
        self.save_model(&tmp)?;
        self.optimizer.save(&param_ids(&self.model), &tmp.join(OPTIMIZER_FILE))?;
        write_json_atomic(&tmp.join(STATE_FILE), &self.state)?;
        write_json_atomic(&tmp.join("training_config.json"), &self.config)?;
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| RewardError::io(&dir, e))?;
        }
        std::fs::rename(&tmp, &dir).map_err(|e| RewardError::io(&dir, e))?;
        Ok(dir)
    }

    pub(crate) fn save_final(&mut self, summary: &Summary, sample_from: &[TokenizedPair]) -> Result<()> {
        self.check_finite()?;
        if self.config.normalize_reward {
            let (mean, std) = self.reward_stats(sample_from)?;
            self.hf_config.set("normalize_reward", true);
            self.hf_config.set("mean", mean);
            self.hf_config.set("std", std);
        }
        let out = &self.config.output_dir;
        self.save_model(out)?;
        write_json_atomic(&out.join("training_config.json"), &self.config)?;
        write_json_atomic(&out.join("summary.json"), summary)?;
        self.write_metrics()?;
        let samples = self.samples(sample_from, self.config.num_print_samples)?;
        let jsonl: Vec<String> = samples.iter().map(|s| serde_json::to_string(s).expect("serialisable")).collect();
        write_atomic(&out.join("samples.jsonl"), (jsonl.join("\n") + "\n").as_bytes())?;
        write_atomic(&out.join("samples.md"), report::samples_table(&samples).as_bytes())?;
        report::plot_history(&self.state.log_history, out)?;
        Ok(())
    }
}
