//! Rotary frequencies from `config.json`: the base (`rope_theta`, `rope_parameters.rope_theta`,
//! or GPT-NeoX's `rotary_emb_base`) and the scaling types transformers implements that we
//! support: `default`, `linear` and `llama3`.

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
        Some(other) => {
            return Err(ModelError::Config(format!("rope type `{other}` is not supported (default, linear, llama3)")))
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
