use super::same_shape;
use crate::gpu::{Dispatch, Gpu};
use crate::graph::{Graph, HostValue, NodeView, Op, OpIo, Tensor};
use crate::kernels::elementwise as k;
use crate::Result;

fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// y = a + b (same shapes).
#[derive(Debug)]
pub struct Add;

impl Op for Add {
    fn name(&self) -> &'static str {
        "add"
    }
    fn infer(&self, x: &[&[usize]]) -> std::result::Result<Vec<Vec<usize>>, String> {
        same_shape(x[0], x[1])?;
        Ok(vec![x[0].to_vec()])
    }
    fn lower(&self, gpu: &Gpu, io: &OpIo) -> Result<Vec<Dispatch>> {
        Ok(vec![k::add(gpu, io.inputs[0], io.inputs[1], io.outputs[0], numel(io.output_shapes[0]))?])
    }
    fn reference(&self, x: &mut [HostValue]) -> Vec<HostValue> {
        vec![(x[0].0.clone(), crate::reference::elementwise::add(&x[0].1, &x[1].1))]
    }
    fn backward(&self, _: &mut Graph, _: &NodeView, dys: &[Option<Tensor>], _: &[bool]) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![dys[0], dys[0]])
    }
}

/// y = a * b (same shapes).
#[derive(Debug)]
pub struct Mul;

impl Op for Mul {
    fn name(&self) -> &'static str {
        "mul"
    }
    fn infer(&self, x: &[&[usize]]) -> std::result::Result<Vec<Vec<usize>>, String> {
        same_shape(x[0], x[1])?;
        Ok(vec![x[0].to_vec()])
    }
    fn lower(&self, gpu: &Gpu, io: &OpIo) -> Result<Vec<Dispatch>> {
        Ok(vec![k::mul(gpu, io.inputs[0], io.inputs[1], io.outputs[0], numel(io.output_shapes[0]))?])
    }
    fn reference(&self, x: &mut [HostValue]) -> Vec<HostValue> {
        vec![(x[0].0.clone(), crate::reference::elementwise::mul(&x[0].1, &x[1].1))]
    }
    fn backward(&self, g: &mut Graph, n: &NodeView, dys: &[Option<Tensor>], needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let dy = dys[0].expect("called with a gradient");
        let (a, b) = (n.inputs[0], n.inputs[1]);
        let da = if needs[0] { Some(g.apply1(Mul, &[dy, b], &n.layer)?) } else { None };
        let db = if needs[1] { Some(g.apply1(Mul, &[dy, a], &n.layer)?) } else { None };
        Ok(vec![da, db])
    }
}

/// y = alpha * x.
#[derive(Debug)]
pub struct Scale {
    pub alpha: f32,
}

impl Op for Scale {
    fn name(&self) -> &'static str {
        "scale"
    }
    fn infer(&self, x: &[&[usize]]) -> std::result::Result<Vec<Vec<usize>>, String> {
        Ok(vec![x[0].to_vec()])
    }
    fn lower(&self, gpu: &Gpu, io: &OpIo) -> Result<Vec<Dispatch>> {
        Ok(vec![k::scale(gpu, self.alpha, io.inputs[0], io.outputs[0], numel(io.output_shapes[0]))?])
    }
    fn reference(&self, x: &mut [HostValue]) -> Vec<HostValue> {
        vec![(x[0].0.clone(), crate::reference::elementwise::scale(self.alpha as f64, &x[0].1))]
    }
    fn backward(&self, g: &mut Graph, n: &NodeView, dys: &[Option<Tensor>], _: &[bool]) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(g.apply1(Scale { alpha: self.alpha }, &[dys[0].expect("gradient")], &n.layer)?)])
    }
}

/// A constant tensor (no inputs).
#[derive(Debug)]
pub struct Fill {
    pub value: f32,
    pub shape: Vec<usize>,
}

impl Op for Fill {
    fn name(&self) -> &'static str {
        "fill"
    }
    fn infer(&self, _: &[&[usize]]) -> std::result::Result<Vec<Vec<usize>>, String> {
        Ok(vec![self.shape.clone()])
    }
    fn lower(&self, gpu: &Gpu, io: &OpIo) -> Result<Vec<Dispatch>> {
        Ok(vec![k::fill(gpu, self.value, io.outputs[0], numel(&self.shape))?])
    }
    fn reference(&self, _: &mut [HostValue]) -> Vec<HostValue> {
        vec![(self.shape.clone(), vec![self.value as f64; numel(&self.shape)])]
    }
    fn backward(&self, _: &mut Graph, _: &NodeView, _: &[Option<Tensor>], _: &[bool]) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![])
    }
}

/// The same elements under another shape: a view of the input's memory, no dispatch.
#[derive(Debug)]
pub struct Reshape {
    pub shape: Vec<usize>,
}

impl Op for Reshape {
    fn name(&self) -> &'static str {
        "reshape"
    }
    fn alias_of_input0(&self) -> bool {
        true
    }
    fn infer(&self, x: &[&[usize]]) -> std::result::Result<Vec<Vec<usize>>, String> {
        if numel(x[0]) != numel(&self.shape) {
            return Err(format!("cannot view {} elements as {:?}", numel(x[0]), self.shape));
        }
        Ok(vec![self.shape.clone()])
    }
    fn lower(&self, _: &Gpu, _: &OpIo) -> Result<Vec<Dispatch>> {
        Ok(vec![])
    }
    fn reference(&self, x: &mut [HostValue]) -> Vec<HostValue> {
        vec![(self.shape.clone(), x[0].1.clone())]
    }
    fn backward(&self, g: &mut Graph, n: &NodeView, dys: &[Option<Tensor>], _: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let shape = g.shape(n.inputs[0]).to_vec();
        Ok(vec![Some(g.apply1(Reshape { shape }, &[dys[0].expect("gradient")], &n.layer)?)])
    }
}
