//! PEFT LoRA adapters on disk: `adapter_config.json` and `adapter_model.safetensors`
//! (read-only: legacy `adapter_model.bin`), and PEFT's rules for which modules an adapter
//! targets and with what rank and scale.
//!
//! A file key is `base_model.model.<module>.lora_A.weight` (`[r, in]`) or `….lora_B.weight`
//! (`[out, r]`), where `<module>` is the Hugging Face module path of a projection
//! (`model.layers.0.self_attn.q_proj`). Whole tensors of `modules_to_save` (a reward model's
//! `score`) are stored as `base_model.model.score.weight`. PEFT's in-memory names carry the
//! adapter name (`lora_A.default.weight`, `score.modules_to_save.default.weight`); saved files
//! never do. How a model holds the tensors is the model crate's business; this module only
//! knows files, configs and module names.
//!
//! This file holds the file names and keys and reads and writes adapter directories;
//! `config` the settings, `parse` reading them from JSON, `matcher` the module rules.

mod config;
mod matcher;
mod parse;

use std::path::{Path, PathBuf};

use crate::atomic::write_json_atomic;
use crate::checkpoint::{load_file, save_safetensors};
use crate::error::{io_err, Error, Result};
use crate::state_dict::StateDict;

pub use config::{LoraConfig, LoraInit, TargetModules};
pub use matcher::TargetMatcher;

pub const ADAPTER_CONFIG: &str = "adapter_config.json";
pub const ADAPTER_SAFETENSORS: &str = "adapter_model.safetensors";
pub const ADAPTER_BIN: &str = "adapter_model.bin";
/// The prefix of every key in an adapter file (`PeftModel.base_model.model`).
pub const KEY_PREFIX: &str = "base_model.model.";
/// The largest rank a config may give (`r`, `rank_pattern`): beyond any hidden size, so that a
/// corrupt config cannot make a new adapter allocate without bound.
pub const MAX_RANK: usize = 1 << 16;

/// What a tensor of an adapter file is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdapterKey {
    /// `lora_A` (`a == true`, `[r, in]`) or `lora_B` (`[out, r]`) of module `module`.
    Lora { module: String, a: bool },
    /// A whole tensor (of `modules_to_save`), by its model key, e.g. `score.weight`.
    Full(String),
}

/// Classifies a file key (`base_model.model.…`); `None` if the prefix is missing.
pub fn parse_key(key: &str) -> Option<AdapterKey> {
    let rest = key.strip_prefix(KEY_PREFIX)?;
    for (suffix, a) in [(".lora_A.weight", true), (".lora_B.weight", false)] {
        if let Some(module) = rest.strip_suffix(suffix) {
            return Some(AdapterKey::Lora { module: module.to_string(), a });
        }
    }
    Some(AdapterKey::Full(rest.to_string()))
}

/// The file key of `lora_A` / `lora_B` of `module`.
pub fn lora_key(module: &str, a: bool) -> String {
    format!("{KEY_PREFIX}{module}.lora_{}.weight", if a { 'A' } else { 'B' })
}

/// Reads an adapter directory: its config and its tensors (`adapter_model.safetensors`,
/// else the legacy `adapter_model.bin`).
pub fn read_adapter(dir: &Path) -> Result<(LoraConfig, StateDict)> {
    let config = LoraConfig::load(dir)?;
    let weights = [ADAPTER_SAFETENSORS, ADAPTER_BIN].iter().map(|f| dir.join(f)).find(|p| p.is_file());
    let Some(weights) = weights else {
        return Err(Error::ModelNotFound {
            id: dir.display().to_string(),
            tried: vec![dir.join(ADAPTER_SAFETENSORS), dir.join(ADAPTER_BIN)],
        });
    };
    let sd = load_file(&weights)?;
    if let Some(k) = sd.keys().find(|k| !k.starts_with(KEY_PREFIX)) {
        return Err(Error::Config {
            path: weights,
            reason: format!(
                "key `{k}` lacks the `{KEY_PREFIX}` prefix every PEFT adapter key has; is this an adapter file?"
            ),
        });
    }
    Ok((config, sd))
}

/// Writes `adapter_model.safetensors` (keys as stored in `sd`, normally with [`KEY_PREFIX`])
/// and `adapter_config.json` into `dir`, each atomically; a stale `adapter_model.bin` is removed
/// so that the directory holds one adapter only.
pub fn write_adapter(dir: &Path, config: &LoraConfig, sd: &StateDict) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    save_safetensors(sd, &dir.join(ADAPTER_SAFETENSORS))?;
    write_json_atomic(&dir.join(ADAPTER_CONFIG), &config.to_json())?;
    let stale = dir.join(ADAPTER_BIN);
    if stale.is_file() {
        std::fs::remove_file(&stale).map_err(io_err(&stale))?;
    }
    Ok(())
}

/// Whether `dir` holds an adapter (`adapter_config.json`).
pub fn is_adapter_dir(dir: &Path) -> bool {
    dir.join(ADAPTER_CONFIG).is_file()
}

/// The base model directory for the adapter in `dir`: `base` if given, else [`resolve_base`]
/// of its `adapter_config.json`.
pub fn base_of(dir: &Path, base: Option<&Path>) -> Result<PathBuf> {
    match base {
        Some(b) => Ok(b.to_path_buf()),
        None => resolve_base(dir, &LoraConfig::load(dir)?),
    }
}

/// The base model directory of an adapter: `base_model_name_or_path` taken relative to the
/// adapter directory when that directory exists, else as a path or hub id (with `revision`).
pub fn resolve_base(adapter_dir: &Path, config: &LoraConfig) -> Result<PathBuf> {
    let Some(name) = config.base_model_name_or_path.as_deref().filter(|s| !s.is_empty()) else {
        return Err(Error::Config {
            path: adapter_dir.join(ADAPTER_CONFIG),
            reason: "no `base_model_name_or_path`; pass the base model explicitly".into(),
        });
    };
    let relative = adapter_dir.join(name);
    if Path::new(name).is_relative() && relative.is_dir() {
        return Ok(relative);
    }
    match &config.revision {
        Some(rev) if crate::source::is_hub_id(name) && !name.contains('@') => {
            crate::source::resolve(&format!("{name}@{rev}"))
        }
        _ => crate::source::resolve(name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        assert_eq!(
            parse_key("base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"),
            Some(AdapterKey::Lora { module: "model.layers.0.self_attn.q_proj".into(), a: false })
        );
        assert_eq!(parse_key("base_model.model.score.weight"), Some(AdapterKey::Full("score.weight".into())));
        assert_eq!(parse_key("score.weight"), None);
        assert_eq!(lora_key("a.b", true), "base_model.model.a.b.lora_A.weight");
    }
}
