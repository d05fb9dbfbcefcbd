//! shaders/batchnorm.wgsl: BatchNorm1d ([N, C]) and BatchNorm2d ([N, C, H, W]), training and
//! eval mode, forward and backward, with PyTorch's semantics.
//!
//! Training ops are one to three dispatches (a per-channel reduction, then an elementwise
//! pass, or both fused in one on GPUs) returned as a `Vec<Dispatch>` to run in order. They read nothing back: record them once
//! and replay them every step. Intermediates live in buffers the caller owns: the saved mean and
//! invstd (C each, forward output and backward input) and a scratch buffer of
//! [`BatchNorm::scratch_len`] elements, needed only while one op runs, so forward and backward
//! may share one.

use super::check_len;
use crate::gpu::{workgroups_1d, Buffer, Cost, Dispatch, Gpu, KernelId};
use crate::{bail, Result};

const WG: u32 = 256;
/// Workgroup size of the one-invocation-per-channel passes (shader's CH_WG).
const CH_WG: u32 = 64;
/// Fewest values of one channel that one workgroup reduces in the first level: 16 per
/// invocation, enough work to hide the tree's barriers.
const CHUNK: usize = WG as usize * 16;
/// Most chunks per channel: the last level merges a channel's chunks in one invocation, which
/// must stay far below llvmpipe's 65,535 loop iterations and is a serial loop on a GPU, so
/// longer channels get longer chunks (2³¹ values: 8,192 per invocation) instead of more.
const MAX_CHUNKS: usize = 1024;
/// Longest channel that `Reduction::Auto` reduces with one invocation per channel on a GPU.
const DIRECT_MAX: usize = 1024;
/// Longest channel that `Reduction::Auto` fuses into one workgroup per channel on a GPU (64
/// values per invocation, two walks): past it the channels' workgroups are too few and too
/// long, and the two-level reduction spreads a channel over many.
const FUSED_MAX: usize = 16_384;
/// Longest channel `Reduction::Fused` takes: its invocations walk m/256 values twice, which
/// must stay inside llvmpipe's 65,535 loop iterations.
pub const FUSED_LIMIT: usize = 1 << 22;
/// Longest channel that one invocation may walk: llvmpipe (lavapipe and GL) silently stops an
/// invocation after 65,535 loop iterations in total (LP_MAX_TGSI_LOOP_ITERATIONS), and the
/// direct passes take m·(1 + 1/32) of them.
pub const DIRECT_LIMIT: usize = 32_768;

const AFFINE: u32 = 1;
const EVAL: u32 = 2;
const RUNNING: u32 = 4;
const GRADS: u32 = 8;

/// Shape and attributes of a batch norm, with PyTorch's names and defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchNorm {
    /// `[N, C]` (BatchNorm1d) or `[N, C, H, W]` (BatchNorm2d).
    pub shape: Vec<usize>,
    pub eps: f32,
    /// running = (1 − momentum)·running + momentum·batch statistic.
    pub momentum: f32,
    pub reduction: Reduction,
}

/// How the per-channel statistics and gradient sums are reduced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Reduction {
    /// On GPUs `Direct` for channels of at most 1,024 values (N·H·W), `Fused` up to 16,384,
    /// else `TwoLevel`; on CPU adapters (where workgroup barriers are slow) `Direct` up to
    /// [`DIRECT_LIMIT`], else `TwoLevel`. With the GPU kernels forced (`Kernels::Tiled`) the
    /// GPU rule holds on any adapter.
    #[default]
    Auto,
    /// One invocation per channel loops over its values: one dispatch, no barriers. Channels
    /// longer than [`DIRECT_LIMIT`] are refused.
    Direct,
    /// A workgroup tree per 4,096-value chunk of a channel, then one invocation per channel
    /// over its chunks: parallel over long channels. Two dispatches.
    TwoLevel,
    /// One workgroup per channel reduces it and then normalizes it (forward) or computes its
    /// dx (training backward): the whole op in one dispatch. Channels longer than
    /// [`FUSED_LIMIT`] are refused.
    Fused,
}

