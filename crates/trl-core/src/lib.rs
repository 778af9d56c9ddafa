//! # trl-core
//!
//! The foundation every other trl-rs crate stands on: reading and writing Hugging Face
//! checkpoints (single and sharded safetensors, legacy PyTorch `.bin`), the state dict with its
//! prefix logic and missing/unexpected-key reports, loading a state dict into any burn module
//! by parameter path, `config.json` in both transformers 4 and 5 spellings, resolving a model
//! from a local directory or the Hugging Face hub cache, PEFT LoRA adapter files and configs
//! ([`peft`]), tokenizers, atomic writes, the backend chosen by cargo feature, and the one
//! error type of the crate. It knows nothing of particular architectures or heads.

pub mod atomic;
pub mod backend;
pub mod checkpoint;
pub mod config;
mod convert;
pub mod dtype;
pub mod error;
pub mod lock;
pub mod module_io;
pub mod peft;
pub mod pickle;
pub mod source;
pub mod state_dict;
pub mod tokenizer;

pub use config::HfConfig;
pub use dtype::{DtypeArg, Holding, Quantize, WeightDtype};
pub use error::{Error, LoadReport, Result};
pub use module_io::{load_module, load_module_owned, module_state_dict, Strictness};
pub use state_dict::StateDict;
pub use tokenizer::Tokenizer;
