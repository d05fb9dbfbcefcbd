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
