//! Using a trained checkpoint: sample images, evaluate on held-out data, encode images to VAE
//! latents and decode them back, reconstruct and interpolate between test images. The model is rebuilt from the checkpoint's "kind" and
//! "config" metadata, so nothing but the file is needed; batch norm and dropout run in eval
//! mode throughout.

use super::checkpoint::{load_weights, Checkpoint};
use super::classifier::{accuracy, ClassifierEval};
use super::data::GpuData;
use super::vae::{shown_layout, IwaeEval, VaeEval};
use crate::data::Dataset;
use crate::gpu::Gpu;
use crate::graph::{Graph, Program, Store, Tensor};
use crate::models::classifier::Classifier;
use crate::models::dcgan::{self, Conditioning, ImageShape, Labels, LATENT};
use crate::models::vae::{Kind, Vae};
use crate::nn::{self, InitRng, Mode, Sequential};
use crate::{Error, Result};
use std::path::Path;

/// Images per GPU submit.
pub const BATCH: usize = 64;

pub enum Model {
    Gan { image: ImageShape, generator: Sequential, discriminator: Sequential, conditioning: Option<Conditioning> },
    Vae(Vae),
    Classifier(Classifier),
}

/// A model rebuilt from a checkpoint, its weights on the GPU.
pub struct Loaded {
    /// The checkpoint's path, for error messages.
    pub origin: String,
    pub model: Model,
    pub store: Store,
    pub seed: u64,
    /// The generator holds the checkpoint's moving average (`ema.*`), not its live weights.
    pub averaged: bool,
    /// The class a conditional GAN generates ([`Loaded::set_class`]).
    class: Option<usize>,
}

/// Reads `path`, rebuilds the GAN or VAE its metadata describes and loads its weights: a
/// GAN's generator from its moving average where the run kept one (`--ema`). Every error
/// names the file.
pub fn load(gpu: &Gpu, path: &Path) -> Result<Loaded> {
    from_checkpoint(gpu, Checkpoint::load(path)?, path.display().to_string(), true)
}

/// [`load`] with the generator's live weights even where the checkpoint has an average
/// (`--no-ema`).
pub fn load_live(gpu: &Gpu, path: &Path) -> Result<Loaded> {
    from_checkpoint(gpu, Checkpoint::load(path)?, path.display().to_string(), false)
}

/// [`load`] from a checkpoint's bytes (a built-in backbone); `origin` names it in errors.
pub fn load_bytes(gpu: &Gpu, bytes: &[u8], origin: &str) -> Result<Loaded> {
    from_checkpoint(gpu, Checkpoint::from_bytes(bytes, origin)?, origin.to_string(), true)
}

fn from_checkpoint(gpu: &Gpu, ckpt: Checkpoint, origin: String, ema: bool) -> Result<Loaded> {
    let named = |e: Error| match e {
        Error::Io { .. } => e,
        e if e.to_string().starts_with(&origin) => e,
        Error::Shape(m) => Error::Shape(format!("{origin}: {m}")),
        e => Error::Invalid(format!("{origin}: {e}")),
    };
    let built = build(gpu, &ckpt).and_then(|(model, store, seed)| {
        let averaged = ema && matches!(model, Model::Gan { .. }) && super::checkpoint::load_averages_as_params(gpu, &store, "generator", &ckpt)?;
        Ok(Loaded { origin: origin.clone(), model, store, seed, averaged, class: None })
    });
    built.map_err(named)
}

