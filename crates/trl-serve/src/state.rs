//! What every route shares: the options, the tokenizer, the engine, and turning a request's
//! texts into scored rows under the server's limits.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::StatusCode;
use serde::de::DeserializeOwned;
use tokio::sync::oneshot;

use trl_core::Tokenizer;
use trl_reward::data::{render, Content, Message};

use crate::engine::{Engine, Task};
use crate::error::ApiError;
use crate::model::{ModelInfo, ModelKind};

/// The server's limits and text policy (see `cargo xtask serve --help`).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Requests in flight at once; more get a 429.
    pub max_concurrent_requests: usize,
    /// Padded tokens (rows × longest row) per model batch.
    pub max_batch_tokens: usize,
    pub max_client_batch_size: usize,
    /// Tokens a text may have, special tokens included.
    pub max_input_length: usize,
    /// Cut over-long texts (keeping their start) where a request cannot say.
    pub truncate: bool,
    /// Strip trailing EOS / pad strings from each text and append one EOS, as training does
    /// and as older OpenRLHF clients expect.
    pub append_eos: bool,
    pub request_timeout: Duration,
}

/// One text to score, as a request gives it.
#[derive(Debug, Clone)]
pub enum Input {
    Text(String),
    /// Two texts scored as one: `first` then `second` (a prompt and its response).
    Pair(String, String),
    /// A conversation, rendered with the model's chat template.
    Messages(Vec<Message>),
}

/// Which end of an over-long text `truncate` drops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Cut {
    /// Keep the start (text-embeddings-inference's default).
    #[default]
    Right,
    /// Keep the end, where a reward is read.
    Left,
}

pub struct AppState {
    pub engine: Engine,
    pub tokenizer: Tokenizer,
    pub info: ModelInfo,
    pub limits: Limits,
    pub served_model_name: String,
    pub model_id: String,
    pub metrics: crate::metrics::Metrics,
    /// Unix seconds at start.
    pub created: u64,
}

pub type Shared = Arc<AppState>;

pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Parses a JSON body: not JSON is a 400, the wrong shape a 422 naming the field.
pub fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(ApiError::body)
}

impl AppState {
    /// The adapter a request's `model` names: None for the base (or no `model`), else its index.
    pub fn adapter(&self, model: Option<&str>) -> Result<Option<usize>, ApiError> {
        let base = || match self.info.base_scores {
            true => Ok(None),
            false => Err(ApiError::invalid(format!(
                "the base model has no trained score head, only its adapters do: name one as `model` ({})",
                self.info.adapters.join(", ")
            ))),
        };
        match model {
            None => base(),
            Some(m) if m == self.served_model_name || m == self.model_id => base(),
            Some(m) => match self.info.adapters.iter().position(|a| a == m) {
                Some(i) => Ok(Some(i)),
                None => {
                    let mut names = vec![self.served_model_name.clone()];
                    names.extend(self.info.adapters.iter().cloned());
                    Err(ApiError::new(
                        StatusCode::NOT_FOUND,
                        "not_found",
                        format!("the model `{m}` is not served here; served: {}", names.join(", ")),
                    ))
                }
            },
        }
    }

    /// At least one input and at most `--max-client-batch-size`.
    pub fn check_batch(&self, n: usize) -> Result<(), ApiError> {
        if n == 0 {
            return Err(ApiError::invalid("no inputs: send at least one text"));
        }
        let max = self.limits.max_client_batch_size;
        if n > max {
            return Err(ApiError::too_large(format!(
                "batch of {n} inputs is larger than the server's --max-client-batch-size {max}; split the request"
            )));
        }
        Ok(())
    }

    /// The text with trailing EOS / pad strings dropped and one EOS appended (`--append-eos`).
    fn with_eos(&self, text: &str) -> String {
        let Some(eos) = self.tokenizer.eos_token.as_deref().filter(|e| !e.is_empty()) else { return text.into() };
        let pad = self.tokenizer.pad_token.as_deref().filter(|p| !p.is_empty());
        let mut t = text;
        loop {
            let before = t.len();
            t = t.strip_suffix(eos).unwrap_or(t);
            if let Some(p) = pad {
                t = t.strip_suffix(p).unwrap_or(t);
            }
            if t.len() == before {
                break;
            }
        }
        format!("{t}{eos}")
    }

