//! Shared test helpers: one device for the whole test binary, deterministic random inputs,
//! relative-error checks that print the worst error, and finite differences in f64.

use kiln::gpu::{Buffer, Gpu, GpuOptions};
use std::sync::OnceLock;

/// The device every test uses, opened with the test binary's `options()` (the kernel suite:
/// the adapter's own limits; tests/small_limits.rs: WebGPU's defaults). wgpu's `WGPU_BACKEND`
/// / `WGPU_ADAPTER_NAME` pick it (`WGPU_BACKEND=gl cargo test` runs the suite on llvmpipe).
pub fn gpu() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| {
        let options: GpuOptions = crate::options();
        let gpu = Gpu::new(&options).unwrap_or_else(|e| panic!("{e}"));
        let subgroups = gpu.has(wgpu::Features::SUBGROUP).then(|| format!(", subgroups of {}-{} lanes", gpu.info.subgroup_min_size, gpu.info.subgroup_max_size));
        eprintln!("testing on {}{}", gpu.describe(), subgroups.unwrap_or_default());
        gpu
    })
}

/// Deterministic values in [-1, 1) from a seed (splitmix64), so failures reproduce.
pub fn rand(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(1);
    (0..n)
        .map(|_| {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            ((z >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

pub fn f64s(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| v as f64).collect()
}

pub fn upload(label: &str, data: &[f32]) -> Buffer {
    gpu().upload(label, data).unwrap()
}

pub fn zeros(label: &str, n: usize) -> Buffer {
    gpu().zeros(label, n).unwrap()
}

pub fn read(b: &Buffer) -> Vec<f32> {
    gpu().read(b).unwrap()
}

/// ‖got − want‖₂ / ‖want‖₂ (absolute when want is zero).
pub fn rel_l2(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len(), "length mismatch");
    let diff: f64 = got.iter().zip(want).map(|(&g, &w)| (g as f64 - w).powi(2)).sum::<f64>().sqrt();
    let norm: f64 = want.iter().map(|w| w * w).sum::<f64>().sqrt();
    if norm == 0.0 { diff } else { diff / norm }
}

/// Asserts relative L2 error ≤ tol and no NaN/Inf, printing the error and the worst element.
pub fn assert_close(name: &str, got: &[f32], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{name}: got {} elements, want {}", got.len(), want.len());
    if let Some(i) = got.iter().position(|v| !v.is_finite()) {
        panic!("{name}: element {i} is {}", got[i]);
    }
    let err = rel_l2(got, want);
    let (worst, _) = got
        .iter()
        .zip(want)
        .map(|(&g, &w)| (g as f64 - w).abs())
        .enumerate()
        .fold((0, 0.0), |best, (i, d)| if d > best.1 { (i, d) } else { best });
    let detail = if want.is_empty() { String::new() } else { format!("worst at {worst}: got {} want {}", got[worst], want[worst]) };
    eprintln!("{name}: rel L2 {err:.2e} ({detail})");
    assert!(err <= tol, "{name}: rel L2 error {err:.3e} > {tol:e}; {detail}");
}

/// Numerical gradient of L(x) = Σ dy · f(x) by central differences in f64.
pub fn finite_difference(f: impl Fn(&[f64]) -> Vec<f64>, x: &[f64], dy: &[f64]) -> Vec<f64> {
    let h = 1e-5;
    let loss = |x: &[f64]| -> f64 { f(x).iter().zip(dy).map(|(a, b)| a * b).sum() };
    let mut x = x.to_vec();
    (0..x.len())
        .map(|i| {
            let orig = x[i];
            x[i] = orig + h;
            let up = loss(&x);
            x[i] = orig - h;
            let down = loss(&x);
            x[i] = orig;
            (up - down) / (2.0 * h)
        })
        .collect()
}

/// Asserts an analytic gradient (f64, from the CPU reference) matches finite differences.
pub fn assert_grad_matches_fd(name: &str, analytic: &[f64], numeric: &[f64]) {
    let got: Vec<f32> = analytic.iter().map(|&v| v as f32).collect();
    assert_close(&format!("{name} vs finite differences"), &got, numeric, 1e-5);
}
