use crate::support::*;
use kiln::kernels::embedding::{self, Lookup};
use kiln::reference::embedding as reference;

/// Labels 0..classes in a scrambled order with repeats, and one of every class at least
/// where the batch allows.
fn labels(batch: usize, classes: usize) -> Vec<f32> {
    (0..batch).map(|r| ((r * 7 + 3) % classes) as f32).collect()
}

fn check(batch: usize, classes: usize, dim: usize) {
    let gpu = gpu();
    let shape = Lookup { batch, classes, dim };
    let (w, t, dy) = (rand(1, classes * dim), labels(batch, classes), rand(2, batch * dim));
    let (wb, tb, dyb) = (upload("w", &w), upload("labels", &t), upload("dy", &dy));
    let (rows, dw) = (zeros("rows", batch * dim), zeros("dw", classes * dim));
    let mut dispatches = vec![embedding::embedding(gpu, shape, &wb, &tb, &rows).unwrap()];
    dispatches.extend(embedding::embedding_backward(gpu, shape, &tb, &dyb, &dw).unwrap());
    gpu.run(&dispatches).unwrap();
    let name = format!("embedding {batch} of [{classes}, {dim}]");
    assert_close(&format!("{name} forward"), &read(&rows), &reference::embedding(&f64s(&w), &f64s(&t), classes, dim), 0.0);
    let want_dw = reference::embedding_backward(&f64s(&t), &f64s(&dy), classes, dim);
    assert_close(&format!("{name} dweight"), &read(&dw), &want_dw, 1e-6);
    // The weight gradient by finite differences of ⟨embedding(w), dy⟩ (linear in w).
    let numeric = finite_difference(|w| reference::embedding(w, &f64s(&t), classes, dim), &f64s(&w), &f64s(&dy));
    assert_grad_matches_fd(&name, &want_dw, &numeric);
}

#[test]
fn embedding_matches_the_reference_at_awkward_shapes() {
    check(1, 1, 1);
    check(1, 10, 7);
    check(13, 10, 33);
    check(64, 3, 257);
    // A class never drawn keeps a zero gradient.
    check(5, 11, 4);
}

#[test]
fn the_embedding_gradient_sums_batches_past_the_loop_budget() {
    // 150,001 rows of 3 classes: three slices of the 60,000-row budget, each row counted once.
    let gpu = gpu();
    let (batch, classes, dim) = (150_001, 3, 2);
    let shape = Lookup { batch, classes, dim };
    let t = labels(batch, classes);
    let dy: Vec<f32> = (0..batch * dim).map(|i| if i % 2 == 0 { 1.0 } else { (i % 5) as f32 - 2.0 }).collect();
    let (tb, dyb, dw) = (upload("labels", &t), upload("dy", &dy), zeros("dw", classes * dim));
    let dispatches = embedding::embedding_backward(gpu, shape, &tb, &dyb, &dw).unwrap();
    assert_eq!(dispatches.len(), 3);
    gpu.run(&dispatches).unwrap();
    assert_close("embedding_backward of 150,001 rows", &read(&dw), &reference::embedding_backward(&f64s(&t), &f64s(&dy), classes, dim), 0.0);
}

#[test]
fn labels_outside_the_classes_give_nan_rows_and_no_gradient() {
    let gpu = gpu();
    let shape = Lookup { batch: 4, classes: 3, dim: 2 };
    let w = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
    let t = [2.0, 3.0, -1.0, 0.5];
    let (wb, tb, rows) = (upload("w", &w), upload("labels", &t), zeros("rows", 8));
    let (dyb, dw) = (upload("dy", &[1.0; 8]), zeros("dw", 6));
    let mut dispatches = vec![embedding::embedding(gpu, shape, &wb, &tb, &rows).unwrap()];
    dispatches.extend(embedding::embedding_backward(gpu, shape, &tb, &dyb, &dw).unwrap());
    gpu.run(&dispatches).unwrap();
    let got = read(&rows);
    assert_eq!(&got[..2], &[5.0, 6.0]);
    assert!(got[2..].iter().all(|v| v.is_nan()), "{got:?}");
    assert_eq!(read(&dw), vec![0.0, 0.0, 0.0, 0.0, 1.0, 1.0]);
    let err = embedding::embedding(gpu, Lookup { batch: 4, classes: 0, dim: 2 }, &wb, &tb, &rows).err().expect("must fail").to_string();
    assert!(err.contains("at least one class"), "{err}");
}
