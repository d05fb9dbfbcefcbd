//! shaders/elementwise.wgsl: add, mul, scale, axpy, fill, broadcast_rows, square_root over flat arrays.

use super::check_len;
use crate::gpu::{workgroups_1d, Buffer, Cost, Dispatch, Gpu, KernelId};
use crate::Result;

const WG: u32 = 256;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    alpha: f32,
    cols: u32,
}

fn launch(gpu: &Gpu, entry: &'static str, alpha: f32, a: Option<&Buffer>, b: Option<&Buffer>, y: &Buffer, n: usize, flops: u64) -> Result<Dispatch> {
    launch_rows(gpu, entry, alpha, a, b, y, n, 1, flops)
}

#[allow(clippy::too_many_arguments)]
fn launch_rows(gpu: &Gpu, entry: &'static str, alpha: f32, a: Option<&Buffer>, b: Option<&Buffer>, y: &Buffer, n: usize, cols: usize, flops: u64) -> Result<Dispatch> {
    let kernel = KernelId::new("elementwise", entry);
    let name = kernel.to_string();
    check_len(&name, "output y", y, n)?;
    let mut bindings = vec![(3, y)];
    if let Some(a) = a {
        check_len(&name, "input a", a, n / cols.max(1))?;
        bindings.push((1, a));
    }
    if let Some(b) = b {
        check_len(&name, "input b", b, n)?;
        bindings.push((2, b));
    }
    let reads = u64::from(a.is_some()) + u64::from(b.is_some()) + u64::from(entry == "axpy");
    let params = Params { n: n as u32, alpha, cols: cols.max(1) as u32 };
    gpu.dispatch(kernel, "", &params, &bindings, workgroups_1d(n, WG), Cost::elementwise(n, flops, reads, 1))
}

/// y = a + b
pub fn add(gpu: &Gpu, a: &Buffer, b: &Buffer, y: &Buffer, n: usize) -> Result<Dispatch> {
    launch(gpu, "add", 0.0, Some(a), Some(b), y, n, 1)
}

/// y = a * b
pub fn mul(gpu: &Gpu, a: &Buffer, b: &Buffer, y: &Buffer, n: usize) -> Result<Dispatch> {
    launch(gpu, "mul", 0.0, Some(a), Some(b), y, n, 1)
}

/// y = alpha * a
pub fn scale(gpu: &Gpu, alpha: f32, a: &Buffer, y: &Buffer, n: usize) -> Result<Dispatch> {
    launch(gpu, "scale", alpha, Some(a), None, y, n, 1)
}

/// y += alpha * a
pub fn axpy(gpu: &Gpu, alpha: f32, a: &Buffer, y: &Buffer, n: usize) -> Result<Dispatch> {
    launch(gpu, "axpy", alpha, Some(a), None, y, n, 2)
}

/// y = value
pub fn fill(gpu: &Gpu, value: f32, y: &Buffer, n: usize) -> Result<Dispatch> {
    launch(gpu, "fill", value, None, None, y, n, 0)
}

/// y[r, c] = alpha * a[r] for `rows` rows of `cols`: the backward of a (scaled) row sum.
pub fn broadcast_rows(gpu: &Gpu, alpha: f32, a: &Buffer, y: &Buffer, rows: usize, cols: usize) -> Result<Dispatch> {
    if cols == 0 {
        crate::bail!(Shape, "elementwise.broadcast_rows: rows of length 0");
    }
    launch_rows(gpu, "broadcast_rows", alpha, Some(a), None, y, rows * cols, cols, 1)
}

/// y = sqrt(a + eps)
pub fn sqrt(gpu: &Gpu, eps: f32, a: &Buffer, y: &Buffer, n: usize) -> Result<Dispatch> {
    launch(gpu, "square_root", eps, Some(a), None, y, n, 2)
}

/// dx = 0.5 · dy / y from sqrt's output y.
pub fn sqrt_backward(gpu: &Gpu, y: &Buffer, dy: &Buffer, dx: &Buffer, n: usize) -> Result<Dispatch> {
    launch(gpu, "square_root_backward", 0.0, Some(y), Some(dy), dx, n, 2)
}