/// What [`Reduction`] resolves to for one shape on one adapter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Method {
    Direct,
    TwoLevel,
    Fused,
}

/// γ and β (weight and bias), C elements each; also the pair dγ, dβ that backward writes.
#[derive(Clone, Copy)]
pub struct Affine<'a> {
    pub gamma: &'a Buffer,
    pub beta: &'a Buffer,
}

/// running_mean and running_var, C elements each.
#[derive(Clone, Copy)]
pub struct Running<'a> {
    pub mean: &'a Buffer,
    pub var: &'a Buffer,
}

/// The batch mean and 1/sqrt(biased var + eps) saved by the training forward, C elements each.
#[derive(Clone, Copy)]
pub struct Saved<'a> {
    pub mean: &'a Buffer,
    pub invstd: &'a Buffer,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    c: u32,
    hw: u32,
    chunks: u32,
    chunk: u32,
    eps: f32,
    momentum: f32,
    flags: u32,
}

/// N, C, H·W, checked.
struct Dims {
    n: usize,
    c: usize,
    hw: usize,
}

impl Dims {
    fn total(&self) -> usize {
        self.n * self.c * self.hw
    }
    fn per_channel(&self) -> usize {
        self.n * self.hw
    }
    /// Values per first-level chunk: a multiple of the workgroup, so each invocation of a
    /// full chunk takes the same number of values.
    fn chunk(&self) -> usize {
        CHUNK.max(self.per_channel().div_ceil(MAX_CHUNKS).next_multiple_of(WG as usize))
    }
    fn chunks(&self) -> usize {
        self.per_channel().div_ceil(self.chunk())
    }
    fn partials(&self) -> usize {
        self.c * self.chunks()
    }
}

impl BatchNorm {
    /// PyTorch's defaults: eps = 1e-5, momentum = 0.1.
    pub fn new(shape: &[usize]) -> BatchNorm {
        BatchNorm { shape: shape.to_vec(), eps: 1e-5, momentum: 0.1, reduction: Reduction::Auto }
    }

    fn method(&self, gpu: &Gpu, d: &Dims, op: &str) -> Result<Method> {
        let m = d.per_channel();
        // `--kernels tiled` runs what a GPU runs, these fused passes included, so that whole
        // training steps of the GPU path are tested on CPU drivers too.
        let cpu = gpu.info.device_type == wgpu::DeviceType::Cpu && gpu.kernels != crate::gpu::Kernels::Tiled;
        Ok(match self.reduction {
            Reduction::Auto if cpu && m <= DIRECT_LIMIT => Method::Direct,
            Reduction::Auto if !cpu && m <= DIRECT_MAX => Method::Direct,
            Reduction::Auto if !cpu && m <= FUSED_MAX => Method::Fused,
            Reduction::Auto => Method::TwoLevel,
            Reduction::Direct if m > DIRECT_LIMIT => bail!(
                Limit,
                "{op}: Reduction::Direct walks a channel in one invocation, at most {DIRECT_LIMIT} values; input {:?} has {m}",
                self.shape
            ),
            Reduction::Fused if m > FUSED_LIMIT => bail!(
                Limit,
                "{op}: Reduction::Fused reduces a channel in one workgroup, at most {FUSED_LIMIT} values; input {:?} has {m}",
                self.shape
            ),
            Reduction::Direct => Method::Direct,
            Reduction::TwoLevel => Method::TwoLevel,
            Reduction::Fused => Method::Fused,
        })
    }

    /// Elements of the scratch buffer the training ops and `backward_eval` with gradients need.
    pub fn scratch_len(&self) -> usize {
        match self.dims("batch_norm") {
            Ok(d) => 3 * d.partials() + 2 * d.c,
            Err(_) => 0,
        }
    }

