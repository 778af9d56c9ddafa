//! What several subcommands share: resolving a model, its tokenizer and pad id, and deciding
//! what kind of model a checkpoint holds.

use std::path::{Path, PathBuf};

use trl_core::{HfConfig, Tokenizer};

pub type Error = Box<dyn std::error::Error>;
pub type B = trl_core::backend::Default;

/// A plain causal LM, a TRL value-head model, or a reward (sequence-classification) model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    CausalLm,
    ValueHead,
    Reward,
}

/// A resolved model directory with its config, tokenizer and kind.
pub struct ModelDir {
    pub dir: PathBuf,
    pub config: HfConfig,
    pub tokenizer: Tokenizer,
    pub kind: Kind,
}

impl ModelDir {
    pub fn open(id: &str) -> Result<Self, Error> {
        let dir = trl_core::source::resolve(id)?;
        let config = HfConfig::load(&dir)?;
        let tokenizer = Tokenizer::from_dir(&dir)?;
        let kind = kind_of(&dir, &config)?;
        Ok(Self { dir, config, tokenizer, kind })
    }

    /// Pad id: the tokenizer's pad token, else `pad_token_id` in config.json, else EOS.
    pub fn pad_id(&self) -> Result<i64, Error> {
        self.tokenizer
            .pad_token
            .as_deref()
            .and_then(|t| self.tokenizer.token_to_id(t))
            .or_else(|| self.config.get("pad_token_id").and_then(|v| v.as_i64()))
            .or_else(|| self.tokenizer.eos_id())
            .ok_or_else(|| {
                format!(
                    "{}: no pad token (tokenizer_config.json) nor pad_token_id (config.json); set one",
                    self.dir.display()
                )
                .into()
            })
    }
}

/// Reward model if config.json names a `*ForSequenceClassification`; value-head model if the
/// weights carry `v_head.*` keys; otherwise a causal LM.
pub fn kind_of(dir: &Path, config: &HfConfig) -> Result<Kind, Error> {
    if trl_heads::seq_cls::is_seq_cls(config) {
        return Ok(Kind::Reward);
    }
    let files = trl_core::checkpoint::weight_files(dir)?;
    let has_v_head = if files.len() > 1 || files[0].extension().is_some_and(|e| e != "safetensors") {
        let index = dir.join(trl_core::checkpoint::SAFE_INDEX);
        match trl_core::checkpoint::read_index(&index) {
            Ok(map) => map.keys().any(|k| k.starts_with("v_head.")),
            Err(_) => trl_core::checkpoint::load_dir(dir)?.keys().any(|k| k.starts_with("v_head.")),
        }
    } else {
        safetensors_keys(&files[0])?.iter().any(|k| k.starts_with("v_head."))
    };
    Ok(if has_v_head { Kind::ValueHead } else { Kind::CausalLm })
}

/// The tensor names of a safetensors file, from its header only.
fn safetensors_keys(path: &Path) -> Result<Vec<String>, Error> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len)?;
    let n = u64::from_le_bytes(len);
    if n > 100_000_000 {
        return Err(format!("{}: safetensors header of {n} bytes is not plausible", path.display()).into());
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header)?;
    let json: serde_json::Value = serde_json::from_slice(&header)?;
    Ok(json.as_object().map(|o| o.keys().filter(|k| *k != "__metadata__").cloned().collect()).unwrap_or_default())
}

/// Reads texts from a JSON array of strings, or an object with a `texts` array.
pub fn read_texts(path: &Path) -> Result<Vec<String>, Error> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: invalid JSON: {e}", path.display()))?;
    let list = match &value {
        serde_json::Value::Array(a) => a,
        serde_json::Value::Object(o) => o
            .get("texts")
            .and_then(|t| t.as_array())
            .ok_or_else(|| format!("{}: expected a JSON array of strings or {{\"texts\": [...]}}", path.display()))?,
        _ => return Err(format!("{}: expected a JSON array of strings or {{\"texts\": [...]}}", path.display()).into()),
    };
    let texts = list
        .iter()
        .enumerate()
        .map(|(i, v)| {
            v.as_str().map(String::from).ok_or_else(|| format!("{}: item {i} is not a string", path.display()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if texts.is_empty() {
        return Err(format!("{}: no texts to run", path.display()).into());
    }
    Ok(texts)
}
