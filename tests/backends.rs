//! Every embedded shader module and entry point, translated by naga as wgpu 30's Metal, DX12 and
//! Vulkan back ends translate it (wgpu-hal's options, binding maps and language levels), so a
//! kernel that would break on a Mac or a Windows PC fails here, on Linux, without one.
//!
//! Pipeline constants: kiln creates pipelines of gemm.wgsl (the tile engine) with each tile
//! shape's constants (`kiln::kernels::gemm::constant_sets`), every other module with its
//! defaults, so each entry point is translated once per set kiln creates. A module that
//! declares an `override` fails [`constant_sets`] until the sets kiln creates are listed there.
//!
//! A module that needs a shader capability a target lacks (subgroups under DX12's FXC, on old
//! Apple GPUs or Vulkan 1.0) is not translated for it: wgpu would refuse to create it there, and
//! kiln refuses it first with the same check (`kiln::gpu::check_capabilities`). That kiln never
//! chooses such a kernel on such a device is tested in tests/small_limits.rs.

use kiln::gpu::{check_capabilities, validate_wgsl, SHADER_FILES};
use naga::back::{hlsl, msl, spv, PipelineConstants};
use naga::{AddressSpace, ResourceBinding, ShaderStage, StorageAccess};
use wgpu::Features;

/// A language level wgpu targets and the features it exposes there (of those kiln asks for).
struct Target {
    backend: &'static str,
    level: Level,
    /// Where wgpu targets this level.
    when: &'static str,
    features: Features,
}

#[derive(Clone, Copy)]
enum Level {
    Msl((u8, u8)),
    Hlsl(hlsl::ShaderModel),
    Spv((u8, u8)),
}

const SUBGROUP: Features = Features::SUBGROUP;
const F16: Features = Features::SHADER_F16;

/// Levels from wgpu-hal 30: Metal takes the highest MSL version the OS has (metal/adapter.rs)
/// and exposes SHADER_F16 always, SUBGROUP from macOS 10.15 / iOS 13 on Mac2, Apple7 and Metal3
/// GPUs; DX12 takes the lower of the device's and DXC's shader model, 5.1 where it falls back
/// to FXC (no dxcompiler.dll), with SUBGROUP (wave ops) from 6.0 and SHADER_F16 from 6.2
/// (dx12/adapter.rs); Vulkan writes the SPIR-V version of the device's API version, and
/// exposes SUBGROUP only from Vulkan 1.1 with VK_EXT_subgroup_size_control (vulkan/adapter.rs).
fn targets() -> Vec<Target> {
    use hlsl::ShaderModel as Sm;
    let t = |backend, level, when, features| Target { backend, level, when, features };
    vec![
        t("MSL", Level::Msl((2, 1)), "macOS 10.14 / iOS 12: no SIMD-group families yet", F16),
        t("MSL", Level::Msl((2, 3)), "macOS 11 / iOS 14: Apple7 (M1, A14), Mac2", F16 | SUBGROUP),
        t("MSL", Level::Msl((3, 2)), "macOS 15 / iOS 18", F16 | SUBGROUP),
        t("MSL", Level::Msl((4, 0)), "macOS 26 / iOS 26", F16 | SUBGROUP),
        t("HLSL", Level::Hlsl(Sm::V5_1), "FXC, wgpu's fallback without dxcompiler.dll", Features::empty()),
        t("HLSL", Level::Hlsl(Sm::V6_0), "DXC on the oldest DXIL drivers", SUBGROUP),
        t("HLSL", Level::Hlsl(Sm::V6_6), "DXC on current drivers", F16 | SUBGROUP),
        t("SPIR-V", Level::Spv((1, 0)), "Vulkan 1.0", Features::empty()),
        t("SPIR-V", Level::Spv((1, 3)), "Vulkan 1.1 with VK_EXT_subgroup_size_control", SUBGROUP),
        t("SPIR-V", Level::Spv((1, 6)), "Vulkan 1.3 (lavapipe, current drivers)", F16 | SUBGROUP),
    ]
}