    fn dims(&self, op: &str) -> Result<Dims> {
        let d = match self.shape[..] {
            [n, c] => Dims { n, c, hw: 1 },
            [n, c, h, w] => Dims { n, c, hw: h * w },
            _ => bail!(Shape, "{op}: input must be [N, C] or [N, C, H, W], got {:?}", self.shape),
        };
        if self.shape.contains(&0) {
            bail!(Shape, "{op}: input {:?} has a zero dimension", self.shape);
        }
        if self.shape.iter().try_fold(1usize, |a, &b| a.checked_mul(b)).is_none_or(|t| t > u32::MAX as usize / 2) {
            bail!(Shape, "{op}: input {:?} has too many elements for 32-bit indexing", self.shape);
        }
        Ok(d)
    }

    /// Like `dims`, and refuses a batch with one value per channel as PyTorch does.
    fn train_dims(&self, op: &str) -> Result<Dims> {
        let d = self.dims(op)?;
        if d.per_channel() == 1 {
            bail!(Shape, "{op}: expected more than 1 value per channel when training, got input size {:?}", self.shape);
        }
        Ok(d)
    }

    fn params(&self, d: &Dims, flags: u32) -> Params {
        Params {
            n: d.n as u32,
            c: d.c as u32,
            hw: d.hw as u32,
            chunks: d.chunks() as u32,
            chunk: d.chunk() as u32,
            eps: self.eps,
            momentum: self.momentum,
            flags,
        }
    }
}

fn kernel(entry: &'static str) -> KernelId {
    KernelId::new("batchnorm", entry)
}

/// Checks that every named buffer holds at least `len` elements.
fn check_all(op: &str, len: usize, buffers: &[(&str, &Buffer)]) -> Result<()> {
    buffers.iter().try_for_each(|(what, b)| check_len(op, what, b, len))
}

/// An optional pair of per-channel buffers, checked; the dummy twice when absent (the shader's
/// flag then keeps it unread).
fn channel_pair<'a>(
    gpu: &'a Gpu,
    op: &str,
    d: &Dims,
    names: [&str; 2],
    pair: Option<[&'a Buffer; 2]>,
) -> Result<[&'a Buffer; 2]> {
    match pair {
        Some([a, b]) => check_all(op, d.c, &[(names[0], a), (names[1], b)]).map(|_| [a, b]),
        None => Ok([&gpu.dummy, &gpu.dummy]),
    }
}

fn flag(bit: u32, on: bool) -> u32 {
    if on {
        bit
    } else {
        0
    }
}

/// One workgroup per (channel, chunk), folded past 65,535.
fn partial_grid(d: &Dims) -> [u32; 3] {
    workgroups_1d(d.partials() * WG as usize, WG)
}

/// One invocation per channel.
fn channel_grid(d: &Dims) -> [u32; 3] {
    workgroups_1d(d.c, CH_WG)
}

/// One workgroup per channel, folded past 65,535.
fn fused_grid(d: &Dims) -> [u32; 3] {
    workgroups_1d(d.c * WG as usize, WG)
}

