//! GAN and VAE recipes: the adversarial losses against their closed forms, n_critic, the
//! generator's moving average, β-VAE, and resume staying bit-identical with them on.

use kiln::data::synthetic::{digits, DigitsOptions};
use kiln::graph::{Graph, Program, Store};
use kiln::gpu::{Gpu, GpuOptions};
use kiln::models::dcgan::{self, Conditioning, ImageShape, Labels, SpectralNorm};
use kiln::models::vae::Kind;
use kiln::train::checkpoint::Checkpoint;
use kiln::train::data::GpuData;
use kiln::train::gan::{Gan, GanConfig, GanLoss, Losses, Recipe};
use kiln::train::run::{checkpoint_path, run, RunOptions};
use kiln::train::vae::{VaeConfig, VaeTrainer};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

fn gpu() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| Gpu::new(&GpuOptions::default()).unwrap_or_else(|e| panic!("{e}")))
}

fn out_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kiln-recipes-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn options(out: &Path, steps: u64) -> RunOptions {
    RunOptions { out: out.to_path_buf(), steps: Some(steps), epochs: None, checkpoint_every: 1000, sample_every: 1000, log_every: 1, resume: false, seed: 3, eval: None }
}

fn small_digits() -> kiln::data::Splits {
    digits(&DigitsOptions { seed: 1, train: 256, test: 64 }).unwrap()
}

fn softplus(x: f64) -> f64 {
    x.max(0.0) + (-x.abs()).exp().ln_1p()
}

/// (D loss, G loss) of each kind in closed form, from the logits.
fn closed_form(kind: GanLoss, real: &[f64], fake: &[f64], label: f64) -> (f64, f64) {
    let mean = |v: &[f64], f: &dyn Fn(f64) -> f64| v.iter().map(|&x| f(x)).sum::<f64>() / v.len() as f64;
    // BCE with logits against target t: softplus(x) − t·x.
    let bce = |t: f64| move |x: f64| softplus(x) - t * x;
    match kind {
        GanLoss::Bce => (mean(real, &bce(label)) + mean(fake, &bce(0.0)), mean(fake, &bce(1.0))),
        GanLoss::Hinge => (mean(real, &|x| (1.0 - x).max(0.0)) + mean(fake, &|x| (1.0 + x).max(0.0)), -mean(fake, &|x| x)),
        GanLoss::LeastSquares => {
            (0.5 * mean(real, &|x| (x - label).powi(2)) + 0.5 * mean(fake, &|x| x * x), 0.5 * mean(fake, &|x| (x - 1.0).powi(2)))
        }
        GanLoss::WganGp => (mean(fake, &|x| x) - mean(real, &|x| x), -mean(fake, &|x| x)),
    }
}

