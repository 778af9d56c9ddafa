//! The checkpoint layer end to end: safetensors (single, sharded, bf16), PyTorch `.bin`, save →
//! load round trips, hub-cache resolution, and the error each kind of bad input gives.
//!
//! Fixtures: `tests/fixtures/` at the workspace root (`make_fixtures.py`: gpt2, gpt2-bf16,
//! gpt2-bin, gpt2-sharded) and `crates/trl-core/tests/fixtures/core/` (`make_core_fixtures.py`:
//! tiny `.bin` files covering tied weights, strided views and every dtype).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use burn::tensor::{DType, TensorData};
use trl_core::checkpoint::{
    load_dir, load_dir_lazily, load_file, load_safetensors, save_weights, weight_files, DEFAULT_MAX_SHARD_SIZE,
    SAFE_INDEX, SAFE_WEIGHTS,
};
use trl_core::pickle::load_bin;
use trl_core::source::{HubCache, HubId};
use trl_core::{Error, HfConfig, StateDict};

/// A directory made by the workspace's `tests/fixtures/make_fixtures.py`.
fn fixture(name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures").join(name);
    assert!(p.is_dir(), "fixture {} is missing: run `python3 tests/fixtures/make_fixtures.py`", p.display());
    p
}

/// A file made by `crates/trl-core/tests/fixtures/make_core_fixtures.py`.
fn core(name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/core").join(name);
    assert!(
        p.exists(),
        "fixture {} is missing: run `python3 crates/trl-core/tests/fixtures/make_core_fixtures.py`",
        p.display()
    );
    p
}

fn f32s(t: &TensorData) -> Vec<f32> {
    t.clone().convert::<f32>().to_vec::<f32>().expect("float data")
}

/// Same keys, and every tensor bit-identical (dtype, shape and bytes).
fn assert_same(a: &StateDict, b: &StateDict) {
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (k, t) in &a.tensors {
        let u = &b.tensors[k];
        assert_eq!((t.dtype, &t.shape), (u.dtype, &u.shape), "`{k}`: dtype/shape");
        assert!(t.bytes[..] == u.bytes[..], "`{k}`: bytes differ");
    }
}

fn err_string(r: trl_core::Result<impl std::fmt::Debug>) -> (Error, String) {
    let e = r.expect_err("expected an error");
    let s = e.to_string();
    (e, s)
}

// ---------------------------------------------------------------------------------------------
// PyTorch .bin
// ---------------------------------------------------------------------------------------------

#[test]
fn bin_reads_every_case_like_torch() {
    let bin = load_bin(&core("model.bin")).unwrap();
    let expected = load_safetensors(&core("expected.safetensors")).unwrap();
    assert_eq!(bin.len(), 19);
    assert_same(&bin, &expected);
    // load_file dispatches on the extension.
    assert_eq!(load_file(&core("model.bin")).unwrap(), bin);
}

