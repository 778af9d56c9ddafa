//! RewardTrainer acceptance (issue 6): step-level parity with TRL 0.28's RewardTrainer, exact
//! resume, and a shortened run of the built-in `cargo xtask train` job.
//!
//! Parity fixtures: `tests/fixtures/trainer/` (`make_trainer_fixtures.py`; see its README).
//! TRL reads the pairs in file order there (a `SequentialSampler`), so we train with
//! `shuffle: false` on the same rows.

use std::ops::ControlFlow;
use std::path::Path;
use std::time::Instant;

use burn::backend::autodiff::checkpoint::strategy::BalancedCheckpointing;
use burn::backend::Autodiff;
use burn::tensor::backend::AutodiffBackend;
use serde_json::Value;

use trl_core::Tokenizer;
use trl_heads::ForSequenceClassification;
use trl_reward::data::{read_rows, tokenize, TokenizedPair};
use trl_reward::{synthetic, Event, LogEntry, RewardConfig, RewardTrainer};
use trl_tests::{fixture, metrics_lines, B};

type TB = Autodiff<B>;

/// The bar: per-step loss within 1e-3 relative of TRL's.
const LOSS_RTOL: f64 = 1e-3;

fn device() -> burn::tensor::Device<B> {
    Default::default()
}

/// The fixture pairs, tokenized as the trainer does (EOS string appended, max_length 1024).
fn fixture_pairs(file: &str) -> Vec<TokenizedPair> {
    let tok = Tokenizer::from_dir(&fixture("tokenizer")).expect("fixture tokenizer");
    let eos = tok.eos_token.clone().expect("the fixture tokenizer has an EOS token");
    assert_eq!(eos, "<|endoftext|>");
    let rows = read_rows(&fixture("trainer").join(file), false).expect("pairs").rows;
    let t = tokenize(&rows, &tok, &eos, Some(1024), None).expect("tokenize");
    assert_eq!(t.dropped_too_long, 0);
    t.pairs
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .expect("json")
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array().expect("array").iter().map(|x| x.as_f64().expect("number")).collect()
}

/// Loads a fixture reward model on an autodiff backend; returns it with its config and pad id.
fn load_model<T: AutodiffBackend<Device = burn::tensor::Device<B>>>(
    dir: &str,
) -> (ForSequenceClassification<T>, trl_core::HfConfig, i64) {
    let (model, hf, restored) =
        ForSequenceClassification::<T>::from_pretrained(&fixture(dir), None, &device()).expect("load reward model");
    assert!(restored, "{dir} has a score head");
    let pad = model.pad_token_id.expect("pad_token_id");
    (model, hf, pad)
}

fn score_weight<T: AutodiffBackend>(model: &ForSequenceClassification<T>) -> Vec<f64> {
    let sd = model.state_dict();
    sd.get("score.weight")
        .expect("score.weight")
        .clone()
        .convert::<f32>()
        .to_vec::<f32>()
        .unwrap()
        .into_iter()
        .map(f64::from)
        .collect()
}

/// The RewardConfig of a fixture run (`expected-<run>.json`'s `config`), writing to `out`.
fn fixture_config(c: &Value, out: &Path) -> RewardConfig {
    RewardConfig {
        output_dir: out.to_path_buf(),
        learning_rate: c["learning_rate"].as_f64().unwrap(),
        max_steps: Some(c["max_steps"].as_u64().unwrap()),
        per_device_train_batch_size: c["per_device_train_batch_size"].as_u64().unwrap() as usize,
        gradient_accumulation_steps: c["gradient_accumulation_steps"].as_u64().unwrap() as usize,
        center_rewards_coefficient: c["center_rewards_coefficient"].as_f64(),
        warmup_steps: c["warmup_steps"].as_u64().unwrap(),
        max_grad_norm: c["max_grad_norm"].as_f64(),
        weight_decay: c["weight_decay"].as_f64().unwrap(),
        adam_beta1: c["adam_beta1"].as_f64().unwrap(),
        adam_beta2: c["adam_beta2"].as_f64().unwrap(),
        adam_epsilon: c["adam_epsilon"].as_f64().unwrap(),
        logging_steps: c["logging_steps"].as_u64().unwrap(),
        seed: c["seed"].as_u64().unwrap(),
        shuffle: false,
        save_steps: 1_000,
        num_print_samples: 0,
        ..RewardConfig::default()
    }
}

