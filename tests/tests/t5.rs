//! T5 and TRL's seq2seq value head (issue 17) against transformers and TRL 0.28: encoder and
//! decoder states, logits, values and greedy generation of `tests/fixtures/make_t5_fixtures.py`
//! (v1.0 tied and scaled, v1.1 untied and gated), with sources and decoder inputs padded on
//! either side; the tokenizer; and TRL's checkpoint layout.

use trl_core::{checkpoint::DEFAULT_MAX_SHARD_SIZE, Tokenizer};
use trl_gen::{generate, NextTokenLogits, SamplingConfig};
use trl_heads::{Seq2SeqLmWithValueHead, VHeadSource, ValueHeadOptions};
use trl_models::TokenBatch;
use trl_tests::*;

const MODELS: [&str; 2] = ["t5", "t5_v1_1"];
const SIDES: [&str; 2] = ["right", "left"];

fn dev() -> burn::tensor::Device<B> {
    trl_core::backend::device()
}

fn load(name: &str) -> Seq2SeqLmWithValueHead<B> {
    let (model, _, source) =
        Seq2SeqLmWithValueHead::<B>::from_pretrained(&fixture(name), &ValueHeadOptions::default(), &dev()).unwrap();
    assert_eq!(source, VHeadSource::Restored, "{name}: TRL saved the value head with the model");
    model.no_dropout()
}

trait NoDropout {
    fn no_dropout(self) -> Self;
}

impl NoDropout for Seq2SeqLmWithValueHead<B> {
    /// Evaluation mode: TRL's fixtures were computed under `.eval()`.
    fn no_dropout(mut self) -> Self {
        self.v_head.dropout = None;
        self
    }
}

/// The `{side}.decoder_input_ids` / `.decoder_attention_mask` batch.
fn decoder_batch(exp: &trl_core::StateDict, side: &str) -> TokenBatch {
    let (ids, shape) = ints(exp, &format!("{side}.decoder_input_ids"));
    let (mask, _) = ints(exp, &format!("{side}.decoder_attention_mask"));
    batch_of(ids, mask, &shape)
}

#[test]
fn t5_tokenizer_appends_eos_as_transformers() {
    let tok = Tokenizer::from_dir(&fixture("t5")).unwrap();
    let inputs: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture("t5").join("inputs.json")).unwrap()).unwrap();
    let sources: Vec<String> = serde_json::from_value(inputs["sources"].clone()).unwrap();
    let rows: Vec<Vec<i64>> = sources.iter().map(|s| tok.encode(s, true).unwrap()).collect();
    let want = batch(&expected("t5"), "right");
    let got = TokenBatch::pad(&rows, 0, trl_models::Padding::Right, None).unwrap();
    assert_eq!((got.input_ids, got.attention_mask), (want.input_ids, want.attention_mask));
    assert!(rows.iter().all(|r| r.last() == Some(&1)), "each source ends with </s>");
}

/// Issue 17's bar for T5 logits and values against transformers / TRL (measured: 2.4e-6).
const ACCEPTANCE: f32 = 1e-4;

#[test]
fn t5_states_logits_and_values_match_transformers_and_trl() {
    for name in MODELS {
        let model = load(name);
        let exp = expected(name);
        let tol = Tol::t5(name);
        for side in SIDES {
            let (src, dec) = (batch(&exp, side), decoder_batch(&exp, side));
            let what = |k: &str| format!("{name} {side} {k}");
            let m = &model.pretrained_model;
            let d = m.hidden_size();
            let encoded = m.encode(&src).unwrap();
            let (want, _) = floats(&exp, &format!("{side}.encoder_hidden"));
            let smask = src.attention_mask.clone();
            assert_close_where(&what("encoder"), &to_vec(encoded.clone()), &want, tol, |i| smask[i / d] == 1);
            let hidden =
                m.decode(dec.ids_tensor(&dev()), &dec.attention_mask, &encoded, &src.attention_mask, None).unwrap();
            let (want, _) = floats(&exp, &format!("{side}.decoder_hidden"));
            let dmask = dec.attention_mask.clone();
            assert_close_where(&what("decoder"), &to_vec(hidden), &want, tol, |i| dmask[i / d] == 1);
            let out = model.forward(&src, &dec).unwrap();
            let v = m.vocab_size();
            let (want, _) = floats(&exp, &format!("{side}.logits"));
            let logits = to_vec(out.logits);
            assert_close_where(&what("logits"), &logits, &want, tol, |i| dmask[i / v] == 1);
            assert_within(&what("logits"), &logits, &want, ACCEPTANCE, |i| dmask[i / v] == 1);
            let (want, _) = floats(&exp, &format!("{side}.values"));
            let values = to_vec(out.values);
            assert_close_where(&what("values"), &values, &want, tol, |i| dmask[i] == 1);
            assert_within(&what("values"), &values, &want, ACCEPTANCE, |i| dmask[i] == 1);
        }
    }
}

