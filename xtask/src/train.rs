//! `cargo xtask train`: reward-model training, on the built-in task or the user's data.

use std::io::IsTerminal;
use std::ops::ControlFlow;
use std::path::PathBuf;

use burn::prelude::*;

use trl_core::backend;
use trl_heads::ForSequenceClassification;
use trl_reward::data::{read_rows, tokenize};
use trl_reward::{synthetic, Event, Job, RewardConfig, RewardTrainer};

type TB = backend::Train;

#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// Model directory or hub id (`org/name[@rev]`); a causal LM gets a fresh score head.
    #[arg(long)]
    pub model: Option<String>,
    /// Preference data (`.jsonl` or `.parquet`) with `chosen`/`rejected` (and optional `prompt`, `margin`).
    #[arg(long)]
    pub train_file: Option<PathBuf>,
    /// Held-out preference data; without it `eval_split` of the training file is held out.
    #[arg(long)]
    pub eval_file: Option<PathBuf>,
    /// A RewardConfig file (`.toml` or `.json`, TRL field names).
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[arg(long)]
    pub output_dir: Option<PathBuf>,
    /// Continue from the newest checkpoint in the output directory (or the one given).
    #[arg(long, num_args = 0..=1, default_missing_value = "")]
    pub resume: Option<String>,
    #[arg(long)]
    pub max_steps: Option<u64>,
    #[arg(long)]
    pub num_train_epochs: Option<f64>,
    #[arg(long)]
    pub learning_rate: Option<f64>,
    /// Pairs per device batch.
    #[arg(long)]
    pub batch_size: Option<usize>,
    #[arg(long)]
    pub gradient_accumulation_steps: Option<usize>,
    #[arg(long)]
    pub max_length: Option<usize>,
    #[arg(long)]
    pub center_rewards_coefficient: Option<f64>,
    #[arg(long)]
    pub eval_steps: Option<u64>,
    #[arg(long)]
    pub save_steps: Option<u64>,
    #[arg(long)]
    pub logging_steps: Option<u64>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// A Jinja chat template for conversational rows (default: the tokenizer's).
    #[arg(long)]
    pub chat_template: Option<PathBuf>,
    /// Skip (and count) malformed rows instead of failing.
    #[arg(long)]
    pub skip_bad_rows: bool,
}

impl TrainArgs {
    fn apply(&self, cfg: &mut RewardConfig) {
        macro_rules! set {
            ($($field:ident => $target:ident),*) => {$(if let Some(v) = self.$field.clone() { cfg.$target = v.into(); })*};
        }
        set!(output_dir => output_dir, num_train_epochs => num_train_epochs, learning_rate => learning_rate,
             batch_size => per_device_train_batch_size, gradient_accumulation_steps => gradient_accumulation_steps,
             save_steps => save_steps, logging_steps => logging_steps, seed => seed);
        if self.max_steps.is_some() {
            cfg.max_steps = self.max_steps;
        }
        if self.max_length.is_some() {
            cfg.max_length = self.max_length;
        }
        if self.center_rewards_coefficient.is_some() {
            cfg.center_rewards_coefficient = self.center_rewards_coefficient;
        }
        if self.eval_steps.is_some() {
            cfg.eval_steps = self.eval_steps;
        }
        cfg.skip_bad_rows |= self.skip_bad_rows;
    }
}

type Error = Box<dyn std::error::Error>;

pub fn run(args: TrainArgs) -> Result<(), Error> {
    let builtin = args.model.is_none() && args.train_file.is_none();
    let mut cfg = match &args.config {
        Some(p) => RewardConfig::from_file(p)?,
        None if builtin => synthetic::training_config(),
        None => RewardConfig::default(),
    };
    args.apply(&mut cfg);
    cfg.validate()?;
    let device = backend::device();
    let Job { mut trainer, train, eval, dropped } =
        if builtin { synthetic::job::<TB>(cfg, &device)? } else { user_job(&args, cfg, &device)? };
    eprintln!(
        "training on {} pairs, evaluating on {} ({} dropped as longer than max_length {:?}); backend {}; output {}",
        train.len(),
        eval.len(),
        dropped,
        trainer.config.max_length,
        backend::name(),
        trainer.config.output_dir.display()
    );

    let output_dir = trainer.config.output_dir.clone();
    if let Some(r) = &args.resume {
        let ckpt =
            if r.is_empty() { RewardTrainer::<TB>::latest_checkpoint(&output_dir) } else { Some(PathBuf::from(r)) };
        let ckpt = ckpt.ok_or_else(|| format!("--resume: no checkpoint-N directory in {}", output_dir.display()))?;
        trainer.resume_from(&ckpt)?;
        eprintln!("resumed from {} at step {}", ckpt.display(), trainer.state.global_step);
    }
    let tty = std::io::stderr().is_terminal();
    let summary = trainer.train(&train, &eval, dropped, &mut |ev| {
        report(ev, tty);
        ControlFlow::Continue(())
    })?;
    if tty {
        eprintln!();
    }
    println!("{}", serde_json::to_string_pretty(&summary)?);
    if let Some(e) = &summary.final_eval {
        eprintln!(
            "final eval accuracy {:.3} after {} steps in {:.1}s ({:.0} pairs/s); model, metrics and plots in {}",
            e.metrics.accuracy,
            summary.global_step,
            summary.seconds,
            summary.pairs_per_sec,
            output_dir.display()
        );
    }
    Ok(())
}

