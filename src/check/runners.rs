//! The runner of each op: uploads the case's inputs, launches kiln's kernels, reads back the
//! outputs and the gradients the case asks for. `None` means this build has no kernels for the
//! op yet; its cases fail as "not implemented by this build".
//!
//! Wiring an op in (docs/CHECK.md shows a whole runner):
//! ```text
//! pub const LINEAR: Option<Runner> = Some(linear);
//! fn linear(gpu: &Gpu, case: &Case) -> Result<OpResult> { ... }
//! ```

use super::ops::Runner;

pub const MATMUL: Option<Runner> = None;
pub const LINEAR: Option<Runner> = None;
pub const CONV2D: Option<Runner> = None;
pub const CONV_TRANSPOSE2D: Option<Runner> = None;
pub const BATCH_NORM: Option<Runner> = None;
pub const RELU: Option<Runner> = None;
pub const LEAKY_RELU: Option<Runner> = None;
pub const TANH: Option<Runner> = None;
pub const SIGMOID: Option<Runner> = None;
pub const BCE_WITH_LOGITS: Option<Runner> = None;
pub const BCE: Option<Runner> = None;
pub const MSE_LOSS: Option<Runner> = None;
pub const KL_NORMAL: Option<Runner> = None;