/// `--dtype bf16`: the backbone's matrices held in bfloat16 (rounded to nearest even, as torch
/// rounds) and widened as each layer runs; transformers ran the same rounded weights in f32, so
/// the f32 bound holds. The value head stays f32.
#[test]
fn t5_bf16_weights_match_transformers_on_the_rounded_weights() {
    use trl_core::{DtypeArg, Holding, Quantize, WeightDtype};
    let holding = Holding { dtype: DtypeArg::Fixed(WeightDtype::Bf16), quantize: Quantize::None };
    for name in MODELS {
        let opts = ValueHeadOptions { holding, ..Default::default() };
        let (model, _, _) = Seq2SeqLmWithValueHead::<B>::from_pretrained(&fixture(name), &opts, &dev()).unwrap();
        let model = model.no_dropout();
        assert_eq!(model.pretrained_model.weight_dtype(), burn::tensor::DType::BF16);
        let exp = expected(name);
        for side in SIDES {
            let (src, dec) = (batch(&exp, side), decoder_batch(&exp, side));
            let out = model.forward(&src, &dec).unwrap();
            let v = model.pretrained_model.vocab_size();
            let mask = dec.attention_mask.clone();
            let (want, _) = floats(&exp, &format!("{side}.bf16.logits"));
            let tol = Tol::t5(name);
            assert_close_where(&format!("{name} {side} bf16 logits"), &to_vec(out.logits), &want, tol, |i| {
                mask[i / v] == 1
            });
            let (want, _) = floats(&exp, &format!("{side}.bf16.values"));
            assert_close_where(&format!("{name} {side} bf16 values"), &to_vec(out.values), &want, tol, |i| {
                mask[i] == 1
            });
        }
    }
}

/// A PEFT LoRA adapter on the T5 base (TRL's PEFT layout: the adapter, and the value head alone
/// in `pytorch_model.bin`), merged at load: logits and values as TRL computes them with PEFT.
#[test]
fn t5_peft_adapter_matches_trl() {
    let name = "lora-t5_v1_1";
    let model = load(name);
    let exp = expected(name);
    let tol = Tol::t5(name);
    let plain = expected("t5_v1_1");
    for side in SIDES {
        let (src, dec) = (batch(&exp, side), decoder_batch(&exp, side));
        let out = model.forward(&src, &dec).unwrap();
        let v = model.pretrained_model.vocab_size();
        let mask = dec.attention_mask.clone();
        let (want, _) = floats(&exp, &format!("{side}.logits"));
        assert_close_where(&format!("{name} {side} logits"), &to_vec(out.logits), &want, tol, |i| mask[i / v] == 1);
        let (want, _) = floats(&exp, &format!("{side}.values"));
        assert_close_where(&format!("{name} {side} values"), &to_vec(out.values), &want, tol, |i| mask[i] == 1);
        // the adapter changes the model
        let (base, _) = floats(&plain, &format!("{side}.logits"));
        let (adapted, _) = floats(&exp, &format!("{side}.logits"));
        assert!(base.iter().zip(&adapted).any(|(a, b)| (a - b).abs() > 1e-2));
    }
    // saved again in TRL's PEFT layout, it loads back to the same model
    let tmp = tempfile::tempdir().unwrap();
    model.save_adapter(tmp.path()).unwrap();
    for f in ["adapter_config.json", "adapter_model.safetensors", "model.safetensors"] {
        assert!(tmp.path().join(f).is_file(), "{f}");
    }
    let (back, _, source) = Seq2SeqLmWithValueHead::<B>::from_adapter(
        tmp.path(),
        Some(&fixture("t5_v1_1")),
        &ValueHeadOptions::default(),
        &dev(),
    )
    .unwrap();
    assert_eq!(source, VHeadSource::Restored);
    assert_eq!(back.no_dropout().state_dict(), model.state_dict());
    if let Ok(root) = std::env::var("TRL_RS_EXPORT") {
        model.save_adapter(&std::path::Path::new(&root).join(name)).unwrap();
    }
    let plain = load("t5_v1_1");
    let e = plain.save_adapter(tmp.path()).unwrap_err().to_string();
    assert!(e.contains("save_pretrained"), "{e}");
}

