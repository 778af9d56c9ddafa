//! `cargo xtask bench`: throughput of reward training and scoring (and mixture generation),
//! with the PyTorch/transformers baseline measured in the same run when Python has torch.
//! Writes JSON; nothing here is a test.

use std::path::PathBuf;
use std::time::Instant;

use serde_json::{json, Value};

use burn::tensor::Device;
use trl_core::backend::DeviceArg;
use trl_core::{backend, HfConfig};
use trl_heads::ForSequenceClassification;
use trl_models::{AnyCausalLm, Padding, TokenBatch};
use trl_reward::collate::SplitMix64;
use trl_reward::data::TokenizedPair;
use trl_reward::{RewardConfig, RewardTrainer};

use crate::common::{Error, B};

pub(crate) mod real;
mod serve;
mod trl;

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Where to write the JSON report.
    #[arg(long, default_value = "bench.json")]
    pub out: PathBuf,
    /// Cases to run: tiny, medium (every row 64 tokens), tiny-varlen, medium-varlen (row
    /// lengths spread over 12–64 tokens, about 40% padding when batched), mixture, trl (the
    /// built-in `cargo xtask train` job against TRL's RewardTrainer) and real (a 0.5B bf16
    /// reward model: first reward, peak RSS and scoring against transformers) and serve
    /// (load on `cargo xtask serve`: texts/s, p50/p99 latency); the last three are not in the
    /// default set.
    #[arg(long, value_delimiter = ',', default_value = "tiny,medium,medium-varlen,mixture")]
    pub cases: Vec<String>,
    /// Seconds to spend measuring each number.
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// Rounds of the training/scoring cases, each measuring PyTorch and then ours: each side's
    /// best round is its figure (a shared VM's speed drifts over minutes; the best round of each
    /// is the least disturbed), every round is in the report.
    #[arg(long, default_value_t = 2)]
    pub rounds: usize,
    /// Python interpreter for the PyTorch baseline (`none` to skip).
    #[arg(long, default_value = "python3")]
    pub python: String,
    #[command(flatten)]
    pub device: crate::common::DeviceArgs,
}

/// A benchmark case: a Llama-style reward model, 16 pairs of up to 64 tokens per batch.
struct Case {
    name: &'static str,
    config: Value,
    /// Row lengths spread over `SEQ / 5 ..= SEQ` (as preference data is) instead of all `SEQ`.
    varlen: bool,
}

fn cases() -> Vec<Case> {
    let llama = |vocab: usize, hidden: usize, inter: usize, layers: usize, heads: usize, kv: usize| {
        json!({"model_type": "llama", "vocab_size": vocab, "hidden_size": hidden, "intermediate_size": inter,
               "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv,
               "max_position_embeddings": 512, "pad_token_id": 0})
    };
    let (tiny, medium) = (llama(512, 64, 128, 2, 4, 2), llama(8192, 512, 1024, 6, 8, 8));
    vec![
        Case { name: "tiny", config: tiny.clone(), varlen: false },
        Case { name: "medium", config: medium.clone(), varlen: false },
        Case { name: "tiny-varlen", config: tiny, varlen: true },
        Case { name: "medium-varlen", config: medium, varlen: true },
    ]
}

const PAIRS: usize = 16;
const SEQ: usize = 64;

/// Lengths of the `2 * pairs` rows of one batch (chosen rows first, then rejected), the same
/// for every batch, so that ours and PyTorch's compute the same shapes.
fn row_lengths(varlen: bool) -> Vec<usize> {
    let mut rng = SplitMix64(11);
    (0..2 * PAIRS).map(|_| if varlen { SEQ / 5 + rng.below(SEQ - SEQ / 5 + 1) } else { SEQ }).collect()
}

fn random_pairs(vocab: usize, n: usize, lengths: &[usize]) -> Vec<TokenizedPair> {
    let mut rng = SplitMix64(7);
    let mut seq = |len: usize| (0..len).map(|_| 2 + rng.below(vocab - 2) as i64).collect::<Vec<_>>();
    (0..n)
        .map(|i| TokenizedPair {
            chosen: seq(lengths[i % PAIRS]),
            rejected: seq(lengths[PAIRS + i % PAIRS]),
            margin: None,
            chosen_text: String::new(),
            rejected_text: String::new(),
        })
        .collect()
}

