//! `cargo xtask bench --cases real`: a Qwen2-0.5B-shaped reward model (494M parameters, bf16
//! safetensors as transformers saves them), built in code with no download, scored by
//! `cargo xtask score` and by transformers (float32, as users run it on a CPU) in the same run.
//!
//! Each figure comes from a separate process, so peak RSS is that of the job alone: the wall
//! time from process start to the first reward (1 pair), and a 64-pair scoring run (batches of
//! 32 pairs) whose extra time over the 1-pair run, load times taken out, gives pairs/s, with the
//! weights held as stored (bf16), in f32 and in int8; then LoRA reward training (r 16, 4 pairs a
//! step) for 5 steps against PEFT + TRL, whose median time between consecutive optimizer steps
//! (each side reports its own) gives the step time, and full fine-tuning (f32 weights, AdamW) the
//! same way against TRL. (The difference of a 1- and a 4-step run's wall times, used before, also
//! held the load and the final save, whose time on this VM moves by seconds: it once gave a
//! negative step time.)

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use burn::tensor::DType;
use serde_json::{json, Value};

use trl_core::backend::{self, DeviceArg};
use trl_core::{checkpoint, HfConfig, StateDict};
use trl_heads::ForSequenceClassification;
use trl_models::AnyCausalLm;
use trl_reward::synthetic;

use crate::common::{Error, B};

/// Pairs of the throughput run, and pairs per batch.
const PAIRS: usize = 64;
const BATCH_PAIRS: usize = 32;
/// Training: pairs per step, and steps per run (the step time is the median of the intervals
/// between them).
const TRAIN_PAIRS: usize = 4;
const STEPS: u64 = 5;

/// Environment variable naming a directory where the model is built once and kept.
const KEEP_ENV: &str = "TRL_BENCH_REAL_DIR";

/// Environment variable that makes `score` report its load time and peak RSS on stderr.
pub const REPORT_ENV: &str = "TRL_BENCH_REPORT";

/// Qwen2-0.5B's shape (`Qwen/Qwen2-0.5B` config.json), one label, the built-in tokenizer's pad id.
fn config() -> Result<HfConfig, Error> {
    Ok(HfConfig::from_value(json!({
        "architectures": ["Qwen2ForSequenceClassification"], "model_type": "qwen2",
        "vocab_size": 151936, "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
        "num_attention_heads": 14, "num_key_value_heads": 2, "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "tie_word_embeddings": true, "torch_dtype": "bfloat16",
        "pad_token_id": 0, "eos_token_id": 1, "id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0},
    }))?)
}

/// Writes the model (random init, bf16), the built-in tokenizer and the input files.
fn build_model(dir: &Path) -> Result<(), Error> {
    let cfg = config()?;
    let device = backend::device();
    let backbone = AnyCausalLm::<B>::init(&cfg, &device)?.without_lm_head();
    let model = ForSequenceClassification::with_fresh_score(backbone, &cfg, 1, &device)?;
    let mut sd = StateDict::new();
    for (k, t) in model.state_dict().tensors {
        sd.insert(k, t.convert_dtype(DType::BF16));
    }
    drop(model);
    cfg.save(dir)?;
    checkpoint::save_weights(&sd, dir, checkpoint::DEFAULT_MAX_SHARD_SIZE)?;
    synthetic::tokenizer().save(dir)?;
    let rows = synthetic::rows(PAIRS, 5);
    for (file, n) in [("one.jsonl", 1), ("many.jsonl", PAIRS), ("train.jsonl", PAIRS)] {
        super::write_pairs_jsonl(&dir.join(file), &rows[..n])?;
    }
    Ok(())
}

/// Wall seconds of `cmd`, and the `key value` lines it printed on stderr.
fn timed(mut cmd: Command) -> Result<(f64, Vec<(String, f64)>), Error> {
    let start = Instant::now();
    let out = cmd.output()?;
    let wall = start.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(format!("{cmd:?} failed: {}", stderr.lines().last().unwrap_or("")).into());
    }
    let text = format!("{stderr}\n{}", String::from_utf8_lossy(&out.stdout));
    let found = text
        .lines()
        .filter_map(|l| l.strip_prefix("bench: "))
        .filter_map(|l| l.split_once(' ').and_then(|(k, v)| Some((k.to_string(), v.trim().parse().ok()?))))
        .collect();
    Ok((wall, found))
}

fn get(found: &[(String, f64)], key: &str) -> Option<f64> {
    found.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
}

/// One side's figures from its 1-pair and 64-pair runs. Pairs/s come from the extra time of
/// the 64-pair run with each run's own load time taken out: on this VM a load that follows a
/// minute idle faults its fresh memory in several times slower (docs/performance.md), and that
/// would otherwise land in the scoring rate.
fn figures(one: (f64, Vec<(String, f64)>), many: (f64, Vec<(String, f64)>)) -> Value {
    let rate = PAIRS as f64 - 1.0;
    let scoring = |run: &(f64, Vec<(String, f64)>)| run.0 - get(&run.1, "load_s").unwrap_or(0.0);
    json!({
        "first_reward_s": one.0,
        "load_s": get(&one.1, "load_s"),
        "peak_rss_gb_load": get(&one.1, "peak_rss_kb_load").map(|k| k / 1e6),
        "peak_rss_gb_first": get(&one.1, "peak_rss_kb").map(|k| k / 1e6),
        "peak_rss_gb_scoring": get(&many.1, "peak_rss_kb").map(|k| k / 1e6),
        "load_s_scoring_run": get(&many.1, "load_s"),
        "score_pairs_per_sec": rate / (scoring(&many) - scoring(&one)).max(1e-3),
    })
}

