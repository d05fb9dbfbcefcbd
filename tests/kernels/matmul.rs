use crate::support::*;
use kiln::kernels::matmul::{self, Linear, Matmul, MatmulVariant};
use kiln::reference::matmul as reference;
use std::sync::{Mutex, MutexGuard};

/// wgpu's GL backend holds one context lock across a submit and its wait, and panics when a
/// thread waits 6 s for it; run in parallel, the large cases here starve the others on
/// llvmpipe. So this module's GPU tests take turns.
pub fn one_at_a_time() -> MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::new(());
    TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

// A scalar, a single row, sizes that are no multiple of any block or tile (16, 64) nor of the
// workgroups, an exact fit, and one spanning several tiles in every direction; 77 rows end
// inside the second 8 of a windowed lane's 16.
const SHAPES: [(usize, usize, usize); 6] = [(1, 1, 1), (1, 7, 33), (33, 65, 17), (64, 64, 64), (77, 18, 40), (100, 129, 257)];
pub const TRANSPOSES: [(bool, bool); 4] = [(false, false), (true, false), (false, true), (true, true)];

/// Runs C = op(A)·op(B) (+ bias) (+ c0 when given, accumulating) on the GPU.
pub fn gpu_matmul(shape: &Matmul, a: &[f32], b: &[f32], bias: Option<&[f32]>, c0: Option<&[f32]>) -> Vec<f32> {
    let gpu = gpu();
    let (ab, bb) = (upload("a", a), upload("b", b));
    let biasb = bias.map(|v| upload("bias", v));
    let cb = match c0 {
        Some(c0) => upload("c", c0),
        None => zeros("c", shape.m * shape.n),
    };
    gpu.run(&matmul::matmul(gpu, shape, &ab, &bb, biasb.as_ref(), &cb).unwrap()).unwrap();
    read(&cb)
}

pub fn label(shape: &Matmul, bias: bool) -> String {
    let Matmul { m, n, k, trans_a, trans_b, variant, .. } = shape;
    format!("{variant:?} matmul m={m} n={n} k={k} trans_a={trans_a} trans_b={trans_b} bias={bias}")
}

fn matches_reference(variant: MatmulVariant) {
    let _turn = one_at_a_time();
    for (s, &(m, n, k)) in SHAPES.iter().enumerate() {
        let seed = 10 * s as u64;
        let (a, b, bias) = (rand(seed, m * k), rand(seed + 1, k * n), rand(seed + 2, n));
        for (trans_a, trans_b) in TRANSPOSES {
            let shape = Matmul { m, n, k, trans_a, trans_b, variant, ..Default::default() };
            for with_bias in [false, true] {
                let bias64 = with_bias.then(|| f64s(&bias));
                let want = reference::matmul(&f64s(&a), &f64s(&b), bias64.as_deref(), m, n, k, trans_a, trans_b);
                let got = gpu_matmul(&shape, &a, &b, with_bias.then_some(&bias[..]), None);
                assert_close(&label(&shape, with_bias), &got, &want, 1e-4);
            }
        }
    }
}

#[test]
fn simple_matmul_matches_reference_for_all_transposes_and_odd_shapes() {
    matches_reference(MatmulVariant::Simple);
}

#[test]
fn blocked_matmul_matches_reference_for_all_transposes_and_odd_shapes() {
    matches_reference(MatmulVariant::Blocked);
}

#[test]
fn tiled_matmul_matches_reference_for_all_transposes_and_odd_shapes() {
    matches_reference(MatmulVariant::Tiled);
}

#[test]
fn windowed_matmul_matches_reference_for_all_transposes_and_odd_shapes() {
    matches_reference(MatmulVariant::Windowed);
}

/// Whether this adapter runs matmul_window.wgsl: CPU adapters with subgroups of exactly 8
/// (lavapipe); elsewhere `Windowed` runs as `Blocked`.
fn runs_windows() -> bool {
    let gpu = gpu();
    gpu.info.device_type == wgpu::DeviceType::Cpu
        && gpu.has(wgpu::Features::SUBGROUP)
        && gpu.info.subgroup_min_size == 8
        && gpu.info.subgroup_max_size == 8
}

