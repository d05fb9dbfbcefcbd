//! The executor: resolves every tensor to a buffer (persistent ones from the store,
//! intermediates from the memory plan), lowers every node to dispatches once, and replays
//! them as one submit per step.

use super::fuse::Fusion;
use super::plan::{naive_bytes, plan, Lifetime};
use super::store::Store;
use super::{Graph, OpIo, Role, Tensor};
use crate::gpu::{Buffer, Dispatch, Gpu, Readback};
use crate::{Error, Result};

/// Bytes the step needs, as `kiln` reports them at build.
#[derive(Clone, Copy, Debug, Default)]
pub struct MemoryReport {
    /// Pooled buffers for intermediates after the plan.
    pub planned: u64,
    /// One buffer per intermediate, for comparison.
    pub naive: u64,
    /// Buffers the program owns outside the pool (tensors kept for readback).
    pub kept: u64,
}

impl std::fmt::Display for MemoryReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "intermediates {} planned vs {} one-buffer-per-tensor ({:.1}x less); {} kept for readback",
            bytes(self.planned),
            bytes(self.naive),
            self.naive as f64 / self.planned.max(1) as f64,
            bytes(self.kept)
        )
    }
}

/// `1.5 MiB`, `12.0 KiB` or `40 B`: small plans stay readable.
fn bytes(b: u64) -> String {
    match b {
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / (1 << 10) as f64),
        b => format!("{b} B"),
    }
}

/// A compiled step: every buffer, pipeline and bind group exists; `run` only records and submits.
pub struct Program {
    pub dispatches: Vec<Dispatch>,
    /// Index in `dispatches` of each node's first dispatch.
    node_starts: Vec<usize>,
    buffers: Vec<Option<Buffer>>,
    /// Names of the tensors fused away (no buffer), for `buffer`'s error.
    fused_away: std::collections::HashMap<usize, String>,
    pub memory: MemoryReport,
    /// Activations computed by their producer's epilogue (graph::fuse), in node order; their
    /// input tensors have no buffer.
    pub fused: Vec<Fusion>,
}

