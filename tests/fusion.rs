//! Activations fused into the tile engine's epilogue (graph::fuse, gemm.wgsl's `store4`), on
//! this adapter with the tile engine forced, as `Auto` picks it on GPUs: fused and unfused
//! graphs against the f64 CPU reference at awkward shapes (odd sizes, batch 1, sums split over
//! dispatches, every activation, with and without bias), what is fused and what is not, the
//! y-based backward of relu and leaky_relu at exactly 0, finite differences through a fused
//! pair, and whole training steps fused against unfused.

#[path = "common/mod.rs"]
mod common;
#[path = "kernels/support.rs"]
#[allow(dead_code)]
mod support;

use support::{f64s, rand};

/// The device support.rs's helpers open (this file's own devices are below).
fn options() -> GpuOptions {
    GpuOptions::default()
}

use kiln::gpu::{Gpu, GpuOptions, Kernels};
use kiln::graph::ops::{Act, Activation, Add, Conv2d, ConvTranspose2d, Linear, Mul, Sum};
use kiln::graph::{without_fusion, Graph, Op, Program, Store, Tensor};
use kiln::kernels::gemm::{self, TILES};
use std::sync::OnceLock;

/// The tile engine forced for every matmul and convolution.
fn tiled() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| Gpu::new(&GpuOptions { kernels: Some(Kernels::Tiled), ..GpuOptions::default() }).unwrap_or_else(|e| panic!("{e}")))
}

/// The adapter's own choice: on lavapipe and llvmpipe-GL, the CPU-adapter kernels.
fn own_kernels() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| Gpu::new(&GpuOptions { kernels: Some(Kernels::Auto), ..GpuOptions::default() }).unwrap_or_else(|e| panic!("{e}")))
}

/// ‖got − want‖ / ‖want‖, asserted ≤ `tol` and printed with the worst element.
fn assert_close(name: &str, got: &[f32], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{name}: length");
    assert!(got.iter().all(|v| v.is_finite()), "{name}: not finite");
    let diff = got.iter().zip(want).map(|(&g, w)| (f64::from(g) - w).powi(2)).sum::<f64>().sqrt();
    let norm = want.iter().map(|w| w * w).sum::<f64>().sqrt();
    let err = if norm == 0.0 { diff } else { diff / norm };
    let worst = got.iter().zip(want).map(|(&g, w)| (f64::from(g) - w).abs()).fold(0.0, f64::max);
    eprintln!("{name}: rel L2 {err:.2e} (worst |Δ| {worst:.2e})");
    assert!(err <= tol, "{name}: rel L2 {err:.3e} > {tol:e}");
}

const ACTS: [Act; 4] = [Act::Relu, Act::LeakyRelu(0.2), Act::Tanh, Act::Sigmoid];

/// A producer (conv2d, conv_transpose2d or linear) of x and its weight (and bias), followed
/// by an activation; the loss weighs y by fixed random values so every gradient is dense.
#[derive(Clone, Debug)]
enum Producer {
    Conv { x: Vec<usize>, w: Vec<usize>, op: Conv2d },
    Transpose { x: Vec<usize>, w: Vec<usize>, op: ConvTranspose2d },
    Linear { x: Vec<usize>, w: Vec<usize> },
}

impl Producer {
    fn conv(x: [usize; 4], cout: usize, kernel: usize, stride: usize, padding: usize) -> Producer {
        let op = Conv2d { stride: [stride; 2], padding: [padding; 2], dilation: [1, 1] };
        Producer::Conv { x: x.to_vec(), w: vec![cout, x[1], kernel, kernel], op }
    }
    fn transpose(x: [usize; 4], cout: usize, kernel: usize, stride: usize, padding: usize, output_padding: usize, dilation: usize) -> Producer {
        let op = ConvTranspose2d { stride: [stride; 2], padding: [padding; 2], output_padding: [output_padding; 2], dilation: [dilation; 2] };
        Producer::Transpose { x: x.to_vec(), w: vec![x[1], cout, kernel, kernel], op }
    }
    fn channels(&self) -> usize {
        match self {
            Producer::Conv { w, .. } | Producer::Linear { w, .. } => w[0],
            Producer::Transpose { w, .. } => w[1],
        }
    }
    fn apply(&self, g: &mut Graph, inputs: &[Tensor]) -> Tensor {
        match self {
            Producer::Conv { op, .. } => g.apply1(*op, inputs, "layer"),
            Producer::Transpose { op, .. } => g.apply1(*op, inputs, "layer"),
            Producer::Linear { .. } => g.apply1(Linear, inputs, "layer"),
        }
        .unwrap()
    }
    fn shapes(&self) -> (&[usize], &[usize]) {
        match self {
            Producer::Conv { x, w, .. } | Producer::Transpose { x, w, .. } | Producer::Linear { x, w } => (x, w),
        }
    }
}

