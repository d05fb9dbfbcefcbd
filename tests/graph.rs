//! The graph executor: autodiff, memory plan and replayed steps, against the CPU reference.

use kiln::graph::{Graph, Program, Store};
use kiln::gpu::{Gpu, GpuOptions};
use std::sync::OnceLock;

mod common;

fn gpu() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| Gpu::new(&GpuOptions::default()).unwrap_or_else(|e| panic!("{e}")))
}

/// A device of the test's own, for tests that count created objects: the counts are per
/// `Gpu`, and tests running in parallel on the shared one would move them.
fn own_gpu() -> Gpu {
    Gpu::new(&GpuOptions::default()).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn gradients_of_a_tensor_used_twice_accumulate() {
    // loss = (a * b) * a  →  dloss/da = 2ab, dloss/db = a²
    let gpu = gpu();
    let mut g = Graph::new();
    let a = g.param("a", &[1]);
    let b = g.param("b", &[1]);
    let ab = g.apply1(kiln::graph::ops::Mul, &[a, b], "ab").unwrap();
    let loss = g.apply1(kiln::graph::ops::Mul, &[ab, a], "loss").unwrap();
    let grads = g.backward(loss, &[a, b]).unwrap();
    let mut taken = Vec::new();
    let da = g.materialize(grads[0].unwrap(), &mut taken).unwrap();
    let db = g.materialize(grads[1].unwrap(), &mut taken).unwrap();

    let mut store = Store::new();
    store.add_group(gpu, "p", vec![("a".into(), vec![1], vec![3.0]), ("b".into(), vec![1], vec![-2.0])]).unwrap();
    let program = Program::compile(gpu, &g, &mut store, &[loss], &[(a, da), (b, db)]).unwrap();
    program.run(gpu).unwrap();
    assert_eq!(gpu.read(program.buffer(loss).unwrap()).unwrap(), vec![-18.0]);
    assert_eq!(gpu.read(store.grad("a").unwrap()).unwrap(), vec![-12.0]);
    assert_eq!(gpu.read(store.grad("b").unwrap()).unwrap(), vec![9.0]);

    // The CPU reference run of the same graph agrees.
    let values = g.evaluate_reference(&[(a, vec![3.0]), (b, vec![-2.0])]).unwrap();
    assert_eq!(values[da.index()].as_ref().unwrap().1, vec![-12.0]);
    assert_eq!(values[db.index()].as_ref().unwrap().1, vec![9.0]);
}

#[test]
fn parameters_not_asked_for_get_no_gradient_ops() {
    let mut g = Graph::new();
    let a = g.param("a", &[1]);
    let b = g.param("b", &[1]);
    let ab = g.apply1(kiln::graph::ops::Mul, &[a, b], "ab").unwrap();
    let before = g.nodes.len();
    let grads = g.backward(ab, &[a]).unwrap();
    // One fill for the seed and one mul for da; nothing for db.
    assert_eq!(g.nodes.len() - before, 2);
    assert!(grads[0].is_some());
}

#[test]
fn a_shape_mismatch_names_the_op_the_layer_and_both_shapes() {
    let mut g = Graph::new();
    let a = g.input("a", &[2, 3]);
    let b = g.input("b", &[3, 2]);
    let err = g.apply1(kiln::graph::ops::Add, &[a, b], "disc.1").unwrap_err().to_string();
    assert!(err.contains("add") && err.contains("disc.1") && err.contains("[2, 3]") && err.contains("[3, 2]"), "{err}");
}

#[test]
fn steps_after_the_first_create_no_buffers_or_bind_groups() {
    let gpu = &own_gpu();
    let mut g = Graph::new();
    let x = g.input("x", &[1000]);
    let mut h = x;
    for i in 0..6 {
        h = g.apply1(kiln::graph::ops::Scale { alpha: 0.5 }, &[h], &format!("s{i}")).unwrap();
    }
    let mut store = Store::new();
    let program = Program::compile(gpu, &g, &mut store, &[h], &[]).unwrap();
    // A chain needs two pooled buffers however long it is.
    assert_eq!(program.memory.planned, 2 * 4000, "{}", program.memory);
    assert_eq!(program.memory.naive, 5 * 4000);
    gpu.write(&store.input_buffer("x").unwrap().buffer, &vec![64.0f32; 1000]).unwrap();
    program.run(gpu).unwrap();
    let created = gpu.created.snapshot();
    for _ in 0..3 {
        program.run(gpu).unwrap();
    }
    assert_eq!(gpu.created.snapshot(), created);
    assert_eq!(gpu.read(program.buffer(h).unwrap()).unwrap(), vec![1.0; 1000]);
}

/// y = 2x over 3 elements, and a readback ring of `slots` for y. Returns x's buffer too.
fn doubling_with_readback(gpu: &Gpu, slots: usize) -> (Program, kiln::gpu::Readback, kiln::gpu::Buffer) {
    let mut g = Graph::new();
    let x = g.input("x", &[3]);
    let y = g.apply1(kiln::graph::ops::Scale { alpha: 2.0 }, &[x], "double").unwrap();
    let mut store = Store::new();
    let program = Program::compile(gpu, &g, &mut store, &[y], &[]).unwrap();
    let ring = kiln::gpu::Readback::new(gpu, vec![program.buffer(y).unwrap().clone()], slots).unwrap();
    let x_buf = store.input_buffer("x").unwrap().buffer.clone();
    (program, ring, x_buf)
}

#[test]
fn losses_come_back_through_the_readback_ring_without_waiting_each_step() {
    let gpu = gpu();
    let (program, mut ring, x_buf) = doubling_with_readback(gpu, 2);
    let mut seen = Vec::new();
    for step in 0..6u64 {
        gpu.write(&x_buf, &[step as f32, 1.0, -1.0]).unwrap();
        program.submit(gpu, Some((&mut ring, step))).unwrap();
        seen.extend(ring.collect(gpu, false).unwrap());
    }
    seen.extend(ring.collect(gpu, true).unwrap());
    // A full ring skips a request rather than stalling; every value that arrives is right.
    assert!(!seen.is_empty());
    for (step, values) in &seen {
        assert_eq!(values[0], vec![2.0 * *step as f32, 2.0, -2.0], "step {step}");
    }
    let tags: Vec<u64> = seen.iter().map(|(t, _)| *t).collect();
    assert!(tags.windows(2).all(|w| w[0] < w[1]), "{tags:?}");
}

#[test]
fn a_waited_collect_returns_every_request_while_another_thread_polls_the_device() {
    let gpu = gpu();
    let (program, mut ring, _) = doubling_with_readback(gpu, 4);
    common::with_another_thread_polling(gpu, || {
        for round in 0..500u64 {
            // Never more requests than slots, so none is skipped and all four must come back.
            for step in 0..4 {
                program.submit(gpu, Some((&mut ring, 4 * round + step))).unwrap();
            }
            let tags: Vec<u64> = ring.collect(gpu, true).unwrap().into_iter().map(|(t, _)| t).collect();
            assert_eq!(tags, (4 * round..4 * round + 4).collect::<Vec<_>>(), "round {round}");
        }
    });
}

mod composed {
    use super::gpu;
    use kiln::graph::ops::*;
    use kiln::graph::{Graph, Program, Role, Store, Tensor};
    use kiln::kernels::loss::Reduction;

    pub fn rand(seed: u64, n: usize, scale: f32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
            })
            .collect()
    }

    fn rel_l2(got: &[f64], want: &[f64]) -> f64 {
        let d: f64 = got.iter().zip(want).map(|(a, b)| (a - b).powi(2)).sum::<f64>().sqrt();
        let n: f64 = want.iter().map(|b| b * b).sum::<f64>().sqrt();
        d / n.max(1e-30)
    }

    /// Differentiates `loss` w.r.t. `params` on the GPU and checks the gradients against the
    /// CPU reference run of the same (backward-extended) graph, and the reference gradients
    /// against central differences of the reference loss.
    fn check_gradients(g: &mut Graph, loss: Tensor, params: &[(Tensor, Vec<f32>)], inputs: &[(Tensor, Vec<f32>)]) {
        check_gradients_with_states(g, loss, params, inputs, &[]);
    }

    /// [`check_gradients`], with state tensors (running statistics) given initial values; their
    /// in-place updates on the GPU are checked against the reference too.
    fn check_gradients_with_states(g: &mut Graph, loss: Tensor, params: &[(Tensor, Vec<f32>)], inputs: &[(Tensor, Vec<f32>)], states: &[(Tensor, Vec<f32>)]) {
        let gpu = gpu();
        let mut store = Store::new();
        let specs = params.iter().map(|(t, v)| (g.info(*t).name.clone(), g.shape(*t).to_vec(), v.clone())).collect();
        store.add_group(gpu, "params", specs).unwrap();
        for (t, v) in states {
            store.add_state(gpu, &g.info(*t).name, g.shape(*t), v).unwrap();
        }
        let wrt: Vec<Tensor> = params.iter().map(|(t, _)| *t).collect();
        check_gradients_in_store(g, &mut store, loss, &wrt, inputs);
    }

    /// Worst errors of one check, for the test's log.
    #[derive(Debug, Default)]
    pub struct Worst {
        pub gpu_vs_reference: f64,
        pub reference_vs_fd: f64,
        pub states: f64,
    }

    /// The check behind [`check_gradients`] over parameters and states already in `store` (as
    /// `Sequential::register` puts them there): their initial values are read back from the
    /// GPU, so the reference starts from the same f32 values. Every state tensor of the graph
    /// is compared after the step.
    pub fn check_gradients_in_store(g: &mut Graph, store: &mut Store, loss: Tensor, params: &[Tensor], inputs: &[(Tensor, Vec<f32>)]) -> Worst {
        let gpu = gpu();
        let f64s = |v: Vec<f32>| -> Vec<f64> { v.into_iter().map(f64::from).collect() };
        let forward_nodes = g.nodes.len();
        let grads = g.backward(loss, params).unwrap();
        let mut taken = Vec::new();
        let grads: Vec<Tensor> = grads.iter().map(|d| g.materialize(d.expect("every parameter reaches the loss"), &mut taken).unwrap()).collect();

        let states: Vec<Tensor> = (0..g.tensors.len()).map(Tensor::from_index).filter(|&t| g.info(t).role == Role::State).collect();
        let mut leaves: Vec<(Tensor, Vec<f64>)> = Vec::new();
        for &p in params {
            leaves.push((p, f64s(gpu.read(&store.param(&g.info(p).name).expect("registered").buffer).unwrap())));
        }
        for &s in &states {
            leaves.push((s, f64s(gpu.read(&store.state(gpu, &g.info(s).name, g.shape(s)).unwrap().buffer).unwrap())));
        }
        leaves.extend(inputs.iter().map(|(t, v)| (*t, v.iter().map(|&x| x as f64).collect())));

        let pairs: Vec<(Tensor, Tensor)> = params.iter().copied().zip(grads.iter().copied()).collect();
        let program = Program::compile(gpu, g, store, &[loss], &pairs).unwrap();
        for (t, v) in inputs {
            gpu.write(&store.input_buffer(&g.info(*t).name).unwrap().buffer, v).unwrap();
        }
        program.run(gpu).unwrap();

        let mut worst = Worst::default();
        let values = g.evaluate_reference(&leaves).unwrap();
        for &t in &states {
            let got = f64s(gpu.read(&store.state(gpu, &g.info(t).name, g.shape(t)).unwrap().buffer).unwrap());
            let err = rel_l2(&got, &values[t.index()].as_ref().unwrap().1);
            eprintln!("state {}: GPU vs reference rel L2 {err:.2e}", g.info(t).name);
            assert!(err <= 1e-5, "state {}: rel L2 {err:.3e}", g.info(t).name);
            worst.states = worst.states.max(err);
        }
        let want_loss = values[loss.index()].as_ref().unwrap().1[0];
        let got_loss = gpu.read(program.buffer(loss).unwrap()).unwrap()[0] as f64;
        assert!((got_loss - want_loss).abs() <= 1e-4 * want_loss.abs() + 1e-6, "loss: GPU {got_loss} vs reference {want_loss}");

        // Forward-only copy of the graph for finite differences of the reference loss.
        let mut forward = g.clone();
        forward.nodes.truncate(forward_nodes);
        for (param, grad) in params.iter().zip(&grads) {
            let name = &g.info(*param).name;
            let got = f64s(gpu.read(store.grad(name).unwrap()).unwrap());
            let reference = &values[grad.index()].as_ref().unwrap().1;
            let err = rel_l2(&got, reference);
            eprintln!("d{name}: GPU vs reference rel L2 {err:.2e}");
            assert!(err <= 1e-4, "d{name}: GPU vs reference rel L2 {err:.3e}");
            worst.gpu_vs_reference = worst.gpu_vs_reference.max(err);

            let slot = leaves.iter().position(|(t, _)| t == param).unwrap();
            let numeric = crate::common::reference_fd(&forward, &leaves, slot, loss, 1e-6);
            let err = rel_l2(reference, &numeric);
            eprintln!("d{name}: reference vs finite differences rel L2 {err:.2e}");
            assert!(err <= 1e-5, "d{name}: reference vs finite differences rel L2 {err:.3e}");
            worst.reference_vs_fd = worst.reference_vs_fd.max(err);
        }
        worst
    }

    #[test]
    fn the_vae_loss_differentiates_through_reparameterization_and_kl() {
        let (b, d) = (3, 5);
        let mut g = Graph::new();
        let mu = g.param("mu", &[b, d]);
        let logvar = g.param("logvar", &[b, d]);
        let w = g.param("w", &[b, d]);
        let target = g.input("target", &[b, d]);
        let eps = g.apply1(RandomFill { normal: true, a: 0.0, b: 1.0, seed: 7, shape: vec![b, d] }, &[], "eps").unwrap();
        let z = g.apply1(Reparameterize, &[mu, logvar, eps], "z").unwrap();
        let zw = g.apply1(Mul, &[z, w], "decode").unwrap();
        let recon = g.apply1(Activation(Act::Sigmoid), &[zw], "decode").unwrap();
        let bce = g.apply1(Loss(LossKind::Bce(Reduction::Sum)), &[recon, target], "bce").unwrap();
        let kl = g.apply1(Loss(LossKind::KlNormal), &[mu, logvar], "kl").unwrap();
        let loss = g.apply1(Add, &[bce, kl], "loss").unwrap();
        let n = b * d;
        let target_values: Vec<f32> = rand(4, n, 0.5).iter().map(|v| v + 0.5).collect();
        check_gradients(
            &mut g,
            loss,
            &[(mu, rand(1, n, 1.0)), (logvar, rand(2, n, 0.5)), (w, rand(3, n, 1.5))],
            &[(target, target_values)],
        );
    }

    #[test]
    fn a_chain_with_dropout_activations_and_a_reused_tensor_differentiates() {
        let (rows, cols) = (4, 7);
        let mut g = Graph::new();
        let a = g.param("a", &[rows, cols]);
        let x = g.input("x", &[rows, cols]);
        let h = g.apply1(Mul, &[a, x], "h").unwrap();
        let h = g.apply1(Activation(Act::LeakyRelu(0.3)), &[h], "act").unwrap();
        let h = g.apply1(Dropout { p: 0.3, seed: 11 }, &[h], "drop").unwrap();
        let t = g.apply1(Activation(Act::Tanh), &[h], "tanh").unwrap();
        // `a` is used twice: its gradient accumulates.
        let t = g.apply1(Mul, &[t, a], "again").unwrap();
        let s = g.apply1(Sum { all: false, mean: true }, &[t], "rowmean").unwrap();
        let target = g.input("target", &[rows]);
        let loss = g.apply1(Loss(LossKind::Mse(Reduction::Mean)), &[s, target], "mse").unwrap();
        check_gradients(&mut g, loss, &[(a, rand(5, rows * cols, 1.0))], &[(x, rand(6, rows * cols, 2.0)), (target, rand(7, rows, 1.0))]);
    }

    #[test]
    fn a_batch_normed_layer_differentiates_and_updates_its_running_statistics() {
        let shape = [4, 3, 2, 5];
        let n: usize = shape.iter().product();
        let mut g = Graph::new();
        let a = g.param("a", &shape);
        let gamma = g.param("bn.weight", &[3]);
        let beta = g.param("bn.bias", &[3]);
        let mean = g.state("bn.running_mean", &[3]);
        let var = g.state("bn.running_var", &[3]);
        let x = g.input("x", &shape);
        let h = g.apply1(Mul, &[a, x], "scale").unwrap();
        let bn = BatchNorm { eps: 1e-5, momentum: 0.1, training: true, update_running: true };
        let h = g.apply(bn, &[h, mean, var, gamma, beta], "bn").unwrap()[0];
        let h = g.apply1(Activation(Act::LeakyRelu(0.2)), &[h], "act").unwrap();
        let target = g.input("target", &shape);
        let loss = g.apply1(Loss(LossKind::Mse(Reduction::Mean)), &[h, target], "mse").unwrap();
        check_gradients_with_states(
            &mut g,
            loss,
            &[(a, rand(9, n, 1.0)), (gamma, vec![1.2, 0.8, 1.0]), (beta, vec![0.1, -0.2, 0.0])],
            &[(x, rand(10, n, 3.0)), (target, rand(11, n, 1.0))],
            &[(mean, vec![0.0; 3]), (var, vec![1.0; 3])],
        );
    }

    #[test]
    fn bce_with_logits_of_a_summed_tensor_differentiates() {
        let mut g = Graph::new();
        let a = g.param("a", &[2, 3, 5]);
        let s = g.apply1(Sum { all: false, mean: false }, &[a], "sum").unwrap();
        let s = g.apply1(Activation(Act::Relu), &[s], "relu").unwrap();
        let ones = g.apply1(Fill { value: 1.0, shape: vec![2, 3] }, &[], "ones").unwrap();
        let loss = g.apply1(Loss(LossKind::BceWithLogits(Reduction::Mean)), &[s, ones], "bce").unwrap();
        check_gradients(&mut g, loss, &[(a, rand(8, 30, 1.0))], &[]);
    }

    #[test]
    fn per_element_losses_weighted_then_summed_differentiate() {
        // reduction none: each element's upstream gradient is its own weight, so a backward
        // that read one scalar would be wrong everywhere but element 0.
        let (rows, cols) = (3, 5);
        let n = rows * cols;
        let mut g = Graph::new();
        let a = g.param("a", &[rows, cols]);
        let (w, target, labels) = (g.input("w", &[rows, cols]), g.input("target", &[rows, cols]), g.input("labels", &[rows, cols]));
        let mse = g.apply1(Loss(LossKind::Mse(Reduction::None)), &[a, target], "mse").unwrap();
        let bcel = g.apply1(Loss(LossKind::BceWithLogits(Reduction::None)), &[a, labels], "bce_logits").unwrap();
        let p = g.apply1(Activation(Act::Sigmoid), &[a], "p").unwrap();
        let bce = g.apply1(Loss(LossKind::Bce(Reduction::None)), &[p, labels], "bce").unwrap();
        assert_eq!(g.shape(bce), [rows, cols]);
        let terms = g.apply1(Add, &[mse, bcel], "terms").unwrap();
        let terms = g.apply1(Add, &[terms, bce], "terms").unwrap();
        let weighted = g.apply1(Mul, &[terms, w], "weighted").unwrap();
        let loss = g.apply1(Sum { all: true, mean: false }, &[weighted], "loss").unwrap();
        let labels_values: Vec<f32> = rand(12, n, 0.5).iter().map(|v| v + 0.5).collect();
        let inputs = [(w, rand(10, n, 2.0)), (target, rand(11, n, 1.0)), (labels, labels_values)];
        check_gradients(&mut g, loss, &[(a, rand(9, n, 2.0))], &inputs);
    }

    #[test]
    fn inceptions_average_pools_and_cross_entropy_differentiate() {
        // conv → avg_pool2d(3, 1, 1, count_include_pad=False) → adaptive_avg_pool2d(1) →
        // [N, C] logits → cross_entropy, per row (reduction none), weighted and summed.
        let (n, c) = (3, 4);
        let mut g = Graph::new();
        let x = g.input("x", &[n, 2, 5, 6]);
        let (labels, weights) = (g.input("labels", &[n]), g.input("weights", &[n]));
        let w = g.param("conv.weight", &[c, 2, 3, 3]);
        let h = g.apply1(Conv2d { stride: [1, 1], padding: [0, 1], dilation: [1, 1] }, &[x, w], "conv").unwrap();
        let pool = AvgPool2d { padding: [1, 1], count_include_pad: false, ..AvgPool2d::new(3, 1) };
        let h = g.apply1(pool, &[h], "pool").unwrap();
        let h = g.apply1(AdaptiveAvgPool2d { output_size: [1, 1] }, &[h], "pool3").unwrap();
        assert_eq!(g.shape(h), [n, c, 1, 1]);
        let logits = g.reshape(h, &[n, c]).unwrap();
        let per_row = g.apply1(CrossEntropy { reduction: Reduction::None }, &[logits, labels], "loss").unwrap();
        let weighted = g.apply1(Mul, &[per_row, weights], "weighted").unwrap();
        let loss = g.apply1(Sum { all: true, mean: false }, &[weighted], "loss").unwrap();
        let inputs = [(x, rand(40, n * 60, 2.0)), (labels, vec![3.0, 0.0, 2.0]), (weights, vec![0.5, -1.0, 2.0])];
        check_gradients(&mut g, loss, &[(w, rand(41, c * 18, 1.0))], &inputs);
    }

    #[test]
    fn pooling_and_cross_entropy_refuse_what_they_do_not_support() {
        let mut g = Graph::new();
        let x = g.input("x", &[2, 3, 4, 4]);
        let err = g.apply1(AdaptiveAvgPool2d { output_size: [2, 2] }, &[x], "pool3").unwrap_err().to_string();
        assert!(err.contains("adaptive_avg_pool2d") && err.contains("pool3") && err.contains("[2, 2]") && err.contains("1x1"), "{err}");
        let err = g.apply1(MaxPool2d { padding: [2, 2], ..MaxPool2d::new(3, 1) }, &[x], "pool").unwrap_err().to_string();
        assert!(err.contains("max_pool2d") && err.contains("padding 2"), "{err}");
        let (logits, soft) = (g.input("logits", &[2, 5]), g.input("soft", &[2, 5]));
        let err = g.apply1(CrossEntropy { reduction: Reduction::Mean }, &[logits, soft], "loss").unwrap_err().to_string();
        assert!(err.contains("cross_entropy") && err.contains("[2] class indices"), "{err}");
    }
}

