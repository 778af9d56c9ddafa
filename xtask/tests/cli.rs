//! End-to-end checks of the `cargo xtask` commands on the tiny fixtures: `forward` reproduces
//! transformers' tensors (issues 3 and 4), `score` agrees with `forward`, and bad input is a
//! clear error, never a panic.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::json;
use trl_core::checkpoint::load_safetensors;
use trl_core::StateDict;
use trl_tests::{assert_close, assert_close_where, copy_fixture, Tol, U};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

/// Runs the xtask binary; returns (success, stdout, stderr).
fn xtask(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_xtask")).args(args).output().expect("xtask runs");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

fn floats(sd: &StateDict, key: &str) -> Vec<f32> {
    sd.get(key).unwrap_or_else(|| panic!("missing `{key}`")).clone().convert::<f32>().to_vec::<f32>().unwrap()
}

fn ints(sd: &StateDict, key: &str) -> Vec<i64> {
    sd.get(key).unwrap_or_else(|| panic!("missing `{key}`")).clone().convert::<i64>().to_vec::<i64>().unwrap()
}

/// `forward` on `model` with the fixture texts; returns the written tensors.
fn forward(model: &Path, padding: &str, dir: &Path) -> StateDict {
    let out = dir.join(format!("{}-{padding}.safetensors", model.file_name().unwrap().to_string_lossy()));
    let texts = fixtures().join("texts.json");
    let (ok, _, err) = xtask(&[
        "forward",
        "--model",
        model.to_str().unwrap(),
        "--input",
        texts.to_str().unwrap(),
        "--padding",
        padding,
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "forward failed: {err}");
    load_safetensors(&out).unwrap()
}

/// `got` within the forward bound of fixture `name` of `want`, at real tokens.
fn assert_close_masked(name: &str, what: &str, got: &[f32], want: &[f32], mask: &[i64], per_token: usize) {
    assert_close_where(what, got, want, Tol::forward(name), |i| mask[i / per_token] != 0);
}

#[test]
fn forward_reproduces_transformers_logits() {
    let tmp = tempfile::tempdir().unwrap();
    for name in ["gpt2", "llama", "qwen2", "qwen3", "mistral", "gpt_neox", "phi3", "gemma2", "gemma3_text"] {
        let exp = load_safetensors(&fixtures().join(name).join("expected.safetensors")).unwrap();
        for side in ["right", "left"] {
            let got = forward(&fixtures().join(name), side, tmp.path());
            assert_eq!(ints(&got, "input_ids"), ints(&exp, &format!("{side}.input_ids")), "{name} {side} ids");
            let mask = ints(&got, "attention_mask");
            assert_eq!(mask, ints(&exp, &format!("{side}.attention_mask")));
            let want = floats(&exp, &format!("{side}.logits"));
            assert_close_masked(name, &format!("{name} {side}"), &floats(&got, "logits"), &want, &mask, 512);
        }
    }
}

#[test]
fn forward_writes_values_and_rewards() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, key) in
        [("gpt2-vhead", "values"), ("llama-rm", "scores"), ("gpt_neox-rm", "scores"), ("gpt_neox-vhead", "values")]
    {
        let exp = load_safetensors(&fixtures().join(name).join("expected.safetensors")).unwrap();
        for side in ["right", "left"] {
            let got = forward(&fixtures().join(name), side, tmp.path());
            let mask = ints(&got, "attention_mask");
            let want = floats(&exp, &format!("{side}.{key}"));
            assert_close_masked(name, &format!("{name} {side} {key}"), &floats(&got, key), &want, &mask, 1);
        }
    }
    let got = forward(&fixtures().join("llama-rm"), "right", tmp.path());
    let exp = load_safetensors(&fixtures().join("llama-rm/expected.safetensors")).unwrap();
    assert_close_masked("llama-rm", "rewards", &floats(&got, "rewards"), &floats(&exp, "right.rewards"), &[1, 1, 1], 1);
}

