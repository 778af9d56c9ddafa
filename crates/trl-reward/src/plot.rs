//! Line plots a person can read, as PNG: a title, axes with ticks at round values and their
//! labels, an x-axis label, and a legend, drawn with a built-in 5×7 bitmap font (no font files,
//! no plotting dependency).

use std::path::Path;

use trl_core::atomic::write_atomic;

use crate::error::{Result, RewardError};

const W: usize = 720;
const H: usize = 420;
/// Plot area: left (room for y labels), right, top (title), bottom (x labels, axis name).
const LEFT: usize = 84;
const RIGHT: usize = 24;
const TOP: usize = 44;
const BOTTOM: usize = 62;
/// Text is drawn at twice the font size.
const SCALE: usize = 2;
const BLACK: [u8; 3] = [0, 0, 0];
const GRID: [u8; 3] = [225, 225, 225];

/// A named line: its points `(x, y)` and colour.
pub(crate) struct Series<'a> {
    pub name: &'a str,
    pub points: &'a [(f64, f64)],
    pub rgb: [u8; 3],
}

/// Rows of a 5×7 glyph, most significant of 5 bits leftmost.
fn glyph(c: char) -> [u8; 7] {
    match c {
        '0' => [14, 17, 19, 21, 25, 17, 14],
        '1' => [4, 12, 4, 4, 4, 4, 14],
        '2' => [14, 17, 1, 2, 4, 8, 31],
        '3' => [31, 2, 4, 2, 1, 17, 14],
        '4' => [2, 6, 10, 18, 31, 2, 2],
        '5' => [31, 16, 30, 1, 1, 17, 14],
        '6' => [6, 8, 16, 30, 17, 17, 14],
        '7' => [31, 1, 2, 4, 8, 8, 8],
        '8' => [14, 17, 17, 14, 17, 17, 14],
        '9' => [14, 17, 17, 15, 1, 2, 12],
        '.' => [0, 0, 0, 0, 0, 12, 12],
        '-' => [0, 0, 0, 31, 0, 0, 0],
        '+' => [0, 4, 4, 31, 4, 4, 0],
        'a' => [0, 0, 14, 1, 15, 17, 15],
        'c' => [0, 0, 14, 16, 16, 17, 14],
        'd' => [1, 1, 13, 19, 17, 17, 15],
        'e' => [0, 0, 14, 17, 31, 16, 14],
        'g' => [0, 0, 15, 17, 15, 1, 14],
        'i' => [4, 0, 12, 4, 4, 4, 14],
        'l' => [12, 4, 4, 4, 4, 4, 14],
        'm' => [0, 0, 26, 21, 21, 17, 17],
        'n' => [0, 0, 22, 25, 17, 17, 17],
        'o' => [0, 0, 14, 17, 17, 17, 14],
        'p' => [0, 0, 30, 17, 30, 16, 16],
        'r' => [0, 0, 22, 25, 16, 16, 16],
        's' => [0, 0, 14, 16, 14, 1, 30],
        't' => [8, 8, 28, 8, 8, 9, 6],
        'u' => [0, 0, 17, 17, 17, 19, 13],
        'v' => [0, 0, 17, 17, 17, 10, 4],
        'w' => [0, 0, 17, 17, 21, 21, 10],
        'y' => [0, 0, 17, 17, 15, 1, 14],
        _ => [0; 7],
    }
}

/// Width in pixels of `text` as drawn.
fn text_width(text: &str) -> usize {
    text.chars().count() * 6 * SCALE
}

/// Round tick values covering `[lo, hi]`: steps of 1, 2 or 5 × 10^k, about five of them.
fn ticks(lo: f64, hi: f64) -> Vec<f64> {
    let span = (hi - lo).max(1e-12);
    let raw = span / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * mag).find(|s| span / s <= 6.0).unwrap_or(10.0 * mag);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    (first..=last).map(|i| i as f64 * step).collect()
}

