//! The router, the guard every request passes, and graceful shutdown.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tokio::sync::Semaphore;

use crate::error::ApiError;
use crate::state::Shared;
use crate::{openrlhf, tei, vllm};

/// Largest request body (a batch of long texts fits many times over).
const MAX_BODY_BYTES: usize = 32 << 20;

#[derive(Clone)]
struct Guard {
    state: Shared,
    permits: Arc<Semaphore>,
}

/// Every route. Model routes hold one of `--max-concurrent-requests` permits from before the
/// body is read until the answer is written; none free is a 429.
pub fn router(state: Shared) -> Router {
    let guard = Guard { permits: Arc::new(Semaphore::new(state.limits.max_concurrent_requests)), state: state.clone() };
    let model_routes = Router::new()
        .route("/get_reward", post(openrlhf::get_reward))
        .route("/classify", post(vllm::classify))
        .route("/v1/classify", post(vllm::classify))
        .route("/score", post(vllm::score))
        .route("/v1/score", post(vllm::score))
        .route("/pooling", post(vllm::pooling))
        .route("/predict", post(tei::predict))
        .route("/rerank", post(tei::rerank))
        .route_layer(middleware::from_fn_with_state(guard.clone(), limit));
    Router::new()
        .merge(model_routes)
        .route("/v1/models", get(vllm::models))
        .route("/health", get(tei::health))
        .route("/info", get(tei::info))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(guard, observe))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// A 429 when every permit is taken.
async fn limit(State(g): State<Guard>, req: Request, next: Next) -> Response {
    match g.permits.clone().try_acquire_owned() {
        Ok(_permit) => next.run(req).await,
        Err(_) => ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "overloaded",
            format!(
                "the server is at its --max-concurrent-requests {}; retry later",
                g.state.limits.max_concurrent_requests
            ),
        )
        .into_response(),
    }
}

/// Counts each request by route and status and times it.
async fn observe(State(g): State<Guard>, req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map_or("unmatched", |p| p.as_str()).to_string();
    let start = Instant::now();
    let mut res = next.run(req).await;
    let status = res.status();
    let json = res.headers().get("content-type").is_some_and(|c| c.as_bytes().starts_with(b"application/json"));
    if (status.is_client_error() || status.is_server_error()) && !json {
        // axum's own rejections (body limit, wrong method) are plain text; clients expect JSON
        let message = match status {
            StatusCode::PAYLOAD_TOO_LARGE => format!("request body over {MAX_BODY_BYTES} bytes; split the request"),
            StatusCode::METHOD_NOT_ALLOWED => format!("{route} does not take this method (GET or POST?)"),
            s => s.canonical_reason().unwrap_or("error").to_string(),
        };
        res = ApiError::new(status, "validation", message).into_response();
    }
    let m = &g.state.metrics;
    m.requests.with_label_values(&[route.as_str(), res.status().as_str()]).inc();
    m.latency.with_label_values(&[route.as_str()]).observe(start.elapsed().as_secs_f64());
    res
}

async fn metrics(State(s): State<Shared>) -> impl IntoResponse {
    ([("content-type", "text/plain; version=0.0.4")], s.metrics.render())
}

async fn not_found(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!(
            "no route {} {}; routes: POST /get_reward /classify /score /pooling /predict /rerank, GET /v1/models \
             /health /info /metrics",
            req.method(),
            req.uri().path()
        ),
    )
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
