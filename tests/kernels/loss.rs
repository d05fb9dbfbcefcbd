use crate::support::*;
use kiln::gpu::Buffer;
use kiln::kernels::loss::{self, Reduction};
use kiln::kernels::reduce;
use kiln::reference::loss as reference;

// 1, odd, not a multiple of the 256 workgroup, and a grid of more than 65,535 workgroups
// (whose reduction takes three passes).
const SIZES: [usize; 4] = [1, 7, 1000, 65_535 * 256 + 1];
/// The upstream gradient, not 1 so that forgetting to multiply by it shows.
const G: f32 = 0.7;

fn scratch(n: usize) -> Vec<Buffer> {
    reduce::alloc_scratch(gpu(), "loss", &loss::scratch_lens(n)).unwrap()
}

/// Runs a loss's dispatches and reads the scalar back.
fn run_loss(dispatches: kiln::Result<Vec<kiln::Dispatch>>, out: &Buffer) -> Vec<f32> {
    gpu().run(&dispatches.unwrap()).unwrap();
    read(out)
}

fn unit(seed: u64, n: usize) -> Vec<f32> {
    rand(seed, n).iter().map(|v| 0.5 * (v + 1.0)).collect()
}

#[test]
fn binary_cross_entropy_with_logits_matches_reference() {
    let gpu = gpu();
    for (s, &n) in SIZES.iter().enumerate() {
        let x: Vec<f32> = rand(s as u64, n).iter().map(|v| 12.0 * v).collect();
        let t = unit(20 + s as u64, n);
        let (xb, tb, lb, gb, dxb) = (upload("x", &x), upload("t", &t), zeros("loss", 1), upload("g", &[G]), zeros("dx", n));
        let got = run_loss(loss::binary_cross_entropy_with_logits(gpu, n, &xb, &tb, &lb, &scratch(n)), &lb);
        let (x64, t64) = (f64s(&x), f64s(&t));
        assert_close(&format!("bce_with_logits n={n}"), &got, &[reference::binary_cross_entropy_with_logits(&x64, &t64)], 1e-4);
        gpu.run(&[loss::binary_cross_entropy_with_logits_backward(gpu, n, &xb, &tb, &gb, &dxb).unwrap()]).unwrap();
        let want = reference::binary_cross_entropy_with_logits_backward(&x64, &t64, G as f64);
        assert_close(&format!("bce_with_logits backward n={n}"), &read(&dxb), &want, 1e-4);
    }
}

/// Loss and gradient for `x`, `t` against the reference.
fn check_bce_with_logits(name: &str, x: &[f32], t: &[f32]) {
    let gpu = gpu();
    let n = x.len();
    let (xb, tb, lb, gb, dxb) = (upload("x", x), upload("t", t), zeros("loss", 1), upload("g", &[G]), zeros("dx", n));
    let got = run_loss(loss::binary_cross_entropy_with_logits(gpu, n, &xb, &tb, &lb, &scratch(n)), &lb);
    let (x64, t64) = (f64s(x), f64s(t));
    assert_close(name, &got, &[reference::binary_cross_entropy_with_logits(&x64, &t64)], 1e-4);
    gpu.run(&[loss::binary_cross_entropy_with_logits_backward(gpu, n, &xb, &tb, &gb, &dxb).unwrap()]).unwrap();
    let want = reference::binary_cross_entropy_with_logits_backward(&x64, &t64, G as f64);
    assert_close(&format!("{name} backward"), &read(&dxb), &want, 1e-4);
}

#[test]
fn binary_cross_entropy_with_logits_is_exact_for_saturated_logits() {
    // Confidently wrong: the loss is |x| and the gradient ±1/n.
    let x = [60.0f32, -60.0, 100.0, -100.0, 1e4, -1e4, 1e4, -1e4];
    let t = [0.0f32, 1.0, 0.0, 1.0, 0.5, 0.25, 0.0, 1.0];
    check_bce_with_logits("bce_with_logits confidently wrong", &x, &t);
    // Confidently right: loss and gradient are e^−|x| ≈ 1e-26, kept exactly, not rounded to 0.
    let x = [60.0f32, -60.0, 55.0, -51.0];
    let t = [1.0f32, 0.0, 1.0, 0.0];
    check_bce_with_logits("bce_with_logits confidently right", &x, &t);
}

