//! What generation needs from a model: next-token logits of a batch, with a decoding state
//! (a KV cache) that grows by one token per step and can drop finished rows.
//!
//! Implemented for plain backbones ([`AnyCausalLm`]), value-head models, references (`&M`),
//! [`crate::GeometricMixture`] and [`crate::Uncached`]; adapter-wrapped models implement it
//! the same way.

use burn::prelude::*;
use trl_heads::CausalLmWithValueHead;
use trl_models::{AnyCausalLm, KvCache, TokenBatch};

use crate::error::Result;

/// A model that scores the next token.
pub trait NextTokenLogits<B: Backend> {
    /// Whatever the model keeps between steps (its KV cache).
    type State;

    /// Number of scores per row.
    fn vocab_size(&self) -> usize;

    /// Scores of every position of a padded batch in one uncached pass (positions from the
    /// mask, so left padding works).
    ///
    /// # Shapes
    /// `batch`: `[batch, seq]` → `[batch, seq, vocab]`
    fn logits(&self, batch: &TokenBatch) -> Result<Tensor<B, 3>>;

    /// Runs the whole (left-padded) prompt batch once into a fresh state and returns the scores
    /// of the token after it.
    ///
    /// # Shapes
    /// `batch`: `[batch, seq]` → `[batch, vocab]`
    fn prefill(&self, batch: &TokenBatch) -> Result<(Self::State, Tensor<B, 2>)>;

    /// Appends one real token per row to `state` and returns the scores of the token after it.
    ///
    /// # Shapes
    /// `ids`: `[batch]` (the state's current rows) → `[batch, vocab]`
    fn step(&self, state: &mut Self::State, ids: &[i64]) -> Result<Tensor<B, 2>>;

    /// Keeps only the rows `keep` (indices into the state's current rows, ascending).
    fn select_rows(&self, state: &mut Self::State, keep: &[usize]);
}

/// The last position of `[batch, seq, vocab]` scores.
///
/// # Shapes
/// `[batch, seq, vocab]` → `[batch, vocab]`
pub fn last_position<B: Backend>(logits: Tensor<B, 3>) -> Tensor<B, 2> {
    let [b, t, v] = logits.dims();
    logits.slice([0..b, t - 1..t, 0..v]).reshape([b, v])
}

impl<B: Backend> NextTokenLogits<B> for AnyCausalLm<B> {
    type State = KvCache<B>;

    fn vocab_size(&self) -> usize {
        AnyCausalLm::vocab_size(self)
    }

    fn logits(&self, batch: &TokenBatch) -> Result<Tensor<B, 3>> {
        Ok(self.forward(batch, true)?.logits.expect("logits were requested"))
    }

    fn prefill(&self, batch: &TokenBatch) -> Result<(KvCache<B>, Tensor<B, 2>)> {
        let mut cache = self.new_cache(batch.batch);
        let hidden = self.forward_cached(&batch.input_ids, &batch.attention_mask, batch.seq, &mut cache)?;
        // Only the last position's logits are needed: project one hidden state per row.
        let [b, t, h] = hidden.dims();
        let last = hidden.slice([0..b, t - 1..t, 0..h]);
        Ok((cache, last_position(AnyCausalLm::logits(self, last))))
    }

    fn step(&self, cache: &mut KvCache<B>, ids: &[i64]) -> Result<Tensor<B, 2>> {
        let hidden = self.forward_cached(ids, &vec![1; ids.len()], 1, cache)?;
        Ok(last_position(AnyCausalLm::logits(self, hidden)))
    }

    fn select_rows(&self, cache: &mut KvCache<B>, keep: &[usize]) {
        cache.select_rows(keep, &self.device());
    }
}

/// A value-head model generates with its language-model head (the value head takes no part).
impl<B: Backend> NextTokenLogits<B> for CausalLmWithValueHead<B> {
    type State = KvCache<B>;

    fn vocab_size(&self) -> usize {
        self.pretrained_model.vocab_size()
    }

    fn logits(&self, batch: &TokenBatch) -> Result<Tensor<B, 3>> {
        NextTokenLogits::logits(&self.pretrained_model, batch)
    }

    fn prefill(&self, batch: &TokenBatch) -> Result<(KvCache<B>, Tensor<B, 2>)> {
        self.pretrained_model.prefill(batch)
    }

    fn step(&self, cache: &mut KvCache<B>, ids: &[i64]) -> Result<Tensor<B, 2>> {
        self.pretrained_model.step(cache, ids)
    }

    fn select_rows(&self, cache: &mut KvCache<B>, keep: &[usize]) {
        self.pretrained_model.select_rows(cache, keep)
    }
}

impl<B: Backend, M: NextTokenLogits<B> + ?Sized> NextTokenLogits<B> for &M {
    type State = M::State;

    fn vocab_size(&self) -> usize {
        (**self).vocab_size()
    }

    fn logits(&self, batch: &TokenBatch) -> Result<Tensor<B, 3>> {
        (**self).logits(batch)
    }

    fn prefill(&self, batch: &TokenBatch) -> Result<(M::State, Tensor<B, 2>)> {
        (**self).prefill(batch)
    }

    fn step(&self, state: &mut M::State, ids: &[i64]) -> Result<Tensor<B, 2>> {
        (**self).step(state, ids)
    }

    fn select_rows(&self, state: &mut M::State, keep: &[usize]) {
        (**self).select_rows(state, keep)
    }
}
