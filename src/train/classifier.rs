//! Training the classifier (gather images and labels, forward, cross-entropy, backward, Adam
//! in one submit) and its evaluation on labelled images: test accuracy and mean loss. The
//! evaluation ([`ClassifierEval`]) is the one `kiln eval` uses too.

use super::data::GpuData;
use crate::data::Dataset;
use crate::gpu::{Buffer, Dispatch, Gpu};
use crate::graph::ops::CrossEntropy;
use crate::graph::{Graph, Program, Role, Store, Tensor};
use crate::kernels::loss::Reduction;
use crate::models::classifier::Classifier;
use crate::nn::{InitRng, Mode};
use crate::optim::{Adam, Config, Optimizer};
use crate::{bail, Result};

#[derive(Clone, Debug)]
pub struct ClassifierConfig {
    /// [channels, height, width].
    pub image: [usize; 3],
    pub classes: usize,
    pub batch: usize,
    pub lr: f32,
    pub seed: u64,
}

pub struct ClassifierTrainer {
    pub config: ClassifierConfig,
    pub model: Classifier,
    pub store: Store,
    gather: [Dispatch; 2],
    step: Program,
    pub opt: Optimizer,
    logged: Buffer,
    eval: ClassifierEval,
    test: Dataset,
}

const DROPOUT_STREAM: u64 = 0xD50;
/// Images per evaluation batch.
pub const EVAL_BATCH: usize = 256;

impl ClassifierTrainer {
    pub fn new(gpu: &Gpu, config: ClassifierConfig, train: &GpuData, test: &Dataset) -> Result<ClassifierTrainer> {
        if train.len < config.batch {
            bail!(Invalid, "the training set ({} images) is smaller than one batch of {}", train.len, config.batch);
        }
        let model = Classifier::new(config.image, config.classes)?;
        let mut store = Store::new();
        crate::nn::register_models(gpu, &mut store, "classifier", &model.parts(), &mut InitRng::new(config.seed))?;
        let b = config.batch;
        let [c, h, w] = config.image;
        let mut g = Graph::new();
        let flat = g.input("batch", &[b, c * h * w]);
        let labels = g.input("labels", &[b]);
        let x = g.reshape(flat, &[b, c, h, w])?;
        let (_, logits) = model.forward(&mut g, x, Mode::train(config.seed ^ DROPOUT_STREAM))?;
        let loss = g.apply1(CrossEntropy { reduction: Reduction::Mean }, &[logits, labels], "loss")?;
        let params: Vec<Tensor> = (0..g.tensors.len()).map(Tensor::from_index).filter(|&t| g.info(t).role == Role::Param).collect();
        let grads = g.gradients(loss, &params)?;
        let step = Program::compile(gpu, &g, &mut store, &[loss], &grads)?;
        let logged = step.buffer(loss)?.clone();
        let input = |name: &str| store.input_buffer(name).expect("compiled").buffer.clone();
        let gather = [train.gather(gpu, b, 1.0 / 255.0, 0.0, &input("batch"))?, train.gather_labels(gpu, b, &input("labels"))?];
        let opt = Optimizer::new(gpu, &store, "classifier", Config::Adam(Adam { lr: config.lr, ..Adam::default() }))?;
        let eval = ClassifierEval::new(gpu, &model, &mut store)?;
        Ok(ClassifierTrainer { config, model, store, gather, step, opt, logged, eval, test: test.clone() })
    }

    /// (accuracy, mean cross-entropy) on `test`.
    pub fn evaluate(&self, gpu: &Gpu, test: &Dataset) -> Result<(f64, f64)> {
        let logits = self.eval.logits(gpu, &self.store, test)?;
        accuracy(&logits, test, self.config.classes)
    }
}

/// The logits (and penultimate features) of any number of images, in batches of
/// [`EVAL_BATCH`] with dropout off: `kiln eval` on a classifier checkpoint, the trainer's test
/// accuracy, and the `lenet-*` feature backbones.
pub struct ClassifierEval {
    image: [usize; 3],
    program: Program,
    outs: [Tensor; 2],
}

