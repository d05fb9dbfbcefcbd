//! The shader-level profiler: GPU timestamps around every dispatch of a step, grouped per kernel
//! (and per layer) into a [`Profile`] with achieved GFLOP/s and GB/s against the adapter's
//! measured peak, plus a Chrome trace. docs/PROFILING.md says how to read it.
//!
//! Written on raw wgpu rather than with the `wgpu-profiler` crate: kiln needs each timestamp
//! tied to its `Dispatch` (kernel, layer, cost), a forced pass-per-dispatch mode, and a
//! wall-clock fallback, none of which that crate's label-tree scopes give for free.

mod queries;
mod report;
mod trace;

pub use report::{KernelRow, Profile, TraceEvent};

use crate::bench::Peak;
use crate::gpu::{Cost, Dispatch, Gpu, KernelId};
use crate::graph::Program;
use crate::{Error, Result};
use queries::QueryRing;
use std::time::Instant;

/// How dispatches are timed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timing {
    /// Timestamps written between the dispatches of the step's one compute pass
    /// (`TIMESTAMP_QUERY_INSIDE_PASSES`): the step is recorded as the executor records it.
    InsidePasses,
    /// One compute pass per dispatch, timed by the pass's `timestamp_writes` (`TIMESTAMP_QUERY`
    /// alone suffices). Pass boundaries may add barriers, so the step differs slightly from
    /// the one-pass step that training records.
    PassPerDispatch,
    /// No timestamps: wall-clock time of each submit, waited for; no per-kernel times.
    WallClock,
}

impl Timing {
    /// The most precise timing the device was opened with.
    pub fn best(gpu: &Gpu) -> Timing {
        if gpu.has(wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES) {
            Timing::InsidePasses
        } else if gpu.has(wgpu::Features::TIMESTAMP_QUERY) {
            Timing::PassPerDispatch
        } else {
            Timing::WallClock
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Timing::InsidePasses => "GPU timestamps between dispatches of one pass",
            Timing::PassPerDispatch => "GPU timestamps, one compute pass per dispatch",
            Timing::WallClock => "NO GPU TIMESTAMPS (device without timestamp queries): wall-clock per submit, step time only, no per-kernel times",
        }
    }

    fn check(self, gpu: &Gpu) -> Result<()> {
        let needs = match self {
            Timing::InsidePasses => wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES,
            Timing::PassPerDispatch => wgpu::Features::TIMESTAMP_QUERY,
            Timing::WallClock => wgpu::Features::empty(),
        };
        if !gpu.has(needs) {
            return Err(Error::Limit(format!(
                "profiler: {self:?} timing needs {needs:?}, which {} lacks",
                gpu.describe()
            )));
        }
        Ok(())
    }
}

/// What the profiler keeps of a dispatch.
#[derive(Clone, Debug)]
pub(crate) struct Site {
    pub kernel: KernelId,
    pub label: String,
    pub cost: Cost,
}

/// Records and submits profiled steps; each step's timestamps are collected a few steps later.
pub struct Profiler {
    timing: Timing,
    sites: Vec<Site>,
    ring: Option<QueryRing>,
    steps: usize,
    started: Option<Instant>,
    ticks: Vec<(usize, Vec<u64>)>,
    wall_ms: Vec<f64>,
}

/// Slots in the timestamp ring: step k's queries may still be in flight while k+1 and k+2 record.
const RING: usize = 3;

impl Profiler {
    /// A profiler for steps made of `dispatches` (the same list, or one with the same kernels in
    /// the same order, every step).
    pub fn new(gpu: &Gpu, timing: Timing, dispatches: &[Dispatch]) -> Result<Profiler> {
        timing.check(gpu)?;
        if dispatches.is_empty() {
            return Err(Error::Invalid("profiler: the step has no dispatches".into()));
        }
        let ring = match timing {
            Timing::WallClock => None,
            _ => Some(QueryRing::new(gpu, 2 * dispatches.len() as u32, RING)?),
        };
        let sites =
            dispatches.iter().map(|d| Site { kernel: d.kernel, label: d.label.clone(), cost: d.cost }).collect();
        Ok(Profiler { timing, sites, ring, steps: 0, started: None, ticks: Vec::new(), wall_ms: Vec::new() })
    }

    pub fn timing(&self) -> Timing {
        self.timing
    }

    /// Records `dispatches` with timestamps and submits them as one step. Waits only in the
    /// wall-clock fallback, or when all ring slots are still in flight.
    pub fn step(&mut self, gpu: &Gpu, dispatches: &[Dispatch]) -> Result<()> {
        if dispatches.len() != self.sites.len() || dispatches.iter().zip(&self.sites).any(|(d, s)| d.kernel != s.kernel)
        {
            return Err(Error::Invalid(format!(
                "profiler: a step of {} dispatches differs from the {} it was created for",
                dispatches.len(),
                self.sites.len()
            )));
        }
        self.started.get_or_insert_with(Instant::now);
        let step = self.steps;
        self.steps += 1;
        let timing = self.timing;
        let Some(ring) = self.ring.as_mut() else {
            let start = Instant::now();
            let index = submit_plain(gpu, dispatches)?;
            gpu.wait(Some(index), "profiled step")?;
            self.wall_ms.push(start.elapsed().as_secs_f64() * 1e3);
            return Ok(());
        };
        ring.reserve(gpu, &mut self.ticks)?;
        let index = gpu.scoped("profiled step", || {
            let mut encoder = gpu.device.create_command_encoder(&Default::default());
            record(timing, ring, dispatches, &mut encoder);
            ring.resolve(&mut encoder);
            gpu.queue.submit([encoder.finish()])
        })?;
        ring.submitted(step, index);
        Ok(())
    }

