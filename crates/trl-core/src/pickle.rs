//! Legacy PyTorch `.bin` checkpoints (zip + pickle), read-only.

use std::path::Path;

use crate::error::{Error, Result};
use crate::state_dict::StateDict;

/// Reads a `torch.save`d state dict.
pub fn load_bin(path: &Path) -> Result<StateDict> {
    Err(Error::Pickle { path: path.to_path_buf(), reason: "not implemented yet".into() })
}
