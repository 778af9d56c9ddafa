//! # trl-models
//!
//! Causal-LM backbones loaded from Hugging Face checkpoints and proven equal to transformers:
//! GPT-2 (`gpt2.rs`), the Llama family — Llama, Mistral, Qwen2, Qwen3 — (`llama.rs`) and
//! GPT-NeoX (`gpt_neox.rs`), Phi-3 (`phi3.rs`) and Gemma 2 and 3 (`gemma.rs`), one
//! file per architecture over shared blocks (`layers.rs`: norms, RoPE, attention, KV cache). Module
//! fields mirror the HF parameter paths, so checkpoint keys load without a table. Masks and
//! position ids come from the attention mask, built once per batch (`batch.rs`), so left and
//! right padding both give transformers' numbers. Each architecture implements [`Backbone`];
//! one decoder loop ([`decode`]) runs them all, and [`AnyCausalLm`] picks the architecture from
//! `config.json` (the one list of architectures is in `any.rs`). PEFT LoRA adapters (`lora.rs`,
//! `adapters.rs`) attach to the projections: load, train, merge, switch and save them. Beside the
//! decoders, [`deberta_v2`] is the DeBERTa-v2 / v3 encoder (bidirectional, disentangled attention)
//! that encoder reward models run on. Generic over burn's `Backend`.

/// THE list of architectures, `Variant => module::Type`: one line per architecture file. It
/// declares the modules and calls `$then!` with the list, so everything generated from it
/// (the `AnyCausalLm` enum, `model_type` dispatch, every per-architecture `match`, in
/// `any.rs`) sees the same list.
macro_rules! architectures {
    ($then:ident $($args:tt)*) => {
        $then! { ($($args)*)
            Gpt2 => gpt2::Gpt2LMHeadModel,
            Llama => llama::LlamaForCausalLM,
            GptNeoX => gpt_neox::GptNeoXForCausalLM,
            Phi3 => phi3::Phi3ForCausalLM,
            Gemma => gemma::GemmaForCausalLM
        }
    };
}

macro_rules! declare_modules {
    (() $($v:ident => $m:ident :: $t:ident),*) => {
        $(mod $m;)*
    };
}
architectures!(declare_modules);

mod adapters;
mod any;
pub mod autocast;
mod backbone;
mod batch;
pub mod deberta_v2;
mod error;
mod kernels;
mod layers;
mod limits;
mod lora;
pub mod loss;
pub mod placement;
mod rope;
pub mod t5;

pub use any::{arch_info, supported, AnyCausalLm, LmOutput, ARCHITECTURES};
pub use backbone::{decode, ArchInfo, Backbone, CacheSlot};
pub use batch::{prefix_sharing, Context, Padding, SharedPairs, SharedRow, TokenBatch};
pub use deberta_v2::DebertaV2Model;
pub use error::{ModelError, Result};
pub use kernels::{adamw, AdamWStep};
pub use layers::{Activation, KvCache};
pub use lora::{held_linear, Adapters, LoadedAdapter, LoraLayer};
