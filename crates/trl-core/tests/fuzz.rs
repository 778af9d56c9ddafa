//! Property / fuzz tests of trl-core's parsers of untrusted input (issue #10): safetensors
//! files and shard indexes, `config.json`, `adapter_config.json` and PyTorch `.bin` (zip +
//! pickle). Each target mutates real inputs from the fixtures (bytes, JSON structure, zip
//! entries, pickle opcodes) and checks that the public loaders give a value that keeps its
//! invariants or a typed error naming the file, and never panic, hang or allocate without
//! bound. Seeded and replayable: see `fuzz_util` for `TRL_RS_FUZZ_CASES` / `_SEED` / `_CASE`.
//!
//! Short (CI) run: `cargo test -p trl-core --test fuzz` (~7 s on 2 cores). Long run:
//! `TRL_RS_FUZZ_SEED=0x10f6 TRL_RS_FUZZ_CASES=25000 cargo test -p trl-core --test fuzz`:
//! 25 000 cases for each of the 7 fuzz targets, 0 panics, 0 hangs (2026-11-30, ~10 CPU-min).

mod fuzz_util;

use std::collections::BTreeMap;
use std::io::{Cursor, Read, Write};
use std::path::{Path, PathBuf};

use burn::tensor::{BoolStore, DType};
use serde_json::{json, Value};

use fuzz_util::{
    fuzz, mutate_bytes, mutate_json, mutated_json_text, show_bytes, show_text, Rng, INTERESTING_U64, JSON_DICT,
};
use trl_core::checkpoint::{load_dir, load_file, load_safetensors, read_index, shard_files, weight_files};
use trl_core::peft::LoraConfig;
use trl_core::pickle::load_bin;
use trl_core::{Error, HfConfig, StateDict};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn fixture(rel: &str) -> PathBuf {
    let p = root().join("tests/fixtures").join(rel);
    assert!(p.exists(), "fixture {} is missing: run `python3 tests/fixtures/make_fixtures.py`", p.display());
    p
}

fn core_fixture(rel: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/core").join(rel);
    assert!(p.exists(), "fixture {} is missing", p.display());
    p
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn json_file(p: &Path) -> Value {
    serde_json::from_slice(&read(p)).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Fixture files `tests/fixtures/*/<name>`, sorted.
fn fixture_files(name: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join("tests/fixtures"))
        .expect("fixtures dir")
        .filter_map(|e| Some(e.ok()?.path().join(name)))
        .filter(|p| p.is_file())
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no fixture has a {name}");
    v
}

/// A loaded state dict keeps the invariants `TensorData` relies on: bytes = numel × dtype
/// size, bools 0 or 1.
fn check_state_dict(sd: &StateDict, what: &str) {
    for (k, t) in &sd.tensors {
        let numel = t.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).expect("numel fits");
        assert_eq!(
            t.bytes.len(),
            numel * t.dtype.size(),
            "{what}: `{k}` has {} bytes for {:?}",
            t.bytes.len(),
            t.dtype
        );
        if t.dtype == DType::Bool(BoolStore::Native) {
            assert!(t.bytes.iter().all(|&b| b <= 1), "{what}: bool tensor `{k}` holds bytes other than 0/1");
        }
    }
}

