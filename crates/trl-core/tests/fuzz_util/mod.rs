//! A small seeded fuzzing harness on stable Rust, shared by the fuzz tests of trl-core and
//! trl-reward (`#[path]`-included there): a SplitMix64 generator, byte and structured-JSON
//! mutators, and a runner that executes every case under `catch_unwind` with a watchdog.
//!
//! Environment:
//! * `TRL_RS_FUZZ_CASES`: cases per target (default: each target's CI budget);
//! * `TRL_RS_FUZZ_SEED`: the seed, decimal or `0x…` hex (default [`DEFAULT_SEED`]);
//! * `TRL_RS_FUZZ_CASE`: run only this case (replay), printing its input first;
//! * `TRL_RS_FUZZ_VERBOSE=1`: print every case's input before it runs (to find the case that
//!   aborts the process, e.g. by a stack overflow, which `catch_unwind` cannot catch);
//! * `TRL_RS_FUZZ_TIMEOUT_S`: seconds one case may take before it counts as a hang (default 20).
//!
//! A failure names the target, seed and case, and shows the input (shortened). Inputs are a
//! pure function of (seed, target, case), so
//! `TRL_RS_FUZZ_SEED=<seed> TRL_RS_FUZZ_CASE=<case> cargo test -p <crate> --test fuzz <target>`
//! regenerates and reruns exactly that case.

#![allow(dead_code)]

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Map, Number, Value};

pub const DEFAULT_SEED: u64 = 0x7e1_2024_f022;

/// SplitMix64: tiny, fast, and good enough to drive mutations.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 when `n == 0`).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }

    /// True with probability `1 / n`.
    pub fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }

    pub fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }

    /// A small size, usually tiny, sometimes up to `max`.
    pub fn size(&mut self, max: usize) -> usize {
        match self.below(8) {
            0..=4 => self.below(9.min(max + 1)),
            5 | 6 => self.below(65.min(max + 1)),
            _ => self.below(max + 1),
        }
    }
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    let parsed = match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => v.parse(),
    };
    Some(parsed.unwrap_or_else(|_| panic!("{name}={v} is not an unsigned integer")))
}

/// Cases to run per target: `TRL_RS_FUZZ_CASES`, else the target's CI budget.
pub fn cases(default: usize) -> usize {
    env_u64("TRL_RS_FUZZ_CASES").map_or(default, |n| n as usize)
}

pub fn seed() -> u64 {
    env_u64("TRL_RS_FUZZ_SEED").unwrap_or(DEFAULT_SEED)
}

/// Each case has its own generator, so that one case replays alone.
pub fn case_seed(seed: u64, target: &str, case: usize) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64; // FNV-1a of the target name
    for b in target.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
    }
    let mut r = Rng::new(seed ^ h ^ (case as u64).wrapping_mul(0xd6e8_feb8_6659_fd93));
    r.next_u64()
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned()).unwrap_or_default()
}

enum Event {
    Started(usize),
    Panicked { case: usize, input: String, message: String },
    Done(usize),
}

