//! shaders/spectral.wgsl: spectral normalization as torch.nn.utils.parametrizations.spectral_norm
//! — the power iteration on (u, v), σ = uᵀ W_mat v and W / σ, and the backward.
//!
//! Every mat-vec product and dot product sums in slices of at most [`SLICE`] elements, one
//! invocation per (output, slice), and reduce.wgsl adds the slices' partial sums in its
//! hierarchical passes: no invocation walks a caller-chosen length (llvmpipe's loop limit), so
//! a weight of any shape is accepted. Scratch buffers are the caller's (the op's pool), in the
//! order [`Spectral::forward_scratch_lens`] and [`Spectral::backward_scratch_lens`] give.

use super::{check_len, even_slices, reduce};
use crate::gpu::{workgroups_1d, Buffer, Cost, Dispatch, Gpu, KernelId};
use crate::{bail, Result};

const WG: u32 = 256;
/// Elements per invocation of divide_by_sigma and backward (PER in WGSL).
const PER: usize = 8;
/// Longest run one matvec invocation sums: far inside the loop budget, and short enough that a
/// [1024, 12800] weight's products spread over thousands of invocations.
pub const SLICE: usize = 1024;

/// A weight seen as W [outer, rows, inner], whose matrix W_mat [rows, outer · inner] is the
/// weight with dim `dim` moved first and the rest flattened (PyTorch's
/// `_reshape_weight_to_matrix`): W_mat[r, a · inner + b] = W[a, r, b].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spectral {
    pub outer: usize,
    pub rows: usize,
    pub inner: usize,
    /// F.normalize's eps in the power iteration (PyTorch's default 1e-12).
    pub eps: f32,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    outer: u32,
    rows: u32,
    inner: u32,
    transposed: u32,
    slices: u32,
    slice_len: u32,
    n: u32,
    eps: f32,
}

impl Spectral {
    /// The matrix of a weight of `shape` normalized along `dim` (0 for Linear and Conv2d, 1 for
    /// ConvTranspose2d, as PyTorch chooses); `op` names the caller in errors.
    pub fn new(op: &str, shape: &[usize], dim: usize, eps: f32) -> Result<Spectral> {
        if shape.len() < 2 {
            bail!(Shape, "{op}: weight {shape:?} must have at least 2 dims (a Linear or convolution weight)");
        }
        if dim >= shape.len() {
            bail!(Shape, "{op}: dim {dim} is out of range for weight {shape:?}");
        }
        if shape.contains(&0) {
            bail!(Shape, "{op}: weight {shape:?} is empty");
        }
        let numel: usize = shape.iter().product();
        if numel > u32::MAX as usize {
            bail!(Limit, "{op}: weight {shape:?} has more elements than a 32-bit index reaches");
        }
        Ok(Spectral { outer: shape[..dim].iter().product(), rows: shape[dim], inner: shape[dim + 1..].iter().product(), eps })
    }

    pub fn cols(&self) -> usize {
        self.outer * self.inner
    }

    pub fn len(&self) -> usize {
        self.rows * self.cols()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The products a forward computes, as (outputs, summed length): W v, Wᵀ u, and the dot
    /// products over rows (‖W v‖², σ) and over columns (‖Wᵀ u‖²).
    fn forward_products(&self) -> [(usize, usize); 4] {
        let (rows, cols) = (self.rows, self.cols());
        [(rows, cols), (cols, rows), (1, rows), (1, cols)]
    }

    /// Scratch the forward needs: [vector (max(rows, cols)), partial sums, one scalar,
    /// reduce.wgsl's scratch (two buffers)].
    pub fn forward_scratch_lens(&self) -> Vec<usize> {
        scratch_lens(self.rows.max(self.cols()), &self.forward_products())
    }

    /// Scratch the backward needs, in the forward's order (its vector is unused).
    pub fn backward_scratch_lens(&self) -> Vec<usize> {
        scratch_lens(1, &[(1, self.len())])
    }
}

/// How many slices a sum of `len` elements takes, and the length of each.
fn slicing(len: usize) -> (usize, usize) {
    let slices: Vec<(usize, usize)> = even_slices(len, SLICE).collect();
    (slices.len(), slices[0].1 - slices[0].0)
}

fn scratch_lens(vector: usize, products: &[(usize, usize)]) -> Vec<usize> {
    let mut lens = vec![vector, 1, 1, 1, 1];
    for &(outputs, summed) in products {
        let (slices, _) = slicing(summed);
        if slices > 1 {
            lens[1] = lens[1].max(outputs * slices);
            for (i, len) in reduce::scratch_lens(reduce::Rows { rows: outputs, cols: slices }).into_iter().enumerate() {
                lens[3 + i] = lens[3 + i].max(len);
            }
        }
    }
    lens
}

/// The scratch buffers by role.
struct Scratch<'a> {
    vector: &'a Buffer,
    partials: &'a Buffer,
    scalar: &'a Buffer,
    reduce: &'a [Buffer],
}

