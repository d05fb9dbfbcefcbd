//! Graph ops, one file per kernel family: shape rule, lowering, CPU reference and backward
//! rule side by side.

mod activation;
mod augment;
mod batchnorm;
mod concat;
mod conv;
mod elementwise;
mod embedding;
mod loss;
mod matmul;
mod pool;
mod random;
mod reduce;
mod resize;
mod spectral;

pub use activation::{Act, Activation, ActivationGrad};
pub use augment::{AugmentColor, AugmentShift};
pub use batchnorm::{BatchNorm, BatchNormGrad};
pub use concat::{Cat, Narrow};
pub use conv::{Conv2d, ConvGrad, ConvTranspose2d, Geometry};
pub use embedding::{Embedding, EmbeddingGrad};
pub use elementwise::{Add, Fill, Mul, Reshape, Scale, Sqrt, SqrtGrad};
pub use loss::{CrossEntropy, CrossEntropyGrad, Loss, LossGrad, LossKind};
pub use matmul::{Linear, LinearGrad, Matmul};
pub use pool::{AdaptiveAvgPool2d, AvgPool2d, MaxPool2d, PoolGrad};
pub use random::{Dropout, DropoutGrad, RandomFill, Reparameterize, ReparameterizeGrad};
pub use resize::Interpolate;
pub use reduce::{repeat_rows, BroadcastRows, Sum};
pub use spectral::{SpectralNorm, SpectralNormGrad};
/// The reduction of a [`Loss`], re-exported so that graph code needs no `kernels` import.
pub use crate::kernels::loss::Reduction;

/// Shapes must be equal: the message for elementwise ops.
pub(crate) fn same_shape(a: &[usize], b: &[usize]) -> std::result::Result<(), String> {
    if a == b {
        Ok(())
    } else {
        Err(format!("shapes {a:?} and {b:?} differ"))
    }
}
