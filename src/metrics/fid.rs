//! The Fréchet distance between Gaussians fitted to two feature sets, as pytorch-fid defines
//! FID: ‖μ₁ − μ₂‖² + tr(Σ₁ + Σ₂ − 2(Σ₁Σ₂)^½), with unbiased (n − 1) covariances.
//!
//! pytorch-fid takes scipy's `sqrtm` of the non-symmetric product Σ₁Σ₂ and drops the
//! imaginary rounding noise. Here the trace comes from symmetric eigendecompositions (nalgebra):
//! Σ₁Σ₂ is similar to Σ₁^½ Σ₂ Σ₁^½, which is symmetric positive semi-definite, so
//! tr(Σ₁Σ₂)^½ = Σᵢ √λᵢ(Σ₁^½ Σ₂ Σ₁^½): the same number, with no complex arithmetic and no
//! failure on singular covariances (fewer vectors than features).

use super::{check_pair, Features};
use crate::{bail, Result};
use nalgebra::{DMatrix, DVector, SymmetricEigen};

/// Mean and covariance of a feature set.
#[derive(Clone, Debug)]
pub struct Gaussian {
    pub mean: DVector<f64>,
    pub cov: DMatrix<f64>,
}

impl Gaussian {
    /// Fits `features` (at least 2 vectors): the mean, and the covariance with n − 1 as numpy's
    /// `np.cov` (pytorch-fid).
    pub fn fit(features: &Features) -> Result<Gaussian> {
        let (n, d) = (features.n, features.dim);
        if n < 2 {
            bail!(Shape, "fid: a covariance needs at least 2 feature vectors, got {n}");
        }
        let mut mean = DVector::<f64>::zeros(d);
        for i in 0..n {
            for (m, &v) in mean.iter_mut().zip(features.row(i)) {
                *m += v as f64;
            }
        }
        mean /= n as f64;
        // Centred rows as the columns of a d x n matrix: cov = X·Xᵀ / (n − 1).
        let centred = DMatrix::<f64>::from_fn(d, n, |j, i| features.data[i * d + j] as f64 - mean[j]);
        let cov = (&centred * centred.transpose()) / (n - 1) as f64;
        Ok(Gaussian { mean, cov })
    }

    /// Checks that mean and covariance agree in size and the covariance is square and symmetric.
    pub fn new(mean: DVector<f64>, cov: DMatrix<f64>) -> Result<Gaussian> {
        let d = mean.len();
        if cov.shape() != (d, d) {
            bail!(Shape, "fid: a mean of {d} values with a {:?} covariance", cov.shape());
        }
        let scale = cov.amax().max(f64::MIN_POSITIVE);
        if (&cov - cov.transpose()).amax() > 1e-9 * scale {
            bail!(Invalid, "fid: the covariance is not symmetric");
        }
        Ok(Gaussian { mean, cov })
    }
}

/// The principal square root of a symmetric positive semi-definite matrix: V·diag(√λ)·Vᵀ,
/// eigenvalues below zero (rounding) taken as zero.
pub fn sqrtm_psd(m: &DMatrix<f64>) -> DMatrix<f64> {
    let eig = SymmetricEigen::new(m.clone());
    let roots = eig.eigenvalues.map(|l| l.max(0.0).sqrt());
    &eig.eigenvectors * DMatrix::from_diagonal(&roots) * eig.eigenvectors.transpose()
}

/// tr((A·B)^½) for symmetric positive semi-definite A and B.
pub fn trace_sqrt_product(a: &DMatrix<f64>, b: &DMatrix<f64>) -> f64 {
    let ra = sqrtm_psd(a);
    let inner = &ra * b * &ra;
    // Symmetrize away rounding so the eigensolver sees an exactly symmetric matrix.
    let inner = (&inner + inner.transpose()) * 0.5;
    inner.symmetric_eigenvalues().iter().map(|l| l.max(0.0).sqrt()).sum()
}

/// ‖μ₁ − μ₂‖² + tr(Σ₁) + tr(Σ₂) − 2·tr((Σ₁Σ₂)^½).
pub fn frechet_distance(a: &Gaussian, b: &Gaussian) -> Result<f64> {
    if a.mean.len() != b.mean.len() {
        bail!(Shape, "fid: features of length {} against {}", a.mean.len(), b.mean.len());
    }
    let diff = (&a.mean - &b.mean).norm_squared();
    let fid = diff + a.cov.trace() + b.cov.trace() - 2.0 * trace_sqrt_product(&a.cov, &b.cov);
    // Rounding can leave a distance of a set to itself a hair below zero.
    Ok(fid.max(0.0))
}

/// FID between two feature sets.
pub fn fid(a: &Features, b: &Features) -> Result<f64> {
    check_pair("fid", a, b, 2)?;
    frechet_distance(&Gaussian::fit(a)?, &Gaussian::fit(b)?)
}
