//! Kernel throughput at the shapes kiln trains with: square matmuls in each variant, and the
//! DCGAN (MNIST) conv and conv-transpose layers forward and backward, each next to the
//! adapter's measured FMA peak.

use super::{time_dispatches, time_scaled, Peak};
use crate::gpu::{Dispatch, Gpu};
use crate::kernels::conv::{self, Conv2d, ConvTranspose2d, ConvVariant};
use crate::kernels::matmul::{matmul, Matmul, MatmulVariant};
use crate::Result;
use std::time::Instant;

/// One measured kernel: seconds per call and what that makes of its `Cost`.
#[derive(Clone, Debug, PartialEq)]
pub struct KernelRow {
    /// The op, as its launcher names it: `matmul`, `conv2d.weight_grad`, ...
    pub kernel: String,
    pub shape: String,
    pub variant: String,
    pub seconds: f64,
    pub gflops: f64,
    /// `gflops` over the adapter's FMA peak.
    pub fraction_of_peak: f64,
}

impl KernelRow {
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "kernel": self.kernel,
            "shape": self.shape,
            "variant": self.variant,
            "seconds": self.seconds,
            "gflops": self.gflops,
            "fraction_of_peak": self.fraction_of_peak,
        })
    }
}

/// A conv layer to measure forward, data gradient and weight gradient of.
#[derive(Clone, Copy, Debug)]
pub enum ConvLayer {
    Conv(&'static str, Conv2d),
    Transpose(&'static str, ConvTranspose2d),
}

/// What to measure.
#[derive(Clone, Debug)]
pub struct Suite {
    /// Square matmuls: (size, variant).
    pub matmuls: Vec<(usize, MatmulVariant)>,
    pub convs: Vec<ConvLayer>,
    /// Kernel families each conv op is measured with, side by side.
    pub conv_variants: Vec<ConvVariant>,
    /// Calls shorter than this are repeated within one submit until the submit is not, so
    /// that submit and wait overheads do not count.
    pub min_seconds: f64,
}

pub const MATMUL_SIZES: [usize; 5] = [256, 512, 1024, 2048, 4096];

impl Suite {
    /// Matmuls at [`MATMUL_SIZES`] and the DCGAN layers at batch 64. The simple kernel stops at
    /// 512², and so does the tiled one on CPU adapters, which never pick it: on lavapipe
    /// (2 busy cores) it runs at ~0.2 GFLOP/s, 12 s for one 1024² call. On GPUs the tiled one
    /// also runs 4096² (the size whose share of the FMA peak the Speed issue sets a goal for).
    /// Convs run blocked and windowed on CPU adapters (the tile engine would take minutes
    /// there), tiled and blocked elsewhere: what `Auto` picks beside the kernel it replaced.
    pub fn training(gpu: &Gpu) -> Suite {
        let cpu = gpu.info.device_type == wgpu::DeviceType::Cpu;
        let mut matmuls = Vec::new();
        for variant in MatmulVariant::ALL {
            let largest = match variant {
                MatmulVariant::Simple => 512,
                MatmulVariant::Tiled if cpu => 512,
                MatmulVariant::Tiled => 4096,
                // Windows are a CPU-adapter kernel; elsewhere it would measure `Blocked` again.
                MatmulVariant::Windowed if !cpu => 0,
                _ => 2048,
            };
            matmuls.extend(MATMUL_SIZES.iter().filter(|&&n| n <= largest).map(|&n| (n, variant)));
        }
        let conv_variants = if cpu { vec![ConvVariant::Blocked, ConvVariant::Windowed] } else { vec![ConvVariant::Tiled, ConvVariant::Blocked] };
        Suite { matmuls, convs: dcgan_layers(64), conv_variants, min_seconds: 0.2 }
    }
}

/// The conv layers of kiln's MNIST DCGAN: the discriminator's two strided convs and the
/// generator's three transposed convs, all 5×5 with padding 2.
pub fn dcgan_layers(batch: usize) -> Vec<ConvLayer> {
    let conv = |cin, cout, size| Conv2d { stride: [2, 2], padding: [2, 2], ..Conv2d::new(batch, cin, cout, [size, size], [5, 5]) };
    let transpose = |cin, cout, size, stride, output_padding| ConvTranspose2d {
        stride: [stride; 2],
        padding: [2, 2],
        output_padding: [output_padding; 2],
        ..ConvTranspose2d::new(batch, cin, cout, [size, size], [5, 5])
    };
    vec![
        ConvLayer::Conv("disc.1", conv(1, 64, 28)),
        ConvLayer::Conv("disc.2", conv(64, 128, 14)),
        ConvLayer::Transpose("gen.1", transpose(256, 128, 7, 1, 0)),
        ConvLayer::Transpose("gen.2", transpose(128, 64, 7, 2, 1)),
        ConvLayer::Transpose("gen.3", transpose(64, 1, 14, 2, 1)),
    ]
}

/// Measures every kernel of `suite`, calling `on_row` as each row is ready (a full run on a
/// CPU adapter takes a minute or two), and returns the rows.
pub fn bench_kernels(gpu: &Gpu, peak: &Peak, suite: &Suite, mut on_row: impl FnMut(&KernelRow)) -> Result<Vec<KernelRow>> {
    let mut rows = Vec::new();
    let mut push = |kernel: &str, shape: String, variant: &str, (flops, seconds, tiles): (u64, f64, String)| {
        let gflops = flops as f64 / seconds / 1e9;
        let row = KernelRow {
            kernel: kernel.to_string(),
            shape,
            variant: if tiles.is_empty() { variant.to_string() } else { format!("{variant} {tiles}") },
            seconds,
            gflops,
            fraction_of_peak: gflops / peak.fma_gflops,
        };
        on_row(&row);
        rows.push(row);
    };
    // Operands are zeros: these kernels' speed does not depend on the values, and zeros
    // cannot turn into denormals.
    let mut sizes: Vec<usize> = suite.matmuls.iter().map(|&(n, _)| n).collect();
    sizes.sort();
    sizes.dedup();
    for n in sizes {
        let (a, b, c) = (gpu.zeros("bench.a", n * n)?, gpu.zeros("bench.b", n * n)?, gpu.zeros("bench.c", n * n)?);
        for &(_, variant) in suite.matmuls.iter().filter(|&&(size, _)| size == n) {
            let shape = Matmul { m: n, n, k: n, variant, ..Default::default() };
            let timing = measure(gpu, suite.min_seconds, || matmul(gpu, &shape, &a, &b, None, &c))?;
            push("matmul", format!("{n}×{n}×{n}"), &format!("{variant:?}").to_lowercase(), timing);
        }
    }
    for layer in &suite.convs {
        for &variant in &suite.conv_variants {
            let name = format!("{variant:?}").to_lowercase();
            match *layer {
                ConvLayer::Conv(layer, s) => {
                    let s = Conv2d { variant, ..s };
                    let (x, w, y) = (gpu.zeros("bench.x", s.input_len())?, gpu.zeros("bench.w", s.weight_len())?, gpu.zeros("bench.y", s.output_len())?);
                    let [ho, wo] = s.out_size()?;
                    let shape = format!("{layer} {}→{} k{} s{} p{}", nchw(s.batch, s.in_channels, s.size), nchw(s.batch, s.out_channels, [ho, wo]), s.kernel[0], s.stride[0], s.padding[0]);
                    push("conv2d", shape.clone(), &name, measure(gpu, suite.min_seconds, || conv::conv2d(gpu, &s, &x, &w, None, &y))?);
                    push("conv2d.data_grad", shape.clone(), &name, measure(gpu, suite.min_seconds, || conv::conv2d_data_grad(gpu, &s, &y, &w, &x))?);
                    push("conv2d.weight_grad", shape, &name, measure(gpu, suite.min_seconds, || conv::conv2d_weight_grad(gpu, &s, &x, &y, &w, false))?);
                }
                ConvLayer::Transpose(layer, s) => {
                    let s = ConvTranspose2d { variant, ..s };
                    let (x, w, y) = (gpu.zeros("bench.x", s.input_len())?, gpu.zeros("bench.w", s.weight_len())?, gpu.zeros("bench.y", s.output_len())?);
                    let [ho, wo] = s.out_size()?;
                    let shape = format!(
                        "{layer} {}→{} k{} s{} p{} op{}",
                        nchw(s.batch, s.in_channels, s.size),
                        nchw(s.batch, s.out_channels, [ho, wo]),
                        s.kernel[0],
                        s.stride[0],
                        s.padding[0],
                        s.output_padding[0]
                    );
                    push("conv_transpose2d", shape.clone(), &name, measure(gpu, suite.min_seconds, || conv::conv_transpose2d(gpu, &s, &x, &w, None, &y))?);
                    push("conv_transpose2d.data_grad", shape.clone(), &name, measure(gpu, suite.min_seconds, || conv::conv_transpose2d_data_grad(gpu, &s, &y, &w, &x))?);
                    push("conv_transpose2d.weight_grad", shape, &name, measure(gpu, suite.min_seconds, || conv::conv_transpose2d_weight_grad(gpu, &s, &x, &y, &w, false))?);
                }
            }
        }
    }
    Ok(rows)
}

fn nchw(n: usize, c: usize, [h, w]: [usize; 2]) -> String {
    format!("[{n},{c},{h},{w}]")
}

/// (flops, seconds) of one call of the op that `make` builds. The first run compiles the
/// pipelines and bounds the time of a call. A call at least `min_seconds` long is timed alone,
/// the median of up to three more runs within about two seconds (one run for the big shapes
/// of CPU adapters, which take seconds each); a shorter one by `time_scaled`, which repeats it
/// within one submit.
fn measure(gpu: &Gpu, min_seconds: f64, make: impl FnMut() -> Result<Vec<Dispatch>>) -> Result<(u64, f64, String)> {
    let mut make = make;
    let call = make()?;
    let (flops, seconds) = time_call(gpu, min_seconds, &call, make)?;
    Ok((flops, seconds, tiles(&call)))
}

/// The tile engine's tile shapes a call ran (`128x128x8`: rows, columns, k step), from its
/// pipeline constants; empty for the other kernels.
fn tiles(call: &[Dispatch]) -> String {
    let mut shapes: Vec<String> = call.iter().filter_map(|d| crate::kernels::gemm::Tile::of_constants(d.kernel.constants)).map(|t| t.name()).collect();
    shapes.dedup();
    shapes.join("+")
}

fn time_call(gpu: &Gpu, min_seconds: f64, call: &[Dispatch], mut make: impl FnMut() -> Result<Vec<Dispatch>>) -> Result<(u64, f64)> {
    let flops: u64 = call.iter().map(|d| d.cost.flops).sum();
    let start = Instant::now();
    gpu.run(call)?;
    let first = start.elapsed().as_secs_f64();
    if first > 1.0 {
        let start = Instant::now();
        gpu.run(call)?;
        return Ok((flops, start.elapsed().as_secs_f64()));
    }
    if first >= min_seconds {
        let repeats = ((2.0 / first) as usize).clamp(1, 3);
        return Ok((flops, time_dispatches(gpu, call, repeats)?));
    }
    let mut calls = 1;
    let (_, seconds) = time_scaled(gpu, min_seconds, |scale| {
        calls = scale;
        let mut dispatches = Vec::new();
        for _ in 0..scale {
            dispatches.extend(make()?);
        }
        Ok(dispatches)
    })?;
    Ok((flops, seconds / calls as f64))
}
