//! The sample-quality metrics on data whose answers are known: closed forms, scipy and numpy
//! (fixtures/metrics.safetensors, from scripts/metrics_fixtures.py), and identities.

use kiln::metrics::{self, Features, Gaussian};
use nalgebra::{DMatrix, DVector};
use safetensors::{Dtype, SafeTensors};

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/metrics.safetensors");

fn fixture() -> Vec<u8> {
    std::fs::read(FIXTURE).expect("fixtures/metrics.safetensors")
}

/// A tensor of the fixture as f64 values and its shape.
fn tensor(bytes: &[u8], name: &str) -> (Vec<f64>, Vec<usize>) {
    let st = SafeTensors::deserialize(bytes).unwrap();
    let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    let values = match t.dtype() {
        Dtype::F64 => t.data().chunks(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect(),
        Dtype::F32 => t.data().chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64).collect(),
        d => panic!("{name}: {d:?}"),
    };
    (values, t.shape().to_vec())
}

fn features(bytes: &[u8], name: &str) -> Features {
    let (v, shape) = tensor(bytes, name);
    Features::new(name, shape[0], shape[1], v.iter().map(|&x| x as f32).collect()).unwrap()
}

/// Splitmix-driven standard normals (Box–Muller), so tests need no generator crate.
fn normals(seed: u64, n: usize) -> Vec<f64> {
    let mut s = seed;
    let mut next = move || {
        s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    };
    (0..n).map(|_| (-2.0 * (1.0 - next()).ln()).sqrt() * (std::f64::consts::TAU * next()).cos()).collect()
}

/// n samples of N(mean, L·Lᵀ) in d dimensions.
fn gaussian_samples(seed: u64, n: usize, mean: &[f64], l: &DMatrix<f64>) -> Features {
    let d = mean.len();
    let z = DMatrix::from_vec(d, n, normals(seed, n * d));
    let x = l * z;
    let data = (0..n * d).map(|e| (x[(e % d, e / d)] + mean[e % d]) as f32).collect::<Vec<_>>();
    Features::new("samples", n, d, data).unwrap()
}

fn close(what: &str, got: f64, want: f64, tol: f64) {
    assert!((got - want).abs() <= tol * want.abs().max(1.0), "{what}: got {got}, want {want} (tol {tol})");
}

#[test]
fn sqrtm_matches_scipy_for_full_and_rank_deficient_covariances() {
    let bytes = fixture();
    for case in ["full", "rank5"] {
        let (a, shape) = tensor(&bytes, &format!("sqrtm/{case}/a"));
        let (root, _) = tensor(&bytes, &format!("sqrtm/{case}/root"));
        let d = shape[0];
        let got = metrics::sqrtm_psd(&DMatrix::from_row_slice(d, d, &a));
        let want = DMatrix::from_row_slice(d, d, &root);
        let err = (&got - &want).norm() / want.norm();
        assert!(err < 1e-7, "{case}: ‖sqrtm − scipy‖/‖scipy‖ = {err:e}");
        // And it is a square root.
        let back = &got * &got;
        assert!((back - DMatrix::from_row_slice(d, d, &a)).norm() < 1e-9 * want.norm_squared(), "{case}: root² ≠ a");
    }
}

#[test]
fn fid_matches_pytorch_fid_on_correlated_sets() {
    let bytes = fixture();
    for case in ["small", "wide"] {
        let (x, y) = (features(&bytes, &format!("fid/{case}/x")), features(&bytes, &format!("fid/{case}/y")));
        let want = tensor(&bytes, &format!("fid/{case}/value")).0[0];
        close(&format!("fid {case}"), metrics::fid(&x, &y).unwrap(), want, 1e-6);
    }
}

#[test]
fn fid_of_a_set_against_itself_is_zero() {
    let bytes = fixture();
    let x = features(&bytes, "fid/wide/x");
    let fid = metrics::fid(&x, &x).unwrap();
    assert!(fid.abs() < 1e-6, "FID(x, x) = {fid}");
}

