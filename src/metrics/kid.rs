//! The kernel inception distance (Bińkowski et al. 2018): the unbiased estimate of MMD² under
//! the cubic polynomial kernel k(x, y) = (x·y / d + 1)³, averaged over random subsets of both
//! sets, as torch-fidelity and the paper's code compute it. Unbiased, so it can come out
//! slightly negative for two samples of one distribution.

use super::{check_pair, Features};
use crate::data::rng::SplitMix64;
use crate::Result;
use nalgebra::DMatrix;

/// KID's mean over `subsets` subsets of `subset_size` vectors of each set, and the spread.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Kid {
    pub mean: f64,
    /// Standard deviation of the subsets' estimates (torch-fidelity's `kid_std`).
    pub std: f64,
    /// Standard error of `mean`: std / √subsets.
    pub stderr: f64,
    pub subsets: usize,
    pub subset_size: usize,
}

/// The rows `rows` of `f` as an m x d matrix.
fn gather(f: &Features, rows: &[usize]) -> DMatrix<f64> {
    DMatrix::from_fn(rows.len(), f.dim, |r, j| f.data[rows[r] * f.dim + j] as f64)
}

/// Σ k(xᵢ, yⱼ) over all pairs of rows, i ≠ j when `same` (x and y are one set): one matrix
/// product for the dot products, then the kernel elementwise.
fn kernel_sum(x: &DMatrix<f64>, y: &DMatrix<f64>, same: bool) -> f64 {
    let d = x.ncols() as f64;
    let k = (x * y.transpose()).map(|dot| (dot / d + 1.0).powi(3));
    k.sum() - if same { k.trace() } else { 0.0 }
}

/// m vectors of 0..n without replacement (a partial Fisher–Yates).
fn subset(rng: &mut SplitMix64, n: usize, m: usize) -> Vec<usize> {
    let mut all: Vec<usize> = (0..n).collect();
    for i in 0..m {
        let j = i + rng.below(n - i);
        all.swap(i, j);
    }
    all.truncate(m);
    all
}

/// KID of `fake` against `real`: `subsets` draws (seeded) of `subset_size` vectors from each,
/// `subset_size` capped at the smaller set (torch-fidelity's defaults are 100 and 1000).
pub fn kid(real: &Features, fake: &Features, subsets: usize, subset_size: usize, seed: u64) -> Result<Kid> {
    check_pair("kid", real, fake, 2)?;
    let m = subset_size.min(real.n).min(fake.n).max(2);
    let mut rng = SplitMix64::new(seed);
    let pairs = (m * (m - 1)) as f64;
    let estimates: Vec<f64> = (0..subsets.max(1))
        .map(|_| {
            let x = gather(real, &subset(&mut rng, real.n, m));
            let y = gather(fake, &subset(&mut rng, fake.n, m));
            kernel_sum(&x, &x, true) / pairs + kernel_sum(&y, &y, true) / pairs - 2.0 * kernel_sum(&x, &y, false) / (m * m) as f64
        })
        .collect();
    let s = estimates.len() as f64;
    let mean = estimates.iter().sum::<f64>() / s;
    let std = (estimates.iter().map(|e| (e - mean).powi(2)).sum::<f64>() / s).sqrt();
    Ok(Kid { mean, std, stderr: std / s.sqrt(), subsets: estimates.len(), subset_size: m })
}
