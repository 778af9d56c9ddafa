//! # trl-gen
//!
//! Text generation for trl-models backbones and anything built on them: transformers'
//! logits processors and seeded sampling ([`sampling`]), batched KV-cached decoding of
//! left-padded prompts that drops finished rows ([`generate`]), over any model that
//! implements [`NextTokenLogits`] (backbones, value-head models, references, adapters), and
//! TRL's Nash-MD [`GeometricMixture`] of a policy and a reference, each on its own cache.
//! [`Uncached`] decodes by recomputing the whole prefix each step (TRL's method), the
//! reference for tests and the baseline of [`bench::bench_mixture`].

pub mod bench;
pub mod error;
pub mod generate;
pub mod mixture;
pub mod next_token;
pub mod rng;
pub mod sampling;
pub mod seq2seq;
pub mod uncached;

pub use bench::bench_mixture;
pub use error::{GenError, Result};
pub use generate::{generate, left_pad, FinishReason, Generation};
pub use mixture::{GeometricMixture, DEFAULT_MIXTURE_COEF};
pub use next_token::NextTokenLogits;
pub use rng::Rng;
pub use sampling::SamplingConfig;
pub use seq2seq::Seq2SeqState;
pub use uncached::Uncached;
