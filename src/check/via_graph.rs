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

/// One input of a case's graph.
pub(super) enum Arg {
    /// The case's input for the op's parameter `i`, as a graph parameter so gradients reach it.
    Param(usize),
    /// The case's input for the op's parameter `i`, as state: updated in place, no gradient.
    State(usize),
    /// A fixed stand-in, under this name, for a parameter the case leaves out (batch norm's
    /// weight of ones): state, so it gets no gradient and is never reported.
    Fixed(&'static str, HostTensor),
}

/// Builds the graph of `args` with `build`, runs it once, and reads back what it produced and
/// the gradients the case asks for.
pub(super) fn via_graph(
    gpu: &Gpu,
    case: &Case,
    args: &[Arg],
    build: impl FnOnce(&mut Graph, &[Tensor]) -> Result<Vec<Produced>>,
) -> Result<OpResult> {
    // Each arg as (graph name, values, the op parameter whose gradient it carries).
    let args: Vec<(String, &HostTensor, Option<usize>)> = args
        .iter()
        .map(|a| {
            Ok(match a {
                Arg::Param(i) => (case.input_name(*i).to_string(), case.input(*i)?, Some(*i)),
                Arg::State(i) => (case.input_name(*i).to_string(), case.input(*i)?, None),
                // A '/' keeps the stand-in's name apart from every name a file may use.
                Arg::Fixed(name, t) => (format!("absent/{name}"), t, None),
            })
        })
        .collect::<Result<_>>()?;
    let mut g = Graph::new();
    let inputs: Vec<Tensor> = args
        .iter()
        .map(|(name, t, param)| if param.is_some() { g.param(name, &t.shape) } else { g.state(name, &t.shape) })
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
    // Indices into `args` of the parameters whose gradient the case checks.
    let wanted: Vec<usize> = (0..args.len()).filter(|&k| args[k].2.is_some_and(|i| case.wants_grad(i))).collect();
    let mut pairs = Vec::new();
    if let (Some(loss), false) = (loss, wanted.is_empty()) {
        let wrt: Vec<Tensor> = wanted.iter().map(|&k| inputs[k]).collect();
        let grads = g.backward(loss, &wrt)?;
        let mut taken = Vec::new();
        for (&k, d) in wanted.iter().zip(grads) {
            if let Some(d) = d {
                pairs.push((k, g.materialize(d, &mut taken)?));
            }
        }
    }

    let mut store = Store::new();
    let params = args
        .iter()
        .filter(|(_, _, param)| param.is_some())
        .map(|(name, t, _)| (name.clone(), t.shape.clone(), t.data.clone()))
        .collect();
    store.add_group(gpu, "case", params)?;
    for (name, t, _) in args.iter().filter(|(_, _, param)| param.is_none()) {
        store.add_state(gpu, name, &t.shape, &t.data)?;
    }
    let keep: Vec<Tensor> = produced.iter().filter_map(|p| if let Produced::Computed(_, t) = p { Some(*t) } else { None }).collect();
    let grad_pairs: Vec<(Tensor, Tensor)> = pairs.iter().map(|&(k, d)| (inputs[k], d)).collect();
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
            Produced::Computed(name, t) => result.output(name, HostTensor::download(gpu, program.buffer(*t)?, g.shape(*t))?),
            Produced::Updated(name, t) => result.output(name, HostTensor::download(gpu, program.buffer(*t)?, g.shape(*t))?),
        }
    }
    for k in wanted {
        let (name, t, _) = &args[k];
        let grad = match store.grad(name) {
            Some(b) if pairs.iter().any(|&(j, _)| j == k) => HostTensor::download(gpu, b, &t.shape)?,
            _ => HostTensor::zeros(&t.shape),
        };
        result.grad(name, grad);
    }
    Ok(result)
}
