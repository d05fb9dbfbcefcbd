//! Reading small results (losses) back without stalling the GPU: each request copies into the
//! next staging buffer of a ring and maps it asynchronously; results are collected when the
//! GPU has finished, a step or two later, while the next steps are already queued.

use super::{Buffer, Gpu};
use crate::{Error, Result};
use std::collections::VecDeque;
use std::sync::mpsc;

struct Slot {
    staging: wgpu::Buffer,
    /// Some(tag, receiver) while a copy is in flight.
    pending: Option<(u64, mpsc::Receiver<std::result::Result<(), wgpu::BufferAsyncError>>)>,
}

/// A ring of staging buffers for a fixed set of source buffers (read together).
pub struct Readback {
    sources: Vec<Buffer>,
    slots: Vec<Slot>,
    next: usize,
    in_flight: VecDeque<usize>,
}

impl Readback {
    pub fn new(gpu: &Gpu, sources: Vec<Buffer>, ring: usize) -> Result<Readback> {
        let bytes: u64 = sources.iter().map(|b| b.bytes()).sum::<u64>().max(4);
        let slots = (0..ring.max(1))
            .map(|i| {
                gpu.scoped("readback ring", || Slot {
                    staging: gpu.device.create_buffer(&wgpu::BufferDescriptor {
                        label: Some(&format!("readback.{i}")),
                        size: bytes,
                        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                        mapped_at_creation: false,
                    }),
                    pending: None,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Readback { sources, slots, next: 0, in_flight: VecDeque::new() })
    }

    /// Whether a slot is free for [`copy`](Self::copy); when none is, skip this request (a
    /// logging step) rather than wait.
    pub fn has_free_slot(&self) -> bool {
        self.slots[self.next].pending.is_none()
    }

    /// Records copies of the sources into the next slot; call [`mapped`](Self::mapped) after
    /// the encoder is submitted. Returns false (and records nothing) when the ring is full.
    pub fn copy(&mut self, encoder: &mut wgpu::CommandEncoder) -> bool {
        if !self.has_free_slot() {
            return false;
        }
        let slot = &self.slots[self.next];
        let mut offset = 0;
        for b in &self.sources {
            encoder.copy_buffer_to_buffer(&b.raw, b.offset, &slot.staging, offset, b.bytes());
            offset += b.bytes();
        }
        true
    }

    /// Starts mapping the slot filled by the last [`copy`](Self::copy), tagged (with a step number).
    pub fn mapped(&mut self, tag: u64) {
        let (tx, rx) = mpsc::channel();
        let slot = &mut self.slots[self.next];
        slot.staging.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
        slot.pending = Some((tag, rx));
        self.in_flight.push_back(self.next);
        self.next = (self.next + 1) % self.slots.len();
    }

    /// Every finished request, oldest first, as (tag, one Vec<f32> per source). With `wait`,
    /// blocks until all in-flight requests are done (at the end of a run).
    pub fn collect(&mut self, gpu: &Gpu, wait: bool) -> Result<Vec<(u64, Vec<Vec<f32>>)>> {
        let poll = if wait { wgpu::PollType::wait_indefinitely() } else { wgpu::PollType::Poll };
        gpu.device.poll(poll).map_err(|e| Error::Device { kernel: "readback".into(), message: e.to_string() })?;
        let mut done = Vec::new();
        while let Some(&i) = self.in_flight.front() {
            let slot = &mut self.slots[i];
            let (tag, rx) = slot.pending.as_ref().expect("in flight");
            // Waiting, every request must come back: none may be dropped from the log.
            let received = if wait { Some(gpu.wait_for_map(rx, "readback")?) } else { rx.try_recv().ok() };
            match received {
                Some(result) => {
                    result.map_err(|e| Error::Device { kernel: "readback".into(), message: e.to_string() })?;
                    let tag = *tag;
                    let values = {
                        let view = slot
                            .staging
                            .get_mapped_range(..)
                            .map_err(|e| Error::Device { kernel: "readback".into(), message: e.to_string() })?;
                        let all: &[f32] = bytemuck::cast_slice(&view);
                        let mut start = 0;
                        self.sources
                            .iter()
                            .map(|b| {
                                let v = all[start..start + b.len].to_vec();
                                start += b.len;
                                v
                            })
                            .collect()
                    };
                    slot.staging.unmap();
                    slot.pending = None;
                    self.in_flight.pop_front();
                    done.push((tag, values));
                }
                None => break,
            }
        }
        Ok(done)
    }
}
