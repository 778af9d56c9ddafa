//! TensorBoard event files (`report_to = ["tensorboard"]`): the log lines as scalars under
//! transformers' tag names (`train/loss`, `train/learning_rate`, `eval/accuracy`, …), in
//! `<output_dir>/runs/events.out.tfevents.<secs>.<host>.<pid>.0`.
//!
//! The format is small and stable, so it is written here rather than through a dependency:
//! a file of TFRecords (`u64` length, masked CRC-32C of the length, the bytes, their masked
//! CRC-32C), each holding a protobuf `Event` — first `file_version: "brain.Event:2"`, then one
//! `Event { wall_time, step, summary { value { tag, simple_value } … } }` per log line.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Result, RewardError};
use crate::state::LogEntry;

/// An open event file; every write is flushed, so a killed run keeps what it logged.
pub struct EventWriter {
    file: std::fs::File,
    path: PathBuf,
}

/// CRC-32C (Castagnoli), bit by bit: event files are small.
pub fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0x82F6_3B78 } else { crc >> 1 };
        }
    }
    !crc
}

/// TFRecord's masked CRC.
pub fn masked_crc(data: &[u8]) -> u32 {
    let c = crc32c(data);
    c.rotate_right(15).wrapping_add(0xA282_EAD8)
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A length-delimited protobuf field.
fn bytes_field(field: u64, data: &[u8], out: &mut Vec<u8>) {
    varint(field << 3 | 2, out);
    varint(data.len() as u64, out);
    out.extend_from_slice(data);
}

/// `Event { wall_time = 1 (double), step = 2 (int64), file_version = 3 | summary = 5 }`.
fn event(wall_time: f64, step: u64, body: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut e = Vec::new();
    varint(1 << 3 | 1, &mut e);
    e.extend_from_slice(&wall_time.to_le_bytes());
    varint(2 << 3, &mut e);
    varint(step, &mut e);
    body(&mut e);
    e
}

/// `Summary { repeated Value value = 1 }`, `Value { tag = 1, simple_value = 2 (float) }`.
fn summary(values: &[(String, f32)]) -> Vec<u8> {
    let mut s = Vec::new();
    for (tag, v) in values {
        let mut value = Vec::new();
        bytes_field(1, tag.as_bytes(), &mut value);
        varint(2 << 3 | 5, &mut value);
        value.extend_from_slice(&v.to_le_bytes());
        bytes_field(1, &value, &mut s);
    }
    s
}

fn now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '.').collect())
        .filter(|h: &String| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// The scalars of one log line: every number of its JSON form but the step, as
/// `<split>/<name>` (transformers' `TensorBoardCallback` tags).
pub fn scalars(entry: &LogEntry) -> Vec<(String, f32)> {
    let Ok(Value::Object(map)) = serde_json::to_value(entry) else { return Vec::new() };
    map.iter()
        .filter(|(k, _)| k.as_str() != "step")
        .filter_map(|(k, v)| Some((format!("{}/{k}", entry.split), v.as_f64()? as f32)))
        .collect()
}

impl EventWriter {
    /// A new event file in `dir` (created), starting with the file-version event.
    pub fn create(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| RewardError::io(dir, e))?;
        let secs = now() as u64;
        let name = format!("events.out.tfevents.{secs}.{}.{}.0", hostname(), std::process::id());
        let path = dir.join(name);
        let file = std::fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(&path)
            .map_err(|e| RewardError::io(&path, e))?;
        let mut w = Self { file, path };
        w.record(&event(now(), 0, |e| bytes_field(3, b"brain.Event:2", e)))?;
        Ok(w)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// One log line as an event of scalars at its step.
    pub fn log(&mut self, entry: &LogEntry) -> Result<()> {
        let s = summary(&scalars(entry));
        self.record(&event(now(), entry.step, |e| bytes_field(5, &s, e)))
    }

    fn record(&mut self, data: &[u8]) -> Result<()> {
        let len = (data.len() as u64).to_le_bytes();
        let mut rec = Vec::with_capacity(data.len() + 16);
        rec.extend_from_slice(&len);
        rec.extend_from_slice(&masked_crc(&len).to_le_bytes());
        rec.extend_from_slice(data);
        rec.extend_from_slice(&masked_crc(data).to_le_bytes());
        self.file.write_all(&rec).and_then(|_| self.file.flush()).map_err(|e| RewardError::io(&self.path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_check_value() {
        // the standard check value of CRC-32C
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn varints() {
        let mut v = Vec::new();
        varint(300, &mut v);
        assert_eq!(v, [0xAC, 0x02]);
    }
}
