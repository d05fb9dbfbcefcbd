//! One module per shader file: the parameter struct, the grid, the cost model and the
//! launcher of each entry point. Launchers return a [`Dispatch`](crate::Dispatch) that can be
//! run now (`gpu.run(&[d])`) or recorded into a training step and replayed.

pub mod activation;
pub mod augment;
pub mod batchnorm;
pub mod concat;
pub mod conv;
pub mod data;
pub mod elementwise;
pub mod embedding;
pub mod gemm;
pub mod loss;
pub mod reduce;
pub mod resize;
pub mod spectral;
pub mod optim;
pub mod pool;
pub mod random;
pub mod matmul;

use crate::{Error, Result};

/// Checks that `buffer` holds at least `len` elements; `what` names the operand in errors.
pub(crate) fn check_len(kernel: &str, what: &str, buffer: &crate::gpu::Buffer, len: usize) -> Result<()> {
    if buffer.len < len {
        return Err(Error::Shape(format!(
            "{kernel}: {what} {:?} holds {} elements, needs {len}",
            buffer.label, buffer.len
        )));
    }
    Ok(())
}

/// Splits `0..len` into the fewest ranges of equal length (the last may be shorter) of at most
/// `most` each: the slices of a long reduction that separate dispatches sum in turn. One empty
/// range for an empty `len`, so an empty sum still writes its zeros or bias.
pub(crate) fn even_slices(len: usize, most: usize) -> impl Iterator<Item = (usize, usize)> {
    let count = len.div_ceil(most.max(1)).max(1);
    let step = len.div_ceil(count);
    (0..count).map(move |s| (s * step, ((s + 1) * step).min(len)))
}