/// Training forward: batch statistics, normalization, saved stats and (when `running` is given)
/// the running-stat update. One, two or three dispatches (see [`Reduction`]).
#[allow(clippy::too_many_arguments)]
pub fn forward_train(
    gpu: &Gpu,
    bn: &BatchNorm,
    x: &Buffer,
    affine: Option<Affine>,
    running: Option<Running>,
    y: &Buffer,
    saved: Saved,
    scratch: &Buffer,
) -> Result<Vec<Dispatch>> {
    let op = "batch_norm forward (training)";
    let d = bn.train_dims(op)?;
    check_all(op, d.total(), &[("input x", x), ("output y", y)])?;
    check_all(op, d.c, &[("saved mean", saved.mean), ("saved invstd", saved.invstd)])?;
    check_len(op, "scratch", scratch, bn.scratch_len())?;
    let [rm, rv] = channel_pair(gpu, op, &d, ["running_mean", "running_var"], running.map(|r| [r.mean, r.var]))?;
    let flags = flag(RUNNING, running.is_some());
    let stats = [(1, x), (4, saved.mean), (5, saved.invstd), (6, rm), (7, rv)];
    let (n, c, parts) = (d.total() as u64, d.c as u64, d.partials() as u64);
    // A Welford merge per value: a subtract, a divide and four multiply-adds.
    let (merge, write) = (8 * n, 4 * (2 * c + 2 * c * running.is_some() as u64));
    let method = bn.method(gpu, &d, op)?;
    if method == Method::Fused {
        let [gamma, beta] = channel_pair(gpu, op, &d, ["gamma", "beta"], affine.map(|a| [a.gamma, a.beta]))?;
        let params = bn.params(&d, flags | flag(AFFINE, affine.is_some()));
        // The read-only dummy may stand for γ here, so absent running stats take the writable one.
        let [rm, rv] = if running.is_some() { [rm, rv] } else { [&gpu.dummy_rw; 2] };
        let bindings = [(1, x), (4, saved.mean), (5, saved.invstd), (6, rm), (7, rv), (8, gamma), (9, beta), (10, y)];
        // The merges, then normalize's subtract, multiply and affine multiply-add per value.
        let cost = Cost { flops: merge + 12 * c + 4 * n, bytes: 4 * 3 * n + write };
        return Ok(vec![gpu.dispatch(kernel("fused_forward"), "", &params, &bindings, fused_grid(&d), cost)?]);
    }
    let mut list = if method == Method::TwoLevel {
        let partial = gpu.dispatch(
            kernel("stats_partial"),
            "",
            &bn.params(&d, 0),
            &[(1, x), (3, scratch)],
            partial_grid(&d),
            Cost { flops: merge, bytes: 4 * (n + 3 * parts) },
        )?;
        let finalize = gpu.dispatch(
            kernel("stats_finalize"),
            "",
            &bn.params(&d, flags),
            &[&stats[..], &[(3, scratch)]].concat(),
            channel_grid(&d),
            Cost { flops: 8 * parts + 12 * c, bytes: 4 * (3 * parts + c) + write },
        )?;
        vec![partial, finalize]
    } else {
        let cost = Cost { flops: merge + 12 * c, bytes: 4 * n + write };
        vec![gpu.dispatch(kernel("stats_direct"), "", &bn.params(&d, flags), &stats, channel_grid(&d), cost)?]
    };
    list.push(normalize(gpu, bn, &d, op, x, affine, [saved.mean, saved.invstd], y, 0)?);
    Ok(list)
}

/// Eval forward: y = (x − running_mean)/sqrt(running_var + eps)·γ + β. One dispatch.
pub fn forward_eval(
    gpu: &Gpu,
    bn: &BatchNorm,
    x: &Buffer,
    affine: Option<Affine>,
    running: Running,
    y: &Buffer,
) -> Result<Dispatch> {
    let op = "batch_norm forward (eval)";
    let d = bn.dims(op)?;
    check_all(op, d.total(), &[("input x", x), ("output y", y)])?;
    check_all(op, d.c, &[("running_mean", running.mean), ("running_var", running.var)])?;
    normalize(gpu, bn, &d, op, x, affine, [running.mean, running.var], y, EVAL)
}

/// `stats` is the saved (mean, invstd) in training, the running (mean, var) with EVAL.
#[allow(clippy::too_many_arguments)]
fn normalize(
    gpu: &Gpu,
    bn: &BatchNorm,
    d: &Dims,
    op: &str,
    x: &Buffer,
    affine: Option<Affine>,
    [mean, scale]: [&Buffer; 2],
    y: &Buffer,
    flags: u32,
) -> Result<Dispatch> {
    let [gamma, beta] = channel_pair(gpu, op, d, ["gamma", "beta"], affine.map(|a| [a.gamma, a.beta]))?;
    let flags = flags | flag(AFFINE, affine.is_some());
    gpu.dispatch(
        kernel("normalize"),
        "",
        &bn.params(d, flags),
        &[(1, x), (4, mean), (5, scale), (8, gamma), (9, beta), (10, y)],
        workgroups_1d(d.total(), WG),
        Cost::elementwise(d.total(), 4, 1, 1),
    )
}

