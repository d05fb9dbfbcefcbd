//! The GAN training step: one program, recorded once and submitted whole each step. The paper
//! recipe alternates as PyTorch's DCGAN does: D's half of the program, D's Adam, then G's half,
//! which runs G(z) through the updated D while reusing the first half's G(z) and its
//! activations, then G's Adam. The seed recipe updates both from one forward pass, as the
//! TensorFlow tutorial's `train_step` does: the whole program, then both Adams.

use super::data::GpuData;
use crate::gpu::{Dispatch, Gpu};
use crate::graph::ops::{Act, Activation, Add, Fill, Loss, LossKind, RandomFill, Scale, Sum};
use crate::graph::{Graph, Program, Store, Tensor};
use crate::kernels::loss::Reduction;
use crate::models::dcgan::{self, Conditioning, ImageShape, Labels, SpectralNorm, LATENT};
use crate::nn::augment::Policy;
use crate::nn::{self, InitRng, Mode, Sequential};
use crate::optim::{Adam, Config, Ema, Optimizer};
use crate::Result;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recipe {
    /// The TensorFlow tutorial exactly: framework-default init, Adam(1e-4) for both, and both
    /// networks' gradients from one forward pass, applied together.
    Seed,
    /// The DCGAN paper: N(0, 0.02) weights, BN γ N(1, 0.02), Adam(2e-4, β1 = 0.5).
    Paper,
}

impl Recipe {
    /// The schedule's name, as checkpoints and the training log write it.
    pub fn name(self) -> &'static str {
        match self {
            Recipe::Seed => "seed",
            Recipe::Paper => "paper",
        }
    }
}

/// A `--recipe` by name: the update schedule and initialisation ([`Recipe`]) and the values it
/// gives the loss, spectral normalization and generator average unless their own flags are
/// given. `paper` and `seed` are those two schedules alone; the others are combinations that
/// measured well on MNIST (docs/TRAINING.md).
#[derive(Clone, Copy, Debug)]
pub struct NamedRecipe {
    pub name: &'static str,
    pub recipe: Recipe,
    pub loss: GanLoss,
    pub spectral_norm: SpectralNorm,
    pub ema: Option<f32>,
}

/// Every `--recipe`, the default first.
pub const RECIPES: [NamedRecipe; 3] = [
    NamedRecipe { name: "paper-ema", recipe: Recipe::Paper, loss: GanLoss::Bce, spectral_norm: SpectralNorm::NONE, ema: Some(0.999) },
    NamedRecipe { name: "paper", recipe: Recipe::Paper, loss: GanLoss::Bce, spectral_norm: SpectralNorm::NONE, ema: None },
    NamedRecipe { name: "seed", recipe: Recipe::Seed, loss: GanLoss::Bce, spectral_norm: SpectralNorm::NONE, ema: None },
];

impl NamedRecipe {
    pub fn parse(name: &str) -> Result<NamedRecipe> {
        match RECIPES.iter().find(|r| r.name == name) {
            Some(r) => Ok(*r),
            None => crate::bail!(
                Invalid,
                "unknown --recipe {name:?}: expected {}",
                RECIPES.iter().map(|r| r.name).collect::<Vec<_>>().join(", ")
            ),
        }
    }

    /// What the recipe turns on, for the training log: "loss bce, spectral norm none, ema 0.999".
    pub fn describe(&self) -> String {
        let ema = self.ema.map_or("none".to_string(), |d| d.to_string());
        format!("{} schedule, loss {}, spectral norm {}, ema {ema}", self.recipe.name(), self.loss.name(), self.spectral_norm.name())
    }
}

