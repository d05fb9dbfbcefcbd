//! One module per shader file: the parameter struct, the grid, the cost model and the
//! launcher of each entry point. Launchers return a [`Dispatch`](crate::Dispatch) that can be
//! run now (`gpu.run(&[d])`) or recorded into a training step and replayed.

pub mod activation;
pub mod batchnorm;
pub mod conv;
pub mod data;
pub mod elementwise;
pub mod loss;
pub mod reduce;
pub mod optim;
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
