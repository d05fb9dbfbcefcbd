//! The VAE training step (gather, forward, backward, Adam in one submit) and its evaluation
//! on held-out images: BCE(sum) + KL per image in nats, as PyTorch's example reports it.

use super::data::GpuData;
use super::gan::differentiate;
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
}

pub struct VaeTrainer {
    pub config: VaeConfig,
    pub model: Vae,
    pub store: Store,
    gather: Dispatch,
    step: Program,
    pub opt: Optimizer,
    logged: Vec<Buffer>,
    eval: Program,
    eval_gather: Dispatch,
    eval_outputs: [Tensor; 3],
    sampler: Program,
    sample_images: Tensor,
}

const EPS_STREAM: u64 = 0xE95;
pub const SAMPLES: usize = 64;

/// The graph of one batch: the input gathered as [0, 1] pixels, the loss and its parts.
fn batch_graph(model: &Vae, b: usize, input: &str, seed: u64) -> Result<(Graph, [Tensor; 4])> {
    let mut g = Graph::new();
    let pixels: usize = model.image.iter().product();
    let flat = g.input(input, &[b, pixels]);
    let x = g.reshape(flat, &model.input_shape(b))?;
    let out = model.loss(&mut g, x, flat, seed)?;
    Ok((g, out))
}

impl VaeTrainer {
    pub fn new(gpu: &Gpu, config: VaeConfig, train: &GpuData, test: &GpuData) -> Result<VaeTrainer> {
        for (set, data) in [("training", train), ("test", test)] {
            if data.len < config.batch {
                crate::bail!(Invalid, "the {set} set ({} images) is smaller than one batch of {}", data.len, config.batch);
            }
        }
        let model = Vae::new(config.kind, config.image, config.latent, config.hidden)?;
        let mut store = Store::new();
        let mut rng = InitRng::new(config.seed);
        let (mut params, mut states) = (Vec::new(), Vec::new());
        for part in model.parts() {
            let (p, s) = part.init(&mut rng);
            params.extend(p);
            states.extend(s);
        }
        crate::nn::register(gpu, &mut store, "vae", params, states)?;
        let b = config.batch;
        let seed = config.seed ^ EPS_STREAM;

        let (mut g, [loss, bce, kl, _]) = batch_graph(&model, b, "batch", seed)?;
        // The MLP's layers have no common prefix: every parameter of the graph is the model's.
        let params: Vec<Tensor> = (0..g.tensors.len()).map(Tensor::from_index).filter(|&t| g.info(t).role == crate::graph::Role::Param).collect();
        let grads = differentiate(&mut g, loss, &params)?;
        let step = Program::compile(gpu, &g, &mut store, &[loss, bce, kl], &grads)?;
        let logged = [loss, bce, kl].iter().map(|&t| step.buffer(t).clone()).collect();

        let (g, [loss_e, bce_e, _, recon]) = batch_graph(&model, b, "eval_batch", seed)?;
        let mut g = g;
        let target = g.tensors.iter().position(|t| t.name == "eval_batch").map(Tensor::from_index).expect("declared");
        let mse = g.apply1(Loss(LossKind::Mse(Reduction::Sum)), &[recon, target], "mse")?;
        let eval = Program::compile(gpu, &g, &mut store, &[loss_e, bce_e, mse], &[])?;

        let mut g = Graph::new();
        let z = g.input("sample_z", &[SAMPLES, config.latent]);
        let images = model.decode(&mut g, z)?;
        let sampler = Program::compile(gpu, &g, &mut store, &[images], &[])?;

        let input = |name: &str| store.input_buffer(name).expect("compiled").buffer.clone();
        let gather = train.gather(gpu, b, 1.0 / 255.0, 0.0, &input("batch"))?;
        let eval_gather = test.gather(gpu, b, 1.0 / 255.0, 0.0, &input("eval_batch"))?;
        let opt = Optimizer::new(gpu, &store, "vae", Config::Adam(Adam { lr: config.lr, ..Adam::default() }))?;
        Ok(VaeTrainer { config, model, store, gather, step, opt, logged, eval, eval_gather, eval_outputs: [loss_e, bce_e, mse], sampler, sample_images: images })
    }

    pub fn memory(&self) -> (u64, u64) {
        (self.step.memory.planned, self.step.memory.naive)
    }

    /// Mean test loss per image (BCE(sum) + KL, nats) and reconstruction MSE per pixel over
    /// the full batches of `test`.
    pub fn evaluate(&self, gpu: &Gpu, test: &GpuData) -> Result<(f64, f64)> {
        let b = self.config.batch;
        let batches = test.len / b;
        if batches == 0 {
            crate::bail!(Invalid, "the test set ({} images) is smaller than one batch of {b}", test.len);
        }
        test.unshuffle(gpu)?;
        let (mut loss, mut mse) = (0.0, 0.0);
        for i in 0..batches {
            test.select(gpu, &self.eval_gather, b, i);
            self.eval.set_step(gpu, i as u64)?;
            gpu.submit("evaluation", &[std::slice::from_ref(&self.eval_gather), &self.eval.dispatches], None)?;
            loss += gpu.read(self.eval.buffer(self.eval_outputs[0]))?[0] as f64;
            mse += gpu.read(self.eval.buffer(self.eval_outputs[2]))?[0] as f64;
        }
        let images = (batches * b) as f64;
        Ok((loss / images, mse / (images * self.model.image.iter().product::<usize>() as f64)))
    }

    /// Decoded images (pixel probabilities) for latent codes `z` ([SAMPLES, latent]).
    pub fn decode(&self, gpu: &Gpu, z: &[f32]) -> Result<Vec<f32>> {
        gpu.write(&self.store.input_buffer("sample_z").expect("compiled").buffer, z)?;
        self.sampler.run(gpu)?;
        gpu.read(self.sampler.buffer(self.sample_images))
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
    fn step_dispatches(&self) -> Vec<&[Dispatch]> {
        vec![std::slice::from_ref(&self.gather), &self.step.dispatches, &self.opt.dispatches]
    }
    fn prepare(&self, gpu: &Gpu, data: &GpuData, step: u64, batch_index: usize) -> Result<()> {
        data.select(gpu, &self.gather, self.config.batch, batch_index);
        self.step.set_step(gpu, step)
    }
    fn save_samples(&self, gpu: &Gpu, dir: &std::path::Path, step: u64) -> Result<()> {
        let z = InitRng::new(self.config.seed ^ 0x5A3D).normal(SAMPLES * self.config.latent, 0.0, 1.0);
        let images = self.decode(gpu, &z)?;
        let [c, h, w] = self.config.image;
        crate::data::images::save_grid(&images, [SAMPLES, c, h, w], 8, dir.join(format!("step_{step:07}.png")))
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
    fn config_json(&self) -> String {
        let c = &self.config;
        serde_json::json!({
            "model": "vae", "kind": format!("{:?}", c.kind).to_lowercase(), "image": c.image, "latent": c.latent,
            "hidden": c.hidden, "batch": c.batch, "lr": c.lr, "seed": c.seed,
        })
        .to_string()
    }
}
