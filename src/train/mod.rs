//! Training runs: checkpoints, sample grids, metrics.

pub mod checkpoint;
pub mod classifier;
pub mod data;
pub mod dist;
pub mod gan;
pub mod infer;
pub mod plot;
pub mod run;
pub mod score;
pub mod vae;

pub use checkpoint::Checkpoint;
