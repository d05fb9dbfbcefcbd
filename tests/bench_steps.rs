//! `kiln bench steps` times the steps `kiln train` runs: the same shuffles, batches, random
//! streams and dispatches, so a benchmarked trainer ends where a training run of as many steps
//! does, bit for bit.

use kiln::bench::steps::{time_training_steps, WARM_UP_STEPS};
use kiln::data::synthetic::{digits, DigitsOptions};
use kiln::gpu::{Gpu, GpuOptions};
use kiln::models::vae::Kind;
use kiln::train::data::GpuData;
use kiln::train::run::{run, RunOptions, Trainer};
use kiln::train::vae::{VaeConfig, VaeTrainer};
use std::sync::OnceLock;

fn gpu() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| Gpu::new(&GpuOptions::default()).unwrap_or_else(|e| panic!("{e}")))
}

/// 40 training images: with batches of 12, an epoch is 3 steps, so the timed steps cross
/// epochs (a reshuffle) as a training run does.
fn data() -> kiln::data::Splits {
    digits(&DigitsOptions { seed: 2, train: 40, test: 12 }).unwrap()
}

fn config(batch: usize) -> VaeConfig {
    VaeConfig { kind: Kind::Mlp, image: [1, 28, 28], latent: 3, hidden: 17, batch, lr: 1e-2, seed: 7, beta: 1.0, classes: None }
}

fn params(gpu: &Gpu, trainer: &VaeTrainer) -> Vec<(String, Vec<f32>)> {
    let store = trainer.store();
    store.param_names().map(|n| (n.clone(), gpu.read(&store.param(n).unwrap().buffer).unwrap())).collect()
}

#[test]
fn benchmarked_steps_are_the_training_loops_steps() {
    let gpu = gpu();
    let splits = data();
    let timed = 2;
    let (train, test) = (GpuData::upload(gpu, &splits.train).unwrap(), GpuData::upload(gpu, &splits.test).unwrap());
    let benched = VaeTrainer::new(gpu, config(12), &train, &test).unwrap();
    let before = params(gpu, &benched);
    let timing = time_training_steps(gpu, &benched, &train, timed).unwrap();
    eprintln!("{}", timing.json("vae-mlp"));

    // Warm-up, back-to-back and one-at-a-time steps, all of them training steps.
    let total = WARM_UP_STEPS + 2 * timed;
    let (train2, test2) = (GpuData::upload(gpu, &splits.train).unwrap(), GpuData::upload(gpu, &splits.test).unwrap());
    let trained = VaeTrainer::new(gpu, config(12), &train2, &test2).unwrap();
    let out = std::env::temp_dir().join(format!("kiln-test-{}-bench-steps", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let opts = RunOptions { out: out.clone(), steps: Some(total), epochs: None, checkpoint_every: 1000, sample_every: 1000, log_every: 1000, resume: false, seed: 0, eval: None };
    run(gpu, &trained, &train2, &opts).unwrap();
    std::fs::remove_dir_all(&out).unwrap();

    let (after_bench, after_run) = (params(gpu, &benched), params(gpu, &trained));
    assert!(before.iter().zip(&after_bench).all(|(a, b)| a.1 != b.1), "every parameter moves during the benchmark");
    for ((name, got), (_, want)) in after_bench.iter().zip(&after_run) {
        assert_eq!(got, want, "{name}: the benchmark's {total} steps differ from `kiln train`'s");
    }

    assert_eq!((timing.batch, timing.steps), (12, timed));
    let lists = benched.step_dispatches();
    assert_eq!(timing.dispatches, lists.iter().map(|l| l.len()).sum::<usize>());
    let flops: u64 = lists.iter().flat_map(|l| l.iter()).map(|d| d.cost.flops).sum();
    assert_eq!(timing.flops, flops as f64);
    for seconds in [timing.pipelined, timing.alone] {
        assert!(seconds.is_finite() && seconds > 0.0, "{timing:?}");
    }
    assert_eq!(timing.images_per_second(), 12.0 / timing.pipelined);
}

#[test]
fn a_batch_larger_than_the_data_is_refused() {
    let gpu = gpu();
    let splits = data();
    let (train, test) = (GpuData::upload(gpu, &splits.train).unwrap(), GpuData::upload(gpu, &splits.test).unwrap());
    let vae = VaeTrainer::new(gpu, config(12), &train, &test).unwrap();
    // The trainer refuses a batch over its own data; the benchmark refuses smaller data.
    let few = GpuData::upload(gpu, &digits(&DigitsOptions { seed: 3, train: 8, test: 1 }).unwrap().train).unwrap();
    let err = time_training_steps(gpu, &vae, &few, 1).unwrap_err().to_string();
    assert!(err.contains("batch size 12 is larger than the dataset (8 images)"), "{err}");
}
