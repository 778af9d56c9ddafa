//! LoRA / PEFT adapters (issue 5): parity with PEFT 0.21 on the `lora-*` fixtures, merge and
//! unmerge, several adapters on one base, TRL's reward adapter, training with a frozen base,
//! PEFT-format save and reload, and clear errors for what is not supported.
//!
//! Set `TRL_RS_LORA_EXPORT=<dir>` to keep the adapters trained here (with our outputs in
//! `<dir>/<name>/ours.safetensors`) for the Python cross-check described in `docs/lora.md`.

use std::path::{Path, PathBuf};

use burn::module::AutodiffModule;
use burn::optim::GradientsParams;
use burn::prelude::*;
use trl_core::module_io::{module_state_dict, module_state_dict_where};
use trl_core::peft::{LoraConfig, TargetModules};
use trl_core::StateDict;
use trl_heads::{CausalLmWithValueHead, ForSequenceClassification, VHeadSource, ValueHeadOptions};
use trl_models::{AnyCausalLm, TokenBatch};
use trl_reward::optim::{AdamW, AdamWConfig};
use trl_tests::*;

type T = trl_core::backend::Train;

/// Causal adapters with expected logits, and whether they have merged logits.
const CAUSAL: &[(&str, bool)] = &[
    ("lora-gpt2", true),
    ("lora-llama", true),
    ("lora-qwen2", true),
    ("lora-llama-layers", false),
    ("lora-gpt_neox", true),
    ("lora-phi3", true),
    ("lora-gemma2", true),
    ("lora-gemma3_text", true),
];

fn dev() -> burn::tensor::Device<B> {
    trl_core::backend::device()
}

fn lora_model(name: &str) -> AnyCausalLm<B> {
    AnyCausalLm::<B>::from_adapter(&fixture(name), None, &dev()).unwrap_or_else(|e| panic!("{name}: {e}")).0
}

/// Logits of `case` agree with `exp[key]` at real tokens.
fn check_logits(what: &str, model: &AnyCausalLm<B>, exp: &StateDict, case: &str, key: &str, tol: Tol) {
    let b = batch(exp, case);
    let got = to_vec(model.forward(&b, true).unwrap().logits.unwrap());
    let (want, shape) = floats(exp, key);
    assert_close_where(what, &got, &want, tol, |i| b.attention_mask[i / shape[2]] != 0);
}

fn logits(model: &AnyCausalLm<B>, b: &TokenBatch) -> Vec<f32> {
    to_vec(model.forward(b, true).unwrap().logits.unwrap())
}

/// Every parameter that is not a LoRA weight (`lora_A` / `lora_B`).
fn base_weights<BK: Backend, M: burn::module::Module<BK>>(m: &M) -> StateDict {
    module_state_dict_where(m, |k| !k.contains(".lora_A.") && !k.contains(".lora_B."))
}

#[test]
fn logits_match_peft() {
    for (name, _) in CAUSAL {
        let model = lora_model(name);
        assert_eq!(model.active_adapter(), Some("default"));
        let exp = expected(name);
        for case in ["right", "left"] {
            let tol = Tol::forward(name);
            check_logits(&format!("{name} {case}"), &model, &exp, case, &format!("{case}.logits"), tol);
        }
    }
    // from_pretrained on an adapter directory loads base + adapter, as transformers does
    let (model, _) = AnyCausalLm::<B>::from_pretrained(&fixture("lora-qwen2"), &dev()).unwrap();
    let tol = Tol::forward("lora-qwen2");
    check_logits("lora-qwen2 via from_pretrained", &model, &expected("lora-qwen2"), "right", "right.logits", tol);
}

/// The legacy `adapter_model.bin` loads through the pickle reader.
#[test]
fn bin_adapter_loads() {
    let dir = fixture("lora-gpt2-bin");
    assert!(dir.join("adapter_model.bin").is_file() && !dir.join("adapter_model.safetensors").exists());
    let model = lora_model("lora-gpt2-bin");
    check_logits("lora-gpt2-bin", &model, &expected("lora-gpt2"), "right", "right.logits", Tol::forward("lora-gpt2"));
}