fn build(gpu: &Gpu, ckpt: &Checkpoint) -> Result<(Model, Store, u64)> {
    let config: serde_json::Value =
        serde_json::from_str(ckpt.meta("config")?).map_err(|e| Error::Invalid(format!("checkpoint metadata \"config\" is not JSON: {e}")))?;
    let field = |key: &str| -> Result<usize> {
        config[key].as_u64().map(|v| v as usize).ok_or_else(|| Error::Invalid(format!("checkpoint config has no number {key:?}")))
    };
    // A conditional model's class count; absent (null) for the others.
    let classes = || -> Result<Option<usize>> {
        match &config["classes"] {
            serde_json::Value::Null => Ok(None),
            v => Ok(Some(v.as_u64().filter(|&k| k > 0).ok_or_else(|| Error::Invalid(format!("checkpoint config has classes {v}, not a count")))? as usize)),
        }
    };
    let seed = config["seed"].as_u64().unwrap_or(0);
    let mut store = Store::new();
    // Placeholder values: every tensor is overwritten from the checkpoint below.
    let mut rng = InitRng::new(0);
    let model = match ckpt.meta("kind")? {
        "gan" => {
            let image = ImageShape { channels: field("channels")?, size: field("size")? };
            let spectral_norm = dcgan::SpectralNorm::parse(config["spectral_norm"].as_str().unwrap_or("none"))?;
            let (generator, discriminator) = spectral_norm.networks(image)?;
            let conditioning = classes()?.map(|classes| Conditioning { classes });
            let embeddings = conditioning.map(|c| c.init(&generator, &discriminator, false, &mut rng));
            for (i, (model, group)) in [(&generator, "generator"), (&discriminator, "discriminator")].into_iter().enumerate() {
                let (mut params, states) = model.init(&mut rng);
                params.extend(embeddings.as_ref().map(|e| e[i].clone()));
                nn::register(gpu, &mut store, group, params, states)?;
            }
            Model::Gan { image, generator, discriminator, conditioning }
        }
        "vae" => {
            let kind = match config["kind"].as_str() {
                Some("mlp") => Kind::Mlp,
                Some("conv") => Kind::Conv,
                other => crate::bail!(Invalid, "checkpoint config has VAE kind {other:?}, expected \"mlp\" or \"conv\""),
            };
            let image: Vec<usize> = config["image"].as_array().map(|a| a.iter().filter_map(|v| v.as_u64().map(|v| v as usize)).collect()).unwrap_or_default();
            let image: [usize; 3] = image.try_into().map_err(|_| Error::Invalid("checkpoint config has no [c, h, w] \"image\"".into()))?;
            let classes = classes()?;
            let vae = Vae::new(kind, image, field("latent")?, field("hidden")?)?.conditional(classes);
            vae.register(gpu, &mut store, &mut rng)?;
            Model::Vae(vae)
        }
        "classifier" => {
            let image: Vec<usize> = config["image"].as_array().map(|a| a.iter().filter_map(|v| v.as_u64().map(|v| v as usize)).collect()).unwrap_or_default();
            let image: [usize; 3] = image.try_into().map_err(|_| Error::Invalid("checkpoint config has no [c, h, w] \"image\"".into()))?;
            let classifier = Classifier::new(image, field("classes")?)?;
            nn::register_models(gpu, &mut store, "classifier", &classifier.parts(), &mut rng)?;
            Model::Classifier(classifier)
        }
        other => crate::bail!(Invalid, "checkpoint kind {other:?} is not \"gan\", \"vae\" or \"classifier\""),
    };
    load_weights(gpu, &store, ckpt)?;
    Ok((model, store, seed))
}

