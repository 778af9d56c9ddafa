//! vLLM's (and SGLang's) pooling API: `POST /classify`, `/score`, `/pooling`, `GET /v1/models`.

use axum::body::Bytes;
use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use trl_reward::data::Message;

use crate::error::ApiError;
use crate::model::ModelKind;
use crate::state::{activate, now, parse, sigmoid, Input, Shared};

/// A string or a list of strings.
#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

/// `input` (texts) or `messages` (one conversation, rendered with the chat template).
#[derive(Deserialize)]
struct InputRequest {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    input: Option<OneOrMany>,
    #[serde(default)]
    messages: Option<Vec<Message>>,
    #[serde(default)]
    use_activation: Option<bool>,
}

impl InputRequest {
    fn inputs(&mut self) -> Result<Vec<Input>, ApiError> {
        match (self.input.take(), self.messages.take()) {
            (Some(i), None) => Ok(i.into_vec().into_iter().map(Input::Text).collect()),
            (None, Some(m)) => Ok(vec![Input::Messages(m)]),
            _ => Err(ApiError::invalid("send exactly one of `input` (a string or a list) and `messages`")),
        }
    }
}

fn response(kind: &str, model: &str, data: Vec<Value>, prompt_tokens: usize) -> Json<Value> {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    Json(json!({
        "id": format!("{kind}-{nanos:x}"),
        "object": "list",
        "created": now(),
        "model": model,
        "data": data,
        "usage": { "prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens, "completion_tokens": 0 },
    }))
}

/// Tokenizes `inputs` and runs them; returns the outputs and the prompt token count.
async fn run(
    s: &Shared,
    model: Option<&str>,
    inputs: &[Input],
    per_token: bool,
) -> Result<(Vec<Vec<f32>>, usize), ApiError> {
    let adapter = s.adapter(model)?;
    s.check_batch(inputs.len())?;
    let rows = inputs
        .iter()
        .enumerate()
        .map(|(i, x)| s.tokenize(x, true, s.server_cut(), i))
        .collect::<Result<Vec<_>, _>>()?;
    let tokens = rows.iter().map(Vec::len).sum();
    Ok((s.run(adapter, rows, per_token).await?, tokens))
}

/// `{"model"?, "input": str | [str]}` or `{"model"?, "messages"}` → one `{"index", "label",
/// "probs", "num_classes"}` per input: `probs` are the raw logits unless `use_activation`
/// (then a sigmoid for one label, a softmax over several); `label` is the largest one's.
pub async fn classify(State(s): State<Shared>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let mut req: InputRequest = parse(&body)?;
    let inputs = req.inputs()?;
    let (out, tokens) = run(&s, req.model.as_deref(), &inputs, false).await?;
    let labels = s.labels();
    let data = out
        .into_iter()
        .enumerate()
        .map(|(index, logits)| {
            let probs = if req.use_activation.unwrap_or(false) { activate(&logits) } else { logits };
            let best = (0..probs.len()).max_by(|&a, &b| probs[a].total_cmp(&probs[b])).unwrap_or(0);
            json!({ "index": index, "label": labels.get(best), "probs": probs, "num_classes": probs.len() })
        })
        .collect();
    Ok(response("classify", &served(&s, req.model), data, tokens))
}

#[derive(Deserialize)]
struct ScoreRequest {
    #[serde(default)]
    model: Option<String>,
    text_1: OneOrMany,
    text_2: OneOrMany,
    #[serde(default)]
    use_activation: Option<bool>,
}

/// `{"model"?, "text_1", "text_2"}` (1 to 1, 1 to N, or N to N) → one `{"index", "object":
/// "score", "score"}` per pair: the reward of `text_1` followed by `text_2` (a prompt and its
/// response), raw unless `use_activation` (sigmoid).
pub async fn score(State(s): State<Shared>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let req: ScoreRequest = parse(&body)?;
    let (a, b) = (req.text_1.into_vec(), req.text_2.into_vec());
    let pairs: Vec<Input> = match (a.len(), b.len()) {
        (1, _) => b.into_iter().map(|t| Input::Pair(a[0].clone(), t)).collect(),
        (n, m) if n == m => a.into_iter().zip(b).map(|(x, y)| Input::Pair(x, y)).collect(),
        (n, m) => {
            return Err(ApiError::invalid(format!(
                "`text_1` has {n} texts and `text_2` {m}: send one `text_1`, or as many as `text_2`"
            )))
        }
    };
    let (out, tokens) = run(&s, req.model.as_deref(), &pairs, false).await?;
    let act = req.use_activation.unwrap_or(false);
    let data = out
        .into_iter()
        .enumerate()
        .map(|(index, r)| json!({ "index": index, "object": "score", "score": if act { sigmoid(r[0]) } else { r[0] } }))
        .collect();
    Ok(response("score", &served(&s, req.model), data, tokens))
}

/// `{"model"?, "input"}` or `messages` → one `{"index", "object": "pooling", "data"}` per
/// input: per-token values `[f]` of a value-head model, per-token scores `[[f; num_labels]]`
/// of a reward model.
pub async fn pooling(State(s): State<Shared>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let mut req: InputRequest = parse(&body)?;
    let inputs = req.inputs()?;
    let (out, tokens) = run(&s, req.model.as_deref(), &inputs, true).await?;
    let labels = s.labels().len();
    let data = out
        .into_iter()
        .enumerate()
        .map(|(index, v)| {
            let data = match s.info.kind {
                ModelKind::ValueHead => json!(v),
                ModelKind::Reward { .. } => json!(v.chunks(labels).collect::<Vec<_>>()),
            };
            json!({ "index": index, "object": "pooling", "data": data })
        })
        .collect();
    Ok(response("pool", &served(&s, req.model), data, tokens))
}

fn served(s: &Shared, model: Option<String>) -> String {
    model.unwrap_or_else(|| s.served_model_name.clone())
}

/// The base model and each adapter, as OpenAI's model list.
pub async fn models(State(s): State<Shared>) -> Json<Value> {
    let entry = |id: &str, parent: Option<&str>| {
        json!({
            "id": id, "object": "model", "created": s.created, "owned_by": "trl-rs", "root": s.model_id,
            "parent": parent, "max_model_len": s.info.max_positions,
        })
    };
    let mut data = vec![entry(&s.served_model_name, None)];
    data.extend(s.info.adapters.iter().map(|a| entry(a, Some(&s.served_model_name))));
    Json(json!({ "object": "list", "data": data }))
}
