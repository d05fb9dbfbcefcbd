//! shaders/conv.wgsl: Conv2d and ConvTranspose2d (NCHW, PyTorch semantics and weight layouts),
//! forward, data, weight and bias gradients.
//!
//! Both ops run on the three implicit-GEMM entries of one conv geometry. ConvTranspose2d is
//! Conv2d with the roles of input and output exchanged: its forward is the conv's data
//! gradient, its data gradient is the conv's forward, and its weight `[Cin, Cout, kh, kw]` is
//! the conv weight `[Cout, Cin, kh, kw]` of that swapped conv, stored identically.

mod window;
mod tiled;

pub(crate) use window::{has_subgroups_of_8, has_windows, WINDOW};

use super::{check_len, even_slices};
use super::gemm::Activation;
use crate::gpu::{workgroups_1d, Buffer, Cost, Dispatch, Gpu, KernelId};
use crate::{Error, Result};

/// Which kernels compute a convolution. `Auto` picks per adapter; the others force one family
/// (tests check both against the reference, `kiln bench` compares them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ConvVariant {
    #[default]
    Auto,
    /// shaders/conv.wgsl: register-blocked implicit GEMMs over storage buffers, for every
    /// adapter and shape; the oracle.
    Blocked,
    /// shaders/conv_window*.wgsl where they apply, conv.wgsl elsewhere: operands read from
    /// uniform-buffer windows of one sample each (samples up to 16,384 elements), which
    /// llvmpipe loads far faster than storage buffers. Forward and data gradient also need
    /// subgroups of 8 (lavapipe has them, llvmpipe-GL not).
    Windowed,
    /// shaders/gemm.wgsl, the tile engine: implicit GEMMs through workgroup-memory tiles, the
    /// im2col gathered in the tile load, strided data gradients split into their stride
    /// phases. The GPU kernels.
    Tiled,
}

impl ConvVariant {
    pub const ALL: [ConvVariant; 3] = [ConvVariant::Blocked, ConvVariant::Windowed, ConvVariant::Tiled];

    /// The concrete variant for `gpu`: windows on CPU adapters (lavapipe, 2 busy cores, DCGAN
    /// layers at batch 64: 5-10x the blocked kernels; workgroup memory and barriers cost them
    /// more than they save), tiles on GPUs, where workgroup memory is what feeds the FMAs and
    /// uniform buffers indexed per invocation serialize.
    pub fn resolve(self, gpu: &Gpu) -> ConvVariant {
        use crate::gpu::Kernels;
        match (self, gpu.kernels) {
            (ConvVariant::Auto, Kernels::Tiled) => ConvVariant::Tiled,
            (ConvVariant::Auto, Kernels::Windowed) => ConvVariant::Windowed,
            (ConvVariant::Auto, Kernels::Blocked) => ConvVariant::Blocked,
            (ConvVariant::Auto, Kernels::Auto) if gpu.info.device_type == wgpu::DeviceType::Cpu => ConvVariant::Windowed,
            (ConvVariant::Auto, Kernels::Auto) => ConvVariant::Tiled,
            (v, _) => v,
        }
    }
}

/// Conv2d: input `[batch, in_channels, size[0], size[1]]`, weight
/// `[out_channels, in_channels, kernel[0], kernel[1]]`; pairs are (h, w) as in PyTorch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2d {
    pub batch: usize,
    pub in_channels: usize,
    pub out_channels: usize,
    pub size: [usize; 2],
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub padding: [usize; 2],
    pub dilation: [usize; 2],
    /// Only 1 is supported; carried so that PyTorch's attributes can be passed through and
    /// anything else refused with an error.
    pub groups: usize,
    pub variant: ConvVariant,
}

/// ConvTranspose2d: input `[batch, in_channels, size[0], size[1]]`, weight
/// `[in_channels, out_channels, kernel[0], kernel[1]]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvTranspose2d {
    pub batch: usize,
    pub in_channels: usize,
    pub out_channels: usize,
    pub size: [usize; 2],
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub padding: [usize; 2],
    pub output_padding: [usize; 2],
    pub dilation: [usize; 2],
    pub groups: usize,
    pub variant: ConvVariant,
}

impl Conv2d {
    /// Stride 1, no padding, dilation 1, one group; set the other fields with struct update.
    pub fn new(batch: usize, in_channels: usize, out_channels: usize, size: [usize; 2], kernel: [usize; 2]) -> Conv2d {
        Conv2d { batch, in_channels, out_channels, size, kernel, stride: [1, 1], padding: [0, 0], dilation: [1, 1], groups: 1, variant: ConvVariant::Auto }
    }

