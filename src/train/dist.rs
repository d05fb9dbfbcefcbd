//! Data-parallel steps: the trainer's step cut where each network's gradients must be summed
//! over the ranks (just before its optimizer), the gradient arenas staged through mapped
//! buffers, all-reduced on the host and written back, and the broadcasts that start every
//! rank from rank 0's parameters and optimizer state. A single process never comes here: its
//! step stays one submit.

use super::run::Trainer;
use crate::dist::{Collective, Pending};
use crate::gpu::{Buffer, Dispatch, Gpu, Readback};
use crate::graph::Store;
use crate::optim::Optimizer;
use crate::{Error, Result};
use std::collections::{HashMap, VecDeque};
use std::sync::mpsc::Receiver;
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

/// How a data-parallel step sums its gradients: `kiln train --no-overlap` and `--bucket-mb`.
#[derive(Clone, Copy, Debug)]
pub struct SyncOptions {
    /// All-reduce buckets of each gradient arena while the backward still runs (PyTorch DDP's
    /// scheme), rather than the whole arena once its network's backward is done.
    pub overlap: bool,
    /// The size a bucket is filled to, in bytes (whole parameters; one bigger than this is
    /// a bucket of its own).
    pub bucket_bytes: u64,
}

impl Default for SyncOptions {
    /// Overlapped, buckets of 1 MiB: DDP's 25 MiB would make one bucket of each of these
    /// models' arenas (the DCGAN's generator 9.2 MB, its discriminator 0.85, the MLP VAE's 2.6),
    /// and so no overlap; 1 MiB, DDP's first bucket, cuts them into 2, 1 and 2 (buckets are
    /// whole parameters, and the generator's first Linear alone is 5 MB).
    fn default() -> SyncOptions {
        SyncOptions { overlap: true, bucket_bytes: 1 << 20 }
    }
}

/// Time spent per step outside the GPU's own work, for the report in docs/DISTRIBUTED.md.
#[derive(Clone, Copy, Debug, Default)]
pub struct SyncTimes {
    pub steps: u64,
    /// Waiting for the GPU: for the work a gradient copy follows (its own compute), and in
    /// submits, which some drivers (lavapipe) return from only once the work submitted
    /// before is done.
    pub compute: Duration,
    /// Copying finished gradients into mapped memory and out to the host.
    pub staging: Duration,
    /// Waiting for all-reduces; overlapped, only what the backward did not hide.
    pub all_reduce: Duration,
    /// Writing the summed gradients back.
    pub upload: Duration,
}

/// A contiguous range of one group's gradient arena, all-reduced as one message.
#[derive(Clone, Debug, PartialEq)]
pub struct Bucket {
    /// Index in the store's groups.
    pub group: usize,
    /// Elements `start..end` of the arena.
    pub start: usize,
    pub end: usize,
    /// The parameters whose gradients lie in it.
    pub params: Vec<String>,
}

/// Cuts an arena of `len` elements laid out as `layout` (name, first element, length, in
/// order) into buckets of whole parameters, each filled to at least `bucket_elems` elements
/// unless it holds the first parameter, from the last parameter back: the order in which the
/// backward writes them. Every element lies in exactly one bucket: a parameter's bucket also
/// takes the alignment padding after it, the first bucket anything before the first parameter.
pub fn plan_buckets(group: usize, layout: &[(String, usize, usize)], len: usize, bucket_elems: usize) -> Vec<Bucket> {
    let mut out = Vec::new();
    if len == 0 {
        return out;
    }
    let (mut end, mut params) = (len, Vec::new());
    for (i, (name, start, _)) in layout.iter().enumerate().rev() {
        params.push(name.clone());
        let from = if i == 0 { 0 } else { *start };
        if end - from >= bucket_elems || i == 0 {
            out.push(Bucket { group, start: from, end, params: std::mem::take(&mut params) });
            end = from;
        }
    }
    if end > 0 {
        out.push(Bucket { group, start: 0, end, params: Vec::new() });
    }
    out
}

/// A point of an overlapped step, at a position in its dispatches (counted over its lists).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// Bucket `b`'s gradients are final: no later dispatch before its group's optimizer
    /// writes or reads them.
    Ready(usize),
    /// The optimizer of group `g` starts here: its sum must be written back.
    Reduce(usize),
}

