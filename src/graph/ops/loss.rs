//! Losses with PyTorch's `reduction`: mean and sum give a scalar (shape []), none a tensor
//! shaped like the input. Their gradient ops read the upstream gradient, shaped like the loss,
//! so a loss can be scaled, weighted or summed with others before `backward`.

use crate::gpu::{Dispatch, Gpu};
use crate::graph::{Graph, HostValue, NodeView, Op, OpIo, Tensor};
use crate::kernels::loss::{self as k, Reduction};
use crate::reference::loss as r;
use crate::{bail, Result};

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LossKind {
    /// binary_cross_entropy_with_logits(x, target) with the given reduction.
    BceWithLogits(Reduction),
    /// binary_cross_entropy(p, target) with the given reduction.
    Bce(Reduction),
    /// mse_loss(x, target) with the given reduction.
    Mse(Reduction),
    /// kl_normal(mu, logvar) = −0.5·Σ(1 + logvar − mu² − exp(logvar)), always a sum.
    KlNormal,
}

impl LossKind {
    pub fn reduction(self) -> Reduction {
        match self {
            LossKind::BceWithLogits(red) | LossKind::Bce(red) | LossKind::Mse(red) => red,
            LossKind::KlNormal => Reduction::Sum,
        }
    }
}

#[derive(Debug)]
pub struct Loss(pub LossKind);

fn n_of(shape: &[usize]) -> usize {
    shape.iter().product()
}

impl Op for Loss {
    fn name(&self) -> &'static str {
        match self.0 {
            LossKind::BceWithLogits(_) => "binary_cross_entropy_with_logits",
            LossKind::Bce(_) => "binary_cross_entropy",
            LossKind::Mse(_) => "mse_loss",
            LossKind::KlNormal => "kl_normal",
        }
    }
    fn infer(&self, x: &[&[usize]]) -> std::result::Result<Vec<Vec<usize>>, String> {
        super::same_shape(x[0], x[1])?;
        let shape = if self.0.reduction() == Reduction::None { x[0].to_vec() } else { vec![] };
        Ok(vec![shape])
    }
    fn scratch(&self, x: &[&[usize]]) -> Vec<usize> {
        k::scratch_lens(self.0.reduction(), n_of(x[0]))
    }
    fn lower(&self, gpu: &Gpu, io: &OpIo) -> Result<Vec<Dispatch>> {
        let n = n_of(io.input_shapes[0]);
        let (a, b, y, s) = (io.inputs[0], io.inputs[1], io.outputs[0], &io.scratch);
        match self.0 {
            LossKind::BceWithLogits(red) => k::binary_cross_entropy_with_logits(gpu, red, n, a, b, y, s),
            LossKind::Bce(red) => k::binary_cross_entropy(gpu, red, n, a, b, y, s),
            LossKind::Mse(red) => k::mse_loss(gpu, red, n, a, b, y, s),
            LossKind::KlNormal => k::kl_normal(gpu, n, a, b, y, s),
        }
    }
    fn reference(&self, x: &mut [HostValue]) -> Vec<HostValue> {
        let (a, b) = (&x[0].1, &x[1].1);
        let v = match self.0 {
            LossKind::BceWithLogits(red) => r::binary_cross_entropy_with_logits(a, b, red),
            LossKind::Bce(red) => r::binary_cross_entropy(a, b, red),
            LossKind::Mse(red) => r::mse_loss(a, b, red),
            LossKind::KlNormal => vec![r::kl_normal(a, b)],
        };
        let shape = if self.0.reduction() == Reduction::None { x[0].0.clone() } else { vec![] };
        vec![(shape, v)]
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
            (true, LossKind::Mse(_)) => Some(g.apply1(super::Scale { alpha: -1.0 }, &[da], &n.layer)?),
            (true, _) => bail!(Invalid, "{} {:?}: the gradient with respect to the target is not supported", self.name(), n.layer),
        };
        Ok(vec![Some(da), db])
    }
}

/// Gradient of [`Loss`]: inputs (a, b, dy) → d(a), or (dmu, dlogvar) for kl_normal. dy is
/// shaped like the loss: a scalar, or like `a` for reduction none.
#[derive(Debug)]
pub struct LossGrad(pub LossKind);

