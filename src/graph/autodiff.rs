//! Reverse-mode autodiff: a reverse walk over the recorded nodes calling each op's backward
//! rule, accumulating the gradients of tensors used more than once.

use super::ops::{Add, Fill};
use super::{Graph, NodeView, Role, Tensor};
use crate::{Error, Result};
use std::collections::HashMap;

impl Graph {
    /// Appends the ops computing d`loss`/d`p` for every `p` in `wrt` and returns those
    /// gradients (None where `p` does not reach the loss). `loss` must hold one element.
    /// Only the nodes between `wrt` and `loss` are differentiated: parameters not in `wrt`
    /// (the discriminator during the generator's update) get no gradient computed.
    ///
    /// The graph may already hold backward passes, and `loss` may depend on their gradients
    /// (R1, WGAN-GP: `torch.autograd.grad(..., create_graph=True)`): the gradient ops have
    /// backward rules of their own, so this differentiates them again. Those without one
    /// (batch norm's, pooling's, cross_entropy's, probability BCE's and kl_normal's gradients)
    /// fail naming the layer.
    pub fn backward(&mut self, loss: Tensor, wrt: &[Tensor]) -> Result<Vec<Option<Tensor>>> {
        if self.info(loss).numel() != 1 {
            return Err(Error::Shape(format!(
                "backward: loss {:?} has shape {:?}; it must hold one element",
                self.info(loss).name,
                self.shape(loss)
            )));
        }
        let needs = self.tensors_needing_grad(wrt);
        let forward_nodes = self.nodes.len();
        let seed = self.apply1(Fill { value: 1.0, shape: self.shape(loss).to_vec() }, &[], "backward")?;
        let mut grads: HashMap<Tensor, Tensor> = HashMap::from([(loss, seed)]);

        for n in (0..forward_nodes).rev() {
            let node = &self.nodes[n];
            let dys: Vec<Option<Tensor>> = node.outputs.iter().map(|o| grads.get(o).copied()).collect();
            let input_needs: Vec<bool> = node.inputs.iter().map(|i| needs[i.0]).collect();
            if dys.iter().all(Option::is_none) || !input_needs.iter().any(|&b| b) {
                continue;
            }
            let op = node.op.clone();
            let view = NodeView { inputs: node.inputs.clone(), outputs: node.outputs.clone(), layer: node.layer.clone() };
            let dxs = op.backward(self, &view, &dys, &input_needs)?;
            for ((&input, dx), need) in view.inputs.iter().zip(dxs).zip(input_needs) {
                let Some(dx) = dx.filter(|_| need) else { continue };
                let total = match grads.get(&input) {
                    Some(&earlier) => self.apply1(Add, &[earlier, dx], &format!("{}.grad_accumulate", view.layer))?,
                    None => dx,
                };
                grads.insert(input, total);
            }
        }
        Ok(wrt.iter().map(|p| grads.get(p).copied()).collect())
    }

    /// [`backward`](Self::backward) made ready for [`Program::compile`](super::Program::compile):
    /// `(parameter, gradient)` pairs, each gradient a tensor of its own so it can be placed in
    /// the store's gradient arena, and a zero gradient for a parameter the loss does not reach
    /// (the optimizer still reads one every step).
    pub fn gradients(&mut self, loss: Tensor, params: &[Tensor]) -> Result<Vec<(Tensor, Tensor)>> {
        let grads = self.backward(loss, params)?;
        let mut taken = Vec::new();
        let mut pairs = Vec::new();
        for (&p, d) in params.iter().zip(grads) {
            let d = match d {
                Some(d) => d,
                None => {
                    let shape = self.shape(p).to_vec();
                    self.apply1(Fill { value: 0.0, shape }, &[], "zero_grad")?
                }
            };
            pairs.push((p, self.materialize(d, &mut taken)?));
        }
        Ok(pairs)
    }

    /// Forward reachability from `wrt`: which tensors depend on a parameter we differentiate.
    fn tensors_needing_grad(&self, wrt: &[Tensor]) -> Vec<bool> {
        let mut needs = vec![false; self.tensors.len()];
        for p in wrt {
            needs[p.0] = true;
        }
        for node in &self.nodes {
            if node.inputs.iter().any(|i| needs[i.0]) {
                for o in &node.outputs {
                    needs[o.0] = true;
                }
            }
        }
        needs
    }

    /// True when `t` is produced by a node (not an input, parameter or state tensor).
    pub fn is_computed(&self, t: Tensor) -> bool {
        matches!(self.info(self.storage(t)).role, Role::Intermediate)
    }
}
