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

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use regex::Regex;
use serde_json::{json, Map, Value};

use crate::atomic::write_json_atomic;
use crate::checkpoint::{load_file, save_safetensors};
use crate::error::{io_err, Error, Result};
use crate::state_dict::StateDict;

pub const ADAPTER_CONFIG: &str = "adapter_config.json";
pub const ADAPTER_SAFETENSORS: &str = "adapter_model.safetensors";
pub const ADAPTER_BIN: &str = "adapter_model.bin";
/// The prefix of every key in an adapter file (`PeftModel.base_model.model`).
pub const KEY_PREFIX: &str = "base_model.model.";
/// The largest rank a config may give (`r`, `rank_pattern`): beyond any hidden size, so that a
/// corrupt config cannot make a new adapter allocate without bound.
pub const MAX_RANK: usize = 1 << 16;

/// Which modules an adapter wraps (`target_modules`).
#[derive(Debug, Clone, PartialEq)]
pub enum TargetModules {
    /// A module matches when its name equals an entry or ends with `.<entry>`.
    Names(Vec<String>),
    /// A module matches when the whole name matches the (Python-syntax) regex.
    Regex(String),
    /// PEFT's `"all-linear"`: every projection except the output layer.
    AllLinear,
}

/// How fresh adapter weights are drawn (`init_lora_weights`); loading ignores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoraInit {
    /// `true`: A kaiming-uniform (as `nn.Linear`), B zero, so a new adapter changes nothing.
    Default,
    /// `"gaussian"`: A ~ N(0, 1/r), B zero.
    Gaussian,
    /// `false`: A and B both kaiming-uniform (a random, non-identity adapter; for tests).
    Random,
}

/// The LoRA fields of `adapter_config.json` that trl-rs interprets. Every other field of a
/// loaded file is kept in `raw` and written back by [`write_adapter`].
#[derive(Debug, Clone, PartialEq)]
pub struct LoraConfig {
    /// `CAUSAL_LM`, `SEQ_CLS`, … (informational: it tells PEFT which wrapper to build).
    pub task_type: Option<String>,
    pub base_model_name_or_path: Option<String>,
    pub revision: Option<String>,
    pub r: usize,
    pub lora_alpha: f64,
    pub lora_dropout: f64,
    pub target_modules: TargetModules,
    pub exclude_modules: Option<TargetModules>,
    /// Modules trained and saved whole (`score`, `v_head`, `classifier`).
    pub modules_to_save: Vec<String>,
    /// PEFT's flag for weights stored `[in, out]` (GPT-2's Conv1D, where PEFT forces it on).
    /// It changes nothing in trl-rs, which holds every projection weight `[in, out]`.
    pub fan_in_fan_out: bool,
    /// Scale `alpha / sqrt(r)` instead of `alpha / r`.
    pub use_rslora: bool,
    /// Per-module rank / alpha: key regex `K` matches a module name `N` when `N` fully matches `(.*\.)?(K)`.
    pub rank_pattern: BTreeMap<String, usize>,
    pub alpha_pattern: BTreeMap<String, f64>,
    /// Only these layer indices (list form of `target_modules` only, as PEFT).
    pub layers_to_transform: Option<Vec<usize>>,
    /// Names of the layer list (`layers`, `h`); empty: the first numbered path segment.
    pub layers_pattern: Vec<String>,
    pub init: LoraInit,
    /// The file as read (empty for a config built in code).
    pub raw: Map<String, Value>,
}