/// Trains like `expected-<run>.json` says and compares the curve step by step; returns the
/// per-step losses.
fn parity(run: &str) -> Vec<f64> {
    parity_on::<TB>(run)
}

/// [`parity`] on the autodiff backend `T` (a checkpointing strategy).
fn parity_on<T: AutodiffBackend<Device = burn::tensor::Device<B>>>(run: &str) -> Vec<f64> {
    let expected = read_json(&fixture("trainer").join(format!("expected-{run}.json")));
    let c = &expected["config"];
    let pairs = fixture_pairs(expected["data_file"].as_str().unwrap());

    // Same token ids as TRL trained on (EOS appended, same tokenizer).
    let tokens = read_json(&fixture("trainer").join("tokens.json"));
    let ids = |v: &Value| -> Vec<Vec<i64>> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect())
            .collect()
    };
    assert_eq!(
        pairs.iter().map(|p| p.chosen.clone()).collect::<Vec<_>>(),
        ids(&tokens["chosen_input_ids"]),
        "chosen token ids differ from TRL's"
    );
    assert_eq!(
        pairs.iter().map(|p| p.rejected.clone()).collect::<Vec<_>>(),
        ids(&tokens["rejected_input_ids"]),
        "rejected token ids differ from TRL's"
    );

    let (model, hf, pad) = load_model::<T>(expected["model_dir"].as_str().unwrap());
    assert_eq!(pad, expected["pad_token_id"].as_i64().unwrap());
    let init = score_weight(&model);
    // compared as f32: serde_json's default float parser may be 1 ulp (of f64) off
    let as_f32 = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<_>>();
    assert_eq!(
        as_f32(&init),
        as_f32(&f64s(&expected["initial_score_weight"])),
        "{}: initial score.weight differs from the one TRL started from (regenerate the trainer fixtures)",
        expected["model_dir"]
    );

    let initial = model.state_dict();
    let out = tempfile::tempdir().unwrap();
    let cfg = fixture_config(c, out.path());
    let mut trainer = RewardTrainer::<T>::new(cfg, model, hf, None, pad).unwrap();
    let mut losses = Vec::new();
    trainer
        .train(&pairs, &[], 0, &mut |ev| {
            if let Event::Step { loss, .. } = ev {
                losses.push(loss);
            }
            ControlFlow::Continue(())
        })
        .unwrap();

    let want: Vec<&Value> = expected["steps"].as_array().unwrap().iter().collect();
    let logs: Vec<&LogEntry> = trainer.state.log_history.iter().filter(|e| e.split == "train").collect();
    assert_eq!(losses.len(), want.len());
    assert_eq!(logs.len(), want.len());
    let mut table = format!("{run}: step | TRL loss | our loss | rel | TRL grad norm | ours | lr TRL | ours\n");
    let mut worst = (0.0f64, 0usize);
    for (i, (w, (&got, log))) in want.iter().zip(losses.iter().zip(&logs)).enumerate() {
        let trl = w["loss"].as_f64().unwrap();
        let rel = (got - trl).abs() / trl.abs();
        if rel > worst.0 {
            worst = (rel, i + 1);
        }
        let (gn, lr) = (w["grad_norm"].as_f64().unwrap(), w["learning_rate"].as_f64().unwrap());
        table += &format!(
            "{:>4} | {trl:.6} | {got:.6} | {rel:.1e} | {gn:.5} | {:.5} | {lr:.3e} | {:.3e}\n",
            i + 1,
            log.grad_norm.unwrap(),
            log.learning_rate.unwrap()
        );
        assert!(
            (log.learning_rate.unwrap() - lr).abs() <= 1e-12 * lr.max(1.0),
            "step {}: learning rate {} vs TRL {lr}\n{table}",
            i + 1,
            log.learning_rate.unwrap()
        );
        assert!(
            (log.metrics.accuracy - w["accuracy"].as_f64().unwrap()).abs() < 1e-6,
            "step {}: accuracy {} vs TRL {}\n{table}",
            i + 1,
            log.metrics.accuracy,
            w["accuracy"]
        );
        assert_eq!(log.num_tokens, w["num_tokens"].as_u64().unwrap(), "step {}: tokens seen\n{table}", i + 1);
    }
    eprintln!("{table}");
    assert!(
        worst.0 <= LOSS_RTOL,
        "{run}: per-step loss differs from TRL by {:.2e} relative at step {} (bar {LOSS_RTOL:e})\n{table}",
        worst.0,
        worst.1
    );
    // grad norms before clipping: same bar
    for (i, (w, log)) in want.iter().zip(&logs).enumerate() {
        let (trl, got) = (w["grad_norm"].as_f64().unwrap(), log.grad_norm.unwrap());
        assert!(
            (got - trl).abs() <= LOSS_RTOL * trl.abs(),
            "{run}: step {} grad norm {got} vs TRL {trl}\n{table}",
            i + 1
        );
    }

    // final score head after all steps
    let got = score_weight(&trainer.model);
    let want = f64s(&expected["final_score_weight"]);
    let (init_d, d): (f64, f64) = (
        want.iter().zip(&init).map(|(w, i)| (w - i).powi(2)).sum::<f64>().sqrt(),
        want.iter().zip(&got).map(|(w, g)| (w - g).powi(2)).sum::<f64>().sqrt(),
    );
    assert!(
        d <= 1e-3 * init_d.max(1e-12) + 1e-5,
        "{run}: final score.weight is {d:.3e} (L2) from TRL's; training moved it {init_d:.3e}"
    );

    // how far every parameter moved (catches e.g. weight decay applied to the wrong parameters)
    let final_sd = trainer.model.state_dict();
    let flat = |sd: &trl_core::StateDict, k: &str| {
        sd.get(k).unwrap_or_else(|| panic!("{k} missing")).clone().convert::<f32>().to_vec::<f32>().unwrap()
    };
    let deltas = expected["delta_norms"].as_object().unwrap();
    let noise: Vec<&str> = expected["noise_keys"].as_array().unwrap().iter().map(|k| k.as_str().unwrap()).collect();
    assert_eq!(deltas.len(), final_sd.len(), "parameter count");
    for (k, want) in deltas {
        // parameters whose true gradient is zero move by rounding noise only (see the fixture)
        if noise.contains(&k.as_str()) {
            continue;
        }
        let want = want.as_f64().unwrap();
        let got = flat(&final_sd, k)
            .iter()
            .zip(flat(&initial, k))
            .map(|(a, b)| (*a as f64 - b as f64).powi(2))
            .sum::<f64>()
            .sqrt();
        assert!((got - want).abs() <= 1e-4 * want + 1e-7, "{run}: {k} moved {got:.6e} (L2), TRL {want:.6e}");
    }
    losses
}

