//! Sampling settings and the logits processors of transformers' `generate`, applied on the host
//! to one row of next-token scores at a time.
//!
//! Order (transformers 5.24 `_get_logits_processor`): repetition penalty (greedy and sampling),
//! then, only when sampling, temperature, top-k, top-p, min-p. Masked tokens get `-inf`.

use serde::{Deserialize, Serialize};

use crate::error::{GenError, Result};
use crate::rng::Rng;

/// How to pick each new token (the fields of a transformers `GenerationConfig` that TRL sets).
///
/// Defaults are TRL's online-DPO / Nash-MD generation config: 64 new tokens, sampling at
/// temperature 0.9, top-k off, top-p 1.0, no min-p, no repetition penalty.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplingConfig {
    /// How many tokens to add at most (a row stops earlier at an EOS token).
    pub max_new_tokens: usize,
    /// Sample from the processed distribution; `false` is greedy (argmax).
    pub do_sample: bool,
    /// Divides the scores before sampling (ignored when greedy, as in transformers).
    pub temperature: f32,
    /// Keep the `top_k` highest scores (ties with the k-th kept); 0 turns it off.
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability sums to at least `top_p`.
    pub top_p: f32,
    /// Keep tokens whose probability is at least `min_p` times the most likely one's.
    pub min_p: Option<f32>,
    /// Divides positive and multiplies negative scores of tokens already in the row; 1.0 is off.
    pub repetition_penalty: f32,
    /// Seed of the sampling generator (same seed and prompts give the same tokens).
    pub seed: u64,
    /// Tokens that end a row (emitted, then the row stops); `None` never stops early.
    pub eos_token_id: Option<Vec<i64>>,
    /// Id used to left-pad prompts and to fill finished rows; defaults to the first EOS id, else 0.
    pub pad_token_id: Option<i64>,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        Self {
            max_new_tokens: 64,
            do_sample: true,
            temperature: 0.9,
            top_k: 0,
            top_p: 1.0,
            min_p: None,
            repetition_penalty: 1.0,
            seed: 0,
            eos_token_id: None,
            pad_token_id: None,
        }
    }
}

impl SamplingConfig {
    /// Greedy decoding of `max_new_tokens` tokens, everything else default.
    pub fn greedy(max_new_tokens: usize) -> Self {
        Self { max_new_tokens, do_sample: false, ..Self::default() }
    }

    /// Checks every value is in the range transformers accepts.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(GenError::Config(m));
        if self.do_sample && !(self.temperature.is_finite() && self.temperature > 0.0) {
            return bad(format!("temperature must be a positive number when sampling, got {}", self.temperature));
        }
        if !(0.0..=1.0).contains(&self.top_p) {
            return bad(format!("top_p must lie in [0, 1], got {}", self.top_p));
        }
        if let Some(m) = self.min_p.filter(|m| !(0.0..=1.0).contains(m)) {
            return bad(format!("min_p must lie in [0, 1], got {m}"));
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return bad(format!("repetition_penalty must be a positive number, got {}", self.repetition_penalty));
        }
        Ok(())
    }

    /// The id that pads prompts and fills finished rows.
    pub fn pad_id(&self) -> i64 {
        self.pad_token_id.or_else(|| self.eos_token_id.as_ref().and_then(|e| e.first().copied())).unwrap_or(0)
    }

    pub fn is_eos(&self, token: i64) -> bool {
        self.eos_token_id.as_ref().is_some_and(|e| e.contains(&token))
    }

    /// Applies every processor this config turns on to one row of scores, in transformers'
    /// order. `seen` holds the row's tokens so far (prompt without padding, then new tokens).
    ///
    /// # Shapes
    /// `scores`: `[vocab]`, changed in place.
    pub fn process(&self, scores: &mut [f32], seen: &[i64]) {
        if self.repetition_penalty != 1.0 {
            repetition_penalty(scores, seen, self.repetition_penalty);
        }
        if !self.do_sample {
            return;
        }
        if self.temperature != 1.0 {
            scores.iter_mut().for_each(|s| *s /= self.temperature);
        }
        if self.top_k != 0 {
            top_k(scores, self.top_k);
        }
        if self.top_p < 1.0 {
            top_p(scores, self.top_p);
        }
        if let Some(m) = self.min_p {
            min_p(scores, m);
        }
    }

    /// Picks the next token from processed scores: argmax when greedy, else a draw from their
    /// softmax with `rng`.
    pub fn choose(&self, scores: &[f32], rng: &mut Rng) -> usize {
        if self.do_sample {
            sample(scores, rng)
        } else {
            argmax(scores)
        }
    }
}

