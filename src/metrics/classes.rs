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

/// For images generated as given classes (`intended[i]` for row i of `logits`), the share of
/// each class's images that the classifier assigns to that class: a conditional model's
/// class fidelity, per class (NaN for a class with no images).
pub fn class_agreement(logits: &[f32], classes: usize, intended: &[usize]) -> Result<Vec<f64>> {
    if classes < 2 || logits.len() != intended.len() * classes {
        bail!(Shape, "class agreement: {} logits are not {} rows of {classes} classes", logits.len(), intended.len());
    }
    if let Some(&bad) = intended.iter().find(|&&c| c >= classes) {
        bail!(Invalid, "class agreement: intended class {bad} is not below the classifier's {classes}");
    }
    let (mut right, mut total) = (vec![0usize; classes], vec![0usize; classes]);
    for (row, &want) in logits.chunks(classes).zip(intended) {
        let (best, _) = row.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).expect("a class");
        total[want] += 1;
        right[want] += (best == want) as usize;
    }
    Ok(right.iter().zip(&total).map(|(&r, &t)| if t == 0 { f64::NAN } else { r as f64 / t as f64 }).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_agreement_counts_each_intended_class_separately() {
        // Three classes; rows intended 0, 0, 1, 2, 2 predicted 0, 1, 1, 2, 0.
        let one_hot = |c: usize| (0..3).map(|k| if k == c { 5.0 } else { 0.0 }).collect::<Vec<f32>>();
        let logits: Vec<f32> = [0, 1, 1, 2, 0].into_iter().flat_map(one_hot).collect();
        assert_eq!(class_agreement(&logits, 3, &[0, 0, 1, 2, 2]).unwrap(), vec![0.5, 1.0, 0.5]);
        let none = class_agreement(&logits[..3], 3, &[1]).unwrap();
        assert!(none[0].is_nan() && none[1] == 0.0 && none[2].is_nan());
        assert!(class_agreement(&logits, 3, &[0, 0, 1, 2, 3]).unwrap_err().to_string().contains("intended class 3"));
    }
}
