//! Generation and the geometric mixture (issue 7): greedy parity with transformers, cached
//! mixture decoding equal to TRL's recompute-everything method and to TRL's
//! `GeometricMixtureWrapper`, seeded sampling, EOS handling.

use trl_gen::{
    generate, FinishReason, GenError, Generation, GeometricMixture, NextTokenLogits, SamplingConfig, Uncached,
};
use trl_heads::{CausalLmWithValueHead, ValueHeadOptions};
use trl_models::{AnyCausalLm, TokenBatch};
use trl_tests::*;

const PAD: i64 = 1;

fn load(name: &str) -> AnyCausalLm<B> {
    AnyCausalLm::<B>::from_pretrained(&fixture(name), &trl_core::backend::device()).expect("load").0
}

/// The real tokens of each row of a left-padded `[batch, seq]` case.
fn prompts(exp: &trl_core::StateDict, case: &str) -> Vec<Vec<i64>> {
    let b = batch(exp, case);
    (0..b.batch)
        .map(|r| {
            (0..b.seq).filter(|&i| b.attention_mask[r * b.seq + i] != 0).map(|i| b.input_ids[r * b.seq + i]).collect()
        })
        .collect()
}

/// Prompt (left-padded as given) followed by the new tokens, per row: transformers' layout.
fn with_prompt(exp: &trl_core::StateDict, gens: &[Generation], new: usize) -> Vec<i64> {
    let b = batch(exp, "gen");
    gens.iter()
        .enumerate()
        .flat_map(|(r, g)| b.input_ids[r * b.seq..(r + 1) * b.seq].iter().copied().chain(g.padded(new, PAD)))
        .collect()
}

fn greedy(new: usize) -> SamplingConfig {
    SamplingConfig { pad_token_id: Some(PAD), ..SamplingConfig::greedy(new) }
}

fn assert_same_generations(what: &str, got: &[Generation], want: &[Generation], tol: Tol) {
    assert_eq!(got.len(), want.len(), "{what}: row count");
    for (r, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.token_ids, w.token_ids, "{what}: tokens of row {r}");
        assert_eq!(g.finish, w.finish, "{what}: finish of row {r}");
        assert_close(&format!("{what} row {r} logprobs"), &g.logprobs, &w.logprobs, tol);
        assert_close(&format!("{what} row {r} sampling logprobs"), &g.sampling_logprobs, &w.sampling_logprobs, tol);
    }
}

/// Greedy generation of the left-padded `gen` batch equals transformers' `generate` token for
/// token, for every architecture, cached and uncached.
#[test]
fn greedy_matches_transformers_generate() {
    for name in DECODERS {
        let model = load(name);
        let exp = expected(name);
        let (want, shape) = ints(&exp, "gen.output_ids");
        let new = shape[1] - batch(&exp, "gen").seq;
        let gens = generate(&model, &prompts(&exp, "gen"), &greedy(new)).unwrap();
        assert_eq!(with_prompt(&exp, &gens, new), want, "{name}: greedy tokens");
        assert!(gens.iter().all(|g| g.finish == FinishReason::Length));
        let uncached = generate(&Uncached(&model), &prompts(&exp, "gen"), &greedy(new)).unwrap();
        assert_same_generations(&format!("{name} cached vs uncached"), &gens, &uncached, logprob_tol(name));
    }
}

/// Seeded sampling (temperature, top-k, top-p) on the KV cache draws the same tokens with the
/// same log-probabilities as recomputing the whole prefix each step, for every architecture.
#[test]
fn sampling_cached_equals_recompute() {
    for name in DECODERS {
        let model = load(name);
        let exp = expected(name);
        let cfg = SamplingConfig {
            max_new_tokens: 12,
            temperature: 0.8,
            top_k: 50,
            top_p: 0.95,
            seed: 7,
            pad_token_id: Some(PAD),
            ..SamplingConfig::default()
        };
        let cached = generate(&model, &prompts(&exp, "gen"), &cfg).unwrap();
        let recomputed = generate(&Uncached(&model), &prompts(&exp, "gen"), &cfg).unwrap();
        assert_same_generations(
            &format!("{name} sampled, cached vs recompute"),
            &cached,
            &recomputed,
            logprob_tol(name),
        );
    }
}

/// A value-head model generates with its LM head: gpt2-vhead's backbone is gpt2.
#[test]
fn value_head_model_generates_like_its_backbone() {
    let device = trl_core::backend::device();
    let (model, _, _) =
        CausalLmWithValueHead::<B>::from_pretrained(&fixture("gpt2-vhead"), &ValueHeadOptions::default(), &device)
            .unwrap();
    let exp = expected("gpt2");
    let gens = generate(&model, &prompts(&exp, "gen"), &greedy(8)).unwrap();
    assert_eq!(with_prompt(&exp, &gens, 8), ints(&exp, "gen.output_ids").0);
}

