use crate::support::*;
use kiln::kernels::pool::{self, Divisor, Pool2d};
use kiln::reference::pool as reference;

fn pool2d(batch: usize, channels: usize, size: [usize; 2], kernel: [usize; 2], stride: [usize; 2], padding: [usize; 2]) -> Pool2d {
    Pool2d { stride, padding, ..Pool2d::new(batch, channels, size, kernel) }
}

/// Odd and non-square sizes, batch 1, padding, windows that overlap (kernel > stride) and
/// leave gaps (stride > kernel), ceil_mode with a last window past the input, dilation.
fn awkward_shapes() -> Vec<Pool2d> {
    vec![
        pool2d(2, 3, [7, 9], [2, 2], [2, 2], [0, 0]),
        pool2d(1, 1, [5, 5], [3, 3], [1, 1], [1, 1]),
        pool2d(3, 2, [13, 6], [3, 2], [2, 1], [1, 0]),
        pool2d(1, 4, [9, 11], [2, 3], [3, 4], [1, 1]),
        pool2d(2, 1, [6, 7], [5, 4], [2, 3], [2, 2]),
        Pool2d { ceil_mode: true, ..pool2d(1, 3, [7, 8], [3, 3], [2, 2], [1, 0]) },
        Pool2d { ceil_mode: true, ..pool2d(2, 2, [1, 3], [2, 2], [2, 2], [0, 0]) },
        Pool2d { ceil_mode: true, ..pool2d(1, 2, [10, 5], [4, 2], [3, 3], [0, 1]) },
        // Inception's 3x3 stride 2 max pools, and its 3x3 stride 1 padding 1 average pools.
        pool2d(2, 5, [17, 17], [3, 3], [2, 2], [0, 0]),
        pool2d(2, 5, [17, 17], [3, 3], [1, 1], [1, 1]),
    ]
}

fn dilated_shapes() -> Vec<Pool2d> {
    vec![
        Pool2d { dilation: [2, 3], ..pool2d(2, 2, [11, 13], [3, 2], [1, 2], [1, 1]) },
        Pool2d { dilation: [2, 2], ceil_mode: true, ..pool2d(1, 3, [9, 8], [2, 3], [2, 2], [1, 1]) },
    ]
}

/// max_pool2d forward (values and argmax taps, exactly) and backward against the reference.
fn check_max(name: &str, s: Pool2d, x: &[f32], dy: &[f32]) {
    let gpu = gpu();
    let (n, m) = (s.input_len(), s.output_len());
    let (xb, dyb) = (upload("x", x), upload("dy", dy));
    let (y, argmax, dx) = (zeros("y", m), zeros("argmax", m), zeros("dx", n));
    let forward = pool::max_pool2d(gpu, &s, &xb, &y, &argmax).unwrap();
    gpu.run(&[forward, pool::max_pool2d_backward(gpu, &s, &dyb, &argmax, &dx).unwrap()]).unwrap();
    let (want_y, want_arg) = reference::max_pool2d(&s, &f64s(x));
    assert_close(&format!("{name} forward"), &read(&y), &want_y, 0.0);
    let got_arg = read(&argmax);
    if let Some(o) = (0..m).find(|&o| got_arg[o] as f64 != want_arg[o]) {
        panic!("{name}: output {o} took tap {} of its window, the reference tap {}", got_arg[o], want_arg[o]);
    }
    assert_close(&format!("{name} dx"), &read(&dx), &reference::max_pool2d_backward(&s, &f64s(dy), &want_arg), 1e-6);
}