#[test]
fn score_agrees_with_forward() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("rows.jsonl");
    std::fs::write(
        &input,
        "{\"text\": \"Hi there!\"}\n{\"prompt\": \"The reward model\", \"chosen\": \" likes it a lot.\", \"rejected\": \" Hi there!\"}\n",
    )
    .unwrap();
    let model = fixtures().join("llama-rm");
    let (ok, out, err) =
        xtask(&["score", "--model", model.to_str().unwrap(), "--input", input.to_str().unwrap(), "--no-eos"]);
    assert!(ok, "score failed: {err}");
    let rows: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 2);
    let exp = load_safetensors(&model.join("expected.safetensors")).unwrap();
    let want = floats(&exp, "right.rewards")[0];
    let bound = Tol::forward("llama-rm").bound(&[want]);
    assert!((rows[0]["reward"].as_f64().unwrap() as f32 - want).abs() <= bound, "{} vs {want}", rows[0]["reward"]);
    let (c, r) = (rows[1]["chosen_reward"].as_f64().unwrap(), rows[1]["rejected_reward"].as_f64().unwrap());
    let p = rows[1]["p_chosen"].as_f64().unwrap();
    // sigmoid in f32: a subtraction, an exp, an addition and a division, each rounded once
    assert!((p - 1.0 / (1.0 + (r - c).exp())).abs() <= 8.0 * f64::from(U));
    // The rejected side is text 1 of the fixture with the prompt in front: not the same reward.
    assert!((r as f32 - want).abs() > 1e-3);
}

/// T5 (issue 17) through the CLI: `score` reads TRL's value at the response's last token with
/// the prompt encoded, `forward` takes `--decoder-input`, and `generate` decodes greedily, all
/// as transformers / TRL computed them.
#[test]
fn t5_scores_forwards_and_generates_as_trl() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixtures().join("t5_v1_1");
    let m = model.to_str().unwrap();
    let tol = Tol::t5("t5_v1_1");
    let inputs: serde_json::Value = serde_json::from_slice(&std::fs::read(model.join("inputs.json")).unwrap()).unwrap();
    let exp = load_safetensors(&model.join("expected.safetensors")).unwrap();

    let pairs = inputs["score_pairs"].as_array().unwrap();
    let input = tmp.path().join("pairs.jsonl");
    let mut rows: Vec<String> = pairs.iter().map(|p| json!({"prompt": p[0], "response": p[1]}).to_string()).collect();
    rows.push(json!({"prompt": pairs[0][0], "chosen": pairs[0][1], "rejected": pairs[1][1]}).to_string());
    std::fs::write(&input, rows.join("\n")).unwrap();
    let (ok, out, err) = xtask(&["score", "--model", m, "--input", input.to_str().unwrap()]);
    assert!(ok, "score failed: {err}");
    let got: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let f = |i: usize, k: &str| got[i][k].as_f64().unwrap() as f32;
    assert_close("t5 score rewards", &[f(0, "reward"), f(1, "reward")], &floats(&exp, "score.rewards"), tol);
    // the chosen side is (prompt 0, response 0); the rejected one pairs prompt 0 with response 1
    assert_close("t5 chosen", &[f(2, "chosen_reward")], &[f(0, "reward")], tol);
    assert!((f(2, "rejected_reward") - f(2, "chosen_reward")).abs() > 1e-4);
    std::fs::write(&input, json!({"text": "no prompt"}).to_string()).unwrap();
    let (ok, _, err) = xtask(&["score", "--model", m, "--input", input.to_str().unwrap()]);
    assert!(!ok && err.contains(":1: an encoder-decoder scores `prompt`"), "{err}");

    let (src, tgt, out) = (tmp.path().join("src.json"), tmp.path().join("tgt.json"), tmp.path().join("out.st"));
    std::fs::write(&src, inputs["sources"].to_string()).unwrap();
    std::fs::write(&tgt, inputs["targets"].to_string()).unwrap();
    for side in ["right", "left"] {
        let args =
            ["forward", "--model", m, "--input", src.to_str().unwrap(), "--decoder-input", tgt.to_str().unwrap()];
        let (ok, _, err) = xtask(&[&args[..], &["--padding", side, "--out", out.to_str().unwrap()]].concat());
        assert!(ok, "forward failed: {err}");
        let got = load_safetensors(&out).unwrap();
        for k in ["input_ids", "attention_mask", "decoder_input_ids", "decoder_attention_mask"] {
            assert_eq!(ints(&got, k), ints(&exp, &format!("{side}.{k}")), "{side} {k}");
        }
        let mask = ints(&exp, &format!("{side}.decoder_attention_mask"));
        let vocab = floats(&got, "logits").len() / mask.len();
        let keep = |i: usize| mask[i / vocab] == 1;
        assert_close_where(
            &format!("{side} logits"),
            &floats(&got, "logits"),
            &floats(&exp, &format!("{side}.logits")),
            tol,
            keep,
        );
        let keep = |i: usize| mask[i] == 1;
        assert_close_where(
            &format!("{side} values"),
            &floats(&got, "values"),
            &floats(&exp, &format!("{side}.values")),
            tol,
            keep,
        );
    }

    // a PEFT adapter on the base, merged at load
    let adapter = fixtures().join("lora-t5_v1_1");
    let lexp = load_safetensors(&adapter.join("expected.safetensors")).unwrap();
    let args = ["forward", "--model", m, "--adapter", adapter.to_str().unwrap(), "--input", src.to_str().unwrap()];
    let (ok, _, err) =
        xtask(&[&args[..], &["--decoder-input", tgt.to_str().unwrap(), "--out", out.to_str().unwrap()]].concat());
    assert!(ok, "forward --adapter failed: {err}");
    let got = load_safetensors(&out).unwrap();
    let mask = ints(&lexp, "right.decoder_attention_mask");
    assert_close_where("adapter values", &floats(&got, "values"), &floats(&lexp, "right.values"), tol, |i| {
        mask[i] == 1
    });

    let prompts = tmp.path().join("prompts.jsonl");
    let sources = inputs["sources"].as_array().unwrap();
    std::fs::write(&prompts, sources.iter().map(|s| json!({"prompt": s}).to_string()).collect::<Vec<_>>().join("\n"))
        .unwrap();
    let (ok, out, err) =
        xtask(&["generate", "--model", m, "--prompts", prompts.to_str().unwrap(), "--max-new-tokens", "8"]);
    assert!(ok, "generate failed: {err}");
    let greedy = ints(&exp, "right.greedy");
    for (r, line) in out.lines().enumerate() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let ids: Vec<i64> = serde_json::from_value(v["token_ids"].clone()).unwrap();
        assert_eq!(ids, greedy[r * 9 + 1..r * 9 + 1 + ids.len()], "row {r}");
    }
    let (ok, _, err) =
        xtask(&["generate", "--model", m, "--prompts", prompts.to_str().unwrap(), "--repetition-penalty", "1.2"]);
    assert!(!ok && err.contains("--repetition-penalty is not supported with an encoder-decoder"), "{err}");
}

