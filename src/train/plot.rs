//! `loss_curve.png`: every logged value of metrics.jsonl against the step, one line each.
//!
//! Drawn by hand into an `image` buffer: polylines, ticks and a legend need no plotting crate,
//! and the glyphs come pre-rasterized from noto-sans-mono-bitmap, so the plot works on servers
//! and CI that have no fonts installed.

use crate::{Error, Result};
use image::{Rgb, RgbImage};
use noto_sans_mono_bitmap::{get_raster, get_raster_width, FontWeight, RasterHeight};
use std::path::Path;

pub const WIDTH: u32 = 960;
pub const HEIGHT: u32 = 540;
/// The first row of the plot area; the title and the legend are above it.
pub const PLOT_TOP: u32 = 44;

/// Series colours in the order of the names (matplotlib's "tab10").
pub const COLORS: [[u8; 3]; 10] = [
    [31, 119, 180],
    [255, 127, 14],
    [44, 160, 44],
    [214, 39, 40],
    [148, 103, 189],
    [140, 86, 75],
    [227, 119, 194],
    [127, 127, 127],
    [188, 189, 34],
    [23, 190, 207],
];

/// Runs with at least this many points get a smoothed line over their faint raw one.
const SMOOTH_FROM: usize = 50;
const TEXT: [u8; 3] = [40, 40, 40];
const GRID: [u8; 3] = [228, 228, 228];
const MINOR_GRID: [u8; 3] = [243, 243, 243];
const FRAME: [u8; 3] = [150, 150, 150];
const WEIGHT: FontWeight = FontWeight::Regular;
const SIZE: RasterHeight = RasterHeight::Size16;

/// One logged value by step.
#[derive(Clone, Debug)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// Reads `names` by step from a metrics.jsonl file. Lines that do not parse, such as the
/// partial last line of a killed run, are skipped. A resumed run logs again from its
/// checkpoint's step on; its lines replace what the killed run logged from that step on
/// (a line's values replace those of earlier lines of its step, the others stay).
pub fn read_metrics(path: &Path, names: &[&str]) -> Result<Vec<Series>> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io { path: path.display().to_string(), source })?;
    let mut rows: Vec<(u64, Vec<Option<f64>>)> = Vec::new();
    for line in String::from_utf8_lossy(&bytes).lines() {
        let Ok(serde_json::Value::Object(fields)) = serde_json::from_str(line) else { continue };
        let Some(step) = fields.get("step").and_then(|s| s.as_u64()) else { continue };
        // Lines of one step merge (the losses and a FID logged after them).
        rows.truncate(rows.partition_point(|(s, _)| *s <= step));
        let values: Vec<Option<f64>> = names.iter().map(|n| fields.get(*n).and_then(|v| v.as_f64()).filter(|v| v.is_finite())).collect();
        match rows.last_mut() {
            Some((s, old)) if *s == step => old.iter_mut().zip(values).for_each(|(o, v)| *o = v.or(*o)),
            _ => rows.push((step, values)),
        }
    }
    let series = |(i, name): (usize, &&str)| Series {
        name: name.to_string(),
        points: rows.iter().filter_map(|(step, values)| values[i].map(|v| (*step as f64, v))).collect(),
    };
    Ok(names.iter().enumerate().map(series).collect())
}

/// Plots the metrics file's `names` into `png` (replaced atomically, so a viewer never sees
/// half a file). Returns the number of points drawn; writes nothing while there are none.
pub fn write_loss_curve(metrics: &Path, names: &[&str], png: &Path) -> Result<usize> {
    let series = read_metrics(metrics, names)?;
    let points = series.iter().map(|s| s.points.len()).sum();
    if points == 0 {
        return Ok(0);
    }
    let tmp = png.with_extension("png.tmp");
    draw(&series)
        .save_with_format(&tmp, image::ImageFormat::Png)
        .map_err(|e| Error::Invalid(format!("{}: writing PNG failed: {e}", tmp.display())))?;
    std::fs::rename(&tmp, png).map_err(|source| Error::Io { path: png.display().to_string(), source })?;
    Ok(points)
}

/// The plot area in pixels and the data ranges it shows (y in log10 units on a log axis).
struct Frame {
    left: f64,
    right: f64,
    top: f64,
    bottom: f64,
    x: (f64, f64),
    y: (f64, f64),
    log: bool,
}

