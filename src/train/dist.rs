//! Data-parallel steps: the trainer's step cut where each network's gradients must be summed
//! over the ranks (just before its optimizer), the gradient arenas staged through mapped
//! buffers, all-reduced on the host and written back, and the broadcasts that start every
//! rank from rank 0's parameters and optimizer state. A single process never comes here: its
//! step stays one submit.

use super::run::Trainer;
use crate::dist::Collective;
use crate::gpu::{Buffer, Dispatch, Gpu, Readback};
use crate::graph::Store;
use crate::optim::Optimizer;
use crate::{Error, Result};
use std::time::{Duration, Instant};

/// One piece of a data-parallel step.
pub enum Segment<'a> {
    /// Dispatch lists submitted together.
    Run(Vec<&'a [Dispatch]>),
    /// Sum (or average) the gradient arena of this store group over the ranks.
    AllReduce(usize),
}

/// The trainer's step with an all-reduce of each optimizer's gradients before the optimizer:
/// an optimizer's recorded dispatches appear in `step_dispatches` as one whole list, so that
/// is where its group's gradients are complete. The GAN's paper recipe becomes gather, D's
/// half, all-reduce D, D's Adam and G's half, all-reduce G, G's Adam.
pub fn segments<'a>(trainer: &'a dyn Trainer) -> Result<Vec<Segment<'a>>> {
    segments_of(trainer, trainer.step_dispatches(), true)
}

/// [`segments`] of the dispatch lists of one step (`step_dispatches_at`: with n_critic a
/// D-only step has no G optimizer, with lazy R1 D's optimizer comes twice); `every_optimizer`
/// asks that each optimizer appears, as in a full step.
pub fn segments_of<'a>(trainer: &'a dyn Trainer, lists: Vec<&'a [Dispatch]>, every_optimizer: bool) -> Result<Vec<Segment<'a>>> {
    let store = trainer.store();
    let optimizers = trainer.optimizers();
    let mut found = vec![!every_optimizer; optimizers.len()];
    let mut out = Vec::new();
    let mut run: Vec<&[Dispatch]> = Vec::new();
    for list in lists {
        if let Some(i) = optimizers.iter().position(|o| std::ptr::eq(o.dispatches.as_slice(), list)) {
            let group = store.groups.iter().position(|g| g.name == optimizers[i].group).expect("an optimizer's group is in its store");
            out.push(Segment::Run(std::mem::take(&mut run)));
            out.push(Segment::AllReduce(group));
            found[i] = true;
        }
        run.push(list);
    }
    out.push(Segment::Run(run));
    if let Some(i) = found.iter().position(|f| !f) {
        crate::bail!(
            Invalid,
            "{} trainer: the optimizer of {:?} is not one whole list of its step's dispatches, so its gradients cannot be all-reduced before it",
            trainer.kind(),
            optimizers[i].group
        );
    }
    out.retain(|s| !matches!(s, Segment::Run(r) if r.is_empty()));
    Ok(out)
}

/// Time spent per step outside the GPU's own work, for the report in docs/DISTRIBUTED.md.
#[derive(Clone, Copy, Debug, Default)]
pub struct SyncTimes {
    pub steps: u64,
    /// Waiting for the GPU to finish the segment before an all-reduce (its own compute).
    pub compute: Duration,
    /// Copying a finished gradient arena into mapped memory and out to the host.
    pub staging: Duration,
    /// The all-reduce itself.
    pub all_reduce: Duration,
    /// Writing the summed gradients back.
    pub upload: Duration,
}

/// The staging buffers and host copies of every gradient arena, made once.
pub struct GradientSync<'a> {
    trainer: &'a dyn Trainer,
    staging: Vec<wgpu::Buffer>,
    /// Host copies of the arenas, one per group.
    host: Vec<Vec<f32>>,
    /// 1/N to average, 1 where the loss sums over the batch (the VAE's), so that N ranks at
    /// batch B give the gradient of one process at batch NB.
    scale: f32,
    pub times: SyncTimes,
}

impl<'a> GradientSync<'a> {
    pub fn new(gpu: &Gpu, trainer: &'a dyn Trainer, comm: &dyn Collective) -> Result<GradientSync<'a>> {
        // Every optimizer must be one whole list of a full step; each step is cut anew.
        segments(trainer)?;
        let staging = trainer
            .store()
            .groups
            .iter()
            .map(|g| {
                gpu.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some(&format!("{}.grads staging", g.name)),
                    size: g.grads.bytes(),
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                })
            })
            .collect();
        let scale = if trainer.loss_sums_batch() { 1.0 } else { 1.0 / comm.size() as f32 };
        let host = trainer.store().groups.iter().map(|g| vec![0f32; g.grads.len]).collect();
        Ok(GradientSync { trainer, staging, host, scale, times: SyncTimes::default() })
    }

    /// Submits one step, segment by segment, summing each group's gradients over the ranks
    /// before its optimizer runs. The last segment carries the readback of logged values.
    pub fn step(&mut self, gpu: &Gpu, step: u64, comm: &dyn Collective, mut readback: Option<(&mut Readback, u64)>) -> Result<()> {
        let store = self.trainer.store();
        let segments = segments_of(self.trainer, self.trainer.step_dispatches_at(step), false)?;
        let last = segments.len() - 1;
        for (i, segment) in segments.iter().enumerate() {
            match segment {
                Segment::Run(lists) => {
                    let index = gpu.submit("training step", lists, if i == last { readback.take() } else { None })?;
                    if i != last {
                        let began = Instant::now();
                        gpu.wait(Some(index), "training step")?;
                        self.times.compute += began.elapsed();
                    }
                }
                Segment::AllReduce(group) => {
                    let grads = &store.groups[*group].grads;
                    let began = Instant::now();
                    let host = &mut self.host[*group];
                    stage(gpu, grads, &self.staging[*group], host)?;
                    let staged = Instant::now();
                    comm.all_reduce_sum(host)?;
                    let reduced = Instant::now();
                    if self.scale != 1.0 {
                        host.iter_mut().for_each(|v| *v *= self.scale);
                    }
                    gpu.write(grads, host)?;
                    self.times.staging += staged - began;
                    self.times.all_reduce += reduced - staged;
                    self.times.upload += reduced.elapsed();
                }
            }
        }
        self.times.steps += 1;
        Ok(())
    }
}

