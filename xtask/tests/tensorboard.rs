//! `report_to = "tensorboard"` (issue 15): a training run writes a TensorBoard event file whose
//! records pass their CRCs and whose scalars are the log lines of metrics.jsonl, under
//! transformers' tags.

use std::path::Path;
use std::process::Command;

use serde_json::Value;
use trl_reward::tensorboard::masked_crc;

fn fixtures() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

/// The TFRecords of an event file, each checked against its two CRCs.
fn records(bytes: &[u8]) -> Vec<&[u8]> {
    let (mut out, mut at) = (Vec::new(), 0);
    while at < bytes.len() {
        let len_bytes = &bytes[at..at + 8];
        let len = u64::from_le_bytes(len_bytes.try_into().unwrap()) as usize;
        let crc = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap());
        assert_eq!(crc, masked_crc(len_bytes), "length CRC of the record at byte {at}");
        let data = &bytes[at + 12..at + 12 + len];
        let crc = u32::from_le_bytes(bytes[at + 12 + len..at + 16 + len].try_into().unwrap());
        assert_eq!(crc, masked_crc(data), "data CRC of the record at byte {at}");
        out.push(data);
        at += 16 + len;
    }
    out
}

fn varint(b: &[u8], at: &mut usize) -> u64 {
    let (mut v, mut shift) = (0u64, 0);
    loop {
        let byte = b[*at];
        *at += 1;
        v |= ((byte & 0x7F) as u64) << shift;
        if byte < 0x80 {
            return v;
        }
        shift += 7;
    }
}

/// Protobuf fields of a message: (field number, varint / fixed value bits, or bytes).
fn fields(b: &[u8]) -> Vec<(u64, u64, &[u8])> {
    let (mut out, mut at) = (Vec::new(), 0);
    while at < b.len() {
        let key = varint(b, &mut at);
        let (field, wire) = (key >> 3, key & 7);
        match wire {
            0 => out.push((field, varint(b, &mut at), &b[0..0])),
            1 => {
                out.push((field, u64::from_le_bytes(b[at..at + 8].try_into().unwrap()), &b[0..0]));
                at += 8;
            }
            5 => {
                out.push((field, u32::from_le_bytes(b[at..at + 4].try_into().unwrap()) as u64, &b[0..0]));
                at += 4;
            }
            2 => {
                let len = varint(b, &mut at) as usize;
                out.push((field, 0, &b[at..at + len]));
                at += len;
            }
            w => panic!("unexpected wire type {w}"),
        }
    }
    out
}

/// (step, [(tag, value)]) of each summary event; asserts the first event is the file version.
fn events(bytes: &[u8]) -> Vec<(u64, Vec<(String, f32)>)> {
    let recs = records(bytes);
    let first = fields(recs[0]);
    assert!(first.iter().any(|(f, _, b)| *f == 3 && *b == b"brain.Event:2"), "file_version event first");
    recs[1..]
        .iter()
        .map(|r| {
            let f = fields(r);
            let step = f.iter().find(|(n, _, _)| *n == 2).map_or(0, |x| x.1);
            assert!(f.iter().any(|(n, bits, _)| *n == 1 && f64::from_bits(*bits) > 1.6e9), "wall_time is set");
            let summary = f.iter().find(|(n, _, _)| *n == 5).expect("a summary").2;
            let values = fields(summary)
                .into_iter()
                .map(|(_, _, v)| {
                    let v = fields(v);
                    let tag = std::str::from_utf8(v.iter().find(|x| x.0 == 1).unwrap().2).unwrap().to_string();
                    let value = f32::from_bits(v.iter().find(|x| x.0 == 2).unwrap().1 as u32);
                    (tag, value)
                })
                .collect();
            (step, values)
        })
        .collect()
}

#[test]
fn report_to_tensorboard_writes_the_log_lines() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("cfg.json");
    std::fs::write(
        &cfg,
        r#"{"report_to": "tensorboard", "logging_steps": 1, "eval_strategy": "steps", "eval_steps": 2}"#,
    )
    .unwrap();
    let out = tmp.path().join("run");
    let pairs = fixtures().join("trainer/pairs.jsonl");
    let status = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["train", "--model"])
        .arg(fixtures().join("gpt2-rm"))
        .arg("--train-file")
        .arg(&pairs)
        .arg("--eval-file")
        .arg(&pairs)
        .arg("--config")
        .arg(&cfg)
        .args(["--max-steps", "4", "--batch-size", "4", "--output-dir"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    let files: Vec<_> = std::fs::read_dir(out.join("runs")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(files[0].file_name().unwrap().to_string_lossy().starts_with("events.out.tfevents."));
    let got = events(&std::fs::read(&files[0]).unwrap());
    let lines: Vec<Value> = std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(got.len(), lines.len(), "one event per log line");
    assert!(lines.iter().any(|l| l["split"] == "eval"), "eval lines too");
    for ((step, values), line) in got.iter().zip(&lines) {
        assert_eq!(*step, line["step"].as_u64().unwrap());
        let split = line["split"].as_str().unwrap();
        for key in ["loss", "accuracy", "margin", "epoch"] {
            let want = line[key].as_f64().unwrap() as f32;
            let tag = format!("{split}/{key}");
            let v = values.iter().find(|(t, _)| *t == tag).unwrap_or_else(|| panic!("{tag} missing: {values:?}"));
            assert_eq!(v.1, want, "{tag} at step {step}");
        }
        if split == "train" {
            let lr = values.iter().find(|(t, _)| t == "train/learning_rate").expect("learning rate");
            assert_eq!(lr.1, line["learning_rate"].as_f64().unwrap() as f32);
        }
    }
}
