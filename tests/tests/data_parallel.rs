//! Data-parallel training (issue 18): `data_parallel = N` workers with `per_device_train_batch_size
//! = b` train as one worker with batch `N·b` (gradients summed by burn's collective all-reduce,
//! then clipped and stepped once), including an epoch's ragged end where a worker has no pairs,
//! and a run of N workers resumes exactly.

use std::ops::ControlFlow;
use std::path::Path;

use burn::backend::Autodiff;
use trl_core::Tokenizer;
use trl_heads::ForSequenceClassification;
use trl_reward::data::{read_rows, tokenize, TokenizedPair};
use trl_reward::{Event, RewardConfig, RewardTrainer, Summary};
use trl_tests::{fixture, metrics_lines, B};

type TB = Autodiff<B>;

fn pairs() -> Vec<TokenizedPair> {
    let tok = Tokenizer::from_dir(&fixture("tokenizer")).expect("fixture tokenizer");
    let eos = tok.eos_token.clone().expect("EOS");
    let rows = read_rows(&fixture("trainer").join("pairs_margin.jsonl"), false).expect("pairs").rows;
    tokenize(&rows, &tok, &eos, Some(1024), None).expect("tokenize").pairs
}

/// 39 training pairs in global micro-batches of 6: an epoch is 7 micro-batches, the last of 3
/// pairs, which the second of two workers gets none of; with 2 per step an epoch is 4 steps.
fn config(out: &Path, workers: usize, per_device: usize) -> RewardConfig {
    RewardConfig {
        output_dir: out.to_path_buf(),
        learning_rate: 1e-3,
        max_steps: Some(7),
        per_device_train_batch_size: per_device,
        gradient_accumulation_steps: 2,
        center_rewards_coefficient: Some(0.01),
        warmup_steps: 1,
        weight_decay: 0.01,
        // GPT-2's key biases have a zero gradient in exact arithmetic (softmax ignores a shift
        // shared by every key), so theirs is rounding noise, which AdamW's eps 1e-8 would blow up
        // to steps of ±lr that differ with the order of additions; eps 1e-4 keeps the noise's
        // steps below 1e-7 while every trained weight still moves by ~lr
        adam_epsilon: 1e-4,
        logging_steps: 1,
        save_steps: 3,
        eval_steps: Some(4),
        per_device_eval_batch_size: 4,
        seed: 11,
        shuffle: true,
        num_print_samples: 0,
        data_parallel: workers,
        ..RewardConfig::default()
    }
}

fn trainer(cfg: RewardConfig) -> RewardTrainer<TB> {
    let (model, hf, _) =
        ForSequenceClassification::<TB>::from_pretrained(&fixture("gpt2-rm"), None, &Default::default())
            .expect("load reward model");
    let pad = model.pad_token_id.expect("pad_token_id");
    RewardTrainer::new(cfg, model, hf, None, pad).expect("trainer")
}

fn run(t: &mut RewardTrainer<TB>, train: &[TokenizedPair], eval: &[TokenizedPair], stop_at: u64) -> Summary {
    t.train(train, eval, 0, &mut |ev| match ev {
        Event::Step { step, .. } if step == stop_at => ControlFlow::Break(()),
        _ => ControlFlow::Continue(()),
    })
    .expect("training")
}

fn weights(t: &RewardTrainer<TB>) -> Vec<(String, Vec<f32>)> {
    let sd = t.model.state_dict();
    sd.keys().map(|k| (k.to_string(), sd.get(k).unwrap().clone().convert::<f32>().to_vec::<f32>().unwrap())).collect()
}

/// Every number in the log: step losses, metrics and gradient norms.
fn logged(dir: &Path) -> Vec<f64> {
    let mut all = Vec::new();
    for line in metrics_lines(dir) {
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        for k in ["loss", "grad_norm", "accuracy", "margin", "mean_reward"] {
            if let Some(x) = v.get(k).and_then(|x| x.as_f64()).or_else(|| v["metrics"].get(k).and_then(|x| x.as_f64()))
            {
                all.push(x);
            }
        }
    }
    all
}

