//! Rotary frequencies from `config.json`: the base (`rope_theta`, `rope_parameters.rope_theta`,
//! or GPT-NeoX's `rotary_emb_base`) and the scaling types transformers implements that we
//! support: `default`, `linear`, `llama3` and `longrope` (Phi-3's `su`).

use trl_core::HfConfig;

use crate::error::{ModelError, Result};
use crate::layers::Rope;
use crate::limits;

/// The RoPE of `cfg` for `dim` rotated dimensions per head.
pub fn from_config(cfg: &HfConfig, dim: usize) -> Result<Rope> {
    let theta = cfg.rope_theta().or_else(|| cfg.get_f64("rotary_emb_base")).unwrap_or(10000.0);
    limits::finite_at_least("rope_theta", theta, f64::MIN_POSITIVE)?;
    let mut rope = Rope::new(dim, theta);
    let Some(scaling) = cfg.rope_scaling() else { return Ok(rope) };
    let get = |k: &str| scaling.get(k).and_then(|v| v.as_f64());
    match cfg.rope_type() {
        Some("linear") => {
            let f = get("factor").unwrap_or(1.0);
            limits::finite_at_least("rope_scaling.factor", f, f64::MIN_POSITIVE)?;
            let f = f as f32;
            rope.inv_freq.iter_mut().for_each(|x| *x /= f);
        }
        Some("llama3") => {
            let need = |k: &str| get(k).ok_or_else(|| ModelError::Config(format!("llama3 rope scaling needs `{k}`")));
            for k in ["factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"] {
                limits::finite_at_least(&format!("rope_scaling.{k}"), need(k)?, f64::MIN_POSITIVE)?;
            }
            if need("high_freq_factor")? <= need("low_freq_factor")? {
                return Err(ModelError::Config("llama3 rope scaling needs high_freq_factor > low_freq_factor".into()));
            }
            llama3_scaling(
                &mut rope.inv_freq,
                need("factor")?,
                need("low_freq_factor")?,
                need("high_freq_factor")?,
                need("original_max_position_embeddings")?,
            );
        }
        Some("longrope" | "su") => longrope(cfg, &mut rope, theta, dim, &get)?,
        Some(other) => {
            return Err(ModelError::Config(format!(
                "rope type `{other}` is not supported (default, linear, llama3, longrope)"
            )))
        }
        None => {}
    }
    Ok(rope)
}

/// Llama 3's frequency-dependent RoPE scaling (transformers' `_compute_llama3_parameters`).
fn llama3_scaling(inv_freq: &mut [f32], factor: f64, low: f64, high: f64, old_ctx: f64) {
    let low_wavelen = old_ctx / low;
    let high_wavelen = old_ctx / high;
    for f in inv_freq.iter_mut() {
        let freq = *f as f64;
        let wavelen = 2.0 * std::f64::consts::PI / freq;
        let scaled = if wavelen > low_wavelen { freq / factor } else { freq };
        let medium = wavelen >= high_wavelen && wavelen <= low_wavelen;
        *f = if medium {
            let smooth = (old_ctx / wavelen - low) / (high - low);
            ((1.0 - smooth) * scaled / factor + smooth * scaled) as f32
        } else {
            scaled as f32
        };
    }
}

/// LongRoPE (transformers' `_compute_longrope_parameters`): `inv_freq[i] = 1 / (ext[i] ·
/// base^(2i/dim))` with `short_factor` as `ext`, or `long_factor` for forward passes reaching
/// past `original_max_position_embeddings`; cos and sin scaled by the attention factor
/// (`sqrt(1 + ln(factor) / ln(original))` unless given, `factor` = max / original positions
/// unless given).
fn longrope(cfg: &HfConfig, rope: &mut Rope, theta: f64, dim: usize, get: &dyn Fn(&str) -> Option<f64>) -> Result<()> {
    let scaling = cfg.rope_scaling().expect("called for a scaling type");
    let original = get("original_max_position_embeddings")
        .or_else(|| cfg.get_f64("original_max_position_embeddings"))
        .ok_or_else(|| ModelError::Config("longrope needs `original_max_position_embeddings`".into()))?;
    limits::finite_at_least("original_max_position_embeddings", original, 1.0)?;
    let max = cfg.get_f64("max_position_embeddings").unwrap_or(original);
    let factor = get("factor").unwrap_or(max / original);
    limits::finite_at_least("rope_scaling.factor", factor, f64::MIN_POSITIVE)?;
    let attention = match get("attention_factor") {
        Some(a) => a,
        None if factor <= 1.0 => 1.0,
        None => (1.0 + factor.ln() / original.ln()).sqrt(),
    };
    limits::finite_at_least("rope_scaling.attention_factor", attention, 0.0)?;
    let freqs = |key: &str| -> Result<Vec<f32>> {
        let list = scaling
            .get(key)
            .and_then(|v| v.as_array())
            .ok_or_else(|| ModelError::Config(format!("longrope needs `{key}`: a list of {} numbers", dim / 2)))?;
        if list.len() != dim / 2 {
            return Err(ModelError::Config(format!(
                "longrope `{key}` has {} numbers; the rotary dimension {dim} needs {}",
                list.len(),
                dim / 2
            )));
        }
        list.iter()
            .enumerate()
            .map(|(i, v)| {
                let ext = v
                    .as_f64()
                    .filter(|x| x.is_finite() && *x > 0.0)
                    .ok_or_else(|| ModelError::Config(format!("longrope `{key}[{i}]` must be a positive number")))?;
                Ok(1.0 / (ext as f32 * (theta as f32).powf((2 * i) as f32 / dim as f32)))
            })
            .collect()
    };
    rope.inv_freq = freqs("short_factor")?;
    rope.long = Some((freqs("long_factor")?, original as usize));
    rope.attention_scaling = attention as f32;
    Ok(())
}
