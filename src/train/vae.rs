//! The VAE training step (gather, forward, backward, Adam in one submit) and its evaluation
//! on held-out images: BCE(sum) + KL per image in nats, as PyTorch's example reports it. The
//! evaluation ([`VaeEval`]) is the one `kiln eval` uses too.

use super::data::GpuData;
use crate::gpu::{Buffer, Dispatch, Gpu};
use crate::graph::ops::{Loss, LossKind};
use crate::graph::{Graph, Program, Store, Tensor};
use crate::kernels::loss::Reduction;
use crate::models::vae::{Kind, Vae};
use crate::nn::InitRng;
use crate::optim::{Adam, Config, Optimizer};
use crate::Result;

#[derive(Clone, Debug)]
pub struct VaeConfig {
    pub kind: Kind,
    /// [channels, height, width].
    pub image: [usize; 3],
    pub latent: usize,
    pub hidden: usize,
    pub batch: usize,
    pub lr: f32,
    pub seed: u64,
    /// The KL term's weight in the training objective (β-VAE; 1 is the ELBO). Evaluation
    /// always reports the ELBO and the IWAE bound, whatever β.
    pub beta: f32,
    /// A conditional VAE over this many classes (`--conditional`; labels from the data).
    pub classes: Option<usize>,
}

pub struct VaeTrainer {
    pub config: VaeConfig,
    pub model: Vae,
    pub store: Store,
    /// The batch's images, and its labels when conditional.
    gather: Vec<Dispatch>,
    step: Program,
    pub opt: Optimizer,
    logged: Vec<Buffer>,
    eval: VaeEval,
    sampler: Program,
    sample_images: Tensor,
    /// The first test images, encoded and decoded at each sample grid.
    shown: Reconstructor,
}

const EPS_STREAM: u64 = 0xE95;
pub const SAMPLES: usize = 64;
/// Images per evaluation batch, whatever the training batch, so the trainer and `kiln eval`
/// draw the same eps for the same seed.
pub const EVAL_BATCH: usize = 64;
/// Reconstruction grids show up to 8 rows of 8 test images, each row above its reconstructions.
pub const SHOWN_COLUMNS: usize = 8;
pub const SHOWN_ROWS: usize = 8;

/// (images, columns) of a reconstruction grid drawn from `available` test images: whole rows
/// only, so every original sits above its own reconstruction.
pub fn shown_layout(available: usize) -> (usize, usize) {
    let columns = SHOWN_COLUMNS.min(available);
    (columns * SHOWN_ROWS.min(available / columns.max(1)), columns)
}

/// The graph of one batch: the input gathered as [0, 1] pixels, the loss and its parts.
/// A conditional VAE's labels come in as `{input}_labels`.
fn batch_graph(model: &Vae, b: usize, input: &str, seed: u64, beta: f32) -> Result<(Graph, [Tensor; 4])> {
    let mut g = Graph::new();
    let pixels: usize = model.image.iter().product();
    let flat = g.input(input, &[b, pixels]);
    let labels = model.labels_input(&mut g, input, b);
    let x = g.reshape(flat, &model.input_shape(b))?;
    let out = model.loss(&mut g, x, flat, labels, seed, beta)?;
    Ok((g, out))
}

/// Recorded gathers of `b` images of `data` into input `name` and, for a conditional VAE,
/// their labels into `{name}_labels`.
fn gathers(gpu: &Gpu, model: &Vae, store: &Store, data: &GpuData, b: usize, name: &str) -> Result<Vec<Dispatch>> {
    let input = |name: &str| store.input_buffer(name).expect("compiled").buffer.clone();
    let mut out = vec![data.gather(gpu, b, 1.0 / 255.0, 0.0, &input(name))?];
    if model.classes.is_some() {
        out.push(data.gather_labels(gpu, b, &input(&format!("{name}_labels")))?);
    }
    Ok(out)
}



