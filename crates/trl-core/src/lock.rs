//! One writer per output directory: an advisory lock on `DIR/.trl-rs.lock`, held while a run
//! writes there.
//!
//! The lock is the operating system's file lock (`flock`), so it dies with its process: a run
//! killed with `kill -9` never leaves a lock that blocks the next one. The file also holds the
//! holder's PID, so a second run can say who holds the directory, and a run that finds a PID
//! left behind by a process that did not exit cleanly knows the directory was abandoned
//! mid-write and removes the temp files that run left.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::error::{io_err, Error, Result};

/// The lock file's name inside the locked directory.
pub const LOCK_FILE: &str = ".trl-rs.lock";

/// A held lock on a directory; released when dropped (or when the process ends, however).
#[derive(Debug)]
pub struct DirLock {
    file: File,
    /// The PID a previous run left in the lock file without releasing it cleanly (it was
    /// killed or crashed), if any.
    pub stale_pid: Option<u32>,
    /// Temp files and directories of interrupted writes that were removed on acquiring.
    pub removed: Vec<PathBuf>,
}

impl DirLock {
    /// Locks `dir` (created if needed) for this process, or fails at once with
    /// [`Error::Locked`] naming the PID that holds it.
    pub fn acquire(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err(&path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let pid = read_pid(&mut file);
                return Err(Error::Locked {
                    dir: dir.to_path_buf(),
                    pid: pid.map_or("unknown".into(), |p| p.to_string()),
                });
            }
            Err(TryLockError::Error(e)) => return Err(io_err(&path)(e)),
        }
        let stale_pid = read_pid(&mut file).filter(|&p| p != std::process::id());
        let me = std::process::id().to_string();
        let written =
            file.set_len(0).and_then(|_| file.seek(SeekFrom::Start(0))).and_then(|_| file.write_all(me.as_bytes()));
        written.map_err(io_err(&path))?;
        let removed = remove_temp_leftovers(dir);
        Ok(Self { file, stale_pid, removed })
    }
}

impl Drop for DirLock {
    /// A clean release empties the file, so the next run can tell a clean exit from a crash.
    fn drop(&mut self) {
        let _ = self.file.set_len(0);
        let _ = self.file.unlock();
    }
}

fn read_pid(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.seek(SeekFrom::Start(0)).ok()?;
    file.read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

/// Removes `.NAME.tmp…` files and directories directly in `dir`: the temp names of atomic
/// writes and checkpoints. Only called by the holder of the directory's lock, so none of them
/// can belong to a live writer.
fn remove_temp_leftovers(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut removed = Vec::new();
    for e in entries.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        if !(name.starts_with('.') && name.contains(".tmp")) {
            continue;
        }
        let p = e.path();
        let gone = if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
        if gone.is_ok() {
            removed.push(p);
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_fails_naming_the_holder_and_a_dropped_lock_frees_the_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let first = DirLock::acquire(tmp.path()).unwrap();
        assert_eq!(first.stale_pid, None);
        // flock locks belong to the open file description: a second open conflicts even in-process.
        let err = DirLock::acquire(tmp.path()).unwrap_err().to_string();
        assert!(err.contains(&format!("PID {}", std::process::id())), "{err}");
        drop(first);
        let again = DirLock::acquire(tmp.path()).unwrap();
        assert_eq!(again.stale_pid, None, "a clean release leaves no stale PID");
    }

    #[test]
    fn a_pid_left_by_a_killed_run_is_stale_and_its_temp_files_are_removed() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join(LOCK_FILE), "4194304").unwrap();
        std::fs::write(tmp.path().join(".config.json.tmp4194304"), "half").unwrap();
        std::fs::create_dir(tmp.path().join(".checkpoint-5.tmp4194304")).unwrap();
        std::fs::write(tmp.path().join("metrics.jsonl"), "kept").unwrap();
        let lock = DirLock::acquire(tmp.path()).unwrap();
        assert_eq!(lock.stale_pid, Some(4194304));
        assert_eq!(lock.removed.len(), 2, "{:?}", lock.removed);
        assert!(tmp.path().join("metrics.jsonl").exists());
    }
}
