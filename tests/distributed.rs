//! Data-parallel training. Without MPI: a rank's random numbers and images are its slice of
//! one process's at N times the batch, and each optimizer gets an all-reduce before it. With
//! `--features mpi` (and `mpirun` installed, as `.ci/run` does), `mpirun -np 2 kiln train`
//! itself: bit-identical ranks, 2 × B against 1 × 2B, a killed rank and `--resume`, the
//! overlapped all-reduce against the whole-arena one, n_critic and lazy R1 steps.

use kiln::data::synthetic::{digits, DigitsOptions};
use kiln::gpu::{Gpu, GpuOptions};
use kiln::kernels::random::{self, Rng};
use kiln::models::{dcgan::ImageShape, vae::Kind};
use kiln::train::data::GpuData;
use kiln::train::dist::{overlap_events, plan_buckets, segments, Bucket, Event, GradientSync, Segment, SyncOptions};
use kiln::train::gan::{Gan, GanConfig, Recipe};
use kiln::train::run::Trainer;
use kiln::train::vae::{VaeConfig, VaeTrainer};
use std::sync::OnceLock;

fn gpu() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| Gpu::new(&GpuOptions::default()).unwrap_or_else(|e| panic!("{e}")))
}

/// Records a random dispatch of (input, elements, output).
type Recorder<'a> = Box<dyn Fn(&kiln::gpu::Buffer, usize, &kiln::gpu::Buffer) -> kiln::Dispatch + 'a>;

/// The words a random dispatch wrote, after pointing it at `shard`.
fn draw(d: &kiln::Dispatch, y: &kiln::gpu::Buffer, shard: u32) -> Vec<u32> {
    let gpu = gpu();
    random::set_shard(gpu, d, shard).unwrap();
    gpu.run(std::slice::from_ref(d)).unwrap();
    gpu.read_as::<u32>(y).unwrap()
}

#[test]
fn each_ranks_random_numbers_are_its_slice_of_one_process_at_n_times_the_batch() {
    let gpu = gpu();
    let rng = Rng { seed: 0xD15C, offset: 7 };
    // Per-rank sizes: a DCGAN noise batch of 3 × 100, and 3 ranks of 4,100 elements, whose
    // slices start inside a workgroup's 256.
    for (ranks, n) in [(2usize, 300usize), (3, 4100)] {
        let x = gpu.upload("x", &vec![1.0f32; ranks * n]).unwrap();
        let (whole, part) = (gpu.zeros("whole", ranks * n).unwrap(), gpu.zeros("part", n).unwrap());
        let xs = x.view("x part", 0, n).unwrap();
        let kinds: [(&str, Recorder); 3] = [
            ("normal", Box::new(|_, n, y| random::normal(gpu, rng, 0.0, 1.0, y, n).unwrap())),
            ("uniform", Box::new(|_, n, y| random::uniform(gpu, rng, -1.0, 1.0, y, n).unwrap())),
            ("dropout", Box::new(|x, n, y| random::dropout(gpu, rng, 0.3, x, y, n).unwrap())),
        ];
        for (name, make) in &kinds {
            let one = draw(&make(&x, ranks * n, &whole), &whole, 0);
            let d = make(&xs, n, &part);
            for r in 0..ranks {
                let got = draw(&d, &part, r as u32);
                let differ = got.iter().zip(&one[r * n..(r + 1) * n]).filter(|(a, b)| a != b).count();
                eprintln!("{name}: rank {r} of {ranks}, {n} elements: {differ} differ from one process's");
                assert_eq!(differ, 0, "{name}: rank {r} of {ranks}");
            }
            // Back to the single-process stream for whoever records it next.
            random::set_shard(gpu, &d, 0).unwrap();
        }
    }
}