/// The adversarial loss (`--loss`), with PyTorch-GAN's / StudioGAN's formulations. D outputs
/// logits (no sigmoid) under every loss.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GanLoss {
    /// Non-saturating BCE (Goodfellow et al. 2014): D: BCE(D(x), 1) + BCE(D(G(z)), 0);
    /// G: BCE(D(G(z)), 1).
    Bce,
    /// Hinge (Lim & Ye 2017, Miyato et al. 2018): D: mean relu(1 − D(x)) + mean relu(1 + D(G(z)));
    /// G: −mean D(G(z)).
    Hinge,
    /// Least squares (Mao et al. 2017, a = 0, b = c = 1): D: ½ mean (D(x) − 1)² + ½ mean D(G(z))²;
    /// G: ½ mean (D(G(z)) − 1)².
    LeastSquares,
    /// Wasserstein with gradient penalty (Gulrajani et al. 2017): D: mean D(G(z)) − mean D(x)
    /// + λ·GP; G: −mean D(G(z)).
    WganGp,
}

impl GanLoss {
    pub fn parse(name: &str) -> Result<GanLoss> {
        Ok(match name {
            "bce" | "ns" | "vanilla" => GanLoss::Bce,
            "hinge" => GanLoss::Hinge,
            "ls" | "least-squares" | "lsgan" => GanLoss::LeastSquares,
            "wgan-gp" => GanLoss::WganGp,
            other => crate::bail!(Invalid, "unknown --loss {other:?}: expected bce, hinge, ls or wgan-gp"),
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            GanLoss::Bce => "bce",
            GanLoss::Hinge => "hinge",
            GanLoss::LeastSquares => "ls",
            GanLoss::WganGp => "wgan-gp",
        }
    }
}

#[derive(Clone, Debug)]
pub struct GanConfig {
    pub image: ImageShape,
    pub batch: usize,
    pub recipe: Recipe,
    /// Learning rates; None takes the recipe's.
    pub lr_g: Option<f32>,
    pub lr_d: Option<f32>,
    /// One-sided label smoothing: the discriminator's target for real images (1 without);
    /// BCE and least squares only.
    pub real_label: f32,
    pub seed: u64,
    pub loss: GanLoss,
    /// Discriminator updates per generator update (WGAN-GP's n_critic): G is updated on every
    /// `n_critic`-th step, and a step is one D update on one batch.
    pub n_critic: usize,
    /// Adam's (β1, β2) for both networks; None takes the recipe's.
    pub betas: Option<(f32, f32)>,
    /// Decay of the generator's moving average (`--ema`), which sample grids, `--eval-every`,
    /// `kiln sample` and `kiln eval` use; None trains without one.
    pub ema: Option<f32>,
    /// Resuming a checkpoint trained without a moving average starts one from its live
    /// weights (`--ema` given explicitly with `--resume`) instead of refusing.
    pub ema_start_on_resume: bool,
    /// A class-conditional GAN over this many classes (`--conditional`; see
    /// [`Conditioning`]); G's fakes take the real batch's labels.
    pub conditional: Option<Conditioning>,
    /// Spectral normalization of D's and/or G's layers (`--spectral-norm`).
    pub spectral_norm: SpectralNorm,
    /// WGAN-GP's penalty weight λ (`--gp-lambda`; `--loss wgan-gp` only).
    pub gp_lambda: f32,
    /// The R1 penalty γ/2·E‖∇ₓD(x)‖² on real images (`--r1 GAMMA`), and how often it runs
    /// (`--r1-every K`: StyleGAN2's lazy regularization, a separate D update with the penalty
    /// scaled by K on every K-th step; 1 adds it to every D loss).
    pub r1: Option<(f32, u64)>,
    /// DiffAugment policies applied to every image D sees (`--augment`), real and fake.
    pub augment: Vec<Policy>,
}

impl Default for GanConfig {
    /// The paper recipe with BCE on 28×28 grey images at batch 64.
    fn default() -> GanConfig {
        GanConfig {
            image: ImageShape { channels: 1, size: 28 },
            batch: 64,
            recipe: Recipe::Paper,
            lr_g: None,
            lr_d: None,
            real_label: 1.0,
            seed: 0,
            loss: GanLoss::Bce,
            n_critic: 1,
            betas: None,
            ema: None,
            ema_start_on_resume: false,
            conditional: None,
            spectral_norm: SpectralNorm::default(),
            gp_lambda: 10.0,
            r1: None,
            augment: Vec::new(),
        }
    }
}

impl GanConfig {
    fn adam(&self, lr: Option<f32>) -> Adam {
        let adam = match self.recipe {
            Recipe::Seed => Adam { lr: lr.unwrap_or(1e-4), eps: 1e-7, ..Adam::default() },
            Recipe::Paper => Adam { lr: lr.unwrap_or(2e-4), beta1: 0.5, ..Adam::default() },
        };
        match self.betas {
            Some((beta1, beta2)) => Adam { beta1, beta2, ..adam },
            None => adam,
        }
    }

