//! Losses reduce to a scalar (shape []). Their gradient ops read the upstream gradient, also
//! a scalar, so a loss can be scaled or summed with others before `backward`.

use crate::gpu::{Dispatch, Gpu};
use crate::graph::{Graph, HostValue, NodeView, Op, OpIo, Tensor};
use crate::kernels::loss::{self as k, Reduction};
use crate::reference::loss as r;
use crate::{bail, Result};

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LossKind {
    /// binary_cross_entropy_with_logits(x, target), mean.
    BceWithLogits,
    /// binary_cross_entropy(p, target) with the given reduction.
    Bce(Reduction),
    /// mse_loss(x, target), mean.
    Mse,
    /// kl_normal(mu, logvar) = −0.5·Σ(1 + logvar − mu² − exp(logvar)).
    KlNormal,
}

#[derive(Debug)]
pub struct Loss(pub LossKind);

fn n_of(shape: &[usize]) -> usize {
    shape.iter().product()
}

impl Op for Loss {
    fn name(&self) -> &'static str {
        match self.0 {
            LossKind::BceWithLogits => "binary_cross_entropy_with_logits",
            LossKind::Bce(_) => "binary_cross_entropy",
            LossKind::Mse => "mse_loss",
            LossKind::KlNormal => "kl_normal",
        }
    }
    fn infer(&self, x: &[&[usize]]) -> std::result::Result<Vec<Vec<usize>>, String> {
        super::same_shape(x[0], x[1])?;
        Ok(vec![vec![]])
    }
    fn scratch(&self, x: &[&[usize]]) -> Vec<usize> {
        k::scratch_lens(n_of(x[0]))
    }
    fn lower(&self, gpu: &Gpu, io: &OpIo) -> Result<Vec<Dispatch>> {
        let n = n_of(io.input_shapes[0]);
        let (a, b, y, s) = (io.inputs[0], io.inputs[1], io.outputs[0], &io.scratch);
        match self.0 {
            LossKind::BceWithLogits => k::binary_cross_entropy_with_logits(gpu, n, a, b, y, s),
            LossKind::Bce(red) => k::binary_cross_entropy(gpu, red, n, a, b, y, s),
            LossKind::Mse => k::mse_loss(gpu, n, a, b, y, s),
            LossKind::KlNormal => k::kl_normal(gpu, n, a, b, y, s),
        }
    }
    fn reference(&self, x: &mut [HostValue]) -> Vec<HostValue> {
        let (a, b) = (&x[0].1, &x[1].1);
        let v = match self.0 {
            LossKind::BceWithLogits => r::binary_cross_entropy_with_logits(a, b),
            LossKind::Bce(red) => r::binary_cross_entropy(a, b, red == Reduction::Mean),
            LossKind::Mse => r::mse_loss(a, b),
            LossKind::KlNormal => r::kl_normal(a, b),
        };
        vec![(vec![], vec![v])]
    }
    fn backward(&self, g: &mut Graph, n: &NodeView, dys: &[Option<Tensor>], needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let dy = dys[0].expect("gradient");
        let (a, b) = (n.inputs[0], n.inputs[1]);
        if self.0 == LossKind::KlNormal {
            let d = g.apply(LossGrad(self.0), &[a, b, dy], &n.layer)?;
            return Ok(vec![Some(d[0]), Some(d[1])]);
        }
        let da = g.apply1(LossGrad(self.0), &[a, b, dy], &n.layer)?;
        let db = match (needs[1], self.0) {
            (false, _) => None,
            (true, LossKind::Mse) => Some(g.apply1(super::Scale { alpha: -1.0 }, &[da], &n.layer)?),
            (true, _) => bail!(Invalid, "{} {:?}: the gradient with respect to the target is not supported", self.name(), n.layer),
        };
        Ok(vec![Some(da), db])
    }
}

/// Gradient of [`Loss`]: inputs (a, b, dy) → d(a), or (dmu, dlogvar) for kl_normal.
#[derive(Debug)]
pub struct LossGrad(pub LossKind);

impl Op for LossGrad {
    fn name(&self) -> &'static str {
        "loss_backward"
    }
    fn infer(&self, x: &[&[usize]]) -> std::result::Result<Vec<Vec<usize>>, String> {
        let outputs = if self.0 == LossKind::KlNormal { 2 } else { 1 };
        Ok(vec![x[0].to_vec(); outputs])
    }
    fn lower(&self, gpu: &Gpu, io: &OpIo) -> Result<Vec<Dispatch>> {
        let n = n_of(io.input_shapes[0]);
        let (a, b, dy, out) = (io.inputs[0], io.inputs[1], io.inputs[2], io.outputs[0]);
        Ok(vec![match self.0 {
            LossKind::BceWithLogits => k::binary_cross_entropy_with_logits_backward(gpu, n, a, b, dy, out)?,
            LossKind::Bce(red) => k::binary_cross_entropy_backward(gpu, red, n, a, b, dy, out)?,
            LossKind::Mse => k::mse_loss_backward(gpu, n, a, b, dy, out)?,
            LossKind::KlNormal => k::kl_normal_backward(gpu, n, a, b, dy, out, io.outputs[1])?,
        }])
    }
    fn reference(&self, x: &mut [HostValue]) -> Vec<HostValue> {
        let (a, b, dy) = (&x[0].1, &x[1].1, x[2].1[0]);
        let shape = x[0].0.clone();
        match self.0 {
            LossKind::BceWithLogits => vec![(shape, r::binary_cross_entropy_with_logits_backward(a, b, dy))],
            LossKind::Bce(red) => vec![(shape, r::binary_cross_entropy_backward(a, b, dy, red == Reduction::Mean))],
            LossKind::Mse => vec![(shape, r::mse_loss_backward(a, b, dy))],
            LossKind::KlNormal => {
                let (dmu, dlogvar) = r::kl_normal_backward(a, b, dy);
                vec![(shape.clone(), dmu), (shape, dlogvar)]
            }
        }
    }
    fn backward(&self, _: &mut Graph, n: &NodeView, _: &[Option<Tensor>], _: &[bool]) -> Result<Vec<Option<Tensor>>> {
        bail!(Invalid, "{}: second derivatives are not supported", n.layer)
    }
}
