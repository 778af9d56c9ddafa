//! Errors of trl-reward.

use std::path::PathBuf;

/// What can go wrong reading preference data or training.
#[derive(Debug, thiserror::Error)]
pub enum RewardError {
    #[error(transparent)]
    Core(#[from] trl_core::Error),
    #[error(transparent)]
    Model(#[from] trl_models::ModelError),
    #[error(transparent)]
    Head(#[from] trl_heads::HeadError),
    #[error("{path}:{line}: {reason}")]
    Row { path: PathBuf, line: usize, reason: String },
    #[error("{path}: {reason}")]
    Data { path: PathBuf, reason: String },
    #[error("bad training config: {0}")]
    Config(String),
    /// The nodes of a multi-node run could not meet or exchange a step.
    #[error("multi-node run: {0}")]
    Nodes(String),
    #[error("chat template: {0}")]
    Template(String),
    #[error("preference data: {0}")]
    Content(String),
    #[error(
        "training diverged at step {step}: {what} (learning rate {lr}); nothing of this step was applied or saved. \
         Lower learning_rate, set max_grad_norm, or check the data; resume from the last checkpoint"
    )]
    Diverged { step: u64, what: String, lr: f64 },
}

impl RewardError {
    pub(crate) fn io(path: &std::path::Path, e: std::io::Error) -> Self {
        Self::Core(trl_core::Error::Io { path: path.to_path_buf(), source: e })
    }
}

pub type Result<T, E = RewardError> = std::result::Result<T, E>;
