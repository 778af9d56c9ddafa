//! Reading `adapter_config.json`: each group of fields parsed and validated by a function of
//! its own, options trl-rs cannot honour refused by name.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use serde_json::{Map, Value};

use super::{LoraConfig, LoraInit, TargetModules, ADAPTER_CONFIG, MAX_RANK};
use crate::error::{io_err, Error, Result};

impl LoraConfig {
    /// Reads `dir/adapter_config.json`.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(ADAPTER_CONFIG);
        let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
        let value: Value =
            serde_json::from_str(&text).map_err(|e| Error::Json { path: path.clone(), reason: e.to_string() })?;
        Self::from_json(value, &path)
    }

    /// Parses and validates a config object; `path` is only used in errors. Options trl-rs
    /// cannot honour (DoRA, other PEFT methods, LoRA biases, …) are errors that name them.
    pub fn from_json(value: Value, path: &Path) -> Result<Self> {
        let Value::Object(raw) = value else {
            return Err(Error::Config { path: path.to_path_buf(), reason: "top level is not a JSON object".into() });
        };
        let f = Fields { raw: &raw, path };
        check_supported(&f)?;
        let init = init(&f)?;
        let r = rank(&f)?;
        let lora_dropout = dropout(&f)?;
        let target_modules = f.targets("target_modules")?.ok_or_else(|| {
            f.bad(
                "`target_modules` is missing; trl-rs does not guess PEFT's per-architecture defaults, list the modules"
                    .into(),
            )
        })?;
        let modules_to_save = modules_to_save(&f)?;
        let rank_pattern = rank_pattern(&f)?;
        let layers_to_transform = layers_to_transform(&f)?;
        let cfg = Self {
            task_type: f.string("task_type"),
            base_model_name_or_path: f.string("base_model_name_or_path"),
            revision: f.string("revision"),
            r,
            lora_alpha: f.num("lora_alpha", 8.0)?,
            lora_dropout,
            target_modules,
            exclude_modules: f.targets("exclude_modules")?,
            modules_to_save,
            fan_in_fan_out: f.flag("fan_in_fan_out"),
            use_rslora: f.flag("use_rslora"),
            rank_pattern,
            alpha_pattern: f.pattern("alpha_pattern")?,
            layers_to_transform,
            layers_pattern: f.list("layers_pattern")?,
            init,
            raw: raw.clone(),
        };
        cfg.matcher().map_err(|reason| f.bad(reason))?;
        Ok(cfg)
    }
}

/// The fields of one config object, and where it came from (for errors).
struct Fields<'a> {
    raw: &'a Map<String, Value>,
    path: &'a Path,
}

impl Fields<'_> {
    fn bad(&self, reason: String) -> Error {
        Error::Config { path: self.path.to_path_buf(), reason }
    }

    /// Field `k`, a null counting as absent.
    fn get(&self, k: &str) -> Option<&Value> {
        self.raw.get(k).filter(|v| !v.is_null())
    }

    fn string(&self, k: &str) -> Option<String> {
        self.get(k).and_then(Value::as_str).map(String::from)
    }

    fn flag(&self, k: &str) -> bool {
        self.get(k).and_then(Value::as_bool).unwrap_or(false)
    }

    fn num(&self, k: &str, default: f64) -> Result<f64> {
        match self.get(k) {
            None => Ok(default),
            Some(v) => v.as_f64().ok_or_else(|| self.bad(format!("`{k}` must be a number, found {v}"))),
        }
    }

    /// `target_modules` / `exclude_modules`: a list of names, a regex, or `"all-linear"`.
    fn targets(&self, k: &str) -> Result<Option<TargetModules>> {
        Ok(match self.get(k) {
            None => None,
            Some(Value::String(s)) if s == "all-linear" => Some(TargetModules::AllLinear),
            Some(Value::String(s)) => Some(TargetModules::Regex(s.clone())),
            Some(Value::Array(a)) => {
                Some(TargetModules::Names(strings(a).ok_or_else(|| self.bad(format!("`{k}` must list strings")))?))
            }
            Some(v) => {
                return Err(self.bad(format!("`{k}` must be a list of module names or a regex string, found {v}")))
            }
        })
    }

    /// A list of strings, a single string standing for a list of one.
    fn list(&self, k: &str) -> Result<Vec<String>> {
        match self.get(k) {
            None => Ok(Vec::new()),
            Some(Value::String(s)) => Ok(vec![s.clone()]),
            Some(Value::Array(a)) => strings(a).ok_or_else(|| self.bad(format!("`{k}` must list strings"))),
            Some(v) => Err(self.bad(format!("`{k}` must be a list of strings, found {v}"))),
        }
    }

    /// `rank_pattern` / `alpha_pattern`: an object of numbers.
    fn pattern(&self, k: &str) -> Result<BTreeMap<String, f64>> {
        match self.get(k) {
            None => Ok(BTreeMap::new()),
            Some(Value::Object(o)) => o
                .iter()
                .map(|(key, v)| {
                    v.as_f64()
                        .map(|x| (key.clone(), x))
                        .ok_or_else(|| self.bad(format!("`{k}.{key}` must be a number")))
                })
                .collect(),
            Some(v) => Err(self.bad(format!("`{k}` must be an object, found {v}"))),
        }
    }
}

fn strings(a: &[Value]) -> Option<Vec<String>> {
    a.iter().map(|v| v.as_str().map(String::from)).collect()
}

