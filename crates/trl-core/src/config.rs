//! `config.json`, kept as the JSON object it is so that unknown fields survive a save.
//!
//! Both transformers 4 (`torch_dtype`, top-level `rope_theta`, `rope_scaling`) and
//! transformers 5 (`dtype`, `rope_parameters`) spellings are understood.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::atomic::write_json_atomic;
use crate::error::{io_err, Error, Result};

pub const CONFIG_FILE: &str = "config.json";

/// A Hugging Face `config.json`: the raw object plus where it came from.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HfConfig {
    pub raw: Map<String, Value>,
    pub path: PathBuf,
}

impl HfConfig {
    /// Reads `dir/config.json`.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
        Self::parse_str(&text, path)
    }

    /// Parses config text; `path` is only used in errors.
    pub fn parse_str(text: &str, path: PathBuf) -> Result<Self> {
        match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(raw)) => Ok(Self { raw, path }),
            Ok(_) => Err(Error::Config { path, reason: "top level is not a JSON object".into() }),
            Err(e) => Err(Error::Json { path, reason: e.to_string() }),
        }
    }

    /// A config from an in-memory object (for models built from code).
    pub fn from_value(value: Value) -> Result<Self> {
        match value {
            Value::Object(raw) => Ok(Self { raw, path: PathBuf::from("<memory>") }),
            _ => Err(Error::Config { path: "<memory>".into(), reason: "not a JSON object".into() }),
        }
    }

    /// Writes `dir/config.json` atomically, unknown fields included.
    pub fn save(&self, dir: &Path) -> Result<()> {
        write_json_atomic(&dir.join(CONFIG_FILE), &self.raw)
    }

    /// A typed view (e.g. a model's config struct); a missing or ill-typed field names itself
    /// (`vocab_size: invalid value: integer `-1`, expected usize`).
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T> {
        serde_path_to_error::deserialize(Value::Object(self.raw.clone())).map_err(|e| {
            let field = e.path().to_string();
            let inner = e.into_inner().to_string();
            let reason = if field == "." { inner } else { format!("`{field}`: {inner}") };
            Error::Config { path: self.path.clone(), reason }
        })
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.raw.get(key)
    }

    pub fn set(&mut self, key: &str, value: impl Into<Value>) {
        self.raw.insert(key.to_string(), value.into());
    }

    pub fn get_usize(&self, key: &str) -> Option<usize> {
        self.raw.get(key).and_then(Value::as_u64).map(|v| v as usize)
    }

    pub fn get_f64(&self, key: &str) -> Option<f64> {
        self.raw.get(key).and_then(Value::as_f64)
    }

    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.raw.get(key).and_then(Value::as_str)
    }

    pub fn model_type(&self) -> Option<&str> {
        self.get_str("model_type")
    }

    pub fn architectures(&self) -> Vec<String> {
        self.raw
            .get("architectures")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|v| v.as_str().map(String::from)).collect())
            .unwrap_or_default()
    }

    /// The stored dtype name: `dtype` (transformers 5) or `torch_dtype` (transformers 4).
    pub fn dtype(&self) -> Option<&str> {
        self.get_str("dtype").or_else(|| self.get_str("torch_dtype"))
    }

    /// RoPE base: `rope_parameters.rope_theta` (transformers 5) or `rope_theta` (4).
    pub fn rope_theta(&self) -> Option<f64> {
        self.raw
            .get("rope_parameters")
            .and_then(|p| p.get("rope_theta"))
            .and_then(Value::as_f64)
            .or_else(|| self.get_f64("rope_theta"))
    }

    /// RoPE scaling parameters, whichever spelling holds them, when their type is not `default`.
    pub fn rope_scaling(&self) -> Option<&Map<String, Value>> {
        let obj = self
            .raw
            .get("rope_scaling")
            .and_then(Value::as_object)
            .or_else(|| self.raw.get("rope_parameters").and_then(Value::as_object))?;
        let kind = obj.get("rope_type").or_else(|| obj.get("type")).and_then(Value::as_str);
        match kind {
            None | Some("default") => None,
            Some(_) => Some(obj),
        }
    }

    /// The rope type named by the scaling parameters (`llama3`, `linear`, …), if any.
    pub fn rope_type(&self) -> Option<&str> {
        let s = self.rope_scaling()?;
        s.get("rope_type").or_else(|| s.get("type")).and_then(Value::as_str)
    }

    /// A required field, or a config error naming it.
    pub fn require_usize(&self, key: &str) -> Result<usize> {
        self.get_usize(key)
            .ok_or_else(|| Error::Config { path: self.path.clone(), reason: format!("missing or non-integer `{key}`") })
    }
}