impl Frame {
    fn px(&self, x: f64) -> f64 {
        self.left + (x - self.x.0) / (self.x.1 - self.x.0) * (self.right - self.left)
    }

    fn py(&self, y: f64) -> f64 {
        let t = if self.log { y.log10() } else { y };
        self.bottom - (t - self.y.0) / (self.y.1 - self.y.0) * (self.bottom - self.top)
    }
}

/// A `WIDTH` x `HEIGHT` plot of every series against the step, with a legend in `COLORS`.
pub fn draw(series: &[Series]) -> RgbImage {
    let mut img = RgbImage::from_pixel(WIDTH, HEIGHT, Rgb([255; 3]));
    let points = || series.iter().flat_map(|s| s.points.iter());
    let (Some((x0, x1)), Some((lo, hi))) = (min_max(points().map(|p| p.0)), min_max(points().map(|p| p.1))) else {
        return img;
    };
    // A log axis once values span a decade (the VAE's loss of ~500 nats beside its KL term of
    // ~20), so that every series keeps a readable shape; linear whenever a value is not positive
    // (the GAN's mean logits).
    let log = lo > 0.0 && hi / lo >= 10.0;
    let (t0, t1) = if log { (lo.log10(), hi.log10()) } else { (lo, hi) };
    let pad = if t1 > t0 { 0.05 * (t1 - t0) } else if t0 != 0.0 { 0.1 * t0.abs() } else { 1.0 };
    let y = (t0 - pad, t1 + pad);
    let x = if x1 > x0 { (x0, x1) } else { (x0 - 1.0, x1 + 1.0) };
    let y_ticks = if log { log_ticks(y) } else { linear_ticks(y, 8.0, false) };
    let x_ticks = linear_ticks(x, 8.0, true);

    let cw = get_raster_width(WEIGHT, SIZE) as f64;
    let label_chars = y_ticks.iter().filter_map(|(_, l)| l.as_ref().map(|l| l.len())).max().unwrap_or(1);
    let frame = Frame { left: 18.0 + cw * label_chars as f64, right: WIDTH as f64 - 24.0, top: PLOT_TOP as f64, bottom: HEIGHT as f64 - 52.0, x, y, log };
    let clip = [frame.left, frame.top, frame.right, frame.bottom];

    for (t, label) in &y_ticks {
        let py = frame.py(if log { 10f64.powf(*t) } else { *t }).round();
        let color = if label.is_some() { GRID } else { MINOR_GRID };
        fill(&mut img, [frame.left, py, frame.right, py + 1.0], color);
        if let Some(label) = label {
            text(&mut img, frame.left - 8.0 - cw * label.len() as f64, py - 8.0, label, TEXT);
        }
    }
    for (t, label) in &x_ticks {
        let px = frame.px(*t).round();
        fill(&mut img, [px, frame.top, px + 1.0, frame.bottom], GRID);
        fill(&mut img, [px, frame.bottom, px + 1.0, frame.bottom + 5.0], FRAME);
        let label = label.as_deref().unwrap_or_default();
        text(&mut img, px - cw * label.len() as f64 / 2.0, frame.bottom + 8.0, label, TEXT);
    }
    text(&mut img, (frame.left + frame.right - 4.0 * cw) / 2.0, HEIGHT as f64 - 22.0, "step", TEXT);

    let pixels: Vec<Vec<(f64, f64)>> = series.iter().map(|s| s.points.iter().map(|&(x, y)| (frame.px(x), frame.py(y))).collect()).collect();
    let smoothed = pixels.iter().any(|p| p.len() >= SMOOTH_FROM);
    // Faint raw lines first, so that no series' noise covers another's smoothed line.
    for (i, p) in pixels.iter().enumerate().filter(|(_, p)| p.len() >= SMOOTH_FROM) {
        paint(&mut img, &stroke(p, 1.0, clip), COLORS[i % COLORS.len()], 0.25);
    }
    for (i, p) in pixels.iter().enumerate() {
        let line = if p.len() >= SMOOTH_FROM { smooth(p) } else { p.clone() };
        paint(&mut img, &stroke(&line, 2.0, clip), COLORS[i % COLORS.len()], 1.0);
    }
    outline(&mut img, clip, FRAME);

    let mut title = String::from("training metrics");
    if log {
        title += " (log scale)";
    }
    if smoothed {
        title += ", faint: raw, bold: smoothed";
    }
    text(&mut img, frame.left, 14.0, &title, TEXT);
    legend(&mut img, series, frame.right, 14.0, cw);
    img
}