#[test]
fn bin_views_and_tied_weights_have_the_right_values() {
    let sd = load_bin(&core("model.bin")).unwrap();
    let wte = f32s(&sd.tensors["wte.weight"]); // [6, 4]
    assert_eq!(sd.tensors["wte.weight"].shape.as_slice(), &[6, 4]);
    assert_eq!(sd.tensors["lm_head.weight"], sd.tensors["wte.weight"], "tied pair");
    let t = &sd.tensors["wte_t"];
    assert_eq!(t.shape.as_slice(), &[4, 6]);
    let transposed: Vec<f32> = (0..4).flat_map(|c| (0..6).map(move |r| (r, c))).map(|(r, c)| wte[r * 4 + c]).collect();
    assert_eq!(f32s(t), transposed);
    assert_eq!(f32s(&sd.tensors["wte_tail"]), wte[8..].to_vec());
    assert_eq!(f32s(&sd.tensors["wte_col"]), (1..6).map(|r| wte[r * 4 + 1]).collect::<Vec<_>>());
    let s = &sd.tensors["scalar"];
    assert!(s.shape.is_empty());
    assert_eq!(f32s(s), [3.25]);
    assert_eq!(sd.tensors["empty"].shape.as_slice(), &[0, 3]);
    assert!(sd.tensors["empty"].bytes.is_empty());
    assert_eq!(sd.tensors["f16"].dtype, DType::F16);
    assert_eq!(sd.tensors["bf16"].dtype, DType::BF16);
    assert_eq!(sd.tensors["i64"].to_vec::<i64>().unwrap(), (-3..7).collect::<Vec<i64>>());
    assert_eq!(sd.tensors["i32"].to_vec::<i32>().unwrap(), [i32::MIN, i32::MAX, 7]);
    assert_eq!(sd.tensors["i8"].to_vec::<i8>().unwrap(), [-128, 0, 127]);
    assert_eq!(sd.tensors["u8"].to_vec::<u8>().unwrap(), [0, 1, 255]);
    assert_eq!(sd.tensors["mask"].to_vec::<bool>().unwrap(), [true, false, true, false, false, true]);
    assert_eq!(sd.tensors["mask"].shape.as_slice(), &[2, 3]);
    // A module state dict's entries come through alongside (its `_metadata` is dropped).
    assert_eq!(sd.tensors["weight"].shape.as_slice(), &[3, 4]);
    assert_eq!(sd.tensors["bias"].shape.as_slice(), &[3]);
}

#[test]
fn bin_sharded_index_loads_like_the_single_file() {
    let dir = core("bin-sharded");
    assert_eq!(weight_files(&dir).unwrap().len(), 2);
    assert_same(&load_dir(&dir).unwrap(), &load_bin(&core("model.bin")).unwrap());
}

#[test]
fn gpt2_bin_matches_its_reference() {
    let d = fixture("gpt2-bin");
    let bin = load_dir(&d).unwrap();
    assert_same(&bin, &load_safetensors(&d.join("reference.safetensors")).unwrap());
    // lm_head.weight is stored and shares the embedding's storage.
    assert_eq!(bin.tensors["lm_head.weight"], bin.tensors["transformer.wte.weight"]);
}

#[test]
fn gpt2_single_sharded_and_bin_agree() {
    let single = load_dir(&fixture("gpt2")).unwrap();
    assert_eq!(single.len(), 28);
    let sharded_dir = fixture("gpt2-sharded");
    assert!(weight_files(&sharded_dir).unwrap().len() > 1);
    assert_same(&single, &load_dir(&sharded_dir).unwrap());
    let mut bin = load_dir(&fixture("gpt2-bin")).unwrap();
    bin.remove("lm_head.weight"); // tied, so save_pretrained does not store it
    assert_same(&single, &bin);
}