#[test]
fn each_rank_gathers_its_shard_of_the_global_batch_from_one_epoch_order() {
    let gpu = gpu();
    let splits = digits(&DigitsOptions { seed: 2, train: 100, test: 8 }).unwrap();
    let data = GpuData::upload(gpu, &splits.train).unwrap();
    let (b, ranks, index) = (6, 3, 4);
    data.shuffle(gpu, 9, 1).unwrap();
    let whole = gpu.zeros("whole", ranks * b * data.image_len).unwrap();
    let gather = data.gather(gpu, ranks * b, 1.0, 0.0, &whole).unwrap();
    data.select(gpu, &gather, ranks * b, index);
    gpu.run(std::slice::from_ref(&gather)).unwrap();
    let one = gpu.read(&whole).unwrap();
    let part = gpu.zeros("part", b * data.image_len).unwrap();
    let gather = data.gather(gpu, b, 1.0, 0.0, &part).unwrap();
    for r in 0..ranks {
        data.set_shard(r, ranks);
        data.select(gpu, &gather, b, index);
        gpu.run(std::slice::from_ref(&gather)).unwrap();
        let got = gpu.read(&part).unwrap();
        assert_eq!(got, one[r * b * data.image_len..(r + 1) * b * data.image_len], "rank {r} of {ranks}");
    }
    data.set_shard(0, 1);
}

/// The segments as text: `run(k lists)` and `all-reduce <group>`.
fn layout(trainer: &dyn Trainer) -> Vec<String> {
    segments(trainer)
        .unwrap()
        .iter()
        .map(|s| match s {
            Segment::Run(lists) => format!("run({})", lists.len()),
            Segment::AllReduce(g) => format!("all-reduce {}", trainer.store().groups[*g].name),
        })
        .collect()
}

#[test]
fn every_optimizer_runs_after_an_all_reduce_of_its_own_gradients() {
    let gpu = gpu();
    let splits = digits(&DigitsOptions { seed: 1, train: 64, test: 64 }).unwrap();
    let (train, test) = (GpuData::upload(gpu, &splits.train).unwrap(), GpuData::upload(gpu, &splits.test).unwrap());
    let image = ImageShape { channels: 1, size: 28 };
    let gan = |recipe| Gan::new(gpu, GanConfig { image, batch: 4, recipe, lr_g: None, lr_d: None, real_label: 1.0, seed: 1, ..GanConfig::default() }, &train).unwrap();
    // Paper: gather, D's half | D's Adam, G's half | G's Adam.
    assert_eq!(layout(&gan(Recipe::Paper)), ["run(2)", "all-reduce discriminator", "run(2)", "all-reduce generator", "run(1)"]);
    // Seed: both gradients from one pass, then both Adams.
    assert_eq!(layout(&gan(Recipe::Seed)), ["run(2)", "all-reduce discriminator", "run(1)", "all-reduce generator", "run(1)"]);
    let vae = VaeTrainer::new(gpu, VaeConfig { kind: Kind::Mlp, image: [1, 28, 28], latent: 8, hidden: 16, batch: 4, lr: 1e-3, seed: 1, beta: 1.0, classes: None }, &train, &test).unwrap();
    assert_eq!(layout(&vae), ["run(2)", "all-reduce vae", "run(1)"]);
    assert!(vae.loss_sums_batch() && !gan(Recipe::Paper).loss_sums_batch());
}

/// Checks that `buckets` of an arena of `len` elements laid out as `layout` hold every
/// element once and every parameter whole, last parameters first.
fn assert_covers(buckets: &[Bucket], layout: &[(String, usize, usize)], len: usize, what: &str) {
    let mut owner = vec![usize::MAX; len];
    for (i, b) in buckets.iter().enumerate() {
        assert!(b.start < b.end && b.end <= len, "{what}: bucket {i} is {}..{} of {len}", b.start, b.end);
        for o in &mut owner[b.start..b.end] {
            assert_eq!(*o, usize::MAX, "{what}: an element lies in two buckets");
            *o = i;
        }
        if i > 0 {
            assert_eq!(b.end, buckets[i - 1].start, "{what}: buckets go from the arena's end back");
        }
    }
    assert!(owner.iter().all(|&o| o != usize::MAX), "{what}: an element lies in no bucket");
    for (name, start, n) in layout {
        let holders: Vec<usize> = (0..buckets.len()).filter(|&i| buckets[i].params.contains(name)).collect();
        assert_eq!(holders.len(), 1, "{what}: {name} is in buckets {holders:?}");
        assert!(owner[*start..start + n].iter().all(|&o| o == holders[0]), "{what}: {name} is split");
    }
}

