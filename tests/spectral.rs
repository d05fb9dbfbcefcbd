//! Spectral normalization as a layer: PyTorch's numbers (fixtures/spectral.safetensors, from
//! scripts/spectral_fixtures.py), one power iteration per step however many forwards a step
//! runs, eval mode, gradients against finite differences and PyTorch's state_dict names.

mod common;
use kiln::graph::ops::{Act, Mul, Sum};
use kiln::graph::{Graph, Program, Role, Store, Tensor};
use kiln::gpu::{Gpu, GpuOptions};
use kiln::nn::{self, InitRng, Layer, Mode, Sequential};
use kiln::reference::spectral as reference;
use kiln::train::checkpoint::{capture, load_weights, Checkpoint};
use std::sync::OnceLock;

fn gpu() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| Gpu::new(&GpuOptions::default()).unwrap_or_else(|e| panic!("{e}")))
}

fn f64s(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| v as f64).collect()
}

fn rel_l2(got: &[f64], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len(), "length mismatch");
    let d: f64 = got.iter().zip(want).map(|(a, b)| (a - b).powi(2)).sum::<f64>().sqrt();
    let n: f64 = want.iter().map(|b| b * b).sum::<f64>().sqrt();
    d / n.max(1e-30)
}

fn assert_close(name: &str, got: &[f32], want: &[f64], tol: f64) {
    let err = rel_l2(&f64s(got), want);
    eprintln!("{name}: rel L2 {err:.2e}");
    assert!(err <= tol, "{name}: rel L2 {err:.3e} > {tol:e}");
}

fn rand(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        })
        .collect()
}

fn linear(i: usize, o: usize) -> Layer {
    Layer::Linear(nn::Linear { in_features: i, out_features: o, bias: true })
}

fn conv(i: usize, o: usize, k: usize, stride: usize, padding: usize) -> Layer {
    Layer::Conv2d(nn::Conv2d { in_channels: i, out_channels: o, kernel: k, stride, padding, bias: true })
}

fn conv_t(i: usize, o: usize, k: usize, stride: usize, padding: usize) -> Layer {
    Layer::ConvTranspose2d(nn::ConvTranspose2d { in_channels: i, out_channels: o, kernel: k, stride, padding, output_padding: 0, bias: true })
}

/// The spectral_norm nodes of `g`, in order: (weight / σ, σ) of each.
fn normalized_weights(g: &Graph) -> Vec<(Tensor, Tensor)> {
    g.nodes.iter().filter(|n| n.op.name() == "spectral_norm").map(|n| (n.outputs[0], n.outputs[1])).collect()
}

fn read_state(store: &mut Store, name: &str) -> Vec<f32> {
    let gpu = gpu();
    let shape = store.states().find(|(n, _)| *n == name).unwrap_or_else(|| panic!("no state {name}")).1.shape.clone();
    gpu.read(&store.state(gpu, name, &shape).unwrap().buffer).unwrap()
}

/// Σ y ∘ c for an input `c` shaped as y: a loss whose gradient dL/dy is c.
fn weighted_sum(g: &mut Graph, y: Tensor) -> Tensor {
    let shape = g.shape(y).to_vec();
    let c = g.input("c", &shape);
    let yc = g.apply1(Mul, &[y, c], "loss").unwrap();
    g.apply1(Sum { all: true, mean: false }, &[yc], "loss").unwrap()
}

