//! shaders/loss.wgsl: binary_cross_entropy(_with_logits), mse_loss and the VAE's KL term over
//! `n` elements, each with PyTorch's `reduction` (kl_normal always sums), cross_entropy over
//! rows of logits (below), plus their gradients.
//!
//! Forward with reduction mean or sum is several dispatches: one writes the per-element terms,
//! then [`reduce`](super::reduce) sums them hierarchically (accurate for long inputs) into a
//! 1-element loss. The terms and the reduction's partial sums live in caller-owned scratch
//! buffers of [`scratch_lens`], allocated once so the dispatches can be recorded and replayed.
//! With reduction none the terms are the output (n elements): one dispatch, no scratch.
//!
//! Backward reads the upstream gradient g — 1 element for mean and sum, n for none — and writes
//! d(input). Gradients with respect to the target are not computed: for mse_loss it is
//! −d(input) (elementwise::scale by −1).
//!
//! cross_entropy works on rows: logits `[N, C]`, a target of N class indices held as f32, and
//! one term per row, reduced as above (mean divides by N). Its backward is two dispatches: one
//! invocation per row finds the row's max and Σ e^(x − max) (into a caller-owned scratch of
//! [`cross_entropy_row_stats_len`]), then one per logit writes (softmax − onehot)·g. A target
//! that is not an integer in [0, C) makes that row's loss and gradient NaN on the GPU (the
//! training loop stops on a NaN loss); the CPU reference and `kiln check` report it as an
//! error naming the row instead.

use super::check_len;
use super::conv::LOOP_BUDGET;
use super::reduce::{self, Rows};
use crate::gpu::{workgroups_1d, Buffer, Cost, Dispatch, Gpu, KernelId};
use crate::{bail, Error, Result};

const WG: u32 = 256;

/// PyTorch's `reduction` argument, for the losses that offer a choice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reduction {
    Mean,
    Sum,
    /// One loss per element, shaped like the input.
    None,
}

impl Reduction {
    /// The factor on each term's gradient.
    fn scale(self, n: usize) -> f32 {
        match self {
            Reduction::Mean => 1.0 / n as f32,
            Reduction::Sum | Reduction::None => 1.0,
        }
    }

    /// Elements of the loss (and of its upstream gradient) over `n` input elements.
    pub fn output_len(self, n: usize) -> usize {
        if self == Reduction::None { n } else { 1 }
    }
}

impl std::str::FromStr for Reduction {
    type Err = Error;

