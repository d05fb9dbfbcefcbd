//! conv2d and conv_transpose2d as torch.nn.functional (groups 1), with their data, weight
//! and bias gradients as ops of their own so only the needed ones are computed.

use crate::gpu::{Dispatch, Gpu};
use super::Act;
use crate::graph::{Graph, HostValue, NodeView, Op, OpIo, Tensor};
use crate::kernels::conv as k;
use crate::reference::conv as r;
use crate::Result;

/// The geometry of one convolution, forward or transposed.
#[derive(Clone, Copy, Debug)]
pub enum Geometry {
    Conv(k::Conv2d),
    Transpose(k::ConvTranspose2d),
}

impl Geometry {
    fn output_shape(&self) -> crate::Result<Vec<usize>> {
        Ok(match self {
            Geometry::Conv(s) => {
                let [h, w] = s.out_size()?;
                vec![s.batch, s.out_channels, h, w]
            }
            Geometry::Transpose(s) => {
                let [h, w] = s.out_size()?;
                vec![s.batch, s.out_channels, h, w]
            }
        })
    }
}

/// F.conv2d(x, weight[, bias], stride, padding, dilation).
#[derive(Clone, Copy, Debug)]
pub struct Conv2d {
    pub stride: [usize; 2],
    pub padding: [usize; 2],
    pub dilation: [usize; 2],
}

/// F.conv_transpose2d(x, weight[, bias], stride, padding, output_padding, dilation).
#[derive(Clone, Copy, Debug)]
pub struct ConvTranspose2d {
    pub stride: [usize; 2],
    pub padding: [usize; 2],
    pub output_padding: [usize; 2],
    pub dilation: [usize; 2],
}

fn check_bias(x: &[&[usize]], channels: usize) -> std::result::Result<(), String> {
    match x.get(2) {
        Some(b) if *b != [channels] => Err(format!("bias must be [{channels}], got {b:?}")),
        _ => Ok(()),
    }
}

impl Conv2d {
    fn geometry(&self, x: &[usize], w: &[usize]) -> crate::Result<Geometry> {
        let s = k::Conv2d { stride: self.stride, padding: self.padding, dilation: self.dilation, ..k::Conv2d::from_dims(x, w)? };
        s.out_size()?;
        Ok(Geometry::Conv(s))
    }
}

impl ConvTranspose2d {
    fn geometry(&self, x: &[usize], w: &[usize]) -> crate::Result<Geometry> {
        let base = k::ConvTranspose2d::from_dims(x, w)?;
        let s = k::ConvTranspose2d { stride: self.stride, padding: self.padding, output_padding: self.output_padding, dilation: self.dilation, ..base };
        s.out_size()?;
        Ok(Geometry::Transpose(s))
    }
}

/// Forward shape rule, lowering, reference and backward shared by both convolutions.
fn infer(geometry: crate::Result<Geometry>, x: &[&[usize]]) -> std::result::Result<Vec<Vec<usize>>, String> {
    let geometry = geometry.map_err(|e| e.to_string())?;
    let y = geometry.output_shape().map_err(|e| e.to_string())?;
    check_bias(x, y[1])?;
    Ok(vec![y])
}

/// The forward, with `act` applied in the tile engine's epilogue (the identity: none).
fn lower(geometry: Geometry, gpu: &Gpu, io: &OpIo, act: crate::kernels::gemm::Activation) -> Result<Vec<Dispatch>> {
    let (x, w, b, y) = (io.inputs[0], io.inputs[1], io.inputs.get(2).copied(), io.outputs[0]);
    match geometry {
        Geometry::Conv(s) => k::conv2d_activated(gpu, &s, x, w, b, act, y),
        Geometry::Transpose(s) => k::conv_transpose2d_activated(gpu, &s, x, w, b, act, y),
    }
}

/// Whether the forward runs on the tile engine, whose epilogue can apply an activation.
fn on_tile_engine(geometry: crate::Result<Geometry>, gpu: &Gpu) -> bool {
    let variant = match geometry {
        Ok(Geometry::Conv(s)) => s.variant,
        Ok(Geometry::Transpose(s)) => s.variant,
        Err(_) => return false,
    };
    variant.resolve(gpu) == k::ConvVariant::Tiled
}

fn reference(geometry: Geometry, x: &[HostValue]) -> Vec<HostValue> {
    let b = x.get(2).map(|v| v.1.as_slice());
    let y = match geometry {
        Geometry::Conv(s) => r::conv2d(&s, &x[0].1, &x[1].1, b),
        Geometry::Transpose(s) => r::conv_transpose2d(&s, &x[0].1, &x[1].1, b),
    };
    vec![(geometry.output_shape().expect("checked at build"), y)]
}

