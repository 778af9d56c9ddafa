//! Errors: [`ServeError`] when the server cannot start, [`ApiError`] as a request's JSON answer.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// Why the server could not start (or stopped).
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Core(#[from] trl_core::Error),
    #[error(transparent)]
    Head(#[from] trl_heads::HeadError),
    #[error("{0}")]
    Config(String),
    #[error("cannot listen on {addr}: {source} (is another server on that port? pass another --port)")]
    Bind { addr: String, source: std::io::Error },
    #[error("server: {0}")]
    Io(#[from] std::io::Error),
}

/// A request that gets no scores: its HTTP status and a one-line reason, sent as JSON that
/// both client families read: text-embeddings-inference's `{"error", "error_type"}` and
/// vLLM's / OpenAI's `{"object": "error", "message", "type", "code"}`.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self { status, kind, message: message.into() }
    }

    /// 422: the body is JSON of the wrong shape, or a value is out of range.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "validation", message)
    }

    /// 413: an input or a batch over the server's limits.
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "validation", message)
    }

    /// A body that is not JSON (400) or not the JSON this route takes (422).
    pub fn body(e: serde_json::Error) -> Self {
        use serde_json::error::Category;
        match e.classify() {
            Category::Data => Self::invalid(format!("request body: {e}")),
            _ => Self::new(StatusCode::BAD_REQUEST, "validation", format!("request body is not JSON: {e}")),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({
            "error": self.message,
            "error_type": self.kind,
            "object": "error",
            "message": self.message,
            "type": self.kind,
            "code": self.status.as_u16(),
        });
        (self.status, Json(body)).into_response()
    }
}
