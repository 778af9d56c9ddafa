//! Backbone parity with transformers on the tiny fixtures (issue 3).

use trl_models::AnyCausalLm;
use trl_tests::*;

fn load(name: &str) -> AnyCausalLm<B> {
    AnyCausalLm::<B>::from_pretrained(&fixture(name), &trl_core::backend::device()).expect("load").0
}

/// Logits of every case match transformers at real-token positions, within [`Tol::forward`].
#[test]
fn logits_match_transformers() {
    for name in DECODERS {
        let model = load(name);
        let exp = expected(name);
        for case in ["single", "right", "left"] {
            let b = batch(&exp, case);
            let out = model.forward(&b, true).unwrap();
            let (want, shape) = floats(&exp, &format!("{case}.logits"));
            let v = shape[2];
            let got = to_vec(out.logits.unwrap());
            assert_close_where(&format!("{name} {case} logits"), &got, &want, Tol::forward(name), |i| {
                b.attention_mask[i / v] != 0
            });
        }
        let b = batch(&exp, "single");
        let (want, _) = floats(&exp, "single.hidden_last");
        assert_close(
            &format!("{name} last hidden"),
            &to_vec(model.forward(&b, false).unwrap().hidden),
            &want,
            Tol::forward(name),
        );
    }
}

/// `hidden_states` (embeddings, every layer, final norm) equal transformers'.
#[test]
fn all_hidden_states_match_transformers() {
    for name in DECODERS {
        let model = load(name);
        let exp = expected(name);
        let all = model.hidden_states(&batch(&exp, "single")).unwrap();
        let (want, shape) = floats(&exp, "single.hidden_states");
        assert_eq!(all.len(), shape[0], "{name}: number of hidden states");
        let got: Vec<f32> = all.into_iter().flat_map(to_vec).collect();
        assert_close(&format!("{name} hidden states"), &got, &want, Tol::forward(name));
    }
}

/// Causal LM loss with -100 labels equals transformers' (the logits' bound through a
/// log-softmax over the vocabulary and a mean over the tokens).
#[test]
fn lm_loss_matches_transformers() {
    for name in DECODERS {
        let model = load(name);
        let exp = expected(name);
        let b = batch(&exp, "right");
        let (labels, _) = ints(&exp, "loss.labels");
        let logits = model.forward(&b, true).unwrap().logits.unwrap();
        let loss = to_vec(trl_models::loss::lm_loss(logits, &labels));
        let (want, _) = floats(&exp, "loss.value");
        let tol = Tol::log_softmax(Tol::forward(name), model.vocab_size(), labels.len());
        assert_close(&format!("{name} loss"), &loss, &want, tol);
    }
}

/// Decoding token by token on a KV cache gives the full forward's logits: the same sums in
/// other blockings, so within [`Tol::forward`].
#[test]
fn cached_decoding_equals_full_forward() {
    // LongRoPE picks its frequencies per forward pass from the largest position in it (as
    // transformers does), so phi3-long's first decoding steps, below its original context of 4
    // positions, use other frequencies than the full pass: not comparable by design.
    for name in DECODERS.iter().filter(|n| **n != "phi3-long") {
        let model = load(name);
        let exp = expected(name);
        let b = batch(&exp, "left");
        let full = to_vec(model.forward(&b, true).unwrap().logits.unwrap());
        let (bs, t) = (b.batch, b.seq);
        let v = model.vocab_size();
        let mut cache = model.new_cache(bs);
        // A prefix of 3 tokens, then one token at a time.
        let mut got = vec![0f32; bs * t * v];
        let mut start = 0;
        for len in std::iter::once(3).chain(std::iter::repeat_n(1, t - 3)) {
            let take =
                |x: &[i64]| (0..bs).flat_map(|r| x[r * t + start..r * t + start + len].to_vec()).collect::<Vec<_>>();
            let h = model.forward_cached(&take(&b.input_ids), &take(&b.attention_mask), len, &mut cache).unwrap();
            let step = to_vec(model.logits(h));
            for r in 0..bs {
                for i in 0..len {
                    let dst = (r * t + start + i) * v;
                    got[dst..dst + v].copy_from_slice(&step[(r * len + i) * v..(r * len + i + 1) * v]);
                }
            }
            start += len;
        }
        assert_close_where(&format!("{name} cached"), &got, &full, Tol::forward(name), |i| {
            b.attention_mask[i / v] != 0
        });
    }
}