    /// `(H + 2p − d(k − 1) − 1) / s + 1` per axis, or an error naming the op and shape.
    pub fn out_size(&self) -> Result<[usize; 2]> {
        self.check()?;
        let mut out = [0; 2];
        for a in 0..2 {
            let span = self.dilation[a] * (self.kernel[a] - 1) + 1;
            let padded = self.size[a] + 2 * self.padding[a];
            if padded < span {
                return Err(Error::Shape(format!(
                    "conv2d {}: kernel spans {span} but the padded input is only {padded} along {}",
                    self.describe(),
                    AXES[a]
                )));
            }
            out[a] = (padded - span) / self.stride[a] + 1;
        }
        Ok(out)
    }

    pub fn input_len(&self) -> usize {
        self.batch * self.in_channels * self.size[0] * self.size[1]
    }

    pub fn weight_len(&self) -> usize {
        self.out_channels * self.in_channels * self.kernel[0] * self.kernel[1]
    }

    /// Elements of the output (0 when the shape is invalid).
    pub fn output_len(&self) -> usize {
        self.out_size().map_or(0, |[h, w]| self.batch * self.out_channels * h * w)
    }

    /// The op for input dims `[N, Cin, H, W]` and weight dims `[Cout, Cin, kh, kw]` (stride 1,
    /// no padding: set the rest with struct update); errors name both shapes.
    pub fn from_dims(input: &[usize], weight: &[usize]) -> Result<Conv2d> {
        let (x, w) = four_dims("conv2d", input, weight)?;
        if w[1] != x[1] {
            return Err(Error::Shape(format!("conv2d: input {x:?} has {} channels, weight {w:?} expects {}", x[1], w[1])));
        }
        Ok(Conv2d::new(x[0], x[1], w[0], [x[2], x[3]], [w[2], w[3]]))
    }

    /// `x [N, C, H, W], weight [..], stride [..], padding [..], dilation [..]` for errors.
    pub fn describe(&self) -> String {
        format!(
            "(x {}, weight {}, stride {:?}, padding {:?}, dilation {:?})",
            self.x_dims(),
            self.w_dims(),
            self.stride,
            self.padding,
            self.dilation
        )
    }

    fn x_dims(&self) -> String {
        dims(self.batch, self.in_channels, self.size)
    }
    fn y_dims(&self, out: [usize; 2]) -> String {
        dims(self.batch, self.out_channels, out)
    }
    fn w_dims(&self) -> String {
        dims(self.out_channels, self.in_channels, self.kernel)
    }

    fn check(&self) -> Result<()> {
        check_attrs("conv2d", &self.describe(), self.in_channels, self.out_channels, self.kernel, self.stride, self.dilation, self.groups)
    }

    fn geometry(&self) -> Result<Geometry> {
        let [ho, wo] = self.out_size()?;
        Ok(Geometry {
            n: self.batch,
            cin: self.in_channels,
            cout: self.out_channels,
            size: self.size,
            out: [ho, wo],
            kernel: self.kernel,
            stride: self.stride,
            padding: self.padding,
            dilation: self.dilation,
            variant: self.variant,
        })
    }
}

impl ConvTranspose2d {
    /// Stride 1, no padding or output padding, dilation 1, one group.
    pub fn new(batch: usize, in_channels: usize, out_channels: usize, size: [usize; 2], kernel: [usize; 2]) -> ConvTranspose2d {
        ConvTranspose2d {
            batch,
            in_channels,
            out_channels,
            size,
            kernel,
            stride: [1, 1],
            padding: [0, 0],
            output_padding: [0, 0],
            dilation: [1, 1],
            groups: 1,
            variant: ConvVariant::Auto,
        }
    }

    /// `(H − 1)s − 2p + d(k − 1) + output_padding + 1` per axis, or an error naming the op.
    pub fn out_size(&self) -> Result<[usize; 2]> {
        check_attrs("conv_transpose2d", &self.describe(), self.in_channels, self.out_channels, self.kernel, self.stride, self.dilation, self.groups)?;
        let mut out = [0; 2];
        for a in 0..2 {
            let (s, d, op) = (self.stride[a], self.dilation[a], self.output_padding[a]);
            if op >= s && op >= d {
                return Err(Error::Shape(format!(
                    "conv_transpose2d {}: output_padding {op} along {} must be smaller than stride or dilation",
                    self.describe(),
                    AXES[a]
                )));
            }
            let full = (self.size[a].max(1) - 1) * s + d * (self.kernel[a] - 1) + op + 1;
            if self.size[a] == 0 || full <= 2 * self.padding[a] {
                return Err(Error::Shape(format!(
                    "conv_transpose2d {}: output {} would be {} - {} (padding), not positive",
                    self.describe(),
                    AXES[a],
                    full,
                    2 * self.padding[a]
                )));
            }
            out[a] = full - 2 * self.padding[a];
        }
        Ok(out)
    }

