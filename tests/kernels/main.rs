//! Every kernel against its CPU reference, and every backward against finite differences.
//! One test binary (one link of wgpu) with a module per kernel family.

mod support;

mod activation;
mod bench;
mod batchnorm;
mod conv;
mod data;
mod elementwise;
mod gpu;
mod loss;
mod reduce;
mod optim;
mod pool;
mod random;
mod matmul;
mod shaders;