#[test]
fn spectral_norm_matches_pytorch_for_linear_conv_and_transposed_conv() {
    let gpu = gpu();
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/spectral.safetensors");
    let ckpt = Checkpoint::load(std::path::Path::new(file)).unwrap();
    for (name, layer) in [("linear", linear(7, 5)), ("conv", conv(3, 4, 3, 2, 1)), ("convt", conv_t(3, 2, 4, 2, 1))] {
        let model = Sequential::new(&format!("{name}."), vec![nn::spectral_norm(layer).unwrap()]);
        let mut store = Store::new();
        model.register(gpu, &mut store, "model", &mut InitRng::new(0)).unwrap();
        load_weights(gpu, &store, &ckpt).unwrap();
        let fixture = |what: &str| ckpt.tensor(&format!("test.{name}.{what}")).unwrap().clone();

        let mut g = Graph::new();
        let (x_shape, x) = fixture("input");
        let input = g.input("x", &x_shape);
        let y = model.forward(&mut g, input, Mode::train(0)).unwrap();
        let loss = weighted_sum(&mut g, y);
        let params = model.params(&g);
        let grads = g.gradients(loss, &params).unwrap();
        let (w_sn, _) = normalized_weights(&g)[0];
        let program = Program::compile(gpu, &g, &mut store, &[w_sn], &grads).unwrap();
        gpu.write(&store.input_buffer("x").unwrap().buffer, &x).unwrap();
        gpu.write(&store.input_buffer("c").unwrap().buffer, &fixture("c").1).unwrap();
        program.run(gpu).unwrap();

        let at = format!("{name}.0.parametrizations.weight");
        assert_close(&format!("{name}: weight / σ vs PyTorch"), &gpu.read(program.buffer(w_sn).unwrap()).unwrap(), &f64s(&fixture("weight_sn").1), 1e-5);
        assert_close(&format!("{name}: _u vs PyTorch"), &read_state(&mut store, &format!("{at}.0._u")), &f64s(&fixture("u").1), 1e-5);
        assert_close(&format!("{name}: _v vs PyTorch"), &read_state(&mut store, &format!("{at}.0._v")), &f64s(&fixture("v").1), 1e-5);
        let grad = |param: &str| gpu.read(store.grad(param).unwrap()).unwrap();
        assert_close(&format!("{name}: d original vs PyTorch"), &grad(&format!("{at}.original")), &f64s(&fixture("grad_original").1), 1e-5);
        assert_close(&format!("{name}: d bias vs PyTorch"), &grad(&format!("{name}.0.bias")), &f64s(&fixture("grad_bias").1), 1e-5);
    }
}

/// A small discriminator with every weighted layer spectral-normed, its store, and a batch.
fn discriminator() -> (Sequential, Store) {
    let model = Sequential::new("d.", vec![conv(2, 3, 3, 2, 1), nn::act(Act::LeakyRelu(0.2)), Layer::Flatten(nn::Flatten), linear(27, 1)]).spectral_normed();
    let mut store = Store::new();
    model.register(gpu(), &mut store, "d", &mut InitRng::new(3)).unwrap();
    (model, store)
}

const D_STATES: [&str; 4] = ["d.0.parametrizations.weight.0._u", "d.0.parametrizations.weight.0._v", "d.3.parametrizations.weight.0._u", "d.3.parametrizations.weight.0._v"];

/// Three passes through D as a GAN step makes them (real, fake, G's update): the first with
/// `first`, the others with `later`. Returns the graph and each pass's σ of layer d.0.
fn three_passes(model: &Sequential, first: Mode, later: Mode) -> (Graph, Vec<Tensor>) {
    let mut g = Graph::new();
    for (i, mode) in [first, later, later].into_iter().enumerate() {
        let x = g.input(&format!("x{i}"), &[2, 2, 5, 5]);
        model.forward(&mut g, x, mode).unwrap();
    }
    let sigmas = normalized_weights(&g).iter().step_by(2).map(|&(_, s)| s).collect();
    (g, sigmas)
}

/// Runs `g` once per step for `steps` steps; returns the states after, and the kept σs.
fn run_steps(g: &Graph, store: &mut Store, keep: &[Tensor], steps: usize) -> (Vec<Vec<f32>>, Vec<f32>) {
    let gpu = gpu();
    let program = Program::compile(gpu, g, store, keep, &[]).unwrap();
    for i in 0..3 {
        gpu.write(&store.input_buffer(&format!("x{i}")).unwrap().buffer, &rand(i as u64 + 10, 100)).unwrap();
    }
    for _ in 0..steps {
        program.run(gpu).unwrap();
    }
    let sigmas = keep.iter().map(|&t| gpu.read(program.buffer(t).unwrap()).unwrap()[0]).collect();
    (D_STATES.iter().map(|n| read_state(store, n)).collect(), sigmas)
}

