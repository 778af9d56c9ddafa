//! Hostile input to the data paths of `cargo xtask score`, `forward` and `generate` (issue 10):
//! over-long rows are cut or named before any batch is built, JSONL is read as training reads
//! it (byte-order mark, per-line UTF-8 errors), Parquet is read as Parquet, bad rows can be
//! skipped, and `--out` problems name the path. Never a panic.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use trl_core::checkpoint::load_safetensors;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

fn model(name: &str) -> String {
    fixtures().join(name).to_str().unwrap().to_string()
}

/// Runs the xtask binary; returns (success, stdout, stderr). Never a panic, whatever the outcome.
fn xtask(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_xtask")).args(args).output().expect("xtask runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "xtask panicked: {stderr}");
    (out.status.success(), stdout, stderr)
}

/// Runs xtask expecting failure; returns the one `error: …` line (without the prefix).
fn xtask_err(args: &[&str]) -> String {
    let (ok, out, err) = xtask(args);
    assert!(!ok, "expected failure of {args:?}; stdout: {out}");
    assert!(out.is_empty(), "a failed run printed rows: {out}");
    err.lines().find_map(|l| l.strip_prefix("error: ")).unwrap_or_else(|| panic!("no error line: {err}")).to_string()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn jsonl(out: &str) -> Vec<Value> {
    out.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect()
}

fn write(dir: &Path, name: &str, bytes: impl AsRef<[u8]>) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// "Hi there! " repeated to one megabyte.
fn megabyte() -> String {
    "Hi there! ".repeat(100_000)
}

/// The token count an error message gives: the number before ` tokens`.
fn tokens_in(msg: &str) -> usize {
    let before = &msg[..msg.find(" tokens").unwrap_or_else(|| panic!("no token count: {msg}"))];
    before.rsplit(' ').next().unwrap().parse().unwrap_or_else(|_| panic!("no token count: {msg}"))
}

fn score(args: &[&str]) -> Vec<Value> {
    let (ok, out, err) = xtask(&[&["score"], args].concat());
    assert!(ok, "score failed: {err}");
    jsonl(&out)
}

// ---------------------------------------------------------------------------------------------
// score: over-long rows
// ---------------------------------------------------------------------------------------------

#[test]
fn score_one_megabyte_row_fails_fast_naming_the_row() {
    let tmp = tempfile::tempdir().unwrap();
    let rows = format!("{}\n{}\n", serde_json::json!({"text": "Hi there!"}), serde_json::json!({"text": megabyte()}));
    let input = write(tmp.path(), "rows.jsonl", rows);
    let start = Instant::now();
    let err = xtask_err(&["score", "--model", &model("gpt2-rm"), "--input", s(&input)]);
    let took = start.elapsed();
    assert!(took < Duration::from_secs(30), "took {took:?}");
    let n = tokens_in(&err);
    assert!(n > 100_000, "{err}");
    assert_eq!(
        err,
        format!(
            "{}:2: {n} tokens, longer than the model's 128 positions; pass --truncation left (keeps the end) or \
             --truncation right (keeps the start)",
            input.display()
        )
    );

    // cut on the left it scores, and only that row is flagged
    let got = score(&["--model", &model("gpt2-rm"), "--input", s(&input), "--truncation", "left"]);
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].get("truncated"), None);
    assert_eq!(got[1]["truncated"], Value::Bool(true));
    assert!(got[1]["reward"].as_f64().unwrap().is_finite());
}

