//! Preference data: rows of `chosen` / `rejected` (optionally with an explicit `prompt` and a
//! `margin`), as plain text or conversations, read from JSONL or Parquet, and tokenized as
//! TRL 1.x does (EOS appended to plain text, rows over `max_length` dropped and counted).
//! The row types and [`parse_row`] are defined in `rows` (shared with the Parquet reader) and
//! re-exported here.

use std::io::BufRead;
use std::path::{Path, PathBuf};

use serde_json::Value;

use trl_core::Tokenizer;

use crate::error::{Result, RewardError};
pub use crate::rows::{parse_row, skipped_summary, Content, Loaded, Message, PreferenceRow, SkippedRow, SKIPPED_SHOWN};

/// Reads a `.jsonl` or `.parquet` file of preference rows. A malformed row (not JSON, not
/// UTF-8, missing a column…) is an error naming the file and line (Parquet: row), or, with
/// `skip_bad_rows`, is counted and skipped (the first few kept in [`Loaded::first_skipped`]).
pub fn read_rows(path: &Path, skip_bad_rows: bool) -> Result<Loaded> {
    if is_parquet(path) {
        crate::parquet::read_parquet(path, skip_bad_rows)
    } else {
        read_jsonl(path, skip_bad_rows)
    }
}

/// Whether `path` is read as Parquet: its extension is `.parquet` (any case). Everything else
/// is read as JSONL.
pub fn is_parquet(path: &Path) -> bool {
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case("parquet"))
}

/// One non-blank line of a JSONL file: its 1-based line number, and its text or why it is not
/// text (`invalid UTF-8 at byte N of the line`).
pub type JsonlLine = (usize, std::result::Result<String, String>);

/// The lines of a JSONL file, read as every reader of JSONL in trl-rs reads them (`xtask
/// train` through [`read_rows`], `xtask score`, `xtask generate`): a UTF-8 byte-order mark at
/// the start is dropped, `\n` or `\r\n` ends a line, blank lines are left out, and a line that
/// is not UTF-8 is an `Err` for that line only (the caller names the line, or skips it). A
/// UTF-16 file (its byte-order mark) is an error for the whole file, as is any read failure;
/// both name the path.
pub fn jsonl_lines(path: &Path) -> Result<JsonlLines> {
    let file = std::fs::File::open(path).map_err(|e| RewardError::io(path, e))?;
    Ok(JsonlLines {
        path: path.to_path_buf(),
        reader: std::io::BufReader::new(file),
        buf: Vec::new(),
        number: 0,
        done: false,
    })
}

/// The iterator of [`jsonl_lines`].
#[derive(Debug)]
pub struct JsonlLines {
    path: PathBuf,
    reader: std::io::BufReader<std::fs::File>,
    buf: Vec<u8>,
    number: usize,
    done: bool,
}

impl Iterator for JsonlLines {
    type Item = Result<JsonlLine>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done {
            self.buf.clear();
            match self.reader.read_until(b'\n', &mut self.buf) {
                Ok(0) => self.done = true,
                Ok(_) => {
                    self.number += 1;
                    let mut bytes = self.buf.strip_suffix(b"\n").unwrap_or(&self.buf);
                    bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
                    if self.number == 1 {
                        if bytes.starts_with(&[0xff, 0xfe]) || bytes.starts_with(&[0xfe, 0xff]) {
                            self.done = true;
                            return Some(Err(RewardError::Data {
                                path: self.path.clone(),
                                reason: "UTF-16 text (it starts with a UTF-16 byte-order mark); JSONL must be \
                                         UTF-8: re-save the file as UTF-8"
                                    .into(),
                            }));
                        }
                        bytes = bytes.strip_prefix("\u{feff}".as_bytes()).unwrap_or(bytes);
                    }
                    let text = std::str::from_utf8(bytes)
                        .map_err(|e| format!("invalid UTF-8 at byte {} of the line", e.valid_up_to() + 1));
                    match text {
                        Ok(t) if t.trim().is_empty() => continue,
                        text => return Some(Ok((self.number, text.map(str::to_owned)))),
                    }
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(RewardError::io(&self.path, e)));
                }
            }
        }
        None
    }
}

fn read_jsonl(path: &Path, skip_bad_rows: bool) -> Result<Loaded> {
    let mut out = Loaded::default();
    for line in jsonl_lines(path)? {
        let (number, text) = line?;
        let parsed = text
            .and_then(|t| serde_json::from_str::<Value>(&t).map_err(|e| format!("invalid JSON: {e}")))
            .and_then(parse_row);
        match parsed {
            Ok(row) => out.rows.push(row),
            Err(reason) if skip_bad_rows => out.skip(SkippedRow { unit: "line", number, reason }),
            Err(reason) => {
                return Err(RewardError::Row {
                    path: path.to_path_buf(),
                    line: number,
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
