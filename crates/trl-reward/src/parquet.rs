//! Parquet files (the format of Hugging Face dataset repos), read row by row: as preference
//! rows (`read_parquet`, behind [`crate::data::read_rows`]) or as plain JSON objects ([`ParquetFile::rows`], which `xtask score`
//! uses too).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::schema::types::Type;
use serde_json::Value;

use crate::error::{Result, RewardError};
use crate::rows::{parse_row, Loaded, SkippedRow};

/// The columns a preference row uses; any others (ids, scores, sources…) are never decoded.
const COLUMNS: [&str; 4] = ["prompt", "chosen", "rejected", "margin"];

/// Longest reason kept for a row the Parquet reader could not decode (its messages can quote
/// the raw bytes of a value).
const MAX_REASON: usize = 200;

/// An open Parquet file.
pub struct ParquetFile {
    path: PathBuf,
    reader: SerializedFileReader<std::fs::File>,
}

impl std::fmt::Debug for ParquetFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParquetFile").field("path", &self.path).finish_non_exhaustive()
    }
}

impl ParquetFile {
    /// Opens `path` and reads its footer; anything that is not Parquet (a JSONL file named
    /// `.parquet`, a truncated download) is a [`RewardError::Data`] saying "not a readable
    /// Parquet file" and naming the path.
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| RewardError::io(path, e))?;
        if file.metadata().is_ok_and(|m| m.is_dir()) {
            return Err(RewardError::Data { path: path.to_path_buf(), reason: "is a directory, not a file".into() });
        }
        let reader = SerializedFileReader::new(file).map_err(|e| RewardError::Data {
            path: path.to_path_buf(),
            reason: format!("not a readable Parquet file: {}", clip(&e.to_string())),
        })?;
        Ok(Self { path: path.to_path_buf(), reader })
    }

    /// The names of the top-level columns, in file order.
    pub fn columns(&self) -> Vec<String> {
        let root = self.reader.metadata().file_metadata().schema_descr().root_schema();
        root.get_fields().iter().map(|f| f.name().to_string()).collect()
    }

    /// Every row as a JSON object, with its 1-based row number; `columns` limits the decoding
    /// to those columns (the others are never read), `None` reads all. A row the reader cannot
    /// decode (a damaged file) is an error naming the file and row, and ends the iteration:
    /// the rows after it cannot be trusted, so it is never a row to skip.
    pub fn rows(&self, columns: Option<&[&str]>) -> Result<impl Iterator<Item = Result<(usize, Value)>> + '_> {
        let bad = |reason: String| RewardError::Data { path: self.path.clone(), reason };
        let projection = match columns {
            None => None,
            Some(names) => {
                let root = self.reader.metadata().file_metadata().schema_descr().root_schema();
                let keep: Vec<Arc<Type>> =
                    root.get_fields().iter().filter(|f| names.contains(&f.name())).cloned().collect();
                let projection = Type::group_type_builder(root.name())
                    .with_fields(keep)
                    .build()
                    .map_err(|e| bad(format!("cannot select the columns {}: {e}", names.join(", "))))?;
                Some(projection)
            }
        };
        let rows = self.reader.get_row_iter(projection).map_err(|e| bad(clip(&e.to_string())))?;
        let path = &self.path;
        let mut failed = false;
        Ok(rows.enumerate().map_while(move |(i, row)| {
            if failed {
                return None;
            }
            failed = row.is_err();
            Some(row.map(|r| (i + 1, r.to_json_value())).map_err(|e| RewardError::Data {
                path: path.clone(),
                reason: format!("row {}: cannot decode it (a damaged Parquet file?): {}", i + 1, clip(&e.to_string())),
            }))
        }))
    }
}

/// Cuts a reason to [`MAX_REASON`] characters.
fn clip(s: &str) -> String {
    match s.char_indices().nth(MAX_REASON) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_string(),
    }
}

/// Reads every row of a Parquet file as a preference row (snappy, gzip or uncompressed). A
/// file without a `chosen` or `rejected` column is an error (not skippable); a malformed row
/// is an error naming the file and row (1-based), or, with `skip_bad_rows`, is counted and
/// skipped (the first few are kept in [`Loaded::first_skipped`]).
pub(crate) fn read_parquet(path: &Path, skip_bad_rows: bool) -> Result<Loaded> {
    let bad = |reason: String| RewardError::Data { path: path.to_path_buf(), reason };
    let file = ParquetFile::open(path)?;
    let names = file.columns();
    for need in ["chosen", "rejected"] {
        if !names.iter().any(|n| n == need) {
            return Err(bad(format!(
                "no `{need}` column (the file has: {}); preference data needs `chosen` and `rejected` \
                 columns, optionally `prompt` and `margin`",
                names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
            )));
        }
    }
    let mut out = Loaded::default();
    for row in file.rows(Some(&COLUMNS[..]))? {
        let (n, value) = row?;
        match parse_row(value) {
            Ok(r) => out.rows.push(r),
            Err(reason) if skip_bad_rows => out.skip(SkippedRow { unit: "row", number: n, reason }),
            Err(reason) => return Err(bad(format!("row {n}: {reason} (or pass --skip-bad-rows)"))),
        }
    }
    if out.rows.is_empty() {
        let why = if out.skipped > 0 { format!("all {} rows are malformed", out.skipped) } else { "empty".into() };
        return Err(bad(format!("no preference rows ({why})")));
    }
    Ok(out)
}
