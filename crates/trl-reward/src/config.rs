//! `RewardConfig`: TRL 1.x's defaults, under transformers' field names so a TRL config file
//! reads as is (files are read by [`crate::config_file`]).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use trl_core::peft::{LoraConfig, TargetModules};

use crate::error::{Result, RewardError};
use crate::schedule::{Schedule, SchedulerType};

/// Training settings (TRL 1.x `RewardConfig` defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RewardConfig {
    pub output_dir: PathBuf,
    /// Peak learning rate (TRL 1.x: 1e-4).
    pub learning_rate: f64,
    pub num_train_epochs: f64,
    /// Overrides `num_train_epochs` when set.
    pub max_steps: Option<u64>,
    pub per_device_train_batch_size: usize,
    pub per_device_eval_batch_size: usize,
    pub gradient_accumulation_steps: usize,
    /// Rows with a side longer than this are dropped (and counted), not truncated.
    pub max_length: Option<usize>,
    pub center_rewards_coefficient: Option<f64>,
    pub logging_steps: u64,
    /// Also log after the first optimizer step.
    pub logging_first_step: bool,
    /// With an eval set: `steps` evaluates every `eval_steps` (if set), `epoch` at the end of
    /// each epoch, `no` never before the end; the end of training always evaluates.
    pub eval_strategy: IntervalStrategy,
    /// Evaluate every N optimizer steps (and at the end) when an eval set is given.
    pub eval_steps: Option<u64>,
    /// `steps`: a checkpoint every `save_steps`; `epoch`: at the end of each epoch; `no`: none
    /// before the end (the last step's checkpoint is always written, so a run can be resumed).
    pub save_strategy: IntervalStrategy,
    pub save_steps: u64,
    /// Keep at most this many `checkpoint-N` directories (the oldest go first; the best one
    /// stays while `load_best_model_at_end`).
    pub save_total_limit: Option<usize>,
    /// At the end, the final model is the checkpoint with the best `metric_for_best_model`
    /// (evaluation and checkpoints must then share a schedule, as transformers requires).
    pub load_best_model_at_end: bool,
    /// `loss` (default), `accuracy`, `margin`, `mean_reward`, … of the eval log line; an
    /// `eval_` prefix is allowed.
    pub metric_for_best_model: Option<String>,
    /// Default: false for a metric ending in `loss`, true otherwise (transformers' rule).
    pub greater_is_better: Option<bool>,
    pub seed: u64,
    /// Seed of the shuffling order (default: `seed`).
    pub data_seed: Option<u64>,
    /// `adamw_torch` (or `adamw_torch_fused`, the same update); other optimizers are an error.
    pub optim: String,
    /// Where log lines go besides `metrics.jsonl` and the plots: `tensorboard` writes
    /// TensorBoard event files under `<output_dir>/runs/` (a string or a list, as transformers
    /// takes it; `none` or empty: nowhere else).
    #[serde(deserialize_with = "one_or_many")]
    pub report_to: Vec<String>,
    /// Shuffle the training pairs each epoch (seeded by `seed` and the epoch, so a resumed run
    /// replays the same order). `false` reads them in file order every epoch, as a
    /// `SequentialSampler` would: for step-by-step comparisons with another trainer.
    pub shuffle: bool,
    pub warmup_steps: u64,
    pub warmup_ratio: f64,
    /// transformers' `lr_scheduler_type` (`linear`, `cosine`, `cosine_with_restarts`,
    /// `polynomial`, `constant`, `constant_with_warmup`, `inverse_sqrt`, `cosine_with_min_lr`,
    /// `warmup_stable_decay`) and its `lr_scheduler_kwargs`.
    pub lr_scheduler_type: SchedulerType,
    pub lr_scheduler_kwargs: serde_json::Map<String, serde_json::Value>,
    /// Global-norm clipping (`None` disables it).
    pub max_grad_norm: Option<f64>,
    pub weight_decay: f64,
    pub adam_beta1: f64,
    pub adam_beta2: f64,
    pub adam_epsilon: f64,
    pub pad_to_multiple_of: Option<usize>,
    /// Zero every dropout while training, as TRL does after wrapping the model with PEFT: our
    /// backbones run without dropout anyway, so this switches off LoRA's `lora_dropout` (the saved
    /// `adapter_config.json` keeps the configured value, as TRL's does).
    pub disable_dropout: bool,
    /// EOS string appended to plain text (default: the tokenizer's).
    pub eos_token: Option<String>,
    /// Skip malformed rows (counted) instead of failing.
    pub skip_bad_rows: bool,
    /// Rows shown in the sample-prediction table.
    pub num_print_samples: usize,
    /// Fraction of the training file held out for evaluation when no eval file is given.
    pub eval_split: f64,
    /// Train a LoRA adapter (and `score`) on a frozen base instead of the whole model.
    pub lora: Option<LoraSettings>,
    /// After training, store the mean and standard deviation of the rewards on the held-out
    /// pairs (chosen and rejected; the training pairs when there is no eval set) in the model's
    /// `config.json` as `mean` and `std`, with `normalize_reward: true`, as OpenRLHF does;
    /// `score --normalize` applies them.
    pub normalize_reward: bool,
    /// Mixed precision as transformers' `bf16` runs it: the projections multiply in bfloat16
    /// ([`trl_models::autocast`]), in training and evaluation; a LoRA run holds its frozen base
    /// in bfloat16. Unset or `false`: f32 throughout. (TRL turns `bf16` on unless `fp16` is;
    /// trl-rs leaves it to the config, as f32 is what a CPU runs fastest and exactly.)
    pub bf16: Option<bool>,
    /// The same in float16.
    pub fp16: bool,
    /// Recompute cheap activations in the backward pass instead of keeping them (burn's
    /// `BalancedCheckpointing` autodiff strategy: element-wise results are recomputed, matrix
    /// products kept), as TRL's default `true` asks. `cargo xtask train` picks the autodiff
    /// backend from it.
    pub gradient_checkpointing: bool,
    /// Where to train: `cpu`, `cuda[:N]` or `wgpu[:N]` (`--device`; unset: device 0 of the
    /// backend the binary was built with). transformers' `use_cpu: true` reads as `cpu`. The
    /// run's `training_config.json` records the device it ran on.
    pub device: Option<trl_core::backend::DeviceArg>,
    /// Data-parallel workers (accelerate's `num_processes` on one machine): each scores
    /// `per_device_train_batch_size` pairs of every micro-batch on its own model replica, and
    /// their gradients are summed by burn's collective all-reduce (as a mean over the step's
    /// pairs) before clipping and the optimizer step. A step then takes `data_parallel ×
    /// per_device_train_batch_size × gradient_accumulation_steps` pairs. 1: no workers.
    pub data_parallel: usize,
}

