//! Conv kernels for CPU adapters (shaders/conv_window.wgsl, conv_window_subgroup.wgsl): each
//! sample's operand is copied into a 64 KiB window that dispatches bind as uniform buffers,
//! because llvmpipe gathers from uniform buffers ~25x faster than from storage buffers (see
//! the shaders' headers and docs/BENCHMARKS.md). Every launcher returns `None` where its
//! kernel does not apply (a sample over one window, missing subgroups, loops past llvmpipe's
//! limit), and the caller falls back to conv.wgsl.

use super::{bytes, split_sum, Geometry, LOOP_BUDGET, SLICE_ITERATIONS};
use crate::gpu::{workgroups_1d, Buffer, Cost, Dispatch, Gpu, KernelId};
use crate::Result;

/// f32s in a window: 64 KiB, the uniform-buffer binding size these kernels need.
pub(crate) const WINDOW: usize = 16_384;
/// Sample windows bound by one forward or data-gradient dispatch (`v0`..`v7`).
const SAMPLES: usize = 8;
/// Samples per weight-gradient dispatch: 7 x windows and 7 dy windows.
const GRAD_SAMPLES: usize = 7;
/// Channels (forward, data gradient) or weight rows and columns (weight gradient) per
/// invocation, and invocations per workgroup: one subgroup of 8 in the subgroup kernels.
const TM: usize = 16;
const SG: usize = 8;
/// Weight-gradient workgroups worth having per dispatch; rows of the output are split into
/// slices until there are this many.
const GRAD_WORKGROUPS: usize = 32;

/// Field order and types match `Params` in shaders/conv_window_subgroup.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct SubgroupParams {
    shape: Shape,
    flag: u32,
    n0: u32,
    count: u32,
}

/// Field order and types match `Params` in shaders/conv_window.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    shape: Shape,
    flag: u32,
    count: u32,
    rows: u32,
    chunks: u32,
    slice0: u32,
    len: u32,
    tasks: u32,
    stride: u32,
    row: u32,
    pad: u32,
}

/// The geometry fields both shaders start their params with.
#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Shape {
    cin: u32,
    cout: u32,
    h: u32,
    w: u32,
    ho: u32,
    wo: u32,
    kh: u32,
    kw: u32,
    sh: u32,
    sw: u32,
    ph: u32,
    pw: u32,
    dh: u32,
    dw: u32,
}

impl Shape {
    fn of(g: &Geometry) -> Shape {
        let u = |v: usize| v as u32;
        Shape {
            cin: u(g.cin),
            cout: u(g.cout),
            h: u(g.size[0]),
            w: u(g.size[1]),
            ho: u(g.out[0]),
            wo: u(g.out[1]),
            kh: u(g.kernel[0]),
            kw: u(g.kernel[1]),
            sh: u(g.stride[0]),
            sw: u(g.stride[1]),
            ph: u(g.padding[0]),
            pw: u(g.padding[1]),
            dh: u(g.dilation[0]),
            dw: u(g.dilation[1]),
        }
    }
}

fn windows_kernel(entry: &'static str) -> KernelId {
    KernelId::new("conv_window", entry)
}

fn subgroup_kernel(entry: &'static str) -> KernelId {
    KernelId::new("conv_window_subgroup", entry)
}

/// Whether a dispatch may bind `count` 64 KiB uniform buffers (params included).
pub(crate) fn has_windows(gpu: &Gpu, count: u32) -> bool {
    gpu.limits.max_uniform_buffers_per_shader_stage >= count && gpu.limits.max_uniform_buffer_binding_size as usize >= WINDOW * 4
}

/// The subgroup kernels hand weights between the 8 lanes of a workgroup.
pub(crate) fn has_subgroups_of_8(gpu: &Gpu) -> bool {
    gpu.has(wgpu::Features::SUBGROUP) && gpu.info.subgroup_min_size == SG as u32 && gpu.info.subgroup_max_size == SG as u32
}

/// `n` samples of `len` elements copied into windows `stride` elements apart (`pad` zeros
/// after every row of `row` elements and before the first, see `pack` in the shader).
struct Packed {
    buffer: Buffer,
    stride: usize,
    n: usize,
}

impl Packed {
    /// Window of sample `i`, or of the last sample for `i` past it (bound where a dispatch has
    /// fewer samples than windows; the kernels ignore it).
    fn window(&self, i: usize) -> Result<Buffer> {
        self.buffer.view("window", i.min(self.n - 1) * self.stride, WINDOW)
    }
}

/// The windows' padded length of a sample, or `None` when it is over one window.
fn padded_len(len: usize, row: usize, pad: usize) -> Option<usize> {
    let padded = pad + len / row * (row + pad);
    (padded <= WINDOW).then_some(padded)
}

