//! Ops that draw from the GPU's Philox streams. Each has a `seed` of its own (its stream);
//! the stream position is the training step, which [`Program::set_step`] writes into the
//! recorded dispatches (8 bytes each), so a dropout's backward recomputes its forward's mask.
//! Reference runs use step 0.
//!
//! [`Program::set_step`]: crate::graph::Program::set_step

use crate::gpu::{Dispatch, Gpu};
use crate::graph::{Graph, HostValue, NodeView, Op, OpIo, Tensor};
use crate::kernels::random::{self as k, Rng};
use crate::reference::random as r;
use crate::Result;

fn rng(seed: u64) -> Rng {
    Rng { seed, offset: 0 }
}

/// Zeroes each element with probability p and scales the rest by 1/(1−p).
#[derive(Debug)]
pub struct Dropout {
    pub p: f32,
    pub seed: u64,
}

impl Op for Dropout {
    fn name(&self) -> &'static str {
        "dropout"
    }
    fn infer(&self, x: &[&[usize]]) -> std::result::Result<Vec<Vec<usize>>, String> {
        if !(0.0..=1.0).contains(&self.p) {
            return Err(format!("probability {} is not in [0, 1]", self.p));
        }
        Ok(vec![x[0].to_vec()])
    }
    fn lower(&self, gpu: &Gpu, io: &OpIo) -> Result<Vec<Dispatch>> {
        let n = io.input_shapes[0].iter().product();
        Ok(vec![k::dropout(gpu, rng(self.seed), self.p, io.inputs[0], io.outputs[0], n)?])
    }
    fn reference(&self, x: &mut [HostValue]) -> Vec<HostValue> {
        vec![(x[0].0.clone(), r::dropout(&x[0].1, self.p as f64, self.seed, 0))]
    }
    fn backward(&self, g: &mut Graph, n: &NodeView, dys: &[Option<Tensor>], _: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let dx = g.apply1(DropoutGrad { p: self.p, seed: self.seed }, &[dys[0].expect("gradient")], &n.layer)?;
        Ok(vec![Some(dx)])
    }
}

/// dx = dy · mask / (1 − p), the mask recomputed from the forward's stream.
#[derive(Debug)]
pub struct DropoutGrad {
    pub p: f32,
    pub seed: u64,
}

impl Op for DropoutGrad {
    fn name(&self) -> &'static str {
        "dropout_backward"
    }
    fn infer(&self, x: &[&[usize]]) -> std::result::Result<Vec<Vec<usize>>, String> {
        Ok(vec![x[0].to_vec()])
    }
    fn lower(&self, gpu: &Gpu, io: &OpIo) -> Result<Vec<Dispatch>> {
        let n = io.input_shapes[0].iter().product();
        Ok(vec![k::dropout_backward(gpu, rng(self.seed), self.p, io.inputs[0], io.outputs[0], n)?])
    }
    fn reference(&self, x: &mut [HostValue]) -> Vec<HostValue> {
        vec![(x[0].0.clone(), r::dropout_backward(&x[0].1, self.p as f64, self.seed, 0))]
    }
    fn backward(&self, g: &mut Graph, n: &NodeView, dys: &[Option<Tensor>], _: &[bool]) -> Result<Vec<Option<Tensor>>> {
        // Linear in dy with the same mask: its own transpose.
        Ok(vec![Some(g.apply1(DropoutGrad { p: self.p, seed: self.seed }, &[dys[0].expect("gradient")], &n.layer)?)])
    }
}

/// A tensor of fresh random numbers each step: N(a, b²) when `normal`, else U[a, b).
#[derive(Clone, Debug)]
pub struct RandomFill {
    pub normal: bool,
    pub a: f32,
    pub b: f32,
    pub seed: u64,
    pub shape: Vec<usize>,
}