/// Where in `lists` (one step's dispatch lists) each bucket becomes ready and each group's
/// optimizer begins, in the order the step meets them (a bucket before its group's
/// optimizer at the same position). A bucket is ready after the last dispatch that touches
/// its gradients since its group's previous optimizer (or the step's start); with lazy R1,
/// D's buckets become ready twice, once before each of D's optimizer runs.
pub fn overlap_events(trainer: &dyn Trainer, lists: &[&[Dispatch]], buckets: &[Bucket]) -> Result<Vec<(usize, Event)>> {
    let store = trainer.store();
    let bucket_of: HashMap<&str, usize> = buckets.iter().enumerate().flat_map(|(b, bucket)| bucket.params.iter().map(move |p| (p.as_str(), b))).collect();
    let mut last_use: Vec<Option<usize>> = vec![None; buckets.len()];
    let mut group_start = vec![0usize; store.groups.len()];
    let mut events = Vec::new();
    let mut position = 0;
    for segment in segments_of(trainer, lists.to_vec(), false)? {
        match segment {
            Segment::Run(run) => {
                for d in run.iter().flat_map(|l| l.iter()) {
                    position += 1;
                    for param in store.gradient_uses(d) {
                        if let Some(&b) = bucket_of.get(param.as_str()) {
                            last_use[b] = Some(position);
                        }
                    }
                }
            }
            Segment::AllReduce(g) => {
                for (b, _) in buckets.iter().enumerate().filter(|(_, bucket)| bucket.group == g) {
                    events.push((last_use[b].take().unwrap_or(group_start[g]), Event::Ready(b)));
                }
                events.push((position, Event::Reduce(g)));
                group_start[g] = position;
            }
        }
    }
    // Stable: buckets ready at one point keep the plan's order, last parameters first.
    events.sort_by_key(|&(at, event)| (at, matches!(event, Event::Reduce(_))));
    Ok(events)
}

/// The staging buffers and host copies of every gradient arena (or bucket), made once.
pub struct GradientSync<'a> {
    trainer: &'a dyn Trainer,
    options: SyncOptions,
    /// Overlapped: every group's buckets; otherwise one bucket per whole arena.
    buckets: Vec<Bucket>,
    staging: Vec<wgpu::Buffer>,
    /// Host copies of the buckets, lent to the collective while their sum runs.
    host: Vec<Vec<f32>>,
    /// 1/N to average, 1 where the loss sums over the batch (the VAE's), so that N ranks at
    /// batch B give the gradient of one process at batch NB.
    scale: f32,
    pub times: SyncTimes,
}

impl<'a> GradientSync<'a> {
    /// Whole arenas after each backward, as before overlap existed.
    pub fn new(gpu: &Gpu, trainer: &'a dyn Trainer, comm: &dyn Collective) -> Result<GradientSync<'a>> {
        GradientSync::with_options(gpu, trainer, comm, SyncOptions { overlap: false, ..SyncOptions::default() })
    }

    pub fn with_options(gpu: &Gpu, trainer: &'a dyn Trainer, comm: &dyn Collective, options: SyncOptions) -> Result<GradientSync<'a>> {
        // Every optimizer must be one whole list of a full step; each step is cut anew.
        segments(trainer)?;
        if options.bucket_bytes < 4 {
            crate::bail!(Invalid, "--bucket-mb: a gradient bucket of {} bytes holds no value; give at least 4 bytes", options.bucket_bytes);
        }
        let groups = &trainer.store().groups;
        let buckets: Vec<Bucket> = if options.overlap {
            let elems = (options.bucket_bytes / 4) as usize;
            groups.iter().enumerate().flat_map(|(g, group)| plan_buckets(g, &group.layout, group.grads.len, elems)).collect()
        } else {
            groups.iter().enumerate().map(|(g, group)| Bucket { group: g, start: 0, end: group.grads.len, params: Vec::new() }).collect()
        };
        let staging = buckets
            .iter()
            .map(|b| {
                gpu.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some(&format!("{}.grads[{}..{}] staging", groups[b.group].name, b.start, b.end)),
                    size: (b.end - b.start) as u64 * 4,
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                })
            })
            .collect();
        let scale = if trainer.loss_sums_batch() { 1.0 } else { 1.0 / comm.size() as f32 };
        let host = buckets.iter().map(|b| vec![0f32; b.end - b.start]).collect();
        Ok(GradientSync { trainer, options, buckets, staging, host, scale, times: SyncTimes::default() })
    }

