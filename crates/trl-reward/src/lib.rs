//! # trl-reward
//!
//! Reward-model training as TRL's `RewardTrainer` (1.x design) does it, without its known
//! bugs: preference rows from JSONL or Parquet, plain or conversational ([`data`], [`chat`]),
//! chosen and rejected scored in one right-padded forward pass ([`collate`]), the
//! Bradley–Terry loss with margin and centering on `[B]` rewards ([`loss`]), PyTorch-exact
//! AdamW, global-norm clipping and the linear schedule ([`optim`]), and the trainer
//! ([`RewardTrainer`]) with evaluation, metrics, atomic checkpoints and exact resume.
//! [`synthetic`] holds the built-in task `cargo xtask train` runs with no arguments.
//!
//! ## Public surface
//! - modules [`chat`], [`collate`], [`data`], [`loss`], [`optim`], [`parquet`], [`synthetic`];
//! - the trainer: [`RewardTrainer`], [`RewardConfig`], [`LoraSettings`], [`Job`], [`Event`],
//!   [`Resumed`], [`ADAPTER_NAME`], [`Nodes`] (multi-node runs), and what it records: [`TrainerState`], [`LogWindow`],
//!   [`LogEntry`], [`Summary`], [`Sample`];
//! - [`RewardError`] and [`Result`].
//!
//! ## Module layout (edges point to what a module uses)
//! - `error`, `exact`, `rows`, `config` (→ error) use no other module;
//! - `loss` → exact; `state` → exact, loss; `optim` → none;
//! - `parquet` → rows, error; `data` → rows, parquet, chat, error; `collate` → data, error;
//! - `trainer` (the type, construction, scoring, evaluation) → collate, config, data, loss,
//!   optim, state, error;
//! - `checkpoint` (save, resume, final outputs) → trainer, state, report, data, error;
//!   `report` → state, error;
//! - `parallel` (data-parallel workers and the all-reduce) → trainer (scoring), nodes, config,
//!   data, loss, optim, error; `nodes` (the all-reduce between the nodes of a multi-node run,
//!   over TCP) → error;
//! - `run` (the training loop) → trainer, checkpoint (its methods), parallel, state, collate,
//!   loss, optim, exact, data, error;
//! - `synthetic` → trainer, config, data, collate, error;
//! - `chat` (compiling and rendering templates) → chat_limits, pyfmt, rows (for `Message`),
//!   error; `pyfmt` (Python `str`/`repr`, `tojson`, `strftime`) → chat_limits;
//!   `chat_limits` (fuel, output cap) uses no other module.

pub mod chat;
mod chat_limits;
mod checkpoint;
pub mod collate;
mod config;
pub mod config_file;
pub mod data;
mod error;
mod exact;
pub mod loss;
mod nodes;
pub mod optim;
mod parallel;
pub mod parquet;
mod plot;
mod pyfmt;
mod report;
mod rows;
mod run;
pub mod schedule;
mod state;
pub mod synthetic;
pub mod tensorboard;
mod trainer;

pub use checkpoint::Resumed;
pub use config::{IntervalStrategy, LoraSettings, RewardConfig};
pub use error::{Result, RewardError};
pub use nodes::Nodes;
pub use state::{LogEntry, LogWindow, Sample, Summary, TrainerState};
pub use trainer::{Event, Job, RewardTrainer, ADAPTER_NAME};
