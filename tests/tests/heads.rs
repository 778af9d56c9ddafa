//! Value-head and reward-model parity with TRL 0.28 / transformers, plus load/save (issue 4).

use trl_core::checkpoint::DEFAULT_MAX_SHARD_SIZE;
use trl_heads::{CausalLmWithValueHead, ForSequenceClassification, VHeadSource, ValueHeadOptions};
use trl_tests::*;

const ARCHS: &[&str] = &["gpt2", "llama", "qwen2", "gpt_neox", "phi3", "gemma2", "gemma3_text"];

fn dev() -> burn::tensor::Device<B> {
    trl_core::backend::device()
}

#[test]
fn values_match_trl_both_paddings() {
    for arch in ARCHS {
        let name = format!("{arch}-vhead");
        let (model, _, source) =
            CausalLmWithValueHead::<B>::from_pretrained(&fixture(&name), &ValueHeadOptions::default(), &dev()).unwrap();
        assert_eq!(source, VHeadSource::Restored, "{name}: v_head must come from the checkpoint");
        let exp = expected(&name);
        for case in ["right", "left"] {
            let b = batch(&exp, case);
            let out = model.forward(&b, None).unwrap();
            let (want, _) = floats(&exp, &format!("{case}.values"));
            assert_close_where(
                &format!("{name} {case} values"),
                &to_vec(out.values),
                &want,
                Tol::forward(&name),
                |i| b.attention_mask[i] != 0,
            );
        }
        let b = batch(&exp, "right");
        let (want, shape) = floats(&exp, "right.logits");
        let got = to_vec(model.forward(&b, None).unwrap().logits);
        assert_close_where(&format!("{name} logits"), &got, &want, Tol::forward(&name), |i| {
            b.attention_mask[i / shape[2]] != 0
        });
    }
}

#[test]
fn rewards_match_transformers_both_paddings() {
    for arch in ARCHS {
        let name = format!("{arch}-rm");
        let (model, cfg, restored) =
            ForSequenceClassification::<B>::from_pretrained(&fixture(&name), None, &dev()).unwrap();
        assert!(restored, "{name}: score must come from the checkpoint");
        assert_eq!(trl_heads::seq_cls::num_labels(&cfg), 1);
        let exp = expected(&name);
        for case in ["right", "left"] {
            let b = batch(&exp, case);
            let out = model.forward(&b, true).unwrap();
            let (want, _) = floats(&exp, &format!("{case}.rewards"));
            assert_close(&format!("{name} {case} rewards"), &to_vec(out.rewards), &want, Tol::forward(&name));
            let (want, _) = floats(&exp, &format!("{case}.scores"));
            assert_close_where(
                &format!("{name} {case} scores"),
                &to_vec(out.scores.unwrap()),
                &want,
                Tol::forward(&name),
                |i| b.attention_mask[i] != 0,
            );
        }
    }
}

/// TRL crashes on a local sharded value-head checkpoint (issue #1917); we load it.
#[test]
fn sharded_value_head_checkpoint_loads() {
    let dir = fixture("gpt2-vhead-sharded");
    assert!(dir.join("model.safetensors.index.json").is_file());
    let (sharded, _, source) =
        CausalLmWithValueHead::<B>::from_pretrained(&dir, &ValueHeadOptions::default(), &dev()).unwrap();
    assert_eq!(source, VHeadSource::Restored);
    let (single, _, _) =
        CausalLmWithValueHead::<B>::from_pretrained(&fixture("gpt2-vhead"), &ValueHeadOptions::default(), &dev())
            .unwrap();
    assert_eq!(sharded.state_dict(), single.state_dict());
}

/// A plain LM checkpoint gets a fresh head and says so.
#[test]
fn plain_checkpoint_gets_fresh_head() {
    let (model, _, source) =
        CausalLmWithValueHead::<B>::from_pretrained(&fixture("gpt2"), &ValueHeadOptions::default(), &dev()).unwrap();
    assert_eq!(source, VHeadSource::Fresh);
    let sd = model.state_dict();
    assert_eq!(sd.get("v_head.summary.weight").unwrap().shape.to_vec(), vec![1, 64]);
    assert_eq!(sd.get("v_head.summary.bias").unwrap().shape.to_vec(), vec![1]);
}

