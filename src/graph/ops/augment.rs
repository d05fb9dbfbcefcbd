//! DiffAugment's two families as ops on `[N, C, H, W]` images with a `[N, 7]` input of draws
//! (uniforms from a `RandomFill`, see `nn::augment`). Both are affine in the images, the
//! draws get no gradient, and each backward op is linear in dy with the forward's linear part
//! as its own backward, so second derivatives (R1 on augmented reals) go through.

use crate::gpu::{Dispatch, Gpu};
use crate::graph::{Graph, HostValue, NodeView, Op, OpIo, Tensor};
use crate::kernels::augment::{self as k, Images, PARAMS_PER_SAMPLE};
use crate::reference::augment as r;
use crate::Result;

/// Images and draws checked: the shape rule both families share.
fn images_and_draws(x: &[&[usize]]) -> std::result::Result<Images, String> {
    let Some(images) = Images::from_shape(x[0]) else {
        return Err(format!("images must be 4-D [N, C, H, W], got {:?}", x[0]));
    };
    if x[1] != [images.n, PARAMS_PER_SAMPLE] {
        return Err(format!("draws must be [{}, {PARAMS_PER_SAMPLE}] for {} images, got {:?}", images.n, images.n, x[1]));
    }
    match images.problem() {
        Some(why) => Err(why),
        None => Ok(images),
    }
}

fn dims(shape: &[usize]) -> [usize; 4] {
    shape.try_into().expect("checked 4-D at build")
}

/// Brightness, saturation and contrast (`backward`: their linear part, which is its own
/// transpose, applied to dy). Inputs (images or dy, draws).
#[derive(Debug)]
pub struct AugmentColor {
    pub backward: bool,
}

impl Op for AugmentColor {
    fn name(&self) -> &'static str {
        if self.backward {
            "diff_augment_color_backward"
        } else {
            "diff_augment_color"
        }
    }
    fn infer(&self, x: &[&[usize]]) -> std::result::Result<Vec<Vec<usize>>, String> {
        images_and_draws(x)?;
        Ok(vec![x[0].to_vec()])
    }
    fn scratch(&self, x: &[&[usize]]) -> Vec<usize> {
        k::color_scratch_lens(Images::from_shape(x[0]).expect("checked 4-D at build"))
    }
    fn lower(&self, gpu: &Gpu, io: &OpIo) -> Result<Vec<Dispatch>> {
        let images = Images::from_shape(io.input_shapes[0]).expect("checked 4-D at build");
        k::color(gpu, images, self.backward, io.inputs[0], io.inputs[1], io.outputs[0], &io.scratch)
    }
    fn reference(&self, x: &mut [HostValue]) -> Vec<HostValue> {
        vec![(x[0].0.clone(), r::color(&x[0].1, dims(&x[0].0), &x[1].1, !self.backward))]
    }
    fn backward(&self, g: &mut Graph, n: &NodeView, dys: &[Option<Tensor>], _: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let dx = g.apply1(AugmentColor { backward: true }, &[dys[0].expect("gradient"), n.inputs[1]], &n.layer)?;
        Ok(vec![Some(dx), None])
    }
}

/// Translation and/or cutout (`backward`: their transpose applied to dy). Inputs (images or
/// dy, draws).
#[derive(Debug)]
pub struct AugmentShift {
    pub translation: bool,
    pub cutout: bool,
    pub backward: bool,
}

impl Op for AugmentShift {
    fn name(&self) -> &'static str {
        if self.backward {
            "diff_augment_shift_backward"
        } else {
            "diff_augment_shift"
        }
    }
    fn infer(&self, x: &[&[usize]]) -> std::result::Result<Vec<Vec<usize>>, String> {
        images_and_draws(x)?;
        Ok(vec![x[0].to_vec()])
    }
    fn lower(&self, gpu: &Gpu, io: &OpIo) -> Result<Vec<Dispatch>> {
        let images = Images::from_shape(io.input_shapes[0]).expect("checked 4-D at build");
        let (x, draws, y) = (io.inputs[0], io.inputs[1], io.outputs[0]);
        Ok(vec![k::shift(gpu, images, self.translation, self.cutout, self.backward, x, draws, y)?])
    }
    fn reference(&self, x: &mut [HostValue]) -> Vec<HostValue> {
        let (v, shape, draws) = (&x[0].1, dims(&x[0].0), &x[1].1);
        let y = if self.backward {
            r::shift_backward(v, shape, draws, self.translation, self.cutout)
        } else {
            r::shift(v, shape, draws, self.translation, self.cutout)
        };
        vec![(x[0].0.clone(), y)]
    }
    fn backward(&self, g: &mut Graph, n: &NodeView, dys: &[Option<Tensor>], _: &[bool]) -> Result<Vec<Option<Tensor>>> {
        // Linear in x: the transpose of the forward is the backward, and the other way round.
        let transposed = AugmentShift { backward: !self.backward, ..*self };
        let dx = g.apply1(transposed, &[dys[0].expect("gradient"), n.inputs[1]], &n.layer)?;
        Ok(vec![Some(dx), None])
    }
}
