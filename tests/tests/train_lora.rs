//! Reward training with LoRA and from random init (issue 6, "full fine-tune or LoRA" and
//! "from a config with random init"): only the adapter and `score` train, the base stays
//! bit-identical, the output is a PEFT adapter that reloads to identical rewards, and resuming
//! from a LoRA checkpoint ends on the same adapter, bit for bit, as an uninterrupted run.
//!
//! The tests here seed burn's backend RNG, which is one per process, so they run one at a time
//! (`serial`).

use std::ops::ControlFlow;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use burn::backend::Autodiff;
use burn::module::AutodiffModule;
use burn::prelude::*;
use serde_json::{json, Value};

use trl_core::module_io::module_state_dict_where;
use trl_core::{HfConfig, StateDict, Tokenizer};
use trl_heads::ForSequenceClassification;
use trl_reward::collate::collate;
use trl_reward::data::{read_rows, tokenize, TokenizedPair};
use trl_reward::{Event, LoraSettings, RewardConfig, RewardTrainer};
use trl_tests::{fixture, metrics_lines, to_vec, B};

type TB = Autodiff<B>;

fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn dev() -> burn::tensor::Device<B> {
    Default::default()
}

fn tokenizer() -> Tokenizer {
    Tokenizer::from_dir(&fixture("tokenizer")).expect("fixture tokenizer")
}

/// `tests/fixtures/trainer/pairs.jsonl` (48 pairs), tokenized as the trainer does.
fn fixture_pairs() -> Vec<TokenizedPair> {
    let tok = tokenizer();
    let eos = tok.eos_token.clone().expect("EOS");
    let rows = read_rows(&fixture("trainer").join("pairs.jsonl"), false).expect("pairs").rows;
    tokenize(&rows, &tok, &eos, Some(1024), None).expect("tokenize").pairs
}

fn load(dir: &str) -> (ForSequenceClassification<TB>, HfConfig, i64) {
    let (model, hf, _) = ForSequenceClassification::<TB>::from_pretrained(&fixture(dir), None, &dev()).unwrap();
    let pad = model.pad_token_id.expect("pad_token_id");
    (model, hf, pad)
}

fn is_lora(k: &str) -> bool {
    k.contains(".lora_A.") || k.contains(".lora_B.")
}

/// Every parameter outside the adapter and `score`: what must not move.
fn base_of<BK: Backend>(m: &ForSequenceClassification<BK>) -> StateDict {
    module_state_dict_where(m, |k| !is_lora(k) && !k.starts_with("score."))
}

