//! Batched generation: left-padded prompts are run once (prefill), then one token per step on
//! the model's KV cache; rows that emit an EOS token stop and leave the compute batch.

use burn::prelude::*;
use trl_models::{Padding, TokenBatch};

use crate::error::{GenError, Result};
use crate::next_token::NextTokenLogits;
use crate::rng::Rng;
use crate::sampling::{logsumexp, SamplingConfig};

/// Why a row stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// It emitted an EOS token (the last of `token_ids`).
    Eos,
    /// It reached `max_new_tokens`.
    Length,
}

/// The new tokens of one prompt.
///
/// Two log-probabilities per token:
/// - `logprobs`: under the model's **unprocessed** next-token distribution (`log_softmax` of
///   its logits; for a [`crate::GeometricMixture`], of the mixed log-probabilities) —
///   transformers' `output_logits` after `log_softmax`. The one RL losses use.
/// - `sampling_logprobs`: under the **processed** distribution the token was drawn from
///   (after repetition penalty, and when sampling temperature, top-k, top-p, min-p) —
///   transformers' `output_scores` after `log_softmax`. Equal to `logprobs` for plain greedy
///   decoding and for sampling at temperature 1 without truncation or penalty.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// The new tokens, the EOS that ended the row included.
    pub token_ids: Vec<i64>,
    pub logprobs: Vec<f32>,
    pub sampling_logprobs: Vec<f32>,
    pub finish: FinishReason,
}

impl Generation {
    /// The tokens right-padded with `pad_id` to `len`, as finished rows of transformers'
    /// `generate` output are filled.
    pub fn padded(&self, len: usize, pad_id: i64) -> Vec<i64> {
        let mut ids = self.token_ids.clone();
        ids.resize(len.max(ids.len()), pad_id);
        ids
    }
}

/// Checks the prompts and left-pads them into one batch.
pub fn left_pad(prompts: &[Vec<i64>], pad_id: i64) -> Result<TokenBatch> {
    if prompts.is_empty() {
        return Err(GenError::NoPrompts);
    }
    if let Some(i) = prompts.iter().position(Vec::is_empty) {
        return Err(GenError::EmptyPrompt(i));
    }
    Ok(TokenBatch::pad(prompts, pad_id, Padding::Left, None)?)
}

/// Processes one row of raw scores and picks a token: `(token, raw log-prob, processed
/// log-prob)`, or `None` when the scores hold NaN or leave no token possible.
fn pick(cfg: &SamplingConfig, raw: &[f32], seen: &[i64], rng: &mut Rng) -> Option<(usize, f32, f32)> {
    if raw.iter().any(|x| x.is_nan()) {
        return None;
    }
    let mut scores = raw.to_vec();
    cfg.process(&mut scores, seen);
    let tok = cfg.choose(&scores, rng);
    let sampling_logprob = scores[tok] - logsumexp(&scores);
    sampling_logprob.is_finite().then(|| (tok, raw[tok] - logsumexp(raw), sampling_logprob))
}

/// Generates up to `cfg.max_new_tokens` tokens after each prompt.
///
/// Prompts are left-padded with `cfg.pad_id()`; positions come from the mask, so every row
/// decodes as if alone. One seeded generator draws for the running rows in order, so the same
/// prompts, model and seed give the same tokens. Finished rows are dropped from the model's
/// state with [`NextTokenLogits::select_rows`].
///
/// # Shapes
/// `prompts`: `batch` rows of any positive length → `batch` [`Generation`]s.
pub fn generate<B: Backend, M: NextTokenLogits<B>>(
    model: &M,
    prompts: &[Vec<i64>],
    cfg: &SamplingConfig,
) -> Result<Vec<Generation>> {
    cfg.validate()?;
    let batch = left_pad(prompts, cfg.pad_id())?;
    let vocab = model.vocab_size();
    let mut rng = Rng::seed_from_u64(cfg.seed);
    let mut out: Vec<Generation> = prompts
        .iter()
        .map(|_| Generation {
            token_ids: Vec::new(),
            logprobs: Vec::new(),
            sampling_logprobs: Vec::new(),
            finish: FinishReason::Length,
        })
        .collect();
    if cfg.max_new_tokens == 0 {
        return Ok(out);
    }
    let mut seen: Vec<Vec<i64>> = prompts.to_vec();
    let mut active: Vec<usize> = (0..prompts.len()).collect();
    let (mut state, mut logits) = model.prefill(&batch)?;
    for step in 0..cfg.max_new_tokens {
        let host: Vec<f32> = logits.into_data().iter::<f32>().collect();
        if host.len() != active.len() * vocab {
            return Err(GenError::LogitsShape { found: host.len() / active.len().max(1), vocab });
        }
        let mut keep = Vec::with_capacity(active.len());
        let mut next = Vec::with_capacity(active.len());
        for (i, &row) in active.iter().enumerate() {
            let (tok, logprob, sampling_logprob) = pick(cfg, &host[i * vocab..(i + 1) * vocab], &seen[row], &mut rng)
                .ok_or(GenError::NonFinite { row, step })?;
            let id = tok as i64;
            let g = &mut out[row];
            g.token_ids.push(id);
            g.logprobs.push(logprob);
            g.sampling_logprobs.push(sampling_logprob);
            seen[row].push(id);
            if cfg.is_eos(id) {
                g.finish = FinishReason::Eos;
            } else {
                keep.push(i);
                next.push(id);
            }
        }
        if keep.is_empty() || step + 1 == cfg.max_new_tokens {
            break;
        }
        if keep.len() < active.len() {
            model.select_rows(&mut state, &keep);
            active = keep.iter().map(|&i| active[i]).collect();
        }
        logits = model.step(&mut state, &next)?;
    }
    Ok(out)
}