#[test]
fn score_left_keeps_the_end_right_keeps_the_start() {
    let tmp = tempfile::tempdir().unwrap();
    let tail = "the reward model reads the last token of every row. ".repeat(20);
    let head = "a reward model reads every row from its first token on. ".repeat(20);
    let texts = [
        format!("{}{tail}", "apple ".repeat(300)),
        format!("{}{tail}", "pear ".repeat(300)),
        format!("{head}{}", "apple ".repeat(300)),
        format!("{head}{}", "pear ".repeat(300)),
        "Hi there!".to_string(),
    ];
    let mut rows: String = texts.iter().map(|t| format!("{}\n", serde_json::json!({ "text": t }))).collect();
    rows.push_str(&format!("{}\n", serde_json::json!({"prompt": "Q: ", "chosen": texts[0], "rejected": "no"})));
    let input = write(tmp.path(), "rows.jsonl", rows);
    let reward = |v: &Value| v["reward"].as_f64().unwrap();

    let left = score(&["--model", &model("gpt2-rm"), "--input", s(&input), "--truncation", "left"]);
    let right = score(&["--model", &model("gpt2-rm"), "--input", s(&input), "--truncation", "right"]);
    for got in [&left, &right] {
        assert_eq!(got.len(), 6);
        for row in &got[..4] {
            assert_eq!(row["truncated"], Value::Bool(true), "{row}");
        }
        assert_eq!(got[4].get("truncated"), None);
        assert_eq!(got[5]["truncated"], serde_json::json!(["chosen"]));
    }
    // the same end: the same reward on the left, not on the right; and the other way round
    assert!((reward(&left[0]) - reward(&left[1])).abs() < 1e-6, "{} {}", left[0]["reward"], left[1]["reward"]);
    assert!((reward(&right[0]) - reward(&right[1])).abs() > 1e-4);
    assert!((reward(&right[2]) - reward(&right[3])).abs() < 1e-6, "{} {}", right[2]["reward"], right[3]["reward"]);
    assert!((reward(&left[2]) - reward(&left[3])).abs() > 1e-4);
    // an untouched row scores as without truncation
    let plain = write(tmp.path(), "plain.jsonl", format!("{}\n", serde_json::json!({"text": "Hi there!"})));
    let alone = score(&["--model", &model("gpt2-rm"), "--input", s(&plain)]);
    assert!((reward(&alone[0]) - reward(&left[4])).abs() < 1e-4, "{} vs {}", alone[0], left[4]);
    // a pair whose sides are both cut lists both
    let both =
        write(tmp.path(), "both.jsonl", format!("{}\n", serde_json::json!({"chosen": texts[0], "rejected": texts[1]})));
    let got = score(&["--model", &model("gpt2-rm"), "--input", s(&both), "--truncation", "right"]);
    assert_eq!(got[0]["truncated"], serde_json::json!(["chosen", "rejected"]));
    // in error mode a pair names its side
    let err = xtask_err(&["score", "--model", &model("gpt2-rm"), "--input", s(&both)]);
    assert!(err.starts_with(&format!("{}:1: `chosen`: ", both.display())), "{err}");
}