/// An error is one of the expected variants and names the file (by its name) without Rust
/// `Option` debug output.
fn check_error(e: &Error, file: &Path, ok: fn(&Error) -> bool) {
    let msg = e.to_string();
    assert!(ok(e), "unexpected error variant: {e:?}");
    let name = file.file_name().and_then(|n| n.to_str()).expect("file name");
    assert!(msg.contains(name), "error does not name `{name}`: {msg}");
    assert!(!msg.contains("Some(") && !msg.is_empty(), "error message: {msg}");
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

// ---------------------------------------------------------------------------------------------
// safetensors
// ---------------------------------------------------------------------------------------------

/// Header JSON and data of a `.safetensors` file.
fn split_safetensors(b: &[u8]) -> (Value, Vec<u8>) {
    let n = u64::from_le_bytes(b[..8].try_into().expect("8 bytes")) as usize;
    (serde_json::from_slice(&b[8..8 + n]).expect("header"), b[8 + n..].to_vec())
}

fn join_safetensors(header: &str, data: &[u8]) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

fn dtype_size(name: &str) -> usize {
    match name {
        "F64" | "I64" | "U64" => 8,
        "F32" | "I32" | "U32" => 4,
        "F16" | "BF16" | "I16" | "U16" => 2,
        _ => 1,
    }
}

/// The real GPT-2 fixture's header (29 entries, metadata) with every dimension cut to ≤ 3,
/// offsets recomputed and random data: a small file shaped like a real one.
fn shrunk_gpt2(rng: &mut Rng) -> Vec<u8> {
    let file = read(&fixture("gpt2/model.safetensors"));
    let (header, _) = split_safetensors(&file);
    let mut entries: Vec<(String, Value)> = header.as_object().expect("object").clone().into_iter().collect();
    entries.sort_by_key(|(_, v)| v["data_offsets"][0].as_u64().unwrap_or(0));
    let mut out = serde_json::Map::new();
    let mut offset = 0u64;
    for (k, mut v) in entries {
        if k != "__metadata__" {
            let shape: Vec<u64> =
                v["shape"].as_array().expect("shape").iter().map(|d| d.as_u64().unwrap().min(3)).collect();
            let n = shape.iter().product::<u64>() * dtype_size(v["dtype"].as_str().unwrap()) as u64;
            v["shape"] = json!(shape);
            v["data_offsets"] = json!([offset, offset + n]);
            offset += n;
        }
        out.insert(k, v);
    }
    let data: Vec<u8> = (0..offset).map(|_| rng.below(256) as u8).collect();
    join_safetensors(&Value::Object(out).to_string(), &data)
}

/// A small file with every dtype trl-rs holds, plus a scalar, an empty tensor and bools.
fn all_dtypes() -> Vec<u8> {
    let specs: &[(&str, &str, &[u64])] = &[
        ("a.f32", "F32", &[2, 3]),
        ("b.f16", "F16", &[3]),
        ("c.bf16", "BF16", &[1, 2]),
        ("d.f64", "F64", &[2]),
        ("e.i64", "I64", &[2]),
        ("f.i32", "I32", &[1]),
        ("g.i16", "I16", &[2]),
        ("h.i8", "I8", &[3]),
        ("i.u8", "U8", &[4]),
        ("j.bool", "BOOL", &[2, 2]),
        ("k.scalar", "F32", &[]),
        ("l.empty", "F32", &[0, 3]),
    ];
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut data = Vec::new();
    for (i, (name, dtype, shape)) in specs.iter().enumerate() {
        let n = shape.iter().product::<u64>() as usize * dtype_size(dtype);
        let start = data.len();
        data.extend((0..n).map(|j| if *dtype == "BOOL" { (j % 2) as u8 } else { (i * 31 + j) as u8 }));
        header.insert(name.to_string(), json!({"dtype": dtype, "shape": shape, "data_offsets": [start, data.len()]}));
    }
    join_safetensors(&Value::Object(header).to_string(), &data)
}

fn safetensors_seeds() -> Vec<Vec<u8>> {
    let mut rng = Rng::new(1);
    vec![shrunk_gpt2(&mut rng), all_dtypes(), read(&core_fixture("expected.safetensors"))]
}

const ST_KEYS: &[&str] =
    &["dtype", "shape", "data_offsets", "__metadata__", "format", "a.f32", "transformer.wte.weight"];
const ST_DTYPES: &[&str] = &[
    "F32", "F16", "BF16", "F64", "I64", "I32", "I16", "I8", "U8", "BOOL", "U16", "U32", "U64", "F8_E4M3", "F8_E5M2",
    "F8_E8M0", "F4", "F6_E2M3", "F6_E3M2", "C64", "f32", "", "F128", "I4",
];

/// Safetensors-specific header mutations: offsets out of range, reversed, overlapping or
/// huge; shapes whose product overflows; unknown dtypes; fields missing or of the wrong type.
fn mutate_header(rng: &mut Rng, header: &mut Value, data_len: u64) {
    let Some(obj) = header.as_object_mut() else { return };
    let names: Vec<String> = obj.keys().filter(|k| *k != "__metadata__").cloned().collect();
    if names.is_empty() {
        return;
    }
    let big = |rng: &mut Rng| *rng.pick(INTERESTING_U64);
    for _ in 0..rng.range(1, 3) {
        let name = rng.pick(&names).clone();
        let prev = obj.values().filter_map(|v| v.get("data_offsets")).nth(rng.below(names.len())).cloned();
        let Some(Value::Object(t)) = obj.get_mut(&name) else { continue };
        let (s, e) = match t.get("data_offsets") {
            Some(Value::Array(a)) if a.len() == 2 => (a[0].as_u64().unwrap_or(0), a[1].as_u64().unwrap_or(0)),
            _ => (0, 0),
        };
        match rng.below(12) {
            0 => {
                t.insert("data_offsets".into(), json!([s, data_len + 1 + rng.below(100) as u64]));
            }
            1 => {
                t.insert("data_offsets".into(), json!([e, s]));
            }
            2 => {
                t.insert("data_offsets".into(), prev.unwrap_or(json!([0, 0])));
            }
            3 => {
                t.insert("data_offsets".into(), json!([big(rng), big(rng)]));
            }
            4 => {
                let bad = rng
                    .pick(&[
                        json!([-1, 4]),
                        json!([0.5, 4]),
                        json!(["0", "4"]),
                        json!([0]),
                        json!([0, 1, 2]),
                        json!(null),
                        json!({}),
                    ])
                    .clone();
                t.insert("data_offsets".into(), bad);
            }
            5 => {
                let a = big(rng);
                let b = big(rng);
                t.insert("shape".into(), json!([a, b]));
            }
            6 => {
                let bad = rng
                    .pick(&[
                        json!([u64::MAX, 2]),
                        json!([1u64 << 32, 1u64 << 32]),
                        json!([1u64 << 62, 4]),
                        json!([0]),
                        json!([]),
                        json!([-1]),
                        json!([1.5]),
                        json!(["3"]),
                        json!(3),
                        json!(vec![1; 10_000]),
                    ])
                    .clone();
                t.insert("shape".into(), bad);
            }
            7 => {
                let d = rng.pick(ST_DTYPES).to_string();
                t.insert("dtype".into(), json!(d));
            }
            8 => {
                let k = rng.pick(&["dtype", "shape", "data_offsets"]).to_string();
                t.shift_remove(&k);
            }
            9 => {
                t.insert(rng.pick(&["extra", "dtype ", "offsets"]).to_string(), json!(1));
            }
            10 => {
                let v = obj.shift_remove(&name).expect("entry");
                obj.insert(rng.pick(&["", "__metadata__", "a.f32", "x"]).to_string(), v);
            }
            _ => {
                let m = rng
                    .pick(&[json!({"format": 1}), json!([]), json!({"a": {"b": "c"}}), json!(null), json!("pt")])
                    .clone();
                obj.insert("__metadata__".into(), m);
            }
        }
    }
}

/// A mutated safetensors file: raw bytes, or a structurally mutated header re-framed with
/// an exact, wrong, huge (> file, u64::MAX, > 100 MB) or zero header length, and data cut or
/// extended.
fn gen_safetensors(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let seed = rng.pick(seeds);
    if rng.one_in(3) {
        let mut b = seed.clone();
        mutate_bytes(rng, &mut b, JSON_DICT);
        return b;
    }
    let (mut header, mut data) = split_safetensors(seed);
    match rng.below(3) {
        0 => mutate_header(rng, &mut header, data.len() as u64),
        1 => mutate_json(rng, &mut header, ST_KEYS),
        _ => {
            mutate_header(rng, &mut header, data.len() as u64);
            mutate_json(rng, &mut header, ST_KEYS);
        }
    }
    let mut text = fuzz_util::json_text(rng, &header);
    if rng.one_in(6) {
        text.push_str(&" ".repeat(rng.below(16))); // transformers pads headers with spaces
    }
    match rng.below(8) {
        0 => data.truncate(rng.below(data.len() + 1)),
        1 => data.extend((0..rng.range(1, 64)).map(|_| rng.below(256) as u8)),
        _ => {}
    }
    let mut out = join_safetensors(&text, &data);
    if rng.one_in(5) {
        let n = text.len() as u64;
        let file = out.len() as u64;
        let len = *rng.pick(&[n + 1, n.saturating_sub(1), file, file + 100, u64::MAX, 0, 100_000_001, 1 << 32, 8]);
        out[..8].copy_from_slice(&len.to_le_bytes());
    }
    if rng.one_in(20) {
        out.truncate(rng.below(9)); // shorter than the length field
    }
    out
}

fn check_safetensors_file(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).expect("write");
    for r in [load_safetensors(path), load_file(path)] {
        match r {
            Ok(sd) => check_state_dict(&sd, "safetensors"),
            Err(e) => check_error(&e, path, |e| {
                matches!(e, Error::Safetensors { .. } | Error::UnsupportedDtype { .. } | Error::Io { .. })
            }),
        }
    }
}

