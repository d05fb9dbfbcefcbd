//! VAEs: the MLP of PyTorch's example (784-400-20, names fc1, fc21, fc22, fc3, fc4) and a
//! convolutional one. Both encode to (mu, logvar) and decode z to pixel probabilities.

use crate::graph::ops::{self, Act};
use crate::graph::{Graph, Tensor};
use crate::nn::{self, act, Layer, Mode, Sequential};
use crate::Result;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Mlp,
    Conv,
}

pub struct Vae {
    pub kind: Kind,
    pub latent: usize,
    /// [channels, height, width] of the images.
    pub image: [usize; 3],
    pub encoder: Sequential,
    pub mu: Sequential,
    pub logvar: Sequential,
    pub decoder: Sequential,
    /// A conditional VAE over this many classes (`--conditional`): the label's embedding is
    /// added to the encoder's and the decoder's first Linear outputs ([`LABEL_ENCODER`],
    /// [`LABEL_DECODER`]), the same as concatenating a one-hot label to their inputs.
    pub classes: Option<usize>,
}

pub const LABEL_ENCODER: &str = "label_encoder.weight";
pub const LABEL_DECODER: &str = "label_decoder.weight";

/// Index of the first Linear layer of `model`, where the label's embedding is added.
fn first_linear(model: &Sequential) -> usize {
    model.layers.iter().position(|l| matches!(l, Layer::Linear(_))).expect("the VAE's encoder and decoder have a Linear layer")
}

fn linear_shape(model: &Sequential) -> (usize, usize) {
    match &model.layers[first_linear(model)] {
        Layer::Linear(l) => (l.in_features, l.out_features),
        _ => unreachable!("first_linear finds a Linear"),
    }
}

fn linear(i: usize, o: usize) -> Layer {
    Layer::Linear(nn::Linear { in_features: i, out_features: o, bias: true })
}

impl Vae {
    pub fn new(kind: Kind, image: [usize; 3], latent: usize, hidden: usize) -> Result<Vae> {
        let pixels: usize = image.iter().product();
        Ok(match kind {
            Kind::Mlp => Vae {
                classes: None,
                kind,
                latent,
                image,
                encoder: Sequential::named("", vec![("fc1", linear(pixels, hidden)), ("relu1", act(Act::Relu))]),
                mu: Sequential::named("", vec![("fc21", linear(hidden, latent))]),
                logvar: Sequential::named("", vec![("fc22", linear(hidden, latent))]),
                decoder: Sequential::named(
                    "",
                    vec![("fc3", linear(latent, hidden)), ("relu3", act(Act::Relu)), ("fc4", linear(hidden, pixels)), ("sigmoid", act(Act::Sigmoid))],
                ),
            },
            Kind::Conv => {
                let [c, h, w] = image;
                if h % 4 != 0 || w % 4 != 0 {
                    crate::bail!(Invalid, "the convolutional VAE needs image sides divisible by 4, got {h}x{w}");
                }
                let (h4, w4) = (h / 4, w / 4);
                let conv = |i, o| Layer::Conv2d(nn::Conv2d { in_channels: i, out_channels: o, kernel: 4, stride: 2, padding: 1, bias: true });
                let convt = |i, o| {
                    Layer::ConvTranspose2d(nn::ConvTranspose2d { in_channels: i, out_channels: o, kernel: 4, stride: 2, padding: 1, output_padding: 0, bias: true })
                };
                let flat = 64 * h4 * w4;
                Vae {
                    classes: None,
                    kind,
                    latent,
                    image,
                    encoder: Sequential::new(
                        "encoder.",
                        vec![conv(c, 32), act(Act::Relu), conv(32, 64), act(Act::Relu), Layer::Flatten(nn::Flatten), linear(flat, hidden), act(Act::Relu)],
                    ),
                    mu: Sequential::named("", vec![("fc_mu", linear(hidden, latent))]),
                    logvar: Sequential::named("", vec![("fc_logvar", linear(hidden, latent))]),
                    decoder: Sequential::new(
                        "decoder.",
                        vec![
                            linear(latent, hidden),
                            act(Act::Relu),
                            linear(hidden, flat),
                            act(Act::Relu),
                            Layer::Reshape(nn::Reshape { shape: vec![64, h4, w4] }),
                            convt(64, 32),
                            act(Act::Relu),
                            convt(32, c),
                            act(Act::Sigmoid),
                        ],
                    ),
                }
            }
        })
    }

    pub fn parts(&self) -> [&Sequential; 4] {
        [&self.encoder, &self.mu, &self.logvar, &self.decoder]
    }

    /// The same VAE conditional on `classes` labels (None: unconditional).
    pub fn conditional(self, classes: Option<usize>) -> Vae {
        Vae { classes, ..self }
    }

