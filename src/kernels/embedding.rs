//! shaders/embedding.wgsl: class embeddings (rows of a [classes, dim] weight picked by f32
//! labels) and their weight gradient, for conditional generators, projection discriminators
//! and conditional VAEs.

use super::{check_len, even_slices};
use crate::gpu::{workgroups_1d, Buffer, Cost, Dispatch, Gpu, KernelId};
use crate::kernels::conv::LOOP_BUDGET;
use crate::{bail, Result};

const WG: u32 = 256;

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    batch: u32,
    dim: u32,
    classes: u32,
    row_begin: u32,
    row_end: u32,
    accumulate: u32,
}

/// The shape of one lookup: `batch` labels into a `[classes, dim]` weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lookup {
    pub batch: usize,
    pub classes: usize,
    pub dim: usize,
}

impl Lookup {
    fn check(&self, name: &str) -> Result<Params> {
        let Lookup { batch, classes, dim } = *self;
        if classes == 0 || dim == 0 {
            bail!(Shape, "{name}: an embedding needs at least one class and one dimension, got [{classes}, {dim}]");
        }
        if [batch * dim, classes * dim].iter().any(|&n| n > u32::MAX as usize) {
            bail!(Shape, "{name}: {batch} rows of {dim} or {classes} classes of {dim} pass u32 indexing");
        }
        Ok(Params { batch: batch as u32, dim: dim as u32, classes: classes as u32, ..Default::default() })
    }
}

fn kernel(entry: &'static str) -> KernelId {
    KernelId::new("embedding", entry)
}

/// rows[r] = weight[labels[r]]: `rows` [batch, dim]; a label outside [0, classes) or not an
/// integer gives a row of NaN.
pub fn embedding(gpu: &Gpu, shape: Lookup, weight: &Buffer, labels: &Buffer, rows: &Buffer) -> Result<Dispatch> {
    let k = kernel("embedding");
    let p = shape.check(&k.to_string())?;
    let n = shape.batch * shape.dim;
    check_len(&k.to_string(), "weight", weight, shape.classes * shape.dim)?;
    check_len(&k.to_string(), "labels", labels, shape.batch)?;
    check_len(&k.to_string(), "rows", rows, n)?;
    gpu.dispatch(k, "", &p, &[(1, labels), (2, weight), (3, rows)], workgroups_1d(n, WG), Cost::elementwise(n, 0, 1, 1))
}

/// dweight[c] = Σ of dy's rows with label c: one dispatch per slice of at most
/// [`LOOP_BUDGET`] rows, the later ones adding to the earlier.
pub fn embedding_backward(gpu: &Gpu, shape: Lookup, labels: &Buffer, dy: &Buffer, dweight: &Buffer) -> Result<Vec<Dispatch>> {
    let k = kernel("embedding_backward");
    let p = shape.check(&k.to_string())?;
    let n = shape.classes * shape.dim;
    check_len(&k.to_string(), "labels", labels, shape.batch)?;
    check_len(&k.to_string(), "dy", dy, shape.batch * shape.dim)?;
    check_len(&k.to_string(), "dweight", dweight, n)?;
    even_slices(shape.batch, LOOP_BUDGET)
        .enumerate()
        .map(|(i, (begin, end))| {
            let p = Params { row_begin: begin as u32, row_end: end as u32, accumulate: (i > 0) as u32, ..p };
            // Each weight element reads the slice's labels and dy column.
            let cost = Cost { flops: ((end - begin) * n) as u64, bytes: ((end - begin) * n * 8 + n * 4) as u64 };
            gpu.dispatch(k, "", &p, &[(1, labels), (2, dy), (3, dweight)], workgroups_1d(n, WG), cost)
        })
        .collect()
}