#[test]
fn merge_and_unmerge_agree() {
    for (name, _) in CAUSAL.iter().filter(|(_, merged)| *merged) {
        let mut model = lora_model(name);
        let exp = expected(name);
        let b = batch(&exp, "right");
        let before = logits(&model, &b);
        let base_before = base_weights(&model);
        let tol = Tol::forward(name);
        model.merge_adapter().unwrap();
        let merged = base_weights(&model);
        check_logits(&format!("{name} merged vs PEFT merged"), &model, &exp, "right", "merged.right.logits", tol);
        assert_close_where(&format!("{name} merged vs unmerged"), &logits(&model, &b), &before, tol, |i| {
            b.attention_mask[i / 512] != 0
        });
        assert!(model.disable_adapters().is_err(), "disabling while merged must be refused");
        model.unmerge_adapter().unwrap();
        // Unmerged weights differ from the originals by the two roundings of `(W + ΔW) − ΔW`, so the
        // logits are those of a model whose weights differ by ulps: the forward bound.
        assert_close(&format!("{name} unmerged again"), &logits(&model, &b), &before, tol);
        for (k, t) in &base_weights(&model).tensors {
            let (got, want) = (t.to_vec::<f32>().unwrap(), base_before.get(k).unwrap().to_vec::<f32>().unwrap());
            // |fl(fl(W + ΔW) − ΔW) − W| ≤ u·|W + ΔW| + u·|W|, elementwise
            let m = merged.get(k).unwrap().to_vec::<f32>().unwrap();
            let scale = |v: &[f32]| v.iter().fold(0f32, |a, x| a.max(x.abs()));
            let bound = Tol { rel: 2.0 * U * (scale(&m) + scale(&want)) };
            assert_close(&format!("{name} {k} after unmerge"), &got, &want, bound);
        }
        // merge_and_unload: a plain model with the base's keys and the merged outputs
        let plain = model.merge_and_unload().unwrap();
        assert!(plain.adapter_names().is_empty());
        assert_eq!(module_state_dict(&plain).keys().collect::<Vec<_>>(), base_before.keys().collect::<Vec<_>>());
        check_logits(&format!("{name} merge_and_unload"), &plain, &exp, "right", "merged.right.logits", tol);
    }
}

/// With adapters disabled the model is the base model, bit for bit.
#[test]
fn disabled_adapters_equal_the_base() {
    for (name, base) in [("lora-gpt2", "gpt2"), ("lora-llama", "llama")] {
        let mut model = lora_model(name);
        let plain = AnyCausalLm::<B>::from_pretrained(&fixture(base), &dev()).unwrap().0;
        let exp = expected(name);
        let b = batch(&exp, "left");
        let want = logits(&plain, &b);
        assert_eq!(logits(&model.without_adapters().unwrap(), &b), want, "{name}: without_adapters");
        assert_eq!(model.active_adapter(), Some("default"), "without_adapters leaves the model alone");
        model.disable_adapters().unwrap();
        assert_eq!(model.active_adapter(), None);
        assert_eq!(logits(&model, &b), want, "{name}: disable_adapters");
        model.enable_adapters();
        check_logits(&format!("{name} enabled again"), &model, &exp, "left", "left.logits", Tol::forward(name));
    }
}

