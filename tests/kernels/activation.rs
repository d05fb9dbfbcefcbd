use crate::support::*;
use kiln::gpu::Buffer;
use kiln::kernels::activation;
use kiln::reference::activation as reference;
use kiln::Result;

// 1, odd, not a multiple of the 256 workgroup, and a grid of more than 65,535 workgroups.
const SIZES: [usize; 4] = [1, 7, 1000, 65_535 * 256 + 1];
const SLOPE: f32 = 0.2;

/// Values in [-6, 6) with the awkward ones (exact zeros, saturating magnitudes) mixed in.
fn inputs(seed: u64, n: usize) -> Vec<f32> {
    const SPECIAL: [f32; 12] = [0.0, -0.0, 1e4, -1e4, 100.0, -100.0, 60.0, -60.0, 0.5, -0.5, 1e-3, -1e-3];
    let mut x: Vec<f32> = rand(seed, n).iter().map(|v| 6.0 * v).collect();
    for (k, i) in (0..n).step_by(97).enumerate() {
        x[i] = SPECIAL[k % SPECIAL.len()];
    }
    x
}

type Launch = dyn Fn(usize, &Buffer, &Buffer, &Buffer) -> Result<kiln::Dispatch>;
type Backward = dyn Fn(&[f64], &[f64]) -> Vec<f64>;

/// Forward and backward of one activation against the reference over all SIZES. Backward
/// gets the saved tensor forward's caller would keep: x, or (when `saves_output`) y.
fn check_activation(
    name: &str,
    forward: &dyn Fn(usize, &Buffer, &Buffer) -> Result<kiln::Dispatch>,
    backward: &Launch,
    ref_forward: &dyn Fn(&[f64]) -> Vec<f64>,
    ref_backward: &Backward,
    saves_output: bool,
) {
    let gpu = gpu();
    for (s, &n) in SIZES.iter().enumerate() {
        let x = inputs(s as u64, n);
        let dy = rand(50 + s as u64, n);
        let (xb, yb) = (upload("x", &x), zeros("y", n));
        gpu.run(&[forward(n, &xb, &yb).unwrap()]).unwrap();
        let want_y = ref_forward(&f64s(&x));
        assert_close(&format!("{name} n={n}"), &read(&yb), &want_y, 1e-4);

        let saved: Vec<f32> = if saves_output { want_y.iter().map(|&v| v as f32).collect() } else { x };
        let (sb, dyb, dxb) = (upload("saved", &saved), upload("dy", &dy), zeros("dx", n));
        gpu.run(&[backward(n, &sb, &dyb, &dxb).unwrap()]).unwrap();
        let want_dx = ref_backward(&f64s(&saved), &f64s(&dy));
        assert_close(&format!("{name} backward n={n}"), &read(&dxb), &want_dx, 1e-4);
    }
}

#[test]
fn relu_matches_reference() {
    let g = gpu();
    check_activation(
        "relu",
        &|n, x, y| activation::relu(g, n, x, y),
        &|n, x, dy, dx| activation::relu_backward(g, n, x, dy, dx),
        &reference::relu,
        &reference::relu_backward,
        false,
    );
}

#[test]
fn leaky_relu_matches_reference() {
    let g = gpu();
    check_activation(
        "leaky_relu",
        &|n, x, y| activation::leaky_relu(g, SLOPE, n, x, y),
        &|n, x, dy, dx| activation::leaky_relu_backward(g, SLOPE, n, x, dy, dx),
        &|x| reference::leaky_relu(SLOPE as f64, x),
        &|x, dy| reference::leaky_relu_backward(SLOPE as f64, x, dy),
        false,
    );
}

#[test]
fn tanh_matches_reference() {
    let g = gpu();
    check_activation(
        "tanh",
        &|n, x, y| activation::tanh(g, n, x, y),
        &|n, y, dy, dx| activation::tanh_backward(g, n, y, dy, dx),
        &reference::tanh,
        &reference::tanh_backward,
        true,
    );
}

#[test]
fn sigmoid_matches_reference() {
    let g = gpu();
    check_activation(
        "sigmoid",
        &|n, x, y| activation::sigmoid(g, n, x, y),
        &|n, y, dy, dx| activation::sigmoid_backward(g, n, y, dy, dx),
        &reference::sigmoid,
        &reference::sigmoid_backward,
        true,
    );
}

