//! Parquet preference files (the format of Hugging Face dataset repos), read row by row.

use std::path::Path;

use parquet::file::reader::{FileReader, SerializedFileReader};

use crate::data::{parse_row, Loaded};
use crate::error::{Result, RewardError};

/// Reads every row of a Parquet file as a preference row (snappy, gzip or uncompressed).
pub fn read_parquet(path: &Path, skip_bad_rows: bool) -> Result<Loaded> {
    let bad = |reason: String| RewardError::Data { path: path.to_path_buf(), reason };
    let file = std::fs::File::open(path).map_err(|e| RewardError::io(path, e))?;
    let reader = SerializedFileReader::new(file).map_err(|e| bad(format!("not a readable Parquet file: {e}")))?;
    let mut out = Loaded::default();
    let rows = reader.get_row_iter(None).map_err(|e| bad(e.to_string()))?;
    for (i, row) in rows.enumerate() {
        let parsed = row.map_err(|e| e.to_string()).and_then(|r| parse_row(r.to_json_value()));
        match parsed {
            Ok(r) => out.rows.push(r),
            Err(_) if skip_bad_rows => out.skipped += 1,
            Err(reason) => {
                return Err(RewardError::Row {
                    path: path.to_path_buf(),
                    line: i + 1,
                    reason: format!("row {}: {reason}", i + 1),
                })
            }
        }
    }
    if out.rows.is_empty() {
        return Err(bad("no preference rows".into()));
    }
    Ok(out)
}