/// Training backward from the saved stats: dx, and dγ = Σdy·x̂, dβ = Σdy into `grads` when given
/// (overwritten, not accumulated). `gamma` is None for a batch norm without affine. One, two
/// or three dispatches (see [`Reduction`]).
#[allow(clippy::too_many_arguments)]
pub fn backward_train(
    gpu: &Gpu,
    bn: &BatchNorm,
    x: &Buffer,
    dy: &Buffer,
    gamma: Option<&Buffer>,
    saved: Saved,
    dx: &Buffer,
    grads: Option<Affine>,
    scratch: &Buffer,
) -> Result<Vec<Dispatch>> {
    let op = "batch_norm backward (training)";
    let d = bn.train_dims(op)?;
    check_all(op, d.c, &[("saved mean", saved.mean), ("saved invstd", saved.invstd)])?;
    if bn.method(gpu, &d, op)? == Method::Fused {
        check_all(op, d.total(), &[("input x", x), ("gradient dy", dy), ("output dx", dx)])?;
        check_len(op, "scratch", scratch, bn.scratch_len())?;
        let [dgamma, dbeta] = channel_pair(gpu, op, &d, ["dgamma", "dbeta"], grads.map(|g| [g.gamma, g.beta]))?;
        // As in the forward: absent dγ, dβ take the writable dummy.
        let [dgamma, dbeta] = if grads.is_some() { [dgamma, dbeta] } else { [&gpu.dummy_rw; 2] };
        let flags = flag(AFFINE, gamma.is_some()) | flag(GRADS, grads.is_some());
        let gamma = check_gamma(gpu, op, &d, gamma)?;
        let bindings =
            [(1, x), (2, dy), (4, saved.mean), (5, saved.invstd), (8, gamma), (10, dx), (11, dgamma), (12, dbeta)];
        let (n, c) = (d.total() as u64, d.c as u64);
        let cost = Cost { flops: 5 * n + 8 * n, bytes: 4 * (4 * n + 2 * c + 2 * c * grads.is_some() as u64) };
        return Ok(vec![gpu.dispatch(kernel("fused_backward"), "", &bn.params(&d, flags), &bindings, fused_grid(&d), cost)?]);
    }
    let mut list = sums(gpu, bn, &d, op, x, dy, saved.mean, saved.invstd, grads, scratch, 0)?;
    list.push(grad_input(gpu, bn, &d, op, x, dy, gamma, saved, dx, scratch)?);
    Ok(list)
}

/// Eval backward, the running stats held constant: dx = dy·γ/sqrt(running_var + eps), and dγ, dβ
/// into `grads` when given (overwritten). `scratch` (of [`BatchNorm::scratch_len`] elements) is
/// used only with `grads`; without, pass anything, `gpu.dummy` say. One dispatch, two or three
/// with `grads`.
#[allow(clippy::too_many_arguments)]
pub fn backward_eval(
    gpu: &Gpu,
    bn: &BatchNorm,
    x: &Buffer,
    dy: &Buffer,
    gamma: Option<&Buffer>,
    running: Running,
    dx: &Buffer,
    grads: Option<Affine>,
    scratch: &Buffer,
) -> Result<Vec<Dispatch>> {
    let op = "batch_norm backward (eval)";
    let d = bn.dims(op)?;
    check_all(op, d.c, &[("running_mean", running.mean), ("running_var", running.var)])?;
    let mut list = match grads {
        Some(_) => sums(gpu, bn, &d, op, x, dy, running.mean, running.var, grads, scratch, EVAL)?,
        None => vec![],
    };
    list.push(grad_input_eval(gpu, bn, &d, op, dy, gamma, running.var, dx)?);
    Ok(list)
}