fn check_avg(name: &str, s: Pool2d, d: Divisor, x: &[f32], dy: &[f32]) {
    let gpu = gpu();
    let (n, m) = (s.input_len(), s.output_len());
    let (xb, dyb, y, dx) = (upload("x", x), upload("dy", dy), zeros("y", m), zeros("dx", n));
    let forward = pool::avg_pool2d(gpu, &s, d, &xb, &y).unwrap();
    gpu.run(&[forward, pool::avg_pool2d_backward(gpu, &s, d, &dyb, &dx).unwrap()]).unwrap();
    let name = format!("{name} {d:?}");
    assert_close(&format!("{name} forward"), &read(&y), &reference::avg_pool2d(&s, d, &f64s(x)), 1e-5);
    assert_close(&format!("{name} dx"), &read(&dx), &reference::avg_pool2d_backward(&s, d, &f64s(dy)), 1e-6);
}

const DIVISORS: [Divisor; 3] = [
    Divisor { count_include_pad: true, divisor_override: None },
    Divisor { count_include_pad: false, divisor_override: None },
    Divisor { count_include_pad: true, divisor_override: Some(5) },
];

#[test]
fn max_pool2d_matches_reference_for_awkward_shapes() {
    for (k, s) in awkward_shapes().into_iter().chain(dilated_shapes()).enumerate() {
        let (x, dy) = (rand(10 * k as u64, s.input_len()), rand(10 * k as u64 + 5, s.output_len()));
        check_max(&format!("max_pool2d {}", s.describe()), s, &x, &dy);
    }
}

#[test]
fn avg_pool2d_matches_reference_for_awkward_shapes_and_every_divisor() {
    for (k, s) in awkward_shapes().into_iter().enumerate() {
        let (x, dy) = (rand(10 * k as u64, s.input_len()), rand(10 * k as u64 + 5, s.output_len()));
        for d in DIVISORS {
            check_avg(&format!("avg_pool2d {}", s.describe()), s, d, &x, &dy);
        }
    }
}

#[test]
fn avg_pool2d_without_padding_counted_divides_edges_by_their_inside() {
    // Inception's avg_pool2d(3, 1, 1, count_include_pad=False) on a constant image: every
    // output is the constant, corners included (a divisor counting padding gives 4/9 there).
    let s = pool2d(1, 1, [4, 5], [3, 3], [1, 1], [1, 1]);
    let d = Divisor { count_include_pad: false, divisor_override: None };
    let (x, y, dx) = (upload("x", &[2.5; 20]), zeros("y", 20), zeros("dx", 20));
    gpu().run(&[pool::avg_pool2d(gpu(), &s, d, &x, &y).unwrap()]).unwrap();
    assert_eq!(read(&y), vec![2.5; 20]);
    // Its gradient spreads each window's dy over the window's inside only.
    gpu().run(&[pool::avg_pool2d_backward(gpu(), &s, d, &upload("dy", &[1.0; 20]), &dx).unwrap()]).unwrap();
    assert_close("count_include_pad=False dx", &read(&dx), &reference::avg_pool2d_backward(&s, d, &[1.0; 20]), 1e-6);
}

#[test]
fn max_pool2d_breaks_ties_as_pytorch() {
    // Few distinct values, so most windows hold ties: the first maximum in scan order (rows,
    // then columns) takes the max and its gradient, never a later equal one.
    let s = Pool2d { ceil_mode: true, ..pool2d(2, 3, [9, 10], [3, 3], [2, 2], [1, 1]) };
    let x: Vec<f32> = rand(3, s.input_len()).iter().map(|v| (v * 2.0).round()).collect();
    check_max("max_pool2d ties", s, &x, &rand(4, s.output_len()));
    // A window of equal values routes all of dy to its first element.
    let s = pool2d(1, 1, [2, 2], [2, 2], [2, 2], [0, 0]);
    let (x, y, argmax, dx) = (upload("x", &[1.0; 4]), zeros("y", 1), zeros("argmax", 1), zeros("dx", 4));
    let forward = pool::max_pool2d(gpu(), &s, &x, &y, &argmax).unwrap();
    gpu().run(&[forward, pool::max_pool2d_backward(gpu(), &s, &upload("dy", &[3.0]), &argmax, &dx).unwrap()]).unwrap();
    assert_eq!(read(&dx), vec![3.0, 0.0, 0.0, 0.0]);
}