    /// Refuses combinations that cannot train as asked, naming the flags.
    pub fn validate(&self) -> Result<()> {
        if self.n_critic == 0 {
            crate::bail!(Invalid, "--n-critic must be at least 1");
        }
        if self.recipe == Recipe::Seed && (self.n_critic != 1 || self.loss != GanLoss::Bce) {
            crate::bail!(
                Invalid,
                "--recipe seed is the TensorFlow tutorial exactly (BCE, both networks from one forward pass); \
                 --loss {} and --n-critic {} need the alternating updates of --recipe paper",
                self.loss.name(),
                self.n_critic
            );
        }
        if self.loss == GanLoss::WganGp && !(self.gp_lambda > 0.0 && self.gp_lambda.is_finite()) {
            crate::bail!(Invalid, "--loss wgan-gp needs its gradient penalty: --gp-lambda must be > 0 (Gulrajani et al. use 10), got {}", self.gp_lambda);
        }
        if let Some((gamma, every)) = self.r1 {
            if !(gamma > 0.0 && gamma.is_finite()) || every == 0 {
                crate::bail!(Invalid, "--r1 needs a weight γ > 0 and --r1-every ≥ 1, got γ = {gamma}, every {every}");
            }
        }
        if (self.r1.is_some() || self.loss == GanLoss::WganGp) && self.recipe == Recipe::Seed {
            crate::bail!(Invalid, "--recipe seed is the tutorial exactly; R1 and WGAN-GP need --recipe paper");
        }
        if self.real_label != 1.0 && matches!(self.loss, GanLoss::Hinge | GanLoss::WganGp) {
            crate::bail!(Invalid, "--real-label smooths BCE and least-squares targets; --loss {} has no target to smooth", self.loss.name());
        }
        Ok(())
    }
}

pub struct Gan {
    pub config: GanConfig,
    pub store: Store,
    pub generator: Sequential,
    pub discriminator: Sequential,
    /// The batch's images, and its labels when conditional.
    gather: Vec<Dispatch>,
    program: Program,
    /// The paper recipe's first node of G's half, where D's update runs.
    d_update_before: Option<usize>,
    pub opt_d: Optimizer,
    pub opt_g: Optimizer,
    /// The generator's moving average, updated after G's Adam.
    pub ema: Option<Ema>,
    /// Scalars read back for logging: d_loss, g_loss, mean D(real) logit, mean D(fake) logit,
    /// and the penalty where there is one (`logged_names`).
    pub logged: Vec<crate::gpu::Buffer>,
    logged_names: Vec<&'static str>,
    /// Lazy R1: every so many steps, this program (D's R1 gradient) and another D update.
    lazy_r1: Option<(u64, Program)>,
    sampler: Program,
    sample_images: Tensor,
}

/// Streams of the step's random numbers: noise, and the dropout of each discriminator pass.
/// XORed into the run's seed.
pub const NOISE: u64 = 1;
pub const DROPOUT_REAL: u64 = 2;
pub const DROPOUT_FAKE: u64 = 3;
pub const DROPOUT_G_STEP: u64 = 4;
pub const DROPOUT_PENALTY: u64 = 5;
pub const GP_EPSILON: u64 = 6;
pub const AUGMENT_REAL: u64 = 7;
pub const AUGMENT_FAKE: u64 = 8;
pub const AUGMENT_G_STEP: u64 = 9;

pub const SAMPLES: usize = 64;

fn mean_logit(g: &mut Graph, logits: Tensor) -> Result<Tensor> {
    g.apply1(Sum { all: true, mean: true }, &[logits], "mean_logit")
}

/// Builds each side's loss from D's logits ([batch, 1]) as scalar nodes named `d_loss` and
/// `g_loss` (their parts `d_loss_real`, `d_loss_fake`).
pub struct Losses {
    pub kind: GanLoss,
    pub batch: usize,
    /// BCE's and least squares' target for real images.
    pub real_label: f32,
}

impl Losses {
    fn constant(&self, g: &mut Graph, value: f32, name: &str) -> Result<Tensor> {
        g.apply1(Fill { value, shape: vec![self.batch, 1] }, &[], name)
    }

