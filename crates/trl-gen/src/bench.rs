//! The cached-versus-recompute benchmark of the geometric mixture (run by `cargo xtask bench`;
//! no test times anything).

use std::time::Instant;

use burn::prelude::*;
use serde_json::json;
use trl_core::HfConfig;
use trl_models::AnyCausalLm;

use crate::error::Result;
use crate::generate::generate;
use crate::mixture::GeometricMixture;
use crate::next_token::NextTokenLogits;
use crate::rng::Rng;
use crate::sampling::SamplingConfig;

/// Number of prompts of the standard benchmark.
pub const BENCH_PROMPTS: usize = 16;
/// New tokens per prompt of the standard benchmark.
pub const BENCH_NEW_TOKENS: usize = 64;

/// `config.json` of the benchmark model: GPT-2 style, 6 layers, 512 wide, 8 heads, the
/// fixtures' 512-token vocabulary.
pub fn bench_config() -> serde_json::Value {
    json!({
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "vocab_size": 512,
        "n_positions": 1024,
        "n_embd": 512,
        "n_layer": 6,
        "n_head": 8,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": 1e-5,
        "tie_word_embeddings": true,
        "initializer_range": 0.02
    })
}

/// A randomly initialised benchmark model.
pub fn bench_model<B: Backend>(device: &B::Device) -> Result<AnyCausalLm<B>> {
    Ok(AnyCausalLm::init(&HfConfig::from_value(bench_config())?, device)?)
}

/// `n` prompts of 8 to 23 random tokens below `vocab`, fixed by `seed`.
pub fn bench_prompts(n: usize, vocab: usize, seed: u64) -> Vec<Vec<i64>> {
    let mut rng = Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let len = 8 + (rng.next_u64() % 16) as usize;
            (0..len).map(|_| (rng.next_u64() % vocab as u64) as i64).collect()
        })
        .collect()
}

/// Seconds to decode `new_tokens` greedy tokens (no EOS stop) for every prompt from the
/// mixture of `policy` and `reference` (β = 0.5): first with a KV cache per model, then by
/// recomputing both models on the whole prefix each step (TRL's method).
///
/// Returns `(cached_secs, recompute_secs)`.
pub fn bench_mixture<B: Backend, P: NextTokenLogits<B>, R: NextTokenLogits<B>>(
    policy: &P,
    reference: &R,
    prompts: &[Vec<i64>],
    new_tokens: usize,
) -> Result<(f64, f64)> {
    let mixture = GeometricMixture::new(policy, reference, crate::mixture::DEFAULT_MIXTURE_COEF)?;
    let cfg = SamplingConfig { eos_token_id: None, ..SamplingConfig::greedy(new_tokens) };
    // Warm-up (allocations, kernel setup), not timed.
    generate(&mixture, &prompts[..prompts.len().min(2)], &SamplingConfig::greedy(2))?;
    let t = Instant::now();
    generate(&mixture, prompts, &cfg)?;
    let cached = t.elapsed().as_secs_f64();
    let t = Instant::now();
    mixture.recompute(prompts, &cfg)?;
    Ok((cached, t.elapsed().as_secs_f64()))
}
