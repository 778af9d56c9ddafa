//! Half-precision weights (`--dtype`, issue 12) against transformers: fixtures from
//! `tests/fixtures/make_dtype_fixtures.py`.
//!
//! trl-rs holds the weight matrices in bf16/f16 and computes in f32, so its outputs equal
//! transformers running the same half-precision weights upcast to f32 within the usual f32
//! bound ([`Tol::forward`]), and equal transformers running in bf16/f16 within [`half_tol`].

use burn::tensor::DType;
use trl_core::{DtypeArg, Holding, Quantize, WeightDtype};
use trl_heads::ForSequenceClassification;
use trl_models::AnyCausalLm;
use trl_tests::*;

fn dev() -> burn::tensor::Device<B> {
    trl_core::backend::device()
}

/// transformers in half precision against an f32 computation of the same weights.
///
/// Every op of a half-precision forward pass rounds its output to the half dtype (unit
/// roundoff `u_h`: 2⁻⁹ for bf16, 2⁻¹¹ for f16); its reductions accumulate in f32 inside the
/// kernel and round once. Along the chain from the embedding to the output of one
/// decoder layer there are at most 20 such roundings: the input norm (normalise, scale: 2),
/// the query projection and RoPE (3), the attention scores and their scaling (2), softmax (1),
/// the weighted values and output projection (2), the residual add (1), the second norm (2),
/// gate, activation, up, product and down projections (5), the residual add (1), with one
/// spare. Then the final norm (2) and the head (1). To first order the relative errors add, so
/// `|half − f32| ≤ (20·layers + 3) · u_h · max(1, |want|)`; our own f32 error is smaller by
/// 2¹⁵ and left out.
fn half_tol(name: &str, unit_roundoff: f32) -> Tol {
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture(name).join("config.json")).unwrap()).unwrap();
    let layers = cfg["num_hidden_layers"].as_u64().expect("num_hidden_layers") as f32;
    Tol { rel: (20.0 * layers + 3.0) * unit_roundoff }
}

const BF16_U: f32 = 1.0 / 512.0;
const F16_U: f32 = 1.0 / 2048.0;

fn reward_model(name: &str, dtype: DtypeArg) -> ForSequenceClassification<B> {
    let (model, _, restored) = ForSequenceClassification::<B>::from_pretrained_as(
        &fixture(name),
        None,
        Holding { dtype, quantize: Quantize::None },
        &dev(),
    )
    .unwrap();
    assert!(restored, "{name}: score must come from the checkpoint");
    model
}

#[test]
fn half_precision_reward_models_match_transformers() {
    for (name, held, u) in [("llama-rm-bf16", DType::BF16, BF16_U), ("qwen2-rm-f16", DType::F16, F16_U)] {
        // `auto` holds the checkpoint's dtype
        let model = reward_model(name, DtypeArg::Auto);
        assert_eq!(model.backbone.weight_dtype(), held, "{name}: weight matrices are held as stored");
        let wide = reward_model(name, DtypeArg::Fixed(WeightDtype::F32));
        assert_eq!(wide.backbone.weight_dtype(), DType::F32);
        let exp = expected(name);
        for case in ["right", "left"] {
            let b = batch(&exp, case);
            let (want, _) = floats(&exp, &format!("{case}.rewards"));
            let (native, _) = floats(&exp, &format!("{case}.half.rewards"));
            for padded in [true, false] {
                let got = to_vec(model.forward(&b, padded).unwrap().rewards);
                let what = format!("{name} {case} (padded: {padded})");
                assert_close(&format!("{what} vs f32 compute"), &got, &want, Tol::forward(name));
                assert_close(&format!("{what} vs half compute"), &got, &native, half_tol(name, u));
                // widening a half value to f32 is exact: holding the weights in half precision
                // changes nothing but memory
                let f32_held = to_vec(wide.forward(&b, padded).unwrap().rewards);
                assert_eq!(got, f32_held, "{what}: half-held and f32-held weights must give the same rewards");
            }
        }
    }
}

