//! Sum and mean over the last axis of a row-major `[rows, cols]` array.

pub fn sum(x: &[f64], rows: usize, cols: usize) -> Vec<f64> {
    assert_eq!(x.len(), rows * cols, "sum: {} elements for [{rows}, {cols}]", x.len());
    (0..rows).map(|r| x[r * cols..(r + 1) * cols].iter().sum()).collect()
}

pub fn mean(x: &[f64], rows: usize, cols: usize) -> Vec<f64> {
    sum(x, rows, cols).into_iter().map(|s| s / cols as f64).collect()
}
