//! The GAN training step: one program, recorded once and submitted whole each step. The paper
//! recipe alternates as PyTorch's DCGAN does: D's half of the program, D's Adam, then G's half,
//! which runs G(z) through the updated D while reusing the first half's G(z) and its
//! activations, then G's Adam. The seed recipe updates both from one forward pass, as the
//! TensorFlow tutorial's `train_step` does: the whole program, then both Adams.

use super::data::GpuData;
use crate::gpu::{Dispatch, Gpu};
use crate::graph::ops::{Add, Fill, Loss, LossKind, RandomFill};
use crate::graph::{Graph, Program, Store, Tensor};
use crate::kernels::loss::Reduction;
use crate::models::dcgan::{self, ImageShape, LATENT};
use crate::nn::{self, InitRng, Mode, Sequential};
use crate::optim::{Adam, Config, Optimizer};
use crate::Result;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recipe {
    /// The TensorFlow tutorial exactly: framework-default init, Adam(1e-4) for both, and both
    /// networks' gradients from one forward pass, applied together.
    Seed,
    /// The DCGAN paper: N(0, 0.02) weights, BN γ N(1, 0.02), Adam(2e-4, β1 = 0.5).
    Paper,
}

#[derive(Clone, Debug)]
pub struct GanConfig {
    pub image: ImageShape,
    pub batch: usize,
    pub recipe: Recipe,
    /// Learning rates; None takes the recipe's.
    pub lr_g: Option<f32>,
    pub lr_d: Option<f32>,
    /// One-sided label smoothing: the discriminator's target for real images (1 without).
    pub real_label: f32,
    pub seed: u64,
}

impl GanConfig {
    fn adam(&self, lr: Option<f32>) -> Adam {
        match self.recipe {
            Recipe::Seed => Adam { lr: lr.unwrap_or(1e-4), eps: 1e-7, ..Adam::default() },
            Recipe::Paper => Adam { lr: lr.unwrap_or(2e-4), beta1: 0.5, ..Adam::default() },
        }
    }
}

pub struct Gan {
    pub config: GanConfig,
    pub store: Store,
    pub generator: Sequential,
    pub discriminator: Sequential,
    gather: Dispatch,
    program: Program,
    /// The paper recipe's first node of G's half, where D's update runs.
    d_update_before: Option<usize>,
    pub opt_d: Optimizer,
    pub opt_g: Optimizer,
    /// Scalars read back for logging: d_loss, g_loss, mean D(real) logit, mean D(fake) logit.
    pub logged: Vec<crate::gpu::Buffer>,
    sampler: Program,
    sample_images: Tensor,
}

/// Streams of the step's random numbers: noise, and the dropout of each discriminator pass.
/// XORed into the run's seed.
pub const NOISE: u64 = 1;
pub const DROPOUT_REAL: u64 = 2;
pub const DROPOUT_FAKE: u64 = 3;
pub const DROPOUT_G_STEP: u64 = 4;

pub const SAMPLES: usize = 64;

fn mean_logit(g: &mut Graph, logits: Tensor) -> Result<Tensor> {
    g.apply1(crate::graph::ops::Sum { all: true, mean: true }, &[logits], "mean_logit")
}

