//! matmul (y = op(a)·op(b) with transpose flags) and linear (y = x·Wᵀ + b over the last axis).

use crate::gpu::{Dispatch, Gpu};
use super::Act;
use crate::graph::{Graph, HostValue, NodeView, Op, OpIo, Tensor};
use crate::kernels::matmul as k;
use crate::reference::matmul as r;
use crate::Result;

/// y[M, N] = op(a)·op(b), where op transposes when its flag is set.
#[derive(Clone, Copy, Debug, Default)]
pub struct Matmul {
    pub trans_a: bool,
    pub trans_b: bool,
}

impl Matmul {
    /// (m, n, k) from the stored shapes of a and b.
    fn dims(&self, a: &[usize], b: &[usize]) -> std::result::Result<(usize, usize, usize), String> {
        let (&[a0, a1], &[b0, b1]) = (a, b) else {
            return Err("matmul takes 2-D tensors".into());
        };
        let (m, ka) = if self.trans_a { (a1, a0) } else { (a0, a1) };
        let (kb, n) = if self.trans_b { (b1, b0) } else { (b0, b1) };
        if ka != kb {
            return Err(format!("inner dimensions differ: {ka} vs {kb} (trans_a {}, trans_b {})", self.trans_a, self.trans_b));
        }
        Ok((m, n, ka))
    }
}

impl Op for Matmul {
    fn name(&self) -> &'static str {
        "matmul"
    }
    fn infer(&self, x: &[&[usize]]) -> std::result::Result<Vec<Vec<usize>>, String> {
        let (m, n, _) = self.dims(x[0], x[1])?;
        Ok(vec![vec![m, n]])
    }
    fn lower(&self, gpu: &Gpu, io: &OpIo) -> Result<Vec<Dispatch>> {
        let (m, n, kk) = self.dims(io.input_shapes[0], io.input_shapes[1]).map_err(crate::Error::Shape)?;
        let shape = k::Matmul { m, n, k: kk, trans_a: self.trans_a, trans_b: self.trans_b, ..Default::default() };
        k::matmul(gpu, &shape, io.inputs[0], io.inputs[1], None, io.outputs[0])
    }
    fn reference(&self, x: &mut [HostValue]) -> Vec<HostValue> {
        let (m, n, kk) = self.dims(&x[0].0, &x[1].0).expect("checked at build");
        vec![(vec![m, n], r::matmul(&x[0].1, &x[1].1, None, m, n, kk, self.trans_a, self.trans_b))]
    }
    fn backward(&self, g: &mut Graph, node: &NodeView, dys: &[Option<Tensor>], needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let dy = dys[0].expect("gradient");
        let (a, b, l) = (node.inputs[0], node.inputs[1], &node.layer);
        let (ta, tb) = (self.trans_a, self.trans_b);
        // With A' = op(a), B' = op(b): dA' = dY·B'ᵀ and dB' = A'ᵀ·dY, transposed back where
        // a or b is stored transposed.
        let da = match (needs[0], ta) {
            (false, _) => None,
            (true, false) => Some(g.apply1(Matmul { trans_a: false, trans_b: !tb }, &[dy, b], l)?),
            (true, true) => Some(g.apply1(Matmul { trans_a: tb, trans_b: true }, &[b, dy], l)?),
        };
        let db = match (needs[1], tb) {
            (false, _) => None,
            (true, false) => Some(g.apply1(Matmul { trans_a: !ta, trans_b: false }, &[a, dy], l)?),
            (true, true) => Some(g.apply1(Matmul { trans_a: true, trans_b: ta }, &[dy, a], l)?),
        };
        Ok(vec![da, db])
    }
}

/// y[.., out] = x[.., in]·Wᵀ + b with W [out, in]: PyTorch's F.linear.
#[derive(Clone, Copy, Debug)]
pub struct Linear;

fn linear_shape(x: &[usize], w: &[usize]) -> std::result::Result<k::Linear, String> {
    let (Some(&inf), &[out, w_in]) = (x.last(), w) else {
        return Err("weight must be [out_features, in_features] and input at least 1-D".into());
    };
    if inf != w_in {
        return Err(format!("input has {inf} features, weight expects {w_in}"));
    }
    Ok(k::Linear { rows: x.iter().product::<usize>() / inf.max(1), in_features: inf, out_features: out, ..Default::default() })
}