impl VaeTrainer {
    pub fn new(gpu: &Gpu, config: VaeConfig, train: &GpuData, test: &GpuData) -> Result<VaeTrainer> {
        if train.len < config.batch {
            crate::bail!(Invalid, "the training set ({} images) is smaller than one batch of {}", train.len, config.batch);
        }
        if !(config.beta >= 0.0 && config.beta.is_finite()) {
            crate::bail!(Invalid, "--beta must be a finite weight >= 0, got {}", config.beta);
        }
        let model = Vae::new(config.kind, config.image, config.latent, config.hidden)?.conditional(config.classes);
        let mut store = Store::new();
        let mut rng = InitRng::new(config.seed);
        model.register(gpu, &mut store, &mut rng)?;
        let b = config.batch;
        let seed = config.seed ^ EPS_STREAM;

        let (mut g, [loss, bce, kl, _]) = batch_graph(&model, b, "batch", seed, config.beta)?;
        // The MLP's layers have no common prefix: every parameter of the graph is the model's.
        let params: Vec<Tensor> = (0..g.tensors.len()).map(Tensor::from_index).filter(|&t| g.info(t).role == crate::graph::Role::Param).collect();
        let grads = g.gradients(loss, &params)?;
        let step = Program::compile(gpu, &g, &mut store, &[loss, bce, kl], &grads)?;
        let logged = [loss, bce, kl].iter().map(|&t| Ok(step.buffer(t)?.clone())).collect::<Result<_>>()?;

        let eval = VaeEval::new(gpu, &model, &mut store, test, config.seed)?;
        let shown = Reconstructor::new(gpu, &model, &mut store, test)?;

        let mut g = Graph::new();
        let z = g.input("sample_z", &[SAMPLES, config.latent]);
        let labels = model.labels_input(&mut g, "sample_z", SAMPLES);
        let images = model.decode(&mut g, z, labels)?;
        let sampler = Program::compile(gpu, &g, &mut store, &[images], &[])?;

        let gather = gathers(gpu, &model, &store, train, b, "batch")?;
        let opt = Optimizer::new(gpu, &store, "vae", Config::Adam(Adam { lr: config.lr, ..Adam::default() }))?;
        Ok(VaeTrainer { config, model, store, gather, step, opt, logged, eval, sampler, sample_images: images, shown })
    }

    pub fn memory(&self) -> (u64, u64) {
        (self.step.memory.planned, self.step.memory.naive)
    }

    /// Mean test loss per image (BCE(sum) + KL, nats) and reconstruction MSE per pixel over
    /// every image of `test`, the set given to [`new`](Self::new), with eps drawn from the
    /// run's seed: `kiln eval --seed <seed>` on its checkpoint gives the same numbers.
    pub fn evaluate(&self, gpu: &Gpu, test: &GpuData) -> Result<(f64, f64)> {
        self.eval.run(gpu, test)
    }

    /// Decoded images (pixel probabilities) for latent codes `z` ([SAMPLES, latent]), of
    /// classes `labels` ([SAMPLES]) for a conditional VAE.
    pub fn decode(&self, gpu: &Gpu, z: &[f32], labels: Option<&[f32]>) -> Result<Vec<f32>> {
        gpu.write(&self.store.input_buffer("sample_z").expect("compiled").buffer, z)?;
        if let Some(labels) = labels {
            gpu.write(&self.store.input_buffer("sample_z_labels").expect("conditional").buffer, labels)?;
        }
        self.sampler.run(gpu)?;
        gpu.read(self.sampler.buffer(self.sample_images)?)
    }
}

/// Evaluation on every image of a test set resident on the GPU: batches of [`EVAL_BATCH`] and
/// one smaller last batch, eps of batch i drawn from (`seed`, i). The trainer and
/// `kiln eval` both use it.
pub struct VaeEval {
    images: usize,
    pixels: usize,
    /// One program per batch size (the full one and the last), each fed by its own gathers.
    programs: Vec<(usize, Vec<Dispatch>, Program, [Tensor; 2])>,
}

