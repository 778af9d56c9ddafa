//! # trl-heads
//!
//! Heads on top of trl-models backbones, with TRL's and transformers' load/save semantics:
//! [`ValueHead`] and [`CausalLmWithValueHead`] (TRL's `AutoModelForCausalLMWithValueHead`:
//! logits, optional LM loss and a value per token; `v_head.*` keys merged into the model's
//! checkpoint, local shards included), and [`ForSequenceClassification`], the reward model
//! (a bias-free `score` read at the rightmost non-pad token). Generic over burn's `Backend`.

pub mod error;
pub mod seq_cls;
pub mod value_head;

pub use error::{HeadError, Result};
pub use seq_cls::{ForSequenceClassification, RewardOutput};
pub use value_head::{CausalLmWithValueHead, ValueHead, ValueHeadOptions, ValueHeadOutput, VHeadInit, VHeadSource};