    /// Registers the model's parameters (PyTorch's default initial values from `rng`, the
    /// label embeddings last, drawn like the one-hot columns of the first Linear layers) as the
    /// store group "vae".
    pub fn register(&self, gpu: &crate::gpu::Gpu, store: &mut crate::graph::Store, rng: &mut nn::InitRng) -> Result<()> {
        let (mut params, mut states) = (Vec::new(), Vec::new());
        for model in self.parts() {
            let (p, s) = model.init(rng);
            params.extend(p);
            states.extend(s);
        }
        if let Some(classes) = self.classes {
            for (name, model) in [(LABEL_ENCODER, &self.encoder), (LABEL_DECODER, &self.decoder)] {
                let (fan_in, width) = linear_shape(model);
                let values = rng.uniform(classes * width, 1.0 / ((fan_in + classes) as f64).sqrt());
                params.push(nn::Init { name: name.to_string(), shape: vec![classes, width], values });
            }
        }
        nn::register(gpu, store, "vae", params, states)
    }

    /// `model` applied to `x`, with the label's embedding added after its first Linear layer
    /// for a conditional VAE; the labels must be given exactly when it is one.
    fn forward(&self, g: &mut Graph, model: &Sequential, x: Tensor, labels: Option<Tensor>, embedding: &str) -> Result<Tensor> {
        match (self.classes, labels) {
            (None, None) => model.forward(g, x, Mode::eval()),
            (Some(classes), Some(y)) => {
                let at = first_linear(model);
                let h = model.forward_range(g, x, 0..at + 1, Mode::eval())?;
                let width = g.shape(h)[1];
                let weight = g.param(embedding, &[classes, width]);
                let e = g.apply1(ops::Embedding, &[weight, y], embedding)?;
                let h = g.apply1(ops::Add, &[h, e], embedding)?;
                model.forward_range(g, h, at + 1..model.layers.len(), Mode::eval())
            }
            (Some(classes), None) => crate::bail!(Invalid, "this VAE is conditional on {classes} classes: it needs the images' labels"),
            (None, Some(_)) => crate::bail!(Invalid, "this VAE is unconditional: it takes no labels"),
        }
    }

    /// (mu, logvar) of a batch `x` shaped as the model's input ([B, pixels] for the MLP,
    /// [B, C, H, W] for the conv net), given its labels ([B]) for a conditional VAE.
    pub fn encode(&self, g: &mut Graph, x: Tensor, labels: Option<Tensor>) -> Result<(Tensor, Tensor)> {
        let h = self.forward(g, &self.encoder, x, labels, LABEL_ENCODER)?;
        Ok((self.mu.forward(g, h, Mode::eval())?, self.logvar.forward(g, h, Mode::eval())?))
    }

    /// Pixel probabilities, flattened to [B, pixels], of latents `z` (of classes `labels`).
    pub fn decode(&self, g: &mut Graph, z: Tensor, labels: Option<Tensor>) -> Result<Tensor> {
        let y = self.forward(g, &self.decoder, z, labels, LABEL_DECODER)?;
        let b = g.shape(y)[0];
        g.reshape(y, &[b, self.image.iter().product()])
    }

    /// A labels input `{name}_labels` of `b` rows for a conditional VAE, None otherwise.
    pub fn labels_input(&self, g: &mut Graph, name: &str, b: usize) -> Option<Tensor> {
        self.classes.map(|_| g.input(&format!("{name}_labels"), &[b]))
    }

    /// The input shape for a batch of `b`.
    pub fn input_shape(&self, b: usize) -> Vec<usize> {
        match self.kind {
            Kind::Mlp => vec![b, self.image.iter().product()],
            Kind::Conv => vec![b, self.image[0], self.image[1], self.image[2]],
        }
    }

    /// The training loss of PyTorch's example for a batch `x` in [0, 1] (flattened [B,
    /// pixels] as `target`): BCE(recon, x, sum) + KL(mu, logvar), with eps ~ N(0, 1) drawn on
    /// the GPU from stream `seed`. Returns (loss, bce, kl, recon).
    /// [objective, bce, kl, reconstruction]: the objective is bce + β·kl (β-VAE, Higgins et
    /// al. 2017); at β = 1 it is the negative ELBO.
    pub fn loss(&self, g: &mut Graph, x: Tensor, target: Tensor, labels: Option<Tensor>, seed: u64, beta: f32) -> Result<[Tensor; 4]> {
        let (mu, logvar) = self.encode(g, x, labels)?;
        let shape = g.shape(mu).to_vec();
        let eps = g.apply1(ops::RandomFill { normal: true, a: 0.0, b: 1.0, seed, shape }, &[], "eps")?;
        let z = g.apply1(ops::Reparameterize, &[mu, logvar, eps], "z")?;
        let recon = self.decode(g, z, labels)?;
        let bce = g.apply1(ops::Loss(ops::LossKind::Bce(crate::kernels::loss::Reduction::Sum)), &[recon, target], "bce")?;
        let kl = g.apply1(ops::Loss(ops::LossKind::KlNormal), &[mu, logvar], "kl")?;
        let weighted = if beta == 1.0 { kl } else { g.apply1(ops::Scale { alpha: beta }, &[kl], "beta_kl")? };
        let loss = g.apply1(ops::Add, &[bce, weighted], "loss")?;
        Ok([loss, bce, kl, recon])
    }
}