/// Each distinct token of `seen` (ids outside the vocabulary ignored): positive scores are
/// divided by `penalty`, negative ones multiplied (transformers' `RepetitionPenaltyLogitsProcessor`).
pub fn repetition_penalty(scores: &mut [f32], seen: &[i64], penalty: f32) {
    let mut done = vec![false; scores.len()];
    for &t in seen {
        let Some(i) = usize::try_from(t).ok().filter(|&i| i < scores.len() && !done[i]) else { continue };
        done[i] = true;
        let s = &mut scores[i];
        *s = if *s < 0.0 { *s * penalty } else { *s / penalty };
    }
}

/// Masks every score below the `k`-th largest (ties with it stay), as `TopKLogitsWarper`.
pub fn top_k(scores: &mut [f32], k: usize) {
    let k = k.min(scores.len());
    if k == 0 {
        return;
    }
    let mut sorted = scores.to_vec();
    sorted.sort_unstable_by(|a, b| b.total_cmp(a));
    let kth = sorted[k - 1];
    scores.iter_mut().filter(|s| **s < kth).for_each(|s| *s = f32::NEG_INFINITY);
}

/// Keeps the smallest set of most likely tokens with probability summing to at least `p`
/// (always at least one), as `TopPLogitsWarper`: sorted ascending, a token goes when the
/// cumulative probability up to and including it is `<= 1 - p`.
pub fn top_p(scores: &mut [f32], p: f32) {
    let probs = softmax(scores);
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]).then(a.cmp(&b)));
    let mut cum = 0.0f32;
    let last = order.len().saturating_sub(1);
    for (rank, &i) in order.iter().enumerate() {
        cum += probs[i];
        if rank < last && cum <= 1.0 - p {
            scores[i] = f32::NEG_INFINITY;
        }
    }
}

/// Masks tokens whose probability is below `min_p` times the largest (the most likely token
/// always stays), as `MinPLogitsWarper`.
pub fn min_p(scores: &mut [f32], min_p: f32) {
    let probs = softmax(scores);
    let top = argmax(&probs);
    let cut = min_p * probs[top];
    for (i, (s, &p)) in scores.iter_mut().zip(&probs).enumerate() {
        if p < cut && i != top {
            *s = f32::NEG_INFINITY;
        }
    }
}

