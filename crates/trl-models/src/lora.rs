//! LoRA adapters (PEFT's `LoraModel`) on the backbones' projections.
//!
//! The projections that can carry adapters are [`Linear`] (PyTorch's `nn.Linear`, all Llama-family
//! projections) and [`Conv1D`] (GPT-2's `c_attn`, `c_proj`, `c_fc`). Each holds its base `weight`
//! (`[in, out]`, burn's layout) and, like PEFT's `ModuleDict`s, one `lora_A` / `lora_B` pair per
//! adapter *slot*: slot `i` is the model's `i`-th adapter, `None` where that adapter does not wrap
//! the projection. A pair is two bias-free burn `Linear`s, `A: in → r`, `B: r → out`.
//!
//! **Keys.** PEFT's in-memory name `model.layers.0.self_attn.q_proj.lora_A.default.weight` is our
//! module path with the adapter name replaced by its slot number,
//! `model.layers.0.self_attn.q_proj.lora_A.0.weight`; the adapter file drops the name and adds
//! `base_model.model.` (`…q_proj.lora_A.weight`). That rename, one string operation each way, is
//! the only mapping; the `[r, in]` / `[out, r]` transposition is module_io's usual rule for
//! structs named `Linear`, GPT-2's Conv1D included.
//!
//! **Forward.** `y = base(x) + B(A(dropout(x))) · scaling` for the active slot, where
//! `scaling = alpha / r` or `alpha / √r` (rslora), per module after `rank_pattern` /
//! `alpha_pattern`. Dropout applies only on an autodiff backend, as burn's `Dropout` does. A
//! projection without adapters, with adapters disabled or with its adapter merged runs the base
//! layer alone.
//!
//! The model-level operations (named adapters, merge, save, freezing) are in `adapters.rs`, as
//! methods of [`crate::AnyCausalLm`].

// `lora_A` / `lora_B` are PEFT's parameter names; the module path must spell them that way.
#![allow(non_snake_case)]

use burn::module::{Module, Param};
use burn::nn::{self, DropoutConfig, Initializer, LinearConfig};
use burn::prelude::*;

use trl_core::peft::{LoraConfig, LoraInit};
use trl_core::StateDict;

use crate::autocast;
use crate::error::{ModelError, Result};

/// One adapter's settings at one projection.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoraSlot {
    /// `alpha / r` (or `alpha / √r`) for this module.
    pub scaling: f64,
    pub dropout: f64,
}

/// A projection's adapter bookkeeping (PEFT's `LoraLayer`), parallel to its `lora_A` / `lora_B`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoraSlots {
    /// Slot `i`: the model's adapter `i`, `None` where it does not wrap this projection.
    pub slots: Vec<Option<LoraSlot>>,
    /// The slot the forward pass adds (`None`: base layer only).
    pub active: Option<usize>,
    /// The slot whose delta is currently added into `weight`.
    pub merged: Option<usize>,
}

/// `torch.nn.Linear` that can carry LoRA adapters (PEFT's `lora.Linear`). `weight` is `[in, out]`;
/// module_io transposes a struct named `Linear` to and from PyTorch's `[out, in]`.
#[derive(Module, Debug)]
pub struct Linear<B: Backend> {
    pub weight: Param<Tensor<B, 2>>,
    pub bias: Option<Param<Tensor<B, 1>>>,
    pub lora_A: Vec<Option<nn::Linear<B>>>,
    pub lora_B: Vec<Option<nn::Linear<B>>>,
    #[module(skip)]
    pub lora: LoraSlots,
}

/// GPT-2's `Conv1D`: a linear layer whose weight PyTorch stores `[in, out]` (no transpose on load).
/// PEFT wraps it with `fan_in_fan_out=True`; its `lora_A` / `lora_B` are ordinary `nn.Linear`s.
#[derive(Module, Debug)]
pub struct Conv1D<B: Backend> {
    pub weight: Param<Tensor<B, 2>>,
    pub bias: Param<Tensor<B, 1>>,
    pub lora_A: Vec<Option<nn::Linear<B>>>,
    pub lora_B: Vec<Option<nn::Linear<B>>>,
    #[module(skip)]
    pub lora: LoraSlots,
}

impl<B: Backend> Linear<B> {
    /// A layer with weight ~ N(0, std) and zero bias, and no adapters.
    pub fn new(d_in: usize, d_out: usize, bias: bool, std: f64, device: &B::Device) -> Self {
        Self {
            weight: Initializer::Normal { mean: 0.0, std }.init([d_in, d_out], device),
            bias: bias.then(|| Initializer::Zeros.init([d_out], device)),
            lora_A: Vec::new(),
            lora_B: Vec::new(),
            lora: LoraSlots::default(),
        }
    }

