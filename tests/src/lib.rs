//! Shared helpers for the cross-crate tests in `tests/tests/*.rs`: fixture paths, expected
//! tensors, and comparisons that report where the largest difference is.

use std::path::PathBuf;

use burn::prelude::*;
use trl_core::StateDict;
use trl_models::TokenBatch;

/// The backend tests run on (chosen by cargo feature, `flex` by default).
pub type B = trl_core::backend::Default;

/// Every causal-LM fixture: one or more per architecture, each with transformers' logits,
/// hidden states, loss and greedy generation in its `expected.safetensors`.
pub const DECODERS: &[&str] = &[
    "gpt2",
    "llama",
    "qwen2",
    "qwen3",
    "mistral",
    "gpt_neox",
    "gpt_neox-serial",
    "phi3",
    "phi3-long",
    "gemma2",
    "gemma3_text",
];

/// `tests/fixtures/<name>`, failing clearly when the fixtures were not generated.
pub fn fixture(name: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(name);
    assert!(p.exists(), "missing fixture {}: run `python3 tests/fixtures/make_fixtures.py`", p.display());
    p
}

/// Copies fixture directory `name` into `dir/name` (so a test can damage it) and returns it.
pub fn copy_fixture(name: &str, dir: &std::path::Path) -> PathBuf {
    let dst = dir.join(name);
    std::fs::create_dir_all(&dst).unwrap();
    for e in std::fs::read_dir(fixture(name)).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
    dst
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
    batch_of(ids, mask, &shape)
}

/// A batch of `shape` `[batch, seq]` rows with the given mask (positions from the mask).
pub fn batch_of(input_ids: Vec<i64>, attention_mask: Vec<i64>, shape: &[usize]) -> TokenBatch {
    TokenBatch { input_ids, attention_mask, batch: shape[0], seq: shape[1], position_ids: None, shared: None }
}

pub fn to_vec<const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec::<f32>().unwrap()
}

/// f32's unit roundoff `u = 2⁻²⁴`: one rounding changes a value by at most `u` of itself.
pub const U: f32 = f32::EPSILON / 2.0;

/// A comparison bound derived from f32 arithmetic, never from what one machine printed:
/// `|got − want| ≤ rel · max(1, max |want|)`.
///
/// **Why this form.** A sum of `K` products computed in f32, in any order and with any
/// blocking (the gemm kernels of different CPUs differ in exactly that), is within
/// `γ_K = K·u/(1 − K·u) ≈ K·u` of the exact sum, relative to `Σ|aᵢbᵢ|` (Higham, *Accuracy and
/// Stability of Numerical Algorithms*, §3.1). A forward pass is a chain of such reductions
/// (norms, projections, attention scores, softmax sums, the lm_head), and to first order their
/// relative errors add along the chain. The activations entering each reduction are normalised
/// (unit RMS after every norm), so `Σ|aᵢbᵢ|` is of the order of the output's scale or of 1,
/// whichever is larger: hence the `max(1, ·)`. Two independent computations (ours and
/// PyTorch's, or the AVX2 and AVX-512 kernels, or a model whose weights differ by an ulp)
/// each carry such an error, so their difference is bounded by twice one of them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tol {
    pub rel: f32,
}

impl Tol {
    /// Two f32 runs through a chain of reductions whose lengths add up to `chain`.
    pub fn chain(chain: usize) -> Self {
        Self { rel: 2.0 * chain as f32 * U }
    }

    /// Two f32 forward passes of fixture `name` (its `config.json`, or its adapter's base's)
    /// up to the logits / values / rewards: per layer the input norm, q/k/v (hidden), the
    /// attention scores (head_dim), softmax sum and weighted values (up to the model's
    /// `max_positions` keys each), the output projection, the second norm, the MLP's up and
    /// down projections (hidden, intermediate); then the final norm and the head (hidden).
    pub fn forward(name: &str) -> Self {
        let c = model_config(name);
        let get = |keys: &[&str]| keys.iter().find_map(|k| c.get(*k).and_then(|v| v.as_u64())).map(|v| v as usize);
        let hidden = get(&["hidden_size", "n_embd"]).expect("hidden size");
        let layers = get(&["num_hidden_layers", "n_layer"]).expect("layer count");
        let heads = get(&["num_attention_heads", "n_head"]).expect("head count");
        let inter = get(&["intermediate_size", "n_inner"]).unwrap_or(4 * hidden);
        let head_dim = get(&["head_dim"]).unwrap_or(hidden / heads);
        let keys = get(&["max_position_embeddings", "n_positions"]).expect("position limit");
        let per_layer = hidden + hidden + head_dim + 2 * keys + heads * head_dim + hidden + hidden + inter;
        Self::chain(layers * per_layer + 2 * hidden)
    }

