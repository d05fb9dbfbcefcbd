//! max_pool2d, avg_pool2d and adaptive_avg_pool2d (to 1x1) as torch.nn.functional, NCHW,
//! with their backward ops.

use super::BroadcastRows;
use crate::gpu::{Dispatch, Gpu};
use crate::graph::{Graph, HostValue, NodeView, Op, OpIo, Tensor};
use crate::kernels::pool::{self as k, Divisor};
use crate::kernels::reduce::{self, Rows};
use crate::reference::pool as r;
use crate::{bail, Result};

/// F.max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode). Two outputs: y, then
/// each output's argmax as its tap index i·kw + j within the window (what the backward
/// reads; see kernels::pool).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaxPool2d {
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub padding: [usize; 2],
    pub dilation: [usize; 2],
    pub ceil_mode: bool,
}

/// F.avg_pool2d(x, kernel_size, stride, padding, ceil_mode, count_include_pad,
/// divisor_override).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AvgPool2d {
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub padding: [usize; 2],
    pub ceil_mode: bool,
    pub count_include_pad: bool,
    pub divisor_override: Option<usize>,
}

/// F.adaptive_avg_pool2d(x, output_size) for output_size 1 only: each channel's mean,
/// `[N, C, H, W]` → `[N, C, 1, 1]` (Inception's pool3 features). Other sizes are refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdaptiveAvgPool2d {
    pub output_size: [usize; 2],
}

impl MaxPool2d {
    /// nn.MaxPool2d(kernel, stride): a square window, no padding, dilation 1, floor mode.
    pub fn new(kernel: usize, stride: usize) -> MaxPool2d {
        MaxPool2d { kernel: [kernel; 2], stride: [stride; 2], padding: [0, 0], dilation: [1, 1], ceil_mode: false }
    }

    fn geometry(&self, x: &[usize]) -> Result<k::Pool2d> {
        let s = k::Pool2d { stride: self.stride, padding: self.padding, dilation: self.dilation, ceil_mode: self.ceil_mode, ..k::Pool2d::from_dims("max_pool2d", x, self.kernel)? };
        s.out_size("max_pool2d")?;
        Ok(s)
    }
}

impl AvgPool2d {
    /// nn.AvgPool2d(kernel, stride): a square window, no padding, floor mode, padding
    /// counted in the divisor (PyTorch's defaults).
    pub fn new(kernel: usize, stride: usize) -> AvgPool2d {
        AvgPool2d { kernel: [kernel; 2], stride: [stride; 2], padding: [0, 0], ceil_mode: false, count_include_pad: true, divisor_override: None }
    }

    fn geometry(&self, x: &[usize]) -> Result<k::Pool2d> {
        let s = k::Pool2d { stride: self.stride, padding: self.padding, ceil_mode: self.ceil_mode, ..k::Pool2d::from_dims("avg_pool2d", x, self.kernel)? };
        s.out_size("avg_pool2d")?;
        Ok(s)
    }

    fn divisor(&self) -> Divisor {
        Divisor { count_include_pad: self.count_include_pad, divisor_override: self.divisor_override }
    }
}

fn output_shape(s: &k::Pool2d) -> Vec<usize> {
    let [h, w] = s.out_size("pool2d").expect("checked at build");
    vec![s.batch, s.channels, h, w]
}

fn input_shape(s: &k::Pool2d) -> Vec<usize> {
    vec![s.batch, s.channels, s.size[0], s.size[1]]
}

impl Op for MaxPool2d {
    fn name(&self) -> &'static str {
        "max_pool2d"
    }
    fn infer(&self, x: &[&[usize]]) -> std::result::Result<Vec<Vec<usize>>, String> {
        let y = output_shape(&self.geometry(x[0]).map_err(|e| e.to_string())?);
        Ok(vec![y.clone(), y])
    }
    fn lower(&self, gpu: &Gpu, io: &OpIo) -> Result<Vec<Dispatch>> {
        let s = self.geometry(io.input_shapes[0])?;
        Ok(vec![k::max_pool2d(gpu, &s, io.inputs[0], io.outputs[0], io.outputs[1])?])
    }
    fn reference(&self, x: &mut [HostValue]) -> Vec<HostValue> {
        let s = self.geometry(&x[0].0).expect("checked at build");
        let (y, argmax) = r::max_pool2d(&s, &x[0].1);
        vec![(output_shape(&s), y), (output_shape(&s), argmax)]
    }
    fn backward(&self, g: &mut Graph, n: &NodeView, dys: &[Option<Tensor>], _: &[bool]) -> Result<Vec<Option<Tensor>>> {
        // The argmax output is piecewise constant: only y's gradient flows back.
        let Some(dy) = dys[0] else { return Ok(vec![None]) };
        let geometry = self.geometry(g.shape(n.inputs[0]))?;
        Ok(vec![Some(g.apply1(PoolGrad { geometry, of: Pooling::Max }, &[dy, n.outputs[1]], &n.layer)?)])
    }
}

