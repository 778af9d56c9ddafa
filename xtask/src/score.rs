//! `cargo xtask score`: rewards for texts or preference pairs, streamed as JSONL.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use serde_json::{json, Value};

use trl_heads::{
    DebertaV2ForSequenceClassification, ForSequenceClassification, Seq2SeqLmWithValueHead, VHeadSource,
    ValueHeadOptions,
};
use trl_models::{Padding, TokenBatch};
use trl_reward::data::{is_parquet, jsonl_lines, render, skipped_summary, Content, SkippedRow, SKIPPED_SHOWN};
use trl_reward::loss::preference_probability;
use trl_reward::parquet::ParquetFile;

use crate::common::{write_output, Error, Kind, Limit, ModelDir, Truncation, B};

#[derive(clap::Args, Debug)]
pub struct ScoreArgs {
    /// Reward model directory or hub id (`org/name[@rev]`).
    #[arg(long)]
    pub model: String,
    /// A PEFT LoRA reward adapter (with its `score` in modules_to_save) applied on --model.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Rows `{"text"}`, `{"prompt","response"}` or `{"prompt","chosen","rejected"}`: JSONL
    /// (UTF-8, a byte-order mark allowed, blank lines skipped), or Parquet when the name ends
    /// in `.parquet`. Each output row is the input row plus `reward`, or `chosen_reward`,
    /// `rejected_reward` and `p_chosen`.
    #[arg(long, alias = "data")]
    pub input: PathBuf,
    /// Texts per forward pass (a pair counts two).
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Write JSONL here (atomically) instead of stdout.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Do not append the EOS token to plain text (training appends it, as TRL 1.x does).
    #[arg(long)]
    pub no_eos: bool,
    /// Skip malformed rows (not UTF-8, not JSON, no text to score…) instead of failing: they
    /// are counted, the first few named on stderr, and give no output row.
    #[arg(long)]
    pub skip_bad_rows: bool,
    /// Longest text in tokens, special tokens included [default: the model's position limit,
    /// which it may not exceed].
    #[arg(long)]
    pub max_length: Option<usize>,
    /// A text longer than --max-length: `error` fails naming its line, token count and the
    /// limit; `left` keeps its last tokens (the end, where the reward is read); `right` keeps
    /// its first. A cut row gets `"truncated": true` in its output row; a pair gets the list of
    /// the sides cut: `"truncated": ["chosen"]`, `["rejected"]` or `["chosen", "rejected"]`.
    #[arg(long, value_enum, default_value = "error")]
    pub truncation: Truncation,
    /// Report `(reward − mean) / std` with the `mean` and `std` the model's config.json stores
    /// (written by training with `normalize_reward`, or by OpenRLHF).
    #[arg(long)]
    pub normalize: bool,
    /// How the weights are held in memory (`--dtype`, `--quantize`; docs/checkpoints.md).
    #[command(flatten)]
    pub holding: crate::common::HoldingArgs,
    #[command(flatten)]
    pub map: crate::common::MapArgs,
}

/// One input row ready to score: its JSON (echoed in the output), its token rows (one, or
/// chosen and rejected) and which of them were truncated.
struct Item {
    value: Value,
    pair: bool,
    ids: Vec<Vec<i64>>,
    truncated: Vec<bool>,
    /// An encoder–decoder's source (the prompt's ids) for each of `ids`, which are then
    /// decoder inputs; empty otherwise.
    sources: Vec<Vec<i64>>,
}

/// How a row's prompt and response become token rows.
#[derive(Clone, Copy, PartialEq)]
enum Layout {
    /// One rendered text (causal reward models).
    Causal,
    /// A tokenizer text pair (encoder reward models).
    CrossEncoder,
    /// The prompt to the encoder, the response to the decoder after this start token.
    Seq2Seq(i64),
}

/// One sequence to score: a rendered text (with whether it is a rendered conversation, then
/// tokenized without special tokens: the template writes them, as TRL tokenizes), or, for an
/// encoder reward model, a `(prompt, response)` text pair (`tokenizer(prompt, response)`; an
/// encoder–decoder encodes the prompt and decodes the response).
enum Seq {
    Text(String, bool),
    Pair(String, String),
}

