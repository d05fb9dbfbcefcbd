//! Plain CPU implementations of every kernel, forward and backward, in f64: the oracle the
//! GPU kernels are tested against, and itself tested against finite differences.

pub mod activation;
pub mod augment;
pub mod batchnorm;
pub mod concat;
pub mod conv;
pub mod elementwise;
pub mod embedding;
pub mod loss;
pub mod reduce;
pub mod resize;
pub mod spectral;
pub mod optim;
pub mod pool;
pub mod random;
pub mod matmul;
