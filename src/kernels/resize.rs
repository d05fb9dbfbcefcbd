//! shaders/resize.wgsl: bilinear resizing as F.interpolate(mode='bilinear',
//! align_corners=False), with an affine map of the result folded in.

use super::check_len;
use crate::gpu::{workgroups_1d, Buffer, Cost, Dispatch, Gpu, KernelId};
use crate::{bail, Result};

const WG: u32 = 256;

/// Resizing `planes` images of `size` to `out`, then y = alpha · value + beta.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bilinear {
    pub planes: usize,
    pub size: [usize; 2],
    pub out: [usize; 2],
    pub alpha: f32,
    pub beta: f32,
}

/// Field order and types match `Params` in shaders/resize.wgsl.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    total: u32,
    h: u32,
    w: u32,
    ho: u32,
    wo: u32,
    scale_h: f32,
    scale_w: f32,
    alpha: f32,
    beta: f32,
}

impl Bilinear {
    pub fn input_len(&self) -> usize {
        self.planes * self.size[0] * self.size[1]
    }

    pub fn output_len(&self) -> usize {
        self.planes * self.out[0] * self.out[1]
    }

    /// Empty sizes and 32-bit indexing overflow, named for `op`.
    pub fn check(&self, op: &str) -> Result<()> {
        if self.size.contains(&0) || self.out.contains(&0) {
            bail!(Shape, "{op}: cannot resize {:?} to {:?}: sizes must be positive", self.size, self.out);
        }
        let longest = self.input_len().max(self.output_len());
        if longest > i32::MAX as usize {
            bail!(Limit, "{op}: {longest} elements, over the kernel's 2^31 indexing");
        }
        Ok(())
    }
}

pub fn bilinear(gpu: &Gpu, op: &str, s: &Bilinear, x: &Buffer, y: &Buffer) -> Result<Dispatch> {
    s.check(op)?;
    check_len(op, "input", x, s.input_len())?;
    check_len(op, "output", y, s.output_len())?;
    let u = |v: usize| v as u32;
    let params = Params {
        total: u(s.output_len()),
        h: u(s.size[0]),
        w: u(s.size[1]),
        ho: u(s.out[0]),
        wo: u(s.out[1]),
        scale_h: s.size[0] as f32 / s.out[0] as f32,
        scale_w: s.size[1] as f32 / s.out[1] as f32,
        alpha: s.alpha,
        beta: s.beta,
    };
    let m = s.output_len();
    let cost = Cost { flops: 10 * m as u64, bytes: 4 * 5 * m as u64 };
    gpu.dispatch(KernelId::new("resize", "bilinear_forward"), op, &params, &[(1, x), (2, y)], workgroups_1d(m, WG), cost)
}
