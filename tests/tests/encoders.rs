//! Encoder reward models (issue 17) against transformers: DeBERTa-v2 / v3 sequence classifiers
//! from `tests/fixtures/make_encoder_fixtures.py` (tokenizer, hidden states, logits).

use burn::tensor::DType;
use trl_core::{DtypeArg, Holding, Quantize, Tokenizer, WeightDtype};
use trl_heads::DebertaV2ForSequenceClassification;
use trl_models::{Padding, TokenBatch};
use trl_tests::*;

const MODELS: [&str; 2] = ["deberta_v2-rm", "deberta_v2-conv-rm"];

fn load(name: &str, holding: Holding) -> DebertaV2ForSequenceClassification<B> {
    let (model, _, restored) = DebertaV2ForSequenceClassification::<B>::from_pretrained_as(
        &fixture(name),
        holding,
        &trl_core::backend::device(),
    )
    .unwrap();
    assert!(restored, "{name}: the pooler and classifier come from the checkpoint");
    model
}

/// The inputs the generator scored: `texts` and `(prompt, response)` pairs.
fn inputs(name: &str) -> (Vec<String>, Vec<(String, String)>) {
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture(name).join("inputs.json")).unwrap()).unwrap();
    let texts = serde_json::from_value(v["texts"].clone()).unwrap();
    let pairs = serde_json::from_value(v["pairs"].clone()).unwrap();
    (texts, pairs)
}

/// Each row's ids where the mask is 1.
fn rows(ids: &[i64], mask: &[i64], seq: usize) -> Vec<Vec<i64>> {
    ids.chunks(seq)
        .zip(mask.chunks(seq))
        .map(|(r, m)| r.iter().zip(m).filter(|(_, &m)| m == 1).map(|(&t, _)| t).collect())
        .collect()
}

#[test]
fn deberta_tokenizer_encodes_texts_and_pairs_as_transformers() {
    for name in MODELS {
        let tok = Tokenizer::from_dir(&fixture(name)).unwrap();
        let exp = expected(name);
        let (texts, pairs) = inputs(name);
        for (kind, got) in [
            ("text", texts.iter().map(|t| tok.encode(t, true).unwrap()).collect::<Vec<_>>()),
            ("pair", pairs.iter().map(|(p, r)| tok.encode_pair(p, r, true).unwrap()).collect()),
        ] {
            let (ids, shape) = ints(&exp, &format!("{kind}.input_ids"));
            let (mask, _) = ints(&exp, &format!("{kind}.attention_mask"));
            assert_eq!(got, rows(&ids, &mask, shape[1]), "{name}: {kind} ids");
            let padded = TokenBatch::pad(&got, 0, Padding::Right, None).unwrap();
            assert_eq!((padded.input_ids, padded.attention_mask), (ids, mask), "{name}: {kind} padding");
        }
    }
}

#[test]
fn deberta_rewards_and_hidden_states_match_transformers() {
    for name in MODELS {
        let model = load(name, Holding::F32);
        let exp = expected(name);
        let tol = Tol::deberta(name);
        for kind in ["text", "pair"] {
            let batch = batch(&exp, kind);
            let hidden = to_vec(model.deberta.forward(&batch).unwrap());
            let (want, shape) = floats(&exp, &format!("{kind}.hidden"));
            let d = shape[2];
            let mask = batch.attention_mask.clone();
            assert_close_where(&format!("{name} {kind} hidden"), &hidden, &want, tol, |i| mask[i / d] == 1);
            let (want, _) = floats(&exp, &format!("{kind}.logits"));
            let got = to_vec(model.forward(&batch).unwrap());
            assert_close(&format!("{name} {kind} logits"), &got, &want, tol);
            // issue 17's bar: rewards within 1e-4 of transformers (measured: 3e-6)
            assert_within(&format!("{name} {kind} logits"), &got, &want, 1e-4, |_| true);
        }
        // each pair alone, unpadded, gives what transformers gives it alone
        let (want, _) = floats(&exp, "pair.single_logits");
        let labels = model.num_labels();
        let batch = batch(&exp, "pair");
        for (i, row) in rows(&batch.input_ids, &batch.attention_mask, batch.seq).into_iter().enumerate() {
            let one = TokenBatch::pad(&[row], 0, Padding::Right, None).unwrap();
            let got = to_vec(model.forward(&one).unwrap());
            assert_close(&format!("{name} pair {i} alone"), &got, &want[i * labels..(i + 1) * labels], tol);
        }
    }
}

/// `--dtype bf16` holds the encoder's matrices in bf16 (the head stays as loaded) and computes
/// in f32: rewards move by the weights' rounding only, within the half-precision chain bound of
/// `tests/tests/dtype.rs` (`(20 · layers + 3) · 2⁻⁹`, relative), and `--quantize int8` runs.
#[test]
fn deberta_holds_bf16_and_int8_weights() {
    let name = "deberta_v2-rm";
    let exp = expected(name);
    let batch = batch(&exp, "pair");
    let (want, _) = floats(&exp, "pair.logits");
    let bf16 = load(name, Holding { dtype: DtypeArg::Fixed(WeightDtype::Bf16), quantize: Quantize::None });
    assert_eq!(bf16.deberta.weight_dtype(), DType::BF16);
    let got = to_vec(bf16.forward(&batch).unwrap());
    assert_close(&format!("{name} bf16"), &got, &want, Tol { rel: (20.0 * 2.0 + 3.0) / 512.0 });
    assert!(got.iter().zip(&want).any(|(g, w)| g != w), "bf16 rounding changes the rewards");
    let int8 = load(name, Holding { dtype: DtypeArg::Fixed(WeightDtype::F32), quantize: Quantize::Int8 });
    let got = to_vec(int8.forward(&batch).unwrap());
    assert!(got.iter().all(|g| g.is_finite()) && got.len() == want.len());
}

#[test]
fn deberta_refuses_inputs_longer_than_its_positions() {
    let model = load("deberta_v2-rm", Holding::F32);
    let long = TokenBatch::pad(&[vec![5; model.max_positions() + 1]], 0, Padding::Right, None).unwrap();
    let err = model.forward(&long).unwrap_err().to_string();
    assert!(err.contains("129 tokens") && err.contains("128 positions"), "{err}");
}