#[test]
fn adam_through_the_executor_drives_a_tiny_models_loss_down() {
    // Fit tanh(a * x) to a target with Adam; one submit per step carries forward, backward
    // and the optimizer update, and losses come back through the readback ring.
    use kiln::graph::ops::*;
    use kiln::optim::{Adam, Config, Optimizer};
    let gpu = gpu();
    let n = 64;
    let mut g = Graph::new();
    let a = g.param("a", &[n]);
    let x = g.input("x", &[n]);
    let target = g.input("target", &[n]);
    let ax = g.apply1(Mul, &[a, x], "ax").unwrap();
    let y = g.apply1(Activation(Act::Tanh), &[ax], "tanh").unwrap();
    let loss = g.apply1(Loss(LossKind::Mse(kiln::kernels::loss::Reduction::Mean)), &[y, target], "mse").unwrap();
    let grads = g.backward(loss, &[a]).unwrap();
    let da = g.materialize(grads[0].unwrap(), &mut Vec::new()).unwrap();

    let mut store = Store::new();
    store.add_group(gpu, "model", vec![("a".into(), vec![n], vec![0.1; n])]).unwrap();
    let program = Program::compile(gpu, &g, &mut store, &[loss], &[(a, da)]).unwrap();
    let adam = Optimizer::new(gpu, &store, "model", Config::Adam(Adam { lr: 0.05, ..Adam::default() })).unwrap();
    let xs: Vec<f32> = (0..n).map(|i| ((i as f32 + 0.5) / n as f32) * 2.0 - 1.0).collect();
    let ts: Vec<f32> = xs.iter().map(|v| (1.5 * v).tanh()).collect();
    gpu.write(&store.input_buffer("x").unwrap().buffer, &xs).unwrap();
    gpu.write(&store.input_buffer("target").unwrap().buffer, &ts).unwrap();

    let mut ring = kiln::gpu::Readback::new(gpu, vec![program.buffer(loss).unwrap().clone()], 4).unwrap();
    let mut losses = Vec::new();
    for step in 0..200u64 {
        gpu.submit("step", &[&program.dispatches, &adam.dispatches], Some((&mut ring, step))).unwrap();
        losses.extend(ring.collect(gpu, false).unwrap());
    }
    losses.extend(ring.collect(gpu, true).unwrap());
    let first = losses.first().unwrap().1[0][0];
    let last = losses.last().unwrap().1[0][0];
    eprintln!("loss {first} -> {last} over {} readings", losses.len());
    assert!(last < first * 1e-3, "loss {first} -> {last}");
    let learned = gpu.read(&store.param("a").unwrap().buffer).unwrap();
    assert!(learned.iter().all(|v| (v - 1.5).abs() < 0.05), "{learned:?}");
}