/// Names with a line of their colour, right-aligned to `right`.
fn legend(img: &mut RgbImage, series: &[Series], right: f64, y: f64, cw: f64) {
    let entry = |s: &Series| 22.0 + 6.0 + cw * s.name.len() as f64;
    let mut x = right - series.iter().map(|s| entry(s) + 16.0).sum::<f64>() + 16.0;
    for (i, s) in series.iter().enumerate() {
        fill(img, [x, y + 7.0, x + 22.0, y + 10.0], COLORS[i % COLORS.len()]);
        text(img, x + 28.0, y, &s.name, TEXT);
        x += entry(s) + 16.0;
    }
}

fn min_max(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    values.fold(None, |acc, v| Some(acc.map_or((v, v), |(lo, hi): (f64, f64)| (lo.min(v), hi.max(v)))))
}

/// Ticks at 1, 2 or 5 times a power of ten, about `count` of them, labelled.
fn linear_ticks((a, b): (f64, f64), count: f64, integer: bool) -> Vec<(f64, Option<String>)> {
    let raw = (b - a) / count;
    let magnitude = 10f64.powf(raw.log10().floor());
    let mut step = [1.0, 2.0, 5.0, 10.0].into_iter().map(|m| m * magnitude).find(|s| *s >= raw).unwrap_or(10.0 * magnitude);
    if integer {
        step = step.max(1.0);
    }
    let first = (a / step).ceil() as i64;
    let last = (b / step).floor() as i64;
    (first..=last).map(|k| k as f64 * step).map(|v| (v, Some(if integer { step_label(v) } else { label(v, step) }))).collect()
}

/// Ticks on a log axis, in log10 units: each decade labelled, 2 and 5 times it as well when
/// the axis spans few decades, and unlabelled minor lines at the other multiples.
fn log_ticks((a, b): (f64, f64)) -> Vec<(f64, Option<String>)> {
    let few = b - a < 2.5;
    let mut ticks = Vec::new();
    for decade in a.floor() as i32..=b.ceil() as i32 {
        let unit = 10f64.powi(decade);
        for m in 1..10 {
            let t = (m as f64 * unit).log10();
            if t >= a && t <= b {
                let labelled = m == 1 || (few && (m == 2 || m == 5));
                ticks.push((t, labelled.then(|| label(m as f64 * unit, unit))));
            }
        }
    }
    ticks
}

/// `v` with as many decimals as `step` needs; very large or small values in e-notation.
fn label(v: f64, step: f64) -> String {
    if v.abs() < step * 1e-6 {
        return "0".into();
    }
    if v.abs() >= 1e5 || v.abs() < 1e-3 {
        let digits = (v.abs().log10().floor() - step.log10().floor()).max(0.0) as usize;
        return format!("{v:.digits$e}");
    }
    let decimals = (-step.log10().floor()).max(0.0) as usize;
    format!("{v:.decimals$}")
}

fn step_label(v: f64) -> String {
    let v = v.round() as i64;
    if v.abs() >= 10_000 && v % 1000 == 0 {
        format!("{}k", v / 1000)
    } else {
        v.to_string()
    }
}

/// A straight line fitted to the points within 2% of the run on either side of each point,
/// evaluated there: a moving average that neither lags the data nor bends at the ends, where
/// the window can only reach one way.
fn smooth(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let prefix = |f: &dyn Fn(usize, f64) -> f64| -> Vec<f64> {
        let sums = points.iter().enumerate().scan(0.0, |sum, (i, p)| {
            *sum += f(i, p.1);
            Some(*sum)
        });
        std::iter::once(0.0).chain(sums).collect()
    };
    let (sum_y, sum_iy) = (prefix(&|_, y| y), prefix(&|i, y| i as f64 * y));
    let (n, radius) = (points.len(), points.len() / 50);
    (0..n)
        .map(|i| {
            let (a, b) = (i.saturating_sub(radius), (i + radius + 1).min(n));
            let m = (b - a) as f64;
            let mean_i = (a + b - 1) as f64 / 2.0;
            let mean_y = (sum_y[b] - sum_y[a]) / m;
            // Indices a..b are evenly spaced: their variance is (m^2 - 1) / 12.
            let var_i = (m * m - 1.0) / 12.0;
            let cov = (sum_iy[b] - sum_iy[a]) / m - mean_i * mean_y;
            let slope = if var_i > 0.0 { cov / var_i } else { 0.0 };
            (points[i].0, mean_y + slope * (i as f64 - mean_i))
        })
        .collect()
}