#[test]
fn gradient_buckets_cover_every_element_once_last_parameters_first() {
    let layout = |spans: &[(usize, usize)]| spans.iter().enumerate().map(|(i, &(s, n))| (format!("p{i}"), s, n)).collect::<Vec<_>>();
    // Padding after parameters, one parameter bigger than a bucket, a tail past the last one.
    let padded = layout(&[(0, 5), (8, 100), (108, 3), (112, 1), (116, 40)]);
    for elems in [1, 4, 16, 64, 1000] {
        let buckets = plan_buckets(0, &padded, 160, elems);
        assert_covers(&buckets, &padded, 160, &format!("{elems}-element buckets"));
        // Filled to the size, except the one holding the first parameter.
        assert!(buckets.iter().rev().skip(1).all(|b| b.end - b.start >= elems), "{elems}: {buckets:?}");
    }
    assert_eq!(plan_buckets(0, &padded, 160, 1000).len(), 1);
    assert_eq!(plan_buckets(0, &padded, 160, 1).len(), 5);
    assert!(plan_buckets(0, &[], 0, 16).is_empty());

    let gpu = gpu();
    let splits = digits(&DigitsOptions { seed: 1, train: 64, test: 64 }).unwrap();
    let (train, test) = (GpuData::upload(gpu, &splits.train).unwrap(), GpuData::upload(gpu, &splits.test).unwrap());
    let gan = Gan::new(gpu, GanConfig { image: ImageShape { channels: 1, size: 28 }, batch: 4, seed: 1, ..GanConfig::default() }, &train).unwrap();
    let vae = VaeTrainer::new(gpu, VaeConfig { kind: Kind::Mlp, image: [1, 28, 28], latent: 20, hidden: 400, batch: 4, lr: 1e-3, seed: 1, beta: 1.0, classes: None }, &train, &test).unwrap();
    for store in [gan.store(), vae.store()] {
        for (g, group) in store.groups.iter().enumerate() {
            for bytes in [SyncOptions::default().bucket_bytes, 64 << 10] {
                let buckets = plan_buckets(g, &group.layout, group.grads.len, bytes as usize / 4);
                let sizes: Vec<String> = buckets.iter().map(|b| format!("{:.2} MB {:?}", (b.end - b.start) as f64 * 4e-6, b.params)).collect();
                eprintln!("{}: {:.2} MB in {} buckets of {} KiB: {}", group.name, group.grads.bytes() as f64 / 1e6, buckets.len(), bytes >> 10, sizes.join("; "));
                assert_covers(&buckets, &group.layout, group.grads.len, &group.name);
                if group.grads.bytes() > 2 * bytes {
                    assert!(buckets.len() > 1, "{}: one bucket", group.name);
                }
            }
        }
    }
}

/// A DCGAN whose steps take every path: n_critic 2 (D-only steps) and lazy R1 every 2 steps
/// (a second D update in steps 0, 2, ...).
fn critic_r1_gan(gpu: &Gpu, train: &GpuData) -> Gan {
    let config = GanConfig { image: ImageShape { channels: 1, size: 28 }, batch: 4, seed: 5, n_critic: 2, r1: Some((1.0, 2)), ..GanConfig::default() };
    Gan::new(gpu, config, train).unwrap()
}