impl Program {
    /// Compiles `graph` against `store`. `keep` lists tensors to read back after a step
    /// (losses, samples): they get buffers of their own. `grads` maps parameters to the
    /// gradient tensors that must land in the store's gradient arena for the optimizer.
    pub fn compile(gpu: &Gpu, graph: &Graph, store: &mut Store, keep: &[Tensor], grads: &[(Tensor, Tensor)]) -> Result<Program> {
        let mut buffers: Vec<Option<Buffer>> = vec![None; graph.tensors.len()];
        let mut kept_bytes = 0;
        for (i, info) in graph.tensors.iter().enumerate() {
            buffers[i] = match &info.role {
                Role::Param => {
                    let stored = store
                        .param(&info.name)
                        .ok_or_else(|| Error::Invalid(format!("parameter {:?} is not in the store", info.name)))?;
                    if stored.shape != info.shape {
                        return Err(Error::Shape(format!(
                            "parameter {:?} is {:?} in the store but {:?} in the graph",
                            info.name, stored.shape, info.shape
                        )));
                    }
                    Some(stored.buffer.clone())
                }
                Role::State => Some(store.state(gpu, &info.name, &info.shape)?.buffer.clone()),
                Role::Input => Some(store.input(gpu, &info.name, &info.shape)?.buffer.clone()),
                Role::Intermediate | Role::View(_) => None,
            };
        }
        for &(param, grad) in grads {
            let name = &graph.info(param).name;
            if graph.storage(grad) != grad || !graph.is_computed(grad) {
                return Err(Error::Invalid(format!(
                    "gradient of {name:?} must be a computed tensor of its own (use Graph::materialize)"
                )));
            }
            let view = store.grad(name).ok_or_else(|| Error::Invalid(format!("parameter {name:?} has no gradient buffer")))?;
            buffers[grad.0] = Some(view.clone());
        }
        for &t in keep {
            let t = graph.storage(t);
            if buffers[t.0].is_none() {
                let info = graph.info(t);
                let b = gpu.zeros(&info.name, info.numel())?;
                kept_bytes += b.bytes();
                buffers[t.0] = Some(b);
            }
        }

        let fused = super::fuse::fusions(gpu, graph, &buffers);
        let roles = Roles::of(graph, &fused);
        let (lifetimes, owners) = lifetimes(graph, &buffers, &roles);
        let memory_plan = plan(&lifetimes);
        let slots: Vec<Buffer> = memory_plan
            .slot_bytes
            .iter()
            .enumerate()
            .map(|(i, &bytes)| gpu.zeros(&format!("pool.{i}"), (bytes / 4) as usize))
            .collect::<Result<_>>()?;
        let mut scratch: Vec<Vec<Buffer>> = vec![Vec::new(); graph.nodes.len()];
        for (l, owner) in owners.iter().enumerate() {
            let slot = &slots[memory_plan.slot_of[l]];
            let len = (lifetimes[l].bytes / 4) as usize;
            match *owner {
                Owner::Tensor(t) => buffers[t.0] = Some(slot.view(&graph.info(t).name, 0, len)?),
                Owner::Scratch(node) => scratch[node].push(slot.view("scratch", 0, len)?),
            }
        }
        for i in 0..graph.tensors.len() {
            if buffers[i].is_none() {
                let base = graph.storage(Tensor(i));
                let info = &graph.tensors[i];
                buffers[i] = buffers[base.0].as_ref().map(|b| Buffer { label: info.name.clone(), len: info.numel(), ..b.clone() });
            }
        }

        // Which parameter's gradient each gradient tensor (or a view of it) is, so that every
        // dispatch touching one is noted in the store (data-parallel overlap, train::dist).
        let grad_of: std::collections::HashMap<usize, &str> = grads.iter().map(|&(p, g)| (g.0, graph.info(p).name.as_str())).collect();
        let mut dispatches = Vec::new();
        let mut node_starts = Vec::with_capacity(graph.nodes.len());
        for (n, node) in graph.nodes.iter().enumerate() {
            node_starts.push(dispatches.len());
            let Some(outputs) = roles.outputs(graph, n) else { continue };
            let get = |t: &Tensor| buffers[t.0].as_ref().expect("every tensor has a buffer after planning");
            let io = OpIo {
                label: &node.layer,
                inputs: node.inputs.iter().map(get).collect(),
                input_shapes: node.inputs.iter().map(|&t| graph.shape(t)).collect(),
                outputs: outputs.iter().map(get).collect(),
                output_shapes: outputs.iter().map(|&t| graph.shape(t)).collect(),
                scratch: scratch[n].clone(),
            };
            let (lowered, label) = match roles.epilogue[n] {
                Some(fusion) => {
                    let act = graph.nodes[fusion.activation].op.activation().expect("fused with an activation");
                    (node.op.lower_fused(gpu, &io, act)?, super::fuse::label(graph, fusion))
                }
                None => (node.op.lower(gpu, &io)?, node.layer.clone()),
            };
            for mut d in lowered {
                d.label = label.clone();
                for t in node.inputs.iter().chain(outputs) {
                    if let Some(param) = grad_of.get(&graph.storage(*t).0) {
                        store.note_gradient_use(&d, param);
                    }
                }
                dispatches.push(d);
            }
        }
        let memory = MemoryReport { planned: memory_plan.planned_bytes(), naive: naive_bytes(&lifetimes), kept: kept_bytes };
        let fused_away = (0..graph.tensors.len()).filter(|&i| buffers[i].is_none()).map(|i| (i, graph.tensors[i].name.clone())).collect();
        Ok(Program { dispatches, node_starts, buffers, fused_away, memory, fused })
    }

    /// The dispatches of the nodes before node `n` and of those from it on, so that a step can
    /// run something in between: the GAN updates D after its half of the graph, and the other
    /// half then reads the updated parameters while reusing the first half's activations.
    pub fn split_at_node(&self, n: usize) -> (&[Dispatch], &[Dispatch]) {
        self.dispatches.split_at(self.node_starts.get(n).copied().unwrap_or(self.dispatches.len()))
    }

    /// The buffer holding `t` (views share their base's). A pre-activation fused into its
    /// producer has none, and asking for it is an error that says to list it in `keep`.
    pub fn buffer(&self, t: Tensor) -> Result<&Buffer> {
        match self.buffers.get(t.0) {
            Some(Some(buffer)) => Ok(buffer),
            Some(None) => Err(Error::Invalid(format!(
                "tensor {} ({:?}) has no buffer: its activation is computed in the epilogue of the op that produces it, \
                 so it is never stored; list it in `keep` when compiling the program to read it",
                t.0,
                self.fused_away.get(&t.0).map_or("", String::as_str)
            ))),
            None => Err(Error::Invalid(format!("tensor {} is not in this program's graph ({} tensors)", t.0, self.buffers.len()))),
        }
    }

