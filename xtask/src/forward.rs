//! `cargo xtask forward`: one padded batch through a model, tensors out as safetensors, so
//! numbers can be checked against Python.

use std::path::PathBuf;

use burn::prelude::*;
use burn::tensor::TensorData;

use trl_core::StateDict;
use trl_heads::{
    CausalLmWithValueHead, ForSequenceClassification, Seq2SeqLmWithValueHead, VHeadSource, ValueHeadOptions,
};
use trl_models::{AnyCausalLm, Padding, TokenBatch};

use crate::common::{place, read_texts, Error, Kind, Limit, ModelDir, Truncation, B};

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
    /// How the weights are held in memory (`--dtype`, `--quantize`; docs/checkpoints.md).
    #[command(flatten)]
    pub holding: crate::common::HoldingArgs,
    #[command(flatten)]
    pub map: crate::common::MapArgs,
    /// A JSON array of strings, or an object with a `texts` array.
    #[arg(long)]
    pub input: PathBuf,
    #[arg(long, value_enum, default_value = "right")]
    pub padding: Side,
    /// Output safetensors file: `input_ids`, `attention_mask`, `truncated` (i64 `[batch]`, 1
    /// where --truncation cut the text), and `logits` (causal LMs and value-head models),
    /// `values` (value-head models), `rewards` and `scores` (reward models).
    #[arg(long)]
    pub out: PathBuf,
    /// Longest text in tokens, special tokens included [default: the model's position limit,
    /// which it may not exceed].
    #[arg(long)]
    pub max_length: Option<usize>,
    /// Encoder–decoder models (T5): the decoder's texts, one per --input text (same format).
    /// Each becomes the decoder start token + its ids less the last (transformers'
    /// `shift_right` of the labels `tokenizer(text)`); without it the decoder gets only the
    /// start token. The output adds `decoder_input_ids` and `decoder_attention_mask`.
    #[arg(long)]
    pub decoder_input: Option<PathBuf>,
    /// A text longer than --max-length: `error` fails naming it (1-based), its token count
    /// and the limit; `left` keeps its last tokens; `right` keeps its first. Cut texts are 1 in
    /// the `truncated` tensor.
    #[arg(long, value_enum, default_value = "error")]
    pub truncation: Truncation,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum Side {
    Right,
    Left,
}

/// The loaded model, of whichever kind.
enum Model {
    Lm(Box<AnyCausalLm<B>>),
    ValueHead(Box<CausalLmWithValueHead<B>>),
    Reward(Box<ForSequenceClassification<B>>),
}

impl Model {
    fn backbone(&self) -> &AnyCausalLm<B> {
        match self {
            Model::Lm(lm) => lm,
            Model::ValueHead(m) => &m.pretrained_model,
            Model::Reward(m) => &m.backbone,
        }
    }
}