impl Loaded {
    pub fn kind(&self) -> &'static str {
        match self.model {
            Model::Gan { .. } => "gan",
            Model::Vae(_) => "vae",
            Model::Classifier(_) => "classifier",
        }
    }

    /// [channels, height, width] of the model's images.
    pub fn image(&self) -> [usize; 3] {
        match &self.model {
            Model::Gan { image, .. } => [image.channels, image.size, image.size],
            Model::Vae(v) => v.image,
            Model::Classifier(c) => c.image,
        }
    }

    fn vae(&self, what: &str) -> Result<&Vae> {
        match &self.model {
            Model::Vae(v) => Ok(v),
            _ => crate::bail!(Invalid, "{}: {what} needs a VAE checkpoint, this one is a {}", self.origin, self.kind()),
        }
    }

    fn latent(&self) -> Result<usize> {
        match &self.model {
            Model::Gan { .. } => Ok(LATENT),
            Model::Vae(v) => Ok(v.latent),
            Model::Classifier(_) => crate::bail!(Invalid, "{}: generating images needs a GAN or VAE checkpoint, this one is a classifier", self.origin),
        }
    }

    /// `n` images in [0, 1] (NCHW, flattened) from z ~ N(0, 1) drawn from `seed`. Image i
    /// depends only on the seed and i, not on `n`.
    pub fn sample(&mut self, gpu: &Gpu, n: usize, seed: u64) -> Result<Vec<f32>> {
        if n == 0 {
            crate::bail!(Invalid, "cannot sample 0 images: ask for at least 1");
        }
        let z = InitRng::new(seed).normal(n * self.latent()?, 0.0, 1.0);
        self.generate(gpu, &z)
    }

    /// A conditional GAN's or VAE's classes, None for other models.
    pub fn classes(&self) -> Option<usize> {
        match &self.model {
            Model::Gan { conditioning, .. } => conditioning.map(|c| c.classes),
            Model::Vae(v) => v.classes,
            Model::Classifier(_) => None,
        }
    }

    /// Fixes the class of every image `generate` and `sample` make from now on (`kiln sample
    /// --class K`); without it a conditional GAN draws image i of class i mod classes.
    pub fn set_class(&mut self, class: Option<usize>) -> Result<()> {
        match (class, self.classes()) {
            (None, _) => {}
            (Some(k), Some(classes)) if k < classes => {}
            (Some(k), Some(classes)) => crate::bail!(Invalid, "{}: --class {k} is out of range: the model has classes 0 to {}", self.origin, classes - 1),
            (Some(_), None) => crate::bail!(Invalid, "{}: --class needs a conditional GAN or VAE (trained with --conditional); this checkpoint is an unconditional {}", self.origin, self.kind()),
        }
        self.class = class;
        Ok(())
    }

    /// The class labels of `n` images from the first: the fixed class, or i mod classes.
    fn labels(&self, first: usize, n: usize) -> Option<Vec<f32>> {
        let classes = self.classes()?;
        Some((first..first + n).map(|i| self.class.unwrap_or(i % classes) as f32).collect())
    }

    /// Decodes (VAE) or generates (GAN) one image per row of `z` ([n, latent]), in [0, 1]; a
    /// conditional model makes the class set by [`set_class`](Self::set_class), or class
    /// i mod classes for row i.
    pub fn generate(&mut self, gpu: &Gpu, z: &[f32]) -> Result<Vec<f32>> {
        let labels = self.labels(0, z.len() / self.latent()?.max(1));
        self.generate_labelled(gpu, z, labels.as_deref())
    }

    /// [`generate`](Self::generate) with one class label per row of `z` (required exactly for
    /// a conditional model): a VAE's reconstructions decode with the images' own labels.
    pub fn generate_labelled(&mut self, gpu: &Gpu, z: &[f32], label_rows: Option<&[f32]>) -> Result<Vec<f32>> {
        let latent = self.latent()?;
        self.check_labels(label_rows, z.len() / latent.max(1))?;
        if z.is_empty() || !z.len().is_multiple_of(latent) {
            crate::bail!(Shape, "{}: latents of {} values are not rows of {latent}", self.origin, z.len());
        }
        // Fewer rows than a batch get a smaller program: `kiln sample --n 3` need not run 64.
        let b = BATCH.min(z.len() / latent);
        let name = format!("infer_z_{b}");
        let mut g = Graph::new();
        let input = g.input(&name, &[b, latent]);
        let labels = self.classes().map(|_| g.input(&format!("infer_labels_{b}"), &[b]));
        let (out, tanh) = match &self.model {
            Model::Gan { generator, conditioning, .. } => {
                let labels = conditioning.zip(labels).map(|(conditioning, labels)| Labels { conditioning, labels });
                (dcgan::generate(&mut g, generator, input, labels, Mode::eval())?, true)
            }
            Model::Vae(v) => (v.decode(&mut g, input, labels)?, false),
            Model::Classifier(_) => unreachable!("latent() refuses a classifier"),
        };
        let program = Program::compile(gpu, &g, &mut self.store, &[out], &[])?;
        let mut inputs = vec![(name.as_str(), z, latent)];
        let label_name = format!("infer_labels_{b}");
        if let Some(rows) = label_rows {
            inputs.push((label_name.as_str(), rows, 1));
        }
        let [rows] = batches_of(gpu, &self.store, &program, &inputs, [out])?;
        Ok(if tanh { rows.into_iter().map(|v| (v + 1.0) / 2.0).collect() } else { rows })
    }

    /// Decodes the "mu" rows of a latents file (as [`latents_checkpoint`] writes) read from
    /// `origin`; VAE only.
    pub fn decode_file(&mut self, gpu: &Gpu, latents: &Checkpoint, origin: &str) -> Result<Vec<f32>> {
        let latent = self.vae("decoding")?.latent;
        let (shape, mu) = latents.tensor("mu").map_err(|e| Error::Invalid(format!("{origin}: {e}")))?;
        if shape.len() != 2 || shape[1] != latent {
            crate::bail!(Shape, "{origin}: \"mu\" is {shape:?}, the VAE in {} decodes [N, {latent}]", self.origin);
        }
        // A conditional VAE decodes with the labels the latents were encoded with.
        match (self.classes(), latents.tensors.get("labels")) {
            (Some(_), Some((_, labels))) => {
                let labels = labels.clone();
                self.generate_labelled(gpu, mu, Some(&labels)).map_err(|e| Error::Invalid(format!("{origin}: {e}")))
            }
            (Some(_), None) => crate::bail!(Invalid, "{origin}: the VAE in {} is conditional: the latents need their \"labels\" (kiln encode writes them)", self.origin),
            (None, _) => self.generate(gpu, mu),
        }
    }

    /// Refuses labels that are missing for a conditional model, given to an unconditional
    /// one, not one per image, or outside the classes.
    fn check_labels(&self, labels: Option<&[f32]>, n: usize) -> Result<()> {
        match (self.classes(), labels) {
            (None, None) => Ok(()),
            (None, Some(_)) => crate::bail!(Invalid, "{}: the model is unconditional; it takes no labels", self.origin),
            (Some(k), None) => crate::bail!(Invalid, "{}: the model is conditional on {k} classes; it needs a label per image", self.origin),
            (Some(k), Some(l)) => {
                if l.len() != n {
                    crate::bail!(Invalid, "{}: {} labels for {n} images", self.origin, l.len());
                }
                if let Some(bad) = l.iter().find(|&&v| !(v >= 0.0 && v < k as f32 && v.fract() == 0.0)) {
                    crate::bail!(Invalid, "{}: label {bad} is not a class of 0 to {}", self.origin, k - 1);
                }
                Ok(())
            }
        }
    }

    /// (mu, logvar), each [n, latent], of `images` ([0, 1] pixels, n whole images) and, for a
    /// conditional VAE, their `labels`.
    pub fn encode(&mut self, gpu: &Gpu, images: &[f32], labels: Option<&[f32]>) -> Result<(Vec<f32>, Vec<f32>)> {
        let vae = self.vae("encoding")?;
        let pixels: usize = vae.image.iter().product();
        self.check_labels(labels, images.len() / pixels)?;
        let vae = self.vae("encoding")?;
        let mut g = Graph::new();
        let flat = g.input("infer_x", &[BATCH, pixels]);
        let label_input = vae.labels_input(&mut g, "infer_x", BATCH);
        let x = g.reshape(flat, &vae.input_shape(BATCH))?;
        let (mu, logvar) = vae.encode(&mut g, x, label_input)?;
        let program = Program::compile(gpu, &g, &mut self.store, &[mu, logvar], &[])?;
        let mut inputs = vec![("infer_x", images, pixels)];
        if let Some(labels) = labels {
            inputs.push(("infer_x_labels", labels, 1));
        }
        let [mu, logvar] = batches_of(gpu, &self.store, &program, &inputs, [mu, logvar])?;
        Ok((mu, logvar))
    }

    /// Evaluates on every image of `test` (images of the model's shape) in batches of 64 and
    /// one smaller last batch; `seed` draws the VAE's eps and the GAN's z. A VAE evaluates
    /// through [`VaeEval`], as its trainer does, and with `iwae_k` > 0 also through
    /// [`IwaeEval`] with that many samples per image.
    pub fn evaluate(&mut self, gpu: &Gpu, test: &Dataset, seed: u64, iwae_k: usize) -> Result<Evaluation> {
        if test.shape()[1..] != self.image() {
            crate::bail!(Shape, "{}: the model takes {:?} images, the data has {:?}", self.origin, self.image(), &test.shape()[1..]);
        }
        if test.is_empty() {
            crate::bail!(Invalid, "{}: the test set {:?} is empty", self.origin, test.name);
        }
        let (image, generator, discriminator, conditioning) = match &self.model {
            Model::Vae(vae) => {
                let data = GpuData::upload(gpu, test)?;
                let (nats, mse) = VaeEval::new(gpu, vae, &mut self.store, &data, seed)?.run(gpu, &data)?;
                let iwae = match iwae_k {
                    0 => None,
                    k => {
                        let labels = vae.classes.map(|_| test_labels(test)).transpose()?;
                        Some((k, IwaeEval::new(gpu, vae, &mut self.store, k, seed)?.run(gpu, &self.store, &test.to_f32(0.0, 1.0), labels.as_deref())?))
                    }
                };
                return Ok(Evaluation::Vae { images: test.len(), nats, mse, iwae });
            }
            Model::Classifier(classifier) => {
                let eval = ClassifierEval::new(gpu, classifier, &mut self.store)?;
                let (accuracy, loss) = accuracy(&eval.logits(gpu, &self.store, test)?, test, classifier.classes)?;
                return Ok(Evaluation::Classifier { images: test.len(), accuracy, loss });
            }
            Model::Gan { image, generator, discriminator, conditioning } => (*image, generator, discriminator, *conditioning),
        };
        let (n, pixels) = (test.len(), test.image_len());
        let images = test.to_f32(-1.0, 1.0);
        let noise = InitRng::new(seed).normal(n * LATENT, 0.0, 1.0);
        let mut programs: Vec<(usize, Program, [Tensor; 2])> = Vec::new();
        let (mut d_real, mut d_fake) = (0.0f64, 0.0f64);
        for (i, start) in (0..n).step_by(BATCH).enumerate() {
            let b = BATCH.min(n - start);
            if !programs.iter().any(|p| p.0 == b) {
                let (program, outs) = gan_eval_program(gpu, image, generator, discriminator, conditioning, &mut self.store, b)?;
                programs.push((b, program, outs));
            }
            let (_, program, [real, fake]) = programs.iter().find(|p| p.0 == b).expect("compiled above");
            let input = |name: &str| &self.store.input_buffer(&format!("{name}_{b}")).expect("compiled").buffer;
            gpu.write(input("eval_x"), &images[start * pixels..(start + b) * pixels])?;
            gpu.write(input("eval_z"), &noise[start * LATENT..(start + b) * LATENT])?;
            if let Some(c) = conditioning {
                // Real images with their own labels, generated ones of class i mod classes.
                let Some(labels) = test.labels() else { crate::bail!(Invalid, "{}: a conditional GAN is evaluated on labelled images; {:?} has none", self.origin, test.name) };
                let real: Vec<f32> = labels[start..start + b].iter().map(|&l| l as f32).collect();
                if let Some(bad) = real.iter().find(|&&l| l as usize >= c.classes) {
                    crate::bail!(Invalid, "{}: {:?} has label {bad}, the model has {} classes", self.origin, test.name, c.classes);
                }
                gpu.write(input("eval_labels"), &real)?;
                gpu.write(input("eval_fake_labels"), &(start..start + b).map(|i| (i % c.classes) as f32).collect::<Vec<_>>())?;
            }
            program.set_step(gpu, i as u64)?;
            program.run(gpu)?;
            // The outputs are logits per image.
            let mean_sum = |t: &Tensor| -> Result<f64> { Ok(gpu.read(program.buffer(*t)?)?.iter().map(|&v| 1.0 / (1.0 + (-v as f64).exp())).sum()) };
            d_real += mean_sum(real)?;
            d_fake += mean_sum(fake)?;
        }
        Ok(Evaluation::Gan { images: n, d_real: d_real / n as f64, d_fake: d_fake / n as f64 })
    }

    /// decode(mu) of `images` ([0, 1] pixels, whole images, with their `labels` for a
    /// conditional VAE): reconstructions without sampling.
    pub fn reconstruct(&mut self, gpu: &Gpu, images: &[f32], labels: Option<&[f32]>) -> Result<Vec<f32>> {
        let (mu, _) = self.encode(gpu, images, labels)?;
        self.generate_labelled(gpu, &mu, labels)
    }

    /// For each pair (`from` image i, `to` image i), `steps` decoded latents walking linearly
    /// from mu(from) to mu(to): the first and last are the two reconstructions. A conditional
    /// VAE encodes each image with its own label and decodes the row with `from`'s.
    pub fn interpolate(&mut self, gpu: &Gpu, from: &[f32], to: &[f32], labels: Option<(&[f32], &[f32])>, steps: usize) -> Result<Vec<f32>> {
        let latent = self.vae("interpolating")?.latent;
        if steps < 2 || from.len() != to.len() {
            crate::bail!(Invalid, "{}: an interpolation needs as many start as end images and at least 2 steps, got {} and {} values, {steps} steps", self.origin, from.len(), to.len());
        }
        let both = labels.map(|(a, b)| [a, b].concat());
        let (mu, _) = self.encode(gpu, &[from, to].concat(), both.as_deref())?;
        let row_labels: Option<Vec<f32>> = labels.map(|(a, _)| a.iter().flat_map(|&l| std::iter::repeat_n(l, steps)).collect());
        let (a, b) = mu.split_at(mu.len() / 2);
        let mut z = Vec::with_capacity(a.len() * steps);
        for (a, b) in a.chunks(latent).zip(b.chunks(latent)) {
            for j in 0..steps {
                let t = j as f32 / (steps - 1) as f32;
                z.extend(a.iter().zip(b).map(|(a, b)| (1.0 - t) * a + t * b));
            }
        }
        self.generate_labelled(gpu, &z, row_labels.as_deref())
    }

    /// The reconstruction and interpolation grids `kiln sample` writes for a VAE, of test
    /// images drawn from `seed`.
    pub fn vae_views(&mut self, gpu: &Gpu, test: &Dataset, seed: u64) -> Result<VaeViews> {
        self.vae("reconstructing")?;
        if test.shape()[1..] != self.image() {
            crate::bail!(Shape, "{}: the model takes {:?} images, the data has {:?}", self.origin, self.image(), &test.shape()[1..]);
        }
        if test.len() < 2 {
            crate::bail!(Invalid, "{}: the test set {:?} has {} images, an interpolation needs 2", self.origin, test.name, test.len());
        }
        let images = |indices: &[usize]| -> Result<Vec<f32>> { Ok(test.subset("shown", indices)?.to_f32(0.0, 1.0)) };
        let all_labels = self.classes().map(|_| test_labels(test)).transpose()?;
        let labels = |indices: &[usize]| all_labels.as_ref().map(|l| indices.iter().map(|&i| l[i]).collect::<Vec<f32>>());
        let order = pick(test.len(), seed);
        let (shown, columns) = shown_layout(test.len());
        let originals = images(&order[..shown])?;
        let recon = self.reconstruct(gpu, &originals, labels(&order[..shown]).as_deref())?;
        let reconstructions = crate::data::images::pair_rows(&originals, &recon, test.image_len(), columns);
        let pairs: Vec<(usize, usize)> = order.chunks_exact(2).take(LERP_ROWS).map(|p| (p[0], p[1])).collect();
        let (from, to): (Vec<usize>, Vec<usize>) = pairs.iter().copied().unzip();
        let (from_labels, to_labels) = (labels(&from), labels(&to));
        let pair_labels = from_labels.as_deref().zip(to_labels.as_deref());
        let interpolation = self.interpolate(gpu, &images(&from)?, &images(&to)?, pair_labels, LERP_STEPS)?;
        Ok(VaeViews { image: self.image(), shown: order[..shown].to_vec(), columns, reconstructions, pairs, interpolation })
    }
}

