//! AdamW with PyTorch's semantics (decoupled weight decay, eps added after the bias-corrected
//! square root) and transformers' choice of which parameters decay, global-norm gradient
//! clipping as `torch.nn.utils.clip_grad_norm_` (the learning-rate schedules are in
//! [`crate::schedule`]). State is saved by parameter key, so a resumed run continues exactly.

use std::collections::HashMap;

use burn::module::{AutodiffModule, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};

use trl_core::StateDict;
use trl_models::{adamw, AdamWStep};

/// AdamW hyper-parameters (transformers' defaults).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 }
    }
}

/// Whether weight decay applies to the parameter at `path` (`(field, holding type)` pairs, as
/// burn's module visitors report them), by transformers' `Trainer.get_decay_parameter_names`:
/// every parameter except those of a LayerNorm module and those whose lower-cased name
/// contains `bias`, `layernorm`, `rmsnorm`, a `norm` component or a `_norm` suffix.
/// (Biases and norm scales do not decay; embeddings, projections and `score` do.)
pub(crate) fn decays(path: &[(String, String)]) -> bool {
    if path.last().is_some_and(|(_, holder)| holder == "Struct:LayerNorm") {
        return false;
    }
    let name = path.iter().map(|(n, _)| n.to_lowercase()).collect::<Vec<_>>();
    let part = |p: &String| {
        p.contains("bias") || p.contains("layernorm") || p.contains("rmsnorm") || p == "norm" || p.ends_with("_norm")
    };
    !name.iter().any(part)
}

/// Per-parameter moments, flattened, on the inner (non-autodiff) backend.
pub struct AdamW<B: Backend> {
    pub config: AdamWConfig,
    pub step: u64,
    state: HashMap<ParamId, (Tensor<B, 1>, Tensor<B, 1>)>,
}

impl<B: Backend> AdamW<B> {
    pub fn new(config: AdamWConfig) -> Self {
        Self { config, step: 0, state: HashMap::new() }
    }

    /// Applies one update with learning rate `lr` to every parameter that has a gradient;
    /// weight decay only where `decays` says so.
    pub fn step<AB, M>(&mut self, module: M, lr: f64, grads: &mut GradientsParams) -> M
    where
        AB: AutodiffBackend<InnerBackend = B>,
        M: AutodiffModule<AB>,
    {
        self.step += 1;
        let mut mapper = Step::<AB> { opt: self, lr, grads, path: Vec::new() };
        module.map(&mut mapper)
    }

    /// Writes the moments to the safetensors file `path`, keyed `exp_avg.<param key>` /
    /// `exp_avg_sq.<param key>`, each read off its device only as it is written (so saving
    /// holds one moment on the host at a time, not all of them).
    pub(crate) fn save(&self, keys: &[(String, ParamId)], path: &std::path::Path) -> trl_core::Result<()> {
        let mut moments = Vec::new();
        for (key, id) in keys {
            if let Some((m, v)) = self.state.get(id) {
                moments.push((format!("exp_avg.{key}"), m));
                moments.push((format!("exp_avg_sq.{key}"), v));
            }
        }
        let header = moments.iter().map(|(k, t)| (k.clone(), t.dtype(), t.dims().to_vec())).collect();
        trl_core::checkpoint::save_safetensors_with(path, header, |i| std::borrow::Cow::Owned(moments[i].1.to_data()))
    }

    /// Restores moments saved by [`AdamW::save`] for the parameters in `keys`.
    pub(crate) fn load_state_dict(
        &mut self,
        sd: &StateDict,
        keys: &[(String, ParamId)],
        step: u64,
        device: &B::Device,
    ) {
        self.step = step;
        for (key, id) in keys {
            if let (Some(m), Some(v)) = (sd.get(&format!("exp_avg.{key}")), sd.get(&format!("exp_avg_sq.{key}"))) {
                let m = Tensor::from_data(m.clone().convert::<f32>(), device);
                let v = Tensor::from_data(v.clone().convert::<f32>(), device);
                self.state.insert(*id, (m, v));
            }
        }
    }
}

struct Step<'a, AB: AutodiffBackend> {
    opt: &'a mut AdamW<AB::InnerBackend>,
    lr: f64,
    grads: &'a mut GradientsParams,
    path: Vec<(String, String)>,
}

