//! `ConvVariant::Tiled`: the three convolution GEMMs on the tile engine (shaders/gemm.wgsl),
//! the GPU kernels. The data gradient (ConvTranspose2d's forward) runs one product per stride
//! phase, each over only the taps that reach its pixels.

use super::{bytes, Geometry};
use crate::gpu::{Buffer, Dispatch, Gpu};
use crate::kernels::gemm::{self, Activation, Params, Product};
use crate::Result;

fn conv_params(g: &Geometry) -> Params {
    let i = |v: usize| v as i32;
    Params {
        cin: i(g.cin),
        cout: i(g.cout),
        h: i(g.size[0]),
        w: i(g.size[1]),
        ho: i(g.out[0]),
        wo: i(g.out[1]),
        kh: i(g.kernel[0]),
        kw: i(g.kernel[1]),
        sh: i(g.stride[0]),
        sw: i(g.stride[1]),
        ph: i(g.padding[0]),
        pw: i(g.padding[1]),
        dh: i(g.dilation[0]),
        dw: i(g.dilation[1]),
        ..Params::default()
    }
}

/// y = act(conv(x, w) (+ bias)): C[cout, n·ho·wo] = w [cout, cin·kh·kw] · im2col(x).
#[allow(clippy::too_many_arguments)]
pub(super) fn forward(gpu: &Gpu, g: &Geometry, x: &Buffer, w: &Buffer, bias: Option<&Buffer>, activation: Activation, y: &Buffer, op: &str) -> Result<Vec<Dispatch>> {
    let product = Product {
        entry: "conv_forward",
        m: g.cout,
        n: g.n * g.out[0] * g.out[1],
        k: g.cin * g.kernel[0] * g.kernel[1],
        params: conv_params(g),
        a: w,
        b: x,
        bias,
        c: y,
        accumulate: false,
        activation,
        dense_c: false,
        flops: g.gemm_flops(),
        bytes: bytes(g.x_len() + g.w_len() + g.y_len()),
    };
    gemm::run(gpu, op, product)
}

/// One stride phase along an axis: the pixels `first + t·stride` (`pixels` of them) whose
/// padded position is ≡ `phase` (mod stride), and the taps `tap0 + j·tap_step` (`taps` of
/// them) whose dilated offset is too, the only ones that land on a stride step from there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Phase {
    first: usize,
    pixels: usize,
    tap0: usize,
    tap_step: usize,
    taps: usize,
}

fn phase(size: usize, padding: usize, stride: usize, dilation: usize, kernel: usize, phase: usize) -> Phase {
    let first = (phase + stride - padding % stride) % stride;
    let pixels = if first < size { (size - first).div_ceil(stride) } else { 0 };
    let tap_step = stride / gcd(stride, dilation);
    let taps = match (0..tap_step).find(|r| r * dilation % stride == phase) {
        Some(r0) if r0 < kernel => (r0, (kernel - r0).div_ceil(tap_step)),
        _ => (0, 0),
    };
    Phase { first, pixels, tap0: taps.0, tap_step, taps: taps.1 }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// dx = act(conv's data gradient of dy (+ bias)): per phase (ph, pw), C[cin, n·pixels] =
/// wᵀ [cin, cout·taps] · dy gathered at the taps. A phase without taps stores act(0) (or
/// act(bias)), so every element of dx is written exactly once.
#[allow(clippy::too_many_arguments)]
pub(super) fn data_grad(gpu: &Gpu, g: &Geometry, dy: &Buffer, w: &Buffer, bias: Option<&Buffer>, activation: Activation, dx: &Buffer, op: &str) -> Result<Vec<Dispatch>> {
    let base = conv_params(g);
    let mut dispatches = Vec::new();
    for phase_h in 0..g.stride[0] {
        for phase_w in 0..g.stride[1] {
            let rows = phase(g.size[0], g.padding[0], g.stride[0], g.dilation[0], g.kernel[0], phase_h);
            let cols = phase(g.size[1], g.padding[1], g.stride[1], g.dilation[1], g.kernel[1], phase_w);
            if rows.pixels == 0 || cols.pixels == 0 {
                continue;
            }
            let i = |v: usize| v as i32;
            let params = Params {
                ih0: i(rows.first),
                iw0: i(cols.first),
                hp: i(rows.pixels),
                wp: i(cols.pixels),
                r0: i(rows.tap0),
                s0: i(cols.tap0),
                rstep: i(rows.tap_step),
                sstep: i(cols.tap_step),
                tr: i(rows.taps),
                ts: i(cols.taps),
                ..base
            };
            let n = g.n * rows.pixels * cols.pixels;
            let share = |len: usize| len * n / (g.n * g.size[0] * g.size[1]);
            let product = Product {
                entry: "conv_data",
                m: g.cin,
                n,
                k: g.cout * rows.taps * cols.taps,
                params,
                a: w,
                b: dy,
                bias,
                c: dx,
                accumulate: false,
                activation,
                dense_c: false,
                flops: g.gemm_flops() * n as u64 / (g.n * g.size[0] * g.size[1]) as u64,
                bytes: bytes(share(g.x_len()) + share(g.y_len()) + g.w_len() * rows.taps * cols.taps / (g.kernel[0] * g.kernel[1])),
            };
            dispatches.extend(gemm::run(gpu, op, product)?);
        }
    }
    Ok(dispatches)
}

/// dw (+)= conv's weight gradient: C[cout, cin·kh·kw] = dy [cout, n·ho·wo] · im2col(x)ᵀ, the
/// sum over pixels split over grid layers.
pub(super) fn weight_grad(gpu: &Gpu, g: &Geometry, x: &Buffer, dy: &Buffer, dw: &Buffer, accumulate: bool, op: &str) -> Result<Vec<Dispatch>> {
    let product = Product {
        entry: "conv_weight",
        m: g.cout,
        n: g.cin * g.kernel[0] * g.kernel[1],
        k: g.n * g.out[0] * g.out[1],
        params: conv_params(g),
        a: dy,
        b: x,
        bias: None,
        c: dw,
        accumulate,
        activation: Activation::Identity,
        dense_c: true,
        flops: g.gemm_flops(),
        bytes: bytes(g.x_len() + g.y_len() + g.w_len()),
    };
    gemm::run(gpu, op, product)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every pixel is in exactly one phase, and a phase's taps are exactly those that reach its
    /// pixels on a stride step, for strides 1-3, dilations 1-3 and paddings 0-3.
    #[test]
    fn phases_partition_pixels_and_taps() {
        for stride in 1..=3 {
            for dilation in 1..=3 {
                for padding in 0..=3 {
                    let (size, kernel) = (11, 5);
                    let mut seen = vec![0; size];
                    for p in 0..stride {
                        let ph = phase(size, padding, stride, dilation, kernel, p);
                        let taps: Vec<usize> = (0..ph.taps).map(|j| ph.tap0 + j * ph.tap_step).collect();
                        let want: Vec<usize> = (0..kernel).filter(|r| r * dilation % stride == p).collect();
                        assert_eq!(taps, want, "stride {stride} dilation {dilation} phase {p}");
                        for t in 0..ph.pixels {
                            let ih = ph.first + t * stride;
                            assert_eq!((ih + padding) % stride, p);
                            seen[ih] += 1;
                        }
                    }
                    assert!(seen.iter().all(|&s| s == 1), "stride {stride} padding {padding}: {seen:?}");
                }
            }
        }
    }
}
