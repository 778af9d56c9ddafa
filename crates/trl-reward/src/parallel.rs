//! Data-parallel gradients (`data_parallel` workers): the pairs of every micro-batch are split
//! over the workers, each scores its share on its own model replica and accumulates its
//! gradients over the step's micro-batches, and burn's collective all-reduce sums them, so
//! that the trainer clips and steps on the same gradients one worker with the whole batch
//! would have (each share's loss is weighted by its part of the micro-batch).
//!
//! The trainer's thread is worker 0; the other workers are threads of a scope that lives as
//! long as [`crate::RewardTrainer::train`]. Each step, every worker all-reduces, in order: a
//! failure flag (so an error on any worker ends the step everywhere instead of leaving the
//! others waiting), then in one buffer its gradients, in the model's parameter order, and a
//! report holding its rewards, loss and token count in slots of their own (so the step logs
//! exactly what one worker with the whole batch would). burn's collective is one per process
//! and backend type: runs with workers take turns.

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Mutex, MutexGuard};
use std::thread::Scope;

use burn::collective::{self, CollectiveConfig, PeerId, ReduceOperation};
use burn::module::{ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::TensorPrimitive;
use trl_heads::ForSequenceClassification;

use crate::config::RewardConfig;
use crate::data::TokenizedPair;
use crate::error::{Result, RewardError};
use crate::loss::{bradley_terry, PairMetrics};
use crate::nodes::{NodeLink, Nodes};
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

/// What a worker's share gave: per micro-batch its chosen and rejected rewards and its
/// weighted loss (0 where it had no pairs), its non-pad tokens, and its gradients summed over
/// the micro-batches.
pub(crate) struct ShareOut {
    pub rewards: Vec<(Vec<f32>, Vec<f32>)>,
    pub losses: Vec<f32>,
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
    let mut out =
        ShareOut { rewards: Vec::with_capacity(micros), losses: Vec::with_capacity(micros), tokens: 0, grads: None };
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
            out.losses.push(0.0);
        } else {
            out.losses.push(host[2 * n]);
            out.tokens += tokens;
            out.rewards.push((host[..n].to_vec(), host[n..2 * n].to_vec()));
        }
    }
    Ok(out)
}

impl ShareOut {
    /// Worker `k`'s gradients and its [`Report`] among `workers`, to be summed.
    pub(crate) fn ready(mut self, k: usize, per_device: usize, workers: usize) -> Option<(GradientsParams, Report)> {
        let report = Report::of(&self, k, per_device, workers);
        self.grads.take().map(|g| (g, report))
    }
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

/// A step's numbers over every worker, summed by the all-reduce: each value has a slot of its
/// own (rewards at their place in the micro-batch, a loss per micro-batch and worker, a token
/// count per worker in two 16-bit halves), so the sum adds only zeros and is exact.
pub(crate) struct Report {
    values: Vec<f32>,
    global: usize,
    workers: usize,
    micros: usize,
}

impl Report {
    fn new(global: usize, workers: usize, micros: usize) -> Self {
        Self { values: vec![0.0; micros * (2 * global + workers) + 2 * workers], global, workers, micros }
    }

    /// Worker `k`'s outcome (shares are contiguous: worker `k`'s pairs start at `k·b`).
    fn of(out: &ShareOut, k: usize, per_device: usize, workers: usize) -> Self {
        let global = per_device * workers;
        let micros = out.rewards.len();
        let mut r = Self::new(global, workers, micros);
        for (m, (chosen, rejected)) in out.rewards.iter().enumerate() {
            let at = m * 2 * global + k * per_device;
            r.values[at..at + chosen.len()].copy_from_slice(chosen);
            r.values[at + global..at + global + rejected.len()].copy_from_slice(rejected);
            r.values[micros * 2 * global + m * workers + k] = out.losses[m];
        }
        let t = micros * (2 * global + workers) + 2 * k;
        r.values[t] = (out.tokens >> 16) as f32;
        r.values[t + 1] = (out.tokens & 0xFFFF) as f32;
        r
    }