/// Rows of the interpolation grid and images per row; odd, so the middle column is the
/// midpoint t = 1/2.
pub const LERP_ROWS: usize = 8;
pub const LERP_STEPS: usize = 11;

/// A permutation of `0..len` drawn from `seed`: the test images `kiln sample` shows.
pub fn pick(len: usize, seed: u64) -> Vec<usize> {
    let mut rng = InitRng::new(seed ^ 0x5E1EC7);
    let mut order: Vec<usize> = (0..len).collect();
    for i in (1..len).rev() {
        order.swap(i, ((rng.unit() * (i + 1) as f64) as usize).min(i));
    }
    order
}

/// A VAE's reconstructions and latent interpolations of test images, [0, 1] pixels.
pub struct VaeViews {
    pub image: [usize; 3],
    /// Test indices of the reconstructed images, in grid order.
    pub shown: Vec<usize>,
    /// Images per grid row.
    pub columns: usize,
    /// Rows of `columns` originals, each followed by their reconstructions decode(mu).
    pub reconstructions: Vec<f32>,
    /// Test indices (from, to) of each interpolation row.
    pub pairs: Vec<(usize, usize)>,
    /// [`LERP_STEPS`] images per pair.
    pub interpolation: Vec<f32>,
}

impl VaeViews {
    /// Writes the two grids.
    pub fn save(&self, reconstructions: &Path, interpolation: &Path) -> Result<()> {
        let [c, h, w] = self.image;
        let n = |v: &[f32]| v.len() / (c * h * w);
        crate::data::images::save_grid(&self.reconstructions, [n(&self.reconstructions), c, h, w], self.columns, reconstructions)?;
        crate::data::images::save_grid(&self.interpolation, [n(&self.interpolation), c, h, w], LERP_STEPS, interpolation)
    }
}

