//! State dict ↔ burn module, by parameter path.
//!
//! A module's field names mirror the Hugging Face parameter path, so the path burn reports for
//! a parameter (`h.0.attn.c_attn.weight`) *is* the checkpoint key. The one systematic change is
//! PyTorch `nn.Linear`'s weight, stored `[out, in]` by PyTorch and `[in, out]` by burn's
//! `Linear`: it is held as stored and used through a transposed view (no copy), and transposed
//! on the way out. Everything else is taken as stored.

use std::borrow::Cow;
use std::collections::BTreeSet;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::prelude::*;
use burn::tensor::{TensorCreationOptions, TensorData};

use crate::dtype::WeightDtype;
use crate::error::{Error, LoadReport, Result};
use crate::state_dict::{is_float, StateDict};

/// How strictly [`load_module`] treats a state dict that does not match the module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strictness {
    /// Any missing, unexpected or mis-shaped key is an error.
    Strict,
    /// Missing keys keep their initial values and unexpected keys are ignored, but reported;
    /// a shape mismatch is still an error.
    Partial,
}

/// Reads a borrowed state dict, or takes tensors out of an owned one as they are loaded (so a
/// checkpoint's copy shrinks while the model's weights grow).
struct Loader<'a> {
    borrowed: Option<&'a StateDict>,
    owned: StateDict,
    path: Vec<(String, String)>,
    used: BTreeSet<String>,
    report: LoadReport,
    /// The dtype of parameters with two or more dimensions (weight matrices, embeddings);
    /// everything else is f32.
    matrices: WeightDtype,
    /// Which projection weights (`Linear`, `Conv1D`) to quantize to int8, by key.
    int8: &'a dyn Fn(&str) -> bool,
    /// Why `matrices` cannot be held on the module's device, once found.
    refused: Option<Error>,
}

/// The checkpoint key of a parameter path. Enum variants (burn reports them as path
/// components) are skipped, so a model held in an enum of architectures keeps its HF keys. A
/// field named after a Rust keyword carries a trailing `_` (DeBERTa's `attention.self` is the
/// field `self_`), dropped here.
fn key_of(path: &[(String, String)]) -> String {
    path.iter()
        .filter(|(_, holder)| !holder.starts_with("Enum:"))
        .map(|(n, _)| n.strip_suffix('_').unwrap_or(n))
        .collect::<Vec<_>>()
        .join(".")
}

impl Loader<'_> {
    fn key(&self) -> String {
        key_of(&self.path)
    }

    /// True when the parameter being visited is a burn `Linear` weight (stored transposed).
    fn is_linear_weight(path: &[(String, String)]) -> bool {
        // burn reports each field with the type of the struct that holds it.
        matches!(path.last(), Some((name, holder)) if name == "weight" && holder == "Struct:Linear")
    }

    /// True for the weight of a projection (`Linear`, GPT-2's `Conv1D`).
    fn is_projection_weight(path: &[(String, String)]) -> bool {
        Self::is_linear_weight(path)
            || matches!(path.last(), Some((name, holder)) if name == "weight" && holder == "Struct:Conv1D")
    }
}

impl<B: Backend> ModuleMapper<B> for Loader<'_> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.push((name.to_string(), container_type.to_string()));
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let key = self.key();
        let found = match self.borrowed {
            Some(sd) => sd.get(&key).map(Cow::Borrowed),
            None => self.owned.remove(&key).map(Cow::Owned),
        };
        let Some(data) = found else {
            self.report.missing.push(key);
            return param;
        };
        self.used.insert(key.clone());
        let transpose = D == 2 && Loader::is_linear_weight(&self.path);
        let mut found: Vec<usize> = data.shape.to_vec();
        if transpose {
            found.reverse();
        }
        let expected = param.lazy_shape().to_vec();
        if found != expected {
            let mut exp = expected;
            if transpose {
                exp.reverse();
            }
            self.report.mismatched.push((key, exp, data.shape.to_vec()));
            return param;
        }
        if !is_float(data.dtype) {
            let what = format!(
                "has dtype {}, but the parameter needs a float dtype (F32, F16 or BF16)",
                dtype_name(data.dtype)
            );
            self.report.unusable.push((key, what));
            return param;
        }
        // dtype, layout and the NaN/inf count in one pass on the host (`crate::convert`)
        let target = if D >= 2 { self.matrices } else { WeightDtype::F32 };
        if let Err(e) = target.check_backend::<B>(&param.lazy_device()) {
            self.refused.get_or_insert(e);
            return param;
        }
        let dtype = data.dtype;
        // a Linear weight stays `[out, in]` as stored (so a mapped checkpoint's bytes are used
        // where they lie) and becomes burn's `[in, out]` as a transposed view
        let Some((values, bad)) = crate::convert::into_dtype(data, false, target.dtype()) else {
            self.report.unusable.push((key, format!("has dtype {} that cannot be read", dtype_name(dtype))));
            return param;
        };
        if bad > 0 {
            let what = match target {
                WeightDtype::F16 => format!(
                    "holds {bad} NaN, infinite or out-of-f16-range value(s) of {}: load it with --dtype bf16 or f32",
                    values.num_elements()
                ),
                _ => format!("holds {bad} NaN or infinite value(s) of {}", values.num_elements()),
            };
            self.report.unusable.push((key, what));
            return param;
        }
        let options = TensorCreationOptions::new(param.lazy_device()).with_dtype(target.dtype());
        let mut tensor = Tensor::<B, D>::from_data(values, options);
        if transpose {
            tensor = tensor.transpose();
        }
        if D == 2 && Loader::is_projection_weight(&self.path) && (self.int8)(&key) {
            tensor = crate::dtype::quantize_int8(tensor);
        }
        let id = param.id;
        param.transform_for_load(tensor, id)
    }
}