/// Softmax of one row (masked `-inf` entries get 0).
pub fn softmax(scores: &[f32]) -> Vec<f32> {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = scores.iter().map(|&s| (s - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

/// `log(sum(exp(scores)))`, accumulated in f64; `-inf` when every score is.
pub fn logsumexp(scores: &[f32]) -> f32 {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        return max;
    }
    let sum: f64 = scores.iter().map(|&s| ((s - max) as f64).exp()).sum();
    max + sum.ln() as f32
}

/// Index of the largest score (the first one on ties, as `torch.argmax`).
pub fn argmax(scores: &[f32]) -> usize {
    let mut best = 0;
    for (i, &s) in scores.iter().enumerate() {
        if s > scores[best] {
            best = i;
        }
    }
    best
}

/// One draw from `softmax(scores)`.
pub fn sample(scores: &[f32], rng: &mut Rng) -> usize {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let weights: Vec<f64> = scores.iter().map(|&s| ((s - max) as f64).exp()).collect();
    let total: f64 = weights.iter().sum();
    let mut u = rng.next_f64() * total;
    let mut last = argmax(scores);
    for (i, &w) in weights.iter().enumerate() {
        if w > 0.0 {
            last = i;
            if u < w {
                return i;
            }
            u -= w;
        }
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;

    const NEG: f32 = f32::NEG_INFINITY;

    fn kept(scores: &[f32]) -> Vec<usize> {
        scores.iter().enumerate().filter(|(_, s)| s.is_finite()).map(|(i, _)| i).collect()
    }

    /// logits whose softmax is exactly `probs`.
    fn logits_of(probs: &[f32]) -> Vec<f32> {
        probs.iter().map(|p| p.ln()).collect()
    }

    #[test]
    fn top_k_keeps_k_and_ties_with_the_kth() {
        let mut s = vec![1.0, 5.0, 3.0, 4.0, 2.0];
        top_k(&mut s, 2);
        assert_eq!(kept(&s), vec![1, 3]);
        assert_eq!(s[1], 5.0, "kept scores are unchanged");
        let mut s = vec![1.0, 3.0, 3.0, 4.0, 3.0];
        top_k(&mut s, 2);
        assert_eq!(kept(&s), vec![1, 2, 3, 4], "every tie with the k-th value stays");
        let mut s = vec![1.0, 2.0];
        top_k(&mut s, 10);
        assert_eq!(kept(&s), vec![0, 1], "k above the vocabulary keeps everything");
    }

    #[test]
    fn top_p_keeps_smallest_set_reaching_p() {
        let probs = [0.05, 0.5, 0.25, 0.15, 0.05];
        let mut s = logits_of(&probs);
        top_p(&mut s, 0.7);
        assert_eq!(kept(&s), vec![1, 2], "0.5 + 0.25 >= 0.7");
        let mut s = logits_of(&probs);
        top_p(&mut s, 0.8);
        assert_eq!(kept(&s), vec![1, 2, 3], "0.75 < 0.8, so 0.15 joins");
        let mut s = logits_of(&probs);
        top_p(&mut s, 0.0);
        assert_eq!(kept(&s), vec![1], "at least one token stays");
        let mut s = logits_of(&probs);
        top_p(&mut s, 0.3);
        assert_eq!(kept(&s), vec![1], "the top token alone already reaches p");
    }

    #[test]
    fn min_p_keeps_tokens_above_fraction_of_max() {
        let probs = [0.1, 0.5, 0.25, 0.1, 0.05];
        let mut s = logits_of(&probs);
        min_p(&mut s, 0.3);
        assert_eq!(kept(&s), vec![1, 2], "cut at 0.15");
        let mut s = logits_of(&probs);
        min_p(&mut s, 0.19);
        assert_eq!(kept(&s), vec![0, 1, 2, 3], "cut at 0.095");
        let mut s = logits_of(&probs);
        min_p(&mut s, 1.0);
        assert_eq!(kept(&s), vec![1]);
    }

    #[test]
    fn repetition_penalty_divides_positive_multiplies_negative_once() {
        let mut s = vec![2.0, -2.0, 4.0, -1.0];
        repetition_penalty(&mut s, &[0, 1, 1, 7, -3, 0], 2.0);
        assert_eq!(s, vec![1.0, -4.0, 4.0, -1.0], "repeated ids are penalised once; out-of-vocab ids ignored");
    }

    #[test]
    fn process_applies_in_order_and_greedy_ignores_warpers() {
        let cfg = SamplingConfig { temperature: 0.5, top_k: 2, repetition_penalty: 2.0, ..SamplingConfig::default() };
        let mut s = vec![4.0, 3.0, 1.0, -1.0];
        cfg.process(&mut s, &[0]);
        // penalty: [2, 3, 1, -1]; temperature: [4, 6, 2, -2]; top-2: [4, 6, -inf, -inf]
        assert_eq!(s, vec![4.0, 6.0, NEG, NEG]);
        let greedy = SamplingConfig { do_sample: false, ..cfg };
        let mut s = vec![4.0, 3.0, 1.0, -1.0];
        greedy.process(&mut s, &[0]);
        assert_eq!(s, vec![2.0, 3.0, 1.0, -1.0]);
        assert_eq!(greedy.choose(&s, &mut Rng::seed_from_u64(0)), 1);
    }

    #[test]
    fn sampling_is_seeded_and_follows_the_distribution() {
        let s = logits_of(&[0.2, 0.0, 0.8]);
        let draw = |seed| {
            let mut rng = Rng::seed_from_u64(seed);
            (0..4000).map(|_| sample(&s, &mut rng)).collect::<Vec<_>>()
        };
        let a = draw(3);
        assert_eq!(a, draw(3));
        assert_ne!(a, draw(4));
        assert!(!a.contains(&1), "a zero-probability token is never drawn");
        let frac = a.iter().filter(|&&t| t == 2).count() as f32 / a.len() as f32;
        assert!((frac - 0.8).abs() < 0.03, "frequency {frac}");
    }

    #[test]
    fn validate_names_the_bad_field() {
        let err = SamplingConfig { top_p: 1.5, ..SamplingConfig::default() }.validate().unwrap_err();
        assert!(err.to_string().contains("top_p"), "{err}");
        let err = SamplingConfig { temperature: 0.0, ..SamplingConfig::default() }.validate().unwrap_err();
        assert!(err.to_string().contains("temperature"), "{err}");
        assert!(SamplingConfig { temperature: 0.0, ..SamplingConfig::greedy(4) }.validate().is_ok());
    }

    #[test]
    fn serde_fills_defaults() {
        let cfg: SamplingConfig = serde_json::from_str(r#"{"top_k": 5, "eos_token_id": [0]}"#).unwrap();
        assert_eq!(cfg, SamplingConfig { top_k: 5, eos_token_id: Some(vec![0]), ..SamplingConfig::default() });
        assert_eq!(cfg.pad_id(), 0);
    }

    #[test]
    fn logsumexp_handles_masked_rows() {
        assert!((logsumexp(&[0.0, 0.0, NEG]) - 2f32.ln()).abs() < 1e-6);
        assert_eq!(logsumexp(&[NEG, NEG]), NEG);
    }
}
