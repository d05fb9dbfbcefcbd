//! Every kernel against its CPU reference, and every backward against finite differences.
//! One test binary (one link of wgpu) with a module per kernel family.

mod support;

mod conv;
mod elementwise;
mod shaders;