/// An encoder reward model (DeBERTa) scores `{"prompt", "response"}` rows as text pairs and
/// `{"text"}` rows alone, as `tokenizer(prompt, response)` and transformers do; an adapter or
/// a conversation is refused by name.
#[test]
fn score_runs_deberta_as_transformers() {
    let tmp = tempfile::tempdir().unwrap();
    for name in ["deberta_v2-rm", "deberta_v2-conv-rm"] {
        let model = fixtures().join(name);
        let inputs: serde_json::Value =
            serde_json::from_slice(&std::fs::read(model.join("inputs.json")).unwrap()).unwrap();
        let pairs = inputs["pairs"].as_array().unwrap();
        let input = tmp.path().join(format!("{name}.jsonl"));
        let mut rows: Vec<String> =
            pairs.iter().map(|p| json!({"prompt": p[0], "response": p[1]}).to_string()).collect();
        rows.push(json!({"prompt": pairs[0][0], "response": pairs[1][1]}).to_string());
        rows.push(json!({"prompt": pairs[0][0], "chosen": pairs[0][1], "rejected": pairs[1][1]}).to_string());
        std::fs::write(&input, rows.join("\n")).unwrap();
        let (ok, out, err) = xtask(&["score", "--model", model.to_str().unwrap(), "--input", input.to_str().unwrap()]);
        assert!(ok, "{name}: score failed: {err}");
        let exp = load_safetensors(&model.join("expected.safetensors")).unwrap();
        let want = floats(&exp, "pair.logits");
        let labels = want.len() / pairs.len();
        let got: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let first = |i: usize, k: &str| got[i][k].as_f64().unwrap() as f32;
        let rewards: Vec<f32> = (0..pairs.len()).map(|i| first(i, "reward")).collect();
        let wanted: Vec<f32> = want.chunks(labels).map(|c| c[0]).collect();
        assert_close(&format!("{name} pair rewards"), &rewards, &wanted, Tol::deberta(name));
        // a pair row scores (prompt, chosen) and (prompt, rejected) as the rows before it do
        let chosen_rejected = [first(4, "chosen_reward"), first(4, "rejected_reward")];
        let alone = [rewards[0], first(3, "reward")];
        assert_close(&format!("{name} chosen/rejected"), &chosen_rejected, &alone, Tol::deberta(name));
        assert!((rewards[0] - first(3, "reward")).abs() > 1e-3, "{name}: the two responses score differently");
    }
    let model = fixtures().join("deberta_v2-rm");
    let input = tmp.path().join("chat.jsonl");
    std::fs::write(&input, json!({"text": [{"role": "user", "content": "Hi"}]}).to_string()).unwrap();
    let (ok, _, err) = xtask(&["score", "--model", model.to_str().unwrap(), "--input", input.to_str().unwrap()]);
    assert!(!ok && err.contains(":1: `text` is a conversation") && err.contains("plain text"), "{err}");
    let adapter = fixtures().join("lora-llama-rm");
    let (ok, _, err) = xtask(&[
        "score",
        "--model",
        model.to_str().unwrap(),
        "--adapter",
        adapter.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("--adapter") && err.contains("DeBERTa"), "{err}");
}

/// `--dtype` and `--quantize` reach the model: a bf16 checkpoint's logits are transformers'
/// f32 computation of its weights under `auto` and `bf16` alike; `--quantize int8` rewards are
/// those of the q8 round trip; a dtype the checkpoint cannot hold is refused by name.
#[test]
fn dtype_and_quantize_flags() {
    let tmp = tempfile::tempdir().unwrap();
    let texts = fixtures().join("texts.json");
    let exp = load_safetensors(&fixtures().join("llama-bf16/expected.safetensors")).unwrap();
    for dtype in ["auto", "bf16"] {
        let out = tmp.path().join(format!("{dtype}.safetensors"));
        let model = fixtures().join("llama-bf16");
        let args = ["forward", "--model", model.to_str().unwrap(), "--input", texts.to_str().unwrap()];
        let (ok, _, err) = xtask(&[&args[..], &["--dtype", dtype, "--out", out.to_str().unwrap()]].concat());
        assert!(ok, "forward --dtype {dtype} failed: {err}");
        let got = load_safetensors(&out).unwrap();
        let mask = ints(&got, "attention_mask");
        let want = floats(&exp, "right.logits");
        assert_close_masked("llama-bf16", dtype, &floats(&got, "logits"), &want, &mask, 512);
    }
    let model = fixtures().join("llama-rm");
    let out = tmp.path().join("int8.safetensors");
    let args = ["forward", "--model", model.to_str().unwrap(), "--input", texts.to_str().unwrap()];
    let (ok, _, err) = xtask(&[&args[..], &["--quantize", "int8", "--out", out.to_str().unwrap()]].concat());
    assert!(ok, "forward --quantize int8 failed: {err}");
    let int8 = load_safetensors(&fixtures().join("llama-rm-int8/expected.safetensors")).unwrap();
    let got = floats(&load_safetensors(&out).unwrap(), "rewards");
    assert_close("llama-rm --quantize int8", &got, &floats(&int8, "right.rewards"), Tol::forward("llama-rm"));
    let (ok, _, err) = xtask(&[&args[..], &["--dtype", "int4"]].concat());
    assert!(!ok && err.contains("auto, f32, bf16 or f16"), "{err}");
}

/// Rows are scored longest first, in batches of similar length; the output keeps the input's
/// order and each reward is the one the row gets when scored alone.
#[test]
fn score_keeps_input_order_whatever_the_batching() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("rows.jsonl");
    let words = ["a", "reward", "model", "likes", "short", "and", "long", "texts", "alike", "today"];
    let lines: Vec<String> = [1usize, 9, 3, 7, 2, 10, 5]
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            let text = words[..n].join(" ");
            if i % 3 == 0 {
                json!({"id": i, "prompt": "Q:", "chosen": format!(" {text}"), "rejected": " no"}).to_string()
            } else {
                json!({"id": i, "text": text}).to_string()
            }
        })
        .collect();
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let model = fixtures().join("llama-rm");
    let run = |batch: &str| -> Vec<serde_json::Value> {
        let (ok, out, err) = xtask(&[
            "score",
            "--model",
            model.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--batch-size",
            batch,
        ]);
        assert!(ok, "score --batch-size {batch} failed: {err}");
        out.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    };
    let alone = run("2");
    let rewards = |rows: &[serde_json::Value]| -> Vec<f32> {
        rows.iter()
            .flat_map(|r| ["reward", "chosen_reward", "rejected_reward"].map(|k| r.get(k).and_then(|v| v.as_f64())))
            .flatten()
            .map(|v| v as f32)
            .collect()
    };
    for batch in ["4", "64"] {
        let rows = run(batch);
        let ids: Vec<u64> = rows.iter().map(|r| r["id"].as_u64().unwrap()).collect();
        assert_eq!(ids, (0..7).collect::<Vec<u64>>(), "--batch-size {batch}: rows out of order");
        let (got, want) = (rewards(&rows), rewards(&alone));
        assert_eq!(got.len(), 10);
        assert_close(&format!("--batch-size {batch}"), &got, &want, Tol::forward("llama-rm"));
    }
}

