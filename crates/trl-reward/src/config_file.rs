//! Config files as TRL and transformers users have them: every field name TRL 0.28's
//! `RewardConfig` (with transformers 5's `TrainingArguments`) knows is accepted; the ones
//! without an effect here are reported in one warning line; any other name is an error.
//!
//! The fields and their declared defaults are `dataclasses.fields(trl.RewardConfig)` of
//! trl 0.28.0 / transformers 5.24.0 (a default computed later, such as `bf16`'s, is `null`).

use std::path::Path;

use serde_json::{Map, Value};

use crate::config::RewardConfig;
use crate::error::{Result, RewardError};

const TRL_DEFAULTS: &str = r#"{
    "output_dir": null,
    "per_device_train_batch_size": 8,
    "num_train_epochs": 3.0,
    "max_steps": -1,
    "learning_rate": 0.0001,
    "lr_scheduler_type": "linear",
    "lr_scheduler_kwargs": null,
    "warmup_steps": 0,
    "optim": "adamw_torch_fused",
    "optim_args": null,
    "weight_decay": 0.0,
    "adam_beta1": 0.9,
    "adam_beta2": 0.999,
    "adam_epsilon": 1e-08,
    "optim_target_modules": null,
    "gradient_accumulation_steps": 1,
    "average_tokens_across_devices": true,
    "max_grad_norm": 1.0,
    "label_smoothing_factor": 0.0,
    "bf16": null,
    "fp16": false,
    "bf16_full_eval": false,
    "fp16_full_eval": false,
    "tf32": null,
    "activation_checkpointing": null,
    "activation_checkpointing_kwargs": null,
    "gradient_checkpointing": true,
    "gradient_checkpointing_kwargs": null,
    "torch_compile": false,
    "torch_compile_backend": null,
    "torch_compile_mode": null,
    "use_liger_kernel": false,
    "liger_kernel_config": null,
    "use_cache": false,
    "neftune_noise_alpha": null,
    "torch_empty_cache_steps": null,
    "auto_find_batch_size": false,
    "logging_strategy": "steps",
    "logging_steps": 10,
    "logging_first_step": false,
    "log_on_each_node": true,
    "logging_nan_inf_filter": true,
    "include_num_input_tokens_seen": "no",
    "log_level": "passive",
    "log_level_replica": "warning",
    "disable_tqdm": null,
    "report_to": "none",
    "run_name": null,
    "project": "huggingface",
    "trackio_space_id": null,
    "trackio_bucket_id": null,
    "trackio_static_space_id": null,
    "eval_strategy": "no",
    "eval_steps": null,
    "eval_delay": 0,
    "per_device_eval_batch_size": 8,
    "prediction_loss_only": false,
    "eval_on_start": false,
    "eval_do_concat_batches": true,
    "eval_use_gather_object": false,
    "eval_accumulation_steps": null,
    "include_for_metrics": [],
    "batch_eval_metrics": false,
    "save_only_model": false,
    "save_strategy": "steps",
    "save_steps": 500,
    "save_on_each_node": false,
    "save_total_limit": null,
    "enable_jit_checkpoint": false,
    "push_to_hub": false,
    "hub_token": null,
    "hub_private_repo": null,
    "hub_model_id": null,
    "hub_strategy": "every_save",
    "hub_always_push": false,
    "hub_revision": null,
    "load_best_model_at_end": false,
    "metric_for_best_model": null,
    "greater_is_better": null,
    "ignore_data_skip": false,
    "restore_callback_states_from_checkpoint": false,
    "full_determinism": false,
    "seed": 42,
    "data_seed": null,
    "use_cpu": false,
    "accelerator_config": null,
    "parallelism_config": null,
    "dataloader_drop_last": false,
    "dataloader_num_workers": 0,
    "dataloader_pin_memory": true,
    "dataloader_persistent_workers": false,
    "dataloader_prefetch_factor": null,
    "dataloader_multiprocessing_context": null,
    "dataloader_in_order": true,
    "remove_unused_columns": true,
    "label_names": null,
    "train_sampling_strategy": "random",
    "length_column_name": "length",
    "ddp_find_unused_parameters": null,
    "ddp_bucket_cap_mb": null,
    "ddp_broadcast_buffers": null,
    "ddp_static_graph": null,
    "ddp_backend": null,
    "ddp_timeout": 1800,
    "fsdp": null,
    "fsdp_config": null,
    "deepspeed": null,
    "debug": "",
    "skip_memory_metrics": true,
    "do_train": false,
    "do_eval": false,
    "do_predict": false,
    "resume_from_checkpoint": null,
    "local_rank": -1,
    "model_init_kwargs": null,
    "chat_template_path": null,
    "disable_dropout": true,
    "dataset_num_proc": null,
    "eos_token": null,
    "pad_token": null,
    "max_length": 1024,
    "pad_to_multiple_of": null,
    "center_rewards_coefficient": null,
    "activation_offloading": false
}"#;

