//! Conv2d and ConvTranspose2d as PyTorch defines them, by plain loops over every tap. Each op
//! enumerates its (input, weight, output) index triples once; forward, data gradient and
//! weight gradient are the three ways of contracting that list. The transposed op is written
//! from its own definition (a scatter), not as the conv's gradient, so the GPU's reuse of the
//! conv kernels is tested against an independent formula. Panics on invalid shapes (the GPU
//! launchers are where they are reported).

use crate::kernels::conv::{Conv2d, ConvTranspose2d};

/// Calls `f(x index, w index, y index)` for every tap of the conv that lands inside x.
fn conv_taps(s: &Conv2d, mut f: impl FnMut(usize, usize, usize)) {
    let [ho, wo] = s.out_size().expect("reference conv2d: invalid shape");
    let [h, w] = s.size;
    let [kh, kw] = s.kernel;
    for n in 0..s.batch {
        for co in 0..s.out_channels {
            for oh in 0..ho {
                for ow in 0..wo {
                    let yi = ((n * s.out_channels + co) * ho + oh) * wo + ow;
                    for ci in 0..s.in_channels {
                        for i in 0..kh {
                            for j in 0..kw {
                                let ih = (oh * s.stride[0] + i * s.dilation[0]) as isize - s.padding[0] as isize;
                                let iw = (ow * s.stride[1] + j * s.dilation[1]) as isize - s.padding[1] as isize;
                                if ih < 0 || iw < 0 || ih >= h as isize || iw >= w as isize {
                                    continue;
                                }
                                let xi = ((n * s.in_channels + ci) * h + ih as usize) * w + iw as usize;
                                let wi = ((co * s.in_channels + ci) * kh + i) * kw + j;
                                f(xi, wi, yi);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Calls `f(x index, w index, y index)` for every input pixel's tap that lands inside y:
/// x[n, ci, ih, iw] * w[ci, co, i, j] goes to y[n, co, ih*s - p + i*d, iw*s - p + j*d].
fn transpose_taps(s: &ConvTranspose2d, mut f: impl FnMut(usize, usize, usize)) {
    let [ho, wo] = s.out_size().expect("reference conv_transpose2d: invalid shape");
    let [h, w] = s.size;
    let [kh, kw] = s.kernel;
    for n in 0..s.batch {
        for ci in 0..s.in_channels {
            for ih in 0..h {
                for iw in 0..w {
                    let xi = ((n * s.in_channels + ci) * h + ih) * w + iw;
                    for co in 0..s.out_channels {
                        for i in 0..kh {
                            for j in 0..kw {
                                let oh = (ih * s.stride[0] + i * s.dilation[0]) as isize - s.padding[0] as isize;
                                let ow = (iw * s.stride[1] + j * s.dilation[1]) as isize - s.padding[1] as isize;
                                if oh < 0 || ow < 0 || oh >= ho as isize || ow >= wo as isize {
                                    continue;
                                }
                                let yi = ((n * s.out_channels + co) * ho + oh as usize) * wo + ow as usize;
                                let wi = ((ci * s.out_channels + co) * kh + i) * kw + j;
                                f(xi, wi, yi);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Σ over batch and pixels of dy `[N, C, H, W]`, per channel; `plane` is H·W.
fn channel_sums(channels: usize, plane: usize, dy: &[f64]) -> Vec<f64> {
    let mut db = vec![0.0; channels];
    for (k, chunk) in dy.chunks(plane).enumerate() {
        db[k % channels] += chunk.iter().sum::<f64>();
    }
    db
}

fn with_bias(len: usize, plane: usize, channels: usize, bias: Option<&[f64]>) -> Vec<f64> {
    match bias {
        Some(b) => (0..len).map(|i| b[(i / plane) % channels]).collect(),
        None => vec![0.0; len],
    }
}

pub fn conv2d(s: &Conv2d, x: &[f64], w: &[f64], bias: Option<&[f64]>) -> Vec<f64> {
    let [ho, wo] = s.out_size().expect("reference conv2d: invalid shape");
    let mut y = with_bias(s.output_len(), ho * wo, s.out_channels, bias);
    conv_taps(s, |xi, wi, yi| y[yi] += x[xi] * w[wi]);
    y
}

pub fn conv2d_data_grad(s: &Conv2d, dy: &[f64], w: &[f64]) -> Vec<f64> {
    let mut dx = vec![0.0; s.input_len()];
    conv_taps(s, |xi, wi, yi| dx[xi] += dy[yi] * w[wi]);
    dx
}

pub fn conv2d_weight_grad(s: &Conv2d, x: &[f64], dy: &[f64]) -> Vec<f64> {
    let mut dw = vec![0.0; s.weight_len()];
    conv_taps(s, |xi, wi, yi| dw[wi] += x[xi] * dy[yi]);
    dw
}

pub fn conv2d_bias_grad(s: &Conv2d, dy: &[f64]) -> Vec<f64> {
    let [ho, wo] = s.out_size().expect("reference conv2d: invalid shape");
    channel_sums(s.out_channels, ho * wo, dy)
}

pub fn conv_transpose2d(s: &ConvTranspose2d, x: &[f64], w: &[f64], bias: Option<&[f64]>) -> Vec<f64> {
    let [ho, wo] = s.out_size().expect("reference conv_transpose2d: invalid shape");
    let mut y = with_bias(s.output_len(), ho * wo, s.out_channels, bias);
    transpose_taps(s, |xi, wi, yi| y[yi] += x[xi] * w[wi]);
    y
}

pub fn conv_transpose2d_data_grad(s: &ConvTranspose2d, dy: &[f64], w: &[f64]) -> Vec<f64> {
    let mut dx = vec![0.0; s.input_len()];
    transpose_taps(s, |xi, wi, yi| dx[xi] += dy[yi] * w[wi]);
    dx
}

pub fn conv_transpose2d_weight_grad(s: &ConvTranspose2d, x: &[f64], dy: &[f64]) -> Vec<f64> {
    let mut dw = vec![0.0; s.weight_len()];
    transpose_taps(s, |xi, wi, yi| dw[wi] += x[xi] * dy[yi]);
    dw
}

pub fn conv_transpose2d_bias_grad(s: &ConvTranspose2d, dy: &[f64]) -> Vec<f64> {
    let [ho, wo] = s.out_size().expect("reference conv_transpose2d: invalid shape");
    channel_sums(s.out_channels, ho * wo, dy)
}
