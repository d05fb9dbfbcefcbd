//! shaders/reduce.wgsl: sum and mean over the last axis of a `[rows, cols]` array.
//!
//! Long rows take several passes (each shrinks a row by [`CHUNK`]), and the partial sums
//! between passes live in caller-owned scratch buffers: ask [`scratch_lens`] for their sizes,
//! allocate them once (or take them from a pool; two reductions that do not run at the same
//! time may share them), and the returned dispatches can be recorded once and replayed.

use super::check_len;
use crate::gpu::{workgroups_1d, Buffer, Cost, Dispatch, Gpu, KernelId};
use crate::{bail, Result};

const WG: u32 = 256;
/// Elements one workgroup of `sum_chunks` folds into one partial sum (WG × PER_THREAD in WGSL).
pub const CHUNK: usize = 256 * 16;
/// Rows this short are summed by one thread each; so are rows up to SERIAL_MAX long when there
/// are at least SERIAL_ROWS of them, enough threads to fill a device without splitting rows.
/// That path has no barriers, which CPU adapters pay dearly for per workgroup (lavapipe: a
/// workgroup per row of [70000, 33] takes seconds, one thread per row milliseconds), and a
/// serial chain of ≤ 1024 f32 adds stays well inside 1e-4.
const SHORT: usize = 32;
const SERIAL_MAX: usize = 1024;
const SERIAL_ROWS: usize = 4096;

/// The shape of a last-axis reduction: `rows` rows of `cols` contiguous elements → `[rows]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rows {
    pub rows: usize,
    pub cols: usize,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    cols: u32,
    chunks: u32,
    scale: f32,
}

fn one_thread_per_row(rows: usize, cols: usize) -> bool {
    cols <= SHORT || (rows >= SERIAL_ROWS && cols <= SERIAL_MAX)
}

/// Row lengths entering each pass: workgroup passes shrink rows by CHUNK until a
/// one-thread-per-row pass, or a workgroup pass leaving one column, finishes.
fn pass_cols(rows: usize, cols: usize) -> Vec<usize> {
    let mut passes = vec![cols];
    let mut c = cols;
    while !one_thread_per_row(rows, c) {
        c = c.div_ceil(CHUNK);
        if c == 1 {
            break;
        }
        passes.push(c);
    }
    passes
}

/// Element counts of the scratch buffers a reduction of `shape` needs: none when one pass
/// suffices, else one or two (passes alternate between them).
pub fn scratch_lens(shape: Rows) -> Vec<usize> {
    pass_cols(shape.rows, shape.cols).iter().skip(1).take(2).map(|c| shape.rows * c).collect()
}

/// Allocates buffers of the given lengths (for [`scratch_lens`] and the losses' equivalents).
pub fn alloc_scratch(gpu: &Gpu, label: &str, lens: &[usize]) -> Result<Vec<Buffer>> {
    lens.iter().enumerate().map(|(i, &n)| gpu.zeros(&format!("{label}.scratch{i}"), n)).collect()
}

/// y[r] = Σ_c x[r, c]
pub fn sum(gpu: &Gpu, shape: Rows, x: &Buffer, y: &Buffer, scratch: &[Buffer]) -> Result<Vec<Dispatch>> {
    sum_scaled(gpu, "sum", shape, 1.0, x, y, scratch)
}

/// y[r] = Σ_c x[r, c] / cols. An empty axis is an error (PyTorch would give NaN).
pub fn mean(gpu: &Gpu, shape: Rows, x: &Buffer, y: &Buffer, scratch: &[Buffer]) -> Result<Vec<Dispatch>> {
    if shape.cols == 0 {
        bail!(Shape, "mean: rows of {shape:?} are empty");
    }
    sum_scaled(gpu, "mean", shape, 1.0 / shape.cols as f32, x, y, scratch)
}

/// y[r] = scale · Σ_c x[r, c]; `op` names the caller in errors and labels (the losses use it).
pub fn sum_scaled(gpu: &Gpu, op: &str, shape: Rows, scale: f32, x: &Buffer, y: &Buffer, scratch: &[Buffer]) -> Result<Vec<Dispatch>> {
    let Rows { rows, cols } = shape;
    let Some(n) = rows.checked_mul(cols).filter(|&n| n <= u32::MAX as usize) else {
        bail!(Shape, "{op}: {shape:?} has more elements than a 32-bit index reaches");
    };
    check_len(op, "input", x, n)?;
    check_len(op, "output", y, rows)?;
    let lens = scratch_lens(shape);
    if scratch.len() < lens.len() {
        bail!(Shape, "{op}: {shape:?} needs {} scratch buffers, got {}", lens.len(), scratch.len());
    }
    for (b, &len) in scratch.iter().zip(&lens) {
        check_len(op, "scratch", b, len)?;
    }

    let passes = pass_cols(rows, cols);
    let mut src = x;
    let mut dispatches = Vec::with_capacity(passes.len());
    for (k, &c) in passes.iter().enumerate() {
        let last = k + 1 == passes.len();
        let dst = if last { y } else { &scratch[k % 2] };
        let chunks = c.div_ceil(CHUNK);
        let params = Params { rows: rows as u32, cols: c as u32, chunks: chunks as u32, scale: if last { scale } else { 1.0 } };
        let (entry, grid) = if one_thread_per_row(rows, c) {
            ("sum_rows", workgroups_1d(rows, WG))
        } else {
            // One workgroup per (row, chunk).
            ("sum_chunks", workgroups_1d(rows * chunks, 1))
        };
        let cost = Cost { flops: (rows * c) as u64, bytes: 4 * (rows * c + rows * chunks.max(1)) as u64 };
        let kernel = KernelId::new("reduce", entry);
        dispatches.push(gpu.dispatch(kernel, op, &params, &[(1, src), (2, dst)], grid, cost)?);
        src = dst;
    }
    Ok(dispatches)
}