#[test]
fn safetensors_seeds_load() {
    let dir = tempdir();
    for (i, s) in safetensors_seeds().iter().enumerate() {
        let p = dir.path().join(format!("{i}.safetensors"));
        std::fs::write(&p, s).unwrap();
        let sd = load_safetensors(&p).unwrap_or_else(|e| panic!("seed {i}: {e}"));
        assert!(!sd.is_empty());
        check_state_dict(&sd, "seed");
    }
}

#[test]
fn safetensors_header() {
    let seeds = safetensors_seeds();
    let dir = tempdir();
    let path = dir.path().join("fuzz.safetensors");
    fuzz(
        "safetensors_header",
        1500,
        move |rng| gen_safetensors(rng, &seeds),
        move |b| check_safetensors_file(&path, b),
        |b| show_bytes(b),
    );
}

/// Bool bytes other than 0/1 would be undefined behaviour once read as `bool`; they load as 1.
#[test]
fn safetensors_bools_are_normalised() {
    let dir = tempdir();
    let p = dir.path().join("b.safetensors");
    let h = json!({"m": {"dtype": "BOOL", "shape": [3], "data_offsets": [0, 3]}}).to_string();
    std::fs::write(&p, join_safetensors(&h, &[0, 2, 0xff])).unwrap();
    let sd = load_safetensors(&p).unwrap();
    assert_eq!(&sd.get("m").unwrap().bytes[..], &[0, 1, 1]);
}