/// A dtype as safetensors names it (`I64`, `BF16`, …).
fn dtype_name(dtype: burn::tensor::DType) -> String {
    format!("{dtype:?}").to_uppercase()
}

fn expected_dims<const D: usize>(v: &[usize]) -> [usize; D] {
    let mut a = [0; D];
    a.copy_from_slice(v);
    a
}

/// Loads `sd` into `module` by parameter path, returning the module and what did not match.
///
/// With [`Strictness::Strict`] any mismatch is an [`Error::Load`]; with
/// [`Strictness::Partial`] only shape mismatches are, and missing keys keep the module's
/// initial values (see the returned report). Mismatched shapes are always errors, so a
/// module never silently runs on random weights where the checkpoint had something else.
pub fn load_module<B: Backend, M: Module<B>>(module: M, sd: &StateDict, strict: Strictness) -> Result<(M, LoadReport)> {
    run_loader(module, Some(sd), StateDict::new(), strict, WeightDtype::F32, &|_| false)
}

/// [`load_module`] from a state dict it owns: each tensor is freed once converted, so loading
/// a checkpoint never holds more than the model plus what is left of the checkpoint.
/// Parameters of two or more dimensions (weight matrices, embeddings) are held in `matrices`,
/// and the projection weights whose key `int8` picks are quantized to int8 (see
/// [`crate::dtype`]); the rest is f32.
pub fn load_module_owned<B: Backend, M: Module<B>>(
    module: M,
    sd: StateDict,
    strict: Strictness,
    matrices: WeightDtype,
    int8: &dyn Fn(&str) -> bool,
) -> Result<(M, LoadReport)> {
    run_loader(module, None, sd, strict, matrices, int8)
}

fn run_loader<B: Backend, M: Module<B>>(
    module: M,
    borrowed: Option<&StateDict>,
    owned: StateDict,
    strict: Strictness,
    matrices: WeightDtype,
    int8: &dyn Fn(&str) -> bool,
) -> Result<(M, LoadReport)> {
    let mut loader = Loader {
        borrowed,
        owned,
        path: Vec::new(),
        used: BTreeSet::new(),
        report: LoadReport::default(),
        matrices,
        int8,
        refused: None,
    };
    let module = module.map(&mut loader);
    if let Some(e) = loader.refused {
        return Err(e);
    }
    let mut report = loader.report;
    let left = borrowed.unwrap_or(&loader.owned);
    report.unexpected = left.keys().filter(|k| !loader.used.contains(*k)).map(String::from).collect();
    let fatal = match strict {
        Strictness::Strict => !report.is_clean(),
        Strictness::Partial => report.is_fatal(),
    };
    if fatal {
        return Err(Error::Load(report));
    }
    Ok((module, report))
}

/// A float parameter to be read later, under its Hugging Face key and in PyTorch's layout
/// (Linear weights `[out, in]`), as f32: writing a checkpoint one parameter at a time reads
/// each off its device just before it is written.
pub struct SavedParam {
    pub key: String,
    pub shape: Vec<usize>,
    read: Box<dyn Fn() -> TensorData>,
}

impl SavedParam {
    /// The parameter's values (f32).
    pub fn read(&self) -> TensorData {
        (self.read)()
    }

    /// The same parameter under `prefix` + its key.
    pub fn prefixed(mut self, prefix: &str) -> Self {
        self.key = format!("{prefix}{}", self.key);
        self
    }
}