pub fn run(args: ForwardArgs) -> Result<(), Error> {
    let crate::common::Placement { ran_on, device, map } = args.map.devices(&args.holding.device)?;
    let m = ModelDir::open(&args.model)?;
    let texts = read_texts(&args.input)?;
    if m.config.model_type() == Some(trl_models::t5::MODEL_TYPE) {
        if !map.is_empty() {
            return Err("--device-map splits a decoder's layers; run an encoder-decoder on one --device".into());
        }
        return seq2seq(&args, &m, &texts, (ran_on, &device));
    }
    if args.decoder_input.is_some() {
        return Err(format!("--decoder-input: {} is not an encoder-decoder model", m.dir.display()).into());
    }
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
    let merge = |lm: &mut AnyCausalLm<B>| -> Result<(), Error> {
        if args.merge {
            lm.merge_adapter()?;
        }
        Ok(())
    };
    let model = match kind {
        Kind::CausalLm => {
            let (mut model, _) = match &args.adapter {
                Some(a) => AnyCausalLm::<B>::from_adapter_as(a, base, args.holding.get(), &device)?,
                None => AnyCausalLm::<B>::from_pretrained_as(&m.dir, args.holding.get(), &device)?,
            };
            merge(&mut model)?;
            let layers = model.num_layers();
            Model::Lm(Box::new(place(model, layers, &map)?))
        }
        Kind::ValueHead => {
            let opts = ValueHeadOptions { holding: args.holding.get(), ..Default::default() };
            let (mut model, _, source) = match &args.adapter {
                Some(a) => CausalLmWithValueHead::<B>::from_adapter(a, base, &opts, &device)?,
                None => CausalLmWithValueHead::<B>::from_pretrained(&m.dir, &opts, &device)?,
            };
            if source == VHeadSource::Fresh {
                eprintln!("note: no v_head weights found; values come from a freshly initialised head");
            }
            merge(&mut model.pretrained_model)?;
            let layers = model.pretrained_model.num_layers();
            Model::ValueHead(Box::new(place(model, layers, &map)?))
        }
        Kind::Reward => {
            let (mut model, _, _) = match &args.adapter {
                Some(a) => ForSequenceClassification::<B>::from_adapter_as(a, base, args.holding.get(), &device)?,
                None => ForSequenceClassification::<B>::from_pretrained_as(&m.dir, None, args.holding.get(), &device)?,
            };
            merge(&mut model.backbone)?;
            model.pad_token_id = model.pad_token_id.or(Some(m.pad_id()?));
            let layers = model.backbone.num_layers();
            Model::Reward(Box::new(place(model, layers, &map)?))
        }
    };

    // Every row is fitted to the limit before the batch is built.
    let limit = Limit::new(args.max_length, model.backbone().max_positions(), args.truncation)?;
    let mut rows = Vec::with_capacity(texts.len());
    let mut truncated = Vec::with_capacity(texts.len());
    for (i, t) in texts.iter().enumerate() {
        let at = format!("{}: text {}", args.input.display(), i + 1);
        let mut ids = m.tokenizer.encode(t, true)?;
        if ids.is_empty() {
            return Err(format!("{at} has no tokens: nothing to run").into());
        }
        truncated.push(i64::from(limit.fit(&mut ids, &at)?));
        rows.push(ids);
    }
    let side = match args.padding {
        Side::Right => Padding::Right,
        Side::Left => Padding::Left,
    };
    let batch = TokenBatch::pad(&rows, m.pad_id()?, side, None)?;
    let mut out = StateDict::new();
    let shape = [batch.batch, batch.seq];
    out.insert("input_ids", TensorData::new(batch.input_ids.clone(), shape));
    out.insert("attention_mask", TensorData::new(batch.attention_mask.clone(), shape));
    let cut = truncated.iter().filter(|&&t| t != 0).count();
    out.insert("truncated", TensorData::new(truncated, [batch.batch]));
    let data = |t: Tensor<B, 3>| t.into_data().convert::<f32>();
    match &model {
        Model::Lm(model) => {
            let o = model.forward(&batch, true)?;
            out.insert("logits", data(o.logits.expect("requested")));
        }
        Model::ValueHead(model) => {
            let o = model.forward(&batch, None)?;
            out.insert("logits", data(o.logits));
            out.insert("values", o.values.into_data().convert::<f32>());
        }
        Model::Reward(model) => {
            let o = model.forward(&batch, true)?;
            let scores = o.scores.expect("requested");
            let [b, t, _] = scores.dims();
            out.insert("rewards", o.rewards.slice([0..b, 0..1]).reshape([b]).into_data().convert::<f32>());
            out.insert("scores", scores.slice([0..b, 0..t, 0..1]).reshape([b, t]).into_data().convert::<f32>());
        }
    }
    trl_core::checkpoint::save_safetensors(&out, &args.out)?;
    let note = if cut > 0 { format!(" ({cut} truncated)") } else { String::new() };
    eprintln!(
        "{} model, {} texts{note}, {} tokens ({}) → {}",
        kind.name(),
        batch.batch,
        batch.seq,
        ran_on,
        args.out.display()
    );
    Ok(())
}

