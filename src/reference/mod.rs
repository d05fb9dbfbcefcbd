//! Plain CPU implementations of every kernel, forward and backward, in f64: the oracle the
//! GPU kernels are tested against, and itself tested against finite differences.

pub mod conv;
pub mod elementwise;
