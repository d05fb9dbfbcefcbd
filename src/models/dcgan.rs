//! DCGAN as in the TensorFlow tutorial, sized to the data: 28×28 starts the generator at 7×7,
//! 32×32 and 64×64 at 8×8, with one upsampling block per doubling (the discriminator mirrors it).

use crate::graph::ops::{self, Act};
use crate::graph::{Graph, Tensor};
use crate::nn::{self, act, Layer, Mode, Sequential};
use crate::{bail, Result};

pub const LATENT: usize = 100;
/// The tutorial's LeakyReLU slope (Keras' default).
pub const SLOPE: f32 = 0.3;

/// Image geometry the models are built for.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ImageShape {
    pub channels: usize,
    pub size: usize,
}

fn start_size(size: usize) -> Result<usize> {
    match size {
        28 => Ok(7),
        32 | 64 => Ok(8),
        other => bail!(Invalid, "DCGAN builds 28x28, 32x32 and 64x64 images, not {other}x{other}"),
    }
}

fn bn(channels: usize) -> Layer {
    Layer::BatchNorm(nn::BatchNorm { channels, eps: 1e-3, momentum: 0.01 })
}

fn convt(cin: usize, cout: usize, stride: usize) -> Layer {
    Layer::ConvTranspose2d(nn::ConvTranspose2d {
        in_channels: cin,
        out_channels: cout,
        kernel: 5,
        stride,
        padding: 2,
        output_padding: stride - 1,
        bias: false,
    })
}

/// Dense(100 → s·s·256, no bias), BN, LeakyReLU, reshape; ConvT 5×5 s1 → 128, BN, LeakyReLU;
/// then stride-2 ConvT blocks (→ 64, …) and a last one to the image's channels with tanh.
pub fn generator(image: ImageShape) -> Result<Sequential> {
    let s = start_size(image.size)?;
    let mut layers = vec![
        Layer::Linear(nn::Linear { in_features: LATENT, out_features: s * s * 256, bias: false }),
        bn(s * s * 256),
        act(Act::LeakyRelu(SLOPE)),
        Layer::Reshape(nn::Reshape { shape: vec![256, s, s] }),
        convt(256, 128, 1),
        bn(128),
        act(Act::LeakyRelu(SLOPE)),
    ];
    let (mut c, mut size) = (128, s);
    while size * 4 <= image.size {
        layers.extend([convt(c, c / 2, 2), bn(c / 2), act(Act::LeakyRelu(SLOPE))]);
        c /= 2;
        size *= 2;
    }
    layers.extend([convt(c, image.channels, 2), act(Act::Tanh)]);
    Ok(Sequential::new("generator.", layers))
}

/// Conv 5×5 s2 → 64, LeakyReLU, Dropout 0.3, Conv 5×5 s2 → 128, LeakyReLU, Dropout 0.3 (and
/// one more block for 64×64), Flatten, Dense → 1 logit.
pub fn discriminator(image: ImageShape) -> Result<Sequential> {
    let s = start_size(image.size)?;
    let conv = |cin, cout| Layer::Conv2d(nn::Conv2d { in_channels: cin, out_channels: cout, kernel: 5, stride: 2, padding: 2, bias: true });
    let mut layers = Vec::new();
    let (mut c, mut size) = (image.channels, image.size);
    let mut out = 64;
    while size > s {
        layers.extend([conv(c, out), act(Act::LeakyRelu(SLOPE)), Layer::Dropout(nn::Dropout { p: 0.3 })]);
        c = out;
        out *= 2;
        size /= 2;
    }
    layers.extend([Layer::Flatten(nn::Flatten), Layer::Linear(nn::Linear { in_features: c * s * s, out_features: 1, bias: true })]);
    Ok(Sequential::new("discriminator.", layers))
}

/// The DCGAN paper's initialisation, overwriting PyTorch's defaults: weights N(0, 0.02), batch
/// norm γ N(1, 0.02) and β 0, biases 0. A spectral-normed model then needs its u, v
/// refreshed (`Sequential::refresh_spectral_states`).
pub fn paper_init(params: &mut [nn::Init], rng: &mut nn::InitRng) {
    for p in params {
        let n = p.values.len();
        let is_bn = p.shape.len() == 1 && p.name.ends_with(".weight");
        // A spectral-normed layer's weight is `.parametrizations.weight.original`.
        let is_weight = p.name.ends_with(".weight") || p.name.ends_with(".weight.original");
        p.values = if is_bn {
            rng.normal(n, 1.0, 0.02)
        } else if is_weight {
            rng.normal(n, 0.0, 0.02)
        } else {
            vec![0.0; n]
        };
    }
}

/// Class conditioning (`--conditional`, Mirza & Osindero 2014; Miyato & Koyama 2018): the
/// generator adds a class embedding to its first layer's output, which is the same as
/// concatenating a one-hot label to z; the discriminator is a projection discriminator,
/// logit = linear(φ(x)) + ⟨embed(y), φ(x)⟩ with φ(x) its flattened features. The embeddings
/// are `generator.embed.weight` [classes, first layer's width] and
/// `discriminator.embed.weight` [classes, φ's width].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conditioning {
    pub classes: usize,
}

/// Which networks are spectral-normed (`--spectral-norm d|g|both`): every Linear and conv
/// layer of them, as `torch.nn.utils.parametrizations.spectral_norm`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpectralNorm {
    pub discriminator: bool,
    pub generator: bool,
}