fn d0_matrix(store: &Store) -> Vec<f64> {
    let w = gpu().read(&store.param("d.0.parametrizations.weight.original").unwrap().buffer).unwrap();
    reference::to_matrix(&f64s(&w), &[3, 2, 3, 3], 0)
}

#[test]
fn a_step_with_three_forwards_iterates_once_and_the_later_ones_read_the_updated_vectors() {
    let (model, mut store) = discriminator();
    let before: Vec<Vec<f32>> = D_STATES.iter().map(|n| read_state(&mut store, n)).collect();
    let m = d0_matrix(&store);
    let later = Mode { power_iteration: false, ..Mode::train(0) };
    let (g, sigmas) = three_passes(&model, Mode::train(0), later);
    let (after, got_sigmas) = run_steps(&g, &mut store, &sigmas, 2);

    // Two steps: exactly two iterations from the registered vectors.
    let (mut u, mut v) = (f64s(&before[0]), f64s(&before[1]));
    reference::power_iteration(&m, &mut u, &mut v, 2, 1e-12);
    assert_close("d.0 _u after two steps vs two reference iterations", &after[0], &u, 1e-5);
    assert_close("d.0 _v after two steps vs two reference iterations", &after[1], &v, 1e-5);
    // Every pass of the step normalizes by the σ of the updated vectors, not the old ones.
    let sigma = reference::sigma(&m, &u, &v);
    for (i, s) in got_sigmas.iter().enumerate() {
        assert_close(&format!("σ of pass {i}"), &[*s], &[sigma], 1e-5);
    }

    // The same three passes all in plain training mode iterate three times a step.
    let (model, mut store) = discriminator();
    let (g, _) = three_passes(&model, Mode::train(0), Mode::train(0));
    let (every_pass, _) = run_steps(&g, &mut store, &[], 1);
    let (mut u3, mut v3) = (f64s(&before[0]), f64s(&before[1]));
    reference::power_iteration(&m, &mut u3, &mut v3, 3, 1e-12);
    assert_close("d.0 _u after one step of three iterating passes", &every_pass[0], &u3, 1e-5);
}

#[test]
fn eval_mode_leaves_u_and_v_alone() {
    let (model, mut store) = discriminator();
    let before: Vec<Vec<f32>> = D_STATES.iter().map(|n| read_state(&mut store, n)).collect();
    let (g, sigmas) = three_passes(&model, Mode::eval(), Mode::eval());
    let (after, got_sigmas) = run_steps(&g, &mut store, &sigmas, 2);
    assert_eq!(after, before, "eval mode changed u or v");
    let sigma = reference::sigma(&d0_matrix(&store), &f64s(&before[0]), &f64s(&before[1]));
    assert_close("eval σ from the stored vectors", &got_sigmas[..1], &[sigma], 1e-5);
}

