//! `cargo xtask train`: reward-model training, on the built-in task or the user's data.
//! Arguments and the run live here; building the model and reading the data, in [`setup`].

mod setup;

use std::io::IsTerminal;
use std::ops::ControlFlow;
use std::path::PathBuf;

use burn::tensor::backend::AutodiffBackend;
use trl_core::backend::{self, DeviceArg};
use trl_reward::{synthetic, Event, Job, LoraSettings, Nodes, RewardConfig};

#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// Model directory or hub id (`org/name[@rev]`); a causal LM gets a fresh score head. A PEFT
    /// adapter directory loads its base and keeps training the adapter.
    #[arg(long)]
    pub model: Option<String>,
    /// Start from random weights: a `config.json` (or a directory holding one) gives the
    /// architecture, the backbone and a fresh score head are drawn with `seed`.
    #[arg(long, conflicts_with = "model")]
    pub init_config: Option<PathBuf>,
    /// Tokenizer directory (default: the model's, or the `--init-config` file's directory).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
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
    /// Train a LoRA adapter of this rank (and `score`) on the frozen `--model`. Any `--lora-*`
    /// flag or `--use-rslora` turns LoRA on, with TRL's defaults for the rest: r 16, alpha 32,
    /// dropout 0.05 (off while training unless `disable_dropout = false`), PEFT's target modules.
    #[arg(long)]
    pub lora_r: Option<usize>,
    #[arg(long)]
    pub lora_alpha: Option<f64>,
    #[arg(long)]
    pub lora_dropout: Option<f64>,
    /// Comma-separated module names, or `all-linear` (default: `q_proj,v_proj` for the Llama
    /// family, `c_attn` for GPT-2).
    #[arg(long, value_delimiter = ',')]
    pub lora_targets: Option<Vec<String>>,
    /// Scale the adapter by `alpha / √r` instead of `alpha / r`.
    #[arg(long)]
    pub use_rslora: bool,
    /// transformers' schedule name: linear, cosine, cosine_with_restarts, polynomial, constant,
    /// constant_with_warmup, inverse_sqrt, cosine_with_min_lr, warmup_stable_decay.
    #[arg(long)]
    pub lr_scheduler_type: Option<String>,
    /// Its settings as a JSON object, e.g. `{"min_lr": 1e-6}` (transformers' `lr_scheduler_kwargs`).
    #[arg(long)]
    pub lr_scheduler_kwargs: Option<String>,
    #[arg(long)]
    pub warmup_ratio: Option<f64>,
    /// Mixed precision: the projections multiply in bfloat16 (a LoRA run also holds its frozen
    /// base in bf16), weights and optimizer stay f32; transformers' `--bf16`.
    #[arg(long, conflicts_with = "fp16")]
    pub bf16: bool,
    /// The same in float16.
    #[arg(long)]
    pub fp16: bool,
    /// Recompute element-wise results in the backward pass instead of keeping them (default:
    /// true, as TRL; `false` keeps everything and saves the recomputation).
    #[arg(long, value_name = "BOOL")]
    pub gradient_checkpointing: Option<bool>,
    #[command(flatten)]
    pub device: crate::common::DeviceArgs,
    /// Data-parallel workers, each scoring `--batch-size` pairs of every micro-batch; their
    /// gradients are summed by burn's collective all-reduce. On a GPU, worker k runs on the
    /// k-th device from `--device`'s; on the CPU they share it.
    #[arg(long)]
    pub data_parallel: Option<usize>,
    /// Nodes of a multi-node run, one process each, as torchrun's `--nnodes`: every node
    /// trains the same model on the same data and sums its gradients with the others'
    /// (`--data-parallel` then counts the workers of all nodes; default one per node).
    #[arg(long, env = "NNODES", value_name = "N")]
    pub nodes: Option<usize>,
    /// This process's node, 0-based (torchrun's `--node_rank`); the others connect to node 0.
    #[arg(long, env = "NODE_RANK", default_value_t = 0)]
    pub node_rank: usize,
    /// Node 0's address, as every node reaches it.
    #[arg(long, env = "MASTER_ADDR", default_value = "127.0.0.1")]
    pub master_addr: String,
    /// The port node 0 listens on.
    #[arg(long, env = "MASTER_PORT", default_value_t = 29500)]
    pub master_port: u16,
    /// Seconds every node has to join at the start.
    #[arg(long, default_value_t = 300, value_name = "SECONDS")]
    pub node_timeout: u64,
}

impl TrainArgs {
    /// This process's node of a multi-node run (`--nodes` above 1).
    fn nodes(&self) -> Option<Nodes> {
        let count = self.nodes.filter(|&n| n > 1)?;
        Some(Nodes {
            count,
            rank: self.node_rank,
            master_addr: self.master_addr.clone(),
            master_port: self.master_port,
            timeout: std::time::Duration::from_secs(self.node_timeout),
        })
    }

