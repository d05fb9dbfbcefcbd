//! Epilogue fusion: an activation whose input nothing else reads, produced by an op whose GPU
//! lowering can apply it as it stores (conv2d, conv_transpose2d and linear on the tile
//! engine, [`Op::fuses`](super::Op::fuses)), is computed by that op. The pre-activation is
//! never stored: one pass over the tensor (a read and a write) and one dispatch fewer. The
//! activations' backward rules read their output (`Act::grad_from_output`), so after
//! autodiff the pre-activation usually still has the activation as its only reader.

use super::{Graph, Role, Tensor};
use crate::gpu::{Buffer, Gpu};
use std::cell::Cell;

thread_local! {
    static OFF: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with every program it compiles on this thread left unfused: each activation its
/// own dispatch, as on CPU adapters. How tests compare fused with unfused steps.
pub fn without_fusion<T>(f: impl FnOnce() -> T) -> T {
    let before = OFF.with(|off| off.replace(true));
    let value = f();
    OFF.with(|off| off.set(before));
    value
}

/// Node `activation`'s output computed by node `producer`, in its epilogue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fusion {
    pub producer: usize,
    pub activation: usize,
}

/// The pairs to fuse on `gpu`. `fixed` marks the tensors that have buffers of their own before
/// planning (kept for readback, gradients in the store's arena): those are always stored.
pub(super) fn fusions(gpu: &Gpu, graph: &Graph, fixed: &[Option<Buffer>]) -> Vec<Fusion> {
    if OFF.with(Cell::get) {
        return Vec::new();
    }
    let mut readers = vec![0usize; graph.tensors.len()];
    let mut producer = vec![None; graph.tensors.len()];
    for (n, node) in graph.nodes.iter().enumerate() {
        for t in &node.inputs {
            readers[graph.storage(*t).0] += 1;
        }
        for t in &node.outputs {
            producer[t.0] = Some(n);
        }
    }
    let mut pairs = Vec::new();
    for (a, node) in graph.nodes.iter().enumerate() {
        let Some(act) = node.op.activation() else { continue };
        let x: Tensor = node.inputs[0];
        let Some(p) = producer[x.0] else { continue };
        let source = &graph.nodes[p];
        let alone = graph.info(x).role == Role::Intermediate && fixed[x.0].is_none() && readers[x.0] == 1;
        let shapes: Vec<&[usize]> = source.inputs.iter().map(|&t| graph.shape(t)).collect();
        if alone && source.outputs == [x] && source.op.fuses(gpu, &shapes, act) {
            pairs.push(Fusion { producer: p, activation: a });
        }
    }
    pairs
}

/// What the profile calls a fused dispatch: its layers and ops, `disc.0+disc.1
/// (conv2d+leaky_relu)`.
pub(super) fn label(graph: &Graph, fusion: Fusion) -> String {
    let (p, a) = (&graph.nodes[fusion.producer], &graph.nodes[fusion.activation]);
    let layers = if a.layer == p.layer || a.layer.is_empty() { p.layer.clone() } else { format!("{}+{}", p.layer, a.layer) };
    format!("{layers} ({}+{})", p.op.name(), a.op.name())
}
