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
}

fn linear(i: usize, o: usize) -> Layer {
    Layer::Linear(nn::Linear { in_features: i, out_features: o, bias: true })
}

impl Vae {
    pub fn new(kind: Kind, image: [usize; 3], latent: usize, hidden: usize) -> Result<Vae> {
        let pixels: usize = image.iter().product();
        Ok(match kind {
            Kind::Mlp => Vae {
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

    /// (mu, logvar) of a batch `x` shaped as the model's input ([B, pixels] for the MLP,
    /// [B, C, H, W] for the conv net).
    pub fn encode(&self, g: &mut Graph, x: Tensor) -> Result<(Tensor, Tensor)> {
        let h = self.encoder.forward(g, x, Mode::eval())?;
        Ok((self.mu.forward(g, h, Mode::eval())?, self.logvar.forward(g, h, Mode::eval())?))
    }

    /// Pixel probabilities, flattened to [B, pixels].
    pub fn decode(&self, g: &mut Graph, z: Tensor) -> Result<Tensor> {
        let y = self.decoder.forward(g, z, Mode::eval())?;
        let b = g.shape(y)[0];
        g.reshape(y, &[b, self.image.iter().product()])
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
    pub fn loss(&self, g: &mut Graph, x: Tensor, target: Tensor, seed: u64, beta: f32) -> Result<[Tensor; 4]> {
        let (mu, logvar) = self.encode(g, x)?;
        let shape = g.shape(mu).to_vec();
        let eps = g.apply1(ops::RandomFill { normal: true, a: 0.0, b: 1.0, seed, shape }, &[], "eps")?;
        let z = g.apply1(ops::Reparameterize, &[mu, logvar, eps], "z")?;
        let recon = self.decode(g, z)?;
        let bce = g.apply1(ops::Loss(ops::LossKind::Bce(crate::kernels::loss::Reduction::Sum)), &[recon, target], "bce")?;
        let kl = g.apply1(ops::Loss(ops::LossKind::KlNormal), &[mu, logvar], "kl")?;
        let weighted = if beta == 1.0 { kl } else { g.apply1(ops::Scale { alpha: beta }, &[kl], "beta_kl")? };
        let loss = g.apply1(ops::Add, &[bce, weighted], "loss")?;
        Ok([loss, bce, kl, recon])
    }
}
