//! Spectral normalization as torch.nn.utils.parametrizations.spectral_norm, in f64 on an
//! explicitly permuted matrix (the GPU indexes the weight in place instead): the power
//! iteration, σ = uᵀ W_mat v, W / σ and the backward with u and v held constant.

/// W_mat [rows, cols]: the weight of `shape` with `dim` moved first and the rest flattened in
/// their order, as PyTorch's `_reshape_weight_to_matrix` (permute, then flatten(1)).
pub fn to_matrix(w: &[f64], shape: &[usize], dim: usize) -> Vec<f64> {
    let (outer, rows, inner) = split(shape, dim);
    let mut m = vec![0.0; w.len()];
    for a in 0..outer {
        for r in 0..rows {
            for b in 0..inner {
                m[r * outer * inner + a * inner + b] = w[(a * rows + r) * inner + b];
            }
        }
    }
    m
}

/// The inverse of [`to_matrix`].
pub fn from_matrix(m: &[f64], shape: &[usize], dim: usize) -> Vec<f64> {
    let (outer, rows, inner) = split(shape, dim);
    let mut w = vec![0.0; m.len()];
    for a in 0..outer {
        for r in 0..rows {
            for b in 0..inner {
                w[(a * rows + r) * inner + b] = m[r * outer * inner + a * inner + b];
            }
        }
    }
    w
}

/// (dims before `dim`, `dim`'s size, dims after) of a weight of `shape`.
pub fn split(shape: &[usize], dim: usize) -> (usize, usize, usize) {
    assert!(dim < shape.len(), "reference spectral_norm: dim {dim} out of range for {shape:?}");
    (shape[..dim].iter().product(), shape[dim], shape[dim + 1..].iter().product())
}

/// x / max(‖x‖, eps), as F.normalize.
pub fn normalize(x: &[f64], eps: f64) -> Vec<f64> {
    let norm = x.iter().map(|v| v * v).sum::<f64>().sqrt().max(eps);
    x.iter().map(|v| v / norm).collect()
}

/// W_mat x for W_mat [rows, cols] row-major.
pub fn matvec(m: &[f64], rows: usize, x: &[f64]) -> Vec<f64> {
    let cols = x.len();
    (0..rows).map(|r| (0..cols).map(|c| m[r * cols + c] * x[c]).sum()).collect()
}

/// W_matᵀ x for W_mat [rows, cols] row-major.
pub fn matvec_t(m: &[f64], cols: usize, x: &[f64]) -> Vec<f64> {
    (0..cols).map(|c| x.iter().enumerate().map(|(r, xr)| m[r * cols + c] * xr).sum()).collect()
}

/// `iterations` steps of PyTorch's `_power_method`: u ← normalize(W_mat v), v ← normalize(W_matᵀ u).
pub fn power_iteration(m: &[f64], u: &mut Vec<f64>, v: &mut Vec<f64>, iterations: usize, eps: f64) {
    let (rows, cols) = (u.len(), v.len());
    for _ in 0..iterations {
        *u = normalize(&matvec(m, rows, v), eps);
        *v = normalize(&matvec_t(m, cols, u), eps);
    }
}

/// σ = uᵀ W_mat v.
pub fn sigma(m: &[f64], u: &[f64], v: &[f64]) -> f64 {
    matvec(m, u.len(), v).iter().zip(u).map(|(a, b)| a * b).sum()
}

/// dL/dW = G/σ − (Σ G∘W)/σ² · u vᵀ for G = dL/dW_sn (in W's layout), u and v constant.
pub fn backward(g: &[f64], w: &[f64], shape: &[usize], dim: usize, u: &[f64], v: &[f64], sigma: f64) -> Vec<f64> {
    let gw: f64 = g.iter().zip(w).map(|(a, b)| a * b).sum();
    let gm = to_matrix(g, shape, dim);
    let cols = v.len();
    let dm: Vec<f64> = gm.iter().enumerate().map(|(i, gi)| gi / sigma - gw / (sigma * sigma) * u[i / cols] * v[i % cols]).collect();
    from_matrix(&dm, shape, dim)
}