    /// Records the whole step into one compute pass and submits it once. Does not wait.
    /// With `readback`, the step also copies the ring's sources into its next free slot.
    pub fn submit(&self, gpu: &Gpu, readback: Option<(&mut Readback, u64)>) -> Result<wgpu::SubmissionIndex> {
        gpu.submit("training step", &[&self.dispatches], readback)
    }

    /// Moves every random op to stream position `step`, so each step draws fresh noise and
    /// masks while a dropout's backward still sees its forward's mask (8-byte writes, no new
    /// objects). Call before [`submit`](Self::submit).
    pub fn set_step(&self, gpu: &Gpu, step: u64) -> Result<()> {
        for d in self.dispatches.iter().filter(|d| crate::kernels::random::draws_random(d)) {
            crate::kernels::random::set_offset(gpu, d, step)?;
        }
        Ok(())
    }

    /// Submits one step and waits for it.
    pub fn run(&self, gpu: &Gpu) -> Result<()> {
        let index = self.submit(gpu, None)?;
        gpu.wait(Some(index), "training step")
    }
}

enum Owner {
    Tensor(Tensor),
    Scratch(usize),
}

/// What the fusions do to the nodes: a producer writes its activation's output instead of its
/// own, and the activation node dispatches nothing.
struct Roles {
    /// Per node: the fusion whose activation its epilogue applies.
    epilogue: Vec<Option<Fusion>>,
    /// Per node: whether a producer's epilogue computes it.
    absorbed: Vec<bool>,
}

impl Roles {
    fn of(graph: &Graph, fused: &[Fusion]) -> Roles {
        let mut roles = Roles { epilogue: vec![None; graph.nodes.len()], absorbed: vec![false; graph.nodes.len()] };
        for &f in fused {
            roles.epilogue[f.producer] = Some(f);
            roles.absorbed[f.activation] = true;
        }
        roles
    }

    /// The tensors node `n`'s dispatches write; None for an absorbed activation.
    fn outputs<'g>(&self, graph: &'g Graph, n: usize) -> Option<&'g [Tensor]> {
        match self.epilogue[n] {
            _ if self.absorbed[n] => None,
            Some(f) => Some(&graph.nodes[f.activation].outputs),
            None => Some(&graph.nodes[n].outputs),
        }
    }
}

/// Closed lifetimes `[producer, last reader]` of every pooled tensor and scratch buffer. A
/// fused activation's input is in neither (it is never stored); its output is written by
/// the producer's dispatches.
fn lifetimes(graph: &Graph, fixed: &[Option<Buffer>], roles: &Roles) -> (Vec<Lifetime>, Vec<Owner>) {
    let mut first = vec![usize::MAX; graph.tensors.len()];
    let mut last = vec![0usize; graph.tensors.len()];
    for (n, node) in graph.nodes.iter().enumerate() {
        let Some(outputs) = roles.outputs(graph, n) else { continue };
        for &t in outputs.iter().chain(&node.inputs) {
            let s = graph.storage(t).0;
            first[s] = first[s].min(n);
            last[s] = last[s].max(n);
        }
    }
    let mut lifetimes = Vec::new();
    let mut owners = Vec::new();
    for (i, info) in graph.tensors.iter().enumerate() {
        if info.role == Role::Intermediate && fixed[i].is_none() && first[i] != usize::MAX {
            lifetimes.push(Lifetime { start: first[i], end: last[i], bytes: (info.numel() as u64 * 4).max(4) });
            owners.push(Owner::Tensor(Tensor(i)));
        }
    }
    for (n, node) in graph.nodes.iter().enumerate() {
        let shapes: Vec<&[usize]> = node.inputs.iter().map(|&t| graph.shape(t)).collect();
        for len in node.op.scratch(&shapes) {
            lifetimes.push(Lifetime { start: n, end: n, bytes: (len as u64 * 4).max(4) });
            owners.push(Owner::Scratch(n));
        }
    }
    (lifetimes, owners)
}
