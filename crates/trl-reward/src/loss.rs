//! The Bradley–Terry reward loss and its metrics, on `[B]`-shaped rewards (no `[B, B]`
//! broadcast when a margin is given, unlike TRL before v0.24).

use burn::prelude::*;
use burn::tensor::activation::log_sigmoid;
use serde::{Deserialize, Serialize};

/// `-log σ(r_c − r_r − margin)` averaged, plus `coef · mean((r_c + r_r)²)` when centering.
///
/// `chosen`, `rejected`, `margin`: `[B]`. Returns `[1]`.
pub fn bradley_terry<B: Backend>(
    chosen: Tensor<B, 1>,
    rejected: Tensor<B, 1>,
    margin: Option<Tensor<B, 1>>,
    center_coef: Option<f64>,
) -> Tensor<B, 1> {
    let mut diff = chosen.clone() - rejected.clone();
    if let Some(m) = margin {
        diff = diff - m;
    }
    let mut loss = log_sigmoid(diff).mean().neg();
    if let Some(c) = center_coef {
        loss = loss + (chosen + rejected).square().mean() * c;
    }
    loss
}

/// Metrics of one batch of pairs, as TRL 1.x logs them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct PairMetrics {
    /// Fraction of pairs with `r_c > r_r` (ties count as wrong).
    pub accuracy: f64,
    /// Mean of `r_c − r_r`.
    pub margin: f64,
    pub min_reward: f64,
    pub mean_reward: f64,
    pub max_reward: f64,
    pub pairs: usize,
}

impl PairMetrics {
    pub(crate) fn from_rewards(chosen: &[f32], rejected: &[f32]) -> Self {
        let n = chosen.len();
        if n == 0 {
            return Self::default();
        }
        let wins = chosen.iter().zip(rejected).filter(|(c, r)| c > r).count();
        let margin = chosen.iter().zip(rejected).map(|(c, r)| (c - r) as f64).sum::<f64>() / n as f64;
        let all = chosen.iter().chain(rejected).map(|&x| x as f64);
        let (mut lo, mut hi, mut sum) = (f64::INFINITY, f64::NEG_INFINITY, 0.0);
        for x in all {
            lo = lo.min(x);
            hi = hi.max(x);
            sum += x;
        }
        Self {
            accuracy: wins as f64 / n as f64,
            margin,
            min_reward: lo,
            mean_reward: sum / (2 * n) as f64,
            max_reward: hi,
            pairs: n,
        }
    }

    /// Every float through `json_exact` (exact through JSON).
    pub(crate) fn json_exact(self) -> Self {
        use crate::exact::json_exact as r;
        Self {
            accuracy: r(self.accuracy),
            margin: r(self.margin),
            min_reward: r(self.min_reward),
            mean_reward: r(self.mean_reward),
            max_reward: r(self.max_reward),
            pairs: self.pairs,
        }
    }

    /// Pair-weighted mean of several batches' metrics (min/max over all).
    pub(crate) fn merge(parts: &[PairMetrics]) -> Self {
        let n: usize = parts.iter().map(|p| p.pairs).sum();
        if n == 0 {
            return Self::default();
        }
        let w = |f: fn(&PairMetrics) -> f64| parts.iter().map(|p| f(p) * p.pairs as f64).sum::<f64>() / n as f64;
        Self {
            accuracy: w(|p| p.accuracy),
            margin: w(|p| p.margin),
            mean_reward: w(|p| p.mean_reward),
            min_reward: parts.iter().map(|p| p.min_reward).fold(f64::INFINITY, f64::min),
            max_reward: parts.iter().map(|p| p.max_reward).fold(f64::NEG_INFINITY, f64::max),
            pairs: n,
        }
    }
}

/// `P(chosen ≻ rejected) = σ(r_c − r_r)`, the softmax over the pair.
pub fn preference_probability(chosen: f32, rejected: f32) -> f32 {
    1.0 / (1.0 + (rejected - chosen).exp())
}