impl VaeEval {
    /// Compiles the evaluation of `model` (its weights in `store`) on `test`.
    pub fn new(gpu: &Gpu, model: &Vae, store: &mut Store, test: &GpuData, seed: u64) -> Result<VaeEval> {
        let mut sizes = vec![EVAL_BATCH.min(test.len)];
        if test.len > EVAL_BATCH && !test.len.is_multiple_of(EVAL_BATCH) {
            sizes.push(test.len % EVAL_BATCH);
        }
        let mut programs = Vec::new();
        for b in sizes {
            let input = format!("eval_x_{b}");
            let (mut g, [loss, _, _, recon]) = batch_graph(model, b, &input, seed, 1.0)?;
            let target = g.tensors.iter().position(|t| t.name == input).map(Tensor::from_index).expect("declared");
            let mse = g.apply1(Loss(LossKind::Mse(Reduction::Sum)), &[recon, target], "mse")?;
            let program = Program::compile(gpu, &g, store, &[loss, mse], &[])?;
            let gather = gathers(gpu, model, store, test, b, &input)?;
            programs.push((b, gather, program, [loss, mse]));
        }
        Ok(VaeEval { images: test.len, pixels: test.image_len, programs })
    }

    /// (test loss per image in nats, reconstruction MSE per pixel) on `test`, the set given to
    /// [`new`](Self::new).
    pub fn run(&self, gpu: &Gpu, test: &GpuData) -> Result<(f64, f64)> {
        if (test.len, test.image_len) != (self.images, self.pixels) {
            crate::bail!(Invalid, "the evaluation was built for {} test images of {} pixels, not {} of {}", self.images, self.pixels, test.len, test.image_len);
        }
        test.unshuffle(gpu)?;
        let (mut loss, mut mse) = (0.0, 0.0);
        for (i, start) in (0..self.images).step_by(EVAL_BATCH).enumerate() {
            let b = EVAL_BATCH.min(self.images - start);
            let (_, gather, program, [l, m]) = self.programs.iter().find(|p| p.0 == b).expect("one program per batch size");
            for gather in gather {
                crate::kernels::data::set_first(gpu, gather, start);
            }
            program.set_step(gpu, i as u64)?;
            gpu.submit("evaluation", &[gather, &program.dispatches], None)?;
            loss += gpu.read(program.buffer(*l)?)?[0] as f64;
            mse += gpu.read(program.buffer(*m)?)?[0] as f64;
        }
        let n = self.images as f64;
        Ok((loss / n, mse / (n * self.pixels as f64)))
    }
}

/// The first test images and their reconstructions decode(mu), as the training's grids show.
struct Reconstructor {
    images: usize,
    columns: usize,
    gather: Vec<Dispatch>,
    program: Program,
    recon: Tensor,
}

impl Reconstructor {
    fn new(gpu: &Gpu, model: &Vae, store: &mut Store, test: &GpuData) -> Result<Reconstructor> {
        let (images, columns) = shown_layout(test.len);
        let mut g = Graph::new();
        let flat = g.input("shown_x", &[images, test.image_len]);
        let labels = model.labels_input(&mut g, "shown_x", images);
        let x = g.reshape(flat, &model.input_shape(images))?;
        let (mu, _) = model.encode(&mut g, x, labels)?;
        let recon = model.decode(&mut g, mu, labels)?;
        let program = Program::compile(gpu, &g, store, &[recon], &[])?;
        let gather = gathers(gpu, model, store, test, images, "shown_x")?;
        Ok(Reconstructor { images, columns, gather, program, recon })
    }

    /// (originals, reconstructions), each [images, pixels] in [0, 1].
    fn run(&self, gpu: &Gpu, store: &Store) -> Result<(Vec<f32>, Vec<f32>)> {
        gpu.submit("reconstruction", &[&self.gather, &self.program.dispatches], None)?;
        Ok((gpu.read(&store.input_buffer("shown_x").expect("compiled").buffer)?, gpu.read(self.program.buffer(self.recon)?)?))
    }
}