/// The two per-channel sums Σdy and Σdy·x̂, into scratch and `grads`.
#[allow(clippy::too_many_arguments)]
fn sums(
    gpu: &Gpu,
    bn: &BatchNorm,
    d: &Dims,
    op: &str,
    x: &Buffer,
    dy: &Buffer,
    mean: &Buffer,
    scale: &Buffer,
    grads: Option<Affine>,
    scratch: &Buffer,
    flags: u32,
) -> Result<Vec<Dispatch>> {
    check_all(op, d.total(), &[("input x", x), ("gradient dy", dy)])?;
    check_len(op, "scratch", scratch, bn.scratch_len())?;
    let [dgamma, dbeta] = channel_pair(gpu, op, d, ["dgamma", "dbeta"], grads.map(|g| [g.gamma, g.beta]))?;
    let (n, c, parts) = (d.total() as u64, d.c as u64, d.partials() as u64);
    let sums = [(1, x), (2, dy), (3, scratch), (4, mean), (5, scale)];
    let write = 4 * (2 * c + 2 * c * grads.is_some() as u64);
    let grads = flag(GRADS, grads.is_some());
    // Only the eval backward with dγ, dβ gets here under Fused (its dx needs no sums): the
    // channel is then summed the two-level way, which takes any length.
    if bn.method(gpu, d, op)? == Method::Direct {
        let cost = Cost { flops: 5 * n, bytes: 4 * 2 * n + write };
        let params = bn.params(d, flags | grads);
        let bindings = [&sums[..], &[(11, dgamma), (12, dbeta)]].concat();
        return Ok(vec![gpu.dispatch(kernel("grad_direct"), "", &params, &bindings, channel_grid(d), cost)?]);
    }
    let partial = gpu.dispatch(
        kernel("grad_partial"),
        "",
        &bn.params(d, flags),
        &sums,
        partial_grid(d),
        Cost { flops: 5 * n, bytes: 4 * (2 * n + 2 * parts) },
    )?;
    let reduce = gpu.dispatch(
        kernel("grad_reduce"),
        "",
        &bn.params(d, flags | grads),
        &[(3, scratch), (11, dgamma), (12, dbeta)],
        channel_grid(d),
        Cost { flops: 2 * parts, bytes: 4 * 2 * parts + write },
    )?;
    Ok(vec![partial, reduce])
}

#[allow(clippy::too_many_arguments)]
fn grad_input(
    gpu: &Gpu,
    bn: &BatchNorm,
    d: &Dims,
    op: &str,
    x: &Buffer,
    dy: &Buffer,
    gamma: Option<&Buffer>,
    saved: Saved,
    dx: &Buffer,
    scratch: &Buffer,
) -> Result<Dispatch> {
    check_all(op, d.total(), &[("input x", x), ("gradient dy", dy), ("output dx", dx)])?;
    check_len(op, "scratch", scratch, bn.scratch_len())?;
    let flags = flag(AFFINE, gamma.is_some());
    let gamma = check_gamma(gpu, op, d, gamma)?;
    gpu.dispatch(
        kernel("grad_input"),
        "",
        &bn.params(d, flags),
        &[(1, x), (2, dy), (3, scratch), (4, saved.mean), (5, saved.invstd), (8, gamma), (10, dx)],
        workgroups_1d(d.total(), WG),
        Cost::elementwise(d.total(), 8, 2, 1),
    )
}

#[allow(clippy::too_many_arguments)]
fn grad_input_eval(
    gpu: &Gpu,
    bn: &BatchNorm,
    d: &Dims,
    op: &str,
    dy: &Buffer,
    gamma: Option<&Buffer>,
    running_var: &Buffer,
    dx: &Buffer,
) -> Result<Dispatch> {
    check_all(op, d.total(), &[("gradient dy", dy), ("output dx", dx)])?;
    let flags = flag(AFFINE, gamma.is_some());
    let gamma = check_gamma(gpu, op, d, gamma)?;
    gpu.dispatch(
        kernel("grad_input_eval"),
        "",
        &bn.params(d, flags),
        &[(2, dy), (5, running_var), (8, gamma), (10, dx)],
        workgroups_1d(d.total(), WG),
        Cost::elementwise(d.total(), 2, 1, 1),
    )
}

/// γ when given (checked), else the dummy.
fn check_gamma<'a>(gpu: &'a Gpu, op: &str, d: &Dims, gamma: Option<&'a Buffer>) -> Result<&'a Buffer> {
    match gamma {
        Some(g) => check_len(op, "gamma", g, d.c).map(|_| g),
        None => Ok(&gpu.dummy),
    }
}
