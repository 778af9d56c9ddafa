//! `cargo xtask forward`: one padded batch through a model, tensors out as safetensors, so
//! numbers can be checked against Python.

use std::path::PathBuf;

use burn::prelude::*;
use burn::tensor::TensorData;

use trl_core::StateDict;
use trl_heads::{CausalLmWithValueHead, ForSequenceClassification, VHeadSource, ValueHeadOptions};
use trl_models::{AnyCausalLm, Padding, TokenBatch};

use crate::common::{read_texts, Error, Kind, ModelDir, B};

#[derive(clap::Args, Debug)]
pub struct ForwardArgs {
    /// Model directory or hub id (`org/name[@rev]`).
    #[arg(long)]
    pub model: String,
    /// A PEFT LoRA adapter directory applied on top of --model (the base).
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Merge the adapter into the base weights before running (same numbers, faster).
    #[arg(long, requires = "adapter")]
    pub merge: bool,
    /// A JSON array of strings, or an object with a `texts` array.
    #[arg(long)]
    pub input: PathBuf,
    #[arg(long, value_enum, default_value = "right")]
    pub padding: Side,
    /// Output safetensors file: `input_ids`, `attention_mask`, and `logits` (causal LMs and
    /// value-head models), `values` (value-head models), `rewards` and `scores` (reward models).
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum Side {
    Right,
    Left,
}

pub fn run(args: ForwardArgs) -> Result<(), Error> {
    let m = ModelDir::open(&args.model)?;
    let texts = read_texts(&args.input)?;
    let rows = texts.iter().map(|t| m.tokenizer.encode(t, true)).collect::<Result<Vec<_>, _>>()?;
    if let Some(i) = rows.iter().position(Vec::is_empty) {
        return Err(format!("text {i} tokenizes to nothing").into());
    }
    let side = match args.padding {
        Side::Right => Padding::Right,
        Side::Left => Padding::Left,
    };
    let batch = TokenBatch::pad(&rows, m.pad_id()?, side, None)?;
    let device = trl_core::backend::device();
    let mut out = StateDict::new();
    let shape = [batch.batch, batch.seq];
    out.insert("input_ids", TensorData::new(batch.input_ids.clone(), shape));
    out.insert("attention_mask", TensorData::new(batch.attention_mask.clone(), shape));
    let data = |t: Tensor<B, 3>| t.into_data().convert::<f32>();
    let merge = |lm: &mut AnyCausalLm<B>| -> Result<(), Error> {
        if args.merge {
            lm.merge_adapter()?;
        }
        Ok(())
    };
    let base = Some(m.dir.as_path());
    let mut kind = m.kind;
    if let Some(a) = &args.adapter {
        // The adapter says which head it trained: a `v_head` or a `score` in modules_to_save.
        let cfg = trl_core::peft::LoraConfig::load(a)?;
        let saves = |name: &str| cfg.modules_to_save.iter().any(|m| m == name);
        if saves("v_head") {
            kind = Kind::ValueHead;
        } else if saves("score") || cfg.task_type.as_deref() == Some("SEQ_CLS") {
            kind = Kind::Reward;
        }
    }
    match kind {
        Kind::CausalLm => {
            let (mut model, _) = match &args.adapter {
                Some(a) => AnyCausalLm::<B>::from_adapter(a, base, &device)?,
                None => AnyCausalLm::<B>::from_pretrained(&m.dir, &device)?,
            };
            merge(&mut model)?;
            let o = model.forward(&batch, true)?;
            out.insert("logits", data(o.logits.expect("requested")));
        }
        Kind::ValueHead => {
            let opts = ValueHeadOptions::default();
            let (mut model, _, source) = match &args.adapter {
                Some(a) => CausalLmWithValueHead::<B>::from_adapter(a, base, &opts, &device)?,
                None => CausalLmWithValueHead::<B>::from_pretrained(&m.dir, &opts, &device)?,
            };
            if source == VHeadSource::Fresh {
                eprintln!("note: no v_head weights found; values come from a freshly initialised head");
            }
            merge(&mut model.pretrained_model)?;
            let o = model.forward(&batch, None)?;
            out.insert("logits", data(o.logits));
            out.insert("values", o.values.into_data().convert::<f32>());
        }
        Kind::Reward => {
            let (mut model, _, _) = match &args.adapter {
                Some(a) => ForSequenceClassification::<B>::from_adapter(a, base, &device)?,
                None => ForSequenceClassification::<B>::from_pretrained(&m.dir, None, &device)?,
            };
            merge(&mut model.backbone)?;
            model.pad_token_id = model.pad_token_id.or(Some(m.pad_id()?));
            let o = model.forward(&batch, true)?;
            let scores = o.scores.expect("requested");
            let [b, t, _] = scores.dims();
            out.insert("rewards", o.rewards.slice([0..b, 0..1]).reshape([b]).into_data().convert::<f32>());
            out.insert("scores", scores.slice([0..b, 0..t, 0..1]).reshape([b, t]).into_data().convert::<f32>());
        }
    }
    trl_core::checkpoint::save_safetensors(&out, &args.out)?;
    eprintln!("{kind:?} model, {} texts, {} tokens → {}", batch.batch, batch.seq, args.out.display());
    Ok(())
}
