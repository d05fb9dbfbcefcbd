//! What data-parallel training adds to a step, per gradient arena: staging it (GPU → mapped
//! buffer → host), the all-reduce over the ranks, and writing the sum back. The arenas are
//! the DCGAN's and the MLP VAE's on 28×28 digits, and two larger ones for the scaling
//! estimate in docs/DISTRIBUTED.md. Run under MPI, one CPU thread per lavapipe:
//!
//! ```text
//! cargo build --release --features mpi --example allreduce
//! LP_NUM_THREADS=1 mpirun -np 2 target/release/examples/allreduce
//! ```

use kiln::data::synthetic::{digits, DigitsOptions};
use kiln::gpu::{Gpu, GpuOptions};
use kiln::models::{dcgan::ImageShape, vae::Kind};
use kiln::train::data::GpuData;
use kiln::train::gan::{Gan, GanConfig, Recipe};
use kiln::train::run::Trainer;
use kiln::train::vae::{VaeConfig, VaeTrainer};
use std::time::Instant;

const REPEATS: usize = 30;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> kiln::Result<()> {
    let comm = kiln::dist::init()?;
    let gpu = Gpu::new(&GpuOptions { nth_of_best: comm.local_rank(), ..Default::default() })?;
    let splits = digits(&DigitsOptions { seed: 1, train: 128, test: 64 })?;
    let (train, test) = (GpuData::upload(&gpu, &splits.train)?, GpuData::upload(&gpu, &splits.test)?);
    let gan = Gan::new(&gpu, GanConfig { image: ImageShape { channels: 1, size: 28 }, batch: 64, recipe: Recipe::Paper, lr_g: None, lr_d: None, real_label: 1.0, seed: 1, ..GanConfig::default() }, &train)?;
    let vae = VaeTrainer::new(&gpu, VaeConfig { kind: Kind::Mlp, image: [1, 28, 28], latent: 20, hidden: 400, batch: 64, lr: 1e-3, seed: 1, beta: 1.0, classes: None }, &train, &test)?;
    let mut arenas: Vec<(String, usize)> = Vec::new();
    for (model, trainer) in [("dcgan", &gan as &dyn Trainer), ("vae", &vae)] {
        // The cost model's FLOPs of one step at batch 64, for the scaling estimate.
        let flops: u64 = trainer.step_dispatches().iter().flat_map(|l| l.iter()).map(|d| d.cost.flops).sum();
        if comm.rank() == 0 {
            println!("{model}: {:.2} GFLOP per step at batch 64 (cost model)", flops as f64 / 1e9);
        }
        arenas.extend(trainer.store().groups.iter().map(|g| (format!("{model} {}", g.name), g.grads.len)));
    }
    arenas.extend([("1M floats".to_string(), 1 << 20), ("4M floats".to_string(), 4 << 20)]);
    if comm.rank() == 0 {
        println!("{} ranks, median of {REPEATS}; ms per arena", comm.size());
        println!("| arena | MB | staging | all-reduce | upload | all-reduce GB/s |");
        println!("| --- | --- | --- | --- | --- | --- |");
    }
    for (name, len) in arenas {
        let grads = gpu.upload(&name, &vec![1.0f32; len])?;
        let staging = gpu.device.create_buffer(&wgpu::BufferDescriptor { label: Some("staging"), size: grads.bytes(), usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST, mapped_at_creation: false });
        let (mut stage, mut reduce, mut upload) = (Vec::new(), Vec::new(), Vec::new());
        let mut host = vec![0f32; len];
        let ones = vec![1.0f32; len];
        for _ in 0..REPEATS {
            // Lined up first, so the all-reduce is timed without waiting for a slower rank.
            comm.barrier()?;
            let t0 = Instant::now();
            kiln::train::dist::stage(&gpu, &grads, &staging, &mut host)?;
            let t1 = Instant::now();
            comm.barrier()?;
            let t2 = Instant::now();
            comm.all_reduce_sum(&mut host)?;
            let t3 = Instant::now();
            gpu.write(&grads, &host)?;
            gpu.wait(None, "upload")?;
            stage.push((t1 - t0).as_secs_f64() * 1e3);
            reduce.push((t3 - t2).as_secs_f64() * 1e3);
            upload.push(t3.elapsed().as_secs_f64() * 1e3);
            gpu.write(&grads, &ones)?;
        }
        let mb = len as f64 * 4.0 / 1e6;
        let r = median(reduce);
        if comm.rank() == 0 {
            println!("| {name} | {mb:.2} | {:.2} | {r:.2} | {:.2} | {:.2} |", median(stage), median(upload), mb / r);
        }
    }
    Ok(())
}
