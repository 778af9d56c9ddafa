//! `cargo xtask score`: rewards for texts or preference pairs, streamed as JSONL.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

use serde_json::{json, Value};

use trl_heads::ForSequenceClassification;
use trl_models::{Padding, TokenBatch};
use trl_reward::data::{render, Content};
use trl_reward::loss::preference_probability;

use crate::common::{Error, Kind, ModelDir, B};

#[derive(clap::Args, Debug)]
pub struct ScoreArgs {
    /// Reward model directory or hub id (`org/name[@rev]`).
    #[arg(long)]
    pub model: String,
    /// A PEFT LoRA reward adapter (with its `score` in modules_to_save) applied on --model.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// JSONL rows: `{"text"}`, `{"prompt","response"}` or `{"prompt","chosen","rejected"}`.
    #[arg(long)]
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
}

/// One input row: the texts to score and how to report them.
enum Row {
    Text(String),
    Response(String),
    Pair(String, String),
}

fn parse(line: &str, n: usize, args: &ScoreArgs, m: &ModelDir) -> Result<(Value, Row), Error> {
    let at = |reason: String| -> Error { format!("{}:{n}: {reason}", args.input.display()).into() };
    let v: Value = serde_json::from_str(line).map_err(|e| at(format!("invalid JSON: {e}")))?;
    let eos = if args.no_eos { String::new() } else { m.tokenizer.eos_token.clone().unwrap_or_default() };
    let field = |k: &str| {
        v.get(k)
            .map(|x| serde_json::from_value::<Content>(x.clone()))
            .transpose()
            .map_err(|_| at(format!("`{k}` must be a string or a list of {{\"role\", \"content\"}} messages")))
    };
    let prompt = field("prompt")?;
    let r = |c: &Content| render(prompt.as_ref(), c, &m.tokenizer, &eos, None).map_err(|e| at(e.to_string()));
    let row = match (field("text")?, field("response")?, field("chosen")?, field("rejected")?) {
        (Some(t), _, _, _) => Row::Text(r(&t)?),
        (_, Some(resp), _, _) => Row::Response(r(&resp)?),
        (_, _, Some(c), Some(rej)) => Row::Pair(r(&c)?, r(&rej)?),
        _ => return Err(at("expected `text`, `prompt`+`response`, or `prompt`+`chosen`+`rejected`".into())),
    };
    Ok((v, row))
}

pub fn run(args: ScoreArgs) -> Result<(), Error> {
    let m = ModelDir::open(&args.model)?;
    let device = trl_core::backend::device();
    let (mut model, _, has_score) = match &args.adapter {
        Some(a) => ForSequenceClassification::<B>::from_adapter(a, Some(&m.dir), &device)?,
        None if m.kind == Kind::Reward => ForSequenceClassification::<B>::from_pretrained(&m.dir, None, &device)?,
        None => {
            let why = "is not a reward model (config.json names no *ForSequenceClassification); pass --adapter";
            return Err(format!("{} {why}", m.dir.display()).into());
        }
    };
    if !has_score {
        return Err("neither the model nor the adapter has a trained `score` head: rewards would be random".into());
    }
    let pad = m.pad_id()?;
    model.pad_token_id = model.pad_token_id.or(Some(pad));
    let file = std::fs::File::open(&args.input).map_err(|e| format!("{}: {e}", args.input.display()))?;
    let lines: Vec<(usize, String)> = std::io::BufReader::new(file)
        .lines()
        .enumerate()
        .map(|(i, l)| l.map(|l| (i + 1, l)))
        .collect::<Result<Vec<_>, _>>()?;
    let rows = lines
        .iter()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(n, l)| parse(l, *n, &args, &m))
        .collect::<Result<Vec<_>, _>>()?;
    if rows.is_empty() {
        return Err(format!("{}: no rows to score", args.input.display()).into());
    }
    let mut out: Box<dyn Write> = match &args.out {
        Some(p) => Box::new(std::io::BufWriter::new(std::fs::File::create(tmp_path(p))?)),
        None => Box::new(std::io::stdout().lock()),
    };
    let tty = std::io::stderr().is_terminal();
    let per_batch = (args.batch_size / 2).max(1);
    for (done, chunk) in rows.chunks(per_batch).enumerate() {
        let texts: Vec<&String> = chunk
            .iter()
            .flat_map(|(_, r)| match r {
                Row::Text(t) | Row::Response(t) => vec![t],
                Row::Pair(c, rj) => vec![c, rj],
            })
            .collect();
        let ids = texts.iter().map(|t| m.tokenizer.encode(t, true)).collect::<Result<Vec<_>, _>>()?;
        let batch = TokenBatch::pad(&ids, pad, Padding::Right, None)?;
        let rewards = model
            .forward(&batch, false)?
            .rewards
            .into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .map_err(|e| format!("{e:?}"))?;
        let labels = rewards.len() / texts.len();
        let mut k = 0;
        for (v, row) in chunk {
            let mut o = v.clone();
            let obj = o.as_object_mut().ok_or("row is not an object")?;
            match row {
                Row::Text(_) | Row::Response(_) => {
                    obj.insert("reward".into(), json!(rewards[k * labels]));
                    k += 1;
                }
                Row::Pair(..) => {
                    let (c, r) = (rewards[k * labels], rewards[(k + 1) * labels]);
                    obj.insert("chosen_reward".into(), json!(c));
                    obj.insert("rejected_reward".into(), json!(r));
                    obj.insert("p_chosen".into(), json!(preference_probability(c, r)));
                    k += 2;
                }
            }
            writeln!(out, "{o}")?;
        }
        if tty {
            eprint!("\rscored {}/{} rows", ((done + 1) * per_batch).min(rows.len()), rows.len());
        }
    }
    out.flush()?;
    drop(out);
    if tty {
        eprintln!();
    }
    if let Some(p) = &args.out {
        std::fs::rename(tmp_path(p), p)?;
    }
    Ok(())
}

fn tmp_path(p: &std::path::Path) -> PathBuf {
    let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    p.with_file_name(format!(".{name}.tmp"))
}