impl LoraConfig {
    /// A config for a new adapter: rank `r`, scale `alpha / r`, no dropout, B initialised to zero.
    pub fn new(r: usize, lora_alpha: f64, target_modules: TargetModules) -> Self {
        Self {
            task_type: None,
            base_model_name_or_path: None,
            revision: None,
            r,
            lora_alpha,
            lora_dropout: 0.0,
            target_modules,
            exclude_modules: None,
            modules_to_save: Vec::new(),
            fan_in_fan_out: false,
            use_rslora: false,
            rank_pattern: BTreeMap::new(),
            alpha_pattern: BTreeMap::new(),
            layers_to_transform: None,
            layers_pattern: Vec::new(),
            init: LoraInit::Default,
            raw: Map::new(),
        }
    }

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
        let bad = |reason: String| Error::Config { path: path.to_path_buf(), reason };
        let Value::Object(raw) = value else { return Err(bad("top level is not a JSON object".into())) };
        let get = |k: &str| raw.get(k).filter(|v| !v.is_null());
        let peft_type = get("peft_type").and_then(Value::as_str).unwrap_or("<missing>");
        if peft_type != "LORA" {
            return Err(bad(format!(
                "peft_type `{peft_type}` is not supported: trl-rs loads LoRA adapters only (peft_type \"LORA\")"
            )));
        }
        for (key, what) in
            [("use_dora", "DoRA (weight-decomposed LoRA)"), ("lora_bias", "LoRA bias terms"), ("use_qalora", "QALoRA")]
        {
            if get(key).and_then(Value::as_bool) == Some(true) {
                return Err(bad(format!("`{key}: true` ({what}) is not supported; only plain LoRA adapters are")));
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
            if let Some(v) = get(key).filter(|v| {
                !matches!(v, Value::Array(a) if a.is_empty()) && !matches!(v, Value::Object(o) if o.is_empty())
            }) {
                return Err(bad(format!("`{key}` is set ({v}); this LoRA option is not supported")));
            }
        }
        let bias = get("bias").and_then(Value::as_str).unwrap_or("none");
        if bias != "none" {
            return Err(bad(format!(
                "`bias: \"{bias}\"` is not supported; only \"none\" (the adapter trains no biases)"
            )));
        }
        let init = match get("init_lora_weights") {
            None | Some(Value::Bool(true)) => LoraInit::Default,
            Some(Value::Bool(false)) => LoraInit::Random,
            Some(Value::String(s)) if s == "gaussian" => LoraInit::Gaussian,
            Some(Value::String(s)) if ["pissa", "olora", "corda", "loftq", "lora_ga"].iter().any(|p| s.to_lowercase().starts_with(p)) => {
                return Err(bad(format!(
                    "`init_lora_weights: \"{s}\"`: this initialisation rewrites the base weights when the adapter is loaded; \
                     convert the adapter to plain LoRA first (PEFT: save_pretrained(..., path_initial_model_for_weight_conversion=...))"
                )))
            }
            Some(_) => LoraInit::Default,
        };
        let num = |k: &str, default: f64| -> Result<f64> {
            match get(k) {
                None => Ok(default),
                Some(v) => v.as_f64().ok_or_else(|| bad(format!("`{k}` must be a number, found {v}"))),
            }
        };
        let r = num("r", 8.0)?;
        if r < 1.0 || r.fract() != 0.0 || r > MAX_RANK as f64 {
            return Err(bad(format!("`r` must be a positive integer of at most {MAX_RANK}, found {r}")));
        }
        let lora_dropout = num("lora_dropout", 0.0)?;
        if !(0.0..=1.0).contains(&lora_dropout) {
            return Err(bad(format!("`lora_dropout` must be a probability in [0, 1], found {lora_dropout}")));
        }
        let targets = |k: &str| -> Result<Option<TargetModules>> {
            Ok(match get(k) {
                None => None,
                Some(Value::String(s)) if s == "all-linear" => Some(TargetModules::AllLinear),
                Some(Value::String(s)) => Some(TargetModules::Regex(s.clone())),
                Some(Value::Array(a)) => {
                    Some(TargetModules::Names(strings(a).ok_or_else(|| bad(format!("`{k}` must list strings")))?))
                }
                Some(v) => {
                    return Err(bad(format!("`{k}` must be a list of module names or a regex string, found {v}")))
                }
            })
        };
        let target_modules = targets("target_modules")?.ok_or_else(|| {
            bad("`target_modules` is missing; trl-rs does not guess PEFT's per-architecture defaults, list the modules".into())
        })?;
        let list = |k: &str| -> Result<Vec<String>> {
            match get(k) {
                None => Ok(Vec::new()),
                Some(Value::String(s)) => Ok(vec![s.clone()]),
                Some(Value::Array(a)) => strings(a).ok_or_else(|| bad(format!("`{k}` must list strings"))),
                Some(v) => Err(bad(format!("`{k}` must be a list of strings, found {v}"))),
            }
        };
        let mut modules_to_save = list("modules_to_save")?;
        let mut seen = std::collections::HashSet::new();
        modules_to_save.retain(|m| seen.insert(m.clone()));
        let pattern = |k: &str| -> Result<BTreeMap<String, f64>> {
            match get(k) {
                None => Ok(BTreeMap::new()),
                Some(Value::Object(o)) => o
                    .iter()
                    .map(|(key, v)| {
                        v.as_f64().map(|x| (key.clone(), x)).ok_or_else(|| bad(format!("`{k}.{key}` must be a number")))
                    })
                    .collect(),
                Some(v) => Err(bad(format!("`{k}` must be an object, found {v}"))),
            }
        };
        let rank_pattern = pattern("rank_pattern")?
            .into_iter()
            .map(|(k, v)| {
                if v >= 1.0 && v.fract() == 0.0 && v <= MAX_RANK as f64 {
                    Ok((k, v as usize))
                } else {
                    Err(bad(format!("rank_pattern `{k}`: rank {v} is not a positive integer of at most {MAX_RANK}")))
                }
            })
            .collect::<Result<_>>()?;
        let layers_to_transform = match get("layers_to_transform") {
            None => None,
            Some(Value::Number(n)) => Some(vec![n
                .as_u64()
                .ok_or_else(|| bad("`layers_to_transform` must be a layer index".into()))?
                as usize]),
            Some(Value::Array(a)) if a.is_empty() => None,
            Some(Value::Array(a)) => Some(
                a.iter()
                    .map(|v| v.as_u64().map(|x| x as usize))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| bad("`layers_to_transform` must list layer indices".into()))?,
            ),
            Some(v) => return Err(bad(format!("`layers_to_transform` must be an index or a list, found {v}"))),
        };
        let cfg = Self {
            task_type: get("task_type").and_then(Value::as_str).map(String::from),
            base_model_name_or_path: get("base_model_name_or_path").and_then(Value::as_str).map(String::from),
            revision: get("revision").and_then(Value::as_str).map(String::from),
            r: r as usize,
            lora_alpha: num("lora_alpha", 8.0)?,
            lora_dropout,
            target_modules,
            exclude_modules: targets("exclude_modules")?,
            modules_to_save,
            fan_in_fan_out: get("fan_in_fan_out").and_then(Value::as_bool).unwrap_or(false),
            use_rslora: get("use_rslora").and_then(Value::as_bool).unwrap_or(false),
            rank_pattern,
            alpha_pattern: pattern("alpha_pattern")?,
            layers_to_transform,
            layers_pattern: list("layers_pattern")?,
            init,
            raw: raw.clone(),
        };
        cfg.matcher().map_err(&bad)?;
        Ok(cfg)
    }

    /// The config as `adapter_config.json`: the fields read from a file, with every field
    /// trl-rs interprets set from `self`.
    pub fn to_json(&self) -> Value {
        let mut o = self.raw.clone();
        let targets = |t: &TargetModules| match t {
            TargetModules::Names(v) => json!(v),
            TargetModules::Regex(s) => json!(s),
            TargetModules::AllLinear => json!("all-linear"),
        };
        let int_or_float = |x: f64| if x.fract() == 0.0 && x.abs() < 1e15 { json!(x as i64) } else { json!(x) };
        let mut set = |k: &str, v: Value| {
            o.insert(k.to_string(), v);
        };
        set("peft_type", json!("LORA"));
        set("task_type", json!(self.task_type));
        set("base_model_name_or_path", json!(self.base_model_name_or_path));
        set("revision", json!(self.revision));
        set("inference_mode", json!(true));
        set("r", json!(self.r));
        set("lora_alpha", int_or_float(self.lora_alpha));
        set("lora_dropout", json!(self.lora_dropout));
        set("target_modules", targets(&self.target_modules));
        set("exclude_modules", self.exclude_modules.as_ref().map(targets).unwrap_or(Value::Null));
        set("modules_to_save", if self.modules_to_save.is_empty() { Value::Null } else { json!(self.modules_to_save) });
        set("fan_in_fan_out", json!(self.fan_in_fan_out));
        set("bias", json!("none"));
        set("use_rslora", json!(self.use_rslora));
        set("use_dora", json!(false));
        set("rank_pattern", json!(self.rank_pattern));
        set(
            "alpha_pattern",
            Value::Object(self.alpha_pattern.iter().map(|(k, v)| (k.clone(), int_or_float(*v))).collect()),
        );
        set("layers_to_transform", json!(self.layers_to_transform));
        set(
            "layers_pattern",
            match self.layers_pattern.as_slice() {
                [] => Value::Null,
                [one] => json!(one),
                many => json!(many),
            },
        );
        set(
            "init_lora_weights",
            match self.init {
                LoraInit::Default => json!(true),
                LoraInit::Gaussian => json!("gaussian"),
                LoraInit::Random => json!(false),
            },
        );
        Value::Object(o)
    }

    /// Rank and alpha of module `name` after `rank_pattern` / `alpha_pattern`.
    pub fn rank_and_alpha(&self, name: &str) -> (usize, f64) {
        let r = pattern_value(&self.rank_pattern, name).unwrap_or(self.r);
        let alpha = pattern_value(&self.alpha_pattern, name).unwrap_or(self.lora_alpha);
        (r, alpha)
    }

    /// The factor on `B(A(x))` for module `name`: `alpha / r`, or `alpha / sqrt(r)` with rslora.
    pub fn scaling(&self, name: &str) -> f64 {
        let (r, alpha) = self.rank_and_alpha(name);
        if self.use_rslora {
            alpha / (r as f64).sqrt()
        } else {
            alpha / r as f64
        }
    }

    /// A matcher for module names, following PEFT's `check_target_module_exists`.
    pub fn matcher(&self) -> Result<TargetMatcher<'_>, String> {
        let full = |re: &str, what: &str| {
            Regex::new(&format!("^(?:{re})$")).map_err(|e| format!("{what} `{re}` is not a regex trl-rs can use: {e}"))
        };
        let target = match &self.target_modules {
            TargetModules::Regex(re) => Some(full(re, "target_modules")?),
            _ => None,
        };
        let exclude = match &self.exclude_modules {
            Some(TargetModules::Regex(re)) => Some(full(re, "exclude_modules")?),
            _ => None,
        };
        let save = self
            .modules_to_save
            .iter()
            .map(|m| {
                Regex::new(&format!(r"^(?:.*\.)?{m}(?:\..*)?$")).map_err(|e| format!("modules_to_save `{m}`: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let layer = if self.layers_pattern.is_empty() {
            vec![Regex::new(r"^.*?\.[^.]*\.(\d+)\.").expect("valid regex")]
        } else {
            self.layers_pattern
                .iter()
                .map(|p| {
                    Regex::new(&format!(r"^(?:.*?\.)?{p}\.(\d+)\.")).map_err(|e| format!("layers_pattern `{p}`: {e}"))
                })
                .collect::<Result<Vec<_>, _>>()?
        };
        for key in self.rank_pattern.keys().chain(self.alpha_pattern.keys()) {
            pattern_regex(key).map_err(|e| format!("rank/alpha pattern `{key}`: {e}"))?;
        }
        Ok(TargetMatcher { config: self, target, exclude, save, layer })
    }
}

fn strings(a: &[Value]) -> Option<Vec<String>> {
    a.iter().map(|v| v.as_str().map(String::from)).collect()
}

/// PEFT's `get_pattern_key`: the first pattern `K` for which `name` matches `(.*\.)?(K)$` from the start.
fn pattern_regex(key: &str) -> Result<Regex, regex::Error> {
    Regex::new(&format!(r"^(?:.*\.)?(?:{key})$"))
}

fn pattern_value<T: Copy>(patterns: &BTreeMap<String, T>, name: &str) -> Option<T> {
    patterns.iter().find(|(k, _)| pattern_regex(k).is_ok_and(|re| re.is_match(name))).map(|(_, v)| *v)
}

/// Decides, module by module, whether an adapter wraps it (built by [`LoraConfig::matcher`]).
pub struct TargetMatcher<'a> {
    config: &'a LoraConfig,
    target: Option<Regex>,
    exclude: Option<Regex>,
    save: Vec<Regex>,
    layer: Vec<Regex>,
}