#[test]
fn gpt2_bf16_matches_its_reference_and_the_f32_source() {
    let d = fixture("gpt2-bf16");
    let bf16 = load_dir(&d).unwrap();
    let reference = load_safetensors(&d.join("reference.safetensors")).unwrap();
    let f32_source = load_dir(&fixture("gpt2")).unwrap();
    assert_eq!(bf16.keys().collect::<Vec<_>>(), f32_source.keys().collect::<Vec<_>>());
    for (k, t) in &bf16.tensors {
        assert_eq!(t.dtype, DType::BF16, "`{k}`");
        let up = f32s(t);
        assert_eq!(up, f32s(&reference.tensors[k]), "`{k}`: bf16 → f32 is exact");
        for (a, b) in up.iter().zip(f32s(&f32_source.tensors[k])) {
            assert!((a - b).abs() <= b.abs() / 256.0, "`{k}`: {a} is not {b} rounded to bf16");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// save → load
// ---------------------------------------------------------------------------------------------

/// `load_dir_lazily` leaves each tensor in the mapped file (aligned for its dtype, no copy); a
/// Linear weight goes into the model as a transposed view of those bytes and computes `x·Wᵀ + b`;
/// and a write to a loaded parameter copies it first, so the file is never changed.
#[cfg(feature = "flex")]
#[test]
fn mapped_weights_load_in_place_and_a_write_copies_them_first() {
    use burn::prelude::Tensor;
    use burn::tensor::AllocationProperty;
    type B = burn::backend::Flex;
    let dir = tempfile::tempdir().unwrap();
    let (d_in, d_out) = (5, 3);
    let w: Vec<f32> = (0..d_out * d_in).map(|i| i as f32 * 0.25 - 1.0).collect(); // [out, in]
    let b = vec![0.5f32, -0.5, 1.5];
    let mut sd = StateDict::new();
    sd.insert("weight", TensorData::new(w.clone(), [d_out, d_in]));
    sd.insert("bias", TensorData::new(b.clone(), [d_out]));
    save_weights(&sd, dir.path(), DEFAULT_MAX_SHARD_SIZE).unwrap();
    let file = dir.path().join(SAFE_WEIGHTS);
    let on_disk = std::fs::read(&file).unwrap();

    let lazy = load_dir_lazily(dir.path()).unwrap();
    assert!(lazy.tensors.values().all(|t| matches!(t.bytes.property(), AllocationProperty::File)));
    assert_same(&lazy, &sd);
    let device = Default::default();
    let linear = burn::nn::LinearConfig::new(d_in, d_out).init::<B>(&device);
    let (mut linear, _) =
        trl_core::load_module_owned(linear, lazy, trl_core::Strictness::Strict, trl_core::WeightDtype::F32, &|_| false)
            .unwrap();
    // row j of the identity gives column j of W plus b
    let y = linear.forward(Tensor::<B, 2>::eye(d_in, &device)).into_data().to_vec::<f32>().unwrap();
    let want: Vec<f32> =
        (0..d_in).flat_map(|j| (0..d_out).map(|o| w[o * d_in + j] + b[o]).collect::<Vec<_>>()).collect();
    assert_eq!(y, want);
    // the model's own state dict gives the checkpoint back
    assert_same(&trl_core::module_state_dict(&linear), &sd);
    // the bias is the only owner of its bytes here, so burn may write in place: it copies first
    let bias = linear.bias.take().unwrap().into_value().add_scalar(1.0);
    assert_eq!(bias.into_data().to_vec::<f32>().unwrap(), b.iter().map(|x| x + 1.0).collect::<Vec<_>>());
    let weight = linear.weight.into_value().mul_scalar(2.0);
    assert_eq!(weight.transpose().into_data().to_vec::<f32>().unwrap(), w.iter().map(|x| x * 2.0).collect::<Vec<_>>());
    assert!(std::fs::read(&file).unwrap() == on_disk, "the mapped file was written to");
}

#[test]
fn round_trip_single_file_is_bit_exact() {
    let dir = tempfile::tempdir().unwrap();
    // Every dtype (core fixture) plus a real model.
    for sd in [load_safetensors(&core("expected.safetensors")).unwrap(), load_dir(&fixture("gpt2")).unwrap()] {
        save_weights(&sd, dir.path(), DEFAULT_MAX_SHARD_SIZE).unwrap();
        assert_eq!(weight_files(dir.path()).unwrap(), [dir.path().join(SAFE_WEIGHTS)]);
        assert!(!dir.path().join(SAFE_INDEX).exists());
        assert_same(&load_dir(dir.path()).unwrap(), &sd);
    }
}

#[test]
fn round_trip_sharded_is_bit_exact() {
    let dir = tempfile::tempdir().unwrap();
    let sd = load_dir(&fixture("gpt2")).unwrap();
    save_weights(&sd, dir.path(), 100_000).unwrap();
    assert!(!dir.path().join(SAFE_WEIGHTS).exists());
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join(SAFE_INDEX)).unwrap()).unwrap();
    assert_eq!(index["metadata"]["total_size"].as_u64(), Some(sd.nbytes() as u64));
    let map = index["weight_map"].as_object().unwrap();
    assert_eq!(map.keys().map(String::as_str).collect::<Vec<_>>(), sd.keys().collect::<Vec<_>>());
    let mut shards: Vec<&str> = map.values().map(|v| v.as_str().unwrap()).collect();
    shards.sort();
    shards.dedup();
    assert!(shards.len() > 1);
    for (i, s) in shards.iter().enumerate() {
        assert_eq!(*s, format!("model-{:05}-of-{:05}.safetensors", i + 1, shards.len()));
        assert!(dir.path().join(s).is_file(), "{s} missing");
    }
    assert_same(&load_dir(dir.path()).unwrap(), &sd);
    // Saving the same directory again as one file drops the index.
    save_weights(&sd, dir.path(), DEFAULT_MAX_SHARD_SIZE).unwrap();
    assert!(!dir.path().join(SAFE_INDEX).exists());
    assert_same(&load_dir(dir.path()).unwrap(), &sd);
}

/// Tensors made one at a time go to the file as declared; one that does not match its declared
/// dtype or size, or a key given twice, is an error naming it and leaves no file behind.
#[test]
fn streamed_save_checks_each_tensor_against_its_header() {
    use std::borrow::Cow;
    use trl_core::checkpoint::save_safetensors_with;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("opt.safetensors");
    let made = |i: usize| TensorData::new(vec![i as f32; 6], [2, 3]);
    let header = |keys: &[&str]| keys.iter().map(|k| (k.to_string(), DType::F32, vec![2, 3])).collect::<Vec<_>>();
    save_safetensors_with(&path, header(&["b", "a"]), |i| Cow::Owned(made(i))).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    assert_eq!(meta.metadata().as_ref().and_then(|m| m.get("format")).map(String::as_str), Some("pt"));
    let sd = load_safetensors(&path).unwrap();
    assert_eq!(f32s(&sd.tensors["b"]), [0.0; 6]);
    assert_eq!(f32s(&sd.tensors["a"]), [1.0; 6]);

    let other = dir.path().join("bad.safetensors");
    let err = save_safetensors_with(&other, header(&["w"]), |_| Cow::Owned(TensorData::new(vec![0f32; 4], [4])))
        .unwrap_err()
        .to_string();
    assert!(err.contains("w: given F32 of 16 bytes, declared F32 of 24"), "{err}");
    let err = save_safetensors_with(&other, header(&["w", "w"]), |i| Cow::Owned(made(i))).unwrap_err().to_string();
    assert!(err.contains("the key w is given twice"), "{err}");
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, [std::ffi::OsString::from("opt.safetensors")], "no file or temp file of a failed save");
}