#[test]
fn parity_gpt2() {
    parity("gpt2");
}

#[test]
fn parity_gpt2_grad_accum_center() {
    parity("gpt2-ga2-center");
}

#[test]
fn parity_gpt2_uneven_grad_accum() {
    parity("gpt2-bs5-ga3");
}

#[test]
fn parity_llama_margin_center() {
    parity("llama-margin-center");
}

#[test]
fn parity_llama_margin_grad_accum() {
    parity("llama-margin-ga2");
}

/// `gradient_checkpointing = true` (burn's balanced checkpointing: element-wise results are
/// recomputed in the backward pass) keeps TRL parity and changes no number: recomputing an
/// element-wise op repeats the same arithmetic.
#[test]
fn gradient_checkpointing_changes_no_number() {
    let run = "gpt2-ga2-center";
    let recomputed = parity_on::<Autodiff<B, BalancedCheckpointing>>(run);
    assert_eq!(recomputed, parity(run), "{run}: checkpointed and plain training differ");
}

/// `bf16 = true`: the projections multiply in bfloat16 (`trl_models::autocast`), as
/// transformers' mixed precision does under `torch.autocast` (`expected-llama-margin-bf16.json`,
/// TRL with `bf16=True` on CPU). The two round differently (TRL also multiplies the attention
/// scores in bf16; we keep attention in f32), so the curves are compared with a bound, not f32's:
/// a bf16 rounding (`u = 2⁻⁹`) at each of the ~`20·layers + 3` steps of a forward pass
/// (`dtype.rs`' `half_tol`), on rewards up to `R` and a loss that moves at most as the reward
/// gap does, gives `|Δloss| ≤ 2·(20·layers + 3)·u·R` per step. The steps must also differ
/// from an f32 run's, or mixed precision never reached the forward pass.
#[test]
fn bf16_mixed_precision_follows_trl() {
    let expected = read_json(&fixture("trainer").join("expected-llama-margin-bf16.json"));
    let c = &expected["config"];
    assert_eq!(c["bf16"], Value::Bool(true));
    let pairs = fixture_pairs(expected["data_file"].as_str().unwrap());
    let train = |bf16: bool| {
        let (model, hf, pad) = load_model::<TB>(expected["model_dir"].as_str().unwrap());
        let out = tempfile::tempdir().unwrap();
        let cfg = RewardConfig { bf16: Some(bf16), ..fixture_config(c, out.path()) };
        let mut trainer = RewardTrainer::<TB>::new(cfg, model, hf, None, pad).unwrap();
        trainer.train(&pairs, &[], 0, &mut |_| ControlFlow::Continue(())).unwrap();
        trainer.state.log_history.iter().filter(|e| e.split == "train").cloned().collect::<Vec<LogEntry>>()
    };
    let (mixed, plain) = (train(true), train(false));
    let want: Vec<&Value> = expected["steps"].as_array().unwrap().iter().collect();
    assert_eq!(mixed.len(), want.len());
    let model_dir = fixture(expected["model_dir"].as_str().unwrap());
    let layers = read_json(&model_dir.join("config.json"))["num_hidden_layers"].as_f64().unwrap();
    let u = 1.0 / 512.0;
    let mut table = String::from("step | TRL bf16 loss | ours bf16 | ours f32\n");
    for (i, ((w, m), p)) in want.iter().zip(&mixed).zip(&plain).enumerate() {
        let trl = w["loss"].as_f64().unwrap();
        let reward_scale =
            w["max_reward"].as_f64().unwrap().abs().max(w["min_reward"].as_f64().unwrap().abs()).max(1.0);
        let bound = 2.0 * (20.0 * layers + 3.0) * u * reward_scale;
        table += &format!("{:>4} | {trl:.5} | {:.5} | {:.5}\n", i + 1, m.loss, p.loss);
        assert!(
            (m.loss - trl).abs() <= bound,
            "step {}: bf16 loss {} vs TRL {trl} (bound {bound:.3})\n{table}",
            i + 1,
            m.loss
        );
        assert_eq!(m.learning_rate, p.learning_rate);
    }
    eprintln!("{table}");
    assert!(mixed.iter().zip(&plain).all(|(m, p)| m.loss != p.loss), "bf16 changed no step's loss\n{table}");
}