/// Header lengths past the file, u64::MAX, and shape products that overflow give errors
/// (and no allocation of the declared size).
#[test]
fn safetensors_hostile_headers() {
    let dir = tempdir();
    let p = dir.path().join("h.safetensors");
    let mut cases: Vec<Vec<u8>> = Vec::new();
    for len in [u64::MAX, 1 << 40, 100_000_001, 64] {
        let mut b = len.to_le_bytes().to_vec();
        b.extend_from_slice(b"{}");
        cases.push(b);
    }
    for shape in [json!([u64::MAX, 2]), json!([1u64 << 32, 1u64 << 32]), json!([1u64 << 62, 8])] {
        let h = json!({"t": {"dtype": "F32", "shape": shape, "data_offsets": [0, 0]}}).to_string();
        cases.push(join_safetensors(&h, &[]));
    }
    let h = json!({"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, u64::MAX]}}).to_string();
    cases.push(join_safetensors(&h, &[0; 8]));
    for (i, b) in cases.iter().enumerate() {
        std::fs::write(&p, b).unwrap();
        let e = load_safetensors(&p).expect_err(&format!("case {i} loads"));
        assert!(matches!(e, Error::Safetensors { .. }), "case {i}: {e}");
    }
}

// ---------------------------------------------------------------------------------------------
// shard indexes
// ---------------------------------------------------------------------------------------------

/// A tiny shard holding `keys` (f32 [2] each).
fn tiny_shard(keys: &[&String]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    for (i, k) in keys.iter().enumerate() {
        header.insert(k.to_string(), json!({"dtype": "F32", "shape": [2], "data_offsets": [i * 8, i * 8 + 8]}));
    }
    join_safetensors(&Value::Object(header).to_string(), &vec![0u8; keys.len() * 8])
}

struct IndexDirs {
    _tmp: tempfile::TempDir,
    /// (model dir, index file name, the index as the fixture has it)
    dirs: Vec<(PathBuf, &'static str, Value)>,
}

/// Two model directories: the sharded GPT-2 fixture's index with tiny shards, and the core
/// `.bin` shards with their index. A shard outside the model directory (`../evil.*`) exists,
/// so that an index reaching it is noticed.
fn index_dirs() -> IndexDirs {
    let tmp = tempdir();
    let st = tmp.path().join("st");
    std::fs::create_dir(&st).unwrap();
    let index = json_file(&fixture("gpt2-sharded/model.safetensors.index.json"));
    std::fs::write(st.join("model.safetensors.index.json"), index.to_string()).unwrap();
    let mut by_shard: BTreeMap<String, Vec<&String>> = BTreeMap::new();
    for (k, v) in index["weight_map"].as_object().unwrap() {
        by_shard.entry(v.as_str().unwrap().to_string()).or_default().push(k);
    }
    for (shard, keys) in &by_shard {
        std::fs::write(st.join(shard), tiny_shard(keys)).unwrap();
    }
    let bin = tmp.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    for e in std::fs::read_dir(core_fixture("bin-sharded")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), bin.join(e.file_name())).unwrap();
    }
    let bin_index = json_file(&bin.join("pytorch_model.bin.index.json"));
    std::fs::write(tmp.path().join("evil.safetensors"), tiny_shard(&[&"evil".to_string()])).unwrap();
    std::fs::copy(bin.join("pytorch_model-00001-of-00002.bin"), tmp.path().join("evil.bin")).unwrap();
    IndexDirs {
        dirs: vec![(st, "model.safetensors.index.json", index), (bin, "pytorch_model.bin.index.json", bin_index)],
        _tmp: tmp,
    }
}

const INDEX_KEYS: &[&str] = &[
    "weight_map",
    "metadata",
    "total_size",
    "model-00001-of-00007.safetensors",
    "pytorch_model-00001-of-00002.bin",
    "../evil.safetensors",
    "../evil.bin",
    "/etc/hostname",
    "",
    ".",
    "sub/x.safetensors",
    "model.safetensors.index.json",
    "transformer.wte.weight",
];

/// A path a loader returned lies inside the model directory.
fn check_inside(dir: &Path, p: &Path) {
    let rel = p.strip_prefix(dir).unwrap_or_else(|_| panic!("{} is outside {}", p.display(), dir.display()));
    assert!(
        rel.components().all(|c| matches!(c, std::path::Component::Normal(_))),
        "{} escapes {}",
        p.display(),
        dir.display()
    );
}

#[test]
fn shard_index() {
    let dirs = index_dirs();
    let gen_dirs: Vec<Value> = dirs.dirs.iter().map(|d| d.2.clone()).collect();
    fuzz(
        "shard_index",
        1000,
        move |rng| {
            let which = rng.below(gen_dirs.len());
            let mut v = gen_dirs[which].clone();
            // values of the weight map are where traversal matters: mutate those more often
            if rng.one_in(2) {
                if let Some(Value::Object(m)) = v.get_mut("weight_map") {
                    let n = m.len();
                    if let Some((_, val)) = m.iter_mut().nth(rng.below(n)) {
                        *val = json!(rng.pick(INDEX_KEYS));
                    }
                }
            }
            (which, mutated_json_text(rng, &v, INDEX_KEYS, JSON_DICT))
        },
        move |(which, text)| {
            let (dir, name, _) = &dirs.dirs[*which];
            let index = dir.join(name);
            std::fs::write(&index, text).unwrap();
            let index_err = |e: &Error| {
                matches!(e, Error::Json { .. } | Error::MissingShard { .. } | Error::Io { .. } | Error::Config { .. })
            };
            match read_index(&index) {
                Ok(map) => assert!(!map.is_empty() || text.contains("weight_map")),
                Err(e) => check_error(&e, &index, index_err),
            }
            match shard_files(&index) {
                Ok(files) => files.iter().for_each(|f| check_inside(dir, f)),
                Err(e) => check_error(&e, &index, index_err),
            }
            if let Ok(files) = weight_files(dir) {
                files.iter().for_each(|f| check_inside(dir, f));
            }
            if let Ok(sd) = load_dir(dir) {
                check_state_dict(&sd, "load_dir");
                assert!(sd.get("evil").is_none(), "a shard outside the model directory was loaded");
            }
        },
        |(which, text)| format!("dir {which}: {}", show_text(text)),
    );
}

#[test]
fn index_seeds_load() {
    let dirs = index_dirs();
    for (dir, name, _) in &dirs.dirs {
        let files = shard_files(&dir.join(name)).unwrap();
        assert!(files.len() >= 2);
        assert!(!load_dir(dir).unwrap().is_empty());
    }
}

// ---------------------------------------------------------------------------------------------
// config.json
// ---------------------------------------------------------------------------------------------

const CONFIG_KEYS: &[&str] = &[
    "model_type",
    "architectures",
    "dtype",
    "torch_dtype",
    "rope_theta",
    "rope_scaling",
    "rope_parameters",
    "rope_type",
    "type",
    "factor",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "vocab_size",
    "n_embd",
    "n_layer",
    "n_head",
    "max_position_embeddings",
    "head_dim",
    "llama3",
    "default",
    "linear",
    "float32",
];

/// A typed view like the model crates take (serde errors name the field).
#[derive(serde::Deserialize, Debug)]
#[allow(dead_code)]
struct Typed {
    hidden_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    vocab_size: Option<u32>,
    rope_theta: Option<f64>,
    architectures: Option<Vec<String>>,
    tie_word_embeddings: Option<bool>,
}

fn exercise_config(c: &HfConfig) {
    for k in CONFIG_KEYS {
        let _ = (c.get(k), c.get_usize(k), c.get_f64(k), c.get_str(k), c.require_usize(k));
    }
    let _ = (c.model_type(), c.architectures(), c.dtype(), c.rope_theta(), c.rope_type());
    if let Some(s) = c.rope_scaling() {
        let t = s.get("rope_type").or_else(|| s.get("type")).and_then(Value::as_str);
        assert!(t.is_some_and(|t| t != "default"), "rope_scaling returned for type {t:?}");
    }
    if let Err(e) = c.parse::<Typed>() {
        check_error(&e, &c.path, |e| matches!(e, Error::Config { .. }));
    }
}

#[test]
fn config_json() {
    let seeds: Vec<Value> = fixture_files("config.json").iter().map(|p| json_file(p)).collect();
    let dir = tempdir();
    let out = dir.path().to_path_buf();
    for s in &seeds {
        let c = HfConfig::from_value(s.clone()).unwrap();
        exercise_config(&c);
        c.save(&out).unwrap();
        assert_eq!(HfConfig::load(&out).unwrap().raw, c.raw);
    }
    fuzz(
        "config_json",
        2500,
        move |rng| {
            let seed = seeds[rng.below(seeds.len())].clone();
            mutated_json_text(rng, &seed, CONFIG_KEYS, JSON_DICT)
        },
        move |text| {
            let path = out.join("config.json");
            match HfConfig::parse_str(text, path.clone()) {
                Ok(c) => {
                    exercise_config(&c);
                    // written out and read back, every field stays, unknown ones included (in
                    // memory: `save` syncs the file, which costs more than the rest of a case)
                    let text = serde_json::to_string_pretty(&c.raw).expect("serialise");
                    let back = HfConfig::parse_str(&text, path.clone()).expect("parse what was written");
                    assert_eq!(back.raw, c.raw, "round trip changed the config");
                }
                Err(e) => check_error(&e, &path, |e| matches!(e, Error::Json { .. } | Error::Config { .. })),
            }
        },
        |t| show_text(t),
    );
}

// ---------------------------------------------------------------------------------------------
// adapter_config.json
// ---------------------------------------------------------------------------------------------

const PEFT_KEYS: &[&str] = &[
    "peft_type",
    "LORA",
    "r",
    "lora_alpha",
    "lora_dropout",
    "target_modules",
    "exclude_modules",
    "modules_to_save",
    "rank_pattern",
    "alpha_pattern",
    "layers_to_transform",
    "layers_pattern",
    "init_lora_weights",
    "use_rslora",
    "use_dora",
    "bias",
    "fan_in_fan_out",
    "task_type",
    "base_model_name_or_path",
    "revision",
    "q_proj",
    "all-linear",
    "gaussian",
    "pissa",
    "layer_replication",
    "(unclosed",
    ".*",
    "layers",
    "score",
];

const MODULES: &[&str] = &[
    "model.layers.0.self_attn.q_proj",
    "model.layers.1.self_attn.v_proj",
    "model.layers.1.mlp.up_proj",
    "transformer.h.0.attn.c_attn",
    "transformer.h.1.mlp.c_fc",
    "score",
    "",
];

fn check_lora(c: &LoraConfig, path: &Path) {
    assert!(c.r >= 1, "r = {}", c.r);
    assert!((0.0..=1.0).contains(&c.lora_dropout), "lora_dropout = {}", c.lora_dropout);
    let m = c.matcher().expect("a config that loads has a matcher");
    for name in MODULES {
        let _ = m.matches(name);
        let (r, _) = c.rank_and_alpha(name);
        assert!(r >= 1);
        assert!(c.scaling(name).is_finite(), "scaling of {name}: {}", c.scaling(name));
    }
    let _ = m.unmatched_targets(MODULES.iter().copied());
    // to_json → from_json keeps every interpreted field
    let back = LoraConfig::from_json(c.to_json(), path).unwrap_or_else(|e| panic!("round trip: {e}"));
    let strip = |c: &LoraConfig| LoraConfig { raw: Default::default(), ..c.clone() };
    assert_eq!(strip(&back), strip(c), "to_json → from_json changed the config");
}

#[test]
fn adapter_config() {
    let seeds: Vec<Value> = fixture_files("adapter_config.json").iter().map(|p| json_file(p)).collect();
    let seed_path = Path::new("adapter_config.json");
    for s in &seeds {
        check_lora(&LoraConfig::from_json(s.clone(), seed_path).expect("fixture config loads"), seed_path);
    }
    let dir = tempdir();
    let out = dir.path().to_path_buf();
    fuzz(
        "adapter_config",
        1000,
        move |rng| {
            let seed = seeds[rng.below(seeds.len())].clone();
            mutated_json_text(rng, &seed, PEFT_KEYS, JSON_DICT)
        },
        move |text| {
            let path = out.join("adapter_config.json");
            std::fs::write(&path, text).unwrap();
            match LoraConfig::load(&out) {
                Ok(c) => check_lora(&c, &path),
                Err(e) => check_error(&e, &path, |e| matches!(e, Error::Json { .. } | Error::Config { .. })),
            }
        },
        |t| show_text(t),
    );
}

// ---------------------------------------------------------------------------------------------
// PyTorch .bin: zip container and pickle
// ---------------------------------------------------------------------------------------------

type Entries = Vec<(String, Vec<u8>)>;

/// The entries of a zip, or `None` for a damaged one.
fn unzip(bytes: &[u8]) -> Option<Entries> {
    let mut z = zip::ZipArchive::new(Cursor::new(bytes)).ok()?;
    (0..z.len())
        .map(|i| {
            let mut f = z.by_index(i).ok()?;
            let mut b = Vec::new();
            f.read_to_end(&mut b).ok()?;
            Some((f.name().to_string(), b))
        })
        .collect()
}

/// The seeds that are whole zips, as entries.
fn entry_seeds() -> Vec<Entries> {
    let v: Vec<Entries> = bin_seeds().iter().filter_map(|b| unzip(b)).collect();
    assert!(v.len() >= 5);
    v
}

/// Zips `entries` (stored, as torch.save does, or deflated); a duplicate name is skipped.
fn zip_entries(entries: &[(String, Vec<u8>)], deflate: bool) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let method = if deflate { zip::CompressionMethod::Deflated } else { zip::CompressionMethod::Stored };
    let opts = zip::write::SimpleFileOptions::default().compression_method(method);
    for (name, data) in entries {
        if w.start_file(name.as_str(), opts).is_ok() {
            w.write_all(data).unwrap();
        }
    }
    w.finish().unwrap().into_inner()
}