    /// Per micro-batch the metrics of its `totals[m]` pairs, the step's loss (summed worker
    /// by worker, each over its micro-batches), and its tokens.
    pub(crate) fn read(&self, totals: &[usize]) -> (Vec<PairMetrics>, f64, u64) {
        let (g, w, m) = (self.global, self.workers, self.micros);
        let metrics = totals
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let at = i * 2 * g;
                PairMetrics::from_rewards(&self.values[at..at + n], &self.values[at + g..at + g + n])
            })
            .collect();
        let mut loss = 0.0;
        let mut tokens = 0u64;
        for k in 0..w {
            let mut own = 0.0;
            for i in 0..m {
                own += self.values[m * 2 * g + i * w + k] as f64;
            }
            loss += own;
            let t = m * (2 * g + w) + 2 * k;
            tokens += ((self.values[t] as u64) << 16) + self.values[t + 1] as u64;
        }
        (metrics, loss, tokens)
    }
}

/// Where a worker sums: over its node's workers with burn's collective (when the node has
/// several), and for worker 0 of each node of a multi-node run, over the nodes with
/// [`NodeLink`] (tagged with the step, which every node must share).
struct Summer<'a, D> {
    id: PeerId,
    device: &'a D,
    local: usize,
    multi_node: bool,
    link: Option<(&'a NodeLink, u64)>,
}

impl<D: Clone> Summer<'_, D> {
    fn local<B: Backend<Device = D>>(&self, t: Tensor<B, 1>) -> Result<Tensor<B, 1>> {
        if self.local == 1 {
            return Ok(t);
        }
        let summed = collective::all_reduce::<B>(self.id, t.into_primitive().tensor(), ReduceOperation::Sum)
            .map_err(|e| collective_err("all-reduce", e))?;
        Ok(Tensor::from_primitive(TensorPrimitive::Float(summed)))
    }

    fn local_value<B: Backend<Device = D>>(&self, v: f32) -> Result<f32> {
        let t = self.local(Tensor::<B, 1>::from_data(TensorData::new(vec![v], [1]), self.device))?;
        Ok(t.into_scalar().elem::<f32>())
    }

    /// Whether any worker of any node failed: over several nodes, worker 0 of each node asks
    /// the others, then tells its node's workers.
    fn any_failed<B: Backend<Device = D>>(&self, mine: bool) -> Result<bool> {
        let mut failed = self.local_value::<B>(f32::from(mine as u8))?;
        if self.multi_node {
            if let Some((link, step)) = self.link {
                failed = link.sum(2 * step, vec![failed])?[0];
            }
            failed = self.local_value::<B>(if self.link.is_some() { failed } else { 0.0 })?;
        }
        Ok(failed != 0.0)
    }

    /// `flat` summed over every worker; worker 0 of a node also gets the host copy.
    fn all<B: Backend<Device = D>>(&self, flat: Tensor<B, 1>) -> Result<(Tensor<B, 1>, Option<Vec<f32>>)> {
        let summed = self.local(flat)?;
        let Some((link, step)) = self.link else { return Ok((summed, None)) };
        let host = summed.into_data().convert::<f32>().to_vec::<f32>().map_err(|e| collective_err("all-reduce", e))?;
        let host = link.sum(2 * step + 1, host)?;
        let n = host.len();
        Ok((Tensor::from_data(TensorData::new(host.clone(), [n]), self.device), Some(host)))
    }
}

/// The collective part of a step: the failure flag, then (when no worker failed) one
/// all-reduce of every gradient, in the model's parameter order (the same in every process,
/// unlike burn's random parameter ids), with the report after them. Returns the summed
/// gradients and report, or `None` when some worker failed.
fn reduce_step<B: AutodiffBackend>(
    sum: &Summer<'_, B::Device>,
    model: &ForSequenceClassification<B>,
    out: Option<(GradientsParams, Report)>,
) -> Result<Option<(GradientsParams, Report)>> {
    let failed = sum.any_failed::<B::InnerBackend>(out.is_none())?;
    let Some((mut grads, report)) = out.filter(|_| !failed) else { return Ok(None) };
    let mut gather = Gather::<B::InnerBackend> { grads: &mut grads, parts: Vec::new(), taken: Vec::new() };
    model.visit(&mut gather);
    let (mut parts, taken) = (gather.parts, gather.taken);
    let n = report.values.len();
    parts.push(Tensor::from_data(TensorData::new(report.values.clone(), [n]), sum.device));
    let (summed, host) = sum.all(Tensor::cat(parts, 0))?;
    let len = summed.dims()[0];
    let values = match host {
        Some(h) => h[len - n..].to_vec(),
        None => summed
            .clone()
            .narrow(0, len - n, n)
            .into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .map_err(|e| collective_err("all-reduce", e))?,
    };
    model.visit(&mut Scatter::<B::InnerBackend> { grads: &mut grads, flat: summed, taken: &taken, next: 0, at: 0 });
    Ok(Some((grads, Report { values, ..report })))
}