/// A config file (`.toml`, `.yaml`/`.yml` as TRL's `--config` takes, else JSON) read as
/// TRL/transformers write them, plus the names of the fields it sets that have no effect in
/// trl-rs (for one warning line).
pub fn read(path: &Path) -> Result<(RewardConfig, Vec<String>)> {
    let text = std::fs::read_to_string(path).map_err(|e| RewardError::io(path, e))?;
    let bad = |reason: String| RewardError::Data { path: path.to_path_buf(), reason };
    let value: Value = match path.extension().and_then(|e| e.to_str()) {
        Some("toml") => toml::from_str::<toml::Value>(&text)
            .map_err(|e| bad(e.to_string()))
            .and_then(|v| serde_json::to_value(v).map_err(|e| bad(e.to_string())))?,
        Some("yaml" | "yml") => yaml_to_json(&text).map_err(bad)?,
        _ => serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?,
    };
    let Value::Object(map) = value else {
        return Err(bad("expected a table of settings (TRL field names)".into()));
    };
    let (ours, ignored) = split(map).map_err(bad)?;
    let cfg: RewardConfig = serde_path_to_error::deserialize(Value::Object(ours))
        .map_err(|e| bad(format!("{}: {}", e.path(), e.inner())))?;
    cfg.validate()?;
    Ok((cfg, ignored))
}

/// Our fields (with transformers' "unset" spellings normalised) and the names of TRL fields
/// that are set to something other than TRL's default and have no effect here; an unknown
/// name is an error.
fn split(map: Map<String, Value>) -> std::result::Result<(Map<String, Value>, Vec<String>), String> {
    let trl: Map<String, Value> = serde_json::from_str(TRL_DEFAULTS).expect("the embedded TRL defaults are JSON");
    let known: Vec<String> = serde_json::to_value(RewardConfig::default())
        .ok()
        .and_then(|v| v.as_object().map(|m| m.keys().cloned().collect()))
        .unwrap_or_default();
    let (mut ours, mut ignored) = (Map::new(), Vec::new());
    for (k, v) in map {
        let unset = match k.as_str() {
            // transformers' and TRL's "unset" values
            "max_steps" => v.as_i64() == Some(-1),
            "eos_token" => v.is_null() || v.as_str() == Some("<EOS_TOKEN>"),
            _ => v.is_null(),
        };
        // transformers 5: a `warmup_steps` below 1 is a ratio of the training steps
        if k == "warmup_steps" && v.as_f64().is_some_and(|w| w > 0.0 && w < 1.0) {
            ours.insert("warmup_ratio".into(), v);
            continue;
        }
        // report_to: TensorBoard is ours; "all" means every integration, so TensorBoard here;
        // the others (wandb, mlflow, …) are not available and listed in the warning
        if k == "report_to" {
            let names: Vec<String> = match &v {
                Value::String(s) => vec![s.clone()],
                Value::Array(a) => a.iter().filter_map(|x| x.as_str().map(String::from)).collect(),
                _ => Vec::new(),
            };
            let mut ok = Vec::new();
            for n in names {
                match n.as_str() {
                    "tensorboard" | "all" => ok.push(Value::String("tensorboard".into())),
                    "none" => {}
                    other => ignored.push(format!(
                        "report_to={other} (not available: metrics go to metrics.jsonl, \
                                                   the plots and TensorBoard)"
                    )),
                }
            }
            ours.insert(k, Value::Array(ok));
            continue;
        }
        // transformers' `use_cpu: true` is our `device = "cpu"`
        if k == "use_cpu" && v.as_bool() == Some(true) {
            ours.entry("device").or_insert(Value::String("cpu".into()));
            continue;
        }
        if known.contains(&k) {
            if !unset {
                ours.insert(k, v);
            }
        } else if SCRIPT_AND_MODEL_ARGS.contains(&k.as_str()) {
            if !is_default_like(&v) {
                ignored
                    .push(format!("{k} (a TRL script / model argument: pass --model, --train-file, --lora-r instead)"));
            }
        } else if let Some(default) = trl.get(&k) {
            if &v != default && !(default.is_null() && is_default_like(&v)) {
                ignored.push(k);
            }
        } else {
            let close: Vec<&str> = known
                .iter()
                .map(String::as_str)
                .chain(trl.keys().map(String::as_str))
                .filter(|n| n.contains(k.as_str()) || k.contains(*n))
                .take(3)
                .collect();
            let hint = if close.is_empty() { String::new() } else { format!(" (did you mean {}?)", close.join(", ")) };
            return Err(format!(
                "unknown setting `{k}`{hint}: neither TRL's RewardConfig nor transformers' TrainingArguments has it"
            ));
        }
    }
    Ok((ours, ignored))
}

