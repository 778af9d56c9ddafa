//! The padding-free forward pass (`AnyCausalLm::forward_picked`, used for rewards: real tokens
//! only, and the last block past attention on the read tokens only) against the padded one and
//! against transformers: rewards, the Bradley–Terry loss and every parameter's gradient agree
//! within f32 arithmetic's bound, on each decoder family (Gemma 2's last block is a sliding-window
//! one, GPT-NeoX's residual is parallel).

use burn::backend::Autodiff;
use burn::module::{Module, ModuleVisitor, Param};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;

use trl_heads::ForSequenceClassification;
use trl_models::TokenBatch;
use trl_reward::loss::bradley_terry;
use trl_tests::*;

type AB = Autodiff<B>;

const ARCHS: [&str; 7] = ["gpt2", "llama", "qwen2", "gemma2", "gemma3_text", "gpt_neox", "phi3"];

/// Rows of very different lengths (so most of the padded batch is padding), `side`-padded.
fn uneven(side: trl_models::Padding) -> TokenBatch {
    let rows: Vec<Vec<i64>> = [3usize, 11, 1, 7, 16, 5]
        .iter()
        .enumerate()
        .map(|(r, &n)| (0..n).map(|i| 2 + ((r * 31 + i * 7) % 90) as i64).collect())
        .collect();
    // the fixtures' pad_token_id is 1, used by no real token above
    TokenBatch::pad(&rows, 1, side, None).unwrap()
}

#[test]
fn padding_free_rewards_match_transformers_and_the_padded_pass() {
    for arch in ARCHS {
        let name = format!("{arch}-rm");
        let (model, _, _) = ForSequenceClassification::<B>::from_pretrained(&fixture(&name), None, &dev()).unwrap();
        let exp = expected(&name);
        for case in ["right", "left"] {
            let b = batch(&exp, case);
            let free = to_vec(model.forward(&b, false).unwrap().rewards);
            let padded = to_vec(model.forward(&b, true).unwrap().rewards);
            let (want, _) = floats(&exp, &format!("{case}.rewards"));
            assert_close(&format!("{name} {case} padding-free vs transformers"), &free, &want, Tol::forward(&name));
            assert_close(&format!("{name} {case} padding-free vs padded"), &free, &padded, Tol::forward(&name));
        }
        for side in [trl_models::Padding::Right, trl_models::Padding::Left] {
            let b = uneven(side);
            let free = to_vec(model.forward(&b, false).unwrap().rewards);
            let padded = to_vec(model.forward(&b, true).unwrap().rewards);
            assert_close(&format!("{name} {side:?} uneven"), &free, &padded, Tol::forward(&name));
        }
    }
}

/// Every parameter's gradient, in visiting order.
struct Grads<'a, AB: AutodiffBackend> {
    grads: &'a AB::Gradients,
    out: Vec<(String, Vec<f32>)>,
}

impl<AB: AutodiffBackend> ModuleVisitor<AB> for Grads<'_, AB> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<AB, D>>) {
        if let Some(g) = param.val().grad(self.grads) {
            let v = g.into_data().convert::<f32>().to_vec::<f32>().unwrap();
            self.out.push((format!("{:?}", param.lazy_shape()), v));
        }
    }
}

fn loss_and_grads(
    model: &ForSequenceClassification<AB>,
    b: &TokenBatch,
    padded: bool,
) -> (f32, Vec<(String, Vec<f32>)>) {
    let rewards = model.forward(b, padded).unwrap().rewards;
    let n = b.batch / 2;
    let r = rewards.reshape([2 * n]);
    let loss = bradley_terry(r.clone().narrow(0, 0, n), r.narrow(0, n, n), None, Some(0.01));
    let value = loss.clone().into_data().convert::<f32>().to_vec::<f32>().unwrap()[0];
    let grads = loss.backward();
    let mut v = Grads::<AB> { grads: &grads, out: Vec::new() };
    model.visit(&mut v);
    (value, v.out)
}