/// Whole networks built from `kiln::nn` layers with PyTorch's default initialisation, checked
/// parameter by parameter (GPU vs reference vs finite differences) with the `composed` helper.
/// Each net holds a few hundred parameters, so finite differences cover every coordinate.
mod nets {
    use super::composed::{check_gradients_in_store, rand};
    use super::{gpu, own_gpu};
    use kiln::graph::ops::{Act, Add, CrossEntropy, Loss, LossKind, MaxPool2d, RandomFill, Reparameterize};
    use kiln::graph::{Graph, Program, Role, Store, Tensor};
    use kiln::gpu::Gpu;
    use kiln::kernels::loss::Reduction;
    use kiln::nn::{act, avg_pool2d, max_pool2d, BatchNorm, Conv2d, ConvTranspose2d, Dropout, Flatten, InitRng, Layer, Linear, Mode, Reshape, Sequential};

    fn linear(in_features: usize, out_features: usize, bias: bool) -> Layer {
        Layer::Linear(Linear { in_features, out_features, bias })
    }

    fn conv(in_channels: usize, out_channels: usize, kernel: usize, stride: usize, padding: usize, bias: bool) -> Layer {
        Layer::Conv2d(Conv2d { in_channels, out_channels, kernel, stride, padding, bias })
    }

