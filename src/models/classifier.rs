//! A LeNet-style image classifier, sized to the data: conv 5×5 → ReLU → max-pool 2 → conv 5×5
//! → ReLU → max-pool 2 → Linear → ReLU → dropout → Linear to the classes (PyTorch's
//! `features.0`, `features.3`, `head.0`, `head.3` names). kiln trains it (`kiln train
//! classifier`) and uses its penultimate activations as the feature space of FID, KID and
//! precision/recall for small grey or colour images (the `lenet-*` backbones).

use crate::graph::ops::Act;
use crate::graph::{Graph, Tensor};
use crate::nn::{self, act, Layer, Mode, Sequential};
use crate::{bail, Result};

/// Widths: 16 and 32 channels, 128 features.
pub const FEATURES: usize = 128;
const C1: usize = 16;
const C2: usize = 32;

pub struct Classifier {
    /// [channels, height, width].
    pub image: [usize; 3],
    pub classes: usize,
    /// Images to the penultimate activations, [B, FEATURES].
    pub features: Sequential,
    /// Dropout and the last Linear: features to class logits.
    pub head: Sequential,
}

fn conv(i: usize, o: usize) -> Layer {
    Layer::Conv2d(nn::Conv2d { in_channels: i, out_channels: o, kernel: 5, stride: 1, padding: 0, bias: true })
}

/// Side after a 5×5 valid convolution and a 2×2 max-pool (floor, as PyTorch's default).
fn block(side: usize) -> usize {
    (side - 4) / 2
}

impl Classifier {
    pub fn new(image: [usize; 3], classes: usize) -> Result<Classifier> {
        let [c, h, w] = image;
        if h < 12 || w < 12 {
            bail!(Invalid, "the classifier needs images of at least 12x12, got {h}x{w}");
        }
        if classes < 2 {
            bail!(Invalid, "a classifier needs at least 2 classes, got {classes}");
        }
        let flat = C2 * block(block(h)) * block(block(w));
        let features = Sequential::new(
            "features.",
            vec![
                conv(c, C1),
                act(Act::Relu),
                nn::max_pool2d(2, 2),
                conv(C1, C2),
                act(Act::Relu),
                nn::max_pool2d(2, 2),
                Layer::Flatten(nn::Flatten),
                nn::linear(flat, FEATURES),
                act(Act::Relu),
            ],
        );
        let head = Sequential::new("head.", vec![Layer::Dropout(nn::Dropout { p: 0.5 }), nn::linear(FEATURES, classes)]);
        Ok(Classifier { image, classes, features, head })
    }

    pub fn parts(&self) -> [&Sequential; 2] {
        [&self.features, &self.head]
    }

    /// (penultimate features, logits) of a batch `x` [B, C, H, W].
    pub fn forward(&self, g: &mut Graph, x: Tensor, mode: Mode) -> Result<(Tensor, Tensor)> {
        let f = self.features.forward(g, x, mode)?;
        Ok((f, self.head.forward(g, f, mode)?))
    }
}