// ---------------------------------------------------------------------------------------------
// Hub cache
// ---------------------------------------------------------------------------------------------

const MAIN: &str = "1111111111111111111111111111111111111111";
const TAGGED: &str = "2222222222222222222222222222222222222222";
const PINNED: &str = "abcdefabcdefabcdefabcdefabcdefabcdef0123";

/// `models--org--tiny` with refs main → MAIN, v1 → TAGGED, and an unreferenced PINNED snapshot.
fn fake_cache() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    let repo = root.path().join("models--org--tiny");
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), MAIN).unwrap();
    std::fs::write(repo.join("refs/v1"), format!("{TAGGED}\n")).unwrap();
    for commit in [MAIN, TAGGED, PINNED] {
        let snap = repo.join("snapshots").join(commit);
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::write(snap.join("config.json"), format!("{{\"commit\": \"{commit}\"}}")).unwrap();
    }
    // A second repo whose snapshot lacks config.json (an interrupted download).
    let partial = root.path().join("models--org--partial");
    std::fs::create_dir_all(partial.join("refs")).unwrap();
    std::fs::write(partial.join("refs/main"), MAIN).unwrap();
    std::fs::create_dir_all(partial.join("snapshots").join(MAIN)).unwrap();
    std::fs::write(partial.join("snapshots").join(MAIN).join("model.safetensors"), b"").unwrap();
    root
}