/// A built pair: the graph, its parameters with their values, the weighting input, the loss,
/// the activation's output, and the gradient tensors of x, w (and b).
struct Pair {
    g: Graph,
    forward_nodes: usize,
    params: Vec<(Tensor, Vec<f32>)>,
    weights: (Tensor, Vec<f32>),
    loss: Tensor,
    y: Tensor,
    grads: Vec<(Tensor, Tensor)>,
}

fn build(producer: &Producer, act: Act, bias: bool, seed: u64) -> Pair {
    let mut g = Graph::new();
    let (xs, ws) = producer.shapes();
    let numel = |s: &[usize]| s.iter().product::<usize>();
    let x = g.param("x", xs);
    let w = g.param("w", ws);
    // Weights scaled so the pre-activations are O(1) whatever the sum's length: tanh and
    // sigmoid then work in their curved range, not saturated.
    let fan_in = numel(ws) / producer.channels();
    let scale = 1.5 / (fan_in as f32).sqrt();
    let mut params = vec![(x, rand(seed, numel(xs))), (w, rand(seed + 1, numel(ws)).iter().map(|v| v * scale).collect())];
    let mut inputs = vec![x, w];
    if bias {
        let b = g.param("b", &[producer.channels()]);
        params.push((b, rand(seed + 2, producer.channels()).iter().map(|v| v * 0.5).collect()));
        inputs.push(b);
    }
    let pre = producer.apply(&mut g, &inputs);
    let y = g.apply1(Activation(act), &[pre], "act").unwrap();
    let shape = g.shape(y).to_vec();
    let r = g.input("r", &shape);
    let weighted = g.apply1(Mul, &[y, r], "loss").unwrap();
    let loss = g.apply1(Sum { all: true, mean: false }, &[weighted], "loss").unwrap();
    let forward_nodes = g.nodes.len();
    let wrt: Vec<Tensor> = params.iter().map(|(t, _)| *t).collect();
    let grads = g.gradients(loss, &wrt).unwrap();
    let weights = (r, rand(seed + 3, numel(&shape)));
    Pair { g, forward_nodes, params, weights, loss, y, grads }
}

/// What a run leaves: y, then each parameter's gradient; and the program's fusions and the
/// `shader.entry` of its dispatches.
struct Run {
    values: Vec<(String, Vec<f32>)>,
    fused: usize,
    kernels: Vec<String>,
    /// Each dispatch's label, as the profile shows it.
    labels: Vec<String>,
}

fn run(gpu: &Gpu, pair: &Pair) -> Run {
    let mut store = Store::new();
    let specs = pair.params.iter().map(|(t, v)| (pair.g.info(*t).name.clone(), pair.g.shape(*t).to_vec(), v.clone())).collect();
    store.add_group(gpu, "params", specs).unwrap();
    let program = Program::compile(gpu, &pair.g, &mut store, &[pair.loss, pair.y], &pair.grads).unwrap();
    let (r, weights) = &pair.weights;
    gpu.write(&store.input_buffer(&pair.g.info(*r).name).unwrap().buffer, weights).unwrap();
    program.run(gpu).unwrap();
    let mut values = vec![("y".to_string(), gpu.read(program.buffer(pair.y).unwrap()).unwrap())];
    for &(p, _) in &pair.grads {
        let name = pair.g.info(p).name.clone();
        values.push((format!("d{name}"), gpu.read(store.grad(&name).unwrap()).unwrap()));
    }
    let kernels = program.dispatches.iter().map(|d| format!("{}.{}", d.kernel.shader, d.kernel.entry)).collect();
    let labels = program.dispatches.iter().map(|d| d.label.clone()).collect();
    Run { values, fused: program.fused.len(), kernels, labels }
}

/// The reference's y and gradients, in [`run`]'s order.
fn reference(pair: &Pair) -> Vec<Vec<f64>> {
    let mut leaves: Vec<(Tensor, Vec<f64>)> = pair.params.iter().map(|(t, v)| (*t, f64s(v))).collect();
    leaves.push((pair.weights.0, f64s(&pair.weights.1)));
    let values = pair.g.evaluate_reference(&leaves).unwrap();
    let of = |t: Tensor| values[t.index()].as_ref().unwrap().1.clone();
    std::iter::once(of(pair.y)).chain(pair.grads.iter().map(|&(_, d)| of(d))).collect()
}

