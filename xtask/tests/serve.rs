//! `cargo xtask serve` (issue 14): the server started on a free port, each endpoint sent the
//! payloads its clients send, answers compared with `cargo xtask score` on the same texts;
//! 64 concurrent clients; malformed bodies, over-long inputs and a full queue; SIGTERM.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

fn fixture(name: &str) -> String {
    fixtures().join(name).to_string_lossy().into_owned()
}

/// Rewards agree to this: the same f32 forward pass, batched differently (row order and
/// padding change the summation order of nothing but the padding-free gathers).
const TOL: f32 = 1e-5;

/// A running server; killed when dropped.
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(args: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_xtask"))
            .args(["serve", "--port", "0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("xtask runs");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let Some(port) = line.trim().rsplit(':').next().and_then(|p| p.parse().ok()) else {
            let mut err = String::new();
            child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
            panic!("server did not start: {line:?} {err}");
        };
        Server { child, port }
    }

    fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(("127.0.0.1", self.port)).expect("server accepts");
        s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        s
    }

    /// One request on its own connection; returns the status and the body (JSON when it parses).
    fn call(&self, method: &str, path: &str, body: &str) -> (u16, Value) {
        let mut s = self.connect();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        read_response(&mut s)
    }

    fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call("POST", path, &body.to_string())
    }

    /// POST that must succeed.
    fn ok(&self, path: &str, body: Value) -> Value {
        let (status, v) = self.post(path, body);
        assert_eq!(status, 200, "{path}: {v}");
        v
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read_response(s: &mut TcpStream) -> (u16, Value) {
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("not HTTP: {text:?}"));
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap();
    (status, serde_json::from_str(body).unwrap_or_else(|_| Value::String(body.into())))
}