#[test]
fn hub_cache_resolves_offline_by_name_ref_and_commit() {
    let root = fake_cache();
    let cache = HubCache::new(root.path(), true);
    let snap = |c: &str| root.path().join("models--org--tiny/snapshots").join(c);
    assert_eq!(cache.resolve("org/tiny").unwrap(), snap(MAIN));
    assert_eq!(cache.resolve("org/tiny@main").unwrap(), snap(MAIN));
    assert_eq!(cache.resolve("org/tiny@v1").unwrap(), snap(TAGGED));
    assert_eq!(cache.resolve(&format!("org/tiny@{PINNED}")).unwrap(), snap(PINNED));
    let cfg = HfConfig::load(&cache.resolve("org/tiny@v1").unwrap()).unwrap();
    assert_eq!(cfg.get_str("commit"), Some(TAGGED));
    let id = HubId::parse("org/tiny@v1").unwrap();
    assert_eq!(cache.repo_dir(&id), root.path().join("models--org--tiny"));
}

#[test]
fn hub_cache_missing_model_lists_the_paths_tried() {
    let root = fake_cache();
    let cache = HubCache::new(root.path(), true);
    let (e, msg) = err_string(cache.resolve("org/absent"));
    let Error::ModelNotFound { id, tried } = e else { panic!("wrong variant: {msg}") };
    assert_eq!(id, "org/absent");
    assert_eq!(tried, [PathBuf::from("org/absent"), root.path().join("models--org--absent/refs/main")]);
    assert!(msg.contains(&root.path().join("models--org--absent/refs/main").display().to_string()), "{msg}");

    // A snapshot without config.json does not count; its path is listed.
    let (e, msg) = err_string(cache.resolve("org/partial"));
    let Error::ModelNotFound { tried, .. } = e else { panic!("wrong variant: {msg}") };
    assert_eq!(tried.last().unwrap(), &root.path().join("models--org--partial/snapshots").join(MAIN));

    // An unknown branch and an unknown commit.
    let (_, msg) = err_string(cache.resolve("org/tiny@nope"));
    assert!(msg.contains("refs/nope"), "{msg}");
    let other = "3333333333333333333333333333333333333333";
    let (_, msg) = err_string(cache.resolve(&format!("org/tiny@{other}")));
    assert!(msg.contains(other), "{msg}");

    // Neither a directory nor a hub id.
    let (e, _) = err_string(cache.resolve("/no/such/dir"));
    assert!(matches!(e, Error::ModelNotFound { tried, .. } if tried == [PathBuf::from("/no/such/dir")]));
}

#[test]
fn local_directory_wins_over_the_hub_cache() {
    let root = fake_cache();
    let cache = HubCache::new(root.path(), true);
    let dir = fixture("gpt2");
    assert_eq!(cache.resolve(dir.to_str().unwrap()).unwrap(), dir);
    // A directory literally named like a hub id wins too.
    let cwd_like = root.path().join("org/tiny");
    std::fs::create_dir_all(&cwd_like).unwrap();
    assert_eq!(cache.resolve(cwd_like.to_str().unwrap()).unwrap(), cwd_like);
}

