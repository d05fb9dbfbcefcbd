use crate::support::*;
use kiln::kernels::elementwise;
use kiln::reference::elementwise as reference;

// 1, an odd size, a non-multiple of the 256 workgroup, and more than 65,535 workgroups.
const SIZES: [usize; 4] = [1, 257, 1000, 65_535 * 256 + 3];

#[test]
fn elementwise_ops_match_reference() {
    let gpu = gpu();
    for (s, &n) in SIZES.iter().enumerate() {
        let (a, b) = (rand(s as u64, n), rand(100 + s as u64, n));
        let (ab, bb, yb) = (upload("a", &a), upload("b", &b), zeros("y", n));
        let (a64, b64) = (f64s(&a), f64s(&b));

        gpu.run(&[elementwise::add(gpu, &ab, &bb, &yb, n).unwrap()]).unwrap();
        assert_close(&format!("add n={n}"), &read(&yb), &reference::add(&a64, &b64), 1e-6);
        gpu.run(&[elementwise::mul(gpu, &ab, &bb, &yb, n).unwrap()]).unwrap();
        assert_close(&format!("mul n={n}"), &read(&yb), &reference::mul(&a64, &b64), 1e-6);
        gpu.run(&[elementwise::scale(gpu, -0.5, &ab, &yb, n).unwrap()]).unwrap();
        assert_close(&format!("scale n={n}"), &read(&yb), &reference::scale(-0.5, &a64), 1e-6);
        gpu.run(&[elementwise::axpy(gpu, 2.0, &bb, &yb, n).unwrap()]).unwrap();
        let want = reference::add(&reference::scale(-0.5, &a64), &reference::scale(2.0, &b64));
        assert_close(&format!("axpy n={n}"), &read(&yb), &want, 1e-6);
        gpu.run(&[elementwise::fill(gpu, 0.25, &yb, n).unwrap()]).unwrap();
        assert_close(&format!("fill n={n}"), &read(&yb), &vec![0.25; n], 0.0);
    }
}

#[test]
fn elementwise_rejects_short_buffers() {
    let gpu = gpu();
    let (a, y) = (zeros("a", 10), zeros("y", 5));
    let err = elementwise::scale(gpu, 1.0, &a, &y, 10).err().expect("must fail").to_string();
    assert!(err.contains("output y") && err.contains("needs 10"), "{err}");
}

#[test]
fn mul_backward_by_finite_differences() {
    let n = 37;
    let (a, b, dy) = (f64s(&rand(1, n)), f64s(&rand(2, n)), f64s(&rand(3, n)));
    // d(a*b)/da = b: the backward of mul is mul by the other operand.
    let analytic = reference::mul(&dy, &b);
    let numeric = finite_difference(|a| reference::mul(a, &b), &a, &dy);
    assert_grad_matches_fd("mul da", &analytic, &numeric);
}

#[test]
fn broadcast_rows_spreads_each_value_over_its_row() {
    let gpu = gpu();
    for (rows, cols) in [(1, 1), (3, 7), (5, 1000), (1, 65_535 * 256 + 3)] {
        let a = rand(rows as u64, rows);
        let (ab, yb) = (upload("a", &a), zeros("y", rows * cols));
        gpu.run(&[elementwise::broadcast_rows(gpu, 0.5, &ab, &yb, rows, cols).unwrap()]).unwrap();
        let want: Vec<f64> = (0..rows * cols).map(|i| 0.5 * a[i / cols] as f64).collect();
        assert_close(&format!("broadcast_rows {rows}x{cols}"), &read(&yb), &want, 1e-7);
    }
}