fn backward(geometry: Geometry, g: &mut Graph, node: &NodeView, dys: &[Option<Tensor>], needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
    let dy = dys[0].expect("gradient");
    let (x, w, l) = (node.inputs[0], node.inputs[1], &node.layer);
    let mut out = vec![None; node.inputs.len()];
    if needs[0] {
        out[0] = Some(g.apply1(ConvGrad { geometry, of: Of::Input }, &[dy, w], l)?);
    }
    if needs[1] {
        out[1] = Some(g.apply1(ConvGrad { geometry, of: Of::Weight }, &[x, dy], l)?);
    }
    if node.inputs.len() == 3 && needs[2] {
        out[2] = Some(g.apply1(ConvGrad { geometry, of: Of::Bias }, &[dy], l)?);
    }
    Ok(out)
}

/// What differs between the two convolutions; the Op impl below is shared.
trait Convolution: std::fmt::Debug + Send + Sync {
    const NAME: &'static str;
    fn geometry(&self, x: &[usize], w: &[usize]) -> crate::Result<Geometry>;
}

impl Convolution for Conv2d {
    const NAME: &'static str = "conv2d";
    fn geometry(&self, x: &[usize], w: &[usize]) -> crate::Result<Geometry> {
        Conv2d::geometry(self, x, w)
    }
}

impl Convolution for ConvTranspose2d {
    const NAME: &'static str = "conv_transpose2d";
    fn geometry(&self, x: &[usize], w: &[usize]) -> crate::Result<Geometry> {
        ConvTranspose2d::geometry(self, x, w)
    }
}