    pub fn input_len(&self) -> usize {
        self.batch * self.in_channels * self.size[0] * self.size[1]
    }

    pub fn weight_len(&self) -> usize {
        self.in_channels * self.out_channels * self.kernel[0] * self.kernel[1]
    }

    pub fn output_len(&self) -> usize {
        self.out_size().map_or(0, |[h, w]| self.batch * self.out_channels * h * w)
    }

    /// The op for input dims `[N, Cin, H, W]` and weight dims `[Cin, Cout, kh, kw]`.
    pub fn from_dims(input: &[usize], weight: &[usize]) -> Result<ConvTranspose2d> {
        let (x, w) = four_dims("conv_transpose2d", input, weight)?;
        if w[0] != x[1] {
            return Err(Error::Shape(format!(
                "conv_transpose2d: input {x:?} has {} channels, weight {w:?} expects {}",
                x[1], w[0]
            )));
        }
        Ok(ConvTranspose2d::new(x[0], x[1], w[1], [x[2], x[3]], [w[2], w[3]]))
    }

    /// As [`Conv2d::describe`], with output_padding.
    pub fn describe(&self) -> String {
        format!(
            "(x {}, weight {}, stride {:?}, padding {:?}, output_padding {:?}, dilation {:?})",
            self.x_dims(),
            self.w_dims(),
            self.stride,
            self.padding,
            self.output_padding,
            self.dilation
        )
    }

    fn x_dims(&self) -> String {
        dims(self.batch, self.in_channels, self.size)
    }
    fn y_dims(&self, out: [usize; 2]) -> String {
        dims(self.batch, self.out_channels, out)
    }
    fn w_dims(&self) -> String {
        dims(self.in_channels, self.out_channels, self.kernel)
    }

    /// The conv whose data gradient this op is: it maps our output back to our input.
    fn geometry(&self) -> Result<Geometry> {
        let out = self.out_size()?;
        Ok(Geometry {
            n: self.batch,
            cin: self.out_channels,
            cout: self.in_channels,
            size: out,
            // Set, not recomputed: with output_padding >= stride (allowed below dilation) the
            // conv formula would give one more row than this op's input has.
            out: self.size,
            kernel: self.kernel,
            stride: self.stride,
            padding: self.padding,
            dilation: self.dilation,
            variant: self.variant,
        })
    }
}

const AXES: [&str; 2] = ["h", "w"];

#[allow(clippy::too_many_arguments)]
fn check_attrs(op: &str, shape: &str, cin: usize, cout: usize, kernel: [usize; 2], stride: [usize; 2], dilation: [usize; 2], groups: usize) -> Result<()> {
    if groups != 1 {
        return Err(Error::Shape(format!("{op} {shape}: groups = {groups} is not supported (only 1)")));
    }
    if cin == 0 || cout == 0 || kernel.contains(&0) || stride.contains(&0) || dilation.contains(&0) {
        return Err(Error::Shape(format!("{op} {shape}: channels, kernel, stride and dilation must be positive")));
    }
    Ok(())
}

fn four_dims(op: &str, input: &[usize], weight: &[usize]) -> Result<([usize; 4], [usize; 4])> {
    match (<[usize; 4]>::try_from(input), <[usize; 4]>::try_from(weight)) {
        (Ok(x), Ok(w)) => Ok((x, w)),
        _ => Err(Error::Shape(format!("{op}: input {input:?} and weight {weight:?} must both have 4 dims (NCHW)"))),
    }
}

fn dims(n: usize, c: usize, hw: [usize; 2]) -> String {
    format!("[{n}, {c}, {}, {}]", hw[0], hw[1])
}

/// A conv2d in the shader's terms: x `[n, cin, size]` -> y `[n, cout, out]`.
#[derive(Clone, Copy, Debug, Default)]
struct Geometry {
    n: usize,
    cin: usize,
    cout: usize,
    size: [usize; 2],
    out: [usize; 2],
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
    dilation: [usize; 2],
    variant: ConvVariant,
}

/// Field order and types match `Params` in shaders/conv.wgsl.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: i32,
    cin: i32,
    cout: i32,
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
    flag: i32,
    tasks: u32,
    rows: i32,
    seg: i32,
    nseg: i32,
    chunks: i32,
    c_begin: i32,
    c_end: i32,
}

/// Invocations per workgroup, and outputs per invocation along each of the two blocked
/// dimensions of the GEMM entries (`CB` and `PX` in the shader).
const WG: u32 = 64;
const BLOCK: usize = 8;