impl Level {
    fn name(self) -> String {
        match self {
            Level::Msl((a, b)) => format!("MSL {a}.{b}"),
            Level::Hlsl(sm) => format!("HLSL SM {}", sm.to_str().replace('_', ".")),
            Level::Spv((a, b)) => format!("SPIR-V {a}.{b}"),
        }
    }
}

/// The pipeline-constant sets kiln creates pipelines of `shader.entry` with.
fn constant_sets(shader: &str, module: &naga::Module) -> Vec<PipelineConstants> {
    if shader == "gemm" {
        return kiln::kernels::gemm::constant_sets()
            .into_iter()
            .map(|set| set.iter().map(|&(name, value)| (name.to_string(), f64::from(value))).collect())
            .collect();
    }
    assert!(
        module.overrides.is_empty(),
        "shaders/{shader}.wgsl declares pipeline-overridable constants: list the sets kiln creates in tests/backends.rs"
    );
    vec![PipelineConstants::default()]
}

/// One buffer an entry point binds (group 0: kiln's auto layouts have one group).
struct Binding {
    binding: ResourceBinding,
    uniform: bool,
    writable: bool,
}

/// The buffers `module` (reduced to one entry point) binds, in binding order, as wgpu's derived
/// layout lists them.
fn bindings(module: &naga::Module) -> Vec<Binding> {
    let mut list: Vec<Binding> = module
        .global_variables
        .iter()
        .filter_map(|(_, var)| {
            let binding = var.binding?;
            let (uniform, writable) = match var.space {
                AddressSpace::Uniform => (true, false),
                AddressSpace::Storage { access } => (false, access.contains(StorageAccess::STORE)),
                other => panic!("binding {binding:?} in address space {other:?}: only buffers are mapped here"),
            };
            Some(Binding { binding, uniform, writable })
        })
        .collect();
    list.sort_by_key(|b| (b.binding.group, b.binding.binding));
    list
}

