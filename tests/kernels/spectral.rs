use crate::support::*;
use kiln::gpu::Buffer;
use kiln::kernels::spectral::{self, Spectral};
use kiln::reference::spectral as reference;
use std::time::Instant;

fn scratch(lens: &[usize]) -> Vec<Buffer> {
    lens.iter().map(|&n| zeros("scratch", n)).collect()
}

fn unit(seed: u64, n: usize) -> Vec<f32> {
    let x = rand(seed, n);
    let norm = x.iter().map(|v| v * v).sum::<f32>().sqrt();
    x.iter().map(|v| v / norm).collect()
}

/// One power iteration, σ, W / σ and the backward on the GPU against the f64 reference, for a
/// weight of `shape` normalized along `dim`.
fn check(shape: &[usize], dim: usize) {
    let gpu = gpu();
    let sn = Spectral::new("test", shape, dim, 1e-12).unwrap();
    let n = sn.len();
    let seed = n as u64 ^ (dim as u64) << 40;
    let (w, u0, v0, g) = (rand(seed, n), unit(seed + 1, sn.rows), unit(seed + 2, sn.cols()), rand(seed + 3, n));
    let (wb, ub, vb, gb) = (upload("w", &w), upload("u", &u0), upload("v", &v0), upload("g", &g));
    let (sigma, w_sn, dw) = (zeros("sigma", 1), zeros("w_sn", n), zeros("dw", n));
    let fwd_scratch = scratch(&sn.forward_scratch_lens());
    let mut dispatches = spectral::power_iteration(gpu, &sn, &wb, &ub, &vb, &fwd_scratch).unwrap();
    dispatches.extend(spectral::forward(gpu, &sn, &wb, &ub, &vb, &sigma, &w_sn, &fwd_scratch).unwrap());
    dispatches.extend(spectral::backward(gpu, &sn, &gb, &wb, &ub, &vb, &sigma, &dw, &scratch(&sn.backward_scratch_lens())).unwrap());
    let start = Instant::now();
    gpu.run(&dispatches).unwrap();
    let elapsed = start.elapsed();

    let m = reference::to_matrix(&f64s(&w), shape, dim);
    let (mut u, mut v) = (f64s(&u0), f64s(&v0));
    reference::power_iteration(&m, &mut u, &mut v, 1, 1e-12);
    let s = reference::sigma(&m, &u, &v);
    let name = format!("spectral_norm {shape:?} dim {dim} ({} dispatches, {elapsed:.1?})", dispatches.len());
    assert_close(&format!("{name}: u"), &read(&ub), &u, 1e-5);
    assert_close(&format!("{name}: v"), &read(&vb), &v, 1e-5);
    assert_close(&format!("{name}: sigma"), &read(&sigma), &[s], 1e-5);
    assert_close(&format!("{name}: W / sigma"), &read(&w_sn), &f64s(&w).iter().map(|x| x / s).collect::<Vec<_>>(), 1e-5);
    let want = reference::backward(&f64s(&g), &f64s(&w), shape, dim, &u, &v, s);
    assert_close(&format!("{name}: backward"), &read(&dw), &want, 1e-4);
}

#[test]
fn spectral_norm_matches_reference_for_awkward_shapes() {
    check(&[1, 1], 0);
    check(&[7, 13], 0);
    check(&[13, 7], 0);
    // Conv2d weights [out, in, 5, 5], and a ConvTranspose2d's [in, out, 5, 5] along dim 1.
    check(&[6, 3, 5, 5], 0);
    check(&[3, 6, 5, 5], 1);
    check(&[1, 1, 5, 5], 1);
    check(&[64, 3200], 0);
}

#[test]
fn spectral_norm_splits_rows_and_columns_past_the_loop_limit() {
    // 70,000 summed per output of W v and of ‖Wᵀ u‖² (a row), then of Wᵀ u and ‖W v‖² (a column).
    check(&[3, 70_000], 0);
    check(&[70_000, 2], 0);
    // A transposed conv whose rows (out_channels) pass 65,536 too.
    check(&[2, 66_000, 1, 1], 1);
    // The largest weight of a DCGAN-sized discriminator's linear layer, [1024, 12800].
    check(&[1024, 12_800], 0);
}

#[test]
fn the_reference_backward_matches_finite_differences_with_u_and_v_constant() {
    for (shape, dim) in [(vec![5, 7], 0), (vec![3, 2, 3, 3], 0), (vec![3, 2, 2, 2], 1)] {
        let n: usize = shape.iter().product();
        let (rows, cols) = (shape[dim], n / shape[dim]);
        let w = f64s(&rand(1, n));
        let (u, v) = (f64s(&unit(2, rows)), f64s(&unit(3, cols)));
        let dy = f64s(&rand(4, n));
        let forward = |w: &[f64]| -> Vec<f64> {
            let s = reference::sigma(&reference::to_matrix(w, &shape, dim), &u, &v);
            w.iter().map(|x| x / s).collect()
        };
        let s = reference::sigma(&reference::to_matrix(&w, &shape, dim), &u, &v);
        let analytic = reference::backward(&dy, &w, &shape, dim, &u, &v, s);
        assert_grad_matches_fd(&format!("spectral_norm {shape:?} dim {dim}"), &analytic, &finite_difference(forward, &w, &dy));
    }
}

#[test]
fn the_reference_power_iteration_finds_the_largest_singular_value() {
    // diag(3, 2, 1) padded to [3, 4]: σ_max = 3, u = e0, v = e0.
    let mut m = vec![0.0; 12];
    for (i, s) in [3.0, 2.0, 1.0].into_iter().enumerate() {
        m[i * 4 + i] = s;
    }
    let (mut u, mut v) = (vec![0.5; 3], vec![0.5; 4]);
    reference::power_iteration(&m, &mut u, &mut v, 60, 1e-12);
    let s = reference::sigma(&m, &u, &v);
    assert!((s - 3.0).abs() < 1e-9, "σ {s}");
    assert!((u[0].abs() - 1.0).abs() < 1e-9 && (v[0].abs() - 1.0).abs() < 1e-9, "u {u:?} v {v:?}");
}

#[test]
fn spectral_norm_refuses_weights_it_cannot_normalize() {
    let err = Spectral::new("spectral_norm", &[5], 0, 1e-12).unwrap_err().to_string();
    assert!(err.contains("spectral_norm") && err.contains("at least 2 dims"), "{err}");
    let err = Spectral::new("spectral_norm", &[5, 3], 2, 1e-12).unwrap_err().to_string();
    assert!(err.contains("dim 2"), "{err}");
    let err = Spectral::new("spectral_norm", &[5, 0], 0, 1e-12).unwrap_err().to_string();
    assert!(err.contains("empty"), "{err}");
    let gpu = gpu();
    let sn = Spectral::new("spectral_norm", &[4, 6], 0, 1e-12).unwrap();
    let (w, u, v, short) = (zeros("w", 24), zeros("u", 4), zeros("v", 6), zeros("v", 5));
    let s = scratch(&sn.forward_scratch_lens());
    let err = spectral::power_iteration(gpu, &sn, &w, &u, &short, &s).err().expect("must fail").to_string();
    assert!(err.contains("power_iteration") && err.contains("needs 6"), "{err}");
    let err = spectral::power_iteration(gpu, &sn, &w, &u, &v, &s[..2]).err().expect("must fail").to_string();
    assert!(err.contains("scratch"), "{err}");
}