#[test]
fn padding_free_loss_and_gradients_match_the_padded_pass() {
    for arch in ARCHS {
        let name = format!("{arch}-rm");
        let (model, _, _) =
            ForSequenceClassification::<AB>::from_pretrained(&fixture(&name), None, &Default::default()).unwrap();
        for side in [trl_models::Padding::Right, trl_models::Padding::Left] {
            let b = uneven(side);
            let (free_loss, free) = loss_and_grads(&model, &b, false);
            let (padded_loss, padded) = loss_and_grads(&model, &b, true);
            let fwd = Tol::forward(&name);
            assert_close(&format!("{name} {side:?} loss"), &[free_loss], &[padded_loss], fwd);
            // The backward pass runs the forward chain's reductions transposed, and each weight
            // gradient adds one reduction over the batch's tokens.
            let tol = Tol { rel: 2.0 * fwd.rel + Tol::chain(b.batch * b.seq).rel };
            assert_eq!(free.len(), padded.len(), "{name}: same parameters get gradients");
            assert!(free.len() > 4, "{name}: gradients reach the backbone");
            for (i, ((shape, g), (_, w))) in free.iter().zip(&padded).enumerate() {
                assert!(w.iter().any(|x| *x != 0.0), "{name}: parameter {i} {shape} has a zero gradient");
                assert_close(&format!("{name} {side:?} grad of parameter {i} {shape}"), g, w, tol);
            }
        }
    }
}

/// A last block that attends through a sliding window (Gemma 2's layer types reversed, so the
/// fixtures' full-attention last block becomes a windowed one): reading the picked tokens only
/// equals the padded pass there too. Random weights; both passes are ours.
#[test]
fn a_windowed_last_block_keeps_its_window_when_picking() {
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("gemma2-rm").join("config.json")).unwrap()).unwrap();
    config["layer_types"] = serde_json::json!(["full_attention", "sliding_attention"]);
    let hf = trl_core::HfConfig::from_value(config).unwrap();
    let backbone = trl_models::AnyCausalLm::<B>::init(&hf, &dev()).unwrap();
    let model = ForSequenceClassification::with_fresh_score(backbone, &hf, 1, &dev()).unwrap();
    for side in [trl_models::Padding::Right, trl_models::Padding::Left] {
        let b = uneven(side);
        let free = to_vec(model.forward(&b, false).unwrap().rewards);
        let padded = to_vec(model.forward(&b, true).unwrap().rewards);
        assert_close(&format!("gemma2 windowed last block {side:?}"), &free, &padded, Tol::forward("gemma2-rm"));
    }
}

#[test]
fn picks_must_be_real_tokens() {
    let (model, _, _) = ForSequenceClassification::<B>::from_pretrained(&fixture("llama-rm"), None, &dev()).unwrap();
    let b = uneven(trl_models::Padding::Right);
    let err = model.backbone.forward_picked(&b, &[(0, 5)]).unwrap_err().to_string();
    assert!(err.contains("row 0, position 5"), "{err}");
    let err = model.backbone.forward_picked(&b, &[(9, 0)]).unwrap_err().to_string();
    assert!(err.contains("row 9"), "{err}");
}

fn dev() -> burn::tensor::Device<B> {
    Default::default()
}

/// Preference pairs whose prompts are shared to different lengths (none, part, all of the
/// shorter sequence, the whole of one sequence), chosen rows then rejected rows.
fn prompted_pairs() -> (Vec<Vec<i64>>, Vec<Vec<i64>>) {
    let seq = |seed: usize, n: usize| -> Vec<i64> { (0..n).map(|i| 2 + ((seed * 31 + i * 7) % 90) as i64).collect() };
    let cases = [(0, 4, 6), (5, 3, 2), (9, 1, 8), (12, 5, 0), (3, 6, 3)];
    let mut chosen = Vec::new();
    let mut rejected = Vec::new();
    for (k, &(prompt, a, b)) in cases.iter().enumerate() {
        let p = seq(k, prompt);
        chosen.push([p.clone(), seq(k + 40, a)].concat());
        rejected.push([p, seq(k + 80, b)].concat());
    }
    // the rejected sequence of pair 3 is its prompt alone: a prefix of the chosen one
    (chosen, rejected)
}