    /// Two f32 forward passes of a DeBERTa fixture up to its logits: [`Self::forward`]'s chain
    /// per layer plus what disentangled attention adds (the c2p and p2c products, head_dim each,
    /// and the relative table's projection, hidden), the ConvLayer (kernel · hidden),
    /// `embed_proj` (embedding_size), the pooler and the classifier (hidden each).
    pub fn deberta(name: &str) -> Self {
        let c = model_config(name);
        let get = |k: &str| c[k].as_u64().unwrap_or(0) as usize;
        let (hidden, layers) = (get("hidden_size"), get("num_hidden_layers"));
        let head_dim = hidden / get("num_attention_heads");
        let extra =
            layers * (2 * head_dim + hidden) + get("conv_kernel_size") * hidden + get("embedding_size") + 2 * hidden;
        Self { rel: Self::forward(name).rel + Self::chain(extra).rel }
    }

    /// Two f32 forward passes of a T5 fixture up to its logits / values: per encoder layer the
    /// norm, q/k/v (d_model), the scores (d_kv), softmax sum and weighted values (up to
    /// `n_positions` keys each), the output projection (heads · d_kv), the second norm and the
    /// feed-forward (d_model, d_ff); per decoder layer the same plus the cross-attention (norm,
    /// q and the encoder's k/v, scores, softmax, values, output: the encoder's chain feeds it);
    /// then both final norms and the head (d_model).
    pub fn t5(name: &str) -> Self {
        let c = model_config(name);
        let get = |k: &str| c[k].as_u64().unwrap_or(0) as usize;
        let (d, kv, ff, keys) = (get("d_model"), get("d_kv"), get("d_ff"), get("n_positions").max(1));
        let inner = get("num_heads") * kv;
        let attention = d + d + kv + 2 * keys + inner;
        let enc = get("num_layers") * (attention + d + d + ff);
        let dec =
            c["num_decoder_layers"].as_u64().map_or(get("num_layers"), |v| v as usize) * (2 * attention + d + d + ff);
        Self::chain(enc + dec + 3 * d)
    }

    /// Log-probabilities (or a cross-entropy) over `vocab` from logits within `logits`: the
    /// log-sum-exp is 1-Lipschitz in the logits, so each of the two terms of `z_y − lse(z)`
    /// contributes the logits' error, plus the `vocab`-term sum of the log-sum-exp itself and
    /// a mean over up to `tokens` terms.
    pub fn log_softmax(logits: Self, vocab: usize, tokens: usize) -> Self {
        Self { rel: 2.0 * logits.rel + Self::chain(vocab + tokens).rel }
    }

    /// The bound for values of scale `want`.
    pub fn bound(self, want: &[f32]) -> f32 {
        self.rel * want.iter().fold(1.0f32, |m, w| m.max(w.abs()))
    }
}

/// The `config.json` of fixture `name`, or of the base named by its `adapter_config.json`.
fn model_config(name: &str) -> serde_json::Value {
    let dir = fixture(name);
    let read = |p: PathBuf| -> serde_json::Value { serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap() };
    if dir.join("config.json").is_file() {
        return read(dir.join("config.json"));
    }
    let adapter = read(dir.join("adapter_config.json"));
    let base = adapter["base_model_name_or_path"].as_str().expect("adapter base");
    read(dir.join(base).join("config.json"))
}

/// Max |a - b| over positions where `keep(i)` (flat index), panicking with context if it is
/// over `tol`'s bound for `want`'s scale.
pub fn assert_close_where(what: &str, got: &[f32], want: &[f32], tol: Tol, keep: impl Fn(usize) -> bool) {
    assert_eq!(got.len(), want.len(), "{what}: length {} vs expected {}", got.len(), want.len());
    let bound = tol.bound(want);
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
        worst.0 <= bound,
        "{what}: max |Δ| = {} at flat index {} (got {}, want {}), bound {bound} ({tol:?})",
        worst.0,
        worst.1,
        got[worst.1],
        want[worst.1]
    );
}

pub fn assert_close(what: &str, got: &[f32], want: &[f32], tol: Tol) {
    assert_close_where(what, got, want, tol, |_| true);
}

/// An issue's acceptance bar, absolute: max |got − want| over the positions `keep` admits is
/// at most `abs`. Checked beside the derived bound where an issue names a number: the bound
/// promises what f32 arithmetic can in the worst case, the bar is what was asked for.
pub fn assert_within(what: &str, got: &[f32], want: &[f32], abs: f32, keep: impl Fn(usize) -> bool) {
    assert_eq!(got.len(), want.len(), "{what}: length {} vs expected {}", got.len(), want.len());
    let worst =
        got.iter().zip(want).enumerate().filter(|(i, _)| keep(*i)).map(|(_, (g, w))| (g - w).abs()).fold(0.0, f32::max);
    assert!(worst <= abs, "{what}: max |Δ| = {worst}, over the acceptance bar {abs}");
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
