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
    per_chunk: u32,
}

/// Packs 8-bit pixels four to a u32 word (little-endian), the layout `gather` reads.
pub fn pack_bytes(bytes: &[u8]) -> Vec<u32> {
    bytes.chunks(4).map(|c| c.iter().enumerate().fold(0u32, |w, (i, &b)| w | (b as u32) << (8 * i))).collect()
}

/// The most buffers one dataset may be split into.
pub const MAX_CHUNKS: usize = 4;

/// The geometry of a gather: `batch` images of `image_len` pixels from a set of `images`,
/// stored `per_chunk` images to a buffer.
#[derive(Clone, Copy, Debug)]
pub struct Gather {
    pub images: usize,
    pub per_chunk: usize,
    pub image_len: usize,
    pub batch: usize,
    /// y = scale · pixel + offset: (2/255, −1) maps to [−1, 1], (1/255, 0) to [0, 1].
    pub scale: f32,
    pub offset: f32,
}

/// y[b, :] = scale · image(order[first + b]) + offset. `chunks` hold the packed dataset
/// ([`pack_bytes`]) `per_chunk` images each, `order` image indices; `first` is rewritten per
/// step with [`set_first`].
pub fn gather(gpu: &Gpu, g: &Gather, chunks: &[Buffer], order: &Buffer, first: usize, y: &Buffer) -> Result<Dispatch> {
    let k = KernelId::new("data", "gather_normalize");
    let name = k.to_string();
    let total = g.images * g.image_len;
    if total > u32::MAX as usize {
        bail!(Limit, "{name}: {total} pixels are more than a u32 index addresses");
    }
    if chunks.is_empty() || chunks.len() > MAX_CHUNKS || g.per_chunk == 0 || g.images.div_ceil(g.per_chunk) != chunks.len() {
        bail!(Shape, "{name}: {} images at {} per chunk do not fit {} chunk buffers (at most {MAX_CHUNKS})", g.images, g.per_chunk, chunks.len());
    }
    for (i, c) in chunks.iter().enumerate() {
        let images = g.per_chunk.min(g.images - i * g.per_chunk);
        check_len(&name, &format!("pixels chunk {i}"), c, (images * g.image_len).div_ceil(4))?;
    }
    check_len(&name, "order", order, first + g.batch)?;
    check_len(&name, "batch", y, g.batch * g.image_len)?;
    let params = Params {
        batch: g.batch as u32,
        image_len: g.image_len as u32,
        first: first as u32,
        scale: g.scale,
        offset: g.offset,
        per_chunk: g.per_chunk as u32,
    };
    let n = g.batch * g.image_len;
    // Unused chunk bindings repeat the first buffer (read-only twice is allowed).
    let chunk = |i: usize| chunks.get(i).unwrap_or(&chunks[0]);
    let bindings = [(1, chunk(0)), (4, chunk(1)), (5, chunk(2)), (6, chunk(3)), (2, order), (3, y)];
    gpu.dispatch(k, "data", &params, &bindings, workgroups_1d(n, WG), Cost { flops: 2 * n as u64, bytes: 5 * n as u64 })
}

/// Moves a recorded gather to `first` in the order (a 4-byte write before the submit).
pub fn set_first(gpu: &Gpu, gather: &Dispatch, first: usize) {
    gpu.queue.write_buffer(&gather.params, 8, bytemuck::bytes_of(&(first as u32)));
}
