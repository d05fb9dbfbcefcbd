use crate::support::*;
use kiln::kernels::reduce::{self, Rows};
use kiln::reference::reduce as reference;
use std::time::Instant;

fn check(rows: usize, cols: usize, offset: f32) {
    let gpu = gpu();
    let shape = Rows { rows, cols };
    let x: Vec<f32> = rand(rows as u64 ^ cols as u64, rows * cols).iter().map(|v| v + offset).collect();
    let (xb, yb) = (upload("x", &x), zeros("y", rows));
    let scratch = reduce::alloc_scratch(gpu, "reduce", &reduce::scratch_lens(shape)).unwrap();
    let x64 = f64s(&x);

    gpu.run(&reduce::sum(gpu, shape, &xb, &yb, &scratch).unwrap()).unwrap();
    assert_close(&format!("sum [{rows}, {cols}]"), &read(&yb), &reference::sum(&x64, rows, cols), 1e-4);
    // Timed here, where the upload has already happened.
    let mean = reduce::mean(gpu, shape, &xb, &yb, &scratch).unwrap();
    let start = Instant::now();
    gpu.run(&mean).unwrap();
    let elapsed = start.elapsed();
    let name = format!("mean [{rows}, {cols}] ({} passes, {elapsed:.1?})", mean.len());
    assert_close(&name, &read(&yb), &reference::mean(&x64, rows, cols), 1e-4);
}

#[test]
fn sum_and_mean_match_reference_for_odd_shapes() {
    for (rows, cols) in [(1, 1), (7, 1), (1, 7), (3, 32), (5, 33), (2, 1000), (3, 4096), (2, 4097), (1, 200_000)] {
        check(rows, cols, 0.0);
    }
}

#[test]
fn sum_and_mean_are_accurate_for_one_ten_million_long_row() {
    // Zero-mean data: the sum (~2e3) is far smaller than Σ|x| (~5e6), the hard case for f32.
    check(1, 10_000_000, 0.0);
    check(1, 10_000_000, 0.5);
}

#[test]
fn sum_and_mean_handle_many_short_rows() {
    check(100_000, 3, 0.0);
    check(70_000, 33, 0.0);
    check(5_000, 1_000, 0.0);
    // Fewer rows than fill a device alone: a workgroup per row, then a second pass.
    check(4_000, 5_000, 0.0);
    // One thread per row over more than 65,535 workgroups, folded into a second grid dimension.
    check(65_535 * 256 + 1, 1, 0.0);
}

#[test]
fn reduction_replays_with_new_data() {
    let gpu = gpu();
    let shape = Rows { rows: 2, cols: 300_000 };
    let n = shape.rows * shape.cols;
    let (xb, yb) = (zeros("x", n), zeros("y", 2));
    let scratch = reduce::alloc_scratch(gpu, "reduce", &reduce::scratch_lens(shape)).unwrap();
    let recorded = reduce::sum(gpu, shape, &xb, &yb, &scratch).unwrap();
    for seed in 0..2 {
        let x = rand(seed, n);
        gpu.write(&xb, &x).unwrap();
        gpu.run(&recorded).unwrap();
        assert_close(&format!("replayed sum {seed}"), &read(&yb), &reference::sum(&f64s(&x), 2, shape.cols), 1e-4);
    }
}

#[test]
fn reduce_rejects_bad_shapes_naming_the_op() {
    let gpu = gpu();
    let (x, y) = (zeros("x", 100), zeros("y", 2));
    let err = reduce::sum(gpu, Rows { rows: 2, cols: 60 }, &x, &y, &[]).err().expect("must fail").to_string();
    assert!(err.contains("sum") && err.contains("needs 120"), "{err}");
    let big = Rows { rows: 1, cols: 100_000 };
    let x = zeros("x", big.cols);
    let err = reduce::mean(gpu, big, &x, &y, &[]).err().expect("must fail").to_string();
    assert!(err.contains("mean") && err.contains("scratch"), "{err}");
    let err = reduce::mean(gpu, Rows { rows: 2, cols: 0 }, &x, &y, &[]).err().expect("must fail").to_string();
    assert!(err.contains("mean") && err.contains("empty"), "{err}");
}
