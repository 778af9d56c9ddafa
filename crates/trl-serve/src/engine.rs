//! The model's thread and its continuous batching.
//!
//! Requests hand the engine their token rows ([`Task`]); one thread owns the model. Each time
//! it is free it takes every task that has arrived, groups their rows by adapter and output
//! kind, sorts each group longest first, and runs batches that hold at most
//! `--max-batch-tokens` padded tokens (rows × longest row). Rows of different requests share
//! batches; each request gets its answer when its last row is done.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc;
use std::time::Instant;

use burn::prelude::*;
use tokio::sync::oneshot;

use crate::error::ServeError;
use crate::metrics::Metrics;
use crate::model::{Load, ModelInfo, Net};

/// Rows of one request, to run on the base model (`adapter` None) or an adapter.
pub struct Task {
    pub adapter: Option<usize>,
    pub rows: Vec<Vec<i64>>,
    /// Per-token outputs instead of one reward per row.
    pub per_token: bool,
    pub reply: oneshot::Sender<Result<Vec<Vec<f32>>, String>>,
}

/// The handle requests use; dropping it (every clone) stops the thread after its last batch.
#[derive(Clone)]
pub struct Engine {
    tx: mpsc::Sender<Task>,
    metrics: Metrics,
}

impl Engine {
    /// Starts the model's thread and loads the model there; returns once it is loaded.
    pub fn start<B: Backend>(
        load: Load,
        device: B::Device,
        max_batch_tokens: usize,
        metrics: Metrics,
    ) -> Result<(Self, ModelInfo, std::thread::JoinHandle<()>), ServeError> {
        let (tx, rx) = mpsc::channel::<Task>();
        let (ready_tx, ready_rx) = mpsc::channel();
        let m = metrics.clone();
        let thread = std::thread::Builder::new().name("trl-serve-model".into()).spawn(move || {
            let loaded = Net::<B>::load(&load, &device);
            match loaded {
                Ok((net, info)) => {
                    let _ = ready_tx.send(Ok(info));
                    run_loop(net, rx, &m, max_batch_tokens, load.pad_id);
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            }
        })?;
        let info =
            ready_rx.recv().map_err(|_| ServeError::Config("the model thread stopped while loading".into()))??;
        Ok((Self { tx, metrics }, info, thread))
    }

    /// Queues a task; the answer arrives on its `reply`.
    pub fn submit(&self, task: Task) -> Result<(), String> {
        self.metrics.queue_depth.inc();
        self.tx.send(task).map_err(|_| {
            self.metrics.queue_depth.dec();
            "the model thread has stopped".to_string()
        })
    }
}

/// Takes every waiting task, runs their rows in length-sorted batches, answers each task.
fn run_loop<B: Backend>(mut net: Net<B>, rx: mpsc::Receiver<Task>, m: &Metrics, budget: usize, pad_id: i64) {
    while let Ok(first) = rx.recv() {
        let mut tasks = vec![first];
        tasks.extend(rx.try_iter());
        m.queue_depth.sub(tasks.len() as i64);
        let mut outputs: Vec<Vec<Vec<f32>>> = tasks.iter().map(|t| vec![Vec::new(); t.rows.len()]).collect();
        let mut failed: Vec<Option<String>> = vec![None; tasks.len()];
        let mut groups: Vec<(Option<usize>, bool)> = tasks.iter().map(|t| (t.adapter, t.per_token)).collect();
        groups.sort();
        groups.dedup();
        for (adapter, per_token) in groups {
            let mut seqs: Vec<(usize, usize)> = tasks
                .iter()
                .enumerate()
                .filter(|(_, t)| t.adapter == adapter && t.per_token == per_token)
                .flat_map(|(i, t)| (0..t.rows.len()).map(move |r| (i, r)))
                .collect();
            seqs.sort_by_key(|&(i, r)| std::cmp::Reverse(tasks[i].rows[r].len()));
            let mut at = 0;
            while at < seqs.len() {
                let longest = tasks[seqs[at].0].rows[seqs[at].1].len().max(1);
                let n = (budget / longest).clamp(1, seqs.len() - at);
                let chunk = &seqs[at..at + n];
                at += n;
                let rows: Vec<Vec<i64>> = chunk.iter().map(|&(i, r)| tasks[i].rows[r].clone()).collect();
                let real: usize = rows.iter().map(Vec::len).sum();
                let start = Instant::now();
                let result = catch_unwind(AssertUnwindSafe(|| net.run(adapter, &rows, per_token, pad_id)))
                    .unwrap_or_else(|_| Err("the model panicked on this batch".into()));
                m.batch_texts.observe(rows.len() as f64);
                m.batch_tokens.observe((rows.len() * longest) as f64);
                m.tokens.inc_by(real as u64);
                m.tokens_per_second.set(real as f64 / start.elapsed().as_secs_f64().max(1e-9));
                match result {
                    Ok(out) => {
                        for (&(i, r), o) in chunk.iter().zip(out) {
                            outputs[i][r] = o;
                        }
                    }
                    Err(e) => {
                        for &(i, _) in chunk {
                            failed[i] = Some(e.clone());
                        }
                    }
                }
            }
        }
        for ((task, out), fail) in tasks.into_iter().zip(outputs).zip(failed) {
            let _ = task.reply.send(match fail {
                Some(e) => Err(e),
                None => Ok(out),
            });
        }
    }
}
