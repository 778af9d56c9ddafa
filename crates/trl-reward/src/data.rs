//! Preference data: rows of `chosen` / `rejected` (optionally with an explicit `prompt` and a
//! `margin`), as plain text or conversations, read from JSONL or Parquet, and tokenized as
//! TRL 1.x does (EOS appended to plain text, rows over `max_length` dropped and counted).

use std::io::BufRead;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use trl_core::Tokenizer;

use crate::error::{Result, RewardError};

/// One chat message: `role`, `content` and any other keys (`name`, `tool_calls`,
/// `reasoning_content`…), which the chat template sees too.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
    /// The message's other keys, in file order; null values are dropped when parsing, as TRL
    /// (`remove_none_values`) and transformers do (Parquet stores a key missing from some
    /// messages as null).
    #[serde(flatten)]
    pub extra: serde_json::Map<String, Value>,
}

impl Message {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self { role: role.into(), content: content.into(), extra: serde_json::Map::new() }
    }
}

/// A side of a pair: plain text or a conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Messages(Vec<Message>),
}

impl Content {
    pub fn is_conversational(&self) -> bool {
        matches!(self, Content::Messages(_))
    }
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
/// the file and line (Parquet: row), or, with `skip_bad_rows`, is counted and skipped.
pub fn read_rows(path: &Path, skip_bad_rows: bool) -> Result<Loaded> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("parquet") => crate::parquet::read_parquet(path, skip_bad_rows),
        _ => read_jsonl(path, skip_bad_rows),
    }
}

const COLUMNS_HINT: &str = "rows need `chosen` and `rejected`, optionally `prompt` and `margin`";

/// One side (or the prompt): a string, or a list of `{role, content, …}` messages.
fn parse_content(key: &str, value: Value) -> std::result::Result<Content, String> {
    let shape = || format!("`{key}` must be a string or a list of {{\"role\", \"content\"}} messages");
    match value {
        Value::String(s) => Ok(Content::Text(s)),
        Value::Array(items) => items
            .into_iter()
            .enumerate()
            .map(|(i, item)| {
                let Value::Object(mut obj) = item else {
                    return Err(format!("{}: message {} is not an object", shape(), i + 1));
                };
                let mut field = |name: &str| match obj.remove(name) {
                    Some(Value::String(s)) => Ok(s),
                    _ => Err(format!("`{key}` message {} needs a string `{name}`", i + 1)),
                };
                let role = field("role")?;
                let content = field("content")?;
                obj.retain(|_, v| !v.is_null());
                Ok(Message { role, content, extra: obj })
            })
            .collect::<std::result::Result<Vec<_>, _>>()
            .map(Content::Messages),
        _ => Err(shape()),
    }
}

/// Parses one JSON object as a preference row. Null values count as absent (TRL's
/// `remove_none_values`); a row must be all plain text or all conversations.
pub fn parse_row(value: Value) -> std::result::Result<PreferenceRow, String> {
    let Value::Object(mut obj) = value else {
        return Err(format!("not a JSON object ({COLUMNS_HINT})"));
    };
    let mut take = |key: &str| obj.remove(key).filter(|v| !v.is_null());
    let prompt = take("prompt").map(|v| parse_content("prompt", v)).transpose()?;
    let chosen = take("chosen").ok_or_else(|| format!("missing `chosen` ({COLUMNS_HINT})"))?;
    let rejected = take("rejected").ok_or_else(|| format!("missing `rejected` ({COLUMNS_HINT})"))?;
    let margin = match take("margin") {
        None => None,
        Some(Value::Number(n)) => Some(n.as_f64().ok_or("`margin` is not a finite number")? as f32),
        Some(_) => return Err("`margin` must be a number".into()),
    };
    let row = PreferenceRow {
        prompt,
        chosen: parse_content("chosen", chosen)?,
        rejected: parse_content("rejected", rejected)?,
        margin,
    };
    check_kinds(&row)?;
    Ok(row)
}

fn check_kinds(row: &PreferenceRow) -> std::result::Result<(), String> {
    let conv = row.chosen.is_conversational();
    let kind = |c: bool| if c { "a conversation" } else { "plain text" };
    for (name, side) in [("rejected", Some(&row.rejected)), ("prompt", row.prompt.as_ref())] {
        if let Some(side) = side {
            if side.is_conversational() != conv {
                return Err(format!(
                    "mixes plain text and conversations in one row: `chosen` is {} but `{name}` is {}",
                    kind(conv),
                    kind(!conv)
                ));
            }
        }
    }
    Ok(())
}

