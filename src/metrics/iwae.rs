//! The importance-weighted bound on a VAE's log-likelihood (Burda et al. 2015):
//! log p(x) ≥ E[log (1/k) Σᵢ wᵢ], wᵢ = p(x | zᵢ) p(zᵢ) / q(zᵢ | x), zᵢ ~ q(z | x). k = 1 is the
//! ELBO; the bound tightens towards log p(x) as k grows. These are the per-sample pieces, in
//! f64; the GPU computes log p(x | z) for each sample.

/// log wᵢ for z = mu + exp(logvar / 2)·eps under the prior N(0, I) and the encoder's
/// N(mu, diag(exp(logvar))): log p(x | z) − ½Σz² + ½Σ(eps² + logvar). The (2π)^(−d/2) factors
/// of prior and posterior cancel.
pub fn log_weight(log_px_given_z: f64, mu: &[f32], logvar: &[f32], eps: &[f32]) -> f64 {
    let mut log_w = log_px_given_z;
    for ((&m, &lv), &e) in mu.iter().zip(logvar).zip(eps) {
        let (m, lv, e) = (m as f64, lv as f64, e as f64);
        let z = m + (0.5 * lv).exp() * e;
        log_w += 0.5 * (e * e + lv - z * z);
    }
    log_w
}

/// log((1/k) Σ exp(log wᵢ)), summed stably: the bound for one image from its k weights.
pub fn iwae_bound(log_w: &[f64]) -> f64 {
    let top = log_w.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if !top.is_finite() {
        return top;
    }
    top + (log_w.iter().map(|w| (w - top).exp()).sum::<f64>() / log_w.len() as f64).ln()
}
