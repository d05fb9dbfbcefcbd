//! DiffAugment: the kernels against the f64 reference at awkward shapes (one sample of 3×160×160
//! is past llvmpipe's 65,536-iteration loop limit), backward against finite differences and as
//! the exact transpose, whole graphs (second order included) against PyTorch's
//! DiffAugment_pytorch.py (fixtures/augment.safetensors from scripts/augment_fixtures.py),
//! determinism per seed and step, and clear errors for bad policies and shapes.

use crate::support::*;
use kiln::graph::ops::{AugmentColor, AugmentShift, Mul, Scale, Sum};
use kiln::graph::{Graph, Program, Store, Tensor};
use kiln::kernels::augment::{self as k, Images, PARAMS_PER_SAMPLE};
use kiln::kernels::reduce::alloc_scratch;
use kiln::nn::augment::{diff_augment, diff_augment_with, parse_policy, Policy};
use kiln::reference::augment as reference;
use safetensors::SafeTensors;

/// Batch 1, odd sizes, MNIST's, a non-square one, a 1×1 image (no translation, all cut), and
/// one sample of 76,800 values.
const SHAPES: [[usize; 4]; 6] = [[1, 1, 13, 11], [2, 3, 28, 28], [3, 2, 7, 5], [2, 3, 9, 16], [2, 1, 1, 1], [2, 3, 160, 160]];

fn images([n, c, h, w]: [usize; 4]) -> Images {
    Images { n, c, h, w }
}

/// Uniforms in [0, 1) for `n` samples, the integer draws of the first sample at the bottom of
/// their ranges and those of the last at the top (u just under 1).
fn draws(seed: u64, n: usize) -> Vec<f32> {
    let mut d: Vec<f32> = rand(seed, n * PARAMS_PER_SAMPLE).iter().map(|v| (v + 1.0) / 2.0).collect();
    d[3..PARAMS_PER_SAMPLE].fill(0.0);
    if n > 1 {
        d[(n - 1) * PARAMS_PER_SAMPLE + 3..].fill(1.0 - f32::EPSILON / 2.0);
    }
    d
}

fn gpu_color(shape: [usize; 4], backward: bool, x: &[f32], d: &[f32]) -> Vec<f32> {
    let gpu = gpu();
    let (xb, db, yb) = (upload("x", x), upload("draws", d), zeros("y", x.len()));
    let scratch = alloc_scratch(gpu, "color", &k::color_scratch_lens(images(shape))).unwrap();
    gpu.run(&k::color(gpu, images(shape), backward, &xb, &db, &yb, &scratch).unwrap()).unwrap();
    read(&yb)
}

fn gpu_shift(shape: [usize; 4], translation: bool, cutout: bool, backward: bool, x: &[f32], d: &[f32]) -> Vec<f32> {
    let gpu = gpu();
    let (xb, db, yb) = (upload("x", x), upload("draws", d), zeros("y", x.len()));
    gpu.run(&[k::shift(gpu, images(shape), translation, cutout, backward, &xb, &db, &yb).unwrap()]).unwrap();
    read(&yb)
}

const SHIFTS: [(bool, bool); 3] = [(true, false), (false, true), (true, true)];

#[test]
fn color_forward_and_backward_match_reference_at_awkward_shapes() {
    for (i, shape) in SHAPES.into_iter().enumerate() {
        let len = shape.iter().product();
        let (x, d) = (rand(10 + i as u64, len), draws(20 + i as u64, shape[0]));
        for backward in [false, true] {
            let want = reference::color(&f64s(&x), shape, &f64s(&d), !backward);
            assert_close(&format!("color {shape:?} backward {backward}"), &gpu_color(shape, backward, &x, &d), &want, 1e-6);
        }
    }
}