#[test]
fn windowed_matmul_runs_the_window_kernels_where_auto_picks_them() {
    let gpu = gpu();
    let (n, k) = (37, 19);
    // 70 rows: one block of 128 (16 rows per lane); 200: two blocks of 128, as few rows as
    // blocks of 64 pad to; 150: three blocks of 64, which pad less than two of 128.
    let cases: [(usize, &[&str]); 3] = [
        (70, &["pack16", "product16"]),
        (200, &["pack16", "product16", "product16"]),
        (150, &["pack", "product", "product", "product"]),
    ];
    for (m, entries) in cases {
        let (a, b, c) = (zeros("a", m * k), zeros("b", k * n), zeros("c", m * n));
        let kernels = |variant| -> Vec<String> {
            let shape = Matmul { m, n, k, variant, ..Default::default() };
            matmul::matmul(gpu, &shape, &a, &b, None, &c).unwrap().iter().map(|d| d.kernel.to_string()).collect()
        };
        let want: Vec<String> = if runs_windows() {
            entries.iter().map(|e| format!("matmul_window.{e}")).collect()
        } else {
            vec!["matmul.blocked".to_string()]
        };
        assert_eq!(kernels(MatmulVariant::Windowed), want, "m={m}");
        if gpu.info.device_type == wgpu::DeviceType::Cpu {
            assert_eq!(kernels(MatmulVariant::Auto), want, "Auto on a CPU adapter, m={m}");
        }
    }
}

#[test]
fn windowed_matmul_sums_chunks_of_long_k_with_bias_and_accumulation() {
    let _turn = one_at_a_time();
    let gpu = gpu();
    // Three column groups (16, 16, 5), and k = 4133 in chunks: 70 rows, one block of 128
    // and five chunks of at most 1024 steps (832 x 4 + 805); 150 rows, three blocks of 64
    // (64, 64, 22) and three chunks of at most 2048 (1384 x 2 + 1365).
    let (n, k) = (37, 2 * 2048 + 37);
    for (m, blocks, chunks) in [(70, 1, 5), (150, 3, 3)] {
        let (a, b, bias, c0) = (rand(31, m * k), rand(32, k * n), rand(33, n), rand(34, m * n));
        for (trans_a, trans_b) in [(false, true), (true, false)] {
            for accumulate in [false, true] {
                let shape = Matmul { m, n, k, trans_a, trans_b, accumulate, variant: MatmulVariant::Windowed };
                let (ab, bb, biasb, cb) = (upload("a", &a), upload("b", &b), upload("bias", &bias), upload("c", &c0));
                let dispatches = matmul::matmul(gpu, &shape, &ab, &bb, Some(&biasb), &cb).unwrap();
                if runs_windows() {
                    assert_eq!(dispatches.len(), 1 + blocks * chunks, "m={m}: pack + {blocks} row blocks x {chunks} chunks");
                }
                gpu.run(&dispatches).unwrap();
                let product = reference::matmul(&f64s(&a), &f64s(&b), Some(&f64s(&bias)), m, n, k, trans_a, trans_b);
                let want: Vec<f64> = product.iter().zip(&c0).map(|(p, &c)| if accumulate { p + c as f64 } else { *p }).collect();
                assert_close(&format!("{} accumulate={accumulate}", label(&shape, true)), &read(&cb), &want, 1e-4);
            }
        }
    }
}

#[test]
fn every_matmul_variant_sums_k_far_past_the_loop_limit() {
    let _turn = one_at_a_time();
    // llvmpipe ends an invocation silently after 65,535 loop iterations; k = 150,001 is over
    // twice that. A [k, 5] @ [5, 3] product's weight gradient Aᵀ·dY is this shape with
    // trans_a (the case that came back 19x too small). Few rows and columns keep it quick.
    let (m, n, k) = (5, 3, 150_001);
    let (a, b, bias, c0) = (rand(41, m * k), rand(42, k * n), rand(43, n), rand(44, m * n));
    for variant in MatmulVariant::ALL {
        for (trans_a, trans_b) in TRANSPOSES {
            // Bias and accumulation go with the first slice only; check them on one transpose.
            let accumulate = trans_a && !trans_b;
            let shape = Matmul { m, n, k, trans_a, trans_b, accumulate, variant };
            let product = reference::matmul(&f64s(&a), &f64s(&b), Some(&f64s(&bias)), m, n, k, trans_a, trans_b);
            let want: Vec<f64> = product.iter().zip(&c0).map(|(p, &c)| if accumulate { p + c as f64 } else { *p }).collect();
            let got = gpu_matmul(&shape, &a, &b, Some(&bias), accumulate.then_some(&c0[..]));
            assert_close(&format!("{} accumulate={accumulate}", label(&shape, true)), &got, &want, 1e-4);
        }
    }
}

