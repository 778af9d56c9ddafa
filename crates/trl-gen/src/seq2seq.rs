//! Generation with an encoder–decoder (T5): the source is encoded once, the decoder starts from
//! `decoder_start_token_id` and runs one token per step on its KV cache, whose cross-attention
//! keys and values are computed on the first step. [`crate::generate`] drives it as any model:
//! the "prompts" are the source texts' ids (left-padded, which changes nothing at real tokens).
//!
//! One difference from transformers: a repetition penalty counts the source's tokens as seen
//! (transformers counts only the decoder's); greedy decoding and plain sampling are unaffected.

use burn::prelude::*;
use trl_heads::Seq2SeqLmWithValueHead;
use trl_models::t5::{T5Cache, T5ForConditionalGeneration};
use trl_models::TokenBatch;

use crate::error::Result;
use crate::next_token::{last_position, NextTokenLogits};

/// The decoder's cache and the encoded source it attends to.
#[derive(Debug, Clone)]
pub struct Seq2SeqState<B: Backend> {
    pub cache: T5Cache<B>,
    /// `[batch, seq, d_model]`
    pub encoded: Tensor<B, 3>,
    /// `[batch, seq]` row-major.
    pub encoder_mask: Vec<i64>,
}

impl<B: Backend> NextTokenLogits<B> for T5ForConditionalGeneration<B> {
    type State = Seq2SeqState<B>;

    fn vocab_size(&self) -> usize {
        T5ForConditionalGeneration::vocab_size(self)
    }

    /// The scores of the first decoder token (after the start token) for each source row: the
    /// only uncached scores an encoder–decoder has for a source alone.
    fn logits(&self, batch: &TokenBatch) -> Result<Tensor<B, 3>> {
        let encoded = self.encode(batch)?;
        let start = self.start_tokens(batch.batch);
        let hidden = self.decode(start, &vec![1; batch.batch], &encoded, &batch.attention_mask, None)?;
        Ok(T5ForConditionalGeneration::logits(self, hidden))
    }

    fn prefill(&self, batch: &TokenBatch) -> Result<(Seq2SeqState<B>, Tensor<B, 2>)> {
        let encoded = self.encode(batch)?;
        let mut cache = self.new_cache(batch.batch);
        let start = self.start_tokens(batch.batch);
        let hidden = self.decode(start, &vec![1; batch.batch], &encoded, &batch.attention_mask, Some(&mut cache))?;
        let state = Seq2SeqState { cache, encoded, encoder_mask: batch.attention_mask.clone() };
        Ok((state, last_position(T5ForConditionalGeneration::logits(self, hidden))))
    }

    fn step(&self, state: &mut Seq2SeqState<B>, ids: &[i64]) -> Result<Tensor<B, 2>> {
        let n = ids.len();
        let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids.to_vec(), [n, 1]), &self.device());
        let hidden = self.decode(ids, &vec![1; n], &state.encoded, &state.encoder_mask, Some(&mut state.cache))?;
        Ok(last_position(T5ForConditionalGeneration::logits(self, hidden)))
    }

    fn select_rows(&self, state: &mut Seq2SeqState<B>, keep: &[usize]) {
        let device = self.device();
        let seq = state.encoded.dims()[1];
        state.cache.select_rows(keep, &device);
        let idx = Tensor::<B, 1, Int>::from_data(
            TensorData::new(keep.iter().map(|&i| i as i64).collect(), [keep.len()]),
            &device,
        );
        state.encoded = state.encoded.clone().select(0, idx);
        state.encoder_mask =
            keep.iter().flat_map(|&r| state.encoder_mask[r * seq..(r + 1) * seq].iter().copied()).collect();
    }
}

/// The value-head model generates with its LM (the value head takes no part, as in TRL).
impl<B: Backend> NextTokenLogits<B> for Seq2SeqLmWithValueHead<B> {
    type State = Seq2SeqState<B>;

    fn vocab_size(&self) -> usize {
        self.pretrained_model.vocab_size()
    }

    fn logits(&self, batch: &TokenBatch) -> Result<Tensor<B, 3>> {
        NextTokenLogits::logits(&self.pretrained_model, batch)
    }

    fn prefill(&self, batch: &TokenBatch) -> Result<(Seq2SeqState<B>, Tensor<B, 2>)> {
        self.pretrained_model.prefill(batch)
    }

    fn step(&self, state: &mut Seq2SeqState<B>, ids: &[i64]) -> Result<Tensor<B, 2>> {
        self.pretrained_model.step(state, ids)
    }

    fn select_rows(&self, state: &mut Seq2SeqState<B>, keep: &[usize]) {
        self.pretrained_model.select_rows(state, keep)
    }
}
