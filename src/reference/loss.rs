//! Losses with PyTorch's `reduction` (forward → 1 value for mean and sum, n for none) and their
//! input gradients given the upstream gradient g (1 value for mean and sum, n for none).
//! Written in the plain mathematical form (f64 has the range these inputs need), with
//! PyTorch's clamps where PyTorch has them.

use crate::kernels::loss::Reduction;

fn check(op: &str, x: &[f64], t: &[f64]) {
    assert_eq!(x.len(), t.len(), "{op}: input has {} elements, target {}", x.len(), t.len());
}

/// The terms as the output (none), or their sum or mean as a 1-element output.
fn reduce(terms: Vec<f64>, reduction: Reduction) -> Vec<f64> {
    let n = terms.len() as f64;
    match reduction {
        Reduction::None => terms,
        Reduction::Sum => vec![terms.iter().sum()],
        Reduction::Mean => vec![terms.iter().sum::<f64>() / n],
    }
}

/// d(loss)/d(term i) times the upstream gradient, for each i of `n` terms.
fn upstream(op: &str, g: &[f64], n: usize, reduction: Reduction) -> Vec<f64> {
    assert_eq!(g.len(), reduction.output_len(n), "{op}: upstream gradient has {} elements for {n} terms, {reduction:?}", g.len());
    match reduction {
        Reduction::None => g.to_vec(),
        Reduction::Sum => vec![g[0]; n],
        Reduction::Mean => vec![g[0] / n as f64; n],
    }
}

/// sigmoid(x) − t without rounding sigmoid to 1 first (even f64 does at x > 37, which would
/// make the oracle, not the kernel, wrong for saturated logits).
fn sigmoid_minus(x: f64, t: f64) -> f64 {
    let e = (-x.abs()).exp();
    if x >= 0.0 { (1.0 - t) - e / (1.0 + e) } else { e / (1.0 + e) - t }
}

/// reduce(max(x, 0) − x·t + log1p(e^−|x|))
pub fn binary_cross_entropy_with_logits(x: &[f64], t: &[f64], reduction: Reduction) -> Vec<f64> {
    check("binary_cross_entropy_with_logits", x, t);
    reduce(x.iter().zip(t).map(|(&x, &t)| x.max(0.0) - x * t + (-x.abs()).exp().ln_1p()).collect(), reduction)
}

/// (sigmoid(x) − t) · g [/ n]
pub fn binary_cross_entropy_with_logits_backward(x: &[f64], t: &[f64], g: &[f64], reduction: Reduction) -> Vec<f64> {
    let op = "binary_cross_entropy_with_logits";
    check(op, x, t);
    let g = upstream(op, g, x.len(), reduction);
    x.iter().zip(t).zip(g).map(|((&x, &t), g)| sigmoid_minus(x, t) * g).collect()
}

/// reduce(−(t·max(log p, −100) + (1 − t)·max(log(1 − p), −100)))
pub fn binary_cross_entropy(p: &[f64], t: &[f64], reduction: Reduction) -> Vec<f64> {
    check("binary_cross_entropy", p, t);
    reduce(p.iter().zip(t).map(|(&p, &t)| -(t * p.ln().max(-100.0) + (1.0 - t) * (-p).ln_1p().max(-100.0))).collect(), reduction)
}

/// PyTorch's formula: (p − t) / max(p(1 − p), 1e-12) · g [/ n].
pub fn binary_cross_entropy_backward(p: &[f64], t: &[f64], g: &[f64], reduction: Reduction) -> Vec<f64> {
    let op = "binary_cross_entropy";
    check(op, p, t);
    let g = upstream(op, g, p.len(), reduction);
    p.iter().zip(t).zip(g).map(|((&p, &t), g)| (p - t) / ((1.0 - p) * p).max(1e-12) * g).collect()
}

/// reduce((x − t)²)
pub fn mse_loss(x: &[f64], t: &[f64], reduction: Reduction) -> Vec<f64> {
    check("mse_loss", x, t);
    reduce(x.iter().zip(t).map(|(x, t)| (x - t).powi(2)).collect(), reduction)
}

/// 2(x − t) · g [/ n]; the target's gradient is its negative.
pub fn mse_loss_backward(x: &[f64], t: &[f64], g: &[f64], reduction: Reduction) -> Vec<f64> {
    check("mse_loss", x, t);
    let g = upstream("mse_loss", g, x.len(), reduction);
    x.iter().zip(t).zip(g).map(|((x, t), g)| 2.0 * (x - t) * g).collect()
}

/// −½ Σ(1 + logvar − mu² − e^logvar)
pub fn kl_normal(mu: &[f64], logvar: &[f64]) -> f64 {
    check("kl_normal", mu, logvar);
    -0.5 * mu.iter().zip(logvar).map(|(&m, &lv)| 1.0 + lv - m * m - lv.exp()).sum::<f64>()
}

/// (dmu, dlogvar) = (mu·g, ½(e^logvar − 1)·g)
pub fn kl_normal_backward(mu: &[f64], logvar: &[f64], g: f64) -> (Vec<f64>, Vec<f64>) {
    check("kl_normal", mu, logvar);
    (mu.iter().map(|m| m * g).collect(), logvar.iter().map(|lv| 0.5 * lv.exp_m1() * g).collect())
}

/// cross_entropy's class of each row: an error naming the row when a target is not an
/// integer in [0, classes) (PyTorch refuses such targets; the GPU kernel makes the row NaN).
pub fn class_indices(target: &[f64], classes: usize) -> crate::Result<Vec<usize>> {
    target
        .iter()
        .enumerate()
        .map(|(r, &t)| {
            if t >= 0.0 && t < classes as f64 && t.fract() == 0.0 {
                Ok(t as usize)
            } else {
                Err(crate::Error::Invalid(format!("cross_entropy: target of row {r} is {t}, not a class index in [0, {classes})")))
            }
        })
        .collect()
}

/// Each row of `[rows, classes]` logits as (max, log Σ e^(x − max)).
fn log_sum_exp(x: &[f64], classes: usize) -> Vec<(f64, f64)> {
    x.chunks(classes)
        .map(|row| {
            let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            (m, row.iter().map(|v| (v - m).exp()).sum::<f64>().ln())
        })
        .collect()
}

/// reduce over rows of log Σ_c e^x[r, c] − x[r, target[r]]; logits `[rows, classes]`.
pub fn cross_entropy(x: &[f64], target: &[f64], classes: usize, reduction: Reduction) -> crate::Result<Vec<f64>> {
    assert_eq!(x.len(), target.len() * classes, "cross_entropy: {} logits for {} rows of {classes}", x.len(), target.len());
    let k = class_indices(target, classes)?;
    let terms = log_sum_exp(x, classes).iter().enumerate().map(|(r, &(m, lse))| (m - x[r * classes + k[r]]) + lse).collect();
    Ok(reduce(terms, reduction))
}

/// d(logits) = (softmax − onehot(target)) · g [/ rows]
pub fn cross_entropy_backward(x: &[f64], target: &[f64], classes: usize, g: &[f64], reduction: Reduction) -> crate::Result<Vec<f64>> {
    let k = class_indices(target, classes)?;
    let g = upstream("cross_entropy", g, target.len(), reduction);
    let stats = log_sum_exp(x, classes);
    Ok((0..x.len())
        .map(|i| {
            let (r, c) = (i / classes, i % classes);
            let (m, lse) = stats[r];
            ((x[i] - m - lse).exp() - f64::from(c == k[r])) * g[r]
        })
        .collect())
}
