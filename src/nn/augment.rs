//! DiffAugment (Zhao et al. 2020, "Differentiable Augmentation for Data-Efficient GAN
//! Training"): the same random, differentiable augmentation applied to real and fake batches
//! before the discriminator. The draws are a `[N, 7]` uniform fill with a Philox stream of its
//! own (`seed`) at the training step, so every step augments afresh and a resumed run draws
//! what the original drew; the augmentation ops themselves are deterministic given the draws.

use crate::graph::ops::{AugmentColor, AugmentShift, RandomFill};
use crate::graph::{Graph, Tensor};
use crate::kernels::augment::PARAMS_PER_SAMPLE;
use crate::{bail, Result};

/// One of DiffAugment_pytorch.py's policies: `color` (brightness, saturation, contrast),
/// `translation` (up to 1/8 of the size, zero fill), `cutout` (a square of half the size).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Policy {
    Color,
    Translation,
    Cutout,
}

impl Policy {
    /// Every policy, in the order they are applied.
    pub const ALL: [Policy; 3] = [Policy::Color, Policy::Translation, Policy::Cutout];

    pub fn name(self) -> &'static str {
        match self {
            Policy::Color => "color",
            Policy::Translation => "translation",
            Policy::Cutout => "cutout",
        }
    }
}

/// Parses a comma-separated policy (`translation,cutout,color`; an empty string is no
/// augmentation). The result is in application order — color, translation, cutout — whatever
/// order the names come in, each once.
pub fn parse_policy(text: &str) -> Result<Vec<Policy>> {
    let mut policy = Vec::new();
    for name in text.split(',').map(str::trim).filter(|_| !text.trim().is_empty()) {
        let Some(&p) = Policy::ALL.iter().find(|p| p.name() == name) else {
            let valid: Vec<&str> = Policy::ALL.iter().map(|p| p.name()).collect();
            bail!(Invalid, "DiffAugment policy {text:?}: unknown name {name:?}; the valid names are {}", valid.join(", "));
        };
        policy.push(p);
    }
    policy.sort();
    policy.dedup();
    Ok(policy)
}

/// `x` (`[N, C, H, W]`) augmented by `policy` with fresh draws each step from stream `seed`.
/// Give real and fake batches different seeds. An empty policy returns `x` itself.
pub fn diff_augment(g: &mut Graph, x: Tensor, policy: &[Policy], seed: u64) -> Result<Tensor> {
    if policy.is_empty() {
        return Ok(x);
    }
    let shape = g.shape(x).to_vec();
    let &[n, _, _, _] = shape.as_slice() else {
        bail!(Shape, "diff_augment: images must be 4-D [N, C, H, W], got {shape:?}");
    };
    let fill = RandomFill { normal: false, a: 0.0, b: 1.0, seed, shape: vec![n, PARAMS_PER_SAMPLE] };
    let draws = g.apply1(fill, &[], "diff_augment.draws")?;
    diff_augment_with(g, x, draws, policy)
}

/// [`diff_augment`] with the draws given: a `[N, 7]` tensor of uniforms in [0, 1) whose
/// columns are brightness, saturation, contrast, translation rows, translation columns,
/// cutout rows, cutout columns (integers come from `floor(u · count)`, in f32).
pub fn diff_augment_with(g: &mut Graph, x: Tensor, draws: Tensor, policy: &[Policy]) -> Result<Tensor> {
    let mut policy = policy.to_vec();
    policy.sort();
    let mut h = x;
    if policy.contains(&Policy::Color) {
        h = g.apply1(AugmentColor { backward: false }, &[h, draws], "diff_augment.color")?;
    }
    let (translation, cutout) = (policy.contains(&Policy::Translation), policy.contains(&Policy::Cutout));
    if translation || cutout {
        h = g.apply1(AugmentShift { translation, cutout, backward: false }, &[h, draws], "diff_augment.shift")?;
    }
    Ok(h)
}
