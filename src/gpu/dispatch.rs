//! A recorded kernel launch: pipeline, bind group and grid, created once and replayable.

use super::{Buffer, Gpu};
use crate::{Error, Result};
use std::sync::Arc;

/// WebGPU's guaranteed minimum, and what lavapipe and llvmpipe offer.
pub const MAX_WORKGROUPS_PER_DIM: u32 = 65_535;

/// A kernel is a shader file and an entry point in it, `matmul.blocked`, with the values of
/// the module's pipeline-overridable constants it is compiled with (tile sizes), if any:
/// `gemm.conv_forward(TX=16,TY=16,BK=8)`. Each distinct set is its own pipeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KernelId {
    pub shader: &'static str,
    pub entry: &'static str,
    pub constants: &'static [(&'static str, u32)],
}

impl KernelId {
    /// An entry point compiled with its module's default constants.
    pub const fn new(shader: &'static str, entry: &'static str) -> KernelId {
        KernelId { shader, entry, constants: &[] }
    }
}

impl std::fmt::Display for KernelId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.shader, self.entry)?;
        if !self.constants.is_empty() {
            let set: Vec<String> = self.constants.iter().map(|(name, value)| format!("{name}={value}")).collect();
            write!(f, "({})", set.join(","))?;
        }
        Ok(())
    }
}

/// Work done by one dispatch, for the profiler's GFLOP/s and GB/s columns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cost {
    pub flops: u64,
    pub bytes: u64,
}

impl Cost {
    /// An elementwise op over `n` elements reading `reads` and writing `writes` f32 arrays.
    pub fn elementwise(n: usize, flops_per_element: u64, reads: u64, writes: u64) -> Cost {
        Cost { flops: n as u64 * flops_per_element, bytes: n as u64 * 4 * (reads + writes) }
    }
}

#[derive(Clone)]
pub struct Dispatch {
    pub kernel: KernelId,
    /// What the dispatch is for (a layer name), shown in errors and profiles.
    pub label: String,
    pub cost: Cost,
    pub workgroups: [u32; 3],
    pipeline: Arc<wgpu::ComputePipeline>,
    bind_group: wgpu::BindGroup,
    /// Kept alive with the bind group; also lets the executor rewrite parameters in place.
    pub params: wgpu::Buffer,
}

impl Dispatch {
    pub fn name(&self) -> String {
        if self.label.is_empty() {
            self.kernel.to_string()
        } else {
            format!("{} [{}]", self.kernel, self.label)
        }
    }

    pub fn record(&self, pass: &mut wgpu::ComputePass<'_>) {
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, &self.bind_group, &[]);
        let [x, y, z] = self.workgroups;
        if x > 0 && y > 0 && z > 0 {
            pass.dispatch_workgroups(x, y, z);
        }
    }
}

/// A grid of at least `threads / workgroup_size` workgroups that fits the per-dimension limit,
/// folded into y when it must. Shaders recover the flat index as
/// `(wid.y * nwg.x + wid.x) * WORKGROUP_SIZE + lid.x` and return when it is past the end.
pub fn workgroups_1d(threads: usize, workgroup_size: u32) -> [u32; 3] {
    let groups = threads.div_ceil(workgroup_size as usize).max(1);
    let max = MAX_WORKGROUPS_PER_DIM as usize;
    if groups <= max {
        return [groups as u32, 1, 1];
    }
    let y = groups.div_ceil(max);
    [groups.div_ceil(y) as u32, y as u32, 1]
}

impl Gpu {
    /// Builds a dispatch of `kernel`: `params` (a Pod struct) at binding 0 as a uniform,
    /// `buffers` at the binding numbers given. The bindings must be exactly those the entry
    /// point uses; a mismatch is reported as an error naming the kernel.
    pub fn dispatch<P: bytemuck::Pod>(
        &self,
        kernel: KernelId,
        label: &str,
        params: &P,
        buffers: &[(u32, &Buffer)],
        workgroups: [u32; 3],
        cost: Cost,
    ) -> Result<Dispatch> {
        self.dispatch_raw(kernel, label, bytemuck::bytes_of(params), buffers, workgroups, cost)
    }

    pub fn dispatch_raw(
        &self,
        kernel: KernelId,
        label: &str,
        params: &[u8],
        buffers: &[(u32, &Buffer)],
        workgroups: [u32; 3],
        cost: Cost,
    ) -> Result<Dispatch> {
        if let Some(d) = workgroups.iter().find(|&&d| d > self.limits.max_compute_workgroups_per_dimension) {
            return Err(Error::Limit(format!(
                "{kernel} [{label}]: {d} workgroups in one dimension, over the adapter's {}",
                self.limits.max_compute_workgroups_per_dimension
            )));
        }
        let pipeline = self.pipeline(kernel)?;
        let name = format!("{kernel} [{label}]");
        self.created.bind_groups.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.created.buffers.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (params, bind_group) = self.scoped(&name, || {
            // Uniform buffers are padded to 16 bytes, the strictest alignment WGSL may ask for.
            let size = (params.len() as u64).max(16).next_multiple_of(16);
            let uniform = self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(&name),
                size,
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            let mut padded = params.to_vec();
            padded.resize(size as usize, 0);
            self.queue.write_buffer(&uniform, 0, &padded);
            let mut entries = vec![wgpu::BindGroupEntry { binding: 0, resource: uniform.as_entire_binding() }];
            entries.extend(
                buffers
                    .iter()
                    .map(|(binding, b)| wgpu::BindGroupEntry { binding: *binding, resource: b.binding() }),
            );
            let bind_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some(&name),
                layout: &pipeline.get_bind_group_layout(0),
                entries: &entries,
            });
            (uniform, bind_group)
        })?;
        Ok(Dispatch { kernel, label: label.to_string(), cost, workgroups, pipeline, bind_group, params })
    }
}
