//! Layer placement for inference (transformers' `device_map`): a decoder's layers split over
//! several devices in contiguous runs, deterministically. What comes before the layer list
//! (the embeddings) stays on the first device; the final norm and everything after it (an
//! untied lm_head, the score or value head) go to the last layer's device, as accelerate's
//! `device_map="auto"` places them. [`crate::backbone::decode`] moves the activations (and
//! rebuilds the per-pass tables) where a layer's device changes, and the tied LM head reads
//! the hidden state on the embedding's device.
//!
//! The layer list is found by structure: the first list of modules (`Vec`) in the model's
//! field order, its items the layers (`h.3`, `layers.3`); HF field names are ours too.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::prelude::*;

use crate::error::{ModelError, Result};

/// Which of `devices` each of `layers` layers goes to: contiguous runs, as even as they can be,
/// the first devices taking one more where they cannot.
pub fn split_layers(layers: usize, devices: usize) -> Vec<usize> {
    let devices = devices.clamp(1, layers.max(1));
    let (each, extra) = (layers / devices, layers % devices);
    (0..devices).flat_map(|d| std::iter::repeat_n(d, each + usize::from(d < extra))).collect()
}

/// Where a parameter sits relative to the layer list, while walking the model in field order.
#[derive(Default)]
struct Walk {
    /// Nesting of `Vec` containers entered.
    depth: usize,
    /// The layer being walked (an item of the first top-level `Vec`).
    layer: Option<usize>,
    /// Layers seen so far.
    layers: usize,
    /// The layer list has ended.
    done: bool,
    /// A second top-level list of modules came after it (an encoder-decoder's).
    second_list: bool,
}

impl Walk {
    fn enter(&mut self, name: &str, container: &str) {
        if container == "Vec" {
            if self.depth == 0 {
                if self.done {
                    self.second_list = true;
                } else {
                    let i = name.parse::<usize>().unwrap_or(self.layers);
                    self.layer = Some(i);
                    self.layers = self.layers.max(i + 1);
                }
            }
            self.depth += 1;
        } else if self.depth == 0 && self.layers > 0 {
            self.done = true;
        }
    }

    fn exit(&mut self, container: &str) {
        if container == "Vec" {
            self.depth -= 1;
            if self.depth == 0 {
                self.layer = None;
            }
        } else if self.depth == 0 && self.layers > 0 {
            self.done = true;
        }
    }

    /// The device index of the parameter being walked under `plan`: the first before the
    /// layers, its layer's, the last layer's after them.
    fn device(&self, plan: &[usize]) -> usize {
        match self.layer {
            Some(i) => plan.get(i).copied().unwrap_or(0),
            None if self.layers > 0 => plan.last().copied().unwrap_or(0),
            None => 0,
        }
    }
}

struct Mover<'a, B: Backend> {
    walk: Walk,
    plan: &'a [usize],
    devices: &'a [B::Device],
}

impl<B: Backend> ModuleMapper<B> for Mover<'_, B> {
    fn enter_module(&mut self, name: &str, container: &str) {
        self.walk.enter(name, container);
    }

    fn exit_module(&mut self, _name: &str, container: &str) {
        self.walk.exit(container);
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let device = &self.devices[self.walk.device(self.plan)];
        let (id, value, mapper) = param.consume();
        Param::from_mapped_value(id, value.to_device(device), mapper)
    }
}

/// Moves `model`'s layers over `devices` ([`split_layers`]), its embeddings to the first and
/// the rest after the layers to the last layer's. `layers` is the model's layer count, which
/// the layer list found must match.
pub fn place<B: Backend, M: Module<B>>(model: M, layers: usize, devices: &[B::Device]) -> Result<M> {
    if devices.is_empty() {
        return Err(ModelError::Config("a device map needs at least one device".into()));
    }
    let walk = walk(&model, |_, _, _| {});
    if walk.layers != layers || walk.second_list {
        return Err(ModelError::Config(format!(
            "a device map splits one decoder's layer list; this model has {} (an encoder-decoder or encoder \
             model runs on one --device)",
            if walk.second_list {
                "several".to_string()
            } else {
                format!("{} layers in its first list, not {layers}", walk.layers)
            }
        )));
    }
    let plan = split_layers(layers, devices.len());
    let mut mover = Mover { walk: Walk::default(), plan: &plan, devices };
    Ok(model.map(&mut mover))
}

/// The device of each layer of `model` (of its first parameter), in order.
pub fn layer_devices<B: Backend, M: Module<B>>(model: &M) -> Vec<B::Device> {
    let mut devices = Vec::new();
    walk(model, |walk, _, device| {
        if walk.layer == Some(devices.len()) {
            devices.push(device);
        }
    });
    devices
}

/// Where each parameter goes under a map over `devices` devices: `(path, device index)` in
/// field order, for tests and for printing the map.
pub fn describe<B: Backend, M: Module<B>>(model: &M, layers: usize, devices: usize) -> Vec<(String, usize)> {
    let plan = split_layers(layers, devices);
    let mut out = Vec::new();
    walk(model, |walk, path, _| out.push((path.join("."), walk.device(&plan))));
    out
}

/// Walks `model` in field order, calling `each(walk, path, device)` for every float parameter;
/// returns the walk's state at the end (the layers found, a second list).
fn walk<B: Backend, M: Module<B>>(model: &M, each: impl FnMut(&Walk, &[String], B::Device)) -> Walk {
    let mut v = Visit { walk: Walk::default(), path: Vec::new(), each };
    model.visit(&mut v);
    v.walk
}

struct Visit<F> {
    walk: Walk,
    path: Vec<String>,
    each: F,
}

impl<B: Backend, F: FnMut(&Walk, &[String], B::Device)> ModuleVisitor<B> for Visit<F> {
    fn enter_module(&mut self, name: &str, container: &str) {
        self.walk.enter(name, container);
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, container: &str) {
        self.walk.exit(container);
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        (self.each)(&self.walk, &self.path, param.lazy_device());
    }
}

#[cfg(test)]
mod tests {
    use super::split_layers;

    #[test]
    fn layers_split_in_even_contiguous_runs() {
        assert_eq!(split_layers(5, 2), [0, 0, 0, 1, 1]);
        assert_eq!(split_layers(24, 5), [vec![0; 5], vec![1; 5], vec![2; 5], vec![3; 5], vec![4; 4]].concat());
        assert_eq!(split_layers(2, 4), [0, 1], "more devices than layers: one layer each");
        assert_eq!(split_layers(3, 1), [0, 0, 0]);
    }
}