#[test]
fn matmul_accumulates_into_existing_output() {
    let _turn = one_at_a_time();
    let (m, n, k) = (33, 65, 17);
    let (a, b, bias, c0) = (rand(1, m * k), rand(2, k * n), rand(3, n), rand(4, m * n));
    for variant in MatmulVariant::ALL {
        for (trans_a, trans_b) in TRANSPOSES {
            let shape = Matmul { m, n, k, trans_a, trans_b, accumulate: true, variant };
            let product = reference::matmul(&f64s(&a), &f64s(&b), Some(&f64s(&bias)), m, n, k, trans_a, trans_b);
            let want: Vec<f64> = product.iter().zip(&c0).map(|(p, &c)| p + c as f64).collect();
            let got = gpu_matmul(&shape, &a, &b, Some(&bias), Some(&c0));
            assert_close(&format!("{} accumulate", label(&shape, true)), &got, &want, 1e-4);
        }
    }
}

#[test]
fn matmul_grids_fold_past_65535_workgroups() {
    let _turn = one_at_a_time();
    let gpu = gpu();
    // One column, so each variant needs just past 65,535 workgroups' worth of rows: 64 per
    // simple workgroup, 8 blocks of 16 per blocked workgroup, 64 per tile. The windowed
    // product's grid runs over columns, 16 per workgroup: one row; its `pack` (the first
    // dispatch) writes 64 window elements per workgroup: 32 row blocks of 128 x 2 chunks of
    // 520 steps x 128.
    let mut cases = vec![(MatmulVariant::Simple, 4_200_000, 1, 1), (MatmulVariant::Blocked, 8_400_000, 1, 1)];
    // On a CPU adapter the tiled case runs 16.8M mostly idle invocations (~13 s on lavapipe);
    // its fold is the same `flat_group` line as the other two.
    if gpu.info.device_type != wgpu::DeviceType::Cpu {
        cases.push((MatmulVariant::Tiled, 4_200_000, 1, 1));
    }
    if runs_windows() {
        cases.push((MatmulVariant::Windowed, 1, 1_050_000, 1));
        cases.push((MatmulVariant::Windowed, 4096, 1, 1032));
    }
    for (variant, m, n, k) in cases {
        let (a, b, bias) = (rand(5, m * k), rand(6, k * n), rand(7, n));
        let shape = Matmul { m, n, k, variant, ..Default::default() };
        let (ab, bb, biasb, cb) = (upload("a", &a), upload("b", &b), upload("bias", &bias), zeros("c", m * n));
        let d = matmul::matmul(gpu, &shape, &ab, &bb, Some(&biasb), &cb).unwrap();
        let folded = if n == 1 && variant == MatmulVariant::Windowed { &d[0] } else { d.last().expect("a dispatch") };
        assert!(folded.workgroups[1] > 1, "{variant:?} m={m} n={n} k={k}: grid {:?} of {} is not folded", folded.workgroups, folded.kernel);
        gpu.run(&d).unwrap();
        let want = reference::matmul(&f64s(&a), &f64s(&b), Some(&f64s(&bias)), m, n, k, false, false);
        assert_close(&label(&shape, true), &read(&cb), &want, if k == 1 { 1e-6 } else { 1e-5 });
    }
}

#[test]
fn matmul_rejects_bad_shapes_naming_op_and_shapes() {
    let _turn = one_at_a_time();
    let gpu = gpu();
    let (a, b, c) = (zeros("a", 2 * 4), zeros("b", 4 * 3), zeros("c", 2 * 3));
    let err = |shape: Matmul, bias: Option<&kiln::gpu::Buffer>, c: &kiln::gpu::Buffer| {
        matmul::matmul(gpu, &shape, &a, &b, bias, c).err().expect("must fail").to_string()
    };
    // B holds k=4 rows but the product asks for k=5.
    let e = err(Matmul { m: 1, n: 3, k: 5, ..Default::default() }, None, &c);
    assert!(e.contains("matmul m=1 n=3 k=5") && e.contains("B [5, 3]") && e.contains("needs 15"), "{e}");
    let e = err(Matmul { m: 2, n: 4, k: 4, trans_b: true, ..Default::default() }, None, &c);
    assert!(e.contains("matmul m=2 n=4 k=4 (A·Bᵀ)") && e.contains("B [4, 4]"), "{e}");
    let short = zeros("c", 5);
    let e = err(Matmul { m: 2, n: 3, k: 4, ..Default::default() }, None, &short);
    assert!(e.contains("matmul m=2 n=3 k=4") && e.contains("C [2, 3]") && e.contains("holds 5"), "{e}");
    let bias = zeros("bias", 2);
    let e = err(Matmul { m: 2, n: 3, k: 4, ..Default::default() }, Some(&bias), &c);
    assert!(e.contains("matmul") && e.contains("bias [3]"), "{e}");
}

