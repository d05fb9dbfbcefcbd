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
    RunOptions { out: out.to_path_buf(), steps: Some(steps), epochs: None, checkpoint_every: 1000, sample_every: 1000, log_every: 1, resume: false, seed: 3, eval: None }
}

fn small_digits() -> kiln::data::Splits {
    digits(&DigitsOptions { seed: 1, train: 512, test: 128 }).unwrap()
}

fn vae_config() -> VaeConfig {
    VaeConfig { kind: Kind::Mlp, image: [1, 28, 28], latent: 8, hidden: 64, batch: 32, lr: 3e-3, seed: 5, beta: 1.0, classes: None }
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
    // The logged loss is per image, as the test loss is (not a sum over the batch).
    assert!((last / after - 1.0).abs() < 0.3, "training loss {last} per image vs test {after}");
    assert!(out.join("samples/step_0000060.png").exists());
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn a_gan_trains_with_finite_losses_and_writes_a_sample_grid_and_checkpoint() {
    let gpu = gpu();
    let splits = small_digits();
    let train = GpuData::upload(gpu, &splits.train).unwrap();
    let config = GanConfig { image: ImageShape { channels: 1, size: 28 }, batch: 4, recipe: Recipe::Paper, lr_g: None, lr_d: None, real_label: 0.9, seed: 2, ..GanConfig::default() };
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
        ["train", "vae", "--vae-model", "mlp", "--batch-size", "32", "--checkpoint-every", "5", "--log-every", "1", "--seed", "3", "--out", &out, "--steps", &steps]
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

/// `kiln train gan --recipe NAME` trains with what the recipe names (loss, spectral norm,
/// generator average; without `--recipe`, the first of `RECIPES`), and the flags given
/// explicitly win over it.
#[test]
fn a_named_recipe_sets_its_options_and_explicit_flags_override_them() {
    use kiln::train::gan::{NamedRecipe, RECIPES};
    let out = out_dir("recipe-cli");
    let data = digit_folder(&out.join("digits"), 20);
    let trained = |name: &str, flags: &[&str]| -> (serde_json::Value, bool) {
        let dir = out.join(name);
        let mut args = vec!["train", "gan", "--data", &data, "--steps", "1", "--batch-size", "2", "--out", dir.to_str().unwrap()];
        args.extend(flags);
        let (ok, _, stderr) = kiln_cli(&args);
        assert!(ok, "{name}: {stderr}");
        let ckpt = Checkpoint::load(&checkpoint_path(&dir)).unwrap();
        let averaged = ckpt.tensors.keys().any(|k| k.starts_with("ema."));
        (serde_json::from_str(&ckpt.metadata["config"]).unwrap(), averaged)
    };
    let as_named = |name: &str, (config, averaged): &(serde_json::Value, bool)| {
        let r = NamedRecipe::parse(name).unwrap();
        assert_eq!(config["loss"], r.loss.name(), "{name}: {config}");
        assert_eq!(config["spectral_norm"], r.spectral_norm.name(), "{name}: {config}");
        assert_eq!(config["ema"].as_f64().map(|d| d as f32), r.ema, "{name}: {config}");
        assert_eq!(*averaged, r.ema.is_some(), "{name}: ema.* tensors in the checkpoint");
    };
    as_named(RECIPES[0].name, &trained("default", &[]));
    for r in RECIPES {
        as_named(r.name, &trained(r.name, &["--recipe", r.name]));
    }
    let (config, averaged) = trained("overridden", &["--recipe", "paper-ema", "--no-ema", "--loss", "hinge", "--spectral-norm", "d"]);
    assert!(config["ema"].is_null() && !averaged && config["loss"] == "hinge" && config["spectral_norm"] == "d", "{config}");
    let (config, averaged) = trained("ema-added", &["--recipe", "paper", "--ema", "0.99"]);
    assert!((config["ema"].as_f64().unwrap() - 0.99).abs() < 1e-6 && averaged, "{config}");
    let (ok, _, stderr) = kiln_cli(&["train", "gan", "--data", &data, "--recipe", "papr", "--steps", "1"]);
    assert!(!ok && stderr.contains("papr") && RECIPES.iter().all(|r| stderr.contains(r.name)), "{stderr}");
    std::fs::remove_dir_all(&out).unwrap();
}

/// `--recipe seed` is the TensorFlow tutorial's `train_step`: both networks' gradients from
/// one forward pass, D's before its update reaching G. Checked against that step written out
/// as two programs over one store (D's gradients; then G's through the same, not yet updated,
/// D with the same dropout masks), then both Adams, for three steps.
#[test]
fn the_seed_recipe_updates_both_networks_from_one_forward_pass() {
    use kiln::graph::ops::{Add, Fill, Loss, LossKind, RandomFill};
    use kiln::graph::{Graph, Program, Store, Tensor};
    use kiln::kernels::loss::Reduction;
    use kiln::models::dcgan::{self, LATENT};
    use kiln::nn::{self, InitRng, Mode};
    use kiln::optim::{Adam, Config, Optimizer};
    use kiln::train::gan::{DROPOUT_FAKE, DROPOUT_REAL, NOISE};
    let gpu = gpu();
    let (b, seed, image) = (4, 2, ImageShape { channels: 1, size: 28 });
    let data = GpuData::upload(gpu, &small_digits().train).unwrap();
    let config = GanConfig { image, batch: b, recipe: Recipe::Seed, lr_g: None, lr_d: None, real_label: 1.0, seed, ..GanConfig::default() };
    let gan = Gan::new(gpu, config, &data).unwrap();

    let (generator, discriminator) = (dcgan::generator(image).unwrap(), dcgan::discriminator(image).unwrap());
    let mut store = Store::new();
    let mut rng = InitRng::new(seed);
    for (model, group) in [(&generator, "generator"), (&discriminator, "discriminator")] {
        let (params, states) = model.init(&mut rng);
        nn::register(gpu, &mut store, group, params, states).unwrap();
    }
    let noise = RandomFill { normal: true, a: 0.0, b: 1.0, seed: seed ^ NOISE, shape: vec![b, LATENT] };
    let bce = |g: &mut Graph, logits: Tensor, label: f32| {
        let target = g.apply1(Fill { value: label, shape: vec![b, 1] }, &[], "label").unwrap();
        g.apply1(Loss(LossKind::BceWithLogits(Reduction::Mean)), &[logits, target], "bce").unwrap()
    };
    let mut g = Graph::new();
    let real = g.input("real", &[b, 1, 28, 28]);
    let z = g.apply1(noise.clone(), &[], "z").unwrap();
    let fake = generator.forward(&mut g, z, Mode::train(0)).unwrap();
    let on_real = discriminator.forward(&mut g, real, Mode::train(seed ^ DROPOUT_REAL)).unwrap();
    let on_fake = discriminator.forward(&mut g, fake, Mode::train(seed ^ DROPOUT_FAKE)).unwrap();
    let (l_real, l_fake) = (bce(&mut g, on_real, 1.0), bce(&mut g, on_fake, 0.0));
    let d_loss = g.apply1(Add, &[l_real, l_fake], "d_loss").unwrap();
    let grads = g.gradients(d_loss, &discriminator.params(&g)).unwrap();
    let d_program = Program::compile(gpu, &g, &mut store, &[d_loss], &grads).unwrap();
    let mut g = Graph::new();
    let z = g.apply1(noise, &[], "z").unwrap();
    let fake = generator.forward(&mut g, z, Mode { update_running: false, ..Mode::train(0) }).unwrap();
    let on_fake = discriminator.forward(&mut g, fake, Mode::train(seed ^ DROPOUT_FAKE)).unwrap();
    let g_loss = bce(&mut g, on_fake, 1.0);
    let grads = g.gradients(g_loss, &generator.params(&g)).unwrap();
    let g_program = Program::compile(gpu, &g, &mut store, &[g_loss], &grads).unwrap();
    let gather = [data.gather(gpu, b, 2.0 / 255.0, -1.0, d_program.buffer(real).unwrap()).unwrap()];
    let adam = Config::Adam(Adam { lr: 1e-4, eps: 1e-7, ..Adam::default() });
    let opt_d = Optimizer::new(gpu, &store, "discriminator", adam).unwrap();
    let opt_g = Optimizer::new(gpu, &store, "generator", adam).unwrap();

    assert_eq!(gan.step_dispatches().len(), 4, "gather, one program, two optimizers");
    data.shuffle(gpu, seed, 0).unwrap();
    for step in 0..3u64 {
        gan.prepare(gpu, &data, step, step as usize).unwrap();
        gpu.submit("seed recipe", &gan.step_dispatches(), None).unwrap();
        data.select(gpu, &gather[0], b, step as usize);
        d_program.set_step(gpu, step).unwrap();
        g_program.set_step(gpu, step).unwrap();
        gpu.submit("by hand", &[&gather, &d_program.dispatches, &g_program.dispatches, &opt_d.dispatches, &opt_g.dispatches], None).unwrap();
        let losses = [gpu.read(&gan.logged[0]).unwrap()[0], gpu.read(&gan.logged[1]).unwrap()[0]];
        let want = [gpu.read(d_program.buffer(d_loss).unwrap()).unwrap()[0], gpu.read(g_program.buffer(g_loss).unwrap()).unwrap()[0]];
        eprintln!("step {step}: d_loss, g_loss {losses:?}, by hand {want:?}");
        for (got, want) in losses.iter().zip(want) {
            assert!((got - want).abs() <= 1e-5 * want.abs().max(1.0), "step {step}: {losses:?} vs {want}");
        }
    }
    for name in gan.store.param_names() {
        let (got, want) = (gpu.read(&gan.store.param(name).unwrap().buffer).unwrap(), gpu.read(&store.param(name).unwrap().buffer).unwrap());
        let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(worst <= 1e-5, "{name} differs by {worst} after 3 steps");
    }
}

// ---- Using checkpoints: kiln sample, eval, encode, decode (issue 4) ----

/// Runs the kiln binary; returns (success, stdout, stderr).
fn kiln_cli(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kiln")).args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// A 2-step VAE checkpoint (MLP, hidden 64, latent 8) in `out`.
fn vae_checkpoint(out: &Path) -> PathBuf {
    vae_run(out, 2, false, 1000);
    checkpoint_path(out)
}

/// A 1-step GAN checkpoint (batch 4) in `out`.
fn gan_checkpoint(out: &Path) -> PathBuf {
    let gpu = gpu();
    let train = GpuData::upload(gpu, &small_digits().train).unwrap();
    let config = GanConfig { image: ImageShape { channels: 1, size: 28 }, batch: 4, recipe: Recipe::Paper, lr_g: None, lr_d: None, real_label: 1.0, seed: 2, ..GanConfig::default() };
    run(gpu, &Gan::new(gpu, config, &train).unwrap(), &train, &options(out, 1)).unwrap();
    checkpoint_path(out)
}

/// `n` of the small digits as a folder of PNGs (kiln splits off 10% as its test set).
fn digit_folder(dir: &Path, n: usize) -> String {
    let train = digits(&DigitsOptions { seed: 1, train: n, test: 1 }).unwrap().train;
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..n {
        kiln::data::images::save_png(train.image(i), [1, 28, 28], dir.join(format!("{i:04}.png"))).unwrap();
    }
    dir.to_str().unwrap().to_string()
}

fn files_in(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    files.iter().map(|p| (p.file_name().unwrap().to_str().unwrap().to_string(), std::fs::read(p).unwrap())).collect()
}

#[test]
fn kiln_sample_writes_numbered_pngs_identical_for_the_same_seed() {
    let out = out_dir("sample-vae");
    let ckpt = vae_checkpoint(&out);
    let ckpt = ckpt.to_str().unwrap();
    // 70 crosses a batch boundary of 64.
    let dirs = [out.join("a"), out.join("b"), out.join("c")];
    for (dir, seed) in dirs.iter().zip(["1", "1", "2"]) {
        let (ok, stdout, stderr) = kiln_cli(&["sample", "--checkpoint", ckpt, "--n", "70", "--seed", seed, "--out", dir.to_str().unwrap()]);
        assert!(ok, "{stdout}{stderr}");
    }
    let [a, b, c] = [0, 1, 2].map(|i| files_in(&dirs[i]));
    assert_eq!(a.len(), 70);
    assert_eq!((a[0].0.as_str(), a[69].0.as_str()), ("000000.png", "000069.png"));
    assert!(a == b, "the same seed must give identical files");
    assert!(a != c, "another seed must give other samples");
    let first = image::open(dirs[0].join("000000.png")).unwrap();
    assert_eq!((first.width(), first.height()), (28, 28));

    let grid = out.join("grid.png");
    let (ok, stdout, stderr) = kiln_cli(&["sample", "--checkpoint", ckpt, "--n", "16", "--out", grid.to_str().unwrap()]);
    assert!(ok, "{stdout}{stderr}");
    let grid = image::open(grid).unwrap();
    // 4 x 4 samples of 28 pixels with 2-pixel padding.
    assert_eq!((grid.width(), grid.height()), (4 * 30 + 2, 4 * 30 + 2));
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn gan_samples_are_images_in_unit_range_and_independent_of_the_count() {
    let gpu = gpu();
    let out = out_dir("sample-gan");
    let ckpt = gan_checkpoint(&out);
    let mut model = kiln::train::infer::load(gpu, &ckpt).unwrap();
    assert_eq!((model.kind(), model.image()), ("gan", [1, 28, 28]));
    let five = model.sample(gpu, 5, 9).unwrap();
    let three = model.sample(gpu, 3, 9).unwrap();
    assert_eq!(five.len(), 5 * 784);
    assert!(five.iter().all(|v| (0.0..=1.0).contains(v)), "samples leave [0, 1]");
    assert_eq!(&five[..3 * 784], &three[..], "sample i depends on the seed and i only");
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn kiln_eval_prints_finite_json_for_a_vae_and_a_gan() {
    let out = out_dir("eval");
    // 70 test images: a batch of 64 and one of 6.
    let data = digit_folder(&out.join("digits"), 700);
    let vae = vae_checkpoint(&out.join("vae"));
    let (ok, stdout, stderr) = kiln_cli(&["eval", "--checkpoint", vae.to_str().unwrap(), "--data", &data, "--json"]);
    assert!(ok, "{stdout}{stderr}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(v["kind"], "vae");
    assert_eq!(v["images"], 70);
    let (nats, mse) = (v["nats"].as_f64().unwrap(), v["mse"].as_f64().unwrap());
    assert!(nats.is_finite() && nats > 0.0, "{v}");
    assert!(mse.is_finite() && mse > 0.0 && mse < 1.0, "{v}");
    // Without --seed, eval draws eps from the training run's seed (5), as training's own evaluation does.
    let nats_with = |seed: &str| {
        let (ok, stdout, stderr) = kiln_cli(&["eval", "--checkpoint", vae.to_str().unwrap(), "--data", &data, "--json", "--seed", seed]);
        assert!(ok, "{stdout}{stderr}");
        serde_json::from_str::<serde_json::Value>(stdout.trim()).unwrap()["nats"].as_f64().unwrap()
    };
    assert_eq!(nats, nats_with("5"));
    assert_ne!(nats, nats_with("6"));

    let gan = gan_checkpoint(&out.join("gan"));
    let (ok, stdout, stderr) = kiln_cli(&["eval", "--checkpoint", gan.to_str().unwrap(), "--data", &data, "--json"]);
    assert!(ok, "{stdout}{stderr}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!((&v["kind"], &v["images"]), (&serde_json::json!("gan"), &serde_json::json!(70)));
    for key in ["d_real", "d_fake"] {
        let p = v[key].as_f64().unwrap();
        assert!(p.is_finite() && (0.0..=1.0).contains(&p), "{key} in {v}");
    }
    let (ok, stdout, _) = kiln_cli(&["eval", "--checkpoint", gan.to_str().unwrap(), "--data", &data]);
    assert!(ok && stdout.trim().lines().count() == 1 && stdout.contains("D(real)"), "{stdout}");
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn vae_latents_round_trip_through_encode_and_decode() {
    let out = out_dir("encode");
    let data = digit_folder(&out.join("digits"), 100);
    let ckpt = vae_checkpoint(&out.join("vae"));
    let latents = out.join("latents.safetensors");
    let (ok, stdout, stderr) = kiln_cli(&["encode", "--checkpoint", ckpt.to_str().unwrap(), "--data", &data, "--out", latents.to_str().unwrap()]);
    assert!(ok, "{stdout}{stderr}");
    let file = Checkpoint::load(&latents).unwrap();
    // 90 training images after the 10% test split.
    assert_eq!(file.tensor("mu").unwrap().0, vec![90, 8]);
    assert_eq!(file.tensor("logvar").unwrap().0, vec![90, 8]);
    assert!(file.tensor("mu").unwrap().1.iter().all(|v| v.is_finite()));
    let decoded = out.join("decoded");
    let (ok, stdout, stderr) = kiln_cli(&["decode", "--checkpoint", ckpt.to_str().unwrap(), "--latents", latents.to_str().unwrap(), "--out", decoded.to_str().unwrap()]);
    assert!(ok, "{stdout}{stderr}");
    let files = files_in(&decoded);
    assert_eq!(files.len(), 90);
    let img = image::open(decoded.join("000089.png")).unwrap();
    assert_eq!((img.width(), img.height()), (28, 28));

    // Decoding directly gives the same images as decoding mu through the library.
    let gpu = gpu();
    let mut model = kiln::train::infer::load(gpu, &ckpt).unwrap();
    let images = model.generate(gpu, &file.tensor("mu").unwrap().1).unwrap();
    assert_eq!(images.len(), 90 * 784);
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn bad_checkpoints_and_wrong_kinds_are_clear_errors_naming_the_file() {
    let out = out_dir("infer-errors");
    std::fs::create_dir_all(&out).unwrap();
    let missing = out.join("missing.safetensors");
    let (ok, _, stderr) = kiln_cli(&["sample", "--checkpoint", missing.to_str().unwrap(), "--out", out.join("s.png").to_str().unwrap()]);
    assert!(!ok && stderr.contains("missing.safetensors"), "{stderr}");

    let corrupt = out.join("corrupt.safetensors");
    std::fs::write(&corrupt, b"not safetensors at all").unwrap();
    let (ok, _, stderr) = kiln_cli(&["eval", "--checkpoint", corrupt.to_str().unwrap()]);
    assert!(!ok && stderr.contains("corrupt.safetensors") && stderr.contains("not a kiln checkpoint"), "{stderr}");

    // A safetensors file without kiln's metadata.
    let bare = out.join("bare.safetensors");
    kiln::train::infer::latents_checkpoint(vec![0.0; 8], vec![0.0; 8], None, 1).save(&bare).unwrap();
    let err = kiln::train::infer::load(gpu(), &bare).err().expect("must fail").to_string();
    assert!(err.contains("bare.safetensors") && err.contains("config"), "{err}");

    let gan = gan_checkpoint(&out.join("gan"));
    let (ok, _, stderr) = kiln_cli(&["encode", "--checkpoint", gan.to_str().unwrap(), "--out", out.join("l.safetensors").to_str().unwrap()]);
    assert!(!ok && stderr.contains("checkpoint.safetensors") && stderr.contains("needs a VAE"), "{stderr}");
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn evaluating_a_vae_checkpoint_agrees_with_the_trainers_evaluation() {
    let gpu = gpu();
    // 100 test images: a batch of 64 and a partial one of 36, which both must cover.
    let splits = digits(&DigitsOptions { seed: 1, train: 512, test: 100 }).unwrap();
    let (train, test) = (GpuData::upload(gpu, &splits.train).unwrap(), GpuData::upload(gpu, &splits.test).unwrap());
    let vae = VaeTrainer::new(gpu, vae_config(), &train, &test).unwrap();
    let out = out_dir("eval-agrees");
    run(gpu, &vae, &train, &options(&out, 5)).unwrap();
    let (nats, mse) = vae.evaluate(gpu, &test).unwrap();
    let mut model = kiln::train::infer::load(gpu, &checkpoint_path(&out)).unwrap();
    let evaluate = |model: &mut kiln::train::infer::Loaded, test: &kiln::data::Dataset, seed| match model.evaluate(gpu, test, seed, 0).unwrap() {
        kiln::train::infer::Evaluation::Vae { images, nats, mse, iwae: None } => (images, nats, mse),
        other => panic!("a VAE checkpoint evaluates as a VAE, got {other:?}"),
    };
    // The trainer draws eps from the run's seed.
    let (images, got_nats, got_mse) = evaluate(&mut model, &splits.test, vae_config().seed);
    eprintln!("trainer {nats:.4} nats, mse {mse:.6}; checkpoint {got_nats:.4} nats, mse {got_mse:.6}");
    assert_eq!(images, 100);
    assert_eq!((got_nats, got_mse), (nats, mse), "one evaluation, the same weights, data and eps");
    // Without the last 36 images the numbers differ: the agreement above covers them.
    let first = splits.test.subset("first 64", &(0..64).collect::<Vec<_>>()).unwrap();
    let (_, first_nats, _) = evaluate(&mut model, &first, vae_config().seed);
    assert_ne!(first_nats, nats);
    let (_, other_nats, _) = evaluate(&mut model, &splits.test, vae_config().seed + 1);
    assert!(other_nats != nats && (other_nats - nats).abs() < 0.05 * nats, "another eps: {other_nats} vs {nats}");
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn the_importance_weighted_bound_starts_at_the_elbo_and_tightens_with_k() {
    let gpu = gpu();
    let splits = digits(&DigitsOptions { seed: 2, train: 512, test: 40 }).unwrap();
    let (train, test) = (GpuData::upload(gpu, &splits.train).unwrap(), GpuData::upload(gpu, &splits.test).unwrap());
    let vae = VaeTrainer::new(gpu, vae_config(), &train, &test).unwrap();
    let out = out_dir("iwae");
    run(gpu, &vae, &train, &options(&out, 20)).unwrap();
    let mut model = kiln::train::infer::load(gpu, &checkpoint_path(&out)).unwrap();
    let mut bound = |test: &kiln::data::Dataset, k| match model.evaluate(gpu, test, 3, k).unwrap() {
        kiln::train::infer::Evaluation::Vae { nats, iwae: Some((got_k, iwae)), .. } if got_k == k => (nats, iwae),
        other => panic!("a VAE evaluation with k = {k}, got {other:?}"),
    };
    // k = 1 is a one-sample ELBO with other eps (1,024 rows per batch hold 40 images once
    // each); more samples give a tighter bound: a lower -log p(x).
    let (elbo, k1) = bound(&splits.test, 1);
    let (_, k16) = bound(&splits.test, 16);
    let (_, k64) = bound(&splits.test, 64);
    eprintln!("ELBO {elbo:.3}, IWAE k=1 {k1:.3}, k=16 {k16:.3}, k=64 {k64:.3} nats");
    assert!((k1 - elbo).abs() < 0.03 * elbo, "k = 1 is the ELBO up to its eps: {k1} vs {elbo}");
    assert!(k64 < k16 && k16 < k1, "the bound tightens with k: {k1} > {k16} > {k64}");
    // Binarized images: deterministic per seed, and only 0 and 1.
    let (binary, again) = (splits.test.binarized(5).unwrap(), splits.test.binarized(5).unwrap());
    assert_eq!(binary.images(), again.images());
    assert!(binary.images().iter().all(|&p| p == 0 || p == 255));
    assert_ne!(binary.images(), splits.test.binarized(6).unwrap().images());
    let (_, b16) = bound(&binary, 16);
    assert!(b16.is_finite() && b16 > 0.0, "{b16}");
    std::fs::remove_dir_all(&out).unwrap();
}

// ---- VAE reconstructions and latent interpolation (kiln sample, training grids) ----

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max)
}

#[test]
fn kiln_sample_on_a_vae_writes_reconstruction_and_interpolation_grids_deterministic_per_seed() {
    let out = out_dir("sample-views");
    let ckpt = vae_checkpoint(&out);
    let grids = |name: &str, seed: &str| {
        let png = out.join(format!("{name}.png"));
        let (ok, stdout, stderr) = kiln_cli(&["sample", "--checkpoint", ckpt.to_str().unwrap(), "--seed", seed, "--out", png.to_str().unwrap()]);
        assert!(ok, "{stdout}{stderr}");
        ["", "_reconstructions", "_interpolation"].map(|suffix| std::fs::read(out.join(format!("{name}{suffix}.png"))).unwrap())
    };
    let (a, b, c) = (grids("a", "1"), grids("b", "1"), grids("c", "2"));
    let size = |bytes: &[u8]| {
        let img = image::load_from_memory(bytes).unwrap();
        (img.width(), img.height())
    };
    // 28-pixel images with 2-pixel padding: 8 x 8 samples; 8 rows of 8 test images each
    // above its reconstructions; 8 interpolations of 11 steps.
    assert_eq!(size(&a[0]), (8 * 30 + 2, 8 * 30 + 2));
    assert_eq!(size(&a[1]), (8 * 30 + 2, 16 * 30 + 2));
    assert_eq!(size(&a[2]), (11 * 30 + 2, 8 * 30 + 2));
    assert!(a == b, "the same seed must give identical files");
    assert!(a[1] != c[1] && a[2] != c[2], "another seed must show other test images");
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn vae_interpolations_start_and_end_at_reconstructions_and_pass_the_mean_latent() {
    use kiln::train::infer::{LERP_ROWS, LERP_STEPS};
    let gpu = gpu();
    let out = out_dir("interpolation");
    let ckpt = vae_checkpoint(&out);
    let mut model = kiln::train::infer::load(gpu, &ckpt).unwrap();
    let test = small_digits().test;
    let views = model.vae_views(gpu, &test, 7).unwrap();
    let px = 784;
    assert_eq!(views.pairs.len(), LERP_ROWS);
    assert_eq!(views.interpolation.len(), LERP_ROWS * LERP_STEPS * px);
    let images = |indices: Vec<usize>| test.subset("t", &indices).unwrap().to_f32(0.0, 1.0);
    let (mu_a, _) = model.encode(gpu, &images(views.pairs.iter().map(|p| p.0).collect()), None).unwrap();
    let (mu_b, _) = model.encode(gpu, &images(views.pairs.iter().map(|p| p.1).collect()), None).unwrap();
    let mean: Vec<f32> = mu_a.iter().zip(&mu_b).map(|(a, b)| (a + b) / 2.0).collect();
    let [start, end, middle] = [&mu_a, &mu_b, &mean].map(|z| model.generate(gpu, z).unwrap());
    let column = |j: usize| -> Vec<f32> { (0..LERP_ROWS).flat_map(|r| views.interpolation[(r * LERP_STEPS + j) * px..][..px].to_vec()).collect() };
    let diffs = [max_diff(&column(0), &start), max_diff(&column(LERP_STEPS - 1), &end), max_diff(&column(LERP_STEPS / 2), &middle)];
    eprintln!("largest differences: start {}, end {}, midpoint {}", diffs[0], diffs[1], diffs[2]);
    assert!(diffs.iter().all(|&d| d < 1e-6), "{diffs:?}");
    // The walk moves: its ends and middle are different images.
    assert!(max_diff(&start, &end) > 1e-3 && max_diff(&start, &middle) > 1e-4);

    // The reconstruction grid: rows of test images, each above their decode(mu).
    let (n, columns) = (views.shown.len(), views.columns);
    assert_eq!((n, columns), (64, 8));
    let originals = images(views.shown.clone());
    let (mu, _) = model.encode(gpu, &originals, None).unwrap();
    let recon = model.generate(gpu, &mu).unwrap();
    for row in 0..n / columns {
        let grid = |pair_row: usize| &views.reconstructions[(2 * row + pair_row) * columns * px..][..columns * px];
        let want = |all: &[f32]| all[row * columns * px..][..columns * px].to_vec();
        assert_eq!(grid(0), &want(&originals)[..], "row {row} of originals");
        assert!(max_diff(grid(1), &want(&recon)) < 1e-6, "row {row} of reconstructions");
    }
    let again = model.vae_views(gpu, &test, 7).unwrap();
    assert_eq!((&again.shown, &again.pairs), (&views.shown, &views.pairs));
    assert_eq!((&again.reconstructions, &again.interpolation), (&views.reconstructions, &views.interpolation));
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn vae_training_writes_reconstructions_of_the_first_test_images_beside_each_sample_grid() {
    let gpu = gpu();
    let out = out_dir("train-recon");
    let ckpt = vae_checkpoint(&out);
    let grid = image::open(out.join("samples/step_0000002_reconstructions.png")).unwrap().to_luma8();
    assert_eq!((grid.width(), grid.height()), (8 * 30 + 2, 16 * 30 + 2));
    // Image k of grid row r, top-left at (2 + 30k, 2 + 30r).
    let cell = |r: u32, k: u32| -> Vec<u8> { (0..28).flat_map(|y| (0..28).map(move |x| (k, r, x, y))).map(|(k, r, x, y)| grid.get_pixel(2 + 30 * k + x, 2 + 30 * r + y)[0]).collect() };
    let test = small_digits().test;
    let mut model = kiln::train::infer::load(gpu, &ckpt).unwrap();
    let recon = model.reconstruct(gpu, &test.subset("first", &(0..64).collect::<Vec<_>>()).unwrap().to_f32(0.0, 1.0), None).unwrap();
    let mut worst = 0;
    for i in 0..64u32 {
        let (r, k) = (i / 8, i % 8);
        assert_eq!(cell(2 * r, k), test.image(i as usize), "test image {i}");
        let want = recon[i as usize * 784..][..784].iter().map(|&v| (v * 255.0 + 0.5).clamp(0.0, 255.0) as u8);
        worst = worst.max(cell(2 * r + 1, k).iter().zip(want).map(|(&a, b)| a.abs_diff(b)).max().unwrap());
    }
    // The trainer's reconstructions are the checkpoint's decode(mu), up to rounding to 8 bits.
    assert!(worst <= 1, "reconstruction pixels differ by {worst}");
    std::fs::remove_dir_all(&out).unwrap();
}
