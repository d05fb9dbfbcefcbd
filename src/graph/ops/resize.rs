//! F.interpolate(x, size, mode='bilinear', align_corners=False) on NCHW input, with an affine
//! map of the result (Inception's 2x − 1 input scaling) folded in. Forward only.

use crate::gpu::{Dispatch, Gpu};
use crate::graph::{Graph, HostValue, NodeView, Op, OpIo, Tensor};
use crate::kernels::resize::{self as k, Bilinear};
use crate::reference::resize as r;
use crate::{bail, Result};

/// y = alpha · F.interpolate(x, size, mode='bilinear', align_corners=False) + beta.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Interpolate {
    pub size: [usize; 2],
    pub alpha: f32,
    pub beta: f32,
}

impl Interpolate {
    /// Plain bilinear resizing to `size`.
    pub fn bilinear(size: [usize; 2]) -> Interpolate {
        Interpolate { size, alpha: 1.0, beta: 0.0 }
    }

    fn geometry(&self, x: &[usize]) -> Result<Bilinear> {
        let [n, c, h, w] = *x else { bail!(Shape, "interpolate: input {x:?} must have 4 dims (NCHW)") };
        let s = Bilinear { planes: n * c, size: [h, w], out: self.size, alpha: self.alpha, beta: self.beta };
        s.check("interpolate")?;
        Ok(s)
    }
}

impl Op for Interpolate {
    fn name(&self) -> &'static str {
        "interpolate"
    }
    fn infer(&self, x: &[&[usize]]) -> std::result::Result<Vec<Vec<usize>>, String> {
        self.geometry(x[0]).map_err(|e| e.to_string())?;
        Ok(vec![vec![x[0][0], x[0][1], self.size[0], self.size[1]]])
    }
    fn lower(&self, gpu: &Gpu, io: &OpIo) -> Result<Vec<Dispatch>> {
        Ok(vec![k::bilinear(gpu, io.label, &self.geometry(io.input_shapes[0])?, io.inputs[0], io.outputs[0])?])
    }
    fn reference(&self, x: &mut [HostValue]) -> Vec<HostValue> {
        let s = self.geometry(&x[0].0).expect("checked at build");
        vec![(vec![x[0].0[0], x[0].0[1], self.size[0], self.size[1]], r::bilinear(&s, &x[0].1))]
    }
    fn backward(&self, _: &mut Graph, n: &NodeView, _: &[Option<Tensor>], _: &[bool]) -> Result<Vec<Option<Tensor>>> {
        bail!(Invalid, "{}: interpolate (bilinear resizing) has no backward in kiln; it is for feature extraction only", n.layer)
    }
}