#[test]
fn fid_between_known_gaussians_matches_the_closed_form() {
    // In 2-D, tr((Σ₁Σ₂)^½) = √(tr(Σ₁Σ₂) + 2√det(Σ₁Σ₂)) (the eigenvalues of Σ₁Σ₂ are real and
    // positive), which gives the Fréchet distance of non-commuting covariances in closed form.
    let (m1, m2) = (DVector::from_vec(vec![0.5, -1.0]), DVector::from_vec(vec![2.0, 0.25]));
    let s1 = DMatrix::from_row_slice(2, 2, &[2.0, 0.8, 0.8, 1.0]);
    let s2 = DMatrix::from_row_slice(2, 2, &[0.5, -0.3, -0.3, 3.0]);
    let p: DMatrix<f64> = &s1 * &s2;
    let tr_sqrt: f64 = (p.trace() + 2.0 * p.determinant().sqrt()).sqrt();
    let want = (&m1 - &m2).norm_squared() + s1.trace() + s2.trace() - 2.0 * tr_sqrt;
    let (a, b) = (Gaussian::new(m1.clone(), s1.clone()).unwrap(), Gaussian::new(m2.clone(), s2.clone()).unwrap());
    close("closed-form 2-D FID", metrics::frechet_distance(&a, &b).unwrap(), want, 1e-12);

    // Sampled: 200,000 draws of each, fitted, come within sampling error of the same number.
    let chol = |s: &DMatrix<f64>| s.clone().cholesky().unwrap().l();
    let (x, y) = (gaussian_samples(1, 200_000, m1.as_slice(), &chol(&s1)), gaussian_samples(2, 200_000, m2.as_slice(), &chol(&s2)));
    close("sampled 2-D FID", metrics::fid(&x, &y).unwrap(), want, 0.02);

    // Commuting (diagonal) covariances: Σ (σ₁ − σ₂)² over the axes, in 16 dimensions.
    let d = 16;
    let sd1: Vec<f64> = (0..d).map(|i| 0.5 + 0.1 * i as f64).collect();
    let sd2: Vec<f64> = (0..d).map(|i| 2.0 - 0.05 * i as f64).collect();
    let diag = |sd: &[f64]| DMatrix::from_diagonal(&DVector::from_iterator(d, sd.iter().map(|s| s * s)));
    let a = Gaussian::new(DVector::zeros(d), diag(&sd1)).unwrap();
    let b = Gaussian::new(DVector::from_element(d, 0.5), diag(&sd2)).unwrap();
    let want = 0.25 * d as f64 + sd1.iter().zip(&sd2).map(|(p, q)| (p - q).powi(2)).sum::<f64>();
    close("diagonal FID", metrics::frechet_distance(&a, &b).unwrap(), want, 1e-10);
}

#[test]
fn kid_is_unbiased_for_two_samples_of_one_distribution_and_positive_for_two() {
    let l = DMatrix::from_row_slice(3, 3, &[1.0, 0.0, 0.0, 0.5, 1.0, 0.0, -0.3, 0.2, 0.8]);
    let (x, y) = (gaussian_samples(3, 4000, &[0.0; 3], &l), gaussian_samples(4, 4000, &[0.0; 3], &l));
    let same = metrics::kid(&x, &y, 50, 500, 7).unwrap();
    assert!(same.mean.abs() < 3.0 * same.stderr + 1e-4, "same distribution: KID {same:?}");
    let z = gaussian_samples(5, 4000, &[0.4, 0.0, 0.0], &l);
    let shifted = metrics::kid(&x, &z, 50, 500, 7).unwrap();
    assert!(shifted.mean > 10.0 * shifted.stderr && shifted.mean > 10.0 * same.mean.abs(), "shifted: {shifted:?} vs {same:?}");
    // Seeded: the same subsets give the same number.
    assert_eq!(metrics::kid(&x, &z, 50, 500, 7).unwrap(), shifted);
}

#[test]
fn precision_and_recall_match_numpy_and_are_one_for_identical_sets() {
    let bytes = fixture();
    let (x, y) = (features(&bytes, "pr/x"), features(&bytes, "pr/y"));
    let want = tensor(&bytes, "pr/value").0;
    let pr = metrics::precision_recall(&x, &y, 3).unwrap();
    close("precision", pr.precision, want[0], 1e-12);
    close("recall", pr.recall, want[1], 1e-12);
    // The generated set is wider and shifted: many of its vectors lie outside the reference
    // manifold (precision), while it covers most reference vectors (recall).
    assert!(pr.precision < 0.7 && pr.recall > 0.9, "{pr:?}");
    let same = metrics::precision_recall(&x, &x, 3).unwrap();
    assert_eq!((same.precision, same.recall), (1.0, 1.0));
}

