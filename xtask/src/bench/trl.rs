//! `cargo xtask bench --cases trl`: the built-in job of `cargo xtask train`, end to end, against
//! TRL 0.28's own `RewardTrainer` on the same model config, tokenizer, rows and settings
//! (`xtask/bench/trl_baseline.py`, run when Python has TRL).

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::{json, Value};

use trl_core::backend;
use trl_reward::synthetic;
use trl_reward::Job;

use crate::common::Error;

/// Writes what the TRL side needs to `dir`: `config.json`, the tokenizer, `train.jsonl`,
/// `eval.jsonl` (the rows the built-in job draws) and `settings.json`.
fn export(dir: &Path) -> Result<(), Error> {
    std::fs::create_dir_all(dir)?;
    let cfg = synthetic::training_config();
    synthetic::model_config().save(dir)?;
    synthetic::tokenizer().save(dir)?;
    for (file, rows) in [
        ("train.jsonl", synthetic::rows(synthetic::TRAIN_ROWS, cfg.seed)),
        ("eval.jsonl", synthetic::rows(synthetic::EVAL_ROWS, cfg.seed.wrapping_add(1_000_003))),
    ] {
        super::write_pairs_jsonl(&dir.join(file), &rows)?;
    }
    let settings = json!({
        "seed": cfg.seed, "learning_rate": cfg.learning_rate, "max_steps": cfg.max_steps,
        "per_device_train_batch_size": cfg.per_device_train_batch_size,
        "per_device_eval_batch_size": cfg.per_device_eval_batch_size, "logging_steps": cfg.logging_steps,
        "eval_steps": cfg.eval_steps, "save_steps": cfg.save_steps, "warmup_ratio": cfg.warmup_ratio,
        "max_length": cfg.max_length,
    });
    trl_core::atomic::write_json_atomic(&dir.join("settings.json"), &settings)?;
    Ok(())
}

/// Ours: the built-in job as `cargo xtask train` runs it (evaluations and checkpoint writes
/// included, as on the TRL side), timed around the training loop.
fn ours(dir: &Path, device: &burn::tensor::Device<backend::Default>) -> Result<Value, Error> {
    let mut cfg = synthetic::training_config();
    cfg.output_dir = dir.join("ours");
    let Job { mut trainer, train, eval, dropped } = synthetic::job::<backend::Train>(cfg, device)?;
    let start = Instant::now();
    let summary = trainer.train(&train, &eval, dropped, &mut |_| std::ops::ControlFlow::Continue(()))?;
    let seconds = start.elapsed().as_secs_f64();
    let pairs = summary.global_step as f64 * trainer.config.per_device_train_batch_size as f64;
    Ok(json!({"train_seconds": seconds, "pairs_per_sec": pairs / seconds,
              "eval_accuracy": summary.final_eval.map(|e| e.metrics.accuracy)}))
}

/// The `trl` case's report: ours, TRL's (when Python has it) and the ratio.
pub fn run(python: &str, device: &burn::tensor::Device<backend::Default>) -> Result<Value, Error> {
    let dir = std::env::temp_dir().join(format!("trl-bench-trl-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    export(&dir)?;
    eprintln!("trl: the built-in job, ours…");
    let ours = ours(&dir, device)?;
    eprintln!("trl: ours {ours}");
    let theirs = if python == "none" {
        None
    } else {
        eprintln!("trl: TRL's RewardTrainer on the same job…");
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("bench/trl_baseline.py");
        let out = super::python_command(python).arg(&script).arg(&dir).output()?;
        if out.status.success() {
            String::from_utf8_lossy(&out.stdout).lines().last().and_then(|l| serde_json::from_str::<Value>(l).ok())
        } else {
            eprintln!("TRL baseline skipped: {}", String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or(""));
            None
        }
    };
    let _ = std::fs::remove_dir_all(&dir);
    let ratio = theirs.as_ref().and_then(|t| Some(ours["pairs_per_sec"].as_f64()? / t.get("pairs_per_sec")?.as_f64()?));
    Ok(json!({"name": "trl", "job": "cargo xtask train (built-in)", "ours": ours, "trl": theirs, "ratio": ratio}))
}
