//! Learning-rate schedules: transformers' `lr_scheduler_type` values and their
//! `lr_scheduler_kwargs`, the multiplier of the peak rate at each optimizer step, computed in
//! f64 as transformers' `LambdaLR` lambdas are in Python floats.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Result, RewardError};

/// transformers' `SchedulerType` (the ones that depend only on the step).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SchedulerType {
    #[default]
    Linear,
    Cosine,
    CosineWithRestarts,
    Polynomial,
    Constant,
    ConstantWithWarmup,
    InverseSqrt,
    CosineWithMinLr,
    WarmupStableDecay,
}

/// The shape of WSD's warmup and decay phases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ramp {
    Linear,
    Cosine,
    OneMinusSqrt,
}

/// A schedule with its settings resolved for one run.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    kind: SchedulerType,
    warmup: u64,
    total: u64,
    num_cycles: f64,
    /// Polynomial: the final rate and the peak rate it decays from.
    lr_end: f64,
    lr_init: f64,
    power: f64,
    timescale: f64,
    /// Cosine with a floor: `min_lr / lr` or given.
    min_rate: f64,
    /// WSD phases.
    stable: u64,
    decay: u64,
    ramps: (Ramp, Ramp),
}

fn kw_f64(kwargs: &Map<String, Value>, key: &str) -> Result<Option<f64>> {
    match kwargs.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_f64().filter(|x| x.is_finite()).map(Some).ok_or_else(|| {
            RewardError::Config(format!("lr_scheduler_kwargs.{key}: expected a finite number, found {v}"))
        }),
    }
}

fn kw_steps(kwargs: &Map<String, Value>, key: &str) -> Result<Option<u64>> {
    match kwargs.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| {
            RewardError::Config(format!("lr_scheduler_kwargs.{key}: expected a whole number of steps, found {v}"))
        }),
    }
}

fn kw_ramp(kwargs: &Map<String, Value>, key: &str, default: Ramp) -> Result<Ramp> {
    match kwargs.get(key).and_then(Value::as_str) {
        None if kwargs.get(key).is_none_or(Value::is_null) => Ok(default),
        Some("linear") => Ok(Ramp::Linear),
        Some("cosine") => Ok(Ramp::Cosine),
        Some("1-sqrt") => Ok(Ramp::OneMinusSqrt),
        _ => Err(RewardError::Config(format!(
            "lr_scheduler_kwargs.{key}: expected \"linear\", \"cosine\" or \"1-sqrt\", found {}",
            kwargs[key]
        ))),
    }
}

impl Schedule {
    /// The schedule of `kind` for a run of `total` optimizer steps with `warmup` of them
    /// warming up from peak rate `lr`. `kwargs` are transformers' `lr_scheduler_kwargs` for that
    /// type; one it does not take is an error naming the ones it does.
    pub fn new(kind: SchedulerType, kwargs: &Map<String, Value>, lr: f64, warmup: u64, total: u64) -> Result<Self> {
        use SchedulerType::*;
        let allowed: &[&str] = match kind {
            Linear | Constant | ConstantWithWarmup => &[],
            Cosine | CosineWithRestarts => &["num_cycles"],
            Polynomial => &["lr_end", "power"],
            InverseSqrt => &["timescale"],
            CosineWithMinLr => &["num_cycles", "min_lr", "min_lr_rate"],
            WarmupStableDecay => {
                &["num_decay_steps", "num_stable_steps", "warmup_type", "decay_type", "min_lr_ratio", "num_cycles"]
            }
        };
        // transformers' `constant` takes the optimizer alone and ignores the kwargs.
        if kind != Constant {
            if let Some(k) = kwargs.keys().find(|k| !allowed.contains(&k.as_str())) {
                return Err(RewardError::Config(format!(
                    "lr_scheduler_kwargs.{k} is not a setting of the `{}` schedule (it takes: {})",
                    serde_json::to_value(kind).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default(),
                    if allowed.is_empty() { "nothing".to_string() } else { allowed.join(", ") }
                )));
            }
        }
        let bad = |m: String| Err(RewardError::Config(m));
        let default_cycles = if kind == CosineWithRestarts { 1.0 } else { 0.5 };
        let mut s = Schedule {
            kind,
            warmup,
            total,
            num_cycles: kw_f64(kwargs, "num_cycles")?.unwrap_or(default_cycles),
            lr_end: kw_f64(kwargs, "lr_end")?.unwrap_or(1e-7),
            lr_init: lr,
            power: kw_f64(kwargs, "power")?.unwrap_or(1.0),
            timescale: 0.0,
            min_rate: kw_f64(kwargs, "min_lr_ratio")?.unwrap_or(0.0),
            stable: 0,
            decay: 0,
            ramps: (kw_ramp(kwargs, "warmup_type", Ramp::Linear)?, kw_ramp(kwargs, "decay_type", Ramp::Cosine)?),
        };
        match kind {
            Polynomial if s.lr_end >= lr => {
                return bad(format!("lr_end ({}) must be smaller than the learning rate ({lr})", s.lr_end))
            }
            InverseSqrt => {
                let t = kw_steps(kwargs, "timescale")?.unwrap_or(if warmup > 0 { warmup } else { 10_000 });
                if t == 0 {
                    return bad("lr_scheduler_kwargs.timescale must be at least 1".into());
                }
                s.timescale = t as f64;
            }
            CosineWithMinLr => {
                s.min_rate = match (kw_f64(kwargs, "min_lr")?, kw_f64(kwargs, "min_lr_rate")?) {
                    (Some(_), Some(_)) => return bad("set one of lr_scheduler_kwargs.min_lr and min_lr_rate".into()),
                    (Some(m), None) => m / lr,
                    (None, Some(r)) => r,
                    (None, None) => {
                        return bad(
                            "the cosine_with_min_lr schedule needs lr_scheduler_kwargs.min_lr or min_lr_rate".into()
                        )
                    }
                }
            }
            WarmupStableDecay => {
                s.decay = kw_steps(kwargs, "num_decay_steps")?.ok_or_else(|| {
                    RewardError::Config(
                        "the warmup_stable_decay schedule needs lr_scheduler_kwargs.num_decay_steps".into(),
                    )
                })?;
                s.stable = match kw_steps(kwargs, "num_stable_steps")? {
                    Some(n) => n,
                    None => total.checked_sub(warmup + s.decay).ok_or_else(|| {
                        RewardError::Config(format!(
                            "warmup ({warmup}) plus num_decay_steps ({}) exceed the {total} training steps; \
                             lower them or set num_stable_steps",
                            s.decay
                        ))
                    })?,
                };
            }
            _ => {}
        }
        Ok(s)
    }

