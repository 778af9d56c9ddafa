//! Atomic writes: every file goes to a temp name in the same directory and is renamed into place.

use std::io::Write;
use std::path::Path;

use crate::error::{io_err, Result};

/// Writes `bytes` to `path` through a temp file and a rename, so a crash never leaves half a file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |f| f.write_all(bytes))
}

/// Like [`write_atomic`], but lets the caller stream into the temp file.
pub fn write_atomic_with(path: &Path, fill: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>) -> Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let tmp = temp_path(path);
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        fill(&mut f)?;
        f.sync_all()
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(io_err(path)(e));
    }
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

/// Serialises `value` as pretty JSON and writes it atomically.
pub fn write_json_atomic(path: &Path, value: &impl serde::Serialize) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value)
        .map_err(|e| crate::Error::Json { path: path.to_path_buf(), reason: e.to_string() })?;
    text.push('\n');
    write_atomic(path, text.as_bytes())
}

/// The temp name [`write_atomic`] uses for `path` in this process: `.NAME.tmp<PID>`, unique per
/// process so that two writers never share one.
pub fn temp_path(path: &Path) -> std::path::PathBuf {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    dir.join(format!(".{name}.tmp{}", std::process::id()))
}

/// Whether process `pid` is running. Where that cannot be told (no `/proc`), it is assumed to
/// be, so nothing of a live writer is ever removed.
pub fn pid_alive(pid: u32) -> bool {
    let proc = Path::new("/proc");
    if !proc.is_dir() {
        return true;
    }
    pid == std::process::id() || proc.join(pid.to_string()).exists()
}

/// Removes the leftovers of interrupted writes to `path`: `.NAME.tmp<PID>` files or directories
/// (and the PID-less `.NAME.tmp` of older versions) whose writing process is gone. Returns what
/// was removed.
pub fn remove_stale_temps(path: &Path) -> Vec<std::path::PathBuf> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let prefix = format!(".{name}.tmp");
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut removed = Vec::new();
    for e in entries.filter_map(|e| e.ok()) {
        let file = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = file.strip_prefix(&prefix) else { continue };
        let stale = rest.is_empty() || rest.parse::<u32>().is_ok_and(|pid| !pid_alive(pid));
        if stale {
            let p = e.path();
            let gone = if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
            if gone.is_ok() {
                removed.push(p);
            }
        }
    }
    removed
}
