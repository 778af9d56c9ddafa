//! The one error type of trl-gen.

use trl_models::ModelError;

/// What can go wrong configuring or running generation.
#[derive(Debug, thiserror::Error)]
pub enum GenError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Core(#[from] trl_core::Error),
    #[error("invalid sampling config: {0}")]
    Config(String),
    #[error("mixture_coef must lie in [0, 1], got {0}")]
    MixtureCoef(f64),
    #[error("policy has {policy} vocabulary entries but the reference has {reference}; a geometric mixture needs one shared vocabulary")]
    VocabMismatch { policy: usize, reference: usize },
    #[error("no prompts given")]
    NoPrompts,
    #[error("prompt {0} has no tokens")]
    EmptyPrompt(usize),
    #[error("the model returned {found} logits per row, expected its vocabulary size {vocab}")]
    LogitsShape { found: usize, vocab: usize },
    #[error("non-finite logits (NaN, or every token masked) for prompt {row} at new token {step}")]
    NonFinite { row: usize, step: usize },
}

/// Result alias for trl-gen.
pub type Result<T, E = GenError> = std::result::Result<T, E>;
