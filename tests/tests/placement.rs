//! Layer placement (issue 18, transformers' `device_map`): which device each parameter goes to,
//! and that a placed model computes what the unplaced one does. This machine has one CPU
//! device, so the map is checked by where it sends every parameter, and the placed forward
//! pass (activations, context and tables following the layers) runs over `[cpu, cpu]`.

use trl_heads::{CausalLmWithValueHead, ForSequenceClassification, Seq2SeqLmWithValueHead, ValueHeadOptions};
use trl_models::placement::{describe, place};
use trl_tests::*;

const ARCHS: &[&str] = &["gpt2", "llama", "qwen2", "gpt_neox", "phi3", "gemma2", "gemma3_text"];

fn dev() -> burn::tensor::Device<B> {
    trl_core::backend::device()
}

/// Embeddings on the first device, layer `i` on its run's, the final norm and the score head
/// on the last layer's, in contiguous runs.
#[test]
fn every_parameter_goes_where_the_map_says() {
    for arch in ARCHS {
        let name = format!("{arch}-rm");
        let (model, _, _) = ForSequenceClassification::<B>::from_pretrained(&fixture(&name), None, &dev()).unwrap();
        let layers = model.backbone.num_layers();
        assert_eq!(layers, 2, "{name}: the fixtures have two layers");
        let map = describe::<B, _>(&model, layers, 2);
        assert!(map.windows(2).all(|w| w[0].1 <= w[1].1), "{name}: runs are contiguous: {map:?}");
        for (path, d) in &map {
            let want = if path.contains(".0.") {
                0
            } else if path.contains(".1.")
                || path.starts_with("score.")
                || path.contains("norm")
                || path.contains("ln_f")
            {
                1
            } else {
                0
            };
            assert_eq!(*d, want, "{name}: {path}");
        }
        assert_eq!(map.first().map(|m| m.1), Some(0), "{name}: the embeddings");
        assert_eq!(map.last(), Some(&("score.weight".to_string(), 1)), "{name}: the head on the last layer's device");
        // more devices than layers: one layer each, the rest unused
        assert_eq!(describe::<B, _>(&model, layers, 5).iter().map(|m| m.1).max(), Some(1));
    }
}

#[test]
fn a_placed_model_scores_as_the_unplaced_one() {
    for arch in ARCHS {
        let name = format!("{arch}-rm");
        let (model, _, _) = ForSequenceClassification::<B>::from_pretrained(&fixture(&name), None, &dev()).unwrap();
        let exp = expected(&name);
        let b = batch(&exp, "right");
        let before = to_vec(model.forward(&b, false).unwrap().rewards);
        let layers = model.backbone.num_layers();
        let placed = place(model, layers, &[dev(), dev()]).unwrap();
        let after = to_vec(placed.forward(&b, false).unwrap().rewards);
        assert_eq!(before, after, "{name}");
        let (want, _) = floats(&exp, "right.rewards");
        assert_close(&format!("{name} placed rewards"), &after, &want, Tol::forward(&name));
    }
    // the tied LM head (GPT-2's) reads the hidden state on the embedding's device
    let (model, _, _) =
        CausalLmWithValueHead::<B>::from_pretrained(&fixture("gpt2-vhead"), &ValueHeadOptions::default(), &dev())
            .unwrap();
    let b = batch(&expected("gpt2-vhead"), "left");
    let before = model.forward(&b, None).unwrap();
    let layers = model.pretrained_model.num_layers();
    let placed = place(model, layers, &[dev(), dev()]).unwrap();
    let after = placed.forward(&b, None).unwrap();
    assert_eq!(to_vec(before.logits), to_vec(after.logits));
    assert_eq!(to_vec(before.values), to_vec(after.values));
}

/// A map over no device, a wrong layer count, and an encoder-decoder (two layer lists) are
/// errors that say so.
#[test]
fn maps_that_cannot_hold_are_errors() {
    let (model, _, _) = ForSequenceClassification::<B>::from_pretrained(&fixture("llama-rm"), None, &dev()).unwrap();
    let err = place(model.clone(), 2, &[]).map(|_| ()).unwrap_err().to_string();
    assert!(err.contains("at least one device"), "{err}");
    let err = place(model, 3, &[dev()]).map(|_| ()).unwrap_err().to_string();
    assert!(err.contains("2 layers in its first list, not 3"), "{err}");
    let (t5, _, _) =
        Seq2SeqLmWithValueHead::<B>::from_pretrained(&fixture("t5"), &ValueHeadOptions::default(), &dev()).unwrap();
    let err = place(t5, 2, &[dev(), dev()]).map(|_| ()).unwrap_err().to_string();
    assert!(err.contains("encoder-decoder"), "{err}");
}