fn write_texts(dir: &Path, texts: &serde_json::Value) -> PathBuf {
    let p = dir.join("texts.json");
    std::fs::write(&p, texts.to_string()).unwrap();
    p
}

fn forward_err(model: &Path, texts: &Path, dir: &Path) -> String {
    let out = dir.join("out.safetensors");
    let (ok, _, err) = xtask(&[
        "forward",
        "--model",
        model.to_str().unwrap(),
        "--input",
        texts.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!ok, "expected failure");
    assert!(!err.contains("panicked"), "must not panic: {err}");
    err
}

#[test]
fn bad_input_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let texts = write_texts(tmp.path(), &serde_json::json!(["Hi there!"]));

    let unknown = copy_fixture("gpt2", &tmp.path().join("unknown"));
    let cfg = std::fs::read_to_string(unknown.join("config.json")).unwrap().replace("\"gpt2\"", "\"bert\"");
    std::fs::write(unknown.join("config.json"), cfg).unwrap();
    let err = forward_err(&unknown, &texts, tmp.path());
    assert!(err.contains("bert") && err.contains("supported") && err.contains("llama"), "{err}");

    let mismatch = copy_fixture("llama", &tmp.path().join("mismatch"));
    let cfg = std::fs::read_to_string(mismatch.join("config.json"))
        .unwrap()
        .replace("\"intermediate_size\": 128", "\"intermediate_size\": 96");
    std::fs::write(mismatch.join("config.json"), cfg).unwrap();
    let err = forward_err(&mismatch, &texts, tmp.path());
    assert!(err.contains("mlp.gate_proj.weight") && err.contains("96"), "{err}");

    let long = write_texts(tmp.path(), &serde_json::json!(["Hi there! ".repeat(60)]));
    let err = forward_err(&fixtures().join("gpt2"), &long, tmp.path());
    assert!(err.contains("longer than the model's 128 positions"), "{err}");

    let empty = write_texts(tmp.path(), &serde_json::json!([]));
    let err = forward_err(&fixtures().join("gpt2"), &empty, tmp.path());
    assert!(err.contains("no texts"), "{err}");

    let missing = tmp.path().join("nowhere");
    let err = forward_err(&missing, &texts, tmp.path());
    assert!(err.contains("not found") && err.contains("nowhere"), "{err}");
}

