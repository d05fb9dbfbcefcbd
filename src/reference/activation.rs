//! Activations and their gradients; backward takes what forward saved (x or y), as the kernels.

pub fn relu(x: &[f64]) -> Vec<f64> {
    x.iter().map(|&v| v.max(0.0)).collect()
}

/// The gradient at exactly 0 is 0, as PyTorch.
pub fn relu_backward(x: &[f64], dy: &[f64]) -> Vec<f64> {
    x.iter().zip(dy).map(|(&v, &d)| if v > 0.0 { d } else { 0.0 }).collect()
}

pub fn leaky_relu(negative_slope: f64, x: &[f64]) -> Vec<f64> {
    x.iter().map(|&v| if v > 0.0 { v } else { negative_slope * v }).collect()
}

pub fn leaky_relu_backward(negative_slope: f64, x: &[f64], dy: &[f64]) -> Vec<f64> {
    x.iter().zip(dy).map(|(&v, &d)| if v > 0.0 { d } else { negative_slope * d }).collect()
}

pub fn tanh(x: &[f64]) -> Vec<f64> {
    x.iter().map(|v| v.tanh()).collect()
}

pub fn tanh_backward(y: &[f64], dy: &[f64]) -> Vec<f64> {
    y.iter().zip(dy).map(|(&y, &d)| d * (1.0 - y * y)).collect()
}

pub fn sigmoid(x: &[f64]) -> Vec<f64> {
    x.iter().map(|&v| 1.0 / (1.0 + (-v).exp())).collect()
}

pub fn sigmoid_backward(y: &[f64], dy: &[f64]) -> Vec<f64> {
    y.iter().zip(dy).map(|(&y, &d)| d * y * (1.0 - y)).collect()
}
