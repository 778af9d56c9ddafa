//! Causal LM loss as transformers computes it: logits at position t predict the label at t+1,
//! labels of `-100` are ignored, the mean is over counted tokens.

use burn::prelude::*;
use burn::tensor::activation::log_softmax;

/// Label value that is not counted.
pub const IGNORE_INDEX: i64 = -100;

/// `logits` `[batch, seq, vocab]`, `labels` `[batch, seq]` row-major on the host → scalar `[1]`.
/// With no counted token the loss is 0 (transformers gives NaN there).
pub fn lm_loss<B: Backend>(logits: Tensor<B, 3>, labels: &[i64]) -> Tensor<B, 1> {
    let [b, t, v] = logits.dims();
    let device = logits.device();
    if t < 2 {
        return Tensor::zeros([1], &device);
    }
    let mut targets = Vec::with_capacity(b * (t - 1));
    let mut weights = Vec::with_capacity(b * (t - 1));
    for r in 0..b {
        for &l in &labels[r * t + 1..(r + 1) * t] {
            let counted = l != IGNORE_INDEX && l >= 0 && (l as usize) < v;
            targets.push(if counted { l } else { 0 });
            weights.push(if counted { 1.0f32 } else { 0.0 });
        }
    }
    let n: f32 = weights.iter().sum();
    if n == 0.0 {
        return Tensor::zeros([1], &device);
    }
    let logp = log_softmax(logits.slice([0..b, 0..t - 1, 0..v]).reshape([b * (t - 1), v]), 1);
    let idx = Tensor::<B, 2, Int>::from_data(TensorData::new(targets, [b * (t - 1), 1]), &device);
    let w = Tensor::<B, 1>::from_data(TensorData::new(weights, [b * (t - 1)]), &device);
    let picked: Tensor<B, 1> = logp.gather(1, idx).reshape([b * (t - 1)]);
    (picked * w).sum().neg() / n
}
