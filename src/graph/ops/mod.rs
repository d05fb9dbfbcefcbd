//! Graph ops, one file per kernel family: shape rule, lowering, CPU reference and backward
//! rule side by side.

mod elementwise;

pub use elementwise::{Add, Fill, Mul, Reshape, Scale};

/// Shapes must be equal: the message for elementwise ops.
pub(crate) fn same_shape(a: &[usize], b: &[usize]) -> std::result::Result<(), String> {
    if a == b {
        Ok(())
    } else {
        Err(format!("shapes {a:?} and {b:?} differ"))
    }
}