/// Translates one entry point (already reduced to it by `process_overrides`) for `level`, with
/// the options wgpu-hal passes; naga's error text on failure.
fn translate(level: Level, module: &naga::Module, info: &naga::valid::ModuleInfo, entry: &str, features: Features) -> Result<(), String> {
    let buffers = bindings(module);
    match level {
        Level::Msl(lang_version) => {
            // metal/device.rs: buffer slots in layout order, then the sizes buffer wgpu
            // reserves whenever a storage buffer is bound.
            let resources = buffers
                .iter()
                .enumerate()
                .map(|(slot, b)| (b.binding, msl::BindTarget { buffer: Some(slot as u8), mutable: b.writable, ..Default::default() }))
                .collect();
            let sizes_buffer = buffers.iter().any(|b| !b.uniform).then_some(buffers.len() as u8);
            let resources = msl::EntryPointResources { resources, immediates_buffer: None, sizes_buffer };
            let restrict = naga::proc::BoundsCheckPolicy::Restrict;
            let options = msl::Options {
                lang_version,
                per_entry_point_map: [(entry.to_string(), resources)].into(),
                bounds_check_policies: naga::proc::BoundsCheckPolicies { index: restrict, buffer: restrict, image_load: restrict, ..Default::default() },
                zero_initialize_workgroup_memory: true,
                force_loop_bounding: true,
                fake_missing_bindings: false,
                ..Default::default()
            };
            let pipeline = msl::PipelineOptions {
                entry_point: Some((ShaderStage::Compute, entry.to_string())),
                vertex_pulling_transform: true,
                ..Default::default()
            };
            msl::write_string(module, info, &options, &pipeline).map(|_| ()).map_err(|e| format!("{e} ({e:?})"))
        }
        Level::Hlsl(shader_model) => {
            // dx12/device.rs: registers per class (b uniform, t read-only, u read-write) in
            // space 0, and the special-constants buffer after the uniforms: wgpu always adds it,
            // and naga reads num_workgroups from it.
            let (mut b, mut t, mut u) = (0, 0, 0);
            let mut binding_map = hlsl::BindingMap::new();
            for buffer in &buffers {
                let counter = if buffer.uniform { &mut b } else if buffer.writable { &mut u } else { &mut t };
                let target = hlsl::BindTarget { space: 0, register: *counter, binding_array_size: None, dynamic_storage_buffer_offsets_index: None, restrict_indexing: false };
                binding_map.insert(buffer.binding, target);
                *counter += 1;
            }
            let special = hlsl::BindTarget { space: 0, register: b, binding_array_size: None, dynamic_storage_buffer_offsets_index: None, restrict_indexing: false };
            let options = hlsl::Options {
                shader_model,
                binding_map,
                fake_missing_bindings: false,
                special_constants_binding: Some(special),
                ..Default::default()
            };
            let pipeline = hlsl::PipelineOptions { entry_point: Some((ShaderStage::Compute, entry.to_string())) };
            let mut out = String::new();
            hlsl::Writer::new(&mut out, &options, &pipeline).write(module, info, None).map(|_| ()).map_err(|e| format!("{e} ({e:?})"))
        }
        Level::Spv(lang_version) => {
            // vulkan/device.rs: bindings renumbered densely in layout order; vulkan/adapter.rs:
            // only the capabilities the device's features allow.
            let binding_map = buffers
                .iter()
                .enumerate()
                .map(|(i, b)| (b.binding, spv::BindingInfo { descriptor_set: b.binding.group, binding: i as u32, binding_array_size: None }))
                .collect();
            use spv::Capability as C;
            let mut capabilities = vec![C::Shader, C::Matrix, C::Sampled1D, C::Image1D, C::ImageQuery, C::DerivativeControl, C::StorageImageExtendedFormats];
            if features.contains(SUBGROUP) {
                let subgroup = [C::GroupNonUniform, C::GroupNonUniformVote, C::GroupNonUniformArithmetic, C::GroupNonUniformBallot, C::GroupNonUniformShuffle, C::GroupNonUniformShuffleRelative, C::GroupNonUniformQuad];
                capabilities.extend(subgroup);
            }
            if features.contains(F16) {
                capabilities.push(C::Float16);
            }
            let restrict = naga::proc::BoundsCheckPolicy::Restrict;
            let options = spv::Options {
                lang_version,
                flags: spv::WriterFlags::empty(),
                capabilities: Some(capabilities.into_iter().collect()),
                bounds_check_policies: naga::proc::BoundsCheckPolicies { index: restrict, buffer: restrict, image_load: restrict, ..Default::default() },
                zero_initialize_workgroup_memory: spv::ZeroInitializeWorkgroupMemoryMode::Polyfill,
                force_loop_bounding: true,
                fake_missing_bindings: false,
                binding_map,
                ..Default::default()
            };
            let pipeline = spv::PipelineOptions { shader_stage: ShaderStage::Compute, entry_point: entry.to_string() };
            let words = spv::write_vec(module, info, &options, Some(&pipeline)).map_err(|e| format!("{e} ({e:?})"))?;
            spirv_val(&words, lang_version)
        }
    }
}

