//! Every `lr_scheduler_type` against transformers' `get_scheduler` at every optimizer step
//! (`tests/fixtures/make_schedule_fixtures.py`), and bad `lr_scheduler_kwargs`.

use std::path::Path;

use serde_json::{json, Map, Value};
use trl_reward::schedule::{Schedule, SchedulerType};
use trl_reward::RewardConfig;

fn cases() -> Vec<Value> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/schedules/expected.json");
    let v: Value = serde_json::from_slice(&std::fs::read(&p).expect("schedule fixtures")).unwrap();
    v["cases"].as_array().unwrap().clone()
}

/// Both sides compute each rate in f64 with the same formula: a few roundings (≤ u = 2⁻⁵³ each)
/// plus libm's `cos`/`sqrt`/`powf` (≤ 1 ulp, of an argument up to 2π·num_cycles ≈ 20 that
/// itself carries a few roundings), and the JSON decimal round trip (≤ 1 ulp): 64 u of the peak
/// rate bounds it with room.
const REL: f64 = 64.0 * f64::EPSILON / 2.0;

#[test]
fn every_schedule_matches_transformers_at_every_step() {
    let mut kinds = std::collections::BTreeSet::new();
    for c in cases() {
        let kind: SchedulerType = serde_json::from_value(c["type"].clone()).unwrap();
        kinds.insert(c["type"].as_str().unwrap().to_string());
        let kwargs = c["kwargs"].as_object().unwrap().clone();
        let lr = c["learning_rate"].as_f64().unwrap();
        let (warmup, total) = (c["warmup"].as_u64().unwrap(), c["total"].as_u64().unwrap());
        // through RewardConfig, as a config file sets it
        let cfg = RewardConfig {
            learning_rate: lr,
            warmup_steps: warmup,
            lr_scheduler_type: kind,
            lr_scheduler_kwargs: kwargs.clone(),
            ..RewardConfig::default()
        };
        cfg.validate().unwrap();
        let s = cfg.schedule(total).unwrap();
        let want: Vec<f64> = c["lr"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        assert_eq!(want.len() as u64, total);
        for (step, w) in want.iter().enumerate() {
            let got = s.lr(step as u64);
            assert!(
                (got - w).abs() <= REL * lr,
                "{} {kwargs:?} step {step}/{total} (warmup {warmup}): {got} vs transformers {w}",
                c["type"]
            );
        }
    }
    assert_eq!(kinds.len(), 9, "a fixture for every schedule type: {kinds:?}");
}

#[test]
fn config_files_name_schedules_as_transformers_does() {
    let cfg: RewardConfig = serde_json::from_value(json!({
        "lr_scheduler_type": "cosine_with_min_lr", "lr_scheduler_kwargs": {"min_lr": 1e-6}
    }))
    .unwrap();
    assert_eq!(cfg.lr_scheduler_type, SchedulerType::CosineWithMinLr);
    cfg.validate().unwrap();
    let err = serde_json::from_value::<RewardConfig>(json!({"lr_scheduler_type": "cosine_annealing"}))
        .unwrap_err()
        .to_string();
    assert!(err.contains("cosine_with_restarts"), "{err}");
}

#[test]
fn bad_kwargs_are_clear_errors() {
    let kw = |v: Value| -> Map<String, Value> { v.as_object().unwrap().clone() };
    let err = |kind, kwargs: Value| Schedule::new(kind, &kw(kwargs), 1e-3, 2, 20).unwrap_err().to_string();
    let e = err(SchedulerType::Cosine, json!({"power": 2.0}));
    assert!(e.contains("lr_scheduler_kwargs.power") && e.contains("num_cycles"), "{e}");
    let e = err(SchedulerType::Linear, json!({"num_cycles": 2}));
    assert!(e.contains("takes: nothing"), "{e}");
    let e = err(SchedulerType::CosineWithMinLr, json!({}));
    assert!(e.contains("min_lr or min_lr_rate"), "{e}");
    let e = err(SchedulerType::CosineWithMinLr, json!({"min_lr": 1e-5, "min_lr_rate": 0.1}));
    assert!(e.contains("one of"), "{e}");
    let e = err(SchedulerType::WarmupStableDecay, json!({}));
    assert!(e.contains("num_decay_steps"), "{e}");
    let e = err(SchedulerType::WarmupStableDecay, json!({"num_decay_steps": 30}));
    assert!(e.contains("exceed the 20 training steps"), "{e}");
    let e = err(SchedulerType::WarmupStableDecay, json!({"num_decay_steps": 5, "decay_type": "exp"}));
    assert!(e.contains("decay_type") && e.contains("1-sqrt"), "{e}");
    let e = err(SchedulerType::Polynomial, json!({"lr_end": 0.01}));
    assert!(e.contains("lr_end"), "{e}");
    let e = err(SchedulerType::InverseSqrt, json!({"timescale": "ten"}));
    assert!(e.contains("timescale"), "{e}");
    let e = err(SchedulerType::Cosine, json!({"num_cycles": "half"}));
    assert!(e.contains("finite number"), "{e}");
    // `constant` takes the optimizer alone and ignores kwargs, as transformers' does
    assert_eq!(Schedule::new(SchedulerType::Constant, &kw(json!({"x": 1})), 1e-3, 0, 5).unwrap().lr(3), 1e-3);
}