fn model<BB: burn::tensor::backend::Backend>(
    config: &HfConfig,
    device: &BB::Device,
) -> Result<ForSequenceClassification<BB>, Error> {
    let backbone = AnyCausalLm::<BB>::init(config, device)?;
    Ok(ForSequenceClassification::with_fresh_score(backbone, config, 1, device)?)
}

/// Training pairs/s through the real trainer loop, from the median time between consecutive
/// optimizer steps' events (model set-up and the final checkpoint write are not counted).
fn train_throughput(config: &HfConfig, lengths: &[usize], seconds: f64, device: &Device<B>) -> Result<f64, Error> {
    let vocab = config.require_usize("vocab_size")?;
    // Step times, from the trainer's per-step events, of a run of `steps` optimizer steps.
    let run = |steps: u64| -> Result<Vec<Instant>, Error> {
        let tmp = std::env::temp_dir().join(format!("trl-bench-{}", std::process::id()));
        let cfg = RewardConfig {
            output_dir: tmp.clone(),
            max_steps: Some(steps),
            per_device_train_batch_size: PAIRS,
            logging_steps: steps,
            save_steps: u64::MAX,
            num_print_samples: 0,
            ..RewardConfig::default()
        };
        let pairs = random_pairs(vocab, PAIRS * steps as usize, lengths);
        let mut trainer = RewardTrainer::new(cfg, model::<backend::Train>(config, device)?, config.clone(), None, 0)?;
        let mut times = Vec::new();
        trainer.train(&pairs, &[], 0, &mut |ev| {
            if let trl_reward::Event::Step { .. } = ev {
                times.push(Instant::now());
            }
            std::ops::ControlFlow::Continue(())
        })?;
        let _ = std::fs::remove_dir_all(&tmp);
        Ok(times)
    };
    let probe = run(3)?;
    let per_step = probe[2].duration_since(probe[1]).as_secs_f64().max(1e-4);
    let steps = ((seconds / per_step) as u64).clamp(3, 2000) + 1;
    let times = run(steps)?;
    let mut gaps: Vec<f64> = times.windows(2).map(|w| w[1].duration_since(w[0]).as_secs_f64()).collect();
    gaps.sort_by(f64::total_cmp);
    let (lo, mid, hi) = (gaps[0], gaps[gaps.len() / 2], gaps[gaps.len() - 1]);
    eprintln!("  {} steps: {lo:.3}s min, {mid:.3}s median, {hi:.3}s max", gaps.len());
    Ok(PAIRS as f64 / mid.max(1e-9))
}

/// Scoring pairs/s: no-grad forward of chosen ++ rejected.
fn score_throughput(config: &HfConfig, lengths: &[usize], seconds: f64, device: &Device<B>) -> Result<f64, Error> {
    let vocab = config.require_usize("vocab_size")?;
    let m = model::<B>(config, device)?;
    let pairs = random_pairs(vocab, PAIRS, lengths);
    let rows: Vec<Vec<i64>> =
        pairs.iter().map(|p| p.chosen.clone()).chain(pairs.iter().map(|p| p.rejected.clone())).collect();
    let batch = TokenBatch::pad(&rows, 0, Padding::Right, None)?;
    let run = || -> Result<(), Error> {
        m.forward(&batch, false)?.rewards.into_data();
        Ok(())
    };
    run()?;
    let (mut n, start) = (0usize, Instant::now());
    while n < 3 || start.elapsed().as_secs_f64() < seconds {
        run()?;
        n += 1;
    }
    Ok((n * PAIRS) as f64 / start.elapsed().as_secs_f64())
}

/// The device the PyTorch baselines run on (`TORCH_DEVICE`): the same CUDA device as ours, else
/// the CPU (torch has no wgpu).
fn torch_device(on: DeviceArg) -> String {
    if matches!(on, DeviceArg::Cuda(_)) {
        on.to_string()
    } else {
        "cpu".into()
    }
}

