//! Checkpoints of a [`RewardTrainer`]: the model (HF layout, or a PEFT adapter under LoRA),
//! optimizer moments and `trainer_state.json`, written through a temp directory and a rename;
//! finding the newest one and resuming from it; and the final outputs of a run.

use std::path::{Path, PathBuf};

use burn::tensor::backend::AutodiffBackend;

use trl_core::atomic::{write_atomic, write_json_atomic};
use trl_core::checkpoint::{self, DEFAULT_MAX_SHARD_SIZE};
use trl_core::module_io::param_ids;
use trl_core::peft;
use trl_heads::ForSequenceClassification;

use crate::data::TokenizedPair;
use crate::error::{Result, RewardError};
use crate::trainer::{RewardTrainer, Summary};

pub(crate) const STATE_FILE: &str = "trainer_state.json";
pub(crate) const OPTIMIZER_FILE: &str = "optimizer.safetensors";

impl<B: AutodiffBackend> RewardTrainer<B> {
    /// The newest `checkpoint-N` directory under `output_dir`, if any.
    pub fn latest_checkpoint(output_dir: &Path) -> Option<PathBuf> {
        std::fs::read_dir(output_dir)
            .ok()?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let step: u64 = name.strip_prefix("checkpoint-")?.parse().ok()?;
                e.path().join(STATE_FILE).is_file().then_some((step, e.path()))
            })
            .max_by_key(|(s, _)| *s)
            .map(|(_, p)| p)
    }

    /// Restores weights, optimizer moments and position from a checkpoint directory. With LoRA
    /// the checkpoint's adapter (and `score`) is loaded onto this trainer's base, which must be the
    /// base the run started from.
    pub fn resume_from(&mut self, dir: &Path) -> Result<()> {
        let device = self.model.backbone.device();
        let is_adapter = peft::is_adapter_dir(dir);
        match &self.adapter {
            Some(name) if is_adapter => self.model = self.model.clone().load_adapter_weights(dir, name)?,
            None if !is_adapter => {
                let (model, _, _) = ForSequenceClassification::<B>::from_pretrained(dir, None, &device)?;
                self.model = model;
            }
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
        }
        let text =
            std::fs::read_to_string(dir.join(STATE_FILE)).map_err(|e| RewardError::io(&dir.join(STATE_FILE), e))?;
        self.state = serde_json::from_str(&text)
            .map_err(|e| RewardError::Data { path: dir.join(STATE_FILE), reason: e.to_string() })?;
        let sd = checkpoint::load_safetensors(&dir.join(OPTIMIZER_FILE))?;
        self.optimizer.load_state_dict(&sd, &param_ids(&self.model), self.state.global_step, &device);
        Ok(())
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

    /// Writes `checkpoint-<step>` (model, optimizer, state) via a temp directory and a rename.
    pub fn save_checkpoint(&self) -> Result<PathBuf> {
        let out = &self.config.output_dir;
        let dir = out.join(format!("checkpoint-{}", self.state.global_step));
        let tmp = out.join(format!(".checkpoint-{}.tmp", self.state.global_step));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| RewardError::io(&tmp, e))?;
        }
        self.save_model(&tmp)?;
        let opt = self.optimizer.state_dict(&param_ids(&self.model));
        checkpoint::save_safetensors(&opt, &tmp.join(OPTIMIZER_FILE))?;
        write_json_atomic(&tmp.join(STATE_FILE), &self.state)?;
        write_json_atomic(&tmp.join("training_config.json"), &self.config)?;
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| RewardError::io(&dir, e))?;
        }
        std::fs::rename(&tmp, &dir).map_err(|e| RewardError::io(&dir, e))?;
        Ok(dir)
    }

    pub(crate) fn save_final(&self, summary: &Summary, sample_from: &[TokenizedPair]) -> Result<()> {
        let out = &self.config.output_dir;
        self.save_model(out)?;
        write_json_atomic(&out.join("training_config.json"), &self.config)?;
        write_json_atomic(&out.join("summary.json"), summary)?;
        self.write_metrics()?;
        let samples = self.samples(sample_from, self.config.num_print_samples)?;
        let jsonl: Vec<String> = samples.iter().map(|s| serde_json::to_string(s).expect("serialisable")).collect();
        write_atomic(&out.join("samples.jsonl"), (jsonl.join("\n") + "\n").as_bytes())?;
        write_atomic(&out.join("samples.md"), crate::report::samples_table(&samples).as_bytes())?;
        crate::report::plot_history(&self.state.log_history, out)?;
        Ok(())
    }
}
