//! shaders/random.wgsl: Philox 4x32-10 fills (uniform, normal), dropout forward and backward
//! with a recomputed (never stored) mask, and the VAE reparameterization trick.
//!
//! Advancing the stream: seed and offset live in the first 16 bytes of each dispatch's params
//! uniform (`seed_lo, seed_hi, offset_lo, offset_hi`). An executor that replays recorded
//! dispatches calls [`set_rng`] (one 16-byte `queue.write_buffer` into `Dispatch::params`)
//! before submitting the step; queue writes are ordered before the submit, so no bind group is
//! rebuilt and no storage buffer is needed. A dropout and its backward must be given the same
//! [`Rng`]. Give each op its own seed (or its own offset range) and advance the offset by one
//! per step: the element index lives in the counter's low words and the offset in the high
//! words, so streams of different offsets never overlap for any tensor size.

use super::check_len;
use crate::gpu::{workgroups_1d, Buffer, Cost, Dispatch, Gpu, KernelId};
use crate::{bail, Result};

/// 64 invocations × 4 elements (one Philox block each) = 256 elements per workgroup.
const WG: u32 = 64;
/// Integer ops of one Philox 4x32-10 block (10 rounds of two 16-bit-half mulhi, two
/// multiplies, four xors, key bump), per element, counted as flops for the profiler.
const PHILOX_OPS_PER_ELEMENT: u64 = 10 * 40 / 4;

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    seed_lo: u32,
    seed_hi: u32,
    offset_lo: u32,
    offset_hi: u32,
    n: u32,
    a: f32,
    b: f32,
    threshold: u32,
    /// The data-parallel rank ([`set_shard`]); 0 in a single process.
    shard: u32,
    pad: [u32; 3],
}

/// Where a random op reads its stream: the Philox key (`seed`) and the counter's high words
/// (`offset`, the training step).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rng {
    pub seed: u64,
    pub offset: u64,
}

impl Rng {
    /// The 16 bytes at the start of the params uniform: seed_lo, seed_hi, offset_lo, offset_hi.
    pub fn words(self) -> [u32; 4] {
        [self.seed as u32, (self.seed >> 32) as u32, self.offset as u32, (self.offset >> 32) as u32]
    }
}

fn params(rng: Rng, n: usize, a: f32, b: f32, threshold: u32) -> Params {
    let [seed_lo, seed_hi, offset_lo, offset_hi] = rng.words();
    Params { seed_lo, seed_hi, offset_lo, offset_hi, n: n as u32, a, b, threshold, shard: 0, pad: [0; 3] }
}

fn kernel(entry: &'static str) -> KernelId {
    KernelId::new("random", entry)
}

fn check_n(name: &str, n: usize) -> Result<()> {
    if n > u32::MAX as usize - 3 {
        bail!(Shape, "{name}: {n} elements, more than a u32 index addresses");
    }
    Ok(())
}

/// Rewrites the seed and offset of a recorded `uniform`, `normal`, `dropout` or
/// `dropout_backward` dispatch; takes effect at the next submit.
pub fn set_rng(gpu: &Gpu, dispatch: &Dispatch, rng: Rng) -> Result<()> {
    if !draws_random(dispatch) {
        bail!(Invalid, "set_rng: {} does not draw random numbers", dispatch.name());
    }
    gpu.queue.write_buffer(&dispatch.params, 0, bytemuck::cast_slice(&rng.words()));
    Ok(())
}

/// Moves a recorded random dispatch to stream position `offset` (the training step), keeping
/// its seed: an 8-byte write.
pub fn set_offset(gpu: &Gpu, dispatch: &Dispatch, offset: u64) -> Result<()> {
    if !draws_random(dispatch) {
        bail!(Invalid, "set_offset: {} does not draw random numbers", dispatch.name());
    }
    let words = [offset as u32, (offset >> 32) as u32];
    gpu.queue.write_buffer(&dispatch.params, 8, bytemuck::cast_slice(&words));
    Ok(())
}