#[test]
fn every_adversarial_loss_matches_its_closed_form_and_gradient_on_the_gpu_and_the_reference() {
    let gpu = gpu();
    let b = 7;
    // Logits on both sides of hinge's margins (±1) and of zero.
    let real: Vec<f64> = vec![2.5, 0.3, -0.7, 1.0 + 1e-3, -2.2, 0.9, 4.0];
    let fake: Vec<f64> = vec![-3.0, -0.2, 0.6, -1.5, 1.7, -0.95, 0.0];
    for (kind, label) in [(GanLoss::Bce, 1.0), (GanLoss::Bce, 0.9), (GanLoss::Hinge, 1.0), (GanLoss::LeastSquares, 0.9), (GanLoss::WganGp, 1.0)] {
        let mut g = Graph::new();
        let d_real = g.param("d_real", &[b, 1]);
        let d_fake = g.param("d_fake", &[b, 1]);
        let losses = Losses { kind, batch: b, real_label: label as f32 };
        let d_loss = losses.discriminator(&mut g, d_real, d_fake).unwrap();
        let g_loss = losses.generator(&mut g, d_fake).unwrap();
        let d_grads = g.backward(d_loss, &[d_real, d_fake]).unwrap();
        let g_grad = g.backward(g_loss, &[d_fake]).unwrap()[0].unwrap();
        // The target is an f32 constant on both paths.
        let label = label as f32 as f64;
        let (want_d, want_g) = closed_form(kind, &real, &fake, label);

        let leaves = [(d_real, real.clone()), (d_fake, fake.clone())];
        let values = g.evaluate_reference(&leaves).unwrap();
        let value = |t: kiln::graph::Tensor| values[t.index()].as_ref().unwrap().1.clone();
        assert!((value(d_loss)[0] - want_d).abs() < 1e-12, "{kind:?}: D loss {} vs {want_d}", value(d_loss)[0]);
        assert!((value(g_loss)[0] - want_g).abs() < 1e-12, "{kind:?}: G loss {} vs {want_g}", value(g_loss)[0]);

        // Gradients by central differences of the closed form, away from hinge's kinks.
        let h = 1e-6;
        for (side, grad) in [(0, d_grads[0].unwrap()), (1, d_grads[1].unwrap())] {
            let got = value(grad);
            for i in 0..b {
                let bump = |delta: f64| {
                    let (mut r, mut f) = (real.clone(), fake.clone());
                    if side == 0 { r[i] += delta } else { f[i] += delta }
                    closed_form(kind, &r, &f, label).0
                };
                let want = (bump(h) - bump(-h)) / (2.0 * h);
                assert!((got[i] - want).abs() < 1e-6, "{kind:?}: dD/d(side {side})[{i}] = {} vs {want}", got[i]);
            }
        }
        let got = value(g_grad);
        for i in 0..b {
            let bump = |delta: f64| {
                let mut f = fake.clone();
                f[i] += delta;
                closed_form(kind, &real, &f, label).1
            };
            let want = (bump(h) - bump(-h)) / (2.0 * h);
            assert!((got[i] - want).abs() < 1e-6, "{kind:?}: dG/dfake[{i}] = {} vs {want}", got[i]);
        }

        // The GPU agrees with the reference in f32.
        let mut store = Store::new();
        let to32 = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<_>>();
        store.add_group(gpu, "logits", vec![("d_real".into(), vec![b, 1], to32(&real)), ("d_fake".into(), vec![b, 1], to32(&fake))]).unwrap();
        let program = Program::compile(gpu, &g, &mut store, &[d_loss, g_loss], &[]).unwrap();
        program.run(gpu).unwrap();
        let got_d = gpu.read(program.buffer(d_loss).unwrap()).unwrap()[0] as f64;
        let got_g = gpu.read(program.buffer(g_loss).unwrap()).unwrap()[0] as f64;
        assert!((got_d - want_d).abs() < 1e-5 * (1.0 + want_d.abs()), "{kind:?} on the GPU: D loss {got_d} vs {want_d}");
        assert!((got_g - want_g).abs() < 1e-5 * (1.0 + want_g.abs()), "{kind:?} on the GPU: G loss {got_g} vs {want_g}");
    }
}

#[test]
fn unknown_losses_and_impossible_combinations_are_clear_errors() {
    let err = GanLoss::parse("wasserstein").unwrap_err().to_string();
    assert!(err.contains("wasserstein") && err.contains("hinge"), "{err}");
    let seed_hinge = GanConfig { recipe: Recipe::Seed, loss: GanLoss::Hinge, ..GanConfig::default() };
    let err = seed_hinge.validate().unwrap_err().to_string();
    assert!(err.contains("--recipe seed") && err.contains("hinge"), "{err}");
    let err = GanConfig { n_critic: 0, ..GanConfig::default() }.validate().unwrap_err().to_string();
    assert!(err.contains("--n-critic"), "{err}");
    let err = GanConfig { loss: GanLoss::Hinge, real_label: 0.9, ..GanConfig::default() }.validate().unwrap_err().to_string();
    assert!(err.contains("--real-label") && err.contains("hinge"), "{err}");
}