impl<AB: AutodiffBackend> ModuleMapper<AB> for Step<'_, AB> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.push((name.to_string(), container_type.to_string()));
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<AB, D>>) -> Param<Tensor<AB, D>> {
        let (id, tensor, mapper) = param.consume();
        let Some(grad) = self.grads.remove::<AB::InnerBackend, D>(id) else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        let c = self.opt.config;
        let shape = tensor.shape();
        let n = shape.num_elements();
        let t = self.opt.step as i32;
        let (bc1, bc2) = (1.0 - c.beta1.powi(t), 1.0 - c.beta2.powi(t));
        let decay = if c.weight_decay != 0.0 && decays(&self.path) { 1.0 - self.lr * c.weight_decay } else { 1.0 };
        let h = AdamWStep {
            beta2: c.beta2 as f32,
            one_minus_beta1: (1.0 - c.beta1) as f32,
            one_minus_beta2: (1.0 - c.beta2) as f32,
            decay: decay as f32,
            bias_correction2_sqrt: bc2.sqrt() as f32,
            eps: c.eps as f32,
            step_size: (self.lr / bc1) as f32,
        };
        let moments = self.opt.state.remove(&id);
        let (p, m, v) = adamw(tensor.inner().reshape([n]), grad.reshape([n]), moments, &h);
        self.opt.state.insert(id, (m, v));
        let new = Tensor::<AB, D>::from_inner(p.reshape(shape)).require_grad();
        Param::from_mapped_value(id, new, mapper)
    }
}

/// Global L2 norm of all gradients, and scales them so it is at most `max_norm`
/// (`clip_grad_norm_`: coefficient `max_norm / (norm + 1e-6)`, clamped to 1). Returns the norm
/// before clipping.
pub(crate) fn clip_grad_norm<AB: AutodiffBackend, M: AutodiffModule<AB>>(
    module: &M,
    grads: &mut GradientsParams,
    max_norm: Option<f64>,
) -> f64 {
    struct Norm<'a, AB: AutodiffBackend> {
        grads: &'a GradientsParams,
        sum: Option<Tensor<AB::InnerBackend, 1>>,
        ids: Vec<(ParamId, usize)>,
    }
    impl<AB: AutodiffBackend> ModuleVisitor<AB> for Norm<'_, AB> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<AB, D>>) {
            if let Some(g) = self.grads.get::<AB::InnerBackend, D>(param.id) {
                let s = g.square().sum();
                self.sum = Some(match self.sum.take() {
                    Some(acc) => acc + s,
                    None => s,
                });
                self.ids.push((param.id, D));
            }
        }
    }
    let mut v = Norm::<AB> { grads, sum: None, ids: Vec::new() };
    module.visit(&mut v);
    let Some(sum) = v.sum else { return 0.0 };
    let norm = sum.into_scalar().elem::<f64>().sqrt();
    if let Some(max) = max_norm {
        let coef = max / (norm + 1e-6);
        if coef < 1.0 {
            struct Scale<'a> {
                grads: &'a mut GradientsParams,
                coef: f64,
            }
            impl<AB: AutodiffBackend> ModuleVisitor<AB> for Scale<'_> {
                fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<AB, D>>) {
                    if let Some(g) = self.grads.remove::<AB::InnerBackend, D>(param.id) {
                        self.grads.register(param.id, g * self.coef);
                    }
                }
            }
            module.visit(&mut Scale { grads, coef });
        }
    }
    norm
}

/// Adds every gradient of `new` into `acc` (gradient accumulation).
pub(crate) fn add_grads<AB: AutodiffBackend, M: AutodiffModule<AB>>(
    module: &M,
    acc: &mut GradientsParams,
    mut new: GradientsParams,
) {
    struct Add<'a> {
        acc: &'a mut GradientsParams,
        new: &'a mut GradientsParams,
    }
    impl<AB: AutodiffBackend> ModuleVisitor<AB> for Add<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<AB, D>>) {
            if let Some(g) = self.new.remove::<AB::InnerBackend, D>(param.id) {
                let sum = match self.acc.remove::<AB::InnerBackend, D>(param.id) {
                    Some(a) => a + g,
                    None => g,
                };
                self.acc.register(param.id, sum);
            }
        }
    }
    module.visit(&mut Add { acc, new: &mut new });
}