/// Greedy decoding on the KV cache: every step's logits as transformers' `generate` computed
/// them (fed the same tokens), and the same tokens from [`generate`], with `</s>` ending a row
/// and `<pad>` filling it after.
#[test]
fn t5_greedy_generation_matches_transformers() {
    for name in MODELS {
        let model = load(name);
        let exp = expected(name);
        let tol = Tol::t5(name);
        for side in SIDES {
            let src = batch(&exp, side);
            let (greedy, shape) = ints(&exp, &format!("{side}.greedy"));
            let (want_logits, _) = floats(&exp, &format!("{side}.greedy_logits"));
            let (rows, steps) = (shape[0], shape[1] - 1);
            assert!(greedy.chunks(shape[1]).all(|r| r[0] == model.pretrained_model.decoder_start_token_id()));
            let v = model.vocab_size();
            let (mut state, first) = model.prefill(&src).unwrap();
            let mut got = vec![to_vec(first)];
            for s in 1..steps {
                let fed: Vec<i64> = (0..rows).map(|r| greedy[r * shape[1] + s]).collect();
                got.push(to_vec(model.step(&mut state, &fed).unwrap()));
            }
            // [step][row, vocab] → [row, step, vocab], as transformers stacks them
            let got: Vec<f32> =
                (0..rows).flat_map(|r| got.iter().flat_map(move |g| g[r * v..(r + 1) * v].to_vec())).collect();
            assert_close(&format!("{name} {side} greedy step logits"), &got, &want_logits, tol);

            let sources: Vec<Vec<i64>> = src
                .input_ids
                .chunks(src.seq)
                .zip(src.attention_mask.chunks(src.seq))
                .map(|(r, m)| r.iter().zip(m).filter(|(_, &m)| m == 1).map(|(&t, _)| t).collect())
                .collect();
            let cfg =
                SamplingConfig { eos_token_id: Some(vec![1]), pad_token_id: Some(0), ..SamplingConfig::greedy(steps) };
            let gens = generate(&model, &sources, &cfg).unwrap();
            for (r, g) in gens.iter().enumerate() {
                assert_eq!(g.padded(steps, 0), greedy[r * shape[1] + 1..(r + 1) * shape[1]], "{name} {side} row {r}");
            }
        }
    }
}

/// Our save is TRL's layout (backbone keys, `v_head.*`, one file or shards) and loads back
/// bit-exact; `TRL_RS_EXPORT=DIR` keeps the saves for the Python check in docs/checkpoints.md.
#[test]
fn t5_value_head_checkpoint_round_trips() {
    for name in MODELS {
        let (model, cfg, _) =
            Seq2SeqLmWithValueHead::<B>::from_pretrained(&fixture(name), &ValueHeadOptions::default(), &dev()).unwrap();
        let sd = model.state_dict();
        assert!(sd.keys().any(|k| k == "v_head.summary.weight") && sd.keys().any(|k| k == "v_head.summary.bias"));
        assert_eq!(
            sd.keys().any(|k| k == "lm_head.weight"),
            name == "t5_v1_1",
            "{name}: lm_head saved only when untied"
        );
        for shard in [DEFAULT_MAX_SHARD_SIZE, 10_000] {
            let tmp = tempfile::tempdir().unwrap();
            model.save_pretrained(&cfg, tmp.path(), shard).unwrap();
            if shard == 10_000 {
                assert!(tmp.path().join("model.safetensors.index.json").is_file(), "{name}: sharded save");
            }
            let (back, _, source) =
                Seq2SeqLmWithValueHead::<B>::from_pretrained(tmp.path(), &ValueHeadOptions::default(), &dev()).unwrap();
            assert_eq!(source, VHeadSource::Restored);
            assert_eq!(back.state_dict(), sd, "{name} shard {shard}");
            if let Ok(root) = std::env::var("TRL_RS_EXPORT") {
                let dir = std::path::Path::new(&root).join(format!("{name}-vhead-{shard}"));
                model.save_pretrained(&cfg, &dir, shard).unwrap();
            }
        }
    }
}

#[test]
fn t5_rejects_mismatched_batches_and_long_sources() {
    let model = load("t5");
    let exp = expected("t5");
    let src = batch(&exp, "right");
    let one = TokenBatch::pad(&[vec![0, 5]], 0, trl_models::Padding::Right, None).unwrap();
    let e = model.forward(&src, &one).unwrap_err().to_string();
    assert!(e.contains("3 source rows but 1 decoder rows"), "{e}");
    let long = TokenBatch::pad(&[vec![5; 65]], 0, trl_models::Padding::Right, None).unwrap();
    let e = model.forward(&long, &one).unwrap_err().to_string();
    assert!(e.contains("65"), "{e}");
}