    /// Waits for the steps in flight and builds the report.
    pub fn finish(mut self, gpu: &Gpu, peak: Option<Peak>) -> Result<Profile> {
        if let Some(ring) = self.ring.as_mut() {
            ring.collect(gpu, usize::MAX, &mut self.ticks)?;
            if self.ticks.len() != self.steps {
                return Err(Error::Device {
                    kernel: "profiler timestamps".into(),
                    message: format!("timestamps came back for {} of {} steps", self.ticks.len(), self.steps),
                });
            }
        }
        let Some(started) = self.started else {
            return Err(Error::Invalid("profiler: no step was profiled".into()));
        };
        let wall_ms = started.elapsed().as_secs_f64() * 1e3;
        self.ticks.sort_by_key(|(step, _)| *step);
        let period_ns = gpu.queue.get_timestamp_period() as f64;
        // Ticks are subtracted as integers first: absolute ticks can be near 2^60, where an f64
        // would round away a short dispatch.
        let base = self.ticks.iter().flat_map(|(_, t)| t.iter().copied()).min().unwrap_or(0);
        let ns = |t: u64| (t - base) as f64 * period_ns;
        let steps: Vec<Vec<(f64, f64)>> =
            self.ticks.iter().map(|(_, t)| t.chunks(2).map(|p| (ns(p[0]), ns(p[1]))).collect()).collect();
        let step_ms = match self.timing {
            Timing::WallClock => self.wall_ms.iter().sum::<f64>() / self.wall_ms.len() as f64,
            _ => wall_ms / self.steps as f64,
        };
        Ok(report::build(gpu.describe(), self.timing, &self.sites, self.steps, step_ms, &steps, &self.wall_ms, peak))
    }
}

fn record(timing: Timing, ring: &QueryRing, dispatches: &[Dispatch], encoder: &mut wgpu::CommandEncoder) {
    match timing {
        Timing::InsidePasses => {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            for (i, d) in dispatches.iter().enumerate() {
                let (set, q) = ring.query(2 * i as u32);
                pass.write_timestamp(set, q);
                d.record(&mut pass);
                let (set, q) = ring.query(2 * i as u32 + 1);
                pass.write_timestamp(set, q);
            }
        }
        Timing::PassPerDispatch => {
            for (i, d) in dispatches.iter().enumerate() {
                // Queries come in pairs and sets hold an even count, so a pair shares one set.
                let (set, q) = ring.query(2 * i as u32);
                let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: None,
                    timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                        query_set: set,
                        beginning_of_pass_write_index: Some(q),
                        end_of_pass_write_index: Some(q + 1),
                    }),
                });
                d.record(&mut pass);
            }
        }
        Timing::WallClock => unreachable!("the wall-clock fallback records no timestamps"),
    }
}

/// The step as the executor records it: one pass, one submit, no waiting.
fn submit_plain(gpu: &Gpu, dispatches: &[Dispatch]) -> Result<wgpu::SubmissionIndex> {
    gpu.scoped("profiled step", || {
        let mut encoder = gpu.device.create_command_encoder(&Default::default());
        {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            for d in dispatches {
                d.record(&mut pass);
            }
        }
        gpu.queue.submit([encoder.finish()])
    })
}

/// Profiles `steps` steps of `dispatches` timed by `timing`, after one warm-up step and `steps`
/// unprofiled steps that give the report's baseline (the profiler's own overhead).
pub fn profile_dispatches(
    gpu: &Gpu,
    dispatches: &[Dispatch],
    steps: usize,
    peak: Option<Peak>,
    timing: Timing,
) -> Result<Profile> {
    let mut profiler = Profiler::new(gpu, timing, dispatches)?;
    let steps = steps.max(1);
    gpu.run(dispatches)?;
    let start = Instant::now();
    let mut last = None;
    for _ in 0..steps {
        last = Some(submit_plain(gpu, dispatches)?);
    }
    gpu.wait(last, "profiled step")?;
    let baseline_ms = start.elapsed().as_secs_f64() * 1e3 / steps as f64;
    for _ in 0..steps {
        profiler.step(gpu, dispatches)?;
    }
    let mut profile = profiler.finish(gpu, peak)?;
    profile.baseline_step_ms = Some(baseline_ms);
    Ok(profile)
}

/// Profiles a compiled training step with the best timing the device offers.
pub fn profile_program(gpu: &Gpu, program: &Program, steps: usize, peak: Option<Peak>) -> Result<Profile> {
    profile_dispatches(gpu, &program.dispatches, steps, peak, Timing::best(gpu))
}