/// Fused and unfused runs both match the reference, the fused one with the pair fused and no
/// activation pass of its own.
fn check(name: &str, producer: &Producer, act: Act, bias: bool, seed: u64) {
    let pair = build(producer, act, bias, seed);
    let want = reference(&pair);
    let fused = run(tiled(), &pair);
    let unfused = without_fusion(|| run(tiled(), &pair));
    let name = format!("{name} {act:?} bias={bias}");
    assert_eq!(fused.fused, 1, "{name}: the pair is fused");
    assert_eq!(unfused.fused, 0, "{name}");
    let forward = |r: &Run| r.kernels.iter().filter(|k| k.starts_with("activation.") && k.ends_with("_forward")).count();
    assert_eq!((forward(&fused), forward(&unfused)), (0, 1), "{name}: activation passes, fused and unfused");
    assert!(fused.kernels.len() < unfused.kernels.len(), "{name}: fewer dispatches");
    // The profile names what ran: both layers and both ops.
    let op = match producer {
        Producer::Conv { .. } => "conv2d",
        Producer::Transpose { .. } => "conv_transpose2d",
        Producer::Linear { .. } => "linear",
    };
    let act_name = Activation(act).name();
    assert_eq!(fused.labels[0], format!("layer+act ({op}+{act_name})"), "{name}: the fused dispatch's label");
    for (run, how) in [(&fused, "fused"), (&unfused, "unfused")] {
        for ((what, got), want) in run.values.iter().zip(&want) {
            assert_close(&format!("{name} {how} {what}"), got, want, 2e-5);
        }
    }
}

#[test]
fn fused_and_unfused_pairs_match_the_reference_at_awkward_shapes() {
    let cases = [
        ("conv2d batch 1 3x9x7 k3 s2 p1", Producer::conv([1, 3, 9, 7], 5, 3, 2, 1)),
        ("conv2d 2x4x6x5 k5 s1 p2 to 7 channels", Producer::conv([2, 4, 6, 5], 7, 5, 1, 2)),
        ("conv_transpose2d 2x5x4x3 k4 s2 p1", Producer::transpose([2, 5, 4, 3], 3, 4, 2, 1, 0, 1)),
        // Stride 2 with dilation 2: odd phases have no taps and store act(bias) or act(0).
        ("conv_transpose2d batch 1 3x5x4 k3 s2 d2 op1", Producer::transpose([1, 3, 5, 4], 4, 3, 2, 0, 1, 2)),
        ("linear 5 rows 33 to 129", Producer::Linear { x: vec![5, 33], w: vec![129, 33] }),
        ("linear batch 1 400 to 784", Producer::Linear { x: vec![1, 400], w: vec![784, 400] }),
    ];
    for (i, (name, producer)) in cases.iter().enumerate() {
        for (j, act) in ACTS.into_iter().enumerate() {
            check(name, producer, act, (i + j) % 2 == 0, 10 * i as u64 + j as u64);
        }
    }
}

/// k past what one dispatch may sum within llvmpipe's loop budget (11,808 steps in the 64×64
/// tile): the sum is split over dispatches that add to C, and only the last applies the
/// activation. Conv forward (13,500 = 1,500 channels × 3×3 taps) and a transposed conv's
/// phases (each sums cout·taps: 3,000 × 4).
#[test]
fn sums_split_over_dispatches_apply_the_activation_once_at_the_end() {
    let small = TILES[2];
    assert_eq!(small.name(), "64x64x16");
    let cases = [
        ("conv2d 1500 channels k3", Producer::conv([1, 1500, 4, 3], 2, 3, 1, 1), 2),
        ("conv_transpose2d 3000 channels k4 s2", Producer::transpose([1, 3000, 2, 2], 2, 4, 2, 1, 0, 1), 8),
    ];
    for (i, (name, producer, gemms)) in cases.iter().enumerate() {
        let act = ACTS[i % 4];
        gemm::with_tile(small, || {
            let pair = build(producer, act, true, 70 + i as u64);
            let fused = run(tiled(), &pair);
            let forward_gemms = fused.kernels.iter().take_while(|k| k.starts_with("gemm.")).count();
            assert_eq!(forward_gemms, *gemms, "{name}: the forward's dispatches");
            check(name, producer, act, true, 70 + i as u64);
        });
    }
}