impl Op for Linear {
    fn name(&self) -> &'static str {
        "linear"
    }
    fn infer(&self, x: &[&[usize]]) -> std::result::Result<Vec<Vec<usize>>, String> {
        let s = linear_shape(x[0], x[1])?;
        if x.len() == 3 && x[2] != [s.out_features] {
            return Err(format!("bias must be [{}], got {:?}", s.out_features, x[2]));
        }
        let mut y = x[0].to_vec();
        *y.last_mut().expect("checked") = s.out_features;
        Ok(vec![y])
    }
    fn lower(&self, gpu: &Gpu, io: &OpIo) -> Result<Vec<Dispatch>> {
        let s = linear_shape(io.input_shapes[0], io.input_shapes[1]).map_err(crate::Error::Shape)?;
        k::linear_forward(gpu, &s, io.inputs[0], io.inputs[1], io.inputs.get(2).copied(), io.outputs[0])
    }
    /// On the tile engine, whose epilogue can apply an activation, where the product is summed
    /// in one grid layer (else its partial sums' total is formed outside the epilogue).
    fn fuses(&self, gpu: &Gpu, x: &[&[usize]], _: Act) -> bool {
        let on_tiles = |s: &k::Linear| s.variant.resolve(gpu) == k::MatmulVariant::Tiled;
        linear_shape(x[0], x[1]).is_ok_and(|s| on_tiles(&s) && crate::kernels::gemm::sums_in_one_layer(s.rows, s.out_features, s.in_features))
    }
    fn lower_fused(&self, gpu: &Gpu, io: &OpIo, act: Act) -> Result<Vec<Dispatch>> {
        let s = linear_shape(io.input_shapes[0], io.input_shapes[1]).map_err(crate::Error::Shape)?;
        k::linear_forward_activated(gpu, &s, io.inputs[0], io.inputs[1], io.inputs.get(2).copied(), act.epilogue(), io.outputs[0])
    }
    fn reference(&self, x: &mut [HostValue]) -> Vec<HostValue> {
        let s = linear_shape(&x[0].0, &x[1].0).expect("checked at build");
        let y = r::linear_forward(&x[0].1, &x[1].1, x.get(2).map(|b| b.1.as_slice()), s.rows, s.in_features, s.out_features);
        vec![(self.infer(&[&x[0].0, &x[1].0]).expect("checked").remove(0), y)]
    }
    fn backward(&self, g: &mut Graph, node: &NodeView, dys: &[Option<Tensor>], needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let dy = dys[0].expect("gradient");
        let (x, w, l) = (node.inputs[0], node.inputs[1], &node.layer);
        let x_shape = g.shape(x).to_vec();
        let mut out = vec![None; node.inputs.len()];
        if needs[0] {
            out[0] = Some(g.apply1(LinearGrad::Input { x_shape }, &[dy, w], l)?);
        }
        if needs[1] {
            out[1] = Some(g.apply1(LinearGrad::Weight, &[dy, x], l)?);
        }
        if node.inputs.len() == 3 && needs[2] {
            out[2] = Some(g.apply1(LinearGrad::Bias, &[dy], l)?);
        }
        Ok(out)
    }
}

/// The three gradients of [`Linear`]: dX = dY·W from (dy, w); dW = dYᵀ·X from (dy, x);
/// db = Σ_rows dY from (dy).
#[derive(Clone, Debug)]
pub enum LinearGrad {
    Input { x_shape: Vec<usize> },
    Weight,
    Bias,
}

impl LinearGrad {
    /// The forward's shape from dy [.., out] and the other input.
    fn shape(&self, dy: &[usize], other: Option<&[usize]>) -> k::Linear {
        let out = *dy.last().unwrap_or(&1);
        let rows = dy.iter().product::<usize>() / out.max(1);
        let in_features = match (self, other) {
            (LinearGrad::Input { .. }, Some(w)) => w[1],
            (LinearGrad::Weight, Some(x)) => *x.last().unwrap_or(&1),
            _ => 0,
        };
        k::Linear { rows, in_features, out_features: out, ..Default::default() }
    }
}