#[test]
fn help_lists_every_subcommand() {
    let (ok, out, _) = xtask(&["--help"]);
    assert!(ok);
    for cmd in ["train", "forward", "score", "eval", "generate", "bench"] {
        assert!(out.contains(cmd), "--help lacks `{cmd}`:\n{out}");
    }
}

/// `--device` on every subcommand: the build's own device runs and the output says what ran; a
/// device of a backend this binary was not built with is an error naming the feature to build
/// with, before anything is loaded; a misspelt device is a usage error.
#[test]
fn device_flag_on_every_subcommand() {
    let built = trl_core::backend::DeviceArg::built().to_string();
    let name = trl_core::backend::name();
    let tmp = tempfile::tempdir().unwrap();
    let texts = fixtures().join("texts.json");
    let model = fixtures().join("llama-rm");
    let out = tmp.path().join("out.safetensors");
    let args = ["forward", "--model", model.to_str().unwrap(), "--input", texts.to_str().unwrap()];
    let (ok, _, err) = xtask(&[&args[..], &["--out", out.to_str().unwrap(), "--device", &built]].concat());
    assert!(ok, "forward --device {built}: {err}");
    assert!(err.contains(&format!("{name} on {built}")), "the output names what ran: {err}");

    let other = if name == "cuda" { "wgpu:0" } else { "cuda:1" };
    let feature = if name == "cuda" { "--features wgpu" } else { "--features cuda" };
    let rows = tmp.path().join("rows.jsonl");
    std::fs::write(&rows, "{\"text\": \"hi\"}\n").unwrap();
    let train_out = tmp.path().join("run");
    for cmd in [
        vec!["forward", "--model", "nowhere", "--input", "nowhere.json", "--out", "x.safetensors"],
        vec!["score", "--model", "nowhere", "--input", "nowhere.jsonl"],
        vec!["eval", "--model", "nowhere", "--data", "nowhere.jsonl"],
        vec!["generate", "--model", "nowhere", "--prompts", "nowhere.jsonl"],
        vec!["serve", "--model", "nowhere", "--port", "0"],
        vec!["train", "--max-steps", "1", "--output-dir", train_out.to_str().unwrap()],
        vec!["bench", "--cases", "tiny", "--python", "none", "--out", "x.json"],
    ] {
        let (ok, _, err) = xtask(&[&cmd[..], &["--device", other]].concat());
        assert!(!ok, "{} --device {other} ran", cmd[0]);
        assert!(
            err.contains(&format!("--device {other}")) && err.contains(feature) && !err.contains("panicked"),
            "{}: {err}",
            cmd[0]
        );
    }
    assert!(!train_out.exists(), "a refused device writes nothing");

    // training records where it ran; two data-parallel workers share the CPU
    let (ok, _, err) = xtask(&[
        "train",
        "--max-steps",
        "2",
        "--data-parallel",
        "2",
        "--device",
        &built,
        "--output-dir",
        train_out.to_str().unwrap(),
    ]);
    assert!(ok, "train --data-parallel 2: {err}");
    assert!(err.contains(&format!("{name} on {built}, 2 data-parallel workers")), "{err}");
    let read = |f: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(train_out.join(f)).unwrap()).unwrap()
    };
    assert_eq!(read("training_config.json")["device"], json!(built));
    assert_eq!(read("training_config.json")["data_parallel"], json!(2));
    assert!(read("summary.json")["backend"].as_str().unwrap().contains(name), "{}", read("summary.json"));
    let (ok, _, err) = xtask(&[&args[..], &["--out", out.to_str().unwrap(), "--device", "gpu:0"]].concat());
    assert!(!ok && err.contains("not a device") && err.contains("cuda:N"), "{err}");
}

