use clap::{Args, Parser, Subcommand};
use kiln::gpu::{describe_adapters, GpuOptions};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "kiln", version, about = "Train GANs and VAEs with hand-written WGSL kernels on any GPU wgpu reaches")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Device selection shared by every subcommand.
#[derive(Args, Clone, Debug)]
struct DeviceArgs {
    /// vulkan, metal, dx12 or gl (default: WGPU_BACKEND, else every backend)
    #[arg(long, global = true)]
    backend: Option<String>,
    /// Use the adapter whose name contains this (default: WGPU_ADAPTER_NAME, else the best one)
    #[arg(long, global = true)]
    adapter: Option<String>,
}

impl DeviceArgs {
    fn options(&self) -> GpuOptions {
        GpuOptions { backend: self.backend.clone(), adapter: self.adapter.clone(), ..Default::default() }
    }
}

#[derive(Subcommand)]
enum Command {
    /// List every adapter with its backend, type, driver, features and limits; mark the one kiln uses
    Info(DeviceArgs),
    /// Run conformance cases made by PyTorch (docs/CHECK.md) through kiln's kernels
    Check(CheckArgs),
    /// Measure the adapter's peak (FMA, copy bandwidth) and kernel throughput
    Bench(BenchArgs),
}

#[derive(Args)]
struct BenchArgs {
    #[command(flatten)]
    device: DeviceArgs,
    /// What to measure: peak (the adapter's FMA and copy peak), kernels (matmul and conv at
    /// training shapes, as fractions of that peak) or all (both)
    #[arg(default_value = "kernels", value_parser = ["peak", "kernels", "all"])]
    what: String,
    /// Print machine-readable JSON instead of a table
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct CheckArgs {
    /// A safetensors file whose metadata holds "kiln.cases" (e.g. fixtures/torch_cases.safetensors)
    file: PathBuf,
    #[command(flatten)]
    dev: DeviceArgs,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Info(dev) => info(&dev),
        Command::Check(args) => check(&args),
        Command::Bench(args) => bench(&args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kiln: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Prints one line per case and `N passed, M failed`; fails when any case fails. A malformed
/// file is an error before the GPU is opened.
fn check(args: &CheckArgs) -> kiln::Result<ExitCode> {
    let file = kiln::check::CaseFile::load(&args.file)?;
    let gpu = kiln::Gpu::new(&args.dev.options())?;
    let n = file.cases.len();
    println!("{}: {n} case{} on {}", file.path, if n == 1 { "" } else { "s" }, gpu.describe());
    let width = kiln::check::name_width(&file);
    let registry = kiln::check::Registry::builtin();
    let report = kiln::check::check_file(&gpu, &registry, &file, |r| println!("{}", r.line(width)));
    println!("{}", report.summary());
    Ok(if report.failed() == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn info(dev: &DeviceArgs) -> kiln::Result<ExitCode> {
    let adapters = describe_adapters(&dev.options())?;
    if adapters.is_empty() {
        // Let the chooser produce its explanation of how to get an adapter.
        kiln::Gpu::new(&dev.options())?;
    }
    for a in &adapters {
        let mark = if a.chosen { "*" } else { " " };
        let i = &a.info;
        println!("{mark} {} — {:?}, {:?}, driver {} {}", i.name, i.backend, i.device_type, i.driver, i.driver_info);
        let interesting = [
            (wgpu::Features::TIMESTAMP_QUERY, "TIMESTAMP_QUERY"),
            (wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES, "TIMESTAMP_QUERY_INSIDE_PASSES"),
            (wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS, "TIMESTAMP_QUERY_INSIDE_ENCODERS"),
            (wgpu::Features::SUBGROUP, "SUBGROUP"),
            (wgpu::Features::SHADER_F16, "SHADER_F16"),
        ];
        let features: Vec<&str> = interesting.iter().filter(|(f, _)| a.features.contains(*f)).map(|(_, n)| *n).collect();
        println!("    compute shaders: {}", if a.compute { "yes" } else { "no" });
        println!("    features: {}", if features.is_empty() { "none of interest".to_string() } else { features.join(", ") });
        let l = &a.limits;
        println!(
            "    limits: storage binding {} MiB, buffer {} MiB, workgroup storage {} KiB, \
             invocations/workgroup {}, workgroups/dim {}, storage buffers/stage {}",
            l.max_storage_buffer_binding_size as u64 >> 20,
            l.max_buffer_size >> 20,
            l.max_compute_workgroup_storage_size >> 10,
            l.max_compute_invocations_per_workgroup,
            l.max_compute_workgroups_per_dimension,
            l.max_storage_buffers_per_shader_stage
        );
    }
    if !adapters.iter().any(|a| a.chosen) {
        kiln::Gpu::new(&dev.options())?;
    }
    Ok(ExitCode::SUCCESS)
}

fn bench(args: &BenchArgs) -> kiln::Result<ExitCode> {
    let kernels = args.what != "peak";
    let gpu = kiln::Gpu::new(&args.device.options())?;
    let peak = kiln::bench::measure_peak(&gpu)?;
    if !args.json {
        println!("adapter: {}", gpu.describe());
        println!("peak: {:.1} GFLOP/s FMA, {:.1} GB/s copy", peak.fma_gflops, peak.copy_gbps);
    }
    let mut rows = Vec::new();
    if kernels {
        let suite = kiln::bench::Suite::training(&gpu);
        if !args.json {
            println!("\n{:<28} {:<46} {:<8} {:>10} {:>8} {:>7}", "kernel", "shape", "variant", "ms", "GFLOP/s", "% peak");
        }
        rows = kiln::bench::bench_kernels(&gpu, &peak, &suite, |r| {
            if !args.json {
                println!(
                    "{:<28} {:<46} {:<8} {:>10.3} {:>8.2} {:>7.1}",
                    r.kernel,
                    r.shape,
                    r.variant,
                    r.seconds * 1e3,
                    r.gflops,
                    100.0 * r.fraction_of_peak
                );
            }
        })?;
    }
    if args.json {
        let mut value = serde_json::json!({
            "adapter": gpu.describe(),
            "peak": { "fma_gflops": peak.fma_gflops, "copy_gbps": peak.copy_gbps },
        });
        if kernels {
            value["rows"] = rows.iter().map(|r| r.json()).collect();
        }
        println!("{value:#}");
    }
    Ok(ExitCode::SUCCESS)
}