impl TargetMatcher<'_> {
    /// Whether module `name` (e.g. `model.layers.0.self_attn.q_proj`) is wrapped.
    /// `name` is always a projection; `all-linear` matches every one of them.
    pub fn matches(&self, name: &str) -> bool {
        let c = self.config;
        let in_list = |list: &[String]| list.iter().any(|t| name == t || name.ends_with(&format!(".{t}")));
        let excluded = match (&self.exclude, &c.exclude_modules) {
            (Some(re), _) => re.is_match(name),
            (None, Some(TargetModules::Names(list))) => in_list(list),
            _ => false,
        };
        if excluded || self.save.iter().any(|re| re.is_match(name)) {
            return false;
        }
        match &c.target_modules {
            TargetModules::AllLinear => true,
            TargetModules::Regex(_) => self.target.as_ref().is_some_and(|re| re.is_match(name)),
            TargetModules::Names(list) => {
                if !in_list(list) {
                    return false;
                }
                match &c.layers_to_transform {
                    None => true,
                    Some(layers) => self
                        .layer
                        .iter()
                        .find_map(|re| re.captures(name))
                        .and_then(|cap| cap[1].parse::<usize>().ok())
                        .is_some_and(|i| layers.contains(&i)),
                }
            }
        }
    }

    /// The list entries of `target_modules` that match none of `names` (always empty for a
    /// regex or `all-linear`).
    pub fn unmatched_targets<'n>(&self, names: impl Iterator<Item = &'n str> + Clone) -> Vec<String> {
        match &self.config.target_modules {
            TargetModules::Names(list) => list
                .iter()
                .filter(|t| !names.clone().any(|n| n == t.as_str() || n.ends_with(&format!(".{t}"))))
                .cloned()
                .collect(),
            _ => Vec::new(),
        }
    }
}

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

    fn cfg(v: Value) -> Result<LoraConfig> {
        LoraConfig::from_json(v, Path::new("adapter_config.json"))
    }

    #[test]
    fn targets_follow_peft() {
        let c = cfg(json!({"peft_type": "LORA", "target_modules": ["q_proj", "c_attn"], "layers_to_transform": [1]}))
            .unwrap();
        let m = c.matcher().unwrap();
        assert!(m.matches("model.layers.1.self_attn.q_proj"));
        assert!(!m.matches("model.layers.0.self_attn.q_proj"));
        assert!(m.matches("transformer.h.1.attn.c_attn"));
        assert!(!m.matches("model.layers.1.self_attn.qq_proj"));
        let c =
            cfg(json!({"peft_type": "LORA", "target_modules": r"model\.layers\.\d+\.self_attn\.(q|v)_proj"})).unwrap();
        let m = c.matcher().unwrap();
        assert!(m.matches("model.layers.3.self_attn.v_proj"));
        assert!(!m.matches("model.layers.3.self_attn.k_proj"));
        assert!(!m.matches("x.model.layers.3.self_attn.v_proj"), "regex is a full match");
        let c = cfg(json!({"peft_type": "LORA", "target_modules": ["q_proj", "score"], "modules_to_save": ["score"]}))
            .unwrap();
        assert!(!c.matcher().unwrap().matches("score"));
        assert_eq!(c.matcher().unwrap().unmatched_targets(["a.q_proj"].into_iter()), vec!["score".to_string()]);
    }

    #[test]
    fn patterns_and_scaling() {
        let c = cfg(json!({"peft_type": "LORA", "target_modules": "all-linear", "r": 4, "lora_alpha": 8,
            "rank_pattern": {"v_proj": 2, r"model\.layers\.1\.mlp\.down_proj": 6}, "alpha_pattern": {"o_proj": 4}}))
        .unwrap();
        assert_eq!(c.rank_and_alpha("model.layers.0.self_attn.v_proj"), (2, 8.0));
        assert_eq!(c.rank_and_alpha("model.layers.1.mlp.down_proj"), (6, 8.0));
        assert_eq!(c.rank_and_alpha("model.layers.0.mlp.down_proj"), (4, 8.0));
        assert_eq!(c.scaling("model.layers.0.self_attn.o_proj"), 1.0);
        let mut r = c.clone();
        r.use_rslora = true;
        assert_eq!(r.scaling("model.layers.0.self_attn.q_proj"), 4.0);
        let back = cfg(c.to_json()).unwrap();
        assert_eq!(back.rank_pattern, c.rank_pattern);
        assert_eq!(back.target_modules, TargetModules::AllLinear);
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