/// Training figures from a run of [`STEPS`] steps: the median step time it reported
/// (`bench: step_s`), and its peak RSS.
fn train_figures(run: (f64, Vec<(String, f64)>)) -> Result<Value, Error> {
    let step_s = get(&run.1, "step_s").ok_or("a training run did not report its step time (`bench: step_s`)")?;
    Ok(json!({"steps_per_sec": 1.0 / step_s.max(1e-6), "step_s": step_s, "wall_s": run.0,
              "peak_rss_gb": get(&run.1, "peak_rss_kb").map(|k| k / 1e6)}))
}

pub fn run(python: &str, on: DeviceArg) -> Result<Value, Error> {
    // KEEP_ENV names a directory to build the model in once and keep (for profiling runs)
    let kept = std::env::var_os(KEEP_ENV).map(PathBuf::from);
    let dir =
        kept.clone().unwrap_or_else(|| std::env::temp_dir().join(format!("trl-bench-real-{}", std::process::id())));
    if kept.is_some() && dir.join("many.jsonl").is_file() {
        eprintln!("real: reusing the model in {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        eprintln!("real: writing a Qwen2-0.5B-shaped bf16 reward model to {}…", dir.display());
        build_model(&dir)?;
    }
    // parameters from the header; the weights read once so that every process (ours and
    // transformers') starts from a warm page cache
    let weights = checkpoint::load_dir_lazily(&dir)?;
    let params: usize = weights.tensors.values().map(|t| t.num_elements()).sum();
    drop(weights);
    for f in checkpoint::weight_files(&dir)? {
        std::io::copy(&mut std::fs::File::open(&f)?, &mut std::io::sink())?;
    }
    let exe = std::env::current_exe()?;
    let ours = |input: &str, holding: &[&str]| {
        let mut c = Command::new(&exe);
        c.args(["score", "--model"]).arg(&dir).arg("--input").arg(dir.join(input)).args(holding);
        c.args(["--device", &on.to_string()]);
        c.args(["--batch-size", &(2 * BATCH_PAIRS).to_string()]).env(REPORT_ENV, "1");
        timed(c)
    };
    let runs = |holding: &[&str]| -> Result<Value, Error> {
        eprintln!("real: ours, {}…", holding.join(" "));
        let f = figures(ours("one.jsonl", holding)?, ours("many.jsonl", holding)?);
        eprintln!("real: ours {} {f}", holding.join(" "));
        Ok(f)
    };
    // the default (`--dtype auto`) holds the checkpoint's bf16
    let (ours, ours_f32, ours_int8) =
        (runs(&["--dtype", "auto"])?, runs(&["--dtype", "f32"])?, runs(&["--quantize", "int8"])?);
    eprintln!("real: LoRA training, ours…");
    // as the baseline runs: no gradient checkpointing; `bf16` adds mixed precision (and a
    // frozen base held in bf16)
    let train_as = |lora: bool, bf16: bool| {
        let mut c = Command::new(&exe);
        c.args(["train", "--model"]).arg(&dir).arg("--train-file").arg(dir.join("train.jsonl"));
        c.args(["--device", &on.to_string()]);
        c.arg("--output-dir").arg(dir.join(format!("ours-{lora}-{bf16}")));
        c.args(["--gradient-checkpointing", "false"]);
        if lora {
            c.args(["--lora-r", "16"]);
        }
        if bf16 {
            c.arg("--bf16");
        }
        c.args(["--batch-size", &TRAIN_PAIRS.to_string(), "--max-steps", &STEPS.to_string()]);
        c.args(["--max-length", "64", "--save-steps", "1000000", "--logging-steps", "1"]).env(REPORT_ENV, "1");
        train_figures(timed(c)?)
    };
    let ours_lora = train_as(true, false)?;
    eprintln!("real: ours LoRA {ours_lora}");
    let ours_lora_bf16 = train_as(true, true)?;
    eprintln!("real: ours LoRA bf16 {ours_lora_bf16}");
    eprintln!("real: full fine-tuning, ours…");
    let ours_full = train_as(false, false)?;
    eprintln!("real: ours full {ours_full}");
    let theirs = (python != "none")
        .then(|| -> Result<Value, Error> {
            let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("bench/real_baseline.py");
            let run = |input: &str| {
                let mut c = super::python_command(python);
                c.arg(&script).arg(&dir).arg(dir.join(input)).arg(BATCH_PAIRS.to_string());
                c.env("TORCH_DEVICE", super::torch_device(on));
                timed(c)
            };
            eprintln!("real: transformers…");
            let scoring = figures(run("one.jsonl")?, run("many.jsonl")?);
            let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("bench/real_lora_baseline.py");
            let train = |lora: bool| {
                let mut c = super::python_command(python);
                c.arg(&script).arg(&dir).arg(dir.join("train.jsonl")).arg(dir.join(format!("trl-{lora}")));
                c.arg(STEPS.to_string()).arg(TRAIN_PAIRS.to_string()).arg(if lora { "lora" } else { "full" });
                train_figures(timed(c)?)
            };
            eprintln!("real: LoRA training, PEFT + TRL…");
            let lora = train(true)?;
            eprintln!("real: full fine-tuning, TRL…");
            let full = train(false)?;
            Ok(json!({"scoring": scoring, "lora": lora, "full": full}))
        })
        .transpose()
        .unwrap_or_else(|e| {
            eprintln!("transformers baseline skipped: {e}");
            None
        });
    if kept.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    // our bf16 LoRA run is compared with PEFT + TRL's f32 one, as the targets are
    let ratio = |part: &str, key: &str| {
        let (mine, their_part) = match part {
            "lora" => (&ours_lora, part),
            "lora_bf16" => (&ours_lora_bf16, "lora"),
            "full" => (&ours_full, part),
            _ => (&ours, part),
        };
        theirs.as_ref().and_then(|t| Some(mine.get(key)?.as_f64()? / t.get(their_part)?.get(key)?.as_f64()?))
    };
    Ok(json!({
        "name": "real", "model": "Qwen2ForSequenceClassification, Qwen2-0.5B shape, bf16 safetensors",
        "parameters": params, "pairs": PAIRS, "batch_pairs": BATCH_PAIRS, "lora_batch_pairs": TRAIN_PAIRS,
        "ours": {"scoring": ours, "scoring_f32": ours_f32, "scoring_int8": ours_int8, "lora": ours_lora, "lora_bf16": ours_lora_bf16, "full": ours_full}, "transformers": theirs,
        "first_reward_ratio": ratio("scoring", "first_reward_s"),
        "peak_rss_ratio": ratio("scoring", "peak_rss_gb_scoring"),
        "score_speedup": ratio("scoring", "score_pairs_per_sec"),
        "lora_step_speedup": ratio("lora", "steps_per_sec"), "lora_peak_rss_ratio": ratio("lora", "peak_rss_gb"),
        "lora_bf16_step_speedup": ratio("lora_bf16", "steps_per_sec"),
        "lora_bf16_peak_rss_ratio": ratio("lora_bf16", "peak_rss_gb"),
        "full_step_speedup": ratio("full", "steps_per_sec"), "full_peak_rss_ratio": ratio("full", "peak_rss_gb"),
    }))
}

/// What `score` prints when [`REPORT_ENV`] is set: its peak resident memory so far.
pub fn report_peak_rss() {
    if std::env::var_os(REPORT_ENV).is_none() {
        return;
    }
    if let Some(kb) = peak_rss_kb() {
        eprintln!("bench: peak_rss_kb {kb}");
    }
}

/// What `train` prints when [`REPORT_ENV`] is set: the median time between consecutive
/// optimizer steps, from the instants each step ended (nothing with fewer than two).
pub fn report_step_time(ends: &[Instant]) {
    if std::env::var_os(REPORT_ENV).is_none() {
        return;
    }
    if let Some(median) = median_gap(ends) {
        eprintln!("bench: step_s {median}");
    }
}

/// The median of the gaps between consecutive instants, in seconds.
fn median_gap(ends: &[Instant]) -> Option<f64> {
    let mut gaps: Vec<f64> = ends.windows(2).map(|w| (w[1] - w[0]).as_secs_f64()).collect();
    gaps.sort_by(f64::total_cmp);
    match gaps.len() {
        0 => None,
        n if n % 2 == 1 => Some(gaps[n / 2]),
        n => Some((gaps[n / 2 - 1] + gaps[n / 2]) / 2.0),
    }
}

/// The process's peak resident memory so far (Linux), in kB.
fn peak_rss_kb() -> Option<u64> {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(String::from))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()))
}

/// What `score` prints when [`REPORT_ENV`] is set: seconds spent loading the model, and the
/// peak resident memory by then.
pub fn report_load(seconds: f64) {
    if std::env::var_os(REPORT_ENV).is_some() {
        eprintln!("bench: load_s {seconds}");
        if let Some(kb) = peak_rss_kb() {
            eprintln!("bench: peak_rss_kb_load {kb}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn step_time_is_the_median_gap_between_step_ends() {
        let t0 = Instant::now();
        let at = |ms: &[u64]| ms.iter().map(|&m| t0 + Duration::from_millis(m)).collect::<Vec<_>>();
        assert_eq!(median_gap(&at(&[])), None);
        assert_eq!(median_gap(&at(&[5])), None);
        // gaps 100, 3000 (a save), 200: the median ignores the outlier
        assert_eq!(median_gap(&at(&[0, 100, 3100, 3300])), Some(0.2));
        // gaps 100, 300, 200, 400: the mean of the middle two
        assert_eq!(median_gap(&at(&[0, 100, 400, 600, 1000])), Some(0.25));
    }
}