impl Op for AvgPool2d {
    fn name(&self) -> &'static str {
        "avg_pool2d"
    }
    fn infer(&self, x: &[&[usize]]) -> std::result::Result<Vec<Vec<usize>>, String> {
        Ok(vec![output_shape(&self.geometry(x[0]).map_err(|e| e.to_string())?)])
    }
    fn lower(&self, gpu: &Gpu, io: &OpIo) -> Result<Vec<Dispatch>> {
        let s = self.geometry(io.input_shapes[0])?;
        Ok(vec![k::avg_pool2d(gpu, &s, self.divisor(), io.inputs[0], io.outputs[0])?])
    }
    fn reference(&self, x: &mut [HostValue]) -> Vec<HostValue> {
        let s = self.geometry(&x[0].0).expect("checked at build");
        vec![(output_shape(&s), r::avg_pool2d(&s, self.divisor(), &x[0].1))]
    }
    fn backward(&self, g: &mut Graph, n: &NodeView, dys: &[Option<Tensor>], _: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let geometry = self.geometry(g.shape(n.inputs[0]))?;
        let dy = dys[0].expect("gradient");
        Ok(vec![Some(g.apply1(PoolGrad { geometry, of: Pooling::Avg(self.divisor()) }, &[dy], &n.layer)?)])
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pooling {
    Max,
    Avg(Divisor),
}

/// A pooling's input gradient: from (dy, argmax) for max_pool2d, from (dy) for avg_pool2d.
#[derive(Debug)]
pub struct PoolGrad {
    geometry: k::Pool2d,
    of: Pooling,
}

impl Op for PoolGrad {
    fn name(&self) -> &'static str {
        match self.of {
            Pooling::Max => "max_pool2d_backward",
            Pooling::Avg(_) => "avg_pool2d_backward",
        }
    }
    fn infer(&self, _: &[&[usize]]) -> std::result::Result<Vec<Vec<usize>>, String> {
        Ok(vec![input_shape(&self.geometry)])
    }
    fn lower(&self, gpu: &Gpu, io: &OpIo) -> Result<Vec<Dispatch>> {
        let (s, dy, dx) = (&self.geometry, io.inputs[0], io.outputs[0]);
        Ok(vec![match self.of {
            Pooling::Max => k::max_pool2d_backward(gpu, s, dy, io.inputs[1], dx)?,
            Pooling::Avg(d) => k::avg_pool2d_backward(gpu, s, d, dy, dx)?,
        }])
    }
    fn reference(&self, x: &mut [HostValue]) -> Vec<HostValue> {
        let s = &self.geometry;
        let dx = match self.of {
            Pooling::Max => r::max_pool2d_backward(s, &x[0].1, &x[1].1),
            Pooling::Avg(d) => r::avg_pool2d_backward(s, d, &x[0].1),
        };
        vec![(input_shape(s), dx)]
    }
    fn backward(&self, _: &mut Graph, n: &NodeView, _: &[Option<Tensor>], _: &[bool]) -> Result<Vec<Option<Tensor>>> {
        bail!(Invalid, "{}: second derivatives are not supported", n.layer)
    }
}

impl AdaptiveAvgPool2d {
    /// `[N, C, H, W]` as N·C rows of H·W, the reduction a global mean is.
    fn rows(x: &[usize]) -> Rows {
        Rows { rows: x[0] * x[1], cols: x[2] * x[3] }
    }
}

impl Op for AdaptiveAvgPool2d {
    fn name(&self) -> &'static str {
        "adaptive_avg_pool2d"
    }
    fn infer(&self, x: &[&[usize]]) -> std::result::Result<Vec<Vec<usize>>, String> {
        if self.output_size != [1, 1] {
            return Err(format!("output_size {:?} is not supported; kiln pools to 1x1 only (each channel's mean)", self.output_size));
        }
        match *x[0] {
            [n, c, h, w] if h * w > 0 => Ok(vec![vec![n, c, 1, 1]]),
            _ => Err("the input must be NCHW with a non-empty image".into()),
        }
    }
    fn scratch(&self, x: &[&[usize]]) -> Vec<usize> {
        reduce::scratch_lens(Self::rows(x[0]))
    }
    fn lower(&self, gpu: &Gpu, io: &OpIo) -> Result<Vec<Dispatch>> {
        reduce::mean(gpu, Self::rows(io.input_shapes[0]), io.inputs[0], io.outputs[0], &io.scratch)
    }
    fn reference(&self, x: &mut [HostValue]) -> Vec<HostValue> {
        let s = Self::rows(&x[0].0);
        let shape = vec![x[0].0[0], x[0].0[1], 1, 1];
        vec![(shape, crate::reference::reduce::mean(&x[0].1, s.rows, s.cols))]
    }
    fn backward(&self, g: &mut Graph, n: &NodeView, dys: &[Option<Tensor>], _: &[bool]) -> Result<Vec<Option<Tensor>>> {
        // Each pixel's share of its channel's mean: dy / (H·W), spread over the image.
        let shape = g.shape(n.inputs[0]).to_vec();
        let alpha = 1.0 / Self::rows(&shape).cols as f32;
        Ok(vec![Some(g.apply1(BroadcastRows { alpha, shape }, &[dys[0].expect("gradient")], &n.layer)?)])
    }
}
