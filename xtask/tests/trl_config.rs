//! A config file as TRL 0.28 writes it (`RewardConfig.to_json_string()`: all 124 fields,
//! `tests/fixtures/make_config_fixtures.py`) trains unchanged with `cargo xtask train --config`,
//! and the settings that map are honoured: the cosine schedule, logging at the first step,
//! evaluation and checkpoints by steps, `save_total_limit`.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

#[test]
fn a_trl_config_file_trains_unchanged() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/trl_config/reward_config.json");
    let text = std::fs::read_to_string(fixture).unwrap().replace("OUTPUT_DIR", out.to_str().unwrap());
    let cfg = tmp.path().join("reward_config.json");
    std::fs::write(&cfg, text).unwrap();
    let run =
        Command::new(env!("CARGO_BIN_EXE_xtask")).args(["train", "--config", cfg.to_str().unwrap()]).output().unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "train failed: {stderr}");
    // one warning line names what has no effect here (use_cpu differs from TRL's default);
    // what equals TRL's defaults (gradient_checkpointing = true) is not named
    let warning = stderr.lines().find(|l| l.contains("no effect in trl-rs")).expect("a warning line");
    assert!(warning.contains("use_cpu") && !warning.contains("gradient_checkpointing"), "{warning}");

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
    let e = run(r#"{"learning_rat": 0.001}"#);
    assert!(e.contains("unknown setting `learning_rat`") && e.contains("learning_rate"), "{e}");
    let e = run(r#"{"optim": "adafactor"}"#);
    assert!(e.contains("optim `adafactor` is not supported"), "{e}");
    let e = run(r#"{"save_strategy": "sometimes"}"#);
    assert!(e.contains("save_strategy"), "{e}");
}
