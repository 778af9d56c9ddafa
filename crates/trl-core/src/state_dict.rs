//! Named tensors on the host: what a checkpoint holds before it becomes a module.

use std::collections::BTreeMap;

use burn::tensor::{DType, TensorData};

/// An ordered map from Hugging Face parameter names to host tensors, in the dtype they were stored.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StateDict {
    pub tensors: BTreeMap<String, TensorData>,
}

impl StateDict {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    pub fn get(&self, key: &str) -> Option<&TensorData> {
        self.tensors.get(key)
    }

    pub fn insert(&mut self, key: impl Into<String>, value: TensorData) {
        self.tensors.insert(key.into(), value);
    }

    pub fn remove(&mut self, key: &str) -> Option<TensorData> {
        self.tensors.remove(key)
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// Keys that start with `prefix`, with the prefix removed; others are dropped.
    pub fn strip_prefix(&self, prefix: &str) -> StateDict {
        let tensors = self
            .tensors
            .iter()
            .filter_map(|(k, v)| k.strip_prefix(prefix).map(|s| (s.to_string(), v.clone())))
            .collect();
        StateDict { tensors }
    }

    /// Every key with `prefix` put in front.
    pub fn add_prefix(&self, prefix: &str) -> StateDict {
        let tensors = self.tensors.iter().map(|(k, v)| (format!("{prefix}{k}"), v.clone())).collect();
        StateDict { tensors }
    }

    /// Splits off the entries whose keys satisfy `pred`, leaving the rest in `self`.
    pub fn split_off_by(&mut self, pred: impl Fn(&str) -> bool) -> StateDict {
        let (take, keep): (BTreeMap<_, _>, BTreeMap<_, _>) =
            std::mem::take(&mut self.tensors).into_iter().partition(|(k, _)| pred(k));
        self.tensors = keep;
        StateDict { tensors: take }
    }

    /// Keeps only the entries whose keys satisfy `pred`.
    pub fn filter(&self, pred: impl Fn(&str) -> bool) -> StateDict {
        let tensors = self.tensors.iter().filter(|(k, _)| pred(k)).map(|(k, v)| (k.clone(), v.clone())).collect();
        StateDict { tensors }
    }

    /// Adds every entry of `other`, replacing keys present in both.
    pub fn extend(&mut self, other: StateDict) {
        self.tensors.extend(other.tensors);
    }

    /// Total bytes of tensor data.
    pub fn nbytes(&self) -> usize {
        self.tensors.values().map(|t| t.bytes.len()).sum()
    }
}

/// Whether a dtype is a floating-point type that converts to f32 without surprise.
pub fn is_float(dtype: DType) -> bool {
    matches!(dtype, DType::F32 | DType::F16 | DType::BF16 | DType::F64 | DType::Flex32)
}