/// A stand-in for the hub's HTTP API on 127.0.0.1 (repo info + ranged file downloads), so the
/// download path runs without a network. Returns the endpoint URL.
fn fake_hub(repo: &'static str, sha: &'static str, files: Vec<(String, Vec<u8>)>) -> String {
    use std::io::BufRead;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
            let (mut request, mut range) = (String::new(), None);
            reader.read_line(&mut request).unwrap();
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap() == 0 || h.trim().is_empty() {
                    break;
                }
                if let Some(r) = h.to_ascii_lowercase().trim().strip_prefix("range: bytes=") {
                    let (a, b) = r.split_once('-').unwrap();
                    range = Some((a.parse::<usize>().unwrap(), b.parse::<usize>().ok()));
                }
            }
            let path = request.split_whitespace().nth(1).unwrap_or("");
            let file = files.iter().find(|(n, _)| path == format!("/{repo}/resolve/main/{n}"));
            let (status, headers, body) = if path == format!("/api/models/{repo}/revision/main") {
                let mut names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
                names.push("flax_model.msgpack"); // listed but never fetched
                let siblings: Vec<_> = names.iter().map(|n| serde_json::json!({ "rfilename": n })).collect();
                let body = serde_json::json!({ "siblings": siblings, "sha": sha }).to_string().into_bytes();
                ("200 OK", String::new(), body)
            } else if let Some((name, data)) = file {
                let (a, b) = range.unwrap_or((0, None));
                let end = b.map_or(data.len(), |b| b + 1).min(data.len());
                let headers = format!(
                    "ETag: \"etag-{name}\"\r\nX-Repo-Commit: {sha}\r\nContent-Range: bytes {a}-{}/{}\r\n",
                    end - 1,
                    data.len()
                );
                ("206 Partial Content", headers, data[a..end].to_vec())
            } else {
                ("404 Not Found", String::new(), b"not found".to_vec())
            };
            let head =
                format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n{headers}\r\n", body.len());
            let _ = stream.write_all(head.as_bytes()).and_then(|_| stream.write_all(&body));
        }
    });
    endpoint
}

#[test]
fn hub_download_fills_the_cache_then_resolves_offline() {
    if ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"]
        .iter()
        .any(|v| std::env::var_os(v).is_some())
    {
        eprintln!("NOTE: hub_download test not run: a proxy variable would route 127.0.0.1 through the proxy");
        return;
    }
    // A sharded model: config, tokenizer, index and two shards.
    let src = tempfile::tempdir().unwrap();
    let sd = load_safetensors(&core("expected.safetensors")).unwrap();
    save_weights(&sd, src.path(), 600).unwrap();
    std::fs::write(src.path().join("config.json"), "{\"model_type\": \"gpt2\"}").unwrap();
    std::fs::write(src.path().join("tokenizer.json"), "{}").unwrap();
    let files: Vec<(String, Vec<u8>)> = std::fs::read_dir(src.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| (p.file_name().unwrap().to_str().unwrap().to_string(), std::fs::read(&p).unwrap()))
        .collect();
    assert!(files.len() > 4, "expected several shards");
    let endpoint = fake_hub("org/remote", MAIN, files.clone());

    let root = tempfile::tempdir().unwrap();
    let online = HubCache { root: root.path().to_path_buf(), offline: false, endpoint: Some(endpoint) };
    let snap = online.resolve("org/remote").unwrap();
    assert_eq!(snap, root.path().join("models--org--remote/snapshots").join(MAIN));
    for (name, data) in &files {
        assert_eq!(&std::fs::read(snap.join(name)).unwrap(), data, "{name}");
    }
    assert!(!snap.join("flax_model.msgpack").exists());
    assert_same(&load_dir(&snap).unwrap(), &sd);
    assert_eq!(std::fs::read_to_string(root.path().join("models--org--remote/refs/main")).unwrap(), MAIN);
    // Now cached: found offline, by name and by commit.
    let offline = HubCache::new(root.path(), true);
    assert_eq!(offline.resolve("org/remote").unwrap(), snap);
    assert_eq!(offline.resolve(&format!("org/remote@{MAIN}")).unwrap(), snap);
    // A repo the hub does not have is a download error naming it.
    let (e, msg) = err_string(online.resolve("org/absent"));
    assert!(matches!(e, Error::Download { .. }), "{msg}");
    assert!(msg.contains("org/absent"), "{msg}");
}

