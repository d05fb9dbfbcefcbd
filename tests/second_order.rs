//! Second-order gradients: `backward` applied to a graph that already holds a backward pass,
//! checked by finite differences of the f64 reference, on the GPU against the reference, and
//! R1 / WGAN-GP parameter gradients against PyTorch's `create_graph=True`.

mod common;
use kiln::gpu::{Gpu, GpuOptions};
use kiln::graph::ops::{self, Act, Activation, Add, Conv2d, ConvTranspose2d, Linear, Mul, Sqrt, Sum};
use kiln::graph::{Graph, Program, Store, Tensor};
use kiln::nn::penalty::{self, Epsilon};
use kiln::nn::{self, act, InitRng, Layer, Mode, Sequential};
use std::collections::HashMap;
use std::sync::OnceLock;

fn gpu() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| Gpu::new(&GpuOptions::default()).unwrap_or_else(|e| panic!("{e}")))
}

fn rand(seed: u64, n: usize, bound: f64) -> Vec<f32> {
    InitRng::new(seed).uniform(n, bound)
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// ‖a − b‖ / ‖b‖, with ‖b‖ floored at 1e-6 so that two zero gradients agree.
fn rel_l2(a: &[f64], b: &[f64]) -> f64 {
    let diff: f64 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f64>().sqrt();
    let norm: f64 = b.iter().map(|y| y * y).sum::<f64>().sqrt();
    diff / norm.max(1e-6)
}

/// d`loss`/d`p` for each parameter, from the GPU and from the reference, after checking the
/// reference against central differences of the reference loss and the GPU against the
/// reference. The parameters are already in `store` (their f32 values are read back, so both
/// runs start from the same numbers); `inputs` are written before the run.
struct Gradients {
    gpu: HashMap<String, Vec<f64>>,
    loss: f64,
}

fn check_gradients(g: &mut Graph, store: &mut Store, loss: Tensor, params: &[Tensor], inputs: &[(Tensor, Vec<f32>)]) -> Gradients {
    let gpu = gpu();
    let loss_nodes = g.nodes.len();
    let pairs = g.gradients(loss, params).unwrap();

    let mut leaves: Vec<(Tensor, Vec<f64>)> = Vec::new();
    for &p in params {
        leaves.push((p, f64s(&gpu.read(&store.param(&g.info(p).name).expect("registered").buffer).unwrap())));
    }
    leaves.extend(inputs.iter().map(|(t, v)| (*t, f64s(v))));

    let program = Program::compile(gpu, g, store, &[loss], &pairs).unwrap();
    for (t, v) in inputs {
        gpu.write(&store.input_buffer(&g.info(*t).name).unwrap().buffer, v).unwrap();
    }
    program.run(gpu).unwrap();

    let values = g.evaluate_reference(&leaves).unwrap();
    let want_loss = values[loss.index()].as_ref().unwrap().1[0];
    let got_loss = gpu.read(program.buffer(loss).unwrap()).unwrap()[0] as f64;
    assert!((got_loss - want_loss).abs() <= 1e-4 * want_loss.abs() + 1e-6, "loss: GPU {got_loss} vs reference {want_loss}");

    // The graph up to the loss (its first-order backward included) for finite differences.
    let mut to_loss = g.clone();
    to_loss.nodes.truncate(loss_nodes);
    let mut got = HashMap::new();
    for (slot, &(param, grad)) in pairs.iter().enumerate() {
        let name = g.info(param).name.clone();
        let reference = &values[grad.index()].as_ref().unwrap().1;
        let numeric = crate::common::reference_fd(&to_loss, &leaves, slot, loss, 1e-6);
        let fd_err = rel_l2(reference, &numeric);
        let on_gpu = f64s(&gpu.read(store.grad(&name).unwrap()).unwrap());
        let gpu_err = rel_l2(&on_gpu, reference);
        eprintln!("d{name}: reference vs finite differences {fd_err:.2e}, GPU vs reference {gpu_err:.2e}");
        assert!(fd_err <= 1e-5, "d{name}: reference vs finite differences rel L2 {fd_err:.3e}");
        assert!(gpu_err <= 1e-4, "d{name}: GPU vs reference rel L2 {gpu_err:.3e}");
        got.insert(name, on_gpu);
    }
    Gradients { gpu: got, loss: got_loss }
}

/// The double backward of one op: y = build(params), L1 = Σ y·r, g = dL1/d(params),
/// L2 = Σᵢ Σ gᵢ·sᵢ with fixed random sᵢ, and dL2/d(params, r) checked. Every input of every
/// gradient op reaches L2, so every second-order rule of the op's backward ops is exercised.
fn check_double_backward(shapes: &[&[usize]], build: impl Fn(&mut Graph, &[Tensor]) -> Tensor) {
    check_double_backward_at(shapes, 0.0, shapes.len(), build)
}

/// [`check_double_backward`] with parameter values drawn from U(shift − 1, shift + 1) and the
/// first gradients taken with respect to the first `first` parameters only (the rest, a loss's
/// target say, still get second-order gradients).
fn check_double_backward_at(shapes: &[&[usize]], shift: f32, first: usize, build: impl Fn(&mut Graph, &[Tensor]) -> Tensor) {
    let mut g = Graph::new();
    let mut params: Vec<Tensor> = shapes.iter().enumerate().map(|(i, s)| g.param(&format!("p{i}"), s)).collect();
    let y = build(&mut g, &params);
    let r = g.param("r", &g.shape(y).to_vec());
    let weighted = g.apply1(Mul, &[y, r], "l1").unwrap();
    let l1 = g.apply1(Sum { all: true, mean: false }, &[weighted], "l1").unwrap();
    let firsts = g.backward(l1, &params[..first]).unwrap();
    let mut inputs = Vec::new();
    let mut l2 = None;
    for (i, first) in firsts.into_iter().enumerate() {
        let first = first.expect("every parameter reaches y");
        let s = g.input(&format!("s{i}"), &g.shape(first).to_vec());
        inputs.push((s, rand(100 + i as u64, g.info(s).numel(), 1.0)));
        let term = g.apply1(Mul, &[first, s], "l2").unwrap();
        let term = g.apply1(Sum { all: true, mean: false }, &[term], "l2").unwrap();
        l2 = Some(match l2 {
            Some(sum) => g.apply1(Add, &[sum, term], "l2").unwrap(),
            None => term,
        });
    }
    params.push(r);
    let values: Vec<(String, Vec<usize>, Vec<f32>)> = params
        .iter()
        .enumerate()
        .map(|(i, &p)| {
            let n = g.info(p).numel();
            let v = rand(i as u64 + 1, n, 1.0).into_iter().map(|x| x + shift).collect();
            (g.info(p).name.clone(), g.shape(p).to_vec(), v)
        })
        .collect();
    let mut store = Store::new();
    store.add_group(gpu(), "p", values).unwrap();
    check_gradients(&mut g, &mut store, l2.unwrap(), &params, &inputs);
}

fn conv(stride: usize, padding: usize) -> Conv2d {
    Conv2d { stride: [stride; 2], padding: [padding; 2], dilation: [1, 1] }
}

#[test]
fn conv2d_gradients_differentiate_again_at_stride_2_with_padding() {
    for (batch, cin, cout, size, kernel, stride, padding) in [(2, 3, 2, 7, 5, 2, 2), (1, 1, 3, 6, 3, 2, 1), (3, 2, 1, 5, 3, 1, 0)] {
        eprintln!("conv2d batch {batch}, {cin}→{cout}, {size}×{size}, kernel {kernel}, stride {stride}, padding {padding}");
        let shapes: [&[usize]; 3] = [&[batch, cin, size, size], &[cout, cin, kernel, kernel], &[cout]];
        check_double_backward(&shapes, |g, p| g.apply1(conv(stride, padding), p, "conv").unwrap());
    }
}

#[test]
fn conv2d_with_dilation_and_uneven_strides_differentiates_again() {
    let op = Conv2d { stride: [2, 1], padding: [1, 2], dilation: [2, 1] };
    check_double_backward(&[&[2, 2, 7, 6], &[3, 2, 3, 3], &[3]], |g, p| g.apply1(op, p, "conv").unwrap());
}

#[test]
fn conv_transpose2d_gradients_differentiate_again_with_output_padding() {
    for (batch, cin, cout, size, kernel, stride, padding, output_padding) in [(2, 3, 2, 3, 5, 2, 2, 1), (1, 2, 3, 4, 4, 2, 1, 0), (1, 1, 2, 3, 3, 3, 1, 2)] {
        eprintln!("conv_transpose2d batch {batch}, {cin}→{cout}, {size}×{size}, kernel {kernel}, stride {stride}, padding {padding}, output padding {output_padding}");
        let op = ConvTranspose2d { stride: [stride; 2], padding: [padding; 2], output_padding: [output_padding; 2], dilation: [1, 1] };
        let shapes: [&[usize]; 3] = [&[batch, cin, size, size], &[cin, cout, kernel, kernel], &[cout]];
        check_double_backward(&shapes, |g, p| g.apply1(op, p, "convt").unwrap());
    }
}

#[test]
fn linear_gradients_differentiate_again() {
    check_double_backward(&[&[3, 5], &[4, 5], &[4]], |g, p| g.apply1(Linear, p, "fc").unwrap());
    // A 3-D input, one output feature, batch 1 rows.
    check_double_backward(&[&[1, 3, 7], &[1, 7], &[1]], |g, p| g.apply1(Linear, p, "fc").unwrap());
}

#[test]
fn matmul_gradients_differentiate_again_with_every_transpose() {
    for (trans_a, trans_b) in [(false, false), (true, false), (false, true), (true, true)] {
        let a: &[usize] = if trans_a { &[5, 3] } else { &[3, 5] };
        let b: &[usize] = if trans_b { &[2, 5] } else { &[5, 2] };
        check_double_backward(&[a, b], |g, p| g.apply1(ops::Matmul { trans_a, trans_b }, p, "mm").unwrap());
    }
}

#[test]
fn activation_gradients_differentiate_again() {
    for a in [Act::Relu, Act::LeakyRelu(0.3), Act::Tanh, Act::Sigmoid] {
        eprintln!("{a:?}");
        // x·w so that the activation's input is computed (its gradient flows on to both).
        check_double_backward(&[&[3, 7], &[3, 7]], |g, p| {
            let x = g.apply1(Mul, p, "pre").unwrap();
            g.apply1(Activation(a), &[x], "act").unwrap()
        });
    }
}

#[test]
fn sqrt_differentiates_twice() {
    // Values in [1, 3): away from sqrt's singularity at 0.
    check_double_backward_at(&[&[2, 9]], 2.0, 1, |g, p| g.apply1(Sqrt { eps: 1e-12 }, p, "sqrt").unwrap());
}

#[test]
fn row_sums_means_and_reshapes_differentiate_again() {
    check_double_backward(&[&[3, 5], &[3, 5]], |g, p| {
        let x = g.apply1(Mul, p, "pre").unwrap();
        let squares = g.apply1(Mul, &[x, x], "sq").unwrap();
        let rows = g.apply1(Sum { all: false, mean: false }, &[squares], "rows").unwrap();
        let rows = g.apply1(Mul, &[rows, rows], "rows2").unwrap();
        let m = g.apply1(Sum { all: true, mean: true }, &[rows], "mean").unwrap();
        g.reshape(m, &[1]).unwrap()
    });
}

/// The brief's small D: conv 5×5 s2 pad 2 → leaky_relu(0.3) → conv 3×3 s2 pad 1 → leaky →
/// [dropout] → flatten → linear, on 1×12×12 images. PyTorch's names (`0.weight`, …).
fn small_d(dropout: bool) -> Sequential {
    let conv = |cin, cout, kernel, padding| Layer::Conv2d(nn::Conv2d { in_channels: cin, out_channels: cout, kernel, stride: 2, padding, bias: true });
    let mut layers = vec![conv(1, 3, 5, 2), act(Act::LeakyRelu(0.3)), conv(3, 4, 3, 1), act(Act::LeakyRelu(0.3))];
    if dropout {
        layers.push(Layer::Dropout(nn::Dropout { p: 0.3 }));
    }
    layers.extend([Layer::Flatten(nn::Flatten), nn::linear(36, 1)]);
    Sequential::new("", layers)
}

#[derive(Clone, Copy, PartialEq)]
enum Which {
    R1,
    GpGiven,
    GpUniform,
    /// GP with given ε through `interpolate` and `gradient_penalty_of_logits`.
    GpSplit,
}

/// The penalty's parameter gradients on the small D: finite differences and GPU checked in
/// [`check_gradients`]; returned for the PyTorch comparison.
fn penalty_gradients(which: Which, dropout: bool, values: Option<&HashMap<String, Vec<f32>>>) -> Gradients {
    let d = small_d(dropout);
    let mut g = Graph::new();
    let batch = 3;
    let real = g.input("real", &[batch, 1, 12, 12]);
    let fake = g.input("fake", &[batch, 1, 12, 12]);
    let eps = g.input("eps", &[batch]);
    let mode = Mode::train(11);
    let loss = match which {
        Which::R1 => penalty::r1(&mut g, &d, real, mode).unwrap(),
        Which::GpGiven => penalty::gradient_penalty(&mut g, &d, real, fake, mode, Epsilon::Given(eps)).unwrap(),
        Which::GpUniform => penalty::gradient_penalty(&mut g, &d, real, fake, mode, Epsilon::Uniform { seed: 5 }).unwrap(),
        Which::GpSplit => {
            let mixed = penalty::interpolate(&mut g, real, fake, Epsilon::Given(eps)).unwrap();
            let logits = d.forward(&mut g, mixed, mode).unwrap();
            penalty::gradient_penalty_of_logits(&mut g, mixed, logits).unwrap()
        }
    };
    let mut store = Store::new();
    d.register(gpu(), &mut store, "d", &mut InitRng::new(3)).unwrap();
    let n = batch * 144;
    let mut inputs = match values {
        Some(v) => vec![(real, v["real"].clone()), (fake, v["fake"].clone())],
        None => vec![(real, rand(21, n, 1.0)), (fake, rand(22, n, 1.0))],
    };
    if matches!(which, Which::GpGiven | Which::GpSplit) {
        inputs.push((eps, values.map(|v| v["eps"].clone()).unwrap_or_else(|| rand(23, batch, 1.0).iter().map(|e| e.abs()).collect())));
    }
    if let Some(v) = values {
        for name in store.param_names().cloned().collect::<Vec<_>>() {
            gpu().write(&store.param(&name).unwrap().buffer, &v[&name]).unwrap();
        }
    }
    // An input the penalty does not read (r1's fake, say) is left out of the graph's leaves.
    let used: Vec<Tensor> = g.nodes.iter().flat_map(|n| n.inputs.clone()).collect();
    inputs.retain(|(t, _)| used.contains(t));
    let params = d.params(&g);
    check_gradients(&mut g, &mut store, loss, &params, &inputs)
}

#[test]
fn r1_parameter_gradients_match_finite_differences() {
    penalty_gradients(Which::R1, false, None);
}

#[test]
fn gradient_penalty_parameter_gradients_match_finite_differences() {
    penalty_gradients(Which::GpGiven, false, None);
    penalty_gradients(Which::GpUniform, false, None);
}

#[test]
fn penalties_through_dropout_see_the_forward_mask_in_both_backwards() {
    // The reference recomputes the mask from (seed, step 0) in the forward, the first and the
    // second backward; finite differences pass only if all three agree, and the GPU matches.
    penalty_gradients(Which::R1, true, None);
    penalty_gradients(Which::GpUniform, true, None);
}

fn fixture() -> HashMap<String, Vec<f32>> {
    let bytes = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/second_order.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors().into_iter().map(|(name, view)| (name, bytemuck::pod_collect_to_vec(view.data()))).collect()
}

#[test]
fn r1_and_gradient_penalty_match_pytorch_create_graph() {
    let want = fixture();
    for (which, name) in [(Which::R1, "r1"), (Which::GpGiven, "gp"), (Which::GpSplit, "gp")] {
        let got = penalty_gradients(which, false, Some(&want));
        let want_loss = want[name][0] as f64;
        let loss_err = (got.loss - want_loss).abs() / want_loss.abs();
        eprintln!("{name}: kiln {} vs PyTorch {want_loss}, rel {loss_err:.2e}", got.loss);
        assert!(loss_err <= 1e-4, "{name}: kiln {} vs PyTorch {want_loss}", got.loss);
        for (param, grad) in &got.gpu {
            let reference = f64s(&want[&format!("{name}.grad.{param}")]);
            let err = rel_l2(grad, &reference);
            eprintln!("{name} d{param}: kiln vs PyTorch rel L2 {err:.2e}");
            assert!(err <= 1e-4, "{name} d{param}: kiln vs PyTorch rel L2 {err:.3e}");
        }
    }
}

#[test]
fn a_discriminator_with_batch_norm_is_refused_naming_the_layer() {
    let d = Sequential::new(
        "disc.",
        vec![
            Layer::Conv2d(nn::Conv2d { in_channels: 1, out_channels: 2, kernel: 3, stride: 1, padding: 1, bias: false }),
            Layer::BatchNorm(nn::BatchNorm { channels: 2, eps: 1e-5, momentum: 0.1 }),
            Layer::Flatten(nn::Flatten),
            nn::linear(32, 1),
        ],
    );
    let mut g = Graph::new();
    let real = g.input("real", &[2, 1, 4, 4]);
    let err = penalty::r1(&mut g, &d, real, Mode::train(0)).unwrap_err().to_string();
    assert!(err.contains("batch norm") && err.contains("disc.1"), "{err}");
    let fake = g.input("fake", &[2, 1, 4, 4]);
    let err = penalty::gradient_penalty(&mut g, &d, real, fake, Mode::train(0), Epsilon::Uniform { seed: 1 }).unwrap_err().to_string();
    assert!(err.contains("batch norm") && err.contains("disc.1"), "{err}");
}

#[test]
fn gradient_penalty_refuses_mismatched_images_and_weights() {
    let d = small_d(false);
    let mut g = Graph::new();
    let real = g.input("real", &[3, 1, 12, 12]);
    let fake = g.input("fake", &[2, 1, 12, 12]);
    let err = penalty::gradient_penalty(&mut g, &d, real, fake, Mode::eval(), Epsilon::Uniform { seed: 1 }).unwrap_err().to_string();
    assert!(err.contains("gradient_penalty") && err.contains("[2, 1, 12, 12]"), "{err}");
    let eps = g.input("eps", &[3, 1]);
    let err = penalty::gradient_penalty(&mut g, &d, real, real, Mode::eval(), Epsilon::Given(eps)).unwrap_err().to_string();
    assert!(err.contains("eps") && err.contains("[3]"), "{err}");
}

/// Which D loss a DCGAN step builds.
#[derive(Clone, Copy, Debug)]
enum DLoss {
    /// BCE with logits on real (1) and fake (0): the plain step, for comparison.
    Bce,
    /// The same plus γ/2 · R1 from the real logits (γ = 10).
    BceR1,
    /// WGAN: mean D(fake) − mean D(real) + 10 · GP.
    WganGp,
}

fn dcgan_d_step(which: DLoss, batch: usize) -> (Vec<f32>, std::time::Duration) {
    use ops::{Fill, Loss, LossKind, Reduction, Scale};
    let gpu = gpu();
    let image = kiln::models::dcgan::ImageShape { channels: 1, size: 28 };
    let d = kiln::models::dcgan::discriminator(image).unwrap();
    let mut g = Graph::new();
    let shape = [batch, 1, 28, 28];
    let real = g.input("real", &shape);
    let fake = g.input("fake", &shape);
    let mode = Mode::train(17);
    let on_real = d.forward(&mut g, real, mode).unwrap();
    let on_fake = d.forward(&mut g, fake, mode).unwrap();
    let mean = |g: &mut Graph, t| g.apply1(Sum { all: true, mean: true }, &[t], "mean").unwrap();
    let (loss, penalty) = match which {
        DLoss::Bce | DLoss::BceR1 => {
            let ones = g.apply1(Fill { value: 1.0, shape: vec![batch, 1] }, &[], "ones").unwrap();
            let zeros = g.apply1(Fill { value: 0.0, shape: vec![batch, 1] }, &[], "zeros").unwrap();
            let bce = Loss(LossKind::BceWithLogits(Reduction::Mean));
            let a = g.apply1(bce, &[on_real, ones], "loss").unwrap();
            let b = g.apply1(Loss(LossKind::BceWithLogits(Reduction::Mean)), &[on_fake, zeros], "loss").unwrap();
            let loss = g.apply1(Add, &[a, b], "loss").unwrap();
            match which {
                DLoss::BceR1 => {
                    let r1 = penalty::r1_of_logits(&mut g, real, on_real).unwrap();
                    let scaled = g.apply1(Scale { alpha: 5.0 }, &[r1], "r1").unwrap();
                    (g.apply1(Add, &[loss, scaled], "loss").unwrap(), Some(r1))
                }
                _ => (loss, None),
            }
        }
        DLoss::WganGp => {
            let (r, f) = (mean(&mut g, on_real), mean(&mut g, on_fake));
            let minus_r = g.apply1(Scale { alpha: -1.0 }, &[r], "wgan").unwrap();
            let wgan = g.apply1(Add, &[f, minus_r], "wgan").unwrap();
            let gp = penalty::gradient_penalty(&mut g, &d, real, fake, mode, Epsilon::Uniform { seed: 9 }).unwrap();
            let scaled = g.apply1(Scale { alpha: 10.0 }, &[gp], "gp").unwrap();
            (g.apply1(Add, &[wgan, scaled], "loss").unwrap(), Some(gp))
        }
    };
    let params = d.params(&g);
    let pairs = g.gradients(loss, &params).unwrap();
    let mut store = Store::new();
    d.register(gpu, &mut store, "discriminator", &mut InitRng::new(1)).unwrap();
    let keep: Vec<Tensor> = [Some(loss), penalty].into_iter().flatten().collect();
    let program = Program::compile(gpu, &g, &mut store, &keep, &pairs).unwrap();
    let n = batch * 28 * 28;
    gpu.write(&store.input_buffer("real").unwrap().buffer, &rand(1, n, 1.0)).unwrap();
    gpu.write(&store.input_buffer("fake").unwrap().buffer, &rand(2, n, 1.0)).unwrap();
    // One step to warm up, then the fastest of three timed steps at other stream positions
    // (new dropout masks and ε each step).
    program.set_step(gpu, 0).unwrap();
    program.run(gpu).unwrap();
    let mut took = std::time::Duration::MAX;
    for step in 1..=3 {
        program.set_step(gpu, step).unwrap();
        let start = std::time::Instant::now();
        program.run(gpu).unwrap();
        took = took.min(start.elapsed());
    }
    let mut values = vec![gpu.read(program.buffer(loss).unwrap()).unwrap()[0]];
    if let Some(p) = penalty {
        values.push(gpu.read(program.buffer(p).unwrap()).unwrap()[0]);
    }
    for p in &params {
        let grad = gpu.read(store.grad(&g.info(*p).name).unwrap()).unwrap();
        assert!(grad.iter().all(|v| v.is_finite()), "{which:?}: d{} is not finite", g.info(*p).name);
        assert!(grad.iter().any(|&v| v != 0.0) || g.info(*p).name.ends_with(".bias"), "{which:?}: d{} is all zero", g.info(*p).name);
    }
    (values, took)
}

#[test]
fn the_dcgan_discriminator_penalties_compile_and_run_at_batch_64() {
    let (plain, plain_time) = dcgan_d_step(DLoss::Bce, 64);
    let (r1, r1_time) = dcgan_d_step(DLoss::BceR1, 64);
    let (gp, gp_time) = dcgan_d_step(DLoss::WganGp, 64);
    eprintln!("DCGAN D step at batch 64 (fastest of 3): BCE {plain_time:.2?} (loss {}), BCE + R1 {r1_time:.2?} (loss {}, R1 {}), WGAN-GP {gp_time:.2?} (loss {}, GP {})", plain[0], r1[0], r1[1], gp[0], gp[1]);
    for v in plain.iter().chain(&r1).chain(&gp) {
        assert!(v.is_finite(), "a loss or penalty is not finite: {plain:?} {r1:?} {gp:?}");
    }
    assert!(r1[1] > 0.0 && gp[1] > 0.0, "R1 {} and GP {} must be positive", r1[1], gp[1]);
}

#[test]
fn mse_and_bce_with_logits_gradients_differentiate_again() {
    use ops::{Loss, LossKind, Reduction};
    for reduction in [Reduction::Mean, Reduction::Sum, Reduction::None] {
        for kind in [LossKind::Mse(reduction), LossKind::BceWithLogits(reduction)] {
            eprintln!("{kind:?}");
            // The target is a parameter of the second backward (in [−1, 1]: only its
            // gradient's formula matters; the first has none for BCE), and a loss per element
            // is weighted before the sum.
            check_double_backward_at(&[&[3, 5], &[3, 5]], 0.0, 1, |g, p| {
                let loss = g.apply1(Loss(kind), p, "loss").unwrap();
                if reduction == Reduction::None {
                    loss
                } else {
                    g.reshape(loss, &[1]).unwrap()
                }
            });
        }
    }
}

#[test]
fn second_derivatives_of_probability_bce_are_refused_naming_the_layer() {
    use ops::{Loss, LossKind, Reduction};
    let mut g = Graph::new();
    let p = g.param("p", &[4]);
    let t = g.input("t", &[4]);
    let loss = g.apply1(Loss(LossKind::Bce(Reduction::Mean)), &[p, t], "disc.loss").unwrap();
    let dp = g.backward(loss, &[p]).unwrap()[0].unwrap();
    let s = g.apply1(Sum { all: true, mean: false }, &[dp], "s").unwrap();
    let err = g.backward(s, &[p]).unwrap_err().to_string();
    assert!(err.contains("disc.loss") && err.contains("second derivatives"), "{err}");
}

#[test]
fn sqrt_kernels_match_the_reference_past_65535_workgroups() {
    use kiln::kernels::elementwise;
    use kiln::reference::elementwise as reference;
    let gpu = gpu();
    // 1, odd, a non-multiple of the 256 workgroup, and a grid folded into y.
    for n in [1, 257, 1000, 65_535 * 256 + 3] {
        // Non-negative inputs, zeros among them: eps keeps sqrt's gradient finite there.
        let mut x: Vec<f32> = rand(n as u64, n, 1.0).iter().map(|v| v.abs()).collect();
        x[0] = 0.0;
        let dy = rand(7, n, 1.0);
        let (xb, dyb, yb, dxb) = (gpu.upload("x", &x).unwrap(), gpu.upload("dy", &dy).unwrap(), gpu.zeros("y", n).unwrap(), gpu.zeros("dx", n).unwrap());
        let eps = 1e-6;
        gpu.run(&[elementwise::sqrt(gpu, eps, &xb, &yb, n).unwrap(), elementwise::sqrt_backward(gpu, &yb, &dyb, &dxb, n).unwrap()]).unwrap();
        let y = gpu.read(&yb).unwrap();
        let want_y = reference::sqrt(eps as f64, &f64s(&x));
        let want_dx = reference::sqrt_backward(&f64s(&y), &f64s(&dy));
        let err_y = rel_l2(&f64s(&y), &want_y);
        let err_dx = rel_l2(&f64s(&gpu.read(&dxb).unwrap()), &want_dx);
        eprintln!("sqrt n={n}: y rel L2 {err_y:.2e}, dx rel L2 {err_dx:.2e}");
        assert!(err_y <= 1e-6 && err_dx <= 1e-6, "sqrt n={n}: y {err_y:.3e}, dx {err_dx:.3e}");
    }
}

#[test]
fn penalties_of_a_projection_discriminator_match_finite_differences() {
    // dcgan::discriminate's projection head (linear(φ(x)) + ⟨embed(y), φ(x)⟩) on the small D,
    // through r1_of_logits and interpolate + gradient_penalty_of_logits.
    use kiln::models::dcgan::{self, Conditioning, Labels};
    for gp in [false, true] {
        let d = small_d(true);
        let classes = 3;
        let conditioning = Conditioning { classes };
        let mut g = Graph::new();
        let batch = 3;
        let real = g.input("real", &[batch, 1, 12, 12]);
        let fake = g.input("fake", &[batch, 1, 12, 12]);
        let labels = g.input("labels", &[batch]);
        let mode = Mode::train(4);
        let conditional = Some(Labels { conditioning, labels });
        let loss = if gp {
            let mixed = penalty::interpolate(&mut g, real, fake, Epsilon::Uniform { seed: 8 }).unwrap();
            let logits = dcgan::discriminate(&mut g, &d, mixed, conditional, mode).unwrap();
            penalty::gradient_penalty_of_logits(&mut g, mixed, logits).unwrap()
        } else {
            let logits = dcgan::discriminate(&mut g, &d, real, conditional, mode).unwrap();
            penalty::r1_of_logits(&mut g, real, logits).unwrap()
        };
        let (mut params, states) = d.init(&mut InitRng::new(6));
        let n = 36 * classes;
        params.push(nn::Init { name: dcgan::D_EMBED.into(), shape: vec![classes, 36], values: rand(9, n, 0.5) });
        let mut store = Store::new();
        nn::register(gpu(), &mut store, "d", params, states).unwrap();
        let n = batch * 144;
        let mut inputs = vec![(real, rand(31, n, 1.0)), (labels, vec![2.0, 0.0, 2.0])];
        if gp {
            inputs.push((fake, rand(32, n, 1.0)));
        }
        let params = d.params(&g);
        assert!(params.iter().any(|&p| g.info(p).name == dcgan::D_EMBED));
        eprintln!("{}", if gp { "GP" } else { "R1" });
        check_gradients(&mut g, &mut store, loss, &params, &inputs);
    }
}
