//! Training runs: checkpoints, sample grids, metrics.

pub mod checkpoint;

pub use checkpoint::Checkpoint;
