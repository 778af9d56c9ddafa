//! Preference data: rows of `chosen` / `rejected` (optionally with an explicit `prompt` and a
//! `margin`), as plain text or conversations, read from JSONL or Parquet, and tokenized as
//! TRL 1.x does (EOS appended to plain text, rows over `max_length` dropped and counted).

use std::io::BufRead;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use trl_core::Tokenizer;

use crate::error::{Result, RewardError};

/// One chat message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

/// A side of a pair: plain text or a conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Messages(Vec<Message>),
}

/// One preference example.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreferenceRow {
    #[serde(default)]
    pub prompt: Option<Content>,
    pub chosen: Content,
    pub rejected: Content,
    #[serde(default)]
    pub margin: Option<f32>,
}

/// Rows read from a file, plus how many malformed rows were skipped (with `skip_bad_rows`).
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    pub rows: Vec<PreferenceRow>,
    pub skipped: usize,
}

/// Reads a `.jsonl` or `.parquet` file of preference rows. A malformed row is an error naming
/// the file and line, or, with `skip_bad_rows`, is counted and skipped.
pub fn read_rows(path: &Path, skip_bad_rows: bool) -> Result<Loaded> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("parquet") => crate::parquet::read_parquet(path, skip_bad_rows),
        _ => read_jsonl(path, skip_bad_rows),
    }
}

/// Parses one JSON object as a preference row.
pub fn parse_row(value: Value) -> std::result::Result<PreferenceRow, String> {
    if !value.is_object() {
        return Err("not a JSON object".into());
    }
    for key in ["chosen", "rejected"] {
        if value.get(key).is_none() {
            return Err(format!(
                "missing `{key}` (rows need `chosen` and `rejected`, optionally `prompt` and `margin`)"
            ));
        }
    }
    let row: PreferenceRow = serde_json::from_value(value).map_err(|e| e.to_string())?;
    let kind = |c: &Content| matches!(c, Content::Messages(_));
    if kind(&row.chosen) != kind(&row.rejected) || row.prompt.as_ref().is_some_and(|p| kind(p) != kind(&row.chosen)) {
        return Err("mixes plain text and conversations in one row".into());
    }
    Ok(row)
}

fn read_jsonl(path: &Path, skip_bad_rows: bool) -> Result<Loaded> {
    let file = std::fs::File::open(path).map_err(|e| RewardError::io(path, e))?;
    let mut out = Loaded::default();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| RewardError::io(path, e))?;
        if line.trim().is_empty() {
            continue;
        }
        let parsed = serde_json::from_str::<Value>(&line).map_err(|e| e.to_string()).and_then(parse_row);
        match parsed {
            Ok(row) => out.rows.push(row),
            Err(_) if skip_bad_rows => out.skipped += 1,
            Err(reason) => {
                return Err(RewardError::Row {
                    path: path.to_path_buf(),
                    line: i + 1,
                    reason: format!("{reason} (or pass --skip-bad-rows)"),
                })
            }
        }
    }
    if out.rows.is_empty() {
        return Err(RewardError::Data { path: path.to_path_buf(), reason: "no preference rows".into() });
    }
    Ok(out)
}

/// A tokenized pair.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenizedPair {
    pub chosen: Vec<i64>,
    pub rejected: Vec<i64>,
    pub margin: Option<f32>,
    /// The texts as rendered (for sample tables).
    pub chosen_text: String,
    pub rejected_text: String,
}

/// Tokenized data plus how many rows `max_length` dropped.
#[derive(Debug, Clone, Default)]
pub struct Tokenized {
    pub pairs: Vec<TokenizedPair>,
    pub dropped_too_long: usize,
}

/// Renders one side as TRL 1.x does: explicit prompt concatenated in front; plain text gets
/// the EOS string appended when missing; conversations go through the chat template.
pub fn render(
    prompt: Option<&Content>,
    side: &Content,
    tok: &Tokenizer,
    eos: &str,
    template: Option<&str>,
) -> Result<String> {
    match side {
        Content::Text(t) => {
            let mut text = match prompt {
                Some(Content::Text(p)) => format!("{p}{t}"),
                _ => t.clone(),
            };
            if !eos.is_empty() && !text.ends_with(eos) {
                text.push_str(eos);
            }
            Ok(text)
        }
        Content::Messages(m) => {
            let mut all = match prompt {
                Some(Content::Messages(p)) => p.clone(),
                _ => Vec::new(),
            };
            all.extend(m.iter().cloned());
            let template = template.or(tok.chat_template.as_deref()).ok_or_else(|| {
                RewardError::Template(
                    "conversational rows need a chat template: the tokenizer has none; pass --chat-template FILE"
                        .into(),
                )
            })?;
            crate::chat::apply_chat_template(template, &all, tok)
        }
    }
}

/// Tokenizes rows, dropping (and counting) those where either side exceeds `max_length`.
pub fn tokenize(
    rows: &[PreferenceRow],
    tok: &Tokenizer,
    eos: &str,
    max_length: Option<usize>,
    template: Option<&str>,
) -> Result<Tokenized> {
    let mut out = Tokenized::default();
    for row in rows {
        let chosen_text = render(row.prompt.as_ref(), &row.chosen, tok, eos, template)?;
        let rejected_text = render(row.prompt.as_ref(), &row.rejected, tok, eos, template)?;
        let chosen = tok.encode(&chosen_text, true)?;
        let rejected = tok.encode(&rejected_text, true)?;
        if max_length.is_some_and(|m| chosen.len() > m || rejected.len() > m)
            || chosen.is_empty()
            || rejected.is_empty()
        {
            out.dropped_too_long += 1;
            continue;
        }
        out.pairs.push(TokenizedPair { chosen, rejected, margin: row.margin, chosen_text, rejected_text });
    }
    Ok(out)
}

/// Where a training file came from (for logs).
pub fn describe(path: &Path) -> PathBuf {
    path.to_path_buf()
}