fn read_jsonl(path: &Path, skip_bad_rows: bool) -> Result<Loaded> {
    let file = std::fs::File::open(path).map_err(|e| RewardError::io(path, e))?;
    let mut out = Loaded::default();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| RewardError::io(path, e))?;
        let line = if i == 0 { line.trim_start_matches('\u{feff}') } else { &line };
        if line.trim().is_empty() {
            continue;
        }
        let parsed = serde_json::from_str::<Value>(line).map_err(|e| format!("invalid JSON: {e}")).and_then(parse_row);
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
        let why = if out.skipped > 0 { format!("all {} rows are malformed", out.skipped) } else { "empty".into() };
        return Err(RewardError::Data { path: path.to_path_buf(), reason: format!("no preference rows ({why})") });
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

/// Tokenized data plus how many rows were dropped.
#[derive(Debug, Clone, Default)]
pub struct Tokenized {
    pub pairs: Vec<TokenizedPair>,
    /// Rows where chosen or rejected has more than `max_length` tokens (TRL's filter).
    pub dropped_too_long: usize,
    /// Rows where chosen or rejected has no token at all (nothing to score; TRL would crash).
    pub dropped_empty: usize,
}

/// Renders sides of rows, compiling the chat template once, when the first conversation needs it.
struct Renderer<'a> {
    tok: &'a Tokenizer,
    eos: &'a str,
    source: Option<&'a str>,
    chat: Option<crate::chat::ChatTemplate<'a>>,
}

impl<'a> Renderer<'a> {
    fn new(tok: &'a Tokenizer, eos: &'a str, template: Option<&'a str>) -> Self {
        Self { tok, eos, source: template.or(tok.chat_template.as_deref()), chat: None }
    }

    fn side(&mut self, prompt: Option<&Content>, side: &Content) -> Result<String> {
        match (prompt, side) {
            (None | Some(Content::Text(_)), Content::Text(t)) => {
                // TRL adds the EOS to the side first, then puts the prompt in front
                let mut text = match prompt {
                    Some(Content::Text(p)) => format!("{p}{t}"),
                    _ => t.clone(),
                };
                if !self.eos.is_empty() && !t.ends_with(self.eos) {
                    text.push_str(self.eos);
                }
                Ok(text)
            }
            (None | Some(Content::Messages(_)), Content::Messages(m)) => {
                let mut all = match prompt {
                    Some(Content::Messages(p)) => p.clone(),
                    _ => Vec::new(),
                };
                all.extend(m.iter().cloned());
                if self.chat.is_none() {
                    let source = self.source.ok_or_else(|| {
                        RewardError::Template(
                            "conversational rows need a chat template, and the tokenizer has none \
                             (no `chat_template` in tokenizer_config.json, no chat_template.jinja): \
                             pass --chat-template FILE"
                                .into(),
                        )
                    })?;
                    self.chat = Some(crate::chat::ChatTemplate::new(source, self.tok)?);
                }
                self.chat.as_ref().expect("compiled above").render(&all)
            }
            _ => Err(RewardError::Content(
                "a row mixes plain text and conversations (the prompt and the response must both be \
                 strings or both be lists of messages)"
                    .into(),
            )),
        }
    }
}

/// Renders one side as TRL 1.x does: plain text gets the EOS string appended when missing and
/// the explicit prompt concatenated in front; conversations (`prompt` messages, then the
/// side's) go through the chat template (`template`, else the tokenizer's).
pub fn render(
    prompt: Option<&Content>,
    side: &Content,
    tok: &Tokenizer,
    eos: &str,
    template: Option<&str>,
) -> Result<String> {
    Renderer::new(tok, eos, template).side(prompt, side)
}

/// Tokenizes rows as TRL 0.28's `RewardTrainer` does: plain text with `tokenizer(text)`
/// (special tokens added, e.g. a BOS), conversations with `apply_chat_template`, which
/// tokenizes the rendered text *without* adding special tokens (the template writes its own);
/// rows where either side exceeds `max_length` are dropped and counted, as are rows with an
/// empty side.
pub fn tokenize(
    rows: &[PreferenceRow],
    tok: &Tokenizer,
    eos: &str,
    max_length: Option<usize>,
    template: Option<&str>,
) -> Result<Tokenized> {
    let mut renderer = Renderer::new(tok, eos, template);
    let mut out = Tokenized::default();
    for (i, row) in rows.iter().enumerate() {
        let at = |e: RewardError| match e {
            RewardError::Template(m) => RewardError::Template(format!("preference row {}: {m}", i + 1)),
            RewardError::Content(m) => RewardError::Content(format!("row {}: {m}", i + 1)),
            e => e,
        };
        let chosen_text = renderer.side(row.prompt.as_ref(), &row.chosen).map_err(at)?;
        let rejected_text = renderer.side(row.prompt.as_ref(), &row.rejected).map_err(at)?;
        let chosen = tok.encode(&chosen_text, !row.chosen.is_conversational())?;
        let rejected = tok.encode(&rejected_text, !row.rejected.is_conversational())?;
        if max_length.is_some_and(|m| chosen.len() > m || rejected.len() > m) {
            out.dropped_too_long += 1;
            continue;
        }
        if chosen.is_empty() || rejected.is_empty() {
            out.dropped_empty += 1;
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