/// Moves a recorded random dispatch to rank `shard`'s part of the stream: rank r of a
/// data-parallel run, whose tensor of n elements holds samples rB..rB+B of the global batch,
/// then reads the Philox blocks that elements rn..rn+n of one process's tensor at batch NB
/// read, so sample i gets the same numbers whatever N (exactly so when n is a multiple of 4;
/// otherwise the ranks' streams are still disjoint). A 4-byte write.
pub fn set_shard(gpu: &Gpu, dispatch: &Dispatch, shard: u32) -> Result<()> {
    if !draws_random(dispatch) {
        bail!(Invalid, "set_shard: {} does not draw random numbers", dispatch.name());
    }
    gpu.queue.write_buffer(&dispatch.params, std::mem::offset_of!(Params, shard) as u64, bytemuck::bytes_of(&shard));
    Ok(())
}

/// Whether `dispatch` reads a Philox stream position from its params.
pub fn draws_random(dispatch: &Dispatch) -> bool {
    let k = dispatch.kernel;
    k.shader == "random" && ["uniform_fill", "normal_fill", "dropout", "dropout_backward"].contains(&k.entry)
}

/// Raw Philox 4x32-10 blocks: `bits[4b..4b+4] = philox(counters[4b..4b+4], key = seed)` for
/// `blocks` blocks (u32 buffers). For known-answer tests against Random123.
pub fn philox_bits(gpu: &Gpu, seed: u64, counters: &Buffer, bits: &Buffer, blocks: usize) -> Result<Dispatch> {
    let k = kernel("philox_bits");
    let name = k.to_string();
    check_n(&name, blocks * 4)?;
    check_len(&name, "counters", counters, 4 * blocks)?;
    check_len(&name, "output bits", bits, 4 * blocks)?;
    let p = params(Rng { seed, offset: 0 }, blocks, 0.0, 0.0, 0);
    let cost = Cost { flops: blocks as u64 * 4 * PHILOX_OPS_PER_ELEMENT, bytes: blocks as u64 * 32 };
    gpu.dispatch(k, "", &p, &[(1, counters), (2, bits)], workgroups_1d(blocks, WG), cost)
}

/// `y[..n]` uniform in `[lo, hi)`, from the top 24 bits of each word (as `torch.rand`).
pub fn uniform(gpu: &Gpu, rng: Rng, lo: f32, hi: f32, y: &Buffer, n: usize) -> Result<Dispatch> {
    let k = kernel("uniform_fill");
    let name = k.to_string();
    if !(lo.is_finite() && hi.is_finite() && lo <= hi) {
        bail!(Invalid, "{name}: needs finite lo <= hi, got [{lo}, {hi})");
    }
    check_n(&name, n)?;
    check_len(&name, "output y", y, n)?;
    let cost = Cost::elementwise(n, PHILOX_OPS_PER_ELEMENT + 3, 0, 1);
    gpu.dispatch(k, "", &params(rng, n, lo, hi, 0), &[(2, y)], workgroups_1d(n.div_ceil(4), WG), cost)
}

/// `y[..n]` drawn from N(mean, std²) by Box–Muller.
pub fn normal(gpu: &Gpu, rng: Rng, mean: f32, std: f32, y: &Buffer, n: usize) -> Result<Dispatch> {
    let k = kernel("normal_fill");
    let name = k.to_string();
    if !(mean.is_finite() && std.is_finite() && std >= 0.0) {
        bail!(Invalid, "{name}: needs finite mean and std >= 0, got mean {mean}, std {std}");
    }
    check_n(&name, n)?;
    check_len(&name, "output y", y, n)?;
    // log, sqrt, sin, cos per pair plus the affine map: about 12 per element.
    let cost = Cost::elementwise(n, PHILOX_OPS_PER_ELEMENT + 12, 0, 1);
    gpu.dispatch(k, "", &params(rng, n, mean, std, 0), &[(2, y)], workgroups_1d(n.div_ceil(4), WG), cost)
}

