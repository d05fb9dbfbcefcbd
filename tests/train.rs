//! End-to-end training on the built-in digits: losses fall, files appear, and a resumed run
//! equals an uninterrupted one.

use kiln::data::synthetic::{digits, DigitsOptions};
use kiln::gpu::{Gpu, GpuOptions};
use kiln::models::{dcgan::ImageShape, vae::Kind};
use kiln::train::checkpoint::Checkpoint;
use kiln::train::data::GpuData;
use kiln::train::gan::{Gan, GanConfig, Recipe};
use kiln::train::run::{checkpoint_path, run, RunOptions};
use kiln::train::vae::{VaeConfig, VaeTrainer};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

fn gpu() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| Gpu::new(&GpuOptions::default()).unwrap_or_else(|e| panic!("{e}")))
}

fn out_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kiln-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn options(out: &Path, steps: u64) -> RunOptions {
    RunOptions { out: out.to_path_buf(), steps: Some(steps), epochs: None, checkpoint_every: 1000, sample_every: 1000, log_every: 1, resume: false, seed: 3 }
}

fn small_digits() -> kiln::data::Splits {
    digits(&DigitsOptions { seed: 1, train: 512, test: 128 }).unwrap()
}

fn vae_config() -> VaeConfig {
    VaeConfig { kind: Kind::Mlp, image: [1, 28, 28], latent: 8, hidden: 64, batch: 32, lr: 3e-3, seed: 5 }
}

