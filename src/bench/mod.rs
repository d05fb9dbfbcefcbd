//! Benchmarks: the adapter's measured peak (FMA throughput, copy bandwidth) and kernel
//! throughput at the shapes kiln trains with. Speed is measured here, never asserted in tests.

mod kernels;
mod peak;
pub mod steps;

pub use kernels::{bench_kernels, dcgan_layers, ConvLayer, KernelRow, Suite, MATMUL_SIZES};
pub use peak::{measure_peak, Peak};

use crate::gpu::{Dispatch, Gpu};
use crate::Result;
use std::time::Instant;

/// Seconds per run of `dispatches` (one submit each), the median of `repeats` runs after one
/// warm-up run that also absorbs pipeline compilation.
pub fn time_dispatches(gpu: &Gpu, dispatches: &[Dispatch], repeats: usize) -> Result<f64> {
    gpu.run(dispatches)?;
    let mut times: Vec<f64> = (0..repeats.max(1))
        .map(|_| {
            let start = Instant::now();
            gpu.run(dispatches).map(|_| start.elapsed().as_secs_f64())
        })
        .collect::<Result<_>>()?;
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// Runs `make(scale)` with a growing scale until one run takes at least `min_seconds`, so a
/// benchmark is long enough to time on a laptop GPU and on an H100 alike. Returns the
/// dispatches' total cost and seconds per run.
pub fn time_scaled(
    gpu: &Gpu,
    min_seconds: f64,
    mut make: impl FnMut(u32) -> Result<Vec<Dispatch>>,
) -> Result<(crate::gpu::Cost, f64)> {
    let mut scale = 1u32;
    loop {
        let dispatches = make(scale)?;
        let seconds = time_dispatches(gpu, &dispatches, 3)?;
        if seconds >= min_seconds || scale >= 1 << 16 {
            let cost = dispatches.iter().fold(crate::gpu::Cost::default(), |a, d| crate::gpu::Cost {
                flops: a.flops + d.cost.flops,
                bytes: a.bytes + d.cost.bytes,
            });
            return Ok((cost, seconds));
        }
        let factor = (min_seconds / seconds.max(1e-6)).clamp(2.0, 64.0);
        scale = scale.saturating_mul(factor.ceil() as u32);
    }
}
