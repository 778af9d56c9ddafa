//! # trl-reward
//!
//! Reward-model training as TRL's `RewardTrainer` (1.x design) does it, without its known
//! bugs: preference rows from JSONL or Parquet, plain or conversational ([`data`], [`chat`]),
//! chosen and rejected scored in one right-padded forward pass ([`collate`]), the
//! Bradley–Terry loss with margin and centering on `[B]` rewards ([`loss`]), PyTorch-exact
//! AdamW, global-norm clipping and the linear schedule ([`optim`]), and the trainer with
//! evaluation, metrics, atomic checkpoints and exact resume ([`trainer`]). [`synthetic`] holds
//! the built-in task `cargo xtask train` runs with no arguments.

pub mod chat;
pub mod checkpoint;
pub mod collate;
pub mod data;
pub mod error;
pub mod loss;
pub mod optim;
pub mod parquet;

pub use error::{Result, RewardError};
pub mod config;
pub mod report;
pub mod synthetic;
pub mod trainer;

pub use checkpoint::Resumed;
pub use config::{LoraSettings, RewardConfig};
pub use trainer::{Event, Job, LogEntry, RewardTrainer, Summary};