/// The GAN's evaluation graph for a batch of `b` (inputs `eval_x_{b}`, `eval_z_{b}`): the
/// discriminator's logits on real and on generated images.
fn gan_eval_program(gpu: &Gpu, image: ImageShape, generator: &Sequential, discriminator: &Sequential, conditioning: Option<Conditioning>, store: &mut Store, b: usize) -> Result<(Program, [Tensor; 2])> {
    let mut g = Graph::new();
    let ImageShape { channels: c, size: s } = image;
    let real = g.input(&format!("eval_x_{b}"), &[b, c, s, s]);
    let z = g.input(&format!("eval_z_{b}"), &[b, LATENT]);
    let mut labels = |name: &str| conditioning.map(|conditioning| Labels { conditioning, labels: g.input(&format!("{name}_{b}"), &[b]) });
    let (real_labels, fake_labels) = (labels("eval_labels"), labels("eval_fake_labels"));
    let d_real = dcgan::discriminate(&mut g, discriminator, real, real_labels, Mode::eval())?;
    let fake = dcgan::generate(&mut g, generator, z, fake_labels, Mode::eval())?;
    let outs = [d_real, dcgan::discriminate(&mut g, discriminator, fake, fake_labels, Mode::eval())?];
    Ok((Program::compile(gpu, &g, store, &outs, &[])?, outs))
}