#[test]
fn max_pool2d_propagates_nan_and_gives_minus_inf_for_a_window_outside_the_input() {
    let gpu = gpu();
    // A NaN beats every number, as in PyTorch (whose max would otherwise hide it).
    let s = pool2d(1, 1, [1, 4], [1, 2], [1, 2], [0, 0]);
    let (x, y, argmax, dx) = (upload("x", &[5.0, f32::NAN, f32::NAN, -1.0]), zeros("y", 2), zeros("argmax", 2), zeros("dx", 4));
    gpu.run(&[pool::max_pool2d(gpu, &s, &x, &y, &argmax).unwrap()]).unwrap();
    let got = read(&y);
    assert!(got[0].is_nan() && got[1].is_nan(), "{got:?}");
    assert_eq!(read(&argmax), vec![1.0, 0.0]);
    // PyTorch allows a dilated window whose taps all miss a 1-pixel input: −inf, no gradient.
    let s = Pool2d { dilation: [2, 1], ..pool2d(1, 1, [1, 1], [2, 1], [1, 1], [1, 0]) };
    assert_eq!(s.out_size("max_pool2d").unwrap(), [1, 1]);
    let (x, y, argmax) = (upload("x", &[7.0]), zeros("y", 1), zeros("argmax", 1));
    let forward = pool::max_pool2d(gpu, &s, &x, &y, &argmax).unwrap();
    gpu.run(&[forward, pool::max_pool2d_backward(gpu, &s, &upload("dy", &[1.0]), &argmax, &dx).unwrap()]).unwrap();
    assert_eq!((read(&y)[0], read(&argmax)[0], read(&dx)[0]), (f32::NEG_INFINITY, -1.0, 0.0));
    assert_eq!(reference::max_pool2d(&s, &[7.0]), (vec![f64::NEG_INFINITY], vec![-1.0]));
}

#[test]
fn pools_fold_grids_over_65535_workgroups() {
    // 4096² outputs and 4097² inputs: both passes have more than 65,535 workgroups of 256.
    let s = pool2d(1, 1, [4097, 4097], [2, 2], [1, 1], [0, 0]);
    assert!(s.output_len() > 65_535 * 256);
    let (x, dy) = (rand(1, s.input_len()), rand(2, s.output_len()));
    check_max("max_pool2d 4097x4097", s, &x, &dy);
    check_avg("avg_pool2d 4097x4097", s, Divisor::default(), &x, &dy);
}

#[test]
fn pools_sum_just_under_the_loop_limit_in_full() {
    // A 1 x 59,999 window is 60,000 loop iterations, just inside the launchers' budget and
    // near llvmpipe's silent 65,535: every tap must arrive, the max sits in the last one.
    let s = pool2d(1, 2, [1, 59_999], [1, 59_999], [1, 1], [0, 0]);
    let mut x = rand(5, s.input_len());
    x[59_998] = 2.0;
    x[2 * 59_999 - 1] = 3.0;
    let dy = [0.5, -2.0];
    check_max("max_pool2d 1x59999", s, &x, &dy);
    check_avg("avg_pool2d 1x59999", s, Divisor::default(), &x, &dy);
}

fn expect_err(result: kiln::Result<impl Sized>, needles: &[&str]) {
    let err = result.err().expect("must fail").to_string();
    assert!(needles.iter().all(|n| err.contains(n)), "{err:?} lacks one of {needles:?}");
}

