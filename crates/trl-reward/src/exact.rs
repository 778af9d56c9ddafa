//! Floats that survive a trip through JSON bit for bit. Used by the loss metrics, the trainer's
//! state and its log lines; depends on no other module.

/// `x` rounded to at most 15 significant digits and 22 decimal places: a value serde_json
/// writes and reads back bit for bit (its default float parser is exact for such decimals,
/// not for arbitrary 17-digit ones). Everything the trainer logs or keeps in
/// `trainer_state.json` goes through it, so a resumed run's `metrics.jsonl` is byte-identical.
pub(crate) fn json_exact(x: f64) -> f64 {
    if !x.is_finite() || x == 0.0 {
        return x;
    }
    let decimals = (14 - x.abs().log10().floor() as i32).clamp(0, 22) as usize;
    format!("{x:.decimals$}").parse().unwrap_or(x)
}