/// Takes the gradients out of `grads` in visiting order, flattened.
struct Gather<'a, IB: Backend> {
    grads: &'a mut GradientsParams,
    parts: Vec<Tensor<IB, 1>>,
    taken: Vec<(ParamId, usize)>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Gather<'_, B::InnerBackend> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.remove::<B::InnerBackend, D>(param.id) {
            let n = g.shape().num_elements();
            self.taken.push((param.id, n));
            self.parts.push(g.reshape([n]));
        }
    }
}

/// Puts the slices of `flat` back into `grads`, in the order [`Gather`] took them.
struct Scatter<'a, IB: Backend> {
    grads: &'a mut GradientsParams,
    flat: Tensor<IB, 1>,
    taken: &'a [(ParamId, usize)],
    next: usize,
    at: usize,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Scatter<'_, B::InnerBackend> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(&(id, n)) = self.taken.get(self.next).filter(|(id, _)| *id == param.id) {
            let g = self.flat.clone().narrow(0, self.at, n).reshape(param.val().dims());
            self.grads.register::<B::InnerBackend, D>(id, g);
            self.next += 1;
            self.at += n;
        }
    }
}

enum Msg<B: AutodiffBackend> {
    Step(Box<ForSequenceClassification<B>>, Share),
}

/// A data-parallel run's workers on this node, for the length of a [`std::thread::scope`].
pub(crate) struct Pool<B: AutodiffBackend> {
    to: Vec<Sender<Msg<B>>>,
    /// This node's workers' errors.
    errors: Receiver<(usize, String)>,
    /// This node's workers' devices, worker 0's (this thread's) first.
    devices: Vec<B::Device>,
    /// This node's first worker's index among every node's.
    first: usize,
    /// Every node's workers.
    workers: usize,
    /// The other nodes, when there are.
    link: Option<NodeLink>,
}

/// One data-parallel run at a time in a process, since burn's collective is global: the caller
/// holds this until the scope of the run's [`Pool`] has joined every worker, so the next run
/// cannot register while a worker of this one is still leaving the collective.
pub(crate) fn turn() -> MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::new(());
    TURN.lock().unwrap_or_else(|p| p.into_inner())
}

fn collective_err(what: &str, e: impl std::fmt::Debug) -> RewardError {
    RewardError::Config(format!("data-parallel {what} failed: {e:?}"))
}