/// llvmpipe (lavapipe, and GL on Mesa) stops an invocation's loops after 65,535 iterations
/// counted over all of them, without an error. No invocation here may come near that:
/// forward and data-gradient shapes beyond it are refused, long sums are split into slices.
pub(crate) const LOOP_BUDGET: usize = 60_000;
/// Most iterations of one slice of a split sum, with room for the loops around it.
const SLICE_ITERATIONS: usize = 48_000;
/// Invocations worth having in flight: weight-gradient sums are split further (down to
/// slices of about 1K pixels) until there are this many, for GPUs with many cores.
const PARALLEL_INVOCATIONS: usize = 16_384;

impl Geometry {
    fn x_len(&self) -> usize {
        self.n * self.cin * self.size[0] * self.size[1]
    }
    fn y_len(&self) -> usize {
        self.n * self.cout * self.out[0] * self.out[1]
    }
    fn w_len(&self) -> usize {
        self.cout * self.cin * self.kernel[0] * self.kernel[1]
    }
    /// Multiply-adds of the implicit GEMM, times two.
    fn gemm_flops(&self) -> u64 {
        2 * self.y_len() as u64 * (self.cin * self.kernel[0] * self.kernel[1]) as u64
    }

    /// Loop iterations of one forward (`reduced` = cin) or data-gradient (`reduced` = cout)
    /// invocation: every tap, the channel loop of each, and the store loops. (Loops over the
    /// 8 channels of a block have constant bounds; the driver unrolls them.)
    fn loop_iterations(&self, reduced: usize) -> usize {
        self.kernel[0] * (2 + self.kernel[1] * (reduced + 1)) + 64
    }

    /// Most channels one forward or data-gradient dispatch may sum within [`LOOP_BUDGET`].
    /// (The largest c with loop_iterations(c) ≤ LOOP_BUDGET; 0 where one channel is too many.)
    fn channels_per_dispatch(&self) -> usize {
        let [kh, kw] = self.kernel;
        (((LOOP_BUDGET - 64) / kh.max(1)).saturating_sub(2) / kw.max(1)).saturating_sub(1)
    }

    fn params(&self, flag: bool, tasks: usize, op: &str) -> Result<Params> {
        // Every index the shader forms is below one of the three tensor lengths.
        let largest = self.x_len().max(self.y_len()).max(self.w_len()).max(tasks);
        if largest > i32::MAX as usize {
            return Err(Error::Limit(format!("{op}: {largest} elements, over the kernels' 2^31 indexing")));
        }
        let i = |v: usize| v as i32;
        Ok(Params {
            n: i(self.n),
            cin: i(self.cin),
            cout: i(self.cout),
            h: i(self.size[0]),
            w: i(self.size[1]),
            ho: i(self.out[0]),
            wo: i(self.out[1]),
            kh: i(self.kernel[0]),
            kw: i(self.kernel[1]),
            sh: i(self.stride[0]),
            sw: i(self.stride[1]),
            ph: i(self.padding[0]),
            pw: i(self.padding[1]),
            dh: i(self.dilation[0]),
            dw: i(self.dilation[1]),
            flag: i32::from(flag),
            tasks: tasks as u32,
            rows: 0,
            seg: 0,
            nseg: 1,
            chunks: 1,
            c_begin: 0,
            c_end: 0,
        })
    }
}

fn kernel(entry: &'static str) -> KernelId {
    KernelId::new("conv", entry)
}

fn bytes(elements: usize) -> u64 {
    elements as u64 * 4
}

fn check_bias(op: &str, bias: Option<&Buffer>, channels: usize) -> Result<()> {
    match bias {
        Some(b) => check_len(op, &format!("bias [{channels}]"), b, channels),
        None => Ok(()),
    }
}

/// Ranges of the `reduced` channels that one dispatch each sums, so that no invocation comes
/// near llvmpipe's loop limit; a refusal where even one channel's taps are too many.
fn channel_slices(op: &str, g: &Geometry, reduced: usize) -> Result<Vec<(usize, usize)>> {
    let most = g.channels_per_dispatch();
    if most == 0 {
        return Err(Error::Limit(format!(
            "{op}: a {}x{} kernel is {} loop iterations per output block for one channel, \
             over the {LOOP_BUDGET} that CPU adapters (llvmpipe) run before silently stopping",
            g.kernel[0],
            g.kernel[1],
            g.loop_iterations(1)
        )));
    }
    Ok(even_slices(reduced, most).collect())
}

/// Bits of conv.wgsl's `flag` for forward and data_grad.
const ADD_BIAS: i32 = 1;
const ACCUMULATE: i32 = 2;

