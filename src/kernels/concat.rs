//! shaders/concat.wgsl: torch.cat along one dim and its backward (each input's slice of dy),
//! both as one channel-block copy.

use super::check_len;
use crate::gpu::{workgroups_1d, Buffer, Cost, Dispatch, Gpu, KernelId};
use crate::{bail, Result};

const WG: u32 = 256;

/// A tensor seen as `[outer, channels, inner]`, `channels` being the concatenated dim:
/// `[N, C, H, W]` along dim 1 is outer N, inner H·W.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Block {
    pub outer: usize,
    pub inner: usize,
}

/// Field order and types match `Params` in shaders/concat.wgsl.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    total: u32,
    channels: u32,
    inner: u32,
    src_channels: u32,
    src_offset: u32,
    dst_channels: u32,
    dst_offset: u32,
}

/// Copies `channels` slices from `src` (`[outer, src_channels, inner]`, starting at slice
/// `src_offset`) into `dst` (`[outer, dst_channels, inner]`, starting at `dst_offset`).
/// `op` names the caller in errors.
#[allow(clippy::too_many_arguments)]
pub fn copy_channels(gpu: &Gpu, op: &str, b: Block, channels: usize, src: &Buffer, src_channels: usize, src_offset: usize, dst: &Buffer, dst_channels: usize, dst_offset: usize) -> Result<Dispatch> {
    if src_offset + channels > src_channels || dst_offset + channels > dst_channels {
        bail!(Shape, "{op}: slices {src_offset}..{} of {src_channels} into {dst_offset}..{} of {dst_channels} do not fit", src_offset + channels, dst_offset + channels);
    }
    let total = b.outer * channels * b.inner;
    let longest = b.outer * src_channels.max(dst_channels) * b.inner;
    if longest > i32::MAX as usize {
        bail!(Limit, "{op}: {longest} elements, over the kernel's 2^31 indexing");
    }
    check_len(op, "source", src, b.outer * src_channels * b.inner)?;
    check_len(op, "destination", dst, b.outer * dst_channels * b.inner)?;
    let u = |v: usize| v as u32;
    let params = Params {
        total: u(total),
        channels: u(channels),
        inner: u(b.inner),
        src_channels: u(src_channels),
        src_offset: u(src_offset),
        dst_channels: u(dst_channels),
        dst_offset: u(dst_offset),
    };
    let kernel = KernelId::new("concat", "copy_channels");
    gpu.dispatch(kernel, op, &params, &[(1, src), (2, dst)], workgroups_1d(total, WG), Cost::elementwise(total, 0, 1, 1))
}
