//! Class embeddings in f64: rows of a [classes, dim] weight picked by labels, and the
//! weight's gradient (dy's rows summed per class).

/// The class of `label`, or None when it is not an integer in [0, classes).
pub fn class_of(label: f64, classes: usize) -> Option<usize> {
    (label >= 0.0 && label < classes as f64 && label.fract() == 0.0).then_some(label as usize)
}

/// [batch, dim] rows; NaN rows for labels outside the classes, as the kernel.
pub fn embedding(weight: &[f64], labels: &[f64], classes: usize, dim: usize) -> Vec<f64> {
    labels
        .iter()
        .flat_map(|&t| match class_of(t, classes) {
            Some(c) => weight[c * dim..(c + 1) * dim].to_vec(),
            None => vec![f64::NAN; dim],
        })
        .collect()
}

/// [classes, dim]: Σ over rows with label c of dy's row.
pub fn embedding_backward(labels: &[f64], dy: &[f64], classes: usize, dim: usize) -> Vec<f64> {
    let mut dw = vec![0.0; classes * dim];
    for (r, &t) in labels.iter().enumerate() {
        if let Some(c) = class_of(t, classes) {
            for j in 0..dim {
                dw[c * dim + j] += dy[r * dim + j];
            }
        }
    }
    dw
}