/// One dispatch of `entry` per slice of the reduced channels: the first adds the bias, the
/// later ones add to what the earlier ones stored.
#[allow(clippy::too_many_arguments)]
fn channel_sliced(
    gpu: &Gpu,
    entry: &'static str,
    slices: &[(usize, usize)],
    params: Params,
    buffers: &[(u32, &Buffer); 4],
    tasks: usize,
    cost: Cost,
    reduced: usize,
) -> Result<Vec<Dispatch>> {
    slices
        .iter()
        .map(|&(begin, end)| {
            let flag = if begin == 0 { params.flag * ADD_BIAS } else { ACCUMULATE };
            let p = Params { flag, c_begin: begin as i32, c_end: end as i32, ..params };
            let share = |v: u64| v * (end - begin) as u64 / reduced as u64;
            let cost = Cost { flops: share(cost.flops), bytes: share(cost.bytes) };
            gpu.dispatch(kernel(entry), "", &p, buffers, workgroups_1d(tasks, WG), cost)
        })
        .collect()
}

/// y = conv(x, w) (+ bias): windows where they apply, else one invocation per 8 output
/// channels x 8 output columns. An activation is applied only by the tile engine's epilogue.
#[allow(clippy::too_many_arguments)]
fn gemm_forward(gpu: &Gpu, g: &Geometry, x: &Buffer, w: &Buffer, bias: Option<&Buffer>, act: Activation, y: &Buffer, op: &str) -> Result<Vec<Dispatch>> {
    if g.variant.resolve(gpu) == ConvVariant::Tiled {
        g.params(false, 0, op)?;
        return tiled::forward(gpu, g, x, w, bias, act, y, op);
    }
    only_tiled(g, gpu, act, op)?;
    if g.variant.resolve(gpu) == ConvVariant::Windowed {
        g.params(false, 0, op)?;
        if let Some(d) = window::forward(gpu, g, x, w, bias, y, op)? {
            return Ok(d);
        }
    }
    let slices = channel_slices(op, g, g.cin)?;
    let tasks = g.n * g.cout.div_ceil(BLOCK) * g.out[0] * g.out[1].div_ceil(BLOCK);
    let params = g.params(bias.is_some(), tasks, op)?;
    let b = bias.unwrap_or(&gpu.dummy);
    let extra = if bias.is_some() { g.y_len() + g.cout } else { 0 };
    let cost = Cost { flops: g.gemm_flops() + extra as u64, bytes: bytes(g.x_len() + g.w_len() + g.y_len() + extra) };
    channel_sliced(gpu, "forward", &slices, params, &[(1, x), (2, w), (3, b), (4, y)], tasks, cost, g.cin)
}

/// dx = conv's data gradient of dy (+ bias): windows where they apply, else 8 input
/// channels x 8 columns of one residue class per invocation.
#[allow(clippy::too_many_arguments)]
fn gemm_data_grad(gpu: &Gpu, g: &Geometry, dy: &Buffer, w: &Buffer, bias: Option<&Buffer>, act: Activation, dx: &Buffer, op: &str) -> Result<Vec<Dispatch>> {
    if g.variant.resolve(gpu) == ConvVariant::Tiled {
        g.params(false, 0, op)?;
        return tiled::data_grad(gpu, g, dy, w, bias, act, dx, op);
    }
    only_tiled(g, gpu, act, op)?;
    if g.variant.resolve(gpu) == ConvVariant::Windowed {
        g.params(false, 0, op)?;
        if let Some(d) = window::data_grad(gpu, g, dy, w, bias, dx, op)? {
            return Ok(d);
        }
    }
    let slices = channel_slices(op, g, g.cout)?;
    let [sh, sw] = g.stride;
    let tasks = g.n * g.cin.div_ceil(BLOCK) * sh * sw * g.size[0].div_ceil(sh) * g.size[1].div_ceil(sw).div_ceil(BLOCK);
    let params = g.params(bias.is_some(), tasks, op)?;
    let b = bias.unwrap_or(&gpu.dummy);
    let extra = if bias.is_some() { g.x_len() + g.cin } else { 0 };
    let cost = Cost { flops: g.gemm_flops() + extra as u64, bytes: bytes(g.y_len() + g.w_len() + g.x_len() + extra) };
    channel_sliced(gpu, "data_grad", &slices, params, &[(1, dy), (2, w), (3, b), (4, dx)], tasks, cost, g.cout)
}

/// Refuses an activation epilogue outside the tile engine (the other kernels have none; the
/// graph fuses an activation only where [`ConvVariant::resolve`] gives `Tiled`).
fn only_tiled(g: &Geometry, gpu: &Gpu, act: Activation, op: &str) -> Result<()> {
    if act == Activation::Identity {
        return Ok(());
    }
    Err(Error::Invalid(format!("{op}: a fused {act:?} runs only on the tile engine, not the {:?} kernels", g.variant.resolve(gpu))))
}

/// Slices that one `sum_partials` invocation adds: 4,160 loop iterations. More slices are
/// added in levels (groups of this many, then the groups' sums), so no count of slices is
/// refused and no f32 chain grows long.
const SUM_RUN: usize = 4096;

