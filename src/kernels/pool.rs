//! shaders/pool.wgsl: max_pool2d and avg_pool2d over NCHW input with PyTorch's attributes
//! (kernel_size, stride, padding, dilation for max, ceil_mode, count_include_pad and
//! divisor_override for avg), forward and backward.
//!
//! max_pool2d's forward also writes each output's argmax, as the index i·kw + j of the winning
//! tap within its window (an f32 holding a small integer exactly, −1 for a window with no
//! element inside the input). Its backward reads them rather than redoing each window's scan:
//! a pixel checks one stored value per window covering it instead of a whole window, and
//! forward and backward cannot disagree on a tie. Window-local indices, unlike flat ones, stay
//! exact in f32 for any input size and are what the f64 reference computes too.
//!
//! Backward gathers: one invocation per input element sums dy over the windows covering it,
//! so the result is deterministic and needs no atomics.

use super::check_len;
use super::conv::LOOP_BUDGET;
use crate::gpu::{workgroups_1d, Buffer, Cost, Dispatch, Gpu, KernelId};
use crate::{bail, Error, Result};

const WG: u32 = 256;

/// A pooling window over input `[batch, channels, size[0], size[1]]`; pairs are (h, w) as in
/// PyTorch. avg_pool2d takes no dilation (it must be 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool2d {
    pub batch: usize,
    pub channels: usize,
    pub size: [usize; 2],
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub padding: [usize; 2],
    pub dilation: [usize; 2],
    /// Output sizes round up rather than down, as long as the last window starts inside the
    /// input or its left padding.
    pub ceil_mode: bool,
}

/// What avg_pool2d divides a window's sum by: its size counting padding
/// (`count_include_pad`, PyTorch's default), without padding, or `divisor_override`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Divisor {
    pub count_include_pad: bool,
    pub divisor_override: Option<usize>,
}

impl Default for Divisor {
    fn default() -> Divisor {
        Divisor { count_include_pad: true, divisor_override: None }
    }
}

impl Pool2d {
    /// A `kernel` window with stride = kernel (PyTorch's default), no padding, dilation 1.
    pub fn new(batch: usize, channels: usize, size: [usize; 2], kernel: [usize; 2]) -> Pool2d {
        Pool2d { batch, channels, size, kernel, stride: kernel, padding: [0, 0], dilation: [1, 1], ceil_mode: false }
    }

    /// The window for input dims `[N, C, H, W]`, default attributes (set the rest with struct
    /// update).
    pub fn from_dims(op: &str, input: &[usize], kernel: [usize; 2]) -> Result<Pool2d> {
        match *input {
            [n, c, h, w] => Ok(Pool2d::new(n, c, [h, w], kernel)),
            _ => bail!(Shape, "{op}: input {input:?} must have 4 dims (NCHW)"),
        }
    }

    /// PyTorch's output size per axis, `⌊(H + 2p − d(k − 1) − 1) / s⌋ + 1` (⌈⌉ in ceil_mode,
    /// less one where the last window would start past the input and its left padding), or an
    /// error naming `op` and the shape where PyTorch refuses it.
    pub fn out_size(&self, op: &str) -> Result<[usize; 2]> {
        if self.size.contains(&0) || self.kernel.contains(&0) || self.stride.contains(&0) || self.dilation.contains(&0) {
            bail!(Shape, "{op} {}: input size, kernel, stride and dilation must be positive", self.describe());
        }
        let mut out = [0; 2];
        for a in 0..2 {
            let (k, s, p, d) = (self.kernel[a], self.stride[a], self.padding[a], self.dilation[a]);
            if p > k / 2 {
                bail!(Shape, "{op} {}: padding {p} along {} is more than half the kernel {k}, which PyTorch refuses", self.describe(), AXES[a]);
            }
            // In ceil_mode a window may overhang the padded input, so a window longer than
            // it still gives one output where the overhang is under a stride.
            let span = d * (k - 1) + 1;
            let padded = self.size[a] + 2 * p + if self.ceil_mode { s - 1 } else { 0 };
            if padded < span {
                bail!(Shape, "{op} {}: the window spans {span} but the padded input is only {} along {}", self.describe(), self.size[a] + 2 * p, AXES[a]);
            }
            let mut o = (padded - span) / s + 1;
            if self.ceil_mode && (o - 1) * s >= self.size[a] + p {
                o -= 1;
            }
            out[a] = o;
        }
        Ok(out)
    }