/// Runs `program` over `rows` of `width` values fed to `input` in batches of the input's
/// size (the last padded with zeros) and returns each output's rows for the real inputs only.
pub(super) fn batches<const K: usize>(gpu: &Gpu, store: &Store, program: &Program, input: &str, outs: [Tensor; K], rows: &[f32], width: usize) -> Result<[Vec<f32>; K]> {
    batches_of(gpu, store, program, &[(input, rows, width)], outs)
}

/// [`batches`] over several inputs `(name, rows, width)` holding the same number of rows
/// (a conditional generator's z and labels).
fn batches_of<const K: usize>(gpu: &Gpu, store: &Store, program: &Program, inputs: &[(&str, &[f32], usize)], outs: [Tensor; K]) -> Result<[Vec<f32>; K]> {
    let buffers: Vec<_> = inputs.iter().map(|(name, _, _)| &store.input_buffer(name).expect("compiled").buffer).collect();
    let (_, rows, width) = inputs[0];
    let b = buffers[0].len / width;
    let n = rows.len() / width;
    let mut result: [Vec<f32>; K] = std::array::from_fn(|_| Vec::new());
    for start in (0..n).step_by(b) {
        let end = (start + b).min(n);
        for (&(_, rows, width), buffer) in inputs.iter().zip(&buffers) {
            let mut batch = rows[start * width..end * width].to_vec();
            batch.resize(b * width, 0.0);
            gpu.write(buffer, &batch)?;
        }
        program.run(gpu)?;
        for (out, acc) in outs.iter().zip(&mut result) {
            let y = gpu.read(program.buffer(*out)?)?;
            acc.extend_from_slice(&y[..y.len() / b * (end - start)]);
        }
    }
    Ok(result)
}