fn scratch<'a>(op: &str, lens: &[usize], buffers: &'a [Buffer]) -> Result<Scratch<'a>> {
    if buffers.len() < lens.len() {
        bail!(Shape, "{op}: needs {} scratch buffers, got {}", lens.len(), buffers.len());
    }
    for (b, &len) in buffers.iter().zip(lens) {
        check_len(op, "scratch", b, len)?;
    }
    Ok(Scratch { vector: &buffers[0], partials: &buffers[1], scalar: &buffers[2], reduce: &buffers[3..5] })
}

/// A matrix to multiply a vector by: W [outer, rows, inner] as above, or a vector of length
/// n as the 1-row matrix [1, 1, n] (a dot product).
#[derive(Clone, Copy)]
struct Mat {
    outer: usize,
    rows: usize,
    inner: usize,
}

impl From<&Spectral> for Mat {
    fn from(s: &Spectral) -> Mat {
        Mat { outer: s.outer, rows: s.rows, inner: s.inner }
    }
}

fn row_vector(n: usize) -> Mat {
    Mat { outer: 1, rows: 1, inner: n }
}

fn params(m: Mat, transposed: bool, slices: usize, slice_len: usize, n: usize, eps: f32) -> Params {
    Params {
        outer: m.outer as u32,
        rows: m.rows as u32,
        inner: m.inner as u32,
        transposed: transposed as u32,
        slices: slices as u32,
        slice_len: slice_len as u32,
        n: n as u32,
        eps,
    }
}

/// y = W_mat x, or W_matᵀ x when `transposed`: one pass of partial sums per slice, written
/// straight to y when there is only one, else summed by reduce.wgsl.
#[allow(clippy::too_many_arguments)]
fn matvec(gpu: &Gpu, op: &str, m: Mat, transposed: bool, w: &Buffer, x: &Buffer, y: &Buffer, s: &Scratch) -> Result<Vec<Dispatch>> {
    let cols = m.outer * m.inner;
    let (outputs, summed) = if transposed { (cols, m.rows) } else { (m.rows, cols) };
    let (slices, slice_len) = slicing(summed);
    let dst = if slices == 1 { y } else { s.partials };
    let kernel = KernelId::new("spectral", "matvec");
    let cost = Cost { flops: 2 * (m.rows * cols) as u64, bytes: 4 * (m.rows * cols + summed + outputs * slices) as u64 };
    let p = params(m, transposed, slices, slice_len, 0, 0.0);
    let mut dispatches = vec![gpu.dispatch(kernel, op, &p, &[(1, w), (2, x), (3, dst)], workgroups_1d(outputs * slices, WG), cost)?];
    if slices > 1 {
        dispatches.extend(reduce::sum(gpu, reduce::Rows { rows: outputs, cols: slices }, s.partials, y, s.reduce)?);
    }
    Ok(dispatches)
}

/// An elementwise entry over n elements, `per` of them per invocation.
#[allow(clippy::too_many_arguments)]
fn elementwise(gpu: &Gpu, op: &str, entry: &'static str, p: Params, bindings: &[(u32, &Buffer)], n: usize, per: usize, reads: u64) -> Result<Dispatch> {
    let kernel = KernelId::new("spectral", entry);
    gpu.dispatch(kernel, op, &p, bindings, workgroups_1d(n.div_ceil(per), WG), Cost::elementwise(n, 3, reads, 1))
}

