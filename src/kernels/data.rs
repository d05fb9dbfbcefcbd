//! shaders/data.wgsl: a batch gathered from a GPU-resident 8-bit dataset and normalised.

use super::check_len;
use crate::gpu::{workgroups_1d, Buffer, Cost, Dispatch, Gpu, KernelId};
use crate::{bail, Result};

const WG: u32 = 256;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    batch: u32,
    image_len: u32,
    first: u32,
    scale: f32,
    offset: f32,
}

/// Packs 8-bit pixels four to a u32 word (little-endian), the layout `gather` reads.
pub fn pack_bytes(bytes: &[u8]) -> Vec<u32> {
    bytes.chunks(4).map(|c| c.iter().enumerate().fold(0u32, |w, (i, &b)| w | (b as u32) << (8 * i))).collect()
}

/// The geometry of a gather: `batch` images of `image_len` pixels from a set of `images`.
#[derive(Clone, Copy, Debug)]
pub struct Gather {
    pub images: usize,
    pub image_len: usize,
    pub batch: usize,
    /// y = scale · pixel + offset: (2/255, −1) maps to [−1, 1], (1/255, 0) to [0, 1].
    pub scale: f32,
    pub offset: f32,
}

/// y[b, :] = scale · image(order[first + b]) + offset. `pixels` holds the packed dataset
/// ([`pack_bytes`]), `order` image indices; `first` is rewritten per step with [`set_first`].
pub fn gather(gpu: &Gpu, g: &Gather, pixels: &Buffer, order: &Buffer, first: usize, y: &Buffer) -> Result<Dispatch> {
    let k = KernelId { shader: "data", entry: "gather_normalize" };
    let name = k.to_string();
    let total = g.images * g.image_len;
    if total > u32::MAX as usize {
        bail!(Limit, "{name}: {total} pixels are more than a u32 index addresses");
    }
    check_len(&name, "pixels", pixels, total.div_ceil(4))?;
    check_len(&name, "order", order, first + g.batch)?;
    check_len(&name, "batch", y, g.batch * g.image_len)?;
    let params = Params { batch: g.batch as u32, image_len: g.image_len as u32, first: first as u32, scale: g.scale, offset: g.offset };
    let n = g.batch * g.image_len;
    gpu.dispatch(k, "data", &params, &[(1, pixels), (2, order), (3, y)], workgroups_1d(n, WG), Cost { flops: 2 * n as u64, bytes: 5 * n as u64 })
}

/// Moves a recorded gather to `first` in the order (a 4-byte write before the submit).
pub fn set_first(gpu: &Gpu, gather: &Dispatch, first: usize) {
    gpu.queue.write_buffer(&gather.params, 8, bytemuck::bytes_of(&(first as u32)));
}