/// Copies `grads` into the mapped `staging` buffer once the work before it is done, and
/// out into `host` (reused from step to step).
pub fn stage(gpu: &Gpu, grads: &Buffer, staging: &wgpu::Buffer, host: &mut Vec<f32>) -> Result<()> {
    let what = format!("staging of {:?}", grads.label);
    let mut encoder = gpu.device.create_command_encoder(&Default::default());
    encoder.copy_buffer_to_buffer(&grads.raw, grads.offset, staging, 0, grads.bytes());
    gpu.queue.submit([encoder.finish()]);
    let (tx, rx) = std::sync::mpsc::channel();
    staging.map_async(wgpu::MapMode::Read, .., move |r| {
        let _ = tx.send(r);
    });
    gpu.wait(None, &what)?;
    gpu.wait_for_map(&rx, &what)?.map_err(|e| Error::Device { kernel: what.clone(), message: e.to_string() })?;
    {
        let view = staging.get_mapped_range(..).map_err(|e| Error::Device { kernel: what.clone(), message: e.to_string() })?;
        host.resize(grads.len, 0.0);
        host.copy_from_slice(bytemuck::cast_slice::<u8, f32>(&view[..]));
    }
    staging.unmap();
    Ok(())
}

/// The buffers that stay equal on all ranks: parameters and each optimizer's step counter and
/// moments; with `states`, also the states (batch norm's running statistics), which start
/// equal but then follow each rank's own batches, as in PyTorch DDP without SyncBatchNorm.
fn replicated<'a>(store: &'a Store, optimizers: &[&'a Optimizer], states: bool) -> Vec<&'a Buffer> {
    let mut out: Vec<&Buffer> = store.groups.iter().map(|g| &g.params).collect();
    if states {
        out.extend(store.states().map(|(_, s)| &s.buffer));
    }
    out.extend(optimizers.iter().flat_map(|o| o.state.iter().map(|(_, b)| b)));
    out
}

/// Overwrites every rank's parameters, states and optimizer state with rank 0's: the same
/// start for all, fresh or resumed from rank 0's checkpoint.
pub fn broadcast_from_rank0(gpu: &Gpu, store: &Store, optimizers: &[&Optimizer], comm: &dyn Collective) -> Result<()> {
    for buffer in replicated(store, optimizers, true) {
        let mut bytes = gpu.read_as::<u32>(buffer)?;
        comm.broadcast(bytemuck::cast_slice_mut(&mut bytes), 0)?;
        gpu.write(buffer, &bytes)?;
    }
    Ok(())
}

/// How many parameter or optimizer values differ in their bits from rank 0's, summed
/// over the ranks (every rank gets the count). Zero is the contract of data-parallel
/// training; anything else means the ranks diverged.
pub fn count_divergent(gpu: &Gpu, store: &Store, optimizers: &[&Optimizer], comm: &dyn Collective) -> Result<u64> {
    let mut differ = 0u64;
    for buffer in replicated(store, optimizers, false) {
        let mine = gpu.read_as::<u32>(buffer)?;
        let mut first = mine.clone();
        comm.broadcast(bytemuck::cast_slice_mut(&mut first), 0)?;
        differ += mine.iter().zip(&first).filter(|(a, b)| a != b).count() as u64;
    }
    let mut total = vec![differ as f32];
    comm.all_reduce_sum(&mut total)?;
    Ok(total[0] as u64)
}

/// A u64 as rank 0 holds it.
pub fn broadcast_u64(value: u64, comm: &dyn Collective) -> Result<u64> {
    let mut bytes = value.to_le_bytes();
    comm.broadcast(&mut bytes, 0)?;
    Ok(u64::from_le_bytes(bytes))
}

/// Points every random dispatch of the step at this rank's part of the stream, once per run:
/// those of the full step and of step 0, which also runs what only some steps run (lazy R1's
/// extra D pass). Setting a dispatch twice writes the same shard.
pub fn shard_random_streams(gpu: &Gpu, trainer: &dyn Trainer, comm: &dyn Collective) -> Result<()> {
    let (full, first) = (trainer.step_dispatches(), trainer.step_dispatches_at(0));
    for d in full.iter().chain(&first).flat_map(|l| l.iter()).filter(|d| crate::kernels::random::draws_random(d)) {
        crate::kernels::random::set_shard(gpu, d, comm.rank() as u32)?;
    }
    Ok(())
}
