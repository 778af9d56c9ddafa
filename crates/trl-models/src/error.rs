//! Errors of trl-models.

/// What can go wrong building or running a backbone.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Core(#[from] trl_core::Error),
    #[error("unsupported architecture `{found}`; supported model_type values: {supported}")]
    Unsupported { found: String, supported: String },
    #[error("bad config: {0}")]
    Config(String),
    #[error("sequence of {len} tokens is longer than the model's {max} positions; shorten or truncate the input")]
    TooLong { len: usize, max: usize },
    #[error(
        "the config asks for {params} parameters: {bytes} bytes ({needed}) as f32, more than the {available} of \
         memory available; check vocab_size, hidden_size, intermediate_size and the layer count in config.json"
    )]
    TooLarge { params: u128, bytes: u128, needed: String, available: String },
    #[error("invalid input: {0}")]
    Input(String),
    #[error("LoRA: {0}")]
    Adapter(String),
}

impl From<ModelError> for trl_core::Error {
    fn from(e: ModelError) -> Self {
        match e {
            ModelError::Core(c) => c,
            other => trl_core::Error::Invalid(other.to_string()),
        }
    }
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;