/// `cargo xtask score` rewards of JSONL `rows` (first label of each), with `extra` flags.
fn score_cli(model: &str, rows: &[Value], extra: &[&str]) -> Vec<f32> {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("rows.jsonl");
    std::fs::write(&input, rows.iter().map(|r| format!("{r}\n")).collect::<String>()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["score", "--model", model, "--input", input.to_str().unwrap()])
        .args(extra)
        .output()
        .unwrap();
    assert!(out.status.success(), "score failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["reward"].as_f64().unwrap() as f32)
        .collect()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array().unwrap_or_else(|| panic!("not a list: {v}")).iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

fn assert_close(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: {got:?} vs {want:?}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= TOL, "{what}[{i}]: {g} vs {w} (score)");
    }
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

const TEXTS: [&str; 5] = [
    "The quick brown fox",
    "jumps over the lazy dog, and then it keeps running for a while longer than the others",
    "a",
    "Paris is the capital of France.",
    "hello world",
];

fn text_rows() -> Vec<Value> {
    TEXTS.iter().map(|t| json!({ "text": t })).collect()
}

#[test]
fn every_endpoint_equals_score() {
    let model = fixture("gpt2-rm");
    let want = score_cli(&model, &text_rows(), &["--no-eos"]);
    let server = Server::start(&["--model", &model]);

    let r = server.ok("/get_reward", json!({ "query": TEXTS, "prompts": TEXTS, "labels": TEXTS }));
    assert_close("/get_reward rewards", &floats(&r["rewards"]), &want);
    assert_close("/get_reward scores", &floats(&r["scores"]), &want);
    assert!(r["extra_logs"].is_object());

    let r = server.ok("/classify", json!({ "model": "gpt2-rm", "input": TEXTS }));
    assert_eq!(r["object"], "list");
    assert_eq!(r["usage"]["completion_tokens"], 0);
    assert!(r["usage"]["prompt_tokens"].as_u64().unwrap() >= TEXTS.len() as u64);
    let data = r["data"].as_array().unwrap();
    let probs: Vec<f32> = data.iter().map(|d| floats(&d["probs"])[0]).collect();
    assert_close("/classify probs (raw logits)", &probs, &want);
    assert!(data.iter().enumerate().all(|(i, d)| d["index"] == i && d["num_classes"] == 1 && d["label"] == "LABEL_0"));
    let r = server.ok("/classify", json!({ "input": TEXTS[1], "use_activation": true }));
    assert_close("/classify use_activation", &floats(&r["data"][0]["probs"]), &[sigmoid(want[1])]);

    let r = server.ok("/predict", json!({ "inputs": TEXTS, "raw_scores": true }));
    let got: Vec<f32> = r.as_array().unwrap().iter().map(|l| l[0]["score"].as_f64().unwrap() as f32).collect();
    assert_close("/predict batch raw", &got, &want);
    let r = server.ok("/predict", json!({ "inputs": TEXTS[3] }));
    assert_eq!(r[0]["label"], "LABEL_0");
    assert_close("/predict single (sigmoid)", &[r[0]["score"].as_f64().unwrap() as f32], &[sigmoid(want[3])]);

    // pairs: text_1 then text_2, as `score` reads {"prompt", "response"}
    let (q, docs) = ("Question: where is Paris?", [" In France.", " On the moon.", " Nobody knows, really."]);
    let pair_rows: Vec<Value> = docs.iter().map(|d| json!({ "prompt": q, "response": d })).collect();
    let want_pairs = score_cli(&model, &pair_rows, &["--no-eos"]);
    let r = server.ok("/score", json!({ "model": "gpt2-rm", "text_1": q, "text_2": docs }));
    let got: Vec<f32> = r["data"].as_array().unwrap().iter().map(|d| d["score"].as_f64().unwrap() as f32).collect();
    assert_close("/score 1 to N", &got, &want_pairs);
    assert!(r["data"].as_array().unwrap().iter().all(|d| d["object"] == "score"));
    let r = server.ok("/score", json!({ "text_1": [q, q, q], "text_2": docs }));
    assert_close("/score N to N", &[r["data"][2]["score"].as_f64().unwrap() as f32], &want_pairs[2..]);
    let r = server.ok("/predict", json!({ "inputs": [[q, docs[0]], [q, docs[1]]], "raw_scores": true }));
    let got: Vec<f32> = r.as_array().unwrap().iter().map(|l| l[0]["score"].as_f64().unwrap() as f32).collect();
    assert_close("/predict pairs", &got, &want_pairs[..2]);
    let r = server.ok("/rerank", json!({ "query": q, "texts": docs, "raw_scores": true, "return_text": true }));
    let ranked = r.as_array().unwrap();
    assert_eq!(ranked.len(), 3);
    for w in ranked.windows(2) {
        assert!(w[0]["score"].as_f64() >= w[1]["score"].as_f64(), "rerank is best first: {r}");
    }
    for e in ranked {
        let i = e["index"].as_u64().unwrap() as usize;
        assert_eq!(e["text"], docs[i]);
        assert_close("/rerank", &[e["score"].as_f64().unwrap() as f32], &[want_pairs[i]]);
    }

    // per-token scores: one per token, the last one the reward
    let r = server.ok("/pooling", json!({ "input": [TEXTS[0], TEXTS[1]] }));
    for (k, d) in r["data"].as_array().unwrap().iter().enumerate() {
        assert_eq!(d["object"], "pooling");
        let per_token = d["data"].as_array().unwrap();
        assert!(per_token.len() > 1);
        assert_close("/pooling last token", &floats(per_token.last().unwrap()), &want[k..k + 1]);
    }

    let r = server.ok("/classify", json!({ "input": TEXTS }));
    assert_eq!(r["model"], "gpt2-rm");
    let (status, models) = server.call("GET", "/v1/models", "");
    assert_eq!(status, 200);
    assert_eq!(models["data"][0]["id"], "gpt2-rm");
    assert_eq!(models["data"][0]["max_model_len"], 128);
    let (status, info) = server.call("GET", "/info", "");
    assert_eq!(status, 200);
    assert_eq!(info["model_type"]["classifier"]["id2label"]["0"], "LABEL_0");
    assert_eq!(info["max_input_length"], 128);
    assert_eq!(server.call("GET", "/health", "").0, 200);
    let (status, metrics) = server.call("GET", "/metrics", "");
    assert_eq!(status, 200);
    let metrics = metrics.as_str().unwrap();
    assert!(metrics.contains("trl_serve_requests_total{route=\"/get_reward\",status=\"200\"} 1"), "{metrics}");
    for name in ["trl_serve_queue_depth", "trl_serve_batch_texts_count", "trl_serve_batch_tokens_sum"] {
        assert!(metrics.contains(name), "{name} missing: {metrics}");
    }
    assert!(metrics.contains("trl_serve_request_duration_seconds_bucket{route=\"/classify\""), "{metrics}");
}

/// A DeBERTa cross-encoder: pairs are tokenized as pairs (`[CLS] q [SEP] d [SEP]`) on every
/// pair route, as `score` does; both labels come back by name; per-token output and
/// `--append-eos` are refused, naming what to use instead.
#[test]
fn an_encoder_reward_model_scores_text_pairs() {
    let model = fixture("deberta_v2-conv-rm");
    let (q, docs) = ("Which answer is better, A or B?", ["A, because it checks the result.", "I do not know."]);
    let pair_rows: Vec<Value> = docs.iter().map(|d| json!({ "prompt": q, "response": d })).collect();
    let want = score_cli(&model, &pair_rows, &[]);
    let server = Server::start(&["--model", &model]);
    let r = server.ok("/score", json!({ "text_1": q, "text_2": docs }));
    let got: Vec<f32> = r["data"].as_array().unwrap().iter().map(|d| d["score"].as_f64().unwrap() as f32).collect();
    assert_close("/score pairs", &got, &want);
    let r = server.ok("/predict", json!({ "inputs": [[q, docs[0]], [q, docs[1]]], "raw_scores": true }));
    // each input's labels, best first; `score` reports the first label, "bad"
    let bad = |l: &Value| l.as_array().unwrap().iter().find(|s| s["label"] == "bad").unwrap()["score"].clone();
    let got: Vec<f32> = r.as_array().unwrap().iter().map(|l| bad(l).as_f64().unwrap() as f32).collect();
    assert_close("/predict pairs", &got, &want);
    let r = server.ok("/classify", json!({ "input": [q] }));
    assert_eq!(r["data"][0]["num_classes"], 2);
    let (status, body) = server.post("/pooling", json!({ "input": [q] }));
    assert_eq!(status, 422, "{body}");
    assert!(body.to_string().contains("no per-token scores"), "{body}");
    drop(server);
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["serve", "--port", "0", "--model", &model, "--append-eos"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--append-eos is for causal reward models"), "{err}");
}

#[test]
fn append_eos_matches_score_and_conversations_use_the_template() {
    let dir = tempfile::tempdir().unwrap();
    let model = trl_tests::copy_fixture("gpt2-rm", dir.path());
    let cfg_path = model.join("tokenizer_config.json");
    let mut cfg: Value = serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    // a template that writes the BOS itself, and a tokenizer that adds one to plain text (as
    // Llama 3's do): a conversation must get one BOS, not two
    cfg["chat_template"] = json!("{{ bos_token }}{% for m in messages %}<{{ m.role }}> {{ m.content }}\n{% endfor %}");
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let tok_path = model.join("tokenizer.json");
    let mut tok: Value = serde_json::from_str(&std::fs::read_to_string(&tok_path).unwrap()).unwrap();
    let bos = json!({ "SpecialToken": { "id": "<|endoftext|>", "type_id": 0 } });
    tok["post_processor"] = json!({
        "type": "TemplateProcessing",
        "single": [bos, { "Sequence": { "id": "A", "type_id": 0 } }],
        "pair": [bos, { "Sequence": { "id": "A", "type_id": 0 } }, { "Sequence": { "id": "B", "type_id": 1 } }],
        "special_tokens": { "<|endoftext|>": { "id": "<|endoftext|>", "ids": [0], "tokens": ["<|endoftext|>"] } },
    });
    std::fs::write(&tok_path, tok.to_string()).unwrap();
    let model = model.to_str().unwrap();

    let want = score_cli(model, &text_rows(), &[]);
    let server = Server::start(&["--model", model, "--append-eos"]);
    // the older OpenRLHF client sends texts that may already end in EOS or padding
    let queries: Vec<String> =
        TEXTS.iter().enumerate().map(|(i, t)| format!("{t}{}", ["", "<|endoftext|>", "<pad><pad>"][i % 3])).collect();
    let r = server.ok("/get_reward", json!({ "query": queries }));
    assert_close("/get_reward --append-eos", &floats(&r["rewards"]), &want);
    let r = server.ok("/predict", json!({ "inputs": TEXTS, "raw_scores": true }));
    let got: Vec<f32> = r.as_array().unwrap().iter().map(|l| l[0]["score"].as_f64().unwrap() as f32).collect();
    assert_close("/predict --append-eos", &got, &want);

    let messages =
        json!([{ "role": "user", "content": "Where is Paris?" }, { "role": "assistant", "content": "In France." }]);
    let want = score_cli(model, &[json!({ "text": messages })], &[]);
    let r = server.ok("/classify", json!({ "messages": messages }));
    assert_close("/classify messages", &floats(&r["data"][0]["probs"]), &want);
    // the rendered text as plain `input` gets the tokenizer's BOS on top of the template's
    // (and, with --append-eos, an EOS)
    let rendered = "<|endoftext|><user> Where is Paris?\n<assistant> In France.\n";
    let plain = server.ok("/classify", json!({ "input": rendered }));
    let tokens = |v: &Value| v["usage"]["prompt_tokens"].as_u64().unwrap();
    assert_eq!(tokens(&r) + 2, tokens(&plain), "a conversation gets the template's BOS only: {r} {plain}");
}

#[test]
fn adapters_are_chosen_per_request() {
    let (base, adapter) = (fixture("llama-rm"), fixture("lora-llama-rm"));
    let rows = text_rows();
    let want_base = score_cli(&base, &rows, &["--no-eos"]);
    let want_adapter = score_cli(&base, &rows, &["--no-eos", "--adapter", &adapter]);
    assert!(want_base.iter().zip(&want_adapter).any(|(a, b)| (a - b).abs() > 1e-3), "the adapter changes rewards");
    let server = Server::start(&[
        "--model",
        &base,
        "--served-model-name",
        "base",
        "--adapter",
        &format!("helpful={adapter}"),
        "--adapter",
        &format!("harmless={adapter}"),
    ]);
    let (_, models) = server.call("GET", "/v1/models", "");
    let ids: Vec<&str> = models["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["base", "helpful", "harmless"]);
    // requests for the base and both adapters at once, sharing the queue
    std::thread::scope(|scope| {
        for (name, want) in [("base", &want_base), ("helpful", &want_adapter), ("harmless", &want_adapter)] {
            let server = &server;
            scope.spawn(move || {
                for _ in 0..3 {
                    let r = server.ok("/classify", json!({ "model": name, "input": TEXTS }));
                    let got: Vec<f32> = r["data"].as_array().unwrap().iter().map(|d| floats(&d["probs"])[0]).collect();
                    assert_close(name, &got, want);
                }
            });
        }
    });
    let r = server.ok("/get_reward", json!({ "query": TEXTS }));
    assert_close("/get_reward on the base", &floats(&r["rewards"]), &want_base);
    let (status, e) = server.post("/classify", json!({ "model": "nope", "input": "x" }));
    assert_eq!(status, 404);
    assert!(e["error"].as_str().unwrap().contains("base, helpful, harmless"), "{e}");
}

#[test]
fn value_head_models_serve_per_token_values() {
    let model = fixture("gpt2-vhead");
    let server = Server::start(&["--model", &model]);
    let r = server.ok("/pooling", json!({ "input": [TEXTS[0], TEXTS[4]] }));
    // the forward command's values for the same texts
    let dir = tempfile::tempdir().unwrap();
    let texts = dir.path().join("texts.json");
    std::fs::write(&texts, json!([TEXTS[0], TEXTS[4]]).to_string()).unwrap();
    let out = dir.path().join("out.safetensors");
    let status = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["forward", "--model", &model, "--input", texts.to_str().unwrap(), "--out", out.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(status.success());
    let sd = trl_core::checkpoint::load_safetensors(&out).unwrap();
    let values = sd.get("values").unwrap().clone().convert::<f32>().to_vec::<f32>().unwrap();
    let mask = sd.get("attention_mask").unwrap().clone().convert::<i64>().to_vec::<i64>().unwrap();
    let seq = mask.len() / 2;
    for b in 0..2 {
        let want: Vec<f32> = (0..seq).filter(|&t| mask[b * seq + t] != 0).map(|t| values[b * seq + t]).collect();
        assert_close("/pooling values", &floats(&r["data"][b]["data"]), &want);
    }
    let (status, e) = server.post("/get_reward", json!({ "query": ["x"] }));
    assert_eq!(status, 422);
    assert!(e["error"].as_str().unwrap().contains("/pooling"), "{e}");
}

#[test]
fn sixty_four_clients_lose_nothing() {
    let model = fixture("gpt2-rm");
    let want = score_cli(&model, &text_rows(), &["--no-eos"]);
    let server = Server::start(&["--model", &model, "--max-batch-tokens", "512"]);
    std::thread::scope(|scope| {
        for c in 0..64 {
            let (server, want) = (&server, &want);
            scope.spawn(move || {
                for k in 0..20 {
                    let (a, b) = ((c + k) % TEXTS.len(), (c * 7 + k) % TEXTS.len());
                    let r = server.ok("/get_reward", json!({ "query": [TEXTS[a], TEXTS[b]] }));
                    assert_close("concurrent /get_reward", &floats(&r["rewards"]), &[want[a], want[b]]);
                }
            });
        }
    });
    let (_, metrics) = server.call("GET", "/metrics", "");
    let metrics = metrics.as_str().unwrap();
    assert!(metrics.contains("trl_serve_requests_total{route=\"/get_reward\",status=\"200\"} 1280"), "{metrics}");
    assert!(!metrics.contains("status=\"5"), "no 5xx: {metrics}");
}

#[test]
fn bad_requests_get_their_4xx_and_the_server_lives_on() {
    let model = fixture("gpt2-rm");
    let server = Server::start(&["--model", &model, "--max-client-batch-size", "4", "--max-input-length", "16"]);
    let long = "word ".repeat(40);
    let cases: Vec<(&str, String, u16)> = vec![
        ("/get_reward", "{\"query\": [".into(), 400),
        ("/get_reward", "not json at all".into(), 400),
        ("/get_reward", json!({ "query": "not a list" }).to_string(), 422),
        ("/get_reward", json!({ "queries": ["x"] }).to_string(), 422),
        ("/get_reward", json!({ "query": [] }).to_string(), 422),
        ("/get_reward", json!({ "query": ["a"], "prompts": ["a", "b"] }).to_string(), 422),
        ("/get_reward", json!({ "query": ["a", "b", "c", "d", "e"] }).to_string(), 413),
        ("/get_reward", json!({ "query": [long] }).to_string(), 413),
        ("/predict", json!({ "inputs": long }).to_string(), 413),
        ("/predict", json!({ "inputs": "" }).to_string(), 422),
        ("/score", json!({ "text_1": ["a", "b"], "text_2": ["a", "b", "c"] }).to_string(), 422),
        ("/classify", json!({ "model": "gpt2-rm" }).to_string(), 422),
        ("/classify", json!({ "input": "x", "model": "other" }).to_string(), 404),
        ("/rerank", json!({ "query": "q" }).to_string(), 422),
        ("/nowhere", "{}".into(), 404),
    ];
    for (path, body, want) in &cases {
        let (status, e) = server.call("POST", path, body);
        assert_eq!(status, *want, "{path} {body}: {e}");
        assert!(e["error"].as_str().is_some_and(|m| !m.is_empty()), "{path}: JSON error expected, got {e}");
    }
    let (status, e) = server.call("GET", "/get_reward", "");
    assert_eq!(status, 405, "{e}");
    assert!(e["error"].is_string());
    // truncation asked for: the over-long input is cut to 16 tokens and scored
    let r = server.ok("/predict", json!({ "inputs": long, "truncate": true, "raw_scores": true }));
    let cut = r[0]["score"].as_f64().unwrap() as f32;
    let want =
        score_cli(&model, &[json!({ "text": long })], &["--no-eos", "--max-length", "16", "--truncation", "right"]);
    assert_close("truncated to its first 16 tokens", &[cut], &want);
    assert_eq!(server.post("/get_reward", json!({ "query": ["still here"] })).0, 200);
}

/// Sends the headers and part of the body of a /get_reward request, so the request is in
/// flight (holding its permit) until [`finish`] sends the rest. The server must run with
/// `--max-concurrent-requests 1`: the request is known to be in flight once another gets a
/// 429 (returned). A probe may hold the one permit at the moment the slow request arrives
/// (then the slow one is refused), or the server may not have read its headers yet: either
/// way the attempt starts again on a new connection.
fn start_slow_request(server: &Server) -> (TcpStream, String, Value) {
    let body = json!({ "query": ["slow"] }).to_string();
    for _ in 0..100 {
        let mut s = server.connect();
        write!(
            s,
            "POST /get_reward HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{}",
            body.len(),
            &body[..5]
        )
        .unwrap();
        s.flush().unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let (status, e) = server.post("/get_reward", json!({ "query": ["x"] }));
        if status == 429 {
            return (s, body[5..].to_string(), e);
        }
        assert_eq!(status, 200, "{e}");
    }
    panic!("the slow request never took the server's one permit");
}

fn finish(mut s: TcpStream, rest: &str) -> (u16, Value) {
    s.write_all(rest.as_bytes()).unwrap();
    read_response(&mut s)
}

#[test]
fn a_full_queue_gets_429() {
    let server = Server::start(&["--model", &fixture("gpt2-rm"), "--max-concurrent-requests", "1"]);
    let (slow, rest, e) = start_slow_request(&server);
    assert!(e["error"].as_str().unwrap().contains("--max-concurrent-requests 1"), "{e}");
    assert_eq!(server.call("GET", "/health", "").0, 200, "health is not limited");
    assert_eq!(finish(slow, &rest).0, 200);
    assert_eq!(server.post("/get_reward", json!({ "query": ["x"] })).0, 200, "the permit came back");
}

#[cfg(unix)]
#[test]
fn sigterm_finishes_requests_in_flight() {
    let mut server = Server::start(&["--model", &fixture("gpt2-rm"), "--max-concurrent-requests", "1"]);
    let (slow, rest, _) = start_slow_request(&server);
    let pid = server.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let refused = (0..200).any(|_| {
        std::thread::sleep(Duration::from_millis(50));
        TcpStream::connect(("127.0.0.1", server.port)).is_err()
    });
    assert!(refused, "new connections are refused after SIGTERM");
    let (status, r) = finish(slow, &rest);
    assert_eq!(status, 200, "{r}");
    assert_eq!(floats(&r["rewards"]).len(), 1);
    let exit = server.child.wait().unwrap();
    assert!(exit.success(), "{exit:?}");
}

#[test]
fn normalized_rewards_equal_score_normalize() {
    let dir = tempfile::tempdir().unwrap();
    let model = trl_tests::copy_fixture("gpt2-rm", dir.path());
    let cfg_path = model.join("config.json");
    let mut cfg: Value = serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["mean"] = json!(-0.5);
    cfg["std"] = json!(0.25);
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let model = model.to_str().unwrap();
    let want = score_cli(model, &text_rows(), &["--no-eos", "--normalize"]);
    let raw = score_cli(model, &text_rows(), &["--no-eos"]);
    assert!((want[0] - (raw[0] + 0.5) / 0.25).abs() < 1e-4);
    let server = Server::start(&["--model", model, "--normalize-reward"]);
    assert_close(
        "/get_reward normalized",
        &floats(&server.ok("/get_reward", json!({ "query": TEXTS }))["rewards"]),
        &want,
    );
    let (_, info) = server.call("GET", "/info", "");
    assert_eq!(info["normalize_reward"], json!({ "mean": -0.5, "std": 0.25 }));
}

/// `--dtype` and `--quantize` reach the served model: its rewards are `score`'s with the same
/// flags, `/info` names the dtype held, and int8 rewards differ from f32 ones.
#[test]
fn dtype_and_quantize_are_served_as_score_computes_them() {
    let bf16 = fixture("llama-rm-bf16");
    let server = Server::start(&["--model", &bf16]);
    let got = floats(&server.ok("/get_reward", json!({ "query": TEXTS }))["rewards"]);
    assert_close("/get_reward bf16", &got, &score_cli(&bf16, &text_rows(), &["--no-eos"]));
    assert_eq!(server.call("GET", "/info", "").1["model_dtype"], "bfloat16");
    let f32_rm = fixture("llama-rm");
    let server = Server::start(&["--model", &f32_rm, "--quantize", "int8"]);
    let got = floats(&server.ok("/get_reward", json!({ "query": TEXTS }))["rewards"]);
    assert_close("/get_reward int8", &got, &score_cli(&f32_rm, &text_rows(), &["--no-eos", "--quantize", "int8"]));
    let plain = score_cli(&f32_rm, &text_rows(), &["--no-eos"]);
    assert!(got.iter().zip(&plain).any(|(a, b)| (a - b).abs() > 1e-4), "int8 changed nothing: {got:?}");
}

#[test]
fn bad_flags_fail_at_start_naming_the_fix() {
    let rm = fixture("gpt2-rm");
    let cases: [(&[&str], &str); 5] = [
        (&["--model", &rm, "--max-batch-tokens", "10"], "raise it or lower --max-input-length"),
        (&["--model", &rm, "--max-input-length", "100000"], "larger than the model's 128 positions"),
        (&["--model", &rm, "--normalize-reward"], "train with normalize_reward = true"),
        (&["--model", &rm, "--request-timeout", "0"], "--request-timeout must be a positive"),
        (&["--model", &fixture("gpt2")], "is a causal LM"),
    ];
    for (args, want) in cases {
        let out = Command::new(env!("CARGO_BIN_EXE_xtask")).args(["serve", "--port", "0"]).args(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(want), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}
