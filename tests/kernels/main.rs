//! Every kernel against its CPU reference, and every backward against finite differences.
//! One test binary (one link of wgpu) with a module per kernel family.

mod support;

/// The adapter's own limits (or `KILN_LIMITS`).
fn options() -> kiln::gpu::GpuOptions {
    kiln::gpu::GpuOptions::default()
}

mod activation;
mod augment;
mod bench;
mod batchnorm;
mod concat;
mod conv;
mod data;
mod elementwise;
mod embedding;
mod gemm;
mod gpu;
mod loss;
mod reduce;
mod resize;
mod spectral;
mod optim;
mod pool;
mod random;
mod matmul;
mod shaders;
mod trusted;