impl Op for LossGrad {
    fn name(&self) -> &'static str {
        "loss_backward"
    }
    fn infer(&self, x: &[&[usize]]) -> std::result::Result<Vec<Vec<usize>>, String> {
        let loss_len = self.0.reduction().output_len(n_of(x[0]));
        if n_of(x[2]) != loss_len {
            return Err(format!("upstream gradient has shape {:?}, the loss has {loss_len} elements", x[2]));
        }
        let outputs = if self.0 == LossKind::KlNormal { 2 } else { 1 };
        Ok(vec![x[0].to_vec(); outputs])
    }
    fn lower(&self, gpu: &Gpu, io: &OpIo) -> Result<Vec<Dispatch>> {
        let n = n_of(io.input_shapes[0]);
        let (a, b, dy, out) = (io.inputs[0], io.inputs[1], io.inputs[2], io.outputs[0]);
        Ok(vec![match self.0 {
            LossKind::BceWithLogits(red) => k::binary_cross_entropy_with_logits_backward(gpu, red, n, a, b, dy, out)?,
            LossKind::Bce(red) => k::binary_cross_entropy_backward(gpu, red, n, a, b, dy, out)?,
            LossKind::Mse(red) => k::mse_loss_backward(gpu, red, n, a, b, dy, out)?,
            LossKind::KlNormal => k::kl_normal_backward(gpu, n, a, b, dy, out, io.outputs[1])?,
        }])
    }
    fn reference(&self, x: &mut [HostValue]) -> Vec<HostValue> {
        let (a, b, dy) = (&x[0].1, &x[1].1, &x[2].1);
        let shape = x[0].0.clone();
        match self.0 {
            LossKind::BceWithLogits(red) => vec![(shape, r::binary_cross_entropy_with_logits_backward(a, b, dy, red))],
            LossKind::Bce(red) => vec![(shape, r::binary_cross_entropy_backward(a, b, dy, red))],
            LossKind::Mse(red) => vec![(shape, r::mse_loss_backward(a, b, dy, red))],
            LossKind::KlNormal => {
                let (dmu, dlogvar) = r::kl_normal_backward(a, b, dy[0]);
                vec![(shape.clone(), dmu), (shape, dlogvar)]
            }
        }
    }
    /// mse (da = 2c(a − b)·dy) and BCE with logits (da = c(σ(a) − b)·dy), with c = 1/n for
    /// the mean and 1 otherwise, are linear in dy and b, so with G the incoming gradient and
    /// dy spread over a's shape: d(dy) = reduce_c(LossGrad(none)(a, b, G)), d(b) = −c·G·dy;
    /// d(a) = 2c·G·dy for mse and c·G·dy·σ'(a) for BCE with logits. binary_cross_entropy on
    /// probabilities and kl_normal are refused.
    fn backward(&self, g: &mut Graph, n: &NodeView, dys: &[Option<Tensor>], needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let none = match self.0 {
            LossKind::Mse(_) => LossKind::Mse(Reduction::None),
            LossKind::BceWithLogits(_) => LossKind::BceWithLogits(Reduction::None),
            LossKind::Bce(_) | LossKind::KlNormal => {
                bail!(Invalid, "{} {:?}: second derivatives of {:?} are not supported", self.name(), n.layer, self.0)
            }
        };
        let incoming = dys[0].expect("called with a gradient");
        let (a, b, dy, l) = (n.inputs[0], n.inputs[1], n.inputs[2], &n.layer);
        let shape = g.shape(a).to_vec();
        let red = self.0.reduction();
        let c = if red == Reduction::Mean { 1.0 / n_of(&shape) as f32 } else { 1.0 };
        // c·dy over a's shape (dy is a scalar unless the reduction is none).
        let scaled_dy = match red {
            Reduction::None => g.apply1(super::Scale { alpha: c }, &[dy], l)?,
            Reduction::Mean | Reduction::Sum => g.apply1(super::BroadcastRows { alpha: c, shape: shape.clone() }, &[dy], l)?,
        };
        let mut out = vec![None, None, None];
        if needs[0] || needs[1] {
            let g_dy = g.apply1(super::Mul, &[incoming, scaled_dy], l)?;
            if needs[0] {
                out[0] = Some(match self.0 {
                    LossKind::Mse(_) => g.apply1(super::Scale { alpha: 2.0 }, &[g_dy], l)?,
                    _ => {
                        let p = g.apply1(super::Activation(super::Act::Sigmoid), &[a], l)?;
                        g.apply1(super::ActivationGrad(super::Act::Sigmoid), &[p, g_dy], l)?
                    }
                });
            }
            if needs[1] {
                let alpha = if matches!(self.0, LossKind::Mse(_)) { -2.0 } else { -1.0 };
                out[1] = Some(g.apply1(super::Scale { alpha }, &[g_dy], l)?);
            }
        }
        if needs[2] {
            let per_element = g.apply1(LossGrad(none), &[a, b, incoming], l)?;
            out[2] = Some(match red {
                Reduction::None => per_element,
                Reduction::Mean | Reduction::Sum => {
                    let total = g.apply1(super::Sum { all: true, mean: false }, &[per_element], l)?;
                    let total = g.apply1(super::Scale { alpha: c }, &[total], l)?;
                    g.reshape(total, &g.shape(dy).to_vec())?
                }
            });
        }
        Ok(out)
    }
}