    /// `[..., d_in]` → `[..., d_out]`
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let base = |x| held_linear(x, self.weight.val(), self.bias.as_ref().map(Param::val));
        match self.lora.running() {
            None => base(x),
            Some(i) => add_lora(x.clone(), base(x), i, &self.lora_A, &self.lora_B, &self.lora),
        }
    }
}

impl<B: Backend> Conv1D<B> {
    pub fn new(d_in: usize, d_out: usize, std: f64, device: &B::Device) -> Self {
        Self {
            weight: Initializer::Normal { mean: 0.0, std }.init([d_in, d_out], device),
            bias: Initializer::Zeros.init([d_out], device),
            lora_A: Vec::new(),
            lora_B: Vec::new(),
            lora: LoraSlots::default(),
        }
    }

    /// `[..., d_in]` → `[..., d_out]`
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let base = |x| held_linear(x, self.weight.val(), Some(self.bias.val()));
        match self.lora.running() {
            None => base(x),
            Some(i) => add_lora(x.clone(), base(x), i, &self.lora_A, &self.lora_B, &self.lora),
        }
    }
}

/// `x · weight + bias` (`weight` `[in, out]`) with the weight as it is held, widened to the
/// activations' dtype first ([`in_dtype`]): every projection and the untied lm_head run this.
/// Inside an [`autocast::scope`] the product runs in its half dtype instead.
pub fn held_linear<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    weight: Tensor<B, 2>,
    bias: Option<Tensor<B, 1>>,
) -> Tensor<B, D> {
    let dtype = x.dtype();
    match autocast::dtype() {
        Some(half) if half != dtype => {
            let y = burn::tensor::module::linear(x.cast(half), in_dtype(weight, half), None).cast(dtype);
            match bias {
                Some(b) => y + in_dtype(b, dtype).unsqueeze(),
                None => y,
            }
        }
        _ => crate::kernels::linear(x, in_dtype(weight, dtype), bias),
    }
}

/// `w` in `dtype`, unchanged when it already is: a weight matrix held in half precision or
/// int8 is widened (dequantized) to the activations' dtype as a layer runs
/// ([`trl_core::dtype`]), and an adapter's delta is narrowed to the weight's dtype when merged
/// (as PEFT does).
pub fn in_dtype<B: Backend, const D: usize>(w: Tensor<B, D>, dtype: burn::tensor::DType) -> Tensor<B, D> {
    use burn::tensor::DType;
    let w = if matches!(w.dtype(), DType::QFloat(_)) { w.dequantize() } else { w };
    if w.dtype() == dtype {
        return w;
    }
    let device = w.device();
    let w = match dtype {
        DType::F32 => match crate::kernels::widen(w) {
            Ok(wide) => return wide,
            Err(w) => w,
        },
        _ => w,
    };
    if dtype == DType::F32 && trl_core::dtype::on_host::<B>(&device) {
        if let Some(wide) = trl_core::dtype::widen_on_host(&w.to_data()) {
            return Tensor::from_data(wide, &device);
        }
    }
    w.cast(dtype)
}

impl LoraSlots {
    /// The slot whose delta the forward pass adds: the active one, unless a slot is merged.
    pub fn running(&self) -> Option<usize> {
        self.active.filter(|&i| self.merged.is_none() && self.slots.get(i).is_some_and(Option::is_some))
    }
}

/// `base + B(A(dropout(x))) · scaling` with slot `i`.
fn add_lora<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    base: Tensor<B, D>,
    i: usize,
    a: &[Option<nn::Linear<B>>],
    b: &[Option<nn::Linear<B>>],
    lora: &LoraSlots,
) -> Tensor<B, D> {
    let (Some(Some(a)), Some(Some(b)), Some(Some(slot))) = (a.get(i), b.get(i), lora.slots.get(i)) else { return base };
    let x = if slot.dropout > 0.0 { DropoutConfig::new(slot.dropout).init().forward(x) } else { x };
    base + b.forward(a.forward(x)) * slot.scaling
}

/// A projection that can carry adapters: mutable access to its weight and LoRA parts.
pub trait LoraLayer<B: Backend> {
    fn parts(&mut self) -> LoraParts<'_, B>;
}

/// The LoRA-relevant fields of one projection.
pub struct LoraParts<'a, B: Backend> {
    pub weight: &'a mut Param<Tensor<B, 2>>,
    pub lora_A: &'a mut Vec<Option<nn::Linear<B>>>,
    pub lora_B: &'a mut Vec<Option<nn::Linear<B>>>,
    pub lora: &'a mut LoraSlots,
}

impl<B: Backend> LoraLayer<B> for Linear<B> {
    fn parts(&mut self) -> LoraParts<'_, B> {
        LoraParts { weight: &mut self.weight, lora_A: &mut self.lora_A, lora_B: &mut self.lora_B, lora: &mut self.lora }
    }
}

