//! Tensors, ops, shape checks, reverse-mode autodiff, the memory plan and the executor.
//!
//! Build: model code calls ops on a [`Graph`], which checks shapes as it goes. Differentiate:
//! [`Graph::backward`] appends each op's backward rule. Compile: [`Program`] fuses
//! activations into the tile engine's epilogues where it can (`fuse`), plans memory, creates
//! every pipeline and bind group once, and replays the step with one submit.

mod autodiff;
mod exec;
mod fuse;
mod op;
pub mod ops;
pub mod plan;
mod store;
mod tensor;

pub use exec::{MemoryReport, Program};
pub use fuse::{without_fusion, Fusion};
pub use op::{HostValue, NodeView, Op, OpIo};
pub use store::{ParamGroup, Store, Stored};
pub use tensor::{Role, Tensor, TensorInfo};

use crate::{Error, Result};
use std::sync::Arc;

/// One applied op: its inputs and outputs, and the layer it belongs to (for errors, profiles).
#[derive(Clone, Debug)]
pub struct Node {
    pub op: Arc<dyn Op>,
    pub inputs: Vec<Tensor>,
    pub outputs: Vec<Tensor>,
    pub layer: String,
}

#[derive(Clone, Debug, Default)]
pub struct Graph {
    pub tensors: Vec<TensorInfo>,
    pub nodes: Vec<Node>,
}

impl Graph {
    pub fn new() -> Graph {
        Graph::default()
    }

    fn add_tensor(&mut self, name: &str, shape: &[usize], role: Role) -> Tensor {
        self.tensors.push(TensorInfo { shape: shape.to_vec(), name: name.to_string(), role });
        Tensor(self.tensors.len() - 1)
    }

    /// A tensor the caller fills before each step (a batch, noise).
    pub fn input(&mut self, name: &str, shape: &[usize]) -> Tensor {
        self.add_tensor(name, shape, Role::Input)
    }

    /// A trainable parameter, found by `name` in the executor's store. Declaring a name twice
    /// (a layer applied to two batches) gives the same tensor, so its gradient accumulates
    /// over both uses instead of two gradients racing for one buffer.
    pub fn param(&mut self, name: &str, shape: &[usize]) -> Tensor {
        self.named(name, shape, Role::Param)
    }

    /// Persistent, untrained state (running statistics), found by `name` in the store.
    pub fn state(&mut self, name: &str, shape: &[usize]) -> Tensor {
        self.named(name, shape, Role::State)
    }

    /// The existing tensor of this name, role and shape, else a new one (a different shape
    /// under the same name is reported when the program is compiled against the store).
    fn named(&mut self, name: &str, shape: &[usize], role: Role) -> Tensor {
        match self.tensors.iter().position(|t| t.name == name && t.role == role && t.shape == shape) {
            Some(i) => Tensor(i),
            None => self.add_tensor(name, shape, role),
        }
    }

    pub fn info(&self, t: Tensor) -> &TensorInfo {
        &self.tensors[t.0]
    }

    pub fn shape(&self, t: Tensor) -> &[usize] {
        &self.tensors[t.0].shape
    }

    /// The tensor whose memory `t` uses (itself unless it is a view).
    pub fn storage(&self, mut t: Tensor) -> Tensor {
        while let Role::View(base) = self.tensors[t.0].role {
            t = base;
        }
        t
    }

    /// Applies `op` to `inputs` after checking their shapes; `layer` names it in errors.
    pub fn apply(&mut self, op: impl Op + 'static, inputs: &[Tensor], layer: &str) -> Result<Vec<Tensor>> {
        self.apply_arc(Arc::new(op), inputs, layer)
    }

    /// [`apply`](Self::apply) for single-output ops.
    pub fn apply1(&mut self, op: impl Op + 'static, inputs: &[Tensor], layer: &str) -> Result<Tensor> {
        Ok(self.apply(op, inputs, layer)?[0])
    }

    pub fn apply_arc(&mut self, op: Arc<dyn Op>, inputs: &[Tensor], layer: &str) -> Result<Vec<Tensor>> {
        let shapes: Vec<&[usize]> = inputs.iter().map(|&t| self.shape(t)).collect();
        let out_shapes = op.infer(&shapes).map_err(|msg| {
            let shown: Vec<String> = shapes.iter().map(|s| tensor::show(s)).collect();
            let at = if layer.is_empty() { String::new() } else { format!(" {layer:?}") };
            Error::Shape(format!("{}{at}: {msg} (input shapes {})", op.name(), shown.join(", ")))
        })?;
        let alias = op.alias_of_input0();
        let outputs: Vec<Tensor> = out_shapes
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let name = format!("{}{}.{}", if layer.is_empty() { "" } else { layer }, if layer.is_empty() { "" } else { ":" }, op.name());
                let name = if out_shapes.len() > 1 { format!("{name}.{i}") } else { name };
                let role = if alias && i == 0 { Role::View(inputs[0]) } else { Role::Intermediate };
                self.add_tensor(&name, s, role)
            })
            .collect();
        self.nodes.push(Node { op, inputs: inputs.to_vec(), outputs: outputs.clone(), layer: layer.to_string() });
        Ok(outputs)
    }

    /// `x` under another shape with the same number of elements: a view, no copy.
    pub fn reshape(&mut self, x: Tensor, shape: &[usize]) -> Result<Tensor> {
        self.apply1(ops::Reshape { shape: shape.to_vec() }, &[x], "")
    }
}

impl Graph {
    /// `t` as a computed tensor of its own: a copy when `t` is a view, an input, a parameter
    /// or already claimed in `taken` (so it can be placed in a gradient arena).
    pub fn materialize(&mut self, t: Tensor, taken: &mut Vec<Tensor>) -> Result<Tensor> {
        let own = self.storage(t) == t && self.is_computed(t) && !taken.contains(&t);
        let t = if own { t } else { self.apply1(ops::Scale { alpha: 1.0 }, &[t], "copy")? };
        taken.push(t);
        Ok(t)
    }
}

impl Graph {
    /// Runs the graph on the CPU references in f64: the oracle for whole-graph checks.
    /// `leaves` gives every input, parameter and state tensor a value; returns every tensor's
    /// value (states after their in-place updates).
    pub fn evaluate_reference(&self, leaves: &[(Tensor, Vec<f64>)]) -> Result<Vec<Option<HostValue>>> {
        let mut values: Vec<Option<HostValue>> = vec![None; self.tensors.len()];
        for (t, data) in leaves {
            if data.len() != self.info(*t).numel() {
                return Err(Error::Shape(format!("value for {:?}: {} elements for shape {:?}", self.info(*t).name, data.len(), self.shape(*t))));
            }
            values[t.0] = Some((self.shape(*t).to_vec(), data.clone()));
        }
        for node in &self.nodes {
            let mut inputs: Vec<HostValue> = node
                .inputs
                .iter()
                .map(|t| values[t.0].clone().ok_or_else(|| Error::Invalid(format!("no value for {:?}", self.info(*t).name))))
                .collect::<Result<_>>()?;
            let outputs = node.op.reference(&mut inputs);
            for &m in node.op.mutates() {
                values[node.inputs[m].0] = Some(inputs[m].clone());
            }
            for (t, v) in node.outputs.iter().zip(outputs) {
                values[t.0] = Some(v);
            }
        }
        Ok(values)
    }
}
