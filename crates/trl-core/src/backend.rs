//! The backend a binary runs on, picked once by cargo feature: `cuda` > `wgpu` > `ndarray` > `flex`.
//!
//! Library code is generic over `B: Backend`; only front ends (xtask, tests, user binaries)
//! name [`Cpu`]/[`Default`] here. Training wraps it in [`Train`] (burn's `Autodiff`).

#[cfg(feature = "cuda")]
pub type Default = burn::backend::Cuda;
#[cfg(all(feature = "wgpu", not(feature = "cuda")))]
pub type Default = burn::backend::Wgpu;
#[cfg(all(feature = "ndarray", not(any(feature = "cuda", feature = "wgpu"))))]
pub type Default = burn::backend::NdArray;
#[cfg(all(feature = "flex", not(any(feature = "cuda", feature = "wgpu", feature = "ndarray"))))]
pub type Default = burn::backend::Flex;

/// The default backend with automatic differentiation, for training.
pub type Train = burn::backend::Autodiff<Default>;

/// [`Train`] with burn's balanced checkpointing: element-wise results are recomputed in the
/// backward pass instead of kept (`gradient_checkpointing = true`).
pub type TrainCheckpointed =
    burn::backend::Autodiff<Default, burn::backend::autodiff::checkpoint::strategy::BalancedCheckpointing>;

/// The default device of the default backend.
pub fn device() -> burn::tensor::Device<Default> {
    std::default::Default::default()
}

/// A short name of the backend in use, for logs and benchmark reports.
pub fn name() -> &'static str {
    if cfg!(feature = "cuda") {
        "cuda"
    } else if cfg!(feature = "wgpu") {
        "wgpu"
    } else if cfg!(feature = "ndarray") {
        "ndarray"
    } else {
        "flex"
    }
}