    pub fn input_len(&self) -> usize {
        self.batch * self.channels * self.size[0] * self.size[1]
    }

    /// Elements of the output (0 when the shape is invalid).
    pub fn output_len(&self) -> usize {
        self.out_size("pool2d").map_or(0, |[h, w]| self.batch * self.channels * h * w)
    }

    /// `(x [N, C, H, W], kernel [..], stride [..], padding [..], dilation [..], ceil_mode ..)`.
    pub fn describe(&self) -> String {
        let [h, w] = self.size;
        format!(
            "(x [{}, {}, {h}, {w}], kernel {:?}, stride {:?}, padding {:?}, dilation {:?}, ceil_mode {})",
            self.batch, self.channels, self.kernel, self.stride, self.padding, self.dilation, self.ceil_mode
        )
    }

    /// Loop iterations of one forward invocation (every row of the window, every tap) and of
    /// one backward invocation (every window covering a pixel along each axis, at most
    /// ⌊d(k − 1) / s⌋ + 1 and at most the output size).
    fn loop_iterations(&self, out: [usize; 2]) -> [usize; 2] {
        let [kh, kw] = self.kernel;
        let covering = |a: usize| (self.dilation[a] * (self.kernel[a] - 1) / self.stride[a] + 1).min(out[a]);
        [kh * (kw + 1), covering(0) * (covering(1) + 1)]
    }

    /// The shader's parameters after every check: output size, 32-bit indexing, llvmpipe's
    /// loop limit. `backward` picks which invocations are counted in `total`.
    fn params(&self, op: &str, divisor: Divisor, backward: bool) -> Result<Params> {
        let out = self.out_size(op)?;
        let longest = self.input_len().max(self.output_len());
        if longest > i32::MAX as usize {
            bail!(Limit, "{op} {}: {longest} elements, over the kernel's 2^31 indexing", self.describe());
        }
        let [forward_loops, backward_loops] = self.loop_iterations(out);
        let loops = if backward { backward_loops } else { forward_loops };
        if loops > LOOP_BUDGET {
            bail!(
                Limit,
                "{op} {}: {loops} loop iterations per invocation, over the {LOOP_BUDGET} that CPU adapters (llvmpipe) run before silently stopping",
                self.describe()
            );
        }
        if let Some(0) = divisor.divisor_override {
            bail!(Shape, "{op} {}: divisor_override must not be zero", self.describe());
        }
        let i = |v: usize| v as i32;
        Ok(Params {
            total: if backward { self.input_len() } else { self.output_len() } as u32,
            h: i(self.size[0]),
            w: i(self.size[1]),
            ho: i(out[0]),
            wo: i(out[1]),
            kh: i(self.kernel[0]),
            kw: i(self.kernel[1]),
            sh: i(self.stride[0]),
            sw: i(self.stride[1]),
            ph: i(self.padding[0]),
            pw: i(self.padding[1]),
            dh: i(self.dilation[0]),
            dw: i(self.dilation[1]),
            include_pad: u32::from(divisor.count_include_pad),
            divisor: divisor.divisor_override.map_or(0.0, |d| d as f32),
            lowest: f32::NEG_INFINITY,
        })
    }

    fn taps(&self) -> u64 {
        (self.kernel[0] * self.kernel[1]) as u64
    }
}

const AXES: [&str; 2] = ["h", "w"];

