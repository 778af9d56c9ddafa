//! What a training run keeps and reports: the log lines (`metrics.jsonl`), the trainer state
//! saved in every checkpoint (`trainer_state.json`), the run summary and sample predictions.
//! Plain serialisable data; depends only on [`crate::loss`] (metrics) and `exact`, so that the
//! trainer, its checkpoints and the report all use it without depending on one another.

use serde::{Deserialize, Serialize};

use crate::exact::json_exact;
use crate::loss::PairMetrics;

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

impl LogEntry {
    /// Every float through `json_exact`.
    pub(crate) fn json_exact(self) -> Self {
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
    /// The best value of `metric_for_best_model` so far, and the step of that evaluation.
    #[serde(default)]
    pub best_metric: Option<f64>,
    #[serde(default)]
    pub best_step: Option<u64>,
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
    /// The burn backend that ran, as it names itself (`autodiff<flex>`, `autodiff<fusion<cuda>>`);
    /// the device is `device` in training_config.json.
    #[serde(default)]
    pub backend: String,
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