struct LinearCase {
    shape: Linear,
    x: Vec<f32>,
    w: Vec<f32>,
    b: Vec<f32>,
    dy: Vec<f32>,
}

impl LinearCase {
    fn new(rows: usize, in_features: usize, out_features: usize, variant: MatmulVariant) -> LinearCase {
        LinearCase {
            shape: Linear { rows, in_features, out_features, variant },
            x: rand(11, rows * in_features),
            w: rand(12, out_features * in_features),
            b: rand(13, out_features),
            dy: rand(14, rows * out_features),
        }
    }
}

#[test]
fn linear_forward_and_backward_match_reference() {
    let _turn = one_at_a_time();
    let gpu = gpu();
    for variant in MatmulVariant::ALL {
        let case = LinearCase::new(37, 45, 19, variant);
        let Linear { rows, in_features: i, out_features: o, .. } = case.shape;
        let (x, w, b, dy) = (upload("x", &case.x), upload("w", &case.w), upload("b", &case.b), upload("dy", &case.dy));
        let (y, dx, dw, db) = (zeros("y", rows * o), zeros("dx", rows * i), zeros("dw", o * i), zeros("db", o));
        let s = &case.shape;
        let mut dispatches = matmul::linear_forward(gpu, s, &x, &w, Some(&b), &y).unwrap();
        dispatches.extend(matmul::linear_backward_input(gpu, s, &dy, &w, &dx).unwrap());
        dispatches.extend(matmul::linear_backward_weight(gpu, s, &dy, &x, &dw, false).unwrap());
        dispatches.extend(matmul::linear_backward_bias(gpu, s, &dy, &db, false).unwrap());
        gpu.run(&dispatches).unwrap();
        let (x64, w64, b64, dy64) = (f64s(&case.x), f64s(&case.w), f64s(&case.b), f64s(&case.dy));
        let want_y = reference::linear_forward(&x64, &w64, Some(&b64), rows, i, o);
        let (want_dx, want_dw, want_db) = reference::linear_backward(&x64, &w64, &dy64, rows, i, o);
        assert_close(&format!("{variant:?} linear forward"), &read(&y), &want_y, 1e-4);
        assert_close(&format!("{variant:?} linear dx"), &read(&dx), &want_dx, 1e-4);
        assert_close(&format!("{variant:?} linear dw"), &read(&dw), &want_dw, 1e-4);
        assert_close(&format!("{variant:?} linear db"), &read(&db), &want_db, 1e-4);

        // A second backward with accumulation doubles the parameter gradients.
        let mut dispatches = matmul::linear_backward_weight(gpu, s, &dy, &x, &dw, true).unwrap();
        dispatches.extend(matmul::linear_backward_bias(gpu, s, &dy, &db, true).unwrap());
        gpu.run(&dispatches).unwrap();
        let twice = |v: &[f64]| v.iter().map(|x| 2.0 * x).collect::<Vec<_>>();
        assert_close(&format!("{variant:?} linear dw accumulated"), &read(&dw), &twice(&want_dw), 1e-4);
        assert_close(&format!("{variant:?} linear db accumulated"), &read(&db), &twice(&want_db), 1e-4);
    }
}