/// transformers' `IntervalStrategy`: when to evaluate or save.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IntervalStrategy {
    No,
    #[default]
    Steps,
    Epoch,
}

impl IntervalStrategy {
    /// Whether a step is due: every `every` steps (`Steps`), or at an epoch's end (`Epoch`).
    pub fn due(self, step: u64, every: Option<u64>, epoch_end: bool) -> bool {
        match self {
            IntervalStrategy::No => false,
            IntervalStrategy::Steps => every.is_some_and(|e| step.is_multiple_of(e)),
            IntervalStrategy::Epoch => epoch_end,
        }
    }
}

/// A LoRA adapter to train: TRL's `ModelConfig` `lora_*` fields and defaults (the `lora_`
/// prefix is optional in a config file), made into PEFT's `SEQ_CLS` task as TRL's reward
/// script does, with `score` in `modules_to_save` as PEFT's `PeftModelForSequenceClassification`
/// adds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoraSettings {
    #[serde(alias = "lora_r")]
    pub r: usize,
    #[serde(alias = "lora_alpha")]
    pub alpha: f64,
    #[serde(alias = "lora_dropout")]
    pub dropout: f64,
    /// Module names, or `["all-linear"]`; unset: PEFT's default for the architecture
    /// (`q_proj`, `v_proj` for the Llama family, `c_attn` for GPT-2).
    #[serde(alias = "lora_target_modules")]
    pub target_modules: Option<Vec<String>>,
    /// Trained and saved whole; `score` is always among them.
    #[serde(alias = "lora_modules_to_save")]
    pub modules_to_save: Vec<String>,
    /// Scale by `alpha / √r` instead of `alpha / r`.
    pub use_rslora: bool,
    /// Written to `adapter_config.json` so that PEFT and trl-rs find the base (a local path or
    /// a hub id). Unset: the directory the model's `config.json` was read from, made absolute.
    pub base_model_name_or_path: Option<String>,
    /// The base's hub revision, when it is a hub id.
    pub revision: Option<String>,
}

