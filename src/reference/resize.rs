//! F.interpolate(mode='bilinear', align_corners=False) in f64, written as PyTorch's CPU
//! kernel reads: each output pixel blends the four source pixels around
//! (o + 0.5) · in / out − 0.5 (clamped at 0).

use crate::kernels::resize::Bilinear;

/// (index, next index, weight of the next) along one axis. The ratio in / out is rounded to
/// f32 as PyTorch (and the shader) compute it for float images; the rest is f64.
fn source(o: usize, size: usize, out: usize) -> (usize, usize, f64) {
    let scale = (size as f32 / out as f32) as f64;
    let src = ((o as f64 + 0.5) * scale - 0.5).max(0.0);
    let i0 = (src.floor() as usize).min(size - 1);
    (i0, (i0 + 1).min(size - 1), src - i0 as f64)
}

pub fn bilinear(s: &Bilinear, x: &[f64]) -> Vec<f64> {
    let ([h, w], [ho, wo]) = (s.size, s.out);
    let mut y = Vec::with_capacity(s.output_len());
    for plane in x.chunks(h * w).take(s.planes) {
        for oy in 0..ho {
            let (r0, r1, fy) = source(oy, h, ho);
            for ox in 0..wo {
                let (c0, c1, fx) = source(ox, w, wo);
                let at = |r: usize, c: usize| plane[r * w + c];
                let top = (1.0 - fx) * at(r0, c0) + fx * at(r0, c1);
                let bottom = (1.0 - fx) * at(r1, c0) + fx * at(r1, c1);
                y.push(s.alpha as f64 * ((1.0 - fy) * top + fy * bottom) + s.beta as f64);
            }
        }
    }
    y
}
