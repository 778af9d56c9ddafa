//! Where a model's files are: a local directory or the Hugging Face hub cache.

use std::path::PathBuf;

use crate::error::{Error, Result};

/// Resolves `model` (a directory, or `org/name[@revision]`) to a local directory.
pub fn resolve(model: &str) -> Result<PathBuf> {
    let p = PathBuf::from(model);
    if p.is_dir() {
        return Ok(p);
    }
    Err(Error::ModelNotFound { id: model.to_string(), tried: vec![p] })
}