/// The prompt-once pass ([`trl_models::SharedPairs`]) against the padded batch of both
/// sequences: rewards, the Bradley–Terry loss and every parameter's gradient.
#[test]
fn shared_prompt_rewards_loss_and_gradients_match_the_padded_pass() {
    let (chosen, rejected) = prompted_pairs();
    let n = chosen.len();
    let rows: Vec<Vec<i64>> = chosen.iter().chain(&rejected).cloned().collect();
    let padded_batch = TokenBatch::pad(&rows, 1, trl_models::Padding::Right, None).unwrap();
    for arch in ARCHS {
        let name = format!("{arch}-rm");
        let (model, _, _) =
            ForSequenceClassification::<AB>::from_pretrained(&fixture(&name), None, &Default::default()).unwrap();
        let run = |shared: bool| {
            let [c, r] = if shared {
                model.forward_pairs(&zipped(&chosen, &rejected)).unwrap().expect("the fixtures have a pad id")
            } else {
                let r = model.forward(&padded_batch, true).unwrap().rewards;
                [r.clone().narrow(0, 0, n), r.narrow(0, n, n)]
            };
            let (c, r) = (c.reshape([n]), r.reshape([n]));
            let f = |t: Tensor<AB, 1>| t.into_data().convert::<f32>().to_vec::<f32>().unwrap();
            let rewards = [f(c.clone()), f(r.clone())].concat();
            let loss = bradley_terry(c, r, None, Some(0.01));
            let value = f(loss.clone())[0];
            let grads = loss.backward();
            let mut v = Grads::<AB> { grads: &grads, out: Vec::new() };
            model.visit(&mut v);
            (rewards, value, v.out)
        };
        let ((rewards, loss, grads), (want_rewards, want_loss, want_grads)) = (run(true), run(false));
        let fwd = Tol::forward(&name);
        assert_close(&format!("{name} shared-prompt rewards"), &rewards, &want_rewards, fwd);
        assert_close(&format!("{name} shared-prompt loss"), &[loss], &[want_loss], fwd);
        let tol = Tol { rel: 2.0 * fwd.rel + Tol::chain(padded_batch.batch * padded_batch.seq).rel };
        assert_eq!(grads.len(), want_grads.len());
        for (i, ((shape, g), (_, w))) in grads.iter().zip(&want_grads).enumerate() {
            assert_close(&format!("{name} shared-prompt grad of parameter {i} {shape}"), g, w, tol);
        }
    }
}

/// Pairs with no prompt in common are not packed into one row each: attention over a row of
/// both sequences costs twice that of two rows, and nothing is saved.
#[test]
fn pairs_without_a_common_prompt_keep_the_padded_pass() {
    let seq = |seed: i64| -> Vec<i64> { (0..20).map(|i| 2 + (seed * 13 + i * 5) % 90).collect() };
    let (chosen, rejected): (Vec<_>, Vec<_>) = (0..4).map(|k| (seq(k), seq(k + 50))).unzip();
    assert!(chosen.iter().zip(&rejected).all(|(c, r)| c[0] != r[0]));
    let (model, _, _) = ForSequenceClassification::<B>::from_pretrained(&fixture("llama-rm"), None, &dev()).unwrap();
    assert!(model.forward_pairs(&zipped(&chosen, &rejected)).unwrap().is_none());
    // with a prompt of 12 tokens in common they are
    let rejected: Vec<Vec<i64>> = chosen.iter().zip(&rejected).map(|(c, r)| [&c[..12], &r[12..]].concat()).collect();
    assert!(model.forward_pairs(&zipped(&chosen, &rejected)).unwrap().is_some());
}

/// `(chosen, rejected)` pairs of the two sides' rows.
fn zipped<'a>(chosen: &'a [Vec<i64>], rejected: &'a [Vec<i64>]) -> Vec<(&'a [i64], &'a [i64])> {
    chosen.iter().zip(rejected).map(|(c, r)| (&c[..], &r[..])).collect()
}
