//! Gradient penalties on a discriminator: R1 (Mescheder et al. 2018, as StyleGAN2 uses it)
//! and WGAN-GP (Gulrajani et al. 2017). Both differentiate D's input gradient, so the graph
//! holds a backward pass that the caller's `gradients(loss, d_params)` differentiates again.
//!
//! Each returns the unscaled penalty, a scalar tensor; the caller adds `γ/2 · r1` or
//! `λ · gp` to D's loss. Differentiating with respect to D's parameters only treats the
//! images (real, fake and the interpolation between them) as constants, as PyTorch's
//! `autograd.grad(..., create_graph=True)` followed by `loss.backward()` on D's optimizer does
//! when `fake` is detached.

use super::{Layer, Mode, Sequential};
use crate::graph::ops::{Add, BroadcastRows, Fill, Mul, RandomFill, Scale, Sqrt, Sum};
use crate::graph::{Graph, Tensor};
use crate::{bail, Result};

/// The eps inside WGAN-GP's norm, sqrt(‖g‖² + eps): keeps its gradient finite where a
/// sample's input gradient vanishes, and changes nothing visible otherwise (in f32,
/// ‖g‖² + 1e-12 rounds to ‖g‖² for ‖g‖² above about 1e-5).
pub const NORM_EPS: f32 = 1e-12;

/// Where WGAN-GP's interpolation weights come from.
#[derive(Clone, Copy, Debug)]
pub enum Epsilon {
    /// ε ~ U[0, 1) per sample from this Philox stream, fresh each step (the stream position
    /// is the step, as for dropout).
    Uniform { seed: u64 },
    /// A caller's `[N]` tensor (fixed weights, to compare with PyTorch).
    Given(Tensor),
}

/// R1 = mean over the batch of ‖∇ₓ D(x)‖² at the real images `real` `[N, ...]`. StyleGAN2
/// adds `γ/2 · R1` to D's loss (every k steps, scaled by k, for lazy regularization).
pub fn r1(g: &mut Graph, d: &Sequential, real: Tensor, mode: Mode) -> Result<Tensor> {
    refuse_batch_norm(d, "r1")?;
    let logits = d.forward(g, real, mode)?;
    r1_of_logits(g, real, logits)
}

/// [`r1`] from logits `D(real)` the graph already holds (D's loss on the real batch), so D's
/// forward runs once. `logits` must not mix samples (no batch norm in D: its backward has no
/// backward rule and fails naming the layer).
pub fn r1_of_logits(g: &mut Graph, real: Tensor, logits: Tensor) -> Result<Tensor> {
    let squared = squared_input_gradient_norms(g, real, logits, "r1")?;
    g.apply1(Sum { all: true, mean: true }, &[squared], "r1")
}

/// WGAN-GP = mean over the batch of (‖∇ D(x̂)‖₂ − 1)² at x̂ = ε·real + (1 − ε)·fake, one ε a
/// sample. The norm is sqrt(‖∇ D(x̂)‖² + [`NORM_EPS`]).
pub fn gradient_penalty(g: &mut Graph, d: &Sequential, real: Tensor, fake: Tensor, mode: Mode, eps: Epsilon) -> Result<Tensor> {
    refuse_batch_norm(d, "gradient_penalty")?;
    let mixed = interpolate(g, real, fake, eps)?;
    let logits = d.forward(g, mixed, mode)?;
    gradient_penalty_of_logits(g, mixed, logits)
}

