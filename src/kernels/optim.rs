//! shaders/optim.wgsl: Adam and SGD(momentum) as torch.optim, each one dispatch over a flat
//! parameter arena, preceded by a one-invocation `advance` that bumps the step counter held in
//! a 4-word GPU buffer (`t`, `1 − β1^t`, `1 − β2^t`, unused; see [`step_words`]).
//!
//! [`adam`] and [`sgd`] return `[advance, update]`: record both once and replay them every
//! step. A learning-rate scheduler rewrites the update's lr with [`set_lr`] (a 4-byte write).

use super::check_len;
use crate::gpu::{workgroups_1d, Buffer, Cost, Dispatch, Gpu, KernelId};
use crate::{bail, Result};

const WG: u32 = 256;

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
    momentum: f32,
    dampening: f32,
    nesterov: u32,
    n: u32,
}

/// torch.optim.Adam hyperparameters (no amsgrad); weight decay is L2 added to the gradient.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Adam {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

impl Default for Adam {
    /// torch's defaults: lr 1e-3, betas (0.9, 0.999), eps 1e-8, no weight decay.
    fn default() -> Adam {
        Adam { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 }
    }
}

/// torch.optim.SGD hyperparameters.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Sgd {
    pub lr: f32,
    pub momentum: f32,
    pub dampening: f32,
    pub weight_decay: f32,
    pub nesterov: bool,
}

/// False for NaN as well as for negatives, the way torch's `0.0 <= x` checks behave.
fn non_negative(x: f32) -> bool {
    x >= 0.0
}

fn kernel(entry: &'static str) -> KernelId {
    KernelId::new("optim", entry)
}

/// The step buffer's contents after `t` steps: `[t, 1 − β1^t, 1 − β2^t, 0]` as u32 words.
/// Upload `step_words(0, ..)` (all zeros) for a fresh optimizer, or `t` when resuming.
pub fn step_words(t: u32, beta1: f32, beta2: f32) -> [u32; 4] {
    let bias = |b: f32| (1.0 - (b as f64).powi(t as i32)) as f32;
    [t, bias(beta1).to_bits(), bias(beta2).to_bits(), 0]
}

fn check_arena(name: &str, param: &Buffer, buffers: &[(&str, &Buffer)], step: &Buffer) -> Result<usize> {
    let n = param.len;
    if n > u32::MAX as usize {
        bail!(Shape, "{name}: {n} parameters, more than a u32 index addresses");
    }
    for (what, b) in buffers {
        check_len(name, what, b, n)?;
    }
    check_len(name, "step counter", step, 4)?;
    Ok(n)
}

fn advance(gpu: &Gpu, label: &str, beta1: f32, beta2: f32, step: &Buffer) -> Result<Dispatch> {
    let p = Params { beta1, beta2, ..Default::default() };
    gpu.dispatch(kernel("advance"), label, &p, &[(5, step)], [1, 1, 1], Cost { flops: 4, bytes: 24 })
}

/// One Adam step over all of `param` (its length is the arena size): `grad`, `m` (exp_avg)
/// and `v` (exp_avg_sq) hold at least as many elements; `step` holds 4 words
/// ([`step_words`]). Returns `[advance, update]`.
pub fn adam(gpu: &Gpu, cfg: &Adam, param: &Buffer, grad: &Buffer, m: &Buffer, v: &Buffer, step: &Buffer) -> Result<Vec<Dispatch>> {
    let k = kernel("adam");
    let name = k.to_string();
    let Adam { lr, beta1, beta2, eps, weight_decay } = *cfg;
    let betas_ok = (0.0..1.0).contains(&beta1) && (0.0..1.0).contains(&beta2);
    if !(betas_ok && [lr, eps, weight_decay].into_iter().all(non_negative)) {
        bail!(Invalid, "{name}: needs lr, eps, weight_decay >= 0 and betas in [0, 1), got {cfg:?}");
    }
    let n = check_arena(&name, param, &[("gradient", grad), ("exp_avg m", m), ("exp_avg_sq v", v)], step)?;
    let p = Params { lr, beta1, beta2, eps, weight_decay, n: n as u32, ..Default::default() };
    let bindings = [(1, param), (2, grad), (3, m), (4, v), (5, step)];
    let vec4 = n.is_multiple_of(4) && bindings[..4].iter().all(|(_, b)| b.offset % 16 == 0);
    let (k, invocations) = if vec4 { (kernel("adam4"), n / 4) } else { (k, n) };
    // Reads p, g, m, v; writes p, m, v. About 16 flops with the sqrt and two divisions.
    let update = gpu.dispatch(k, "", &p, &bindings, workgroups_1d(invocations, WG), Cost::elementwise(n, 16, 4, 3))?;
    Ok(vec![advance(gpu, "adam", beta1, beta2, step)?, update])
}