#[test]
fn color_means_over_long_rows_take_the_reductions_extra_passes_in_a_program_too() {
    // Rows of 5,000 (the image rows' means) and samples of 4,500 rows (the samples' means) both
    // pass reduce.wgsl's 4,096-long chunk, so its scratch buffers come into play.
    let gpu = gpu();
    for shape in [[1, 2, 3, 5000], [2, 1, 4500, 3]] {
        let len = shape.iter().product();
        let (x, d) = (rand(120, len), draws(121, shape[0]));
        assert!(!k::color_scratch_lens(images(shape))[2..].is_empty(), "{shape:?} needs no extra pass");
        let want = reference::color(&f64s(&x), shape, &f64s(&d), true);
        assert_close(&format!("color {shape:?}"), &gpu_color(shape, false, &x, &d), &want, 1e-6);

        let mut g = Graph::new();
        let (xt, dt) = (g.input("x", &shape), g.input("draws", &[shape[0], PARAMS_PER_SAMPLE]));
        let y = diff_augment_with(&mut g, xt, dt, &[Policy::Color]).unwrap();
        let mut store = Store::new();
        let program = Program::compile(gpu, &g, &mut store, &[y], &[]).unwrap();
        gpu.write(&store.input_buffer("x").unwrap().buffer, &x).unwrap();
        gpu.write(&store.input_buffer("draws").unwrap().buffer, &d).unwrap();
        program.run(gpu).unwrap();
        assert_close(&format!("color {shape:?} in a program"), &gpu.read(program.buffer(y).unwrap()).unwrap(), &want, 1e-6);
    }
}

#[test]
fn shift_forward_and_backward_match_reference_for_translation_cutout_and_both() {
    for (i, shape) in SHAPES.into_iter().enumerate() {
        let len = shape.iter().product();
        let (x, d) = (rand(30 + i as u64, len), draws(40 + i as u64, shape[0]));
        for (translation, cutout) in SHIFTS {
            let want = reference::shift(&f64s(&x), shape, &f64s(&d), translation, cutout);
            let got = gpu_shift(shape, translation, cutout, false, &x, &d);
            // A gather: exact.
            assert_eq!(got, want.iter().map(|&v| v as f32).collect::<Vec<_>>(), "shift {shape:?} t {translation} c {cutout}");
            let want = reference::shift_backward(&f64s(&x), shape, &f64s(&d), translation, cutout);
            let got = gpu_shift(shape, translation, cutout, true, &x, &d);
            assert_eq!(got, want.iter().map(|&v| v as f32).collect::<Vec<_>>(), "shift_backward {shape:?} t {translation} c {cutout}");
        }
    }
}

#[test]
fn translation_moves_by_whole_pixels_within_an_eighth_and_cutout_zeroes_a_half_square() {
    // 16×16: shifts of at most 2, a cutout square of 8×8 (clipped at the border).
    let shape = [64, 1, 16, 16];
    let x = vec![1.0f32; 64 * 256];
    let d = draws(50, 64);
    let translated = gpu_shift(shape, true, false, false, &x, &d);
    let cut = gpu_shift(shape, false, true, false, &x, &d);
    for s in 0..64 {
        let zeros = |v: &[f32]| v[s * 256..(s + 1) * 256].iter().filter(|&&v| v == 0.0).count();
        // A shift by (a, b) zeroes 16(|a| + |b|) − |a||b| pixels, |a|, |b| ≤ 2.
        assert!(zeros(&translated) <= 16 * 4 - 4, "sample {s}: {} zeros", zeros(&translated));
        let c = zeros(&cut);
        assert!(c > 0 && c <= 64, "sample {s}: cutout zeroed {c} pixels");
    }
    // Both extremes appear: the first sample's shift is (−2, −2), the last's (2, 2).
    assert_eq!(translated[..2 * 16 + 2].iter().filter(|&&v| v == 0.0).count(), 2 * 16 + 2);
    assert_eq!(translated[63 * 256 + 14 * 16..64 * 256].iter().filter(|&&v| v == 0.0).count(), 2 * 16);
}