impl<B: Backend> LoraLayer<B> for Conv1D<B> {
    fn parts(&mut self) -> LoraParts<'_, B> {
        LoraParts { weight: &mut self.weight, lora_A: &mut self.lora_A, lora_B: &mut self.lora_B, lora: &mut self.lora }
    }
}

impl<B: Backend> LoraParts<'_, B> {
    /// Appends a slot: a fresh pair of rank `r` drawn as `init` says, or `None` (not wrapped).
    pub(crate) fn push(&mut self, new: Option<(usize, LoraSlot, LoraInit)>) {
        let Some((r, slot, init)) = new else {
            self.lora_A.push(None);
            self.lora_B.push(None);
            self.lora.slots.push(None);
            return;
        };
        let [d_in, d_out] = self.weight.lazy_shape().dims();
        let device = self.weight.lazy_device();
        // nn.Linear's default (kaiming-uniform with a = √5): U(±1/√fan_in)
        let kaiming = Initializer::KaimingUniform { gain: 1.0 / 3f64.sqrt(), fan_out_only: false };
        let (init_a, init_b) = match init {
            LoraInit::Default => (kaiming.clone(), Initializer::Zeros),
            LoraInit::Gaussian => (Initializer::Normal { mean: 0.0, std: 1.0 / r as f64 }, Initializer::Zeros),
            LoraInit::Random => (kaiming.clone(), kaiming),
        };
        let pair = |i: usize, o: usize, init: Initializer| {
            LinearConfig::new(i, o).with_bias(false).with_initializer(init).init(&device)
        };
        self.lora_A.push(Some(pair(d_in, r, init_a)));
        self.lora_B.push(Some(pair(r, d_out, init_b)));
        self.lora.slots.push(Some(slot));
    }

    pub(crate) fn remove(&mut self, i: usize) {
        self.lora_A.remove(i);
        self.lora_B.remove(i);
        self.lora.slots.remove(i);
        let shift = |s: Option<usize>| match s {
            Some(j) if j == i => None,
            Some(j) if j > i => Some(j - 1),
            other => other,
        };
        self.lora.active = shift(self.lora.active);
        self.lora.merged = shift(self.lora.merged);
    }

    /// `A·B · scaling`, `[in, out]`, of slot `i` (PEFT's `get_delta_weight`, in burn's layout).
    pub(crate) fn delta(&self, i: usize) -> Option<Tensor<B, 2>> {
        let (Some(Some(a)), Some(Some(b)), Some(Some(s))) =
            (self.lora_A.get(i), self.lora_B.get(i), self.lora.slots.get(i))
        else {
            return None;
        };
        Some(a.weight.val().matmul(b.weight.val()).detach() * s.scaling)
    }

    /// Adds (`sign` 1) or subtracts (-1) slot `i`'s delta into the weight.
    pub(crate) fn fold(&mut self, i: usize, sign: f64) {
        if let Some(delta) = self.delta(i) {
            let w = self.weight.clone();
            *self.weight = w.map(|w| {
                let grad = w.is_require_grad();
                let held = w.dtype();
                let sum = in_dtype(w.detach(), delta.dtype()) + delta * sign;
                // held as before: int8 is quantized again (as PEFT merges into bitsandbytes)
                let sum = match held {
                    burn::tensor::DType::QFloat(_) => trl_core::dtype::quantize_int8(sum),
                    _ => in_dtype(sum, held),
                };
                sum.set_require_grad(grad)
            });
        }
    }
}

/// The adapters of a model (PEFT's `peft_config` and active adapter), kept by the top-level
/// model struct; the weights live in the projections' slots, in the same order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Adapters {
    /// Name and config of each slot.
    pub list: Vec<(String, LoraConfig)>,
    pub active: Option<usize>,
    /// Run the base model only (PEFT's `disable_adapter()`).
    pub disabled: bool,
    /// The active adapter is merged into the base weights.
    pub merged: bool,
}

impl Adapters {
    pub(crate) fn index(&self, name: &str) -> Result<usize> {
        self.list.iter().position(|(n, _)| n == name).ok_or_else(|| {
            let have: Vec<&str> = self.list.iter().map(|(n, _)| n.as_str()).collect();
            ModelError::Adapter(format!("no adapter named `{name}` (loaded: [{}])", have.join(", ")))
        })
    }
}

/// The module-path marker of slot `slot`'s tensors (`.lora_A.3.` / `.lora_B.3.`).
pub(crate) fn in_slot(key: &str, slot: usize) -> bool {
    key.contains(&format!(".lora_A.{slot}.")) || key.contains(&format!(".lora_B.{slot}."))
}

/// A loaded adapter: its config and the whole tensors it carries for `modules_to_save`
/// (model keys without `base_model.model.`, e.g. `score.weight`), for the head to take.
#[derive(Debug, Clone)]
pub struct LoadedAdapter {
    pub config: LoraConfig,
    pub modules_to_save: StateDict,
}
