//! Preference rows as parsed from a file, before tokenizing: [`PreferenceRow`] (plain text or
//! [`Message`] conversations), [`parse_row`] for one JSON object, and [`Loaded`] / [`SkippedRow`]
//! for what a reader kept and skipped. Shared by the JSONL reader (`data`) and the Parquet
//! reader (`parquet`), and re-exported from `data`; depends on no other module of the crate, so
//! neither reader depends on the other.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

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

/// Rows read from a file, plus how many malformed rows were skipped (with `skip_bad_rows`) and
/// which were the first of them.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    pub rows: Vec<PreferenceRow>,
    pub skipped: usize,
    /// The first [`SKIPPED_SHOWN`] skipped rows, with their line (JSONL) or row (Parquet)
    /// numbers and reasons.
    pub first_skipped: Vec<SkippedRow>,
}

/// How many skipped rows [`Loaded`] keeps (and messages show) by number and reason.
pub const SKIPPED_SHOWN: usize = 5;

/// A row skipped as malformed: where it is and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedRow {
    /// `"line"` (JSONL, 1-based line of the file) or `"row"` (Parquet, 1-based row).
    pub unit: &'static str,
    pub number: usize,
    pub reason: String,
}

impl std::fmt::Display for SkippedRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.unit, self.number, self.reason)
    }
}

impl Loaded {
    /// Counts a skipped row, keeping the first [`SKIPPED_SHOWN`] of them.
    pub fn skip(&mut self, row: SkippedRow) {
        self.skipped += 1;
        if self.first_skipped.len() < SKIPPED_SHOWN {
            self.first_skipped.push(row);
        }
    }

    /// `skipped N malformed row(s) of FILE (line 2: …; line 7: …)`, or `None` when none was.
    pub fn skipped_summary(&self, path: &Path) -> Option<String> {
        (self.skipped > 0).then(|| skipped_summary(path, self.skipped, &self.first_skipped))
    }
}

/// `skipped COUNT malformed row(s) of PATH (line 2: invalid JSON: …; line 7: …; and N more)`:
/// the message for rows skipped with `--skip-bad-rows`, naming the first of them.
pub fn skipped_summary(path: &Path, count: usize, first: &[SkippedRow]) -> String {
    let mut shown = first.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
    if count > first.len() {
        shown.push_str(&format!("; and {} more", count - first.len()));
    }
    format!("skipped {count} malformed row(s) of {} ({shown})", path.display())
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
        Some(Value::Number(n)) => {
            let m = n.as_f64().map(|m| m as f32).filter(|m| m.is_finite());
            Some(m.ok_or_else(|| format!("`margin` {n} is not a finite 32-bit float"))?)
        }
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