impl Op for LinearGrad {
    fn name(&self) -> &'static str {
        match self {
            LinearGrad::Input { .. } => "linear_backward_input",
            LinearGrad::Weight => "linear_backward_weight",
            LinearGrad::Bias => "linear_backward_bias",
        }
    }
    fn infer(&self, x: &[&[usize]]) -> std::result::Result<Vec<Vec<usize>>, String> {
        let s = self.shape(x[0], x.get(1).copied());
        Ok(vec![match self {
            LinearGrad::Input { x_shape } => x_shape.clone(),
            LinearGrad::Weight => vec![s.out_features, s.in_features],
            LinearGrad::Bias => vec![s.out_features],
        }])
    }
    fn lower(&self, gpu: &Gpu, io: &OpIo) -> Result<Vec<Dispatch>> {
        let s = self.shape(io.input_shapes[0], io.input_shapes.get(1).copied());
        let (i, y) = (&io.inputs, io.outputs[0]);
        match self {
            LinearGrad::Input { .. } => k::linear_backward_input(gpu, &s, i[0], i[1], y),
            LinearGrad::Weight => k::linear_backward_weight(gpu, &s, i[0], i[1], y, false),
            LinearGrad::Bias => k::linear_backward_bias(gpu, &s, i[0], y, false),
        }
    }
    fn reference(&self, x: &mut [HostValue]) -> Vec<HostValue> {
        let s = self.shape(&x[0].0, x.get(1).map(|v| v.0.as_slice()));
        let shape = self.infer(&x.iter().map(|v| v.0.as_slice()).collect::<Vec<_>>()).expect("checked").remove(0);
        let dy = &x[0].1;
        let (rows, inf, out) = (s.rows, s.in_features, s.out_features);
        let y = match self {
            // dX = dY·W: the matmul reference with W stored [out, in].
            LinearGrad::Input { .. } => r::matmul(dy, &x[1].1, None, rows, inf, out, false, false),
            LinearGrad::Weight => r::matmul(dy, &x[1].1, None, out, inf, rows, true, false),
            LinearGrad::Bias => (0..out).map(|j| (0..rows).map(|i| dy[i * out + j]).sum()).collect(),
        };
        vec![(shape, y)]
    }
    /// Each gradient is linear in each input, so its gradients are the forward and the other
    /// gradients with roles swapped (G is the incoming gradient, shaped like the output):
    /// dX = dY·W gives d(dY) = G·Wᵀ = linear(G, W) and dW = dYᵀ·G; dW = dYᵀ·X gives
    /// d(dY) = X·Gᵀ = linear(X, G) and dX = dY·G; db = Σ_rows dY gives d(dY) = G on every row.
    fn backward(&self, g: &mut Graph, n: &NodeView, dys: &[Option<Tensor>], needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let incoming = dys[0].expect("called with a gradient");
        let l = &n.layer;
        let dy = n.inputs[0];
        let dy_shape = g.shape(dy).to_vec();
        let mut out = vec![None; n.inputs.len()];
        match self {
            LinearGrad::Input { .. } => {
                let w = n.inputs[1];
                if needs[0] {
                    out[0] = Some(g.apply1(Linear, &[incoming, w], l)?);
                }
                if needs[1] {
                    out[1] = Some(g.apply1(LinearGrad::Weight, &[dy, incoming], l)?);
                }
            }
            LinearGrad::Weight => {
                let x = n.inputs[1];
                if needs[0] {
                    out[0] = Some(g.apply1(Linear, &[x, incoming], l)?);
                }
                if needs[1] {
                    let x_shape = g.shape(x).to_vec();
                    out[1] = Some(g.apply1(LinearGrad::Input { x_shape }, &[dy, incoming], l)?);
                }
            }
            LinearGrad::Bias => {
                if needs[0] {
                    let rows = dy_shape.iter().product::<usize>() / dy_shape.last().copied().unwrap_or(1).max(1);
                    let tiled = super::repeat_rows(g, incoming, rows, l)?;
                    out[0] = Some(g.reshape(tiled, &dy_shape)?);
                }
            }
        }
        Ok(out)
    }
}