    fn conv_t(in_channels: usize, out_channels: usize, kernel: usize, stride: usize, padding: usize, output_padding: usize, bias: bool) -> Layer {
        Layer::ConvTranspose2d(ConvTranspose2d { in_channels, out_channels, kernel, stride, padding, output_padding, bias })
    }

    fn batch_norm(channels: usize) -> Layer {
        Layer::BatchNorm(BatchNorm { channels, eps: 1e-5, momentum: 0.1 })
    }

    /// Values in (0, 1), for BCE targets and images.
    fn unit(seed: u64, n: usize) -> Vec<f32> {
        rand(seed, n, 0.45).iter().map(|v| v + 0.5).collect()
    }

    /// Registers each model as its own parameter group, PyTorch-default values from one seed.
    fn register(gpu: &Gpu, models: &[&Sequential], seed: u64) -> Store {
        let mut store = Store::new();
        let mut rng = InitRng::new(seed);
        for m in models {
            m.register(gpu, &mut store, m.prefix.trim_end_matches('.'), &mut rng).unwrap();
        }
        store
    }

    fn mlp(last: Act) -> Sequential {
        Sequential::new("mlp.", vec![linear(5, 7, true), act(Act::Relu), linear(7, 3, true), act(last)])
    }

    fn check_mlp(last: Act, loss: LossKind, target: impl Fn(u64, usize) -> Vec<f32>) {
        for batch in [1, 4] {
            let model = mlp(last);
            let mut store = register(gpu(), &[&model], 21);
            let mut g = Graph::new();
            let x = g.input("x", &[batch, 5]);
            let t = g.input("target", &[batch, 3]);
            let y = model.forward(&mut g, x, Mode::train(1)).unwrap();
            let l = g.apply1(Loss(loss), &[y, t], "loss").unwrap();
            let params = model.params(&g);
            assert_eq!(params.len(), 4);
            let inputs = [(x, rand(22, batch * 5, 2.0)), (t, target(23, batch * 3))];
            let worst = check_gradients_in_store(&mut g, &mut store, l, &params, &inputs);
            eprintln!("mlp batch {batch}: {worst:?}");
        }
    }