    /// mean relu(1 + sign·logits): hinge's margin term.
    fn hinge(&self, g: &mut Graph, logits: Tensor, sign: f32, name: &str) -> Result<Tensor> {
        let signed = if sign < 0.0 { g.apply1(Scale { alpha: -1.0 }, &[logits], name)? } else { logits };
        let one = self.constant(g, 1.0, name)?;
        let margin = g.apply1(Add, &[signed, one], name)?;
        let violation = g.apply1(Activation(Act::Relu), &[margin], name)?;
        g.apply1(Sum { all: true, mean: true }, &[violation], name)
    }

    /// ½ mean (logits − target)².
    fn half_squares(&self, g: &mut Graph, logits: Tensor, target: f32, name: &str) -> Result<Tensor> {
        let target = self.constant(g, target, name)?;
        let mse = g.apply1(Loss(LossKind::Mse(Reduction::Mean)), &[logits, target], name)?;
        g.apply1(Scale { alpha: 0.5 }, &[mse], name)
    }

    fn bce(&self, g: &mut Graph, logits: Tensor, label: f32, name: &str) -> Result<Tensor> {
        let target = self.constant(g, label, name)?;
        g.apply1(Loss(LossKind::BceWithLogits(Reduction::Mean)), &[logits, target], name)
    }

    fn mean(&self, g: &mut Graph, logits: Tensor, alpha: f32, name: &str) -> Result<Tensor> {
        let mean = g.apply1(Sum { all: true, mean: true }, &[logits], name)?;
        g.apply1(Scale { alpha }, &[mean], name)
    }

    pub fn discriminator(&self, g: &mut Graph, d_real: Tensor, d_fake: Tensor) -> Result<Tensor> {
        let (real, fake) = ("d_loss_real", "d_loss_fake");
        let (l_real, l_fake) = match self.kind {
            GanLoss::Bce => (self.bce(g, d_real, self.real_label, real)?, self.bce(g, d_fake, 0.0, fake)?),
            GanLoss::Hinge => (self.hinge(g, d_real, -1.0, real)?, self.hinge(g, d_fake, 1.0, fake)?),
            GanLoss::LeastSquares => (self.half_squares(g, d_real, self.real_label, real)?, self.half_squares(g, d_fake, 0.0, fake)?),
            GanLoss::WganGp => (self.mean(g, d_real, -1.0, real)?, self.mean(g, d_fake, 1.0, fake)?),
        };
        g.apply1(Add, &[l_real, l_fake], "d_loss")
    }

