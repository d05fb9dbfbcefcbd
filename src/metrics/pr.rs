//! Improved precision and recall (Kynkäänniemi et al. 2019): each set's manifold is the union
//! of balls around its vectors reaching their k-th nearest neighbour in the set. Precision is
//! the share of generated vectors inside the reference manifold (fidelity), recall the share of
//! reference vectors inside the generated one (coverage). k = 3 as in the paper.

use super::{check_pair, Features};
use crate::{bail, Result};
use nalgebra::DMatrix;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PrecisionRecall {
    pub precision: f64,
    pub recall: f64,
    pub k: usize,
}

/// Rows per block of the distance matrix: 1,024 x 10,000 f64 is 80 MB.
const BLOCK: usize = 1024;

fn matrix(f: &Features, rows: std::ops::Range<usize>) -> DMatrix<f64> {
    let first = rows.start;
    DMatrix::from_fn(rows.len(), f.dim, |r, j| f.data[(first + r) * f.dim + j] as f64)
}

fn squared_norms(m: &DMatrix<f64>) -> Vec<f64> {
    m.row_iter().map(|r| r.norm_squared()).collect()
}

/// Calls `visit(i, row)` with the squared distances from vector i of `a` to every vector of
/// `b`, a block of rows at a time: |x|² + |y|² − 2x·y from one matrix product per block.
fn distance_rows(a: &Features, b: &Features, mut visit: impl FnMut(usize, &[f64])) {
    let bm = matrix(b, 0..b.n);
    let bn = squared_norms(&bm);
    let mut row = vec![0.0; b.n];
    for start in (0..a.n).step_by(BLOCK) {
        let am = matrix(a, start..(start + BLOCK).min(a.n));
        let an = squared_norms(&am);
        let dots = &am * bm.transpose();
        for (r, &na) in an.iter().enumerate() {
            for (j, (d, &nb)) in row.iter_mut().zip(&bn).enumerate() {
                *d = (na + nb - 2.0 * dots[(r, j)]).max(0.0);
            }
            visit(start + r, &row);
        }
    }
}

/// Squared distance from each vector of `f` to its k-th nearest other vector of `f`.
fn radii(f: &Features, k: usize) -> Vec<f64> {
    let mut radii = vec![0.0; f.n];
    distance_rows(f, f, |i, row| {
        let mut others: Vec<f64> = row.iter().enumerate().filter(|&(j, _)| j != i).map(|(_, &d)| d).collect();
        radii[i] = *others.select_nth_unstable_by(k - 1, f64::total_cmp).1;
    });
    radii
}

/// Share of vectors of `probe` within the k-NN ball of at least one vector of `manifold`.
fn coverage(probe: &Features, manifold: &Features, radii: &[f64]) -> f64 {
    let mut inside = 0usize;
    distance_rows(probe, manifold, |_, row| {
        if row.iter().zip(radii).any(|(d, r)| d <= r) {
            inside += 1;
        }
    });
    inside as f64 / probe.n as f64
}

/// Precision and recall of `fake` against `real` with k nearest neighbours.
pub fn precision_recall(real: &Features, fake: &Features, k: usize) -> Result<PrecisionRecall> {
    if k == 0 {
        bail!(Invalid, "precision/recall: k must be at least 1");
    }
    check_pair("precision/recall", real, fake, k + 1)?;
    let precision = coverage(fake, real, &radii(real, k));
    let recall = coverage(real, fake, &radii(fake, k));
    Ok(PrecisionRecall { precision, recall, k })
}