/// TRL's `ScriptArguments` and `ModelConfig` fields, which a TRL YAML `--config` mixes in with
/// the `RewardConfig` ones: known, but the command line says these here.
const SCRIPT_AND_MODEL_ARGS: &[&str] = &[
    "dataset_name",
    "dataset_config",
    "dataset_train_split",
    "dataset_test_split",
    "dataset_streaming",
    "gradient_checkpointing_use_reentrant",
    "ignore_bias_buffers",
    "model_name_or_path",
    "model_revision",
    "torch_dtype",
    "dtype",
    "trust_remote_code",
    "attn_implementation",
    "use_peft",
    "lora_r",
    "lora_alpha",
    "lora_dropout",
    "lora_target_modules",
    "lora_target_parameters",
    "lora_modules_to_save",
    "lora_task_type",
    "use_rslora",
    "use_dora",
    "load_in_8bit",
    "load_in_4bit",
    "bnb_4bit_quant_type",
    "use_bnb_nested_quant",
];

/// Nesting deeper than this in a YAML config is refused (a config is a flat table).
const YAML_MAX_DEPTH: usize = 64;

/// A YAML document (one mapping of settings) as JSON: YAML 1.2 core scalars (`1.0e-5`, `true`,
/// `~`), sequences and mappings with string keys; anchors and aliases are refused.
fn yaml_to_json(text: &str) -> std::result::Result<Value, String> {
    use yaml_rust2::{Yaml, YamlLoader};
    fn convert(y: &Yaml, depth: usize) -> std::result::Result<Value, String> {
        if depth > YAML_MAX_DEPTH {
            return Err(format!("nested deeper than {YAML_MAX_DEPTH} levels"));
        }
        Ok(match y {
            Yaml::Null => Value::Null,
            Yaml::Boolean(b) => Value::Bool(*b),
            Yaml::Integer(i) => Value::from(*i),
            Yaml::Real(r) => {
                let f: f64 = r.parse().map_err(|_| format!("`{r}` is not a number"))?;
                serde_json::Number::from_f64(f).map(Value::Number).ok_or_else(|| format!("`{r}` is not finite"))?
            }
            Yaml::String(s) => Value::String(s.clone()),
            Yaml::Array(a) => Value::Array(a.iter().map(|x| convert(x, depth + 1)).collect::<Result<_, _>>()?),
            Yaml::Hash(h) => {
                let mut m = Map::new();
                for (k, v) in h {
                    let key = match k {
                        Yaml::String(s) => s.clone(),
                        Yaml::Integer(i) => i.to_string(),
                        other => return Err(format!("mapping key {other:?} is not a string")),
                    };
                    m.insert(key, convert(v, depth + 1)?);
                }
                Value::Object(m)
            }
            Yaml::Alias(_) => return Err("YAML aliases are not supported in a config".into()),
            Yaml::BadValue => return Err("unreadable value".into()),
        })
    }
    // Aliases are refused before loading: the loader copies what they name, so nested ones
    // could grow a small file into any size ("billion laughs").
    let mut parser = yaml_rust2::parser::Parser::new_from_str(text);
    loop {
        match parser.next_token() {
            Ok((yaml_rust2::parser::Event::Alias(_), mark)) => {
                return Err(format!("line {}: YAML aliases are not supported in a config", mark.line()))
            }
            Ok((yaml_rust2::parser::Event::StreamEnd, _)) => break,
            Ok(_) => {}
            Err(e) => return Err(format!("YAML: {e}")),
        }
    }
    let docs = YamlLoader::load_from_str(text).map_err(|e| format!("YAML: {e}"))?;
    match docs.as_slice() {
        [doc] => convert(doc, 0),
        [] => Ok(Value::Object(Map::new())),
        _ => Err(format!("{} YAML documents; a config is one", docs.len())),
    }
}

