//! Hostile input to `cargo xtask train` and the model loaders (issue 10): every case is a clear
//! error naming what is wrong, never a panic, an abort or a NaN checkpoint; one run per output
//! directory; a damaged checkpoint is passed over on `--resume`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use burn::tensor::TensorData;
use trl_core::checkpoint::{load_safetensors, save_safetensors};
use trl_tests::copy_fixture;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

/// Runs the xtask binary; returns (success, stderr), asserting it did not panic or abort.
fn xtask(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_xtask")).args(args).output().expect("xtask runs");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!err.contains("panicked") && out.status.code().is_some(), "panic or signal: {err}");
    (out.status.success(), err)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `train --init-config` on the llama fixture's config with `edit` applied.
fn init_config_error(edit: impl Fn(&mut serde_json::Value)) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixtures().join("llama-rm/config.json")).unwrap()).unwrap();
    edit(&mut cfg);
    let path = tmp.path().join("config.json");
    std::fs::write(&path, cfg.to_string()).unwrap();
    let (ok, err) = xtask(&[
        "train",
        "--init-config",
        s(&path),
        "--tokenizer",
        s(&fixtures().join("llama-rm")),
        "--train-file",
        s(&fixtures().join("data/explicit.jsonl")),
        "--output-dir",
        s(&tmp.path().join("out")),
        "--max-steps",
        "1",
    ]);
    assert!(!ok, "expected failure");
    err
}

#[test]
fn bad_model_sizes_are_refused_before_allocating() {
    type Edit = Box<dyn Fn(&mut serde_json::Value)>;
    let set = |k: &'static str, v: serde_json::Value| move |c: &mut serde_json::Value| c[k] = v.clone();
    let cases: [(Edit, &str); 7] = [
        (Box::new(set("hidden_size", 0.into())), "`hidden_size` is 0"),
        (Box::new(set("vocab_size", 1_000_000_000_000u64.into())), "bytes"),
        (Box::new(set("num_attention_heads", (-1).into())), "`num_attention_heads`"),
        (Box::new(set("num_key_value_heads", 3.into())), "not a multiple of num_key_value_heads 3"),
        (Box::new(set("head_dim", 15.into())), "head_dim 15 must be even"),
        (Box::new(set("intermediate_size", 0.into())), "`intermediate_size` is 0"),
        (Box::new(set("rms_norm_eps", f64::NAN.into())), "rms_norm_eps"),
    ];
    for (edit, want) in cases {
        let err = init_config_error(edit);
        assert!(err.contains(want), "expected `{want}` in: {err}");
    }
    let err = init_config_error(set("vocab_size", 1_000_000_000_000u64.into()));
    assert!(err.contains("more than") && err.contains("GiB"), "{err}");
}

#[test]
fn non_finite_and_absurd_numbers_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    for (flag, value, want) in [
        ("--learning-rate", "inf", "learning_rate is inf"),
        ("--learning-rate", "1e30", "learning_rate is 1000000000000000000000000000000"),
        ("--learning-rate", "nan", "learning_rate is NaN"),
        ("--center-rewards-coefficient", "nan", "center_rewards_coefficient is NaN"),
        ("--num-train-epochs", "inf", "num_train_epochs"),
    ] {
        let (ok, err) = xtask(&["train", "--output-dir", s(&out), flag, value]);
        assert!(!ok && err.contains(want), "{flag} {value}: {err}");
    }
    assert!(!out.join("checkpoint-1").exists());
}

/// The built-in job in `out` for `steps` steps, saving every `save` steps.
fn builtin(out: &Path, steps: &str, save: &str, extra: &[&str]) -> (bool, String) {
    let mut args = vec!["train", "--output-dir", s(out), "--max-steps", steps, "--save-steps", save];
    args.extend_from_slice(extra);
    xtask(&args)
}