impl super::run::Trainer for VaeTrainer {
    fn kind(&self) -> &'static str {
        "vae"
    }
    fn batch(&self) -> usize {
        self.config.batch
    }
    fn store(&self) -> &Store {
        &self.store
    }
    fn optimizers(&self) -> Vec<&Optimizer> {
        vec![&self.opt]
    }
    fn logged(&self) -> Vec<(&'static str, Buffer)> {
        ["loss", "bce", "kl"].into_iter().zip(self.logged.iter().cloned()).collect()
    }
    fn logged_scale(&self) -> f32 {
        1.0 / self.config.batch as f32
    }
    // Data-parallel hook (train::dist): BCE(sum) + KL is a sum over the batch.
    fn loss_sums_batch(&self) -> bool {
        true
    }
    fn step_dispatches(&self) -> Vec<&[Dispatch]> {
        vec![&self.gather[..], &self.step.dispatches, &self.opt.dispatches]
    }
    fn prepare(&self, gpu: &Gpu, data: &GpuData, step: u64, batch_index: usize) -> Result<()> {
        for gather in &self.gather {
            data.select(gpu, gather, self.config.batch, batch_index);
        }
        self.step.set_step(gpu, step)
    }
    fn generate(&self, gpu: &Gpu, n: usize, seed: u64) -> Option<Result<Vec<f32>>> {
        // A conditional VAE draws image i of class i mod classes.
        let mut first = 0;
        Some(super::score::generate_in_batches(n, SAMPLES, self.config.latent, seed, |z| {
            let labels = self.config.classes.map(|k| super::score::class_rows(k, first, SAMPLES, 1));
            first += SAMPLES;
            self.decode(gpu, z, labels.as_deref())
        }))
    }
    /// The grid of decoded z ~ N(0, 1) (the same z every time) and, beside it, the first test
    /// images above their reconstructions decode(mu), so epochs compare.
    fn save_samples(&self, gpu: &Gpu, dir: &std::path::Path, step: u64) -> Result<()> {
        let z = InitRng::new(self.config.seed ^ 0x5A3D).normal(SAMPLES * self.config.latent, 0.0, 1.0);
        // A conditional VAE's grid: one row of 8 per class, the same 8 z in every row.
        let (images, count) = match self.config.classes {
            None => (self.decode(gpu, &z, None)?, SAMPLES),
            Some(k) => {
                let pixels = self.config.image.iter().product();
                (super::score::class_grid(&z, self.config.latent, k, SAMPLES, pixels, |z, labels| self.decode(gpu, z, Some(labels)))?, k * 8)
            }
        };
        let [c, h, w] = self.config.image;
        crate::data::images::save_grid(&images, [count, c, h, w], 8, dir.join(format!("step_{step:07}.png")))?;
        let (originals, recon) = self.shown.run(gpu, &self.store)?;
        let paired = crate::data::images::pair_rows(&originals, &recon, c * h * w, self.shown.columns);
        crate::data::images::save_grid(&paired, [2 * self.shown.images, c, h, w], self.shown.columns, dir.join(format!("step_{step:07}_reconstructions.png")))
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
    fn config_json(&self) -> String {
        let c = &self.config;
        serde_json::json!({
            "model": "vae", "kind": format!("{:?}", c.kind).to_lowercase(), "image": c.image, "latent": c.latent,
            "hidden": c.hidden, "batch": c.batch, "lr": c.lr, "seed": c.seed, "beta": c.beta,
            "classes": c.classes,
        })
        .to_string()
    }
}

/// Stream of the importance samples' eps, apart from training's and the ELBO evaluation's.
const IWAE_STREAM: u64 = 0x1A3E;
/// Rows (images × k) per IWAE batch.
const IWAE_ROWS: usize = 1024;

/// The importance-weighted bound (metrics::iwae_bound) on every image of a test set: each
/// image repeated k times in a batch, eps drawn on the GPU, and per sample log p(x | z) =
/// −BCE(sum) read back with mu, logvar and eps, the weights combined on the CPU in f64. The
/// Bernoulli likelihood is the one training maximises (for [0, 1] pixels, as PyTorch's example
/// reports); `--binarize` makes it a true likelihood of binary images.
pub struct IwaeEval {
    pub k: usize,
    images: usize,
    pixels: usize,
    latent: usize,
    program: Program,
    /// log p(x | z) per row, mu, logvar, eps.
    outs: [Tensor; 4],
}

