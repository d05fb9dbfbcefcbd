//! shaders/loss.wgsl: binary_cross_entropy(_with_logits), mse_loss and the VAE's KL term,
//! each a scalar loss over `n` elements plus its gradient kernel.
//!
//! Forward is several dispatches: one writes the per-element terms, then
//! [`reduce`](super::reduce) sums them hierarchically (accurate for long inputs). The terms
//! and the reduction's partial sums live in caller-owned scratch buffers of
//! [`scratch_lens`]`(n)`, allocated once so the dispatches can be recorded and replayed.
//! Backward reads the upstream gradient g from a 1-element buffer and writes d(input).
//! Gradients with respect to the target are not computed: for mse_loss it is −d(input)
//! (elementwise::scale by −1).

use super::check_len;
use super::reduce::{self, Rows};
use crate::gpu::{workgroups_1d, Buffer, Cost, Dispatch, Gpu, KernelId};
use crate::{bail, Result};

const WG: u32 = 256;

/// PyTorch's `reduction` argument, for the losses that offer a choice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reduction {
    Mean,
    Sum,
}

impl Reduction {
    fn scale(self, n: usize) -> f32 {
        match self {
            Reduction::Mean => 1.0 / n as f32,
            Reduction::Sum => 1.0,
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    scale: f32,
}

/// Element counts of the scratch buffers a loss over `n` elements needs: the terms, then the
/// reduction's partial sums.
pub fn scratch_lens(n: usize) -> Vec<usize> {
    let mut lens = vec![n];
    lens.extend(reduce::scratch_lens(Rows { rows: 1, cols: n }));
    lens
}

fn check_inputs(op: &str, reduction: Reduction, n: usize, x: &Buffer, target: &Buffer, names: [&str; 2]) -> Result<()> {
    if n == 0 && reduction == Reduction::Mean {
        bail!(Shape, "{op}: mean over an empty input");
    }
    check_len(op, names[0], x, n)?;
    check_len(op, names[1], target, n)
}

/// Terms kernel `entry`, then `scale` · Σ terms into `loss[0]`.
#[allow(clippy::too_many_arguments)]
fn forward(gpu: &Gpu, op: &str, entry: &'static str, reduction: Reduction, n: usize, inputs: [(&str, &Buffer); 2], loss: &Buffer, scratch: &[Buffer], flops: u64) -> Result<Vec<Dispatch>> {
    let [(xn, x), (tn, t)] = inputs;
    check_inputs(op, reduction, n, x, t, [xn, tn])?;
    check_len(op, "loss", loss, 1)?;
    let Some((terms, partials)) = scratch.split_first() else {
        bail!(Shape, "{op}: no scratch buffers given; loss::scratch_lens({n}) lists them");
    };
    check_len(op, "terms scratch", terms, n)?;
    let kernel = KernelId { shader: "loss", entry };
    let params = Params { n: n as u32, scale: 1.0 };
    let bindings = [(1, x), (2, t), (4, terms)];
    let mut dispatches = vec![gpu.dispatch(kernel, op, &params, &bindings, workgroups_1d(n, WG), Cost::elementwise(n, flops, 2, 1))?];
    dispatches.extend(reduce::sum_scaled(gpu, op, Rows { rows: 1, cols: n }, reduction.scale(n), terms, loss, partials)?);
    Ok(dispatches)
}

#[allow(clippy::too_many_arguments)]
fn backward(gpu: &Gpu, op: &str, entry: &'static str, reduction: Reduction, n: usize, inputs: [(&str, &Buffer); 2], g: &Buffer, outputs: &[(&str, &Buffer)], flops: u64) -> Result<Dispatch> {
    let [(xn, x), (tn, t)] = inputs;
    check_inputs(op, reduction, n, x, t, [xn, tn])?;
    check_len(op, "upstream gradient g", g, 1)?;
    let mut bindings = vec![(1, x), (2, t), (3, g)];
    for (binding, (name, b)) in (4..).zip(outputs) {
        check_len(op, name, b, n)?;
        bindings.push((binding, *b));
    }
    let kernel = KernelId { shader: "loss", entry };
    let params = Params { n: n as u32, scale: reduction.scale(n) };
    let cost = Cost::elementwise(n, flops, 2, outputs.len() as u64);
    gpu.dispatch(kernel, op, &params, &bindings, workgroups_1d(n, WG), cost)
}

/// loss = mean(max(x, 0) − x·t + log1p(e^−|x|)): exact for saturated logits (|x| ≫ 50).
pub fn binary_cross_entropy_with_logits(gpu: &Gpu, n: usize, x: &Buffer, target: &Buffer, loss: &Buffer, scratch: &[Buffer]) -> Result<Vec<Dispatch>> {
    let op = "binary_cross_entropy_with_logits";
    forward(gpu, op, "bce_with_logits_forward", Reduction::Mean, n, [("input", x), ("target", target)], loss, scratch, 12)
}

/// dx = (sigmoid(x) − t) / n · g
pub fn binary_cross_entropy_with_logits_backward(gpu: &Gpu, n: usize, x: &Buffer, target: &Buffer, g: &Buffer, dx: &Buffer) -> Result<Dispatch> {
    let op = "binary_cross_entropy_with_logits_backward";
    backward(gpu, op, "bce_with_logits_backward", Reduction::Mean, n, [("input", x), ("target", target)], g, &[("dx", dx)], 8)
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

/// loss = mean((x − t)²)
pub fn mse_loss(gpu: &Gpu, n: usize, x: &Buffer, target: &Buffer, loss: &Buffer, scratch: &[Buffer]) -> Result<Vec<Dispatch>> {
    forward(gpu, "mse_loss", "mse_forward", Reduction::Mean, n, [("input", x), ("target", target)], loss, scratch, 2)
}

/// dx = 2(x − t) / n · g; d(target) = −dx.
pub fn mse_loss_backward(gpu: &Gpu, n: usize, x: &Buffer, target: &Buffer, g: &Buffer, dx: &Buffer) -> Result<Dispatch> {
    backward(gpu, "mse_loss_backward", "mse_backward", Reduction::Mean, n, [("input", x), ("target", target)], g, &[("dx", dx)], 4)
}

/// The VAE's KL(N(mu, e^logvar) ‖ N(0, 1)) summed over all elements:
/// loss = −½ Σ(1 + logvar − mu² − e^logvar).
pub fn kl_normal(gpu: &Gpu, n: usize, mu: &Buffer, logvar: &Buffer, loss: &Buffer, scratch: &[Buffer]) -> Result<Vec<Dispatch>> {
    forward(gpu, "kl_normal", "kl_normal_forward", Reduction::Sum, n, [("mu", mu), ("logvar", logvar)], loss, scratch, 12)
}

/// dmu = mu·g, dlogvar = ½(e^logvar − 1)·g
pub fn kl_normal_backward(gpu: &Gpu, n: usize, mu: &Buffer, logvar: &Buffer, g: &Buffer, dmu: &Buffer, dlogvar: &Buffer) -> Result<Dispatch> {
    let outputs = [("dmu", dmu), ("dlogvar", dlogvar)];
    backward(gpu, "kl_normal_backward", "kl_normal_backward", Reduction::Sum, n, [("mu", mu), ("logvar", logvar)], g, &outputs, 14)
}