/// Log-probabilities of fixture `name`'s next-token distribution (vocabulary 512).
fn logprob_tol(name: &str) -> Tol {
    Tol::log_softmax(Tol::forward(name), 512, 0)
}

/// The mixture's log-probabilities: each model's, weighted and renormalised by one more
/// log-softmax over the vocabulary.
fn mixture_tol() -> Tol {
    let each = Tol { rel: logprob_tol("gpt2").rel.max(logprob_tol("llama").rel) };
    Tol::log_softmax(each, 512, 0)
}

/// `(policy, reference)` = (gpt2, llama), the pair of the `mixture` fixture.
fn pair() -> (AnyCausalLm<B>, AnyCausalLm<B>) {
    (load("gpt2"), load("llama"))
}

/// Our mixture's forward equals TRL's `GeometricMixtureWrapper.forward` (unpadded, and left
/// padded with mask-derived positions) within [`mixture_tol`], for β = 0.5 and 0.3.
#[test]
fn mixture_forward_matches_trl_wrapper() {
    let (policy, reference) = pair();
    let exp = expected("mixture");
    for (tag, beta) in [("b50", 0.5), ("b30", 0.3)] {
        let mix = GeometricMixture::new(&policy, &reference, beta).unwrap();
        let single = batch(&exp, "single");
        let (want, _) = floats(&exp, &format!("single.logprobs_{tag}"));
        assert_close(&format!("single {tag}"), &to_vec(mix.logits(&single).unwrap()), &want, mixture_tol());
        let left = batch(&exp, "left");
        let (want, shape) = floats(&exp, &format!("left.logprobs_{tag}"));
        let v = shape[2];
        assert_close_where(&format!("left {tag}"), &to_vec(mix.logits(&left).unwrap()), &want, mixture_tol(), |i| {
            left.attention_mask[i / v] != 0
        });
    }
}

/// Greedy decoding of the mixture with one KV cache per model gives the tokens and mixed
/// log-probs of TRL's recompute-everything decoding of the wrapper (fixture), β = 0.5 and 0.3.
#[test]
fn mixture_greedy_matches_trl_recompute() {
    let (policy, reference) = pair();
    let exp = expected("mixture");
    for (tag, beta) in [("b50", 0.5), ("b30", 0.3)] {
        let mix = GeometricMixture::new(&policy, &reference, beta).unwrap();
        let gens = generate(&mix, &prompts(&exp, "gen"), &greedy(8)).unwrap();
        assert_eq!(with_prompt(&exp, &gens, 8), ints(&exp, &format!("gen.output_ids_{tag}")).0, "{tag}: tokens");
        let raw: Vec<f32> = gens.iter().flat_map(|g| g.logprobs.clone()).collect();
        assert_close(
            &format!("{tag} chosen logprobs"),
            &raw,
            &floats(&exp, &format!("gen.logprobs_{tag}")).0,
            mixture_tol(),
        );
    }
}

/// The cached mixture's whole next-token distribution equals a no-cache recompute at every
/// step (within [`mixture_tol`]), including after a finished row is dropped from both caches.
#[test]
fn mixture_cached_distributions_equal_recompute() {
    let (policy, reference) = pair();
    let exp = expected("mixture");
    let mix = GeometricMixture::new(&policy, &reference, 0.3).unwrap();
    let slow = Uncached(&mix);
    let batch0 = trl_gen::left_pad(&prompts(&exp, "left"), PAD).unwrap();
    let (mut fast_state, mut fast) = mix.prefill(&batch0).unwrap();
    let (mut slow_state, mut slow_logits) = slow.prefill(&batch0).unwrap();
    let mut rows = batch0.batch;
    for step in 0..10 {
        assert_close(&format!("step {step}"), &to_vec(fast.clone()), &to_vec(slow_logits.clone()), mixture_tol());
        if step == 4 {
            // Drop the middle row from the states.
            mix.select_rows(&mut fast_state, &[0, 2]);
            slow.select_rows(&mut slow_state, &[0, 2]);
            rows = 2;
        }
        let ids: Vec<i64> = (0..rows as i64).map(|r| 100 + 7 * r + step).collect();
        fast = mix.step(&mut fast_state, &ids).unwrap();
        slow_logits = slow.step(&mut slow_state, &ids).unwrap();
    }
}