    #[test]
    fn an_mlp_ending_in_tanh_differentiates_at_batch_four_and_one() {
        check_mlp(Act::Tanh, LossKind::Mse(Reduction::Mean), |seed, n| rand(seed, n, 0.9));
    }

    #[test]
    fn an_mlp_ending_in_sigmoid_differentiates_at_batch_four_and_one() {
        check_mlp(Act::Sigmoid, LossKind::Bce(Reduction::Mean), unit);
    }

    /// Conv2d → BatchNorm2d → LeakyReLU → Dropout → Conv2d → Flatten → Linear on [3, 2, 7, 5]
    /// images (odd and unequal sides). The first conv has no bias, as in DCGAN: batch norm
    /// removes any per-channel constant, so that bias's gradient is exactly zero and a
    /// relative error of it would measure rounding only.
    fn conv_net() -> Sequential {
        Sequential::new(
            "disc.",
            vec![
                conv(2, 3, 3, 1, 1, false),
                batch_norm(3),
                act(Act::LeakyRelu(0.2)),
                Layer::Dropout(Dropout { p: 0.25 }),
                conv(3, 4, 3, 2, 1, true),
                Layer::Flatten(Flatten),
                linear(4 * 4 * 3, 1, true),
            ],
        )
    }

    const CONV_INPUT: [usize; 4] = [3, 2, 7, 5];