/// A linear layer whose product is split over grid layers (a long sum over few tiles: 3,001
/// features into 3×2 outputs) keeps that split and its activation's own pass, since the
/// layers' total is formed outside the epilogue; one summed in one layer is fused.
#[test]
fn a_linear_layer_split_over_grid_layers_keeps_its_activation_separate() {
    assert!(!gemm::sums_in_one_layer(3, 2, 3001) && gemm::sums_in_one_layer(3, 2, 511));
    for (features, fused) in [(3001, 0), (511, 1)] {
        let pair = build(&Producer::Linear { x: vec![3, features], w: vec![2, features] }, Act::Tanh, true, 60);
        let run = run(tiled(), &pair);
        assert_eq!(run.fused, fused, "{features} features");
        for ((what, got), want) in run.values.iter().zip(&reference(&pair)) {
            assert_close(&format!("linear {features} features {what}"), got, want, 2e-5);
        }
    }
}

/// The kernel API applies an activation to any product: one that would be split over grid
/// layers is summed in one layer instead, or past the loop budget over dispatches adding to C,
/// the last applying it (matmul_activated, 3×2 outputs of 3,001 and of 12,001 steps).
#[test]
fn matmul_activated_applies_the_activation_to_final_values_only() {
    use kiln::kernels::gemm::Activation as E;
    use kiln::kernels::matmul::{matmul_activated, Matmul, MatmulVariant};
    let gpu = tiled();
    for (k, dispatches) in [(3001, 1), (12001, 2)] {
        let (m, n) = (3, 2);
        // A scaled so the products are O(1), where the activations curve.
        let scale = 1.0 / (k as f32).sqrt();
        let a: Vec<f32> = rand(80, m * k).iter().map(|v| v * scale).collect();
        let (b, bias) = (rand(81, k * n), rand(82, n));
        let product = kiln::reference::matmul::matmul(&f64s(&a), &f64s(&b), Some(&f64s(&bias)), m, n, k, false, false);
        let leaky = |v: f64| if v > 0.0 { v } else { 0.2 * v };
        let sigmoid = |v: f64| 1.0 / (1.0 + (-v).exp());
        for (act, f) in [(E::LeakyRelu(0.2), &leaky as &dyn Fn(f64) -> f64), (E::Sigmoid, &sigmoid)] {
            let want: Vec<f64> = product.iter().map(|&v| f(v)).collect();
            let (ab, bb, biasb, c) = (gpu.upload("a", &a).unwrap(), gpu.upload("b", &b).unwrap(), gpu.upload("bias", &bias).unwrap(), gpu.zeros("c", m * n).unwrap());
            let shape = Matmul { m, n, k, variant: MatmulVariant::Tiled, ..Default::default() };
            let list = gemm::with_tile(TILES[2], || matmul_activated(gpu, &shape, &ab, &bb, Some(&biasb), act, &c).unwrap());
            assert_eq!(list.len(), dispatches, "k = {k}: dispatches");
            assert!(list.iter().all(|d| d.kernel.entry == "matmul"), "no sum_partials pass");
            let index = gpu.submit("matmul_activated", &[&list], None).unwrap();
            gpu.wait(Some(index), "matmul_activated").unwrap();
            assert_close(&format!("matmul_activated k={k} {act:?}"), &gpu.read(&c).unwrap(), &want, 2e-5);
        }
    }
}