/// Writes (or adds, with `accumulate`) a sum whose `chunks` partial sums of `len` elements a
/// first pass computes: into `out` directly when there is one, else through scratch buffers
/// and one `sum_partials` pass per level of [`SUM_RUN`] slices.
#[allow(clippy::too_many_arguments)]
pub(crate) fn split_sum(
    gpu: &Gpu,
    op: &str,
    len: usize,
    chunks: usize,
    out: &Buffer,
    accumulate: bool,
    first: impl FnOnce(&Buffer, bool) -> Result<Vec<Dispatch>>,
) -> Result<Vec<Dispatch>> {
    if chunks == 1 {
        return first(out, accumulate);
    }
    // The bind groups keep the scratch buffers alive as long as the dispatches.
    let mut src = gpu.zeros(&format!("{op} partial sums"), chunks * len)?;
    let mut passes = first(&src, false)?;
    let mut slices = chunks;
    while slices > 1 {
        let groups = slices.div_ceil(SUM_RUN);
        let last = groups == 1;
        let next = if last { None } else { Some(gpu.zeros(&format!("{op} partial sums of {groups} groups"), groups * len)?) };
        let mut params = Geometry::default().params(accumulate && last, len, op)?;
        (params.chunks, params.rows) = (slices as i32, SUM_RUN as i32);
        let add = if accumulate && last { len } else { 0 };
        let cost = Cost { flops: (slices * len) as u64, bytes: bytes(slices * len + groups * len + add) };
        let dst = next.as_ref().unwrap_or(out);
        passes.push(gpu.dispatch(kernel("sum_partials"), "", &params, &[(1, &src), (4, dst)], workgroups_1d(groups * len, WG), cost)?);
        if let Some(next) = next {
            src = next;
        }
        slices = groups;
    }
    Ok(passes)
}

/// dw (+)= conv's weight gradient from x and dy: windows where they apply, else 8 output
/// channels x 8 (ci, kh, kw) columns per invocation, the sum over n, oh, ow split into slices
/// of rows and column segments.
fn gemm_weight_grad(gpu: &Gpu, g: &Geometry, x: &Buffer, dy: &Buffer, dw: &Buffer, accumulate: bool, op: &str) -> Result<Vec<Dispatch>> {
    if g.variant.resolve(gpu) == ConvVariant::Tiled {
        g.params(false, 0, op)?;
        return tiled::weight_grad(gpu, g, x, dy, dw, accumulate, op);
    }
    if g.variant.resolve(gpu) == ConvVariant::Windowed {
        g.params(false, 0, op)?;
        if let Some(d) = window::weight_grad(gpu, g, x, dy, dw, accumulate, op)? {
            return Ok(d);
        }
    }
    let tasks = (g.cin * g.kernel[0] * g.kernel[1]).div_ceil(BLOCK) * g.cout.div_ceil(BLOCK);
    let seg = g.out[1].clamp(1, 4096);
    let nseg = g.out[1].div_ceil(seg).max(1);
    let total_rows = g.n * g.out[0];
    let want_chunks = PARALLEL_INVOCATIONS.div_ceil(tasks * nseg).max(1);
    let rows = total_rows.div_ceil(want_chunks).max(1024usize.div_ceil(seg)).min(SLICE_ITERATIONS / (seg + 3)).max(1);
    let chunks = total_rows.div_ceil(rows).max(1) * nseg;

    let mut params = g.params(false, tasks * chunks, op)?;
    (params.rows, params.seg, params.nseg, params.chunks) = (rows as i32, seg as i32, nseg as i32, chunks as i32);
    let cost = Cost { flops: g.gemm_flops(), bytes: bytes(g.x_len() + g.y_len() + g.w_len() * chunks) };
    split_sum(gpu, op, g.w_len(), chunks, dw, accumulate, |out, accumulate| {
        let params = Params { flag: i32::from(accumulate), ..params };
        let cost = Cost { bytes: cost.bytes + if accumulate { bytes(g.w_len()) } else { 0 }, ..cost };
        Ok(vec![gpu.dispatch(kernel("weight_grad"), "", &params, &[(1, x), (2, dy), (4, out)], workgroups_1d(tasks * chunks, WG), cost)?])
    })
}