/// The sequences of one row: for a causal reward model rendered as training renders them (EOS
/// appended to plain text, conversations through the chat template); for an encoder
/// (`encoder`) the prompt and each response as a text pair, as cross-encoders are scored.
/// `Err` is why the row is malformed.
fn texts(v: &Value, args: &ScoreArgs, m: &ModelDir, encoder: bool) -> Result<(bool, Vec<Seq>), String> {
    if !v.is_object() {
        return Err("not a JSON object (expected `text`, `prompt`+`response`, or `prompt`+`chosen`+`rejected`)".into());
    }
    let eos = if args.no_eos { String::new() } else { m.tokenizer.eos_token.clone().unwrap_or_default() };
    // Null counts as absent (Parquet stores a column missing from a row as null).
    let field = |k: &str| {
        let c = v
            .get(k)
            .filter(|x| !x.is_null())
            .map(|x| serde_json::from_value::<Content>(x.clone()))
            .transpose()
            .map_err(|_| format!("`{k}` must be a string or a list of {{\"role\", \"content\"}} messages"))?;
        match c {
            Some(c) if encoder && c.is_conversational() => {
                Err(format!("`{k}` is a conversation; an encoder reward model scores plain text (and text pairs)"))
            }
            c => Ok(c),
        }
    };
    let prompt = field("prompt")?;
    let r = |c: &Content| match (encoder, prompt.as_ref(), c) {
        (true, Some(Content::Text(p)), Content::Text(t)) => Ok(Seq::Pair(p.clone(), t.clone())),
        (true, _, Content::Text(t)) => Ok(Seq::Text(t.clone(), false)),
        _ => render(prompt.as_ref(), c, &m.tokenizer, &eos, None)
            .map(|t| Seq::Text(t, c.is_conversational()))
            .map_err(|e| e.to_string()),
    };
    Ok(match (field("text")?, field("response")?, field("chosen")?, field("rejected")?) {
        (Some(t), _, _, _) => (false, vec![r(&t)?]),
        (_, Some(resp), _, _) => (false, vec![r(&resp)?]),
        (_, _, Some(c), Some(rej)) => (true, vec![r(&c)?, r(&rej)?]),
        _ => return Err("expected `text`, `prompt`+`response`, or `prompt`+`chosen`+`rejected`".into()),
    })
}

