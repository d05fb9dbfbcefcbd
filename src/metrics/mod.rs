//! Sample-quality metrics computed from feature vectors of two image sets (generated and
//! reference), on the CPU in f64: the Fréchet distance (FID), the kernel distance (KID),
//! precision and recall (Kynkäänniemi et al. 2019), and a classifier's confidence and class
//! balance; and the importance-weighted bound on a VAE's likelihood. The features come from a backbone network run by kiln's kernels; these functions
//! only see the vectors, so each is tested on data whose answer is known.

mod classes;
mod fid;
mod iwae;
mod kid;
mod pr;

pub use classes::{class_agreement, class_stats, ClassStats};
pub use fid::{fid, frechet_distance, sqrtm_psd, trace_sqrt_product, Gaussian};
pub use iwae::{iwae_bound, log_weight};
pub use kid::{kid, Kid};
pub use pr::{precision_recall, PrecisionRecall};

use crate::{bail, Result};

/// `n` feature vectors of `dim` values each, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Features {
    pub n: usize,
    pub dim: usize,
    pub data: Vec<f32>,
}

impl Features {
    /// Checks that `data` holds `n` rows of `dim`; `what` names the set in errors.
    pub fn new(what: &str, n: usize, dim: usize, data: Vec<f32>) -> Result<Features> {
        if n.checked_mul(dim) != Some(data.len()) {
            bail!(Shape, "{what}: {} values are not {n} feature vectors of {dim}", data.len());
        }
        if dim == 0 {
            bail!(Shape, "{what}: feature vectors of length 0");
        }
        if let Some(i) = data.iter().position(|v| !v.is_finite()) {
            bail!(Invalid, "{what}: feature {} of vector {} is {}", i % dim, i / dim, data[i]);
        }
        Ok(Features { n, dim, data })
    }

    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }

    /// The first `n` vectors.
    pub fn take(&self, n: usize) -> Features {
        let n = n.min(self.n);
        Features { n, dim: self.dim, data: self.data[..n * self.dim].to_vec() }
    }
}

/// Both sets must have features of one length, and at least `min` vectors each.
fn check_pair(metric: &str, a: &Features, b: &Features, min: usize) -> Result<()> {
    if a.dim != b.dim {
        bail!(Shape, "{metric}: features of length {} against {}", a.dim, b.dim);
    }
    if a.n < min || b.n < min {
        bail!(Shape, "{metric}: needs at least {min} vectors in each set, got {} and {}", a.n, b.n);
    }
    Ok(())
}