/// Every element within `rel` of the reference, except below f32's normal range, where GPUs
/// may flush to zero.
fn assert_each_close(name: &str, x: &[f32], got: &[f32], want: &[f64], rel: f64) {
    for ((&x, &g), &w) in x.iter().zip(got).zip(want) {
        let err = (g as f64 - w).abs();
        assert!(g.is_finite() && err <= rel * w.abs() + 1.2e-38, "{name}({x}) = {g}, want {w} (error {err:.2e})");
    }
}

#[test]
fn tanh_and_sigmoid_are_finite_and_accurate_for_huge_and_tiny_inputs() {
    let gpu = gpu();
    let mut x = vec![0.0f32];
    for v in [1e4f32, 1e3, 100.0, 60.0, 20.0, 9.0, 1.0, 0.6, 0.5, 0.49, 0.1, 1e-3, 1e-6, 1e-20] {
        x.extend([v, -v]);
    }
    let n = x.len();
    let (xb, yb) = (upload("x", &x), zeros("y", n));
    gpu.run(&[activation::tanh(gpu, n, &xb, &yb).unwrap()]).unwrap();
    assert_each_close("tanh", &x, &read(&yb), &reference::tanh(&f64s(&x)), 1e-5);
    gpu.run(&[activation::sigmoid(gpu, n, &xb, &yb).unwrap()]).unwrap();
    assert_each_close("sigmoid", &x, &read(&yb), &reference::sigmoid(&f64s(&x)), 1e-5);
}

#[test]
fn relu_gradient_at_zero_is_zero_and_leaky_relu_takes_the_slope() {
    let gpu = gpu();
    let x = [0.0f32, -0.0, 1.0, -1.0];
    let (xb, dyb, dxb) = (upload("x", &x), upload("dy", &[1.0; 4]), zeros("dx", 4));
    gpu.run(&[activation::relu_backward(gpu, 4, &xb, &dyb, &dxb).unwrap()]).unwrap();
    assert_eq!(read(&dxb), [0.0, 0.0, 1.0, 0.0]);
    gpu.run(&[activation::leaky_relu_backward(gpu, SLOPE, 4, &xb, &dyb, &dxb).unwrap()]).unwrap();
    assert_eq!(read(&dxb), [SLOPE, SLOPE, 1.0, SLOPE]);
}

#[test]
fn activation_backward_matches_finite_differences() {
    let n = 41;
    // Away from relu's kink, where the difference quotient is not the derivative.
    let x: Vec<f64> = f64s(&rand(7, n)).iter().map(|v| if v.abs() < 1e-3 { 0.5 } else { 3.0 * v }).collect();
    let dy = f64s(&rand(8, n));
    let s = SLOPE as f64;
    assert_grad_matches_fd("relu", &reference::relu_backward(&x, &dy), &finite_difference(reference::relu, &x, &dy));
    assert_grad_matches_fd(
        "leaky_relu",
        &reference::leaky_relu_backward(s, &x, &dy),
        &finite_difference(|x| reference::leaky_relu(s, x), &x, &dy),
    );
    let y = reference::tanh(&x);
    assert_grad_matches_fd("tanh", &reference::tanh_backward(&y, &dy), &finite_difference(reference::tanh, &x, &dy));
    let y = reference::sigmoid(&x);
    assert_grad_matches_fd("sigmoid", &reference::sigmoid_backward(&y, &dy), &finite_difference(reference::sigmoid, &x, &dy));
}

#[test]
fn activation_rejects_short_buffers_naming_the_op() {
    let gpu = gpu();
    let (x, y) = (zeros("x", 10), zeros("y", 5));
    let err = activation::sigmoid(gpu, 10, &x, &y).err().expect("must fail").to_string();
    assert!(err.contains("sigmoid") && err.contains("needs 10"), "{err}");
    let err = activation::tanh_backward(gpu, 10, &x, &y, &x).err().expect("must fail").to_string();
    assert!(err.contains("tanh_backward") && err.contains("dy"), "{err}");
}
