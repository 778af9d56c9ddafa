//! Errors of trl-heads.

/// What can go wrong building, loading or running a headed model.
#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    #[error(transparent)]
    Model(#[from] trl_models::ModelError),
    #[error(transparent)]
    Core(#[from] trl_core::Error),
    #[error("{path}: {reason}")]
    Config { path: String, reason: String },
    #[error("invalid input: {0}")]
    Input(String),
}

impl From<HeadError> for trl_core::Error {
    fn from(e: HeadError) -> Self {
        match e {
            HeadError::Core(c) => c,
            HeadError::Model(m) => m.into(),
            other => trl_core::Error::Invalid(other.to_string()),
        }
    }
}

pub type Result<T, E = HeadError> = std::result::Result<T, E>;
