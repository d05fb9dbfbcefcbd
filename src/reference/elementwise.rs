pub fn add(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| x + y).collect()
}

pub fn mul(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| x * y).collect()
}

pub fn scale(alpha: f64, a: &[f64]) -> Vec<f64> {
    a.iter().map(|x| alpha * x).collect()
}

pub fn sqrt(eps: f64, a: &[f64]) -> Vec<f64> {
    a.iter().map(|x| (x + eps).sqrt()).collect()
}

/// dx = 0.5 · dy / y from sqrt's output y.
pub fn sqrt_backward(y: &[f64], dy: &[f64]) -> Vec<f64> {
    y.iter().zip(dy).map(|(y, d)| 0.5 * d / y).collect()
}