    fn apply(&self, cfg: &mut RewardConfig) -> Result<(), Error> {
        macro_rules! set {
            ($($field:ident => $target:ident),*) => {$(if let Some(v) = self.$field.clone() { cfg.$target = v.into(); })*};
        }
        set!(output_dir => output_dir, num_train_epochs => num_train_epochs, learning_rate => learning_rate,
             batch_size => per_device_train_batch_size, gradient_accumulation_steps => gradient_accumulation_steps,
             save_steps => save_steps, logging_steps => logging_steps, seed => seed, warmup_ratio => warmup_ratio);
        if let Some(name) = &self.lr_scheduler_type {
            cfg.lr_scheduler_type = serde_json::from_value(serde_json::Value::String(name.clone()))
                .map_err(|e| format!("--lr-scheduler-type {name}: {e}"))?;
        }
        if let Some(kw) = &self.lr_scheduler_kwargs {
            cfg.lr_scheduler_kwargs = serde_json::from_str(kw).map_err(|e| {
                format!("--lr-scheduler-kwargs: expected a JSON object such as '{{\"min_lr\": 1e-6}}': {e}")
            })?;
        }
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
        if self.bf16 {
            (cfg.bf16, cfg.fp16) = (Some(true), false);
        }
        if self.fp16 {
            (cfg.bf16, cfg.fp16) = (Some(false), true);
        }
        if let Some(g) = self.gradient_checkpointing {
            cfg.gradient_checkpointing = g;
        }
        if self.device.name.is_some() {
            cfg.device = self.device.name;
        }
        if let Some(n) = self.data_parallel {
            cfg.data_parallel = n;
        } else if let Some(n) = self.nodes.filter(|&n| n > 1 && cfg.data_parallel == 1) {
            cfg.data_parallel = n;
        }
        let lora_flags = self.lora_r.is_some()
            || self.lora_alpha.is_some()
            || self.lora_dropout.is_some()
            || self.lora_targets.is_some()
            || self.use_rslora;
        if lora_flags {
            let l = cfg.lora.get_or_insert_with(LoraSettings::default);
            l.r = self.lora_r.unwrap_or(l.r);
            l.alpha = self.lora_alpha.unwrap_or(l.alpha);
            l.dropout = self.lora_dropout.unwrap_or(l.dropout);
            if self.lora_targets.is_some() {
                l.target_modules = self.lora_targets.clone();
            }
            l.use_rslora |= self.use_rslora;
        }
        Ok(())
    }
}

type Error = Box<dyn std::error::Error>;

pub fn run(args: TrainArgs) -> Result<(), Error> {
    let builtin = args.model.is_none() && args.init_config.is_none() && args.train_file.is_none();
    let mut cfg = match &args.config {
        Some(p) => {
            let (cfg, ignored) = trl_reward::config_file::read(p)?;
            if !ignored.is_empty() {
                eprintln!("warning: {}: these settings have no effect in trl-rs: {}", p.display(), ignored.join(", "));
            }
            cfg
        }
        None if builtin => synthetic::training_config(),
        None => RewardConfig::default(),
    };
    args.apply(&mut cfg)?;
    cfg.validate()?;
    if cfg.lora.is_some() && args.model.is_none() {
        return Err("LoRA trains an adapter on pretrained base weights: give the base with --model \
                    (random-init and built-in models have no base on disk for the adapter to point at)"
            .into());
    }
    // burn's checkpointing is a property of the autodiff backend's type
    if cfg.gradient_checkpointing {
        train_on::<backend::TrainCheckpointed>(args, cfg, builtin)
    } else {
        train_on::<backend::Train>(args, cfg, builtin)
    }
}