/// A command for the Python side. Where this build has no AVX-512 kernels on a CPU that has
/// AVX-512 (how the bench gives the AVX2 figure on such a machine), torch is held to AVX2 as well:
/// ATen's vector kernels (`ATEN_CPU_CAPABILITY`), MKL's gemm (`MKL_ENABLE_INSTRUCTIONS`) and
/// oneDNN (`ONEDNN_MAX_CPU_ISA`), so that both sides run the same instruction set.
pub(crate) fn python_command(python: &str) -> std::process::Command {
    let mut c = std::process::Command::new(python);
    let cpu = cpu_info();
    if cpu["simd_level"] == "avx2+fma" && cpu["avx512f"] == true {
        c.env("ATEN_CPU_CAPABILITY", "avx2").env("MKL_ENABLE_INSTRUCTIONS", "AVX2").env("ONEDNN_MAX_CPU_ISA", "AVX2");
    }
    c
}

/// Runs the PyTorch baseline script on the same configs; `None` when Python/torch is missing.
fn torch_baseline(python: &str, selected: &[&Case], seconds: f64, on: DeviceArg) -> Option<Value> {
    if python == "none" || selected.is_empty() {
        return None;
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("bench/torch_baseline.py");
    let spec: Vec<Value> = selected
        .iter()
        .map(|c| {
            json!({"name": c.name, "config": c.config, "batch_pairs": PAIRS, "seq_len": SEQ,
                   "lengths": row_lengths(c.varlen), "seconds": seconds})
        })
        .collect();
    let file = std::env::temp_dir().join(format!("trl-bench-cases-{}.json", std::process::id()));
    std::fs::write(&file, serde_json::to_string(&spec).ok()?).ok()?;
    let out = python_command(python).arg(&script).arg(&file).env("TORCH_DEVICE", torch_device(on)).output().ok()?;
    let _ = std::fs::remove_file(&file);
    if !out.status.success() {
        eprintln!("baseline skipped: {}", String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or(""));
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

pub fn run(args: BenchArgs) -> Result<(), Error> {
    let want = |n: &str| args.cases.iter().any(|c| c == n);
    let (on, device) = args.device.get()?;
    let cpu = cpu_info();
    eprintln!("CPU: {cpu}; {}", crate::common::ran_on(on));
    let all = cases();
    if let Some(bad) = args.cases.iter().find(|c| {
        !["mixture", "trl", "real", "serve"].contains(&c.as_str()) && !all.iter().any(|k| k.name == c.as_str())
    }) {
        let names: Vec<&str> = all.iter().map(|c| c.name).collect();
        return Err(
            format!("unknown bench case `{bad}`; cases: {}, mixture, trl, real, serve", names.join(", ")).into()
        );
    }
    let selected: Vec<&Case> = all.iter().filter(|c| want(c.name)).collect();
    // per case: ours (train, score) and PyTorch's (train, score), one entry per round
    let mut rounds: Vec<[Vec<f64>; 4]> = selected.iter().map(|_| Default::default()).collect();
    let mut baseline = None;
    for round in 0..if selected.is_empty() { 0 } else { args.rounds.max(1) } {
        eprintln!("round {}: measuring the PyTorch baseline ({} cases)…", round + 1, selected.len());
        let torch = torch_baseline(&args.python, &selected, args.seconds, on);
        for (case, r) in selected.iter().zip(&mut rounds) {
            let base = |key: &str| -> Option<f64> {
                torch
                    .as_ref()?
                    .get("results")?
                    .as_array()?
                    .iter()
                    .find(|x| x.get("name").and_then(Value::as_str) == Some(case.name))?
                    .get(key)?
                    .as_f64()
            };
            r[2].extend(base("train_pairs_per_sec"));
            r[3].extend(base("score_pairs_per_sec"));
            let config = HfConfig::from_value(case.config.clone())?;
            let lengths = row_lengths(case.varlen);
            eprintln!("{}: training…", case.name);
            r[0].push(train_throughput(&config, &lengths, args.seconds, &device)?);
            eprintln!("{}: scoring…", case.name);
            r[1].push(score_throughput(&config, &lengths, args.seconds, &device)?);
        }
        baseline = baseline.or(torch);
    }
    let mut results = Vec::new();
    for (case, [train, score, bt, bs]) in selected.iter().zip(&rounds) {
        let lengths = row_lengths(case.varlen);
        let padding =
            1.0 - lengths.iter().sum::<usize>() as f64 / (lengths.len() * lengths.iter().max().unwrap_or(&1)) as f64;
        let best = |v: &[f64]| v.iter().copied().reduce(f64::max);
        let (train_best, score_best, bt_best, bs_best) = (best(train), best(score), best(bt), best(bs));
        let ratio = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| a / b);
        let r = json!({
            "name": case.name, "batch_pairs": PAIRS, "seq_len": SEQ, "padding_fraction": padding,
            "train_pairs_per_sec": train_best, "score_pairs_per_sec": score_best,
            "torch_train_pairs_per_sec": bt_best, "torch_score_pairs_per_sec": bs_best,
            "train_ratio": ratio(train_best, bt_best), "score_ratio": ratio(score_best, bs_best),
            "rounds": {"train_pairs_per_sec": train, "score_pairs_per_sec": score,
                       "torch_train_pairs_per_sec": bt, "torch_score_pairs_per_sec": bs},
        });
        eprintln!("{r}");
        results.push(r);
    }
    if want("mixture") {
        eprintln!("mixture: cached vs recompute generation…");
        let p = trl_gen::bench::bench_model::<B>(&device)?;
        let r = trl_gen::bench::bench_model::<B>(&device)?;
        let prompts = trl_gen::bench::bench_prompts(16, 512, 0);
        let (cached, recompute) = trl_gen::bench_mixture(&p, &r, &prompts, 64)?;
        let tokens = 16.0 * 64.0;
        let m = json!({"name": "mixture", "prompts": 16, "new_tokens": 64, "cached_tokens_per_sec": tokens / cached,
                       "recompute_tokens_per_sec": tokens / recompute, "speedup": recompute / cached});
        eprintln!("{m}");
        results.push(m);
    }
    if want("real") {
        let r = real::run(&args.python, on)?;
        eprintln!("{r}");
        results.push(r);
    }
    if want("serve") {
        let r = serve::run(args.seconds, on)?;
        eprintln!("{r}");
        results.push(r);
    }
    if want("trl") {
        let r = trl::run(&args.python, &device)?;
        eprintln!("{r}");
        results.push(r);
    }
    let report = json!({"backend": backend::name(), "device": on.to_string(), "cpu": cpu, "threads": std::thread::available_parallelism().map(|n| n.get()).ok(),
                        "baseline": baseline.as_ref().map(|b| json!({"torch": b.get("torch"), "threads": b.get("threads"), "device": b.get("device"), "cpu_capability": b.get("cpu_capability")})),
                        "results": results});
    trl_core::atomic::write_json_atomic(&args.out, &report)?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

/// The CPU model and the SIMD level the gemm kernels run with, so figures from different
/// machines are never mixed up.
fn cpu_info() -> Value {
    let model = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|s| {
        s.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split(':').nth(1)).map(|m| m.trim().to_string())
    });
    #[cfg(target_arch = "x86_64")]
    let (avx512f, avx2, fma) = (
        std::arch::is_x86_feature_detected!("avx512f"),
        std::arch::is_x86_feature_detected!("avx2"),
        std::arch::is_x86_feature_detected!("fma"),
    );
    #[cfg(not(target_arch = "x86_64"))]
    let (avx512f, avx2, fma) = (false, false, false);
    let kernels_avx512 = cfg!(feature = "avx512");
    let simd = match (avx512f && kernels_avx512, avx2 && fma) {
        (true, _) => "avx512",
        (false, true) => "avx2+fma",
        _ => std::env::consts::ARCH,
    };
    json!({"model": model, "avx512f": avx512f, "avx2": avx2, "fma": fma,
           "avx512_kernels_built": kernels_avx512, "simd_level": simd})
}

/// Writes built-in preference rows as JSONL `{"prompt", "chosen", "rejected"}` (plain text, as
/// the built-in task draws them) for the Python side of a bench case.
fn write_pairs_jsonl(path: &std::path::Path, rows: &[trl_reward::data::PreferenceRow]) -> Result<(), Error> {
    use trl_reward::data::Content;
    let text = |c: Option<&Content>| match c {
        Some(Content::Text(t)) => Ok(t.clone()),
        _ => Err("the built-in rows are plain text"),
    };
    let mut out = String::new();
    for r in rows {
        let line = json!({"prompt": text(r.prompt.as_ref())?, "chosen": text(Some(&r.chosen))?,
                          "rejected": text(Some(&r.rejected))?});
        out.push_str(&line.to_string());
        out.push('\n');
    }
    Ok(trl_core::atomic::write_atomic(path, out.as_bytes())?)
}
