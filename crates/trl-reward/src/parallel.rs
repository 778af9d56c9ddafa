//! Data-parallel gradients (`data_parallel` workers): the pairs of every micro-batch are split
//! over the workers, each scores its share on its own model replica and accumulates its
//! gradients over the step's micro-batches, and burn's collective all-reduce sums them, so
//! that the trainer clips and steps on the same gradients one worker with the whole batch
//! would have (each share's loss is weighted by its part of the micro-batch).
//!
//! The trainer's thread is worker 0; workers 1.. are threads of a scope that lives as long as
//! [`crate::RewardTrainer::train`]. No worker enters the all-reduce before every worker has
//! scored its share without error (a barrier over channels), so an error ends the run with
//! that error instead of leaving the others waiting. burn's collective is one per process and
//! backend type: runs with workers take turns.

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Mutex, MutexGuard};
use std::thread::Scope;

use burn::collective::{self, CollectiveConfig, PeerId, ReduceOperation};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use trl_heads::ForSequenceClassification;

use crate::config::RewardConfig;
use crate::data::TokenizedPair;
use crate::error::{Result, RewardError};
use crate::loss::bradley_terry;
use crate::optim::add_grads;
use crate::trainer::{score, Scored};

/// One worker's part of one optimizer step.
#[derive(Clone)]
pub(crate) struct Share {
    /// Per micro-batch, the indices (into the training pairs) this worker scores; may be empty
    /// at an epoch's end.
    pub micro: Vec<Vec<usize>>,
    /// Per micro-batch, its pairs over all workers.
    pub totals: Vec<usize>,
}

/// What a worker's share gave: per micro-batch its chosen and rejected rewards, the sum of
/// its weighted losses, its non-pad tokens, and its gradients summed over the micro-batches.
pub(crate) struct ShareOut {
    pub rewards: Vec<(Vec<f32>, Vec<f32>)>,
    pub loss: f64,
    pub tokens: u64,
    pub grads: Option<GradientsParams>,
}

/// Scores `share` with `model` and accumulates its gradients. A micro-batch's loss is its
/// Bradley–Terry mean scaled by `n / total` of that micro-batch and divided by the step's
/// micro-batch count, so the workers' sum is the one-worker loss. A worker with no pairs in a
/// micro-batch scores the step's first pair with weight 0, so that every worker has a gradient
/// for every parameter (the all-reduce pairs them by parameter).
pub(crate) fn share_grads<B: AutodiffBackend>(
    model: &ForSequenceClassification<B>,
    train: &[TokenizedPair],
    share: &Share,
    pad_id: i64,
    cfg: &RewardConfig,
) -> Result<ShareOut> {
    let micros = share.micro.len();
    let fallback = share.micro.iter().flatten().next().copied().unwrap_or(0);
    let mut out = ShareOut { rewards: Vec::with_capacity(micros), loss: 0.0, tokens: 0, grads: None };
    for (idx, &total) in share.micro.iter().zip(&share.totals) {
        let empty = idx.is_empty();
        let pairs: Vec<&TokenizedPair> =
            if empty { vec![&train[fallback]] } else { idx.iter().map(|&i| &train[i]).collect() };
        let Scored { chosen: rc, rejected: rr, margin, tokens } = score(model, &pairs, pad_id, cfg)?;
        let bt = bradley_terry(rc.clone(), rr.clone(), margin, cfg.center_rewards_coefficient);
        let n = pairs.len();
        // one worker: `/ micros` exactly, as the loss has always been divided
        let loss = if empty { bt * 0.0 } else { bt / (micros as f64 * total as f64 / n as f64) };
        let host = Tensor::cat(vec![rc.inner(), rr.inner(), loss.clone().inner()], 0)
            .into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .unwrap_or_default();
        let g = GradientsParams::from_grads(loss.backward(), model);
        out.grads = Some(match out.grads.take() {
            Some(mut acc) => {
                add_grads(model, &mut acc, g);
                acc
            }
            None => g,
        });
        if empty {
            out.rewards.push((Vec::new(), Vec::new()));
        } else {
            out.loss += host[2 * n] as f64;
            out.tokens += tokens;
            out.rewards.push((host[..n].to_vec(), host[n..2 * n].to_vec()));
        }
    }
    Ok(out)
}

/// Splits the step's micro-batches (each a slice of the epoch order) over `workers`: worker
/// `k` takes pairs `k·b .. (k+1)·b` of each, `b` the per-device batch size.
pub(crate) fn split(micro_batches: &[&[usize]], workers: usize, per_device: usize) -> Vec<Share> {
    (0..workers)
        .map(|k| Share {
            micro: micro_batches
                .iter()
                .map(|idx| idx.iter().skip(k * per_device).take(per_device).copied().collect())
                .collect(),
            totals: micro_batches.iter().map(|idx| idx.len()).collect(),
        })
        .collect()
}

enum Msg<B: AutodiffBackend> {
    Step(Box<ForSequenceClassification<B>>, Share),
    /// Every share scored (`true`): enter the all-reduce; else drop this step.
    Go(bool),
}

/// What a worker reports after scoring its share: its share's outcome (without gradients).
type Ready = (usize, std::result::Result<ShareOut, String>);

/// Workers 1.. of a data-parallel run, for the length of a [`std::thread::scope`].
pub(crate) struct Pool<B: AutodiffBackend> {
    to: Vec<Sender<Msg<B>>>,
    ready: Receiver<Ready>,
    devices: Vec<B::Device>,
    _turn: MutexGuard<'static, ()>,
}

