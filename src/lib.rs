//! kiln: train GANs and VAEs with hand-written WGSL compute kernels on raw wgpu.
//!
//! Layers, bottom to top (see docs/ARCHITECTURE.md): `gpu` (adapter, buffers, pipelines,
//! dispatch), `kernels` (one module per shader file), `reference` (CPU oracles), and `check`
//! (conformance cases from PyTorch).
//!
//! `examples/vae.rs` and `examples/dcgan.rs` train a model through this API end to end: layers
//! from `nn`, a loss from graph ops, [`graph::Graph::gradients`], a compiled
//! [`graph::Program`], an `optim::Optimizer` and one submit per step.

pub mod bench;
pub mod check;
pub mod data;
pub mod dist;
pub mod error;
pub mod gpu;
pub mod graph;
pub mod kernels;
pub mod metrics;
pub mod models;
pub mod nn;
pub mod optim;
pub mod profile;
pub mod reference;
pub mod train;

pub use error::{Error, Result};
pub use gpu::{Dispatch, Gpu, GpuOptions};
