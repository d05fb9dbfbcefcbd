//! Tensor handles and what the graph knows about each tensor.

/// A handle to a tensor of one [`Graph`](super::Graph). Cheap to copy; meaningless in another graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tensor(pub(crate) usize);

impl Tensor {
    pub fn index(self) -> usize {
        self.0
    }

    /// The handle of the graph's `i`-th tensor.
    pub fn from_index(i: usize) -> Tensor {
        Tensor(i)
    }
}

/// Where a tensor's memory comes from, which decides its lifetime.
#[derive(Clone, Debug, PartialEq)]
pub enum Role {
    /// Written by the caller before a step (a batch, fixed noise).
    Input,
    /// A trainable parameter: persistent, updated by the optimizer.
    Param,
    /// Persistent but not trained: batch-norm running statistics, step counters.
    State,
    /// Produced and consumed within one step; pooled by the memory plan.
    Intermediate,
    /// Another tensor's memory under a different shape (reshape, flatten): no copy.
    View(Tensor),
}

#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub shape: Vec<usize>,
    pub name: String,
    pub role: Role,
}

impl TensorInfo {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// `[2, 3, 28, 28]` as text for error messages.
pub fn show(shape: &[usize]) -> String {
    format!("{shape:?}")
}