    /// Token ids of one input: plain texts with the tokenizer's special tokens when `special`
    /// (as `tokenizer(text)`), conversations through the chat template without (the template
    /// writes them). Longer than `--max-input-length`: cut when `truncate` says which end,
    /// else a 413 naming the input.
    pub fn tokenize(
        &self,
        input: &Input,
        special: bool,
        truncate: Option<Cut>,
        at: usize,
    ) -> Result<Vec<i64>, ApiError> {
        let text_ids = |text: &str| {
            let text = if self.limits.append_eos { self.with_eos(text) } else { text.to_string() };
            self.tokenizer.encode(&text, special).map_err(|e| ApiError::invalid(format!("input {at}: {e}")))
        };
        let mut ids = match input {
            Input::Text(t) => text_ids(t)?,
            Input::Pair(a, b) if self.info.encoder => {
                self.tokenizer.encode_pair(a, b, special).map_err(|e| ApiError::invalid(format!("input {at}: {e}")))?
            }
            Input::Pair(a, b) => text_ids(&format!("{a}{b}"))?,
            Input::Messages(m) => {
                let text = render(None, &Content::Messages(m.clone()), &self.tokenizer, "", None)
                    .map_err(|e| ApiError::invalid(format!("input {at}: {e}")))?;
                self.tokenizer.encode(&text, false).map_err(|e| ApiError::invalid(format!("input {at}: {e}")))?
            }
        };
        if ids.is_empty() {
            return Err(ApiError::invalid(format!("input {at} has no tokens: nothing to score")));
        }
        let max = self.limits.max_input_length;
        if ids.len() > max {
            match truncate {
                Some(Cut::Right) => ids.truncate(max),
                Some(Cut::Left) => {
                    ids.drain(..ids.len() - max);
                }
                None => {
                    return Err(ApiError::too_large(format!(
                        "input {at} has {} tokens, more than the server's --max-input-length {max}; shorten it or \
                         ask for truncation (`\"truncate\": true`, or serve with --truncate)",
                        ids.len()
                    )))
                }
            }
        }
        Ok(ids)
    }

    /// The default truncation of routes whose requests cannot ask for it.
    pub fn server_cut(&self) -> Option<Cut> {
        self.limits.truncate.then_some(Cut::Right)
    }

    /// Runs `rows` through the model: one reward vector per row (normalised with
    /// `--normalize-reward`), or per-token outputs.
    pub async fn run(
        &self,
        adapter: Option<usize>,
        rows: Vec<Vec<i64>>,
        per_token: bool,
    ) -> Result<Vec<Vec<f32>>, ApiError> {
        if per_token && self.info.encoder {
            return Err(ApiError::invalid(
                "this is an encoder reward model: it has one score per text (POST /classify, /score, /predict or \
                 /rerank), no per-token scores",
            ));
        }
        if !per_token && self.info.kind == ModelKind::ValueHead {
            return Err(ApiError::invalid(
                "this is a value-head model: it has per-token values (POST /pooling), not rewards",
            ));
        }
        let (reply, rx) = oneshot::channel();
        let unavailable = |m: String| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unhealthy", m);
        self.engine.submit(Task { adapter, rows, per_token, reply }).map_err(unavailable)?;
        let timeout = self.limits.request_timeout;
        let mut out = match tokio::time::timeout(timeout, rx).await {
            Err(_) => {
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "timeout",
                    format!(
                        "no answer from the model within --request-timeout {}s; retry, or send smaller batches",
                        timeout.as_secs_f64()
                    ),
                ))
            }
            Ok(Err(_)) => return Err(unavailable("the model thread has stopped".into())),
            Ok(Ok(Err(e))) => return Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "backend", e)),
            Ok(Ok(Ok(out))) => out,
        };
        if let (false, Some((mean, std))) = (per_token, self.info.normalization) {
            for r in out.iter_mut().flatten() {
                *r = ((*r as f64 - mean) / std) as f32;
            }
        }
        Ok(out)
    }

    /// Label names of a reward model (`LABEL_0` … when it has none).
    pub fn labels(&self) -> Vec<String> {
        match &self.info.kind {
            ModelKind::Reward { labels } => labels.clone(),
            ModelKind::ValueHead => vec!["value".into()],
        }
    }
}

/// The classifier activation both client families apply: a sigmoid for one label, a softmax
/// over several.
pub fn activate(scores: &[f32]) -> Vec<f32> {
    match scores.len() {
        1 => vec![sigmoid(scores[0])],
        _ => softmax(scores),
    }
}

/// `(score, label)` pairs of one reward vector, best first, with text-embeddings-inference's
/// activation ([`activate`]) unless `raw`.
pub fn activated(scores: &[f32], labels: &[String], raw: bool) -> Vec<(f32, String)> {
    let values = if raw { scores.to_vec() } else { activate(scores) };
    let mut out: Vec<(f32, String)> = values
        .into_iter()
        .enumerate()
        .map(|(i, s)| (s, labels.get(i).cloned().unwrap_or_else(|| format!("LABEL_{i}"))))
        .collect();
    out.sort_by(|a, b| b.0.total_cmp(&a.0));
    out
}

pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

fn softmax(x: &[f32]) -> Vec<f32> {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = x.iter().map(|v| (v - max).exp()).collect();
    let sum: f32 = e.iter().sum();
    e.into_iter().map(|v| v / sum).collect()
}
