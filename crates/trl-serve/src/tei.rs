//! text-embeddings-inference's classifier API: `POST /predict`, `/rerank`, `GET /health`, `/info`.

use axum::body::Bytes;
use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::model::ModelKind;
use crate::state::{activated, parse, sigmoid, Cut, Input, Shared};

/// A text, or a pair of texts (scored as one: the first, then the second).
#[derive(Deserialize)]
#[serde(untagged)]
enum Sequence {
    Single(String),
    Pair(String, String),
}

impl From<Sequence> for Input {
    fn from(s: Sequence) -> Self {
        match s {
            Sequence::Single(t) => Input::Text(t),
            Sequence::Pair(a, b) => Input::Pair(a, b),
        }
    }
}

/// As text-embeddings-inference reads `inputs`: a string or a pair of strings is one input; any
/// other list is a batch (so `["a", "b"]` is the pair, `[["a"], ["b"]]` is not valid, and
/// `["a", "b", "c"]` is a batch of three).
#[derive(Deserialize)]
#[serde(untagged)]
enum PredictInput {
    Single(Sequence),
    Batch(Vec<Sequence>),
}

#[derive(Deserialize, Clone, Copy, Default)]
enum Direction {
    #[default]
    #[serde(alias = "right")]
    Right,
    #[serde(alias = "left")]
    Left,
}

#[derive(Deserialize)]
struct PredictRequest {
    inputs: PredictInput,
    #[serde(default)]
    raw_scores: bool,
    #[serde(default)]
    truncate: Option<bool>,
    #[serde(default)]
    truncation_direction: Direction,
}

/// `truncate` as the request asks, else the server's `--truncate`.
fn cut(s: &Shared, truncate: Option<bool>, direction: Direction) -> Option<Cut> {
    let on = truncate.unwrap_or(s.limits.truncate);
    on.then_some(match direction {
        Direction::Right => Cut::Right,
        Direction::Left => Cut::Left,
    })
}

async fn rewards(s: &Shared, inputs: Vec<Input>, cut: Option<Cut>) -> Result<Vec<Vec<f32>>, ApiError> {
    s.check_batch(inputs.len())?;
    let rows = inputs.iter().enumerate().map(|(i, x)| s.tokenize(x, true, cut, i)).collect::<Result<Vec<_>, _>>()?;
    s.run(s.adapter(None)?, rows, false).await
}

/// `{"inputs", "raw_scores"?, "truncate"?, "truncation_direction"?}` → `[{"score", "label"}]`
/// for one input (every label, best first), a list of those for a batch. A sigmoid for one
/// label, a softmax over several, unless `raw_scores`.
pub async fn predict(State(s): State<Shared>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let req: PredictRequest = parse(&body)?;
    let (batch, inputs): (bool, Vec<Input>) = match req.inputs {
        PredictInput::Single(x) => (false, vec![x.into()]),
        PredictInput::Batch(v) => (true, v.into_iter().map(Input::from).collect()),
    };
    let out = rewards(&s, inputs, cut(&s, req.truncate, req.truncation_direction)).await?;
    let labels = s.labels();
    let lists: Vec<Value> = out
        .iter()
        .map(|r| {
            let scored = activated(r, &labels, req.raw_scores);
            Value::Array(scored.into_iter().map(|(score, label)| json!({ "score": score, "label": label })).collect())
        })
        .collect();
    Ok(Json(if batch { Value::Array(lists) } else { lists.into_iter().next().unwrap_or_default() }))
}

#[derive(Deserialize)]
struct RerankRequest {
    query: String,
    texts: Vec<String>,
    #[serde(default)]
    raw_scores: bool,
    #[serde(default)]
    return_text: bool,
    #[serde(default)]
    truncate: Option<bool>,
    #[serde(default)]
    truncation_direction: Direction,
}

/// `{"query", "texts", "raw_scores"?, "return_text"?, "truncate"?}` → `[{"index", "score",
/// "text"?}]`, best first: the reward of the query followed by each text (sigmoid of the first
/// label unless `raw_scores`).
pub async fn rerank(State(s): State<Shared>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let req: RerankRequest = parse(&body)?;
    let inputs = req.texts.iter().map(|t| Input::Pair(req.query.clone(), t.clone())).collect();
    let out = rewards(&s, inputs, cut(&s, req.truncate, req.truncation_direction)).await?;
    let mut ranked: Vec<(usize, f32)> =
        out.iter().enumerate().map(|(i, r)| (i, if req.raw_scores { r[0] } else { sigmoid(r[0]) })).collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
    let data = ranked
        .into_iter()
        .map(|(index, score)| match req.return_text {
            true => json!({ "index": index, "score": score, "text": req.texts[index] }),
            false => json!({ "index": index, "score": score }),
        })
        .collect();
    Ok(Json(Value::Array(data)))
}

pub async fn health() -> Json<Value> {
    Json(json!({}))
}

/// The model and the server's limits, in text-embeddings-inference's layout.
pub async fn info(State(s): State<Shared>) -> Json<Value> {
    let model_type = match &s.info.kind {
        ModelKind::Reward { labels } => {
            let id2label: serde_json::Map<String, Value> =
                labels.iter().enumerate().map(|(i, l)| (i.to_string(), json!(l))).collect();
            let label2id: serde_json::Map<String, Value> =
                labels.iter().enumerate().map(|(i, l)| (l.clone(), json!(i))).collect();
            json!({ "classifier": { "id2label": id2label, "label2id": label2id } })
        }
        ModelKind::ValueHead => json!({ "value_head": {} }),
    };
    Json(json!({
        "model_id": s.model_id,
        "model_sha": null,
        "model_dtype": s.info.dtype,
        "model_type": model_type,
        "architecture": s.info.model_type,
        "adapters": s.info.adapters,
        "normalize_reward": s.info.normalization.map(|(mean, std)| json!({ "mean": mean, "std": std })),
        "max_concurrent_requests": s.limits.max_concurrent_requests,
        "max_input_length": s.limits.max_input_length,
        "max_batch_tokens": s.limits.max_batch_tokens,
        "max_client_batch_size": s.limits.max_client_batch_size,
        "auto_truncate": s.limits.truncate,
        "version": env!("CARGO_PKG_VERSION"),
    }))
}
