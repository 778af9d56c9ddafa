//! `cargo xtask bench --cases serve`: load on `cargo xtask serve`. A 20M-parameter Llama-style
//! reward model (the `medium` case's shape) is written with the built-in tokenizer, the server
//! is started on a free port, and `CLIENTS` clients each send `/get_reward` requests of
//! `TEXTS_PER_REQUEST` texts (20–160 tokens, built-in task text) back to back for the given
//! seconds. Reports texts/s and request latency percentiles.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use trl_core::{backend, checkpoint, HfConfig};
use trl_reward::data::Content;
use trl_reward::synthetic;

use crate::common::{Error, B};

const CLIENTS: usize = 16;
const TEXTS_PER_REQUEST: usize = 4;

/// Texts of 1 to 8 built-in prompts joined (about 20 to 160 tokens).
fn texts(n: usize) -> Vec<String> {
    let rows = synthetic::rows(8 * n, 3);
    let prompt = |i: usize| match &rows[i].prompt {
        Some(Content::Text(t)) => t.clone(),
        _ => String::new(),
    };
    (0..n).map(|i| (0..1 + i % 8).map(|k| prompt(8 * i + k)).collect::<Vec<_>>().join(" ")).collect()
}

/// One POST on its own connection; returns the status.
fn post(port: u16, body: &str) -> Result<u16, Error> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(120)))?;
    write!(
        s,
        "POST /get_reward HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0))
}

pub fn run(seconds: f64, on: trl_core::backend::DeviceArg) -> Result<Value, Error> {
    let dir = std::env::temp_dir().join(format!("trl-bench-serve-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let config = HfConfig::from_value(json!({"model_type": "llama", "vocab_size": 8192, "hidden_size": 512,
        "intermediate_size": 1024, "num_hidden_layers": 6, "num_attention_heads": 8, "num_key_value_heads": 8,
        "max_position_embeddings": 512, "pad_token_id": 0}))?;
    let model = super::model::<B>(&config, &backend::device())?;
    model.save_pretrained(&config, &dir, checkpoint::DEFAULT_MAX_SHARD_SIZE)?;
    drop(model);
    let tok = synthetic::tokenizer();
    tok.save(&dir)?;
    let texts = texts(64);
    let tokens: usize = texts.iter().map(|t| tok.encode(t, true).map_or(0, |ids| ids.len())).sum();

    let mut server = Command::new(std::env::current_exe()?)
        .args(["serve", "--port", "0", "--device", &on.to_string(), "--model"])
        .arg(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(server.stdout.take().ok_or("no server stdout")?).read_line(&mut line)?;
    let port: u16 = line.trim().rsplit(':').next().and_then(|p| p.parse().ok()).ok_or("the server did not start")?;
    eprintln!("serve: {CLIENTS} clients × {TEXTS_PER_REQUEST} texts per request for {seconds}s…");
    let start = Instant::now();
    let results: Vec<Result<Vec<(f64, u16)>, String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..CLIENTS)
            .map(|c| {
                let texts = &texts;
                scope.spawn(move || {
                    let mut out = Vec::new();
                    let mut k = c;
                    while start.elapsed().as_secs_f64() < seconds {
                        let batch: Vec<&String> =
                            (0..TEXTS_PER_REQUEST).map(|j| &texts[(k + j * 17) % texts.len()]).collect();
                        k += 1;
                        let t = Instant::now();
                        let status = post(port, &json!({ "query": batch }).to_string()).map_err(|e| e.to_string())?;
                        out.push((t.elapsed().as_secs_f64(), status));
                    }
                    Ok(out)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err("client panicked".into()))).collect()
    });
    let wall = start.elapsed().as_secs_f64();
    let _ = Command::new("kill").args(["-TERM", &server.id().to_string()]).status();
    let _ = server.wait();
    let _ = std::fs::remove_dir_all(&dir);
    let mut latencies = Vec::new();
    let mut failed = 0;
    for r in results {
        for (t, status) in r? {
            latencies.push(t);
            failed += usize::from(status != 200);
        }
    }
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| latencies.get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)));
    let requests = latencies.len();
    Ok(json!({
        "name": "serve", "model_params": "20M (medium)", "clients": CLIENTS, "texts_per_request": TEXTS_PER_REQUEST,
        "mean_tokens_per_text": tokens as f64 / texts.len() as f64, "requests": requests, "failed": failed,
        "texts_per_sec": (requests * TEXTS_PER_REQUEST) as f64 / wall,
        "p50_ms": pct(0.5).map(|s| s * 1e3), "p99_ms": pct(0.99).map(|s| s * 1e3),
    }))
}