/// Mixed precision (`bf16` / `fp16` training, [`trl_models::autocast`]): the projections
/// multiply in the half dtype. The half checkpoint's weights held in f32 and held as stored give
/// the same rewards under autocast, bit for bit (rounding a weight for the product is exact when
/// it is already a half value, so the backward pass can keep the held weight); autocast changes
/// the f32 result, and stays within [`half_tol`] of transformers running in half precision,
/// from the half checkpoint and from the f32 one it was rounded from.
#[test]
fn autocast_multiplies_the_projections_in_half_precision() {
    use trl_models::autocast;
    for (name, f32_name, dtype, u) in
        [("llama-rm-bf16", "llama-rm", DType::BF16, BF16_U), ("qwen2-rm-f16", "qwen2-rm", DType::F16, F16_U)]
    {
        let held = reward_model(name, DtypeArg::Auto);
        assert_eq!(held.backbone.weight_dtype(), dtype);
        let wide = reward_model(name, DtypeArg::Fixed(WeightDtype::F32));
        let unrounded = reward_model(f32_name, DtypeArg::Fixed(WeightDtype::F32));
        let exp = expected(name);
        for case in ["right", "left"] {
            let b = batch(&exp, case);
            let rewards = |m: &ForSequenceClassification<B>| to_vec(m.forward(&b, true).unwrap().rewards);
            let plain = rewards(&wide);
            let mixed = autocast::scope(Some(dtype), || rewards(&wide));
            assert_eq!(mixed, autocast::scope(Some(dtype), || rewards(&held)), "{name} {case}");
            assert_ne!(mixed, plain, "{name} {case}: autocast changed nothing");
            assert_eq!(rewards(&wide), plain, "{name} {case}: the scope must end with the closure");
            let (native, _) = floats(&exp, &format!("{case}.half.rewards"));
            assert_close(&format!("{name} {case} autocast vs half compute"), &mixed, &native, half_tol(name, u));
            let from_f32 = autocast::scope(Some(dtype), || rewards(&unrounded));
            assert_close(&format!("{f32_name} {case} autocast vs half compute"), &from_f32, &native, half_tol(name, u));
        }
    }
}

/// An f32 checkpoint held in bf16 has its weight matrices rounded as PyTorch's
/// `.to(torch.bfloat16)` rounds them (to nearest, ties to even: `llama-rm-bf16` is `llama-rm`
/// so converted), and keeps its norms and score head in f32.
#[test]
fn an_f32_checkpoint_held_in_bf16_rounds_as_pytorch() {
    let rounded = reward_model("llama-rm", DtypeArg::Fixed(WeightDtype::Bf16)).state_dict();
    let f32_held = reward_model("llama-rm", DtypeArg::Fixed(WeightDtype::F32)).state_dict();
    let torch_bf16 = reward_model("llama-rm-bf16", DtypeArg::Auto).state_dict();
    let mut matrices = 0;
    for (key, t) in &rounded.tensors {
        let values = |sd: &trl_core::StateDict| sd.get(key).unwrap().to_vec::<f32>().unwrap();
        let want = if t.shape.len() >= 2 && !key.starts_with("score.") {
            matrices += 1;
            values(&torch_bf16)
        } else {
            values(&f32_held)
        };
        assert_eq!(t.to_vec::<f32>().unwrap(), want, "{key}");
    }
    assert_eq!(matrices, 1 + 2 * 7, "the embedding and 7 projections per layer");
}

#[test]
fn bf16_causal_lm_logits_match_transformers() {
    let name = "llama-bf16";
    let (model, _) = AnyCausalLm::<B>::from_pretrained_as(&fixture(name), Holding::default(), &dev()).unwrap();
    assert_eq!(model.weight_dtype(), DType::BF16);
    let exp = expected(name);
    for case in ["right", "left"] {
        let b = batch(&exp, case);
        let got = to_vec(model.forward(&b, true).unwrap().logits.unwrap());
        let vocab = got.len() / b.input_ids.len();
        let real = |i: usize| b.attention_mask[i / vocab] != 0;
        let (want, _) = floats(&exp, &format!("{case}.logits"));
        assert_close_where(&format!("{name} {case} vs f32 compute"), &got, &want, Tol::forward(name), real);
        let (native, _) = floats(&exp, &format!("{case}.half.logits"));
        assert_close_where(&format!("{name} {case} vs bf16 compute"), &got, &native, half_tol(name, BF16_U), real);
    }
}

