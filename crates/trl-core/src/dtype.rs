//! How a model's weights are held in memory: `--dtype auto|f32|bf16|f16` and `--quantize int8`.
//!
//! Half precision is weight storage: the matrices (projections, embeddings, lm_head) stay in
//! bf16/f16, and each layer widens its weight to the activations' f32 as it runs. Norms, biases
//! and the score/value heads stay f32, so a bf16 checkpoint held in bf16 gives the same numbers
//! as the same checkpoint held in f32, with half the memory.
//!
//! Int8 is weight-only quantization of the projections (not the embeddings, the lm_head or the
//! heads), with burn's q8: symmetric int8 in −127..=127 and one f32 scale per block of up to
//! [`INT8_BLOCK`] consecutive output features of one input feature (burn's blocks are
//! contiguous and at most 255 wide, so a block is a slice of a channel: finer than one scale
//! per channel). Each layer dequantizes its weight to f32 as it runs.

use std::fmt;
use std::str::FromStr;

use burn::prelude::{Backend, Tensor};
use burn::tensor::quantization::{QuantLevel, QuantParam, QuantScheme, QuantStore, QuantValue};
use burn::tensor::DType;

use crate::error::{Error, Result};
use crate::HfConfig;

/// How a model's weights are held: the dtype of its matrices and their quantization.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Holding {
    pub dtype: DtypeArg,
    pub quantize: Quantize,
}

impl Holding {
    /// Every weight in f32 (what training needs).
    pub const F32: Self = Self { dtype: DtypeArg::Fixed(WeightDtype::F32), quantize: Quantize::None };
}

/// `data` (bf16, f16 or f32) as f32, converted on the host on every core: what a CPU backend
/// widens a half-precision weight with (burn's flex casts through f64 on one thread, 4–5
/// times slower, and that is every weight on every generated token).
pub fn widen_on_host(data: &burn::tensor::TensorData) -> Option<burn::tensor::TensorData> {
    crate::convert::to_dtype(data, false, DType::F32).map(|(d, _)| d)
}

/// True when `B` keeps its tensors in host memory (flex, ndarray), where reading one back is a
/// copy, not a transfer.
pub fn on_host<B: Backend>(device: &B::Device) -> bool {
    matches!(B::name(device).as_str(), "flex" | "ndarray")
}

/// `--quantize`: weight-only quantization of the projections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Quantize {
    #[default]
    None,
    Int8,
}

/// The widest block of one int8 scale (burn's q8 blocks hold at most 255 values).
pub const INT8_BLOCK: usize = 128;

/// `t` (`[in, out]`) quantized to int8 with burn's q8 ([module docs](self)): blocks of the
/// largest power of two up to [`INT8_BLOCK`] that divides `out`, so no block spans two
/// input features.
pub fn quantize_int8<B: Backend, const D: usize>(t: Tensor<B, D>) -> Tensor<B, D> {
    let out = t.dims()[D - 1];
    let block =
        (0..=INT8_BLOCK.trailing_zeros()).rev().map(|k| 1usize << k).find(|b| out.is_multiple_of(*b)).unwrap_or(1);
    let scheme = QuantScheme::default()
        .with_value(QuantValue::Q8S)
        .with_param(QuantParam::F32)
        .with_store(QuantStore::Native)
        .with_level(QuantLevel::block([block as u8]));
    t.quantize_dynamic(&scheme)
}

impl FromStr for Quantize {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "none" => Ok(Self::None),
            "int8" | "q8" => Ok(Self::Int8),
            other => Err(format!("unknown quantization `{other}`: use int8 or none")),
        }
    }
}

/// `--dtype` as given: a dtype, or `auto` for the checkpoint's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DtypeArg {
    /// The checkpoint's `dtype` / `torch_dtype` (f32 when it names none).
    #[default]
    Auto,
    Fixed(WeightDtype),
}

