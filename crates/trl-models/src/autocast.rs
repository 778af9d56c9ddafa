//! Mixed-precision training as `torch.autocast` runs it (transformers' `bf16` / `fp16`): inside
//! [`scope`], every projection ([`crate::lora::held_linear`]: the Linear and Conv1D layers and
//! an untied lm_head) rounds its input and weight to the half dtype and multiplies there; its
//! output comes back in the activations' dtype (f32) before the bias is added. Everything else
//! (norms, attention, softmax, LoRA's A/B, the heads, the loss) stays f32.
//!
//! The weights stay as they are held: f32 master weights are rounded for the product (the
//! gradient flows back through the cast to them), and a frozen base held in the half dtype is
//! used as it is, so the backward pass keeps that half-precision weight rather than a widened
//! copy. The setting is per thread, like torch's, and only the forward pass reads it: the
//! backward pass replays the casts recorded then.

use std::cell::Cell;

use burn::tensor::DType;

thread_local! {
    static HALF: Cell<Option<DType>> = const { Cell::new(None) };
}

/// Runs `f` with the projections multiplying in `dtype` (`None`: as held, widened to f32).
pub fn scope<R>(dtype: Option<DType>, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<DType>);
    impl Drop for Restore {
        fn drop(&mut self) {
            HALF.with(|h| h.set(self.0));
        }
    }
    let _restore = Restore(HALF.with(|h| h.replace(dtype)));
    f()
}

/// The half dtype of the enclosing [`scope`], if any.
pub fn dtype() -> Option<DType> {
    HALF.with(Cell::get)
}
