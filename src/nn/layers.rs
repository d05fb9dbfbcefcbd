use super::{Init, InitRng, Mode};
use crate::graph::ops::{self, Act};
use crate::graph::{Graph, Tensor};
use crate::Result;

/// y = x·Wᵀ + b, W [out, in].
#[derive(Clone, Debug)]
pub struct Linear {
    pub in_features: usize,
    pub out_features: usize,
    pub bias: bool,
}

/// Conv2d with square kernels; weight [out, in, k, k].
#[derive(Clone, Debug)]
pub struct Conv2d {
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
    pub bias: bool,
}

/// ConvTranspose2d with square kernels; weight [in, out, k, k].
#[derive(Clone, Debug)]
pub struct ConvTranspose2d {
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
    pub output_padding: usize,
    pub bias: bool,
}

/// BatchNorm1d/2d (by the input's rank) with affine weight and bias and running statistics.
#[derive(Clone, Debug)]
pub struct BatchNorm {
    pub channels: usize,
    pub eps: f32,
    pub momentum: f32,
}

#[derive(Clone, Debug)]
pub struct Dropout {
    pub p: f32,
}

/// [N, ...] → [N, product of the rest]: a view, no copy.
#[derive(Clone, Debug)]
pub struct Flatten;

/// [N, ...] → [N, shape...]: a view, no copy.
#[derive(Clone, Debug)]
pub struct Reshape {
    pub shape: Vec<usize>,
}

#[derive(Clone, Debug)]
pub enum Layer {
    Linear(Linear),
    Conv2d(Conv2d),
    ConvTranspose2d(ConvTranspose2d),
    BatchNorm(BatchNorm),
    Activation(Act),
    Dropout(Dropout),
    Flatten(Flatten),
    Reshape(Reshape),
    /// nn.MaxPool2d: the graph op's attributes as they are.
    MaxPool2d(ops::MaxPool2d),
    /// nn.AvgPool2d: the graph op's attributes as they are.
    AvgPool2d(ops::AvgPool2d),
}

fn param(name: &str, which: &str, shape: Vec<usize>, values: Vec<f32>) -> Init {
    Init { name: format!("{name}.{which}"), shape, values }
}

/// PyTorch's default for Linear and convolutions: kaiming_uniform(a=√5) on the weight, which
/// is U(±1/√fan_in), and the same bound for the bias.
fn default_init(name: &str, weight_shape: Vec<usize>, fan_in: usize, bias: Option<usize>, rng: &mut InitRng) -> Vec<Init> {
    let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
    let n = weight_shape.iter().product();
    let mut out = vec![param(name, "weight", weight_shape, rng.uniform(n, bound))];
    if let Some(b) = bias {
        out.push(param(name, "bias", vec![b], rng.uniform(b, bound)));
    }
    out
}

impl Layer {
    /// Parameters and states of this layer, named `{name}.weight` and so on.
    pub fn init(&self, name: &str, rng: &mut InitRng) -> (Vec<Init>, Vec<Init>) {
        match self {
            Layer::Linear(l) => {
                let bias = l.bias.then_some(l.out_features);
                (default_init(name, vec![l.out_features, l.in_features], l.in_features, bias, rng), vec![])
            }
            Layer::Conv2d(c) => {
                let shape = vec![c.out_channels, c.in_channels, c.kernel, c.kernel];
                let bias = c.bias.then_some(c.out_channels);
                (default_init(name, shape, c.in_channels * c.kernel * c.kernel, bias, rng), vec![])
            }
            Layer::ConvTranspose2d(c) => {
                // PyTorch takes fan_in from the weight's dim 1, which is out_channels here.
                let shape = vec![c.in_channels, c.out_channels, c.kernel, c.kernel];
                let bias = c.bias.then_some(c.out_channels);
                (default_init(name, shape, c.out_channels * c.kernel * c.kernel, bias, rng), vec![])
            }
            Layer::BatchNorm(b) => {
                let c = b.channels;
                let params = vec![param(name, "weight", vec![c], vec![1.0; c]), param(name, "bias", vec![c], vec![0.0; c])];
                let states = vec![param(name, "running_mean", vec![c], vec![0.0; c]), param(name, "running_var", vec![c], vec![1.0; c])];
                (params, states)
            }
            Layer::Activation(_) | Layer::Dropout(_) | Layer::Flatten(_) | Layer::Reshape(_) | Layer::MaxPool2d(_) | Layer::AvgPool2d(_) => {
                (vec![], vec![])
            }
        }
    }

