//! The geometric mixture of a policy and a reference model (TRL's `GeometricMixtureWrapper`,
//! used by Nash-MD): next-token log-probabilities
//! `log_softmax(β·ref_logits + (1−β)·policy_logits)`, i.e. `π^(1−β)·π_ref^β` renormalised.
//!
//! Unlike TRL, which recomputes the whole prefix of both models at every step (and, with a
//! shared cache, mixes the two models' keys), each model here decodes on its own KV cache with
//! its own mask-derived positions. [`GeometricMixture::recompute`] is TRL's method, kept as the
//! reference. Sampling settings apply to the mixed log-probabilities, as in Nash-MD.

use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use trl_models::TokenBatch;

use crate::error::{GenError, Result};
use crate::generate::{generate, Generation};
use crate::next_token::NextTokenLogits;
use crate::sampling::SamplingConfig;
use crate::uncached::Uncached;

/// TRL's default `mixture_coef` (β).
pub const DEFAULT_MIXTURE_COEF: f64 = 0.5;

/// A policy and a reference over one vocabulary, mixed with weight `mixture_coef` (β) on the
/// reference. Pass references (`&model`) to keep ownership.
#[derive(Debug, Clone)]
pub struct GeometricMixture<P, R> {
    pub policy: P,
    pub reference: R,
    /// β: 0 is the policy, 1 the reference.
    pub mixture_coef: f64,
}

impl<P, R> GeometricMixture<P, R> {
    /// Checks that β lies in [0, 1] and that both models score the same vocabulary.
    pub fn new<B: Backend>(policy: P, reference: R, mixture_coef: f64) -> Result<Self>
    where
        P: NextTokenLogits<B>,
        R: NextTokenLogits<B>,
    {
        if !(0.0..=1.0).contains(&mixture_coef) {
            return Err(GenError::MixtureCoef(mixture_coef));
        }
        let (p, r) = (policy.vocab_size(), reference.vocab_size());
        if p != r {
            return Err(GenError::VocabMismatch { policy: p, reference: r });
        }
        Ok(Self { policy, reference, mixture_coef })
    }

    /// `log_softmax(β·reference + (1−β)·policy)` over the last dimension.
    ///
    /// # Shapes
    /// `[..., vocab]` twice → `[..., vocab]`
    pub fn mix<B: Backend, const D: usize>(&self, policy: Tensor<B, D>, reference: Tensor<B, D>) -> Tensor<B, D> {
        let beta = self.mixture_coef;
        log_softmax(reference.mul_scalar(beta) + policy.mul_scalar(1.0 - beta), D - 1)
    }

    /// Generates from the mixture as TRL does: no cache, both models run on the whole prefix
    /// at every step. Same tokens and log-probabilities as [`generate`] on the mixture.
    pub fn recompute<B: Backend>(&self, prompts: &[Vec<i64>], cfg: &SamplingConfig) -> Result<Vec<Generation>>
    where
        P: NextTokenLogits<B>,
        R: NextTokenLogits<B>,
    {
        generate(&Uncached(self), prompts, cfg)
    }
}

impl<B: Backend, P: NextTokenLogits<B>, R: NextTokenLogits<B>> NextTokenLogits<B> for GeometricMixture<P, R> {
    /// Each model's own state (KV cache).
    type State = (P::State, R::State);

    fn vocab_size(&self) -> usize {
        self.policy.vocab_size()
    }

    /// The mixed log-probabilities of every position (TRL's `GeometricMixtureWrapper.forward`).
    fn logits(&self, batch: &TokenBatch) -> Result<Tensor<B, 3>> {
        Ok(self.mix(self.policy.logits(batch)?, self.reference.logits(batch)?))
    }

    fn prefill(&self, batch: &TokenBatch) -> Result<(Self::State, Tensor<B, 2>)> {
        let (ps, pl) = self.policy.prefill(batch)?;
        let (rs, rl) = self.reference.prefill(batch)?;
        Ok(((ps, rs), self.mix(pl, rl)))
    }

    fn step(&self, (ps, rs): &mut Self::State, ids: &[i64]) -> Result<Tensor<B, 2>> {
        let pl = self.policy.step(ps, ids)?;
        let rl = self.reference.step(rs, ids)?;
        Ok(self.mix(pl, rl))
    }

    fn select_rows(&self, (ps, rs): &mut Self::State, keep: &[usize]) {
        self.policy.select_rows(ps, keep);
        self.reference.select_rows(rs, keep);
    }
}
