//! `cargo xtask …`: the command-line front door of trl-rs.
//!
//! The backend is chosen by cargo feature (`flex` default, `ndarray`, `wgpu`, `cuda`); the
//! `cargo xtask` alias uses the default, `cargo run -p xtask --features cuda -- …` another.

mod bench;
mod common;
mod eval;
mod forward;
mod generate;
mod score;
mod serve;
mod train;

use clap::{Parser, Subcommand};

/// Tensor ops allocate and free large buffers at a high rate; mimalloc reuses them instead of
/// returning pages to the OS (measured: about a third more training throughput on the CPU).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Train, score and generate with Hugging Face reward and value-head models, in Rust.
#[derive(Parser)]
#[command(name = "cargo xtask", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a reward model (no arguments: the built-in task on a small model).
    Train(Box<train::TrainArgs>),
    /// Run one padded batch through a model and write its tensors to safetensors.
    Forward(forward::ForwardArgs),
    /// Score texts or preference pairs with a reward model (JSONL in, JSONL out).
    Score(score::ScoreArgs),
    /// Evaluate a reward model on a labelled preference set (RewardBench-style accuracy per
    /// subset and section, margins, calibration).
    Eval(Box<eval::EvalArgs>),
    /// Generate completions from a model or a geometric mixture (Nash-MD).
    Generate(generate::GenerateArgs),
    /// Serve a reward model over HTTP to OpenRLHF, vLLM and text-embeddings-inference clients.
    Serve(Box<serve::ServeArgs>),
    /// Measure training, scoring and generation throughput against PyTorch (JSON out).
    Bench(bench::BenchArgs),
}

/// For training and batch scoring: mimalloc hands freed memory back to the OS 10 ms after it
/// was last used, and a step's buffers come back a step later, so each step faulted its pages
/// in again and the kernel zeroed them. Memory unused for a minute goes back instead. Medium
/// bench case (20M parameters, 2 s steps), page faults / training pairs/s: 10 ms 495k / 5.3,
/// 5 s 52k, 60 s 1.1k / 7.6, never 1.1k / 8.1 (docs/performance.md). `MIMALLOC_PURGE_DELAY`
/// still decides where it is set.
fn keep_freed_memory_a_while() {
    // `mi_option_purge_delay`, the 16th entry of `mi_option_t` in both mimalloc v2's and v3's
    // mimalloc.h; the sys crate does not name it
    const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: setting an option is safe at any time; it takes effect on later purges.
        unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, 60_000) };
    }
}

fn main() {
    let cli = Cli::parse();
    // Where the model runs on the main thread, that thread is one of rayon's workers (the pool
    // keeps one thread a core): a parallel op started from it runs its first part in place, where
    // it would otherwise hand the whole op to a pool thread and sleep until woken (on small models
    // that hand-off took a fifth of the time). Not for `serve`, whose main thread waits on the
    // network while request threads run the model: it would hold a worker that never works.
    if !matches!(cli.command, Command::Serve(_)) {
        let _ = rayon::ThreadPoolBuilder::new().use_current_thread().build_global();
    }
    if matches!(cli.command, Command::Train(_) | Command::Score(_) | Command::Eval(_) | Command::Bench(_)) {
        keep_freed_memory_a_while();
    }
    let result = match cli.command {
        Command::Train(args) => train::run(*args),
        Command::Forward(args) => forward::run(args),
        Command::Score(args) => score::run(args),
        Command::Eval(args) => eval::run(*args),
        Command::Generate(args) => generate::run(args),
        Command::Serve(args) => serve::run(*args),
        Command::Bench(args) => bench::run(args),
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