/// Two adapters on one base: each gives its own fixture's logits when active.
#[test]
fn several_named_adapters() {
    let mut model = lora_model("lora-llama");
    model.load_adapter(&fixture("lora-llama-layers"), "layers").unwrap();
    assert_eq!(model.adapter_names(), vec!["default", "layers"]);
    assert_eq!(model.active_adapter(), Some("default"), "loading does not activate");
    let tol = Tol::forward("lora-llama");
    check_logits("default", &model, &expected("lora-llama"), "right", "right.logits", tol);
    model.set_adapter("layers").unwrap();
    check_logits("layers", &model, &expected("lora-llama-layers"), "right", "right.logits", tol);
    let err = model.set_adapter("nope").unwrap_err().to_string();
    assert!(err.contains("nope") && err.contains("default") && err.contains("layers"), "{err}");
    assert!(model.load_adapter(&fixture("lora-llama"), "layers").unwrap_err().to_string().contains("already"));
    model.delete_adapter("default").unwrap();
    assert_eq!(model.adapter_names(), vec!["layers"]);
    check_logits("layers after delete", &model, &expected("lora-llama-layers"), "left", "left.logits", tol);
    // the file's keys come back out unchanged
    let sd = model.adapter_state_dict("layers").unwrap();
    let file =
        trl_core::checkpoint::load_file(&fixture("lora-llama-layers").join("adapter_model.safetensors")).unwrap();
    assert_eq!(sd.keys().collect::<Vec<_>>(), file.keys().collect::<Vec<_>>());
    for (k, t) in &file.tensors {
        assert_eq!(sd.get(k).unwrap().to_vec::<f32>().unwrap(), t.to_vec::<f32>().unwrap(), "{k}");
    }
}

/// PEFT's SEQ_CLS adapter on a reward model: the adapter's `score` replaces the head.
#[test]
fn reward_model_adapter_matches_peft() {
    for (name, class) in [
        ("lora-llama-rm", "LlamaForSequenceClassification"),
        ("lora-gpt_neox-rm", "GPTNeoXForSequenceClassification"),
        ("lora-phi3-rm", "Phi3ForSequenceClassification"),
        ("lora-gemma2-rm", "Gemma2ForSequenceClassification"),
        ("lora-gemma3_text-rm", "Gemma3TextForSequenceClassification"),
    ] {
        let (model, cfg, restored) =
            ForSequenceClassification::<B>::from_adapter(&fixture(name), None, &dev()).unwrap();
        assert!(restored);
        assert_eq!(cfg.architectures(), vec![class.to_string()]);
        let exp = expected(name);
        let tol = Tol::forward(name);
        for case in ["right", "left"] {
            let b = batch(&exp, case);
            let out = model.forward(&b, true).unwrap();
            let want = floats(&exp, &format!("{case}.rewards")).0;
            assert_close(&format!("{name} {case} rewards"), &to_vec(out.rewards), &want, tol);
            let want = floats(&exp, &format!("{case}.scores")).0;
            assert_close_where(&format!("{name} {case} scores"), &to_vec(out.scores.unwrap()), &want, tol, |i| {
                b.attention_mask[i] != 0
            });
        }
    }
}

/// TRL's reward adapter on a LoRA policy: `compute_reward_score` equals TRL's, and the policy
/// adapter stays active.
#[test]
fn reward_adapter_matches_trl() {
    let (mut vm, _, source) =
        CausalLmWithValueHead::<B>::from_pretrained(&fixture("lora-llama"), &ValueHeadOptions::default(), &dev())
            .unwrap();
    assert_eq!(source, VHeadSource::Fresh);
    vm.add_reward_adapter(&fixture("lora-llama-rm"), "reward_adapter").unwrap();
    let exp = expected("lora-llama-rm");
    for case in ["right", "left"] {
        let b = batch(&exp, case);
        let out = vm.compute_reward_score(&b, true).unwrap();
        let want = floats(&exp, &format!("trl.{case}.scores")).0;
        let tol = Tol::forward("lora-llama-rm");
        assert_close_where(&format!("TRL {case} scores"), &to_vec(out.scores.unwrap()), &want, tol, |i| {
            b.attention_mask[i] != 0
        });
        assert_close(
            &format!("{case} rewards"),
            &to_vec(out.rewards),
            &floats(&exp, &format!("{case}.rewards")).0,
            tol,
        );
    }
    assert_eq!(vm.pretrained_model.active_adapter(), Some("default"));
    let exp = expected("lora-llama");
    let b = batch(&exp, "right");
    let got = to_vec(vm.forward(&b, None).unwrap().logits);
    let tol = Tol::forward("lora-llama");
    assert_close_where("policy logits after reward scoring", &got, &floats(&exp, "right.logits").0, tol, |i| {
        b.attention_mask[i / 512] != 0
    });
    let err = CausalLmWithValueHead::<B>::from_pretrained(&fixture("lora-llama"), &ValueHeadOptions::default(), &dev())
        .unwrap()
        .0
        .add_reward_adapter(&fixture("lora-llama-layers"), "rm")
        .unwrap_err()
        .to_string();
    assert!(err.contains("score.weight") && err.contains("SEQ_CLS"), "{err}");
}