#[test]
fn reference_backward_matches_finite_differences() {
    let shape = [2, 3, 5, 4];
    let (x, d, dy) = (f64s(&rand(60, 120)), f64s(&draws(61, 2)), f64s(&rand(62, 120)));
    let numeric = finite_difference(|x| reference::color(x, shape, &d, true), &x, &dy);
    assert_grad_matches_fd("color", &reference::color(&dy, shape, &d, false), &numeric);
    for (translation, cutout) in SHIFTS {
        let numeric = finite_difference(|x| reference::shift(x, shape, &d, translation, cutout), &x, &dy);
        let analytic = reference::shift_backward(&dy, shape, &d, translation, cutout);
        assert_grad_matches_fd(&format!("shift t {translation} c {cutout}"), &analytic, &numeric);
    }
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&a, &b)| a as f64 * b as f64).sum()
}

fn assert_transpose(name: &str, jx_y: f64, x_jty: f64) {
    let err = (jx_y - x_jty).abs() / jx_y.abs().max(x_jty.abs()).max(f64::MIN_POSITIVE);
    eprintln!("{name}: <Jx, y> = {jx_y:.6}, <x, J^T y> = {x_jty:.6}, relative difference {err:.1e}");
    assert!(err < 1e-5, "{name}: <Jx, y> = {jx_y}, <x, J^T y> = {x_jty}");
}

#[test]
fn backward_kernels_are_the_exact_transpose_on_random_vectors() {
    for (i, shape) in SHAPES.into_iter().enumerate() {
        let len = shape.iter().product();
        let (x, y, d) = (rand(70 + i as u64, len), rand(80 + i as u64, len), draws(90 + i as u64, shape[0]));
        // Color is affine: J x = color(x) − color(0).
        let offset = gpu_color(shape, false, &vec![0.0; len], &d);
        let jx: Vec<f32> = gpu_color(shape, false, &x, &d).iter().zip(&offset).map(|(a, b)| a - b).collect();
        assert_transpose(&format!("color {shape:?}"), dot(&jx, &y), dot(&x, &gpu_color(shape, true, &y, &d)));
        for (translation, cutout) in SHIFTS {
            let jx = gpu_shift(shape, translation, cutout, false, &x, &d);
            let jty = gpu_shift(shape, translation, cutout, true, &y, &d);
            assert_transpose(&format!("shift {shape:?} t {translation} c {cutout}"), dot(&jx, &y), dot(&x, &jty));
        }
    }
}