/// Reads, renders, tokenizes and fits every row before any batch is built: a malformed row
/// is an error naming its line (or, with --skip-bad-rows, is skipped), an over-long one is
/// cut or an error as --truncation says.
fn read_items(args: &ScoreArgs, m: &ModelDir, limit: &Limit, layout: Layout) -> Result<Vec<Item>, Error> {
    let encoder = layout != Layout::Causal;
    let path = &args.input;
    let parquet = if is_parquet(path) { Some(ParquetFile::open(path)?) } else { None };
    type Record = Result<(usize, Result<Value, String>), Error>;
    let records: Box<dyn Iterator<Item = Record> + '_> = match &parquet {
        Some(file) => Box::new(file.rows(None)?.map(|row| row.map(|(n, v)| (n, Ok(v))).map_err(Error::from))),
        None => Box::new(jsonl_lines(path)?.map(|line| {
            let (n, text) = line?;
            Ok((n, text.and_then(|t| serde_json::from_str(&t).map_err(|e| format!("invalid JSON: {e}")))))
        })),
    };
    let (unit, label): (&'static str, fn(&std::path::Path, usize) -> String) = if parquet.is_some() {
        ("row", |p, n| format!("{}: row {n}", p.display()))
    } else {
        ("line", |p, n| format!("{}:{n}", p.display()))
    };
    let (mut items, mut skipped, mut first_skipped) = (Vec::new(), 0, Vec::new());
    for record in records {
        let (n, value) = record?;
        let tokenized = value.and_then(|v| {
            let (pair, texts) = texts(&v, args, m, encoder)?;
            let mut sources = Vec::new();
            let ids = texts
                .iter()
                .zip(if pair { ["`chosen`", "`rejected`"].as_slice() } else { ["the text"].as_slice() })
                .map(|(seq, side)| match (seq, layout) {
                    (Seq::Text(..), Layout::Seq2Seq(_)) => {
                        Err("an encoder-decoder scores `prompt` → response pairs: give the row a `prompt`".to_string())
                    }
                    (Seq::Pair(p, r), Layout::Seq2Seq(start)) => {
                        let source = m.tokenizer.encode(p, true).map_err(|e| e.to_string())?;
                        if source.is_empty() {
                            return Err(format!("the prompt of {side} has no tokens"));
                        }
                        sources.push(source);
                        Ok((m.tokenizer.encode(r, true).map(|ids| [vec![start], ids].concat()), side))
                    }
                    (Seq::Text(t, conversation), _) => Ok((m.tokenizer.encode(t, !conversation), side)),
                    (Seq::Pair(p, r), _) => Ok((m.tokenizer.encode_pair(p, r, true), side)),
                })
                .collect::<Result<Vec<_>, String>>()?
                .into_iter()
                .map(|(ids, side)| match ids {
                    Ok(ids) if ids.is_empty() => Err(format!("{side} has no tokens: nothing to score")),
                    Ok(ids) => Ok(ids),
                    Err(e) => Err(e.to_string()),
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok((v, pair, ids, sources))
        });
        let (value, pair, mut ids, mut sources) = match tokenized {
            Ok(t) => t,
            Err(reason) if args.skip_bad_rows => {
                skipped += 1;
                if first_skipped.len() < SKIPPED_SHOWN {
                    first_skipped.push(SkippedRow { unit, number: n, reason });
                }
                continue;
            }
            Err(reason) => return Err(format!("{}: {reason} (or pass --skip-bad-rows)", label(path, n)).into()),
        };
        let truncated = ids
            .iter_mut()
            .enumerate()
            .map(|(side, ids)| {
                let at = match (pair, side) {
                    (false, _) => label(path, n),
                    (true, 0) => format!("{}: `chosen`", label(path, n)),
                    (true, _) => format!("{}: `rejected`", label(path, n)),
                };
                limit.fit(ids, &at)
            })
            .collect::<Result<Vec<_>, _>>()?;
        for (side, source) in sources.iter_mut().enumerate() {
            limit.fit(source, &format!("{}: the prompt of side {}", label(path, n), side + 1))?;
        }
        items.push(Item { value, pair, ids, truncated, sources });
    }
    if skipped > 0 {
        eprintln!("{}", skipped_summary(path, skipped, &first_skipped));
    }
    if items.is_empty() {
        let why = if skipped > 0 { format!(" (all {skipped} rows are malformed)") } else { String::new() };
        return Err(format!("{}: no rows to score{why}", path.display()).into());
    }
    Ok(items)
}

/// One scored input row: its JSON, whether it is a pair, the sides cut, and the rewards of
/// its sequences (`num_labels` each).
pub(crate) struct Scored {
    pub value: Value,
    pub pair: bool,
    pub truncated: Vec<bool>,
    pub rewards: Vec<f32>,
}

/// A loaded reward model: a causal one (`*ForSequenceClassification` over any backbone, with
/// an optional adapter), an encoder (DeBERTa-v2 / v3), or an encoder–decoder with TRL's value
/// head (T5), whose reward is the value at the response's last token.
enum Scorer {
    Causal(Box<ForSequenceClassification<B>>),
    Encoder(Box<DebertaV2ForSequenceClassification<B>>),
    Seq2Seq(Box<Seq2SeqLmWithValueHead<B>>),
}

impl Scorer {
    fn load(args: &ScoreArgs, m: &ModelDir, device: &burn::tensor::Device<B>) -> Result<Self, Error> {
        let holding = args.holding.get();
        if m.config.model_type() == Some(trl_models::t5::MODEL_TYPE) {
            let opts = ValueHeadOptions { holding, ..Default::default() };
            let (mut model, _, source) = match &args.adapter {
                Some(a) => Seq2SeqLmWithValueHead::<B>::from_adapter(a, Some(&m.dir), &opts, device)?,
                None => Seq2SeqLmWithValueHead::<B>::from_pretrained(&m.dir, &opts, device)?,
            };
            if source != VHeadSource::Restored {
                return Err(format!(
                    "{} has no trained value head (v_head.*): rewards would be random",
                    m.dir.display()
                )
                .into());
            }
            model.v_head.dropout = None;
            return Ok(Self::Seq2Seq(Box::new(model)));
        }
        if m.config.model_type() == Some(trl_models::deberta_v2::MODEL_TYPE) {
            if args.adapter.is_some() {
                return Err(
                    "--adapter: LoRA adapters are supported on causal reward models only, not on DeBERTa".into()
                );
            }
            let (model, _, trained) =
                DebertaV2ForSequenceClassification::<B>::from_pretrained_as(&m.dir, holding, device)?;
            if !trained {
                return Err(format!(
                    "{} has no trained pooler and classifier (a bare encoder checkpoint): rewards would be random",
                    m.dir.display()
                )
                .into());
            }
            return Ok(Self::Encoder(Box::new(model)));
        }
        let (mut model, _, has_score) = match &args.adapter {
            Some(a) => ForSequenceClassification::<B>::from_adapter_as(a, Some(&m.dir), holding, device)?,
            None if m.kind == Kind::Reward => {
                ForSequenceClassification::<B>::from_pretrained_as(&m.dir, None, holding, device)?
            }
            None => {
                let why = "is not a reward model (config.json names no *ForSequenceClassification); pass --adapter";
                return Err(format!("{} {why}", m.dir.display()).into());
            }
        };
        if !has_score {
            return Err("neither the model nor the adapter has a trained `score` head: rewards would be random".into());
        }
        model.pad_token_id = model.pad_token_id.or(Some(m.pad_id()?));
        Ok(Self::Causal(Box::new(model)))
    }

    fn max_positions(&self) -> usize {
        match self {
            Self::Causal(m) => m.backbone.max_positions(),
            Self::Encoder(m) => m.max_positions(),
            Self::Seq2Seq(m) => m.pretrained_model.max_positions(),
        }
    }

    fn layout(&self) -> Layout {
        match self {
            Self::Causal(_) => Layout::Causal,
            Self::Encoder(_) => Layout::CrossEncoder,
            Self::Seq2Seq(m) => Layout::Seq2Seq(m.pretrained_model.decoder_start_token_id()),
        }
    }

    /// `[batch, num_labels]` rewards of a right-padded batch (an encoder–decoder's decoder
    /// inputs, on `sources`).
    fn rewards(&self, batch: &TokenBatch, sources: Option<&TokenBatch>) -> Result<burn::tensor::Tensor<B, 2>, Error> {
        Ok(match (self, sources) {
            (Self::Causal(m), _) => m.forward(batch, false)?.rewards,
            (Self::Encoder(m), _) => m.forward(batch)?,
            (Self::Seq2Seq(m), Some(sources)) => {
                let values = m.forward(sources, batch)?.values;
                let last: Vec<i64> = batch.last_token_index().into_iter().map(|i| i as i64).collect();
                let n = last.len();
                let idx = burn::tensor::Tensor::<B, 2, burn::tensor::Int>::from_data(
                    burn::tensor::TensorData::new(last, [n, 1]),
                    &values.device(),
                );
                values.gather(1, idx)
            }
            (Self::Seq2Seq(_), None) => return Err("an encoder-decoder needs the sources".into()),
        })
    }
}

/// Loads the model and scores every row of `args.input`, in input order.
/// The rows of `args.input` scored, and what ran them ([`crate::common::ran_on`]).
pub(crate) fn score_file(args: &ScoreArgs) -> Result<(Vec<Scored>, String), Error> {
    let crate::common::Placement { ran_on, device, map } = args.map.devices(&args.holding.device)?;
    let m = ModelDir::open(&args.model)?;
    let loading = std::time::Instant::now();
    let model = match Scorer::load(args, &m, &device)? {
        Scorer::Causal(model) if !map.is_empty() => {
            let layers = model.backbone.num_layers();
            Scorer::Causal(Box::new(crate::common::place(*model, layers, &map)?))
        }
        _ if !map.is_empty() => {
            return Err(
                "--device-map splits a decoder's layers; run an encoder or encoder-decoder on one --device".into()
            )
        }
        model => model,
    };
    crate::bench::real::report_load(loading.elapsed().as_secs_f64());
    let pad = m.pad_id()?;
    let limit = Limit::new(args.max_length, model.max_positions(), args.truncation)?;
    let items = read_items(args, &m, &limit, model.layout())?;
    let mut rewards = score_sorted(&model, &items, pad, (args.batch_size / 2).max(1))?;
    if args.normalize {
        let cfg = trl_core::HfConfig::load(&m.dir)?;
        let (mean, std) = match trl_heads::seq_cls::reward_normalization(&cfg) {
            Some(n) => n,
            None => {
                return Err(format!(
                    "--normalize: {} has no finite `mean` and positive `std`; train with normalize_reward = true to \
                     store them",
                    m.dir.join("config.json").display()
                )
                .into())
            }
        };
        for r in rewards.iter_mut().flatten() {
            *r = ((*r as f64 - mean) / std) as f32;
        }
    }
    let scored = items
        .into_iter()
        .zip(rewards)
        .map(|(i, rewards)| Scored { value: i.value, pair: i.pair, truncated: i.truncated, rewards })
        .collect();
    Ok((scored, ran_on))
}

pub fn run(args: ScoreArgs) -> Result<(), Error> {
    let (items, ran_on) = score_file(&args)?;
    let emit = |out: &mut dyn Write| -> Result<(), Error> {
        for item in &items {
            let r = &item.rewards;
            let mut o = item.value.clone();
            let obj = o.as_object_mut().ok_or("row is not an object")?;
            let labels = r.len() / if item.pair { 2 } else { 1 };
            if item.pair {
                let (c, r) = (r[0], r[labels]);
                obj.insert("chosen_reward".into(), json!(c));
                obj.insert("rejected_reward".into(), json!(r));
                obj.insert("p_chosen".into(), json!(preference_probability(c, r)));
                let cut: Vec<&str> = ["chosen", "rejected"]
                    .into_iter()
                    .zip(&item.truncated)
                    .filter(|(_, &t)| t)
                    .map(|(s, _)| s)
                    .collect();
                if !cut.is_empty() {
                    obj.insert("truncated".into(), json!(cut));
                }
            } else {
                obj.insert("reward".into(), json!(r[0]));
                if item.truncated[0] {
                    obj.insert("truncated".into(), json!(true));
                }
            }
            writeln!(out, "{o}")?;
        }
        out.flush()?;
        Ok(())
    };
    write_output(args.out.as_deref(), emit)?;
    eprintln!("scored {} rows ({ran_on})", items.len());
    crate::bench::real::report_peak_rss();
    Ok(())
}

/// The rewards of every item (per sequence, `num_labels` each), in the items' order, scored
/// `per_batch` items at a time from the longest to the shortest, so each batch pads little
/// (and the padding-free forward pass skips what padding is left outside attention).
fn score_sorted(model: &Scorer, items: &[Item], pad: i64, per_batch: usize) -> Result<Vec<Vec<f32>>, Error> {
    let tty = std::io::stderr().is_terminal();
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(items[i].ids.iter().map(Vec::len).max().unwrap_or(0)));
    let mut rewards = vec![Vec::new(); items.len()];
    let mut done = 0;
    for chunk in order.chunks(per_batch) {
        // pairs of a causal model: each pair's prompt once (`forward_pairs`), laid out as the
        // padded pass gives them (each item's sequences in turn)
        let shared = match model {
            Scorer::Causal(m) if trl_models::prefix_sharing() && chunk.iter().all(|&i| items[i].ids.len() == 2) => {
                let pairs: Vec<(&[i64], &[i64])> =
                    chunk.iter().map(|&i| (&items[i].ids[0][..], &items[i].ids[1][..])).collect();
                m.forward_pairs(&pairs)?.map(|[c, r]| {
                    let [n, labels] = c.dims();
                    burn::tensor::Tensor::stack::<3>(vec![c, r], 1).reshape([2 * n, labels])
                })
            }
            _ => None,
        };
        let rewards_of_chunk = match shared {
            Some(r) => r,
            None => {
                let ids: Vec<Vec<i64>> = chunk.iter().flat_map(|&i| items[i].ids.iter().cloned()).collect();
                let batch = TokenBatch::pad(&ids, pad, Padding::Right, None)?;
                let sources: Vec<Vec<i64>> = chunk.iter().flat_map(|&i| items[i].sources.iter().cloned()).collect();
                let sources =
                    if sources.is_empty() { None } else { Some(TokenBatch::pad(&sources, pad, Padding::Right, None)?) };
                model.rewards(&batch, sources.as_ref())?
            }
        };
        let flat = rewards_of_chunk
            .into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .map_err(|e| format!("reading the rewards: {e}"))?;
        let sequences: usize = chunk.iter().map(|&i| items[i].ids.len()).sum();
        let labels = flat.len() / sequences;
        let mut k = 0;
        for &i in chunk {
            let n = items[i].ids.len() * labels;
            rewards[i] = flat[k..k + n].to_vec();
            k += n;
        }
        done += chunk.len();
        if tty {
            eprint!("\rscored {done}/{} rows", items.len());
        }
    }
    if tty {
        eprintln!();
    }
    Ok(rewards)
}
