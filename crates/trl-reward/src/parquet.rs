//! Parquet preference files (the format of Hugging Face dataset repos), read row by row.

use std::path::Path;
use std::sync::Arc;

use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::schema::types::Type;

use crate::data::{parse_row, Loaded};
use crate::error::{Result, RewardError};

/// The columns a preference row uses; any others (ids, scores, sources…) are never decoded.
const COLUMNS: [&str; 4] = ["prompt", "chosen", "rejected", "margin"];

/// Reads every row of a Parquet file as a preference row (snappy, gzip or uncompressed). A file without a `chosen` or `rejected` column is an error
/// (not skippable); a malformed row is an error naming the file and row (1-based), or, with
/// `skip_bad_rows`, is counted and skipped.
pub fn read_parquet(path: &Path, skip_bad_rows: bool) -> Result<Loaded> {
    let bad = |reason: String| RewardError::Data { path: path.to_path_buf(), reason };
    let file = std::fs::File::open(path).map_err(|e| RewardError::io(path, e))?;
    let reader = SerializedFileReader::new(file).map_err(|e| bad(format!("not a readable Parquet file: {e}")))?;
    let root = reader.metadata().file_metadata().schema_descr().root_schema();
    let fields = root.get_fields();
    let names: Vec<&str> = fields.iter().map(|f| f.name()).collect();
    for need in ["chosen", "rejected"] {
        if !names.contains(&need) {
            return Err(bad(format!(
                "no `{need}` column (the file has: {}); preference data needs `chosen` and `rejected` \
                 columns, optionally `prompt` and `margin`",
                names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
            )));
        }
    }
    let keep: Vec<Arc<Type>> = fields.iter().filter(|f| COLUMNS.contains(&f.name())).cloned().collect();
    let projection = Type::group_type_builder(root.name())
        .with_fields(keep)
        .build()
        .map_err(|e| bad(format!("cannot select the preference columns: {e}")))?;
    let mut out = Loaded::default();
    let rows = reader.get_row_iter(Some(projection)).map_err(|e| bad(e.to_string()))?;
    for (i, row) in rows.enumerate() {
        let parsed = row.map_err(|e| format!("unreadable: {e}")).and_then(|r| parse_row(r.to_json_value()));
        match parsed {
            Ok(r) => out.rows.push(r),
            Err(_) if skip_bad_rows => out.skipped += 1,
            Err(reason) => return Err(bad(format!("row {}: {reason} (or pass --skip-bad-rows)", i + 1))),
        }
    }
    if out.rows.is_empty() {
        let why = if out.skipped > 0 { format!("all {} rows are malformed", out.skipped) } else { "empty".into() };
        return Err(bad(format!("no preference rows ({why})")));
    }
    Ok(out)
}
