//! DCGAN as in the TensorFlow tutorial, sized to the data: 28×28 starts the generator at 7×7,
//! 32×32 and 64×64 at 8×8, with one upsampling block per doubling (the discriminator mirrors it).

use crate::graph::ops::Act;
use crate::nn::{self, act, Layer, Sequential};
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
/// norm γ N(1, 0.02) and β 0, biases 0.
pub fn paper_init(params: &mut [nn::Init], rng: &mut nn::InitRng) {
    for p in params {
        let n = p.values.len();
        let is_bn = p.shape.len() == 1 && p.name.ends_with(".weight");
        p.values = if is_bn {
            rng.normal(n, 1.0, 0.02)
        } else if p.name.ends_with(".weight") {
            rng.normal(n, 0.0, 0.02)
        } else {
            vec![0.0; n]
        };
    }
}