// ---------------------------------------------------------------------------------------------
// Bad inputs
// ---------------------------------------------------------------------------------------------

fn copy_of(src: &Path, dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::copy(src, &p).unwrap();
    p
}

#[test]
fn truncated_safetensors_is_a_safetensors_error() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(fixture("gpt2").join(SAFE_WEIGHTS)).unwrap();
    let p = dir.path().join(SAFE_WEIGHTS);
    for cut in [0, 4, 8, 100, bytes.len() / 2, bytes.len() - 1] {
        std::fs::write(&p, &bytes[..cut]).unwrap();
        let (e, msg) = err_string(load_dir(dir.path()));
        assert!(matches!(e, Error::Safetensors { .. }), "cut at {cut}: {msg}");
        assert!(msg.contains(&p.display().to_string()), "{msg}");
    }
}

#[test]
fn corrupt_safetensors_header_is_a_safetensors_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = copy_of(&fixture("gpt2").join(SAFE_WEIGHTS), dir.path(), "bad.safetensors");
    let mut bytes = std::fs::read(&p).unwrap();
    bytes[8] = b'!'; // the header's opening `{`
    std::fs::write(&p, &bytes).unwrap();
    let (e, msg) = err_string(load_file(&p));
    assert!(matches!(e, Error::Safetensors { .. }), "{msg}");
    assert!(msg.contains("bad.safetensors"), "{msg}");
    // A header length pointing past the end of the file.
    bytes[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    std::fs::write(&p, &bytes).unwrap();
    assert!(matches!(load_file(&p), Err(Error::Safetensors { .. })));
}

#[test]
fn index_listing_a_missing_shard_is_a_missing_shard_error() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("gpt2-sharded");
    for f in std::fs::read_dir(&src).unwrap() {
        let f = f.unwrap().path();
        copy_of(&f, dir.path(), f.file_name().unwrap().to_str().unwrap());
    }
    std::fs::remove_file(dir.path().join("model-00003-of-00007.safetensors")).unwrap();
    let (e, msg) = err_string(load_dir(dir.path()));
    let Error::MissingShard { index, shard } = e else { panic!("wrong variant: {msg}") };
    assert_eq!((index, shard.as_str()), (dir.path().join(SAFE_INDEX), "model-00003-of-00007.safetensors"));
    assert!(msg.contains(SAFE_INDEX), "{msg}");
}

#[test]
fn unsupported_dtypes_name_the_key_and_dtype() {
    use safetensors::tensor::TensorView;
    use safetensors::Dtype;
    let dir = tempfile::tempdir().unwrap();
    for (dtype, name) in [(Dtype::U16, "U16"), (Dtype::F8_E4M3, "F8_E4M3")] {
        let bytes = vec![0u8; 8];
        let n = 8 / (dtype.bitsize() / 8);
        let view = TensorView::new(dtype, vec![n], &bytes).unwrap();
        let ok = TensorView::new(Dtype::F32, vec![1], &bytes[..4]).unwrap();
        let data = safetensors::serialize([("a.ok", ok), ("odd.weight", view)], None).unwrap();
        let p = dir.path().join(format!("{name}.safetensors"));
        std::fs::write(&p, data).unwrap();
        let (e, msg) = err_string(load_file(&p));
        let Error::UnsupportedDtype { key, dtype: d, path } = e else { panic!("wrong variant: {msg}") };
        assert_eq!((key.as_str(), d.as_str(), path), ("odd.weight", name, p));
    }
    // The same from a .bin (float8 is pickled through _rebuild_tensor_v3 + UntypedStorage).
    let (e, msg) = err_string(load_bin(&core("float8.bin")));
    let Error::UnsupportedDtype { key, dtype, .. } = e else { panic!("wrong variant: {msg}") };
    assert_eq!((key.as_str(), dtype.as_str()), ("f8", "float8_e4m3fn"));
    assert!(msg.contains("float8.bin"), "{msg}");
}

