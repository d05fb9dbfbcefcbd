use crate::support::*;
use kiln::gpu::{Buffer, Gpu};
use kiln::kernels::loss::{self, Reduction};
use kiln::kernels::reduce;
use kiln::reference::loss as reference;
use kiln::Dispatch;

// 1, odd, not a multiple of the 256 workgroup, and a grid of more than 65,535 workgroups
// (whose reduction takes three passes).
const SIZES: [usize; 4] = [1, 7, 1000, 65_535 * 256 + 1];
const REDUCTIONS: [Reduction; 3] = [Reduction::Mean, Reduction::Sum, Reduction::None];

/// The reductions tried at size n: at the largest, sum (mean without the 1/n) is left out to
/// keep the test short on a CPU device; mean covers the multi-pass reduction, none the
/// per-element upstream gradient, both over the folded grid.
fn reductions_for(n: usize) -> impl Iterator<Item = Reduction> {
    REDUCTIONS.into_iter().filter(move |&r| n < 1 << 20 || r != Reduction::Sum)
}
/// The scalar upstream gradient, not 1 so that forgetting to multiply by it shows.
const G: f32 = 0.7;

type Forward = fn(&Gpu, Reduction, usize, &Buffer, &Buffer, &Buffer, &[Buffer]) -> kiln::Result<Vec<Dispatch>>;
type Backward = fn(&Gpu, Reduction, usize, &Buffer, &Buffer, &Buffer, &Buffer) -> kiln::Result<Dispatch>;
type ReferenceBackward = fn(&[f64], &[f64], &[f64], Reduction) -> Vec<f64>;

/// A loss with PyTorch's `reduction`: its kernels and its reference.
struct LossFns {
    name: &'static str,
    forward: Forward,
    backward: Backward,
    reference: fn(&[f64], &[f64], Reduction) -> Vec<f64>,
    reference_backward: ReferenceBackward,
}

const BCE_WITH_LOGITS: LossFns = LossFns {
    name: "bce_with_logits",
    forward: loss::binary_cross_entropy_with_logits,
    backward: loss::binary_cross_entropy_with_logits_backward,
    reference: reference::binary_cross_entropy_with_logits,
    reference_backward: reference::binary_cross_entropy_with_logits_backward,
};
const BCE: LossFns = LossFns {
    name: "bce",
    forward: loss::binary_cross_entropy,
    backward: loss::binary_cross_entropy_backward,
    reference: reference::binary_cross_entropy,
    reference_backward: reference::binary_cross_entropy_backward,
};
const MSE: LossFns = LossFns {
    name: "mse",
    forward: loss::mse_loss,
    backward: loss::mse_loss_backward,
    reference: reference::mse_loss,
    reference_backward: reference::mse_loss_backward,
};

fn scratch(reduction: Reduction, n: usize) -> Vec<Buffer> {
    reduce::alloc_scratch(gpu(), "loss", &loss::scratch_lens(reduction, n)).unwrap()
}

/// Runs a loss's dispatches and reads the loss back.
fn run_loss(dispatches: kiln::Result<Vec<Dispatch>>, out: &Buffer) -> Vec<f32> {
    gpu().run(&dispatches.unwrap()).unwrap();
    read(out)
}

fn unit(seed: u64, n: usize) -> Vec<f32> {
    rand(seed, n).iter().map(|v| 0.5 * (v + 1.0)).collect()
}

/// The upstream gradient: the scalar G, or a different value per element for reduction none
/// (so that reading one element for all, or the wrong one, shows).
fn upstream(reduction: Reduction, n: usize) -> Vec<f32> {
    match reduction {
        Reduction::None => rand(99, n).iter().map(|v| 1.5 * v).collect(),
        _ => vec![G],
    }
}

/// Loss and gradient of `f` for `x`, `t` on the GPU against the reference.
fn check_loss(f: &LossFns, what: &str, reduction: Reduction, x: &[f32], t: &[f32]) {
    let gpu = gpu();
    let n = x.len();
    let name = format!("{} {reduction:?} {what} n={n}", f.name);
    let g = upstream(reduction, n);
    let (xb, tb, gb) = (upload("x", x), upload("t", t), upload("g", &g));
    let (lb, dxb) = (zeros("loss", reduction.output_len(n)), zeros("dx", n));
    let (x64, t64) = (f64s(x), f64s(t));
    let got = run_loss((f.forward)(gpu, reduction, n, &xb, &tb, &lb, &scratch(reduction, n)), &lb);
    assert_close(&name, &got, &(f.reference)(&x64, &t64, reduction), 1e-4);
    gpu.run(&[(f.backward)(gpu, reduction, n, &xb, &tb, &gb, &dxb).unwrap()]).unwrap();
    let want = (f.reference_backward)(&x64, &t64, &f64s(&g), reduction);
    assert_close(&format!("{name} backward"), &read(&dxb), &want, 1e-4);
}