fn export_dir(name: &str) -> Option<PathBuf> {
    std::env::var_os("TRL_RS_LORA_EXPORT").map(|d| PathBuf::from(d).join(name))
}

fn pairs() -> TokenBatch {
    // chosen: texts 1..3 of the fixtures, rejected: the same texts reversed (right padded)
    let exp = expected("llama-rm");
    let b = batch(&exp, "right");
    let rows: Vec<Vec<i64>> = (0..b.batch)
        .map(|r| {
            b.input_ids[r * b.seq..(r + 1) * b.seq]
                .iter()
                .zip(&b.attention_mask[r * b.seq..])
                .filter(|(_, &m)| m != 0)
                .map(|(&t, _)| t)
                .collect()
        })
        .collect();
    let mut all = rows.clone();
    all.extend(rows.iter().map(|r| r.iter().rev().copied().collect::<Vec<_>>()));
    TokenBatch::pad(&all, 1, trl_models::Padding::Right, None).unwrap()
}

/// A reward model trained as a LoRA adapter (Bradley–Terry loss, AdamW): only the adapter and
/// `score` move, the base stays bit-identical, and save → reload gives identical rewards.
#[test]
fn train_reward_adapter_save_reload() {
    let base = fixture("llama-rm");
    let (mut rm, _, _) = ForSequenceClassification::<T>::from_pretrained(&base, None, &dev()).unwrap();
    let mut cfg =
        LoraConfig::new(4, 8.0, TargetModules::Names(vec!["q_proj".into(), "v_proj".into(), "up_proj".into()]));
    cfg.lora_dropout = 0.05;
    cfg.base_model_name_or_path = Some(base.display().to_string());
    rm.add_adapter("default", cfg).unwrap();
    let mut rm = rm.train_adapter_only().unwrap();
    let frozen = base_weights(&rm.backbone);
    let score_before = module_state_dict(&rm.score);
    let b = pairs();
    let n = b.batch / 2;
    let mut opt = AdamW::new(AdamWConfig::default());
    let mut losses = Vec::new();
    for _ in 0..4 {
        let r = rm.forward(&b, false).unwrap().rewards.reshape([2 * n]);
        let loss = trl_reward::loss::bradley_terry(r.clone().narrow(0, 0, n), r.narrow(0, n, n), None, None);
        losses.push(to_vec(loss.clone().inner())[0]);
        let mut grads = GradientsParams::from_grads(loss.backward(), &rm);
        rm = opt.step(rm, 1e-2, &mut grads);
    }
    assert!(losses[3] < losses[0], "loss should fall: {losses:?}");
    assert_eq!(base_weights(&rm.backbone), frozen, "base weights must be bit-identical after training");
    assert_ne!(module_state_dict(&rm.score), score_before, "score is in modules_to_save and trains");

    let tmp = tempfile::tempdir().unwrap();
    let dir = export_dir("rm").unwrap_or_else(|| tmp.path().join("rm"));
    rm.save_adapter(&dir, "default").unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(json["peft_type"], "LORA");
    assert_eq!(json["task_type"], "SEQ_CLS");
    assert_eq!(json["modules_to_save"], serde_json::json!(["score"]));
    let file = trl_core::checkpoint::load_file(&dir.join("adapter_model.safetensors")).unwrap();
    assert_eq!(file.get("base_model.model.score.weight").unwrap().shape.to_vec(), vec![1, 64]);
    assert_eq!(
        file.get("base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight").unwrap().shape.to_vec(),
        vec![32, 4]
    );
    assert_eq!(file.len(), 2 * 2 * 3 + 1);

    let trained = rm.valid();
    let want = to_vec(trained.forward(&b, true).unwrap().scores.unwrap());
    let (back, _, _) = ForSequenceClassification::<B>::from_pretrained(&dir, None, &dev()).unwrap();
    assert_eq!(
        to_vec(back.forward(&b, true).unwrap().scores.unwrap()),
        want,
        "reloaded adapter must give identical scores"
    );
    if let Some(d) = export_dir("rm") {
        let mut ours = StateDict::new();
        ours.insert("input_ids", TensorData::new(b.input_ids.clone(), [b.batch, b.seq]));
        ours.insert("attention_mask", TensorData::new(b.attention_mask.clone(), [b.batch, b.seq]));
        ours.insert("scores", TensorData::new(want, [b.batch, b.seq]));
        trl_core::checkpoint::save_safetensors(&ours, &d.join("ours.safetensors")).unwrap();
    }
}