/// A pre-activation something else reads too, or that is read back, is stored: no fusion, and
/// the results still match. A leaky_relu with a negative slope differentiates from its input
/// (its y does not give x's sign), so with a backward it is never fused; without one, it is.
#[test]
fn a_pre_activation_read_elsewhere_is_stored_and_not_fused() {
    let producer = Producer::conv([2, 3, 7, 6], 4, 3, 1, 1);
    let pair = |act: Act, second_reader: bool, keep_pre: bool, backward: bool| {
        let mut g = Graph::new();
        let (xs, ws) = producer.shapes();
        let (x, w) = (g.input("x", xs), g.param("w", ws));
        let pre = producer.apply(&mut g, &[x, w]);
        let y = g.apply1(Activation(act), &[pre], "act").unwrap();
        let out = if second_reader { g.apply1(Add, &[y, pre], "skip").unwrap() } else { y };
        let loss = g.apply1(Sum { all: true, mean: false }, &[out], "loss").unwrap();
        let grads = if backward { g.gradients(loss, &[w]).unwrap() } else { Vec::new() };
        let mut store = Store::new();
        let values = [(x, rand(1, xs.iter().product())), (w, rand(2, ws.iter().product()))];
        store.add_group(tiled(), "params", vec![("w".into(), ws.to_vec(), values[1].1.clone())]).unwrap();
        let keep: Vec<Tensor> = if keep_pre { vec![loss, pre] } else { vec![loss] };
        let program = Program::compile(tiled(), &g, &mut store, &keep, &grads).unwrap();
        tiled().write(&store.input_buffer("x").unwrap().buffer, &values[0].1).unwrap();
        program.run(tiled()).unwrap();
        let leaves: Vec<(Tensor, Vec<f64>)> = values.iter().map(|(t, v)| (*t, f64s(v))).collect();
        let want = g.evaluate_reference(&leaves).unwrap();
        let name = format!("{act:?} second reader {second_reader} kept {keep_pre} backward {backward}");
        assert_close(&format!("{name}: loss"), &tiled().read(program.buffer(loss).unwrap()).unwrap(), &want[loss.index()].as_ref().unwrap().1, 1e-5);
        if let Some(&(_, dw)) = grads.first() {
            assert_close(&format!("{name}: dw"), &tiled().read(store.grad("w").unwrap()).unwrap(), &want[dw.index()].as_ref().unwrap().1, 1e-5);
        }
        // A fused-away pre-activation is never stored: asking for it is an error saying so.
        let fused = program.fused.len();
        match program.buffer(pre) {
            Ok(_) => assert_eq!(fused, 0, "{name}: a fused pre-activation has a buffer"),
            Err(e) => assert!(fused == 1 && e.to_string().contains("list it in `keep`"), "{name}: {e}"),
        }
        fused
    };
    assert_eq!(pair(Act::Relu, false, false, true), 1, "alone, the pair is fused");
    assert_eq!(pair(Act::Relu, true, false, true), 0, "a second reader keeps it stored");
    assert_eq!(pair(Act::Tanh, false, true, false), 0, "read back, it is stored");
    assert_eq!(pair(Act::LeakyRelu(-0.5), false, false, true), 0, "a negative slope's backward reads x");
    assert_eq!(pair(Act::LeakyRelu(-0.5), false, false, false), 1, "without a backward it is fused");
    assert_eq!(pair(Act::LeakyRelu(0.0), false, false, true), 1, "a zero slope reads y");
}

/// On the adapter's own kernels (lavapipe's and llvmpipe-GL's are the CPU-adapter ones, whose
/// stores have no epilogue) every activation keeps its own pass.
#[test]
fn kernels_without_an_epilogue_keep_the_activation_separate() {
    let gpu = own_kernels();
    if gpu.info.device_type != wgpu::DeviceType::Cpu {
        eprintln!("{} picks the tile engine itself: nothing to check here", gpu.info.name);
        return;
    }
    let pair = build(&Producer::conv([2, 3, 7, 6], 4, 3, 1, 1), Act::Relu, true, 5);
    let run = run(gpu, &pair);
    assert_eq!(run.fused, 0);
    for ((what, got), want) in run.values.iter().zip(&reference(&pair)) {
        assert_close(&format!("own kernels {what}"), got, want, 2e-5);
    }
}

/// The reference's gradients through a fused pair agree with central differences of its loss
/// (so the y-based backward rule is right, kinks aside), and the fused GPU run with the
/// reference.
#[test]
fn gradients_through_a_fused_pair_match_finite_differences() {
    let cases = [Producer::conv([1, 2, 5, 4], 3, 3, 2, 1), Producer::transpose([2, 2, 3, 3], 2, 3, 2, 1, 1, 1), Producer::Linear { x: vec![3, 7], w: vec![5, 7] }];
    for (i, producer) in cases.iter().enumerate() {
        for act in ACTS {
            let pair = build(producer, act, true, 40 + i as u64);
            let mut leaves: Vec<(Tensor, Vec<f64>)> = pair.params.iter().map(|(t, v)| (*t, f64s(v))).collect();
            leaves.push((pair.weights.0, f64s(&pair.weights.1)));
            let mut forward = pair.g.clone();
            forward.nodes.truncate(pair.forward_nodes);
            let want = reference(&pair);
            let fused = run(tiled(), &pair);
            assert_eq!(fused.fused, 1);
            for (slot, (grad, (what, got))) in want[1..].iter().zip(&fused.values[1..]).enumerate() {
                let numeric = common::reference_fd(&forward, &leaves, slot, pair.loss, 1e-6);
                let err = grad.iter().zip(&numeric).map(|(a, b)| (a - b).powi(2)).sum::<f64>().sqrt() / numeric.iter().map(|b| b * b).sum::<f64>().sqrt();
                eprintln!("{producer:?} {act:?} {what}: reference vs finite differences rel L2 {err:.2e}");
                assert!(err <= 1e-5, "{act:?} {what}: reference vs finite differences {err:.3e}");
                assert_close(&format!("{act:?} fused {what}"), got, grad, 2e-5);
            }
        }
    }
}