fn metrics(out: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn the_vae_loss_falls_on_the_built_in_digits() {
    let gpu = gpu();
    let splits = small_digits();
    let (train, test) = (GpuData::upload(gpu, &splits.train).unwrap(), GpuData::upload(gpu, &splits.test).unwrap());
    let vae = VaeTrainer::new(gpu, vae_config(), &train, &test).unwrap();
    let before = vae.evaluate(gpu, &test).unwrap().0;
    let out = out_dir("vae-falls");
    let summary = run(gpu, &vae, &train, &options(&out, 60)).unwrap();
    let after = vae.evaluate(gpu, &test).unwrap().0;
    let lines = metrics(&out);
    let first = lines.first().unwrap()["loss"].as_f64().unwrap();
    let last = lines.last().unwrap()["loss"].as_f64().unwrap();
    eprintln!("train loss {first:.1} -> {last:.1}; test {before:.1} -> {after:.1} nats/image; {:.0} img/s", summary.images_per_second);
    assert!(last < 0.6 * first, "training loss {first} -> {last}");
    assert!(after < 0.6 * before, "test loss {before} -> {after}");
    assert!(out.join("samples/step_0000060.png").exists());
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn a_gan_trains_with_finite_losses_and_writes_a_sample_grid_and_checkpoint() {
    let gpu = gpu();
    let splits = small_digits();
    let train = GpuData::upload(gpu, &splits.train).unwrap();
    let config = GanConfig { image: ImageShape { channels: 1, size: 28 }, batch: 4, recipe: Recipe::Paper, lr_g: None, lr_d: None, real_label: 0.9, seed: 2 };
    let gan = Gan::new(gpu, config, &train).unwrap();
    let out = out_dir("gan");
    run(gpu, &gan, &train, &options(&out, 3)).unwrap();
    let lines = metrics(&out);
    assert_eq!(lines.len(), 3);
    for l in &lines {
        for key in ["d_loss", "g_loss", "d_real", "d_fake"] {
            assert!(l[key].as_f64().unwrap().is_finite(), "{key} in {l}");
        }
    }
    let grid = image::open(out.join("samples/step_0000003.png")).unwrap();
    // 8 x 8 samples of 28 pixels with torchvision's 2-pixel padding.
    assert_eq!((grid.width(), grid.height()), (8 * 30 + 2, 8 * 30 + 2));
    let ckpt = Checkpoint::load(&checkpoint_path(&out)).unwrap();
    assert_eq!(ckpt.meta("kind").unwrap(), "gan");
    assert_eq!(ckpt.meta_parse::<u64>("step").unwrap(), 3);
    assert_eq!(ckpt.tensor("generator.0.weight").unwrap().0, vec![7 * 7 * 256, 100]);
    assert!(ckpt.tensors.contains_key("generator.1.running_var"));
    assert!(ckpt.tensors.contains_key("discriminator.exp_avg"));
    std::fs::remove_dir_all(&out).unwrap();
}

/// Trains `steps` VAE steps into `out` (resuming if asked) with a fresh model and optimizer.
fn vae_run(out: &Path, steps: u64, resume: bool, checkpoint_every: u64) -> Checkpoint {
    let gpu = gpu();
    let splits = small_digits();
    let (train, test) = (GpuData::upload(gpu, &splits.train).unwrap(), GpuData::upload(gpu, &splits.test).unwrap());
    let vae = VaeTrainer::new(gpu, vae_config(), &train, &test).unwrap();
    let opts = RunOptions { resume, checkpoint_every, ..options(out, steps) };
    run(gpu, &vae, &train, &opts).unwrap();
    Checkpoint::load(&checkpoint_path(out)).unwrap()
}

#[test]
fn resuming_from_a_checkpoint_gives_the_same_parameters_as_an_uninterrupted_run() {
    // 20 steps of 32 cross an epoch boundary of the 512-image set (16 steps per epoch).
    let straight = out_dir("straight");
    let whole = vae_run(&straight, 20, false, 1000);
    let split = out_dir("split");
    let first = vae_run(&split, 9, false, 1000);
    assert_eq!(first.meta_parse::<u64>("step").unwrap(), 9);
    let resumed = vae_run(&split, 20, true, 1000);
    assert_eq!(resumed.meta_parse::<u64>("step").unwrap(), 20);
    assert_eq!(whole.tensors.keys().collect::<Vec<_>>(), resumed.tensors.keys().collect::<Vec<_>>());
    for (name, (_, want)) in &whole.tensors {
        assert_eq!(&resumed.tensors[name].1, want, "{name} differs after resuming");
    }
    assert_eq!(whole.meta("vae.step").unwrap(), resumed.meta("vae.step").unwrap());
    for dir in [straight, split] {
        std::fs::remove_dir_all(dir).unwrap();
    }
}

#[test]
fn a_corrupt_or_mismatched_checkpoint_is_a_clear_error() {
    let gpu = gpu();
    let splits = small_digits();
    let (train, test) = (GpuData::upload(gpu, &splits.train).unwrap(), GpuData::upload(gpu, &splits.test).unwrap());
    let out = out_dir("corrupt");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(checkpoint_path(&out), b"this is not a checkpoint").unwrap();
    let vae = VaeTrainer::new(gpu, vae_config(), &train, &test).unwrap();
    let opts = RunOptions { resume: true, ..options(&out, 2) };
    let err = run(gpu, &vae, &train, &opts).err().expect("must fail").to_string();
    assert!(err.contains("checkpoint.safetensors") && err.contains("not a kiln checkpoint"), "{err}");

    // A checkpoint of a model with another latent size names the mismatched tensor.
    let other = VaeTrainer::new(gpu, VaeConfig { latent: 4, ..vae_config() }, &train, &test).unwrap();
    std::fs::remove_file(checkpoint_path(&out)).unwrap();
    run(gpu, &other, &train, &options(&out, 1)).unwrap();
    let err = run(gpu, &vae, &train, &opts).err().expect("must fail").to_string();
    assert!(err.contains("checkpoint tensor \"fc21.") && err.contains("is [4") && err.contains("expects [8"), "{err}");
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn a_killed_run_resumes_from_its_last_checkpoint() {
    use std::process::{Command, Stdio};
    let bin = env!("CARGO_BIN_EXE_kiln");
    let out = out_dir("killed");
    let args = |steps: u64| {
        let steps = steps.to_string();
        let out = out.to_str().unwrap().to_string();
        ["train", "vae", "--batch-size", "32", "--checkpoint-every", "5", "--log-every", "1", "--seed", "3", "--out", &out, "--steps", &steps]
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
    };
    let mut child = Command::new(bin).args(args(1_000_000)).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let ckpt = checkpoint_path(&out);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !ckpt.exists() {
        assert!(std::time::Instant::now() < deadline, "no checkpoint within 120 s");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let saved: u64 = Checkpoint::load(&ckpt).unwrap().meta_parse("step").unwrap();
    assert!(saved >= 5 && saved % 5 == 0, "checkpoint at step {saved}");

    let status = Command::new(bin).args(args(saved + 3)).arg("--resume").stdout(Stdio::null()).stderr(Stdio::null()).status().unwrap();
    assert!(status.success());
    assert_eq!(Checkpoint::load(&ckpt).unwrap().meta_parse::<u64>("step").unwrap(), saved + 3);
    // The resumed process logged exactly the steps after the checkpoint: nothing before it
    // was redone and nothing after it skipped.
    let steps: Vec<u64> = metrics(&out).iter().map(|l| l["step"].as_u64().unwrap()).collect();
    let resumed_from = steps.iter().rposition(|&s| s == saved).expect("the resumed run logs the step after the checkpoint");
    assert_eq!(&steps[resumed_from..], &[saved, saved + 1, saved + 2]);
    std::fs::remove_dir_all(&out).unwrap();
}
