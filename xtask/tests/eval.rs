//! `cargo xtask eval` against the same aggregation done here from `cargo xtask score`'s
//! rewards: per-subset and per-section accuracy, margins, and the calibration table.

use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};

fn xtask(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_xtask")).args(args).output().expect("xtask runs");
    let (o, e) = (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    assert!(!e.contains("panicked"), "{e}");
    (out.status.success(), o, e)
}

#[test]
fn eval_reports_what_the_scores_say() {
    let tmp = tempfile::tempdir().unwrap();
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/llama-rm");
    let model = model.to_str().unwrap();
    let words = ["kind", "rude", "helpful", "wrong", "safe", "risky", "clear", "vague", "short", "long answer"];
    let rows: Vec<Value> = (0..12)
        .map(|i| {
            json!({"prompt": format!("Question {i}:"), "chosen": format!(" {} {}", words[i % 10], words[(i + 3) % 10]),
                   "rejected": format!(" {}", words[(i * 7 + 1) % 10]), "subset": if i % 3 == 0 { "safety" } else { "chat" }})
        })
        .collect();
    let data = tmp.path().join("pairs.jsonl");
    std::fs::write(&data, rows.iter().map(|r| r.to_string() + "\n").collect::<String>()).unwrap();
    let sections = tmp.path().join("sections.json");
    std::fs::write(&sections, r#"{"all": ["chat", "safety"], "safe": ["safety"]}"#).unwrap();
    let md = tmp.path().join("report.md");

    let (ok, scored, err) = xtask(&["score", "--model", model, "--input", data.to_str().unwrap()]);
    assert!(ok, "{err}");
    let scored: Vec<Value> = scored.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let margin = |r: &Value| r["chosen_reward"].as_f64().unwrap() - r["rejected_reward"].as_f64().unwrap();
    let count = |subset: Option<&str>| {
        let of: Vec<&Value> = scored.iter().filter(|r| subset.is_none_or(|s| r["subset"] == s)).collect();
        (of.len() as u64, of.iter().filter(|r| margin(r) > 0.0).count() as u64)
    };

    let (ok, report, err) = xtask(&[
        "eval",
        "--model",
        model,
        "--data",
        data.to_str().unwrap(),
        "--subset-column",
        "subset",
        "--sections",
        sections.to_str().unwrap(),
        "--markdown",
        md.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let r: Value = serde_json::from_str(&report).unwrap();
    let check = |v: &Value, (n, correct): (u64, u64)| {
        assert_eq!((v["pairs"].as_u64().unwrap(), v["correct"].as_u64().unwrap()), (n, correct), "{v}");
        assert_eq!(v["accuracy"].as_f64().unwrap(), correct as f64 / n as f64);
    };
    check(&r["overall"], count(None));
    check(&r["subsets"]["chat"], count(Some("chat")));
    check(&r["subsets"]["safety"], count(Some("safety")));
    check(&r["sections"]["all"], count(None));
    check(&r["sections"]["safe"], count(Some("safety")));
    assert_eq!(count(Some("chat")).0, 8);
    let mean = scored.iter().map(margin).sum::<f64>() / 12.0;
    // rewards are printed as f32 and subtracted in f64 on both sides
    assert!((r["margin"]["mean"].as_f64().unwrap() - mean).abs() < 1e-6, "{}", r["margin"]);
    let bins = r["calibration"]["bins"].as_array().unwrap();
    assert_eq!(bins.iter().map(|b| b["pairs"].as_u64().unwrap()).sum::<u64>(), 12);
    let text = std::fs::read_to_string(&md).unwrap();
    assert!(text.contains("| safety | 4 |") && text.contains("expected calibration error"), "{text}");

    // a single text is not a preference row
    let single = tmp.path().join("single.jsonl");
    std::fs::write(&single, "{\"text\": \"hello\"}\n").unwrap();
    let (ok, _, err) = xtask(&["eval", "--model", model, "--data", single.to_str().unwrap()]);
    assert!(!ok && err.contains("eval needs preference rows"), "{err}");
}
