//! Optimizers over the store's parameter groups: one update dispatch per group (its whole
//! arena at once), with the step counter and the moments on the GPU.

use crate::gpu::{Buffer, Dispatch, Gpu};
use crate::graph::Store;
use crate::kernels::optim as k;
use crate::{Error, Result};

pub use k::{Adam, Sgd};

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Config {
    Adam(Adam),
    Sgd(Sgd),
}

/// The optimizer of one parameter group: state buffers and the recorded `[advance, update]`.
pub struct Optimizer {
    pub config: Config,
    pub group: String,
    /// Named state for checkpoints: `{group}.step`, and `{group}.exp_avg` / `.exp_avg_sq`
    /// (Adam) or `{group}.momentum_buffer` (SGD with momentum), each as long as the arena.
    pub state: Vec<(String, Buffer)>,
    pub dispatches: Vec<Dispatch>,
}

impl Optimizer {
    pub fn new(gpu: &Gpu, store: &Store, group: &str, config: Config) -> Result<Optimizer> {
        let g = store
            .groups
            .iter()
            .find(|g| g.name == group)
            .ok_or_else(|| Error::Invalid(format!("no parameter group {group:?} in the store")))?;
        let n = g.params.len;
        let step = gpu.zeros(&format!("{group}.step"), 4)?;
        let mut state = vec![(format!("{group}.step"), step.clone())];
        let dispatches = match config {
            Config::Adam(cfg) => {
                let m = gpu.zeros(&format!("{group}.exp_avg"), n)?;
                let v = gpu.zeros(&format!("{group}.exp_avg_sq"), n)?;
                let d = k::adam(gpu, &cfg, &g.params, &g.grads, &m, &v, &step)?;
                state.push((format!("{group}.exp_avg"), m));
                state.push((format!("{group}.exp_avg_sq"), v));
                d
            }
            Config::Sgd(cfg) => {
                let buf = if cfg.momentum != 0.0 { Some(gpu.zeros(&format!("{group}.momentum_buffer"), n)?) } else { None };
                let d = k::sgd(gpu, &cfg, &g.params, &g.grads, buf.as_ref(), &step)?;
                if let Some(b) = buf {
                    state.push((format!("{group}.momentum_buffer"), b));
                }
                d
            }
        };
        let mut dispatches = dispatches;
        for d in &mut dispatches {
            d.label = format!("{group}.optimizer");
        }
        Ok(Optimizer { config, group: group.to_string(), state, dispatches })
    }

    /// Changes the learning rate from the next step on (a 4-byte write).
    pub fn set_lr(&self, gpu: &Gpu, lr: f32) -> Result<()> {
        k::set_lr(gpu, &self.dispatches[1], lr)
    }
}

/// The exponential moving average of one parameter group (`--ema`), updated by one dispatch
/// after that group's optimizer: β = min(decay, (1 + t) / (10 + t)) at the optimizer's step t.
pub struct Ema {
    pub group: String,
    pub decay: f32,
    /// As long as the group's arena, laid out as it is.
    pub average: Buffer,
    pub dispatch: Dispatch,
    /// Resuming a checkpoint that has no average of this group starts the average from the
    /// resumed live weights instead of refusing (`--ema` given explicitly on a run trained
    /// without one). The warm-up of `ema` goes by the optimizer's step, so an average started
    /// at step t forgets its start as fast as one started at 0 forgets the initial weights.
    pub start_on_resume: bool,
}

impl Ema {
    /// Starts the average at the group's current parameters.
    pub fn new(gpu: &Gpu, store: &Store, optimizer: &Optimizer, decay: f32) -> Result<Ema> {
        let group = &optimizer.group;
        let g = store.groups.iter().find(|g| &g.name == group).ok_or_else(|| Error::Invalid(format!("no parameter group {group:?} in the store")))?;
        let average = gpu.upload(&format!("{group}.ema"), &gpu.read(&g.params)?)?;
        let mut dispatch = k::ema(gpu, decay, &g.params, &average, &optimizer.state[0].1)?;
        dispatch.label = format!("{group}.ema");
        Ok(Ema { group: group.clone(), decay, average, dispatch, start_on_resume: false })
    }

    /// Name of the average of parameter `param` in checkpoints: `ema.generator.0.weight`.
    pub fn tensor_name(param: &str) -> String {
        format!("ema.{param}")
    }
}
