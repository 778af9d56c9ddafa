//! OpenRLHF's remote reward model (`--remote_rm_url`): `POST /get_reward`.

use axum::body::Bytes;
use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::state::{parse, Input, Shared};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetReward {
    /// Prompt and response, already joined as the policy produced them.
    query: Vec<String>,
    /// Sent by OpenRLHF for rule-based reward functions; a reward model reads `query` only.
    #[serde(default)]
    prompts: Option<Vec<String>>,
    #[serde(default)]
    labels: Option<Vec<Value>>,
}

/// `{"query": [str], "prompts"?, "labels"?}` → `{"rewards": [f], "scores": [f], "extra_logs": {}}`.
///
/// Each query is scored as given, without special tokens; with `--append-eos` (the older
/// OpenRLHF server) trailing EOS / pad strings are stripped, one EOS appended, and the
/// tokenizer's special tokens added.
pub async fn get_reward(State(s): State<Shared>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let req: GetReward = parse(&body)?;
    s.check_batch(req.query.len())?;
    for (name, n) in [("prompts", req.prompts.as_ref().map(Vec::len)), ("labels", req.labels.as_ref().map(Vec::len))] {
        if let Some(n) = n.filter(|&n| n != req.query.len()) {
            return Err(ApiError::invalid(format!("`{name}` has {n} entries but `query` has {}", req.query.len())));
        }
    }
    let rows = req
        .query
        .into_iter()
        .enumerate()
        .map(|(i, q)| s.tokenize(&Input::Text(q), s.limits.append_eos, s.server_cut(), i))
        .collect::<Result<Vec<_>, _>>()?;
    let adapter = s.adapter(None)?;
    let rewards: Vec<f32> = s.run(adapter, rows, false).await?.into_iter().map(|r| r[0]).collect();
    Ok(Json(json!({ "rewards": rewards, "scores": rewards, "extra_logs": {} })))
}
