//! Runs a case through kiln's graph (ops, backward rules, executor) rather than calling
//! kernels one by one, so `kiln check` covers the autodiff rules too. The case's upstream
//! gradients enter as L = Σ_k Σ(y_k · grad_out_k), whose gradient w.r.t. each input is
//! exactly the vector-Jacobian product PyTorch computed.

use super::case::{Case, HostTensor};
use super::ops::OpResult;
use crate::gpu::Gpu;
use crate::graph::ops::{Add, Mul, Sum};
use crate::graph::{Graph, Program, Store, Tensor};
use crate::Result;

/// What a case's graph produced: each named output and where it lives.
pub(super) enum Produced {
    /// A tensor computed by the graph.
    Computed(String, Tensor),
    /// An input updated in place (batch norm's running statistics after the step).
    Updated(String, Tensor),
}

/// `states` lists inputs that are state tensors (updated in place, no gradient); the other
/// inputs are parameters so that gradients reach them.
pub(super) fn via_graph(
    gpu: &Gpu,
    case: &Case,
    states: &[usize],
    build: impl FnOnce(&mut Graph, &[Tensor]) -> Result<Vec<Produced>>,
) -> Result<OpResult> {
    let mut g = Graph::new();
    let inputs: Vec<Tensor> = case
        .inputs
        .iter()
        .enumerate()
        .map(|(i, (name, t))| if states.contains(&i) { g.state(name, &t.shape) } else { g.param(name, &t.shape) })
        .collect();
    let produced = build(&mut g, &inputs)?;

    let mut loss: Option<Tensor> = None;
    for p in &produced {
        let Produced::Computed(name, y) = p else { continue };
        if !case.grad_out.iter().any(|(n, _)| n == name) {
            continue;
        }
        let shape = g.shape(*y).to_vec();
        let gy = g.input(&format!("grad_out/{name}"), &shape);
        let weighted = g.apply1(Mul, &[*y, gy], "check")?;
        let term = g.apply1(Sum { all: true, mean: false }, &[weighted], "check")?;
        loss = Some(match loss {
            Some(l) => g.apply1(Add, &[l, term], "check")?,
            None => term,
        });
    }
    let wanted: Vec<usize> = (0..inputs.len()).filter(|&i| case.wants_grad(i) && !states.contains(&i)).collect();
    let mut pairs = Vec::new();
    if let (Some(loss), false) = (loss, wanted.is_empty()) {
        let wrt: Vec<Tensor> = wanted.iter().map(|&i| inputs[i]).collect();
        let grads = g.backward(loss, &wrt)?;
        let mut taken = Vec::new();
        for (&i, d) in wanted.iter().zip(grads) {
            if let Some(d) = d {
                pairs.push((i, g.materialize(d, &mut taken)?));
            }
        }
    }

    let mut store = Store::new();
    let params = (0..inputs.len())
        .filter(|i| !states.contains(i))
        .map(|i| (case.inputs[i].0.clone(), case.inputs[i].1.shape.clone(), case.inputs[i].1.data.clone()))
        .collect();
    store.add_group(gpu, "case", params)?;
    for &i in states {
        let (name, t) = &case.inputs[i];
        store.add_state(gpu, name, &t.shape, &t.data)?;
    }
    let keep: Vec<Tensor> = produced.iter().filter_map(|p| if let Produced::Computed(_, t) = p { Some(*t) } else { None }).collect();
    let grad_pairs: Vec<(Tensor, Tensor)> = pairs.iter().map(|&(i, d)| (inputs[i], d)).collect();
    let program = Program::compile(gpu, &g, &mut store, &keep, &grad_pairs)?;
    for (name, gy) in &case.grad_out {
        if let Some(input) = store.input_buffer(&format!("grad_out/{name}")) {
            gpu.write(&input.buffer, &gy.data)?;
        }
    }
    program.run(gpu)?;

    let mut result = OpResult::default();
    for p in &produced {
        match p {
            Produced::Computed(name, t) => result.output(name, HostTensor::download(gpu, program.buffer(*t), g.shape(*t))?),
            Produced::Updated(name, t) => result.output(name, HostTensor::download(gpu, program.buffer(*t), g.shape(*t))?),
        }
    }
    for i in wanted {
        let (name, t) = &case.inputs[i];
        let grad = match store.grad(name) {
            Some(b) if pairs.iter().any(|&(j, _)| j == i) => HostTensor::download(gpu, b, &t.shape)?,
            _ => HostTensor::zeros(&t.shape),
        };
        result.grad(name, grad);
    }
    Ok(result)
}