/// A dtype weight matrices can be held in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightDtype {
    #[default]
    F32,
    Bf16,
    F16,
}

impl WeightDtype {
    /// The burn dtype.
    pub fn dtype(self) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::Bf16 => DType::BF16,
            Self::F16 => DType::F16,
        }
    }

    /// The name PyTorch gives it (`float32`, `bfloat16`, `float16`).
    pub fn torch_name(self) -> &'static str {
        match self {
            Self::F32 => "float32",
            Self::Bf16 => "bfloat16",
            Self::F16 => "float16",
        }
    }

    /// The dtype a `config.json` names (`bfloat16`, `float16`, `float32`, with or without
    /// `torch.`); `None` for a name that is no float dtype.
    pub fn from_torch_name(name: &str) -> Option<Self> {
        match name.trim_start_matches("torch.") {
            "float32" | "float" => Some(Self::F32),
            "bfloat16" => Some(Self::Bf16),
            "float16" | "half" => Some(Self::F16),
            _ => None,
        }
    }

    /// Refuses a dtype the backend `B` cannot hold, naming the ones it can.
    pub fn check_backend<B: Backend>(self, device: &B::Device) -> Result<Self> {
        if B::supports_dtype(device, self.dtype()) {
            return Ok(self);
        }
        Err(Error::Invalid(format!(
            "--dtype {self}: the {} backend holds no {self} tensors; use --dtype f32, or the flex backend \
             (the default) or cuda",
            B::name(device)
        )))
    }
}

impl DtypeArg {
    /// The dtype to hold `config`'s model in. A config that names a dtype we do not hold
    /// (e.g. float64) falls back to f32.
    pub fn resolve(self, config: &HfConfig) -> WeightDtype {
        match self {
            Self::Fixed(d) => d,
            Self::Auto => config.dtype().and_then(WeightDtype::from_torch_name).unwrap_or_default(),
        }
    }
}

impl fmt::Display for WeightDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
            Self::F16 => "f16",
        })
    }
}

impl FromStr for DtypeArg {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "auto" => Self::Auto,
            "f32" | "fp32" | "float32" => Self::Fixed(WeightDtype::F32),
            "bf16" | "bfloat16" => Self::Fixed(WeightDtype::Bf16),
            "f16" | "fp16" | "float16" => Self::Fixed(WeightDtype::F16),
            other => return Err(format!("unknown dtype `{other}`: use auto, f32, bf16 or f16")),
        })
    }
}

impl fmt::Display for DtypeArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Fixed(d) => d.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_resolves() {
        assert_eq!("BF16".parse::<DtypeArg>().unwrap(), DtypeArg::Fixed(WeightDtype::Bf16));
        assert_eq!("fp16".parse::<DtypeArg>().unwrap(), DtypeArg::Fixed(WeightDtype::F16));
        assert!("int4".parse::<DtypeArg>().unwrap_err().contains("auto, f32, bf16 or f16"));
        let cfg = |v: &str| HfConfig::parse_str(v, "config.json".into()).unwrap();
        assert_eq!(DtypeArg::Auto.resolve(&cfg(r#"{"torch_dtype": "bfloat16"}"#)), WeightDtype::Bf16);
        assert_eq!(DtypeArg::Auto.resolve(&cfg(r#"{"dtype": "float16"}"#)), WeightDtype::F16);
        assert_eq!(DtypeArg::Auto.resolve(&cfg(r#"{"dtype": "float64"}"#)), WeightDtype::F32);
        assert_eq!(DtypeArg::Auto.resolve(&cfg("{}")), WeightDtype::F32);
        assert_eq!(DtypeArg::Fixed(WeightDtype::F32).resolve(&cfg(r#"{"dtype": "bfloat16"}"#)), WeightDtype::F32);
        assert_eq!("INT8".parse::<Quantize>().unwrap(), Quantize::Int8);
        assert!("int4".parse::<Quantize>().unwrap_err().contains("int8 or none"));
    }
}