fn bin_seeds() -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> =
        ["model.bin", "float8.bin", "truncated.bin"].iter().map(|f| read(&core_fixture(f))).collect();
    for e in std::fs::read_dir(core_fixture("bin-sharded")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "bin") {
            v.push(read(&p));
        }
    }
    v.push(read(&fixture("lora-gpt2-bin/adapter_model.bin")));
    v
}

fn check_bin_file(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).expect("write");
    for r in [load_bin(path), load_file(path)] {
        match r {
            Ok(sd) => check_state_dict(&sd, "bin"),
            Err(e) => check_error(&e, path, |e| {
                matches!(e, Error::Pickle { .. } | Error::UnsupportedDtype { .. } | Error::Io { .. })
            }),
        }
    }
}

/// Byte mutations of a whole `.bin`, half of them aimed at the zip records (local headers,
/// central directory, end of central directory): their sizes, offsets and counts.
fn gen_zip_bytes(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut b = rng.pick(seeds).clone();
    let sigs: Vec<usize> =
        b.windows(4).enumerate().filter(|(_, w)| w[..2] == *b"PK" && w[2] < 8).map(|(i, _)| i).collect();
    for _ in 0..rng.range(1, 3) {
        if !sigs.is_empty() && rng.one_in(2) {
            let at = rng.pick(&sigs) + rng.below(46);
            let v = *rng.pick(INTERESTING_U64);
            let width = *rng.pick(&[2usize, 4, 8]);
            for (j, byte) in v.to_le_bytes()[..width].iter().enumerate() {
                if let Some(x) = b.get_mut(at + j) {
                    *x = *byte;
                }
            }
        } else {
            mutate_bytes(rng, &mut b, &[b"PK\x03\x04", b"PK\x01\x02", b"PK\x05\x06", b"PK\x06\x06", b"PK\x06\x07"]);
        }
    }
    b
}