struct Saver<'a> {
    path: Vec<(String, String)>,
    params: Vec<SavedParam>,
    keep: &'a dyn Fn(&str) -> bool,
}

impl<B: Backend> ModuleVisitor<B> for Saver<'_> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.push((name.to_string(), container_type.to_string()));
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let key = key_of(&self.path);
        if !(self.keep)(&key) {
            return;
        }
        let dims = expected_dims::<D>(&param.lazy_shape().to_vec());
        let t = param.val();
        let (shape, read): (Vec<usize>, Box<dyn Fn() -> TensorData>) = if D == 2 && Loader::is_linear_weight(&self.path)
        {
            let read = move || t.clone().dequantize().reshape(dims).transpose().into_data().convert::<f32>();
            (vec![dims[1], dims[0]], Box::new(read))
        } else {
            (dims.to_vec(), Box::new(move || t.clone().dequantize().into_data().convert::<f32>()))
        };
        self.params.push(SavedParam { key, shape, read });
    }
}

/// Every float parameter of `module` under its Hugging Face key, as f32 (Linear weights
/// transposed back to PyTorch's `[out, in]`).
pub fn module_state_dict<B: Backend, M: Module<B>>(module: &M) -> StateDict {
    module_state_dict_where(module, |_| true)
}

/// Like [`module_state_dict`], but only the parameters whose key satisfies `keep` are read
/// (the others never leave the device), e.g. a LoRA adapter's tensors of a large model.
pub fn module_state_dict_where<B: Backend, M: Module<B>>(module: &M, keep: impl Fn(&str) -> bool) -> StateDict {
    read_params(module_params_where(module, keep))
}

/// The parameters of a model made of a `body` and a `head` whose keys take `prefix` (a reward
/// model's `score.`, a value head's `v_head.`), not read yet.
pub fn body_and_head_params<B: Backend, M: Module<B>, H: Module<B>>(
    body: &M,
    head: &H,
    prefix: &str,
) -> Vec<SavedParam> {
    let mut params = module_params_where(body, |_| true);
    params.extend(module_params_where(head, |_| true).into_iter().map(|p| p.prefixed(prefix)));
    params
}

/// Reads `params` into a state dict (a later parameter replaces an earlier one of its key).
pub fn read_params(params: Vec<SavedParam>) -> StateDict {
    let mut sd = StateDict::new();
    for p in params {
        sd.insert(p.key.clone(), p.read());
    }
    sd
}

/// Writes `params` as a model's weights into `dir`, as [`crate::checkpoint::save_weights`]
/// does, reading each only as it is written: saving needs one parameter's host copy at a
/// time, not the whole model's. Key order; a later parameter replaces an earlier one of its key.
pub fn save_params(dir: &std::path::Path, max_shard_size: usize, params: Vec<SavedParam>) -> Result<()> {
    let params: Vec<SavedParam> = params
        .into_iter()
        .map(|p| (p.key.clone(), p))
        .collect::<std::collections::BTreeMap<_, _>>()
        .into_values()
        .collect();
    let header = params.iter().map(|p| (p.key.clone(), burn::tensor::DType::F32, p.shape.clone())).collect();
    crate::checkpoint::save_weights_with(dir, max_shard_size, header, |i| Cow::Owned(params[i].read()))
}

/// The parameters [`module_state_dict_where`] reads, not read yet (see [`SavedParam`]).
pub fn module_params_where<B: Backend, M: Module<B>>(module: &M, keep: impl Fn(&str) -> bool) -> Vec<SavedParam> {
    let mut saver = Saver { path: Vec::new(), params: Vec::new(), keep: &keep };
    module.visit(&mut saver);
    saver.params
}

/// Sets `require_grad` of each float parameter to `trainable(key)`, leaving it as it is where
/// that is `None`. On an autodiff backend a parameter that does not require grad gets no
/// gradient, so an optimizer leaves it untouched (freezing a base model).
pub fn set_require_grad_where<B: Backend, M: Module<B>>(module: M, trainable: impl Fn(&str) -> Option<bool>) -> M {
    struct Freeze<'a>(Vec<(String, String)>, &'a dyn Fn(&str) -> Option<bool>);
    impl<B: Backend> ModuleMapper<B> for Freeze<'_> {
        fn enter_module(&mut self, name: &str, c: &str) {
            self.0.push((name.to_string(), c.to_string()));
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.0.pop();
        }
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            match (self.1)(&key_of(&self.0)) {
                Some(grad) => param.set_require_grad(grad),
                None => param,
            }
        }
    }
    module.map(&mut Freeze(Vec::new(), &trainable))
}