/// The user's model (`--model`) and data (`--train-file`, `--eval-file` or `eval_split`).
fn user_job(args: &TrainArgs, cfg: RewardConfig, device: &Device<TB>) -> Result<Job<TB>, Error> {
    TB::seed(device, cfg.seed);
    let id = args.model.as_ref().ok_or("--model is required with --train-file")?;
    let dir = trl_core::source::resolve(id)?;
    let tokenizer = trl_core::Tokenizer::from_dir(&dir)?;
    let (mut model, hf_config, restored) = ForSequenceClassification::<TB>::from_pretrained(&dir, None, device)?;
    if !restored {
        eprintln!("note: {} has no `score` head; starting a fresh one (num_labels = 1)", dir.display());
    }
    if model.pad_token_id.is_none() {
        model.pad_token_id = tokenizer.pad_id();
    }
    let pad_id = model
        .pad_token_id
        .or(tokenizer.pad_id())
        .ok_or("the tokenizer has neither a pad nor an EOS token; set pad_token in tokenizer_config.json")?;
    let eos = cfg.eos_token.clone().or(tokenizer.eos_token.clone()).unwrap_or_default();
    let template = args.chat_template.as_ref().map(std::fs::read_to_string).transpose()?;

    let path = args.train_file.as_ref().ok_or("--train-file is required with --model")?;
    let loaded = read_rows(path, cfg.skip_bad_rows)?;
    if loaded.skipped > 0 {
        eprintln!("skipped {} malformed row(s) of {}", loaded.skipped, path.display());
    }
    let (train_rows, eval_rows) = match &args.eval_file {
        Some(e) => (loaded.rows, read_rows(e, cfg.skip_bad_rows)?.rows),
        None => {
            let n_eval = (loaded.rows.len() as f64 * cfg.eval_split).round() as usize;
            let mut rows = loaded.rows;
            let eval = rows.split_off(rows.len() - n_eval);
            (rows, eval)
        }
    };
    let train = tokenize(&train_rows, &tokenizer, &eos, cfg.max_length, template.as_deref())?;
    let eval = tokenize(&eval_rows, &tokenizer, &eos, cfg.max_length, template.as_deref())?;
    let dropped = train.dropped_too_long + eval.dropped_too_long;
    let trainer = RewardTrainer::new(cfg, model, hf_config, Some(tokenizer), pad_id)?;
    Ok(Job { trainer, train: train.pairs, eval: eval.pairs, dropped })
}

fn report(ev: Event, tty: bool) {
    match ev {
        Event::Step { step, total, loss } if tty => {
            let width = 30;
            let done = (step as usize * width) / total.max(1) as usize;
            eprint!("\r[{}{}] {step}/{total} loss {loss:.4}   ", "#".repeat(done), ".".repeat(width - done));
        }
        Event::Step { .. } => {}
        Event::Log(e) => {
            let lead = if tty { "\r" } else { "" };
            let speed = e.pairs_per_sec.map(|p| format!(" {p:.0} pairs/s")).unwrap_or_default();
            eprintln!(
                "{lead}step {:>5} {:<5} loss {:.4} accuracy {:.3} margin {:+.3}{speed}",
                e.step, e.split, e.loss, e.metrics.accuracy, e.metrics.margin
            );
        }
        Event::Checkpoint(p) => {
            if !tty {
                eprintln!("saved {}", p.display());
            }
        }
    }
}