fn gan_config(loss: GanLoss, n_critic: usize, ema: Option<f32>) -> GanConfig {
    GanConfig { image: ImageShape { channels: 1, size: 28 }, batch: 4, seed: 2, loss, n_critic, ema, ..GanConfig::default() }
}

#[test]
fn with_n_critic_the_generator_is_updated_on_every_n_critic_th_step_only() {
    let gpu = gpu();
    let splits = small_digits();
    let train = GpuData::upload(gpu, &splits.train).unwrap();
    let gan = Gan::new(gpu, gan_config(GanLoss::Hinge, 3, None), &train).unwrap();
    let arena = |group: &str| gpu.read(&gan.store.groups.iter().find(|g| g.name == group).unwrap().params).unwrap();
    train.shuffle(gpu, 0, 0).unwrap();
    let (mut g_before, mut d_before) = (arena("generator"), arena("discriminator"));
    for step in 0..6u64 {
        gan.prepare(gpu, &train, step, step as usize).unwrap();
        gpu.submit("step", &gan.step_dispatches_at(step), None).unwrap();
        let (g_now, d_now) = (arena("generator"), arena("discriminator"));
        assert_ne!(d_now, d_before, "D is updated at step {step}");
        assert_eq!(g_now != g_before, step % 3 == 2, "G updated at step {step}?");
        (g_before, d_before) = (g_now, d_now);
    }
}

#[test]
fn the_moving_average_follows_its_warm_up_formula() {
    // After each of G's updates: average = β·average + (1 − β)·param, β = min(decay, (1+t)/(10+t)).
    let gpu = gpu();
    let splits = small_digits();
    let train = GpuData::upload(gpu, &splits.train).unwrap();
    let decay = 0.5f64;
    let gan = Gan::new(gpu, gan_config(GanLoss::Bce, 1, Some(decay as f32)), &train).unwrap();
    let params = &gan.store.groups.iter().find(|g| g.name == "generator").unwrap().params;
    let ema = gan.ema.as_ref().unwrap();
    let mut want: Vec<f64> = gpu.read(params).unwrap().iter().map(|&v| v as f64).collect();
    assert_eq!(gpu.read(&ema.average).unwrap(), gpu.read(params).unwrap(), "the average starts at the initial weights");
    train.shuffle(gpu, 0, 0).unwrap();
    for step in 0..3u64 {
        gan.prepare(gpu, &train, step, step as usize).unwrap();
        gpu.submit("step", &gan.step_dispatches_at(step), None).unwrap();
        let t = (step + 1) as f64;
        let beta = decay.min((1.0 + t) / (10.0 + t));
        let live = gpu.read(params).unwrap();
        for (w, &p) in want.iter_mut().zip(&live) {
            *w = beta * *w + (1.0 - beta) * p as f64;
        }
        let got = gpu.read(&ema.average).unwrap();
        let worst = got.iter().zip(&want).map(|(&g, &w)| (g as f64 - w).abs()).fold(0.0, f64::max);
        assert!(worst < 1e-6, "step {step}: the average is off by {worst}");
        assert_ne!(got, live, "the average is not the live weights");
    }
}

/// Trains `steps` GAN steps into `out` with every recipe option this build has on.
fn gan_run(out: &Path, steps: u64, resume: bool) -> Checkpoint {
    let gpu = gpu();
    let splits = small_digits();
    let train = GpuData::upload(gpu, &splits.train).unwrap();
    let config = GanConfig {
        conditional: Some(Conditioning { classes: 10 }),
        spectral_norm: SpectralNorm { discriminator: true, generator: true },
        augment: kiln::nn::augment::parse_policy("translation,cutout,color").unwrap(),
        // Lazy R1 on steps 0, 3, 6, …: the resumed run starts mid-cycle at 33.
        r1: Some((1.0, 3)),
        ..gan_config(GanLoss::Hinge, 2, Some(0.9))
    };
    let gan = Gan::new(gpu, config, &train).unwrap();
    run(gpu, &gan, &train, &RunOptions { resume, ..options(out, steps) }).unwrap();
    Checkpoint::load(&checkpoint_path(out)).unwrap()
}