    /// The learning rate at optimizer step `step` (0-based).
    pub fn lr(&self, step: u64) -> f64 {
        self.lr_init * self.factor(step)
    }

    /// Multiplier of the peak rate at `step`.
    fn factor(&self, step: u64) -> f64 {
        use SchedulerType::*;
        let (w, t) = (self.warmup, self.total);
        if self.kind == Constant {
            return 1.0;
        }
        if step < w && self.kind != WarmupStableDecay {
            return step as f64 / w.max(1) as f64;
        }
        let progress = (step - w.min(step)) as f64 / t.saturating_sub(w).max(1) as f64;
        let cosine = |p: f64| 0.5 * (1.0 + (std::f64::consts::PI * self.num_cycles * 2.0 * p).cos());
        match self.kind {
            Linear => (t.saturating_sub(step) as f64 / t.saturating_sub(w).max(1) as f64).max(0.0),
            Cosine => cosine(progress).max(0.0),
            CosineWithMinLr => (cosine(progress) * (1.0 - self.min_rate) + self.min_rate).max(0.0),
            CosineWithRestarts if progress >= 1.0 => 0.0,
            CosineWithRestarts => {
                (0.5 * (1.0 + (std::f64::consts::PI * (self.num_cycles * progress).rem_euclid(1.0)).cos())).max(0.0)
            }
            Polynomial if step > t => self.lr_end / self.lr_init,
            Polynomial => {
                let remaining = 1.0 - (step - w) as f64 / (t - w).max(1) as f64;
                ((self.lr_init - self.lr_end) * remaining.powf(self.power) + self.lr_end) / self.lr_init
            }
            ConstantWithWarmup => 1.0,
            InverseSqrt => {
                let shift = self.timescale - w as f64;
                1.0 / ((step as f64 + shift) / self.timescale).sqrt()
            }
            WarmupStableDecay => self.wsd(step),
            Constant => 1.0,
        }
    }

    fn wsd(&self, step: u64) -> f64 {
        let (w, s, d, floor) = (self.warmup, self.stable, self.decay, self.min_rate);
        let shaped = |p: f64, ramp: Ramp, rising: bool| match (ramp, rising) {
            (Ramp::Linear, true) => p,
            (Ramp::Linear, false) => 1.0 - p,
            (Ramp::Cosine, true) => 0.5 * (1.0 - (std::f64::consts::PI * p).cos()),
            (Ramp::Cosine, false) => 0.5 * (1.0 + (std::f64::consts::PI * self.num_cycles * 2.0 * p).cos()),
            (Ramp::OneMinusSqrt, true) => 1.0 - (1.0 - p).sqrt(),
            (Ramp::OneMinusSqrt, false) => 1.0 - p.sqrt(),
        };
        if step < w {
            let f = shaped(step as f64 / w.max(1) as f64, self.ramps.0, true);
            return (f * (1.0 - floor) + floor).max(0.0);
        }
        if step < w + s {
            return 1.0;
        }
        if step < w + s + d {
            let f = shaped((step - w - s) as f64 / d.max(1) as f64, self.ramps.1, false);
            return (f * (1.0 - floor) + floor).max(0.0);
        }
        floor
    }
}