/// relu and leaky_relu differentiate from y: at x exactly 0 (and −0) that must still be
/// PyTorch's rule, dx = x > 0 ? dy : slope·dy (0 for relu), computed here from x. Directly on
/// a tensor holding zeros, and through a fused convolution whose outputs are all exactly 0.
#[test]
fn relu_and_leaky_relu_from_y_keep_pytorchs_gradient_at_zero() {
    let x: Vec<f32> = vec![0.0, -0.0, 1.5, -2.0, 0.0, 3e-38, -3e-38, 0.25];
    let dy = rand(9, x.len());
    for (act, slope) in [(Act::Relu, 0.0f32), (Act::LeakyRelu(0.2), 0.2), (Act::LeakyRelu(0.0), 0.0)] {
        // In f32 as the GPU computes it, and in f64 as the reference does.
        let pytorch_f32: Vec<f64> = x.iter().zip(&dy).map(|(&x, &d)| f64::from(if x > 0.0 { d } else { slope * d })).collect();
        let pytorch: Vec<f64> = x.iter().zip(&dy).map(|(&x, &d)| if x > 0.0 { f64::from(d) } else { f64::from(slope) * f64::from(d) }).collect();
        // act(x) weighted by dy, differentiated by x.
        let mut g = Graph::new();
        let xt = g.param("x", &[x.len()]);
        let y = g.apply1(Activation(act), &[xt], "act").unwrap();
        let r = g.input("r", &[x.len()]);
        let weighted = g.apply1(Mul, &[y, r], "loss").unwrap();
        let loss = g.apply1(Sum { all: true, mean: false }, &[weighted], "loss").unwrap();
        let grads = g.gradients(loss, &[xt]).unwrap();
        let mut store = Store::new();
        store.add_group(tiled(), "params", vec![("x".into(), vec![x.len()], x.clone())]).unwrap();
        let program = Program::compile(tiled(), &g, &mut store, &[loss], &grads).unwrap();
        tiled().write(&store.input_buffer("r").unwrap().buffer, &dy).unwrap();
        program.run(tiled()).unwrap();
        let got = tiled().read(store.grad("x").unwrap()).unwrap();
        assert_eq!(f64s(&got), pytorch_f32, "{act:?}: GPU dx at zeros");
        let values = g.evaluate_reference(&[(xt, f64s(&x)), (r, f64s(&dy))]).unwrap();
        assert_eq!(values[grads[0].1.index()].as_ref().unwrap().1, pytorch, "{act:?}: reference dx at zeros");

        // A conv with zero weight and bias: every pre-activation is exactly 0, so the weight
        // gradient is conv's weight gradient of slope·dy (or of 0 for relu).
        let producer = Producer::conv([1, 2, 4, 5], 3, 3, 1, 1);
        let mut pair = build(&producer, act, true, 11);
        for (_, v) in pair.params.iter_mut().skip(1) {
            v.iter_mut().for_each(|v| *v = 0.0);
        }
        let fused = run(tiled(), &pair);
        assert_eq!(fused.fused, 1);
        let s = kiln::kernels::conv::Conv2d { padding: [1, 1], ..kiln::kernels::conv::Conv2d::new(1, 2, 3, [4, 5], [3, 3]) };
        let d_pre: Vec<f64> = pair.weights.1.iter().map(|&d| f64::from(slope) * f64::from(d)).collect();
        let want_dw = kiln::reference::conv::conv2d_weight_grad(&s, &f64s(&pair.params[0].1), &d_pre);
        let (what, got_dw) = &fused.values[2];
        assert_eq!(what, "dw");
        assert_close(&format!("{act:?} fused dw at zero pre-activations"), got_dw, &want_dw, 1e-6);
        assert!(fused.values[0].1.iter().all(|&y| y == 0.0), "{act:?}: y = act(0) = 0");
    }
}