#[test]
fn binary_cross_entropy_matches_reference_for_both_reductions() {
    let gpu = gpu();
    for (s, &n) in SIZES.iter().enumerate() {
        let p: Vec<f32> = unit(s as u64, n).iter().map(|v| v.clamp(1e-3, 1.0 - 1e-3)).collect();
        let t = unit(30 + s as u64, n);
        let (pb, tb, lb, gb, dpb) = (upload("p", &p), upload("t", &t), zeros("loss", 1), upload("g", &[G]), zeros("dp", n));
        let (p64, t64) = (f64s(&p), f64s(&t));
        for (reduction, mean) in [(Reduction::Mean, true), (Reduction::Sum, false)] {
            let got = run_loss(loss::binary_cross_entropy(gpu, reduction, n, &pb, &tb, &lb, &scratch(n)), &lb);
            let want = reference::binary_cross_entropy(&p64, &t64, mean);
            assert_close(&format!("bce {reduction:?} n={n}"), &got, &[want], 1e-4);
            gpu.run(&[loss::binary_cross_entropy_backward(gpu, reduction, n, &pb, &tb, &gb, &dpb).unwrap()]).unwrap();
            let want = reference::binary_cross_entropy_backward(&p64, &t64, G as f64, mean);
            assert_close(&format!("bce {reduction:?} backward n={n}"), &read(&dpb), &want, 1e-4);
        }
    }
}

#[test]
fn binary_cross_entropy_clamps_logs_at_minus_100_as_pytorch() {
    let gpu = gpu();
    let p = [0.0f32, 1.0, 0.0, 1.0, 1e-13, 1.0 - 6e-8, 1e-6, 0.5];
    let t = [1.0f32, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.3];
    let n = p.len();
    let (pb, tb, lb, gb, dpb) = (upload("p", &p), upload("t", &t), zeros("loss", 1), upload("g", &[G]), zeros("dp", n));
    let (p64, t64) = (f64s(&p), f64s(&t));
    let got = run_loss(loss::binary_cross_entropy(gpu, Reduction::Sum, n, &pb, &tb, &lb, &scratch(n)), &lb);
    assert_close("bce at 0 and 1", &got, &[reference::binary_cross_entropy(&p64, &t64, false)], 1e-4);
    // p = 0 with t = 1 gives −1/1e-12: the clamped denominator, as PyTorch.
    gpu.run(&[loss::binary_cross_entropy_backward(gpu, Reduction::Sum, n, &pb, &tb, &gb, &dpb).unwrap()]).unwrap();
    let want = reference::binary_cross_entropy_backward(&p64, &t64, G as f64, false);
    assert_close("bce backward at 0 and 1", &read(&dpb), &want, 1e-4);
}

#[test]
fn mse_loss_matches_reference() {
    let gpu = gpu();
    for (s, &n) in SIZES.iter().enumerate() {
        let (x, t) = (rand(s as u64, n), rand(40 + s as u64, n));
        let (xb, tb, lb, gb, dxb) = (upload("x", &x), upload("t", &t), zeros("loss", 1), upload("g", &[G]), zeros("dx", n));
        let (x64, t64) = (f64s(&x), f64s(&t));
        let got = run_loss(loss::mse_loss(gpu, n, &xb, &tb, &lb, &scratch(n)), &lb);
        assert_close(&format!("mse n={n}"), &got, &[reference::mse_loss(&x64, &t64)], 1e-4);
        gpu.run(&[loss::mse_loss_backward(gpu, n, &xb, &tb, &gb, &dxb).unwrap()]).unwrap();
        assert_close(&format!("mse backward n={n}"), &read(&dxb), &reference::mse_loss_backward(&x64, &t64, G as f64), 1e-4);
    }
}

fn check_kl(name: &str, mu: &[f32], lv: &[f32]) {
    let gpu = gpu();
    let n = mu.len();
    let (mb, lvb, lb, gb) = (upload("mu", mu), upload("logvar", lv), zeros("loss", 1), upload("g", &[G]));
    let (dmb, dlvb) = (zeros("dmu", n), zeros("dlogvar", n));
    let (mu64, lv64) = (f64s(mu), f64s(lv));
    let got = run_loss(loss::kl_normal(gpu, n, &mb, &lvb, &lb, &scratch(n)), &lb);
    assert_close(name, &got, &[reference::kl_normal(&mu64, &lv64)], 1e-4);
    gpu.run(&[loss::kl_normal_backward(gpu, n, &mb, &lvb, &gb, &dmb, &dlvb).unwrap()]).unwrap();
    let (dmu, dlv) = reference::kl_normal_backward(&mu64, &lv64, G as f64);
    assert_close(&format!("{name} dmu"), &read(&dmb), &dmu, 1e-4);
    assert_close(&format!("{name} dlogvar"), &read(&dlvb), &dlv, 1e-4);
}