impl IwaeEval {
    pub fn new(gpu: &Gpu, model: &Vae, store: &mut Store, k: usize, seed: u64) -> Result<IwaeEval> {
        if k == 0 {
            crate::bail!(Invalid, "the importance-weighted bound needs k ≥ 1 samples per image");
        }
        let images = (IWAE_ROWS / k).max(1);
        let (rows, pixels) = (images * k, model.image.iter().product());
        let mut g = Graph::new();
        let flat = g.input("iwae_x", &[rows, pixels]);
        let labels = model.labels_input(&mut g, "iwae_x", rows);
        let x = g.reshape(flat, &model.input_shape(rows))?;
        let (mu, logvar) = model.encode(&mut g, x, labels)?;
        let shape = g.shape(mu).to_vec();
        let eps = g.apply1(crate::graph::ops::RandomFill { normal: true, a: 0.0, b: 1.0, seed: seed ^ IWAE_STREAM, shape }, &[], "eps")?;
        let z = g.apply1(crate::graph::ops::Reparameterize, &[mu, logvar, eps], "z")?;
        let recon = model.decode(&mut g, z, labels)?;
        let bce = g.apply1(Loss(LossKind::Bce(Reduction::None)), &[recon, flat], "bce")?;
        let nll = g.apply1(crate::graph::ops::Sum { all: false, mean: false }, &[bce], "nll")?;
        let outs = [nll, mu, logvar, eps];
        let program = Program::compile(gpu, &g, store, &outs, &[])?;
        Ok(IwaeEval { k, images, pixels, latent: model.latent, program, outs })
    }

    /// The mean over `test` ([0, 1] pixels, whole images) of −log p(x) bounded with k
    /// samples, in nats per image (lower is better, like the ELBO's loss); a conditional VAE
    /// takes the images' `labels`, and its bound is on log p(x | y).
    pub fn run(&self, gpu: &Gpu, store: &Store, test: &[f32], labels: Option<&[f32]>) -> Result<f64> {
        let n = test.len() / self.pixels;
        if n == 0 || test.len() != n * self.pixels {
            crate::bail!(Shape, "iwae: {} values are not whole images of {} pixels", test.len(), self.pixels);
        }
        let label_input = store.input_buffer("iwae_x_labels").map(|s| &s.buffer);
        match (label_input, labels) {
            (Some(_), Some(l)) if l.len() == n => {}
            (None, None) => {}
            (Some(_), _) => crate::bail!(Invalid, "iwae: a conditional VAE needs one label per test image ({n})"),
            (None, Some(_)) => crate::bail!(Invalid, "iwae: an unconditional VAE takes no labels"),
        }
        let input = &store.input_buffer("iwae_x").expect("compiled").buffer;
        let mut row_labels = vec![0.0f32; self.images * self.k];
        let (k, d) = (self.k, self.latent);
        let mut rows = vec![0.0f32; self.images * k * self.pixels];
        let mut total = 0.0;
        for (batch, first) in (0..n).step_by(self.images).enumerate() {
            let count = self.images.min(n - first);
            for (r, row) in rows.chunks_mut(self.pixels).enumerate() {
                // Rows past the last image repeat it; their weights are not read.
                let i = first + (r / k).min(count - 1);
                row.copy_from_slice(&test[i * self.pixels..(i + 1) * self.pixels]);
                if let Some(labels) = labels {
                    row_labels[r] = labels[i];
                }
            }
            gpu.write(input, &rows)?;
            if let Some(buffer) = label_input {
                gpu.write(buffer, &row_labels)?;
            }
            self.program.set_step(gpu, batch as u64)?;
            self.program.run(gpu)?;
            let [nll, mu, logvar, eps] = self.outs.map(|t| gpu.read(self.program.buffer(t)?));
            let (nll, mu, logvar, eps) = (nll?, mu?, logvar?, eps?);
            for image in 0..count {
                let weights: Vec<f64> = (image * k..(image + 1) * k)
                    .map(|r| crate::metrics::log_weight(-(nll[r] as f64), &mu[r * d..(r + 1) * d], &logvar[r * d..(r + 1) * d], &eps[r * d..(r + 1) * d]))
                    .collect();
                total -= crate::metrics::iwae_bound(&weights);
            }
        }
        Ok(total / n as f64)
    }
}