fn fixture() -> std::collections::HashMap<String, Vec<f32>> {
    let bytes = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/fusion.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors().into_iter().map(|(name, view)| (name, bytemuck::pod_collect_to_vec(view.data()))).collect()
}

/// Fused pairs against PyTorch (scripts/fusion_fixtures.py, float64): y and the gradients of
/// input, weight and bias, for every activation, and relu's and leaky_relu's gradients at
/// exactly 0 and −0 differentiated from y.
#[test]
fn fused_pairs_match_pytorch() {
    let want = fixture();
    let cases = [
        ("conv", Producer::conv([1, 3, 9, 7], 5, 3, 2, 1)),
        ("convt", Producer::transpose([2, 5, 4, 3], 3, 4, 2, 1, 0, 1)),
        ("linear", Producer::Linear { x: vec![5, 33], w: vec![129, 33] }),
    ];
    for (case, producer) in &cases {
        for act in ACTS {
            let name = Activation(act).name();
            let mut pair = build(producer, act, true, 0);
            for ((_, values), what) in pair.params.iter_mut().zip(["x", "weight", "bias"]) {
                *values = want[&format!("{case}.{what}")].clone();
            }
            pair.weights.1 = want[&format!("{case}.r")].clone();
            let fused = run(tiled(), &pair);
            assert_eq!(fused.fused, 1, "{case} {name}");
            for ((what, got), key) in fused.values.iter().zip(["y", "grad.x", "grad.weight", "grad.bias"]) {
                assert_close(&format!("{case}+{name} {what} vs PyTorch"), got, &f64s(&want[&format!("{case}.{name}.{key}")]), 1e-5);
            }
        }
    }
    for (act, name) in [(Act::Relu, "relu"), (Act::LeakyRelu(0.2), "leaky_relu")] {
        let (x, r) = (&want["zeros.x"], &want["zeros.r"]);
        let mut g = Graph::new();
        let xt = g.param("x", &[x.len()]);
        let y = g.apply1(Activation(act), &[xt], "act").unwrap();
        let rt = g.input("r", &[x.len()]);
        let weighted = g.apply1(Mul, &[y, rt], "loss").unwrap();
        let loss = g.apply1(Sum { all: true, mean: false }, &[weighted], "loss").unwrap();
        let grads = g.gradients(loss, &[xt]).unwrap();
        let mut store = Store::new();
        store.add_group(tiled(), "params", vec![("x".into(), vec![x.len()], x.clone())]).unwrap();
        let program = Program::compile(tiled(), &g, &mut store, &[loss], &grads).unwrap();
        tiled().write(&store.input_buffer("r").unwrap().buffer, r).unwrap();
        program.run(tiled()).unwrap();
        assert_close(&format!("{name} dx at zeros vs PyTorch"), &tiled().read(store.grad("x").unwrap()).unwrap(), &f64s(&want[&format!("zeros.{name}.grad.x")]), 1e-7);
    }
}

mod training {
    use super::tiled;
    use kiln::data::synthetic::{digits, DigitsOptions};
    use kiln::gpu::{Dispatch, Gpu};
    use kiln::graph::without_fusion;
    use kiln::models::dcgan::ImageShape;
    use kiln::models::vae::Kind;
    use kiln::train::data::GpuData;
    use kiln::train::gan::{Gan, GanConfig, Recipe};
    use kiln::train::run::Trainer;
    use kiln::train::vae::{VaeConfig, VaeTrainer};

    /// Dispatches and the bytes their costs count, over a whole step.
    fn traffic(trainer: &dyn Trainer) -> (usize, u64) {
        let all: Vec<&Dispatch> = trainer.step_dispatches().into_iter().flatten().collect();
        (all.len(), all.iter().map(|d| d.cost.bytes).sum())
    }

    type Build = dyn Fn(&Gpu, &GpuData, &GpuData) -> Box<dyn Trainer>;