    pub fn generator(&self, g: &mut Graph, d_fake: Tensor) -> Result<Tensor> {
        match self.kind {
            GanLoss::Bce => self.bce(g, d_fake, 1.0, "g_loss"),
            GanLoss::Hinge | GanLoss::WganGp => self.mean(g, d_fake, -1.0, "g_loss"),
            GanLoss::LeastSquares => self.half_squares(g, d_fake, 1.0, "g_loss"),
        }
    }
}

impl Gan {
    pub fn new(gpu: &Gpu, config: GanConfig, data: &GpuData) -> Result<Gan> {
        config.validate()?;
        let (generator, discriminator) = config.spectral_norm.networks(config.image)?;
        let mut store = Store::new();
        let mut rng = InitRng::new(config.seed);
        let paper = config.recipe == Recipe::Paper;
        let mut inits: Vec<_> = [&generator, &discriminator]
            .into_iter()
            .map(|model| {
                let (mut params, mut states) = model.init(&mut rng);
                if paper {
                    dcgan::paper_init(&mut params, &mut rng);
                    model.refresh_spectral_states(&params, &mut states);
                }
                (params, states)
            })
            .collect();
        if let Some(c) = config.conditional {
            for (init, embedding) in inits.iter_mut().zip(c.init(&generator, &discriminator, paper, &mut rng)) {
                init.0.push(embedding);
            }
        }
        for ((params, states), group) in inits.into_iter().zip(["generator", "discriminator"]) {
            nn::register(gpu, &mut store, group, params, states)?;
        }
        let b = config.batch;
        let ImageShape { channels: c, size: s } = config.image;
        let seed = config.seed;
        let noise = RandomFill { normal: true, a: 0.0, b: 1.0, seed: seed ^ NOISE, shape: vec![b, LATENT] };
        let losses = Losses { kind: config.loss, batch: b, real_label: config.real_label };

        // Discriminator: real batch → real, G(z) → fake.
        let mut g = Graph::new();
        let real = g.input("real", &[b, c, s, s]);
        let labels = config.conditional.map(|conditioning| Labels { conditioning, labels: g.input("labels", &[b]) });
        let z = g.apply1(noise, &[], "noise")?;
        let fake = dcgan::generate(&mut g, &generator, z, labels, Mode::train(0))?;
        // What D sees: the images through DiffAugment, a stream per pass.
        let policy = config.augment.clone();
        let augment = move |g: &mut Graph, x: Tensor, stream: u64| -> Result<Tensor> {
            if policy.is_empty() { Ok(x) } else { nn::augment::diff_augment(g, x, &policy, seed ^ stream) }
        };
        let real_seen = augment(&mut g, real, AUGMENT_REAL)?;
        let fake_seen = augment(&mut g, fake, AUGMENT_FAKE)?;
        let d_real = dcgan::discriminate(&mut g, &discriminator, real_seen, labels, Mode::train(seed ^ DROPOUT_REAL))?;
        // Spectral norm's power iteration runs in D's first pass of a step only.
        let again = |seed| Mode { power_iteration: false, ..Mode::train(seed) };
        let d_fake = dcgan::discriminate(&mut g, &discriminator, fake_seen, labels, again(seed ^ DROPOUT_FAKE))?;
        let mut d_loss = losses.discriminator(&mut g, d_real, d_fake)?;
        // The penalty logged beside the losses: WGAN-GP's, or R1's when it runs every step.
        let mut penalty = None;
        if config.loss == GanLoss::WganGp {
            let mixed = nn::penalty::interpolate(&mut g, real_seen, fake_seen, nn::penalty::Epsilon::Uniform { seed: seed ^ GP_EPSILON })?;
            let logits = dcgan::discriminate(&mut g, &discriminator, mixed, labels, again(seed ^ DROPOUT_PENALTY))?;
            let gp = nn::penalty::gradient_penalty_of_logits(&mut g, mixed, logits)?;
            let weighted = g.apply1(Scale { alpha: config.gp_lambda }, &[gp], "gp")?;
            d_loss = g.apply1(Add, &[d_loss, weighted], "d_loss")?;
            penalty = Some(("gp", gp));
        }
        if let Some((gamma, 1)) = config.r1 {
            let r1 = nn::penalty::r1_of_logits(&mut g, real_seen, d_real)?;
            let weighted = g.apply1(Scale { alpha: gamma / 2.0 }, &[r1], "r1")?;
            d_loss = g.apply1(Add, &[d_loss, weighted], "d_loss")?;
            penalty = Some(("r1", r1));
        }
        let (m_real, m_fake) = (mean_logit(&mut g, d_real)?, mean_logit(&mut g, d_fake)?);
        let d_params = discriminator.params(&g);
        let mut grads = g.gradients(d_loss, &d_params)?;
        // Generator: D(G(z)) judged real.
        let (g_loss, d_update_before) = match config.recipe {
            // The tutorial's step: G's loss from the same D(G(z)), before either update.
            Recipe::Seed => (losses.generator(&mut g, d_fake)?, None),
            // G's half: the same G(z) through D once D's update has run.
            Recipe::Paper => {
                let split = g.nodes.len();
                let fake_seen = augment(&mut g, fake, AUGMENT_G_STEP)?;
                let d_fake = dcgan::discriminate(&mut g, &discriminator, fake_seen, labels, again(seed ^ DROPOUT_G_STEP))?;
                (losses.generator(&mut g, d_fake)?, Some(split))
            }
        };
        let g_params = generator.params(&g);
        grads.extend(g.gradients(g_loss, &g_params)?);
        let mut outputs = vec![d_loss, g_loss, m_real, m_fake];
        outputs.extend(penalty.map(|(_, t)| t));
        let program = Program::compile(gpu, &g, &mut store, &outputs, &grads)?;
        let mut logged = outputs.iter().map(|&t| Ok(program.buffer(t)?.clone())).collect::<Result<Vec<_>>>()?;
        let mut logged_names = vec!["d_loss", "g_loss", "d_real", "d_fake"];
        logged_names.extend(penalty.map(|(name, _)| name));

        // Lazy R1 (StyleGAN2): every K-th step a D update on γ/2·K·R1 alone, after the step.
        let lazy_r1 = match config.r1 {
            Some((gamma, every)) if every > 1 => {
                let mut g = Graph::new();
                let real = g.input("real", &[b, c, s, s]);
                let labels = config.conditional.map(|conditioning| Labels { conditioning, labels: g.input("labels", &[b]) });
                let real_seen = augment(&mut g, real, AUGMENT_REAL)?;
                let d_real = dcgan::discriminate(&mut g, &discriminator, real_seen, labels, again(seed ^ DROPOUT_REAL))?;
                let r1 = nn::penalty::r1_of_logits(&mut g, real_seen, d_real)?;
                let loss = g.apply1(Scale { alpha: gamma / 2.0 * every as f32 }, &[r1], "r1")?;
                let d_params = discriminator.params(&g);
                let grads = g.gradients(loss, &d_params)?;
                let program = Program::compile(gpu, &g, &mut store, &[r1], &grads)?;
                logged.push(program.buffer(r1)?.clone());
                logged_names.push("r1");
                Some((every, program))
            }
            _ => None,
        };

        // Samples from fixed noise. Batch norm normalises by the 64 samples' own statistics,
        // as PyTorch's DCGAN tutorial samples: the running averages (Keras' momentum 0.01) need
        // hundreds of steps to settle, and grids of early steps would show only grey.
        let mut g = Graph::new();
        let sample_z = g.input("sample_z", &[SAMPLES, LATENT]);
        let sample_labels = config.conditional.map(|conditioning| Labels { conditioning, labels: g.input("sample_labels", &[SAMPLES]) });
        let sample_images = dcgan::generate(&mut g, &generator, sample_z, sample_labels, Mode { update_running: false, power_iteration: false, ..Mode::train(0) })?;
        let sampler = Program::compile(gpu, &g, &mut store, &[sample_images], &[])?;

        let real_buffer = store.input_buffer("real").expect("compiled").buffer.clone();
        let mut gather = vec![data.gather(gpu, b, 2.0 / 255.0, -1.0, &real_buffer)?];
        if config.conditional.is_some() {
            gather.push(data.gather_labels(gpu, b, &store.input_buffer("labels").expect("compiled").buffer)?);
        }
        let opt_d = Optimizer::new(gpu, &store, "discriminator", Config::Adam(config.adam(config.lr_d)))?;
        let opt_g = Optimizer::new(gpu, &store, "generator", Config::Adam(config.adam(config.lr_g)))?;
        let ema = config
            .ema
            .map(|decay| Ema::new(gpu, &store, &opt_g, decay).map(|ema| Ema { start_on_resume: config.ema_start_on_resume, ..ema }))
            .transpose()?;
        Ok(Gan { config, store, generator, discriminator, gather, program, d_update_before, opt_d, opt_g, ema, logged, logged_names, lazy_r1, sampler, sample_images })
    }