impl ClassifierEval {
    pub fn new(gpu: &Gpu, model: &Classifier, store: &mut Store) -> Result<ClassifierEval> {
        let [c, h, w] = model.image;
        let mut g = Graph::new();
        let flat = g.input("classify_x", &[EVAL_BATCH, c * h * w]);
        let x = g.reshape(flat, &[EVAL_BATCH, c, h, w])?;
        let (features, logits) = model.forward(&mut g, x, Mode::eval())?;
        let outs = [features, logits];
        Ok(ClassifierEval { image: model.image, program: Program::compile(gpu, &g, store, &outs, &[])?, outs })
    }

    /// (features [n, FEATURES], logits [n, classes]) of `images`: [0, 1] pixels, n whole images.
    pub fn run(&self, gpu: &Gpu, store: &Store, images: &[f32]) -> Result<(Vec<f32>, Vec<f32>)> {
        let pixels: usize = self.image.iter().product();
        if images.is_empty() || !images.len().is_multiple_of(pixels) {
            bail!(Shape, "classifier: {} values are not whole {:?} images", images.len(), self.image);
        }
        let [features, logits] = super::infer::batches(gpu, store, &self.program, "classify_x", self.outs, images, pixels)?;
        Ok((features, logits))
    }

    /// The logits of a data set's images (which must be of the model's shape).
    pub fn logits(&self, gpu: &Gpu, store: &Store, data: &Dataset) -> Result<Vec<f32>> {
        if data.shape()[1..] != self.image {
            bail!(Shape, "the classifier takes {:?} images, {:?} has {:?}", self.image, data.name, &data.shape()[1..]);
        }
        Ok(self.run(gpu, store, &data.to_f32(0.0, 1.0))?.1)
    }
}

/// (share of images whose largest logit is their label, mean cross-entropy in nats).
pub fn accuracy(logits: &[f32], data: &Dataset, classes: usize) -> Result<(f64, f64)> {
    let Some(labels) = data.labels() else { bail!(Invalid, "dataset {:?} has no labels to score a classifier against", data.name) };
    if let Some(&bad) = labels.iter().find(|&&l| l as usize >= classes) {
        bail!(Invalid, "dataset {:?} has class {bad}, the classifier knows {classes}", data.name);
    }
    let (mut right, mut loss) = (0usize, 0.0f64);
    for (row, &label) in logits.chunks(classes).zip(labels) {
        let top = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let lse = top + row.iter().map(|&v| (v as f64 - top).exp()).sum::<f64>().ln();
        loss += lse - row[label as usize] as f64;
        let best = row.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i);
        right += usize::from(best == Some(label as usize));
    }
    Ok((right as f64 / labels.len() as f64, loss / labels.len() as f64))
}

impl super::run::Trainer for ClassifierTrainer {
    fn kind(&self) -> &'static str {
        "classifier"
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
        vec![("loss", self.logged.clone())]
    }
    fn step_dispatches(&self) -> Vec<&[Dispatch]> {
        vec![&self.gather, &self.step.dispatches, &self.opt.dispatches]
    }
    fn prepare(&self, gpu: &Gpu, data: &GpuData, step: u64, batch_index: usize) -> Result<()> {
        // The run shuffles the data's order at each epoch; images and labels gather through it.
        for gather in &self.gather {
            data.select(gpu, gather, self.config.batch, batch_index);
        }
        self.step.set_step(gpu, step)
    }
    /// Test accuracy and loss at `step`, as one JSON line in `dir/step_N.json`.
    fn save_samples(&self, gpu: &Gpu, dir: &std::path::Path, step: u64) -> Result<()> {
        let (acc, loss) = self.evaluate(gpu, &self.test)?;
        log::info!("step {step}: test accuracy {:.2}%, loss {loss:.4}", 100.0 * acc);
        let path = dir.join(format!("step_{step:07}.json"));
        let line = serde_json::json!({ "step": step, "test_images": self.test.len(), "test_accuracy": acc, "test_loss": loss });
        std::fs::write(&path, format!("{line}\n")).map_err(|source| crate::Error::Io { path: path.display().to_string(), source })
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
    fn config_json(&self) -> String {
        let c = &self.config;
        serde_json::json!({ "model": "classifier", "image": c.image, "classes": c.classes, "batch": c.batch, "lr": c.lr, "seed": c.seed }).to_string()
    }
}
