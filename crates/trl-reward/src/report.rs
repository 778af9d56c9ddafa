//! Human-facing outputs of a run: the sample-prediction table and PNG plots of loss,
//! accuracy, margin (train and eval) and learning rate over steps.

use std::path::Path;

use crate::error::Result;
use crate::plot::{line_plot, Series};
use crate::state::{LogEntry, Sample};

/// A Markdown table of sample predictions, like TRL's `visualize_samples`.
pub(crate) fn samples_table(samples: &[Sample]) -> String {
    let cell = |s: &str| s.replace('|', "\\|").replace('\n', " ");
    let mut out = String::from("| chosen_text | rejected_text | chosen_reward | rejected_reward | P(chosen ≻ rejected) |\n|---|---|---|---|---|\n");
    for s in samples {
        out.push_str(&format!(
            "| {} | {} | {:.4} | {:.4} | {:.4} |\n",
            cell(&s.chosen_text),
            cell(&s.rejected_text),
            s.chosen_reward,
            s.rejected_reward,
            s.probability
        ));
    }
    out
}

/// Writes `loss.png`, `accuracy.png`, `margin.png` (train in blue, eval in orange) and
/// `learning_rate.png` into `dir`.
pub(crate) fn plot_history(history: &[LogEntry], dir: &Path) -> Result<()> {
    let pick = |split: &str, f: fn(&LogEntry) -> Option<f64>| -> Vec<(f64, f64)> {
        history.iter().filter(|e| e.split == split).filter_map(|e| Some((e.step as f64, f(e)?))).collect()
    };
    let (blue, orange) = ([31, 119, 180], [255, 127, 14]);
    type Pick = fn(&LogEntry) -> Option<f64>;
    let plots: [(&str, &str, Pick); 4] = [
        ("loss", "loss", |e| Some(e.loss)),
        ("accuracy", "accuracy", |e| Some(e.metrics.accuracy)),
        ("margin", "reward margin", |e| Some(e.metrics.margin)),
        ("learning_rate", "learning rate", |e| e.learning_rate),
    ];
    for (file, title, f) in plots {
        let (train, eval) = (pick("train", f), pick("eval", f));
        let series =
            [Series { name: "train", points: &train, rgb: blue }, Series { name: "eval", points: &eval, rgb: orange }];
        line_plot(&dir.join(format!("{file}.png")), title, "step", &series)?;
    }
    Ok(())
}
