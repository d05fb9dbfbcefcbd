//! The wgpu sequence (instance → adapter → device → pipeline → bind group → submit → read back)
//! made reusable, and no more.

mod adapter;
mod buffer;
mod dispatch;
mod readback;
mod shaders;
mod tune;

pub use adapter::{describe_adapters, skipped_gpus_warning, AdapterReport, GpuOptions, Kernels};
pub use buffer::Buffer;
pub use readback::Readback;
pub use dispatch::{workgroups_1d, Cost, Dispatch, KernelId, MAX_WORKGROUPS_PER_DIM};
pub use shaders::{check_capabilities, validate_wgsl, ShaderSet, SHADER_FILES};
pub use tune::TuneCache;

use crate::{Error, Result};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

/// Shaders created without wgpu's runtime bounds checks (see [`Gpu::trusts`]): those a test
/// proves index in range, through accessors that check every index under an override.
pub const TRUSTED_SHADERS: &[&str] = &["gemm"];

/// What trusted modules do without (wgpu-hal 30): the clamp of every dynamic index into a
/// fixed-size array or vector (Vulkan, Metal, DX12), of every storage access too on Metal and
/// on Vulkan without robustBufferAccess2, and the counter added to every loop against infinite
/// ones. GL adds neither, trusted or not.
const TRUSTED_CHECKS: wgpu::ShaderRuntimeChecks =
    wgpu::ShaderRuntimeChecks { bounds_checks: false, force_loop_bounding: false, ..wgpu::ShaderRuntimeChecks::checked() };

/// An open device with its queue and the caches every kernel launch goes through.
pub struct Gpu {
    pub adapter: wgpu::Adapter,
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub limits: wgpu::Limits,
    pub features: wgpu::Features,
    /// The GEMM kernels `Auto` variants resolve to.
    pub kernels: Kernels,
    /// Kernel configurations measured on this adapter, where autotuning is on.
    pub tune: Option<Mutex<TuneCache>>,
    shaders: ShaderSet,
    modules: Mutex<HashMap<&'static str, Arc<wgpu::ShaderModule>>>,
    pipelines: Mutex<HashMap<KernelId, Arc<wgpu::ComputePipeline>>>,
    /// A 4-byte buffer bound where a kernel's optional input (a bias, say) is absent.
    pub dummy: Buffer,
    /// A read-write buffer bound where a kernel's optional output is unused (gemm.wgsl's index
    /// violations outside the proof test); never written. `dummy` cannot stand in: it is bound
    /// read-only in the same dispatches, and a buffer may not be both in one.
    pub dummy_rw: Buffer,
    /// Whether [`TRUSTED_SHADERS`] are created without wgpu's runtime checks (all but
    /// `KILN_CHECKED_SHADERS=1`).
    pub trusted_shaders: bool,
    lost: Arc<Mutex<Option<String>>>,
    /// Objects created so far: the executor's promise of no per-step allocation is tested on these.
    pub created: Created,
}

/// Counts of GPU objects created through this `Gpu`.
#[derive(Default, Debug)]
pub struct Created {
    pub buffers: AtomicU64,
    pub bind_groups: AtomicU64,
    pub pipelines: AtomicU64,
}

impl Created {
    /// (buffers, bind groups, pipelines) created so far.
    pub fn snapshot(&self) -> (u64, u64, u64) {
        (self.buffers.load(Relaxed), self.bind_groups.load(Relaxed), self.pipelines.load(Relaxed))
    }
}