impl Gan {
    pub fn new(gpu: &Gpu, config: GanConfig, data: &GpuData) -> Result<Gan> {
        let generator = dcgan::generator(config.image)?;
        let discriminator = dcgan::discriminator(config.image)?;
        let mut store = Store::new();
        let mut rng = InitRng::new(config.seed);
        for (model, group) in [(&generator, "generator"), (&discriminator, "discriminator")] {
            let (mut params, states) = model.init(&mut rng);
            if config.recipe == Recipe::Paper {
                dcgan::paper_init(&mut params, &mut rng);
            }
            nn::register(gpu, &mut store, group, params, states)?;
        }
        let b = config.batch;
        let ImageShape { channels: c, size: s } = config.image;
        let seed = config.seed;
        let noise = RandomFill { normal: true, a: 0.0, b: 1.0, seed: seed ^ NOISE, shape: vec![b, LATENT] };
        // Mean BCE of `logits` against a constant `label`, as nodes `target` and `loss`.
        let bce = |g: &mut Graph, logits: Tensor, label: f32, [target, loss]: [&str; 2]| -> Result<Tensor> {
            let target = g.apply1(Fill { value: label, shape: vec![b, 1] }, &[], target)?;
            g.apply1(Loss(LossKind::BceWithLogits(Reduction::Mean)), &[logits, target], loss)
        };

        // Discriminator: real batch → 1 (or the smoothed label), G(z) → 0.
        let mut g = Graph::new();
        let real = g.input("real", &[b, c, s, s]);
        let z = g.apply1(noise, &[], "noise")?;
        let fake = generator.forward(&mut g, z, Mode::train(0))?;
        let d_real = discriminator.forward(&mut g, real, Mode::train(seed ^ DROPOUT_REAL))?;
        let d_fake = discriminator.forward(&mut g, fake, Mode::train(seed ^ DROPOUT_FAKE))?;
        let l_real = bce(&mut g, d_real, config.real_label, ["real_label", "d_loss_real"])?;
        let l_fake = bce(&mut g, d_fake, 0.0, ["fake_label", "d_loss_fake"])?;
        let d_loss = g.apply1(Add, &[l_real, l_fake], "d_loss")?;
        let (m_real, m_fake) = (mean_logit(&mut g, d_real)?, mean_logit(&mut g, d_fake)?);
        let d_params = discriminator.params(&g);
        let mut grads = g.gradients(d_loss, &d_params)?;
        // Generator: D(G(z)) → 1.
        let (g_loss, d_update_before) = match config.recipe {
            // The tutorial's step: G's loss from the same D(G(z)), before either update.
            Recipe::Seed => (bce(&mut g, d_fake, 1.0, ["ones", "g_loss"])?, None),
            // G's half: the same G(z) through D once D's update has run.
            Recipe::Paper => {
                let split = g.nodes.len();
                let d_fake = discriminator.forward(&mut g, fake, Mode::train(seed ^ DROPOUT_G_STEP))?;
                (bce(&mut g, d_fake, 1.0, ["ones", "g_loss"])?, Some(split))
            }
        };
        let g_params = generator.params(&g);
        grads.extend(g.gradients(g_loss, &g_params)?);
        let program = Program::compile(gpu, &g, &mut store, &[d_loss, g_loss, m_real, m_fake], &grads)?;
        let logged = [d_loss, g_loss, m_real, m_fake].iter().map(|&t| program.buffer(t).clone()).collect();

        // Samples from fixed noise. Batch norm normalises by the 64 samples' own statistics,
        // as PyTorch's DCGAN tutorial samples: the running averages (Keras' momentum 0.01) need
        // hundreds of steps to settle, and grids of early steps would show only grey.
        let mut g = Graph::new();
        let sample_z = g.input("sample_z", &[SAMPLES, LATENT]);
        let sample_images = generator.forward(&mut g, sample_z, Mode { update_running: false, ..Mode::train(0) })?;
        let sampler = Program::compile(gpu, &g, &mut store, &[sample_images], &[])?;

        let real_buffer = store.input_buffer("real").expect("compiled").buffer.clone();
        let gather = data.gather(gpu, b, 2.0 / 255.0, -1.0, &real_buffer)?;
        let opt_d = Optimizer::new(gpu, &store, "discriminator", Config::Adam(config.adam(config.lr_d)))?;
        let opt_g = Optimizer::new(gpu, &store, "generator", Config::Adam(config.adam(config.lr_g)))?;
        Ok(Gan { config, store, generator, discriminator, gather, program, d_update_before, opt_d, opt_g, logged, sampler, sample_images })
    }

