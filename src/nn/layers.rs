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
    /// torch.nn.utils.parametrizations.spectral_norm of a Linear, Conv2d or ConvTranspose2d
    /// layer: its weight is trained as `{name}.parametrizations.weight.original`, and the power
    /// iteration's vectors are the states `{name}.parametrizations.weight.0._u` and `._v`
    /// (PyTorch's state_dict names). Made by [`super::spectral_norm`].
    SpectralNorm(Box<Layer>),
}

/// (weight, u, v) names of a spectral-normed layer, as PyTorch's state_dict has them.
pub fn spectral_names(name: &str) -> [String; 3] {
    let at = format!("{name}.parametrizations.weight");
    [format!("{at}.original"), format!("{at}.0._u"), format!("{at}.0._v")]
}

/// Power iterations PyTorch runs when it registers spectral norm, so u and v start close to
/// the singular vectors.
const REGISTRATION_ITERATIONS: usize = 15;

/// The states u, v of a spectral-normed weight as PyTorch's `_SpectralNorm.__init__` leaves
/// them: the starting vectors normalized, then [`REGISTRATION_ITERATIONS`] power iterations
/// against the weight (in f64 on the CPU, once).
fn registered_vectors(weight: &[f32], shape: &[usize], dim: usize, u: &[f32], v: &[f32]) -> (Vec<f32>, Vec<f32>) {
    use crate::reference::spectral as r;
    let f64s = |x: &[f32]| -> Vec<f64> { x.iter().map(|&v| v as f64).collect() };
    let eps = ops::SpectralNorm::EPS as f64;
    let (mut u, mut v) = (r::normalize(&f64s(u), eps), r::normalize(&f64s(v), eps));
    r::power_iteration(&r::to_matrix(&f64s(weight), shape, dim), &mut u, &mut v, REGISTRATION_ITERATIONS, eps);
    let f32s = |x: Vec<f64>| -> Vec<f32> { x.into_iter().map(|v| v as f32).collect() };
    (f32s(u), f32s(v))
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
            Layer::SpectralNorm(inner) => {
                let (mut params, mut states) = inner.init(name, rng);
                let weight_name = format!("{name}.weight");
                // A layer without a weight is refused by forward, which can say so.
                if let (Some((shape, dim)), Some(weight)) = (inner.weight_shape(), params.iter_mut().find(|p| p.name == weight_name)) {
                    let [original, u_name, v_name] = spectral_names(name);
                    weight.name = original;
                    let (rows, cols) = (shape[dim], weight.values.len() / shape[dim]);
                    let (u, v) = (rng.normal(rows, 0.0, 1.0), rng.normal(cols, 0.0, 1.0));
                    let (u, v) = registered_vectors(&weight.values, &shape, dim, &u, &v);
                    states.push(Init { name: u_name, shape: vec![u.len()], values: u });
                    states.push(Init { name: v_name, shape: vec![v.len()], values: v });
                }
                (params, states)
            }
        }
    }

    /// Reruns registration's power iterations for this layer (if spectral-normed) against its
    /// weight in `params`, from u, v in `states`: for an init that replaces the weights after
    /// [`Layer::init`] (the DCGAN paper's).
    pub fn refresh_spectral_states(&self, name: &str, params: &[Init], states: &mut [Init]) {
        let Layer::SpectralNorm(inner) = self else { return };
        let Some((shape, dim)) = inner.weight_shape() else { return };
        let [original, u_name, v_name] = spectral_names(name);
        let weight = params.iter().find(|p| p.name == original);
        let u = states.iter().position(|s| s.name == u_name);
        let v = states.iter().position(|s| s.name == v_name);
        if let (Some(weight), Some(u), Some(v)) = (weight, u, v) {
            let (new_u, new_v) = registered_vectors(&weight.values, &shape, dim, &states[u].values, &states[v].values);
            (states[u].values, states[v].values) = (new_u, new_v);
        }
    }

    /// The weight's shape and the dim spectral norm takes as W_mat's rows (PyTorch's: 1 for
    /// transposed convolutions, else 0); None for layers without a weight matrix.
    pub fn weight_shape(&self) -> Option<(Vec<usize>, usize)> {
        match self {
            Layer::Linear(l) => Some((vec![l.out_features, l.in_features], 0)),
            Layer::Conv2d(c) => Some((vec![c.out_channels, c.in_channels, c.kernel, c.kernel], 0)),
            Layer::ConvTranspose2d(c) => Some((vec![c.in_channels, c.out_channels, c.kernel, c.kernel], 1)),
            _ => None,
        }
    }

    /// A Linear or convolution applied with `weight` (the parameter, or its spectral norm).
    fn apply_weighted(&self, g: &mut Graph, name: &str, x: Tensor, weight: Tensor) -> Result<Tensor> {
        let mut inputs = vec![x, weight];
        let bias = |g: &mut Graph, n: usize| g.param(&format!("{name}.bias"), &[n]);
        match self {
            Layer::Linear(l) => {
                if l.bias {
                    inputs.push(bias(g, l.out_features));
                }
                g.apply1(ops::Linear, &inputs, name)
            }
            Layer::Conv2d(c) => {
                if c.bias {
                    inputs.push(bias(g, c.out_channels));
                }
                let op = ops::Conv2d { stride: [c.stride; 2], padding: [c.padding; 2], dilation: [1, 1] };
                g.apply1(op, &inputs, name)
            }
            Layer::ConvTranspose2d(c) => {
                if c.bias {
                    inputs.push(bias(g, c.out_channels));
                }
                let op = ops::ConvTranspose2d { stride: [c.stride; 2], padding: [c.padding; 2], output_padding: [c.output_padding; 2], dilation: [1, 1] };
                g.apply1(op, &inputs, name)
            }
            _ => crate::bail!(Invalid, "layer {name:?} has no weight to apply"),
        }
    }

    pub fn forward(&self, g: &mut Graph, name: &str, x: Tensor, mode: Mode) -> Result<Tensor> {
        let p = |g: &mut Graph, which: &str, shape: Vec<usize>| g.param(&format!("{name}.{which}"), &shape);
        match self {
            Layer::Linear(_) | Layer::Conv2d(_) | Layer::ConvTranspose2d(_) => {
                let (shape, _) = self.weight_shape().expect("a layer with a weight");
                let weight = p(g, "weight", shape);
                self.apply_weighted(g, name, x, weight)
            }
            Layer::SpectralNorm(inner) => {
                let Some((shape, dim)) = inner.weight_shape() else {
                    crate::bail!(Invalid, "spectral_norm {name:?}: wraps {inner:?}, which has no weight; only Linear, Conv2d and ConvTranspose2d layers can be normalized");
                };
                let [original, u, v] = spectral_names(name);
                let (rows, cols) = (shape[dim], shape.iter().product::<usize>() / shape[dim].max(1));
                let (weight, u, v) = (g.param(&original, &shape), g.state(&u, &[rows]), g.state(&v, &[cols]));
                let op = ops::SpectralNorm::new(dim, mode.training && mode.power_iteration);
                let normalized = g.apply(op, &[weight, u, v], name)?[0];
                inner.apply_weighted(g, name, x, normalized)
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