#[test]
fn gradients_through_spectral_normed_layers_match_the_reference_and_finite_differences() {
    let gpu = gpu();
    // A discriminator-like and a generator-like model: dims 0 and 1.
    let cases = [
        (Sequential::new("d.", vec![conv(2, 3, 3, 2, 1), nn::act(Act::Tanh), Layer::Flatten(nn::Flatten), linear(12, 2)]).spectral_normed(), vec![2, 2, 4, 3]),
        (Sequential::new("g.", vec![linear(3, 8), Layer::Reshape(nn::Reshape { shape: vec![2, 2, 2] }), conv_t(2, 3, 4, 2, 1)]).spectral_normed(), vec![2, 3]),
    ];
    for (model, x_shape) in cases {
        let mut store = Store::new();
        model.register(gpu, &mut store, "model", &mut InitRng::new(5)).unwrap();
        let build = |mode: Mode| {
            let mut g = Graph::new();
            let x = g.input("x", &x_shape);
            let y = model.forward(&mut g, x, mode).unwrap();
            let loss = weighted_sum(&mut g, y);
            (g, x, loss)
        };
        let (mut g, x, loss) = build(Mode::train(0));
        let params = model.params(&g);
        let grads = g.gradients(loss, &params).unwrap();
        let x_values = rand(1, x_shape.iter().product());
        let c = g.tensors.iter().position(|t| t.name == "c").map(Tensor::from_index).unwrap();
        let c_values = rand(2, g.info(c).numel());

        // Leaves for the reference from the store as registered.
        let read = |t: Tensor, store: &mut Store| -> Vec<f64> {
            let info = g.info(t);
            let b = match info.role {
                Role::Param => store.param(&info.name).unwrap().buffer.clone(),
                _ => store.state(gpu, &info.name, &info.shape).unwrap().buffer.clone(),
            };
            f64s(&gpu.read(&b).unwrap())
        };
        let states: Vec<Tensor> = (0..g.tensors.len()).map(Tensor::from_index).filter(|&t| g.info(t).role == Role::State).collect();
        let mut leaves: Vec<(Tensor, Vec<f64>)> = params.iter().chain(&states).map(|&t| (t, read(t, &mut store))).collect();
        leaves.push((x, f64s(&x_values)));
        leaves.push((c, f64s(&c_values)));
        let values = g.evaluate_reference(&leaves).unwrap();

        let program = Program::compile(gpu, &g, &mut store, &[loss], &grads).unwrap();
        gpu.write(&store.input_buffer("x").unwrap().buffer, &x_values).unwrap();
        gpu.write(&store.input_buffer("c").unwrap().buffer, &c_values).unwrap();
        program.run(gpu).unwrap();

        // Finite differences of the loss with u, v fixed at their updated values: an eval
        // forward (no iteration) from the reference's states after the step.
        let (eval, ex, eloss) = build(Mode::eval());
        let name_of = |t: Tensor| g.info(t).name.clone();
        let eval_leaf = |name: &str| (0..eval.tensors.len()).map(Tensor::from_index).find(|&t| eval.info(t).name == name && eval.info(t).role != Role::Intermediate).unwrap();
        let mut eval_leaves: Vec<(Tensor, Vec<f64>)> = vec![(ex, f64s(&x_values))];
        eval_leaves.push((eval_leaf("c"), f64s(&c_values)));
        for &t in params.iter().chain(&states) {
            let value = if g.info(t).role == Role::State { values[t.index()].as_ref().unwrap().1.clone() } else { leaves.iter().find(|l| l.0 == t).unwrap().1.clone() };
            eval_leaves.push((eval_leaf(&name_of(t)), value));
        }
        for (&p, &(_, grad)) in params.iter().zip(&grads) {
            let got = gpu.read(store.grad(&name_of(p)).unwrap()).unwrap();
            let want = &values[grad.index()].as_ref().unwrap().1;
            assert_close(&format!("gradient of {}: GPU vs reference", name_of(p)), &got, want, 1e-5);
            let slot = eval_leaves.iter().position(|(t, _)| *t == eval_leaf(&name_of(p))).unwrap();
            let numeric = crate::common::reference_fd(&eval, &eval_leaves, slot, eloss, 1e-6);
            let err = rel_l2(want, &numeric);
            eprintln!("gradient of {}: reference vs finite differences rel L2 {err:.2e}", name_of(p));
            assert!(err <= 1e-5, "gradient of {}: reference vs finite differences rel L2 {err:.3e}", name_of(p));
        }
    }
}