/// The zip rebuilt with entries dropped, renamed, duplicated, cut, extended or replaced
/// (`byteorder`, `data.pkl` location), sometimes deflated.
fn gen_zip_entries(rng: &mut Rng, seeds: &[Entries]) -> Vec<u8> {
    let mut e = rng.pick(seeds).clone();
    for _ in 0..rng.range(1, 3) {
        let i = rng.below(e.len());
        match rng.below(9) {
            0 if !e.is_empty() => {
                e.remove(i);
            }
            1 if !e.is_empty() => {
                let new = rng.pick(&[
                    "data.pkl",
                    "x/data.pkl",
                    "a/b/data.pkl",
                    "model/data/0",
                    "model/byteorder",
                    "",
                    "/",
                    "model/data.pkl/x",
                ]);
                e[i].0 = new.to_string();
            }
            2 if !e.is_empty() => {
                let mut dup = e[i].clone();
                dup.0 = format!("{}x", dup.0);
                e.push(dup);
            }
            3 if !e.is_empty() => {
                let n = rng.below(e[i].1.len() + 1);
                e[i].1.truncate(n);
            }
            4 if !e.is_empty() => {
                let n = rng.size(4096);
                e[i].1.extend((0..n).map(|_| rng.below(256) as u8));
            }
            5 => {
                let prefix = e.iter().find(|(n, _)| n.ends_with("data.pkl")).map(|(n, _)| n[..n.len() - 8].to_string());
                let v = rng.pick(&[&b"big"[..], &b""[..], &b"little\n"[..], &b"\xff"[..]]).to_vec();
                e.push((format!("{}byteorder", prefix.unwrap_or_default()), v));
                e.retain(|(n, d)| !n.ends_with("byteorder") || d.as_slice() != b"little");
            }
            6 => e.sort_by(|a, b| b.0.cmp(&a.0)),
            _ if !e.is_empty() => {
                let mut d = e[i].1.clone();
                mutate_bytes(rng, &mut d, &[]);
                e[i].1 = d;
            }
            _ => {}
        }
    }
    zip_entries(&e, rng.one_in(4))
}

// ------------------------------ pickle opcodes ------------------------------

/// How an opcode's argument is laid out: fixed bytes, a length-prefixed payload, or lines.
#[derive(Clone, Copy)]
enum Arg {
    Fixed(usize),
    Len(usize),
    Lines(usize),
}

fn arg_of(op: u8) -> Option<Arg> {
    use Arg::*;
    Some(match op {
        b'.'
        | b'('
        | b'}'
        | b']'
        | b')'
        | b't'
        | 0x85..=0x89
        | b'N'
        | 0x93
        | b'R'
        | 0x81
        | b'b'
        | b'Q'
        | 0x94
        | b's'
        | b'u'
        | b'a'
        | b'e'
        | b'0'
        | b'1'
        | b'2' => Fixed(0),
        0x80 | b'K' | b'q' | b'h' => Fixed(1),
        b'M' => Fixed(2),
        b'J' | b'r' | b'j' => Fixed(4),
        0x95 | b'G' => Fixed(8),
        0x8c | 0x8a | b'C' => Len(1),
        b'X' | 0x8b | b'B' => Len(4),
        0x8d | 0x8e => Len(8),
        b'c' => Lines(2),
        _ => return None,
    })
}

/// One opcode with its raw argument bytes.
#[derive(Clone, Debug)]
struct Op(u8, Vec<u8>);

/// Splits a pickle into opcodes; an unknown opcode ends it (the rest is kept as one raw op).
fn disassemble(p: &[u8]) -> Vec<Op> {
    let mut ops = Vec::new();
    let mut i = 0;
    while i < p.len() {
        let op = p[i];
        let Some(arg) = arg_of(op) else {
            ops.push(Op(op, p[i + 1..].to_vec()));
            break;
        };
        let start = i + 1;
        let end = match arg {
            Arg::Fixed(n) => start + n,
            Arg::Len(w) => {
                let mut len = [0u8; 8];
                len[..w].copy_from_slice(&p[start..start + w]);
                start + w + u64::from_le_bytes(len) as usize
            }
            Arg::Lines(n) => {
                let mut e = start;
                for _ in 0..n {
                    e += p[e..].iter().position(|&b| b == b'\n').expect("line") + 1;
                }
                e
            }
        };
        ops.push(Op(op, p[start..end].to_vec()));
        i = end;
    }
    ops
}

fn assemble(ops: &[Op]) -> Vec<u8> {
    ops.iter().flat_map(|Op(c, a)| std::iter::once(*c).chain(a.iter().copied())).collect()
}

fn binunicode(s: &str) -> Op {
    let mut a = (s.len() as u32).to_le_bytes().to_vec();
    a.extend_from_slice(s.as_bytes());
    Op(b'X', a)
}

const GLOBALS: &[&str] = &[
    "torch\nFloatStorage\n",
    "torch\nHalfStorage\n",
    "torch\nBFloat16Storage\n",
    "torch\nBoolStorage\n",
    "torch\nLongStorage\n",
    "torch\nByteStorage\n",
    "torch\nFooStorage\n",
    "torch.storage\nUntypedStorage\n",
    "torch._utils\n_rebuild_tensor_v2\n",
    "torch._utils\n_rebuild_tensor_v3\n",
    "torch._utils\n_rebuild_parameter\n",
    "collections\nOrderedDict\n",
    "builtins\ndict\n",
    "torch\nfloat32\n",
    "torch\nbool\n",
    "torch\nfloat8_e4m3fn\n",
    "torch\nSize\n",
    "os\nsystem\n",
    "\n\n",
];

const STRINGS: &[&str] = &["storage", "0", "1", "2", "99", "cpu", "", "weight", "state_dict", "../0", "data.pkl"];