/// `name` of the fixture as f32 values.
fn fixture_tensor(st: &SafeTensors, name: &str) -> Vec<f32> {
    let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    t.data().chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

fn max_abs(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    got.iter().zip(want).map(|(&g, &w)| (g as f64 - w as f64).abs()).fold(0.0, f64::max)
}

/// y = augment(x), dx = d sum(y · dy)/dx, and d (½|dx|²)/d dy through dx's graph.
struct Augmented {
    y: Tensor,
    dx: Tensor,
    jjt_dy: Tensor,
}

fn augmented_with_gradients(g: &mut Graph, shape: &[usize], policy: &[Policy]) -> Augmented {
    let (x, draws, dy) = (g.input("x", shape), g.input("draws", &[shape[0], PARAMS_PER_SAMPLE]), g.input("dy", shape));
    let y = diff_augment_with(g, x, draws, policy).unwrap();
    let weighted = g.apply1(Mul, &[y, dy], "loss").unwrap();
    let loss = g.apply1(Sum { all: true, mean: false }, &[weighted], "loss").unwrap();
    let dx = g.backward(loss, &[x]).unwrap()[0].unwrap();
    let squares = g.apply1(Mul, &[dx, dx], "r1").unwrap();
    let half = g.apply1(Sum { all: true, mean: false }, &[squares], "r1").unwrap();
    let half = g.apply1(Scale { alpha: 0.5 }, &[half], "r1").unwrap();
    let jjt_dy = g.backward(half, &[dy]).unwrap()[0].unwrap();
    Augmented { y, dx, jjt_dy }
}

#[test]
fn augmented_outputs_gradients_and_second_order_match_pytorch() {
    let gpu = gpu();
    let bytes = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/augment.safetensors")).expect("fixtures/augment.safetensors");
    let st = SafeTensors::deserialize(&bytes).unwrap();
    for case in ["odd", "mnist", "wide"] {
        let shape = st.tensor(&format!("{case}/x")).unwrap().shape().to_vec();
        for text in ["color", "translation", "cutout", "color,translation,cutout"] {
            let mut g = Graph::new();
            let a = augmented_with_gradients(&mut g, &shape, &parse_policy(text).unwrap());
            let mut store = Store::new();
            let program = Program::compile(gpu, &g, &mut store, &[a.y, a.dx, a.jjt_dy], &[]).unwrap();
            for input in ["x", "draws", "dy"] {
                gpu.write(&store.input_buffer(input).unwrap().buffer, &fixture_tensor(&st, &format!("{case}/{input}"))).unwrap();
            }
            program.run(gpu).unwrap();
            for (what, t) in [("y", a.y), ("dx", a.dx), ("jjt_dy", a.jjt_dy)] {
                let want = fixture_tensor(&st, &format!("{case}/{text}/{what}"));
                let err = max_abs(&gpu.read(program.buffer(t).unwrap()).unwrap(), &want);
                eprintln!("{case} {text} {what}: max |kiln − torch| {err:.1e}");
                assert!(err <= 1e-5, "{case} {text} {what}: max |kiln − torch| {err:e}");
            }
        }
    }
}

#[test]
fn the_graph_matches_its_cpu_reference_through_second_order() {
    let gpu = gpu();
    let shape = [2, 3, 13, 11];
    let len = 2 * 3 * 13 * 11;
    let mut g = Graph::new();
    let a = augmented_with_gradients(&mut g, &shape, &Policy::ALL);
    let mut store = Store::new();
    let program = Program::compile(gpu, &g, &mut store, &[a.y, a.dx, a.jjt_dy], &[]).unwrap();
    let values = [("x", rand(100, len)), ("draws", draws(101, 2)), ("dy", rand(102, len))];
    let mut leaves = Vec::new();
    for (name, v) in &values {
        gpu.write(&store.input_buffer(name).unwrap().buffer, v).unwrap();
        let t = (0..g.tensors.len()).map(Tensor::from_index).find(|&t| g.info(t).name == *name).unwrap();
        leaves.push((t, f64s(v)));
    }
    program.run(gpu).unwrap();
    let want = g.evaluate_reference(&leaves).unwrap();
    for (what, t) in [("y", a.y), ("dx", a.dx), ("jjt_dy", a.jjt_dy)] {
        assert_close(what, &gpu.read(program.buffer(t).unwrap()).unwrap(), &want[t.index()].as_ref().unwrap().1, 1e-6);
    }
}

/// A graph augmenting a [4, 3, 12, 12] input `x` with every policy from stream `seed`.
fn seeded_graph(seed: u64) -> (Graph, Tensor, Tensor) {
    let mut g = Graph::new();
    let x = g.input("x", &[4, 3, 12, 12]);
    let y = diff_augment(&mut g, x, &Policy::ALL, seed).unwrap();
    (g, x, y)
}

fn seeded(seed: u64) -> (Program, Store, Tensor) {
    let gpu = gpu();
    let (g, _, y) = seeded_graph(seed);
    let mut store = Store::new();
    let program = Program::compile(gpu, &g, &mut store, &[y], &[]).unwrap();
    gpu.write(&store.input_buffer("x").unwrap().buffer, &rand(110, 4 * 3 * 144)).unwrap();
    (program, store, y)
}

#[test]
fn diff_augment_draws_from_its_stream_as_the_cpu_reference_does() {
    // The reference runs random fills at step 0.
    let (g, x, y) = seeded_graph(7);
    let (program, _store, _) = seeded(7);
    let want = g.evaluate_reference(&[(x, f64s(&rand(110, 4 * 3 * 144)))]).unwrap();
    assert_close("diff_augment at step 0", &at_step(&program, y, 0), &want[y.index()].as_ref().unwrap().1, 1e-6);
}

fn at_step(program: &Program, y: Tensor, step: u64) -> Vec<f32> {
    let gpu = gpu();
    program.set_step(gpu, step).unwrap();
    program.run(gpu).unwrap();
    gpu.read(program.buffer(y).unwrap()).unwrap()
}

#[test]
fn the_same_seed_and_step_augment_bit_identically_and_other_steps_or_seeds_differ() {
    let (program, _store, y) = seeded(7);
    let first = at_step(&program, y, 5);
    let next = at_step(&program, y, 6);
    assert_eq!(at_step(&program, y, 5), first, "step 5 replayed");
    assert_ne!(next, first, "steps 5 and 6 drew the same augmentation");
    let (other, _other_store, y_other) = seeded(8);
    assert_eq!(at_step(&other, y_other, 5).len(), first.len());
    assert_ne!(at_step(&other, y_other, 5), first, "seeds 7 and 8 drew the same augmentation");
    // A second program of the same seed (a resumed run) draws what the first drew.
    let (again, _again_store, y_again) = seeded(7);
    assert_eq!(at_step(&again, y_again, 6), next);
}

#[test]
fn a_policy_parses_in_any_order_and_applies_color_translation_cutout() {
    let all = vec![Policy::Color, Policy::Translation, Policy::Cutout];
    assert_eq!(parse_policy("translation,cutout,color").unwrap(), all);
    assert_eq!(parse_policy("cutout, color ,translation,color").unwrap(), all);
    assert_eq!(parse_policy("translation").unwrap(), vec![Policy::Translation]);
    assert_eq!(parse_policy("").unwrap(), vec![]);
    // The graph applies color before the shift whatever order the slice gives.
    let mut g = Graph::new();
    let x = g.input("x", &[2, 3, 8, 8]);
    let d = g.input("draws", &[2, PARAMS_PER_SAMPLE]);
    let before = g.nodes.len();
    diff_augment_with(&mut g, x, d, &[Policy::Cutout, Policy::Color]).unwrap();
    let names: Vec<&str> = g.nodes[before..].iter().map(|n| n.op.name()).collect();
    assert_eq!(names, ["diff_augment_color", "diff_augment_shift"]);
}

#[test]
fn unknown_policies_and_shapes_the_ops_cannot_take_are_clear_errors() {
    let err = parse_policy("translation,zoom").unwrap_err().to_string();
    assert!(err.contains("\"zoom\"") && err.contains("color, translation, cutout"), "{err}");
    assert!(parse_policy("color,,cutout").is_err());

    let mut g = Graph::new();
    let flat = g.input("flat", &[2, 784]);
    let err = diff_augment(&mut g, flat, &Policy::ALL, 1).unwrap_err().to_string();
    assert!(err.contains("diff_augment") && err.contains("4-D") && err.contains("[2, 784]"), "{err}");

    let x = g.input("x", &[2, 3, 8, 8]);
    let wrong = g.input("draws", &[2, 3]);
    let err = diff_augment_with(&mut g, x, wrong, &[Policy::Cutout]).unwrap_err().to_string();
    assert!(err.contains("diff_augment_shift") && err.contains("[2, 7]") && err.contains("[2, 3]"), "{err}");

    let empty = g.input("empty", &[2, 3, 0, 8]);
    let d = g.input("d", &[2, PARAMS_PER_SAMPLE]);
    let err = g.apply1(AugmentShift { translation: true, cutout: false, backward: false }, &[empty, d], "aug").unwrap_err().to_string();
    assert!(err.contains("empty"), "{err}");

    // Past llvmpipe's loop limit: 2 · 6,001 · 5 channel iterations per invocation.
    let deep = g.input("deep", &[1, 6_001, 1, 1]);
    let d1 = g.input("d1", &[1, PARAMS_PER_SAMPLE]);
    let err = g.apply1(AugmentColor { backward: false }, &[deep, d1], "aug").unwrap_err().to_string();
    assert!(err.contains("diff_augment_color") && err.contains("60010 loop iterations"), "{err}");
    let fine = g.input("fine", &[1, 6_000, 1, 1]);
    assert!(g.apply1(AugmentColor { backward: false }, &[fine, d1], "aug").is_ok());
}
