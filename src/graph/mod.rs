//! Tensors, ops, shape checks, reverse-mode autodiff, the memory plan and the executor.

pub mod plan;