    /// One step fused and one unfused, from the same initial state on the same batch: every
    /// logged value and gradient agrees (the same kernels summing in the same order, the
    /// activation applied to the same f32 value in registers instead of after a round trip to
    /// memory: bit-identical on lavapipe and llvmpipe-GL), and the fused step has fewer
    /// dispatches and moves fewer bytes.
    fn fused_step_matches_unfused(model: &str, batch: usize, build: &Build) {
        let splits = digits(&DigitsOptions { seed: 1, train: batch, test: batch }).unwrap();
        let gpu = tiled();
        let (train, test) = (GpuData::upload(gpu, &splits.train).unwrap(), GpuData::upload(gpu, &splits.test).unwrap());
        let fused = build(gpu, &train, &test);
        let unfused = without_fusion(|| build(gpu, &train, &test));
        let ((fused_calls, fused_bytes), (calls, bytes)) = (traffic(&*fused), traffic(&*unfused));
        eprintln!("{model}: {fused_calls} dispatches fused vs {calls} unfused; {fused_bytes} vs {bytes} bytes counted");
        assert!(fused_calls < calls && fused_bytes < bytes, "{model}: fusion saved nothing");
        let (got, want) = (crate::common::one_step(gpu, &*fused, &train), crate::common::one_step(gpu, &*unfused, &train));
        assert_eq!(got.len(), want.len());
        for ((name, got), (_, want)) in got.iter().zip(&want) {
            let diff = got.iter().zip(want).map(|(a, b)| f64::from(a - b).powi(2)).sum::<f64>().sqrt();
            let norm = want.iter().map(|b| f64::from(*b).powi(2)).sum::<f64>().sqrt();
            let err = if norm == 0.0 { diff } else { diff / norm };
            eprintln!("{model} {name}: fused vs unfused rel L2 {err:.3e} (norm {norm:.3e}, {} elements)", want.len());
            assert!(err <= 1e-6, "{model} {name}: fused vs unfused rel L2 {err:.3e}");
        }
        eprintln!("{model}: {} logged values and gradients agree", got.len());
    }

    fn dcgan(gpu: &Gpu, train: &GpuData, _: &GpuData) -> Box<dyn Trainer> {
        let config = GanConfig { image: ImageShape { channels: 1, size: 28 }, batch: 16, recipe: Recipe::Paper, lr_g: None, lr_d: None, real_label: 0.9, seed: 4, ..GanConfig::default() };
        Box::new(Gan::new(gpu, config, train).unwrap())
    }

    fn vae(kind: Kind) -> impl Fn(&Gpu, &GpuData, &GpuData) -> Box<dyn Trainer> {
        move |gpu, train, test| {
            let config = VaeConfig { kind, image: [1, 28, 28], latent: 20, hidden: 400, batch: 32, lr: 1e-3, seed: 5, beta: 1.0, classes: None };
            Box::new(VaeTrainer::new(gpu, config, train, test).unwrap())
        }
    }

    #[test]
    fn a_dcgan_step_fused_matches_the_unfused_step() {
        fused_step_matches_unfused("DCGAN", 64, &dcgan);
    }

    #[test]
    fn vae_steps_fused_match_the_unfused_steps() {
        fused_step_matches_unfused("conv VAE", 64, &vae(Kind::Conv));
        fused_step_matches_unfused("MLP VAE", 64, &vae(Kind::Mlp));
    }

    /// The counts for the report: the DCGAN at batch 64 on the tile engine, compiled (not run)
    /// fused and unfused; the difference is the activation passes, a read and a write each.
    #[test]
    fn the_dcgans_batch_64_step_fuses_its_convolutions_activations() {
        let splits = digits(&DigitsOptions { seed: 1, train: 64, test: 64 }).unwrap();
        let gpu = tiled();
        let train = GpuData::upload(gpu, &splits.train).unwrap();
        let config = GanConfig { image: ImageShape { channels: 1, size: 28 }, batch: 64, recipe: Recipe::Paper, ..GanConfig::default() };
        let fused = Gan::new(gpu, config.clone(), &train).unwrap();
        let unfused = without_fusion(|| Gan::new(gpu, config, &train).unwrap());
        let ((fused_calls, fused_bytes), (calls, bytes)) = (traffic(&fused), traffic(&unfused));
        let activations = |t: &Gan| t.step_dispatches().into_iter().flatten().filter(|d| d.kernel.shader == "activation" && d.kernel.entry.ends_with("_forward")).count();
        eprintln!(
            "DCGAN batch 64, tile engine: {fused_calls} dispatches fused vs {calls} unfused ({} saved), {:.2} vs {:.2} MB counted ({:.2} MB saved); activation passes {} vs {}",
            calls - fused_calls,
            fused_bytes as f64 / 1e6,
            bytes as f64 / 1e6,
            (bytes - fused_bytes) as f64 / 1e6,
            activations(&fused),
            activations(&unfused)
        );
        assert_eq!(calls - fused_calls, activations(&unfused) - activations(&fused));
        assert!(activations(&fused) < activations(&unfused));
    }
}
