//! A Hugging Face tokenizer (`tokenizer.json`) with the special tokens and chat template of
//! `tokenizer_config.json`.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{io_err, Error, Result};

/// `tokenizers::Tokenizer` plus what `tokenizer_config.json` says about special tokens.
#[derive(Clone)]
pub struct Tokenizer {
    pub inner: tokenizers::Tokenizer,
    pub eos_token: Option<String>,
    pub pad_token: Option<String>,
    pub bos_token: Option<String>,
    pub chat_template: Option<String>,
    pub path: PathBuf,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer").field("path", &self.path).field("eos_token", &self.eos_token).finish()
    }
}

/// A special token in tokenizer_config.json: a string or `{"content": …}`.
fn token_str(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(String::from),
        _ => None,
    }
}

impl Tokenizer {
    /// Reads `dir/tokenizer.json` and, if present, `dir/tokenizer_config.json`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        if !path.is_file() {
            return Err(Error::Tokenizer {
                path,
                reason: "no tokenizer.json (only fast tokenizers are supported)".into(),
            });
        }
        let inner = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| Error::Tokenizer { path: path.clone(), reason: e.to_string() })?;
        let mut tok = Self::from_tokenizer(inner, path);
        let cfg_path = dir.join("tokenizer_config.json");
        if cfg_path.is_file() {
            let text = std::fs::read_to_string(&cfg_path).map_err(io_err(&cfg_path))?;
            let cfg: Value = serde_json::from_str(&text)
                .map_err(|e| Error::Json { path: cfg_path.clone(), reason: e.to_string() })?;
            tok.eos_token = token_str(cfg.get("eos_token"));
            tok.pad_token = token_str(cfg.get("pad_token"));
            tok.bos_token = token_str(cfg.get("bos_token"));
            tok.chat_template = match cfg.get("chat_template") {
                Some(Value::String(s)) => Some(s.clone()),
                Some(Value::Array(list)) => list
                    .iter()
                    .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                    .and_then(|t| t.get("template").and_then(Value::as_str))
                    .map(String::from),
                _ => None,
            };
        }
        let template = dir.join("chat_template.jinja");
        if tok.chat_template.is_none() && template.is_file() {
            tok.chat_template = Some(std::fs::read_to_string(&template).map_err(io_err(&template))?);
        }
        Ok(tok)
    }

    /// Wraps an in-memory tokenizer (no special tokens known).
    pub fn from_tokenizer(inner: tokenizers::Tokenizer, path: PathBuf) -> Self {
        Self { inner, eos_token: None, pad_token: None, bos_token: None, chat_template: None, path }
    }

    /// Token ids of `text`; `add_special_tokens` as transformers' default (`true`).
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<i64>> {
        let enc = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|e| Error::Tokenizer { path: self.path.clone(), reason: e.to_string() })?;
        Ok(enc.get_ids().iter().map(|&i| i as i64).collect())
    }

    /// Token ids of the pair `(first, second)` as `tokenizer(first, second)` encodes it: the
    /// post-processor's pair template (`[CLS] first [SEP] second [SEP]` for BERT-style
    /// tokenizers) when `add_special_tokens`, else the two texts' tokens in order.
    pub fn encode_pair(&self, first: &str, second: &str, add_special_tokens: bool) -> Result<Vec<i64>> {
        let enc = self
            .inner
            .encode((first, second), add_special_tokens)
            .map_err(|e| Error::Tokenizer { path: self.path.clone(), reason: e.to_string() })?;
        Ok(enc.get_ids().iter().map(|&i| i as i64).collect())
    }

    pub fn decode(&self, ids: &[i64], skip_special_tokens: bool) -> Result<String> {
        let ids: Vec<u32> = ids.iter().map(|&i| i as u32).collect();
        self.inner
            .decode(&ids, skip_special_tokens)
            .map_err(|e| Error::Tokenizer { path: self.path.clone(), reason: e.to_string() })
    }

    pub fn token_to_id(&self, token: &str) -> Option<i64> {
        self.inner.token_to_id(token).map(i64::from)
    }

    pub fn eos_id(&self) -> Option<i64> {
        self.eos_token.as_deref().and_then(|t| self.token_to_id(t))
    }

    /// The pad id: the pad token's, else the EOS's (as TRL does).
    pub fn pad_id(&self) -> Option<i64> {
        self.pad_token.as_deref().and_then(|t| self.token_to_id(t)).or_else(|| self.eos_id())
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Saves `tokenizer.json` and a minimal `tokenizer_config.json` into `dir` (atomically).
    pub fn save(&self, dir: &Path) -> Result<()> {
        let json = self
            .inner
            .to_string(false)
            .map_err(|e| Error::Tokenizer { path: self.path.clone(), reason: e.to_string() })?;
        crate::atomic::write_atomic(&dir.join("tokenizer.json"), json.as_bytes())?;
        let mut cfg = serde_json::Map::new();
        for (k, v) in [
            ("eos_token", &self.eos_token),
            ("pad_token", &self.pad_token),
            ("bos_token", &self.bos_token),
            ("chat_template", &self.chat_template),
        ] {
            if let Some(v) = v {
                cfg.insert(k.into(), Value::String(v.clone()));
            }
        }
        cfg.insert("tokenizer_class".into(), Value::String("PreTrainedTokenizerFast".into()));
        crate::atomic::write_json_atomic(&dir.join("tokenizer_config.json"), &cfg)
    }
}