#[test]
fn each_bucket_is_ready_after_the_last_dispatch_touching_its_gradients() {
    let gpu = gpu();
    let splits = digits(&DigitsOptions { seed: 1, train: 64, test: 64 }).unwrap();
    let train = GpuData::upload(gpu, &splits.train).unwrap();
    for (name, gan) in [("paper", Gan::new(gpu, GanConfig { image: ImageShape { channels: 1, size: 28 }, batch: 4, seed: 1, ..GanConfig::default() }, &train).unwrap()), ("n_critic 2, lazy R1", critic_r1_gan(gpu, &train))] {
        let store = gan.store();
        let buckets: Vec<Bucket> = store.groups.iter().enumerate().flat_map(|(g, group)| plan_buckets(g, &group.layout, group.grads.len, (256 << 10) / 4)).collect();
        for step in 0..2u64 {
            let lists = gan.step_dispatches_at(step);
            let flat: Vec<&kiln::Dispatch> = lists.iter().flat_map(|l| l.iter()).collect();
            let touches = |at: usize, b: &Bucket| store.gradient_uses(flat[at]).iter().any(|p| b.params.contains(p));
            let events = overlap_events(&gan, &lists, &buckets).unwrap();
            let mut ready_at = Vec::new();
            for (i, &(at, event)) in events.iter().enumerate() {
                let Event::Ready(b) = event else { continue };
                let bucket = &buckets[b];
                // The next optimizer of its group, and its previous one (or the step's start).
                let (reduce, _) = events[i..].iter().find(|(_, e)| *e == Event::Reduce(bucket.group)).expect("an optimizer follows");
                let since = events[..i].iter().filter(|(_, e)| *e == Event::Reduce(bucket.group)).map(|(at, _)| *at).last().unwrap_or(0);
                assert!((at..*reduce).all(|p| !touches(p, bucket)), "{name}, step {step}: bucket {b} is touched after it is ready");
                assert!(at == since || touches(at - 1, bucket), "{name}, step {step}: bucket {b} could be ready earlier");
                ready_at.push((store.groups[bucket.group].name.as_str(), at));
            }
            eprintln!("{name}, step {step}: {} dispatches, buckets ready at {ready_at:?}", flat.len());
            // The generator's 9 MB arrive over its backward: more than one piece to overlap.
            let generator: std::collections::BTreeSet<usize> = ready_at.iter().filter(|(g, _)| *g == "generator").map(|(_, at)| *at).collect();
            assert!(generator.is_empty() || generator.len() > 1, "{name}, step {step}: the generator's buckets are ready at once");
        }
    }
}

/// Every group's parameters, as bits.
fn parameter_bits(gpu: &Gpu, trainer: &dyn Trainer) -> Vec<Vec<u32>> {
    trainer.store().groups.iter().map(|g| gpu.read_as::<u32>(&g.params).unwrap()).collect()
}

#[test]
fn an_overlapped_step_of_one_process_trains_exactly_as_its_single_submit() {
    let gpu = gpu();
    let splits = digits(&DigitsOptions { seed: 3, train: 64, test: 64 }).unwrap();
    let (train, test) = (GpuData::upload(gpu, &splits.train).unwrap(), GpuData::upload(gpu, &splits.test).unwrap());
    let vae = || VaeTrainer::new(gpu, VaeConfig { kind: Kind::Mlp, image: [1, 28, 28], latent: 8, hidden: 64, batch: 4, lr: 1e-3, seed: 1, beta: 1.0, classes: None }, &train, &test).unwrap();
    let models: [(&str, Box<dyn Fn() -> Box<dyn Trainer>>); 2] = [("mlp vae", Box::new(|| Box::new(vae()))), ("dcgan, n_critic 2, lazy R1", Box::new(|| Box::new(critic_r1_gan(gpu, &train))))];
    for (name, make) in &models {
        let mut trained = Vec::new();
        for overlap in [false, true] {
            let trainer = make();
            let mut sync = overlap.then(|| GradientSync::with_options(gpu, trainer.as_ref(), &kiln::dist::Single, SyncOptions { overlap: true, bucket_bytes: 32 << 10 }).unwrap());
            train.shuffle(gpu, 7, 0).unwrap();
            for step in 0..4u64 {
                trainer.prepare(gpu, &train, step, step as usize).unwrap();
                match &mut sync {
                    Some(sync) => sync.step(gpu, step, &kiln::dist::Single, None).unwrap(),
                    None => drop(gpu.submit("training step", &trainer.step_dispatches_at(step), None).unwrap()),
                }
            }
            if let Some(sync) = &sync {
                eprintln!("{name}: {}", sync.describe());
            }
            trained.push(parameter_bits(gpu, trainer.as_ref()));
        }
        let differ: usize = trained[0].iter().zip(&trained[1]).map(|(a, b)| a.iter().zip(b).filter(|(x, y)| x != y).count()).sum();
        eprintln!("{name}: {differ} parameters differ after 4 steps between one submit and the overlapped pieces");
        assert_eq!(differ, 0, "{name}");
        assert_ne!(trained[0], parameter_bits(gpu, make().as_ref()), "{name}: training changed nothing");
    }
}