/// out = x / max(‖x‖, eps) for x of length n held in the vector scratch.
fn normalize(gpu: &Gpu, op: &str, n: usize, eps: f32, out: &Buffer, s: &Scratch) -> Result<Vec<Dispatch>> {
    let mut dispatches = matvec(gpu, op, row_vector(n), false, s.vector, s.vector, s.scalar, s)?;
    let p = params(row_vector(n), false, 1, 0, n, eps);
    dispatches.push(elementwise(gpu, op, "normalize", p, &[(2, s.vector), (3, out), (4, s.scalar)], n, 1, 1)?);
    Ok(dispatches)
}

fn check_operands(op: &str, sn: &Spectral, w: &Buffer, u: &Buffer, v: &Buffer) -> Result<()> {
    check_len(op, "weight", w, sn.len())?;
    check_len(op, "u", u, sn.rows)?;
    check_len(op, "v", v, sn.cols())
}

/// One power iteration in place, as PyTorch's `_power_method`: u ← normalize(W_mat v), then
/// v ← normalize(W_matᵀ u).
pub fn power_iteration(gpu: &Gpu, sn: &Spectral, w: &Buffer, u: &Buffer, v: &Buffer, scratch_buffers: &[Buffer]) -> Result<Vec<Dispatch>> {
    let op = "spectral_norm.power_iteration";
    check_operands(op, sn, w, u, v)?;
    let s = scratch(op, &sn.forward_scratch_lens(), scratch_buffers)?;
    let mut dispatches = matvec(gpu, op, sn.into(), false, w, v, s.vector, &s)?;
    dispatches.extend(normalize(gpu, op, sn.rows, sn.eps, u, &s)?);
    dispatches.extend(matvec(gpu, op, sn.into(), true, w, u, s.vector, &s)?);
    dispatches.extend(normalize(gpu, op, sn.cols(), sn.eps, v, &s)?);
    Ok(dispatches)
}

/// σ = uᵀ W_mat v (into `sigma`, one element) and w_sn = W / σ, from u and v as they are.
#[allow(clippy::too_many_arguments)]
pub fn forward(gpu: &Gpu, sn: &Spectral, w: &Buffer, u: &Buffer, v: &Buffer, sigma: &Buffer, w_sn: &Buffer, scratch_buffers: &[Buffer]) -> Result<Vec<Dispatch>> {
    let op = "spectral_norm";
    check_operands(op, sn, w, u, v)?;
    check_len(op, "sigma", sigma, 1)?;
    check_len(op, "output", w_sn, sn.len())?;
    let s = scratch(op, &sn.forward_scratch_lens(), scratch_buffers)?;
    let mut dispatches = matvec(gpu, op, sn.into(), false, w, v, s.vector, &s)?;
    dispatches.extend(matvec(gpu, op, row_vector(sn.rows), false, u, s.vector, sigma, &s)?);
    let p = params(sn.into(), false, 1, 0, sn.len(), 0.0);
    dispatches.push(elementwise(gpu, op, "divide_by_sigma", p, &[(1, w), (3, w_sn), (4, sigma)], sn.len(), PER, 1)?);
    Ok(dispatches)
}

/// dL/dW = G/σ − (Σ G∘W)/σ² · u vᵀ for G = dL/dW_sn, u and v held constant.
#[allow(clippy::too_many_arguments)]
pub fn backward(gpu: &Gpu, sn: &Spectral, dw_sn: &Buffer, w: &Buffer, u: &Buffer, v: &Buffer, sigma: &Buffer, dw: &Buffer, scratch_buffers: &[Buffer]) -> Result<Vec<Dispatch>> {
    let op = "spectral_norm_backward";
    check_operands(op, sn, w, u, v)?;
    check_len(op, "gradient", dw_sn, sn.len())?;
    check_len(op, "sigma", sigma, 1)?;
    check_len(op, "output", dw, sn.len())?;
    let s = scratch(op, &sn.backward_scratch_lens(), scratch_buffers)?;
    let mut dispatches = matvec(gpu, op, row_vector(sn.len()), false, dw_sn, w, s.scalar, &s)?;
    let p = params(sn.into(), false, 1, 0, sn.len(), 0.0);
    let bindings = [(1, dw_sn), (3, dw), (4, sigma), (5, u), (6, v), (7, s.scalar)];
    dispatches.push(elementwise(gpu, op, "backward", p, &bindings, sn.len(), PER, 3)?);
    Ok(dispatches)
}
