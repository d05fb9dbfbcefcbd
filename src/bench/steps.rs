//! Whole training steps timed the way `kiln train` runs them (train::run::run_on): each step
//! shuffles at an epoch's start, `prepare`s its batch and random streams, and is submitted
//! without waiting, so the GPU works through a queue of steps while the CPU records the next.
//! Beside that steady-state rate, the latency of one step submitted alone and waited for
//! (what `bench steps` used to report) shows what a wait per step costs on this adapter.

use crate::gpu::Gpu;
use crate::train::data::GpuData;
use crate::train::run::Trainer;
use crate::{Error, Result};
use std::time::Instant;

/// Steps run before timing: the first absorbs pipeline compilation and first-use costs.
pub const WARM_UP_STEPS: u64 = 2;

#[derive(Clone, Debug)]
pub struct StepTiming {
    pub batch: usize,
    /// Steps timed in each mode.
    pub steps: u64,
    /// Seconds per step, steps submitted back to back as training submits them (the wait
    /// after the last one included): training's steady state.
    pub pipelined: f64,
    /// Median seconds from submitting one step to its completion, a wait after every step.
    pub alone: f64,
    /// Mean flops of one step (dense, from the dispatches' costs).
    pub flops: f64,
    /// Dispatches of one step (the largest, where steps differ).
    pub dispatches: usize,
}

impl StepTiming {
    pub fn images_per_second(&self) -> f64 {
        self.batch as f64 / self.pipelined
    }

    pub fn json(&self, model: &str) -> serde_json::Value {
        serde_json::json!({
            "model": model, "batch": self.batch, "timed_steps": self.steps,
            "step_ms": self.pipelined * 1e3, "images_per_s": self.images_per_second(),
            "alone_step_ms": self.alone * 1e3, "alone_images_per_s": self.batch as f64 / self.alone,
            "gflops": self.flops / self.pipelined / 1e9, "dispatches": self.dispatches,
        })
    }
}

/// Times `steps` training steps of `trainer` on `data` (seed 0's shuffles) after
/// [`WARM_UP_STEPS`], back to back and then one at a time. The trainer's parameters and
/// optimizer state advance: these are real training steps.
pub fn time_training_steps(gpu: &Gpu, trainer: &dyn Trainer, data: &GpuData, steps: u64) -> Result<StepTiming> {
    let batch = trainer.batch();
    let per_epoch = (data.len / batch.max(1)) as u64;
    if per_epoch == 0 {
        return Err(Error::Invalid(format!("bench steps: batch size {batch} is larger than the dataset ({} images)", data.len)));
    }
    let steps = steps.max(1);
    let mut next = 0u64;
    let mut flops = 0u64;
    let mut dispatches = 0;
    // One training step as run_on submits it; Ok(its submission).
    let mut submit = |count_cost: bool| -> Result<wgpu::SubmissionIndex> {
        let step = next;
        next += 1;
        let (epoch, index) = (step / per_epoch, (step % per_epoch) as usize);
        if index == 0 {
            data.shuffle(gpu, 0, epoch)?;
        }
        trainer.prepare(gpu, data, step, index)?;
        let lists = trainer.step_dispatches_at(step);
        if count_cost {
            flops += lists.iter().flat_map(|l| l.iter()).map(|d| d.cost.flops).sum::<u64>();
            dispatches = dispatches.max(lists.iter().map(|l| l.len()).sum());
        }
        gpu.submit("training step", &lists, None)
    };
    for _ in 0..WARM_UP_STEPS {
        submit(false)?;
    }
    gpu.wait(None, "bench steps warm-up")?;

    let start = Instant::now();
    let mut last = None;
    for _ in 0..steps {
        last = Some(submit(true)?);
    }
    gpu.wait(last, "bench steps")?;
    let pipelined = start.elapsed().as_secs_f64() / steps as f64;

    let mut alone: Vec<f64> = (0..steps)
        .map(|_| {
            let start = Instant::now();
            let index = submit(false)?;
            gpu.wait(Some(index), "bench steps").map(|_| start.elapsed().as_secs_f64())
        })
        .collect::<Result<_>>()?;
    alone.sort_by(f64::total_cmp);
    Ok(StepTiming { batch, steps, pipelined, alone: alone[alone.len() / 2], flops: flops as f64 / steps as f64, dispatches })
}