/// Rewards of `pairs` (chosen then rejected), as the trainer scores them.
fn rewards(model: &ForSequenceClassification<B>, pairs: &[TokenizedPair], pad: i64) -> Vec<f32> {
    let refs: Vec<&TokenizedPair> = pairs.iter().collect();
    let (batch, _) = collate(&refs, pad, None).unwrap();
    to_vec(model.forward(&batch, false).unwrap().rewards)
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

fn run(trainer: &mut RewardTrainer<TB>, train: &[TokenizedPair], eval: &[TokenizedPair], stop_at: Option<u64>) -> u64 {
    trainer
        .train(train, eval, 0, &mut |ev| match ev {
            Event::Step { step, .. } if Some(step) == stop_at => ControlFlow::Break(()),
            _ => ControlFlow::Continue(()),
        })
        .unwrap()
        .global_step
}

/// LoRA on the Llama reward model: the loss falls, only the adapter and `score` move (and only
/// they have optimizer moments), and the output directory is a PEFT adapter that reloads, with
/// the base given or found through `base_model_name_or_path`, to identical rewards.
#[test]
fn lora_trains_adapter_and_score_only() {
    let _serial = serial();
    let pairs = fixture_pairs();
    let (train, eval) = pairs.split_at(40);
    let (model, hf, pad) = load("llama-rm");
    let frozen = base_of(&model);
    let score_before = model.state_dict().get("score.weight").cloned().unwrap();
    let out = tempfile::tempdir().unwrap();
    let cfg = RewardConfig {
        output_dir: out.path().to_path_buf(),
        learning_rate: 5e-3,
        max_steps: Some(12),
        per_device_train_batch_size: 4,
        logging_steps: 4,
        save_steps: 6,
        weight_decay: 0.01,
        seed: 3,
        lora: Some(LoraSettings { r: 8, alpha: 16.0, ..Default::default() }),
        ..RewardConfig::default()
    };
    let mut trainer = RewardTrainer::new(cfg, model, hf, Some(tokenizer()), pad).unwrap();
    assert_eq!(trainer.adapter(), Some("default"));
    let before = trainer.evaluate(train).unwrap().loss;
    assert_eq!(run(&mut trainer, train, eval, None), 12);
    let after = trainer.evaluate(train).unwrap().loss;
    eprintln!("training-set loss {before:.4} -> {after:.4}");
    assert!(after < 0.8 * before, "LoRA training should lower the loss: {before} -> {after}");

    assert!(base_of(&trainer.model) == frozen, "base weights must be bit-identical after LoRA training");
    assert_ne!(trainer.model.state_dict().get("score.weight"), Some(&score_before), "score trains");

    // optimizer moments for the adapter and score only
    let opt = trl_core::checkpoint::load_safetensors(&out.path().join("checkpoint-12/optimizer.safetensors")).unwrap();
    let keys: Vec<&str> = opt.keys().collect();
    assert_eq!(keys.len(), 2 * (2 * 2 * 2 + 1), "{keys:#?}");
    assert!(keys.iter().all(|k| is_lora(k) || k.ends_with("score.weight")), "{keys:#?}");

    // PEFT's layout: adapter files, no full model
    let dir = out.path();
    for f in ["adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "summary.json", "samples.jsonl"] {
        assert!(dir.join(f).is_file(), "{f} missing");
    }
    for f in ["model.safetensors", "config.json"] {
        assert!(!dir.join(f).exists(), "{f} should not be written for an adapter");
    }
    let ac = read_json(&dir.join("adapter_config.json"));
    assert_eq!(ac["peft_type"], "LORA");
    assert_eq!(ac["task_type"], "SEQ_CLS");
    assert_eq!(ac["r"], 8);
    assert_eq!(ac["lora_alpha"], 16);
    assert_eq!(ac["lora_dropout"], 0.05, "the configured dropout is saved, as TRL does");
    assert_eq!(ac["target_modules"], json!(["q_proj", "v_proj"]), "PEFT's default for llama");
    assert_eq!(ac["modules_to_save"], json!(["score"]));
    let base = std::fs::canonicalize(fixture("llama-rm")).unwrap();
    assert_eq!(ac["base_model_name_or_path"], json!(base.display().to_string()));
    let file = trl_core::checkpoint::load_file(&dir.join("adapter_model.safetensors")).unwrap();
    assert_eq!(file.len(), 2 * 2 * 2 + 1);
    assert_eq!(file.get("base_model.model.score.weight").unwrap().shape.to_vec(), vec![1, 64]);
    assert!(trl_core::peft::is_adapter_dir(&dir.join("checkpoint-6")));

    let want = rewards(&trainer.model.valid(), eval, pad);
    let (given, _, restored) = ForSequenceClassification::<B>::from_adapter(dir, Some(&base), &dev()).unwrap();
    assert!(restored);
    assert_eq!(rewards(&given, eval, pad), want, "from_adapter(out, Some(base)) rewards");
    let (found, cfg, _) = ForSequenceClassification::<B>::from_pretrained(dir, None, &dev()).unwrap();
    assert_eq!(cfg.architectures(), vec!["LlamaForSequenceClassification".to_string()]);
    assert_eq!(rewards(&found, eval, pad), want, "from_pretrained(out) through base_model_name_or_path");
    let samples: Vec<Value> = std::fs::read_to_string(dir.join("samples.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(samples[0]["chosen_reward"].as_f64().unwrap() as f32, want[0], "samples.jsonl shows the same rewards");
}

fn resume_config(out: &Path, disable_dropout: bool) -> RewardConfig {
    RewardConfig {
        output_dir: out.to_path_buf(),
        learning_rate: 3e-3,
        max_steps: Some(8),
        per_device_train_batch_size: 5,
        gradient_accumulation_steps: 2,
        warmup_steps: 2,
        weight_decay: 0.01,
        logging_steps: 2,
        save_steps: 3,
        eval_steps: Some(4),
        seed: 11,
        disable_dropout,
        num_print_samples: 2,
        lora: Some(LoraSettings {
            r: 4,
            alpha: 8.0,
            dropout: 0.1,
            target_modules: Some(vec!["c_attn".into(), "c_fc".into()]),
            use_rslora: true,
            ..Default::default()
        }),
        ..RewardConfig::default()
    }
}

/// GPT-2 (Conv1D, `fan_in_fan_out`) with LoRA dropout on, gradient accumulation, weight decay
/// and rslora: interrupted after step 5 and resumed from checkpoint-3, the run ends on the same
/// adapter, `score` and metrics as an uninterrupted one, bit for bit.
#[test]
fn lora_resume_is_exact() {
    let _serial = serial();
    let pairs = fixture_pairs();
    let (train, eval) = pairs.split_at(40);
    let trainer = |out: &Path, disable_dropout: bool| {
        let (model, hf, pad) = load("gpt2-rm");
        RewardTrainer::<TB>::new(resume_config(out, disable_dropout), model, hf, None, pad).unwrap()
    };

    let a = tempfile::tempdir().unwrap();
    let mut full = trainer(a.path(), false);
    assert_eq!(run(&mut full, train, eval, None), 8);

    let b = tempfile::tempdir().unwrap();
    assert_eq!(run(&mut trainer(b.path(), false), train, eval, Some(5)), 5);
    assert!(!b.path().join("adapter_model.safetensors").exists(), "an interrupted run writes no final adapter");
    let ckpt = RewardTrainer::<TB>::latest_checkpoint(b.path()).unwrap();
    assert_eq!(ckpt.file_name().unwrap(), "checkpoint-3");
    let mut resumed = trainer(b.path(), false);
    resumed.resume_from(&ckpt).unwrap();
    assert_eq!(resumed.state.global_step, 3);
    assert_eq!(run(&mut resumed, train, eval, None), 8);

    let file = |d: &Path| std::fs::read(d.join("adapter_model.safetensors")).unwrap();
    assert!(file(a.path()) == file(b.path()), "resumed adapter differs from the uninterrupted run's");
    assert!(full.model.state_dict() == resumed.model.state_dict(), "resumed model differs");
    assert_eq!(metrics_lines(a.path()), metrics_lines(b.path()), "metrics.jsonl differs after resume");
    let ac = read_json(&a.path().join("adapter_config.json"));
    assert_eq!((ac["fan_in_fan_out"].clone(), ac["use_rslora"].clone()), (json!(true), json!(true)));

    // dropout was live: the same run with disable_dropout ends elsewhere
    let c = tempfile::tempdir().unwrap();
    run(&mut trainer(c.path(), true), train, eval, None);
    assert!(file(c.path()) != file(a.path()), "lora_dropout should change training when disable_dropout is off");

    // a LoRA checkpoint does not resume a full fine-tune, nor a full checkpoint a LoRA run
    let (model, hf, pad) = load("gpt2-rm");
    let cfg = RewardConfig { lora: None, ..resume_config(c.path(), true) };
    let mut plain = RewardTrainer::<TB>::new(cfg, model, hf, None, pad).unwrap();
    let err = plain.resume_from(&ckpt).unwrap_err().to_string();
    assert!(err.contains("LoRA checkpoint"), "{err}");
}

/// `cargo xtask train --init-config`: a random-init backbone and a fresh score from a config
/// alone, reproducible by seed, trained and reloaded; LoRA is refused without a base on disk.
#[test]
fn random_init_from_config() {
    let _serial = serial();
    let mut raw = read_json(&fixture("llama-rm").join("config.json"));
    let o = raw.as_object_mut().unwrap();
    o.insert("architectures".into(), json!(["LlamaForCausalLM"]));
    o.remove("id2label");
    o.remove("label2id");
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("config.json"), raw.to_string()).unwrap();
    let hf = HfConfig::load(tmp.path()).unwrap();

    let init = |seed| {
        TB::seed(&dev(), seed);
        ForSequenceClassification::<TB>::from_config(&hf, None, &dev()).unwrap()
    };
    let (model, marked) = init(5);
    assert_eq!(marked.architectures(), vec!["LlamaForSequenceClassification".to_string()]);
    assert_eq!(trl_heads::seq_cls::num_labels(&marked), 1, "a causal-LM config gets one label, as TRL forces");
    let sd = model.state_dict();
    assert!(init(5).0.state_dict() == sd, "same seed, same weights");
    assert!(init(6).0.state_dict() != sd, "another seed, other weights");
    let pretrained = trl_core::checkpoint::load_dir(&fixture("llama-rm")).unwrap();
    assert_eq!(sd.keys().collect::<Vec<_>>(), pretrained.keys().collect::<Vec<_>>(), "the checkpoint's layout");
    assert!(sd != pretrained);

    let pairs = fixture_pairs();
    let pad = model.pad_token_id.unwrap();
    let out = tempfile::tempdir().unwrap();
    let cfg = RewardConfig {
        output_dir: out.path().to_path_buf(),
        max_steps: Some(4),
        per_device_train_batch_size: 8,
        num_print_samples: 0,
        ..RewardConfig::default()
    };
    let mut trainer = RewardTrainer::new(cfg.clone(), model, marked.clone(), Some(tokenizer()), pad).unwrap();
    assert_eq!(trainer.adapter(), None);
    run(&mut trainer, &pairs, &[], None);
    let (back, _, restored) = ForSequenceClassification::<B>::from_pretrained(out.path(), None, &dev()).unwrap();
    assert!(restored);
    assert_eq!(rewards(&back, &pairs[..8], pad), rewards(&trainer.model.valid(), &pairs[..8], pad));

    let lora = RewardConfig { lora: Some(LoraSettings::default()), ..cfg };
    let err = match RewardTrainer::new(lora, init(5).0, marked, None, pad) {
        Ok(_) => panic!("LoRA on a random-init model with no base on disk should be refused"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("base_model_name_or_path"), "{err}");
}

/// The `lora` section of a config file (TRL's `lora_` names accepted) and PEFT's defaults.
#[test]
fn lora_settings_follow_trl_and_peft() {
    use trl_core::peft::TargetModules;
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("cfg.toml");
    std::fs::write(&path, "learning_rate = 2e-4\n[lora]\nlora_r = 4\nuse_rslora = true\n").unwrap();
    let cfg = trl_reward::config_file::read(&path).unwrap().0;
    let l = cfg.lora.clone().expect("a lora section turns LoRA on");
    assert_eq!((l.r, l.alpha, l.dropout, l.use_rslora), (4, 32.0, 0.05, true), "TRL ModelConfig defaults");
    assert_eq!(RewardConfig::default().lora, None);

    let gpt2 = LoraSettings::default().lora_config("gpt2").unwrap();
    assert_eq!(gpt2.target_modules, TargetModules::Names(vec!["c_attn".into()]));
    assert!(gpt2.fan_in_fan_out, "PEFT forces fan_in_fan_out on GPT-2's Conv1D");
    assert_eq!((gpt2.r, gpt2.lora_alpha, gpt2.task_type.as_deref()), (16, 32.0, Some("SEQ_CLS")));
    assert_eq!(gpt2.modules_to_save, vec!["score".to_string()]);
    let qwen = LoraSettings { modules_to_save: vec![], ..Default::default() }.lora_config("qwen2").unwrap();
    assert_eq!(qwen.target_modules, TargetModules::Names(vec!["q_proj".into(), "v_proj".into()]));
    assert_eq!(qwen.modules_to_save, vec!["score".to_string()], "score is always saved");
    let all = LoraSettings { target_modules: Some(vec!["all-linear".into()]), ..Default::default() };
    assert_eq!(all.lora_config("llama").unwrap().target_modules, TargetModules::AllLinear);
    assert!(LoraSettings::default().lora_config("bert").unwrap_err().to_string().contains("target_modules"));
    std::fs::write(&path, "[lora]\nr = 0\n").unwrap();
    assert!(trl_reward::config_file::read(&path).is_err());
}
