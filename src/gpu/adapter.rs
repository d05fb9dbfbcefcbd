//! Choosing an adapter: `--backend`, `--adapter`, and wgpu's own `WGPU_BACKEND` /
//! `WGPU_ADAPTER_NAME`, then the most capable device that is left.

use crate::{Error, Result};

/// How to pick the device. Empty fields fall back to wgpu's environment variables, then to
/// the best adapter found (discrete GPU first, CPU rasterizers last; Vulkan before GL).
#[derive(Clone, Debug, Default)]
pub struct GpuOptions {
    /// `vulkan`, `metal`, `dx12` or `gl`.
    pub backend: Option<String>,
    /// A case-insensitive substring of the adapter's name.
    pub adapter: Option<String>,
    /// Open the device without timestamp queries (to exercise the profiler's fallback).
    pub without_timestamps: bool,
    /// Open the device without subgroups, as DX12 exposes it when shaders are compiled by FXC
    /// (no dxcompiler.dll: shader model 5.1), or Metal on GPUs before Apple7/Mac2; the kernels
    /// that need them are then never chosen.
    pub without_subgroups: bool,
    /// Open the device with these limits instead of the adapter's own, each clamped to what the
    /// adapter offers. `wgpu::Limits::default()` is WebGPU's guaranteed minimum (16 KiB
    /// workgroup storage, 256 invocations, 8 storage and 12 uniform buffers per stage, 128 MiB
    /// storage bindings), about what small integrated and mobile GPUs offer: kiln runs under it
    /// or refuses by naming the limit. Default: `KILN_LIMITS=webgpu`, else the adapter's.
    pub limits: Option<wgpu::Limits>,
    /// Read WGSL from this folder instead of the embedded copies (default: `KILN_SHADERS`).
    pub shaders: Option<std::path::PathBuf>,
    /// Which of several equally ranked adapters to take (modulo their count): a data-parallel
    /// rank's local rank, so the ranks on one machine open different GPUs of one kind.
    pub nth_of_best: usize,
    /// The GEMM kernels (matmul, convolutions) every `Auto` variant resolves to. Default:
    /// `KILN_KERNELS`, else the adapter's best.
    pub kernels: Option<Kernels>,
    /// Time the tile engine's shapes on the device and keep the fastest per product shape.
    /// Default: `KILN_AUTOTUNE` (0 or off: no), else on for GPUs and off for CPU adapters
    /// (which never pick the tile engine).
    pub autotune: Option<bool>,
    /// Where the choices are kept (default: `KILN_AUTOTUNE_CACHE`, else autotune.json in
    /// kiln's cache folder).
    pub autotune_cache: Option<std::path::PathBuf>,
}

/// Which family of GEMM kernels runs the matmuls and convolutions whose variant is `Auto`
/// (every one a model builds): the adapter's best, or one family forced, to measure it or to
/// run the conformance cases through it on any adapter (`--kernels`, `KILN_KERNELS`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Kernels {
    /// Windows on CPU adapters, the tile engine on GPUs.
    #[default]
    Auto,
    /// The tile engine (shaders/gemm.wgsl), the GPU kernels; batch norm then also takes its
    /// GPU passes (one fused dispatch per direction for mid-sized channels).
    Tiled,
    /// The uniform-window kernels for CPU adapters, where they apply (else blocked).
    Windowed,
    /// The register-blocked kernels (matmul.wgsl, conv.wgsl).
    Blocked,
}

impl Kernels {
    pub fn parse(name: &str) -> Result<Kernels> {
        match name.to_ascii_lowercase().as_str() {
            "" | "auto" => Ok(Kernels::Auto),
            "tiled" => Ok(Kernels::Tiled),
            "windowed" => Ok(Kernels::Windowed),
            "blocked" => Ok(Kernels::Blocked),
            other => Err(Error::Invalid(format!("kernels {other:?}: expected auto, tiled, windowed or blocked"))),
        }
    }
}

impl GpuOptions {
    pub fn backend(name: &str) -> GpuOptions {
        GpuOptions { backend: Some(name.to_string()), ..Default::default() }
    }

    /// The default adapter opened with `limits` (see [`GpuOptions::limits`]).
    pub fn with_limits(limits: wgpu::Limits) -> GpuOptions {
        GpuOptions { limits: Some(limits), ..Default::default() }
    }

    /// The limits to open `adapter` with: [`GpuOptions::limits`], else `KILN_LIMITS`, else the
    /// adapter's own; never better than the adapter's.
    pub fn limits_for(&self, adapter: &wgpu::Limits) -> Result<wgpu::Limits> {
        let asked = match &self.limits {
            Some(l) => Some(l.clone()),
            None => match std::env::var("KILN_LIMITS").unwrap_or_default().to_ascii_lowercase().as_str() {
                "" | "adapter" => None,
                "webgpu" => Some(wgpu::Limits::default()),
                other => {
                    return Err(Error::Invalid(format!("KILN_LIMITS={other:?}: expected webgpu (WebGPU's default limits) or adapter")))
                }
            },
        };
        Ok(asked.map_or_else(|| adapter.clone(), |l| l.or_worse_values_from(adapter)))
    }

