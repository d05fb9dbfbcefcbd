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

/// y = sqrt(x + eps). With eps = 0 the gradient at x = 0 is infinite, as torch.sqrt's; a
/// small eps inside keeps it finite (a per-sample gradient norm that vanishes, in WGAN-GP).
#[derive(Debug)]
pub struct Sqrt {
    pub eps: f32,
}

impl Op for Sqrt {
    fn name(&self) -> &'static str {
        "sqrt"
    }
    fn infer(&self, x: &[&[usize]]) -> std::result::Result<Vec<Vec<usize>>, String> {
        Ok(vec![x[0].to_vec()])
    }
    fn lower(&self, gpu: &Gpu, io: &OpIo) -> Result<Vec<Dispatch>> {
        Ok(vec![k::sqrt(gpu, self.eps, io.inputs[0], io.outputs[0], numel(io.output_shapes[0]))?])
    }
    fn reference(&self, x: &mut [HostValue]) -> Vec<HostValue> {
        vec![(x[0].0.clone(), crate::reference::elementwise::sqrt(self.eps as f64, &x[0].1))]
    }
    fn backward(&self, g: &mut Graph, n: &NodeView, dys: &[Option<Tensor>], _: &[bool]) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(g.apply1(SqrtGrad, &[n.outputs[0], dys[0].expect("gradient")], &n.layer)?)])
    }
}

/// dx = 0.5 · dy / y from (y, dy), y = sqrt's output.
#[derive(Debug)]
pub struct SqrtGrad;

impl Op for SqrtGrad {
    fn name(&self) -> &'static str {
        "sqrt_backward"
    }
    fn infer(&self, x: &[&[usize]]) -> std::result::Result<Vec<Vec<usize>>, String> {
        same_shape(x[0], x[1])?;
        Ok(vec![x[0].to_vec()])
    }
    fn lower(&self, gpu: &Gpu, io: &OpIo) -> Result<Vec<Dispatch>> {
        Ok(vec![k::sqrt_backward(gpu, io.inputs[0], io.inputs[1], io.outputs[0], numel(io.output_shapes[0]))?])
    }
    fn reference(&self, x: &mut [HostValue]) -> Vec<HostValue> {
        vec![(x[0].0.clone(), crate::reference::elementwise::sqrt_backward(&x[0].1, &x[1].1))]
    }
    /// Linear in dy: d(dy) = SqrtGrad(y, G). In y: d/dy (0.5 dy / y) = −0.5 dy / y², built as
    /// −2 · SqrtGrad(y, SqrtGrad(y, dy · G)) = −2 · 0.25 dy G / y².
    fn backward(&self, g: &mut Graph, n: &NodeView, dys: &[Option<Tensor>], needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let incoming = dys[0].expect("called with a gradient");
        let (y, dy, l) = (n.inputs[0], n.inputs[1], &n.layer);
        let d_y = if needs[0] {
            let prod = g.apply1(Mul, &[dy, incoming], l)?;
            let once = g.apply1(SqrtGrad, &[y, prod], l)?;
            let twice = g.apply1(SqrtGrad, &[y, once], l)?;
            Some(g.apply1(Scale { alpha: -2.0 }, &[twice], l)?)
        } else {
            None
        };
        let d_dy = if needs[1] { Some(g.apply1(SqrtGrad, &[y, incoming], l)?) } else { None };
        Ok(vec![d_y, d_dy])
    }
}
