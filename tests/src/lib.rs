//! Shared helpers for the cross-crate tests in `tests/tests/*.rs`: fixture paths, expected
//! tensors, and comparisons that report where the largest difference is.

use std::path::PathBuf;

use burn::prelude::*;
use trl_core::StateDict;
use trl_models::TokenBatch;

/// The backend tests run on (chosen by cargo feature, `flex` by default).
pub type B = trl_core::backend::Default;

/// `tests/fixtures/<name>`, failing clearly when the fixtures were not generated.
pub fn fixture(name: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(name);
    assert!(p.exists(), "missing fixture {}: run `python3 tests/fixtures/make_fixtures.py`", p.display());
    p
}

/// The expected tensors of a fixture directory.
pub fn expected(name: &str) -> StateDict {
    trl_core::checkpoint::load_safetensors(&fixture(name).join("expected.safetensors")).expect("expected.safetensors")
}

pub fn ints(sd: &StateDict, key: &str) -> (Vec<i64>, Vec<usize>) {
    let t = sd.get(key).unwrap_or_else(|| panic!("expected tensor `{key}` missing"));
    (t.clone().convert::<i64>().to_vec::<i64>().unwrap(), t.shape.to_vec())
}

pub fn floats(sd: &StateDict, key: &str) -> (Vec<f32>, Vec<usize>) {
    let t = sd.get(key).unwrap_or_else(|| panic!("expected tensor `{key}` missing"));
    (t.clone().convert::<f32>().to_vec::<f32>().unwrap(), t.shape.to_vec())
}

/// The `<case>.input_ids` / `<case>.attention_mask` batch of an expected file.
pub fn batch(sd: &StateDict, case: &str) -> TokenBatch {
    let (ids, shape) = ints(sd, &format!("{case}.input_ids"));
    let mask = sd
        .get(&format!("{case}.attention_mask"))
        .map(|_| ints(sd, &format!("{case}.attention_mask")).0)
        .unwrap_or_else(|| vec![1; ids.len()]);
    TokenBatch { input_ids: ids, attention_mask: mask, batch: shape[0], seq: shape[1], position_ids: None }
}

pub fn to_vec<const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec::<f32>().unwrap()
}

/// Max |a - b| over positions where `keep(i)` (flat index), panicking with context if > tol.
pub fn assert_close_where(what: &str, got: &[f32], want: &[f32], tol: f32, keep: impl Fn(usize) -> bool) {
    assert_eq!(got.len(), want.len(), "{what}: length {} vs expected {}", got.len(), want.len());
    let mut worst = (0.0f32, 0usize);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        if !keep(i) {
            continue;
        }
        let d = (g - w).abs();
        assert!(d.is_finite(), "{what}: non-finite at {i}: got {g}, want {w}");
        if d > worst.0 {
            worst = (d, i);
        }
    }
    assert!(
        worst.0 <= tol,
        "{what}: max |Δ| = {} at flat index {} (got {}, want {}), tolerance {tol}",
        worst.0,
        worst.1,
        got[worst.1],
        want[worst.1]
    );
}

pub fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_close_where(what, got, want, tol, |_| true);
}

/// The lines of `dir/metrics.jsonl`, as text (floats compared digit for digit), without the
/// wall-clock `pairs_per_sec`: what an interrupted-and-resumed run must reproduce.
pub fn metrics_lines(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| match l.find(",\"pairs_per_sec\":") {
            Some(i) => format!("{}}}", &l[..i]),
            None => l.to_string(),
        })
        .collect()
}
