//! The graph executor: autodiff, memory plan and replayed steps, against the CPU reference.

use kiln::graph::{Graph, Program, Store};
use kiln::gpu::{Gpu, GpuOptions};
use std::sync::OnceLock;

fn gpu() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| Gpu::new(&GpuOptions::default()).unwrap_or_else(|e| panic!("{e}")))
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
    assert_eq!(gpu.read(program.buffer(loss)).unwrap(), vec![-18.0]);
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
    let gpu = gpu();
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
    assert_eq!(gpu.read(program.buffer(h)).unwrap(), vec![1.0; 1000]);
}

#[test]
fn losses_come_back_through_the_readback_ring_without_waiting_each_step() {
    let gpu = gpu();
    let mut g = Graph::new();
    let x = g.input("x", &[3]);
    let y = g.apply1(kiln::graph::ops::Scale { alpha: 2.0 }, &[x], "double").unwrap();
    let mut store = Store::new();
    let program = Program::compile(gpu, &g, &mut store, &[y], &[]).unwrap();
    let mut ring = kiln::gpu::Readback::new(gpu, vec![program.buffer(y).clone()], 2).unwrap();
    let x_buf = store.input_buffer("x").unwrap().buffer.clone();
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

mod composed {
    use super::gpu;
    use kiln::graph::ops::*;
    use kiln::graph::{Graph, Program, Store, Tensor};
    use kiln::kernels::loss::Reduction;

    fn rand(seed: u64, n: usize, scale: f32) -> Vec<f32> {
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
        let forward_nodes = g.nodes.len();
        let wrt: Vec<Tensor> = params.iter().map(|(t, _)| *t).collect();
        let grads = g.backward(loss, &wrt).unwrap();
        let mut taken = Vec::new();
        let grads: Vec<Tensor> = grads.iter().map(|d| g.materialize(d.expect("every parameter reaches the loss"), &mut taken).unwrap()).collect();

        let mut store = Store::new();
        let specs = params.iter().map(|(t, v)| (g.info(*t).name.clone(), g.shape(*t).to_vec(), v.clone())).collect();
        store.add_group(gpu, "params", specs).unwrap();
        for (t, v) in states {
            store.add_state(gpu, &g.info(*t).name, g.shape(*t), v).unwrap();
        }
        let pairs: Vec<(Tensor, Tensor)> = wrt.iter().copied().zip(grads.iter().copied()).collect();
        let program = Program::compile(gpu, g, &mut store, &[loss], &pairs).unwrap();
        for (t, v) in inputs {
            gpu.write(&store.input_buffer(&g.info(*t).name).unwrap().buffer, v).unwrap();
        }
        program.run(gpu).unwrap();

        let leaves: Vec<(Tensor, Vec<f64>)> =
            params.iter().chain(inputs).chain(states).map(|(t, v)| (*t, v.iter().map(|&x| x as f64).collect())).collect();
        let values = g.evaluate_reference(&leaves).unwrap();
        for (t, _) in states {
            let got: Vec<f64> = gpu.read(&store.state(gpu, &g.info(*t).name, g.shape(*t)).unwrap().buffer).unwrap().iter().map(|&x| x as f64).collect();
            let err = rel_l2(&got, &values[t.index()].as_ref().unwrap().1);
            eprintln!("state {}: GPU vs reference rel L2 {err:.2e}", g.info(*t).name);
            assert!(err <= 1e-5, "state {}: rel L2 {err:.3e}", g.info(*t).name);
        }
        let want_loss = values[loss.index()].as_ref().unwrap().1[0];
        let got_loss = gpu.read(program.buffer(loss)).unwrap()[0] as f64;
        assert!((got_loss - want_loss).abs() <= 1e-4 * want_loss.abs() + 1e-6, "loss: GPU {got_loss} vs reference {want_loss}");

        // Forward-only copy of the graph for finite differences of the reference loss.
        let mut forward = g.clone();
        forward.nodes.truncate(forward_nodes);
        for ((param, init), grad) in params.iter().zip(&grads) {
            let name = &g.info(*param).name;
            let got: Vec<f64> = gpu.read(store.grad(name).unwrap()).unwrap().iter().map(|&x| x as f64).collect();
            let reference = &values[grad.index()].as_ref().unwrap().1;
            let err = rel_l2(&got, reference);
            eprintln!("d{name}: GPU vs reference rel L2 {err:.2e}");
            assert!(err <= 1e-4, "d{name}: GPU vs reference rel L2 {err:.3e}");

            let h = 1e-6;
            let numeric: Vec<f64> = (0..init.len())
                .map(|i| {
                    let at = |delta: f64| {
                        let mut leaves = leaves.clone();
                        let slot = leaves.iter_mut().find(|(t, _)| t == param).unwrap();
                        slot.1[i] += delta;
                        forward.evaluate_reference(&leaves).unwrap()[loss.index()].as_ref().unwrap().1[0]
                    };
                    (at(h) - at(-h)) / (2.0 * h)
                })
                .collect();
            let err = rel_l2(reference, &numeric);
            eprintln!("d{name}: reference vs finite differences rel L2 {err:.2e}");
            assert!(err <= 1e-5, "d{name}: reference vs finite differences rel L2 {err:.3e}");
        }
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

    let mut ring = kiln::gpu::Readback::new(gpu, vec![program.buffer(loss).clone()], 4).unwrap();
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