#[test]
fn spectral_normed_layers_use_pytorchs_state_dict_names_in_checkpoints() {
    let gpu = gpu();
    let model = Sequential::new("discriminator.", vec![conv(1, 4, 5, 2, 2), nn::act(Act::LeakyRelu(0.2)), Layer::Flatten(nn::Flatten), linear(16, 1)]).spectral_normed();
    let g_model = Sequential::new("generator.", vec![conv_t(3, 2, 4, 2, 1)]).spectral_normed();
    let (params, states) = model.init(&mut InitRng::new(1));
    let names = |v: &[nn::Init]| -> Vec<(String, Vec<usize>)> { v.iter().map(|i| (i.name.clone(), i.shape.clone())).collect() };
    let at = |l: usize, what: &str| format!("discriminator.{l}.parametrizations.weight.{what}");
    assert_eq!(
        names(&params),
        [(at(0, "original"), vec![4, 1, 5, 5]), ("discriminator.0.bias".into(), vec![4]), (at(3, "original"), vec![1, 16]), ("discriminator.3.bias".into(), vec![1])]
    );
    assert_eq!(names(&states), [(at(0, "0._u"), vec![4]), (at(0, "0._v"), vec![25]), (at(3, "0._u"), vec![1]), (at(3, "0._v"), vec![16])]);
    // A transposed conv normalizes along dim 1: u has out_channels entries.
    let (_, g_states) = g_model.init(&mut InitRng::new(1));
    assert_eq!(names(&g_states), [("generator.0.parametrizations.weight.0._u".into(), vec![2]), ("generator.0.parametrizations.weight.0._v".into(), vec![48])]);

    // Registration's 15 iterations leave unit vectors whose σ is near the largest singular
    // value (found here by 500 reference iterations).
    let w = f64s(&params[0].values);
    let m = reference::to_matrix(&w, &[4, 1, 5, 5], 0);
    let (u, v) = (f64s(&states[0].values), f64s(&states[1].values));
    for x in [&u, &v] {
        assert!((x.iter().map(|a| a * a).sum::<f64>() - 1.0).abs() < 1e-6, "not a unit vector: {x:?}");
    }
    let (mut top_u, mut top_v) = (u.clone(), v.clone());
    reference::power_iteration(&m, &mut top_u, &mut top_v, 500, 1e-12);
    let (sigma, top) = (reference::sigma(&m, &u, &v), reference::sigma(&m, &top_u, &top_v));
    eprintln!("σ after registration {sigma:.6}, largest singular value {top:.6}");
    assert!(sigma <= top * (1.0 + 1e-9) && sigma >= 0.99 * top, "σ {sigma} vs {top}");

    // A replaced weight (the DCGAN paper's init) gets vectors fitted to it.
    let mut replaced = params.clone();
    replaced[0].values = params[0].values.iter().map(|x| x * 10.0).collect();
    let mut refreshed = states.clone();
    model.refresh_spectral_states(&replaced, &mut refreshed);
    let m10 = reference::to_matrix(&f64s(&replaced[0].values), &[4, 1, 5, 5], 0);
    let s10 = reference::sigma(&m10, &f64s(&refreshed[0].values), &f64s(&refreshed[1].values));
    assert!((s10 - 10.0 * top).abs() <= 1e-3 * top, "σ after refresh {s10}, want {}", 10.0 * top);

    // The checkpoint holds exactly these names, and loads back by them.
    let mut store = Store::new();
    model.register(gpu, &mut store, "discriminator", &mut InitRng::new(1)).unwrap();
    let mut ckpt = Checkpoint::default();
    capture(gpu, &store, &[], &mut ckpt).unwrap();
    let mut want: Vec<String> = params.iter().chain(&states).map(|i| i.name.clone()).collect();
    want.sort();
    assert_eq!(ckpt.tensors.keys().cloned().collect::<Vec<_>>(), want);
    assert_eq!(ckpt.tensors[&at(0, "0._u")].1, states[0].values);
    load_weights(gpu, &store, &ckpt).unwrap();
}