/// `forward` of an encoder–decoder (T5, with TRL's value head when the checkpoint has one):
/// `logits` `[batch, decoder_seq, vocab]` and, for a value-head checkpoint, `values`.
fn seq2seq(
    args: &ForwardArgs,
    m: &ModelDir,
    texts: &[String],
    (ran_on, device): (String, &burn::tensor::Device<B>),
) -> Result<(), Error> {
    if args.merge {
        return Err("--merge: an encoder-decoder's adapter is always merged at load".into());
    }
    let opts = ValueHeadOptions { holding: args.holding.get(), ..Default::default() };
    let (model, _, source) = match &args.adapter {
        Some(a) => Seq2SeqLmWithValueHead::<B>::from_adapter(a, Some(&m.dir), &opts, device)?,
        None => Seq2SeqLmWithValueHead::<B>::from_pretrained(&m.dir, &opts, device)?,
    };
    let t5 = &model.pretrained_model;
    let limit = Limit::new(args.max_length, t5.max_positions(), args.truncation)?;
    let side = match args.padding {
        Side::Right => Padding::Right,
        Side::Left => Padding::Left,
    };
    let (mut sources, mut truncated) = (Vec::with_capacity(texts.len()), Vec::with_capacity(texts.len()));
    for (i, t) in texts.iter().enumerate() {
        let at = format!("{}: text {}", args.input.display(), i + 1);
        let mut ids = m.tokenizer.encode(t, true)?;
        if ids.is_empty() {
            return Err(format!("{at} has no tokens: nothing to run").into());
        }
        truncated.push(i64::from(limit.fit(&mut ids, &at)?));
        sources.push(ids);
    }
    let start = t5.decoder_start_token_id();
    let decoder_rows: Vec<Vec<i64>> = match &args.decoder_input {
        None => vec![vec![start]; texts.len()],
        Some(path) => {
            let targets = read_texts(path)?;
            if targets.len() != texts.len() {
                let (n, k) = (targets.len(), texts.len());
                return Err(
                    format!("{}: {n} decoder texts for {k} --input texts; give one each", path.display()).into()
                );
            }
            let mut rows = Vec::with_capacity(targets.len());
            for (i, t) in targets.iter().enumerate() {
                let at = format!("{}: text {}", path.display(), i + 1);
                let mut ids = m.tokenizer.encode(t, true)?;
                ids.pop();
                ids.insert(0, start);
                if ids.len() > limit.budget() {
                    return Err(
                        format!("{at}: {} decoder tokens exceed the limit of {}", ids.len(), limit.budget()).into()
                    );
                }
                rows.push(ids);
            }
            rows
        }
    };
    let batch = TokenBatch::pad(&sources, m.pad_id()?, side, None)?;
    let decoder = TokenBatch::pad(&decoder_rows, m.pad_id()?, side, None)?;
    let out_model = model.forward(&batch, &decoder)?;
    let mut out = StateDict::new();
    for (name, b) in [("", &batch), ("decoder_", &decoder)] {
        let shape = [b.batch, b.seq];
        out.insert(format!("{name}input_ids"), TensorData::new(b.input_ids.clone(), shape));
        out.insert(format!("{name}attention_mask"), TensorData::new(b.attention_mask.clone(), shape));
    }
    out.insert("truncated", TensorData::new(truncated, [batch.batch]));
    out.insert("logits", out_model.logits.into_data().convert::<f32>());
    if source == VHeadSource::Restored {
        out.insert("values", out_model.values.into_data().convert::<f32>());
    }
    trl_core::checkpoint::save_safetensors(&out, &args.out)?;
    eprintln!(
        "encoder-decoder model, {} texts, {} source / {} decoder tokens ({}) → {}",
        batch.batch,
        batch.seq,
        decoder.seq,
        ran_on,
        args.out.display()
    );
    Ok(())
}
