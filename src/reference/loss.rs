//! Scalar losses (forward → f64) and their input gradients given the upstream gradient g.
//! Written in the plain mathematical form (f64 has the range these inputs need), with
//! PyTorch's clamps where PyTorch has them.

fn check(op: &str, x: &[f64], t: &[f64]) {
    assert_eq!(x.len(), t.len(), "{op}: input has {} elements, target {}", x.len(), t.len());
}

/// sigmoid(x) − t without rounding sigmoid to 1 first (even f64 does at x > 37, which would
/// make the oracle, not the kernel, wrong for saturated logits).
fn sigmoid_minus(x: f64, t: f64) -> f64 {
    let e = (-x.abs()).exp();
    if x >= 0.0 { (1.0 - t) - e / (1.0 + e) } else { e / (1.0 + e) - t }
}

/// mean(max(x, 0) − x·t + log1p(e^−|x|))
pub fn binary_cross_entropy_with_logits(x: &[f64], t: &[f64]) -> f64 {
    check("binary_cross_entropy_with_logits", x, t);
    let sum: f64 = x.iter().zip(t).map(|(&x, &t)| x.max(0.0) - x * t + (-x.abs()).exp().ln_1p()).sum();
    sum / x.len() as f64
}

/// (sigmoid(x) − t) / n · g
pub fn binary_cross_entropy_with_logits_backward(x: &[f64], t: &[f64], g: f64) -> Vec<f64> {
    check("binary_cross_entropy_with_logits", x, t);
    let n = x.len() as f64;
    x.iter().zip(t).map(|(&x, &t)| sigmoid_minus(x, t) / n * g).collect()
}

/// −(t·max(log p, −100) + (1 − t)·max(log(1 − p), −100)), summed, or averaged if `mean`.
pub fn binary_cross_entropy(p: &[f64], t: &[f64], mean: bool) -> f64 {
    check("binary_cross_entropy", p, t);
    let sum: f64 = p.iter().zip(t).map(|(&p, &t)| -(t * p.ln().max(-100.0) + (1.0 - t) * (-p).ln_1p().max(-100.0))).sum();
    if mean { sum / p.len() as f64 } else { sum }
}

/// PyTorch's formula: (p − t) / max(p(1 − p), 1e-12) · g [/ n].
pub fn binary_cross_entropy_backward(p: &[f64], t: &[f64], g: f64, mean: bool) -> Vec<f64> {
    check("binary_cross_entropy", p, t);
    let scale = if mean { g / p.len() as f64 } else { g };
    p.iter().zip(t).map(|(&p, &t)| (p - t) / ((1.0 - p) * p).max(1e-12) * scale).collect()
}

/// mean((x − t)²)
pub fn mse_loss(x: &[f64], t: &[f64]) -> f64 {
    check("mse_loss", x, t);
    x.iter().zip(t).map(|(x, t)| (x - t).powi(2)).sum::<f64>() / x.len() as f64
}

/// 2(x − t) / n · g; the target's gradient is its negative.
pub fn mse_loss_backward(x: &[f64], t: &[f64], g: f64) -> Vec<f64> {
    check("mse_loss", x, t);
    let n = x.len() as f64;
    x.iter().zip(t).map(|(x, t)| 2.0 * (x - t) / n * g).collect()
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