/// x̂ = ε·real + (1 − ε)·fake with one ε a sample: WGAN-GP's points, for a discriminator
/// that is not a [`Sequential`] (a projection discriminator reading labels too), which the
/// caller applies to x̂ before [`gradient_penalty_of_logits`].
pub fn interpolate(g: &mut Graph, real: Tensor, fake: Tensor, eps: Epsilon) -> Result<Tensor> {
    let shape = g.shape(real).to_vec();
    if g.shape(fake) != shape.as_slice() || shape.is_empty() {
        bail!(Shape, "gradient_penalty: real images {:?} and fake images {:?} must have one shape [N, ...]", shape, g.shape(fake));
    }
    let batch = shape[0];
    let eps = match eps {
        Epsilon::Uniform { seed } => g.apply1(RandomFill { normal: false, a: 0.0, b: 1.0, seed, shape: vec![batch] }, &[], "gp.eps")?,
        Epsilon::Given(t) if g.shape(t) == [batch] => t,
        Epsilon::Given(t) => bail!(Shape, "gradient_penalty: eps has shape {:?}; it must be [{batch}], one weight a sample", g.shape(t)),
    };
    // x̂ = fake + ε·(real − fake), ε spread over each sample's pixels.
    let l = "gp.interpolate";
    let eps = g.apply1(BroadcastRows { alpha: 1.0, shape }, &[eps], l)?;
    let minus_fake = g.apply1(Scale { alpha: -1.0 }, &[fake], l)?;
    let diff = g.apply1(Add, &[real, minus_fake], l)?;
    let step = g.apply1(Mul, &[eps, diff], l)?;
    g.apply1(Add, &[fake, step], l)
}

/// [`gradient_penalty`] from x̂ = [`interpolate`]`(..)` and the logits D(x̂) the caller built.
/// D must not mix samples (no batch norm: its backward has no backward rule and fails naming
/// the layer).
pub fn gradient_penalty_of_logits(g: &mut Graph, mixed: Tensor, logits: Tensor) -> Result<Tensor> {
    let batch = g.shape(mixed).first().copied().unwrap_or(0);
    let squared = squared_input_gradient_norms(g, mixed, logits, "gp")?;
    let norm = g.apply1(Sqrt { eps: NORM_EPS }, &[squared], "gp")?;
    let minus_one = g.apply1(Fill { value: -1.0, shape: vec![batch] }, &[], "gp")?;
    let excess = g.apply1(Add, &[norm, minus_one], "gp")?;
    let excess_squared = g.apply1(Mul, &[excess, excess], "gp")?;
    g.apply1(Sum { all: true, mean: true }, &[excess_squared], "gp")
}

/// ‖∇ₓ D(x)_i‖² per sample, `[N]`, from logits = D(x). The gradient of Σᵢ D(x)ᵢ with respect
/// to x is each sample's own gradient because samples do not mix in D (no batch norm).
fn squared_input_gradient_norms(g: &mut Graph, x: Tensor, logits: Tensor, what: &str) -> Result<Tensor> {
    let shape = g.shape(x).to_vec();
    if shape.is_empty() || g.shape(logits).first() != Some(&shape[0]) {
        bail!(Shape, "{what}: logits {:?} must hold one row per image of {:?}", g.shape(logits), shape);
    }
    let total = g.apply1(Sum { all: true, mean: false }, &[logits], what)?;
    let Some(grad) = g.backward(total, &[x])?[0] else {
        bail!(Invalid, "{what}: the discriminator's output does not depend on its input");
    };
    let per_sample = shape[1..].iter().product();
    let grad = g.reshape(grad, &[shape[0], per_sample])?;
    let squares = g.apply1(Mul, &[grad, grad], what)?;
    g.apply1(Sum { all: false, mean: false }, &[squares], what)
}

/// Batch norm mixes the samples of a batch, and its backward has no backward rule: refuse
/// before building anything, naming the layer.
fn refuse_batch_norm(d: &Sequential, what: &str) -> Result<()> {
    match d.layers.iter().position(|l| matches!(l, Layer::BatchNorm(_))) {
        Some(i) => bail!(
            Invalid,
            "{what}: second derivatives through batch norm (layer {:?}) are not supported; use a discriminator without batch norm for R1/GP",
            d.name(i)
        ),
        None => Ok(()),
    }
}