/// A random opcode, as a pickle would hold it.
fn random_op(rng: &mut Rng) -> Op {
    let int = |rng: &mut Rng| *rng.pick(INTERESTING_U64);
    match rng.below(24) {
        0 => Op(b'(', vec![]),
        1 => Op(b')', vec![]),
        2 => Op(b'}', vec![]),
        3 => Op(b']', vec![]),
        4 => Op(b't', vec![]),
        5 => Op(*rng.pick(&[0x85, 0x86, 0x87]), vec![]),
        6 => Op(b'K', vec![int(rng) as u8]),
        7 => Op(b'M', (int(rng) as u16).to_le_bytes().to_vec()),
        8 => Op(b'J', (int(rng) as u32).to_le_bytes().to_vec()),
        9 => {
            let v = int(rng).to_le_bytes();
            let n = rng.range(0, 9);
            let mut a = vec![n as u8];
            a.extend(v.iter().cycle().take(n));
            Op(0x8a, a)
        }
        10 => binunicode(rng.pick::<&str>(STRINGS)),
        11 => Op(b'c', rng.pick(GLOBALS).as_bytes().to_vec()),
        12 => Op(b'R', vec![]),
        13 => Op(b'b', vec![]),
        14 => Op(b'Q', vec![]),
        15 => Op(b'q', vec![rng.below(8) as u8]),
        16 => Op(b'h', vec![rng.below(8) as u8]),
        17 => Op(0x94, vec![]),
        18 => Op(*rng.pick(b"suae"), vec![]),
        19 => Op(*rng.pick(b"012"), vec![]),
        20 => Op(*rng.pick(&[b'N', 0x88, 0x89]), vec![]),
        21 => Op(b'.', vec![]),
        22 => Op(b'G', int(rng).to_be_bytes().to_vec()),
        _ => Op(*rng.pick(&[0x8c, b'X']), vec![0xff, 0xff, 0xff, 0xff]), // length past the end
    }
}

/// Replaces an integer argument with a boundary value of the same width.
fn mutate_int(rng: &mut Rng, op: &mut Op) {
    let v = *rng.pick(INTERESTING_U64);
    match op.0 {
        b'K' | b'q' | b'h' => op.1 = vec![v as u8],
        b'M' => op.1 = (v as u16).to_le_bytes().to_vec(),
        b'J' | b'r' | b'j' => op.1 = (v as u32).to_le_bytes().to_vec(),
        0x8a => {
            let mut a = vec![8u8];
            a.extend(v.to_le_bytes());
            op.1 = a;
        }
        _ => {}
    }
}

/// Opcode-level mutations of a pickle: ops dropped, duplicated, swapped or inserted; integer
/// arguments (sizes, strides, offsets, memo slots) at boundaries; strings (storage keys,
/// dtypes) and globals (storage classes, rebuild functions) replaced.
fn mutate_pickle(rng: &mut Rng, pkl: &[u8]) -> Vec<u8> {
    let mut ops = disassemble(pkl);
    for _ in 0..rng.range(1, 4) {
        let n = ops.len();
        let i = rng.below(n.max(1));
        match rng.below(9) {
            0 if n > 0 => {
                ops.remove(i);
            }
            1 if n > 0 => {
                let o = ops[i].clone();
                ops.insert(rng.below(n + 1), o);
            }
            2 if n > 1 => {
                let j = rng.below(n);
                ops.swap(i, j);
            }
            3 | 4 => {
                let ints: Vec<usize> = (0..n)
                    .filter(|&k| matches!(ops[k].0, b'K' | b'M' | b'J' | 0x8a | b'q' | b'h' | b'r' | b'j'))
                    .collect();
                if !ints.is_empty() {
                    let k = *rng.pick(&ints);
                    mutate_int(rng, &mut ops[k]);
                }
            }
            5 => {
                let strs: Vec<usize> = (0..n).filter(|&k| matches!(ops[k].0, b'X' | 0x8c)).collect();
                if !strs.is_empty() {
                    let k = *rng.pick(&strs);
                    ops[k] = binunicode(rng.pick::<&str>(STRINGS));
                }
            }
            6 => {
                let globals: Vec<usize> = (0..n).filter(|&k| ops[k].0 == b'c').collect();
                if !globals.is_empty() {
                    let k = *rng.pick(&globals);
                    ops[k].1 = rng.pick(GLOBALS).as_bytes().to_vec();
                }
            }
            7 if n > 0 => ops.truncate(i),
            _ => {
                let o = random_op(rng);
                ops.insert(rng.below(n + 1), o);
            }
        }
    }
    assemble(&ops)
}

fn gen_pickle(rng: &mut Rng, seeds: &[Entries]) -> Vec<u8> {
    let mut e = rng.pick(seeds).clone();
    let pkl = e.iter_mut().find(|(n, _)| n.ends_with("data.pkl")).expect("data.pkl");
    pkl.1 = mutate_pickle(rng, &pkl.1);
    zip_entries(&e, false)
}

#[test]
fn bin_seeds_load() {
    let dir = tempdir();
    for (i, s) in bin_seeds().iter().enumerate() {
        let p = dir.path().join(format!("{i}.bin"));
        std::fs::write(&p, s).unwrap();
        if let Ok(sd) = load_bin(&p) {
            check_state_dict(&sd, "seed");
        }
        // disassembly and the rebuilt zip are faithful
        let Some(e) = unzip(s) else { continue };
        let pkl = &e.iter().find(|(n, _)| n.ends_with("data.pkl")).unwrap().1;
        assert_eq!(&assemble(&disassemble(pkl)), pkl);
        let q = dir.path().join(format!("{i}-rezipped.bin"));
        std::fs::write(&q, zip_entries(&e, i % 2 == 1)).unwrap();
        match (load_bin(&p), load_bin(&q)) {
            (Ok(a), Ok(b)) => assert_eq!(a, b, "seed {i}"),
            (Err(_), Err(_)) => {}
            (a, b) => panic!("seed {i}: {:?} vs {:?}", a.map(|s| s.len()), b.map(|s| s.len())),
        }
    }
    assert_eq!(load_bin(&core_fixture("model.bin")).unwrap().len(), 19);
}

#[test]
fn bin_zip_bytes() {
    let seeds = bin_seeds();
    let dir = tempdir();
    let path = dir.path().join("fuzz.bin");
    fuzz(
        "bin_zip_bytes",
        1500,
        move |rng| gen_zip_bytes(rng, &seeds),
        move |b| check_bin_file(&path, b),
        |b| show_bytes(b),
    );
}

