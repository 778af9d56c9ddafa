//! Human-facing outputs of a run: the sample-prediction table and PNG plots of loss and
//! accuracy (train and eval) over steps.

use std::path::Path;

use trl_core::atomic::write_atomic;

use crate::error::{Result, RewardError};
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

const W: usize = 640;
const H: usize = 360;
const MARGIN: usize = 40;

/// A line to plot: its points `(step, value)` and colour.
type Series<'a> = (&'a [(f64, f64)], [u8; 3]);

/// A white RGB canvas with an axis box, on which series are drawn scaled to the data.
struct Canvas {
    px: Vec<u8>,
}

impl Canvas {
    fn new() -> Self {
        let mut c = Self { px: vec![255; W * H * 3] };
        for x in MARGIN..W - MARGIN {
            c.set(x, H - MARGIN, [0, 0, 0]);
            c.set(x, MARGIN, [200, 200, 200]);
        }
        for y in MARGIN..=H - MARGIN {
            c.set(MARGIN, y, [0, 0, 0]);
            c.set(W - MARGIN, y, [200, 200, 200]);
        }
        c
    }

    fn set(&mut self, x: usize, y: usize, rgb: [u8; 3]) {
        if x < W && y < H {
            let i = (y * W + x) * 3;
            self.px[i..i + 3].copy_from_slice(&rgb);
        }
    }

    fn line(&mut self, (x0, y0): (f64, f64), (x1, y1): (f64, f64), rgb: [u8; 3]) {
        let n = ((x1 - x0).abs().max((y1 - y0).abs()) as usize).max(1);
        for i in 0..=n {
            let t = i as f64 / n as f64;
            let (x, y) = (x0 + (x1 - x0) * t, y0 + (y1 - y0) * t);
            for dy in 0..2 {
                self.set(x.round() as usize, y.round() as usize + dy, rgb);
            }
        }
    }

    /// Draws each series (points `(step, value)`) in its colour, sharing the axes' ranges.
    fn plot(&mut self, series: &[Series]) {
        let all = series.iter().flat_map(|(s, _)| s.iter());
        let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
        for &(x, y) in all {
            (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
        }
        if x0 > x1 {
            return;
        }
        let (dx, dy) = ((x1 - x0).max(1e-9), (y1 - y0).max(1e-9));
        let map = |(x, y): (f64, f64)| {
            let px = MARGIN as f64 + (x - x0) / dx * (W - 2 * MARGIN) as f64;
            let py = (H - MARGIN) as f64 - (y - y0) / dy * (H - 2 * MARGIN) as f64;
            (px, py)
        };
        for (s, rgb) in series {
            for w in s.windows(2) {
                self.line(map(w[0]), map(w[1]), *rgb);
            }
            if s.len() == 1 {
                self.line(map(s[0]), map(s[0]), *rgb);
            }
        }
    }

    fn save(&self, path: &Path) -> Result<()> {
        let mut bytes = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut bytes, W as u32, H as u32);
            enc.set_color(png::ColorType::Rgb);
            enc.set_depth(png::BitDepth::Eight);
            let err = |e: png::EncodingError| RewardError::Data { path: path.to_path_buf(), reason: e.to_string() };
            let mut w = enc.write_header().map_err(err)?;
            w.write_image_data(&self.px).map_err(err)?;
        }
        Ok(write_atomic(path, &bytes)?)
    }
}

/// Writes `loss.png` and `accuracy.png` (train in blue, eval in orange) into `dir`.
pub(crate) fn plot_history(history: &[LogEntry], dir: &Path) -> Result<()> {
    let pick = |split: &str, f: fn(&LogEntry) -> f64| -> Vec<(f64, f64)> {
        history.iter().filter(|e| e.split == split).map(|e| (e.step as f64, f(e))).collect()
    };
    let (blue, orange) = ([31, 119, 180], [255, 127, 14]);
    for (name, f) in
        [("loss", (|e: &LogEntry| e.loss) as fn(&LogEntry) -> f64), ("accuracy", |e: &LogEntry| e.metrics.accuracy)]
    {
        let (train, eval) = (pick("train", f), pick("eval", f));
        let mut c = Canvas::new();
        c.plot(&[(&train, blue), (&eval, orange)]);
        c.save(&dir.join(format!("{name}.png")))?;
    }
    Ok(())
}