impl Gpu {
    /// Opens the adapter chosen by `options` (see [`GpuOptions`]) with its own limits (or those
    /// `options` asks for) and the optional features kiln can use (timestamps, subgroups, f16)
    /// where offered.
    pub fn new(options: &GpuOptions) -> Result<Gpu> {
        let (adapter, _) = adapter::choose(options)?;
        let info = adapter.get_info();
        let wanted = wgpu::Features::TIMESTAMP_QUERY
            | wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES
            | wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS
            | wgpu::Features::SUBGROUP
            | wgpu::Features::SHADER_F16;
        let mut features = adapter.features() & wanted;
        if options.without_timestamps {
            features.remove(
                wgpu::Features::TIMESTAMP_QUERY
                    | wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES
                    | wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS,
            );
        }
        if options.without_subgroups {
            features.remove(wgpu::Features::SUBGROUP);
        }
        let limits = options.limits_for(&adapter.limits())?;
        let kernels = options.kernels()?;
        let tune = options.autotune(info.device_type)?.then(|| {
            // Choices hold for this adapter, driver and build of kiln's kernels.
            let section = format!("{} | {} | {:?} | kiln {}", info.name, info.driver_info, info.backend, env!("CARGO_PKG_VERSION"));
            Mutex::new(TuneCache::open(options.autotune_cache(), section))
        });
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("kiln"),
            required_features: features,
            required_limits: limits.clone(),
            ..Default::default()
        }))
        .map_err(|e| Error::NoAdapter(format!("{} ({:?}): cannot open device: {e}", info.name, info.backend)))?;

        let lost = Arc::new(Mutex::new(None));
        let lost_flag = lost.clone();
        device.set_device_lost_callback(move |reason, message| {
            *lost_flag.lock().unwrap() = Some(format!("device lost ({reason:?}): {message}"));
        });
        // Errors outside our error scopes would otherwise abort the process from wgpu's default
        // handler; log them instead, the scoped ones carry the kernel name to the caller.
        device.on_uncaptured_error(Arc::new(|e| log::error!("uncaptured wgpu error: {e}")));

        let dummy_buffer = |label: &str| Buffer {
            raw: device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: 16,
                usage: wgpu::BufferUsages::STORAGE,
                mapped_at_creation: false,
            }),
            offset: 0,
            len: 4,
            label: label.into(),
        };
        let (dummy, dummy_rw) = (dummy_buffer("kiln.dummy"), dummy_buffer("kiln.dummy_rw"));
        let trusted_shaders = !matches!(std::env::var("KILN_CHECKED_SHADERS").as_deref(), Ok("1" | "on" | "yes"));
        Ok(Gpu {
            adapter,
            device,
            queue,
            info,
            limits,
            features,
            kernels,
            tune,
            shaders: ShaderSet::new(options.shaders.clone())?,
            modules: Mutex::new(HashMap::new()),
            pipelines: Mutex::new(HashMap::new()),
            dummy,
            dummy_rw,
            trusted_shaders,
            lost,
            created: Created::default(),
        })
    }

    /// A one-line description: `name (backend, device type, driver)`.
    pub fn describe(&self) -> String {
        adapter::describe_info(&self.info)
    }

    pub fn has(&self, feature: wgpu::Features) -> bool {
        self.features.contains(feature)
    }

    /// The compute pipeline for `kernel`, compiled once and cached. The layout is derived from
    /// the entry point, so a bind group carries exactly the bindings that entry uses.
    pub fn pipeline(&self, kernel: KernelId) -> Result<Arc<wgpu::ComputePipeline>> {
        if let Some(p) = self.pipelines.lock().unwrap().get(&kernel) {
            return Ok(p.clone());
        }
        let module = self.module(kernel.shader)?;
        let constants: Vec<(&str, f64)> = kernel.constants.iter().map(|&(name, value)| (name, f64::from(value))).collect();
        let pipeline = self.scoped(&kernel.to_string(), || {
            self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(&kernel.to_string()),
                layout: None,
                module: &module,
                entry_point: Some(kernel.entry),
                compilation_options: wgpu::PipelineCompilationOptions { constants: &constants, ..Default::default() },
                cache: None,
            })
        })?;
        self.created.pipelines.fetch_add(1, Relaxed);
        let pipeline = Arc::new(pipeline);
        self.pipelines.lock().unwrap().insert(kernel, pipeline.clone());
        Ok(pipeline)
    }

    fn module(&self, shader: &'static str) -> Result<Arc<wgpu::ShaderModule>> {
        if let Some(m) = self.modules.lock().unwrap().get(shader) {
            return Ok(m.clone());
        }
        let downlevel = self.adapter.get_downlevel_capabilities().flags;
        let source = self.shaders.validated_source(shader, self.features, downlevel)?;
        let trusted = self.trusts(shader, &source);
        let descriptor = wgpu::ShaderModuleDescriptor { label: Some(shader), source: wgpu::ShaderSource::Wgsl(source.into()) };
        let module = self.scoped(shader, || {
            if trusted {
                // SAFETY: tests/kernels/trusted.rs (`every_gemm_entry_indexes_in_range_in_every_tile`)
                // runs every entry of each trusted shader in every constant set kiln creates,
                // with its CHECK_INDICES accessors on, over edge shapes of every launcher, and
                // finds no index out of range, so these modules do without wgpu's bounds
                // checks; their loops end (k < 2^31, launchers check), so without loop
                // counters. Divisions keep their guards: no test proves divisors nonzero.
                unsafe { self.device.create_shader_module_trusted(descriptor, TRUSTED_CHECKS) }
            } else {
                self.device.create_shader_module(descriptor)
            }
        })?;
        let module = Arc::new(module);
        self.modules.lock().unwrap().insert(shader, module.clone());
        Ok(module)
    }

    /// Whether `shader`'s module is created without wgpu's runtime checks: one of
    /// [`TRUSTED_SHADERS`], from the source the proof test ran (the embedded copy, not an edited
    /// one from a shader folder), unless `KILN_CHECKED_SHADERS=1`.
    pub fn trusts(&self, shader: &str, source: &str) -> bool {
        self.trusted_shaders && TRUSTED_SHADERS.contains(&shader) && SHADER_FILES.iter().any(|&(name, text)| name == shader && text == source)
    }

    /// Runs `f` inside validation and out-of-memory error scopes and turns whatever they
    /// caught into an [`Error::Device`] naming `what`.
    pub fn scoped<T>(&self, what: &str, f: impl FnOnce() -> T) -> Result<T> {
        self.check_lost(what)?;
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let value = f();
        let errors = [pollster::block_on(validation.pop()), pollster::block_on(oom.pop())];
        if let Some(e) = errors.into_iter().flatten().next() {
            return Err(Error::Device { kernel: what.to_string(), message: e.to_string() });
        }
        self.check_lost(what)?;
        Ok(value)
    }

    fn check_lost(&self, what: &str) -> Result<()> {
        match self.lost.lock().unwrap().clone() {
            Some(message) => Err(Error::Device { kernel: what.to_string(), message }),
            None => Ok(()),
        }
    }

    /// Records `dispatches` into one compute pass, submits once and waits for the GPU.
    pub fn run(&self, dispatches: &[Dispatch]) -> Result<()> {
        let what = match dispatches {
            [one] => one.name(),
            _ => format!("{} dispatches", dispatches.len()),
        };
        let index = self.submit(&what, &[dispatches], None)?;
        self.wait(Some(index), &what)
    }

    /// Records every list of `dispatches`, in order, into one compute pass and submits once
    /// (a whole training step: programs and optimizer updates). With `readback`, the
    /// submission also copies the ring's sources into its next free slot, tagged. Does not wait.
    pub fn submit(&self, what: &str, dispatches: &[&[Dispatch]], readback: Option<(&mut Readback, u64)>) -> Result<wgpu::SubmissionIndex> {
        let (index, copied) = self.scoped(what, || {
            let mut encoder = self.device.create_command_encoder(&Default::default());
            {
                let mut pass = encoder.begin_compute_pass(&Default::default());
                for d in dispatches.iter().flat_map(|list| list.iter()) {
                    d.record(&mut pass);
                }
            }
            let copied = readback.and_then(|(ring, tag)| ring.copy(&mut encoder).then_some((ring, tag)));
            (self.queue.submit([encoder.finish()]), copied)
        })?;
        if let Some((ring, tag)) = copied {
            ring.mapped(tag);
        }
        Ok(index)
    }

    /// Blocks until the submission (or all work) has finished.
    pub fn wait(&self, index: Option<wgpu::SubmissionIndex>, what: &str) -> Result<()> {
        self.device
            .poll(wgpu::PollType::Wait { submission_index: index, timeout: None })
            .map_err(|e| Error::Device { kernel: what.to_string(), message: e.to_string() })?;
        self.check_lost(what)
    }

    /// Blocks until a `map_async` callback has delivered its result to `rx`; call it after
    /// waiting for the work the map follows. That wait alone is not enough: when another thread
    /// polls the same device, its poll may have taken the callback and not run it yet.
    pub fn wait_for_map<T>(&self, rx: &std::sync::mpsc::Receiver<T>, what: &str) -> Result<T> {
        use std::sync::mpsc::RecvTimeoutError;
        let lost = |message: &str| Error::Device { kernel: what.to_string(), message: message.into() };
        for _ in 0..600 {
            match rx.recv_timeout(std::time::Duration::from_millis(100)) {
                Ok(result) => return Ok(result),
                Err(RecvTimeoutError::Disconnected) => return Err(lost("the map callback was dropped")),
                Err(RecvTimeoutError::Timeout) => self.wait(None, what)?,
            }
        }
        Err(lost("a buffer map did not complete within 60 s of its work finishing"))
    }
}