/// Coverage (0..1) of a polyline `width` pixels wide, anti-aliased by each pixel's distance to
/// the nearest segment, inside `clip`. The maximum over segments, so joints are not drawn twice.
fn stroke(points: &[(f64, f64)], width: f64, clip: [f64; 4]) -> Vec<f32> {
    let mut mask = vec![0f32; (WIDTH * HEIGHT) as usize];
    let half = width / 2.0;
    let segments = points.windows(2).map(|w| (w[0], w[1])).chain((points.len() == 1).then(|| (points[0], points[0])));
    for (a, b) in segments {
        let x_range = (a.0.min(b.0) - half - 1.0).max(clip[0]) as i64..=(a.0.max(b.0) + half + 1.0).min(clip[2]) as i64;
        let y_range = (a.1.min(b.1) - half - 1.0).max(clip[1]) as i64..=(a.1.max(b.1) + half + 1.0).min(clip[3]) as i64;
        for y in y_range {
            for x in x_range.clone() {
                let d = distance((x as f64 + 0.5, y as f64 + 0.5), a, b);
                let cover = (half + 0.5 - d).clamp(0.0, 1.0) as f32;
                let m = &mut mask[y as usize * WIDTH as usize + x as usize];
                *m = m.max(cover);
            }
        }
    }
    mask
}

fn distance(p: (f64, f64), a: (f64, f64), b: (f64, f64)) -> f64 {
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let len2 = dx * dx + dy * dy;
    let t = if len2 > 0.0 { (((p.0 - a.0) * dx + (p.1 - a.1) * dy) / len2).clamp(0.0, 1.0) } else { 0.0 };
    ((p.0 - a.0 - t * dx).powi(2) + (p.1 - a.1 - t * dy).powi(2)).sqrt()
}

fn paint(img: &mut RgbImage, mask: &[f32], color: [u8; 3], alpha: f32) {
    for (i, &m) in mask.iter().enumerate().filter(|(_, m)| **m > 0.0) {
        blend(img, (i % WIDTH as usize) as i64, (i / WIDTH as usize) as i64, color, m * alpha);
    }
}

fn blend(img: &mut RgbImage, x: i64, y: i64, color: [u8; 3], alpha: f32) {
    if x < 0 || y < 0 || x >= WIDTH as i64 || y >= HEIGHT as i64 {
        return;
    }
    let p = img.get_pixel_mut(x as u32, y as u32);
    for (c, target) in p.0.iter_mut().zip(color) {
        *c = (*c as f32 * (1.0 - alpha) + target as f32 * alpha).round() as u8;
    }
}

/// Fills `[x0, y0, x1, y1)`.
fn fill(img: &mut RgbImage, [x0, y0, x1, y1]: [f64; 4], color: [u8; 3]) {
    for y in y0 as i64..y1 as i64 {
        for x in x0 as i64..x1 as i64 {
            blend(img, x, y, color, 1.0);
        }
    }
}

fn outline(img: &mut RgbImage, [x0, y0, x1, y1]: [f64; 4], color: [u8; 3]) {
    fill(img, [x0, y0, x1 + 1.0, y0 + 1.0], color);
    fill(img, [x0, y1, x1 + 1.0, y1 + 1.0], color);
    fill(img, [x0, y0, x0 + 1.0, y1 + 1.0], color);
    fill(img, [x1, y0, x1 + 1.0, y1 + 1.0], color);
}

/// `s` with its raster box's top-left corner at (x, y); unknown characters as '?'.
fn text(img: &mut RgbImage, x: f64, y: f64, s: &str, color: [u8; 3]) {
    let cw = get_raster_width(WEIGHT, SIZE) as i64;
    let (x, y) = (x.round() as i64, y.round() as i64);
    for (i, c) in s.chars().enumerate() {
        let Some(glyph) = get_raster(c, WEIGHT, SIZE).or_else(|| get_raster('?', WEIGHT, SIZE)) else { continue };
        for (row, line) in glyph.rows().enumerate() {
            for (col, &a) in line.iter().enumerate().filter(|(_, a)| **a > 0) {
                blend(img, x + i as i64 * cw + col as i64, y + row as i64, color, a as f32 / 255.0);
            }
        }
    }
}
