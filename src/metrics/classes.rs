//! What a classifier says of generated images of a class-labelled domain: how confidently it
//! recognises them, and whether every class is generated about equally often (a collapsed GAN
//! makes a few classes only).

use crate::{bail, Result};

#[derive(Clone, Debug, PartialEq)]
pub struct ClassStats {
    /// Share of images whose largest softmax probability is at least 0.9.
    pub confident: f64,
    /// Entropy of the histogram of predicted classes over ln(classes): 1 when every class is
    /// predicted equally often, 0 when one class is predicted for every image.
    pub balance: f64,
    pub classes: usize,
    /// Images per predicted class.
    pub histogram: Vec<usize>,
}

/// `logits`: `n` rows of `classes` values (any scale; softmax is taken here).
pub fn class_stats(logits: &[f32], classes: usize) -> Result<ClassStats> {
    if classes < 2 || logits.is_empty() || !logits.len().is_multiple_of(classes) {
        bail!(Shape, "class stats: {} logits are not rows of {classes} classes (at least 2)", logits.len());
    }
    let n = logits.len() / classes;
    let mut histogram = vec![0usize; classes];
    let mut confident = 0usize;
    for row in logits.chunks(classes) {
        let (best, &top) = row.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).expect("a class");
        // max softmax = 1 / Σ exp(xᵢ − max)
        let z: f64 = row.iter().map(|&v| ((v - top) as f64).exp()).sum();
        if 1.0 / z >= 0.9 {
            confident += 1;
        }
        histogram[best] += 1;
    }
    let entropy: f64 = histogram.iter().filter(|&&c| c > 0).map(|&c| c as f64 / n as f64).map(|p| -p * p.ln()).sum();
    Ok(ClassStats { confident: confident as f64 / n as f64, balance: entropy / (classes as f64).ln(), classes, histogram })
}
