//! shaders/activation.wgsl: relu, leaky_relu, tanh, sigmoid, forward and backward.
//!
//! Backward reads what forward saved: the input x for relu and leaky_relu, the output y for
//! tanh and sigmoid. Outputs must be distinct buffers from inputs (no in-place).

use super::check_len;
use crate::gpu::{workgroups_1d, Buffer, Cost, Dispatch, Gpu, KernelId};
use crate::Result;

const WG: u32 = 256;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    negative_slope: f32,
}

/// `saved` is x (forward input) or the saved tensor in backward; `dy` is present in backward.
#[allow(clippy::too_many_arguments)]
fn launch(gpu: &Gpu, entry: &'static str, negative_slope: f32, n: usize, saved: &Buffer, dy: Option<&Buffer>, out: &Buffer, flops: u64) -> Result<Dispatch> {
    let kernel = KernelId::new("activation", entry);
    let name = kernel.to_string();
    let backward = dy.is_some();
    check_len(&name, if backward { "saved tensor" } else { "input x" }, saved, n)?;
    check_len(&name, if backward { "output dx" } else { "output y" }, out, n)?;
    let mut bindings = vec![(1, saved), (3, out)];
    if let Some(dy) = dy {
        check_len(&name, "gradient dy", dy, n)?;
        bindings.push((2, dy));
    }
    let reads = 1 + u64::from(backward);
    let params = Params { n: n as u32, negative_slope };
    gpu.dispatch(kernel, "", &params, &bindings, workgroups_1d(n, WG), Cost::elementwise(n, flops, reads, 1))
}

/// y = max(x, 0)
pub fn relu(gpu: &Gpu, n: usize, x: &Buffer, y: &Buffer) -> Result<Dispatch> {
    launch(gpu, "relu_forward", 0.0, n, x, None, y, 1)
}

/// dx = dy where x > 0, else 0 (PyTorch: the gradient at exactly 0 is 0).
pub fn relu_backward(gpu: &Gpu, n: usize, x: &Buffer, dy: &Buffer, dx: &Buffer) -> Result<Dispatch> {
    launch(gpu, "relu_backward", 0.0, n, x, Some(dy), dx, 1)
}

/// y = x if x > 0, else negative_slope · x
pub fn leaky_relu(gpu: &Gpu, negative_slope: f32, n: usize, x: &Buffer, y: &Buffer) -> Result<Dispatch> {
    launch(gpu, "leaky_relu_forward", negative_slope, n, x, None, y, 2)
}

/// dx = dy if x > 0, else negative_slope · dy (x = 0 takes the slope, as PyTorch).
pub fn leaky_relu_backward(gpu: &Gpu, negative_slope: f32, n: usize, x: &Buffer, dy: &Buffer, dx: &Buffer) -> Result<Dispatch> {
    launch(gpu, "leaky_relu_backward", negative_slope, n, x, Some(dy), dx, 2)
}

/// y = tanh(x), finite and accurate for any finite x.
pub fn tanh(gpu: &Gpu, n: usize, x: &Buffer, y: &Buffer) -> Result<Dispatch> {
    launch(gpu, "tanh_forward", 0.0, n, x, None, y, 20)
}

/// dx = dy · (1 − y²), from the forward output y.
pub fn tanh_backward(gpu: &Gpu, n: usize, y: &Buffer, dy: &Buffer, dx: &Buffer) -> Result<Dispatch> {
    launch(gpu, "tanh_backward", 0.0, n, y, Some(dy), dx, 4)
}

/// y = 1 / (1 + e^−x), finite and accurate for any finite x.
pub fn sigmoid(gpu: &Gpu, n: usize, x: &Buffer, y: &Buffer) -> Result<Dispatch> {
    launch(gpu, "sigmoid_forward", 0.0, n, x, None, y, 6)
}

/// dx = dy · y(1 − y), from the forward output y.
pub fn sigmoid_backward(gpu: &Gpu, n: usize, y: &Buffer, dy: &Buffer, dx: &Buffer) -> Result<Dispatch> {
    launch(gpu, "sigmoid_backward", 0.0, n, y, Some(dy), dx, 3)
}