impl<B: AutodiffBackend> Pool<B> {
    /// Starts this node's workers 1.. (worker `k` on `devices[k]`; this thread is worker 0)
    /// in `scope` and registers them with burn's collective; over several `nodes`, joins the
    /// other nodes (which must show the same `fingerprint`). `workers` counts every node's.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn start<'s, 'e: 's>(
        scope: &'s Scope<'s, 'e>,
        devices: Vec<B::Device>,
        workers: usize,
        nodes: Option<&Nodes>,
        fingerprint: u64,
        train: &'e [TokenizedPair],
        pad_id: i64,
        cfg: &RewardConfig,
    ) -> Result<Self> {
        let local = devices.len();
        let first = nodes.map_or(0, |n| n.rank * local);
        let link = nodes.map(|n| NodeLink::connect(n, fingerprint)).transpose()?;
        let (error_tx, errors) = channel();
        let mut to = Vec::new();
        if local > 1 {
            collective::reset_collective::<B::InnerBackend>();
            let config = CollectiveConfig::default().with_num_devices(local);
            for (k, device) in devices.iter().enumerate().skip(1) {
                let (tx, rx) = channel::<Msg<B>>();
                to.push(tx);
                let (error_tx, config, cfg, device) = (error_tx.clone(), config.clone(), cfg.clone(), device.clone());
                let multi_node = link.is_some();
                let place = Place { k, first, workers, local, multi_node };
                scope.spawn(move || worker::<B>(place, device, config, rx, error_tx, train, pad_id, cfg));
            }
            collective::register::<B::InnerBackend>(PeerId::from(0usize), devices[0].clone(), config)
                .map_err(|e| collective_err("registration", e))?;
        }
        Ok(Self { to, errors, devices, first, workers, link })
    }

    /// The step's summed gradients and report over every worker: this node's part of
    /// `shares` (one per worker of every node) is scored here and on its workers' threads, on
    /// replicas of `model`. `step` is the optimizer step being taken, the same on every node.
    pub(crate) fn step(
        &self,
        model: &ForSequenceClassification<B>,
        train: &[TokenizedPair],
        shares: Vec<Share>,
        step: u64,
        pad_id: i64,
        cfg: &RewardConfig,
    ) -> Result<(GradientsParams, Report)> {
        let mut mine = shares.into_iter().skip(self.first).take(self.devices.len());
        let own_share = mine.next().expect("one share per worker");
        for ((tx, share), device) in self.to.iter().zip(mine).zip(&self.devices[1..]) {
            let replica = model.clone().fork(device);
            tx.send(Msg::Step(Box::new(replica), share)).map_err(|_| match self.errors.try_recv() {
                Ok((k, e)) => RewardError::Config(format!("data-parallel worker {k}: {e}")),
                Err(_) => collective_err("worker", "it stopped"),
            })?;
        }
        let own = share_grads(model, train, &own_share, pad_id, cfg);
        let bs = cfg.per_device_train_batch_size;
        let (own, own_err) = match own {
            Ok(o) => (o.ready(self.first, bs, self.workers), None),
            Err(e) => (None, Some(e)),
        };
        let sum = Summer {
            id: PeerId::from(0usize),
            device: &self.devices[0],
            local: self.devices.len(),
            multi_node: self.link.is_some(),
            link: self.link.as_ref().map(|l| (l, step)),
        };
        let reduced = reduce_step::<B>(&sum, model, own)?;
        match (reduced, own_err) {
            (Some(r), _) => Ok(r),
            (None, Some(e)) => Err(e),
            (None, None) => Err(match self.errors.try_recv() {
                Ok((k, e)) => RewardError::Config(format!("data-parallel worker {k}: {e}")),
                Err(_) => RewardError::Config("a data-parallel worker of another node failed: see its output".into()),
            }),
        }
    }
}

impl<B: AutodiffBackend> Drop for Pool<B> {
    /// The workers' channels close (they leave the collective and end); worker 0 leaves too.
    fn drop(&mut self) {
        self.to.clear();
        if self.devices.len() > 1 {
            let _ = collective::finish_collective::<B::InnerBackend>(PeerId::from(0usize));
        }
    }
}

/// A worker thread's place: `k` of its node's `local` workers, the node's first being
/// `first` of all nodes' `workers`.
struct Place {
    k: usize,
    first: usize,
    workers: usize,
    local: usize,
    multi_node: bool,
}

/// Worker `place.k` of its node: registers, then scores each share it is sent and takes part
/// in the step's all-reduces; ends when its channel closes.
#[allow(clippy::too_many_arguments)]
fn worker<B: AutodiffBackend>(
    place: Place,
    device: B::Device,
    config: CollectiveConfig,
    rx: Receiver<Msg<B>>,
    errors: Sender<(usize, String)>,
    train: &[TokenizedPair],
    pad_id: i64,
    cfg: RewardConfig,
) {
    let (id, global) = (PeerId::from(place.k), place.first + place.k);
    if let Err(e) = collective::register::<B::InnerBackend>(id, device.clone(), config) {
        let _ = errors.send((global, format!("registration failed: {e:?}")));
        return;
    }
    let bs = cfg.per_device_train_batch_size;
    let sum = Summer { id, device: &device, local: place.local, multi_node: place.multi_node, link: None };
    while let Ok(Msg::Step(model, share)) = rx.recv() {
        let out = match share_grads(&model, train, &share, pad_id, &cfg) {
            Ok(o) => o.ready(global, bs, place.workers),
            Err(e) => {
                let _ = errors.send((global, e.to_string()));
                None
            }
        };
        if reduce_step::<B>(&sum, &model, out).is_err() {
            break;
        }
    }
    let _ = collective::finish_collective::<B::InnerBackend>(id);
}
