//! shaders/augment.wgsl: DiffAugment's color and shift (translation, cutout) families on
//! `[N, C, H, W]` images, forward and backward, given the draws as a `[N, PARAMS_PER_SAMPLE]`
//! buffer of uniforms in [0, 1).
//!
//! Color needs each sample's mean over C·H·W: [`color`] computes it with reduce.wgsl's
//! multi-pass means (of image rows, then of samples) into caller-owned scratch
//! ([`color_scratch_lens`]), so no invocation walks a sample; the color kernel itself loops
//! only over the C channels of a few pixels, twice.

use super::conv::LOOP_BUDGET;
use super::{check_len, reduce};
use crate::gpu::{workgroups_1d, Buffer, Cost, Dispatch, Gpu, KernelId};
use crate::{bail, Result};

const WG: u32 = 256;
/// Pixels per invocation (PIXELS in WGSL).
const PIXELS: usize = 4;

/// Draws per sample: brightness, saturation, contrast, translation (rows, columns), cutout
/// offset (rows, columns), in that column order.
pub const PARAMS_PER_SAMPLE: usize = 7;

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    c: u32,
    h: u32,
    w: u32,
    brightness: u32,
    translation: u32,
    cutout: u32,
    shift_h: u32,
    shift_w: u32,
    cut_h: u32,
    cut_w: u32,
    _pad: u32,
}

/// The image batch an augmentation runs over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Images {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
}

impl Images {
    pub fn from_shape(shape: &[usize]) -> Option<Images> {
        match *shape {
            [n, c, h, w] => Some(Images { n, c, h, w }),
            _ => None,
        }
    }

