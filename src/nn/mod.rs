//! Layers on top of the graph, with PyTorch's default initialisations and parameter names
//! (`0.weight`, `1.running_mean`, …), so a PyTorch state_dict saved as safetensors loads by
//! name. A model is a [`Sequential`] of layers under a prefix (`generator.`).

pub mod augment;
mod init;
mod layers;
pub mod penalty;

pub use init::InitRng;
pub use layers::{spectral_names, BatchNorm, Conv2d, ConvTranspose2d, Dropout, Flatten, Layer, Linear, Reshape};

use crate::graph::ops::Act;
use crate::graph::{Graph, Store, Tensor};
use crate::gpu::Gpu;
use crate::Result;

/// A tensor to create in the store: its full name, shape and initial values.
#[derive(Clone, Debug, PartialEq)]
pub struct Init {
    pub name: String,
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

/// How a forward pass is built.
#[derive(Clone, Copy, Debug)]
pub struct Mode {
    /// Batch statistics and dropout (training) or running statistics and identity (eval).
    pub training: bool,
    /// Whether batch norm updates its running statistics in this forward (off when a step
    /// runs the same forward twice, as a GAN's generator update does).
    pub update_running: bool,
    /// Whether spectral norm runs its power iteration (training only): once per step, so off
    /// for a step's later forwards through the same layers (D on the fake batch, D in G's
    /// update), which then read the u, v the first one updated.
    pub power_iteration: bool,
    /// Base of the dropout streams; each dropout layer derives its own from its name.
    pub seed: u64,
}

impl Mode {
    pub fn train(seed: u64) -> Mode {
        Mode { training: true, update_running: true, power_iteration: true, seed }
    }

    pub fn eval() -> Mode {
        Mode { training: false, update_running: false, power_iteration: false, seed: 0 }
    }
}

/// Layers applied in order, named by position as `nn.Sequential` names them (or by the
/// names given, as attributes of an `nn.Module` are).
pub struct Sequential {
    pub prefix: String,
    pub layers: Vec<Layer>,
    names: Vec<String>,
}

impl Sequential {
    pub fn new(prefix: &str, layers: Vec<Layer>) -> Sequential {
        let names = (0..layers.len()).map(|i| i.to_string()).collect();
        Sequential { prefix: prefix.to_string(), layers, names }
    }

    /// Layers with names of their own (`fc1`, `fc2`): parameters `{prefix}fc1.weight`.
    pub fn named(prefix: &str, layers: Vec<(&str, Layer)>) -> Sequential {
        let names = layers.iter().map(|(n, _)| n.to_string()).collect();
        Sequential { prefix: prefix.to_string(), layers: layers.into_iter().map(|(_, l)| l).collect(), names }
    }

    fn name(&self, i: usize) -> String {
        format!("{}{}", self.prefix, self.names[i])
    }

    /// Initial parameters (PyTorch's defaults, drawn from `rng`) and states.
    pub fn init(&self, rng: &mut InitRng) -> (Vec<Init>, Vec<Init>) {
        let (mut params, mut states) = (Vec::new(), Vec::new());
        for (i, layer) in self.layers.iter().enumerate() {
            let (p, s) = layer.init(&self.name(i), rng);
            params.extend(p);
            states.extend(s);
        }
        (params, states)
    }

    /// Registers this model's parameters, with PyTorch's default initial values, as one
    /// group (one optimizer dispatch) and its states.
    pub fn register(&self, gpu: &Gpu, store: &mut Store, group: &str, rng: &mut InitRng) -> Result<()> {
        register_models(gpu, store, group, &[self], rng)
    }

    /// Applies every layer to `x`; shape errors name the layer (`generator.3`).
    pub fn forward(&self, g: &mut Graph, x: Tensor, mode: Mode) -> Result<Tensor> {
        self.forward_range(g, x, 0..self.layers.len(), mode)
    }

    /// Applies layers `range` only (a conditional model inserts its embedding between them).
    pub fn forward_range(&self, g: &mut Graph, x: Tensor, range: std::ops::Range<usize>, mode: Mode) -> Result<Tensor> {
        let mut h = x;
        for i in range {
            h = self.layers[i].forward(g, &self.name(i), h, mode)?;
        }
        Ok(h)
    }