impl Op for RandomFill {
    fn name(&self) -> &'static str {
        if self.normal {
            "normal"
        } else {
            "uniform"
        }
    }
    fn infer(&self, _: &[&[usize]]) -> std::result::Result<Vec<Vec<usize>>, String> {
        Ok(vec![self.shape.clone()])
    }
    fn lower(&self, gpu: &Gpu, io: &OpIo) -> Result<Vec<Dispatch>> {
        let n = self.shape.iter().product();
        let d = if self.normal {
            k::normal(gpu, rng(self.seed), self.a, self.b, io.outputs[0], n)?
        } else {
            k::uniform(gpu, rng(self.seed), self.a, self.b, io.outputs[0], n)?
        };
        Ok(vec![d])
    }
    fn reference(&self, _: &mut [HostValue]) -> Vec<HostValue> {
        let n = self.shape.iter().product();
        let (a, b) = (self.a as f64, self.b as f64);
        let v = if self.normal { r::normal(n, self.seed, 0, a, b) } else { r::uniform(n, self.seed, 0, a, b) };
        vec![(self.shape.clone(), v)]
    }
    fn backward(&self, _: &mut Graph, _: &NodeView, _: &[Option<Tensor>], _: &[bool]) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![])
    }
}

/// z = mu + eps · exp(logvar / 2), inputs (mu, logvar, eps).
#[derive(Debug)]
pub struct Reparameterize;

impl Op for Reparameterize {
    fn name(&self) -> &'static str {
        "reparameterize"
    }
    fn infer(&self, x: &[&[usize]]) -> std::result::Result<Vec<Vec<usize>>, String> {
        super::same_shape(x[0], x[1])?;
        super::same_shape(x[0], x[2])?;
        Ok(vec![x[0].to_vec()])
    }
    fn lower(&self, gpu: &Gpu, io: &OpIo) -> Result<Vec<Dispatch>> {
        let n = io.input_shapes[0].iter().product();
        Ok(vec![k::reparameterize(gpu, io.inputs[0], io.inputs[1], io.inputs[2], io.outputs[0], n)?])
    }
    fn reference(&self, x: &mut [HostValue]) -> Vec<HostValue> {
        vec![(x[0].0.clone(), r::reparameterize(&x[0].1, &x[1].1, &x[2].1))]
    }
    fn backward(&self, g: &mut Graph, n: &NodeView, dys: &[Option<Tensor>], _: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let d = g.apply(ReparameterizeGrad, &[dys[0].expect("gradient"), n.inputs[1], n.inputs[2]], &n.layer)?;
        Ok(vec![Some(d[0]), Some(d[1]), None])
    }
}

/// (dz, logvar, eps) → (dmu, dlogvar).
#[derive(Debug)]
pub struct ReparameterizeGrad;

impl Op for ReparameterizeGrad {
    fn name(&self) -> &'static str {
        "reparameterize_backward"
    }
    fn infer(&self, x: &[&[usize]]) -> std::result::Result<Vec<Vec<usize>>, String> {
        Ok(vec![x[0].to_vec(), x[0].to_vec()])
    }
    fn lower(&self, gpu: &Gpu, io: &OpIo) -> Result<Vec<Dispatch>> {
        let n = io.input_shapes[0].iter().product();
        let (i, o) = (&io.inputs, &io.outputs);
        Ok(vec![k::reparameterize_backward(gpu, i[0], i[1], i[2], o[0], o[1], n)?])
    }
    fn reference(&self, x: &mut [HostValue]) -> Vec<HostValue> {
        let (dmu, dlogvar) = r::reparameterize_backward(&x[0].1, &x[1].1, &x[2].1);
        vec![(x[0].0.clone(), dmu), (x[0].0.clone(), dlogvar)]
    }
    fn backward(&self, _: &mut Graph, n: &NodeView, _: &[Option<Tensor>], _: &[bool]) -> Result<Vec<Option<Tensor>>> {
        crate::bail!(Invalid, "{}: second derivatives are not supported", n.layer)
    }
}