    pub fn len(&self) -> usize {
        self.n * self.c * self.h * self.w
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The per-sample mean in two levels of reduce.wgsl's means, equal-sized groups so the
    /// mean of means is the mean: each image row's, then each sample's over its C·H rows.
    /// Short rows take reduce's one-thread-per-row path, which on CPU adapters is far cheaper
    /// than a workgroup per sample (its barriers): measured at 64×1×28×28 on lavapipe, about a
    /// quarter of the time.
    fn mean_levels(&self) -> [reduce::Rows; 2] {
        [reduce::Rows { rows: self.n * self.c * self.h, cols: self.w }, reduce::Rows { rows: self.n, cols: self.c * self.h }]
    }

    /// What no kernel here can compute (empty images, 32-bit overflow, too many channels for
    /// llvmpipe's loop limit), said in words; None when the batch is fine.
    pub fn problem(&self) -> Option<String> {
        let Images { n, c, h, w } = *self;
        if n == 0 || c == 0 || h == 0 || w == 0 {
            return Some(format!("images [{n}, {c}, {h}, {w}] are empty"));
        }
        if [n, c, h, w].iter().try_fold(1usize, |len, &d| len.checked_mul(d)).is_none_or(|len| len > u32::MAX as usize) {
            return Some(format!("images [{n}, {c}, {h}, {w}] have more elements than a 32-bit index reaches"));
        }
        if h.max(w) > 1 << 30 {
            // The shift kernel's pixel coordinates are i32 (negative past the border).
            return Some(format!("images [{n}, {c}, {h}, {w}] are wider or taller than 2^30 pixels"));
        }
        if color_loop_iterations(c) > LOOP_BUDGET {
            return Some(format!(
                "{c} channels take {} loop iterations per invocation of the color kernel, over the {LOOP_BUDGET} that CPU adapters (llvmpipe) run before silently stopping",
                color_loop_iterations(c)
            ));
        }
        None
    }

    fn check(&self, op: &str) -> Result<()> {
        match self.problem() {
            Some(why) => bail!(Limit, "{op}: {why}"),
            None => Ok(()),
        }
    }

    fn params(&self) -> Params {
        // int(size · ratio + 0.5) as DiffAugment computes it, for ratios 1/8 and 1/2.
        Params {
            n: self.n as u32,
            c: self.c as u32,
            h: self.h as u32,
            w: self.w as u32,
            shift_h: ((self.h + 4) / 8) as u32,
            shift_w: ((self.w + 4) / 8) as u32,
            cut_h: self.h.div_ceil(2) as u32,
            cut_w: self.w.div_ceil(2) as u32,
            ..Params::default()
        }
    }
}

/// Two loops over the channels, each around one over the PIXELS, counted as if llvmpipe did
/// not unroll that constant-bound loop.
fn color_loop_iterations(channels: usize) -> usize {
    2 * channels * (PIXELS + 1)
}

fn check_buffers(op: &str, images: Images, x: &Buffer, draws: &Buffer, y: &Buffer) -> Result<()> {
    images.check(op)?;
    check_len(op, "input", x, images.len())?;
    check_len(op, "draws", draws, images.n * PARAMS_PER_SAMPLE)?;
    check_len(op, "output", y, images.len())
}

/// Element counts of the scratch [`color`] needs: the N·C·H row means, the N sample means,
/// then the reductions' own (the two levels run in turn, so they share them).
pub fn color_scratch_lens(images: Images) -> Vec<usize> {
    let [rows, samples] = images.mean_levels().map(reduce::scratch_lens);
    let shared = (0..rows.len().max(samples.len())).map(|i| rows.get(i).max(samples.get(i)).copied().unwrap_or(0));
    [images.n * images.c * images.h, images.n].into_iter().chain(shared).collect()
}

/// rand_brightness, rand_saturation, rand_contrast with the given draws (forward), or their
/// linear part applied to the output gradient (`backward`: dx = color's linear map of dy).
#[allow(clippy::too_many_arguments)]
pub fn color(gpu: &Gpu, images: Images, backward: bool, x: &Buffer, draws: &Buffer, y: &Buffer, scratch: &[Buffer]) -> Result<Vec<Dispatch>> {
    let entry = if backward { "color_backward" } else { "color_forward" };
    let kernel = KernelId::new("augment", entry);
    let op = kernel.to_string();
    check_buffers(&op, images, x, draws, y)?;
    let [row_means, means, reduce_scratch @ ..] = scratch else {
        bail!(Shape, "{op}: needs {} scratch buffers, got {}", color_scratch_lens(images).len(), scratch.len());
    };
    let [rows, samples] = images.mean_levels();
    check_len(&op, "row means", row_means, rows.rows)?;
    check_len(&op, "means", means, samples.rows)?;
    let mut dispatches = reduce::mean(gpu, rows, x, row_means, reduce_scratch)?;
    dispatches.extend(reduce::mean(gpu, samples, row_means, means, reduce_scratch)?);
    let params = Params { brightness: u32::from(!backward), ..images.params() };
    let invocations = images.n * (images.h * images.w).div_ceil(PIXELS);
    // Per element: two loads of x and about 8 flops.
    let cost = Cost::elementwise(images.len(), 8, 2, 1);
    let bindings = [(1, x), (2, draws), (3, means), (4, y)];
    dispatches.push(gpu.dispatch(kernel, "", &params, &bindings, workgroups_1d(invocations, WG), cost)?);
    Ok(dispatches)
}

/// rand_translation (when `translation`) then rand_cutout (when `cutout`) with the given draws,
/// or (`backward`) their transpose applied to the output gradient.
#[allow(clippy::too_many_arguments)]
pub fn shift(gpu: &Gpu, images: Images, translation: bool, cutout: bool, backward: bool, x: &Buffer, draws: &Buffer, y: &Buffer) -> Result<Dispatch> {
    let entry = if backward { "shift_backward" } else { "shift_forward" };
    let kernel = KernelId::new("augment", entry);
    let op = kernel.to_string();
    check_buffers(&op, images, x, draws, y)?;
    let params = Params { translation: u32::from(translation), cutout: u32::from(cutout), ..images.params() };
    let cost = Cost::elementwise(images.len(), 16, 1, 1);
    let bindings = [(1, x), (2, draws), (4, y)];
    let invocations = images.n * images.c * images.h * images.w.div_ceil(PIXELS);
    gpu.dispatch(kernel, "", &params, &bindings, workgroups_1d(invocations, WG), cost)
}