    /// Bytes of the step's pooled intermediates, planned and naive.
    pub fn memory(&self) -> (u64, u64) {
        (self.program.memory.planned, self.program.memory.naive)
    }

    /// Everything one training step that updates both networks submits, in order.
    pub fn step_dispatches(&self) -> Vec<&[Dispatch]> {
        let gather = &self.gather[..];
        let mut list = match self.d_update_before {
            Some(node) => {
                let (d_half, g_half) = self.program.split_at_node(node);
                vec![gather, d_half, &self.opt_d.dispatches, g_half, &self.opt_g.dispatches]
            }
            None => vec![gather, &self.program.dispatches, &self.opt_d.dispatches, &self.opt_g.dispatches],
        };
        if let Some(ema) = &self.ema {
            list.push(std::slice::from_ref(&ema.dispatch));
        }
        list
    }

    /// Training step `step`: with n_critic > 1, D alone except on every n_critic-th step;
    /// with lazy R1, its extra D update on every K-th step (steps 0, K, 2K, …).
    pub fn step_dispatches_at(&self, step: u64) -> Vec<&[Dispatch]> {
        let n = self.config.n_critic as u64;
        let mut list = match self.d_update_before {
            Some(node) if step % n != n - 1 => {
                let (d_half, _) = self.program.split_at_node(node);
                vec![&self.gather[..], d_half, &self.opt_d.dispatches]
            }
            _ => self.step_dispatches(),
        };
        if let Some((_, program)) = self.lazy_r1.as_ref().filter(|(every, _)| step % every == 0) {
            list.extend([&program.dispatches[..], &self.opt_d.dispatches[..]]);
        }
        list
    }