/// F.cross_entropy(logits `[N, C]`, target `[N]`, reduction): the target holds class indices
/// as f32 and gets no gradient. Shape [] for mean and sum, [N] for none. A target that is not
/// an integer in [0, C) makes its row NaN on the GPU, and panics the CPU reference
/// ([`Graph::evaluate_reference`]) with a message naming the row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CrossEntropy {
    pub reduction: Reduction,
}

/// `[N, C]` logits as the kernels' rows, after checking the target is `[N]`.
fn logit_rows(x: &[&[usize]]) -> std::result::Result<crate::kernels::reduce::Rows, String> {
    match (x[0], x[1]) {
        (&[n, c], &[t]) if t == n && c > 0 => Ok(crate::kernels::reduce::Rows { rows: n, cols: c }),
        (&[n, c], _) if c > 0 => Err(format!("the target must be [{n}] class indices (class probabilities are not supported)")),
        _ => Err("the input must be [N, C] logits with C ≥ 1".into()),
    }
}

/// The reference's answer, or a panic naming the bad row (the trait's reference cannot fail).
fn or_panic(v: Result<Vec<f64>>) -> Vec<f64> {
    v.unwrap_or_else(|e| panic!("{e}"))
}

impl Op for CrossEntropy {
    fn name(&self) -> &'static str {
        "cross_entropy"
    }
    fn infer(&self, x: &[&[usize]]) -> std::result::Result<Vec<Vec<usize>>, String> {
        let rows = logit_rows(x)?.rows;
        Ok(vec![if self.reduction == Reduction::None { vec![rows] } else { vec![] }])
    }
    fn scratch(&self, x: &[&[usize]]) -> Vec<usize> {
        k::scratch_lens(self.reduction, x[1][0])
    }
    fn lower(&self, gpu: &Gpu, io: &OpIo) -> Result<Vec<Dispatch>> {
        let shape = logit_rows(&io.input_shapes).map_err(crate::Error::Shape)?;
        k::cross_entropy(gpu, self.reduction, shape, io.inputs[0], io.inputs[1], io.outputs[0], &io.scratch)
    }
    fn reference(&self, x: &mut [HostValue]) -> Vec<HostValue> {
        let c = x[0].0[1];
        let shape = if self.reduction == Reduction::None { x[1].0.clone() } else { vec![] };
        vec![(shape, or_panic(r::cross_entropy(&x[0].1, &x[1].1, c, self.reduction)))]
    }
    fn backward(&self, g: &mut Graph, n: &NodeView, dys: &[Option<Tensor>], _: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let (x, t, dy) = (n.inputs[0], n.inputs[1], dys[0].expect("gradient"));
        let dx = g.apply1(CrossEntropyGrad { reduction: self.reduction }, &[x, t, dy], &n.layer)?;
        // Class indices are not differentiable: the target gets no gradient.
        Ok(vec![Some(dx), None])
    }
}

/// Gradient of [`CrossEntropy`]: inputs (logits, target, dy) → d(logits), dy shaped like the
/// loss.
#[derive(Debug)]
pub struct CrossEntropyGrad {
    pub reduction: Reduction,
}

impl Op for CrossEntropyGrad {
    fn name(&self) -> &'static str {
        "cross_entropy_backward"
    }
    fn infer(&self, x: &[&[usize]]) -> std::result::Result<Vec<Vec<usize>>, String> {
        let rows = logit_rows(x)?.rows;
        let loss_len = self.reduction.output_len(rows);
        if n_of(x[2]) != loss_len {
            return Err(format!("upstream gradient has shape {:?}, the loss has {loss_len} elements", x[2]));
        }
        Ok(vec![x[0].to_vec()])
    }
    fn scratch(&self, x: &[&[usize]]) -> Vec<usize> {
        vec![k::cross_entropy_row_stats_len(x[1][0])]
    }
    fn lower(&self, gpu: &Gpu, io: &OpIo) -> Result<Vec<Dispatch>> {
        let shape = logit_rows(&io.input_shapes).map_err(crate::Error::Shape)?;
        let (x, t, dy) = (io.inputs[0], io.inputs[1], io.inputs[2]);
        k::cross_entropy_backward(gpu, self.reduction, shape, x, t, dy, &io.scratch[0], io.outputs[0])
    }
    fn reference(&self, x: &mut [HostValue]) -> Vec<HostValue> {
        let c = x[0].0[1];
        vec![(x[0].0.clone(), or_panic(r::cross_entropy_backward(&x[0].1, &x[1].1, c, &x[2].1, self.reduction)))]
    }
    fn backward(&self, _: &mut Graph, n: &NodeView, _: &[Option<Tensor>], _: &[bool]) -> Result<Vec<Option<Tensor>>> {
        bail!(Invalid, "{}: second derivatives are not supported", n.layer)
    }
}