#[derive(Clone, Debug, PartialEq)]
pub enum Evaluation {
    /// Test loss per image (BCE(sum) + KL, nats: the negative ELBO), reconstruction MSE per
    /// pixel, and (k, −log p(x) bounded by the importance-weighted bound with k samples).
    Vae { images: usize, nats: f64, mse: f64, iwae: Option<(usize, f64)> },
    /// The discriminator's mean sigmoid output on real test images and on as many generated.
    Gan { images: usize, d_real: f64, d_fake: f64 },
    /// Share of test images classified as their label, and the mean cross-entropy (nats).
    Classifier { images: usize, accuracy: f64, loss: f64 },
}

impl Evaluation {
    pub fn line(&self) -> String {
        match self {
            Evaluation::Vae { images, nats, mse, iwae } => {
                let bound = iwae.map(|(k, v)| format!("; IWAE bound (k = {k}) {v:.2} nats")).unwrap_or_default();
                format!("vae on {images} test images: {nats:.2} nats per image (BCE(sum) + KL){bound}, reconstruction MSE {mse:.5} per pixel")
            }
            Evaluation::Gan { images, d_real, d_fake } => format!("gan on {images} test images: mean D(real) {d_real:.4}, mean D(G(z)) {d_fake:.4}"),
            Evaluation::Classifier { images, accuracy, loss } => format!("classifier on {images} test images: accuracy {:.2}%, cross-entropy {loss:.4}", 100.0 * accuracy),
        }
    }