#[test]
fn kl_normal_matches_reference() {
    for (s, &n) in SIZES.iter().enumerate() {
        let mu = rand(s as u64, n);
        let lv: Vec<f32> = rand(60 + s as u64, n).iter().map(|v| 3.0 * v).collect();
        check_kl(&format!("kl_normal n={n}"), &mu, &lv);
    }
}

#[test]
fn kl_normal_stays_accurate_near_the_prior() {
    // mu, logvar → 0: 1 + lv − e^lv cancels in f32 unless computed as a series.
    let n = 1000;
    let mu: Vec<f32> = rand(1, n).iter().map(|v| 1e-4 * v).collect();
    let lv: Vec<f32> = rand(2, n).iter().map(|v| 1e-3 * v).collect();
    check_kl("kl_normal near the prior", &mu, &lv);
}

/// A scalar loss as the one-element vector finite_difference differentiates.
fn scalar(f: impl Fn(&[f64]) -> f64) -> impl Fn(&[f64]) -> Vec<f64> {
    move |x| vec![f(x)]
}

#[test]
fn loss_gradients_match_finite_differences() {
    let n = 23;
    let x: Vec<f64> = f64s(&rand(1, n)).iter().map(|v| 4.0 * v).collect();
    let t = f64s(&unit(2, n));
    let g = [0.7];

    let fd = finite_difference(scalar(|x| reference::binary_cross_entropy_with_logits(x, &t)), &x, &g);
    assert_grad_matches_fd("bce_with_logits", &reference::binary_cross_entropy_with_logits_backward(&x, &t, g[0]), &fd);

    // Probabilities inside (0.05, 0.95), away from the clamps.
    let p: Vec<f64> = f64s(&unit(3, n)).iter().map(|v| 0.05 + 0.9 * v).collect();
    for mean in [true, false] {
        let fd = finite_difference(scalar(|p| reference::binary_cross_entropy(p, &t, mean)), &p, &g);
        assert_grad_matches_fd(&format!("bce mean={mean}"), &reference::binary_cross_entropy_backward(&p, &t, g[0], mean), &fd);
    }

    let fd = finite_difference(scalar(|x| reference::mse_loss(x, &t)), &x, &g);
    assert_grad_matches_fd("mse", &reference::mse_loss_backward(&x, &t, g[0]), &fd);

    let (mu, lv) = (f64s(&rand(4, n)), f64s(&rand(5, n)));
    let (dmu, dlv) = reference::kl_normal_backward(&mu, &lv, g[0]);
    assert_grad_matches_fd("kl_normal dmu", &dmu, &finite_difference(scalar(|m| reference::kl_normal(m, &lv)), &mu, &g));
    assert_grad_matches_fd("kl_normal dlogvar", &dlv, &finite_difference(scalar(|l| reference::kl_normal(&mu, l)), &lv, &g));
}

#[test]
fn losses_reject_mismatched_shapes_naming_the_op() {
    let gpu = gpu();
    let (x, t, l, g, dx) = (zeros("x", 10), zeros("t", 7), zeros("loss", 1), zeros("g", 1), zeros("dx", 10));
    let err = loss::mse_loss(gpu, 10, &x, &t, &l, &scratch(10)).err().expect("must fail").to_string();
    assert!(err.contains("mse_loss") && err.contains("target") && err.contains("needs 10"), "{err}");
    let err = loss::binary_cross_entropy_with_logits_backward(gpu, 10, &x, &t, &g, &dx).err().expect("must fail").to_string();
    assert!(err.contains("binary_cross_entropy_with_logits") && err.contains("target"), "{err}");
    let err = loss::kl_normal(gpu, 10, &x, &x, &l, &[]).err().expect("must fail").to_string();
    assert!(err.contains("kl_normal") && err.contains("scratch"), "{err}");
    let err = loss::binary_cross_entropy(gpu, Reduction::Mean, 0, &x, &x, &l, &scratch(1)).err().expect("must fail").to_string();
    assert!(err.contains("binary_cross_entropy") && err.contains("empty"), "{err}");
}