/// The keep rule shared with the CPU reference: keep when the word's top 24 bits are at least
/// ceil(p · 2^24), so the keep rate is exactly 1 − p to 2^-24, p = 0 keeps all, p = 1 none.
pub fn dropout_threshold(p: f32) -> u32 {
    (p as f64 * 16_777_216.0).ceil() as u32
}

fn dropout_launch(gpu: &Gpu, entry: &'static str, rng: Rng, p: f32, input: (&str, &Buffer), output: (&str, &Buffer), n: usize) -> Result<Dispatch> {
    let k = kernel(entry);
    let name = k.to_string();
    if !(0.0..=1.0).contains(&p) {
        bail!(Invalid, "{name}: probability p = {p} is outside [0, 1]");
    }
    check_n(&name, n)?;
    check_len(&name, input.0, input.1, n)?;
    check_len(&name, output.0, output.1, n)?;
    let scale = if p < 1.0 { (1.0 / (1.0 - p as f64)) as f32 } else { 0.0 };
    let prm = params(rng, n, scale, 0.0, dropout_threshold(p));
    let cost = Cost::elementwise(n, PHILOX_OPS_PER_ELEMENT + 2, 1, 1);
    gpu.dispatch(k, "", &prm, &[(1, input.1), (2, output.1)], workgroups_1d(n.div_ceil(4), WG), cost)
}

/// Inverted dropout: `y = x · mask / (1 − p)`, mask ~ Bernoulli(1 − p) from `rng`, not stored.
pub fn dropout(gpu: &Gpu, rng: Rng, p: f32, x: &Buffer, y: &Buffer, n: usize) -> Result<Dispatch> {
    dropout_launch(gpu, "dropout", rng, p, ("input x", x), ("output y", y), n)
}

/// `dx = dy · mask / (1 − p)` with forward's mask recomputed from the same `rng`.
pub fn dropout_backward(gpu: &Gpu, rng: Rng, p: f32, dy: &Buffer, dx: &Buffer, n: usize) -> Result<Dispatch> {
    dropout_launch(gpu, "dropout_backward", rng, p, ("gradient dy", dy), ("gradient dx", dx), n)
}

/// `z = mu + eps · exp(logvar / 2)`; `eps` comes from a [`normal`] fill.
pub fn reparameterize(gpu: &Gpu, mu: &Buffer, logvar: &Buffer, eps: &Buffer, z: &Buffer, n: usize) -> Result<Dispatch> {
    let k = kernel("reparameterize");
    let name = k.to_string();
    check_n(&name, n)?;
    for (what, b) in [("mu", mu), ("logvar", logvar), ("eps", eps), ("output z", z)] {
        check_len(&name, what, b, n)?;
    }
    let p = params(Rng::default(), n, 0.0, 0.0, 0);
    let bindings = [(1, mu), (2, logvar), (3, eps), (4, z)];
    gpu.dispatch(k, "", &p, &bindings, workgroups_1d(n, WG), Cost::elementwise(n, 4, 3, 1))
}

/// `dmu = dz`, `dlogvar = dz · eps · exp(logvar / 2) / 2`.
pub fn reparameterize_backward(gpu: &Gpu, dz: &Buffer, logvar: &Buffer, eps: &Buffer, dmu: &Buffer, dlogvar: &Buffer, n: usize) -> Result<Dispatch> {
    let k = kernel("reparameterize_backward");
    let name = k.to_string();
    check_n(&name, n)?;
    for (what, b) in [("dz", dz), ("logvar", logvar), ("eps", eps), ("output dmu", dmu), ("output dlogvar", dlogvar)] {
        check_len(&name, what, b, n)?;
    }
    let p = params(Rng::default(), n, 0.0, 0.0, 0);
    let bindings = [(1, dz), (2, logvar), (3, eps), (4, dmu), (5, dlogvar)];
    gpu.dispatch(k, "", &p, &bindings, workgroups_1d(n, WG), Cost::elementwise(n, 5, 3, 2))
}
