//! `cargo xtask eval`: a reward model on a labelled preference set, as RewardBench reports it:
//! accuracy (chosen strictly above rejected) overall, per subset and per section (weighted by
//! example count), margin statistics, and calibration of P(chosen ≻ rejected).

use std::io::Write;
use std::path::PathBuf;

use serde_json::{json, Map, Value};

use trl_reward::loss::preference_probability;

use crate::common::{write_output, Error};
use crate::score::{score_file, ScoreArgs, Scored};

#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    /// The model and the rows (`--input`/`--data`: `prompt`, `chosen`, `rejected` per row), as
    /// for `score`; `--out` is where the JSON report goes (default: stdout).
    #[command(flatten)]
    pub score: ScoreArgs,
    /// The column naming each row's subset.
    #[arg(long)]
    pub subset_column: Option<String>,
    /// A JSON file `{"section": ["subset", …], …}`: each section's accuracy over all of its
    /// subsets' rows (RewardBench's example-count weighting).
    #[arg(long)]
    pub sections: Option<PathBuf>,
    /// Also write the report as a markdown table here.
    #[arg(long)]
    pub markdown: Option<PathBuf>,
}

/// Confidence bins of the calibration table: max(p, 1 − p) in [0.5, 0.6), …, [0.9, 1.0].
const BINS: usize = 5;

/// One pair's outcome.
struct Pair {
    subset: String,
    margin: f64,
}

fn accuracy(pairs: &[&Pair]) -> Value {
    let n = pairs.len();
    let correct = pairs.iter().filter(|p| p.margin > 0.0).count();
    json!({"pairs": n, "correct": correct, "accuracy": if n > 0 { correct as f64 / n as f64 } else { f64::NAN }})
}