#[test]
fn binary_cross_entropy_with_logits_matches_reference_for_every_reduction() {
    for (s, &n) in SIZES.iter().enumerate() {
        let x: Vec<f32> = rand(s as u64, n).iter().map(|v| 12.0 * v).collect();
        let t = unit(20 + s as u64, n);
        for reduction in reductions_for(n) {
            check_loss(&BCE_WITH_LOGITS, "", reduction, &x, &t);
        }
    }
}

#[test]
fn binary_cross_entropy_with_logits_is_exact_for_saturated_logits() {
    for reduction in REDUCTIONS {
        // Confidently wrong: each term is |x| and its gradient ±1 (/n).
        let x = [60.0f32, -60.0, 100.0, -100.0, 1e4, -1e4, 1e4, -1e4];
        let t = [0.0f32, 1.0, 0.0, 1.0, 0.5, 0.25, 0.0, 1.0];
        check_loss(&BCE_WITH_LOGITS, "confidently wrong", reduction, &x, &t);
        // Confidently right: terms and gradients are e^−|x| ≈ 1e-26, kept exactly, not rounded to 0.
        let x = [60.0f32, -60.0, 55.0, -51.0];
        let t = [1.0f32, 0.0, 1.0, 0.0];
        check_loss(&BCE_WITH_LOGITS, "confidently right", reduction, &x, &t);
    }
}

#[test]
fn binary_cross_entropy_matches_reference_for_every_reduction() {
    for (s, &n) in SIZES.iter().enumerate() {
        let p: Vec<f32> = unit(s as u64, n).iter().map(|v| v.clamp(1e-3, 1.0 - 1e-3)).collect();
        let t = unit(30 + s as u64, n);
        for reduction in reductions_for(n) {
            check_loss(&BCE, "", reduction, &p, &t);
        }
    }
}

#[test]
fn binary_cross_entropy_clamps_logs_at_minus_100_as_pytorch() {
    // p = 0 with t = 1 gives a gradient of −1/1e-12: the clamped denominator, as PyTorch.
    let p = [0.0f32, 1.0, 0.0, 1.0, 1e-13, 1.0 - 6e-8, 1e-6, 0.5];
    let t = [1.0f32, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.3];
    for reduction in REDUCTIONS {
        check_loss(&BCE, "at 0 and 1", reduction, &p, &t);
    }
}

#[test]
fn mse_loss_matches_reference_for_every_reduction() {
    for (s, &n) in SIZES.iter().enumerate() {
        let (x, t) = (rand(s as u64, n), rand(40 + s as u64, n));
        for reduction in reductions_for(n) {
            check_loss(&MSE, "", reduction, &x, &t);
        }
    }
}

#[test]
fn losses_with_reduction_none_need_no_scratch() {
    let gpu = gpu();
    let (x, t) = (rand(1, 300), unit(2, 300));
    let (xb, tb, lb) = (upload("x", &x), upload("t", &t), zeros("loss", 300));
    assert!(loss::scratch_lens(Reduction::None, 300).is_empty());
    for f in [&BCE_WITH_LOGITS, &MSE] {
        let dispatches = (f.forward)(gpu, Reduction::None, 300, &xb, &tb, &lb, &[]).unwrap();
        assert_eq!(dispatches.len(), 1, "{}: one dispatch, no reduction", f.name);
        let got = run_loss(Ok(dispatches), &lb);
        assert_close(&format!("{} none without scratch", f.name), &got, &(f.reference)(&f64s(&x), &f64s(&t), Reduction::None), 1e-4);
    }
}