    pub fn forward(&self, g: &mut Graph, name: &str, x: Tensor, mode: Mode) -> Result<Tensor> {
        let p = |g: &mut Graph, which: &str, shape: Vec<usize>| g.param(&format!("{name}.{which}"), &shape);
        match self {
            Layer::Linear(l) => {
                let mut inputs = vec![x, p(g, "weight", vec![l.out_features, l.in_features])];
                if l.bias {
                    inputs.push(p(g, "bias", vec![l.out_features]));
                }
                g.apply1(ops::Linear, &inputs, name)
            }
            Layer::Conv2d(c) => {
                let mut inputs = vec![x, p(g, "weight", vec![c.out_channels, c.in_channels, c.kernel, c.kernel])];
                if c.bias {
                    inputs.push(p(g, "bias", vec![c.out_channels]));
                }
                let op = ops::Conv2d { stride: [c.stride; 2], padding: [c.padding; 2], dilation: [1, 1] };
                g.apply1(op, &inputs, name)
            }
            Layer::ConvTranspose2d(c) => {
                let mut inputs = vec![x, p(g, "weight", vec![c.in_channels, c.out_channels, c.kernel, c.kernel])];
                if c.bias {
                    inputs.push(p(g, "bias", vec![c.out_channels]));
                }
                let op = ops::ConvTranspose2d { stride: [c.stride; 2], padding: [c.padding; 2], output_padding: [c.output_padding; 2], dilation: [1, 1] };
                g.apply1(op, &inputs, name)
            }
            Layer::BatchNorm(b) => {
                let c = b.channels;
                let mean = g.state(&format!("{name}.running_mean"), &[c]);
                let var = g.state(&format!("{name}.running_var"), &[c]);
                let (w, bias) = (p(g, "weight", vec![c]), p(g, "bias", vec![c]));
                let op = ops::BatchNorm { eps: b.eps, momentum: b.momentum, training: mode.training, update_running: mode.update_running };
                Ok(g.apply(op, &[x, mean, var, w, bias], name)?[0])
            }
            Layer::Activation(a) => g.apply1(ops::Activation(*a), &[x], name),
            Layer::Dropout(d) if mode.training && d.p > 0.0 => {
                let seed = stream_seed(mode.seed, name);
                g.apply1(ops::Dropout { p: d.p, seed }, &[x], name)
            }
            Layer::Dropout(_) => Ok(x),
            Layer::Flatten(_) => {
                let shape = g.shape(x).to_vec();
                let n = shape.first().copied().unwrap_or(1);
                g.reshape(x, &[n, shape.iter().skip(1).product()])
            }
            Layer::Reshape(r) => {
                let n = g.shape(x).first().copied().unwrap_or(1);
                let mut shape = vec![n];
                shape.extend(&r.shape);
                g.reshape(x, &shape)
            }
            Layer::MaxPool2d(p) => g.apply1(*p, &[x], name),
            Layer::AvgPool2d(p) => g.apply1(*p, &[x], name),
        }
    }
}

/// A dropout layer's own Philox key: the run's seed mixed with the layer's name (FNV-1a).
fn stream_seed(seed: u64, name: &str) -> u64 {
    name.bytes().fold(seed ^ 0xCBF2_9CE4_8422_2325, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01B3))
}
