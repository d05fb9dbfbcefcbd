//! GEMM and the Linear layer, forward and backward, by the textbook loops.

/// op(A)·op(B) (+ bias on every row) as [m, n]. A is stored [m,k] ([k,m] when `trans_a`),
/// B is stored [k,n] ([n,k] when `trans_b`).
#[allow(clippy::too_many_arguments)]
pub fn matmul(a: &[f64], b: &[f64], bias: Option<&[f64]>, m: usize, n: usize, k: usize, trans_a: bool, trans_b: bool) -> Vec<f64> {
    let at = |i: usize, kk: usize| if trans_a { a[kk * m + i] } else { a[i * k + kk] };
    let bt = |kk: usize, j: usize| if trans_b { b[j * k + kk] } else { b[kk * n + j] };
    let mut c = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            let dot: f64 = (0..k).map(|kk| at(i, kk) * bt(kk, j)).sum();
            c[i * n + j] = dot + bias.map_or(0.0, |bias| bias[j]);
        }
    }
    c
}

/// y = x·Wᵀ + b for x [rows, in], w [out, in] (PyTorch's Linear layout).
pub fn linear_forward(x: &[f64], w: &[f64], b: Option<&[f64]>, rows: usize, in_features: usize, out_features: usize) -> Vec<f64> {
    matmul(x, w, b, rows, out_features, in_features, false, true)
}

/// Gradients of Linear given dy [rows, out]: (dx = dy·W, dW = dyᵀ·x, db = Σ_rows dy).
pub fn linear_backward(
    x: &[f64],
    w: &[f64],
    dy: &[f64],
    rows: usize,
    in_features: usize,
    out_features: usize,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let dx = matmul(dy, w, None, rows, in_features, out_features, false, false);
    let dw = matmul(dy, x, None, out_features, in_features, rows, true, false);
    let db = (0..out_features).map(|j| (0..rows).map(|r| dy[r * out_features + j]).sum()).collect();
    (dx, dw, db)
}