fn check_kl(name: &str, mu: &[f32], lv: &[f32]) {
    let gpu = gpu();
    let n = mu.len();
    let (mb, lvb, lb, gb) = (upload("mu", mu), upload("logvar", lv), zeros("loss", 1), upload("g", &[G]));
    let (dmb, dlvb) = (zeros("dmu", n), zeros("dlogvar", n));
    let (mu64, lv64) = (f64s(mu), f64s(lv));
    let got = run_loss(loss::kl_normal(gpu, n, &mb, &lvb, &lb, &scratch(Reduction::Sum, n)), &lb);
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

#[test]
fn loss_gradients_match_finite_differences() {
    let n = 23;
    let x: Vec<f64> = f64s(&rand(1, n)).iter().map(|v| 4.0 * v).collect();
    let t = f64s(&unit(2, n));
    // Probabilities inside (0.05, 0.95), away from the clamps.
    let p: Vec<f64> = f64s(&unit(3, n)).iter().map(|v| 0.05 + 0.9 * v).collect();
    for reduction in REDUCTIONS {
        let g = f64s(&upstream(reduction, n));
        for (f, input) in [(&BCE_WITH_LOGITS, &x), (&BCE, &p), (&MSE, &x)] {
            let fd = finite_difference(|x| (f.reference)(x, &t, reduction), input, &g);
            assert_grad_matches_fd(&format!("{} {reduction:?}", f.name), &(f.reference_backward)(input, &t, &g, reduction), &fd);
        }
    }

    let g = [0.7];
    let scalar = |f: &dyn Fn(&[f64]) -> f64, x: &[f64]| finite_difference(|x| vec![f(x)], x, &g);
    let (mu, lv) = (f64s(&rand(4, n)), f64s(&rand(5, n)));
    let (dmu, dlv) = reference::kl_normal_backward(&mu, &lv, g[0]);
    assert_grad_matches_fd("kl_normal dmu", &dmu, &scalar(&|m| reference::kl_normal(m, &lv), &mu));
    assert_grad_matches_fd("kl_normal dlogvar", &dlv, &scalar(&|l| reference::kl_normal(&mu, l), &lv));
}

#[test]
fn losses_reject_mismatched_shapes_naming_the_op() {
    let gpu = gpu();
    let (x, t, l, g, dx) = (zeros("x", 10), zeros("t", 7), zeros("loss", 1), zeros("g", 1), zeros("dx", 10));
    let err = loss::mse_loss(gpu, Reduction::Mean, 10, &x, &t, &l, &scratch(Reduction::Mean, 10)).err().expect("must fail").to_string();
    assert!(err.contains("mse_loss") && err.contains("target") && err.contains("needs 10"), "{err}");
    let err = loss::binary_cross_entropy_with_logits_backward(gpu, Reduction::Mean, 10, &x, &t, &g, &dx).err().expect("must fail").to_string();
    assert!(err.contains("binary_cross_entropy_with_logits") && err.contains("target"), "{err}");
    let err = loss::kl_normal(gpu, 10, &x, &x, &l, &[]).err().expect("must fail").to_string();
    assert!(err.contains("kl_normal") && err.contains("scratch"), "{err}");
    let err = loss::binary_cross_entropy(gpu, Reduction::Mean, 0, &x, &x, &l, &scratch(Reduction::Mean, 1)).err().expect("must fail").to_string();
    assert!(err.contains("binary_cross_entropy") && err.contains("empty"), "{err}");
    // Reduction none writes n losses and reads n upstream gradients.
    let err = loss::mse_loss(gpu, Reduction::None, 10, &x, &x, &l, &[]).err().expect("must fail").to_string();
    assert!(err.contains("mse_loss") && err.contains("loss") && err.contains("needs 10"), "{err}");
    let err = loss::binary_cross_entropy_backward(gpu, Reduction::None, 10, &x, &x, &g, &dx).err().expect("must fail").to_string();
    assert!(err.contains("binary_cross_entropy_backward") && err.contains("upstream gradient") && err.contains("needs 10"), "{err}");
}

#[test]
fn reduction_parses_pytorchs_names() {
    assert_eq!("mean".parse::<Reduction>().unwrap(), Reduction::Mean);
    assert_eq!("sum".parse::<Reduction>().unwrap(), Reduction::Sum);
    assert_eq!("none".parse::<Reduction>().unwrap(), Reduction::None);
    let err = "avg".parse::<Reduction>().unwrap_err().to_string();
    assert!(err.contains("\"avg\"") && err.contains("\"none\""), "{err}");
}

/// cross_entropy of `[rows, classes]` logits and class targets on the GPU against the
/// reference, loss and d(logits), for one reduction.
fn check_cross_entropy(what: &str, reduction: Reduction, classes: usize, x: &[f32], t: &[f32]) {
    let gpu = gpu();
    let rows = t.len();
    let shape = reduce::Rows { rows, cols: classes };
    let name = format!("cross_entropy {reduction:?} {what} [{rows}, {classes}]");
    let g = upstream(reduction, rows);
    let (xb, tb, gb) = (upload("x", x), upload("t", t), upload("g", &g));
    let (lb, dxb, stats) = (zeros("loss", reduction.output_len(rows)), zeros("dx", x.len()), zeros("stats", loss::cross_entropy_row_stats_len(rows)));
    let (x64, t64) = (f64s(x), f64s(t));
    let got = run_loss(loss::cross_entropy(gpu, reduction, shape, &xb, &tb, &lb, &scratch(reduction, rows)), &lb);
    assert_close(&name, &got, &reference::cross_entropy(&x64, &t64, classes, reduction).unwrap(), 1e-4);
    gpu.run(&loss::cross_entropy_backward(gpu, reduction, shape, &xb, &tb, &gb, &stats, &dxb).unwrap()).unwrap();
    let want = reference::cross_entropy_backward(&x64, &t64, classes, &f64s(&g), reduction).unwrap();
    assert_close(&format!("{name} backward"), &read(&dxb), &want, 1e-4);
}

/// Class indices in [0, classes) as f32, deterministic per seed.
fn classes_of(seed: u64, rows: usize, classes: usize) -> Vec<f32> {
    unit(seed, rows).iter().map(|u| ((u * classes as f32) as usize).min(classes - 1) as f32).collect()
}

#[test]
fn cross_entropy_matches_reference_for_every_reduction() {
    // Batch 1, one class (loss 0), odd sizes, more rows than a workgroup, 1000 classes.
    for (s, (rows, classes)) in [(1, 1), (1, 10), (7, 3), (5, 1000), (300, 17)].into_iter().enumerate() {
        let x: Vec<f32> = rand(s as u64, rows * classes).iter().map(|v| 4.0 * v).collect();
        let t = classes_of(50 + s as u64, rows, classes);
        for reduction in REDUCTIONS {
            check_cross_entropy("", reduction, classes, &x, &t);
        }
    }
}

#[test]
fn cross_entropy_is_stable_for_huge_logits() {
    // Rows offset by ±1e4 and spread over hundreds: exp(x) overflows or underflows f32 unless
    // the row's max is subtracted; the last row is confidently right (loss ≈ e^−200).
    let rows: [[f32; 4]; 4] = [[1e4, 1e4 - 3.0, 1e4 + 2.0, 1e4], [-1e4, -1e4 - 50.0, -1e4 + 1.0, -1e4], [300.0, -300.0, 0.0, 80.0], [0.0, 200.0, 0.0, -5.0]];
    let x: Vec<f32> = rows.iter().flatten().copied().collect();
    let t = [0.0, 2.0, 1.0, 1.0];
    for reduction in REDUCTIONS {
        check_cross_entropy("huge logits", reduction, 4, &x, &t);
    }
}

#[test]
fn cross_entropy_gives_nan_for_a_row_whose_target_is_not_a_class() {
    let gpu = gpu();
    let (rows, classes) = (6, 3);
    let shape = reduce::Rows { rows, cols: classes };
    let x = rand(1, rows * classes);
    // Rows 1-4 are fractional, negative, one past the last class, NaN; rows 0 and 5 are fine.
    let t = [2.0, 1.5, -1.0, 3.0, f32::NAN, 0.0];
    let (xb, tb) = (upload("x", &x), upload("t", &t));
    let none = zeros("loss", rows);
    gpu.run(&loss::cross_entropy(gpu, Reduction::None, shape, &xb, &tb, &none, &[]).unwrap()).unwrap();
    let got = read(&none);
    assert_eq!(got.iter().map(|v| v.is_nan()).collect::<Vec<_>>(), [false, true, true, true, true, false], "{got:?}");
    let good = reference::cross_entropy(&f64s(&x[15..]), &[0.0], classes, Reduction::None).unwrap();
    assert_close("valid row beside invalid ones", &got[5..], &good, 1e-6);
    let mean = zeros("loss", 1);
    gpu.run(&loss::cross_entropy(gpu, Reduction::Mean, shape, &xb, &tb, &mean, &scratch(Reduction::Mean, rows)).unwrap()).unwrap();
    assert!(read(&mean)[0].is_nan(), "the mean of a NaN row is NaN, so training stops");
    let (g, stats, dx) = (upload("g", &[1.0]), zeros("stats", 2 * rows), zeros("dx", rows * classes));
    gpu.run(&loss::cross_entropy_backward(gpu, Reduction::Mean, shape, &xb, &tb, &g, &stats, &dx).unwrap()).unwrap();
    let nan_rows: Vec<bool> = read(&dx).chunks(classes).map(|row| row.iter().all(|v| v.is_nan())).collect();
    assert_eq!(nan_rows, [false, true, true, true, true, false]);

    // On the CPU the same targets are an error naming the row.
    let err = reference::cross_entropy(&f64s(&x), &f64s(&t), classes, Reduction::Mean).unwrap_err().to_string();
    assert!(err.contains("cross_entropy") && err.contains("row 1") && err.contains("1.5") && err.contains("[0, 3)"), "{err}");
    let err = reference::class_indices(&[0.0, 3.0], classes).unwrap_err().to_string();
    assert!(err.contains("row 1") && err.contains("is 3"), "{err}");
}

#[test]
fn cross_entropy_folds_grids_over_65535_workgroups() {
    // More rows than 65,535 workgroups of 256 (the forward) and twice as many logits (the
    // backward); the mean's reduction takes several passes.
    let (rows, classes) = (65_535 * 256 + 1, 2);
    let x = rand(3, rows * classes);
    let t = classes_of(4, rows, classes);
    for reduction in [Reduction::Mean, Reduction::None] {
        check_cross_entropy("folded grid", reduction, classes, &x, &t);
    }
}

#[test]
fn cross_entropy_sums_rows_just_under_the_loop_limit_in_full() {
    // 60,000 classes is 59,999 loop iterations per row, near llvmpipe's silent 65,535: the
    // largest logit sits in the last class, so a row cut short would miss it.
    let classes = loss::MAX_CLASSES;
    let mut x = rand(5, 2 * classes);
    x[classes - 1] = 9.0;
    x[2 * classes - 1] = 7.0;
    for reduction in [Reduction::Sum, Reduction::None] {
        check_cross_entropy("60000 classes", reduction, classes, &x, &[(classes - 1) as f32, 17.0]);
    }
}

#[test]
fn cross_entropy_refuses_rows_past_the_loop_limit_and_bad_shapes() {
    let gpu = gpu();
    let too_many = loss::MAX_CLASSES + 1;
    let (x, t, l) = (zeros("x", too_many), zeros("t", 1), zeros("loss", 1));
    let err = loss::cross_entropy(gpu, Reduction::Sum, reduce::Rows { rows: 1, cols: too_many }, &x, &t, &l, &scratch(Reduction::Sum, 1)).err().expect("must fail").to_string();
    assert!(err.contains("cross_entropy") && err.contains("60001 classes") && err.contains("60000"), "{err}");
    let shape = reduce::Rows { rows: 4, cols: 5 };
    let err = loss::cross_entropy(gpu, Reduction::None, shape, &zeros("x", 19), &zeros("t", 4), &zeros("loss", 4), &[]).err().expect("must fail").to_string();
    assert!(err.contains("cross_entropy") && err.contains("logits") && err.contains("needs 20"), "{err}");
    let err = loss::cross_entropy(gpu, Reduction::None, shape, &zeros("x", 20), &zeros("t", 3), &zeros("loss", 4), &[]).err().expect("must fail").to_string();
    assert!(err.contains("target") && err.contains("needs 4"), "{err}");
    let (xb, tb) = (zeros("x", 20), zeros("t", 4));
    let err = loss::cross_entropy_backward(gpu, Reduction::Mean, shape, &xb, &tb, &zeros("g", 1), &zeros("stats", 7), &zeros("dx", 20)).err().expect("must fail").to_string();
    assert!(err.contains("cross_entropy_backward") && err.contains("row statistics") && err.contains("needs 8"), "{err}");
}

#[test]
fn cross_entropy_reference_backward_matches_finite_differences() {
    let (rows, classes) = (5, 7);
    let x = f64s(&rand(8, rows * classes)).iter().map(|v| 3.0 * v).collect::<Vec<_>>();
    let t = f64s(&classes_of(9, rows, classes));
    for reduction in REDUCTIONS {
        let g = f64s(&upstream(reduction, rows));
        let fd = finite_difference(|x| reference::cross_entropy(x, &t, classes, reduction).unwrap(), &x, &g);
        let analytic = reference::cross_entropy_backward(&x, &t, classes, &g, reduction).unwrap();
        assert_grad_matches_fd(&format!("cross_entropy {reduction:?}"), &analytic, &fd);
    }
}