    /// Input tensors with their values for one step.
    type Batch = Vec<(Tensor, Vec<f32>)>;

    /// The conv net's training loss on a batch: (graph, loss, params, inputs with values).
    fn conv_net_step(model: &Sequential, seed: u64) -> (Graph, Tensor, Vec<Tensor>, Batch) {
        let mut g = Graph::new();
        let x = g.input("x", &CONV_INPUT);
        let labels = g.input("labels", &[CONV_INPUT[0], 1]);
        let logits = model.forward(&mut g, x, Mode::train(seed)).unwrap();
        let loss = g.apply1(Loss(LossKind::BceWithLogits(Reduction::Mean)), &[logits, labels], "loss").unwrap();
        let params = model.params(&g);
        let inputs = vec![(x, rand(31, CONV_INPUT.iter().product(), 2.0)), (labels, vec![1.0, 0.0, 1.0])];
        (g, loss, params, inputs)
    }

    #[test]
    fn a_conv_net_with_batch_norm_and_dropout_differentiates_on_odd_sizes() {
        let model = conv_net();
        let mut store = register(gpu(), &[&model], 30);
        let (mut g, loss, params, inputs) = conv_net_step(&model, 5);
        assert!(g.nodes.iter().any(|n| n.op.name() == "dropout"), "training mode applies dropout");
        assert_eq!(params.len(), 7);
        let worst = check_gradients_in_store(&mut g, &mut store, loss, &params, &inputs);
        eprintln!("conv net: {worst:?}");
    }

    #[test]
    fn a_transposed_conv_generator_with_batch_norm_differentiates() {
        // z [3, 4] → Linear → BatchNorm1d → LeakyReLU → [4, 3, 3] → ConvTranspose2d (stride 2,
        // output_padding 1) → [3, 6, 6] → BatchNorm2d → ReLU → ConvTranspose2d → [1, 7, 7] → Tanh.
        // Layers feeding batch norm have no bias (see `conv_net`).
        let model = Sequential::new(
            "gen.",
            vec![
                linear(4, 36, false),
                batch_norm(36),
                act(Act::LeakyRelu(0.2)),
                Layer::Reshape(Reshape { shape: vec![4, 3, 3] }),
                conv_t(4, 3, 3, 2, 1, 1, false),
                batch_norm(3),
                act(Act::Relu),
                conv_t(3, 1, 4, 1, 1, 0, true),
                act(Act::Tanh),
            ],
        );
        let mut store = register(gpu(), &[&model], 40);
        let batch = 3;
        let mut g = Graph::new();
        let z = g.input("z", &[batch, 4]);
        let target = g.input("target", &[batch, 1, 7, 7]);
        let image = model.forward(&mut g, z, Mode::train(0)).unwrap();
        assert_eq!(g.shape(image), [batch, 1, 7, 7]);
        let loss = g.apply1(Loss(LossKind::Mse(Reduction::Mean)), &[image, target], "loss").unwrap();
        let params = model.params(&g);
        assert_eq!(params.len(), 8);
        let inputs = [(z, rand(41, batch * 4, 1.5)), (target, rand(42, batch * 49, 0.9))];
        let worst = check_gradients_in_store(&mut g, &mut store, loss, &params, &inputs);
        eprintln!("generator: {worst:?}");
    }

    #[test]
    fn the_vae_loss_differentiates_through_an_nn_encoder_and_decoder() {
        let (batch, features, latent) = (3, 6, 2);
        let encoder = Sequential::new("enc.", vec![linear(features, 8, true), act(Act::Relu)]);
        let to_mu = Sequential::new("mu.", vec![linear(8, latent, true)]);
        let to_logvar = Sequential::new("logvar.", vec![linear(8, latent, true)]);
        let decoder = Sequential::new("dec.", vec![linear(latent, 8, true), act(Act::Relu), linear(8, features, true), act(Act::Sigmoid)]);
        let mut store = register(gpu(), &[&encoder, &to_mu, &to_logvar, &decoder], 50);
        let mut g = Graph::new();
        let x = g.input("x", &[batch, features]);
        let mode = Mode::train(0);
        let h = encoder.forward(&mut g, x, mode).unwrap();
        let mu = to_mu.forward(&mut g, h, mode).unwrap();
        let logvar = to_logvar.forward(&mut g, h, mode).unwrap();
        let eps = g.apply1(RandomFill { normal: true, a: 0.0, b: 1.0, seed: 9, shape: vec![batch, latent] }, &[], "eps").unwrap();
        let z = g.apply1(Reparameterize, &[mu, logvar, eps], "z").unwrap();
        let recon = decoder.forward(&mut g, z, mode).unwrap();
        let bce = g.apply1(Loss(LossKind::Bce(Reduction::Sum)), &[recon, x], "bce").unwrap();
        let kl = g.apply1(Loss(LossKind::KlNormal), &[mu, logvar], "kl").unwrap();
        let loss = g.apply1(Add, &[bce, kl], "loss").unwrap();
        let params: Vec<Tensor> = [&encoder, &to_mu, &to_logvar, &decoder].iter().flat_map(|m| m.params(&g)).collect();
        assert_eq!(params.len(), 10);
        let worst = check_gradients_in_store(&mut g, &mut store, loss, &params, &[(x, unit(51, batch * features))]);
        eprintln!("vae: {worst:?}");
    }