/// Malformed head keys are an error naming the key, never a random head.
#[test]
fn malformed_head_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let src = fixture("gpt2-vhead");
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(src.join(f), tmp.path().join(f)).unwrap();
    }
    let mut sd = trl_core::checkpoint::load_dir(&src).unwrap();
    sd.insert("v_head.summary.weight", burn::tensor::TensorData::new(vec![0f32; 32], [1, 32]));
    trl_core::checkpoint::save_weights(&sd, tmp.path(), DEFAULT_MAX_SHARD_SIZE).unwrap();
    let err =
        CausalLmWithValueHead::<B>::from_pretrained(tmp.path(), &ValueHeadOptions::default(), &dev()).unwrap_err();
    assert!(err.to_string().contains("v_head.summary.weight"), "{err}");
    sd.remove("v_head.summary.weight");
    trl_core::checkpoint::save_weights(&sd, tmp.path(), DEFAULT_MAX_SHARD_SIZE).unwrap();
    let err =
        CausalLmWithValueHead::<B>::from_pretrained(tmp.path(), &ValueHeadOptions::default(), &dev()).unwrap_err();
    assert!(err.to_string().contains("v_head.summary.weight"), "{err}");
}

/// Where to also keep what [`save_and_reload_round_trip`] saves, for the Python load check in
/// docs/checkpoints.md (`TRL_RS_EXPORT=DIR cargo test -p trl-tests --test heads round_trip`).
fn export(name: &str, save: impl Fn(&std::path::Path)) {
    if let Ok(root) = std::env::var("TRL_RS_EXPORT") {
        let dir = std::path::Path::new(&root).join(name);
        std::fs::create_dir_all(&dir).unwrap();
        save(&dir);
    }
}

/// Save → load keeps every tensor bit-exact, single file and sharded.
#[test]
fn save_and_reload_round_trip() {
    let (vm, cfg, _) =
        CausalLmWithValueHead::<B>::from_pretrained(&fixture("llama-vhead"), &ValueHeadOptions::default(), &dev())
            .unwrap();
    for shard in [DEFAULT_MAX_SHARD_SIZE, 20_000] {
        let tmp = tempfile::tempdir().unwrap();
        vm.save_pretrained(&cfg, tmp.path(), shard).unwrap();
        let (back, _, source) =
            CausalLmWithValueHead::<B>::from_pretrained(tmp.path(), &ValueHeadOptions::default(), &dev()).unwrap();
        assert_eq!(source, VHeadSource::Restored);
        assert_eq!(back.state_dict(), vm.state_dict());
        export(&format!("llama-vhead-{shard}"), |d| vm.save_pretrained(&cfg, d, shard).unwrap());
    }
    let (rm, cfg, _) = ForSequenceClassification::<B>::from_pretrained(&fixture("qwen2-rm"), None, &dev()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    rm.save_pretrained(&cfg, tmp.path(), DEFAULT_MAX_SHARD_SIZE).unwrap();
    let (back, cfg2, restored) = ForSequenceClassification::<B>::from_pretrained(tmp.path(), None, &dev()).unwrap();
    assert!(restored);
    assert_eq!(cfg2.architectures(), vec!["Qwen2ForSequenceClassification".to_string()]);
    assert_eq!(back.state_dict(), rm.state_dict());
    export("qwen2-rm", |d| rm.save_pretrained(&cfg, d, DEFAULT_MAX_SHARD_SIZE).unwrap());
}

/// Without `pad_token_id`, a batch of more than one row is a clear error.
#[test]
fn reward_model_needs_pad_id_for_batches() {
    let (mut model, _, _) = ForSequenceClassification::<B>::from_pretrained(&fixture("gpt2-rm"), None, &dev()).unwrap();
    model.pad_token_id = None;
    let exp = expected("gpt2-rm");
    let err = model.forward(&batch(&exp, "right"), false).unwrap_err();
    assert!(err.to_string().contains("pad_token_id"), "{err}");
}

/// A causal-LM checkpoint becomes a reward model with a fresh 1-label score head.
#[test]
fn causal_lm_checkpoint_gets_fresh_score() {
    // each architecture's output head (`lm_head`, GPT-NeoX's `embed_out`) is dropped
    for (name, class) in [("llama", "LlamaForSequenceClassification"), ("gpt_neox", "GPTNeoXForSequenceClassification")]
    {
        let (model, cfg, restored) =
            ForSequenceClassification::<B>::from_pretrained(&fixture(name), None, &dev()).unwrap();
        assert!(!restored);
        assert_eq!(model.score.weight.dims(), [64, 1]);
        assert_eq!(cfg.architectures(), vec![class.to_string()]);
    }
}