    /// PyTorch's spelling: `"mean"`, `"sum"` or `"none"`.
    fn from_str(s: &str) -> Result<Reduction> {
        match s {
            "mean" => Ok(Reduction::Mean),
            "sum" => Ok(Reduction::Sum),
            "none" => Ok(Reduction::None),
            _ => bail!(Invalid, "reduction must be \"mean\", \"sum\" or \"none\", got {s:?}"),
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    scale: f32,
    g_stride: u32,
    classes: u32,
    nan: f32,
}

impl Params {
    fn new(n: usize, scale: f32, g_stride: u32) -> Params {
        Params { n: n as u32, scale, g_stride, classes: 0, nan: f32::NAN }
    }
}

/// Element counts of the scratch buffers a loss over `n` elements needs: the terms, then the
/// reduction's partial sums; none for [`Reduction::None`].
pub fn scratch_lens(reduction: Reduction, n: usize) -> Vec<usize> {
    if reduction == Reduction::None {
        return vec![];
    }
    let mut lens = vec![n];
    lens.extend(reduce::scratch_lens(Rows { rows: 1, cols: n }));
    lens
}

fn check_inputs(op: &str, reduction: Reduction, n: usize, x: &Buffer, target: &Buffer, names: [&str; 2]) -> Result<()> {
    if n == 0 && reduction == Reduction::Mean {
        bail!(Shape, "{op}: mean over an empty input");
    }
    if n > u32::MAX as usize {
        bail!(Shape, "{op}: {n} elements are more than a 32-bit index reaches");
    }
    check_len(op, names[0], x, n)?;
    check_len(op, names[1], target, n)
}

/// Terms kernel `entry` into `loss` (reduction none), or into scratch then
/// `scale` · Σ terms into `loss[0]`.
#[allow(clippy::too_many_arguments)]
fn forward(gpu: &Gpu, op: &str, entry: &'static str, reduction: Reduction, n: usize, inputs: [(&str, &Buffer); 2], loss: &Buffer, scratch: &[Buffer], flops: u64) -> Result<Vec<Dispatch>> {
    let [(xn, x), (tn, t)] = inputs;
    check_inputs(op, reduction, n, x, t, [xn, tn])?;
    let kernel = KernelId::new("loss", entry);
    let params = Params::new(n, 1.0, 0);
    reduced(gpu, op, reduction, n, loss, scratch, |out| {
        gpu.dispatch(kernel, op, &params, &[(1, x), (2, t), (4, out)], workgroups_1d(n, WG), Cost::elementwise(n, flops, 2, 1))
    })
}

/// `terms_into(buffer)` writes `n` terms: into `loss` itself for reduction none, else into
/// scratch, then `scale` · Σ terms into `loss[0]`.
fn reduced(gpu: &Gpu, op: &str, reduction: Reduction, n: usize, loss: &Buffer, scratch: &[Buffer], terms_into: impl Fn(&Buffer) -> Result<Dispatch>) -> Result<Vec<Dispatch>> {
    check_len(op, "loss", loss, reduction.output_len(n))?;
    if reduction == Reduction::None {
        return Ok(vec![terms_into(loss)?]);
    }
    let Some((terms, partials)) = scratch.split_first() else {
        bail!(Shape, "{op}: no scratch buffers given; loss::scratch_lens({reduction:?}, {n}) lists them");
    };
    check_len(op, "terms scratch", terms, n)?;
    let mut dispatches = vec![terms_into(terms)?];
    dispatches.extend(reduce::sum_scaled(gpu, op, Rows { rows: 1, cols: n }, reduction.scale(n), terms, loss, partials)?);
    Ok(dispatches)
}

#[allow(clippy::too_many_arguments)]
fn backward(gpu: &Gpu, op: &str, entry: &'static str, reduction: Reduction, n: usize, inputs: [(&str, &Buffer); 2], g: &Buffer, outputs: &[(&str, &Buffer)], flops: u64) -> Result<Dispatch> {
    let [(xn, x), (tn, t)] = inputs;
    check_inputs(op, reduction, n, x, t, [xn, tn])?;
    check_len(op, "upstream gradient g", g, reduction.output_len(n))?;
    let mut bindings = vec![(1, x), (2, t), (3, g)];
    for (binding, (name, b)) in (4..).zip(outputs) {
        check_len(op, name, b, n)?;
        bindings.push((binding, *b));
    }
    let kernel = KernelId::new("loss", entry);
    let per_element_g = reduction == Reduction::None;
    let params = Params::new(n, reduction.scale(n), u32::from(per_element_g));
    let cost = Cost::elementwise(n, flops, 2 + u64::from(per_element_g), outputs.len() as u64);
    gpu.dispatch(kernel, op, &params, &bindings, workgroups_1d(n, WG), cost)
}

/// loss = reduce(max(x, 0) − x·t + log1p(e^−|x|)): exact for saturated logits (|x| ≫ 50).
pub fn binary_cross_entropy_with_logits(gpu: &Gpu, reduction: Reduction, n: usize, x: &Buffer, target: &Buffer, loss: &Buffer, scratch: &[Buffer]) -> Result<Vec<Dispatch>> {
    let op = "binary_cross_entropy_with_logits";
    forward(gpu, op, "bce_with_logits_forward", reduction, n, [("input", x), ("target", target)], loss, scratch, 12)
}

/// dx = (sigmoid(x) − t) · g [/ n for Mean]
pub fn binary_cross_entropy_with_logits_backward(gpu: &Gpu, reduction: Reduction, n: usize, x: &Buffer, target: &Buffer, g: &Buffer, dx: &Buffer) -> Result<Dispatch> {
    let op = "binary_cross_entropy_with_logits_backward";
    backward(gpu, op, "bce_with_logits_backward", reduction, n, [("input", x), ("target", target)], g, &[("dx", dx)], 8)
}

/// loss = reduce(−(t·log p + (1 − t)·log(1 − p))), each log clamped at −100 as PyTorch.
/// p must lie in [0, 1] (PyTorch checks; here p outside gives NaN).
pub fn binary_cross_entropy(gpu: &Gpu, reduction: Reduction, n: usize, p: &Buffer, target: &Buffer, loss: &Buffer, scratch: &[Buffer]) -> Result<Vec<Dispatch>> {
    let op = "binary_cross_entropy";
    forward(gpu, op, "bce_forward", reduction, n, [("input", p), ("target", target)], loss, scratch, 12)
}

/// dp = (p − t) / max(p(1 − p), 1e-12) · g [/ n for Mean], PyTorch's formula.
pub fn binary_cross_entropy_backward(gpu: &Gpu, reduction: Reduction, n: usize, p: &Buffer, target: &Buffer, g: &Buffer, dp: &Buffer) -> Result<Dispatch> {
    let op = "binary_cross_entropy_backward";
    backward(gpu, op, "bce_backward", reduction, n, [("input", p), ("target", target)], g, &[("dp", dp)], 6)
}

/// loss = reduce((x − t)²)
pub fn mse_loss(gpu: &Gpu, reduction: Reduction, n: usize, x: &Buffer, target: &Buffer, loss: &Buffer, scratch: &[Buffer]) -> Result<Vec<Dispatch>> {
    forward(gpu, "mse_loss", "mse_forward", reduction, n, [("input", x), ("target", target)], loss, scratch, 2)
}

/// dx = 2(x − t) · g [/ n for Mean]; d(target) = −dx.
pub fn mse_loss_backward(gpu: &Gpu, reduction: Reduction, n: usize, x: &Buffer, target: &Buffer, g: &Buffer, dx: &Buffer) -> Result<Dispatch> {
    backward(gpu, "mse_loss_backward", "mse_backward", reduction, n, [("input", x), ("target", target)], g, &[("dx", dx)], 4)
}

/// The VAE's KL(N(mu, e^logvar) ‖ N(0, 1)) summed over all elements:
/// loss = −½ Σ(1 + logvar − mu² − e^logvar). Scratch: [`scratch_lens`]`(Reduction::Sum, n)`.
pub fn kl_normal(gpu: &Gpu, n: usize, mu: &Buffer, logvar: &Buffer, loss: &Buffer, scratch: &[Buffer]) -> Result<Vec<Dispatch>> {
    forward(gpu, "kl_normal", "kl_normal_forward", Reduction::Sum, n, [("mu", mu), ("logvar", logvar)], loss, scratch, 12)
}

/// dmu = mu·g, dlogvar = ½(e^logvar − 1)·g, from the 1-element upstream gradient g.
pub fn kl_normal_backward(gpu: &Gpu, n: usize, mu: &Buffer, logvar: &Buffer, g: &Buffer, dmu: &Buffer, dlogvar: &Buffer) -> Result<Dispatch> {
    let outputs = [("dmu", dmu), ("dlogvar", dlogvar)];
    backward(gpu, "kl_normal_backward", "kl_normal_backward", Reduction::Sum, n, [("mu", mu), ("logvar", logvar)], g, &outputs, 14)
}

/// Most classes cross_entropy takes: each row is one invocation's loop over its logits, which
/// must stay within llvmpipe's loop limit.
pub const MAX_CLASSES: usize = LOOP_BUDGET;

/// Elements of cross_entropy_backward's row statistics scratch for `rows` rows.
pub fn cross_entropy_row_stats_len(rows: usize) -> usize {
    2 * rows
}

/// The checks of both passes, and their parameters (scale and g_stride for the backward).
fn cross_entropy_params(op: &str, reduction: Reduction, shape: Rows, logits: &Buffer, target: &Buffer) -> Result<Params> {
    let Rows { rows, cols: classes } = shape;
    if classes == 0 || classes > MAX_CLASSES {
        bail!(
            Limit,
            "{op}: {classes} classes per row; one invocation loops over a row, and more than {MAX_CLASSES} \
             passes the loop iterations CPU adapters (llvmpipe) run before silently stopping (at least 1 is needed)"
        );
    }
    if rows == 0 && reduction == Reduction::Mean {
        bail!(Shape, "{op}: mean over an empty batch");
    }
    if rows.checked_mul(classes).is_none_or(|n| n > u32::MAX as usize) {
        bail!(Shape, "{op}: {rows} x {classes} logits are more than a 32-bit index reaches");
    }
    check_len(op, "input (logits)", logits, rows * classes)?;
    check_len(op, "target", target, rows)?;
    let per_row_g = reduction == Reduction::None;
    Ok(Params { classes: classes as u32, ..Params::new(rows, reduction.scale(rows), u32::from(per_row_g)) })
}

/// loss = reduce over rows of log Σ_c e^x[r, c] − x[r, target[r]], logits `[rows, cols]`,
/// target `[rows]` of class indices as f32. Stable for any logits (max subtracted); a row
/// whose target is not an integer in [0, cols) gets a NaN loss. Scratch:
/// [`scratch_lens`]`(reduction, rows)`.
pub fn cross_entropy(gpu: &Gpu, reduction: Reduction, shape: Rows, logits: &Buffer, target: &Buffer, loss: &Buffer, scratch: &[Buffer]) -> Result<Vec<Dispatch>> {
    let op = "cross_entropy";
    let params = cross_entropy_params(op, reduction, shape, logits, target)?;
    let kernel = KernelId::new("loss", "cross_entropy_forward");
    let cost = Cost { flops: 4 * (shape.rows * shape.cols) as u64, bytes: 4 * (shape.rows * (shape.cols + 2)) as u64 };
    reduced(gpu, op, reduction, shape.rows, loss, scratch, |out| {
        gpu.dispatch(kernel, op, &params, &[(1, logits), (2, target), (4, out)], workgroups_1d(shape.rows, WG), cost)
    })
}

/// d(logits) = (softmax − onehot(target)) · g [/ rows for Mean], g the loss's upstream
/// gradient (1 element, or `rows` for reduction none); NaN in a row whose target is invalid.
/// `row_stats` is scratch of [`cross_entropy_row_stats_len`]`(rows)` elements.
#[allow(clippy::too_many_arguments)]
pub fn cross_entropy_backward(gpu: &Gpu, reduction: Reduction, shape: Rows, logits: &Buffer, target: &Buffer, g: &Buffer, row_stats: &Buffer, dx: &Buffer) -> Result<Vec<Dispatch>> {
    let op = "cross_entropy_backward";
    let params = cross_entropy_params(op, reduction, shape, logits, target)?;
    let n = shape.rows * shape.cols;
    check_len(op, "upstream gradient g", g, reduction.output_len(shape.rows))?;
    check_len(op, "row statistics scratch", row_stats, cross_entropy_row_stats_len(shape.rows))?;
    check_len(op, "dx", dx, n)?;
    let kernel = |entry| KernelId::new("loss", entry);
    let stats_cost = Cost { flops: 3 * n as u64, bytes: 4 * (n + 2 * shape.rows) as u64 };
    let stats = gpu.dispatch(kernel("cross_entropy_row_stats"), op, &params, &[(1, logits), (6, row_stats)], workgroups_1d(shape.rows, WG), stats_cost)?;
    let bindings = [(1, logits), (2, target), (3, g), (4, dx), (6, row_stats)];
    let grad = gpu.dispatch(kernel("cross_entropy_backward"), op, &params, &bindings, workgroups_1d(n, WG), Cost::elementwise(n, 6, 2, 1))?;
    Ok(vec![stats, grad])
}