    /// Whether to autotune on an adapter of `device_type` (see [`GpuOptions::autotune`]).
    pub fn autotune(&self, device_type: wgpu::DeviceType) -> Result<bool> {
        if let Some(on) = self.autotune {
            return Ok(on);
        }
        match std::env::var("KILN_AUTOTUNE").unwrap_or_default().to_ascii_lowercase().as_str() {
            "" => Ok(device_type != wgpu::DeviceType::Cpu),
            "1" | "on" | "yes" => Ok(true),
            "0" | "off" | "no" => Ok(false),
            other => Err(Error::Invalid(format!("KILN_AUTOTUNE={other:?}: expected 1/on or 0/off"))),
        }
    }

    /// The autotune cache file: [`GpuOptions::autotune_cache`], else `KILN_AUTOTUNE_CACHE`, else
    /// `autotune.json` in kiln's cache folder (none where there is no cache folder).
    pub fn autotune_cache(&self) -> Option<std::path::PathBuf> {
        self.autotune_cache
            .clone()
            .or_else(|| std::env::var_os("KILN_AUTOTUNE_CACHE").filter(|v| !v.is_empty()).map(Into::into))
            .or_else(|| crate::data::download::cache_dir().ok().map(|d| d.join("autotune.json")))
    }

    /// [`GpuOptions::kernels`], else `KILN_KERNELS`, else `Auto`.
    pub fn kernels(&self) -> Result<Kernels> {
        match self.kernels {
            Some(k) => Ok(k),
            None => Kernels::parse(&std::env::var("KILN_KERNELS").unwrap_or_default()).map_err(|e| Error::Invalid(format!("KILN_KERNELS: {e}"))),
        }
    }
}

fn parse_backend(name: &str) -> Result<wgpu::Backends> {
    match name.to_ascii_lowercase().as_str() {
        "vulkan" | "vk" => Ok(wgpu::Backends::VULKAN),
        "metal" | "mtl" => Ok(wgpu::Backends::METAL),
        "dx12" | "d3d12" => Ok(wgpu::Backends::DX12),
        "gl" | "gles" | "opengl" => Ok(wgpu::Backends::GL),
        other => Err(Error::Invalid(format!(
            "unknown backend {other:?}: expected vulkan, metal, dx12 or gl"
        ))),
    }
}

fn instance(options: &GpuOptions) -> Result<(wgpu::Instance, wgpu::Backends)> {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    if let Some(name) = &options.backend {
        desc.backends = parse_backend(name)?;
    }
    let backends = desc.backends;
    Ok((wgpu::Instance::new(desc), backends))
}

fn rank(info: &wgpu::AdapterInfo) -> (u8, u8) {
    let device = match info.device_type {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    };
    let backend = match info.backend {
        wgpu::Backend::Vulkan | wgpu::Backend::Metal | wgpu::Backend::Dx12 => 0,
        _ => 1,
    };
    (device, backend)
}

fn name_filter(options: &GpuOptions) -> Option<String> {
    options
        .adapter
        .clone()
        .or_else(|| std::env::var("WGPU_ADAPTER_NAME").ok())
        .filter(|s| !s.is_empty())
        .map(|s| s.to_lowercase())
}

/// Every adapter the instance sees, and the index of the one [`choose`] would pick.
fn enumerate(options: &GpuOptions) -> Result<(Vec<wgpu::Adapter>, Option<usize>)> {
    let (instance, backends) = instance(options)?;
    let adapters = pollster::block_on(instance.enumerate_adapters(backends));
    let filter = name_filter(options);
    let candidates: Vec<(usize, (u8, u8))> = adapters
        .iter()
        .enumerate()
        .filter(|(_, a)| {
            let name = a.get_info().name.to_lowercase();
            filter.as_ref().is_none_or(|f| name.contains(f))
        })
        .filter(|(_, a)| a.get_downlevel_capabilities().flags.contains(wgpu::DownlevelFlags::COMPUTE_SHADERS))
        .map(|(i, a)| (i, rank(&a.get_info())))
        .collect();
    let best: Vec<usize> = candidates.iter().filter(|(_, r)| Some(r) == candidates.iter().map(|(_, r)| r).min()).map(|(i, _)| *i).collect();
    let chosen = (!best.is_empty()).then(|| best[options.nth_of_best % best.len()]);
    Ok((adapters, chosen))
}

pub(super) fn choose(options: &GpuOptions) -> Result<(wgpu::Adapter, usize)> {
    let (mut adapters, chosen) = enumerate(options)?;
    match chosen {
        Some(i) => {
            let adapter = adapters.swap_remove(i);
            // Only a backend or name filter can pass over a GPU for a CPU driver (unfiltered,
            // the ranking puts every GPU first), so only then is it worth a second look.
            let filtered = options.backend.is_some() || name_filter(options).is_some() || std::env::var_os("WGPU_BACKEND").is_some();
            if filtered {
                if let Some(warning) = skipped_gpus_warning(&adapter.get_info()) {
                    log::warn!("{warning}");
                }
            }
            Ok((adapter, i))
        }
        None => Err(Error::NoAdapter(no_adapter_help(options, &adapters))),
    }
}

