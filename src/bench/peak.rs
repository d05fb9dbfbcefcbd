//! shaders/peak.wgsl: the adapter's best-case FMA throughput and copy bandwidth.

use super::time_scaled;
use crate::gpu::{workgroups_1d, Cost, Gpu, KernelId};
use crate::Result;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    iterations: u32,
}

/// What the adapter reaches at best, as the profiler's and benchmarks' 100%.
#[derive(Clone, Copy, Debug)]
pub struct Peak {
    pub fma_gflops: f64,
    pub copy_gbps: f64,
}

const THREADS: usize = 1 << 16;
const FLOPS_PER_ITERATION: u64 = 256;

pub fn measure_peak(gpu: &Gpu) -> Result<Peak> {
    let out = gpu.zeros("peak.out", THREADS * 4)?;
    let (cost, seconds) = time_scaled(gpu, 0.05, |scale| {
        let iterations = 64 * scale;
        let params = Params { n: THREADS as u32, iterations };
        let cost = Cost { flops: THREADS as u64 * iterations as u64 * FLOPS_PER_ITERATION, bytes: THREADS as u64 * 16 };
        Ok(vec![gpu.dispatch(KernelId::new("peak", "fma_peak"), "", &params, &[(2, &out)], workgroups_1d(THREADS, 256), cost)?])
    })?;
    let fma_gflops = cost.flops as f64 / seconds / 1e9;

    // 64 MiB each way (or the binding limit): large enough to leave every cache.
    let vec4s = ((64usize << 20).min(gpu.max_binding_bytes() as usize) / 16).max(1);
    let (src, dst) = (gpu.zeros("peak.src", vec4s * 4)?, gpu.zeros("peak.dst", vec4s * 4)?);
    let (cost, seconds) = time_scaled(gpu, 0.05, |scale| {
        let params = Params { n: vec4s as u32, iterations: 1 };
        let cost = Cost { flops: vec4s as u64 * 4, bytes: vec4s as u64 * 32 };
        (0..scale)
            .map(|_| gpu.dispatch(KernelId::new("peak", "copy_peak"), "", &params, &[(1, &src), (2, &dst)], workgroups_1d(vec4s, 256), cost))
            .collect()
    })?;
    Ok(Peak { fma_gflops, copy_gbps: cost.bytes as f64 / seconds / 1e9 })
}