#[test]
fn class_stats_count_confident_predictions_and_balance() {
    // Four images: three confident (a margin of 5 nats over 2 others), one uniform.
    let logits = [5.0, 0.0, 0.0, 0.0, 5.0, 0.0, 0.0, 5.0, 0.0, 1.0, 1.0, 1.0];
    let s = metrics::class_stats(&logits, 3).unwrap();
    assert_eq!(s.confident, 0.75);
    // Predicted classes 0, 1, 1 and 2 (a tie takes the last maximum).
    assert_eq!(s.histogram, [1, 2, 1]);
    let p: Vec<f64> = s.histogram.iter().map(|&c| c as f64 / 4.0).collect();
    let entropy: f64 = p.iter().filter(|&&q| q > 0.0).map(|q| -q * q.ln()).sum();
    close("balance", s.balance, entropy / 3f64.ln(), 1e-12);
    let all_one = metrics::class_stats(&[9.0, 0.0, 9.0, 0.0], 2).unwrap();
    assert_eq!((all_one.confident, all_one.balance), (1.0, 0.0));
}

#[test]
fn metrics_refuse_mismatched_or_too_small_sets_by_name() {
    let a = Features::new("a", 3, 2, vec![0.0; 6]).unwrap();
    let b = Features::new("b", 3, 4, vec![0.0; 12]).unwrap();
    let e = metrics::fid(&a, &b).unwrap_err().to_string();
    assert!(e.contains("fid") && e.contains("length 2 against 4"), "{e}");
    let e = metrics::precision_recall(&a, &a, 3).unwrap_err().to_string();
    assert!(e.contains("precision/recall") && e.contains("at least 4"), "{e}");
    let e = Features::new("generated", 2, 3, vec![0.0; 5]).unwrap_err().to_string();
    assert!(e.contains("generated") && e.contains("5 values"), "{e}");
    let e = Features::new("reference", 1, 2, vec![0.0, f32::NAN]).unwrap_err().to_string();
    assert!(e.contains("reference") && e.contains("NaN"), "{e}");
}

/// A linear-Gaussian VAE whose likelihood is known: z ~ N(0, I₂), x | z ~ N(Wz + b, σ²I₃), so
/// p(x) = N(b, WWᵀ + σ²I). W's columns are orthogonal, which makes the true posterior
/// diagonal: an encoder can be exact.
struct LinearGaussian {
    w: DMatrix<f64>,
    b: DVector<f64>,
    sigma: f64,
    x: DVector<f64>,
}

impl LinearGaussian {
    fn new() -> LinearGaussian {
        let w = DMatrix::from_column_slice(3, 2, &[1.0, 1.0, 0.0, 0.5, -0.5, 1.0]);
        LinearGaussian { w, b: DVector::from_vec(vec![0.2, -0.1, 0.3]), sigma: 0.5, x: DVector::from_vec(vec![1.1, 0.4, -0.7]) }
    }

    fn log_px(&self) -> f64 {
        let c = &self.w * self.w.transpose() + DMatrix::identity(3, 3) * self.sigma.powi(2);
        let r = &self.x - &self.b;
        let quad = (r.transpose() * c.clone().try_inverse().unwrap() * &r)[0];
        -0.5 * (quad + c.determinant().ln() + 3.0 * std::f64::consts::TAU.ln())
    }

    fn log_px_given_z(&self, z: &[f64]) -> f64 {
        let r = &self.x - &self.w * DVector::from_column_slice(z) - &self.b;
        -0.5 * (r.norm_squared() / self.sigma.powi(2) + 3.0 * (std::f64::consts::TAU * self.sigma.powi(2)).ln())
    }