#[test]
fn pools_refuse_windows_past_the_loop_limit_naming_kernel_length_and_limit() {
    let gpu = gpu();
    let s = pool2d(1, 1, [1, 60_000], [1, 60_000], [1, 1], [0, 0]);
    let (x, y, a) = (zeros("x", 60_000), zeros("y", 1), zeros("argmax", 1));
    expect_err(pool::max_pool2d(gpu, &s, &x, &y, &a), &["max_pool2d", "[1, 60000]", "60001 loop iterations", "60000"]);
    expect_err(pool::avg_pool2d(gpu, &s, Divisor::default(), &x, &y), &["avg_pool2d", "60001 loop iterations", "60000"]);
    // Backward loops over the windows that may cover a pixel: with a dilation of 60,000 at
    // stride 1, 60,000 windows along w (the forward's two taps are cheap).
    let s = Pool2d { dilation: [1, 60_000], ..pool2d(1, 1, [1, 120_000], [1, 2], [1, 1], [0, 0]) };
    let (x, y, a, dx) = (zeros("x", s.input_len()), zeros("y", s.output_len()), zeros("argmax", s.output_len()), zeros("dx", s.input_len()));
    pool::max_pool2d(gpu, &s, &x, &y, &a).unwrap();
    expect_err(pool::max_pool2d_backward(gpu, &s, &y, &a, &dx), &["max_pool2d_backward", "60001 loop iterations", "60000"]);
}

#[test]
fn pools_reject_bad_shapes_naming_the_op() {
    let gpu = gpu();
    let (x, y, a, d) = (zeros("x", 50), zeros("y", 50), zeros("argmax", 50), Divisor::default());
    // PyTorch: "pad should be at most half of effective kernel size".
    expect_err(pool::max_pool2d(gpu, &pool2d(1, 2, [5, 5], [3, 3], [1, 1], [2, 0]), &x, &y, &a), &["max_pool2d", "padding 2", "half the kernel 3"]);
    expect_err(pool::avg_pool2d(gpu, &pool2d(1, 2, [2, 5], [3, 3], [1, 1], [0, 0]), d, &x, &y), &["avg_pool2d", "spans 3", "only 2"]);
    let dilated = Pool2d { dilation: [2, 2], ..pool2d(1, 2, [5, 5], [2, 2], [1, 1], [0, 0]) };
    expect_err(pool::avg_pool2d(gpu, &dilated, d, &x, &y), &["avg_pool2d", "dilation"]);
    let s = pool2d(1, 2, [5, 5], [2, 2], [1, 1], [0, 0]);
    expect_err(pool::avg_pool2d(gpu, &s, Divisor { count_include_pad: true, divisor_override: Some(0) }, &x, &y), &["divisor_override"]);
    expect_err(pool::max_pool2d(gpu, &pool2d(1, 3, [5, 5], [2, 2], [2, 2], [0, 0]), &zeros("x", 74), &y, &a), &["max_pool2d", "input", "needs 75"]);
    expect_err(pool::max_pool2d_backward(gpu, &s, &zeros("dy", 31), &a, &x), &["max_pool2d_backward", "dy", "needs 32"]);
    expect_err(pool::max_pool2d(gpu, &pool2d(1, 1, [5, 5], [0, 2], [1, 1], [0, 0]), &x, &y, &a), &["max_pool2d", "positive"]);
}

#[test]
fn pool_reference_backward_matches_finite_differences() {
    let shapes = awkward_shapes().into_iter().take(6).chain(dilated_shapes());
    for (k, s) in shapes.enumerate() {
        let (x, dy) = (f64s(&rand(7 + k as u64, s.input_len())), f64s(&rand(70 + k as u64, s.output_len())));
        let name = s.describe();
        // Random inputs have no ties within the step, where max is differentiable.
        let (_, argmax) = reference::max_pool2d(&s, &x);
        let fd = finite_difference(|x| reference::max_pool2d(&s, x).0, &x, &dy);
        assert_grad_matches_fd(&format!("max_pool2d {name}"), &reference::max_pool2d_backward(&s, &dy, &argmax), &fd);
        if s.dilation == [1, 1] {
            for d in DIVISORS {
                let fd = finite_difference(|x| reference::avg_pool2d(&s, d, x), &x, &dy);
                assert_grad_matches_fd(&format!("avg_pool2d {name} {d:?}"), &reference::avg_pool2d_backward(&s, d, &dy), &fd);
            }
        }
    }
}