#[test]
fn linear_bias_gradient_stays_accurate_over_100k_rows() {
    let _turn = one_at_a_time();
    let gpu = gpu();
    let (rows, out) = (100_000, 8);
    // Values in [0.5, 1.5) make column sums near 1e5, where one sequential f32 chain of adds
    // typically loses a few 1e-6 relative; the blocked sum stays near 1e-7.
    let dy: Vec<f32> = rand(21, rows * out).iter().map(|v| 1.0 + 0.5 * v).collect();
    let shape = Linear { rows, in_features: 1, out_features: out, ..Default::default() };
    let (dyb, db) = (upload("dy", &dy), zeros("db", out));
    gpu.run(&matmul::linear_backward_bias(gpu, &shape, &dyb, &db, false).unwrap()).unwrap();
    let want: Vec<f64> = (0..out).map(|j| (0..rows).map(|r| dy[r * out + j] as f64).sum()).collect();
    assert_close("linear db over 100k rows", &read(&db), &want, 1e-6);
}

#[test]
fn linear_gradients_sum_rows_far_past_the_loop_limit() {
    let _turn = one_at_a_time();
    let gpu = gpu();
    // 1.6M rows: each of column_sum's 16 row lanes would walk 100,000 of them, past llvmpipe's
    // 65,535 loop iterations; dW = dYᵀ·X reduces over all rows. Both are split into slices.
    let case = LinearCase::new(1_600_001, 2, 3, MatmulVariant::Auto);
    let Linear { rows, in_features: i, out_features: o, .. } = case.shape;
    let (x, dy, dw, db) = (upload("x", &case.x), upload("dy", &case.dy), zeros("dw", o * i), zeros("db", o));
    let bias = matmul::linear_backward_bias(gpu, &case.shape, &dy, &db, false).unwrap();
    assert!(bias.len() >= 3, "{} column_sum dispatches for {rows} rows", bias.len());
    let mut dispatches = matmul::linear_backward_weight(gpu, &case.shape, &dy, &x, &dw, false).unwrap();
    dispatches.extend(bias);
    gpu.run(&dispatches).unwrap();
    let (x64, w64, dy64) = (f64s(&case.x), f64s(&case.w), f64s(&case.dy));
    let (_, want_dw, want_db) = reference::linear_backward(&x64, &w64, &dy64, rows, i, o);
    assert_close("linear dw over 1.6M rows", &read(&dw), &want_dw, 1e-4);
    assert_close("linear db over 1.6M rows", &read(&db), &want_db, 1e-4);
}

#[test]
fn linear_backward_reference_matches_finite_differences() {
    let (rows, i, o) = (3, 4, 5);
    let case = LinearCase::new(rows, i, o, MatmulVariant::Auto);
    let (x, w, b, dy) = (f64s(&case.x), f64s(&case.w), f64s(&case.b), f64s(&case.dy));
    let (dx, dw, db) = reference::linear_backward(&x, &w, &dy, rows, i, o);
    let fd_x = finite_difference(|x| reference::linear_forward(x, &w, Some(&b), rows, i, o), &x, &dy);
    let fd_w = finite_difference(|w| reference::linear_forward(&x, w, Some(&b), rows, i, o), &w, &dy);
    let fd_b = finite_difference(|b| reference::linear_forward(&x, &w, Some(b), rows, i, o), &b, &dy);
    assert_grad_matches_fd("linear dx", &dx, &fd_x);
    assert_grad_matches_fd("linear dw", &dw, &fd_w);
    assert_grad_matches_fd("linear db", &db, &fd_b);
}

#[test]
fn linear_rejects_bad_shapes_naming_op_and_shapes() {
    let _turn = one_at_a_time();
    let gpu = gpu();
    let shape = Linear { rows: 2, in_features: 4, out_features: 3, ..Default::default() };
    let (x, y, dy, db) = (zeros("x", 2 * 4), zeros("y", 2 * 3), zeros("dy", 2 * 3), zeros("db", 3));
    // A weight for in_features=3, not 4.
    let w = zeros("w", 3 * 3);
    let e = matmul::linear_forward(gpu, &shape, &x, &w, None, &y).err().expect("must fail").to_string();
    assert!(e.contains("linear forward") && e.contains("in_features=4") && e.contains("weight [3, 4]"), "{e}");
    let e = matmul::linear_backward_input(gpu, &shape, &dy, &w, &x).err().expect("must fail").to_string();
    assert!(e.contains("linear backward_input") && e.contains("weight [3, 4]"), "{e}");
    let short = zeros("dy", 5);
    let e = matmul::linear_backward_bias(gpu, &shape, &short, &db, false).err().expect("must fail").to_string();
    assert!(e.contains("linear backward_bias") && e.contains("dy [2, 3]"), "{e}");
}