/// Holds each float parameter for which `which(key, requires_grad)` holds contiguously in its
/// logical layout (a weight read from a checkpoint may be a view, such as a `[out, in]` matrix
/// read as `[in, out]`): as a freshly initialised or trained one is held, so that a matmul sums in the
/// same order for both. Ids and `require_grad` are kept.
pub fn contiguous_where<B: Backend, M: Module<B>>(module: M, which: impl Fn(&str, bool) -> bool) -> M {
    struct Lay<'a>(Vec<(String, String)>, &'a dyn Fn(&str, bool) -> bool);
    impl<B: Backend> ModuleMapper<B> for Lay<'_> {
        fn enter_module(&mut self, name: &str, c: &str) {
            self.0.push((name.to_string(), c.to_string()));
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.0.pop();
        }
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            if !(self.1)(&key_of(&self.0), param.is_require_grad()) {
                return param;
            }
            let (id, tensor, mapper) = param.consume();
            let (shape, grad) = (tensor.shape(), tensor.is_require_grad());
            // through a flat view, which a non-contiguous layout copies into logical order
            let laid = tensor.detach().reshape([shape.num_elements()]).reshape(shape).detach();
            Param::from_mapped_value(id, if grad { laid.require_grad() } else { laid }, mapper)
        }
    }
    module.map(&mut Lay(Vec::new(), &which))
}

/// The ids of every float parameter of `module`, by key (for freezing or per-group optimisers).
pub fn param_ids<B: Backend, M: Module<B>>(module: &M) -> Vec<(String, ParamId)> {
    struct Ids(Vec<(String, String)>, Vec<(String, ParamId)>);
    impl<B: Backend> ModuleVisitor<B> for Ids {
        fn enter_module(&mut self, name: &str, c: &str) {
            self.0.push((name.to_string(), c.to_string()));
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.0.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            self.1.push((key_of(&self.0), param.id));
        }
    }
    let mut v = Ids(Vec::new(), Vec::new());
    module.visit(&mut v);
    v.1
}

/// The keys of float parameters that hold a NaN or an infinity (checked on the device; only
/// one scalar per parameter comes back). A parameter's sum is finite when all its values are (a
/// NaN stays NaN, an infinity stays infinite or meets its opposite in a NaN), and a sum needs no
/// parameter-sized buffer; only where the sum is not finite (a bad value, or finite values whose
/// sum overflows) does the exact check run.
pub fn non_finite_params<B: Backend, M: Module<B>>(module: &M) -> Vec<String> {
    struct Check(Vec<(String, String)>, Vec<String>);
    impl<B: Backend> ModuleVisitor<B> for Check {
        fn enter_module(&mut self, name: &str, c: &str) {
            self.0.push((name.to_string(), c.to_string()));
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.0.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let t = param.val();
            if t.clone().sum().into_scalar().elem::<f64>().is_finite() {
                return;
            }
            // x - x is 0 for every finite x and NaN for NaN and ±inf, so the sum is NaN iff any is.
            if t.clone().sub(t).sum().into_scalar().elem::<f64>().is_nan() {
                self.1.push(key_of(&self.0));
            }
        }
    }
    let mut v = Check(Vec::new(), Vec::new());
    module.visit(&mut v);
    v.1
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use burn::nn::{Linear, LinearConfig};

    type F = burn::backend::Flex;

    #[derive(Module, Debug)]
    struct Two<B: Backend> {
        a: Linear<B>,
        b: Linear<B>,
    }

    fn two(a: [f32; 2], b: [f32; 2]) -> Two<F> {
        let device = Default::default();
        let lin = |v: [f32; 2]| {
            let mut l = LinearConfig::new(2, 1).with_bias(false).init::<F>(&device);
            l.weight = Param::from_tensor(Tensor::from_data(TensorData::new(v.to_vec(), [2, 1]), &device));
            l
        };
        Two { a: lin(a), b: lin(b) }
    }

    #[test]
    fn non_finite_params_are_found_and_an_overflowing_sum_is_not_one() {
        assert!(non_finite_params(&two([1.0, -2.0], [3.0e38, 3.0e38])).is_empty(), "finite values whose sum overflows");
        assert_eq!(non_finite_params(&two([f32::NAN, 1.0], [0.5, 0.25])), ["a.weight"]);
        assert_eq!(non_finite_params(&two([1.0, 1.0], [f32::INFINITY, f32::NEG_INFINITY])), ["b.weight"]);
        assert_eq!(non_finite_params(&two([f32::NEG_INFINITY, 0.0], [1.0, f32::NAN])), ["a.weight", "b.weight"]);
    }
}
