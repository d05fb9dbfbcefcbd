//! Batch norm over [N, C] or [N, C, H, W] with PyTorch's semantics (torch.nn.BatchNorm1d/2d):
//! per-channel statistics over N·H·W values; γ, β optional (None = 1, 0).

/// (N, C, H·W) of a `[N, C]` or `[N, C, H, W]` shape.
pub fn dims(shape: &[usize]) -> (usize, usize, usize) {
    match shape {
        [n, c] => (*n, *c, 1),
        [n, c, h, w] => (*n, *c, h * w),
        _ => panic!("batch_norm reference: shape {shape:?} is not [N, C] or [N, C, H, W]"),
    }
}

/// The flat indices of channel `c`'s values.
fn channel(shape: &[usize], c: usize) -> impl Iterator<Item = usize> {
    let (n, cs, hw) = dims(shape);
    (0..n).flat_map(move |b| (0..hw).map(move |s| (b * cs + c) * hw + s))
}

fn affine(p: Option<&[f64]>, c: usize, default: f64) -> f64 {
    p.map_or(default, |p| p[c])
}

pub struct Train {
    pub y: Vec<f64>,
    /// Batch mean and 1/sqrt(biased var + eps), saved for backward.
    pub mean: Vec<f64>,
    pub invstd: Vec<f64>,
    pub running_mean: Vec<f64>,
    pub running_var: Vec<f64>,
}

/// Training forward; the running stats move toward the batch's with the unbiased variance.
#[allow(clippy::too_many_arguments)]
pub fn forward_train(
    x: &[f64],
    shape: &[usize],
    gamma: Option<&[f64]>,
    beta: Option<&[f64]>,
    running_mean: &[f64],
    running_var: &[f64],
    eps: f64,
    momentum: f64,
) -> Train {
    let (n, cs, hw) = dims(shape);
    let m = (n * hw) as f64;
    assert!(m > 1.0, "batch_norm reference: training needs more than 1 value per channel");
    let mut out = Train {
        y: vec![0.0; x.len()],
        mean: vec![0.0; cs],
        invstd: vec![0.0; cs],
        running_mean: running_mean.to_vec(),
        running_var: running_var.to_vec(),
    };
    for c in 0..cs {
        let mean = channel(shape, c).map(|i| x[i]).sum::<f64>() / m;
        let var = channel(shape, c).map(|i| (x[i] - mean).powi(2)).sum::<f64>() / m;
        let invstd = 1.0 / (var + eps).sqrt();
        for i in channel(shape, c) {
            out.y[i] = (x[i] - mean) * invstd * affine(gamma, c, 1.0) + affine(beta, c, 0.0);
        }
        out.mean[c] = mean;
        out.invstd[c] = invstd;
        out.running_mean[c] = (1.0 - momentum) * running_mean[c] + momentum * mean;
        out.running_var[c] = (1.0 - momentum) * running_var[c] + momentum * var * m / (m - 1.0);
    }
    out
}

/// Eval forward: y = (x − running_mean)/sqrt(running_var + eps)·γ + β.
pub fn forward_eval(
    x: &[f64],
    shape: &[usize],
    gamma: Option<&[f64]>,
    beta: Option<&[f64]>,
    running_mean: &[f64],
    running_var: &[f64],
    eps: f64,
) -> Vec<f64> {
    let mut y = vec![0.0; x.len()];
    for c in 0..dims(shape).1 {
        let invstd = 1.0 / (running_var[c] + eps).sqrt();
        for i in channel(shape, c) {
            y[i] = (x[i] - running_mean[c]) * invstd * affine(gamma, c, 1.0) + affine(beta, c, 0.0);
        }
    }
    y
}

pub struct Grads {
    pub dx: Vec<f64>,
    pub dgamma: Vec<f64>,
    pub dbeta: Vec<f64>,
}

/// dγ = Σdy·x̂ and dβ = Σdy per channel, with x̂ = (x − mean)·invstd.
fn channel_sums(x: &[f64], dy: &[f64], shape: &[usize], mean: &[f64], invstd: &[f64]) -> (Vec<f64>, Vec<f64>) {
    (0..dims(shape).1)
        .map(|c| {
            let dgamma: f64 = channel(shape, c).map(|i| dy[i] * (x[i] - mean[c]) * invstd[c]).sum();
            let dbeta: f64 = channel(shape, c).map(|i| dy[i]).sum();
            (dgamma, dbeta)
        })
        .unzip()
}

/// Training backward through the batch statistics:
/// dx = γ·invstd/m·(m·dy − Σdy − x̂·Σdy·x̂).
pub fn backward_train(
    x: &[f64],
    dy: &[f64],
    shape: &[usize],
    gamma: Option<&[f64]>,
    mean: &[f64],
    invstd: &[f64],
) -> Grads {
    let (n, _, hw) = dims(shape);
    let m = (n * hw) as f64;
    let (dgamma, dbeta) = channel_sums(x, dy, shape, mean, invstd);
    let mut dx = vec![0.0; x.len()];
    for c in 0..dgamma.len() {
        let g = affine(gamma, c, 1.0) * invstd[c] / m;
        for i in channel(shape, c) {
            let xhat = (x[i] - mean[c]) * invstd[c];
            dx[i] = g * (m * dy[i] - dbeta[c] - xhat * dgamma[c]);
        }
    }
    Grads { dx, dgamma, dbeta }
}

/// Eval backward, the running stats constant: dx = dy·γ/sqrt(running_var + eps).
pub fn backward_eval(
    x: &[f64],
    dy: &[f64],
    shape: &[usize],
    gamma: Option<&[f64]>,
    running_mean: &[f64],
    running_var: &[f64],
    eps: f64,
) -> Grads {
    let invstd: Vec<f64> = running_var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
    let (dgamma, dbeta) = channel_sums(x, dy, shape, running_mean, &invstd);
    let mut dx = vec![0.0; x.len()];
    for (c, s) in invstd.iter().enumerate() {
        for i in channel(shape, c) {
            dx[i] = dy[i] * affine(gamma, c, 1.0) * s;
        }
    }
    Grads { dx, dgamma, dbeta }
}