/// `--quantize int8`: rewards equal transformers running the q8 round trip of every
/// projection weight (fixtures `<name>-int8`, the quantization redone in NumPy) within f32's
/// bound, and stay within [`int8_tol`] of the f32 model.
#[test]
fn int8_rewards_match_the_q8_round_trip_and_stay_near_f32() {
    for (name, projections) in [("llama-rm", 14), ("gpt2-rm", 8)] {
        let holding = Holding { dtype: DtypeArg::Fixed(WeightDtype::F32), quantize: Quantize::Int8 };
        let (model, _, _) =
            ForSequenceClassification::<B>::from_pretrained_as(&fixture(name), None, holding, &dev()).unwrap();
        assert_eq!(model.backbone.quantized(), projections, "{name}: every projection, not the score head");
        let int8 = expected(&format!("{name}-int8"));
        let f32_exp = expected(name);
        for case in ["right", "left"] {
            let b = batch(&int8, case);
            let got = to_vec(model.forward(&b, false).unwrap().rewards);
            let (want, _) = floats(&int8, &format!("{case}.rewards"));
            assert_close(&format!("{name} int8 {case} vs the q8 round trip"), &got, &want, Tol::forward(name));
            let (f32_rewards, _) = floats(&f32_exp, &format!("{case}.rewards"));
            let dev = got.iter().zip(&f32_rewards).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            eprintln!("{name} {case}: max |int8 − f32| reward = {dev}");
            assert_close(&format!("{name} int8 {case} vs f32"), &got, &f32_rewards, int8_tol(projections));
        }
    }
}

/// Int8 weights against f32 ones. A weight in a block of scale `s = max|w|/127` moves by at
/// most `s/2`; for the fixtures' near-Gaussian weights `max|w|` over a block of 64–128 is about
/// 4 standard deviations at most, so each weight moves by up to `4σ/254`, uniformly spread, and
/// a projection's output (a sum of n such errors of random sign, against an output of scale
/// `σ√n`) by a relative `4/(254·√3) < 0.01`. To first order these add over the `projections`
/// on the way to the reward (every one counted, though they do not all align).
fn int8_tol(projections: usize) -> Tol {
    Tol { rel: 0.01 * projections as f32 }
}

/// A value f16 cannot hold is refused, naming the tensor and the way out; never an infinity.
#[test]
fn a_value_past_f16s_range_is_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = copy_fixture("llama-rm", tmp.path());
    let mut sd = trl_core::checkpoint::load_dir(&dir).unwrap();
    let key = "model.layers.0.mlp.up_proj.weight";
    let t = sd.get(key).unwrap().clone();
    let mut values = t.to_vec::<f32>().unwrap();
    values[5] = 1.0e5;
    sd.insert(key, burn::tensor::TensorData::new(values, t.shape.clone()));
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    trl_core::checkpoint::save_weights(&sd, &dir, trl_core::checkpoint::DEFAULT_MAX_SHARD_SIZE).unwrap();
    let holding = Holding { dtype: DtypeArg::Fixed(WeightDtype::F16), quantize: Quantize::None };
    let err = ForSequenceClassification::<B>::from_pretrained_as(&dir, None, holding, &dev()).err().unwrap();
    let msg = err.to_string();
    assert!(msg.contains(key) && msg.contains("out-of-f16-range") && msg.contains("--dtype bf16"), "{msg}");
    // bf16 holds it
    let holding = Holding { dtype: DtypeArg::Fixed(WeightDtype::Bf16), quantize: Quantize::None };
    assert!(ForSequenceClassification::<B>::from_pretrained_as(&dir, None, holding, &dev()).is_ok());
}