    #[test]
    fn training_steps_of_a_conv_net_after_the_first_create_no_gpu_objects() {
        use kiln::optim::{Adam, Config, Optimizer};
        let gpu = own_gpu();
        let model = conv_net();
        let mut store = register(&gpu, &[&model], 30);
        let (mut g, loss, params, inputs) = conv_net_step(&model, 5);
        let grads = g.backward(loss, &params).unwrap();
        let mut taken = Vec::new();
        let pairs: Vec<(Tensor, Tensor)> = params.iter().zip(&grads).map(|(&p, d)| (p, g.materialize(d.unwrap(), &mut taken).unwrap())).collect();
        let program = Program::compile(&gpu, &g, &mut store, &[loss], &pairs).unwrap();
        let adam = Optimizer::new(&gpu, &store, "disc", Config::Adam(Adam { lr: 1e-2, ..Adam::default() })).unwrap();
        let mut ring = kiln::gpu::Readback::new(&gpu, vec![program.buffer(loss).unwrap().clone()], 2).unwrap();
        for (t, v) in &inputs {
            gpu.write(&store.input_buffer(&g.info(*t).name).unwrap().buffer, v).unwrap();
        }
        let mut losses = Vec::new();
        let step = |step: u64, ring: &mut kiln::gpu::Readback| {
            program.set_step(&gpu, step).unwrap();
            gpu.submit("step", &[&program.dispatches, &adam.dispatches], Some((ring, step))).unwrap();
            ring.collect(&gpu, false).unwrap()
        };
        losses.extend(step(0, &mut ring));
        let created = gpu.created.snapshot();
        for s in 1..6 {
            losses.extend(step(s, &mut ring));
        }
        assert_eq!(gpu.created.snapshot(), created, "(buffers, bind groups, pipelines) after the first step");
        losses.extend(ring.collect(&gpu, true).unwrap());
        // The steps did run: the loss came back and training moved it.
        let values: Vec<f32> = losses.iter().map(|(_, v)| v[0][0]).collect();
        assert!(values.len() >= 2 && values.iter().all(|v| v.is_finite()), "{values:?}");
        assert_ne!(values.first(), values.last(), "{values:?}");
        assert_eq!(gpu.created.snapshot(), created);
    }

    #[test]
    fn the_conv_net_steps_memory_plan_is_smaller_than_one_buffer_per_tensor() {
        let gpu = gpu();
        let model = conv_net();
        let mut store = register(gpu, &[&model], 30);
        let (mut g, loss, params, _) = conv_net_step(&model, 5);
        let grads = g.backward(loss, &params).unwrap();
        let mut taken = Vec::new();
        let pairs: Vec<(Tensor, Tensor)> = params.iter().zip(&grads).map(|(&p, d)| (p, g.materialize(d.unwrap(), &mut taken).unwrap())).collect();
        let program = Program::compile(gpu, &g, &mut store, &[loss], &pairs).unwrap();
        let memory = program.memory;
        eprintln!("{memory}");

        // The naive total, counted independently: every intermediate that is neither a
        // gradient (in the store's arena) nor kept for readback, plus every op's scratch.
        let fixed: Vec<Tensor> = pairs.iter().map(|&(_, d)| d).chain([loss]).collect();
        let pooled: Vec<u64> = (0..g.tensors.len())
            .map(Tensor::from_index)
            .filter(|t| g.info(*t).role == Role::Intermediate && !fixed.contains(t))
            .map(|t| (g.info(t).numel() as u64 * 4).max(4))
            .collect();
        let scratch: u64 = g
            .nodes
            .iter()
            .flat_map(|n| n.op.scratch(&n.inputs.iter().map(|&t| g.shape(t)).collect::<Vec<_>>()))
            .map(|len| (len as u64 * 4).max(4))
            .sum();
        eprintln!("planned {} bytes, naive {} bytes", memory.planned, memory.naive);
        assert_eq!(memory.naive, pooled.iter().sum::<u64>() + scratch, "{memory}");
        // The plan cannot beat the largest tensor, and sharing must save something real.
        assert!(memory.planned >= *pooled.iter().max().unwrap(), "{memory}");
        assert!(memory.planned < memory.naive * 3 / 5, "{memory}");
        assert_eq!(memory.kept, 4, "the loss alone is kept for readback: {memory}");
        let shown = memory.to_string();
        // A plan of a few KiB reads in KiB, the 4-byte loss in bytes.
        assert!(shown.contains(" KiB planned vs ") && shown.contains("x less") && shown.contains("4 B kept"), "{shown}");
    }

    #[test]
    fn a_lenet_style_classifier_differentiates_through_max_pooling_and_cross_entropy() {
        // conv → relu → max_pool → linear → cross_entropy on odd, non-square images (7 x 6,
        // pooled in ceil_mode to 4 x 3), at batch 3 and 1; the labels get no gradient.
        for batch in [3, 1] {
            let model = Sequential::new(
                "net.",
                vec![
                    conv(2, 4, 3, 1, 1, true),
                    act(Act::Relu),
                    Layer::MaxPool2d(MaxPool2d { ceil_mode: true, ..MaxPool2d::new(2, 2) }),
                    Layer::Flatten(Flatten),
                    linear(4 * 4 * 3, 5, true),
                ],
            );
            let mut store = register(gpu(), &[&model], 60);
            let mut g = Graph::new();
            let x = g.input("x", &[batch, 2, 7, 6]);
            let labels = g.input("labels", &[batch]);
            let logits = model.forward(&mut g, x, Mode::train(1)).unwrap();
            let loss = g.apply1(CrossEntropy { reduction: Reduction::Mean }, &[logits, labels], "loss").unwrap();
            let params = model.params(&g);
            assert_eq!(params.len(), 4);
            let inputs = [(x, rand(61, batch * 84, 2.0)), (labels, [4.0, 0.0, 2.0][..batch].to_vec())];
            let worst = check_gradients_in_store(&mut g, &mut store, loss, &params, &inputs);
            eprintln!("lenet batch {batch}: {worst:?}");
        }
    }

