//! The built-in task of `cargo xtask train`: generated in code, no downloads.
//!
//! Each prompt hides a number among filler sentences and asks for it back; the chosen
//! response repeats it, the rejected one says another number. A reward model has to find the
//! asked-for number and compare it with the answer — learnable by a tiny transformer.

use std::str::FromStr;

use burn::tensor::backend::AutodiffBackend;
use serde_json::json;

use trl_core::{HfConfig, Tokenizer};
use trl_heads::ForSequenceClassification;

use crate::collate::SplitMix64;
use crate::config::RewardConfig;
use crate::data::{tokenize, Content, PreferenceRow};
use crate::error::Result;
use crate::trainer::{Job, RewardTrainer};

const FILLER: &[&str] = &[
    "the", "cat", "sat", "on", "a", "mat", "while", "rain", "fell", "over", "quiet", "hills", "and", "birds", "sang",
    "near", "old", "river", "boats", "drift", "slowly", "past", "green", "fields", "under", "grey", "sky", "children",
    "play", "games", "today",
];
const FIXED: &[&str] = &["please", "repeat", "number", "answer", ":", "."];
/// How many distinct numbers the task uses.
pub const NUMBERS: usize = 20;
/// Training and held-out rows of the built-in job.
pub const TRAIN_ROWS: usize = 4096;
pub const EVAL_ROWS: usize = 512;
pub const PAD: &str = "<pad>";
pub const EOS: &str = "<eos>";
pub const UNK: &str = "<unk>";

/// Every word the task uses, specials first (`<pad>` = 0, `<eos>` = 1, `<unk>` = 2).
pub fn vocabulary() -> Vec<String> {
    let mut v: Vec<String> = [PAD, EOS, UNK].iter().map(|s| s.to_string()).collect();
    v.extend(FIXED.iter().map(|s| s.to_string()));
    v.extend(FILLER.iter().filter(|w| !FIXED.contains(w)).map(|s| s.to_string()));
    v.extend((0..NUMBERS).map(|n| n.to_string()));
    v
}

/// A word-level tokenizer over [`vocabulary`] (whitespace split, specials as added tokens).
pub fn tokenizer() -> Tokenizer {
    let vocab = vocabulary();
    let added: Vec<_> = vocab[..3]
        .iter()
        .enumerate()
        .map(|(i, t)| json!({"id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}))
        .collect();
    let map: serde_json::Map<String, serde_json::Value> =
        vocab.iter().enumerate().map(|(i, w)| (w.clone(), json!(i))).collect();
    let spec = json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": null, "pre_tokenizer": {"type": "WhitespaceSplit"}, "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": map, "unk_token": UNK},
    });
    let inner = tokenizers::Tokenizer::from_str(&spec.to_string()).expect("the built-in tokenizer spec is valid");
    let mut tok = Tokenizer::from_tokenizer(inner, "<built-in>".into());
    tok.eos_token = Some(EOS.into());
    tok.pad_token = Some(PAD.into());
    tok
}

fn sentence(rng: &mut SplitMix64) -> String {
    let n = 3 + rng.below(4);
    let words: Vec<&str> = (0..n).map(|_| FILLER[rng.below(FILLER.len())]).collect();
    format!("{} .", words.join(" "))
}

/// `n` preference rows drawn with `seed` (explicit prompt, plain text).
pub fn rows(n: usize, seed: u64) -> Vec<PreferenceRow> {
    let mut rng = SplitMix64(seed);
    (0..n)
        .map(|_| {
            let target = rng.below(NUMBERS);
            let wrong = (target + 1 + rng.below(NUMBERS - 1)) % NUMBERS;
            let (before, after) = (sentence(&mut rng), sentence(&mut rng));
            let prompt = format!("{before} please repeat number {target} . {after} answer :");
            PreferenceRow {
                prompt: Some(Content::Text(prompt)),
                chosen: Content::Text(format!(" {target} ")),
                rejected: Content::Text(format!(" {wrong} ")),
                margin: None,
            }
        })
        .collect()
}

/// The small Llama-style model the built-in task trains (random init).
pub fn model_config() -> HfConfig {
    HfConfig::from_value(json!({
        "architectures": ["LlamaForSequenceClassification"],
        "model_type": "llama",
        "vocab_size": vocabulary().len(),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "max_position_embeddings": 128,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": false,
        "initializer_range": 0.02,
        "pad_token_id": 0,
        "eos_token_id": 1,
        "id2label": {"0": "LABEL_0"},
        "label2id": {"LABEL_0": 0},
    }))
    .expect("built-in config is an object")
}

/// Training settings of the built-in job.
pub fn training_config() -> RewardConfig {
    RewardConfig {
        output_dir: "runs/default".into(),
        learning_rate: 1e-3,
        max_steps: Some(800),
        per_device_train_batch_size: 16,
        per_device_eval_batch_size: 64,
        logging_steps: 20,
        eval_steps: Some(200),
        save_steps: 200,
        warmup_ratio: 0.05,
        max_length: Some(64),
        // the 2-layer model's activations are a few MB: recomputing them would only cost
        // time (12% here), so the built-in job keeps them
        gradient_checkpointing: false,
        ..RewardConfig::default()
    }
}

/// Sets up the built-in job with `config` (normally [`training_config`], possibly edited):
/// a freshly initialised [`model_config`] model (the backend seeded with `config.seed` first),
/// [`TRAIN_ROWS`] training rows drawn with `config.seed`, [`EVAL_ROWS`] held-out rows drawn
/// with another seed, and the built-in tokenizer.
pub fn job<B: AutodiffBackend>(config: RewardConfig, device: &B::Device) -> Result<Job<B>> {
    config.validate()?;
    B::seed(device, config.seed);
    let (model, hf) = ForSequenceClassification::<B>::from_config(&model_config(), Some(1), device)?;
    let tok = tokenizer();
    let pad_id = model.pad_token_id.or(tok.pad_id()).expect("the built-in model config has a pad id");
    let eos = config.eos_token.clone().unwrap_or_else(|| EOS.to_string());
    let train = tokenize(&rows(TRAIN_ROWS, config.seed), &tok, &eos, config.max_length, None)?;
    let eval = tokenize(&rows(EVAL_ROWS, config.seed.wrapping_add(1_000_003)), &tok, &eos, config.max_length, None)?;
    let dropped = train.dropped_too_long + eval.dropped_too_long;
    let trainer = RewardTrainer::new(config, model, hf, Some(tok), pad_id)?;
    Ok(Job { trainer, train: train.pairs, eval: eval.pairs, dropped })
}