fn pack(gpu: &Gpu, op: &str, src: &Buffer, n: usize, len: usize, row: usize, pad: usize) -> Result<Option<(Packed, Dispatch)>> {
    let Some(padded) = padded_len(len, row, pad).filter(|_| n > 0 && len > 0) else { return Ok(None) };
    let align = (gpu.limits.min_uniform_buffer_offset_alignment as usize / 4).max(1);
    let stride = padded.next_multiple_of(align);
    let total = (n - 1) * stride + WINDOW;
    if total as u64 * 4 > gpu.max_binding_bytes() || n * len > u32::MAX as usize {
        return Ok(None);
    }
    let buffer = gpu.zeros(&format!("{op} windows"), total)?;
    let params = Params { len: len as u32, tasks: (n * len) as u32, stride: stride as u32, row: row as u32, pad: pad as u32, ..Default::default() };
    let cost = Cost { flops: 0, bytes: bytes(2 * n * len) };
    let d = gpu.dispatch(windows_kernel("pack"), "", &params, &[(1, src), (2, &buffer)], workgroups_1d(n * len, 64), cost)?;
    Ok(Some((Packed { buffer, stride, n }, d)))
}

/// Input channels up to which `forward_narrow` batches flattened (ci, kh, kw) steps instead
/// of channels, and up to which `data_grad_one` takes one channel per workgroup instead of 16.
const NARROW: usize = 4;
const ONE: usize = 2;

/// Loop iterations of one subgroup-kernel invocation that sums `reduced` channels over every
/// tap: the tap loops, 8-channel batches of 8 steps each, and the stores.
fn subgroup_iterations(g: &Geometry, reduced: usize) -> usize {
    let [kh, kw] = g.kernel;
    kh * (1 + kw * (1 + reduced.div_ceil(SG) * (SG + 1))) + TM * (SAMPLES + 1)
}

/// y = conv(x, w) (+ bias), 8 samples per dispatch.
pub(super) fn forward(gpu: &Gpu, g: &Geometry, x: &Buffer, w: &Buffer, bias: Option<&Buffer>, y: &Buffer, op: &str) -> Result<Option<Vec<Dispatch>>> {
    let len = g.cin * g.size[0] * g.size[1];
    let pixels = g.out[0] * g.out[1];
    let groups = g.cout.div_ceil(TM) * pixels.div_ceil(SG);
    let steps = g.cin * g.kernel[0] * g.kernel[1];
    let cost = |count: usize| {
        let flops = 2 * (count * g.cout * pixels * steps) as u64;
        Cost { flops, bytes: bytes(count * len + g.w_len() + count * g.cout * pixels) }
    };
    let (entry, iterations) = if g.cin <= NARROW {
        ("forward_narrow", steps.div_ceil(SG) * (SG + 1) + TM * (SAMPLES + 1))
    } else {
        ("forward", subgroup_iterations(g, g.cin))
    };
    subgroup_pass(gpu, g, entry, [x, w, y], bias, op, len, iterations, groups, cost)
}

/// dx = conv's data gradient of dy (+ bias, ConvTranspose2d's forward), 8 samples per dispatch.
pub(super) fn data_grad(gpu: &Gpu, g: &Geometry, dy: &Buffer, w: &Buffer, bias: Option<&Buffer>, dx: &Buffer, op: &str) -> Result<Option<Vec<Dispatch>>> {
    let len = g.cout * g.out[0] * g.out[1];
    let [sh, sw] = g.stride;
    let class = g.size[0].div_ceil(sh) * g.size[1].div_ceil(sw);
    let (entry, blocks) = if g.cin <= ONE { ("data_grad_one", g.cin) } else { ("data_grad", g.cin.div_ceil(TM)) };
    let groups = blocks * sh * sw * class.div_ceil(SG);
    let hw = g.size[0] * g.size[1];
    let cost = |count: usize| {
        let flops = 2 * (count * g.cin * hw * g.cout * g.kernel[0] * g.kernel[1]) as u64;
        Cost { flops, bytes: bytes(count * len + g.w_len() + count * g.cin * hw) }
    };
    subgroup_pass(gpu, g, entry, [dy, w, dx], bias, op, len, subgroup_iterations(g, g.cout), groups, cost)
}