fn margins(pairs: &[Pair]) -> Value {
    let mut m: Vec<f64> = pairs.iter().map(|p| p.margin).collect();
    m.sort_by(f64::total_cmp);
    let n = m.len() as f64;
    let mean = m.iter().sum::<f64>() / n;
    let std = (m.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
    let median = if m.len() % 2 == 1 { m[m.len() / 2] } else { (m[m.len() / 2 - 1] + m[m.len() / 2]) / 2.0 };
    json!({"mean": mean, "std": std, "min": m[0], "median": median, "max": m[m.len() - 1]})
}

/// Per confidence bin: pairs, mean confidence, accuracy; and the expected calibration error.
fn calibration(pairs: &[Pair]) -> Value {
    let mut bins = [(0usize, 0.0f64, 0usize); BINS];
    for p in pairs {
        let prob = preference_probability(p.margin as f32, 0.0) as f64;
        let conf = prob.max(1.0 - prob);
        let b = (((conf - 0.5) * 2.0 * BINS as f64) as usize).min(BINS - 1);
        bins[b].0 += 1;
        bins[b].1 += conf;
        bins[b].2 += (p.margin > 0.0) as usize;
    }
    let n = pairs.len() as f64;
    let mut ece = 0.0;
    let rows: Vec<Value> = bins
        .iter()
        .enumerate()
        .map(|(i, &(count, conf, correct))| {
            let lo = 0.5 + i as f64 * 0.5 / BINS as f64;
            let (c, a) =
                if count > 0 { (conf / count as f64, correct as f64 / count as f64) } else { (f64::NAN, f64::NAN) };
            if count > 0 {
                ece += count as f64 / n * (a - c).abs();
            }
            json!({"confidence_from": lo, "confidence_to": lo + 0.5 / BINS as f64, "pairs": count,
                   "mean_confidence": c, "accuracy": a})
        })
        .collect();
    json!({"bins": rows, "expected_calibration_error": ece})
}

pub fn run(args: EvalArgs) -> Result<(), Error> {
    let (scored, ran_on) = score_file(&args.score)?;
    let subset_of = |s: &Scored| -> String {
        match args.subset_column.as_deref().and_then(|c| s.value.get(c)) {
            Some(Value::String(v)) => v.clone(),
            Some(v) if !v.is_null() => v.to_string(),
            _ => "(none)".into(),
        }
    };
    let mut pairs = Vec::new();
    for s in &scored {
        if !s.pair {
            return Err(format!(
                "{}: eval needs preference rows (`prompt`, `chosen`, `rejected`); found a single text: {}",
                args.score.input.display(),
                s.value
            )
            .into());
        }
        // the first label's reward of each side, as RewardBench reads a single-logit model
        let labels = s.rewards.len() / 2;
        let margin = s.rewards[0] as f64 - s.rewards[labels] as f64;
        pairs.push(Pair { subset: subset_of(s), margin });
    }
    if pairs.is_empty() {
        return Err(format!("{}: no preference rows to evaluate", args.score.input.display()).into());
    }
    let mut subsets: Vec<String> = pairs.iter().map(|p| p.subset.clone()).collect();
    subsets.sort();
    subsets.dedup();
    let of = |names: &[String]| -> Vec<&Pair> { pairs.iter().filter(|p| names.contains(&p.subset)).collect() };
    let per_subset: Map<String, Value> =
        subsets.iter().map(|s| (s.clone(), accuracy(&of(std::slice::from_ref(s))))).collect();
    let mut sections = Map::new();
    if let Some(path) = &args.sections {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let map: std::collections::BTreeMap<String, Vec<String>> = serde_json::from_str(&text)
            .map_err(|e| format!("{}: expected {{\"section\": [\"subset\", …]}}: {e}", path.display()))?;
        for (section, names) in map {
            if let Some(missing) = names.iter().find(|n| !subsets.contains(n)) {
                return Err(format!(
                    "{}: section `{section}` names subset `{missing}`, which no row has (subsets: {})",
                    path.display(),
                    subsets.join(", ")
                )
                .into());
            }
            sections.insert(section, accuracy(&of(&names)));
        }
    }
    let all: Vec<&Pair> = pairs.iter().collect();
    let truncated = scored.iter().filter(|s| s.truncated.iter().any(|&t| t)).count();
    let report = json!({
        "model": args.score.model, "data": args.score.input, "overall": accuracy(&all),
        "subsets": per_subset, "sections": sections, "margin": margins(&pairs),
        "calibration": calibration(&pairs), "truncated_pairs": truncated, "ran_on": ran_on,
    });
    let md = markdown(&report);
    eprint!("{md}");
    if let Some(path) = &args.markdown {
        trl_core::atomic::write_atomic(path, md.as_bytes())?;
    }
    write_output(args.score.out.as_deref(), |out: &mut dyn Write| -> Result<(), Error> {
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
        Ok(())
    })
}

fn markdown(r: &Value) -> String {
    let row = |name: &str, v: &Value| {
        format!("| {name} | {} | {:.4} |\n", v["pairs"], v["accuracy"].as_f64().unwrap_or(f64::NAN))
    };
    let mut s = String::from("| subset | pairs | accuracy |\n|---|---|---|\n");
    s += &row("**overall**", &r["overall"]);
    for (k, v) in r["sections"].as_object().into_iter().flatten() {
        s += &row(&format!("section: {k}"), v);
    }
    for (k, v) in r["subsets"].as_object().into_iter().flatten() {
        s += &row(k, v);
    }
    let m = &r["margin"];
    s += &format!(
        "\nmargin r_c − r_r: mean {:.4}, std {:.4}, min {:.4}, median {:.4}, max {:.4}\n",
        m["mean"].as_f64().unwrap_or(f64::NAN),
        m["std"].as_f64().unwrap_or(f64::NAN),
        m["min"].as_f64().unwrap_or(f64::NAN),
        m["median"].as_f64().unwrap_or(f64::NAN),
        m["max"].as_f64().unwrap_or(f64::NAN)
    );
    s += "\n| confidence | pairs | mean confidence | accuracy |\n|---|---|---|---|\n";
    for b in r["calibration"]["bins"].as_array().into_iter().flatten() {
        // an empty bin has neither a mean confidence nor an accuracy
        let num = |v: &Value| v.as_f64().map_or("–".to_string(), |x| format!("{x:.3}"));
        s += &format!(
            "| {:.1}–{:.1} | {} | {} | {} |\n",
            b["confidence_from"].as_f64().unwrap_or(0.0),
            b["confidence_to"].as_f64().unwrap_or(0.0),
            b["pairs"],
            num(&b["mean_confidence"]),
            num(&b["accuracy"])
        );
    }
    s += &format!(
        "\nexpected calibration error {:.4}\n",
        r["calibration"]["expected_calibration_error"].as_f64().unwrap_or(f64::NAN)
    );
    s
}