#[test]
fn unparsable_config_is_a_json_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), "{\"n_embd\": 64,").unwrap();
    let (e, msg) = err_string(HfConfig::load(dir.path()));
    assert!(matches!(e, Error::Json { .. }), "{msg}");
    assert!(msg.contains(&dir.path().join("config.json").display().to_string()), "{msg}");
    std::fs::write(dir.path().join("config.json"), "[1, 2]").unwrap();
    assert!(matches!(HfConfig::load(dir.path()), Err(Error::Config { .. })));
}

#[test]
fn truncated_and_legacy_bins_are_pickle_errors() {
    let (e, msg) = err_string(load_bin(&core("truncated.bin")));
    assert!(matches!(e, Error::Pickle { .. }), "{msg}");
    assert!(msg.contains("truncated.bin"), "{msg}");
    let (e, msg) = err_string(load_bin(&core("legacy.bin")));
    assert!(matches!(e, Error::Pickle { .. }), "{msg}");
    assert!(msg.contains("legacy") && msg.contains("re-save"), "{msg}");
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("pytorch_model.bin");
    std::fs::write(&p, b"").unwrap();
    assert!(matches!(load_dir(dir.path()), Err(Error::Pickle { .. })));
    let (e, _) = err_string(load_bin(&dir.path().join("absent.bin")));
    assert!(matches!(e, Error::Io { .. }));
}

/// Every truncation of a `.bin` fails cleanly, and no single flipped byte panics.
#[test]
fn bin_fuzz_truncations_and_flips_never_panic() {
    let bytes = std::fs::read(core("model.bin")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("fuzz.bin");
    for cut in 0..bytes.len() {
        std::fs::write(&p, &bytes[..cut]).unwrap();
        assert!(matches!(load_bin(&p), Err(Error::Pickle { .. })), "cut at {cut} did not fail as Pickle");
    }
    for i in 0..bytes.len() {
        let mut b = bytes.clone();
        b[i] ^= 0xff;
        std::fs::write(&p, &b).unwrap();
        let _ = load_bin(&p); // Ok or Err, never a panic
    }
}

/// The pickle itself, truncated and corrupted (the zip is rebuilt so CRCs match).
#[test]
fn bin_fuzz_corrupt_pickle_never_panics() {
    let mut zip = zip::ZipArchive::new(std::fs::File::open(core("model.bin")).unwrap()).unwrap();
    let mut entries = Vec::new();
    for i in 0..zip.len() {
        let mut f = zip.by_index(i).unwrap();
        let mut data = Vec::new();
        f.read_to_end(&mut data).unwrap();
        entries.push((f.name().to_string(), data));
    }
    let pkl = entries.iter().position(|(n, _)| n.ends_with("/data.pkl")).unwrap();
    let original = entries[pkl].1.clone();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("fuzz.bin");
    let write_with = |pickle: &[u8]| {
        let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
        for (i, (name, data)) in entries.iter().enumerate() {
            w.start_file(name.as_str(), opts).unwrap();
            w.write_all(if i == pkl { pickle } else { data }).unwrap();
        }
        std::fs::write(&p, w.finish().unwrap().into_inner()).unwrap();
        load_bin(&p)
    };
    assert_same(&write_with(&original).unwrap(), &load_bin(&core("model.bin")).unwrap());
    for cut in 0..original.len() {
        let (e, msg) = err_string(write_with(&original[..cut]));
        assert!(matches!(e, Error::Pickle { .. }), "cut at {cut}: {msg}");
    }
    for i in 0..original.len() {
        for x in [0x01, 0x80, 0xff] {
            let mut b = original.clone();
            b[i] ^= x;
            let _ = write_with(&b);
        }
    }
}
