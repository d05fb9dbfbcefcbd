use crate::gpu::{Dispatch, Gpu};
use crate::graph::{Graph, HostValue, NodeView, Op, OpIo, Tensor};
use crate::kernels::{elementwise, reduce as k};
use crate::Result;

/// Sum (or mean) over the last axis, or over everything when `all` (giving shape []).
#[derive(Debug)]
pub struct Sum {
    pub all: bool,
    pub mean: bool,
}

fn rows(shape: &[usize], all: bool) -> k::Rows {
    let n: usize = shape.iter().product();
    let cols = if all { n } else { shape.last().copied().unwrap_or(1) };
    k::Rows { rows: if cols == 0 { 0 } else { n / cols }, cols }
}

impl Op for Sum {
    fn name(&self) -> &'static str {
        if self.mean {
            "mean"
        } else {
            "sum"
        }
    }
    fn infer(&self, x: &[&[usize]]) -> std::result::Result<Vec<Vec<usize>>, String> {
        if self.all {
            return Ok(vec![vec![]]);
        }
        match x[0].split_last() {
            Some((_, rest)) => Ok(vec![rest.to_vec()]),
            None => Err("a scalar has no last axis to reduce".into()),
        }
    }
    fn scratch(&self, x: &[&[usize]]) -> Vec<usize> {
        k::scratch_lens(rows(x[0], self.all))
    }
    fn lower(&self, gpu: &Gpu, io: &OpIo) -> Result<Vec<Dispatch>> {
        let shape = rows(io.input_shapes[0], self.all);
        if self.mean {
            k::mean(gpu, shape, io.inputs[0], io.outputs[0], &io.scratch)
        } else {
            k::sum(gpu, shape, io.inputs[0], io.outputs[0], &io.scratch)
        }
    }
    fn reference(&self, x: &mut [HostValue]) -> Vec<HostValue> {
        let s = rows(&x[0].0, self.all);
        let y = if self.mean {
            crate::reference::reduce::mean(&x[0].1, s.rows, s.cols)
        } else {
            crate::reference::reduce::sum(&x[0].1, s.rows, s.cols)
        };
        vec![(self.infer(&[&x[0].0]).expect("checked at build").remove(0), y)]
    }
    fn backward(&self, g: &mut Graph, n: &NodeView, dys: &[Option<Tensor>], _: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let shape = g.shape(n.inputs[0]).to_vec();
        let s = rows(&shape, self.all);
        let alpha = if self.mean { 1.0 / s.cols as f32 } else { 1.0 };
        let dx = g.apply1(BroadcastRows { alpha, shape }, &[dys[0].expect("gradient")], &n.layer)?;
        Ok(vec![Some(dx)])
    }
}

/// y[r, c] = alpha · x[r]: the gradient of a row sum, spread back over `shape`.
#[derive(Debug)]
pub struct BroadcastRows {
    pub alpha: f32,
    pub shape: Vec<usize>,
}

impl Op for BroadcastRows {
    fn name(&self) -> &'static str {
        "broadcast_rows"
    }
    fn infer(&self, x: &[&[usize]]) -> std::result::Result<Vec<Vec<usize>>, String> {
        let n: usize = self.shape.iter().product();
        let rows: usize = x[0].iter().product();
        if rows == 0 || n % rows != 0 {
            return Err(format!("cannot spread {rows} values over {:?}", self.shape));
        }
        Ok(vec![self.shape.clone()])
    }
    fn lower(&self, gpu: &Gpu, io: &OpIo) -> Result<Vec<Dispatch>> {
        let rows: usize = io.input_shapes[0].iter().product();
        let n: usize = self.shape.iter().product();
        Ok(vec![elementwise::broadcast_rows(gpu, self.alpha, io.inputs[0], io.outputs[0], rows, n / rows)?])
    }
    fn reference(&self, x: &mut [HostValue]) -> Vec<HostValue> {
        let n: usize = self.shape.iter().product();
        let cols = n / x[0].1.len();
        vec![(self.shape.clone(), (0..n).map(|i| self.alpha as f64 * x[0].1[i / cols]).collect())]
    }
    fn backward(&self, g: &mut Graph, n: &NodeView, dys: &[Option<Tensor>], _: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let shape = g.shape(n.inputs[0]).to_vec();
        let rows: usize = shape.iter().product();
        let cols = self.shape.iter().product::<usize>() / rows;
        let dy = g.reshape(dys[0].expect("gradient"), &[rows, cols])?;
        let dsum = g.apply1(Sum { all: false, mean: false }, &[dy], &n.layer)?;
        let dsum = g.reshape(dsum, &shape)?;
        Ok(vec![Some(g.apply1(super::Scale { alpha: self.alpha }, &[dsum], &n.layer)?)])
    }
}

/// `rows` copies of `x` stacked on a new leading axis: `[rows, ..x's shape]`. The gradient of
/// a sum over rows (a linear or convolution bias gradient), built as ones[rows, 1]·x[1, n]
/// so that it differentiates as a matmul does.
pub fn repeat_rows(g: &mut Graph, x: Tensor, rows: usize, layer: &str) -> Result<Tensor> {
    let shape = g.shape(x).to_vec();
    let n: usize = shape.iter().product();
    let ones = g.apply1(super::Fill { value: 1.0, shape: vec![rows, 1] }, &[], layer)?;
    let flat = g.reshape(x, &[1, n])?;
    let tiled = g.apply1(super::Matmul::default(), &[ones, flat], layer)?;
    g.reshape(tiled, &[&[rows][..], &shape].concat())
}