/// SPIR-V from naga checked by SPIRV-Tools' validator for the Vulkan version that takes it, where
/// `spirv-val` is installed (.ci/run installs it); `Ok` without it, as the summary says.
fn spirv_val(words: &[u32], (major, minor): (u8, u8)) -> Result<(), String> {
    if !has_spirv_val() {
        return Ok(());
    }
    let env = match (major, minor) {
        (1, 0) => "vulkan1.0",
        (1, 3) => "vulkan1.1",
        (1, 5) => "vulkan1.2",
        _ => "vulkan1.3",
    };
    let mut child = std::process::Command::new("spirv-val")
        .args(["--target-env", env, "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("spirv-val: {e}"))?;
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), &bytes).map_err(|e| format!("spirv-val: {e}"))?;
    let out = child.wait_with_output().map_err(|e| format!("spirv-val: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("spirv-val --target-env {env}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    }
}

fn has_spirv_val() -> bool {
    static FOUND: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FOUND.get_or_init(|| std::process::Command::new("spirv-val").arg("--version").output().is_ok_and(|o| o.status.success()))
}

/// What one target made of every module: translations passed, modules it cannot create.
#[derive(Default)]
struct Tally {
    modules: usize,
    entries: usize,
    passed: usize,
    excluded: Vec<String>,
}

#[test]
fn every_entry_point_translates_to_msl_hlsl_and_spirv_as_wgpu_does() {
    let downlevel = wgpu::DownlevelFlags::all();
    let mut failures = Vec::new();
    let mut lines = Vec::new();
    let mut totals: Vec<(&str, usize)> = Vec::new();
    for target in targets() {
        let mut tally = Tally::default();
        for (name, source) in SHADER_FILES {
            let path = format!("shaders/{name}.wgsl");
            let module = validate_wgsl(source, &path).unwrap_or_else(|e| panic!("{e}"));
            if check_capabilities(&module, source, &path, target.features, downlevel).is_err() {
                let needs = [(SUBGROUP, "SUBGROUP"), (F16, "SHADER_F16")]
                    .iter()
                    .find(|(f, _)| check_capabilities(&module, source, &path, target.features | *f, downlevel).is_ok())
                    .map_or("a feature kiln never asks for", |(_, n)| n);
                tally.excluded.push(format!("{name} (needs {needs})"));
                continue;
            }
            let info = wgpu_naga_bridge::create_validator(target.features, downlevel, naga::valid::ValidationFlags::all())
                .validate(&module)
                .expect("validated above");
            tally.modules += 1;
            for ep in &module.entry_points {
                tally.entries += 1;
                for constants in constant_sets(name, &module) {
                    let result = naga::back::pipeline_constants::process_overrides(&module, &info, Some((ep.stage, &ep.name)), &constants)
                        .map_err(|e| format!("{e} ({e:?})"))
                        .and_then(|(m, i)| translate(target.level, &m, &i, &ep.name, target.features));
                    match result {
                        Ok(()) => tally.passed += 1,
                        Err(e) => failures.push(format!("{} ({}): {path}, entry point {}, constants {constants:?}: {e}", target.level.name(), target.when, ep.name)),
                    }
                }
            }
        }
        lines.push(format!(
            "{:<12} {:<52} {:>2} modules, {:>2} entry points, their constant sets: {} pipelines passed{}",
            target.level.name(),
            target.when,
            tally.modules,
            tally.entries,
            tally.passed,
            if tally.excluded.is_empty() { String::new() } else { format!("; not creatable here: {}", tally.excluded.join(", ")) }
        ));
        match totals.iter_mut().find(|(b, _)| *b == target.backend) {
            Some((_, n)) => *n += tally.passed,
            None => totals.push((target.backend, tally.passed)),
        }
    }
    println!("{}", lines.join("\n"));
    println!("translations passed: {}", totals.iter().map(|(b, n)| format!("{b} {n}")).collect::<Vec<_>>().join(", "));
    println!("SPIR-V {}", if has_spirv_val() { "also passed spirv-val for its Vulkan version" } else { "checked by naga only: spirv-val (SPIRV-Tools) is not installed" });
    assert!(failures.is_empty(), "{} translations failed:\n{}", failures.len(), failures.join("\n\n"));
}

#[test]
fn a_module_that_needs_subgroups_is_refused_by_name_where_they_are_missing() {
    let (name, source) = SHADER_FILES.iter().find(|(n, _)| *n == "conv_window_subgroup").unwrap();
    let path = format!("shaders/{name}.wgsl");
    let module = validate_wgsl(source, &path).unwrap();
    let downlevel = wgpu::DownlevelFlags::all();
    check_capabilities(&module, source, &path, SUBGROUP, downlevel).unwrap();
    let err = check_capabilities(&module, source, &path, Features::empty(), downlevel).unwrap_err().to_string();
    assert!(err.contains(&path) && err.contains("SUBGROUP"), "{err}");
}

#[test]
fn the_spirv_writer_refuses_subgroup_operations_without_their_capabilities() {
    // The control for the targets above: their capability lists are what makes naga refuse.
    let (name, source) = SHADER_FILES.iter().find(|(n, _)| *n == "conv_window_subgroup").unwrap();
    let module = validate_wgsl(source, &format!("shaders/{name}.wgsl")).unwrap();
    let info = wgpu_naga_bridge::create_validator(SUBGROUP, wgpu::DownlevelFlags::all(), naga::valid::ValidationFlags::all()).validate(&module).unwrap();
    let (m, i) = naga::back::pipeline_constants::process_overrides(&module, &info, Some((ShaderStage::Compute, "forward")), &PipelineConstants::default()).unwrap();
    translate(Level::Spv((1, 3)), &m, &i, "forward", SUBGROUP).unwrap();
    let err = translate(Level::Spv((1, 3)), &m, &i, "forward", Features::empty()).unwrap_err();
    assert!(err.contains("GroupNonUniform"), "{err}");
}


/// Entry points that need more than WebGPU's default limits, and the launcher check that keeps
/// kiln from choosing them on a device without it.
const OVER_WEBGPU_LIMITS: &[(&str, &str)] = &[("conv_window.weight_grad", "has_windows(gpu, 15): 7 x and 7 dy windows and the params")];

#[test]
fn every_entry_point_fits_webgpus_default_limits_or_its_launcher_checks_them() {
    // Per stage (auto layouts: one entry point per pipeline): storage and uniform buffers,
    // workgroup invocations and workgroup memory, against wgpu::Limits::default().
    let limits = wgpu::Limits::default();
    let mut over = Vec::new();
    for (name, source) in SHADER_FILES {
        let module = validate_wgsl(source, name).unwrap();
        let module_info = wgpu_naga_bridge::create_validator(Features::all(), wgpu::DownlevelFlags::all(), naga::valid::ValidationFlags::all()).validate(&module).unwrap();
        for ep in &module.entry_points {
            let (m, _) = naga::back::pipeline_constants::process_overrides(&module, &module_info, Some((ep.stage, &ep.name)), &PipelineConstants::default()).unwrap();
            let buffers = bindings(&m);
            let uniform = buffers.iter().filter(|b| b.uniform).count() as u32;
            let storage = buffers.len() as u32 - uniform;
            let invocations = m.entry_points[0].workgroup_size.iter().product::<u32>();
            let shared: u32 = m.global_variables.iter().filter(|(_, v)| v.space == AddressSpace::WorkGroup).map(|(_, v)| m.types[v.ty].inner.size(m.to_ctx())).sum();
            let needs = [
                (storage, limits.max_storage_buffers_per_shader_stage, "storage buffers"),
                (uniform, limits.max_uniform_buffers_per_shader_stage, "uniform buffers"),
                (invocations, limits.max_compute_invocations_per_workgroup, "invocations per workgroup"),
                (shared, limits.max_compute_workgroup_storage_size, "bytes of workgroup storage"),
            ];
            for (need, limit, what) in needs {
                if need > limit {
                    over.push((format!("{name}.{}", ep.name), format!("{need} {what}, over {limit}")));
                }
            }
        }
    }
    let unexplained: Vec<String> = over.iter().filter(|(k, _)| !OVER_WEBGPU_LIMITS.iter().any(|(e, _)| e == k)).map(|(k, why)| format!("{k}: {why}")).collect();
    for (kernel, why) in &over {
        println!("{kernel}: {why}");
    }
    assert!(unexplained.is_empty(), "entry points over WebGPU's default limits with no launcher check listed in OVER_WEBGPU_LIMITS:\n{}", unexplained.join("\n"));
    let gone: Vec<&str> = OVER_WEBGPU_LIMITS.iter().map(|(k, _)| *k).filter(|k| !over.iter().any(|(o, _)| o == k)).collect();
    assert!(gone.is_empty(), "listed in OVER_WEBGPU_LIMITS but within the limits now: {gone:?}");
}
