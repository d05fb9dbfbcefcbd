use crate::gpu::{Dispatch, Gpu};
use super::{Add, Fill, Mul, Scale};
use crate::graph::{Graph, HostValue, NodeView, Op, OpIo, Tensor};
use crate::kernels::activation as k;
use crate::reference::activation as r;
use crate::Result;

/// Which pointwise nonlinearity.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Act {
    Relu,
    LeakyRelu(f32),
    Tanh,
    Sigmoid,
}

impl Act {
    /// Whether the backward reads the output y rather than the input x. y serves wherever
    /// act' is a function of y: tanh (1 − y²), sigmoid (y(1 − y)), and relu and leaky_relu
    /// with a slope ≥ 0, whose y > 0 exactly when x > 0 (at x = 0, y = 0, so PyTorch's
    /// `x > 0` and `y > 0` both take the slope, or 0 for relu). Reading y lets x die with the
    /// forward, or never be stored when the producer applies the activation (graph::fuse). A
    /// negative slope sends x < 0 to y > 0: that backward reads x, so it is never fused.
    fn grad_from_output(self) -> bool {
        match self {
            Act::LeakyRelu(slope) => slope >= 0.0,
            Act::Relu | Act::Tanh | Act::Sigmoid => true,
        }
    }

    /// The tile engine's epilogue form of this activation.
    pub(crate) fn epilogue(self) -> crate::kernels::gemm::Activation {
        use crate::kernels::gemm::Activation as E;
        match self {
            Act::Relu => E::Relu,
            Act::LeakyRelu(slope) => E::LeakyRelu(slope),
            Act::Tanh => E::Tanh,
            Act::Sigmoid => E::Sigmoid,
        }
    }
}

/// y = act(x).
#[derive(Debug)]
pub struct Activation(pub Act);

impl Op for Activation {
    fn name(&self) -> &'static str {
        match self.0 {
            Act::Relu => "relu",
            Act::LeakyRelu(_) => "leaky_relu",
            Act::Tanh => "tanh",
            Act::Sigmoid => "sigmoid",
        }
    }
    fn infer(&self, x: &[&[usize]]) -> std::result::Result<Vec<Vec<usize>>, String> {
        Ok(vec![x[0].to_vec()])
    }
    fn lower(&self, gpu: &Gpu, io: &OpIo) -> Result<Vec<Dispatch>> {
        let (n, x, y) = (io.input_shapes[0].iter().product(), io.inputs[0], io.outputs[0]);
        Ok(vec![match self.0 {
            Act::Relu => k::relu(gpu, n, x, y)?,
            Act::LeakyRelu(s) => k::leaky_relu(gpu, s, n, x, y)?,
            Act::Tanh => k::tanh(gpu, n, x, y)?,
            Act::Sigmoid => k::sigmoid(gpu, n, x, y)?,
        }])
    }
    fn activation(&self) -> Option<Act> {
        Some(self.0)
    }
    fn reference(&self, x: &mut [HostValue]) -> Vec<HostValue> {
        let v = &x[0].1;
        let y = match self.0 {
            Act::Relu => r::relu(v),
            Act::LeakyRelu(s) => r::leaky_relu(s as f64, v),
            Act::Tanh => r::tanh(v),
            Act::Sigmoid => r::sigmoid(v),
        };
        vec![(x[0].0.clone(), y)]
    }
    fn backward(&self, g: &mut Graph, n: &NodeView, dys: &[Option<Tensor>], _: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let saved = if self.0.grad_from_output() { n.outputs[0] } else { n.inputs[0] };
        Ok(vec![Some(g.apply1(ActivationGrad(self.0), &[saved, dys[0].expect("gradient")], &n.layer)?)])
    }
}

/// dx from (y, dy), or (x, dy) for a negative slope: see [`Act::grad_from_output`]. The
/// kernels' rules (`saved > 0` for relu and leaky_relu) are the same for either.
#[derive(Debug)]
pub struct ActivationGrad(pub Act);

impl Op for ActivationGrad {
    fn name(&self) -> &'static str {
        "activation_backward"
    }
    fn infer(&self, x: &[&[usize]]) -> std::result::Result<Vec<Vec<usize>>, String> {
        super::same_shape(x[0], x[1])?;
        Ok(vec![x[0].to_vec()])
    }
    fn lower(&self, gpu: &Gpu, io: &OpIo) -> Result<Vec<Dispatch>> {
        let n = io.input_shapes[0].iter().product();
        let (saved, dy, dx) = (io.inputs[0], io.inputs[1], io.outputs[0]);
        Ok(vec![match self.0 {
            Act::Relu => k::relu_backward(gpu, n, saved, dy, dx)?,
            Act::LeakyRelu(s) => k::leaky_relu_backward(gpu, s, n, saved, dy, dx)?,
            Act::Tanh => k::tanh_backward(gpu, n, saved, dy, dx)?,
            Act::Sigmoid => k::sigmoid_backward(gpu, n, saved, dy, dx)?,
        }])
    }
    fn reference(&self, x: &mut [HostValue]) -> Vec<HostValue> {
        let (saved, dy) = (&x[0].1, &x[1].1);
        let dx = match self.0 {
            Act::Relu => r::relu_backward(saved, dy),
            Act::LeakyRelu(s) => r::leaky_relu_backward(s as f64, saved, dy),
            Act::Tanh => r::tanh_backward(saved, dy),
            Act::Sigmoid => r::sigmoid_backward(saved, dy),
        };
        vec![(x[0].0.clone(), dx)]
    }
    /// dx = dy · act'(saved) is linear in dy, so d/d(dy) is this op again on the incoming
    /// gradient. relu and leaky_relu have act' piecewise constant in the saved y (or x): no
    /// gradient to it (zero almost everywhere). tanh (act' = 1 − y²) and sigmoid (act' =
    /// y(1 − y)) also send dy · incoming · d act'/dy to their output y.
    fn backward(&self, g: &mut Graph, n: &NodeView, dys: &[Option<Tensor>], needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let incoming = dys[0].expect("called with a gradient");
        let (saved, dy, l) = (n.inputs[0], n.inputs[1], &n.layer);
        let d_dy = if needs[1] { Some(g.apply1(ActivationGrad(self.0), &[saved, incoming], l)?) } else { None };
        let d_saved = match self.0 {
            _ if !needs[0] => None,
            Act::Relu | Act::LeakyRelu(_) => None,
            Act::Tanh => {
                // d/dy [dy (1 − y²)] = −2 y dy
                let prod = g.apply1(Mul, &[dy, incoming], l)?;
                let prod = g.apply1(Mul, &[prod, saved], l)?;
                Some(g.apply1(Scale { alpha: -2.0 }, &[prod], l)?)
            }
            Act::Sigmoid => {
                // d/dy [dy y (1 − y)] = dy (1 − 2y)
                let one = g.apply1(Fill { value: 1.0, shape: g.shape(saved).to_vec() }, &[], l)?;
                let minus_2y = g.apply1(Scale { alpha: -2.0 }, &[saved], l)?;
                let slope = g.apply1(Add, &[one, minus_2y], l)?;
                let prod = g.apply1(Mul, &[dy, incoming], l)?;
                Some(g.apply1(Mul, &[prod, slope], l)?)
            }
        };
        Ok(vec![d_saved, d_dy])
    }
}