/// Runs `cases(default_cases)` cases of `target`: case `i` draws its input with `gen` from its
/// own generator and hands it to `check`, which must not panic (it asserts the properties of
/// the result itself). A panic, or a case running past the timeout, fails the test with
/// everything needed to replay it. Returns the number of cases run.
pub fn fuzz<I: 'static>(
    target: &'static str,
    default_cases: usize,
    gen: impl Fn(&mut Rng) -> I + Send + 'static,
    check: impl Fn(&I) + Send + 'static,
    show: impl Fn(&I) -> String + Send + 'static,
) -> usize {
    let seed = seed();
    let only = env_u64("TRL_RS_FUZZ_CASE").map(|c| c as usize);
    let verbose = only.is_some() || std::env::var("TRL_RS_FUZZ_VERBOSE").is_ok_and(|v| v == "1");
    let n = cases(default_cases);
    let timeout = Duration::from_secs(env_u64("TRL_RS_FUZZ_TIMEOUT_S").unwrap_or(20));
    let (tx, rx) = mpsc::channel();
    // The cases run on a thread of Rust's default 2 MiB stack (as the test threads), so that a
    // deep recursion is found even when the caller has a larger stack.
    std::thread::Builder::new()
        .name(format!("fuzz-{target}"))
        .stack_size(2 << 20)
        .spawn(move || {
            let range = match only {
                Some(c) => c..c + 1,
                None => 0..n,
            };
            let mut ran = 0;
            for case in range {
                let _ = tx.send(Event::Started(case));
                let mut rng = Rng::new(case_seed(seed, target, case));
                let input = gen(&mut rng);
                if verbose {
                    eprintln!("[fuzz {target}] seed {seed:#x} case {case}: {}", show(&input));
                }
                if let Err(p) = catch_unwind(AssertUnwindSafe(|| check(&input))) {
                    let _ = tx.send(Event::Panicked { case, input: show(&input), message: panic_message(&*p) });
                    return;
                }
                ran += 1;
            }
            let _ = tx.send(Event::Done(ran));
        })
        .expect("spawn fuzz thread");
    let replay = |case: usize| {
        let package = env!("CARGO_PKG_NAME");
        format!(
            "replay: TRL_RS_FUZZ_SEED={seed:#x} TRL_RS_FUZZ_CASE={case} cargo test -p {package} --test fuzz {target}"
        )
    };
    let mut current = None;
    let mut since = Instant::now();
    loop {
        match rx.recv_timeout(Duration::from_millis(250)) {
            Ok(Event::Started(case)) => {
                current = Some(case);
                since = Instant::now();
            }
            Ok(Event::Done(ran)) => return ran,
            Ok(Event::Panicked { case, input, message }) => {
                panic!(
                    "fuzz target `{target}`: seed {seed:#x}, case {case} panicked: {message}\ninput: {input}\n{}",
                    replay(case)
                )
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if since.elapsed() > timeout {
                    let case = current.unwrap_or(0);
                    panic!(
                        "fuzz target `{target}`: seed {seed:#x}, case {case} still runs after {:?} (a hang?)\n{}",
                        timeout,
                        replay(case)
                    );
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => panic!("fuzz target `{target}`: the fuzz thread died"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Showing inputs
// ---------------------------------------------------------------------------------------------

/// Hex of the first bytes, then the length.
pub fn show_bytes(b: &[u8]) -> String {
    const MAX: usize = 512;
    let hex: String = b.iter().take(MAX).map(|x| format!("{x:02x}")).collect();
    if b.len() > MAX {
        format!("{hex}… ({} bytes)", b.len())
    } else {
        format!("{hex} ({} bytes)", b.len())
    }
}

/// The text escaped (`{:?}`), shortened in the middle.
pub fn show_text(s: &str) -> String {
    const MAX: usize = 3000;
    if s.chars().count() <= MAX {
        return format!("{s:?}");
    }
    let head: String = s.chars().take(MAX / 2).collect();
    let tail: String = s.chars().skip(s.chars().count() - MAX / 2).collect();
    format!("{head:?} … {tail:?} ({} bytes)", s.len())
}

// ---------------------------------------------------------------------------------------------
// Byte mutations
// ---------------------------------------------------------------------------------------------

pub const INTERESTING_U64: &[u64] = &[
    0,
    1,
    2,
    7,
    8,
    0x7f,
    0x80,
    0xff,
    0x100,
    0x7fff,
    0x8000,
    0xffff,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    1 << 32,
    1 << 40,
    100_000_001,
    i64::MAX as u64,
    1 << 63,
    u64::MAX - 8,
    u64::MAX,
];

/// Applies 1–4 random byte-level mutations: bit flips, interesting bytes (0, 0xff, 0x7f,
/// 0x80), random bytes, truncation, duplicated or deleted chunks, interesting little-endian
/// integers, and `dict` tokens inserted or written over.
pub fn mutate_bytes(rng: &mut Rng, data: &mut Vec<u8>, dict: &[&[u8]]) {
    for _ in 0..rng.range(1, 4) {
        let len = data.len();
        let at = rng.below(len + 1);
        match rng.below(11) {
            0 if len > 0 => data[at.min(len - 1)] ^= 1 << rng.below(8),
            1 if len > 0 => data[at.min(len - 1)] = *rng.pick(&[0u8, 0xff, 0x7f, 0x80, 1, b'0', b'"', b'{']),
            2 if len > 0 => data[at.min(len - 1)] = rng.below(256) as u8,
            3 => data.truncate(at),
            4 if len > 0 => {
                let start = rng.below(len);
                let n = rng.size(len - start);
                let chunk = data[start..start + n].to_vec();
                let times = if rng.one_in(8) { rng.range(2, 64) } else { 1 };
                for _ in 0..times {
                    data.splice(at..at, chunk.iter().copied());
                }
            }
            5 if len > 0 => {
                let n = rng.size(len - at.min(len));
                data.drain(at.min(len)..(at + n).min(len));
            }
            6 | 7 => {
                let v = if rng.one_in(3) { rng.next_u64() } else { *rng.pick(INTERESTING_U64) };
                let width = *rng.pick(&[1usize, 2, 4, 8]);
                let bytes = &v.to_le_bytes()[..width];
                let end = (at + width).min(len);
                data.splice(at..end, bytes.iter().copied());
            }
            8 | 9 if !dict.is_empty() => {
                let tok = *rng.pick(dict);
                if rng.one_in(2) {
                    data.splice(at..at, tok.iter().copied());
                } else {
                    let end = (at + tok.len()).min(len);
                    data.splice(at..end, tok.iter().copied());
                }
            }
            _ => {
                let n = rng.size(16);
                data.splice(at..at, (0..n).map(|_| rng.below(256) as u8));
            }
        }
    }
}

/// [`mutate_bytes`] on text, kept valid UTF-8 (invalid sequences become U+FFFD).
pub fn mutate_text(rng: &mut Rng, text: &str, dict: &[&[u8]]) -> String {
    let mut b = text.as_bytes().to_vec();
    mutate_bytes(rng, &mut b, dict);
    String::from_utf8_lossy(&b).into_owned()
}

// ---------------------------------------------------------------------------------------------
// Structured JSON mutations
// ---------------------------------------------------------------------------------------------

/// A random string: empty, short ASCII, unicode and control characters, or very long.
pub fn random_string(rng: &mut Rng) -> String {
    const PIECES: &[&str] = &[
        "", "a", "x", "0", "-1", "é", "💥", "\u{0}", "\n", "\t", "\"", "'", "\\", "{", "}", "[", "]", "{{", "}}", "{%",
        "%}", ".", "..", "/", "../", "*", "(", ")", "|", "\u{feff}", "\u{202e}", "NaN", "inf", "null", "true", " ",
    ];
    match rng.below(10) {
        0 => String::new(),
        1 => "A".repeat(*rng.pick(&[1_000, 70_000, 400_000])),
        _ => (0..rng.size(12)).map(|_| *rng.pick(PIECES)).collect(),
    }
}

/// An "interesting" JSON value: boundary numbers, odd strings, empty and nested containers.
pub fn interesting_json(rng: &mut Rng, keys: &[&str]) -> Value {
    let keys = if keys.is_empty() { &["a", ""][..] } else { keys };
    match rng.below(24) {
        0 => Value::from(0),
        1 => Value::from(-1),
        2 => Value::from(1u64 << 63),
        3 => Value::from(u64::MAX),
        4 => Value::from(i64::MIN),
        5 => Value::from(1e308),
        6 => Value::from(-1e308),
        7 => Value::from(5e-324),
        8 => Value::from(0.5),
        9 => Value::from(-0.0),
        10 => Value::from(rng.below(10) as u64),
        11 => Value::String(String::new()),
        12 => Value::String(random_string(rng)),
        13 => Value::Null,
        14 => Value::Bool(rng.one_in(2)),
        15 => Value::Array(Vec::new()),
        16 => Value::Object(Map::new()),
        17 => {
            // nested arrays, sometimes past serde_json's recursion limit (128) once in text
            let depth = *rng.pick(&[2usize, 10, 100, 127, 130]);
            (0..depth).fold(Value::from(1), |v, _| Value::Array(vec![v]))
        }
        18 => {
            let depth = rng.range(1, 20);
            let k = rng.pick(keys).to_string();
            (0..depth).fold(Value::Null, |v, _| Value::Object(Map::from_iter([(k.clone(), v)])))
        }
        19 => Value::Array((0..rng.size(40)).map(|_| Value::from(rng.below(100) as u64)).collect()),
        20 => Value::Array((0..rng.size(8)).map(|_| Value::String(random_string(rng))).collect()),
        21 => Value::String(rng.pick(keys).to_string()),
        22 => Value::Number(Number::from_f64(rng.next_u64() as f64 / 7.0).expect("finite")),
        _ => {
            Value::Object((0..rng.size(6)).map(|_| (rng.pick(keys).to_string(), interesting_json_leaf(rng))).collect())
        }
    }
}

fn interesting_json_leaf(rng: &mut Rng) -> Value {
    match rng.below(6) {
        0 => Value::from(rng.below(1000) as u64),
        1 => Value::String(random_string(rng)),
        2 => Value::Null,
        3 => Value::Bool(true),
        4 => Value::from(-1),
        _ => Value::from(1.5),
    }
}

/// Number of nodes in `v`.
fn count(v: &Value) -> usize {
    1 + match v {
        Value::Array(a) => a.iter().map(count).sum(),
        Value::Object(o) => o.values().map(count).sum(),
        _ => 0,
    }
}

/// The `i`-th node in pre-order.
fn nth_mut(v: &mut Value, i: usize) -> &mut Value {
    fn go<'a>(v: &'a mut Value, i: &mut usize) -> Option<&'a mut Value> {
        if *i == 0 {
            return Some(v);
        }
        *i -= 1;
        match v {
            Value::Array(a) => a.iter_mut().find_map(|x| go(x, i)),
            Value::Object(o) => o.values_mut().find_map(|x| go(x, i)),
            _ => None,
        }
    }
    let mut i = i;
    go(v, &mut i).expect("index within count")
}

/// The wrong type for a value: numbers become strings, strings numbers, containers scalars…
fn wrong_type(rng: &mut Rng, v: &Value) -> Value {
    match v {
        Value::Number(n) => Value::String(n.to_string()),
        Value::String(s) => s.parse::<f64>().ok().and_then(Number::from_f64).map_or(Value::from(1), Value::Number),
        Value::Bool(b) => Value::String(b.to_string()),
        Value::Array(a) if !a.is_empty() => a[0].clone(),
        Value::Object(o) if !o.is_empty() => Value::Array(o.values().cloned().collect()),
        _ => interesting_json(rng, &[]),
    }
}

/// Applies 1–3 structured mutations to `v`: a node replaced by an interesting value, the wrong
/// type or a copy of another node; a key dropped, added (from `keys`) or renamed; an array
/// element dropped, duplicated or added.
pub fn mutate_json(rng: &mut Rng, v: &mut Value, keys: &[&str]) {
    for _ in 0..rng.range(1, 3) {
        let n = count(v);
        let i = rng.below(n);
        let donor = if rng.one_in(4) { Some(nth_mut(v, rng.below(n)).clone()) } else { None };
        let node = nth_mut(v, i);
        match rng.below(8) {
            0 | 1 => *node = interesting_json(rng, keys),
            2 => *node = wrong_type(rng, node),
            3 if donor.is_some() => *node = donor.expect("donor"),
            _ => match node {
                Value::Object(o) => match rng.below(4) {
                    0 if !o.is_empty() => {
                        let k = o.keys().nth(rng.below(o.len())).expect("key").clone();
                        o.shift_remove(&k);
                    }
                    1 if !o.is_empty() => {
                        let k = o.keys().nth(rng.below(o.len())).expect("key").clone();
                        let val = o.shift_remove(&k).expect("value");
                        o.insert(rng.pick(keys).to_string(), val);
                    }
                    _ => {
                        let k = if rng.one_in(4) { random_string(rng) } else { rng.pick(keys).to_string() };
                        o.insert(k, interesting_json(rng, keys));
                    }
                },
                Value::Array(a) => match rng.below(4) {
                    0 if !a.is_empty() => {
                        a.remove(rng.below(a.len()));
                    }
                    1 if !a.is_empty() => {
                        let x = a[rng.below(a.len())].clone();
                        a.insert(rng.below(a.len() + 1), x);
                    }
                    2 => a.clear(),
                    _ => a.push(interesting_json(rng, keys)),
                },
                other => *other = interesting_json(rng, keys),
            },
        }
    }
}

/// `v` as JSON text, sometimes with a key of some object written twice (serde_json keeps the
/// last one), sometimes pretty-printed.
pub fn json_text(rng: &mut Rng, v: &Value) -> String {
    fn write(rng: &mut Rng, v: &Value, out: &mut String) {
        match v {
            Value::Array(a) => {
                out.push('[');
                for (i, x) in a.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write(rng, x, out);
                }
                out.push(']');
            }
            Value::Object(o) => {
                out.push('{');
                let dup = if !o.is_empty() && rng.one_in(6) { Some(rng.below(o.len())) } else { None };
                for (i, (k, x)) in o.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&serde_json::to_string(k).expect("key"));
                    out.push(':');
                    write(rng, x, out);
                    if dup == Some(i) {
                        out.push(',');
                        out.push_str(&serde_json::to_string(k).expect("key"));
                        out.push(':');
                        let other = if rng.one_in(2) { interesting_json(rng, &[]) } else { x.clone() };
                        write(rng, &other, out);
                    }
                }
                out.push('}');
            }
            leaf => out.push_str(&serde_json::to_string(leaf).expect("leaf")),
        }
    }
    if rng.one_in(8) {
        return serde_json::to_string_pretty(v).expect("json");
    }
    let mut out = String::new();
    write(rng, v, &mut out);
    out
}

/// A JSON document derived from `seed`: structured mutations, then sometimes text ones.
pub fn mutated_json_text(rng: &mut Rng, seed: &Value, keys: &[&str], dict: &[&[u8]]) -> String {
    let mut v = seed.clone();
    if !rng.one_in(10) {
        mutate_json(rng, &mut v, keys);
    }
    let text = json_text(rng, &v);
    if rng.one_in(4) {
        mutate_text(rng, &text, dict)
    } else {
        text
    }
}

/// Tokens of JSON syntax for text-level mutations of JSON documents.
pub const JSON_DICT: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b":",
    b",",
    b"null",
    b"true",
    b"-",
    b"1e308",
    b"-0",
    b"18446744073709551616",
    b"\\u0000",
    b"\\ud800",
    b"\xff",
    b"\xef\xbb\xbf",
    b"[[[[[[[[[[[[[[[[",
    b"}}}}",
];