/// Packs `src` (samples of `len`) and runs `entry` over `groups` workgroups per dispatch of
/// 8 samples, unless an invocation's `iterations` come near llvmpipe's limit; `cost` of a
/// dispatch of `count` samples.
#[allow(clippy::too_many_arguments)]
fn subgroup_pass(
    gpu: &Gpu,
    g: &Geometry,
    entry: &'static str,
    [src, w, dst]: [&Buffer; 3],
    bias: Option<&Buffer>,
    op: &str,
    len: usize,
    iterations: usize,
    groups: usize,
    cost: impl Fn(usize) -> Cost,
) -> Result<Option<Vec<Dispatch>>> {
    if !has_subgroups_of_8(gpu) || !has_windows(gpu, SAMPLES as u32 + 1) || iterations > LOOP_BUDGET {
        return Ok(None);
    }
    let Some((packed, pack)) = pack(gpu, op, src, g.n, len, len, 0)? else { return Ok(None) };
    let mut dispatches = vec![pack];
    let b = bias.unwrap_or(&gpu.dummy);
    for n0 in (0..g.n).step_by(SAMPLES) {
        let count = (g.n - n0).min(SAMPLES);
        let windows: Vec<Buffer> = (0..SAMPLES).map(|s| packed.window(n0 + s.min(count - 1))).collect::<Result<_>>()?;
        let params = SubgroupParams { shape: Shape::of(g), flag: u32::from(bias.is_some()), n0: n0 as u32, count: count as u32 };
        let mut bindings = vec![(1, w), (2, b), (3, dst)];
        bindings.extend(windows.iter().enumerate().map(|(s, win)| (4 + s as u32, win)));
        dispatches.push(gpu.dispatch(subgroup_kernel(entry), "", &params, &bindings, workgroups_1d(groups, 1), cost(count))?);
    }
    Ok(Some(dispatches))
}

/// dw (+)= conv's weight gradient from x and dy, 7 samples per dispatch, each dispatch's
/// output rows split into slices; partial sums of more than one slice are added by
/// `sum_partials`.
pub(super) fn weight_grad(gpu: &Gpu, g: &Geometry, x: &Buffer, dy: &Buffer, dw: &Buffer, accumulate: bool, op: &str) -> Result<Option<Vec<Dispatch>>> {
    let [h, w] = g.size;
    let [ho, wo] = g.out;
    let pw = g.padding[1];
    let dy_len = g.cout * ho * wo;
    if !has_windows(gpu, 2 * GRAD_SAMPLES as u32 + 1) || padded_len(g.cin * h * w, w, pw).is_none() || dy_len > WINDOW {
        return Ok(None);
    }
    // Per invocation: samples x rows x (columns + 1) iterations, and the 16 x 16 stores.
    let per_row = GRAD_SAMPLES * (wo + 1) + 1;
    let max_rows = SLICE_ITERATIONS.saturating_sub(2 * TM * TM) / per_row;
    if max_rows == 0 {
        return Ok(None);
    }
    let cols = g.cin * g.kernel[0] * g.kernel[1];
    let workgroups = cols.div_ceil(TM * SG) * g.cout.div_ceil(TM);
    let chunks = GRAD_WORKGROUPS.div_ceil(workgroups).max(ho.div_ceil(max_rows)).min(ho);
    let rows = ho.div_ceil(chunks);
    let chunks = ho.div_ceil(rows);
    let passes = g.n.div_ceil(GRAD_SAMPLES);

    let Some((xs, pack_x)) = pack(gpu, op, x, g.n, g.cin * h * w, w, pw)? else { return Ok(None) };
    let Some((dys, pack_dy)) = pack(gpu, op, dy, g.n, dy_len, dy_len, 0)? else { return Ok(None) };
    let mut dispatches = vec![pack_x, pack_dy];
    dispatches.extend(split_sum(gpu, op, g.w_len(), passes * chunks, dw, accumulate, |out, accumulate| {
        let mut list = Vec::new();
        for pass in 0..passes {
            let n0 = pass * GRAD_SAMPLES;
            let count = (g.n - n0).min(GRAD_SAMPLES);
            let windows: Vec<Buffer> = (0..GRAD_SAMPLES)
                .map(|s| xs.window(n0 + s.min(count - 1)))
                .chain((0..GRAD_SAMPLES).map(|s| dys.window(n0 + s.min(count - 1))))
                .collect::<Result<_>>()?;
            let params = Params {
                shape: Shape::of(g),
                flag: u32::from(accumulate),
                count: count as u32,
                rows: rows as u32,
                chunks: chunks as u32,
                slice0: (pass * chunks) as u32,
                ..Default::default()
            };
            let mut bindings = vec![(2, out)];
            bindings.extend(windows.iter().enumerate().map(|(s, win)| (3 + s as u32, win)));
            let flops = 2 * (count * g.cout * ho * wo * cols) as u64;
            let cost = Cost { flops, bytes: bytes(count * (g.cin * h * w + dy_len) + g.w_len() * if accumulate { 2 } else { 1 }) };
            list.push(gpu.dispatch(windows_kernel("weight_grad"), "", &params, &bindings, workgroups_1d(workgroups * chunks, 1), cost)?);
        }
        Ok(list)
    })?);
    Ok(Some(dispatches))
}