#[test]
fn a_resumed_gan_with_every_recipe_option_equals_an_uninterrupted_run_bit_for_bit() {
    // 70 steps of 4 cross the 64-step epoch of the 256 images; 33 is odd, mid-n_critic cycle.
    let straight = out_dir("gan-straight");
    let whole = gan_run(&straight, 70, false);
    let split = out_dir("gan-split");
    gan_run(&split, 33, false);
    let resumed = gan_run(&split, 70, true);
    let w = "generator.0.parametrizations.weight.original";
    assert!(whole.tensors.contains_key(&format!("ema.{w}")), "the average is checkpointed under the parameters' names");
    for state in ["discriminator.0.parametrizations.weight.0._u", "generator.0.parametrizations.weight.0._v"] {
        assert!(whole.tensors.contains_key(state), "spectral norm's {state} is checkpointed");
    }
    assert_eq!(whole.tensors.keys().collect::<Vec<_>>(), resumed.tensors.keys().collect::<Vec<_>>());
    for (name, (_, want)) in &whole.tensors {
        assert_eq!(&resumed.tensors[name].1, want, "{name} differs after resuming");
    }
    for key in ["generator.step", "discriminator.step"] {
        assert_eq!(whole.meta(key).unwrap(), resumed.meta(key).unwrap(), "{key}");
    }
    // G was updated on 35 of the 70 steps; D on all, and again for R1 on 24 (0, 3, …, 69).
    assert!(whole.meta("generator.step").unwrap().starts_with("35 "), "{}", whole.meta("generator.step").unwrap());
    assert!(whole.meta("discriminator.step").unwrap().starts_with("94 "), "{}", whole.meta("discriminator.step").unwrap());

    // Sampling uses the average by default and the live weights with --no-ema.
    let gpu = gpu();
    let path = checkpoint_path(&straight);
    let averaged = kiln::train::infer::load(gpu, &path).unwrap();
    let live = kiln::train::infer::load_live(gpu, &path).unwrap();
    assert!(averaged.averaged && !live.averaged);
    assert_eq!(gpu.read(&averaged.store.param(w).unwrap().buffer).unwrap(), whole.tensors[&format!("ema.{w}")].1);
    assert_eq!(gpu.read(&live.store.param(w).unwrap().buffer).unwrap(), whole.tensors[w].1);
    for dir in [straight, split] {
        std::fs::remove_dir_all(dir).unwrap();
    }
}