/// A GPT-2 policy (Conv1D, fan_in_fan_out) with a value head trained as LoRA, saved as TRL does
/// (adapter files + `model.safetensors` holding `v_head.*`), reloaded identically.
#[test]
fn train_value_head_policy_save_reload() {
    let base = fixture("gpt2");
    let opts = ValueHeadOptions { summary_dropout_prob: Some(0.0), ..Default::default() };
    let (mut vm, _, _) = CausalLmWithValueHead::<T>::from_pretrained(&base, &opts, &dev()).unwrap();
    let mut cfg = LoraConfig::new(4, 16.0, TargetModules::Names(vec!["c_attn".into(), "c_proj".into(), "c_fc".into()]));
    cfg.fan_in_fan_out = true;
    cfg.task_type = Some("CAUSAL_LM".into());
    cfg.base_model_name_or_path = Some(base.display().to_string());
    vm.pretrained_model.add_adapter("default", cfg).unwrap();
    let mut vm = vm.train_adapter_only().unwrap();
    let frozen = base_weights(&vm.pretrained_model);
    let exp = expected("gpt2");
    let b = batch(&exp, "right");
    let labels: Vec<i64> =
        b.input_ids.iter().zip(&b.attention_mask).map(|(&t, &m)| if m != 0 { t } else { -100 }).collect();
    let mut opt = AdamW::new(AdamWConfig::default());
    for _ in 0..3 {
        let out = vm.forward(&b, Some(&labels)).unwrap();
        let loss = out.loss.unwrap() + out.values.powf_scalar(2.0).mean() * 0.1;
        let mut grads = GradientsParams::from_grads(loss.backward(), &vm);
        vm = opt.step(vm, 1e-2, &mut grads);
    }
    assert_eq!(base_weights(&vm.pretrained_model), frozen, "base weights must be bit-identical after training");
    let tmp = tempfile::tempdir().unwrap();
    let dir = export_dir("policy").unwrap_or_else(|| tmp.path().join("policy"));
    vm.save_adapter(&dir, "default").unwrap();
    let head = trl_core::checkpoint::load_file(&dir.join("model.safetensors")).unwrap();
    assert_eq!(head.keys().collect::<Vec<_>>(), vec!["v_head.summary.bias", "v_head.summary.weight"]);
    let trained = vm.valid();
    let want = trained.forward(&b, None).unwrap();
    let (back, _, source) = CausalLmWithValueHead::<B>::from_pretrained(&dir, &opts, &dev()).unwrap();
    assert_eq!(source, VHeadSource::Restored);
    let got = back.forward(&b, None).unwrap();
    let (want_logits, want_values) = (to_vec(want.logits), to_vec(want.values));
    // A reloaded Linear (the adapters, the value head) holds its weight as a transposed view of
    // the file's `[out, in]`, where training left a contiguous `[in, out]`: the gemm may sum the
    // products in another order, so the reload agrees within f32 rounding, not bit for bit.
    assert_close("reloaded logits", &to_vec(got.logits), &want_logits, Tol::forward("gpt2"));
    assert_close("reloaded values", &to_vec(got.values), &want_values, Tol::forward("gpt2"));
    let plain = AnyCausalLm::<B>::from_pretrained(&base, &dev()).unwrap().0;
    assert_ne!(logits(&plain, &b), want_logits, "training changed the policy");
    if let Some(d) = export_dir("policy") {
        let mut ours = StateDict::new();
        ours.insert("input_ids", TensorData::new(b.input_ids.clone(), [b.batch, b.seq]));
        ours.insert("attention_mask", TensorData::new(b.attention_mask.clone(), [b.batch, b.seq]));
        ours.insert("logits", TensorData::new(want_logits, [b.batch, b.seq, 512]));
        ours.insert("values", TensorData::new(want_values, [b.batch, b.seq]));
        trl_core::checkpoint::save_safetensors(&ours, &d.join("ours.safetensors")).unwrap();
    }
}