#[cfg(feature = "mpi")]
mod under_mpirun {
    //! `mpirun -np 2 kiln train` on lavapipe, one CPU thread per rank.

    use kiln::train::checkpoint::Checkpoint;
    use std::path::{Path, PathBuf};
    use std::process::{Command, Output};
    use std::time::{Duration, Instant};

    fn out_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("kiln-dist-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    /// `kiln train` under `mpirun -np ranks` (or alone for 0), Open MPI allowed to run as root
    /// and each rank's lavapipe on one thread, so two ranks share two cores.
    fn kiln(ranks: usize, args: &[&str]) -> Command {
        let kiln = env!("CARGO_BIN_EXE_kiln");
        let mut cmd = if ranks == 0 {
            Command::new(kiln)
        } else {
            let mut c = Command::new("mpirun");
            c.args(["-np", &ranks.to_string(), "--oversubscribe", "--bind-to", "none", kiln]);
            c
        };
        cmd.args(["train"]).args(args);
        cmd.env("OMPI_ALLOW_RUN_AS_ROOT", "1").env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1").env("LP_NUM_THREADS", "1").env("RUST_LOG", "kiln=info");
        cmd
    }

    fn succeed(mut cmd: Command) -> String {
        let Output { status, stdout, stderr } = cmd.output().expect("mpirun is installed (apt-get install openmpi-bin)");
        let text = format!("{}{}", String::from_utf8_lossy(&stdout), String::from_utf8_lossy(&stderr));
        assert!(status.success(), "{cmd:?} failed ({status}):\n{text}");
        text
    }

    fn vae_args<'a>(out: &'a str, batch: &'a str, steps: &'a str) -> Vec<&'a str> {
        vec!["vae", "--vae-model", "mlp", "--batch-size", batch, "--steps", steps, "--checkpoint-every", "3", "--sample-every", "1000", "--seed", "4", "--out", out]
    }

    fn tensors(out: &Path) -> Checkpoint {
        Checkpoint::load(&out.join("checkpoint.safetensors")).unwrap()
    }

    #[test]
    fn two_ranks_at_batch_b_train_the_mlp_vae_as_one_process_at_2b_with_identical_ranks() {
        let (one, two) = (out_dir("vae-one"), out_dir("vae-two"));
        succeed(kiln(0, &vae_args(one.to_str().unwrap(), "32", "6")));
        let log = succeed(kiln(2, &vae_args(two.to_str().unwrap(), "16", "6")));
        // Checked by every rank at each checkpoint (steps 3 and 6): bits broadcast from rank 0.
        for step in [3, 6] {
            assert!(log.contains(&format!("step {step}: parameters and optimizer state bit-identical on 2 ranks")), "{log}");
        }
        let (a, b) = (tensors(&one), tensors(&two));
        let mut worst = (0.0f64, String::new());
        // Parameters; the optimizer's moments ("vae.exp_avg", "vae.exp_avg_sq") follow them.
        for (name, (shape, x)) in a.tensors.iter().filter(|(n, _)| !n.starts_with("vae.")) {
            let (shape2, y) = &b.tensors[name];
            assert_eq!(shape, shape2, "{name}");
            let d = x.iter().zip(y).map(|(p, q)| (*p as f64 - *q as f64).abs()).fold(0.0, f64::max);
            if d > worst.0 {
                worst = (d, name.clone());
            }
        }
        eprintln!("2 ranks x 16 vs 1 x 32 after 6 steps: worst |difference| {:.2e} in {}", worst.0, worst.1);
        assert!(worst.0 <= 1e-5, "{worst:?}");
        assert_eq!(b.meta("ranks").unwrap(), "2");
    }

    fn metrics(out: &Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(out.join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    #[test]
    fn two_ranks_at_batch_b_log_the_dcgan_losses_of_one_process_at_2b() {
        let (one, two) = (out_dir("gan-one"), out_dir("gan-two"));
        let gan_args = |out: &Path, batch: &'static str| {
            ["gan", "--batch-size", batch, "--steps", "3", "--checkpoint-every", "3", "--sample-every", "1000", "--seed", "2", "--out"].map(String::from).into_iter().chain([out.display().to_string()]).collect::<Vec<String>>()
        };
        let (a1, a2) = (gan_args(&one, "16"), gan_args(&two, "8"));
        succeed(kiln(0, &a1.iter().map(String::as_str).collect::<Vec<_>>()));
        let cmd = kiln(2, &a2.iter().map(String::as_str).collect::<Vec<_>>());
        let log = succeed(cmd);
        assert!(log.contains("step 3: parameters and optimizer state bit-identical on 2 ranks"), "{log}");
        // Rank 0 logs the losses of its half of each global batch, and batch norm normalises
        // by each rank's own statistics (as PyTorch DDP without SyncBatchNorm): close, not equal.
        let (a, b) = (metrics(&one), metrics(&two));
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(&b) {
            for key in ["d_loss", "g_loss"] {
                let (p, q) = (x[key].as_f64().unwrap(), y[key].as_f64().unwrap());
                eprintln!("step {}: {key} one process {p:.4}, rank 0 of 2 {q:.4}", x["step"]);
                assert!((p - q).abs() < 0.05, "step {}: {key} {p} vs {q}", x["step"]);
            }
        }
    }

    /// Every tensor of the two checkpoints (parameters, optimizer moments and steps, batch
    /// norm's statistics) equal bit for bit; the count of differing values printed.
    fn assert_same_bits(a: &Path, b: &Path, what: &str) {
        let (a, b) = (tensors(a), tensors(b));
        assert_eq!(a.tensors.len(), b.tensors.len(), "{what}");
        let mut differ = 0;
        for (name, (shape, x)) in &a.tensors {
            let (shape2, y) = &b.tensors[name];
            assert_eq!(shape, shape2, "{what}: {name}");
            differ += x.iter().zip(y).filter(|(p, q)| p.to_bits() != q.to_bits()).count();
        }
        eprintln!("{what}: {} tensors, {differ} values differ in their bits", a.tensors.len());
        assert_eq!(differ, 0, "{what}");
    }

    fn gan_args(out: &Path, batch: &str, steps: &str, extra: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = ["gan", "--batch-size", batch, "--steps", steps, "--checkpoint-every", "2", "--sample-every", "1000", "--seed", "2", "--out"].map(String::from).into();
        args.push(out.display().to_string());
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    }

    fn strs(args: &[String]) -> Vec<&str> {
        args.iter().map(String::as_str).collect()
    }

    #[test]
    fn overlapped_bucket_all_reduces_train_bit_identically_to_whole_arenas() {
        // The MLP VAE (2.6 MB in buckets of 0.5 MiB) and the DCGAN (G 9.2 MB, D 0.85 MB, in
        // buckets of 1 MiB, as many as whole parameters allow), each with and without overlap.
        let (vae_whole, vae_overlap) = (out_dir("vae-whole"), out_dir("vae-overlap"));
        let mut args = vae_args(vae_whole.to_str().unwrap(), "16", "6");
        args.push("--no-overlap");
        let log = succeed(kiln(2, &args));
        assert!(log.contains("whole arenas, not overlapped"), "{log}");
        let mut args = vae_args(vae_overlap.to_str().unwrap(), "16", "6");
        args.extend(["--bucket-mb", "0.5"]);
        let log = succeed(kiln(2, &args));
        assert!(log.contains("step 6: parameters and optimizer state bit-identical on 2 ranks") && log.contains("buckets of 0.50 MiB"), "{log}");
        assert_same_bits(&vae_whole, &vae_overlap, "mlp vae, 2 ranks x 16, 6 steps: whole arenas vs 0.5 MiB buckets");

        let (gan_whole, gan_overlap) = (out_dir("gan-whole"), out_dir("gan-overlap"));
        succeed(kiln(2, &strs(&gan_args(&gan_whole, "8", "4", &["--no-overlap"]))));
        let log = succeed(kiln(2, &strs(&gan_args(&gan_overlap, "8", "4", &[]))));
        assert!(log.contains("step 4: parameters and optimizer state bit-identical on 2 ranks") && log.contains("buckets of 1.00 MiB"), "{log}");
        assert_same_bits(&gan_whole, &gan_overlap, "dcgan, 2 ranks x 8, 4 steps: whole arenas vs 1 MiB buckets");
    }

    #[test]
    fn n_critic_and_lazy_r1_steps_keep_the_ranks_bit_identical() {
        for (name, extra) in [("n-critic", &["--n-critic", "2"][..]), ("lazy-r1", &["--r1", "1", "--r1-every", "2"][..])] {
            let (whole, overlap) = (out_dir(&format!("{name}-whole")), out_dir(&format!("{name}-overlap")));
            let log = succeed(kiln(2, &strs(&gan_args(&overlap, "8", "4", extra))));
            for step in [2, 4] {
                assert!(log.contains(&format!("step {step}: parameters and optimizer state bit-identical on 2 ranks")), "{name}: {log}");
            }
            let mut extra = extra.to_vec();
            extra.push("--no-overlap");
            let log = succeed(kiln(2, &strs(&gan_args(&whole, "8", "4", &extra))));
            assert!(log.contains("step 4: parameters and optimizer state bit-identical on 2 ranks"), "{name}: {log}");
            assert_same_bits(&whole, &overlap, &format!("dcgan {extra:?}, 2 ranks x 8, 4 steps: whole arenas vs buckets"));
        }
    }

    /// The process ids of `mpirun`'s ranks with `rank`, found by the tag in their environment.
    fn ranks_with(tag: &str, rank: usize) -> Vec<u32> {
        let want = [format!("KILN_TEST_TAG={tag}"), format!("OMPI_COMM_WORLD_RANK={rank}")];
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else { return false };
                let vars: Vec<&[u8]> = env.split(|&b| b == 0).collect();
                want.iter().all(|w| vars.contains(&w.as_bytes())) && std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "kiln")
            })
            .collect()
    }

    #[test]
    fn a_killed_rank_ends_the_job_within_seconds_and_the_last_checkpoint_resumes() {
        let out = out_dir("killed");
        let dir = out.to_str().unwrap();
        let tag = format!("{}-killed", std::process::id());
        let mut cmd = kiln(2, &vae_args(dir, "16", "100000"));
        cmd.env("KILN_TEST_TAG", &tag).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
        let mut job = cmd.spawn().unwrap();
        let ckpt = out.join("checkpoint.safetensors");
        let began = Instant::now();
        while !ckpt.exists() {
            assert!(began.elapsed() < Duration::from_secs(300), "no checkpoint after 5 minutes");
            assert!(job.try_wait().unwrap().is_none(), "the job ended before its first checkpoint");
            std::thread::sleep(Duration::from_millis(200));
        }
        let victims = ranks_with(&tag, 1);
        assert_eq!(victims.len(), 1, "rank 1's process: {victims:?}");
        let killed = Instant::now();
        assert!(Command::new("kill").args(["-KILL", &victims[0].to_string()]).status().unwrap().success());
        let status = loop {
            if let Some(status) = job.try_wait().unwrap() {
                break status;
            }
            assert!(killed.elapsed() < Duration::from_secs(60), "the job still runs 60 s after rank 1 was killed");
            std::thread::sleep(Duration::from_millis(100));
        };
        let output = job.wait_with_output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        eprintln!("job ended {:.1} s after rank 1 was killed ({status}); mpirun said:\n{}", killed.elapsed().as_secs_f64(), text.lines().filter(|l| l.contains("rank") || l.contains("signal")).collect::<Vec<_>>().join("\n"));
        assert!(!status.success(), "{text}");
        assert!(killed.elapsed() < Duration::from_secs(20), "took {:?}", killed.elapsed());
        assert!(ranks_with(&tag, 0).is_empty(), "rank 0 outlived the job");
        // The last checkpoint is whole (written atomically by rank 0) and the run resumes.
        let step: u64 = tensors(&out).meta_parse("step").unwrap();
        assert!(step > 0 && step.is_multiple_of(3), "checkpoint at step {step}");
        let until = (step + 3).to_string();
        let mut args = vae_args(dir, "16", &until);
        args.push("--resume");
        let log = succeed(kiln(2, &args));
        assert!(log.contains(&format!("resumed from {} at step {step}", ckpt.display())), "{log}");
        assert_eq!(tensors(&out).meta_parse::<u64>("step").unwrap(), step + 3);
    }
}
