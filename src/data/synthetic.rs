//! The built-in dataset: MNIST-like 28×28 grayscale digits drawn procedurally, so that
//! `kiln train` works offline on a fresh machine with nothing downloaded.
//!
//! Each digit is a few strokes (polylines and elliptic arcs) in an "em" box of height 1 and
//! width about 0.6. Every image draws its own variant of the glyph: stroke parameters are
//! jittered, then the glyph is normalised to MNIST's 20-pixel box, given a random affine
//! (rotation, aspect, shear, translation), and rendered with a random pen width as
//! anti-aliased capsules. Image `i` depends only on `(seed, split, i)`, so the set is the same
//! whatever the thread count, and any one image can be regenerated alone.

use super::rng::SplitMix64;
use super::{Dataset, Splits};
use crate::Result;
use std::f32::consts::PI;

pub const SIDE: usize = 28;
const PIXELS: usize = SIDE * SIDE;

/// How many images to draw and from which seed. The default matches MNIST's 60,000 + 10,000.
#[derive(Clone, Debug)]
pub struct DigitsOptions {
    pub seed: u64,
    pub train: usize,
    pub test: usize,
}

impl Default for DigitsOptions {
    fn default() -> Self {
        DigitsOptions { seed: 0, train: 60_000, test: 10_000 }
    }
}

/// Train and test sets of synthetic digits, labels 0–9 in equal shares (image `i` shows digit
/// `i % 10`). The test set is a separate random stream, so it never repeats a train image.
pub fn digits(opts: &DigitsOptions) -> Result<Splits> {
    Splits::new(
        digit_set(format!("synthetic digits (seed {}) train", opts.seed), opts.seed, 0, opts.train)?,
        digit_set(format!("synthetic digits (seed {}) test", opts.seed), opts.seed, 1, opts.test)?,
    )
}

fn digit_set(name: String, seed: u64, stream: u64, n: usize) -> Result<Dataset> {
    let mut images = vec![0u8; n * PIXELS];
    let labels: Vec<u16> = (0..n).map(|i| (i % 10) as u16).collect();
    // Images are independent, so split the work over the cores; the bytes do not depend on how.
    let threads = std::thread::available_parallelism().map_or(1, |t| t.get()).min(n.div_ceil(2000)).max(1);
    let per = n.div_ceil(threads).max(1);
    std::thread::scope(|s| {
        for (t, chunk) in images.chunks_mut(per * PIXELS).enumerate() {
            s.spawn(move || {
                for (k, img) in chunk.chunks_mut(PIXELS).enumerate() {
                    let i = t * per + k;
                    render_digit(seed, stream, i as u64, (i % 10) as u8, img);
                }
            });
        }
    });
    Dataset::new(name, images, [n, 1, SIDE, SIDE], Some(labels))
}

/// Draws digit `digit` as image `index` of stream `stream` into `out` (28·28 bytes, cleared
/// first).
pub fn render_digit(seed: u64, stream: u64, index: u64, digit: u8, out: &mut [u8]) {
    let mut rng = SplitMix64::for_item(seed, stream, index);
    let strokes = glyph(digit, &mut rng);
    let strokes = place(strokes, &mut rng);
    // Pen radius and edge softness in pixels: MNIST strokes are 2–4 px with ~1 px soft edges.
    let radius = rng.range(0.8, 1.8);
    let soft = rng.range(0.9, 1.5);
    out.fill(0);
    let mut ink = [0f32; PIXELS];
    for s in &strokes {
        for seg in s.windows(2) {
            capsule(&mut ink, seg[0], seg[1], radius, soft);
        }
    }
    for (o, v) in out.iter_mut().zip(ink) {
        *o = (v * 255.0 + 0.5) as u8;
    }
}

type P = (f32, f32);

/// Ink of a round-capped segment: coverage falls linearly from 1 to 0 across `soft` pixels
/// around distance `radius`. Pixels keep the maximum over segments, so joints and overlaps do
/// not double the ink. Only pixels in the segment's bounding box are visited.
fn capsule(ink: &mut [f32; PIXELS], a: P, b: P, radius: f32, soft: f32) {
    let reach = radius + soft;
    let x0 = (a.0.min(b.0) - reach).floor().max(0.0) as usize;
    let y0 = (a.1.min(b.1) - reach).floor().max(0.0) as usize;
    let x1 = ((a.0.max(b.0) + reach).ceil().max(0.0) as usize).min(SIDE);
    let y1 = ((a.1.max(b.1) + reach).ceil().max(0.0) as usize).min(SIDE);
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let len2 = (dx * dx + dy * dy).max(1e-12);
    for y in y0..y1 {
        let py = y as f32 + 0.5 - a.1;
        for x in x0..x1 {
            let px = x as f32 + 0.5 - a.0;
            let t = ((px * dx + py * dy) / len2).clamp(0.0, 1.0);
            let (ex, ey) = (px - t * dx, py - t * dy);
            let d2 = ex * ex + ey * ey;
            if d2 >= reach * reach {
                continue;
            }
            let d = d2.sqrt();
            let v = ((radius - d) / soft + 0.5).clamp(0.0, 1.0);
            let cell = &mut ink[y * SIDE + x];
            if v > *cell {
                *cell = v;
            }
        }
    }
}