fn train_on<B: AutodiffBackend>(args: TrainArgs, mut cfg: RewardConfig, builtin: bool) -> Result<(), Error> {
    // the device is resolved (and checked to exist) before anything is read, and recorded in
    // the run's training_config.json
    let on = cfg.device.unwrap_or_else(DeviceArg::built);
    let device = on.resolve::<B>()?;
    cfg.device = Some(on);
    let precision = match cfg.half_dtype() {
        Some(half) => {
            format!(
                "; projections in {} (mixed precision)",
                if half == trl_core::WeightDtype::F16 { "fp16" } else { "bf16" }
            )
        }
        None => String::new(),
    };
    let checkpointing = if cfg.gradient_checkpointing { ", gradient checkpointing" } else { "" };
    let parallel = match cfg.data_parallel {
        1 => String::new(),
        n => format!(", {n} data-parallel workers"),
    };
    // data-parallel workers: this node's worker k on the k-th device from `on` (the CPU is
    // one device)
    let nodes = args.nodes();
    if let Some(n) = &nodes {
        n.check(cfg.data_parallel)?;
    }
    let local = nodes.as_ref().map_or(cfg.data_parallel, |n| n.local(cfg.data_parallel));
    let workers = (0..local)
        .map(|k| match on {
            DeviceArg::Cpu => on.resolve::<B>(),
            DeviceArg::Cuda(i) => DeviceArg::Cuda(i + k).resolve::<B>(),
            DeviceArg::Wgpu(i) => DeviceArg::Wgpu(i + k).resolve::<B>(),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let Job { mut trainer, train, eval, dropped } =
        if builtin { synthetic::job::<B>(cfg, &device)? } else { setup::user_job::<B>(&args, cfg, &device)? };
    let node = nodes.as_ref().map_or(String::new(), |n| format!(", node {} of {}", n.rank, n.count));
    if let Some(n) = nodes {
        trainer.set_nodes(n)?;
    }
    if workers.len() > 1 {
        trainer.set_worker_devices(workers)?;
    }
    let what = match trainer.adapter() {
        Some(name) => format!("LoRA adapter `{name}` + score"),
        None => "the whole model".into(),
    };
    let limit = trainer.config.max_length.map_or("no length limit".to_string(), |m| format!("max_length {m}"));
    eprintln!(
        "training {what} on {} pairs, evaluating on {} ({} dropped as longer than {limit}); {}{parallel}{node}{checkpointing}{precision}; output {}",
        train.len(),
        eval.len(),
        dropped,
        crate::common::ran_on(on),
        trainer.config.output_dir.display()
    );
    if let Some(warning) = trainer.lock_output_dir()? {
        eprintln!("warning: {warning}");
    }

    let output_dir = trainer.config.output_dir.clone();
    if let Some(r) = &args.resume {
        let (ckpt, changed) = if r.is_empty() {
            let resumed = trainer.resume_newest(&output_dir)?;
            for (dir, why) in &resumed.damaged {
                eprintln!("warning: {} is damaged and was skipped: {why}", dir.display());
            }
            (resumed.checkpoint, resumed.changed)
        } else {
            let dir = PathBuf::from(r);
            let changed = trainer
                .resume_from(&dir)
                .map_err(|e| format!("--resume {}: cannot resume from this checkpoint: {e}", dir.display()))?;
            (dir, changed)
        };
        if !changed.is_empty() {
            eprintln!(
                "warning: these settings differ from the run that wrote {}: {}",
                ckpt.display(),
                changed.join(", ")
            );
        }
        eprintln!("resumed from {} at step {}", ckpt.display(), trainer.state.global_step);
    }
    let tty = std::io::stderr().is_terminal();
    let pairs_per_step = trainer.config.per_device_train_batch_size * trainer.config.gradient_accumulation_steps;
    let mut progress = Progress::new(pairs_per_step);
    // step end instants, for the bench's step time (only when it asks)
    let (timed, mut step_ends) = (std::env::var_os(crate::bench::real::REPORT_ENV).is_some(), Vec::new());
    let summary = trainer.train(&train, &eval, dropped, &mut |ev| {
        if let (true, Event::Step { .. }) = (timed, &ev) {
            step_ends.push(std::time::Instant::now());
        }
        report(ev, tty, &mut progress);
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
    crate::bench::real::report_step_time(&step_ends);
    crate::bench::real::report_peak_rss();
    Ok(())
}

/// The terminal progress line: steps, ETA, pairs/s and a running loss.
struct Progress {
    start: std::time::Instant,
    /// The first step this run took (a resumed run starts past 1).
    first: Option<u64>,
    pairs_per_step: usize,
    /// Exponential moving average of the step loss (weight 0.1 on the newest).
    loss: Option<f64>,
}

impl Progress {
    fn new(pairs_per_step: usize) -> Self {
        Self { start: std::time::Instant::now(), first: None, pairs_per_step, loss: None }
    }

    fn line(&mut self, step: u64, total: u64, loss: f64) -> String {
        let first = *self.first.get_or_insert(step);
        self.loss = Some(self.loss.map_or(loss, |l| 0.9 * l + 0.1 * loss));
        let done = (step + 1 - first) as f64;
        let secs = self.start.elapsed().as_secs_f64().max(1e-9);
        let eta = secs / done * total.saturating_sub(step) as f64;
        let width = 30;
        let filled = (step as usize * width) / total.max(1) as usize;
        format!(
            "\r[{}{}] {step}/{total} ETA {} {:.0} pairs/s loss {:.4}   ",
            "#".repeat(filled),
            ".".repeat(width - filled),
            clock(eta),
            done * self.pairs_per_step as f64 / secs,
            self.loss.unwrap_or(loss)
        )
    }
}

/// `h:mm:ss` (or `m:ss` under an hour).
fn clock(secs: f64) -> String {
    let s = secs.round() as u64;
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    } else {
        format!("{}:{:02}", s / 60, s % 60)
    }
}

fn report(ev: Event, tty: bool, progress: &mut Progress) {
    match ev {
        Event::Step { step, total, loss } if tty => eprint!("{}", progress.line(step, total, loss)),
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
        Event::Warning(w) => eprintln!("{}warning: {w}", if tty { "\r" } else { "" }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_line_has_eta_rate_and_running_loss() {
        assert_eq!(clock(65.2), "1:05");
        assert_eq!(clock(3725.0), "1:02:05");
        let mut p = Progress::new(16);
        let first = p.line(11, 20, 1.0);
        assert!(first.contains("11/20 ETA") && first.contains("pairs/s loss 1.0000"), "{first}");
        // a resumed run counts from its first step; the loss is a moving average
        let next = p.line(12, 20, 0.0);
        assert!(next.contains("12/20") && next.contains("loss 0.9000"), "{next}");
    }
}