#[test]
fn parity_gpt_neox() {
    parity("gpt_neox");
}

#[test]
fn parity_phi3() {
    parity("phi3");
}

#[test]
fn parity_gemma2() {
    parity("gemma2");
}

#[test]
fn parity_gemma3_text() {
    parity("gemma3_text");
}

fn resume_config(out: &Path) -> RewardConfig {
    RewardConfig {
        output_dir: out.to_path_buf(),
        learning_rate: 1e-3,
        max_steps: Some(12),
        // 48 pairs in batches of 5 = 10 micro-batches an epoch (the last one of 3 pairs); with
        // 3 per step an epoch is 4 steps, its last one a single micro-batch.
        per_device_train_batch_size: 5,
        gradient_accumulation_steps: 3,
        center_rewards_coefficient: Some(0.01),
        warmup_steps: 2,
        weight_decay: 0.01,
        // logging every 2 steps and saving every 3: checkpoint-9 holds a half-full log window
        logging_steps: 2,
        save_steps: 3,
        eval_steps: Some(4),
        per_device_eval_batch_size: 4,
        seed: 7,
        shuffle: true,
        num_print_samples: 2,
        ..RewardConfig::default()
    }
}

#[test]
fn resume_is_exact() {
    let pairs = fixture_pairs("pairs_margin.jsonl");
    let (train, eval) = pairs.split_at(40);
    let trainer = |out: &Path| {
        let (model, hf, pad) = load_model("gpt2-rm");
        RewardTrainer::<TB>::new(resume_config(out), model, hf, None, pad).unwrap()
    };

    let a = tempfile::tempdir().unwrap();
    let mut full = trainer(a.path());
    let sum_a = full.train(train, eval, 0, &mut |_| ControlFlow::Continue(())).unwrap();
    assert_eq!(sum_a.global_step, 12);

    // Interrupted after step 10 (checkpoint-9 is the newest), then resumed by a fresh trainer.
    let b = tempfile::tempdir().unwrap();
    let mut first = trainer(b.path());
    let sum = first
        .train(train, eval, 0, &mut |ev| {
            if matches!(ev, Event::Step { step: 10, .. }) {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .unwrap();
    assert_eq!(sum.global_step, 10);
    assert!(!b.path().join("summary.json").exists(), "an interrupted run writes no final outputs");
    drop(first);
    let ckpt = RewardTrainer::<TB>::latest_checkpoint(b.path()).expect("a checkpoint");
    assert_eq!(ckpt.file_name().unwrap(), "checkpoint-9");
    let mut resumed = trainer(b.path());
    resumed.resume_from(&ckpt).unwrap();
    assert_eq!(resumed.state.global_step, 9);
    let sum_b = resumed.train(train, eval, 0, &mut |_| ControlFlow::Continue(())).unwrap();
    assert_eq!(sum_b.global_step, 12);

    let (sa, sb) = (full.model.state_dict(), resumed.model.state_dict());
    let keys: Vec<&str> = sa.keys().collect();
    assert_eq!(keys, sb.keys().collect::<Vec<_>>());
    for k in keys {
        let (x, y) = (sa.get(k).unwrap(), sb.get(k).unwrap());
        assert_eq!(x.shape, y.shape, "{k}");
        assert!(x.as_bytes() == y.as_bytes(), "{k}: resumed weights differ from the uninterrupted run");
    }
    let (ma, mb) = (metrics_lines(a.path()), metrics_lines(b.path()));
    assert_eq!(ma.len(), 6 + 3, "train logs at 2,4,..,12 and evals at 4,8,12");
    assert!(ma.iter().all(|l| serde_json::from_str::<LogEntry>(l).is_ok()), "{ma:#?}");
    assert_eq!(ma, mb, "metrics.jsonl differs after resume");
    assert_eq!(sum_a.train_loss, sum_b.train_loss);
    assert_eq!(sum_a.final_eval, sum_b.final_eval);
    assert_eq!(
        std::fs::read(a.path().join("model.safetensors")).unwrap(),
        std::fs::read(b.path().join("model.safetensors")).unwrap()
    );
}

/// `cargo xtask train` with no arguments, shortened: still learns the task.
#[test]
fn builtin_default_learns() {
    let started = Instant::now();
    let out = tempfile::tempdir().unwrap();
    let cfg = RewardConfig {
        output_dir: out.path().to_path_buf(),
        max_steps: Some(600),
        eval_steps: Some(100),
        save_steps: 300,
        logging_steps: 20,
        ..synthetic::training_config()
    };
    let mut job = synthetic::job::<TB>(cfg, &device()).unwrap();
    let set_up = started.elapsed();
    let summary = job
        .trainer
        .train(&job.train, &job.eval, job.dropped, &mut |ev| {
            if let Event::Log(e) = ev {
                if e.split == "eval" {
                    eprintln!("step {} eval accuracy {:.3} loss {:.4}", e.step, e.metrics.accuracy, e.loss);
                }
            }
            ControlFlow::Continue(())
        })
        .unwrap();
    let eval = summary.final_eval.expect("a final evaluation");
    eprintln!(
        "built-in job: {} steps, held-out accuracy {:.3}, set-up {:.1}s, training {:.1}s, total {:.1}s",
        summary.global_step,
        eval.metrics.accuracy,
        set_up.as_secs_f64(),
        summary.seconds,
        started.elapsed().as_secs_f64()
    );
    assert_eq!(eval.pairs_per_sec, None);
    assert!(
        eval.metrics.accuracy >= 0.80,
        "held-out accuracy {:.3} < 0.80 after {} steps",
        eval.metrics.accuracy,
        summary.global_step
    );
    for f in [
        "config.json",
        "model.safetensors",
        "metrics.jsonl",
        "summary.json",
        "samples.md",
        "loss.png",
        "accuracy.png",
        "checkpoint-300",
        "checkpoint-600",
    ] {
        assert!(out.path().join(f).exists(), "{f} missing from the output directory");
    }
    // No bound on the wall time: a timed test fails on a slow or busy machine (speed is
    // measured by `cargo xtask bench`, not asserted here).
}
