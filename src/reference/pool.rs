//! max_pool2d and avg_pool2d as PyTorch defines them, window by window. Backward scatters
//! each window's dy to its inputs (the GPU gathers per input instead), so the two are
//! independent formulas. Panics on invalid shapes (the GPU launchers are where they are
//! reported).

use crate::kernels::pool::{Divisor, Pool2d};

/// Calls `f(output index, window start, taps)` for every window, `taps` listing
/// (tap index i·kw + j, input index) of the window's taps inside the input, in scan order.
fn windows(s: &Pool2d, mut f: impl FnMut(usize, [isize; 2], &[(usize, usize)])) {
    let [ho, wo] = s.out_size("reference pool2d").expect("reference pool2d: invalid shape");
    let [h, w] = s.size;
    let [kh, kw] = s.kernel;
    let mut taps = Vec::with_capacity(kh * kw);
    for plane in 0..s.batch * s.channels {
        for oh in 0..ho {
            for ow in 0..wo {
                let start = [(oh * s.stride[0]) as isize - s.padding[0] as isize, (ow * s.stride[1]) as isize - s.padding[1] as isize];
                taps.clear();
                for i in 0..kh {
                    for j in 0..kw {
                        let ih = start[0] + (i * s.dilation[0]) as isize;
                        let iw = start[1] + (j * s.dilation[1]) as isize;
                        if ih >= 0 && iw >= 0 && (ih as usize) < h && (iw as usize) < w {
                            taps.push((i * kw + j, (plane * h + ih as usize) * w + iw as usize));
                        }
                    }
                }
                f((plane * ho + oh) * wo + ow, start, &taps);
            }
        }
    }
}

/// (y, argmax): each window's max, and the tap index of the element it came from. PyTorch's
/// rule: the first strictly greater value in scan order wins, a NaN always wins; a window with
/// no element inside the input gives −inf and argmax −1.
pub fn max_pool2d(s: &Pool2d, x: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let (mut y, mut argmax) = (vec![0.0; s.output_len()], vec![0.0; s.output_len()]);
    windows(s, |o, _, taps| {
        let (mut best, mut arg) = (f64::NEG_INFINITY, -1.0);
        for (k, &(tap, xi)) in taps.iter().enumerate() {
            if k == 0 || x[xi] > best || x[xi].is_nan() {
                (best, arg) = (x[xi], tap as f64);
            }
        }
        (y[o], argmax[o]) = (best, arg);
    });
    (y, argmax)
}

/// dx: each window's dy added to the input its argmax names.
pub fn max_pool2d_backward(s: &Pool2d, dy: &[f64], argmax: &[f64]) -> Vec<f64> {
    let mut dx = vec![0.0; s.input_len()];
    windows(s, |o, _, taps| {
        if let Some(&(_, xi)) = taps.iter().find(|&&(tap, _)| tap as f64 == argmax[o]) {
            dx[xi] += dy[o];
        }
    });
    dx
}

/// PyTorch's divisor of the window starting at `start`: see [`Divisor`].
fn divisor(s: &Pool2d, d: Divisor, start: [isize; 2], taps: usize) -> f64 {
    if let Some(v) = d.divisor_override {
        return v as f64;
    }
    if !d.count_include_pad {
        return taps as f64;
    }
    // The window clipped to the padded input: the ceil_mode overhang is never counted.
    let along = |a: usize| {
        let end = (start[a] + s.kernel[a] as isize).min((s.size[a] + s.padding[a]) as isize);
        (end - start[a]) as f64
    };
    along(0) * along(1)
}

pub fn avg_pool2d(s: &Pool2d, d: Divisor, x: &[f64]) -> Vec<f64> {
    assert_eq!(s.dilation, [1, 1], "reference avg_pool2d: no dilation");
    let mut y = vec![0.0; s.output_len()];
    windows(s, |o, start, taps| {
        y[o] = taps.iter().map(|&(_, xi)| x[xi]).sum::<f64>() / divisor(s, d, start, taps.len());
    });
    y
}

pub fn avg_pool2d_backward(s: &Pool2d, d: Divisor, dy: &[f64]) -> Vec<f64> {
    let mut dx = vec![0.0; s.input_len()];
    windows(s, |o, start, taps| {
        let share = dy[o] / divisor(s, d, start, taps.len());
        for &(_, xi) in taps {
            dx[xi] += share;
        }
    });
    dx
}
