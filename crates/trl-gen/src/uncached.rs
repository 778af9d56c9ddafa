//! TRL's way of decoding without a cache: every step runs the model on the whole prefix.
//!
//! [`Uncached`] wraps any [`NextTokenLogits`] model so that [`crate::generate`] recomputes
//! everything each step, which is what `GeometricMixtureWrapper` does (it forces
//! `use_cache=False`). It is the reference the cached path is tested against, and the
//! baseline of the benchmark; positions still come from the mask, so left padding is right.

use burn::prelude::*;
use trl_models::TokenBatch;

use crate::error::Result;
use crate::next_token::{last_position, NextTokenLogits};

/// A model decoded by full recomputation; its state is the token history.
#[derive(Debug, Clone, Copy)]
pub struct Uncached<M>(pub M);

/// Appends one real token to every row of `batch`.
fn push_column(batch: &mut TokenBatch, ids: &[i64]) {
    let (b, t) = (batch.batch, batch.seq);
    let mut input_ids = Vec::with_capacity(b * (t + 1));
    let mut mask = Vec::with_capacity(b * (t + 1));
    for (r, &id) in ids.iter().enumerate().take(b) {
        input_ids.extend_from_slice(&batch.input_ids[r * t..(r + 1) * t]);
        input_ids.push(id);
        mask.extend_from_slice(&batch.attention_mask[r * t..(r + 1) * t]);
        mask.push(1);
    }
    *batch = TokenBatch { input_ids, attention_mask: mask, batch: b, seq: t + 1, position_ids: None, shared: None };
}

impl<B: Backend, M: NextTokenLogits<B>> NextTokenLogits<B> for Uncached<M> {
    type State = TokenBatch;

    fn vocab_size(&self) -> usize {
        self.0.vocab_size()
    }

    fn logits(&self, batch: &TokenBatch) -> Result<Tensor<B, 3>> {
        self.0.logits(batch)
    }

    fn prefill(&self, batch: &TokenBatch) -> Result<(TokenBatch, Tensor<B, 2>)> {
        Ok((batch.clone(), last_position(self.0.logits(batch)?)))
    }

    fn step(&self, history: &mut TokenBatch, ids: &[i64]) -> Result<Tensor<B, 2>> {
        push_column(history, ids);
        Ok(last_position(self.0.logits(history)?))
    }

    fn select_rows(&self, history: &mut TokenBatch, keep: &[usize]) {
        let t = history.seq;
        let rows = |x: &[i64]| keep.iter().flat_map(|&r| x[r * t..(r + 1) * t].to_vec()).collect();
        history.input_ids = rows(&history.input_ids);
        history.attention_mask = rows(&history.attention_mask);
        history.batch = keep.len();
    }
}
