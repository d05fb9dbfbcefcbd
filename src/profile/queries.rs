//! A ring of timestamp query sets. Step k's queries are resolved, copied into a staging buffer
//! and mapped asynchronously in the step's own submit; they are read once the GPU is done, so
//! profiling step k never makes the CPU wait before recording step k+1. Only when every slot
//! is still in flight does the next step wait, for the oldest one.

use crate::gpu::Gpu;
use crate::{Error, Result};
use std::collections::VecDeque;
use std::sync::mpsc;

type MapResult = std::result::Result<(), wgpu::BufferAsyncError>;

struct Slot {
    /// One set per `QUERY_SET_MAX_QUERIES` queries; query `q` lives in set `q / MAX`.
    sets: Vec<wgpu::QuerySet>,
    resolve: wgpu::Buffer,
    staging: wgpu::Buffer,
    /// Some((step, its submission, map result)) while in flight.
    pending: Option<(usize, wgpu::SubmissionIndex, mpsc::Receiver<MapResult>)>,
}

pub(super) struct QueryRing {
    queries: u32,
    slots: Vec<Slot>,
    next: usize,
    in_flight: VecDeque<usize>,
}

const MAX: u32 = wgpu::QUERY_SET_MAX_QUERIES;

fn device_error(e: impl std::fmt::Display) -> Error {
    Error::Device { kernel: "profiler timestamps".into(), message: e.to_string() }
}

impl QueryRing {
    /// `ring` slots of `queries` timestamps each.
    pub fn new(gpu: &Gpu, queries: u32, ring: usize) -> Result<QueryRing> {
        let bytes = queries as u64 * wgpu::QUERY_SIZE as u64;
        let slots = (0..ring.max(1))
            .map(|i| {
                gpu.scoped("profiler query ring", || Slot {
                    sets: (0..queries.div_ceil(MAX))
                        .map(|s| {
                            gpu.device.create_query_set(&wgpu::QuerySetDescriptor {
                                label: Some(&format!("profile.{i}.{s}")),
                                ty: wgpu::QueryType::Timestamp,
                                count: (queries - s * MAX).min(MAX),
                            })
                        })
                        .collect(),
                    resolve: gpu.device.create_buffer(&wgpu::BufferDescriptor {
                        label: Some(&format!("profile.{i}.resolve")),
                        size: bytes,
                        usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                        mapped_at_creation: false,
                    }),
                    staging: gpu.device.create_buffer(&wgpu::BufferDescriptor {
                        label: Some(&format!("profile.{i}.staging")),
                        size: bytes,
                        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                        mapped_at_creation: false,
                    }),
                    pending: None,
                })
            })
            .collect::<Result<_>>()?;
        Ok(QueryRing { queries, slots, next: 0, in_flight: VecDeque::new() })
    }

    /// Makes the next slot free, waiting for its step when the whole ring is in flight.
    /// Finished steps are appended to `done`.
    pub fn reserve(&mut self, gpu: &Gpu, done: &mut Vec<(usize, Vec<u64>)>) -> Result<()> {
        if let Some((_, index, _)) = &self.slots[self.next].pending {
            gpu.device
                .poll(wgpu::PollType::Wait { submission_index: Some(index.clone()), timeout: None })
                .map_err(device_error)?;
        }
        // When the reserved slot is in flight it is the oldest, so collecting one waits for it.
        let wait_for = usize::from(self.slots[self.next].pending.is_some());
        self.collect(gpu, wait_for, done)
    }

    /// The query set and index inside it of query `q` of the reserved slot.
    pub fn query(&self, q: u32) -> (&wgpu::QuerySet, u32) {
        (&self.slots[self.next].sets[(q / MAX) as usize], q % MAX)
    }

    /// Resolves exactly the queries written (all of them, every step) and copies them to staging.
    pub fn resolve(&self, encoder: &mut wgpu::CommandEncoder) {
        let slot = &self.slots[self.next];
        for (s, set) in slot.sets.iter().enumerate() {
            let first = s as u32 * MAX;
            let count = (self.queries - first).min(MAX);
            // MAX * 8 bytes is a multiple of QUERY_RESOLVE_BUFFER_ALIGNMENT (256).
            encoder.resolve_query_set(set, 0..count, &slot.resolve, first as u64 * wgpu::QUERY_SIZE as u64);
        }
        encoder.copy_buffer_to_buffer(&slot.resolve, 0, &slot.staging, 0, slot.resolve.size());
    }

    /// Starts mapping the reserved slot after the encoder holding `resolve` was submitted.
    pub fn submitted(&mut self, step: usize, index: wgpu::SubmissionIndex) {
        let (tx, rx) = mpsc::channel();
        let slot = &mut self.slots[self.next];
        slot.staging.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
        slot.pending = Some((step, index, rx));
        self.in_flight.push_back(self.next);
        self.next = (self.next + 1) % self.slots.len();
    }

    /// Appends every finished step, oldest first, as (step, raw ticks) to `done`, waiting for
    /// the oldest `wait_for` steps in flight (all of them with `usize::MAX`).
    pub fn collect(&mut self, gpu: &Gpu, wait_for: usize, done: &mut Vec<(usize, Vec<u64>)>) -> Result<()> {
        let poll = if wait_for == usize::MAX { wgpu::PollType::wait_indefinitely() } else { wgpu::PollType::Poll };
        gpu.device.poll(poll).map_err(device_error)?;
        let mut collected = 0;
        while let Some(&i) = self.in_flight.front() {
            let slot = &mut self.slots[i];
            let (step, _, rx) = slot.pending.as_ref().expect("in flight");
            let mapped = if collected < wait_for {
                gpu.wait_for_map(rx, "profiler timestamps")?
            } else {
                let Ok(mapped) = rx.try_recv() else { break };
                mapped
            };
            collected += 1;
            mapped.map_err(device_error)?;
            let step = *step;
            let ticks = {
                let view = slot.staging.get_mapped_range(..).map_err(device_error)?;
                // The mapped range need not be 8-byte aligned on the host.
                bytemuck::pod_collect_to_vec::<u8, u64>(&view)
            };
            slot.staging.unmap();
            slot.pending = None;
            self.in_flight.pop_front();
            done.push((step, ticks));
        }
        Ok(())
    }
}
