//! A config file as TRL 0.28 writes it (`RewardConfig.to_json_string()`: all 124 fields,
//! `tests/fixtures/make_config_fixtures.py`) trains unchanged with `cargo xtask train --config`,
//! and the settings that map are honoured: the cosine schedule, logging at the first step,
//! evaluation and checkpoints by steps, `save_total_limit`.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

#[test]
fn a_trl_config_file_trains_unchanged() {
    let (_tmp, out, warning) = trains_unchanged("reward_config.json");
    assert!(warning.contains("debug") && !warning.contains("gradient_checkpointing"), "{warning}");
    // TRL ran it with `use_cpu: true`: our `device = "cpu"`, recorded with the run
    assert!(!warning.contains("use_cpu"), "{warning}");
    let cfg: Value = serde_json::from_str(&std::fs::read_to_string(out.join("training_config.json")).unwrap()).unwrap();
    assert_eq!(cfg["device"], "cpu");
}

/// TRL's `--config` YAML, with its script and model arguments mixed in: the same run, plus the
/// TensorBoard event file it asks for.
#[test]
fn a_trl_yaml_config_trains_unchanged() {
    let (_tmp, out, warning) = trains_unchanged("reward_config.yaml");
    assert!(warning.contains("model_name_or_path") && warning.contains("dataset_name"), "{warning}");
    assert!(!warning.contains("use_peft"), "false asks for nothing: {warning}");
    let events = std::fs::read_dir(out.join("runs")).unwrap().count();
    assert_eq!(events, 1, "report_to: [tensorboard] writes one event file");
}

/// Trains with fixture config `name` (its OUTPUT_DIR replaced); checks what its settings ask
/// for and returns the temp dir, the output dir and the warning line.
fn trains_unchanged(name: &str) -> (tempfile::TempDir, std::path::PathBuf, String) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/trl_config").join(name);
    let text = std::fs::read_to_string(fixture).unwrap().replace("OUTPUT_DIR", out.to_str().unwrap());
    let cfg = tmp.path().join(name);
    std::fs::write(&cfg, text).unwrap();
    let run =
        Command::new(env!("CARGO_BIN_EXE_xtask")).args(["train", "--config", cfg.to_str().unwrap()]).output().unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "train failed: {stderr}");
    // one warning line names what has no effect here (e.g. debug, which differs from TRL's
    // default); what equals TRL's defaults (gradient_checkpointing = true) is not named
    let warning = stderr.lines().find(|l| l.contains("no effect in trl-rs")).expect("a warning line").to_string();

    let lines: Vec<Value> = std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let at = |split: &str| -> Vec<u64> {
        lines.iter().filter(|l| l["split"] == split).map(|l| l["step"].as_u64().unwrap()).collect()
    };
    assert_eq!(at("train"), [1, 4, 8, 12], "logging_first_step and logging_steps 4");
    assert_eq!(at("eval"), [6, 12], "eval_strategy steps, eval_steps 6, and the end");
    // cosine after 2 warmup steps of 12: step 4 ran at index 3, progress (3 - 2) / 10
    let lr4 =
        lines.iter().find(|l| l["step"] == 4 && l["split"] == "train").unwrap()["learning_rate"].as_f64().unwrap();
    let want = 1e-3 * 0.5 * (1.0 + (std::f64::consts::PI * 0.1).cos());
    assert!((lr4 - want).abs() <= 1e-12 * want, "{lr4} vs {want}");
    // saves at 4, 8, 12, keeping the newest 2
    let mut ckpts: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("checkpoint-"))
        .collect();
    ckpts.sort();
    assert_eq!(ckpts, ["checkpoint-12", "checkpoint-8"]);
    (tmp, out, warning)
}