#[test]
fn only_layers_with_a_weight_can_be_spectral_normed() {
    let err = nn::spectral_norm(nn::act(Act::Tanh)).unwrap_err().to_string();
    assert!(err.contains("spectral_norm") && err.contains("Linear, Conv2d and ConvTranspose2d"), "{err}");
    let wrapped = Layer::SpectralNorm(Box::new(Layer::Flatten(nn::Flatten)));
    let mut g = Graph::new();
    let x = g.input("x", &[2, 3]);
    let err = wrapped.forward(&mut g, "d.1", x, Mode::train(0)).unwrap_err().to_string();
    assert!(err.contains("\"d.1\"") && err.contains("no weight"), "{err}");
    // A shape error inside names the layer.
    let mut g = Graph::new();
    let x = g.input("x", &[2, 5]);
    let err = nn::spectral_norm(linear(4, 3)).unwrap().forward(&mut g, "d.0", x, Mode::train(0)).unwrap_err().to_string();
    assert!(err.contains("d.0"), "{err}");
    // σ is not differentiable here: a loss built on it is refused, naming the layer.
    let mut g = Graph::new();
    let w = g.param("w", &[3, 4]);
    let (u, v) = (g.state("u", &[3]), g.state("v", &[4]));
    let sigma = g.apply(kiln::graph::ops::SpectralNorm::new(0, true), &[w, u, v], "sn").unwrap()[1];
    let err = g.backward(sigma, &[w]).unwrap_err().to_string();
    assert!(err.contains("\"sn\"") && err.contains("σ"), "{err}");
}

#[test]
fn a_spectral_normed_dcgan_discriminator_steps_as_the_reference_does() {
    use kiln::graph::ops::{Fill, Loss, LossKind, Reduction};
    let gpu = gpu();
    let model = kiln::models::dcgan::discriminator(kiln::models::dcgan::ImageShape { channels: 1, size: 28 }).unwrap().spectral_normed();
    let mut store = Store::new();
    model.register(gpu, &mut store, "discriminator", &mut InitRng::new(7)).unwrap();
    let mut g = Graph::new();
    let x = g.input("x", &[2, 1, 28, 28]);
    let logits = model.forward(&mut g, x, Mode { seed: 1, ..Mode::train(0) }).unwrap();
    let ones = g.apply1(Fill { value: 1.0, shape: vec![2, 1] }, &[], "label").unwrap();
    let loss = g.apply1(Loss(LossKind::BceWithLogits(Reduction::Mean)), &[logits, ones], "loss").unwrap();
    let params = model.params(&g);
    let grads = g.gradients(loss, &params).unwrap();
    let x_values = rand(3, 2 * 28 * 28);
    let states: Vec<Tensor> = (0..g.tensors.len()).map(Tensor::from_index).filter(|&t| g.info(t).role == Role::State).collect();
    assert_eq!(states.len(), 6, "u and v of two convolutions and the linear layer");
    let mut leaves: Vec<(Tensor, Vec<f64>)> = Vec::new();
    for &t in params.iter().chain(&states) {
        let info = g.info(t);
        let b = if info.role == Role::Param { store.param(&info.name).unwrap().buffer.clone() } else { store.state(gpu, &info.name, &info.shape).unwrap().buffer.clone() };
        leaves.push((t, f64s(&gpu.read(&b).unwrap())));
    }
    leaves.push((x, f64s(&x_values)));
    let values = g.evaluate_reference(&leaves).unwrap();
    let program = Program::compile(gpu, &g, &mut store, &[loss], &grads).unwrap();
    gpu.write(&store.input_buffer("x").unwrap().buffer, &x_values).unwrap();
    program.run(gpu).unwrap();
    for &t in &states {
        let name = g.info(t).name.clone();
        assert_close(&format!("{name} after the step"), &read_state(&mut store, &name), &values[t.index()].as_ref().unwrap().1, 1e-5);
    }
    for (&p, &(_, grad)) in params.iter().zip(&grads) {
        let name = g.info(p).name.clone();
        assert_close(&format!("gradient of {name}"), &gpu.read(store.grad(&name).unwrap()).unwrap(), &values[grad.index()].as_ref().unwrap().1, 1e-4);
    }
}