impl<C: Convolution> Op for C {
    fn name(&self) -> &'static str {
        C::NAME
    }
    fn infer(&self, x: &[&[usize]]) -> std::result::Result<Vec<Vec<usize>>, String> {
        infer(self.geometry(x[0], x[1]), x)
    }
    fn lower(&self, gpu: &Gpu, io: &OpIo) -> Result<Vec<Dispatch>> {
        lower(self.geometry(io.input_shapes[0], io.input_shapes[1])?, gpu, io, Default::default())
    }
    fn fuses(&self, gpu: &Gpu, x: &[&[usize]], _: Act) -> bool {
        on_tile_engine(self.geometry(x[0], x[1]), gpu)
    }
    fn lower_fused(&self, gpu: &Gpu, io: &OpIo, act: Act) -> Result<Vec<Dispatch>> {
        lower(self.geometry(io.input_shapes[0], io.input_shapes[1])?, gpu, io, act.epilogue())
    }
    fn reference(&self, x: &mut [HostValue]) -> Vec<HostValue> {
        reference(self.geometry(&x[0].0, &x[1].0).expect("checked at build"), x)
    }
    fn backward(&self, g: &mut Graph, node: &NodeView, dys: &[Option<Tensor>], needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let geometry = self.geometry(g.shape(node.inputs[0]), g.shape(node.inputs[1]))?;
        backward(geometry, g, node, dys, needs)
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Of {
    Input,
    Weight,
    Bias,
}

/// A convolution's gradient: of the input from (dy, w), of the weight from (x, dy), of the
/// bias from (dy).
#[derive(Debug)]
pub struct ConvGrad {
    geometry: Geometry,
    of: Of,
}

impl Op for ConvGrad {
    fn name(&self) -> &'static str {
        match self.of {
            Of::Input => "conv_backward_input",
            Of::Weight => "conv_backward_weight",
            Of::Bias => "conv_backward_bias",
        }
    }
    fn infer(&self, _: &[&[usize]]) -> std::result::Result<Vec<Vec<usize>>, String> {
        let (x, w, c) = match self.geometry {
            Geometry::Conv(s) => (s.input_len(), [s.out_channels, s.in_channels, s.kernel[0], s.kernel[1]], s.out_channels),
            Geometry::Transpose(s) => (s.input_len(), [s.in_channels, s.out_channels, s.kernel[0], s.kernel[1]], s.out_channels),
        };
        let x_shape = match self.geometry {
            Geometry::Conv(s) => vec![s.batch, s.in_channels, s.size[0], s.size[1]],
            Geometry::Transpose(s) => vec![s.batch, s.in_channels, s.size[0], s.size[1]],
        };
        debug_assert_eq!(x, x_shape.iter().product::<usize>());
        Ok(vec![match self.of {
            Of::Input => x_shape,
            Of::Weight => w.to_vec(),
            Of::Bias => vec![c],
        }])
    }
    fn lower(&self, gpu: &Gpu, io: &OpIo) -> Result<Vec<Dispatch>> {
        let (i, out) = (&io.inputs, io.outputs[0]);
        match (self.geometry, self.of) {
            (Geometry::Conv(s), Of::Input) => k::conv2d_data_grad(gpu, &s, i[0], i[1], out),
            (Geometry::Conv(s), Of::Weight) => k::conv2d_weight_grad(gpu, &s, i[0], i[1], out, false),
            (Geometry::Conv(s), Of::Bias) => k::conv2d_bias_grad(gpu, &s, i[0], out, false),
            (Geometry::Transpose(s), Of::Input) => k::conv_transpose2d_data_grad(gpu, &s, i[0], i[1], out),
            (Geometry::Transpose(s), Of::Weight) => k::conv_transpose2d_weight_grad(gpu, &s, i[0], i[1], out, false),
            (Geometry::Transpose(s), Of::Bias) => k::conv_transpose2d_bias_grad(gpu, &s, i[0], out, false),
        }
    }
    fn reference(&self, x: &mut [HostValue]) -> Vec<HostValue> {
        let shape = self.infer(&[]).expect("fixed at build").remove(0);
        let v = match (self.geometry, self.of) {
            (Geometry::Conv(s), Of::Input) => r::conv2d_data_grad(&s, &x[0].1, &x[1].1),
            (Geometry::Conv(s), Of::Weight) => r::conv2d_weight_grad(&s, &x[0].1, &x[1].1),
            (Geometry::Conv(s), Of::Bias) => r::conv2d_bias_grad(&s, &x[0].1),
            (Geometry::Transpose(s), Of::Input) => r::conv_transpose2d_data_grad(&s, &x[0].1, &x[1].1),
            (Geometry::Transpose(s), Of::Weight) => r::conv_transpose2d_weight_grad(&s, &x[0].1, &x[1].1),
            (Geometry::Transpose(s), Of::Bias) => r::conv_transpose2d_bias_grad(&s, &x[0].1),
        };
        vec![(shape, v)]
    }
    /// The forward y = f(x, w) is bilinear, and its gradients are its adjoints:
    /// ⟨G, Input(dy, w)⟩ = ⟨f(G, w), dy⟩ and ⟨G, Weight(x, dy)⟩ = ⟨f(x, G), dy⟩. So with G the
    /// incoming gradient, Input(dy, w) sends f(G, w) to dy and Weight(G, dy) to w;
    /// Weight(x, dy) sends f(x, G) to dy and Input(dy, G) to x; Bias(dy) sends G spread over
    /// every pixel to dy. The same geometry serves both convolutions: stride, padding and
    /// output padding carry over because dy and x keep the forward's shapes.
    fn backward(&self, g: &mut Graph, n: &NodeView, dys: &[Option<Tensor>], needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let incoming = dys[0].expect("called with a gradient");
        let (geometry, l) = (self.geometry, &n.layer);
        let mut out = vec![None; n.inputs.len()];
        match self.of {
            Of::Input => {
                let (dy, w) = (n.inputs[0], n.inputs[1]);
                if needs[0] {
                    out[0] = Some(forward(geometry, g, incoming, w, l)?);
                }
                if needs[1] {
                    out[1] = Some(g.apply1(ConvGrad { geometry, of: Of::Weight }, &[incoming, dy], l)?);
                }
            }
            Of::Weight => {
                let (x, dy) = (n.inputs[0], n.inputs[1]);
                if needs[0] {
                    out[0] = Some(g.apply1(ConvGrad { geometry, of: Of::Input }, &[dy, incoming], l)?);
                }
                if needs[1] {
                    out[1] = Some(forward(geometry, g, x, incoming, l)?);
                }
            }
            Of::Bias => {
                if needs[0] {
                    // dy[n, c, h, w] = G[c]: each channel's value over its pixels, then the
                    // [C, H·W] block repeated for every sample.
                    let dy_shape = g.shape(n.inputs[0]).to_vec();
                    let (batch, c, pixels) = (dy_shape[0], dy_shape[1], dy_shape[2] * dy_shape[3]);
                    let per_channel = g.apply1(super::BroadcastRows { alpha: 1.0, shape: vec![c, pixels] }, &[incoming], l)?;
                    let tiled = super::repeat_rows(g, per_channel, batch, l)?;
                    out[0] = Some(g.reshape(tiled, &dy_shape)?);
                }
            }
        }
        Ok(out)
    }
}

/// The forward convolution of `geometry` (no bias) applied to (x, w).
fn forward(geometry: Geometry, g: &mut Graph, x: Tensor, w: Tensor, layer: &str) -> Result<Tensor> {
    match geometry {
        Geometry::Conv(s) => g.apply1(Conv2d { stride: s.stride, padding: s.padding, dilation: s.dilation }, &[x, w], layer),
        Geometry::Transpose(s) => {
            let op = ConvTranspose2d { stride: s.stride, padding: s.padding, output_padding: s.output_padding, dilation: s.dilation };
            g.apply1(op, &[x, w], layer)
        }
    }
}