    #[test]
    fn pooling_layers_have_no_parameters_and_shorthands_match_pytorchs_defaults() {
        let model = Sequential::new("p.", vec![max_pool2d(2, 2), avg_pool2d(3, 1)]);
        let (params, states) = model.init(&mut InitRng::new(1));
        assert!(params.is_empty() && states.is_empty());
        let mut g = Graph::new();
        let x = g.input("x", &[1, 3, 9, 8]);
        let y = model.forward(&mut g, x, Mode::eval()).unwrap();
        assert_eq!(g.shape(y), [1, 3, 2, 2]);
        assert!(matches!(avg_pool2d(3, 1), Layer::AvgPool2d(p) if p.count_include_pad && p.divisor_override.is_none()));
    }
}

#[test]
fn a_pytorch_state_dict_loads_by_name_and_gives_pytorchs_output() {
    // fixtures/torch_state_dict.safetensors is written by scripts/torch_state_dict.py.
    use kiln::graph::ops::Act;
    use kiln::nn::{self, Layer, Mode, Sequential};
    use kiln::train::checkpoint::{load_weights, Checkpoint};
    let gpu = gpu();
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/torch_state_dict.safetensors");
    let ckpt = Checkpoint::load(std::path::Path::new(file)).unwrap();
    let model = Sequential::new(
        "",
        vec![
            Layer::Conv2d(nn::Conv2d { in_channels: 2, out_channels: 4, kernel: 3, stride: 2, padding: 1, bias: true }),
            Layer::BatchNorm(nn::BatchNorm { channels: 4, eps: 1e-5, momentum: 0.1 }),
            nn::act(Act::LeakyRelu(0.2)),
            Layer::Flatten(nn::Flatten),
            Layer::Linear(nn::Linear { in_features: 36, out_features: 5, bias: true }),
            nn::act(Act::Tanh),
        ],
    );
    let mut store = Store::new();
    model.register(gpu, &mut store, "model", &mut nn::InitRng::new(0)).unwrap();
    load_weights(gpu, &store, &ckpt).unwrap();
    let (x_shape, x) = ckpt.tensor("test.input").unwrap().clone();
    let mut g = Graph::new();
    let input = g.input("x", &x_shape);
    let y = model.forward(&mut g, input, Mode::eval()).unwrap();
    let program = Program::compile(gpu, &g, &mut store, &[y], &[]).unwrap();
    gpu.write(&store.input_buffer("x").unwrap().buffer, &x).unwrap();
    program.run(gpu).unwrap();
    let got = gpu.read(program.buffer(y).unwrap()).unwrap();
    let (shape, want) = ckpt.tensor("test.output").unwrap();
    assert_eq!(g.shape(y), shape.as_slice());
    let err: f32 = got.iter().zip(want).map(|(a, b)| (a - b).powi(2)).sum::<f32>().sqrt() / want.iter().map(|b| b * b).sum::<f32>().sqrt();
    eprintln!("kiln vs PyTorch output: rel L2 {err:.2e}");
    assert!(err < 1e-5, "rel L2 {err}");

    // A state_dict of another architecture names the tensor that does not fit.
    let mut other = Store::new();
    let wrong = Sequential::new("", vec![Layer::Conv2d(nn::Conv2d { in_channels: 3, out_channels: 4, kernel: 3, stride: 2, padding: 1, bias: true })]);
    wrong.register(gpu, &mut other, "model", &mut nn::InitRng::new(0)).unwrap();
    let err = load_weights(gpu, &other, &ckpt).unwrap_err().to_string();
    assert!(err.contains("0.weight") && err.contains("[4, 2, 3, 3]"), "{err}");
}

#[test]
fn a_layer_applied_twice_shares_its_parameter_and_accumulates_both_gradients() {
    // The GAN's discriminator sees the real and the fake batch: one weight, two uses.
    use kiln::graph::ops::{Add, Mul, Sum};
    let gpu = gpu();
    let mut g = Graph::new();
    let w1 = g.param("d.weight", &[3]);
    let w2 = g.param("d.weight", &[3]);
    assert_eq!(w1, w2);
    let (a, b) = (g.input("a", &[3]), g.input("b", &[3]));
    let ya = g.apply1(Mul, &[w1, a], "real").unwrap();
    let yb = g.apply1(Mul, &[w2, b], "fake").unwrap();
    let y = g.apply1(Add, &[ya, yb], "sum").unwrap();
    let loss = g.apply1(Sum { all: true, mean: false }, &[y], "loss").unwrap();
    let grads = g.backward(loss, &[w1]).unwrap();
    let dw = g.materialize(grads[0].unwrap(), &mut Vec::new()).unwrap();
    let mut store = Store::new();
    store.add_group(gpu, "d", vec![("d.weight".into(), vec![3], vec![1.0, 2.0, 3.0])]).unwrap();
    let program = Program::compile(gpu, &g, &mut store, &[loss], &[(w1, dw)]).unwrap();
    gpu.write(&store.input_buffer("a").unwrap().buffer, &[1.0f32, 10.0, 100.0]).unwrap();
    gpu.write(&store.input_buffer("b").unwrap().buffer, &[2.0f32, 20.0, 200.0]).unwrap();
    program.run(gpu).unwrap();
    // d(loss)/dw = a + b, both uses counted.
    assert_eq!(gpu.read(store.grad("d.weight").unwrap()).unwrap(), vec![3.0, 30.0, 300.0]);
}
