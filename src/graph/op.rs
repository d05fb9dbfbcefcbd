//! The contract every op implements: shape inference, GPU lowering, a CPU reference, and its
//! backward rule, side by side in one file per op family under `graph/ops/`.

use super::ops::Act;
use super::{Graph, Tensor};
use crate::gpu::{Buffer, Dispatch, Gpu};
use crate::{Error, Result};

/// The buffers and shapes an op is lowered with.
pub struct OpIo<'a> {
    pub label: &'a str,
    pub inputs: Vec<&'a Buffer>,
    pub input_shapes: Vec<&'a [usize]>,
    pub outputs: Vec<&'a Buffer>,
    pub output_shapes: Vec<&'a [usize]>,
    /// Buffers of the sizes [`Op::scratch`] asked for, live only during this op.
    pub scratch: Vec<Buffer>,
}

/// Host tensors for the CPU reference run: shape and f64 data.
pub type HostValue = (Vec<usize>, Vec<f64>);

pub trait Op: std::fmt::Debug + Send + Sync {
    /// PyTorch's name for the op (`conv2d`), shown in errors and profiles.
    fn name(&self) -> &'static str;

    /// Output shapes from input shapes, or a message saying which shapes disagree and how.
    fn infer(&self, inputs: &[&[usize]]) -> std::result::Result<Vec<Vec<usize>>, String>;

    /// Element counts of scratch buffers the GPU lowering needs (reduction partials, say).
    fn scratch(&self, _inputs: &[&[usize]]) -> Vec<usize> {
        Vec::new()
    }

    /// True for views (reshape): output 0 is input 0's memory and the op dispatches nothing.
    fn alias_of_input0(&self) -> bool {
        false
    }

    /// Inputs the op writes in place (batch norm's running statistics).
    fn mutates(&self) -> &'static [usize] {
        &[]
    }

    /// The dispatches that compute the outputs on the GPU.
    fn lower(&self, gpu: &Gpu, io: &OpIo) -> Result<Vec<Dispatch>>;

    /// The activation this op is, for the executor to fuse into the op producing its input.
    fn activation(&self) -> Option<Act> {
        None
    }

    /// Whether [`lower_fused`](Self::lower_fused) can apply `act` to output 0 on `gpu`: only
    /// where the lowering's epilogue stores the final values (the tile engine's).
    fn fuses(&self, _gpu: &Gpu, _inputs: &[&[usize]], _act: Act) -> bool {
        false
    }

    /// [`lower`](Self::lower) with `act` applied to output 0 as it is stored: `io.outputs[0]`
    /// is then the activation's output, and the op's own output is never stored. Called only
    /// where [`fuses`](Self::fuses) said so.
    fn lower_fused(&self, _gpu: &Gpu, io: &OpIo, act: Act) -> Result<Vec<Dispatch>> {
        Err(Error::Invalid(format!("{} {:?}: cannot apply {act:?} as it stores its output", self.name(), io.label)))
    }

    /// The same computation on the CPU in f64: the oracle for whole-graph checks. Mutated
    /// inputs are updated in `inputs`.
    fn reference(&self, inputs: &mut [HostValue]) -> Vec<HostValue>;

    /// Appends the ops computing the gradient of each input that `needs` marks, given the
    /// gradients `dys` of the outputs (None where an output does not reach the loss).
    fn backward(&self, g: &mut Graph, node: &NodeView, dys: &[Option<Tensor>], needs: &[bool]) -> Result<Vec<Option<Tensor>>>;
}

/// What a backward rule may know about the node it differentiates.
pub struct NodeView {
    pub inputs: Vec<Tensor>,
    pub outputs: Vec<Tensor>,
    pub layer: String,
}