#[test]
fn bin_zip_entries() {
    let seeds = entry_seeds();
    let dir = tempdir();
    let path = dir.path().join("fuzz.bin");
    fuzz(
        "bin_zip_entries",
        1000,
        move |rng| gen_zip_entries(rng, &seeds),
        move |b| check_bin_file(&path, b),
        |b| show_bytes(b),
    );
}

#[test]
fn bin_pickle_ops() {
    let seeds = entry_seeds();
    let dir = tempdir();
    let path = dir.path().join("fuzz.bin");
    fuzz(
        "bin_pickle_ops",
        2000,
        move |rng| gen_pickle(rng, &seeds),
        move |b| check_bin_file(&path, b),
        |b| {
            let e = unzip(b).unwrap_or_default();
            let pkl = e.iter().find(|(n, _)| n.ends_with("data.pkl")).map(|(_, p)| p.clone()).unwrap_or_default();
            format!("data.pkl = {}", show_bytes(&pkl))
        },
    );
}

/// A `.bin` whose `data.pkl` is `pkl`, with storage `0` of `storage` bytes.
fn bin_with(pkl: Vec<u8>, storage: usize) -> Vec<u8> {
    zip_entries(&[("m/data.pkl".into(), pkl), ("m/data/0".into(), vec![1; storage])], false)
}

/// `{'w': _rebuild_tensor_v2(('storage', torch.FloatStorage, '0', 'cpu', 1), 0, size, stride, False, OrderedDict())}`
fn tensor_pickle(size: &[u32], stride: &[u32]) -> Vec<u8> {
    let mut p = vec![0x80, 2, b'}'];
    p.extend(assemble(&[binunicode("w")]));
    p.extend(b"ctorch._utils\n_rebuild_tensor_v2\n(");
    p.extend(b"(");
    p.extend(assemble(&[binunicode("storage")]));
    p.extend(b"ctorch\nFloatStorage\n");
    p.extend(assemble(&[binunicode("0"), binunicode("cpu")]));
    p.extend([b'K', 1, b't', b'Q', b'K', 0, b'(']);
    for s in size {
        p.push(b'J');
        p.extend(s.to_le_bytes());
    }
    p.extend([b't', b'(']);
    for s in stride {
        p.push(b'J');
        p.extend(s.to_le_bytes());
    }
    p.extend([b't', 0x89, b'c']);
    p.extend(b"collections\nOrderedDict\n)R");
    p.extend([b't', b'R', b's', b'.']);
    p
}

/// Hostile pickles: deep nesting (dropped without recursion), expanded views (no allocation
/// of the expanded size), many views of one storage (bounded copies).
#[test]
fn bin_hostile_pickles() {
    let dir = tempdir();
    let p = dir.path().join("h.bin");
    let load = |bytes: Vec<u8>| {
        std::fs::write(&p, bytes).unwrap();
        load_bin(&p)
    };
    // sanity: the hand-written tensor pickle loads
    let sd = load(bin_with(tensor_pickle(&[2, 2], &[2, 1]), 16)).unwrap();
    assert_eq!(sd.get("w").unwrap().shape.to_vec(), vec![2, 2]);
    // 100 000 nested tuples, lists and dicts (the recursive drop this replaced overflowed the stack)
    // ((((),),),) / [[[[]]]] (via the memo: x → BINPUT 0, POP, [], BINGET 0, APPEND) / {'k': {'k': …}}
    let nests: [(&[u8], &[u8]); 3] =
        [(b")", b"\x85"), (b"]", b"q\x000]h\x00a"), (b"}", b"q\x000}X\x01\x00\x00\x00kh\x00s")];
    for (open, wrap) in nests {
        let mut pkl = vec![0x80, 2];
        pkl.extend(open);
        for _ in 0..100_000 {
            pkl.extend(wrap);
        }
        pkl.push(b'.');
        let e = load(bin_with(pkl, 4)).expect_err("no tensors");
        assert!(e.to_string().contains("not a dict") || e.to_string().contains("no tensors"), "{e}");
    }
    // a 4-byte storage viewed as 65535 × 65535 floats (16 GiB) through zero strides
    let e = load(bin_with(tensor_pickle(&[65_535, 65_535], &[0, 0]), 4)).expect_err("expanded view");
    assert!(e.to_string().contains("bytes"), "{e}");
    // overlapping strides: 2^26 elements over 27 floats
    let e = load(bin_with(tensor_pickle(&[2; 26], &[1; 26]), 4 * 27)).expect_err("overlapping view");
    assert!(e.to_string().contains("bytes"), "{e}");
}

/// A lone `data.pkl` entry point is mandatory; an archive of other things is refused by name.
#[test]
fn bin_without_pickle() {
    let dir = tempdir();
    let p = dir.path().join("x.bin");
    std::fs::write(&p, zip_entries(&[("m/data/0".into(), vec![0; 4])], false)).unwrap();
    assert!(load_bin(&p).unwrap_err().to_string().contains("data.pkl"));
    std::fs::write(&p, b"").unwrap();
    assert!(matches!(load_bin(&p), Err(Error::Pickle { .. })));
}

/// Adversarial configs: an oversized rank or a dropout outside [0, 1] are config errors.
#[test]
fn adapter_config_bounds() {
    let p = Path::new("adapter_config.json");
    let base = json!({"peft_type": "LORA", "target_modules": ["q_proj"]});
    let with = |k: &str, v: Value| {
        let mut b = base.clone();
        b[k] = v;
        LoraConfig::from_json(b, p)
    };
    for (k, v) in [
        ("r", json!(1e308)),
        ("r", json!(u64::MAX)),
        ("r", json!(1u64 << 40)),
        ("lora_dropout", json!(1.5)),
        ("lora_dropout", json!(-0.1)),
        ("rank_pattern", json!({"q_proj": 1e300})),
    ] {
        let e = with(k, v.clone()).expect_err(&format!("{k} = {v} loads"));
        assert!(e.to_string().contains(k) && e.to_string().contains("adapter_config.json"), "{e}");
    }
    assert!(with("lora_dropout", json!(1.0)).is_ok());
}