/// db (+)= the sum of dy `[n, channels, spatial]` over n and spatial, in two passes: 64 lanes
/// per channel and slice of at most 64 x 4096 elements write partial sums, `sum_partials` adds.
fn reduce_bias_grad(gpu: &Gpu, [n, channels, spatial]: [usize; 3], dy: &Buffer, db: &Buffer, accumulate: bool, op: &str) -> Result<Vec<Dispatch>> {
    let g = Geometry { n, cin: 1, cout: channels, out: [spatial, 1], ..Geometry::default() };
    let count = n * spatial;
    let lanes = WG as usize;
    // Slices of at least 16 terms per lane, more of them while there are under 256 workgroups.
    let per_lane = count.div_ceil(lanes).div_ceil(256usize.div_ceil(channels)).clamp(16, 4096);
    let rows = per_lane * lanes;
    let slices = count.div_ceil(rows).max(1);
    let chunks = slices * lanes;
    let mut params = g.params(false, channels, op)?;
    (params.rows, params.chunks) = (rows as i32, chunks as i32);
    let cost = Cost { flops: g.y_len() as u64, bytes: bytes(g.y_len() + channels * chunks) };
    let groups = workgroups_1d(channels * chunks, WG);
    split_sum(gpu, op, channels, chunks, db, accumulate, |out, _| Ok(vec![gpu.dispatch(kernel("bias_grad"), "", &params, &[(1, dy), (4, out)], groups, cost)?]))
}

/// Conv2d forward: y `[N, Cout, Ho, Wo]` = conv(x `[N, Cin, H, W]`, w `[Cout, Cin, kh, kw]`)
/// (+ bias `[Cout]`, fused). One dispatch, or with windows (`ConvVariant::Windowed`) a copy of
/// x into them and one dispatch per 8 samples; run them in order.
pub fn conv2d(gpu: &Gpu, s: &Conv2d, x: &Buffer, w: &Buffer, bias: Option<&Buffer>, y: &Buffer) -> Result<Vec<Dispatch>> {
    conv2d_activated(gpu, s, x, w, bias, Activation::Identity, y)
}

/// [`conv2d`] with `act` applied to y in the tile engine's epilogue, so the pre-activation is
/// never stored. Refused unless the convolution runs on the tile engine
/// (`s.variant.resolve(gpu) == ConvVariant::Tiled`) or `act` is the identity.
pub fn conv2d_activated(gpu: &Gpu, s: &Conv2d, x: &Buffer, w: &Buffer, bias: Option<&Buffer>, act: Activation, y: &Buffer) -> Result<Vec<Dispatch>> {
    let op = "conv2d";
    let g = s.geometry()?;
    check_len(op, &format!("input x {}", s.x_dims()), x, g.x_len())?;
    check_len(op, &format!("weight {}", s.w_dims()), w, g.w_len())?;
    check_bias(op, bias, s.out_channels)?;
    check_len(op, &format!("output y {}", s.y_dims(g.out)), y, g.y_len())?;
    gemm_forward(gpu, &g, x, w, bias, act, y, op)
}

/// Conv2d data gradient: dx `[N, Cin, H, W]` from dy `[N, Cout, Ho, Wo]` and w. Dispatches
/// as for [`conv2d`].
pub fn conv2d_data_grad(gpu: &Gpu, s: &Conv2d, dy: &Buffer, w: &Buffer, dx: &Buffer) -> Result<Vec<Dispatch>> {
    let op = "conv2d.data_grad";
    let g = s.geometry()?;
    check_len(op, &format!("output gradient dy {}", s.y_dims(g.out)), dy, g.y_len())?;
    check_len(op, &format!("weight {}", s.w_dims()), w, g.w_len())?;
    check_len(op, &format!("input gradient dx {}", s.x_dims()), dx, g.x_len())?;
    gemm_data_grad(gpu, &g, dy, w, None, Activation::Identity, dx, op)
}

/// Conv2d weight gradient: dw `[Cout, Cin, kh, kw]` from x and dy; `accumulate` adds to dw.
/// One dispatch, or more when the sum over N, Ho, Wo is split into slices (long sums, few
/// weights, or windows of 7 samples each): partial sums into a scratch buffer the dispatches
/// own, then their total. With windows, copies of x and dy into them come first.
pub fn conv2d_weight_grad(gpu: &Gpu, s: &Conv2d, x: &Buffer, dy: &Buffer, dw: &Buffer, accumulate: bool) -> Result<Vec<Dispatch>> {
    let op = "conv2d.weight_grad";
    let g = s.geometry()?;
    check_len(op, &format!("input x {}", s.x_dims()), x, g.x_len())?;
    check_len(op, &format!("output gradient dy {}", s.y_dims(g.out)), dy, g.y_len())?;
    check_len(op, &format!("weight gradient dw {}", s.w_dims()), dw, g.w_len())?;
    gemm_weight_grad(gpu, &g, x, dy, dw, accumulate, op)
}