    /// Runs `f` with the generator's moving average in place of its weights (the live
    /// weights are put back afterwards, also when `f` fails); just `f` without `--ema`.
    pub fn with_averaged_weights<T>(&self, gpu: &Gpu, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let Some(ema) = &self.ema else { return f() };
        let arena = &self.store.groups.iter().find(|g| g.name == ema.group).expect("registered").params;
        let live = gpu.read(arena)?;
        gpu.write(arena, &gpu.read(&ema.average)?)?;
        let out = f();
        gpu.write(arena, &live)?;
        out
    }

    /// Points the recorded step at training step `step` (noise and dropout streams) and batch
    /// `batch_index` of the epoch's order.
    pub fn prepare(&self, gpu: &Gpu, data: &GpuData, step: u64, batch_index: usize) -> Result<()> {
        for gather in &self.gather {
            data.select(gpu, gather, self.config.batch, batch_index);
        }
        if let Some((_, program)) = &self.lazy_r1 {
            program.set_step(gpu, step)?;
        }
        self.program.set_step(gpu, step)
    }

    /// Generator outputs in [−1, 1] for `noise` ([SAMPLES, LATENT]) and, when conditional,
    /// `labels` ([SAMPLES] class indices; required then).
    pub fn sample(&self, gpu: &Gpu, noise: &[f32], labels: Option<&[f32]>) -> Result<Vec<f32>> {
        gpu.write(&self.store.input_buffer("sample_z").expect("compiled").buffer, noise)?;
        match (self.config.conditional, labels) {
            (Some(_), Some(labels)) => gpu.write(&self.store.input_buffer("sample_labels").expect("compiled").buffer, labels)?,
            (None, None) => {}
            (Some(c), None) => crate::bail!(Invalid, "this GAN is conditional on {} classes: sampling needs labels", c.classes),
            (None, Some(_)) => crate::bail!(Invalid, "this GAN is unconditional: it takes no labels"),
        }
        self.sampler.run(gpu)?;
        gpu.read(self.sampler.buffer(self.sample_images)?)
    }