/// Refuses other PEFT methods and the LoRA variants trl-rs does not implement.
fn check_supported(f: &Fields<'_>) -> Result<()> {
    let peft_type = f.get("peft_type").and_then(Value::as_str).unwrap_or("<missing>");
    if peft_type != "LORA" {
        return Err(f.bad(format!(
            "peft_type `{peft_type}` is not supported: trl-rs loads LoRA adapters only (peft_type \"LORA\")"
        )));
    }
    for (key, what) in
        [("use_dora", "DoRA (weight-decomposed LoRA)"), ("lora_bias", "LoRA bias terms"), ("use_qalora", "QALoRA")]
    {
        if f.get(key).and_then(Value::as_bool) == Some(true) {
            return Err(f.bad(format!("`{key}: true` ({what}) is not supported; only plain LoRA adapters are")));
        }
    }
    for key in [
        "layer_replication",
        "trainable_token_indices",
        "target_parameters",
        "alora_invocation_tokens",
        "arrow_config",
        "use_bdlora",
    ] {
        if let Some(v) = f
            .get(key)
            .filter(|v| !matches!(v, Value::Array(a) if a.is_empty()) && !matches!(v, Value::Object(o) if o.is_empty()))
        {
            return Err(f.bad(format!("`{key}` is set ({v}); this LoRA option is not supported")));
        }
    }
    let bias = f.get("bias").and_then(Value::as_str).unwrap_or("none");
    if bias != "none" {
        return Err(f.bad(format!("`bias: \"{bias}\"` is not supported; only \"none\" (the adapter trains no biases)")));
    }
    Ok(())
}

/// `init_lora_weights`; the initialisations that rewrite the base weights are refused.
fn init(f: &Fields<'_>) -> Result<LoraInit> {
    Ok(match f.get("init_lora_weights") {
        None | Some(Value::Bool(true)) => LoraInit::Default,
        Some(Value::Bool(false)) => LoraInit::Random,
        Some(Value::String(s)) if s == "gaussian" => LoraInit::Gaussian,
        Some(Value::String(s)) if ["pissa", "olora", "corda", "loftq", "lora_ga"].iter().any(|p| s.to_lowercase().starts_with(p)) => {
            return Err(f.bad(format!(
                "`init_lora_weights: \"{s}\"`: this initialisation rewrites the base weights when the adapter is loaded; \
                 convert the adapter to plain LoRA first (PEFT: save_pretrained(..., path_initial_model_for_weight_conversion=...))"
            )))
        }
        Some(_) => LoraInit::Default,
    })
}

/// `r`: a positive integer of at most [`MAX_RANK`].
fn rank(f: &Fields<'_>) -> Result<usize> {
    let r = f.num("r", 8.0)?;
    if r < 1.0 || r.fract() != 0.0 || r > MAX_RANK as f64 {
        return Err(f.bad(format!("`r` must be a positive integer of at most {MAX_RANK}, found {r}")));
    }
    Ok(r as usize)
}

/// `lora_dropout`: a probability.
fn dropout(f: &Fields<'_>) -> Result<f64> {
    let p = f.num("lora_dropout", 0.0)?;
    if !(0.0..=1.0).contains(&p) {
        return Err(f.bad(format!("`lora_dropout` must be a probability in [0, 1], found {p}")));
    }
    Ok(p)
}

/// `modules_to_save`, duplicates dropped (first kept).
fn modules_to_save(f: &Fields<'_>) -> Result<Vec<String>> {
    let mut modules = f.list("modules_to_save")?;
    let mut seen = HashSet::new();
    modules.retain(|m| seen.insert(m.clone()));
    Ok(modules)
}

/// `rank_pattern`: every rank a positive integer of at most [`MAX_RANK`].
fn rank_pattern(f: &Fields<'_>) -> Result<BTreeMap<String, usize>> {
    f.pattern("rank_pattern")?
        .into_iter()
        .map(|(k, v)| {
            if v >= 1.0 && v.fract() == 0.0 && v <= MAX_RANK as f64 {
                Ok((k, v as usize))
            } else {
                Err(f.bad(format!("rank_pattern `{k}`: rank {v} is not a positive integer of at most {MAX_RANK}")))
            }
        })
        .collect()
}

/// `layers_to_transform`: one layer index or a list of them (an empty list: every layer).
fn layers_to_transform(f: &Fields<'_>) -> Result<Option<Vec<usize>>> {
    Ok(match f.get("layers_to_transform") {
        None => None,
        Some(Value::Number(n)) => {
            Some(vec![n.as_u64().ok_or_else(|| f.bad("`layers_to_transform` must be a layer index".into()))? as usize])
        }
        Some(Value::Array(a)) if a.is_empty() => None,
        Some(Value::Array(a)) => Some(
            a.iter()
                .map(|v| v.as_u64().map(|x| x as usize))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| f.bad("`layers_to_transform` must list layer indices".into()))?,
        ),
        Some(v) => return Err(f.bad(format!("`layers_to_transform` must be an index or a list, found {v}"))),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn cfg(v: Value) -> Result<LoraConfig> {
        LoraConfig::from_json(v, Path::new("adapter_config.json"))
    }

    #[test]
    fn unsupported_options_are_named() {
        let err = |v: Value| cfg(v).unwrap_err().to_string();
        assert!(err(json!({"peft_type": "IA3", "target_modules": ["q"]})).contains("peft_type `IA3`"));
        assert!(err(json!({"peft_type": "LORA", "target_modules": ["q"], "use_dora": true})).contains("DoRA"));
        assert!(err(json!({"peft_type": "LORA", "target_modules": ["q"], "bias": "all"})).contains("bias"));
        assert!(err(json!({"peft_type": "LORA"})).contains("target_modules"));
        assert!(err(json!({"peft_type": "LORA", "target_modules": "(unclosed"})).contains("target_modules"));
        assert!(
            err(json!({"peft_type": "LORA", "target_modules": ["q"], "init_lora_weights": "pissa"})).contains("pissa")
        );
    }
}