    /// The true posterior's mean and log-variances (diagonal, as WᵀW is).
    fn posterior(&self) -> (Vec<f64>, Vec<f64>) {
        let s2 = self.sigma.powi(2);
        let prec = DMatrix::identity(2, 2) + self.w.transpose() * &self.w / s2;
        let cov = prec.try_inverse().unwrap();
        let mean = &cov * self.w.transpose() * (&self.x - &self.b) / s2;
        (mean.iter().copied().collect(), (0..2).map(|j| cov[(j, j)].ln()).collect())
    }

    /// The closed-form ELBO of a diagonal Gaussian encoder N(mu, diag(exp(lv))).
    fn elbo(&self, mu: &[f64], lv: &[f64]) -> f64 {
        let s = DMatrix::from_diagonal(&DVector::from_iterator(2, lv.iter().map(|v| v.exp())));
        let m = DVector::from_column_slice(mu);
        let r = &self.x - &self.w * &m - &self.b;
        let tau = std::f64::consts::TAU;
        let recon = -0.5 * (3.0 * (tau * self.sigma.powi(2)).ln() + (r.norm_squared() + (&self.w * &s * self.w.transpose()).trace()) / self.sigma.powi(2));
        let prior = -0.5 * (2.0 * tau.ln() + m.norm_squared() + s.trace());
        let entropy: f64 = lv.iter().map(|v| 0.5 * (1.0 + tau.ln() + v)).sum();
        recon + prior + entropy
    }

    /// log w of `k` samples of the encoder, from normals seeded by `seed`.
    fn log_weights(&self, mu: &[f64], lv: &[f64], k: usize, seed: u64) -> Vec<f64> {
        let eps = normals(seed, 2 * k);
        let f = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
        (0..k)
            .map(|i| {
                let e = &eps[2 * i..2 * i + 2];
                // z as log_weight forms it from the f32 values it is given.
                let z: Vec<f64> = (0..2).map(|j| mu[j] as f32 as f64 + (0.5 * lv[j] as f32 as f64).exp() * e[j] as f32 as f64).collect();
                metrics::log_weight(self.log_px_given_z(&z), &f(mu), &f(lv), &f(e))
            })
            .collect()
    }
}

#[test]
fn iwae_is_exact_with_the_true_posterior_and_tightens_towards_log_px() {
    let m = LinearGaussian::new();
    let log_px = m.log_px();
    // With q the true posterior every weight is p(x): the bound is exact for any k.
    let (mu, lv) = m.posterior();
    for w in m.log_weights(&mu, &lv, 16, 1) {
        close("log w under the true posterior", w, log_px, 1e-5);
    }
    // A worse encoder: shrunk mean, inflated variances.
    let mu: Vec<f64> = mu.iter().map(|v| 0.6 * v).collect();
    let lv: Vec<f64> = lv.iter().map(|v| v + 0.7).collect();
    let elbo = m.elbo(&mu, &lv);
    let k1 = m.log_weights(&mu, &lv, 200_000, 2);
    let mean = k1.iter().sum::<f64>() / k1.len() as f64;
    let sd = (k1.iter().map(|w| (w - mean).powi(2)).sum::<f64>() / k1.len() as f64).sqrt();
    assert!((mean - elbo).abs() < 4.0 * sd / (k1.len() as f64).sqrt(), "mean log w {mean} against the closed-form ELBO {elbo}");
    let bound = |k: usize, reps: usize| -> f64 { (0..reps).map(|r| metrics::iwae_bound(&m.log_weights(&mu, &lv, k, 100 + r as u64))).sum::<f64>() / reps as f64 };
    let (b1, b8, b64, b4096) = (bound(1, 4000), bound(8, 2000), bound(64, 500), bound(4096, 20));
    assert!(elbo < log_px - 0.05, "the worse encoder's ELBO {elbo} is visibly below log p(x) {log_px}");
    assert!((b1 - elbo).abs() < 0.05, "k = 1 is the ELBO: {b1} vs {elbo}");
    assert!(b1 < b8 && b8 < b64 && b64 <= log_px + 1e-3, "bounds tighten: {b1} < {b8} < {b64} ≤ {log_px}");
    assert!((b4096 - log_px).abs() < 0.01, "k = 4096 reaches log p(x): {b4096} vs {log_px}");
}
