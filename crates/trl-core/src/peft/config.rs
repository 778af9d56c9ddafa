//! The LoRA settings trl-rs interprets ([`LoraConfig`], [`TargetModules`], [`LoraInit`]),
//! written back as `adapter_config.json`, and the rank and scale they give each module.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use super::matcher::pattern_value;

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
/// loaded file is kept in `raw` and written back by [`write_adapter`](super::write_adapter).
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
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::error::Result;

    fn cfg(v: Value) -> Result<LoraConfig> {
        LoraConfig::from_json(v, Path::new("adapter_config.json"))
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
}
