//! # trl-heads
//!
//! Heads on top of trl-models backbones, with TRL's and transformers' load/save semantics:
//! [`ValueHead`] and [`CausalLmWithValueHead`] (TRL's `AutoModelForCausalLMWithValueHead`:
//! logits, optional LM loss and a value per token; `v_head.*` keys merged into the model's
//! checkpoint, local shards included), and [`ForSequenceClassification`], the reward model
//! (a bias-free `score` read at the rightmost non-pad token). Both load and save LoRA adapters
//! in PEFT's and TRL's layouts (`from_adapter`, `save_adapter`, `train_adapter_only`), and
//! [`RewardAdapter`] is TRL's multi-adapter reward (`compute_reward_score`). Generic over burn's
//! `Backend`.

//!
//! ## Public surface
//! - [`CausalLmWithValueHead`], [`ValueHead`], [`ValueHeadOptions`], [`VHeadInit`],
//!   [`VHeadSource`], [`ValueHeadOutput`];
//! - [`ForSequenceClassification`], [`RewardOutput`], and in [`seq_cls`] the config helpers
//!   [`seq_cls::num_labels`] and [`seq_cls::is_seq_cls`];
//! - [`RewardAdapter`];
//! - [`Seq2SeqLmWithValueHead`] and [`Seq2SeqOutput`] (TRL's `AutoModelForSeq2SeqLMWithValueHead`
//!   on T5), and [`DebertaV2ForSequenceClassification`] with its [`ContextPooler`];
//! - [`HeadError`] and [`Result`].
//!
//! ## Modules
//! `shared` (hidden size, load-report prefixes, adapter base, adapter-only training, pooled
//! gather) depends on `error` only; `seq_cls` on `shared`; `reward_adapter` on `seq_cls` and
//! `shared`; `value_head` on all three. No module depends on one above it.

mod deberta;
mod error;
mod reward_adapter;
mod seq2seq;
pub mod seq_cls;
mod shared;
mod value_head;

pub use deberta::{ContextPooler, DebertaV2ForSequenceClassification};
pub use error::{HeadError, Result};
pub use reward_adapter::RewardAdapter;
pub use seq2seq::{Seq2SeqLmWithValueHead, Seq2SeqOutput};
pub use seq_cls::{ForSequenceClassification, RewardOutput};
pub use value_head::{CausalLmWithValueHead, VHeadInit, VHeadSource, ValueHead, ValueHeadOptions, ValueHeadOutput};