    /// `overlapped, 12 buckets of 1 MiB` or `whole arenas`, for the log.
    pub fn describe(&self) -> String {
        if self.options.overlap {
            format!("overlapped, {} buckets of {:.2} MiB", self.buckets.len(), self.options.bucket_bytes as f64 / (1 << 20) as f64)
        } else {
            "whole arenas, not overlapped".into()
        }
    }

    /// The buckets each step sums: overlapped, [`plan_buckets`] of every group.
    pub fn buckets(&self) -> &[Bucket] {
        &self.buckets
    }

    /// Submits one step, summing each group's gradients over the ranks before its
    /// optimizer runs. The last submit carries the readback of logged values.
    pub fn step(&mut self, gpu: &Gpu, step: u64, comm: &dyn Collective, readback: Option<(&mut Readback, u64)>) -> Result<()> {
        if self.options.overlap {
            self.step_overlapped(gpu, step, comm, readback)?;
        } else {
            self.step_whole(gpu, step, comm, readback)?;
        }
        self.times.steps += 1;
        Ok(())
    }

    /// Segment by segment: the GPU waits while each finished arena is staged, summed and
    /// written back.
    fn step_whole(&mut self, gpu: &Gpu, step: u64, comm: &dyn Collective, mut readback: Option<(&mut Readback, u64)>) -> Result<()> {
        let store = self.trainer.store();
        let segments = segments_of(self.trainer, self.trainer.step_dispatches_at(step), false)?;
        let last = segments.len() - 1;
        for (i, segment) in segments.iter().enumerate() {
            match segment {
                Segment::Run(lists) => {
                    let began = Instant::now();
                    let index = gpu.submit("training step", lists, if i == last { readback.take() } else { None })?;
                    if i != last {
                        gpu.wait(Some(index), "training step")?;
                    }
                    self.times.compute += began.elapsed();
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
        Ok(())
    }

    /// The step submitted in pieces that end where buckets become ready, each piece followed
    /// by the copies of its buckets into their staging buffers: the GPU runs the rest of the
    /// backward while this thread reads each finished bucket out (after every submit those
    /// already copied, before an optimizer all the rest) and posts its sum to the
    /// communication thread, which runs the all-reduces in the order posted (the same on
    /// every rank). Before an optimizer, its group's sums are waited for and written back.
    /// Each element is summed by an MPI_Allreduce over the same values as the whole arena's.
    fn step_overlapped(&mut self, gpu: &Gpu, step: u64, comm: &dyn Collective, mut readback: Option<(&mut Readback, u64)>) -> Result<()> {
        let store = self.trainer.store();
        let lists = self.trainer.step_dispatches_at(step);
        let events = overlap_events(self.trainer, &lists, &self.buckets)?;
        let total: usize = lists.iter().map(|l| l.len()).sum();
        let mut submitted = 0;
        let mut copied = VecDeque::new();
        let mut summing: Vec<(usize, Pending<Vec<f32>>)> = Vec::new();
        for (at, event) in events {
            if at > submitted {
                let began = Instant::now();
                gpu.submit("training step", &between(&lists, submitted, at), None)?;
                self.times.compute += began.elapsed();
                submitted = at;
                // Buckets whose copies are already done go to the communication thread now,
                // while the GPU runs what was just submitted (a driver whose submit returns
                // only once its work is done, as a CPU one may, gets its overlap here).
                self.post_copied(gpu, comm, &mut copied, &mut summing, false)?;
            }
            match event {
                Event::Ready(b) => {
                    let bucket = &self.buckets[b];
                    let grads = &store.groups[bucket.group].grads;
                    let mut encoder = gpu.device.create_command_encoder(&Default::default());
                    encoder.copy_buffer_to_buffer(&grads.raw, grads.offset + bucket.start as u64 * 4, &self.staging[b], 0, (bucket.end - bucket.start) as u64 * 4);
                    let began = Instant::now();
                    let index = gpu.queue.submit([encoder.finish()]);
                    self.times.compute += began.elapsed();
                    // Mapped once the copy is done, while later pieces run.
                    let (tx, rx) = std::sync::mpsc::channel();
                    self.staging[b].map_async(wgpu::MapMode::Read, .., move |r| {
                        let _ = tx.send(r);
                    });
                    copied.push_back(Copied { bucket: b, index, mapped: rx });
                }
                Event::Reduce(g) => {
                    // Every bucket copied so far, whatever its group: all are final.
                    self.post_copied(gpu, comm, &mut copied, &mut summing, true)?;
                    for (b, sum) in std::mem::take(&mut summing) {
                        if self.buckets[b].group != g {
                            summing.push((b, sum));
                            continue;
                        }
                        let began = Instant::now();
                        let mut host = sum.wait()?;
                        let reduced = Instant::now();
                        if self.scale != 1.0 {
                            host.iter_mut().for_each(|v| *v *= self.scale);
                        }
                        let bucket = &self.buckets[b];
                        gpu.write(&store.groups[g].grads.view("gradient bucket", bucket.start, bucket.end - bucket.start)?, &host)?;
                        self.host[b] = host;
                        self.times.all_reduce += reduced - began;
                        self.times.upload += reduced.elapsed();
                    }
                }
            }
        }
        if !summing.is_empty() || !copied.is_empty() {
            crate::bail!(Invalid, "{} trainer: a gradient bucket was summed after its optimizer ran", self.trainer.kind());
        }
        let began = Instant::now();
        gpu.submit("training step", &between(&lists, submitted, total), readback.take())?;
        self.times.compute += began.elapsed();
        Ok(())
    }

    /// Reads the copied buckets out of their staging buffers in the order they were copied
    /// and posts each one's sum; `wait`: all of them, else only those already mapped. The
    /// order, and so the order of the all-reduces, is the step's plan on every rank; only
    /// when they are posted depends on timing.
    fn post_copied(&mut self, gpu: &Gpu, comm: &dyn Collective, copied: &mut VecDeque<Copied>, summing: &mut Vec<(usize, Pending<Vec<f32>>)>, wait: bool) -> Result<()> {
        let groups = &self.trainer.store().groups;
        if !wait && !copied.is_empty() {
            gpu.device.poll(wgpu::PollType::Poll).map_err(|e| Error::Device { kernel: "training step".into(), message: e.to_string() })?;
        }
        while let Some(front) = copied.front() {
            let bucket = &self.buckets[front.bucket];
            let what = format!("staging of {}.grads[{}..{}]", groups[bucket.group].name, bucket.start, bucket.end);
            let began = Instant::now();
            let mapped = if wait {
                gpu.wait(Some(front.index.clone()), "training step")?;
                gpu.wait_for_map(&front.mapped, &what)?
            } else {
                match front.mapped.try_recv() {
                    Ok(mapped) => mapped,
                    Err(_) => break,
                }
            };
            let done = Instant::now();
            mapped.map_err(|e| Error::Device { kernel: what.clone(), message: e.to_string() })?;
            let b = copied.pop_front().expect("looked at").bucket;
            {
                let view = self.staging[b].get_mapped_range(..).map_err(|e| Error::Device { kernel: what.clone(), message: e.to_string() })?;
                self.host[b].copy_from_slice(bytemuck::cast_slice::<u8, f32>(&view[..]));
            }
            self.staging[b].unmap();
            summing.push((b, comm.start_all_reduce_sum(std::mem::take(&mut self.host[b]))));
            self.times.compute += done - began;
            self.times.staging += done.elapsed();
        }
        Ok(())
    }
}

/// A bucket's copy into its staging buffer, submitted, and the news of its mapping.
struct Copied {
    bucket: usize,
    index: wgpu::SubmissionIndex,
    mapped: Receiver<std::result::Result<(), wgpu::BufferAsyncError>>,
}

/// The dispatches at positions `from..to` of `lists`, counted over all of them, as
/// sub-slices of the lists.
fn between<'a>(lists: &[&'a [Dispatch]], from: usize, to: usize) -> Vec<&'a [Dispatch]> {
    let mut out = Vec::new();
    let mut first = 0;
    for list in lists {
        let (start, end) = (from.max(first), to.min(first + list.len()));
        if start < end {
            out.push(&list[start - first..end - first]);
        }
        first += list.len();
    }
    out
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
