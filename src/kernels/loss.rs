//! shaders/loss.wgsl: binary_cross_entropy(_with_logits), mse_loss and the VAE's KL term over
//! `n` elements, each with PyTorch's `reduction` (kl_normal always sums), plus their gradients.
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

use super::check_len;
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
    check_len(op, "loss", loss, reduction.output_len(n))?;
    let kernel = KernelId { shader: "loss", entry };
    let params = Params { n: n as u32, scale: 1.0, g_stride: 0 };
    let terms_into = |out: &Buffer| {
        gpu.dispatch(kernel, op, &params, &[(1, x), (2, t), (4, out)], workgroups_1d(n, WG), Cost::elementwise(n, flops, 2, 1))
    };
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
    let kernel = KernelId { shader: "loss", entry };
    let per_element_g = reduction == Reduction::None;
    let params = Params { n: n as u32, scale: reduction.scale(n), g_stride: u32::from(per_element_g) };
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
