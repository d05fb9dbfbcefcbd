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
    /// Read WGSL kernels from this folder instead of the built-in copies (also KILN_SHADERS=DIR)
    #[arg(long, global = true)]
    shaders: Option<PathBuf>,
    /// GEMM kernels for every matmul and convolution: auto (the adapter's best), tiled (the GPU
    /// tile engine, and batch norm's GPU passes), windowed or blocked (the CPU-adapter kernels)
    /// (default: KILN_KERNELS, else auto)
    #[arg(long, global = true, value_parser = ["auto", "tiled", "windowed", "blocked"])]
    kernels: Option<String>,
    /// Do not time the tile engine's tile shapes on the device; use its size rule (also
    /// KILN_AUTOTUNE=0). On by default on GPUs, with choices kept in KILN_AUTOTUNE_CACHE,
    /// else autotune.json in kiln's cache folder
    #[arg(long, global = true)]
    no_autotune: bool,
}

impl DeviceArgs {
    fn options(&self) -> GpuOptions {
        // The value parser admits only names Kernels::parse knows.
        let kernels = self.kernels.as_deref().map(|k| kiln::gpu::Kernels::parse(k).unwrap_or_default());
        let autotune = self.no_autotune.then_some(false);
        GpuOptions { backend: self.backend.clone(), adapter: self.adapter.clone(), shaders: self.shaders.clone(), kernels, autotune, ..Default::default() }
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
    /// Train a model: `gan` (DCGAN), `vae`, or `classifier` (labelled images)
    Train(TrainArgs),
    /// Time every kernel of a training step on the GPU
    Profile(ProfileArgs),
    /// Generate images from a checkpoint (GAN: G(z); VAE: decode(z)), z ~ N(0, 1); for a VAE
    /// and a .png --out, also reconstructions and a latent interpolation of test images
    Sample(SampleArgs),
    /// Evaluate a checkpoint on held-out data (VAE: nats per image, IWAE bound, MSE; GAN: mean D
    /// outputs; classifier: accuracy), score samples with --metrics (FID, KID, precision/recall),
    /// or score --data against --reference
    Eval(EvalArgs),
    /// Encode a data set's training images with a VAE checkpoint to "mu" and "logvar" tensors
    Encode(EncodeArgs),
    /// Decode the "mu" rows of a latents file with a VAE checkpoint to numbered PNGs
    Decode(DecodeArgs),
}

#[derive(Args)]
struct SampleArgs {
    #[arg(long)]
    checkpoint: PathBuf,
    #[command(flatten)]
    device: DeviceArgs,
    /// Number of images
    #[arg(long, default_value_t = 64)]
    n: usize,
    /// A .png path for one grid, otherwise a folder for numbered PNGs. For a VAE, NAME.png
    /// also gets NAME_reconstructions.png (8 rows of test images, each above its
    /// reconstructions decode(mu)) and NAME_interpolation.png (8 rows of 11 images decoded
    /// along the line from one test image's mu to another's)
    #[arg(long, default_value = "samples.png")]
    out: PathBuf,
    /// VAE with a .png --out: the data whose test images are reconstructed and interpolated:
    /// synthetic (built in), mnist, fashion-mnist, or a folder of IDX files or images
    #[arg(long, visible_alias = "dataset", default_value = "synthetic")]
    data: String,
    /// Draws z and the test images shown: the same seed gives the same files
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Conditional GAN: images of this class only. Without it a .png grid has one row of 8
    /// per class (the same 8 z in every row) and a folder gets class i mod classes for image i
    #[arg(long)]
    class: Option<usize>,
    /// GAN: sample from the generator's live weights even where the run kept a moving
    /// average (--ema)
    #[arg(long)]
    no_ema: bool,
}

#[derive(Args)]
struct EvalArgs {
    /// A GAN, VAE or classifier checkpoint (without it: --data scored against --reference)
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    #[command(flatten)]
    device: DeviceArgs,
    /// synthetic (built in), mnist, fashion-mnist, or a folder of IDX files or images
    #[arg(long, visible_alias = "dataset", default_value = "synthetic")]
    data: String,
    /// Seed of the VAE's eps and the GAN's z (default: the training run's, so `kiln eval`
    /// repeats the numbers training printed)
    #[arg(long)]
    seed: Option<u64>,
    /// Print a JSON object instead of a line
    #[arg(long)]
    json: bool,
    /// VAE: samples per image of the importance-weighted bound on -log p(x), reported next to
    /// the ELBO (0: none). Costs k decoder passes per test image
    #[arg(long, default_value_t = 64)]
    iwae_k: usize,
    /// Sample-quality metrics, comma-separated: fid, kid, pr (precision/recall, k = 3),
    /// classes (the backbone's confidence and class balance on the scored images), or all.
    /// With a GAN or VAE checkpoint: --n generated images against --n test images of --data
    #[arg(long)]
    metrics: Option<String>,
    /// The feature network of --metrics: lenet-mnist or lenet-fashion (built in; 28x28 grey
    /// images of digits or clothes), inception
    /// (pytorch-fid's FID Inception-v3, pool3; weights from --fid-weights), or a classifier
    /// checkpoint from `kiln train classifier`
    #[arg(long, default_value = "lenet-mnist")]
    backbone: String,
    /// --backbone inception: pytorch-fid's weights converted by scripts/inception_weights.py
    /// (default: $XDG_CACHE_HOME/kiln/pt_inception-2015-12-05.safetensors). Never downloaded
    #[arg(long)]
    fid_weights: Option<PathBuf>,
    /// Images scored on each side (the literature's 10,000 generated vs 10,000 test images)
    #[arg(long, default_value_t = 10_000)]
    n: usize,
    /// Without --checkpoint: score the images of --data against these. Either is a data spec
    /// with an optional :train, :test or :all (default: the test split, or all of a folder)
    #[arg(long)]
    reference: Option<String>,
    /// VAE: score dynamically binarized test images (each pixel 1 with probability its
    /// intensity, drawn from --seed), as the binarized-MNIST likelihoods in the literature
    #[arg(long)]
    binarize: bool,
    /// GAN: sample from the generator's live weights even where the run kept a moving
    /// average (--ema)
    #[arg(long)]
    no_ema: bool,
}

#[derive(Args)]
struct EncodeArgs {
    #[arg(long)]
    checkpoint: PathBuf,
    #[command(flatten)]
    device: DeviceArgs,
    /// synthetic (built in), mnist, fashion-mnist, or a folder of IDX files or images
    #[arg(long, visible_alias = "dataset", default_value = "synthetic")]
    data: String,
    #[arg(long, default_value = "latents.safetensors")]
    out: PathBuf,
}

#[derive(Args)]
struct DecodeArgs {
    #[arg(long)]
    checkpoint: PathBuf,
    #[command(flatten)]
    device: DeviceArgs,
    /// A safetensors file with "mu" [N, latent] (as `kiln encode` writes)
    #[arg(long)]
    latents: PathBuf,
    /// Folder for the numbered PNGs (or a .png path for one grid)
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
struct ProfileArgs {
    /// gan, vae (the default convolutional VAE) or vae-mlp
    model: String,
    #[command(flatten)]
    device: DeviceArgs,
    /// Profiled steps (after one warm-up step and as many unprofiled ones for the overhead)
    #[arg(long, default_value_t = 3)]
    steps: usize,
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Write a Chrome trace (Perfetto, chrome://tracing) of the profiled steps
    #[arg(long)]
    trace: Option<PathBuf>,
    /// One row per layer and kernel instead of per kernel
    #[arg(long)]
    by_layer: bool,
    /// Print JSON instead of a table
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct TrainArgs {
    /// gan, vae, or classifier (on labelled images: the feature backbone of `eval --metrics`)
    model: String,
    #[command(flatten)]
    device: DeviceArgs,
    /// synthetic (built in), mnist, fashion-mnist (downloaded), or a folder of IDX files or images
    #[arg(long, visible_alias = "dataset", default_value = "synthetic")]
    data: String,
    /// Epochs over the training set (default 1)
    #[arg(long, conflicts_with = "steps")]
    epochs: Option<u64>,
    /// Total training steps (instead of --epochs)
    #[arg(long)]
    steps: Option<u64>,
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Learning rate of every optimizer (default: the recipe's)
    #[arg(long)]
    lr: Option<f32>,
    /// GAN: the generator's learning rate
    #[arg(long)]
    lr_g: Option<f32>,
    /// GAN: the discriminator's learning rate
    #[arg(long)]
    lr_d: Option<f32>,
    /// GAN: paper-ema (paper with --ema 0.999; the best measured on MNIST, docs/TRAINING.md),
    /// paper (N(0,0.02) init, Adam 2e-4 beta1 0.5, D then G updated, as PyTorch's DCGAN) or
    /// seed (the TensorFlow tutorial exactly: default init, Adam 1e-4, both updated from one
    /// forward pass). --loss, --spectral-norm, --ema and --no-ema override what it sets
    #[arg(long, default_value = kiln::train::gan::RECIPES[0].name)]
    recipe: String,
    /// GAN: one-sided label smoothing, the discriminator's target for real images (bce, ls)
    #[arg(long, default_value_t = 1.0)]
    real_label: f32,
    /// GAN: the adversarial loss: bce (non-saturating), hinge, ls (least squares) or wgan-gp
    /// (Wasserstein with gradient penalty)
    /// (default: the recipe's, bce for all of them)
    #[arg(long)]
    loss: Option<String>,
    /// GAN: discriminator steps per generator step (a step is one D update on one batch)
    #[arg(long, default_value_t = 1)]
    n_critic: usize,
    /// GAN: Adam's beta1 and beta2 for both networks, e.g. --betas 0.0,0.9 (default: the recipe's)
    #[arg(long, value_delimiter = ',', num_args = 2)]
    betas: Option<Vec<f32>>,
    /// GAN: keep a moving average of the generator with this decay (e.g. 0.999); sample grids,
    /// --eval-every, `kiln sample` and `kiln eval` use it. With --resume of a run trained
    /// without one, the average starts from the resumed weights
    #[arg(long, conflicts_with = "no_ema")]
    ema: Option<f32>,
    /// GAN: no moving average of the generator, whatever the recipe sets
    #[arg(long)]
    no_ema: bool,
    /// VAE: conv (two stride-2 convolutions each way; 99.1 nats on MNIST after 10 epochs in
    /// PyTorch) or mlp (PyTorch's example, 784-400-20; 105.3 nats)
    #[arg(long, default_value = "conv")]
    vae_model: String,
    /// GAN: spectral normalization (torch's parametrizations.spectral_norm, one power
    /// iteration per step) of every Linear and conv layer of d, g, both or none (default: the
    /// recipe's, none for all of them)
    #[arg(long)]
    spectral_norm: Option<String>,
    /// GAN: WGAN-GP's gradient-penalty weight λ (--loss wgan-gp)
    #[arg(long, default_value_t = 10.0)]
    gp_lambda: f32,
    /// GAN: the R1 penalty γ/2·E‖∇D(x)‖² on real images, with this γ
    #[arg(long)]
    r1: Option<f32>,
    /// GAN: R1 every K steps as StyleGAN2's lazy regularization (a separate D update with
    /// the penalty scaled by K); 1 adds it to every D loss
    #[arg(long, default_value_t = 16)]
    r1_every: u64,
    /// GAN: DiffAugment policies applied to every image D sees, real and generated, e.g.
    /// translation,cutout,color
    #[arg(long)]
    augment: Option<String>,
    /// Class-conditional, on labelled data (IDX label files or one sub-folder per class). GAN:
    /// an embedding into G and a projection discriminator; VAE: the label's embedding into the
    /// encoder and the decoder
    #[arg(long)]
    conditional: bool,
    /// VAE: the KL term's weight in the training objective (β-VAE; 1 trains on the ELBO).
    /// `kiln eval` reports the ELBO and IWAE bound whatever it was
    #[arg(long, default_value_t = 1.0)]
    beta: f32,
    /// VAE: latent dimensions
    #[arg(long, default_value_t = 20)]
    latent: usize,
    /// Image side for image-folder data (28, 32 or 64 for the GAN)
    #[arg(long, default_value_t = 28)]
    image_size: u32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output folder (default out/<model>)
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue from the checkpoint in --out
    #[arg(long)]
    resume: bool,
    #[arg(long, default_value_t = 500)]
    checkpoint_every: u64,
    #[arg(long, default_value_t = 500)]
    sample_every: u64,
    #[arg(long, default_value_t = 50)]
    log_every: u64,
    /// GAN, VAE: log the FID of --eval-n generated images against as many test images every N
    /// steps (and at the end) into metrics.jsonl and the loss curve (0: never)
    #[arg(long, default_value_t = 0)]
    eval_every: u64,
    /// Images on each side of --eval-every's FID (fewer than the 10,000 of `kiln eval`, so
    /// the number is biased upwards and comparable only at the same count)
    #[arg(long, default_value_t = 2000)]
    eval_n: usize,
    /// The feature network of --eval-every (see `kiln eval --backbone`)
    #[arg(long, default_value = "lenet-mnist")]
    backbone: String,
    /// mpirun: all-reduce each network's whole gradient arena after its backward instead of
    /// buckets overlapped with it (docs/DISTRIBUTED.md); the same sums, for measurement
    #[arg(long)]
    no_overlap: bool,
    /// mpirun: the size of an overlapped all-reduce's gradient buckets, in MiB
    #[arg(long, default_value_t = 1.0)]
    bucket_mb: f64,
    /// --backbone inception: its weights (see `kiln eval --fid-weights`)
    #[arg(long)]
    fid_weights: Option<PathBuf>,
}

#[derive(Args)]
struct BenchArgs {
    #[command(flatten)]
    device: DeviceArgs,
    /// What to measure: peak (the adapter's FMA and copy peak), kernels (matmul and conv at
    /// training shapes, as fractions of that peak), steps (whole GAN and VAE training steps,
    /// images/s) or all
    #[arg(default_value = "kernels", value_parser = ["peak", "kernels", "steps", "all"])]
    what: String,
    /// steps: the GAN's batch size
    #[arg(long, default_value_t = 16)]
    gan_batch: usize,
    /// steps: the VAE's batch size (`kiln train`'s default)
    #[arg(long, default_value_t = 64)]
    vae_batch: usize,
    /// steps: timed steps per model, back to back as `kiln train` submits them and then as
    /// many one at a time (after two warm-up steps)
    #[arg(long, default_value_t = 3)]
    timed_steps: usize,
    /// steps: the models timed, comma-separated (gan, vae, vae-mlp)
    #[arg(long, value_delimiter = ',', default_value = "gan,vae,vae-mlp")]
    models: Vec<String>,
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
    // RUST_LOG through env_logger, wrapped so that log lines do not overwrite the progress bar.
    let logger = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).build();
    log::set_max_level(logger.filter());
    let _ = log::set_boxed_logger(Box::new(kiln::train::run::BarAwareLogger(logger)));
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Info(dev) => info(&dev),
        Command::Check(args) => check(&args),
        Command::Bench(args) => bench(&args),
        Command::Train(args) => train(&args),
        Command::Profile(args) => profile(&args),
        Command::Sample(args) => sample(&args),
        Command::Eval(args) => eval(&args),
        Command::Encode(args) => encode(&args),
        Command::Decode(args) => decode(&args),
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

/// What `--kernels auto` picks on an adapter like `info`'s (kernels::conv and matmul `resolve`).
fn auto_kernels(info: &wgpu::AdapterInfo) -> &'static str {
    if info.device_type == wgpu::DeviceType::Cpu {
        " (windowed where the adapter has subgroups of 8 and the uniform windows, else blocked: CPU adapter)"
    } else {
        " (tiled: the tile engine, shaders/gemm.wgsl)"
    }
}

fn info(dev: &DeviceArgs) -> kiln::Result<ExitCode> {
    let options = dev.options();
    let adapters = describe_adapters(&options)?;
    if adapters.is_empty() {
        // Let the chooser produce its explanation of how to get an adapter.
        kiln::Gpu::new(&options)?;
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
        if a.features.contains(wgpu::Features::SUBGROUP) {
            println!("    subgroups: {}-{} lanes", i.subgroup_min_size, i.subgroup_max_size);
        }
        println!("    limits: {}", limits_line(&a.limits));
        if a.chosen {
            let opened = options.limits_for(&a.limits)?;
            if opened != a.limits {
                println!("    opened with (KILN_LIMITS): {}", limits_line(&opened));
            }
            if let Some(warning) = kiln::gpu::skipped_gpus_warning(i) {
                eprintln!("warning: {warning}");
            }
            let kernels = options.kernels()?;
            let autotune = if options.autotune(i.device_type)? {
                options.autotune_cache().map_or("on, in memory only".to_string(), |f| format!("on, choices in {}", f.display()))
            } else {
                "off".to_string()
            };
            println!("    GEMM kernels: {kernels:?}{}; autotune {autotune}", if kernels == kiln::gpu::Kernels::Auto { auto_kernels(i) } else { "" });
            let trusted = kiln::gpu::TRUSTED_SHADERS.join(", ");
            if kiln::gpu::trusted_shaders_wanted() {
                println!("    trusted modules (no wgpu bounds checks or loop counters; indexing proven by tests/kernels/trusted.rs): {trusted}; KILN_CHECKED_SHADERS=1 keeps the checks");
            } else {
                println!("    trusted modules: none (KILN_CHECKED_SHADERS keeps wgpu's bounds checks in {trusted} too)");
            }
        }
    }
    if !adapters.iter().any(|a| a.chosen) {
        kiln::Gpu::new(&options)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The limits kiln's kernels depend on, as `kiln info` shows them.
fn limits_line(l: &wgpu::Limits) -> String {
    format!(
        "storage binding {} MiB, buffer {} MiB, workgroup storage {} KiB, invocations/workgroup {}, \
         workgroups/dim {}, storage buffers/stage {}, uniform buffers/stage {} of {} KiB",
        l.max_storage_buffer_binding_size >> 20,
        l.max_buffer_size >> 20,
        l.max_compute_workgroup_storage_size >> 10,
        l.max_compute_invocations_per_workgroup,
        l.max_compute_workgroups_per_dimension,
        l.max_storage_buffers_per_shader_stage,
        l.max_uniform_buffers_per_shader_stage,
        l.max_uniform_buffer_binding_size >> 10
    )
}

fn bench(args: &BenchArgs) -> kiln::Result<ExitCode> {
    let kernels = args.what == "kernels" || args.what == "all";
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
    let mut steps = Vec::new();
    if args.what == "steps" || args.what == "all" {
        let data = profile_data()?;
        for model in &args.models {
            let batch = if model == "gan" { args.gan_batch } else { args.vae_batch };
            let (trainer, train) = build_trainer(&gpu, model, batch, &data)?;
            let t = kiln::bench::steps::time_training_steps(&gpu, trainer.as_ref(), &train, args.timed_steps.max(1) as u64)?;
            if !args.json {
                println!(
                    "{model} step, batch {batch}: {:.1} ms, {:.1} images/s, {:.2} GFLOP/s as `kiln train` submits ({} steps back to back); \
                     one step alone {:.1} ms ({:.1} images/s); {} dispatches in one submit",
                    t.pipelined * 1e3,
                    t.images_per_second(),
                    t.flops / t.pipelined / 1e9,
                    t.steps,
                    t.alone * 1e3,
                    batch as f64 / t.alone,
                    t.dispatches
                );
            }
            steps.push(t.json(model));
        }
    }
    if args.json {
        let mut value = serde_json::json!({
            "adapter": gpu.describe(),
            "peak": { "fma_gflops": peak.fma_gflops, "copy_gbps": peak.copy_gbps },
        });
        if kernels {
            value["rows"] = rows.iter().map(|r| r.json()).collect();
        }
        if !steps.is_empty() {
            value["steps"] = steps.into();
        }
        println!("{value:#}");
    }
    Ok(ExitCode::SUCCESS)
}

/// A GAN or VAE trainer on `data`, as `kiln profile` and `kiln bench steps` measure them, and
/// the training images on the GPU that its gathers read.
fn build_trainer(gpu: &kiln::Gpu, model: &str, batch: usize, data: &kiln::data::Splits) -> kiln::Result<(Box<dyn kiln::train::run::Trainer>, kiln::train::data::GpuData)> {
    use kiln::train::{data::GpuData, gan::{Gan, GanConfig, Recipe}, vae::{VaeConfig, VaeTrainer}};
    let train = GpuData::upload(gpu, &data.train)?;
    let trainer: Box<dyn kiln::train::run::Trainer> = match model {
        "gan" => {
            let image = kiln::models::dcgan::ImageShape { channels: 1, size: 28 };
            let config = GanConfig { image, batch, recipe: Recipe::Paper, lr_g: None, lr_d: None, real_label: 1.0, seed: 0, ..GanConfig::default() };
            Box::new(Gan::new(gpu, config, &train)?)
        }
        "vae" | "vae-conv" | "vae-mlp" => {
            let test = GpuData::upload(gpu, &data.test)?;
            let kind = if model == "vae-mlp" { kiln::models::vae::Kind::Mlp } else { kiln::models::vae::Kind::Conv };
            let config = VaeConfig { kind, image: [1, 28, 28], latent: 20, hidden: 400, batch, lr: 1e-3, seed: 0, beta: 1.0, classes: None };
            Box::new(VaeTrainer::new(gpu, config, &train, &test)?)
        }
        other => return Err(kiln::Error::Invalid(format!("unknown model {other:?}: expected gan, vae or vae-mlp"))),
    };
    Ok((trainer, train))
}

/// `kiln train`, alone or as one rank of `mpirun -np N kiln train` (docs/DISTRIBUTED.md). A
/// rank that fails ends the whole job, so the others never wait in a collective for it.
fn train(args: &TrainArgs) -> kiln::Result<ExitCode> {
    let comm = kiln::dist::init()?;
    let result = train_on(args, comm.as_ref());
    if let Err(e) = &result {
        if comm.size() > 1 {
            eprintln!("kiln: rank {} of {}: {e}; ending the job", comm.rank(), comm.size());
            comm.abort(1);
        }
    }
    result
}

fn train_on(args: &TrainArgs, comm: &dyn kiln::dist::Collective) -> kiln::Result<ExitCode> {
    use kiln::data::{folder::{Color, FolderOptions}, source::Source};
    use kiln::train::{data::GpuData, run};
    // Rank 0 alone prints; the others train silently.
    let lead = comm.rank() == 0;
    macro_rules! say {
        ($($t:tt)*) => { if lead { println!($($t)*) } };
    }
    let started = std::time::Instant::now();
    let color = if args.image_size == 28 { Color::Gray } else { Color::Rgb };
    let splits = Source::parse(&args.data, &FolderOptions { size: args.image_size, color, recursive: true })?.load()?;
    // Each rank on a machine opens its own GPU of the best kind; --adapter and
    // WGPU_ADAPTER_NAME still choose by name.
    let gpu = kiln::Gpu::new(&kiln::GpuOptions { nth_of_best: comm.local_rank(), ..args.device.options() })?;
    if comm.size() > 1 {
        println!("rank {} of {}: adapter {}", comm.rank(), comm.size(), gpu.describe());
    } else {
        println!("adapter: {}", gpu.describe());
    }
    say!("data: {} training images of {}x{}x{}", splits.train.len(), splits.train.channels(), splits.train.height(), splits.train.width());
    let data = GpuData::upload(&gpu, &splits.train)?;
    let out = args.out.clone().unwrap_or_else(|| PathBuf::from("out").join(&args.model));
    let opts = run::RunOptions {
        out: out.clone(),
        steps: args.steps,
        epochs: args.epochs,
        checkpoint_every: args.checkpoint_every.max(1),
        sample_every: args.sample_every.max(1),
        log_every: args.log_every.max(1),
        resume: args.resume,
        seed: args.seed,
        eval: match args.eval_every {
            0 => None,
            every => {
                let image = splits.test.shape()[1..].try_into().expect("NCHW data");
                let backbone = kiln::train::score::Backbone::open_with(&gpu, &args.backbone, args.fid_weights.as_deref(), image)?;
                let eval = kiln::train::score::SampleEval::new(&gpu, backbone, &splits.test, every, args.eval_n, args.seed)?;
                say!("FID every {every} steps: {} generated vs {} test images, backbone {}", eval.n, eval.reference.n, eval.backbone.id);
                Some(std::sync::Arc::new(eval))
            }
        },
    };
    // --conditional: the training set's class count, which it must have.
    let conditional_classes = || -> kiln::Result<Option<usize>> {
        match (args.conditional, splits.train.num_classes()) {
            (false, _) => Ok(None),
            (true, Some(classes)) => Ok(Some(classes)),
            (true, None) => Err(kiln::Error::Invalid(format!("{}: --conditional needs labelled images (IDX label files, or one sub-folder per class)", args.data))),
        }
    };
    let mut vae_test = None;
    let trainer: Box<dyn run::Trainer> = match args.model.as_str() {
        "gan" => {
            use kiln::train::gan::{Gan, GanConfig, GanLoss, NamedRecipe};
            // The recipe's choices, then the flags given explicitly.
            let mut named = NamedRecipe::parse(&args.recipe)?;
            if let Some(loss) = &args.loss {
                named.loss = GanLoss::parse(loss)?;
            }
            if let Some(spec) = &args.spectral_norm {
                named.spectral_norm = kiln::models::dcgan::SpectralNorm::parse(spec)?;
            }
            if args.ema.is_some() || args.no_ema {
                named.ema = args.ema;
            }
            say!("recipe {}: {}", args.recipe, named.describe());
            if splits.train.height() != splits.train.width() {
                return Err(kiln::Error::Invalid(format!("the GAN needs square images, got {}x{}", splits.train.height(), splits.train.width())));
            }
            let image = kiln::models::dcgan::ImageShape { channels: splits.train.channels(), size: splits.train.height() };
            let config = GanConfig {
                image,
                batch: args.batch_size,
                recipe: named.recipe,
                lr_g: args.lr_g.or(args.lr),
                lr_d: args.lr_d.or(args.lr),
                real_label: args.real_label,
                seed: args.seed,
                loss: named.loss,
                n_critic: args.n_critic,
                betas: args.betas.as_ref().map(|b| (b[0], b[1])),
                ema: named.ema,
                ema_start_on_resume: args.ema.is_some(),
                spectral_norm: named.spectral_norm,
                gp_lambda: args.gp_lambda,
                r1: args.r1.map(|gamma| (gamma, args.r1_every)),
                augment: kiln::nn::augment::parse_policy(args.augment.as_deref().unwrap_or(""))?,
                conditional: conditional_classes()?.map(|classes| kiln::models::dcgan::Conditioning { classes }),
            };
            let gan = Gan::new(&gpu, config, &data)?;
            let (planned, naive) = gan.memory();
            say!("memory plan: intermediates {:.1} MiB pooled vs {:.1} MiB one buffer per tensor", planned as f64 / 1048576.0, naive as f64 / 1048576.0);
            Box::new(gan)
        }
        "vae" => {
            use kiln::train::vae::{VaeConfig, VaeTrainer};
            let kind = match args.vae_model.as_str() {
                "mlp" => kiln::models::vae::Kind::Mlp,
                "conv" => kiln::models::vae::Kind::Conv,
                other => return Err(kiln::Error::Invalid(format!("unknown --vae-model {other:?}: expected mlp or conv"))),
            };
            let image = [splits.train.channels(), splits.train.height(), splits.train.width()];
            let config = VaeConfig { kind, image, latent: args.latent, hidden: 400, batch: args.batch_size, lr: args.lr.unwrap_or(1e-3), seed: args.seed, beta: args.beta, classes: conditional_classes()? };
            let test = GpuData::upload(&gpu, &splits.test)?;
            let vae = VaeTrainer::new(&gpu, config, &data, &test)?;
            let (planned, naive) = vae.memory();
            say!("memory plan: intermediates {:.1} MiB pooled vs {:.1} MiB one buffer per tensor", planned as f64 / 1048576.0, naive as f64 / 1048576.0);
            vae_test = Some(test);
            Box::new(vae)
        }
        "classifier" => {
            use kiln::train::classifier::{ClassifierConfig, ClassifierTrainer};
            let Some(classes) = splits.train.num_classes() else {
                return Err(kiln::Error::Invalid(format!("{}: a classifier needs labelled images (IDX label files, or one sub-folder per class)", args.data)));
            };
            let image = [splits.train.channels(), splits.train.height(), splits.train.width()];
            let config = ClassifierConfig { image, classes, batch: args.batch_size, lr: args.lr.unwrap_or(1e-3), seed: args.seed };
            say!("classes: {classes}");
            Box::new(ClassifierTrainer::new(&gpu, config, &data, &splits.test)?)
        }
        other => return Err(kiln::Error::Invalid(format!("unknown model {other:?}: expected gan, vae or classifier"))),
    };
    say!("ready in {:.2} s (data, shaders, pipelines); training into {}", started.elapsed().as_secs_f64(), out.display());
    let sync = kiln::train::dist::SyncOptions { overlap: !args.no_overlap, bucket_bytes: (args.bucket_mb * (1 << 20) as f64).max(0.0) as u64 };
    let summary = run::run_on_with(&gpu, trainer.as_ref(), &data, &opts, comm, sync)?;
    let last: Vec<String> = summary.last.iter().map(|(n, v)| format!("{n} {v:.4}")).collect();
    say!(
        "trained {} steps at {:.1} images/s; {}; checkpoint {}; samples in {}",
        summary.steps,
        summary.images_per_second,
        last.join(", "),
        summary.checkpoint.display(),
        out.join("samples").display()
    );
    if let Some(classifier) = trainer.as_any().downcast_ref::<kiln::train::classifier::ClassifierTrainer>() {
        let (accuracy, loss) = classifier.evaluate(&gpu, &splits.test)?;
        say!("test set: accuracy {:.2}% on {} images, cross-entropy {loss:.4}", 100.0 * accuracy, splits.test.len());
    }
    if let (Some(test), Some(vae)) = (&vae_test, trainer.as_any().downcast_ref::<kiln::train::vae::VaeTrainer>()) {
        let (nats, mse) = vae.evaluate(&gpu, test)?;
        say!("test set: {nats:.2} nats per image (BCE(sum) + KL), reconstruction MSE {mse:.5} per pixel");
    }
    Ok(ExitCode::SUCCESS)
}

/// The built-in data set, small: profiling needs shapes, not many images.
fn profile_data() -> kiln::Result<kiln::data::Splits> {
    kiln::data::synthetic::digits(&kiln::data::synthetic::DigitsOptions { seed: 0, train: 1024, test: 256 })
}

fn profile(args: &ProfileArgs) -> kiln::Result<ExitCode> {
    let gpu = kiln::Gpu::new(&args.device.options())?;
    let (trainer, _) = build_trainer(&gpu, &args.model, args.batch_size, &profile_data()?)?;
    let dispatches: Vec<kiln::Dispatch> = trainer.step_dispatches().iter().flat_map(|l| l.iter().cloned()).collect();
    let peak = kiln::bench::measure_peak(&gpu)?;
    let timing = kiln::profile::Timing::best(&gpu);
    let report = kiln::profile::profile_dispatches(&gpu, &dispatches, args.steps.max(1), Some(peak), timing)?;
    if args.json {
        println!("{}", report.to_json());
    } else {
        report.print_table(args.by_layer);
    }
    if let Some(path) = &args.trace {
        report.write_trace(path)?;
        println!("trace written to {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// Loads data for a checkpoint's model: image folders are resized to its image side.
fn data_for(spec: &str, image: [usize; 3]) -> kiln::Result<kiln::data::Splits> {
    kiln::data::source::Source::parse(spec, &folder_options(image))?.load()
}

/// Image folders are read (resized, centre-cropped) to `image` = [channels, side, side].
fn folder_options(image: [usize; 3]) -> kiln::data::folder::FolderOptions {
    use kiln::data::folder::{Color, FolderOptions};
    let color = if image[0] == 1 { Color::Gray } else { Color::Rgb };
    FolderOptions { size: image[1] as u32, color, recursive: true }
}

/// A checkpoint for generating: a GAN's generator from its moving average unless `no_ema`,
/// said on stdout either way so numbers are never confused.
fn load_generator(gpu: &kiln::Gpu, checkpoint: &std::path::Path, no_ema: bool) -> kiln::Result<kiln::train::infer::Loaded> {
    let model = if no_ema { kiln::train::infer::load_live(gpu, checkpoint)? } else { kiln::train::infer::load(gpu, checkpoint)? };
    if model.averaged {
        // On stderr, so that --json output stays one JSON document.
        eprintln!("generator weights: the moving average (ema.*; --no-ema for the live weights)");
    }
    Ok(model)
}

fn sample(args: &SampleArgs) -> kiln::Result<ExitCode> {
    let gpu = kiln::Gpu::new(&args.device.options())?;
    let mut model = load_generator(&gpu, &args.checkpoint, args.no_ema)?;
    model.set_class(args.class)?;
    let grid = args.out.extension().is_some_and(|e| e.eq_ignore_ascii_case("png"));
    let images = match model.classes() {
        Some(classes) if grid && args.class.is_none() => {
            let mut rows = Vec::new();
            for class in 0..classes {
                model.set_class(Some(class))?;
                rows.extend(model.sample(&gpu, 8, args.seed)?);
            }
            println!("one row of 8 per class (0 to {}), the same z in every row", classes - 1);
            let [c, h, w] = model.image();
            kiln::data::images::save_grid(&rows, [classes * 8, c, h, w], 8, &args.out)?;
            rows
        }
        _ => {
            let images = model.sample(&gpu, args.n, args.seed)?;
            kiln::train::infer::save_images(&images, model.image(), &args.out)?;
            images
        }
    };
    let count = images.len() / model.image().iter().product::<usize>();
    println!("{count} {} samples written to {}", model.kind(), args.out.display());
    if model.kind() == "vae" && grid {
        let splits = data_for(&args.data, model.image())?;
        let views = model.vae_views(&gpu, &splits.test, args.seed)?;
        let beside = |suffix: &str| {
            let stem = args.out.file_stem().unwrap_or_default().to_string_lossy();
            args.out.with_file_name(format!("{stem}_{suffix}.png"))
        };
        let (recon, lerp) = (beside("reconstructions"), beside("interpolation"));
        views.save(&recon, &lerp)?;
        println!("{} test images and their reconstructions written to {}", views.shown.len(), recon.display());
        println!("{} interpolations between test images written to {}", views.pairs.len(), lerp.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn eval(args: &EvalArgs) -> kiln::Result<ExitCode> {
    use kiln::train::score::{score, take, Backbone, Wanted};
    let gpu = kiln::Gpu::new(&args.device.options())?;
    let report = |scores: kiln::train::score::Scores| {
        if args.json {
            println!("{}", scores.json());
        } else {
            println!("backbone {}: {}", scores.backbone, scores.backbone_about);
            scores.lines().iter().for_each(|l| println!("{l}"));
        }
    };
    let Some(checkpoint) = &args.checkpoint else {
        let Some(reference) = &args.reference else {
            return Err(kiln::Error::Invalid("eval needs --checkpoint, or --data with --reference to score one image set against another".into()));
        };
        // Inception takes any image size: it is opened for the scored set's shape (folders
        // read at 299x299 RGB).
        let inception_image = [3, kiln::models::inception::INPUT_SIZE, kiln::models::inception::INPUT_SIZE];
        // Inception's scored set is read first (once), for the shape the backbone opens with.
        let (backbone, scored, folder_image) = if args.backbone == kiln::train::score::INCEPTION {
            let scored = image_set(&args.data, inception_image)?;
            let image = scored.shape()[1..].try_into().expect("NCHW data");
            (Backbone::open_with(&gpu, &args.backbone, args.fid_weights.as_deref(), image)?, Some(scored), inception_image)
        } else {
            let backbone = Backbone::open(&gpu, &args.backbone)?;
            let image = backbone.image;
            (backbone, None, image)
        };
        let wanted: Wanted = args.metrics.as_deref().unwrap_or("fid,kid,pr").parse()?;
        let checked = |spec: &str, data: kiln::data::Dataset| {
            if data.shape()[1..] != backbone.image {
                return Err(kiln::Error::Invalid(format!("{spec}: images of {:?}, the backbone {} takes {:?}", &data.shape()[1..], backbone.id, backbone.image)));
            }
            Ok(data)
        };
        let scored = checked(&args.data, match scored {
            Some(data) => data,
            None => image_set(&args.data, folder_image)?,
        })?;
        let reference_set = checked(reference, image_set(reference, folder_image)?)?;
        let seed = args.seed.unwrap_or(0);
        let (a, b) = (take(&scored, args.n, seed)?, take(&reference_set, args.n, seed ^ 1)?);
        report(score(&gpu, &backbone, wanted, (&args.data, &a), (reference, &b), seed)?);
        return Ok(ExitCode::SUCCESS);
    };
    if args.reference.is_some() {
        return Err(kiln::Error::Invalid("--reference is for scoring --data without a checkpoint; a checkpoint's samples are scored against --data's test split".into()));
    }
    let mut model = load_generator(&gpu, checkpoint, args.no_ema)?;
    let seed = args.seed.unwrap_or(model.seed);
    let splits = data_for(&args.data, model.image())?;
    if let Some(metrics) = &args.metrics {
        if model.kind() == "classifier" {
            return Err(kiln::Error::Invalid(format!("{}: --metrics scores a GAN's or VAE's samples; a classifier is evaluated by its accuracy (drop --metrics)", checkpoint.display())));
        }
        let backbone = Backbone::open_with(&gpu, &args.backbone, args.fid_weights.as_deref(), model.image())?;
        if backbone.image != model.image() {
            return Err(kiln::Error::Invalid(format!("{}: the model makes {:?} images, the backbone {} takes {:?}", checkpoint.display(), model.image(), backbone.id, backbone.image)));
        }
        let reference = take(&splits.test, args.n, seed)?;
        let generated = model.sample(&gpu, args.n, seed)?;
        let name = format!("{} samples", checkpoint.display());
        // A conditional GAN's image i is of class i mod classes.
        let intended: Option<Vec<usize>> = model.classes().filter(|&k| k == backbone.classes).map(|k| (0..args.n).map(|i| i % k).collect());
        let reference = (&format!("{} test", args.data)[..], &reference[..]);
        report(kiln::train::score::score_labelled(&gpu, &backbone, metrics.parse()?, (&name, &generated), intended.as_deref(), reference, seed)?);
        return Ok(ExitCode::SUCCESS);
    }
    let test = if args.binarize { splits.test.binarized(seed)? } else { splits.test };
    let result = model.evaluate(&gpu, &test, seed, args.iwae_k)?;
    if args.json {
        println!("{}", result.json());
    } else {
        println!("{}", result.line());
    }
    Ok(ExitCode::SUCCESS)
}

/// One set of images (`SPEC[:train|:test|:all]`), image folders read at the given shape.
fn image_set(spec: &str, image: [usize; 3]) -> kiln::Result<kiln::data::Dataset> {
    kiln::data::source::image_set(spec, &folder_options(image))
}

fn encode(args: &EncodeArgs) -> kiln::Result<ExitCode> {
    let gpu = kiln::Gpu::new(&args.device.options())?;
    let mut model = kiln::train::infer::load(&gpu, &args.checkpoint)?;
    let splits = data_for(&args.data, model.image())?;
    // A conditional VAE encodes each image with its label, and the file keeps them.
    let labels = model.classes().map(|_| kiln::train::infer::test_labels(&splits.train)).transpose()?;
    let (mu, logvar) = model.encode(&gpu, &splits.train.to_f32(0.0, 1.0), labels.as_deref())?;
    let n = splits.train.len();
    let latents = kiln::train::infer::latents_checkpoint(mu, logvar, labels, n);
    latents.save(&args.out)?;
    println!("{n} images encoded to {}", args.out.display());
    Ok(ExitCode::SUCCESS)
}

fn decode(args: &DecodeArgs) -> kiln::Result<ExitCode> {
    let gpu = kiln::Gpu::new(&args.device.options())?;
    let mut model = kiln::train::infer::load(&gpu, &args.checkpoint)?;
    let latents = kiln::train::Checkpoint::load(&args.latents)?;
    let images = model.decode_file(&gpu, &latents, &args.latents.display().to_string())?;
    kiln::train::infer::save_images(&images, model.image(), &args.out)?;
    println!("{} images decoded to {}", images.len() / model.image().iter().product::<usize>(), args.out.display());
    Ok(ExitCode::SUCCESS)
}