#[test]
fn resuming_an_ema_run_from_a_checkpoint_without_averages_is_refused_unless_asked_to_start_one() {
    let gpu = gpu();
    let splits = small_digits();
    let train = GpuData::upload(gpu, &splits.train).unwrap();
    let out = out_dir("ema-missing");
    let plain = Gan::new(gpu, gan_config(GanLoss::Bce, 1, None), &train).unwrap();
    run(gpu, &plain, &train, &options(&out, 2)).unwrap();
    let at_2 = Checkpoint::load(&checkpoint_path(&out)).unwrap();
    let with_ema = Gan::new(gpu, gan_config(GanLoss::Bce, 1, Some(0.999)), &train).unwrap();
    let err = run(gpu, &with_ema, &train, &RunOptions { resume: true, ..options(&out, 4) }).err().expect("must fail").to_string();
    assert!(err.contains("moving average") && err.contains("--no-ema") && err.contains("--ema 0.999"), "{err}");

    // Asked to (an explicit --ema), the average starts from the resumed live weights w₂, and
    // the third update makes it β·w₂ + (1 − β)·w₃ with β = (1 + 3)/(10 + 3) at G's step 3.
    let config = GanConfig { ema_start_on_resume: true, ..gan_config(GanLoss::Bce, 1, Some(0.999)) };
    let started = Gan::new(gpu, config, &train).unwrap();
    run(gpu, &started, &train, &RunOptions { resume: true, ..options(&out, 3) }).unwrap();
    let at_3 = Checkpoint::load(&checkpoint_path(&out)).unwrap();
    let beta = 4.0 / 13.0f64;
    let mut averaged = 0;
    for (name, (_, w3)) in at_3.tensors.iter().filter(|(n, _)| n.starts_with("generator.")) {
        let Some((_, average)) = at_3.tensors.get(&format!("ema.{name}")) else { continue };
        let w2 = &at_2.tensors[name].1;
        let worst = average.iter().zip(w2.iter().zip(w3)).map(|(&a, (&p, &q))| (a as f64 - (beta * p as f64 + (1.0 - beta) * q as f64)).abs()).fold(0.0, f64::max);
        assert!(worst < 1e-6, "{name}: the started average is off by {worst}");
        assert_ne!(w2, w3, "{name} was updated");
        averaged += 1;
    }
    assert!(averaged >= 8, "{averaged} averaged generator tensors");
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn the_beta_vae_objective_weights_the_kl_term_and_trains() {
    let gpu = gpu();
    let splits = small_digits();
    let (train, test) = (GpuData::upload(gpu, &splits.train).unwrap(), GpuData::upload(gpu, &splits.test).unwrap());
    let config = VaeConfig { kind: Kind::Mlp, image: [1, 28, 28], latent: 8, hidden: 64, batch: 32, lr: 3e-3, seed: 5, beta: 4.0, classes: None };
    let vae = VaeTrainer::new(gpu, config.clone(), &train, &test).unwrap();
    let out = out_dir("beta-vae");
    run(gpu, &vae, &train, &options(&out, 5)).unwrap();
    let lines: Vec<serde_json::Value> =
        std::fs::read_to_string(out.join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 5);
    for l in &lines {
        let (loss, bce, kl) = (l["loss"].as_f64().unwrap(), l["bce"].as_f64().unwrap(), l["kl"].as_f64().unwrap());
        assert!(kl > 0.0 && (loss - (bce + 4.0 * kl)).abs() < 1e-3 * loss.abs(), "loss {loss} vs bce {bce} + 4 kl {kl}");
    }
    for beta in [-1.0, f32::NAN] {
        let err = VaeTrainer::new(gpu, VaeConfig { beta, ..config.clone() }, &train, &test).err().expect("must fail").to_string();
        assert!(err.contains("--beta"), "{err}");
    }
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn the_projection_discriminator_adds_the_label_embeddings_inner_product_with_the_features() {
    // D = flatten → linear(6 → 1): logit = w·φ + b + ⟨E[y], φ⟩, φ the flattened input.
    let gpu = gpu();
    let (b, classes) = (5, 3);
    let d = kiln::nn::Sequential::new("discriminator.", vec![kiln::nn::Layer::Flatten(kiln::nn::Flatten), kiln::nn::linear(6, 1)]);
    let mut g = Graph::new();
    let x = g.input("x", &[b, 1, 2, 3]);
    let y = g.input("y", &[b]);
    let labels = Labels { conditioning: Conditioning { classes }, labels: y };
    let logits = dcgan::discriminate(&mut g, &d, x, Some(labels), kiln::nn::Mode::eval()).unwrap();
    let params = d.params(&g);
    let total = logits_sum(&mut g, logits);
    let grads = g.gradients(total, &params).unwrap();
    let xs: Vec<f64> = (0..b * 6).map(|i| ((i * 37 % 11) as f64 - 5.0) / 4.0).collect();
    let ys = vec![2.0, 0.0, 1.0, 2.0, 2.0];
    let w: Vec<f64> = (0..6).map(|i| 0.1 * i as f64 - 0.2).collect();
    let e: Vec<f64> = (0..classes * 6).map(|i| ((i * 5 % 7) as f64 - 3.0) / 10.0).collect();
    let bias = 0.25;
    let want: Vec<f64> = (0..b)
        .map(|r| {
            let phi = &xs[r * 6..(r + 1) * 6];
            let class = ys[r] as usize;
            (0..6).map(|j| phi[j] * (w[j] + e[class * 6 + j])).sum::<f64>() + bias
        })
        .collect();
    let by_name = |name: &str| params.iter().copied().find(|&t| g.info(t).name == name).unwrap();
    let leaves = [(x, xs.clone()), (y, ys.clone()), (by_name("discriminator.1.weight"), w.clone()), (by_name("discriminator.1.bias"), vec![bias]), (by_name(dcgan::D_EMBED), e.clone())];
    let values = g.evaluate_reference(&leaves).unwrap();
    let got = &values[logits.index()].as_ref().unwrap().1;
    for (r, (got, want)) in got.iter().zip(&want).enumerate() {
        assert!((got - want).abs() < 1e-12, "row {r}: {got} vs {want}");
    }
    // d(Σ logits)/dE[c] = Σ of φ over rows of class c; class-less rows of E get zeros.
    let (_, de) = grads.iter().find(|(p, _)| g.info(*p).name == dcgan::D_EMBED).unwrap();
    let got = &values[de.index()].as_ref().unwrap().1;
    for c in 0..classes {
        for j in 0..6 {
            let want: f64 = (0..b).filter(|&r| ys[r] as usize == c).map(|r| xs[r * 6 + j]).sum();
            assert!((got[c * 6 + j] - want).abs() < 1e-12, "dE[{c}][{j}] = {} vs {want}", got[c * 6 + j]);
        }
    }
    // The GPU agrees.
    let mut store = Store::new();
    let f32s = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<_>>();
    store.add_group(gpu, "discriminator", vec![("discriminator.1.weight".into(), vec![1, 6], f32s(&w)), ("discriminator.1.bias".into(), vec![1], vec![bias as f32]), (dcgan::D_EMBED.into(), vec![classes, 6], f32s(&e))]).unwrap();
    let program = Program::compile(gpu, &g, &mut store, &[logits], &grads).unwrap();
    gpu.write(&store.input_buffer("x").unwrap().buffer, &f32s(&xs)).unwrap();
    gpu.write(&store.input_buffer("y").unwrap().buffer, &f32s(&ys)).unwrap();
    program.run(gpu).unwrap();
    let got = gpu.read(program.buffer(logits).unwrap()).unwrap();
    for (r, (got, want)) in got.iter().zip(&want).enumerate() {
        assert!((*got as f64 - want).abs() < 1e-5, "GPU row {r}: {got} vs {want}");
    }
}

fn logits_sum(g: &mut Graph, logits: kiln::graph::Tensor) -> kiln::graph::Tensor {
    g.apply1(kiln::graph::ops::Sum { all: true, mean: false }, &[logits], "sum").unwrap()
}

#[test]
fn a_conditional_gan_trains_its_embeddings_and_samples_by_class() {
    let gpu = gpu();
    let splits = small_digits();
    let train = GpuData::upload(gpu, &splits.train).unwrap();
    let config = GanConfig { conditional: Some(Conditioning { classes: 10 }), ..gan_config(GanLoss::Bce, 1, None) };
    let gan = Gan::new(gpu, config, &train).unwrap();
    let before = gpu.read(&gan.store.param(dcgan::G_EMBED).unwrap().buffer).unwrap();
    let d_before = gpu.read(&gan.store.param(dcgan::D_EMBED).unwrap().buffer).unwrap();
    let out = out_dir("conditional");
    run(gpu, &gan, &train, &options(&out, 3)).unwrap();
    let ckpt = Checkpoint::load(&checkpoint_path(&out)).unwrap();
    assert_eq!(ckpt.tensor(dcgan::G_EMBED).unwrap().0, vec![10, 7 * 7 * 256]);
    assert_eq!(ckpt.tensor(dcgan::D_EMBED).unwrap().0, vec![10, 128 * 7 * 7]);
    assert_ne!(ckpt.tensor(dcgan::G_EMBED).unwrap().1, before, "G's embedding was trained");
    assert_ne!(ckpt.tensor(dcgan::D_EMBED).unwrap().1, d_before, "D's embedding was trained");
    // The sample grid has one row of 8 per class.
    let grid = image::open(out.join("samples/step_0000003.png")).unwrap();
    assert_eq!((grid.width(), grid.height()), (8 * 30 + 2, 10 * 30 + 2));

    // Sampling by class: the same z gives different images for different classes, and the
    // same images for the same class whatever the count.
    let mut model = kiln::train::infer::load(gpu, &checkpoint_path(&out)).unwrap();
    assert_eq!(model.classes(), Some(10));
    model.set_class(Some(3)).unwrap();
    let three = model.sample(gpu, 5, 7).unwrap();
    assert_eq!(model.sample(gpu, 2, 7).unwrap(), three[..2 * 784].to_vec());
    model.set_class(Some(4)).unwrap();
    assert_ne!(model.sample(gpu, 5, 7).unwrap(), three);
    let err = model.set_class(Some(10)).unwrap_err().to_string();
    assert!(err.contains("--class 10") && err.contains("0 to 9"), "{err}");
    std::fs::remove_dir_all(&out).unwrap();

    let plain_out = out_dir("unconditional");
    let plain = Gan::new(gpu, gan_config(GanLoss::Bce, 1, None), &train).unwrap();
    run(gpu, &plain, &train, &options(&plain_out, 1)).unwrap();
    let mut plain_model = kiln::train::infer::load(gpu, &checkpoint_path(&plain_out)).unwrap();
    let err = plain_model.set_class(Some(0)).unwrap_err().to_string();
    assert!(err.contains("--class") && err.contains("unconditional"), "{err}");
    std::fs::remove_dir_all(&plain_out).unwrap();
}

#[test]
fn wgan_gp_and_r1_train_with_finite_logged_penalties() {
    let gpu = gpu();
    let splits = small_digits();
    let train = GpuData::upload(gpu, &splits.train).unwrap();
    for (name, config) in [
        ("gp", GanConfig { betas: Some((0.0, 0.9)), ..gan_config(GanLoss::WganGp, 2, None) }),
        ("r1", GanConfig { r1: Some((10.0, 1)), ..gan_config(GanLoss::Bce, 1, None) }),
    ] {
        let gan = Gan::new(gpu, config, &train).unwrap();
        let out = out_dir(&format!("penalty-{name}"));
        run(gpu, &gan, &train, &options(&out, 4)).unwrap();
        let lines: Vec<serde_json::Value> =
            std::fs::read_to_string(out.join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 4);
        for l in &lines {
            let penalty = l[name].as_f64().unwrap_or_else(|| panic!("{name} logged in {l}"));
            assert!(penalty.is_finite() && penalty > 0.0, "{name} = {penalty}");
            assert!(l["d_loss"].as_f64().unwrap().is_finite());
        }
        std::fs::remove_dir_all(&out).unwrap();
    }
}

#[test]
fn penalties_without_their_prerequisites_are_clear_errors() {
    let err = GanConfig { gp_lambda: 0.0, ..gan_config(GanLoss::WganGp, 5, None) }.validate().unwrap_err().to_string();
    assert!(err.contains("wgan-gp") && err.contains("--gp-lambda"), "{err}");
    let err = GanConfig { recipe: Recipe::Seed, r1: Some((10.0, 16)), ..GanConfig::default() }.validate().unwrap_err().to_string();
    assert!(err.contains("R1") && err.contains("--recipe paper"), "{err}");
    let err = GanConfig { r1: Some((10.0, 0)), ..GanConfig::default() }.validate().unwrap_err().to_string();
    assert!(err.contains("--r1-every"), "{err}");
    let err = kiln::nn::augment::parse_policy("translation,zoom").unwrap_err().to_string();
    assert!(err.contains("zoom") && err.contains("cutout"), "{err}");
}

#[test]
fn a_conditional_vae_trains_evaluates_samples_by_class_and_carries_labels_through_encode_and_decode() {
    let gpu = gpu();
    // 100 test images: a batch of 64 and a partial one of 36, each with its labels.
    let splits = digits(&DigitsOptions { seed: 1, train: 256, test: 100 }).unwrap();
    let (train, test) = (GpuData::upload(gpu, &splits.train).unwrap(), GpuData::upload(gpu, &splits.test).unwrap());
    let config = VaeConfig { kind: Kind::Mlp, image: [1, 28, 28], latent: 8, hidden: 64, batch: 32, lr: 3e-3, seed: 5, beta: 1.0, classes: Some(10) };
    let vae = VaeTrainer::new(gpu, config.clone(), &train, &test).unwrap();
    let out = out_dir("cvae");
    run(gpu, &vae, &train, &RunOptions { sample_every: 4, ..options(&out, 4) }).unwrap();
    let ckpt = Checkpoint::load(&checkpoint_path(&out)).unwrap();
    for name in [kiln::models::vae::LABEL_ENCODER, kiln::models::vae::LABEL_DECODER] {
        assert_eq!(ckpt.tensor(name).unwrap().0, vec![10, 64], "{name}");
    }
    // One row of 8 per class in the sample grid.
    let grid = image::open(out.join("samples/step_0000004.png")).unwrap();
    assert_eq!((grid.width(), grid.height()), (8 * 30 + 2, 10 * 30 + 2));

    // The checkpoint's evaluation (labels through the GPU gathers) is the trainer's.
    let (nats, _) = vae.evaluate(gpu, &test).unwrap();
    let mut model = kiln::train::infer::load(gpu, &checkpoint_path(&out)).unwrap();
    assert_eq!(model.classes(), Some(10));
    match model.evaluate(gpu, &splits.test, config.seed, 4).unwrap() {
        kiln::train::infer::Evaluation::Vae { nats: got, iwae: Some((4, iwae)), .. } => {
            assert_eq!(got, nats);
            assert!(iwae.is_finite() && iwae <= got + 1.0, "IWAE(4) {iwae} vs ELBO {got}");
        }
        other => panic!("{other:?}"),
    }

    // Labels matter: the same latents decode differently as different classes.
    let z = vec![0.3f32; 2 * 8];
    let as_one = model.generate_labelled(gpu, &z, Some(&[1.0, 1.0])).unwrap();
    let as_seven = model.generate_labelled(gpu, &z, Some(&[7.0, 7.0])).unwrap();
    assert_ne!(as_one, as_seven);
    model.set_class(Some(7)).unwrap();
    assert_eq!(model.generate(gpu, &z).unwrap(), as_seven);
    let err = model.generate_labelled(gpu, &z, None).unwrap_err().to_string();
    assert!(err.contains("conditional") && err.contains("label"), "{err}");
    let err = model.generate_labelled(gpu, &z, Some(&[1.0, 10.0])).unwrap_err().to_string();
    assert!(err.contains("label 10"), "{err}");

    // encode writes the labels beside mu, decode uses them, and refuses latents without them.
    let images = splits.test.to_f32(0.0, 1.0);
    let labels = kiln::train::infer::test_labels(&splits.test).unwrap();
    let (mu, logvar) = model.encode(gpu, &images, Some(&labels)).unwrap();
    let file = kiln::train::infer::latents_checkpoint(mu.clone(), logvar.clone(), Some(labels.clone()), 100);
    let decoded = model.decode_file(gpu, &file, "latents").unwrap();
    assert_eq!(decoded, model.generate_labelled(gpu, &mu, Some(&labels)).unwrap());
    let bare = kiln::train::infer::latents_checkpoint(mu, logvar, None, 100);
    let err = model.decode_file(gpu, &bare, "bare.safetensors").unwrap_err().to_string();
    assert!(err.contains("bare.safetensors") && err.contains("labels"), "{err}");
    std::fs::remove_dir_all(&out).unwrap();
}