    /// This model with every Linear, Conv2d and ConvTranspose2d layer spectral-normed
    /// (`--spectral-norm`); layers already wrapped stay as they are.
    pub fn spectral_normed(mut self) -> Sequential {
        self.layers = self.layers.into_iter().map(|l| if l.weight_shape().is_some() { Layer::SpectralNorm(Box::new(l)) } else { l }).collect();
        self
    }

    /// Reruns spectral norm's registration power iterations against the weights in `params`:
    /// call after replacing the initial weights [`init`](Self::init) drew (the DCGAN paper's
    /// init), so u and v fit the weights the run starts from.
    pub fn refresh_spectral_states(&self, params: &[Init], states: &mut [Init]) {
        for (i, layer) in self.layers.iter().enumerate() {
            layer.refresh_spectral_states(&self.name(i), params, states);
        }
    }

    /// The graph's parameter tensors of this model, in registration order.
    pub fn params(&self, g: &Graph) -> Vec<Tensor> {
        let prefix = &self.prefix;
        (0..g.tensors.len())
            .map(Tensor::from_index)
            .filter(|&t| g.info(t).role == crate::graph::Role::Param && g.info(t).name.starts_with(prefix.as_str()))
            .collect()
    }
}

/// Registers `params` as one group of the store and `states` beside them.
pub fn register(gpu: &Gpu, store: &mut Store, group: &str, params: Vec<Init>, states: Vec<Init>) -> Result<()> {
    store.add_group(gpu, group, params.into_iter().map(|p| (p.name, p.shape, p.values)).collect())?;
    for s in states {
        store.add_state(gpu, &s.name, &s.shape, &s.values)?;
    }
    Ok(())
}

/// Registers several models as one parameter group, so one optimizer dispatch updates them
/// all (a VAE's encoder, heads and decoder), with PyTorch's default initial values drawn in
/// the order given.
pub fn register_models(gpu: &Gpu, store: &mut Store, group: &str, models: &[&Sequential], rng: &mut InitRng) -> Result<()> {
    let (mut params, mut states) = (Vec::new(), Vec::new());
    for model in models {
        let (p, s) = model.init(rng);
        params.extend(p);
        states.extend(s);
    }
    register(gpu, store, group, params, states)
}

/// torch.nn.utils.parametrizations.spectral_norm(layer) for a Linear, Conv2d or
/// ConvTranspose2d layer; other layers are refused, naming them.
pub fn spectral_norm(layer: Layer) -> Result<Layer> {
    if layer.weight_shape().is_none() {
        crate::bail!(Invalid, "spectral_norm: {layer:?} has no weight; only Linear, Conv2d and ConvTranspose2d layers can be normalized");
    }
    Ok(Layer::SpectralNorm(Box::new(layer)))
}

/// Shorthand for activation layers.
pub fn act(a: Act) -> Layer {
    Layer::Activation(a)
}

/// Shorthand for a Linear layer with a bias, as `nn.Linear(in, out)`.
pub fn linear(in_features: usize, out_features: usize) -> Layer {
    Layer::Linear(Linear { in_features, out_features, bias: true })
}

/// Shorthand for `nn.MaxPool2d(kernel, stride)`: a square window, no padding (for padding,
/// dilation or ceil_mode, `Layer::MaxPool2d(ops::MaxPool2d { .. })`).
pub fn max_pool2d(kernel: usize, stride: usize) -> Layer {
    Layer::MaxPool2d(crate::graph::ops::MaxPool2d::new(kernel, stride))
}

/// Shorthand for `nn.AvgPool2d(kernel, stride)`: a square window, no padding, padding counted
/// in the divisor as PyTorch's default (Inception's `avg_pool2d(3, 1, 1,
/// count_include_pad=False)` is `Layer::AvgPool2d(ops::AvgPool2d { padding: [1, 1],
/// count_include_pad: false, ..ops::AvgPool2d::new(3, 1) })`).
pub fn avg_pool2d(kernel: usize, stride: usize) -> Layer {
    Layer::AvgPool2d(crate::graph::ops::AvgPool2d::new(kernel, stride))
}
