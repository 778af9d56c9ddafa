//! The one error type of trl-core. Every variant names the file, key or shape at fault.

use std::path::PathBuf;

/// Errors from checkpoint I/O, state dicts, configs and model sources.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a valid safetensors file ({reason}): the file is truncated or damaged")]
    Safetensors { path: PathBuf, reason: String },
    #[error("{path}: not a readable PyTorch .bin checkpoint ({reason})")]
    Pickle { path: PathBuf, reason: String },
    #[error("{path}: invalid JSON ({reason})")]
    Json { path: PathBuf, reason: String },
    #[error("{path}: bad config: {reason}")]
    Config { path: PathBuf, reason: String },
    #[error("{path}: tensor `{key}` has dtype {dtype}, which trl-rs cannot hold (supported: f32, f16, bf16, f64, i64, i32, bool)")]
    UnsupportedDtype { path: PathBuf, key: String, dtype: String },
    #[error("{index}: shard `{shard}` is listed in the index but missing; re-download the checkpoint")]
    MissingShard { index: PathBuf, shard: String },
    #[error("model `{id}` not found; tried: {}", tried.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    ModelNotFound { id: String, tried: Vec<PathBuf> },
    #[error("download of `{file}` from `{id}` failed: {reason} (set HF_HUB_OFFLINE=1 to use only the local cache)")]
    Download { id: String, file: String, reason: String },
    #[error("{0}")]
    Load(#[from] LoadReport),
    #[error("tensor `{key}`: expected shape {expected:?}, checkpoint has {found:?}")]
    ShapeMismatch { key: String, expected: Vec<usize>, found: Vec<usize> },
    #[error("tokenizer {path}: {reason}")]
    Tokenizer { path: PathBuf, reason: String },
    #[error("invalid input: {0}")]
    Invalid(String),
    #[error(
        "{dir} is in use by another trl-rs run (PID {pid}): one run writes to an output directory at a time; wait \
         for it to finish or choose another output directory"
    )]
    Locked { dir: PathBuf, pid: String },
}

/// Result alias for trl-core.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What a state-dict load found: keys the module wanted but the checkpoint lacks, keys the
/// checkpoint has that no parameter took, and shapes that disagree.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct LoadReport {
    pub missing: Vec<String>,
    pub unexpected: Vec<String>,
    pub mismatched: Vec<(String, Vec<usize>, Vec<usize>)>,
    /// Tensors that have the right shape but cannot be used as they are: a non-float dtype
    /// where a float parameter is expected, or NaN/inf values. `(key, what is wrong)`.
    pub unusable: Vec<(String, String)>,
}

impl LoadReport {
    /// True when every parameter was loaded and nothing was left over.
    pub fn is_clean(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.mismatched.is_empty() && self.unusable.is_empty()
    }

    /// Problems that make any load fail, strict or not: wrong shapes, dtypes or values.
    pub fn is_fatal(&self) -> bool {
        !self.mismatched.is_empty() || !self.unusable.is_empty()
    }

    /// Puts `prefix` in front of every key named (the report of a sub-module).
    pub fn prefixed(mut self, prefix: &str) -> Self {
        let fix = |k: &mut String| *k = format!("{prefix}{k}");
        self.missing.iter_mut().for_each(fix);
        self.unexpected.iter_mut().for_each(fix);
        self.mismatched.iter_mut().for_each(|m| fix(&mut m.0));
        self.unusable.iter_mut().for_each(|m| fix(&mut m.0));
        self
    }
}

impl std::fmt::Display for LoadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |v: &[String]| {
            let mut s = v.iter().take(8).cloned().collect::<Vec<_>>().join(", ");
            if v.len() > 8 {
                s.push_str(&format!(", … ({} in all)", v.len()));
            }
            s
        };
        write!(f, "state dict does not match the model:")?;
        if !self.missing.is_empty() {
            write!(f, " missing keys [{}];", list(&self.missing))?;
        }
        if !self.unexpected.is_empty() {
            write!(f, " unexpected keys [{}];", list(&self.unexpected))?;
        }
        for (k, want, got) in &self.mismatched {
            write!(f, " `{k}` expected shape {want:?}, checkpoint has {got:?};")?;
        }
        for (k, what) in &self.unusable {
            write!(f, " `{k}` {what};")?;
        }
        if self.unusable.is_empty() {
            write!(
                f,
                " check that config.json describes these weights (model_type, sizes, layer count, tie_word_embeddings)"
            )
        } else {
            write!(f, " the checkpoint file is damaged or was saved wrongly: re-save or re-download it")
        }
    }
}

impl std::error::Error for LoadReport {}

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { path, source }
}
