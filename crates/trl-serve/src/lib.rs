//! A reward server that existing RLHF clients call unchanged: OpenRLHF's remote reward model
//! (`/get_reward`), vLLM's pooling API (`/classify`, `/score`, `/pooling`, `/v1/models`),
//! text-embeddings-inference's classifier API (`/predict`, `/rerank`, `/health`, `/info`),
//! and Prometheus metrics (`/metrics`). It serves `*ForSequenceClassification` reward models
//! (with any number of LoRA reward adapters over one base, chosen per request by `model`) and
//! TRL value-head models (per-token values at `/pooling`).
//!
//! One thread owns the model and batches the rows of every waiting request under a token
//! budget, longest first ([`engine`]). Requests over the limits get a 4xx JSON answer, the
//! server lives on; SIGTERM finishes the requests in flight and refuses new ones.
//! `cargo xtask serve` is the front door; docs/serving.md has the API and curl examples.

pub mod engine;
pub mod error;
pub mod metrics;
pub mod model;
mod openrlhf;
mod server;
pub mod state;
mod tei;
mod vllm;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use burn::prelude::Backend;

pub use error::{ApiError, ServeError};
pub use model::{ModelInfo, ModelKind};
pub use state::Limits;

/// What to serve and how.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The model directory (a reward model, or a value-head model when `value_head`).
    pub model: PathBuf,
    pub value_head: bool,
    /// The name clients send as `model` (and `/v1/models` lists).
    pub served_model_name: String,
    /// `(name, directory)` of each LoRA reward adapter.
    pub adapters: Vec<(String, PathBuf)>,
    pub addr: SocketAddr,
    /// `--max-input-length`; None: the model's position limit.
    pub max_input_length: Option<usize>,
    pub limits: Limits,
    pub normalize_reward: bool,
    pub pad_id: i64,
    /// `--dtype` and `--quantize`: how the backbone's weights are held.
    pub holding: trl_core::Holding,
}

/// Loads the model, listens on `options.addr`, calls `ready` with the bound address, and
/// serves until SIGTERM or Ctrl-C, then finishes the requests in flight and returns.
pub fn serve<B: Backend>(
    options: ServeOptions,
    tokenizer: trl_core::Tokenizer,
    device: B::Device,
    ready: impl FnOnce(SocketAddr),
) -> Result<(), ServeError> {
    let ServeOptions { model, value_head, served_model_name, adapters, addr, max_input_length, mut limits, .. } =
        options.clone();
    let metrics = metrics::Metrics::new();
    let load = model::Load {
        dir: model.clone(),
        value_head,
        adapters,
        normalize: options.normalize_reward,
        pad_id: options.pad_id,
        holding: options.holding,
    };
    let (engine, info, thread) = engine::Engine::start::<B>(load, device, limits.max_batch_tokens, metrics.clone())?;
    limits.max_input_length = match max_input_length {
        Some(0) => return Err(ServeError::Config("--max-input-length must be at least 1".into())),
        Some(m) if m > info.max_positions => {
            return Err(ServeError::Config(format!(
                "--max-input-length {m} is larger than the model's {} positions; pass at most that",
                info.max_positions
            )))
        }
        m => m.unwrap_or(info.max_positions),
    };
    if limits.max_batch_tokens < limits.max_input_length {
        return Err(ServeError::Config(format!(
            "--max-batch-tokens {} cannot hold one input of --max-input-length {}; raise it or lower \
             --max-input-length",
            limits.max_batch_tokens, limits.max_input_length
        )));
    }
    if limits.max_concurrent_requests == 0 || limits.max_client_batch_size == 0 {
        return Err(ServeError::Config(
            "--max-concurrent-requests and --max-client-batch-size must be at least 1".into(),
        ));
    }
    let state = Arc::new(state::AppState {
        engine,
        tokenizer,
        info,
        limits,
        model_id: model.display().to_string(),
        served_model_name,
        metrics,
        created: state::now(),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Bind { addr: addr.to_string(), source })?;
        ready(listener.local_addr()?);
        axum::serve(listener, server::router(state)).with_graceful_shutdown(server::shutdown_signal()).await?;
        Ok::<_, ServeError>(())
    })?;
    drop(runtime);
    let _ = thread.join();
    Ok(())
}
