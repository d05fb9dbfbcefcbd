//! A DCGAN trained through kiln's library API rather than `kiln train gan`: the generator and
//! discriminator of `models::dcgan`, a discriminator step and a generator step as two graphs
//! over one store of parameters, an Adam per network, one submit per training step, and a
//! grid of samples from fixed noise.
//!
//! ```sh
//! cargo run --release --example dcgan -- [--steps 6] [--batch-size 8] [--data synthetic|mnist|DIR]
//!     [--image-size 28|32|64] [--out out/examples/dcgan.png]
//! ```
//!
//! On Mesa's CPU drivers a step at 28×28 and batch 8 takes seconds, hence the few steps; on a
//! GPU try `--steps 2000 --batch-size 64`. A folder of photos at `--image-size 64` trains the
//! RGB model with two more upsampling blocks.

use kiln::data::folder::{Color, FolderOptions};
use kiln::data::{images, Source};
use kiln::graph::ops::{Add, Fill, Loss, LossKind, RandomFill, Reduction};
use kiln::graph::{Graph, Program, Store, Tensor};
use kiln::models::dcgan::{self, ImageShape, LATENT};
use kiln::nn::{self, InitRng, Mode};
use kiln::optim::{Adam, Config, Optimizer};
use kiln::train::data::GpuData;
use kiln::{Gpu, GpuOptions, Result};
use std::path::PathBuf;

const SAMPLES: usize = 36;

fn main() {
    if let Err(e) = run(std::env::args().skip(1).collect()) {
        eprintln!("dcgan: {e}");
        std::process::exit(1);
    }
}

