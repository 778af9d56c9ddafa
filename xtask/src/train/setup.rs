//! The user's job for `cargo xtask train`: the model (`--model`, or random init from
//! `--init-config`), its tokenizer and pad id, the LoRA base, and the data (`--train-file`,
//! `--eval-file` or `eval_split`).

use std::path::{Path, PathBuf};

use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;

use trl_core::dtype::{DtypeArg, Holding, Quantize, WeightDtype};
use trl_core::{source, HfConfig, Tokenizer};
use trl_heads::ForSequenceClassification;
use trl_reward::data::{read_rows, tokenize};
use trl_reward::{Job, RewardConfig, RewardTrainer};

use super::{Error, TrainArgs};

/// A reward model ready to train, with its config and tokenizer.
struct Model<B: Backend> {
    model: ForSequenceClassification<B>,
    config: HfConfig,
    tokenizer: Tokenizer,
}

/// `--model`: a checkpoint (a causal LM gets a fresh score head) or an adapter directory.
/// The frozen base of a LoRA run (`lora`: a new adapter; or an adapter directory to keep
/// training) with `bf16` / `fp16` (`half`) is held in that dtype (the projections multiply in it
/// anyway, [`trl_models::autocast`]); everything else trains from f32.
fn pretrained<B: Backend>(
    id: &str,
    tokenizer: Option<&Path>,
    half: Option<WeightDtype>,
    lora: bool,
    device: &Device<B>,
) -> Result<Model<B>, Error> {
    let dir = source::resolve(id)?;
    let frozen_base = lora || trl_core::peft::is_adapter_dir(&dir);
    let dtype = half.filter(|_| frozen_base).unwrap_or(WeightDtype::F32);
    let holding = Holding { dtype: DtypeArg::Fixed(dtype), quantize: Quantize::None };
    let tokenizer = Tokenizer::from_dir(tokenizer.unwrap_or(&dir))?;
    let (model, config, restored) = ForSequenceClassification::<B>::from_pretrained_as(&dir, None, holding, device)?;
    if !restored {
        eprintln!("note: {} has no `score` head; starting a fresh one (num_labels = 1)", dir.display());
    }
    Ok(Model { model, config, tokenizer })
}

/// `--init-config`: random weights for the architecture of a `config.json` (or a directory
/// holding one); the tokenizer comes from `--tokenizer` or the config's directory.
fn random_init<B: Backend>(path: &Path, tokenizer: Option<&Path>, device: &Device<B>) -> Result<Model<B>, Error> {
    let (file, dir) = if path.is_dir() {
        (path.join("config.json"), path.to_path_buf())
    } else {
        (path.to_path_buf(), path.parent().map(Path::to_path_buf).unwrap_or_default())
    };
    let text = std::fs::read_to_string(&file).map_err(|e| format!("--init-config {}: {e}", file.display()))?;
    let config = HfConfig::parse_str(&text, file.clone())?;
    let tok_dir = match tokenizer {
        Some(t) => t.to_path_buf(),
        None if dir.join("tokenizer.json").is_file() => dir,
        None => {
            return Err(
                format!("--init-config {}: no tokenizer.json beside it; pass --tokenizer DIR", file.display()).into()
            )
        }
    };
    let tokenizer = Tokenizer::from_dir(&tok_dir)?;
    if let Some(v) = config.get_usize("vocab_size").filter(|&v| v < tokenizer.vocab_size()) {
        return Err(format!(
            "--init-config {}: vocab_size {v} is smaller than the tokenizer's {} tokens ({})",
            file.display(),
            tokenizer.vocab_size(),
            tok_dir.display()
        )
        .into());
    }
    let (model, config) = ForSequenceClassification::<B>::from_config(&config, None, device)?;
    eprintln!("random init from {} (seeded by `seed`), tokenizer {}", file.display(), tok_dir.display());
    Ok(Model { model, config, tokenizer })
}