/// Values that ask for nothing (false, null, empty): no need to warn about them.
fn is_default_like(v: &Value) -> bool {
    match v {
        Value::Bool(b) => !b,
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        Value::Number(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> std::result::Result<(Map<String, Value>, Vec<String>), String> {
        split(v.as_object().unwrap().clone())
    }

    #[test]
    fn yaml_reads_as_trl_writes_it() {
        let v = yaml_to_json(
            "# TRL --config\nlearning_rate: 1.0e-5\nnum_train_epochs: 1\nbf16: true\nreport_to:\n  - tensorboard\n\
             eval_steps: ~\nlr_scheduler_kwargs: {min_lr: 1e-6}\noutput_dir: runs/rm\n",
        )
        .unwrap();
        assert_eq!(
            v,
            json!({"learning_rate": 1e-5, "num_train_epochs": 1, "bf16": true, "report_to": ["tensorboard"],
                   "eval_steps": null, "lr_scheduler_kwargs": {"min_lr": 1e-6}, "output_dir": "runs/rm"})
        );
        assert!(yaml_to_json("a: &x 1\nb: *x\n").unwrap_err().contains("aliases"));
        let deep = format!("a: {}1{}\n", "[".repeat(100), "]".repeat(100));
        assert!(yaml_to_json(&deep).unwrap_err().contains("nested deeper"));
        assert!(yaml_to_json("a: [1, 2\n").is_err());
        let very_deep = format!("a: {}1{}\n", "[".repeat(200_000), "]".repeat(200_000));
        assert!(yaml_to_json(&very_deep).is_err());
    }

    #[test]
    fn trl_names_are_known_and_unknown_names_are_errors() {
        let (ours, ignored) = parse(json!({
            "learning_rate": 1e-5, "max_steps": -1, "bf16": true, "fp16": false, "report_to": ["tensorboard", "wandb"],
            "torch_compile": true, "push_to_hub": false, "eval_steps": null, "save_total_limit": 2,
            "gradient_checkpointing": true, "logging_strategy": "steps", "label_smoothing_factor": 0.0,
        }))
        .unwrap();
        assert_eq!(ours.get("learning_rate"), Some(&json!(1e-5)));
        assert!(!ours.contains_key("max_steps") && !ours.contains_key("eval_steps"));
        assert_eq!(ours.get("save_total_limit"), Some(&json!(2)));
        assert_eq!(ignored.len(), 2, "{ignored:?}");
        assert!(
            ignored.iter().any(|i| i == "torch_compile") && ignored.iter().any(|i| i.starts_with("report_to=wandb"))
        );
        // mixed precision and checkpointing are honoured
        assert_eq!(ours.get("bf16"), Some(&json!(true)));
        assert_eq!(ours.get("gradient_checkpointing"), Some(&json!(true)));
        assert_eq!(ours.get("report_to"), Some(&json!(["tensorboard"])));
        let err = parse(json!({"learning_rat": 1e-5})).unwrap_err();
        let (_, ignored) = parse(json!({"model_name_or_path": "Qwen/Qwen2-0.5B", "use_peft": true})).unwrap();
        assert_eq!(ignored.len(), 2, "{ignored:?}");
        assert!(err.contains("`learning_rat`") && err.contains("learning_rate"), "{err}");
        // our extensions are not TRL names, so nothing is both
        let trl: Map<String, Value> = serde_json::from_str(TRL_DEFAULTS).unwrap();
        assert!(trl.len() > 100 && trl.contains_key("gradient_checkpointing"));
        // `--device` in a file; transformers' `use_cpu: true` is `cpu`, an explicit device wins
        let (ours, _) = parse(json!({"use_cpu": true})).unwrap();
        assert_eq!(ours.get("device"), Some(&json!("cpu")));
        let (ours, _) = parse(json!({"device": "cuda:1", "use_cpu": false})).unwrap();
        assert_eq!(ours.get("device"), Some(&json!("cuda:1")));
        for ours_only in ["shuffle", "skip_bad_rows", "num_print_samples", "eval_split", "lora", "device"] {
            assert!(!trl.contains_key(ours_only), "{ours_only} is ours");
        }
    }
}