/// Normalises the glyph to MNIST's 20-pixel box (longer side, aspect kept), applies a random
/// aspect change, shear and rotation, and centres it in the 28×28 frame with a small offset.
fn place(mut strokes: Vec<Vec<P>>, r: &mut SplitMix64) -> Vec<Vec<P>> {
    // A smooth random warp (one slow sine per axis) bends straight strokes and makes loops
    // uneven, which per-point jitter alone cannot do without making strokes wiggly.
    let (ax, fx, phx) = (r.jitter(0.03), r.range(0.5, 1.5), r.range(0.0, 2.0 * PI));
    let (ay, fy, phy) = (r.jitter(0.03), r.range(0.5, 1.5), r.range(0.0, 2.0 * PI));
    for (x, y) in strokes.iter_mut().flatten() {
        let (x0, y0) = (*x, *y);
        *x += ax * (PI * fx * y0 + phx).sin();
        *y += ay * (PI * fy * x0 + phy).sin();
    }
    let (mut lo, mut hi) = ((f32::MAX, f32::MAX), (f32::MIN, f32::MIN));
    for &(x, y) in strokes.iter().flatten() {
        lo = (lo.0.min(x), lo.1.min(y));
        hi = (hi.0.max(x), hi.1.max(y));
    }
    let centre = ((lo.0 + hi.0) / 2.0, (lo.1 + hi.1) / 2.0);
    let size = r.range(17.0, 20.5) / (hi.0 - lo.0).max(hi.1 - lo.1).max(1e-3);
    let (sx, sy) = (size * r.range(0.8, 1.15), size);
    // Handwriting leans right more often than left (negative shear tips the top rightwards).
    let shear = r.jitter(0.15) - 0.08;
    let angle = r.jitter(0.1); // radians; ±0.3 at the extremes
    let (sin, cos) = angle.sin_cos();
    let (tx, ty) = (SIDE as f32 / 2.0 + r.jitter(0.7), SIDE as f32 / 2.0 + r.jitter(0.7));
    for (x, y) in strokes.iter_mut().flatten() {
        let (u, v) = ((*x - centre.0) * sx, (*y - centre.1) * sy);
        let u = u + shear * v;
        *x = tx + cos * u - sin * v;
        *y = ty + sin * u + cos * v;
    }
    strokes
}

/// Stroke builder whose every coordinate is jittered: the "handwriting" of one image.
struct Pen<'a> {
    r: &'a mut SplitMix64,
    strokes: Vec<Vec<P>>,
}

/// Position jitter in em units (1 em ≈ 18 px), and angle jitter in degrees.
const WOBBLE: f32 = 0.03;
const TURN: f32 = 6.0;

impl Pen<'_> {
    fn pt(&mut self, x: f32, y: f32) -> P {
        (x + self.r.jitter(WOBBLE), y + self.r.jitter(WOBBLE))
    }

    /// Points of an elliptic arc from angle `a0` to `a1` (degrees; 0 = right, 90 = down, since
    /// y grows downwards; `a1 < a0` draws counter-clockwise on screen).
    fn arc(&mut self, c: P, rx: f32, ry: f32, a0: f32, a1: f32) -> Vec<P> {
        let c = self.pt(c.0, c.1);
        let rx = rx * (1.0 + self.r.jitter(0.06));
        let ry = ry * (1.0 + self.r.jitter(0.06));
        let a0 = (a0 + self.r.jitter(TURN)) * PI / 180.0;
        let a1 = (a1 + self.r.jitter(TURN)) * PI / 180.0;
        let steps = ((a1 - a0).abs() / (12.0 * PI / 180.0)).ceil().max(2.0) as usize;
        (0..=steps)
            .map(|k| {
                let a = a0 + (a1 - a0) * k as f32 / steps as f32;
                (c.0 + rx * a.cos(), c.1 + ry * a.sin())
            })
            .collect()
    }

    /// A polyline through jittered points.
    fn line(&mut self, pts: &[P]) -> Vec<P> {
        pts.iter().map(|&(x, y)| self.pt(x, y)).collect()
    }

    fn stroke(&mut self, parts: Vec<Vec<P>>) {
        self.strokes.push(parts.concat());
    }

    fn chance(&mut self, p: f32) -> bool {
        self.r.unit() < p
    }
}