#[test]
fn score_max_length_is_checked_against_the_model() {
    let tmp = tempfile::tempdir().unwrap();
    let text = "The reward model likes it a lot. Which answer is better, A or B?";
    let input = write(tmp.path(), "rows.jsonl", format!("\n{}\n", serde_json::json!({ "text": text })));
    let m = model("gpt2-rm");
    let err = xtask_err(&["score", "--model", &m, "--input", s(&input), "--max-length", "4096"]);
    assert_eq!(
        err,
        "--max-length 4096 is larger than the model's 128 positions (its position limit); pass at most 128"
    );
    let err = xtask_err(&["score", "--model", &m, "--input", s(&input), "--max-length", "0"]);
    assert_eq!(err, "--max-length must be at least 1");
    let err = xtask_err(&["score", "--model", &m, "--input", s(&input), "--max-length", "8"]);
    let n = tokens_in(&err);
    assert!(n > 8, "{err}");
    assert_eq!(
        err,
        format!(
            "{}:2: {n} tokens, longer than --max-length 8; pass --truncation left (keeps the end) or --truncation \
             right (keeps the start), or a larger --max-length (the model takes up to 128)",
            input.display()
        )
    );
    let got = score(&["--model", &m, "--input", s(&input), "--max-length", "8", "--truncation", "right"]);
    assert_eq!(got[0]["truncated"], Value::Bool(true));
    let err = xtask_err(&["score", "--model", &m, "--input", s(&input), "--truncation", "middle"]);
    assert!(err.contains("invalid value 'middle' for '--truncation"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// score: reading its input
// ---------------------------------------------------------------------------------------------

#[test]
fn score_reads_jsonl_as_training_does_and_can_skip_bad_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let mut bytes = b"\xef\xbb\xbf{\"text\": \"Hi there!\"}\r\n".to_vec();
    bytes.extend_from_slice(b"{\"text\": \"caf\xe9\"}\n");
    bytes.extend_from_slice(b"{\"text\": \n");
    bytes.extend_from_slice(b"{\"text\": \"\"}\n");
    bytes.extend_from_slice(b"{\"words\": \"no text\"}\n");
    bytes.extend_from_slice(b"\n[1, 2]\n");
    bytes.extend_from_slice(b"{\"prompt\": \"Q\", \"response\": \" A\"}\n");
    let input = write(tmp.path(), "rows.jsonl", &bytes);
    let m = model("gpt2-rm");

    let err = xtask_err(&["score", "--model", &m, "--input", s(&input)]);
    assert_eq!(err, format!("{}:2: invalid UTF-8 at byte 14 of the line (or pass --skip-bad-rows)", input.display()));
    let (ok, out, err) = xtask(&["score", "--model", &m, "--input", s(&input), "--skip-bad-rows", "--no-eos"]);
    assert!(ok, "{err}");
    let rows = jsonl(&out);
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["text"], "Hi there!");
    assert_eq!(rows[1]["response"], " A");
    assert!(rows.iter().all(|r| r["reward"].is_f64()));
    let line = err.lines().find(|l| l.starts_with("skipped")).unwrap_or_else(|| panic!("no summary: {err}"));
    let want = format!(
        "skipped 5 malformed row(s) of {} (line 2: invalid UTF-8 at byte 14 of the line; line 3: invalid JSON: ",
        input.display()
    );
    assert!(line.starts_with(&want), "{line}");
    assert!(
        line.contains(
            "; line 4: the text has no tokens: nothing to score; line 5: expected `text`, `prompt`+`response`, or \
             `prompt`+`chosen`+`rejected`; line 7: not a JSON object"
        ),
        "{line}"
    );
    // nothing but bad rows
    let bad = write(tmp.path(), "bad.jsonl", "{\n");
    let err = xtask_err(&["score", "--model", &m, "--input", s(&bad), "--skip-bad-rows"]);
    assert_eq!(err, format!("{}: no rows to score (all 1 rows are malformed)", bad.display()));
    let utf16 = write(tmp.path(), "utf16.jsonl", [0xff, 0xfe, b'{', 0]);
    let err = xtask_err(&["score", "--model", &m, "--input", s(&utf16)]);
    assert!(err.starts_with(&format!("{}: UTF-16 text", utf16.display())), "{err}");
    let err = xtask_err(&["score", "--model", &m, "--input", s(&tmp.path().join("missing.jsonl"))]);
    assert!(err.starts_with(&format!("{}: ", tmp.path().join("missing.jsonl").display())), "{err}");
}

#[test]
fn score_reads_parquet_as_parquet() {
    let tmp = tempfile::tempdir().unwrap();
    let data = fixtures().join("data");
    let m = model("gpt2-rm");
    // (a row of the fixture is longer than the model takes)
    let from_jsonl = score(&["--model", &m, "--input", s(&data.join("plain.jsonl")), "--truncation", "left"]);
    let from_parquet = score(&["--model", &m, "--input", s(&data.join("plain.parquet")), "--truncation", "left"]);
    assert!(from_parquet.iter().any(|r| r.get("truncated").is_some()));
    assert_eq!(from_jsonl.len(), from_parquet.len());
    for (j, p) in from_jsonl.iter().zip(&from_parquet) {
        assert_eq!(j["chosen"], p["chosen"]);
        for key in ["chosen_reward", "rejected_reward", "p_chosen"] {
            assert!((j[key].as_f64().unwrap() - p[key].as_f64().unwrap()).abs() < 1e-6, "{key}: {j} vs {p}");
        }
    }
    // a JSONL file named .parquet is not read as JSONL
    let fake = tmp.path().join("fake.parquet");
    std::fs::copy(data.join("plain.jsonl"), &fake).unwrap();
    let err = xtask_err(&["score", "--model", &m, "--input", s(&fake)]);
    assert!(err.starts_with(&format!("{}: not a readable Parquet file: ", fake.display())), "{err}");
    // Parquet rows are named by row number, and can be skipped
    let nulls = data.join("null_rejected.parquet");
    let err = xtask_err(&["score", "--model", &m, "--input", s(&nulls)]);
    assert_eq!(
        err,
        format!(
            "{}: row 2: expected `text`, `prompt`+`response`, or `prompt`+`chosen`+`rejected` (or pass \
             --skip-bad-rows)",
            nulls.display()
        )
    );
    let (ok, out, err) = xtask(&["score", "--model", &m, "--input", s(&nulls), "--skip-bad-rows"]);
    assert!(ok, "{err}");
    assert_eq!(jsonl(&out).len(), 2);
    assert!(
        err.contains(&format!("skipped 1 malformed row(s) of {} (row 2: expected `text`", nulls.display())),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------
// score: --out
// ---------------------------------------------------------------------------------------------

#[test]
fn score_out_errors_name_the_path_and_stale_temps_go() {
    let tmp = tempfile::tempdir().unwrap();
    let input = write(tmp.path(), "rows.jsonl", "{\"text\": \"Hi there!\"}\n");
    let m = model("gpt2-rm");
    let blocker = write(tmp.path(), "blocker", "a file, not a directory");
    let out = blocker.join("scores.jsonl");
    let err = xtask_err(&["score", "--model", &m, "--input", s(&input), "--out", s(&out)]);
    assert!(err.starts_with(&format!("cannot write --out {}: {}: ", out.display(), blocker.display())), "{err}");

    // leftovers of killed runs (a PID that cannot exist, and the PID-less name of old versions)
    let out = tmp.path().join("scores.jsonl");
    let stale = [tmp.path().join(".scores.jsonl.tmp4194305"), tmp.path().join(".scores.jsonl.tmp")];
    for p in &stale {
        std::fs::write(p, "half a file").unwrap();
    }
    let (ok, stdout, err) = xtask(&["score", "--model", &m, "--input", s(&input), "--out", s(&out)]);
    assert!(ok, "{err}");
    assert!(stdout.is_empty());
    for p in &stale {
        assert!(!p.exists(), "{} left behind", p.display());
    }
    let rows = jsonl(&std::fs::read_to_string(&out).unwrap());
    assert_eq!(rows.len(), 1);
    assert!(rows[0]["reward"].is_f64());
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".scores"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

// ---------------------------------------------------------------------------------------------
// forward and generate
// ---------------------------------------------------------------------------------------------

#[test]
fn forward_cuts_or_names_the_long_text_and_flags_it() {
    let tmp = tempfile::tempdir().unwrap();
    let long = "Hi there! ".repeat(200);
    let texts = write(tmp.path(), "texts.json", serde_json::json!(["Hi there!", long]).to_string());
    let out = tmp.path().join("out.safetensors");
    let gpt2 = model("gpt2");
    let run = |extra: &[&str]| {
        let mut a: Vec<&str> = vec!["forward", "--model", gpt2.as_str(), "--input", s(&texts), "--out", s(&out)];
        a.extend_from_slice(extra);
        xtask(&a)
    };
    let tok = trl_core::Tokenizer::from_dir(&fixtures().join("gpt2")).unwrap();
    let full = tok.encode(&long, true).unwrap();
    assert!(full.len() > 128);

    let (ok, _, err) = run(&[]);
    assert!(!ok);
    assert!(
        err.contains(&format!(
            "error: {}: text 2: {} tokens, longer than the model's 128 positions; pass --truncation left",
            texts.display(),
            full.len()
        )),
        "{err}"
    );
    assert!(!out.exists());

    for (side, want) in [("left", &full[full.len() - 128..]), ("right", &full[..128])] {
        let (ok, _, err) = run(&["--truncation", side]);
        assert!(ok, "{err}");
        assert!(err.contains("causal-LM model, 2 texts (1 truncated), 128 tokens"), "{err}");
        let sd = load_safetensors(&out).unwrap();
        let ints = |k: &str| sd.get(k).unwrap().clone().convert::<i64>().to_vec::<i64>().unwrap();
        assert_eq!(ints("truncated"), [0, 1]);
        assert_eq!(sd.get("truncated").unwrap().shape.to_vec(), [2]);
        assert_eq!(&ints("input_ids")[128..], want, "{side}");
        assert_eq!(ints("attention_mask")[128..].iter().sum::<i64>(), 128);
    }
    // no Debug names in what users read
    let (ok, _, err) = xtask(&[
        "forward",
        "--model",
        &model("gpt2-vhead"),
        "--input",
        s(&fixtures().join("texts.json")),
        "--out",
        s(&out),
    ]);
    assert!(ok, "{err}");
    assert!(err.contains("value-head model, 3 texts, ") && !err.contains("ValueHead"), "{err}");
    let sd = load_safetensors(&out).unwrap();
    assert_eq!(sd.get("truncated").unwrap().clone().convert::<i64>().to_vec::<i64>().unwrap(), [0, 0, 0]);
}

#[test]
fn generate_fits_prompt_and_new_tokens_into_the_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let long = "Hi there! ".repeat(200);
    let prompts = write(
        tmp.path(),
        "prompts.jsonl",
        format!("{}\n\n{}\n", serde_json::json!({"prompt": "Hi"}), serde_json::json!({ "prompt": long })),
    );
    let m = model("gpt2");
    let gen = |extra: &[&str]| {
        let mut a: Vec<&str> = vec!["generate", "--model", m.as_str(), "--prompts", s(&prompts)];
        a.extend_from_slice(extra);
        xtask(&a)
    };
    let tok = trl_core::Tokenizer::from_dir(&fixtures().join("gpt2")).unwrap();
    let n = tok.encode(&long, true).unwrap().len();

    let (ok, out, err) = gen(&["--max-new-tokens", "4"]);
    assert!(!ok && out.is_empty());
    assert!(
        err.contains(&format!(
            "error: {}:3: prompt of {n} tokens + 4 new tokens (--max-new-tokens), longer than the model's 128 \
             positions; pass --truncation left (keeps the end) or --truncation right (keeps the start), or a \
             smaller --max-new-tokens",
            prompts.display()
        )),
        "{err}"
    );

    let (ok, out, err) = gen(&["--max-new-tokens", "4", "--truncation", "left"]);
    assert!(ok, "{err}");
    let rows = jsonl(&out);
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].get("truncated"), None);
    assert_eq!(rows[1]["truncated"], Value::Bool(true));
    assert_eq!(rows[1]["prompt"], long.as_str());
    assert!(rows[1]["token_ids"].as_array().unwrap().len() <= 4);

    let (ok, _, err) = gen(&["--max-length", "64", "--max-new-tokens", "64"]);
    assert!(!ok);
    assert!(
        err.contains(
            "error: --max-new-tokens 64 leaves no room for the prompt: prompt and new tokens must fit in \
             --max-length 64; pass a smaller --max-new-tokens"
        ),
        "{err}"
    );
    let (ok, _, err) = gen(&["--max-length", "129", "--max-new-tokens", "4"]);
    assert!(!ok);
    assert!(err.contains("error: --max-length 129 is larger than the model's 128 positions"), "{err}");

    let bad = write(tmp.path(), "bad.jsonl", b"\"Hi\"\n\"t\xffo\"\n");
    let (ok, _, err) = xtask(&["generate", "--model", &m, "--prompts", s(&bad), "--max-new-tokens", "2"]);
    assert!(!ok);
    assert!(err.contains(&format!("error: {}:2: invalid UTF-8 at byte 3 of the line", bad.display())), "{err}");
}

// ---------------------------------------------------------------------------------------------
// train: which rows were skipped, and rows the model cannot take
// ---------------------------------------------------------------------------------------------

#[test]
fn train_names_skipped_rows_and_drops_rows_over_the_model_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let data = fixtures().join("data");
    let (bad, nulls) = (data.join("bad.jsonl"), data.join("null_rejected.parquet"));
    let out = tmp.path().join("run");
    let m = model("gpt2-rm");
    let train = |extra: &[&str]| {
        let mut a: Vec<&str> = vec!["train", "--model", m.as_str(), "--max-steps", "1", "--output-dir", s(&out)];
        a.extend_from_slice(extra);
        xtask(&a)
    };
    let (ok, _, err) = train(&["--train-file", s(&bad), "--eval-file", s(&nulls), "--skip-bad-rows"]);
    assert!(ok, "{err}");
    assert!(
        err.contains(&format!(
            "skipped 3 malformed row(s) of {} (line 2: invalid JSON: key must be a string at line 1 column 2; line 3: \
             missing `rejected` (rows need `chosen` and `rejected`, optionally `prompt` and `margin`); line 5: mixes \
             plain text and conversations in one row: `chosen` is a conversation but `rejected` is plain text)",
            bad.display()
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!("skipped 1 malformed row(s) of {} (row 2: missing `rejected`", nulls.display())),
        "{err}"
    );
    // plain.jsonl has a row of 150 tokens; the model takes 128: dropped, not a failed run
    let (ok, _, err) = train(&["--train-file", s(&data.join("plain.jsonl"))]);
    assert!(ok, "{err}");
    assert!(
        err.contains(
            "note: max_length 1024 is more than the model's 128 positions; rows longer than 128 tokens are dropped"
        ),
        "{err}"
    );
}