    /// Bytes of the step's pooled intermediates, planned and naive.
    pub fn memory(&self) -> (u64, u64) {
        (self.program.memory.planned, self.program.memory.naive)
    }

    /// Everything one training step submits, in order.
    pub fn step_dispatches(&self) -> Vec<&[Dispatch]> {
        let gather = std::slice::from_ref(&self.gather);
        match self.d_update_before {
            Some(node) => {
                let (d_half, g_half) = self.program.split_at_node(node);
                vec![gather, d_half, &self.opt_d.dispatches, g_half, &self.opt_g.dispatches]
            }
            None => vec![gather, &self.program.dispatches, &self.opt_d.dispatches, &self.opt_g.dispatches],
        }
    }

    /// Points the recorded step at training step `step` (noise and dropout streams) and batch
    /// `batch_index` of the epoch's order.
    pub fn prepare(&self, gpu: &Gpu, data: &GpuData, step: u64, batch_index: usize) -> Result<()> {
        data.select(gpu, &self.gather, self.config.batch, batch_index);
        self.program.set_step(gpu, step)
    }

    /// Generator outputs in [−1, 1] for `noise` ([SAMPLES, LATENT]).
    pub fn sample(&self, gpu: &Gpu, noise: &[f32]) -> Result<Vec<f32>> {
        gpu.write(&self.store.input_buffer("sample_z").expect("compiled").buffer, noise)?;
        self.sampler.run(gpu)?;
        gpu.read(self.sampler.buffer(self.sample_images))
    }
}

impl super::run::Trainer for Gan {
    fn kind(&self) -> &'static str {
        "gan"
    }
    fn batch(&self) -> usize {
        self.config.batch
    }
    fn store(&self) -> &Store {
        &self.store
    }
    fn optimizers(&self) -> Vec<&Optimizer> {
        vec![&self.opt_d, &self.opt_g]
    }
    fn logged(&self) -> Vec<(&'static str, crate::gpu::Buffer)> {
        ["d_loss", "g_loss", "d_real", "d_fake"].into_iter().zip(self.logged.iter().cloned()).collect()
    }
    fn step_dispatches(&self) -> Vec<&[Dispatch]> {
        Gan::step_dispatches(self)
    }
    fn prepare(&self, gpu: &Gpu, data: &GpuData, step: u64, batch_index: usize) -> Result<()> {
        Gan::prepare(self, gpu, data, step, batch_index)
    }
    fn generate(&self, gpu: &Gpu, n: usize, seed: u64) -> Option<Result<Vec<f32>>> {
        Some(super::score::generate_in_batches(n, SAMPLES, LATENT, seed, |z| Ok(self.sample(gpu, z)?.into_iter().map(|v| (v + 1.0) / 2.0).collect())))
    }
    fn save_samples(&self, gpu: &Gpu, dir: &std::path::Path, step: u64) -> Result<()> {
        let images = self.sample(gpu, &fixed_noise(self.config.seed))?;
        let unit: Vec<f32> = images.iter().map(|v| (v + 1.0) / 2.0).collect();
        let ImageShape { channels, size } = self.config.image;
        crate::data::images::save_grid(&unit, [SAMPLES, channels, size, size], 8, dir.join(format!("step_{step:07}.png")))
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
    fn config_json(&self) -> String {
        let c = &self.config;
        serde_json::json!({
            "model": "dcgan", "channels": c.image.channels, "size": c.image.size, "batch": c.batch,
            "recipe": format!("{:?}", c.recipe).to_lowercase(), "lr_g": c.lr_g, "lr_d": c.lr_d,
            "real_label": c.real_label, "seed": c.seed,
        })
        .to_string()
    }
}

/// The same noise for every sample grid of a run, so grids compare across steps.
pub fn fixed_noise(seed: u64) -> Vec<f32> {
    InitRng::new(seed ^ 0x5A3D_1E5F_1EED).normal(SAMPLES * LATENT, 0.0, 1.0)
}