static TURN: Mutex<()> = Mutex::new(());

fn collective_err(what: &str, e: impl std::fmt::Debug) -> RewardError {
    RewardError::Config(format!("data-parallel {what} failed: {e:?}"))
}

impl<B: AutodiffBackend> Pool<B> {
    /// Starts workers 1..`devices.len()` (worker `k` on `devices[k]`) and registers this thread
    /// as worker 0 on `devices[0]`.
    pub(crate) fn start<'s, 'e: 's>(
        scope: &'s Scope<'s, 'e>,
        devices: Vec<B::Device>,
        train: &'e [TokenizedPair],
        pad_id: i64,
        cfg: &RewardConfig,
    ) -> Result<Self> {
        let turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
        collective::reset_collective::<B::InnerBackend>();
        let config = CollectiveConfig::default().with_num_devices(devices.len());
        let (ready_tx, ready) = channel();
        let mut to = Vec::new();
        for (k, device) in devices.iter().enumerate().skip(1) {
            let (tx, rx) = channel::<Msg<B>>();
            to.push(tx);
            let (ready_tx, config, cfg, device) = (ready_tx.clone(), config.clone(), cfg.clone(), device.clone());
            scope.spawn(move || worker::<B>(k, device, config, rx, ready_tx, train, pad_id, cfg));
        }
        collective::register::<B::InnerBackend>(PeerId::from(0usize), devices[0].clone(), config)
            .map_err(|e| collective_err("registration", e))?;
        Ok(Self { to, ready, devices, _turn: turn })
    }

    /// The step's gradients over every worker: worker 0's share is scored here, the others'
    /// on their threads, on replicas of `model`. Returns the shares' outcomes in worker order,
    /// the first one holding the summed gradients.
    pub(crate) fn step(
        &self,
        model: &ForSequenceClassification<B>,
        train: &[TokenizedPair],
        shares: Vec<Share>,
        pad_id: i64,
        cfg: &RewardConfig,
    ) -> Result<Vec<ShareOut>> {
        let mut shares = shares.into_iter();
        let mine = shares.next().expect("one share per worker");
        for ((tx, share), device) in self.to.iter().zip(shares).zip(&self.devices[1..]) {
            let replica = model.clone().fork(device);
            tx.send(Msg::Step(Box::new(replica), share)).map_err(|_| collective_err("worker", "it stopped"))?;
        }
        let own = share_grads(model, train, &mine, pad_id, cfg);
        let mut outs: Vec<Option<std::result::Result<ShareOut, String>>> = (0..self.to.len()).map(|_| None).collect();
        for _ in 0..self.to.len() {
            let (k, out) = self.ready.recv().map_err(|_| collective_err("worker", "it stopped"))?;
            outs[k - 1] = Some(out);
        }
        let failed = own.is_err() || outs.iter().any(|o| !matches!(o, Some(Ok(_))));
        for tx in &self.to {
            let _ = tx.send(Msg::Go(!failed));
        }
        let mut own = own?;
        let mut all = Vec::with_capacity(outs.len() + 1);
        for (k, o) in outs.into_iter().enumerate() {
            match o {
                Some(Ok(out)) => all.push(out),
                Some(Err(e)) => return Err(RewardError::Config(format!("data-parallel worker {}: {e}", k + 1))),
                None => return Err(collective_err("worker", "no report")),
            }
        }
        let grads = own.grads.take().expect("a share has at least one micro-batch");
        own.grads = Some(
            grads
                .all_reduce::<B::InnerBackend>(PeerId::from(0usize), ReduceOperation::Sum)
                .map_err(|e| collective_err("all-reduce", e))?,
        );
        all.insert(0, own);
        Ok(all)
    }
}

impl<B: AutodiffBackend> Drop for Pool<B> {
    /// The workers' channels close (they leave the collective and end); worker 0 leaves too.
    fn drop(&mut self) {
        self.to.clear();
        let _ = collective::finish_collective::<B::InnerBackend>(PeerId::from(0usize));
    }
}

/// Worker `k`: registers, then scores each share it is sent and, on the go-ahead, all-reduces
/// its gradients; ends when its channel closes.
#[allow(clippy::too_many_arguments)]
fn worker<B: AutodiffBackend>(
    k: usize,
    device: B::Device,
    config: CollectiveConfig,
    rx: Receiver<Msg<B>>,
    ready: Sender<Ready>,
    train: &[TokenizedPair],
    pad_id: i64,
    cfg: RewardConfig,
) {
    let id = PeerId::from(k);
    if let Err(e) = collective::register::<B::InnerBackend>(id, device, config) {
        let _ = ready.send((k, Err(format!("registration failed: {e:?}"))));
        return;
    }
    while let Ok(Msg::Step(model, share)) = rx.recv() {
        let out = share_grads(&model, train, &share, pad_id, &cfg);
        let (report, grads) = match out {
            Ok(mut o) => {
                let g = o.grads.take();
                (Ok(o), g)
            }
            Err(e) => (Err(e.to_string()), None),
        };
        if ready.send((k, report)).is_err() {
            break;
        }
        match (rx.recv(), grads) {
            (Ok(Msg::Go(true)), Some(g)) => {
                if g.all_reduce::<B::InnerBackend>(id, ReduceOperation::Sum).is_err() {
                    break;
                }
            }
            (Ok(Msg::Go(_)), _) => {}
            _ => break,
        }
    }
    let _ = collective::finish_collective::<B::InnerBackend>(id);
}