impl Default for LoraSettings {
    fn default() -> Self {
        Self {
            r: 16,
            alpha: 32.0,
            dropout: 0.05,
            target_modules: None,
            modules_to_save: vec!["score".into()],
            use_rslora: false,
            base_model_name_or_path: None,
            revision: None,
        }
    }
}

impl LoraSettings {
    /// The PEFT config of a new adapter for a `model_type` backbone (`fan_in_fan_out` for
    /// GPT-2's Conv1D, as PEFT forces it).
    pub fn lora_config(&self, model_type: &str) -> Result<LoraConfig> {
        self.validate()?;
        let arch = trl_models::arch_info(model_type);
        let targets = match self.target_modules.as_deref() {
            Some([one]) if one == "all-linear" => TargetModules::AllLinear,
            Some(list) if !list.is_empty() => TargetModules::Names(list.to_vec()),
            _ => TargetModules::Names(
                arch.map(|a| a.default_lora_targets)
                    .ok_or_else(|| {
                        RewardError::Config(format!(
                            "lora: PEFT has no default target modules for model_type `{model_type}`; set target_modules"
                        ))
                    })?
                    .iter()
                    .map(|s| s.to_string())
                    .collect(),
            ),
        };
        let mut c = LoraConfig::new(self.r, self.alpha, targets);
        c.task_type = Some("SEQ_CLS".into());
        c.lora_dropout = self.dropout;
        c.use_rslora = self.use_rslora;
        c.fan_in_fan_out = arch.is_some_and(|a| a.fan_in_fan_out);
        c.modules_to_save = self.modules_to_save.clone();
        if !c.modules_to_save.iter().any(|m| m == "score") {
            c.modules_to_save.push("score".into());
        }
        c.base_model_name_or_path = self.base_model_name_or_path.clone();
        c.revision = self.revision.clone();
        Ok(c)
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(RewardError::Config(format!("lora: {m}")));
        if self.r == 0 {
            return bad("r must be at least 1");
        }
        if !self.alpha.is_finite() || self.alpha <= 0.0 {
            return bad("alpha must be positive");
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad("dropout must be in [0, 1)");
        }
        Ok(())
    }
}

impl Default for RewardConfig {
    fn default() -> Self {
        Self {
            output_dir: PathBuf::from("runs/reward"),
            learning_rate: 1e-4,
            num_train_epochs: 3.0,
            max_steps: None,
            per_device_train_batch_size: 8,
            per_device_eval_batch_size: 8,
            gradient_accumulation_steps: 1,
            max_length: Some(1024),
            center_rewards_coefficient: None,
            logging_steps: 10,
            logging_first_step: false,
            eval_strategy: IntervalStrategy::Steps,
            eval_steps: None,
            save_strategy: IntervalStrategy::Steps,
            save_steps: 500,
            save_total_limit: None,
            load_best_model_at_end: false,
            metric_for_best_model: None,
            greater_is_better: None,
            seed: 42,
            data_seed: None,
            optim: "adamw_torch".into(),
            report_to: Vec::new(),
            shuffle: true,
            warmup_steps: 0,
            warmup_ratio: 0.0,
            lr_scheduler_type: SchedulerType::Linear,
            lr_scheduler_kwargs: serde_json::Map::new(),
            max_grad_norm: Some(1.0),
            weight_decay: 0.0,
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_epsilon: 1e-8,
            pad_to_multiple_of: None,
            disable_dropout: true,
            eos_token: None,
            skip_bad_rows: false,
            num_print_samples: 4,
            eval_split: 0.0,
            lora: None,
            normalize_reward: false,
            bf16: None,
            fp16: false,
            gradient_checkpointing: true,
            device: None,
            data_parallel: 1,
        }
    }
}