/// A tick label: scientific on an axis whose values are all tiny or huge (`sci`), else as
/// few decimals as the tick step needs.
fn label(v: f64, step: f64, sci: bool) -> String {
    if v == 0.0 {
        "0".into()
    } else if sci {
        format!("{v:.1e}")
    } else {
        let decimals = (-step.log10().floor()).max(0.0) as usize;
        format!("{v:.decimals$}")
    }
}

/// Whether an axis with these ticks is labelled in scientific notation.
fn scientific(ticks: &[f64]) -> bool {
    let top = ticks.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    top > 0.0 && !(1e-2..1e6).contains(&top)
}

struct Canvas {
    px: Vec<u8>,
}

impl Canvas {
    fn set(&mut self, x: usize, y: usize, rgb: [u8; 3]) {
        if x < W && y < H {
            let i = (y * W + x) * 3;
            self.px[i..i + 3].copy_from_slice(&rgb);
        }
    }

    fn rect(&mut self, x0: usize, y0: usize, w: usize, h: usize, rgb: [u8; 3]) {
        for y in y0..y0 + h {
            for x in x0..x0 + w {
                self.set(x, y, rgb);
            }
        }
    }

    fn text(&mut self, x: usize, y: usize, text: &str, rgb: [u8; 3]) {
        for (i, c) in text.chars().enumerate() {
            for (row, bits) in glyph(c).iter().enumerate() {
                for col in 0..5 {
                    if bits & (16 >> col) != 0 {
                        self.rect(x + (i * 6 + col) * SCALE, y + row * SCALE, SCALE, SCALE, rgb);
                    }
                }
            }
        }
    }

    fn line(&mut self, (x0, y0): (f64, f64), (x1, y1): (f64, f64), rgb: [u8; 3]) {
        let n = ((x1 - x0).abs().max((y1 - y0).abs()) as usize).max(1);
        for i in 0..=n {
            let t = i as f64 / n as f64;
            let (x, y) = (x0 + (x1 - x0) * t, y0 + (y1 - y0) * t);
            self.rect(x.round() as usize, y.round() as usize, 2, 2, rgb);
        }
    }
}