impl SpectralNorm {
    /// No layer normalized (the default), as a constant for recipe tables.
    pub const NONE: SpectralNorm = SpectralNorm { discriminator: false, generator: false };

    pub fn parse(spec: &str) -> Result<SpectralNorm> {
        Ok(match spec {
            "d" => SpectralNorm { discriminator: true, generator: false },
            "g" => SpectralNorm { discriminator: false, generator: true },
            "both" => SpectralNorm { discriminator: true, generator: true },
            "none" => SpectralNorm::default(),
            other => bail!(Invalid, "unknown --spectral-norm {other:?}: expected d, g, both or none"),
        })
    }

    pub fn name(self) -> &'static str {
        match (self.discriminator, self.generator) {
            (true, true) => "both",
            (true, false) => "d",
            (false, true) => "g",
            (false, false) => "none",
        }
    }

    /// The generator and discriminator for `image`, spectral-normed as asked.
    pub fn networks(self, image: ImageShape) -> Result<(Sequential, Sequential)> {
        let (g, d) = (generator(image)?, discriminator(image)?);
        Ok((if self.generator { g.spectral_normed() } else { g }, if self.discriminator { d.spectral_normed() } else { d }))
    }
}

pub const G_EMBED: &str = "generator.embed.weight";
pub const D_EMBED: &str = "discriminator.embed.weight";

fn linear_width(layer: &Layer, input: bool) -> usize {
    match layer {
        Layer::SpectralNorm(inner) => linear_width(inner, input),
        Layer::Linear(l) if input => l.in_features,
        Layer::Linear(l) => l.out_features,
        _ => unreachable!("the DCGAN's generator starts, and its discriminator ends, with a Linear layer"),
    }
}

impl Conditioning {
    /// Shapes of the two embeddings for these networks.
    pub fn shapes(self, generator: &Sequential, discriminator: &Sequential) -> [(&'static str, Vec<usize>); 2] {
        let g_width = linear_width(&generator.layers[0], false);
        let d_width = linear_width(discriminator.layers.last().expect("layers"), true);
        [(G_EMBED, vec![self.classes, g_width]), (D_EMBED, vec![self.classes, d_width])]
    }

    /// Initial embeddings: like the first layer's weights would be for one-hot inputs
    /// (PyTorch's U(±1/√fan_in) of Linear(z ⊕ one-hot)), or N(0, 0.02) under the paper's
    /// initialisation.
    pub fn init(self, generator: &Sequential, discriminator: &Sequential, paper: bool, rng: &mut nn::InitRng) -> [nn::Init; 2] {
        let fan_in = [LATENT + self.classes, linear_width(discriminator.layers.last().expect("layers"), true)];
        let [g, d] = self.shapes(generator, discriminator);
        let draw = |(name, shape): (&str, Vec<usize>), fan_in: usize, rng: &mut nn::InitRng| {
            let n = shape.iter().product();
            let values = if paper { rng.normal(n, 0.0, 0.02) } else { rng.uniform(n, 1.0 / (fan_in as f64).sqrt()) };
            nn::Init { name: name.to_string(), shape, values }
        };
        [draw(g, fan_in[0], rng), draw(d, fan_in[1], rng)]
    }
}

/// Class labels of a batch ([batch] f32 class indices) and the conditioning they feed.
#[derive(Clone, Copy, Debug)]
pub struct Labels {
    pub conditioning: Conditioning,
    pub labels: Tensor,
}

/// G(z), or G(z | y) with `labels`.
pub fn generate(g: &mut Graph, generator: &Sequential, z: Tensor, labels: Option<Labels>, mode: Mode) -> Result<Tensor> {
    let Some(Labels { conditioning, labels }) = labels else { return generator.forward(g, z, mode) };
    let first = generator.forward_range(g, z, 0..1, mode)?;
    let width = g.shape(first)[1];
    let embed = g.param(G_EMBED, &[conditioning.classes, width]);
    let e = g.apply1(ops::Embedding, &[embed, labels], "generator.embed")?;
    let h = g.apply1(ops::Add, &[first, e], "generator.embed")?;
    generator.forward_range(g, h, 1..generator.layers.len(), mode)
}

/// D's logits [batch, 1] of `x`, or with `labels` the projection discriminator's.
pub fn discriminate(g: &mut Graph, discriminator: &Sequential, x: Tensor, labels: Option<Labels>, mode: Mode) -> Result<Tensor> {
    let Some(Labels { conditioning, labels }) = labels else { return discriminator.forward(g, x, mode) };
    let last = discriminator.layers.len() - 1;
    let features = discriminator.forward_range(g, x, 0..last, mode)?;
    let logits = discriminator.forward_range(g, features, last..last + 1, mode)?;
    let shape = g.shape(features).to_vec();
    let embed = g.param(D_EMBED, &[conditioning.classes, shape[1]]);
    let e = g.apply1(ops::Embedding, &[embed, labels], "discriminator.embed")?;
    let product = g.apply1(ops::Mul, &[e, features], "discriminator.projection")?;
    let projection = g.apply1(ops::Sum { all: false, mean: false }, &[product], "discriminator.projection")?;
    let projection = g.reshape(projection, &[shape[0], 1])?;
    g.apply1(ops::Add, &[logits, projection], "discriminator.projection")
}