/// The most data-parallel workers a run may ask for.
pub const MAX_DATA_PARALLEL: usize = 256;

/// The valid range of a numeric setting, for error messages.
fn range_of(name: &str) -> &'static str {
    match name {
        "adam_beta1" | "adam_beta2" => "a finite number in [0, 1)",
        "warmup_ratio" => "a finite number in [0, 1]",
        "max_grad_norm" | "adam_epsilon" => "a finite number > 0",
        _ => "a finite number ≥ 0",
    }
}

impl RewardConfig {
    /// The half dtype the projections multiply in (`bf16` / `fp16`), if any.
    pub fn half_dtype(&self) -> Option<trl_core::WeightDtype> {
        use trl_core::WeightDtype;
        if self.fp16 {
            Some(WeightDtype::F16)
        } else {
            (self.bf16 == Some(true)).then_some(WeightDtype::Bf16)
        }
    }

    /// Rejects settings that cannot train.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(RewardError::Config(m.into()));
        if self.per_device_train_batch_size == 0 || self.per_device_eval_batch_size == 0 {
            return bad("batch sizes must be at least 1");
        }
        if self.gradient_accumulation_steps == 0 {
            return bad("gradient_accumulation_steps must be at least 1");
        }
        if !(1..=MAX_DATA_PARALLEL).contains(&self.data_parallel) {
            return Err(RewardError::Config(format!(
                "data_parallel is {}; it must be 1 (no workers) to {MAX_DATA_PARALLEL}",
                self.data_parallel
            )));
        }
        if self.fp16 && self.bf16 == Some(true) {
            return bad("bf16 and fp16 are both true: at most one mixed precision can be on");
        }
        // AdamW moves every weight by about `learning_rate` a step: above 1 nothing can train.
        if !(self.learning_rate > 0.0 && self.learning_rate <= 1.0) {
            return Err(RewardError::Config(format!(
                "learning_rate is {}; it must be in (0, 1] (AdamW moves each weight by about that much a step)",
                self.learning_rate
            )));
        }
        if !self.num_train_epochs.is_finite() || (self.max_steps.is_none() && self.num_train_epochs <= 0.0) {
            return Err(RewardError::Config(format!(
                "num_train_epochs is {}; set a finite num_train_epochs > 0, or max_steps",
                self.num_train_epochs
            )));
        }
        let finite = |name: &str, v: f64, ok: bool| {
            if v.is_finite() && ok {
                Ok(())
            } else {
                Err(RewardError::Config(format!("{name} is {v}; it must be {}", range_of(name))))
            }
        };
        if let Some(c) = self.center_rewards_coefficient {
            finite("center_rewards_coefficient", c, c >= 0.0)?;
        }
        if let Some(m) = self.max_grad_norm {
            finite("max_grad_norm", m, m > 0.0)?;
        }
        finite("weight_decay", self.weight_decay, self.weight_decay >= 0.0)?;
        finite("adam_beta1", self.adam_beta1, (0.0..1.0).contains(&self.adam_beta1))?;
        finite("adam_beta2", self.adam_beta2, (0.0..1.0).contains(&self.adam_beta2))?;
        finite("adam_epsilon", self.adam_epsilon, self.adam_epsilon > 0.0)?;
        finite("warmup_ratio", self.warmup_ratio, (0.0..=1.0).contains(&self.warmup_ratio))?;
        if self.max_length == Some(0) || self.pad_to_multiple_of == Some(0) {
            return bad("max_length and pad_to_multiple_of must be at least 1 when set");
        }
        if !(0.0..1.0).contains(&self.eval_split) {
            return bad("eval_split must be in [0, 1)");
        }
        if self.logging_steps == 0 || self.save_steps == 0 || self.eval_steps == Some(0) {
            return bad("logging_steps, save_steps and eval_steps must be at least 1");
        }
        if let Some(l) = &self.lora {
            l.validate()?;
        }
        if let Some(r) = self.report_to.iter().find(|r| !["tensorboard", "none"].contains(&r.as_str())) {
            return Err(RewardError::Config(format!(
                "report_to `{r}` is not available: trl-rs reports to `tensorboard` (or `none`); metrics.jsonl and \
                 the plots are always written"
            )));
        }
        if !["adamw_torch", "adamw_torch_fused"].contains(&self.optim.as_str()) {
            return Err(RewardError::Config(format!(
                "optim `{}` is not supported: trl-rs trains with PyTorch's AdamW (optim = \"adamw_torch\")",
                self.optim
            )));
        }
        if self.load_best_model_at_end {
            let aligned = match (self.eval_strategy, self.save_strategy) {
                (IntervalStrategy::Steps, IntervalStrategy::Steps) => {
                    self.eval_steps.is_some_and(|e| self.save_steps.is_multiple_of(e))
                }
                (e, s) => e == s,
            };
            if !aligned {
                return bad("load_best_model_at_end needs eval_strategy equal to save_strategy and, by steps, \
                            save_steps a multiple of eval_steps (so every best evaluation has a checkpoint)");
            }
            self.best_metric()?;
        }
        if self.normalize_reward && self.lora.is_some() {
            return bad(
                "normalize_reward stores the reward mean and std in the model's config.json, which a LoRA run \
                        does not write (it writes an adapter): train without normalize_reward, or fine-tune fully",
            );
        }
        if self.save_total_limit == Some(0) {
            return bad("save_total_limit must be at least 1 when set");
        }
        // the kwargs' names and values, before a run's step count is known
        Schedule::new(self.lr_scheduler_type, &self.lr_scheduler_kwargs, self.learning_rate, 0, u64::MAX / 4)
            .map(|_| ())
    }

    /// The eval metric `load_best_model_at_end` compares, and whether greater is better.
    pub fn best_metric(&self) -> Result<(String, bool)> {
        let name = self.metric_for_best_model.as_deref().unwrap_or("loss");
        let name = name.strip_prefix("eval_").unwrap_or(name).to_string();
        if !["loss", "accuracy", "margin", "min_reward", "mean_reward", "max_reward"].contains(&name.as_str()) {
            return Err(RewardError::Config(format!(
                "metric_for_best_model `{name}` is not an eval metric here (loss, accuracy, margin, min_reward, \
                 mean_reward, max_reward)"
            )));
        }
        let greater = self.greater_is_better.unwrap_or(!name.ends_with("loss"));
        Ok((name, greater))
    }

    /// The learning-rate schedule of a run of `total` optimizer steps.
    pub fn schedule(&self, total: u64) -> Result<Schedule> {
        let warmup = self.warmup(total);
        Schedule::new(self.lr_scheduler_type, &self.lr_scheduler_kwargs, self.learning_rate, warmup, total)
    }

    /// Pairs in one micro-batch over all data-parallel workers.
    pub fn global_batch(&self) -> usize {
        self.per_device_train_batch_size * self.data_parallel
    }

    /// Optimizer steps per epoch for `n_pairs` training pairs: `ceil(batches / accumulation)`,
    /// as transformers counts them (an epoch's last step takes the left-over micro-batches).
    pub fn steps_per_epoch(&self, n_pairs: usize) -> u64 {
        let batches = n_pairs.div_ceil(self.global_batch()) as u64;
        batches.div_ceil(self.gradient_accumulation_steps as u64).max(1)
    }

    /// Optimizer steps in total for `n_pairs` training pairs (transformers' arithmetic).
    pub fn total_steps(&self, n_pairs: usize) -> u64 {
        self.max_steps.unwrap_or_else(|| (self.num_train_epochs * self.steps_per_epoch(n_pairs) as f64).ceil() as u64)
    }

    /// Warmup steps: `warmup_steps` if set, else `ceil(warmup_ratio · total)`.
    pub fn warmup(&self, total: u64) -> u64 {
        if self.warmup_steps > 0 {
            self.warmup_steps
        } else {
            (self.warmup_ratio * total as f64).ceil() as u64
        }
    }
}

/// A string or a list of strings, as a list (`report_to = "tensorboard"` or `["tensorboard"]`).
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}