/// `--device-map` (issue 18): the layers split over the listed devices score what one device
/// does (here both are the CPU), `auto` takes every device of the build, a device of another
/// backend is the `--device` error, and an encoder-decoder is refused.
#[test]
fn device_map_scores_as_one_device() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("rows.jsonl");
    std::fs::write(&input, "{\"prompt\": \"The reward model\", \"chosen\": \" likes it.\", \"rejected\": \" Hi!\"}\n")
        .unwrap();
    let model = fixtures().join("llama-rm");
    let built = trl_core::backend::DeviceArg::built().to_string();
    let base = ["score", "--model", model.to_str().unwrap(), "--input", input.to_str().unwrap()];
    let (ok, one, err) = xtask(&base);
    assert!(ok, "{err}");
    let pair = format!("{built},{built}");
    for map in [pair.as_str(), "auto"] {
        let (ok, split, err) = xtask(&[&base[..], &["--device-map", map]].concat());
        assert!(ok, "--device-map {map}: {err}");
        assert_eq!(split, one, "--device-map {map} scores as one device");
        assert!(err.contains("(layers split)"), "{err}");
    }
    let other = if trl_core::backend::name() == "cuda" { "wgpu:0" } else { "cuda:1" };
    let (ok, _, err) = xtask(&[&base[..], &["--device-map", &format!("{built},{other}")]].concat());
    assert!(!ok && err.contains(&format!("--device {other}")) && !err.contains("panicked"), "{err}");
    let (ok, _, err) = xtask(&[&base[..], &["--device-map", "auto", "--device", &built]].concat());
    assert!(!ok && err.contains("cannot be used with"), "{err}");
    let t5 = fixtures().join("t5");
    let texts = fixtures().join("texts.json");
    let out = tmp.path().join("o.safetensors");
    let (ok, _, err) = xtask(&[
        "forward",
        "--model",
        t5.to_str().unwrap(),
        "--input",
        texts.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--device-map",
        "auto",
    ]);
    assert!(!ok && err.contains("one --device"), "{err}");
}