/// Field order and types match `Params` in shaders/pool.wgsl.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    total: u32,
    h: i32,
    w: i32,
    ho: i32,
    wo: i32,
    kh: i32,
    kw: i32,
    sh: i32,
    sw: i32,
    ph: i32,
    pw: i32,
    dh: i32,
    dw: i32,
    include_pad: u32,
    divisor: f32,
    lowest: f32,
}

fn dispatch(gpu: &Gpu, entry: &'static str, op: &str, params: &Params, bindings: &[(u32, &Buffer)], cost: Cost) -> Result<Dispatch> {
    let grid = workgroups_1d(params.total as usize, WG);
    gpu.dispatch(KernelId::new("pool", entry), op, params, bindings, grid, cost)
}

fn check_avg(op: &str, s: &Pool2d) -> Result<()> {
    if s.dilation != [1, 1] {
        return Err(Error::Shape(format!("{op} {}: avg_pool2d has no dilation (it must be 1)", s.describe())));
    }
    Ok(())
}

/// y = the max of each window, argmax = its tap index within the window (see the module).
pub fn max_pool2d(gpu: &Gpu, s: &Pool2d, x: &Buffer, y: &Buffer, argmax: &Buffer) -> Result<Dispatch> {
    let op = "max_pool2d";
    let params = s.params(op, Divisor::default(), false)?;
    let (n, m) = (s.input_len(), s.output_len());
    check_len(op, "input", x, n)?;
    check_len(op, "output", y, m)?;
    check_len(op, "argmax", argmax, m)?;
    let cost = Cost { flops: m as u64 * s.taps(), bytes: 4 * (m as u64 * s.taps() + 2 * m as u64) };
    dispatch(gpu, "max_forward", op, &params, &[(1, x), (3, y), (4, argmax)], cost)
}

/// dx[pixel] = Σ dy over the windows whose argmax (from [`max_pool2d`]) is that pixel.
pub fn max_pool2d_backward(gpu: &Gpu, s: &Pool2d, dy: &Buffer, argmax: &Buffer, dx: &Buffer) -> Result<Dispatch> {
    let op = "max_pool2d_backward";
    let params = s.params(op, Divisor::default(), true)?;
    let (n, m) = (s.input_len(), s.output_len());
    check_len(op, "upstream gradient dy", dy, m)?;
    check_len(op, "argmax", argmax, m)?;
    check_len(op, "dx", dx, n)?;
    let cost = Cost { flops: m as u64, bytes: 4 * (2 * m as u64 + n as u64) };
    dispatch(gpu, "max_backward", op, &params, &[(1, dy), (2, argmax), (3, dx)], cost)
}

/// y = the sum of each window over the input, divided as `divisor` says.
pub fn avg_pool2d(gpu: &Gpu, s: &Pool2d, divisor: Divisor, x: &Buffer, y: &Buffer) -> Result<Dispatch> {
    let op = "avg_pool2d";
    check_avg(op, s)?;
    let params = s.params(op, divisor, false)?;
    let (n, m) = (s.input_len(), s.output_len());
    check_len(op, "input", x, n)?;
    check_len(op, "output", y, m)?;
    let cost = Cost { flops: m as u64 * s.taps(), bytes: 4 * (m as u64 * s.taps() + m as u64) };
    dispatch(gpu, "avg_forward", op, &params, &[(1, x), (3, y)], cost)
}

/// dx[pixel] = Σ dy / divisor over the windows covering that pixel.
pub fn avg_pool2d_backward(gpu: &Gpu, s: &Pool2d, divisor: Divisor, dy: &Buffer, dx: &Buffer) -> Result<Dispatch> {
    let op = "avg_pool2d_backward";
    check_avg(op, s)?;
    let params = s.params(op, divisor, true)?;
    let (n, m) = (s.input_len(), s.output_len());
    check_len(op, "upstream gradient dy", dy, m)?;
    check_len(op, "dx", dx, n)?;
    let cost = Cost { flops: 2 * n as u64 * s.taps(), bytes: 4 * (n as u64 * s.taps() + n as u64) };
    dispatch(gpu, "avg_backward", op, &params, &[(1, dy), (3, dx)], cost)
}