/// What the adapter's `base_model_name_or_path` (and `revision`) should say for `--model id`: a
/// local directory as an absolute path (PEFT resolves relative paths from its working
/// directory), a hub id as `org/name` with its revision.
fn base_name(id: &str) -> (String, Option<String>) {
    let local = PathBuf::from(id);
    if local.is_dir() {
        return (std::fs::canonicalize(&local).unwrap_or(local).display().to_string(), None);
    }
    match source::parse_hub_id(id) {
        Some(hub) if id.contains('@') => (hub.repo, Some(hub.revision)),
        _ => (id.to_string(), None),
    }
}

pub(super) fn user_job<B: AutodiffBackend>(
    args: &TrainArgs,
    mut cfg: RewardConfig,
    device: &Device<B>,
) -> Result<Job<B>, Error> {
    B::seed(device, cfg.seed);
    let tok = args.tokenizer.as_deref();
    let Model { mut model, config: hf_config, tokenizer } = match (&args.model, &args.init_config) {
        (Some(id), _) => pretrained(id, tok, cfg.half_dtype(), cfg.lora.is_some(), device)?,
        (None, Some(path)) => random_init(path, tok, device)?,
        (None, None) => return Err("--train-file needs a model: --model or --init-config".into()),
    };
    if let (Some(lora), Some(id)) = (cfg.lora.as_mut(), &args.model) {
        if lora.base_model_name_or_path.is_none() {
            let (name, revision) = base_name(id);
            lora.base_model_name_or_path = Some(name);
            lora.revision = revision.or(lora.revision.take());
        }
    }
    if model.pad_token_id.is_none() {
        model.pad_token_id = tokenizer.pad_id();
    }
    let pad_id = model
        .pad_token_id
        .or(tokenizer.pad_id())
        .ok_or("the tokenizer has neither a pad nor an EOS token; set pad_token in tokenizer_config.json")?;
    let eos = cfg.eos_token.clone().or(tokenizer.eos_token.clone()).unwrap_or_default();
    let template = args
        .chat_template
        .as_ref()
        .map(|p| std::fs::read_to_string(p).map_err(|e| format!("--chat-template {}: {e}", p.display())))
        .transpose()?;

    let path = args.train_file.as_ref().ok_or("--train-file is required with --model or --init-config")?;
    let read = |path: &Path| -> Result<Vec<trl_reward::data::PreferenceRow>, Error> {
        let loaded = read_rows(path, cfg.skip_bad_rows)?;
        if let Some(summary) = loaded.skipped_summary(path) {
            eprintln!("{summary}");
        }
        Ok(loaded.rows)
    };
    let rows = read(path)?;
    let (train_rows, eval_rows) = match &args.eval_file {
        Some(e) => (rows, read(e)?),
        None => {
            let n_eval = (rows.len() as f64 * cfg.eval_split).round() as usize;
            let mut rows = rows;
            let eval = rows.split_off(rows.len() - n_eval);
            (rows, eval)
        }
    };
    // Rows the model cannot take (over its position limit) are dropped like rows over
    // max_length, rather than failing the run when a batch reaches the model.
    let model_max = model.backbone.max_positions();
    let max_length = match cfg.max_length {
        Some(m) if m <= model_max => m,
        Some(m) => {
            eprintln!(
                "note: max_length {m} is more than the model's {model_max} positions; rows longer than \
                 {model_max} tokens are dropped"
            );
            model_max
        }
        None => model_max,
    };
    let train = tokenize(&train_rows, &tokenizer, &eos, Some(max_length), template.as_deref())?;
    let eval = tokenize(&eval_rows, &tokenizer, &eos, Some(max_length), template.as_deref())?;
    let dropped = train.dropped_too_long + eval.dropped_too_long;
    let trainer = RewardTrainer::new(cfg, model, hf_config, Some(tokenizer), pad_id)?;
    Ok(Job { trainer, train: train.pairs, eval: eval.pairs, dropped })
}