/// Copies `lora-llama` into a temp dir with its config edited by `edit` (and its tensors by `drop`).
fn broken(edit: impl Fn(&mut serde_json::Value), drop: impl Fn(&str) -> bool) -> tempfile::TempDir {
    let src = fixture("lora-llama");
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("adapter_config.json")).unwrap()).unwrap();
    cfg["base_model_name_or_path"] = serde_json::json!(fixture("llama").display().to_string());
    edit(&mut cfg);
    std::fs::write(tmp.path().join("adapter_config.json"), cfg.to_string()).unwrap();
    let mut sd = trl_core::checkpoint::load_file(&src.join("adapter_model.safetensors")).unwrap();
    sd.split_off_by(&drop);
    trl_core::checkpoint::save_safetensors(&sd, &tmp.path().join("adapter_model.safetensors")).unwrap();
    tmp
}

fn load_err(dir: &Path) -> String {
    match AnyCausalLm::<B>::from_adapter(dir, None, &dev()) {
        Ok(_) => panic!("{} should not load", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_adapters_are_clear_errors() {
    use serde_json::json;
    let none = |_: &str| false;
    let cases: Vec<(tempfile::TempDir, &[&str])> = vec![
        (broken(|c| c["use_dora"] = json!(true), none), &["use_dora", "DoRA"]),
        (broken(|c| c["peft_type"] = json!("IA3"), none), &["peft_type `IA3`", "LORA"]),
        (broken(|c| c["bias"] = json!("lora_only"), none), &["bias", "none"]),
        (broken(|c| c["target_modules"] = json!(["q_proj", "qkv_proj"]), none), &["qkv_proj", "not found", "q_proj"]),
        (broken(|c| c["target_modules"] = json!(["q_proj", "lm_head"]), none), &["lm_head", "not found"]),
        (broken(|c| c["r"] = json!(4), none), &["lora_A.weight` should be [4, 64]", "[8, 64]", "r / rank_pattern"]),
        (broken(|_| {}, |k| k.contains("k_proj")), &["base_model.model.model.layers.0.self_attn.k_proj", "no weights"]),
        (broken(|c| c["target_modules"] = json!(["q_proj"]), none), &["k_proj", "does not wrap"]),
        (broken(|c| c["base_model_name_or_path"] = json!(null), none), &["base_model_name_or_path"]),
    ];
    for (dir, needles) in cases {
        let err = load_err(dir.path());
        eprintln!("{err}");
        for n in needles {
            assert!(err.contains(n), "error should mention `{n}`: {err}");
        }
    }
}