/// Conv2d bias gradient: db `[Cout]` = dy summed over N, Ho, Wo; `accumulate` adds to db.
/// Two dispatches: partial sums into a scratch buffer the dispatches own, then their total.
pub fn conv2d_bias_grad(gpu: &Gpu, s: &Conv2d, dy: &Buffer, db: &Buffer, accumulate: bool) -> Result<Vec<Dispatch>> {
    let op = "conv2d.bias_grad";
    let g = s.geometry()?;
    check_len(op, &format!("output gradient dy {}", s.y_dims(g.out)), dy, g.y_len())?;
    check_len(op, &format!("bias gradient db [{}]", s.out_channels), db, s.out_channels)?;
    reduce_bias_grad(gpu, [s.batch, s.out_channels, g.out[0] * g.out[1]], dy, db, accumulate, op)
}

/// ConvTranspose2d forward: y `[N, Cout, Ho, Wo]` from x `[N, Cin, H, W]` and
/// w `[Cin, Cout, kh, kw]` (+ bias `[Cout]`, fused). Runs the conv data-gradient kernels;
/// dispatches as for [`conv2d`].
pub fn conv_transpose2d(gpu: &Gpu, s: &ConvTranspose2d, x: &Buffer, w: &Buffer, bias: Option<&Buffer>, y: &Buffer) -> Result<Vec<Dispatch>> {
    conv_transpose2d_activated(gpu, s, x, w, bias, Activation::Identity, y)
}

/// [`conv_transpose2d`] with `act` applied to y in the tile engine's epilogue; refused as
/// [`conv2d_activated`] is.
pub fn conv_transpose2d_activated(gpu: &Gpu, s: &ConvTranspose2d, x: &Buffer, w: &Buffer, bias: Option<&Buffer>, act: Activation, y: &Buffer) -> Result<Vec<Dispatch>> {
    let op = "conv_transpose2d";
    let g = s.geometry()?;
    check_len(op, &format!("input x {}", s.x_dims()), x, g.y_len())?;
    check_len(op, &format!("weight {}", s.w_dims()), w, g.w_len())?;
    check_bias(op, bias, s.out_channels)?;
    check_len(op, &format!("output y {}", s.y_dims(g.size)), y, g.x_len())?;
    gemm_data_grad(gpu, &g, x, w, bias, act, y, op)
}

/// ConvTranspose2d data gradient: dx `[N, Cin, H, W]` from dy `[N, Cout, Ho, Wo]` and w.
/// Runs the conv forward kernels; dispatches as for [`conv2d`].
pub fn conv_transpose2d_data_grad(gpu: &Gpu, s: &ConvTranspose2d, dy: &Buffer, w: &Buffer, dx: &Buffer) -> Result<Vec<Dispatch>> {
    let op = "conv_transpose2d.data_grad";
    let g = s.geometry()?;
    check_len(op, &format!("output gradient dy {}", s.y_dims(g.size)), dy, g.x_len())?;
    check_len(op, &format!("weight {}", s.w_dims()), w, g.w_len())?;
    check_len(op, &format!("input gradient dx {}", s.x_dims()), dx, g.y_len())?;
    gemm_forward(gpu, &g, dy, w, None, Activation::Identity, dx, op)
}

/// ConvTranspose2d weight gradient: dw `[Cin, Cout, kh, kw]` from x and dy; `accumulate` adds
/// to dw. The conv weight gradient with x and dy exchanged; dispatches as for
/// [`conv2d_weight_grad`].
pub fn conv_transpose2d_weight_grad(gpu: &Gpu, s: &ConvTranspose2d, x: &Buffer, dy: &Buffer, dw: &Buffer, accumulate: bool) -> Result<Vec<Dispatch>> {
    let op = "conv_transpose2d.weight_grad";
    let g = s.geometry()?;
    check_len(op, &format!("input x {}", s.x_dims()), x, g.y_len())?;
    check_len(op, &format!("output gradient dy {}", s.y_dims(g.size)), dy, g.x_len())?;
    check_len(op, &format!("weight gradient dw {}", s.w_dims()), dw, g.w_len())?;
    gemm_weight_grad(gpu, &g, dy, x, dw, accumulate, op)
}

/// ConvTranspose2d bias gradient: db `[Cout]` = dy summed over N, Ho, Wo; `accumulate` adds.
/// Two dispatches, as for Conv2d.
pub fn conv_transpose2d_bias_grad(gpu: &Gpu, s: &ConvTranspose2d, dy: &Buffer, db: &Buffer, accumulate: bool) -> Result<Vec<Dispatch>> {
    let op = "conv_transpose2d.bias_grad";
    let [ho, wo] = s.out_size()?;
    check_len(op, &format!("output gradient dy {}", s.y_dims([ho, wo])), dy, s.output_len())?;
    check_len(op, &format!("bias gradient db [{}]", s.out_channels), db, s.out_channels)?;
    reduce_bias_grad(gpu, [s.batch, s.out_channels, ho * wo], dy, db, accumulate, op)
}
