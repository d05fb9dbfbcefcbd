use crate::gpu::{Dispatch, Gpu};
use crate::graph::{Graph, HostValue, NodeView, Op, OpIo, Tensor};
use crate::kernels::embedding::{self as k, Lookup};
use crate::reference::embedding as r;
use crate::Result;

/// The lookup of inputs (weight [classes, dim], labels [batch]).
fn lookup(weight: &[usize], labels: &[usize]) -> std::result::Result<Lookup, String> {
    match (weight, labels) {
        (&[classes, dim], &[batch]) => Ok(Lookup { batch, classes, dim }),
        _ => Err(format!("embedding takes a [classes, dim] weight and [batch] labels, got {weight:?} and {labels:?}")),
    }
}

/// F.embedding(labels, weight): [batch, dim], row r = weight[labels[r]] (labels as f32
/// integers; others give NaN rows). Labels get no gradient.
#[derive(Debug)]
pub struct Embedding;

impl Op for Embedding {
    fn name(&self) -> &'static str {
        "embedding"
    }
    fn infer(&self, x: &[&[usize]]) -> std::result::Result<Vec<Vec<usize>>, String> {
        let l = lookup(x[0], x[1])?;
        Ok(vec![vec![l.batch, l.dim]])
    }
    fn lower(&self, gpu: &Gpu, io: &OpIo) -> Result<Vec<Dispatch>> {
        let l = lookup(io.input_shapes[0], io.input_shapes[1]).map_err(crate::Error::Shape)?;
        Ok(vec![k::embedding(gpu, l, io.inputs[0], io.inputs[1], io.outputs[0])?])
    }
    fn reference(&self, x: &mut [HostValue]) -> Vec<HostValue> {
        let (classes, dim) = (x[0].0[0], x[0].0[1]);
        vec![(vec![x[1].0[0], dim], r::embedding(&x[0].1, &x[1].1, classes, dim))]
    }
    fn backward(&self, g: &mut Graph, n: &NodeView, dys: &[Option<Tensor>], needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let dy = dys[0].expect("called with a gradient");
        let classes = g.shape(n.inputs[0])[0];
        let dw = if needs[0] { Some(g.apply1(EmbeddingGrad { classes }, &[n.inputs[1], dy], &n.layer)?) } else { None };
        Ok(vec![dw, None])
    }
}

/// The weight gradient of [`Embedding`]: inputs (labels [batch], dy [batch, dim]) →
/// [classes, dim], dy's rows summed per class.
#[derive(Debug)]
pub struct EmbeddingGrad {
    pub classes: usize,
}

impl Op for EmbeddingGrad {
    fn name(&self) -> &'static str {
        "embedding_backward"
    }
    fn infer(&self, x: &[&[usize]]) -> std::result::Result<Vec<Vec<usize>>, String> {
        match (x[0], x[1]) {
            (&[batch], &[rows, dim]) if rows == batch => Ok(vec![vec![self.classes, dim]]),
            _ => Err(format!("embedding_backward takes [batch] labels and [batch, dim] dy, got {:?} and {:?}", x[0], x[1])),
        }
    }
    fn lower(&self, gpu: &Gpu, io: &OpIo) -> Result<Vec<Dispatch>> {
        let l = Lookup { batch: io.input_shapes[0][0], classes: self.classes, dim: io.input_shapes[1][1] };
        k::embedding_backward(gpu, l, io.inputs[0], io.inputs[1], io.outputs[0])
    }
    fn reference(&self, x: &mut [HostValue]) -> Vec<HostValue> {
        let dim = x[1].0[1];
        vec![(vec![self.classes, dim], r::embedding_backward(&x[0].1, &x[1].1, self.classes, dim))]
    }
    fn backward(&self, g: &mut Graph, n: &NodeView, dys: &[Option<Tensor>], needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        // Linear in dy: its transpose is the lookup itself.
        let ddy = if needs[1] { Some(g.apply1(Embedding, &[dys[0].expect("gradient"), n.inputs[0]], &n.layer)?) } else { None };
        Ok(vec![None, ddy])
    }
}