    /// `n` images in [0, 1] from z drawn from `seed` (as [`generate_in_batches`]); a
    /// conditional GAN draws image i of class i mod classes, so every class is as common.
    ///
    /// [`generate_in_batches`]: super::score::generate_in_batches
    pub fn generate_balanced(&self, gpu: &Gpu, n: usize, seed: u64) -> Result<Vec<f32>> {
        let mut first = 0;
        super::score::generate_in_batches(n, SAMPLES, LATENT, seed, |z| {
            let labels = self.config.conditional.map(|c| super::score::class_rows(c.classes, first, SAMPLES, 1));
            first += SAMPLES;
            Ok(self.sample(gpu, z, labels.as_deref())?.into_iter().map(|v| (v + 1.0) / 2.0).collect())
        })
    }

    /// The grid of sample images: 8 × 8 from the run's fixed noise, or for a conditional GAN
    /// one row of 8 per class, the same 8 noise vectors in every row.
    pub fn sample_grid(&self, gpu: &Gpu) -> Result<(Vec<f32>, usize)> {
        let noise = fixed_noise(self.config.seed);
        let Some(c) = self.config.conditional else {
            return Ok((self.sample(gpu, &noise, None)?.iter().map(|v| (v + 1.0) / 2.0).collect(), SAMPLES));
        };
        let ImageShape { channels, size } = self.config.image;
        let images = super::score::class_grid(&noise, LATENT, c.classes, SAMPLES, channels * size * size, |z, labels| self.sample(gpu, z, Some(labels)))?;
        Ok((images.iter().map(|v| (v + 1.0) / 2.0).collect(), c.classes * 8))
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
    fn averages(&self) -> Vec<&Ema> {
        self.ema.iter().collect()
    }
    fn logged(&self) -> Vec<(&'static str, crate::gpu::Buffer)> {
        self.logged_names.iter().copied().zip(self.logged.iter().cloned()).collect()
    }
    fn step_dispatches(&self) -> Vec<&[Dispatch]> {
        Gan::step_dispatches(self)
    }
    fn step_dispatches_at(&self, step: u64) -> Vec<&[Dispatch]> {
        Gan::step_dispatches_at(self, step)
    }
    fn prepare(&self, gpu: &Gpu, data: &GpuData, step: u64, batch_index: usize) -> Result<()> {
        Gan::prepare(self, gpu, data, step, batch_index)
    }
    fn generate(&self, gpu: &Gpu, n: usize, seed: u64) -> Option<Result<Vec<f32>>> {
        Some(self.with_averaged_weights(gpu, || self.generate_balanced(gpu, n, seed)))
    }
    fn save_samples(&self, gpu: &Gpu, dir: &std::path::Path, step: u64) -> Result<()> {
        let (unit, count) = self.with_averaged_weights(gpu, || self.sample_grid(gpu))?;
        let ImageShape { channels, size } = self.config.image;
        crate::data::images::save_grid(&unit, [count, channels, size, size], 8, dir.join(format!("step_{step:07}.png")))
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
    fn config_json(&self) -> String {
        let c = &self.config;
        serde_json::json!({
            "model": "dcgan", "channels": c.image.channels, "size": c.image.size, "batch": c.batch,
            "recipe": c.recipe.name(), "lr_g": c.lr_g, "lr_d": c.lr_d,
            "real_label": c.real_label, "seed": c.seed, "loss": c.loss.name(), "n_critic": c.n_critic,
            "betas": c.betas.map(|(b1, b2)| [b1, b2]), "ema": c.ema,
            "classes": c.conditional.map(|c| c.classes), "spectral_norm": c.spectral_norm.name(),
            "gp_lambda": c.gp_lambda, "r1": c.r1.map(|(gamma, every)| serde_json::json!({ "gamma": gamma, "every": every })),
            "augment": c.augment.iter().map(|p| p.name()).collect::<Vec<_>>(),
        })
        .to_string()
    }
}

/// The same noise for every sample grid of a run, so grids compare across steps.
pub fn fixed_noise(seed: u64) -> Vec<f32> {
    InitRng::new(seed ^ 0x5A3D_1E5F_1EED).normal(SAMPLES * LATENT, 0.0, 1.0)
}