#[test]
fn a_damaged_newest_checkpoint_is_skipped_on_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let (ok, err) = builtin(&out, "4", "2", &[]);
    assert!(ok, "{err}");
    assert!(!err.contains("Some("), "no Rust debug formats: {err}");
    // A killed run's leftovers, and a truncated optimizer file in the newest checkpoint.
    std::fs::write(out.join(".config.json.tmp4194304"), "half").unwrap();
    std::fs::create_dir(out.join(".checkpoint-6.tmp4194304")).unwrap();
    let opt = out.join("checkpoint-4/optimizer.safetensors");
    let bytes = std::fs::read(&opt).unwrap();
    std::fs::write(&opt, &bytes[..bytes.len() / 2]).unwrap();

    let (ok, err) = builtin(&out, "6", "2", &["--resume"]);
    assert!(ok, "{err}");
    assert!(err.contains("checkpoint-4 is damaged") && err.contains("optimizer.safetensors"), "{err}");
    assert!(!err.contains("re-download"), "local files are not downloaded: {err}");
    assert!(err.contains("checkpoint-2 at step 2"), "falls back to the newest complete one: {err}");
    assert!(err.contains("max_steps: 4 → 6"), "changed settings are named: {err}");
    assert!(!out.join(".config.json.tmp4194304").exists() && !out.join(".checkpoint-6.tmp4194304").exists());
    assert!(out.join("checkpoint-6/model.safetensors").is_file());

    // An explicit checkpoint that is damaged is an error naming it, not a fallback.
    let opt = out.join("checkpoint-6/optimizer.safetensors");
    std::fs::write(&opt, b"not a safetensors file").unwrap();
    let (ok, err) = builtin(&out, "8", "2", &["--resume", s(&out.join("checkpoint-6"))]);
    assert!(!ok && err.contains("checkpoint-6") && err.contains("cannot resume"), "{err}");
}

#[test]
fn a_second_run_in_the_same_output_dir_fails_at_once_naming_the_first() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let mut first = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["train", "--output-dir", s(&out), "--max-steps", "1000000", "--save-steps", "1000000"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lock = out.join(trl_core::lock::LOCK_FILE);
    let start = Instant::now();
    while std::fs::read_to_string(&lock).map_or(true, |t| t.trim().is_empty()) {
        assert!(start.elapsed() < Duration::from_secs(120), "the first run never took the lock");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (ok, err) = builtin(&out, "2", "1", &[]);
    let pid = first.id();
    first.kill().unwrap(); // SIGKILL: the lock dies with the process
    first.wait().unwrap();
    assert!(!ok && err.contains(&format!("PID {pid}")) && err.contains("in use"), "{err}");
    // The killed run left its PID behind: the next run takes over and says so.
    let (ok, err) = builtin(&out, "2", "1", &[]);
    assert!(ok, "{err}");
    assert!(err.contains(&format!("(PID {pid}) that did not finish cleanly")), "{err}");
}

/// A copy of llama-rm with `key` replaced by `data`; the error `score` gives on it.
fn score_error_with(key: &str, data: impl Fn(&TensorData) -> TensorData) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let model = copy_fixture("llama-rm", tmp.path());
    let file = model.join("model.safetensors");
    let mut sd = load_safetensors(&file).unwrap();
    let new = data(sd.get(key).unwrap());
    sd.insert(key, new);
    save_safetensors(&sd, &file).unwrap();
    let input = tmp.path().join("rows.jsonl");
    std::fs::write(&input, "{\"text\": \"Hi there!\"}\n").unwrap();
    let (ok, err) = xtask(&["score", "--model", s(&model), "--input", s(&input)]);
    assert!(!ok, "expected failure");
    err
}

#[test]
fn a_nan_weight_or_a_wrong_dtype_names_the_tensor() {
    let key = "model.layers.0.mlp.down_proj.weight";
    let err = score_error_with(key, |t| {
        let mut v = t.clone().convert::<f32>().to_vec::<f32>().unwrap();
        v[3] = f32::NAN;
        v[7] = f32::INFINITY;
        TensorData::new(v, t.shape.clone())
    });
    assert!(err.contains(key) && err.contains("2 NaN or infinite value(s)"), "{err}");
    let err = score_error_with(key, |t| TensorData::new(vec![1i64; t.num_elements()], t.shape.clone()));
    assert!(err.contains(key) && err.contains("dtype I64") && err.contains("float dtype"), "{err}");
}