    pub fn json(&self) -> serde_json::Value {
        match self {
            Evaluation::Vae { images, nats, mse, iwae } => {
                let mut v = serde_json::json!({ "kind": "vae", "images": images, "nats": nats, "mse": mse });
                if let Some((k, bound)) = iwae {
                    v["iwae_k"] = (*k).into();
                    v["iwae_nats"] = (*bound).into();
                }
                v
            }
            Evaluation::Gan { images, d_real, d_fake } => serde_json::json!({ "kind": "gan", "images": images, "d_real": d_real, "d_fake": d_fake }),
            Evaluation::Classifier { images, accuracy, loss } => serde_json::json!({ "kind": "classifier", "images": images, "accuracy": accuracy, "loss": loss }),
        }
    }
}

/// The file `kiln encode` writes: "mu" and "logvar", each [n, latent], and for a conditional
/// VAE the images' "labels" [n], which `kiln decode` decodes with.
pub fn latents_checkpoint(mu: Vec<f32>, logvar: Vec<f32>, labels: Option<Vec<f32>>, n: usize) -> Checkpoint {
    let latent = mu.len() / n.max(1);
    let mut file = Checkpoint::default();
    file.metadata.insert("kind".into(), "latents".into());
    file.tensors.insert("mu".into(), (vec![n, latent], mu));
    file.tensors.insert("logvar".into(), (vec![n, latent], logvar));
    if let Some(labels) = labels {
        file.tensors.insert("labels".into(), (vec![n], labels));
    }
    file
}

/// A labelled set's labels as f32 class indices; an error naming the set when it has none.
pub fn test_labels(data: &Dataset) -> Result<Vec<f32>> {
    match data.labels() {
        Some(l) => Ok(l.iter().map(|&c| c as f32).collect()),
        None => crate::bail!(Invalid, "{:?} has no labels, and a conditional model needs them (IDX label files, or one sub-folder per class)", data.name),
    }
}

/// Writes `images` ([n, c, h, w] in [0, 1]): one grid when `out` ends in .png, otherwise
/// numbered PNGs 000000.png… in the folder `out`.
pub fn save_images(images: &[f32], [c, h, w]: [usize; 3], out: &Path) -> Result<()> {
    let n = images.len() / (c * h * w);
    if out.extension().is_some_and(|e| e.eq_ignore_ascii_case("png")) {
        let nrow = (n as f64).sqrt().ceil().max(1.0) as usize;
        return crate::data::images::save_grid(images, [n, c, h, w], nrow, out);
    }
    std::fs::create_dir_all(out).map_err(|source| Error::Io { path: out.display().to_string(), source })?;
    for (i, image) in images.chunks_exact(c * h * w).enumerate() {
        crate::data::images::save_png(image, [c, h, w], out.join(format!("{i:06}.png")))?;
    }
    Ok(())
}