/// When `chosen` is a CPU driver while a GPU that can run compute shaders exists on some
/// backend (skipped by `--backend`, `--adapter`, `WGPU_BACKEND` or `WGPU_ADAPTER_NAME`), a
/// warning naming them.
pub fn skipped_gpus_warning(chosen: &wgpu::AdapterInfo) -> Option<String> {
    if chosen.device_type != wgpu::DeviceType::Cpu {
        return None;
    }
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    desc.backends = wgpu::Backends::all();
    let everything = pollster::block_on(wgpu::Instance::new(desc).enumerate_adapters(wgpu::Backends::all()));
    let gpus: Vec<wgpu::AdapterInfo> = everything
        .iter()
        .filter(|a| a.get_downlevel_capabilities().flags.contains(wgpu::DownlevelFlags::COMPUTE_SHADERS))
        .map(|a| a.get_info())
        .collect();
    skipped_warning(chosen, &gpus)
}

fn skipped_warning(chosen: &wgpu::AdapterInfo, seen: &[wgpu::AdapterInfo]) -> Option<String> {
    let gpus: Vec<String> = seen.iter().filter(|i| i.device_type != wgpu::DeviceType::Cpu).map(describe_info).collect();
    (chosen.device_type == wgpu::DeviceType::Cpu && !gpus.is_empty()).then(|| {
        format!(
            "kiln is using a CPU driver, {}, but skipped {} that could run it: {}. Drop --backend \
             and --adapter (and WGPU_BACKEND, WGPU_ADAPTER_NAME), or name the GPU's backend.",
            describe_info(chosen),
            if gpus.len() == 1 { "a GPU" } else { "GPUs" },
            gpus.join("; ")
        )
    })
}

fn no_adapter_help(options: &GpuOptions, seen: &[wgpu::Adapter]) -> String {
    let mut msg = String::new();
    if let Some(f) = name_filter(options) {
        msg += &format!("no adapter name contains {f:?}");
    } else if let Some(b) = &options.backend {
        msg += &format!("no compute-capable adapter on backend {b}");
    } else {
        msg += "no compute-capable adapter found";
    }
    if !seen.is_empty() {
        let names: Vec<String> = seen.iter().map(|a| describe_info(&a.get_info())).collect();
        msg += &format!(" (seen: {})", names.join("; "));
    }
    msg += ". On Linux without a GPU install Mesa's software drivers: \
            `apt-get install mesa-vulkan-drivers` gives lavapipe (Vulkan); \
            llvmpipe (GL) comes with libegl-mesa0. Then pick one with --backend vulkan|gl.";
    msg
}

pub(crate) fn describe_info(info: &wgpu::AdapterInfo) -> String {
    format!(
        "{} ({:?}, {:?}, {} {})",
        info.name, info.backend, info.device_type, info.driver, info.driver_info
    )
}

/// One adapter as `kiln info` shows it.
pub struct AdapterReport {
    pub chosen: bool,
    pub info: wgpu::AdapterInfo,
    pub features: wgpu::Features,
    pub limits: wgpu::Limits,
    pub compute: bool,
}

/// All adapters with the one kiln would use marked.
pub fn describe_adapters(options: &GpuOptions) -> Result<Vec<AdapterReport>> {
    let (adapters, chosen) = enumerate(options)?;
    Ok(adapters
        .iter()
        .enumerate()
        .map(|(i, a)| AdapterReport {
            chosen: Some(i) == chosen,
            info: a.get_info(),
            features: a.features(),
            limits: a.limits(),
            compute: a.get_downlevel_capabilities().flags.contains(wgpu::DownlevelFlags::COMPUTE_SHADERS),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::skipped_warning;
    use wgpu::{AdapterInfo, Backend, DeviceType};

    fn info(name: &str, device_type: DeviceType, backend: Backend) -> AdapterInfo {
        AdapterInfo { name: name.into(), ..AdapterInfo::new(device_type, backend) }
    }

    #[test]
    fn a_cpu_driver_chosen_over_a_skipped_gpu_is_warned_about_by_name() {
        let gl = info("llvmpipe", DeviceType::Cpu, Backend::Gl);
        let gpu = info("NVIDIA GeForce RTX 4090", DeviceType::DiscreteGpu, Backend::Vulkan);
        let lavapipe = info("llvmpipe", DeviceType::Cpu, Backend::Vulkan);
        let warning = skipped_warning(&gl, &[gl.clone(), lavapipe.clone(), gpu.clone()]).unwrap();
        assert!(warning.contains("RTX 4090 (Vulkan, DiscreteGpu") && warning.contains("llvmpipe (Gl") && warning.contains("--backend"), "{warning}");
        assert!(!warning.contains("llvmpipe (Vulkan"), "only GPUs are listed: {warning}");
        // Nothing to say when a GPU is in use, or when there is none to use.
        assert_eq!(skipped_warning(&gpu, &[gl.clone(), gpu.clone()]), None);
        assert_eq!(skipped_warning(&gl, &[gl.clone(), lavapipe]), None);
    }
}
