//! A VAE written against kiln's library API rather than `kiln train vae`: the model from `nn`
//! layers, the loss from graph ops, gradients appended to the same graph, one compiled
//! `Program` per step, Adam, and a PNG grid of samples.
//!
//! ```sh
//! cargo run --release --example vae -- [--steps 200] [--batch-size 64] [--data synthetic|mnist|DIR]
//!     [--image-size 28] [--out out/examples/vae.png]
//! ```
//!
//! The network is PyTorch's example VAE (784-400-20). A folder of images (`--data photos/
//! --image-size 32`) changes only its input and output width: 3·32·32 RGB pixels.

use kiln::data::folder::{Color, FolderOptions};
use kiln::data::{images, Source};
use kiln::graph::ops::{Act, Add, Loss, LossKind, RandomFill, Reduction, Reparameterize};
use kiln::graph::{Graph, Program, Store};
use kiln::nn::{self, act, linear, InitRng, Mode, Sequential};
use kiln::optim::{Adam, Config, Optimizer};
use kiln::train::data::GpuData;
use kiln::{Gpu, GpuOptions, Result};
use std::path::PathBuf;

const HIDDEN: usize = 400;
const LATENT: usize = 20;
const SAMPLES: usize = 64;

fn main() {
    if let Err(e) = run(std::env::args().skip(1).collect()) {
        eprintln!("vae: {e}");
        std::process::exit(1);
    }
}

pub fn run(args: Vec<String>) -> Result<()> {
    let steps: u64 = arg(&args, "--steps", 200)?;
    let batch: usize = arg(&args, "--batch-size", 64)?;
    let size: u32 = arg(&args, "--image-size", 28)?;
    let data: String = arg(&args, "--data", "synthetic".into())?;
    let out: PathBuf = arg(&args, "--out", "out/examples/vae.png".into())?;

    // The most capable adapter wgpu finds; WGPU_BACKEND and WGPU_ADAPTER_NAME choose another.
    let gpu = Gpu::new(&GpuOptions::default())?;
    // Image folders are resized and centre-cropped to `size`: gray at 28 like MNIST, else RGB.
    let color = if size == 28 { Color::Gray } else { Color::Rgb };
    let train = Source::parse(&data, &FolderOptions { size, color, recursive: true })?.load()?.train;
    let [_, c, h, w] = train.shape();
    let pixels = c * h * w;
    // The images go to the GPU once, as bytes; every step gathers its batch there.
    let data = GpuData::upload(&gpu, &train)?;
    let per_epoch = (train.len() / batch) as u64;
    if per_epoch == 0 {
        kiln::bail!(Invalid, "{:?} has {} training images, fewer than one batch of {batch}", train.name, train.len());
    }

    // The model: an encoder with two heads, (mu, logvar), and a decoder to pixel probabilities.
    let encoder = Sequential::new("encoder.", vec![linear(pixels, HIDDEN), act(Act::Relu)]);
    let to_mu = Sequential::new("mu.", vec![linear(HIDDEN, LATENT)]);
    let to_logvar = Sequential::new("logvar.", vec![linear(HIDDEN, LATENT)]);
    let decoder = Sequential::new("decoder.", vec![linear(LATENT, HIDDEN), act(Act::Relu), linear(HIDDEN, pixels), act(Act::Sigmoid)]);
    let parts = [&encoder, &to_mu, &to_logvar, &decoder];
    // Parameters live on the GPU in a store; one group, so one Adam dispatch updates them all.
    let mut store = Store::new();
    nn::register_models(&gpu, &mut store, "vae", &parts, &mut InitRng::new(0))?;

    // One training step as a graph; every op checks its input shapes as it is added.
    let mut g = Graph::new();
    let x = g.input("x", &[batch, pixels]);
    let hidden = encoder.forward(&mut g, x, Mode::train(0))?;
    let mu = to_mu.forward(&mut g, hidden, Mode::train(0))?;
    let logvar = to_logvar.forward(&mut g, hidden, Mode::train(0))?;
    // z = mu + exp(logvar / 2)·eps, with eps drawn on the GPU (fresh each step, see set_step).
    let eps = g.apply1(RandomFill { normal: true, a: 0.0, b: 1.0, seed: 1, shape: vec![batch, LATENT] }, &[], "eps")?;
    let z = g.apply1(Reparameterize, &[mu, logvar, eps], "z")?;
    let recon = decoder.forward(&mut g, z, Mode::train(0))?;
    // PyTorch's example loss: BCE summed over pixels and images, plus KL(q(z|x) ‖ N(0, 1)).
    let bce = g.apply1(Loss(LossKind::Bce(Reduction::Sum)), &[recon, x], "bce")?;
    let kl = g.apply1(Loss(LossKind::KlNormal), &[mu, logvar], "kl")?;
    let loss = g.apply1(Add, &[bce, kl], "loss")?;
    // Backward appends the gradient ops to the graph. Compiling plans the memory and creates
    // every pipeline and bind group once; each step only replays them.
    let params: Vec<_> = parts.iter().flat_map(|p| p.params(&g)).collect();
    let grads = g.gradients(loss, &params)?;
    let program = Program::compile(&gpu, &g, &mut store, &[loss], &grads)?;
    let adam = Optimizer::new(&gpu, &store, "vae", Config::Adam(Adam { lr: 1e-3, ..Adam::default() }))?;
    // The gather writes each batch, as pixels / 255, straight into the program's input x.
    let gather = [data.gather(&gpu, batch, 1.0 / 255.0, 0.0, program.buffer(x)?)?];

    for step in 0..steps {
        if step % per_epoch == 0 {
            data.shuffle(&gpu, 0, step / per_epoch)?;
        }
        data.select(&gpu, &gather[0], batch, (step % per_epoch) as usize);
        program.set_step(&gpu, step)?;
        // Gather, forward, backward and Adam in one submit; nothing comes back to the CPU...
        gpu.submit("vae step", &[&gather, &program.dispatches, &adam.dispatches], None)?;
        // ...but the loss, now and then. This read waits for the GPU; `train::run` copies
        // losses into a `Readback` ring instead, which never stalls the next step.
        if step % 25 == 0 || step + 1 == steps {
            let nats = gpu.read(program.buffer(loss)?)?[0] / batch as f32;
            println!("step {:4}/{steps}: loss {nats:.1} nats per image", step + 1);
        }
    }

    // Sampling is the decoder alone on z ~ N(0, 1): a second program over the same store.
    let mut g = Graph::new();
    let z = g.input("z", &[SAMPLES, LATENT]);
    let images = decoder.forward(&mut g, z, Mode::eval())?;
    let sampler = Program::compile(&gpu, &g, &mut store, &[images], &[])?;
    gpu.write(sampler.buffer(z)?, &InitRng::new(1).normal(SAMPLES * LATENT, 0.0, 1.0))?;
    sampler.run(&gpu)?;
    images::save_grid(&gpu.read(sampler.buffer(images)?)?, [SAMPLES, c, h, w], 8, &out)?;
    println!("{SAMPLES} samples written to {}", out.display());
    Ok(())
}

/// The value after `name` on the command line, or `default` when `name` is absent.
fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> Result<T> {
    match args.iter().position(|a| a == name) {
        None => Ok(default),
        Some(i) => args.get(i + 1).and_then(|v| v.parse().ok()).ok_or_else(|| kiln::Error::Invalid(format!("{name} needs a valid value"))),
    }
}