#[test]
fn unknown_and_unsupported_settings_are_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |body: &str| {
        let cfg = tmp.path().join("c.json");
        std::fs::write(&cfg, body).unwrap();
        let o = Command::new(env!("CARGO_BIN_EXE_xtask"))
            .args(["train", "--config", cfg.to_str().unwrap(), "--output-dir", tmp.path().join("o").to_str().unwrap()])
            .output()
            .unwrap();
        assert!(!o.status.success());
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let e = run(r#"{"bf16": true, "fp16": true}"#);
    assert!(e.contains("bf16 and fp16 are both true"), "{e}");
    let e = run(r#"{"learning_rat": 0.001}"#);
    assert!(e.contains("unknown setting `learning_rat`") && e.contains("learning_rate"), "{e}");
    let e = run(r#"{"optim": "adafactor"}"#);
    assert!(e.contains("optim `adafactor` is not supported"), "{e}");
    let e = run(r#"{"save_strategy": "sometimes"}"#);
    assert!(e.contains("save_strategy"), "{e}");
    let e = run(r#"{"load_best_model_at_end": true, "eval_steps": 3, "save_steps": 4}"#);
    assert!(e.contains("save_steps a multiple of eval_steps"), "{e}");
    let e = run(r#"{"load_best_model_at_end": true, "eval_steps": 2, "save_steps": 4, "metric_for_best_model": "f1"}"#);
    assert!(e.contains("metric_for_best_model `f1`"), "{e}");
}

/// `bf16` / `fp16` and `gradient_checkpointing` are honoured, not listed as without effect:
/// the projections multiply in the half dtype (the loss differs from f32's), and the run says
/// which precision and autodiff strategy it uses.
#[test]
fn mixed_precision_and_gradient_checkpointing_are_honoured() {
    let tmp = tempfile::tempdir().unwrap();
    let train = |name: &str, settings: Value| {
        let out = tmp.path().join(name);
        let mut body = serde_json::json!({"output_dir": out, "max_steps": 2, "logging_steps": 1, "eval_steps": 100});
        body.as_object_mut().unwrap().extend(settings.as_object().unwrap().clone());
        let cfg = tmp.path().join(format!("{name}.json"));
        std::fs::write(&cfg, body.to_string()).unwrap();
        let run = Command::new(env!("CARGO_BIN_EXE_xtask"))
            .args(["train", "--config", cfg.to_str().unwrap()])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&run.stderr).into_owned();
        assert!(run.status.success(), "{stderr}");
        assert!(!stderr.contains("no effect in trl-rs"), "{stderr}");
        let first = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap().lines().next().unwrap().to_string();
        (stderr, serde_json::from_str::<Value>(&first).unwrap()["loss"].as_f64().unwrap())
    };
    let (f32_log, f32_loss) = train("f32", serde_json::json!({"bf16": false, "gradient_checkpointing": false}));
    assert!(!f32_log.contains("gradient checkpointing") && !f32_log.contains("mixed precision"), "{f32_log}");
    let (bf16_log, bf16_loss) = train("bf16", serde_json::json!({"bf16": true, "gradient_checkpointing": true}));
    assert!(
        bf16_log.contains("gradient checkpointing") && bf16_log.contains("projections in bf16 (mixed precision)"),
        "{bf16_log}"
    );
    let (fp16_log, fp16_loss) = train("fp16", serde_json::json!({"fp16": true}));
    assert!(fp16_log.contains("projections in fp16 (mixed precision)"), "{fp16_log}");
    assert!(
        bf16_loss != f32_loss && fp16_loss != f32_loss && bf16_loss != fp16_loss,
        "{f32_loss} {bf16_loss} {fp16_loss}"
    );
    // the same first loss within half precision: (20·layers + 3) roundings of unit roundoff u
    // on each reward (the built-in model has 2 layers; fresh rewards are below 1), and the loss
    // moves at most as the reward gap does (tests/tests/trainer.rs, bf16_mixed_precision_follows_trl)
    for (what, loss, u) in [("bf16", bf16_loss, 1.0 / 512.0), ("fp16", fp16_loss, 1.0 / 2048.0)] {
        assert!((loss - f32_loss).abs() <= 2.0 * 43.0 * u, "{what}: {loss} vs f32 {f32_loss}");
    }
}

/// `load_best_model_at_end`: the final model is the checkpoint of the best evaluation, which
/// `save_total_limit` keeps besides the newest. Run with both directions of the eval loss, so
/// that in one of them the best is not the last evaluation.
#[test]
fn the_best_checkpoint_becomes_the_final_model() {
    let mut earlier_best = 0;
    for greater in [true, false] {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("run");
        let cfg = tmp.path().join("c.json");
        let body = serde_json::json!({
            "output_dir": out, "max_steps": 12, "learning_rate": 1e-3, "per_device_train_batch_size": 4,
            "logging_steps": 4, "eval_steps": 4, "save_steps": 4, "save_total_limit": 1,
            "load_best_model_at_end": true, "metric_for_best_model": "eval_loss", "greater_is_better": greater,
        });
        std::fs::write(&cfg, body.to_string()).unwrap();
        let run = Command::new(env!("CARGO_BIN_EXE_xtask"))
            .args(["train", "--config", cfg.to_str().unwrap()])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(run.status.success(), "{stderr}");
        let evals: Vec<(u64, f64)> = std::fs::read_to_string(out.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|l| l["split"] == "eval")
            .map(|l| (l["step"].as_u64().unwrap(), l["loss"].as_f64().unwrap()))
            .collect();
        assert_eq!(evals.iter().map(|e| e.0).collect::<Vec<_>>(), [4, 8, 12]);
        let better = |a: f64, b: f64| if greater { a > b } else { a < b };
        let best = evals.iter().fold(evals[0], |b, e| if better(e.1, b.1) { *e } else { b }).0;
        let model = |dir: &Path| std::fs::read(dir.join("model.safetensors")).unwrap();
        assert_eq!(model(&out), model(&out.join(format!("checkpoint-{best}"))), "final model = checkpoint-{best}");
        if best != 12 {
            earlier_best += 1;
            assert!(stderr.contains("the final model is"), "{stderr}");
            assert_ne!(model(&out), model(&out.join("checkpoint-12")));
        }
        let mut left: Vec<String> = std::fs::read_dir(&out)
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with("checkpoint-"))
            .collect();
        left.sort();
        let mut want = vec![format!("checkpoint-{best}"), "checkpoint-12".to_string()];
        want.sort();
        want.dedup();
        assert_eq!(left, want, "save_total_limit 1 keeps the best and the newest");
    }
    assert!(earlier_best >= 1, "in one direction the best evaluation is not the last");
}

/// `normalize_reward` stores the held-out rewards' mean and std in config.json (OpenRLHF's
/// keys); `score --normalize` reports `(r − mean) / std`; a model without them is an error.
#[test]
fn reward_normalisation_is_stored_and_applied() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let cfg = tmp.path().join("c.json");
    let body = serde_json::json!({"output_dir": out, "max_steps": 10, "per_device_train_batch_size": 4,
                                  "logging_steps": 5, "normalize_reward": true});
    std::fs::write(&cfg, body.to_string()).unwrap();
    let xtask = |args: &[&str]| Command::new(env!("CARGO_BIN_EXE_xtask")).args(args).output().unwrap();
    let run = xtask(&["train", "--config", cfg.to_str().unwrap()]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let config: Value = serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["normalize_reward"], true);
    let (mean, std) = (config["mean"].as_f64().unwrap(), config["std"].as_f64().unwrap());
    assert!(mean.is_finite() && std > 0.0, "{config}");

    let rows = tmp.path().join("rows.jsonl");
    std::fs::write(&rows, "{\"text\": \"1 2 3 answer : 4\"}\n{\"text\": \"please repeat number 7 . answer : 7\"}\n")
        .unwrap();
    let rewards = |extra: &[&str]| -> Vec<f64> {
        let mut args = vec!["score", "--model", out.to_str().unwrap(), "--input", rows.to_str().unwrap()];
        args.extend_from_slice(extra);
        let o = xtask(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap()["reward"].as_f64().unwrap())
            .collect()
    };
    let (raw, normalized) = (rewards(&[]), rewards(&["--normalize"]));
    for (r, n) in raw.iter().zip(&normalized) {
        let want = (r - mean) / std;
        // rewards are f32: one rounding of the result, relative to its scale
        assert!((n - want).abs() <= 4.0 * f64::from(f32::EPSILON) * want.abs().max(1.0), "{n} vs {want}");
    }

    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/llama-rm");
    let o = xtask(&["score", "--model", fixture.to_str().unwrap(), "--input", rows.to_str().unwrap(), "--normalize"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("no finite `mean` and positive `std`"), "{err}");
}