/// Two workers with batch 3 against one with batch 6: the same pairs per micro-batch, the loss
/// weighted by each share, the gradients summed. What differs is only the order of f32
/// additions (per-pair terms summed inside one backward pass or across the two), each a relative
/// rounding of `u = 2⁻²⁴` on sums of at most 6 pairs' terms, which AdamW's normalised steps of at
/// most `lr = 1e-3` carry into the weights scaled down: `1e-5` bounds them with room to spare,
/// while one step with a wrong weighting or a dropped share moves weights by ~`lr`.
#[test]
fn two_workers_train_as_one_with_the_doubled_batch() {
    let all = pairs();
    let (train, eval) = all.split_at(39);
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut two = trainer(config(a.path(), 2, 3));
    let mut one = trainer(config(b.path(), 1, 6));
    let (s2, s1) = (run(&mut two, train, eval, 0), run(&mut one, train, eval, 0));
    assert_eq!((s2.global_step, s1.global_step), (7, 7));
    assert!((s2.train_loss - s1.train_loss).abs() <= 1e-5, "{} vs {}", s2.train_loss, s1.train_loss);
    let (l2, l1) = (logged(a.path()), logged(b.path()));
    assert_eq!(l2.len(), l1.len());
    assert!(l1.len() > 20, "the logs hold the steps' numbers: {l1:?}");
    for (x, y) in l2.iter().zip(&l1) {
        assert!((x - y).abs() <= 1e-5 * x.abs().max(1.0), "logged {x} with 2 workers, {y} with 1");
    }
    let mut moved = 0.0f32;
    let start = weights(&trainer(config(b.path(), 1, 6)));
    for (((k, x), (_, y)), (_, w0)) in weights(&two).iter().zip(weights(&one)).zip(&start) {
        for (i, ((x, y), w)) in x.iter().zip(y).zip(w0).enumerate() {
            assert!((x - y).abs() <= 1e-5, "{k}[{i}]: {x} with 2 workers, {y} with 1");
            moved = moved.max((x - w).abs());
        }
    }
    assert!(moved > 1e-3, "training moved the weights (by at most {moved})");
}

/// A two-worker run interrupted after step 5 (newest checkpoint: step 3) and resumed by a fresh
/// trainer ends bit for bit where the uninterrupted two-worker run does.
#[test]
fn two_workers_resume_exactly() {
    let all = pairs();
    let (train, eval) = all.split_at(39);
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut full = trainer(config(a.path(), 2, 3));
    run(&mut full, train, eval, 0);
    let mut first = trainer(config(b.path(), 2, 3));
    assert_eq!(run(&mut first, train, eval, 5).global_step, 5);
    drop(first);
    let ckpt = RewardTrainer::<TB>::latest_checkpoint(b.path()).expect("a checkpoint");
    let mut resumed = trainer(config(b.path(), 2, 3));
    resumed.resume_from(&ckpt).unwrap();
    assert_eq!(resumed.state.global_step, 3);
    run(&mut resumed, train, eval, 0);
    for ((k, x), (_, y)) in weights(&full).iter().zip(weights(&resumed)) {
        assert!(x == &y, "{k}: the resumed two-worker run differs");
    }
    assert_eq!(metrics_lines(a.path()), metrics_lines(b.path()));
}

/// Bad settings are errors that say what to set.
#[test]
fn data_parallel_settings_are_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let err = RewardConfig { data_parallel: 0, ..config(tmp.path(), 1, 2) }.validate().unwrap_err().to_string();
    assert!(err.contains("data_parallel is 0"), "{err}");
    let mut t = trainer(config(tmp.path(), 2, 2));
    let err = t.set_worker_devices(vec![Default::default()]).unwrap_err().to_string();
    assert!(err.contains("1 worker devices for data_parallel = 2"), "{err}");
}

/// A share that fails on a worker's thread ends the step on every worker with that worker's
/// error (no worker is left waiting in the all-reduce), and the next run can use the collective.
#[test]
fn a_failing_worker_ends_the_run_with_its_error() {
    let mut all = pairs();
    all[4].chosen.clear(); // in the first micro-batch's second share (pairs 3..6), unshuffled
    let tmp = tempfile::tempdir().unwrap();
    let mut t = trainer(RewardConfig { shuffle: false, ..config(tmp.path(), 2, 3) });
    let err = t.train(&all[..39], &[], 0, &mut |_| ControlFlow::Continue(())).unwrap_err().to_string();
    assert!(err.contains("worker 1") && err.contains("row 1 has no tokens"), "{err}");
    assert_eq!(t.state.global_step, 0);
    let ok = tempfile::tempdir().unwrap();
    let mut t = trainer(RewardConfig { max_steps: Some(1), ..config(ok.path(), 2, 3) });
    assert_eq!(run(&mut t, &all[5..39], &[], 0).global_step, 1, "the collective is usable again");
}
