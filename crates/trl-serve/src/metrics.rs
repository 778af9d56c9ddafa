//! Prometheus metrics, served as text at `GET /metrics`.

use prometheus::{
    exponential_buckets, Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

/// Every metric the server keeps. Cheap to clone (the handles are shared).
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Requests answered, by route and HTTP status.
    pub requests: IntCounterVec,
    /// Request latency in seconds, by route.
    pub latency: HistogramVec,
    /// Requests waiting for the model.
    pub queue_depth: IntGauge,
    /// Texts per model batch.
    pub batch_texts: Histogram,
    /// Tokens per model batch (padded: rows × longest row).
    pub batch_tokens: Histogram,
    /// Real tokens run through the model.
    pub tokens: IntCounter,
    /// Real tokens per second of model time, over the last batch.
    pub tokens_per_second: prometheus::Gauge,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new("trl_serve_requests_total", "Requests answered, by route and status"),
            &["route", "status"],
        )
        .expect("valid metric");
        let latency = HistogramVec::new(
            HistogramOpts::new("trl_serve_request_duration_seconds", "Request latency")
                .buckets(exponential_buckets(0.001, 2.0, 16).expect("valid buckets")),
            &["route"],
        )
        .expect("valid metric");
        let queue_depth = IntGauge::new("trl_serve_queue_depth", "Requests waiting for the model").expect("valid");
        let batch_texts = Histogram::with_opts(
            HistogramOpts::new("trl_serve_batch_texts", "Texts per model batch")
                .buckets(exponential_buckets(1.0, 2.0, 11).expect("valid buckets")),
        )
        .expect("valid metric");
        let batch_tokens = Histogram::with_opts(
            HistogramOpts::new("trl_serve_batch_tokens", "Padded tokens per model batch")
                .buckets(exponential_buckets(16.0, 2.0, 14).expect("valid buckets")),
        )
        .expect("valid metric");
        let tokens = IntCounter::new("trl_serve_tokens_total", "Tokens run through the model").expect("valid");
        let tokens_per_second =
            prometheus::Gauge::new("trl_serve_tokens_per_second", "Tokens per second of model time, last batch")
                .expect("valid");
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(latency.clone()),
            Box::new(queue_depth.clone()),
            Box::new(batch_texts.clone()),
            Box::new(batch_tokens.clone()),
            Box::new(tokens.clone()),
            Box::new(tokens_per_second.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        Self { registry, requests, latency, queue_depth, batch_texts, batch_tokens, tokens, tokens_per_second }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out).expect("text encoding into memory");
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