/// Draws `series` against shared axes and writes the PNG to `path`.
pub(crate) fn line_plot(path: &Path, title: &str, x_name: &str, series: &[Series]) -> Result<()> {
    let mut c = Canvas { px: vec![255; W * H * 3] };
    let pts = series.iter().flat_map(|s| s.points.iter()).filter(|(x, y)| x.is_finite() && y.is_finite());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in pts {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    if x0 > x1 {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    if y1 - y0 < 1e-12 {
        (y0, y1) = (y0 - 0.5f64.max(y0.abs() * 0.05), y1 + 0.5f64.max(y1.abs() * 0.05));
    }
    if x1 - x0 < 1e-12 {
        (x0, x1) = (x0 - 1.0, x1 + 1.0);
    }
    let pad = (y1 - y0) * 0.05;
    let (y0, y1) = (y0 - pad, y1 + pad);
    let (pw, ph) = ((W - LEFT - RIGHT) as f64, (H - TOP - BOTTOM) as f64);
    let map =
        |(x, y): (f64, f64)| (LEFT as f64 + (x - x0) / (x1 - x0) * pw, (H - BOTTOM) as f64 - (y - y0) / (y1 - y0) * ph);
    // grid, ticks and their labels
    let (xt, yt) = (ticks(x0, x1), ticks(y0, y1));
    let step = |t: &[f64]| if t.len() > 1 { t[1] - t[0] } else { 1.0 };
    for &v in &yt {
        let y = map((x0, v)).1.round() as usize;
        for x in LEFT..W - RIGHT {
            c.set(x, y, GRID);
        }
        c.rect(LEFT - 6, y, 6, 1, BLACK);
        let l = label(v, step(&yt), scientific(&yt));
        c.text(LEFT.saturating_sub(10 + text_width(&l)), y.saturating_sub(7), &l, BLACK);
    }
    for &v in &xt {
        let x = map((v, y0)).0.round() as usize;
        for y in TOP..H - BOTTOM {
            c.set(x, y, GRID);
        }
        c.rect(x, H - BOTTOM, 1, 6, BLACK);
        let l = label(v, step(&xt), scientific(&xt));
        c.text(x.saturating_sub(text_width(&l) / 2), H - BOTTOM + 10, &l, BLACK);
    }
    // axes, title, axis name
    c.rect(LEFT, TOP, 1, H - TOP - BOTTOM + 1, BLACK);
    c.rect(LEFT, H - BOTTOM, W - LEFT - RIGHT, 1, BLACK);
    c.text((W - text_width(title)) / 2, 12, title, BLACK);
    c.text(LEFT + (W - LEFT - RIGHT - text_width(x_name)) / 2, H - 22, x_name, BLACK);
    for s in series {
        let p: Vec<(f64, f64)> = s.points.iter().copied().filter(|(x, y)| x.is_finite() && y.is_finite()).collect();
        for w in p.windows(2) {
            c.line(map(w[0]), map(w[1]), s.rgb);
        }
        for &q in &p {
            let (x, y) = map(q);
            c.rect((x as usize).saturating_sub(2), (y as usize).saturating_sub(2), 5, 5, s.rgb);
        }
    }
    // legend: in the corner of the plot area that covers the fewest points, on white
    let shown: Vec<&Series> = series.iter().filter(|s| !s.points.is_empty()).collect();
    let (bw, bh) = (shown.iter().map(|s| text_width(s.name)).max().unwrap_or(0) + 44, 20 * shown.len() + 8);
    let (xs, ys) = ([W - RIGHT - bw - 8, LEFT + 8], [TOP + 8, H - BOTTOM - bh - 8]);
    let covered = |(bx, by): (usize, usize)| {
        let inside =
            |(x, y): (f64, f64)| x >= bx as f64 && x <= (bx + bw) as f64 && y >= by as f64 && y <= (by + bh) as f64;
        series.iter().flat_map(|s| s.points.iter()).filter(|&&q| inside(map(q))).count()
    };
    let corners = [(xs[0], ys[0]), (xs[0], ys[1]), (xs[1], ys[0]), (xs[1], ys[1])];
    let (bx, by) = corners.into_iter().min_by_key(|&k| covered(k)).unwrap_or(corners[0]);
    if !shown.is_empty() {
        c.rect(bx, by, bw, bh, [255, 255, 255]);
        for (x, y, w, h) in [(bx, by, bw, 1), (bx, by + bh, bw, 1), (bx, by, 1, bh), (bx + bw, by, 1, bh + 1)] {
            c.rect(x, y, w, h, [160, 160, 160]);
        }
    }
    for (k, s) in shown.iter().enumerate() {
        let y = by + 6 + 20 * k;
        c.rect(bx + 8, y + 6, 24, 3, s.rgb);
        c.text(bx + 38, y, s.name, BLACK);
    }
    save(&c, path)
}

fn save(c: &Canvas, path: &Path) -> Result<()> {
    let mut bytes = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut bytes, W as u32, H as u32);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let err = |e: png::EncodingError| RewardError::Data { path: path.to_path_buf(), reason: e.to_string() };
        let mut w = enc.write_header().map_err(err)?;
        w.write_image_data(&c.px).map_err(err)?;
    }
    Ok(write_atomic(path, &bytes)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        assert_eq!(ticks(0.0, 800.0), [0.0, 200.0, 400.0, 600.0, 800.0]);
        let t = ticks(0.62, 0.71);
        assert!(t.len() >= 3 && t.len() <= 7 && t.iter().all(|v| (0.62..=0.71).contains(v)), "{t:?}");
        assert_eq!(label(0.65, 0.02, false), "0.65");
        assert_eq!(label(400.0, 200.0, false), "400");
        assert_eq!(label(2e-5, 1e-5, true), "2.0e-5");
        assert!(scientific(&[0.0, 5e-4, 1e-3]) && !scientific(&[0.0, 0.5, 1.0]));
    }

    #[test]
    fn every_label_character_has_a_glyph() {
        for c in "0123456789.-+e train eval loss accuracy reward margin learning rate step".chars() {
            assert!(c == ' ' || glyph(c) != [0; 7], "no glyph for {c:?}");
        }
    }
}