/// One SGD step over all of `param`. `momentum_buffer` is needed when `cfg.momentum` ≠ 0
/// (torch's momentum_buffer, overwritten by the first gradient at t = 1). Returns
/// `[advance, update]`.
pub fn sgd(gpu: &Gpu, cfg: &Sgd, param: &Buffer, grad: &Buffer, momentum_buffer: Option<&Buffer>, step: &Buffer) -> Result<Vec<Dispatch>> {
    let k = kernel("sgd");
    let name = k.to_string();
    let Sgd { lr, momentum, dampening, weight_decay, nesterov } = *cfg;
    if !([lr, momentum, weight_decay].into_iter().all(non_negative) && dampening.is_finite()) {
        bail!(Invalid, "{name}: needs lr, momentum, weight_decay >= 0, got {cfg:?}");
    }
    if nesterov && (momentum <= 0.0 || dampening != 0.0) {
        bail!(Invalid, "{name}: nesterov needs momentum > 0 and dampening 0 (as torch), got {cfg:?}");
    }
    let buf = match (momentum_buffer, momentum != 0.0) {
        (Some(b), true) => b,
        (None, false) => &gpu.dummy,
        (None, true) => bail!(Invalid, "{name}: momentum {momentum} needs a momentum buffer"),
        (Some(_), false) => bail!(Invalid, "{name}: a momentum buffer was given but momentum is 0"),
    };
    let mut arena = vec![("gradient", grad)];
    if momentum != 0.0 {
        arena.push(("momentum buffer", buf));
    }
    let n = check_arena(&name, param, &arena, step)?;
    let p = Params { lr, weight_decay, momentum, dampening, nesterov: nesterov as u32, n: n as u32, ..Default::default() };
    let (reads, writes) = if momentum != 0.0 { (3, 2) } else { (2, 1) };
    let bindings = [(1, param), (2, grad), (3, buf), (5, step)];
    let update = gpu.dispatch(k, "", &p, &bindings, workgroups_1d(n, WG), Cost::elementwise(n, 6, reads, writes))?;
    Ok(vec![advance(gpu, "sgd", 0.0, 0.0, step)?, update])
}

/// The moving average of `param` into `average` after each update of the optimizer whose
/// step counter is `step` (read, not advanced): β = min(`decay`, (1 + t) / (10 + t)).
pub fn ema(gpu: &Gpu, decay: f32, param: &Buffer, average: &Buffer, step: &Buffer) -> Result<Dispatch> {
    let k = kernel("ema");
    let name = k.to_string();
    if !(0.0..1.0).contains(&decay) {
        bail!(Invalid, "{name}: the decay must be in [0, 1), got {decay}");
    }
    let n = check_arena(&name, param, &[("average", average)], step)?;
    let p = Params { beta1: decay, n: n as u32, ..Default::default() };
    // Reads the parameter and the average, writes the average; 3 flops.
    gpu.dispatch(k, "", &p, &[(1, param), (3, average), (5, step)], workgroups_1d(n, WG), Cost::elementwise(n, 3, 2, 1))
}

/// Rewrites the learning rate of a recorded `adam` or `sgd` update; takes effect at the next
/// submit.
pub fn set_lr(gpu: &Gpu, update: &Dispatch, lr: f32) -> Result<()> {
    if ![kernel("adam"), kernel("adam4"), kernel("sgd")].contains(&update.kernel) {
        bail!(Invalid, "set_lr: {} is not an optimizer update", update.name());
    }
    if !non_negative(lr) {
        bail!(Invalid, "set_lr: learning rate {lr} for {} is not >= 0", update.name());
    }
    gpu.queue.write_buffer(&update.params, 0, bytemuck::bytes_of(&lr));
    Ok(())
}
