//! # trl-reward
//!
//! Reward-model training as TRL's `RewardTrainer` does it, without its known bugs.

pub mod loss;
pub mod optim;