/// Trains, writes the grid and returns each step's (d_loss, g_loss).
pub fn run(args: Vec<String>) -> Result<Vec<(f32, f32)>> {
    let steps: u64 = arg(&args, "--steps", 6)?;
    let batch: usize = arg(&args, "--batch-size", 8)?;
    let size: u32 = arg(&args, "--image-size", 28)?;
    let data: String = arg(&args, "--data", "synthetic".into())?;
    let out: PathBuf = arg(&args, "--out", "out/examples/dcgan.png".into())?;

    let gpu = Gpu::new(&GpuOptions::default())?;
    // Folders load as 28×28 gray or, at 32 and 64, RGB; the models take their shape from the data.
    let color = if size == 28 { Color::Gray } else { Color::Rgb };
    let train = Source::parse(&data, &FolderOptions { size, color, recursive: true })?.load()?.train;
    let image = ImageShape { channels: train.channels(), size: train.height() };
    let data = GpuData::upload(&gpu, &train)?;
    let per_epoch = (train.len() / batch) as u64;
    if per_epoch == 0 {
        kiln::bail!(Invalid, "{:?} has {} training images, fewer than one batch of {batch}", train.name, train.len());
    }

    // The networks are sized to the data: 28×28 starts G at 7×7, 32 and 64 at 8×8, with one
    // upsampling block per doubling. Each is a parameter group of its own, so each gets its
    // own Adam; the DCGAN paper's N(0, 0.02) initialisation replaces PyTorch's default.
    let (generator, discriminator) = (dcgan::generator(image)?, dcgan::discriminator(image)?);
    let mut store = Store::new();
    let mut rng = InitRng::new(0);
    for (model, group) in [(&generator, "generator"), (&discriminator, "discriminator")] {
        let (mut params, states) = model.init(&mut rng);
        dcgan::paper_init(&mut params, &mut rng);
        nn::register(&gpu, &mut store, group, params, states)?;
    }
    // Both steps draw the same z (same op, same seed, same step), so the generator step
    // trains against exactly the fakes the discriminator just saw.
    let noise = RandomFill { normal: true, a: 0.0, b: 1.0, seed: 1, shape: vec![batch, LATENT] };
    let bce = |g: &mut Graph, logits: Tensor, label: f32, name: &str| -> Result<Tensor> {
        let target = g.apply1(Fill { value: label, shape: vec![batch, 1] }, &[], name)?;
        g.apply1(Loss(LossKind::BceWithLogits(Reduction::Mean)), &[logits, target], name)
    };

    // Discriminator step: real images → 1, G(z) → 0. Only D's parameters get gradients.
    // Dropout seeds differ per pass so real and fake batches get independent masks.
    let mut g = Graph::new();
    let (c, s) = (image.channels, image.size);
    let real = g.input("real", &[batch, c, s, s]);
    let z = g.apply1(noise.clone(), &[], "z")?;
    let fake = generator.forward(&mut g, z, Mode::train(0))?;
    let on_real = discriminator.forward(&mut g, real, Mode::train(2))?;
    let on_fake = discriminator.forward(&mut g, fake, Mode::train(3))?;
    let (loss_real, loss_fake) = (bce(&mut g, on_real, 1.0, "real")?, bce(&mut g, on_fake, 0.0, "fake")?);
    let d_loss = g.apply1(Add, &[loss_real, loss_fake], "d_loss")?;
    let grads = g.gradients(d_loss, &discriminator.params(&g))?;
    let d_step = Program::compile(&gpu, &g, &mut store, &[d_loss], &grads)?;

    // Generator step: G(z) through the just-updated D → 1. G's batch-norm running statistics
    // were updated in the D step already, so not again here.
    let mut g = Graph::new();
    let z = g.apply1(noise, &[], "z")?;
    let fake = generator.forward(&mut g, z, Mode { update_running: false, ..Mode::train(0) })?;
    let on_fake = discriminator.forward(&mut g, fake, Mode::train(4))?;
    let g_loss = bce(&mut g, on_fake, 1.0, "g_loss")?;
    let grads = g.gradients(g_loss, &generator.params(&g))?;
    let g_step = Program::compile(&gpu, &g, &mut store, &[g_loss], &grads)?;

    // The gather writes each batch, mapped to tanh's [-1, 1], into D's input "real".
    let gather = [data.gather(&gpu, batch, 2.0 / 255.0, -1.0, d_step.buffer(real)?)?];
    let adam = Config::Adam(Adam { lr: 2e-4, beta1: 0.5, ..Adam::default() });
    let (opt_d, opt_g) = (Optimizer::new(&gpu, &store, "discriminator", adam)?, Optimizer::new(&gpu, &store, "generator", adam)?);

    let mut losses = Vec::new();
    for step in 0..steps {
        if step % per_epoch == 0 {
            data.shuffle(&gpu, 0, step / per_epoch)?;
        }
        data.select(&gpu, &gather[0], batch, (step % per_epoch) as usize);
        // Moves the noise and dropout streams on: fresh random numbers for this step.
        d_step.set_step(&gpu, step)?;
        g_step.set_step(&gpu, step)?;
        // A whole GAN step is one submit: gather, D forward/backward, D's Adam, then G's.
        gpu.submit("dcgan step", &[&gather, &d_step.dispatches, &opt_d.dispatches, &g_step.dispatches, &opt_g.dispatches], None)?;
        // Reading the losses waits for the GPU; fine at this rate (`train::run` does not wait).
        let (loss_d, loss_g) = (gpu.read(d_step.buffer(d_loss)?)?[0], gpu.read(g_step.buffer(g_loss)?)?[0]);
        println!("step {}/{steps}: d_loss {loss_d:.4} g_loss {loss_g:.4}", step + 1);
        losses.push((loss_d, loss_g));
    }

    // Samples from fixed noise (the same grid for the same seed, run after run). Batch norm
    // normalises by the samples' own statistics, as PyTorch's DCGAN tutorial samples: the
    // running averages need hundreds of steps to settle.
    let mut g = Graph::new();
    let z = g.input("sample_z", &[SAMPLES, LATENT]);
    let fakes = generator.forward(&mut g, z, Mode { update_running: false, ..Mode::train(0) })?;
    let sampler = Program::compile(&gpu, &g, &mut store, &[fakes], &[])?;
    gpu.write(sampler.buffer(z)?, &InitRng::new(7).normal(SAMPLES * LATENT, 0.0, 1.0))?;
    sampler.run(&gpu)?;
    let pixels: Vec<f32> = gpu.read(sampler.buffer(fakes)?)?.iter().map(|v| (v + 1.0) / 2.0).collect();
    images::save_grid(&pixels, [SAMPLES, c, s, s], 6, &out)?;
    println!("{SAMPLES} samples written to {}", out.display());
    Ok(losses)
}

/// The value after `name` on the command line, or `default` when `name` is absent.
fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> Result<T> {
    match args.iter().position(|a| a == name) {
        None => Ok(default),
        Some(i) => args.get(i + 1).and_then(|v| v.parse().ok()).ok_or_else(|| kiln::Error::Invalid(format!("{name} needs a valid value"))),
    }
}
