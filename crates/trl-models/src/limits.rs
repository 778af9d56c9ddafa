//! Size checks made before anything is allocated: every config size must be positive and
//! consistent, and the weights a config asks for must fit in memory. A config with
//! `vocab_size: 1000000000000` is refused with the number of bytes it would need, instead of
//! aborting the process inside the allocator.

use crate::error::{ModelError, Result};

/// Bytes per parameter while weights are held (f32 on every backend today).
const BYTES_PER_PARAM: u128 = 4;

/// `Err` naming `field` unless `value` is at least 1.
pub(crate) fn positive(field: &str, value: usize) -> Result<()> {
    if value == 0 {
        return Err(ModelError::Config(format!("`{field}` is 0; it must be at least 1")));
    }
    Ok(())
}

/// `Err` naming `field` unless `value` is finite and at least `min` (inclusive).
pub(crate) fn finite_at_least(field: &str, value: f64, min: f64) -> Result<()> {
    if !value.is_finite() || value < min {
        return Err(ModelError::Config(format!("`{field}` is {value}; it must be a finite number ≥ {min}")));
    }
    Ok(())
}

/// Memory the OS can still give this process, in bytes (`MemAvailable` of `/proc/meminfo`);
/// `None` where that is not known.
pub(crate) fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

fn gib(bytes: u128) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

/// Refuses a model of `params` parameters when its weights cannot fit in the memory left.
pub(crate) fn check_fits(params: u128) -> Result<()> {
    let bytes = params.saturating_mul(BYTES_PER_PARAM);
    let available = available_memory().map(u128::from).unwrap_or(u128::from(u64::MAX));
    if bytes > available {
        return Err(ModelError::TooLarge { params, bytes, needed: gib(bytes), available: gib(available) });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_model_larger_than_memory_is_refused_with_its_size() {
        let err = check_fits(1u128 << 60).unwrap_err().to_string();
        assert!(err.contains("4611686018427387904 bytes"), "{err}");
        assert!(check_fits(1000).is_ok());
    }

    #[test]
    fn sizes_must_be_positive_and_finite() {
        assert!(positive("hidden_size", 0).unwrap_err().to_string().contains("`hidden_size` is 0"));
        assert!(finite_at_least("rms_norm_eps", f64::NAN, 0.0).is_err());
        assert!(finite_at_least("rms_norm_eps", 1e-6, 0.0).is_ok());
    }
}