/// Sampling from the mixture (temperature, top-k, top-p, repetition penalty, EOS) gives the
/// same tokens and log-probs with caches as with TRL's recompute method.
#[test]
fn mixture_sampling_cached_equals_recompute() {
    let (policy, reference) = pair();
    let exp = expected("mixture");
    let mix = GeometricMixture::new(&policy, &reference, 0.5).unwrap();
    let mut cfg = SamplingConfig {
        max_new_tokens: 12,
        top_k: 50,
        top_p: 0.95,
        repetition_penalty: 1.2,
        seed: 11,
        pad_token_id: Some(PAD),
        ..SamplingConfig::default()
    };
    // A token row 1 samples mid-way becomes the EOS, so that rows stop and leave the batch.
    let free = generate(&mix, &prompts(&exp, "left"), &cfg).unwrap();
    cfg.eos_token_id = Some(vec![free[1].token_ids[3]]);
    let cached = generate(&mix, &prompts(&exp, "left"), &cfg).unwrap();
    assert_eq!(cached[1].finish, FinishReason::Eos);
    assert_eq!(cached[1].token_ids, free[1].token_ids[..4]);
    let recomputed = mix.recompute(&prompts(&exp, "left"), &cfg).unwrap();
    assert_same_generations("sampled mixture", &cached, &recomputed, mixture_tol());
}

/// Same seed, same tokens; another seed, other tokens.
#[test]
fn seeded_sampling_is_reproducible() {
    let model = load("gpt2");
    let exp = expected("gpt2");
    let cfg = |seed| SamplingConfig {
        max_new_tokens: 24,
        temperature: 1.0,
        seed,
        pad_token_id: Some(PAD),
        ..SamplingConfig::default()
    };
    let a = generate(&model, &prompts(&exp, "gen"), &cfg(1)).unwrap();
    let b = generate(&model, &prompts(&exp, "gen"), &cfg(1)).unwrap();
    let c = generate(&model, &prompts(&exp, "gen"), &cfg(2)).unwrap();
    assert_eq!(a, b);
    assert_ne!(a.iter().map(|g| &g.token_ids).collect::<Vec<_>>(), c.iter().map(|g| &g.token_ids).collect::<Vec<_>>());
    for g in &a {
        assert_eq!(g.token_ids.len(), 24);
        // Temperature 1 and no truncation: the processed distribution is the raw one.
        // Two log-softmaxes of the same logits.
        assert_close("processed vs raw", &g.sampling_logprobs, &g.logprobs, Tol::log_softmax(Tol::chain(0), 512, 0));
    }
}

/// A row that emits EOS ends there (EOS kept, then only padding) and leaves the batch; the
/// other rows are unaffected by its removal.
#[test]
fn eos_stops_rows() {
    let model = load("qwen2");
    let exp = expected("qwen2");
    let ps = prompts(&exp, "gen");
    let free = generate(&model, &ps, &greedy(8)).unwrap();
    // Make row 0's third new token the EOS.
    let eos = free[0].token_ids[2];
    let cfg = SamplingConfig { eos_token_id: Some(vec![eos]), ..greedy(8) };
    let stopped = generate(&model, &ps, &cfg).unwrap();
    for (r, (s, f)) in stopped.iter().zip(&free).enumerate() {
        match f.token_ids.iter().position(|&t| t == eos) {
            Some(at) => {
                assert_eq!(s.token_ids, f.token_ids[..=at], "row {r} stops at the EOS");
                assert_eq!(s.finish, FinishReason::Eos);
                assert_eq!(s.padded(8, PAD)[at + 1..], vec![PAD; 7 - at], "row {r} padded after EOS");
            }
            None => {
                assert_eq!(s.token_ids, f.token_ids, "row {r} unaffected");
                assert_eq!(s.finish, FinishReason::Length);
            }
        }
        assert_close(&format!("row {r} logprobs"), &s.logprobs, &f.logprobs[..s.logprobs.len()], logprob_tol("qwen2"));
    }
    assert_eq!(stopped[0].token_ids.len(), 3);
    // Every row finishing at once ends generation early.
    let all =
        SamplingConfig { eos_token_id: Some(ps.iter().zip(&free).map(|(_, f)| f.token_ids[0]).collect()), ..greedy(8) };
    assert!(generate(&model, &ps, &all)
        .unwrap()
        .iter()
        .all(|g| g.token_ids.len() == 1 && g.finish == FinishReason::Eos));
}

/// Bad input is an error naming the problem, never a panic.
#[test]
fn bad_input_is_reported() {
    let (policy, reference) = pair();
    assert!(matches!(generate(&policy, &[], &greedy(2)), Err(GenError::NoPrompts)));
    assert!(matches!(generate(&policy, &[vec![5], vec![]], &greedy(2)), Err(GenError::EmptyPrompt(1))));
    assert!(matches!(GeometricMixture::new(&policy, &reference, 1.5), Err(GenError::MixtureCoef(_))));
    let bad = SamplingConfig { top_p: -0.1, ..SamplingConfig::default() };
    assert!(matches!(generate(&policy, &[vec![5]], &bad), Err(GenError::Config(_))));
    let long = TokenBatch::unpadded(vec![5; 200], 1, 200);
    assert!(NextTokenLogits::logits(&policy, &long).is_err(), "longer than n_positions");
}
