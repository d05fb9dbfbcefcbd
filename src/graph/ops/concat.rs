//! torch.cat(tensors, dim) and its backward, each input's slice of dy (Tensor.narrow).

use crate::gpu::{Dispatch, Gpu};
use crate::graph::{Graph, HostValue, NodeView, Op, OpIo, Tensor};
use crate::kernels::concat::{self as k, Block};
use crate::reference::concat as r;
use crate::{bail, Result};

/// torch.cat(inputs, dim): every input has the same shape but along `dim`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cat {
    pub dim: usize,
}

/// x.narrow(dim, start, length): the slice `start..start + length` along `dim`, copied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Narrow {
    pub dim: usize,
    pub start: usize,
    pub length: usize,
}

/// `shape` as `[outer, shape[dim], inner]`.
fn block(shape: &[usize], dim: usize) -> Block {
    Block { outer: shape[..dim].iter().product(), inner: shape[dim + 1..].iter().product() }
}

impl Op for Cat {
    fn name(&self) -> &'static str {
        "cat"
    }
    fn infer(&self, x: &[&[usize]]) -> std::result::Result<Vec<Vec<usize>>, String> {
        let Some(first) = x.first() else { return Err("needs at least one tensor".into()) };
        if self.dim >= first.len() {
            return Err(format!("dim {} is out of range for a tensor of {} dims", self.dim, first.len()));
        }
        let mut y = first.to_vec();
        y[self.dim] = 0;
        for (i, s) in x.iter().enumerate() {
            let same_rest = s.len() == first.len() && s.iter().zip(first.iter()).enumerate().all(|(d, (a, b))| d == self.dim || a == b);
            if !same_rest {
                return Err(format!("tensor {i} is {s:?}, tensor 0 is {first:?}: shapes must agree except along dim {}", self.dim));
            }
            y[self.dim] += s[self.dim];
        }
        Ok(vec![y])
    }
    fn lower(&self, gpu: &Gpu, io: &OpIo) -> Result<Vec<Dispatch>> {
        let total = io.output_shapes[0][self.dim];
        let b = block(io.output_shapes[0], self.dim);
        let mut offset = 0;
        let mut dispatches = Vec::with_capacity(io.inputs.len());
        for (x, shape) in io.inputs.iter().zip(&io.input_shapes) {
            let c = shape[self.dim];
            dispatches.push(k::copy_channels(gpu, io.label, b, c, x, c, 0, io.outputs[0], total, offset)?);
            offset += c;
        }
        Ok(dispatches)
    }
    fn reference(&self, x: &mut [HostValue]) -> Vec<HostValue> {
        let shapes: Vec<&[usize]> = x.iter().map(|v| v.0.as_slice()).collect();
        let y = self.infer(&shapes).expect("checked at build").remove(0);
        let b = block(&y, self.dim);
        let parts: Vec<(usize, &[f64])> = x.iter().map(|v| (v.0[self.dim], v.1.as_slice())).collect();
        vec![(y, r::cat(&parts, b.outer, b.inner))]
    }
    fn backward(&self, g: &mut Graph, n: &NodeView, dys: &[Option<Tensor>], needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let dy = dys[0].expect("gradient");
        let mut start = 0;
        let mut dxs = Vec::with_capacity(n.inputs.len());
        for (&x, &need) in n.inputs.iter().zip(needs) {
            let length = g.shape(x)[self.dim];
            dxs.push(if need { Some(g.apply1(Narrow { dim: self.dim, start, length }, &[dy], &n.layer)?) } else { None });
            start += length;
        }
        Ok(dxs)
    }
}

impl Op for Narrow {
    fn name(&self) -> &'static str {
        "narrow"
    }
    fn infer(&self, x: &[&[usize]]) -> std::result::Result<Vec<Vec<usize>>, String> {
        let x = x[0];
        if self.dim >= x.len() {
            return Err(format!("dim {} is out of range for a tensor of {} dims", self.dim, x.len()));
        }
        if self.start + self.length > x[self.dim] {
            return Err(format!("slice {}..{} is past the size {} of dim {} of {x:?}", self.start, self.start + self.length, x[self.dim], self.dim));
        }
        let mut y = x.to_vec();
        y[self.dim] = self.length;
        Ok(vec![y])
    }
    fn lower(&self, gpu: &Gpu, io: &OpIo) -> Result<Vec<Dispatch>> {
        let x = io.input_shapes[0];
        let b = block(x, self.dim);
        Ok(vec![k::copy_channels(gpu, io.label, b, self.length, io.inputs[0], x[self.dim], self.start, io.outputs[0], self.length, 0)?])
    }
    fn reference(&self, x: &mut [HostValue]) -> Vec<HostValue> {
        let shape = &x[0].0;
        let b = block(shape, self.dim);
        let mut y = shape.clone();
        y[self.dim] = self.length;
        vec![(y, r::narrow(&x[0].1, b.outer, shape[self.dim], b.inner, self.start, self.length))]
    }
    fn backward(&self, _: &mut Graph, n: &NodeView, _: &[Option<Tensor>], _: &[bool]) -> Result<Vec<Option<Tensor>>> {
        bail!(Invalid, "{}: narrow has no backward (it is cat's gradient; second derivatives of cat are not supported)", n.layer)
    }
}
