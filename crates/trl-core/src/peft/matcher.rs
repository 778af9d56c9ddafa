//! PEFT's rules for which modules an adapter wraps (`check_target_module_exists`) and which
//! `rank_pattern` / `alpha_pattern` entry applies to a module (`get_pattern_key`).

use std::collections::BTreeMap;

use regex::Regex;

use super::{LoraConfig, TargetModules};

impl LoraConfig {
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

/// PEFT's `get_pattern_key`: the first pattern `K` for which `name` matches `(.*\.)?(K)$` from the start.
fn pattern_regex(key: &str) -> Result<Regex, regex::Error> {
    Regex::new(&format!(r"^(?:.*\.)?(?:{key})$"))
}

pub(super) fn pattern_value<T: Copy>(patterns: &BTreeMap<String, T>, name: &str) -> Option<T> {
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use serde_json::{json, Value};

    use super::*;
    use crate::error::Result;

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
}