/// The strokes of one digit, with a variant (open or closed 4, 7 with or without a bar, ...)
/// and jitter drawn from `r`.
fn glyph(digit: u8, r: &mut SplitMix64) -> Vec<Vec<P>> {
    let mut p = Pen { r, strokes: Vec::new() };
    match digit {
        0 => {
            let start = 250.0;
            let close = p.r.range(350.0, 385.0);
            let a = p.arc((0.3, 0.5), 0.27, 0.48, start, start + close);
            p.stroke(vec![a]);
        }
        1 => {
            let stem = p.line(&[(0.32, 0.0), (0.31, 0.5), (0.3, 1.0)]);
            if p.chance(0.35) {
                let flag = p.line(&[(0.12, 0.2)]);
                p.stroke(vec![flag, stem]);
                if p.chance(0.4) {
                    let base = p.line(&[(0.1, 1.0), (0.52, 1.0)]);
                    p.stroke(vec![base]);
                }
            } else {
                p.stroke(vec![stem]);
            }
        }
        2 => {
            let top = p.arc((0.3, 0.27), 0.27, 0.26, 195.0, 400.0);
            let rest = if p.chance(0.3) {
                // A looped base: the diagonal curls into a small loop before the foot.
                let diag = p.line(&[(0.1, 0.86)]);
                let lp = p.arc((0.12, 0.9), 0.08, 0.08, 270.0, -30.0);
                let foot = p.line(&[(0.6, 0.95)]);
                [diag, lp, foot].concat()
            } else {
                p.line(&[(0.02, 0.98), (0.6, 0.97)])
            };
            p.stroke(vec![top, rest]);
        }
        3 => {
            let upper = p.arc((0.28, 0.26), 0.25, 0.24, 200.0, 455.0);
            let lower = p.arc((0.28, 0.73), 0.29, 0.27, -100.0, 160.0);
            p.stroke(vec![upper, lower]);
        }
        4 => {
            if p.chance(0.5) {
                let frame = p.line(&[(0.45, 0.0), (0.0, 0.66), (0.6, 0.66)]);
                let stem = p.line(&[(0.45, 0.0), (0.45, 1.0)]);
                p.stroke(vec![frame]);
                p.stroke(vec![stem]);
            } else {
                let frame = p.line(&[(0.08, 0.0), (0.02, 0.6), (0.6, 0.58)]);
                let stem = p.line(&[(0.47, 0.12), (0.45, 1.0)]);
                p.stroke(vec![frame]);
                p.stroke(vec![stem]);
            }
        }
        5 => {
            let bar = p.line(&[(0.58, 0.02), (0.12, 0.03)]);
            let stem = p.line(&[(0.12, 0.03), (0.08, 0.46)]);
            let bowl = p.arc((0.3, 0.69), 0.28, 0.28, 215.0, 505.0);
            p.stroke(vec![bar]);
            p.stroke(vec![stem, bowl]);
        }
        6 => {
            let back = p.arc((0.58, 0.62), 0.54, 0.6, 255.0, 170.0);
            let lp = p.arc((0.3, 0.74), 0.26, 0.25, 180.0, 525.0);
            p.stroke(vec![back, lp]);
        }
        7 => {
            let hook = p.chance(0.2);
            let start = if hook { vec![p.pt(0.02, 0.15)] } else { vec![] };
            let body = p.line(&[(0.02, 0.03), (0.6, 0.02), (0.24, 1.0)]);
            p.stroke(vec![start, body]);
            if p.chance(0.25) {
                let bar = p.line(&[(0.2, 0.52), (0.52, 0.5)]);
                p.stroke(vec![bar]);
            }
        }
        8 => {
            let upper = p.arc((0.3, 0.25), 0.21, 0.24, 90.0, 455.0);
            let lower = p.arc((0.3, 0.74), 0.27, 0.26, 270.0, 635.0);
            p.stroke(vec![upper]);
            p.stroke(vec![lower]);
        }
        _ => {
            let lp = p.arc((0.3, 0.28), 0.26, 0.27, 10.0, 375.0);
            let tail = if p.chance(0.5) {
                p.line(&[(0.56, 0.32), (0.46, 1.0)])
            } else {
                p.arc((0.0, 0.3), 0.56, 0.7, 0.0, 80.0)
            };
            p.stroke(vec![lp, tail]);
        }
    }
    p.strokes
}
