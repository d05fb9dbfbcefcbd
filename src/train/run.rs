//! The training loop shared by the GAN and the VAE: one submit per step, losses read back
//! through a ring without stalling, NaN detection, metrics, samples and atomic checkpoints,
//! and `--resume` from the last checkpoint. On a terminal a progress bar shows the latest
//! losses; elsewhere (servers, CI) plain lines do, for logs and scripts to read.

use super::checkpoint::{capture, capture_averages, restore, restore_averages, Checkpoint};
use super::data::GpuData;
use crate::gpu::{Buffer, Dispatch, Gpu, Readback};
use crate::graph::Store;
use crate::optim::Optimizer;
use crate::{Error, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::{IsTerminal, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What a model brings to the loop.
pub trait Trainer {
    /// `gan` or `vae`, stored in checkpoints.
    fn kind(&self) -> &'static str;
    fn batch(&self) -> usize;
    fn store(&self) -> &Store;
    fn optimizers(&self) -> Vec<&Optimizer>;
    /// Moving averages of parameter groups (`--ema`), checkpointed beside the optimizers.
    fn averages(&self) -> Vec<&crate::optim::Ema> {
        Vec::new()
    }
    /// Names and buffers of the scalars logged each step (the first is the loss watched for NaN).
    fn logged(&self) -> Vec<(&'static str, Buffer)>;
    /// Factor from the logged buffers to the values shown and stored: the VAE's losses are
    /// batch sums, reported per image as PyTorch's example does.
    fn logged_scale(&self) -> f32 {
        1.0
    }
    /// Everything one step submits, in order. Each optimizer's recorded dispatches must be
    /// one whole list here: a data-parallel run sums that group's gradients over the ranks
    /// just before it (train::dist::segments).
    fn step_dispatches(&self) -> Vec<&[Dispatch]>;
    /// What training step `step` submits: [`step_dispatches`](Self::step_dispatches) unless
    /// steps differ (a GAN with n_critic > 1 updates G on every n_critic-th step only).
    fn step_dispatches_at(&self, _step: u64) -> Vec<&[Dispatch]> {
        self.step_dispatches()
    }
    /// Whether the loss sums over the batch's samples (the VAE's) rather than averaging: then
    /// the ranks' gradients are summed, not averaged, so N ranks at batch B compute one
    /// process's gradient at batch N·B.
    fn loss_sums_batch(&self) -> bool {
        false
    }
    fn prepare(&self, gpu: &Gpu, data: &GpuData, step: u64, batch_index: usize) -> Result<()>;
    /// Writes sample images for `step` into `dir`.
    fn save_samples(&self, gpu: &Gpu, dir: &Path, step: u64) -> Result<()>;
    /// The run's configuration as JSON, stored in checkpoints.
    fn config_json(&self) -> String;
    /// `n` generated images in [0, 1] from z ~ N(0, 1) drawn from `seed`, for `--eval-every`;
    /// `None` for a model that generates nothing.
    fn generate(&self, _gpu: &Gpu, _n: usize, _seed: u64) -> Option<Result<Vec<f32>>> {
        None
    }
    fn as_any(&self) -> &dyn std::any::Any;
}

#[derive(Clone, Debug)]
pub struct RunOptions {
    pub out: PathBuf,
    /// Total steps, or epochs × steps per epoch.
    pub steps: Option<u64>,
    pub epochs: Option<u64>,
    pub checkpoint_every: u64,
    pub sample_every: u64,
    pub log_every: u64,
    pub resume: bool,
    pub seed: u64,
    /// FID of generated samples every so many steps, into metrics.jsonl and the curve.
    pub eval: Option<std::sync::Arc<super::score::SampleEval>>,
}

pub struct Summary {
    pub steps: u64,
    pub images_per_second: f64,
    pub last: Vec<(String, f32)>,
    pub checkpoint: PathBuf,
}

pub fn checkpoint_path(out: &Path) -> PathBuf {
    out.join("checkpoint.safetensors")
}

pub fn run(gpu: &Gpu, trainer: &dyn Trainer, data: &GpuData, opts: &RunOptions) -> Result<Summary> {
    run_on(gpu, trainer, data, opts, &crate::dist::Single)
}

/// [`run`] as one rank of `comm`'s processes (data-parallel training, docs/DISTRIBUTED.md):
/// every rank trains on its shard of each global batch of `comm.size()` × the trainer's
/// batch, the gradients summed over the ranks before each optimizer; rank 0 alone resumes,
/// logs, samples and writes checkpoints, and its parameters and optimizer state start every
/// rank. With [`Single`](crate::dist::Single) this is [`run`]: one submit per step.
pub fn run_on(gpu: &Gpu, trainer: &dyn Trainer, data: &GpuData, opts: &RunOptions, comm: &dyn crate::dist::Collective) -> Result<Summary> {
    run_on_with(gpu, trainer, data, opts, comm, super::dist::SyncOptions::default())
}

/// [`run_on`] with the gradient all-reduce configured (`--no-overlap`, `--bucket-mb`).
pub fn run_on_with(gpu: &Gpu, trainer: &dyn Trainer, data: &GpuData, opts: &RunOptions, comm: &dyn crate::dist::Collective, sync_options: super::dist::SyncOptions) -> Result<Summary> {
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| Error::Io { path, source }
    };
    let (lead, ranks) = (comm.rank() == 0, comm.size());
    if lead {
        std::fs::create_dir_all(&opts.out).map_err(io(&opts.out))?;
    }
    data.set_shard(comm.rank(), ranks);
    let global_batch = trainer.batch() * ranks;
    let per_epoch = (data.len / global_batch) as u64;
    if per_epoch == 0 {
        let batch = if ranks == 1 { format!("batch size {}", trainer.batch()) } else { format!("global batch {global_batch} ({ranks} ranks × {})", trainer.batch()) };
        return Err(Error::Invalid(format!("{batch} is larger than the dataset ({} images)", data.len)));
    }
    let total = opts.steps.unwrap_or(opts.epochs.unwrap_or(1) * per_epoch);
    let ckpt_path = checkpoint_path(&opts.out);
    let mut start = 0;
    if lead && opts.resume && ckpt_path.exists() {
        let ckpt = Checkpoint::load(&ckpt_path)?;
        let kind = ckpt.meta("kind")?;
        if kind != trainer.kind() {
            return Err(Error::Invalid(format!("{}: a {kind} checkpoint cannot resume a {} run", ckpt_path.display(), trainer.kind())));
        }
        // Checkpoints of one process carry no count.
        let saved = if ckpt.metadata.contains_key("ranks") { ckpt.meta_parse::<usize>("ranks")? } else { 1 };
        {
            if saved != ranks {
                return Err(Error::Invalid(format!("{}: written by a run of {saved} ranks; resume it with `mpirun -np {saved}` (the epoch's batches depend on the number of ranks)", ckpt_path.display())));
            }
        }
        restore(gpu, trainer.store(), &trainer.optimizers(), &ckpt)?;
        restore_averages(gpu, trainer.store(), &trainer.averages(), &ckpt)?;
        start = ckpt.meta_parse("step")?;
        log::info!("resumed from {} at step {start}", ckpt_path.display());
    }
    let mut sync = None;
    if ranks > 1 {
        start = super::dist::broadcast_u64(start, comm)?;
        super::dist::broadcast_from_rank0(gpu, trainer.store(), &trainer.optimizers(), comm)?;
        super::dist::shard_random_streams(gpu, trainer, comm)?;
        sync = Some(super::dist::GradientSync::with_options(gpu, trainer, comm, sync_options)?);
    }
    let metrics_path = opts.out.join("metrics.jsonl");
    let samples = opts.out.join("samples");
    let mut log = None;
    let mut ring = None;
    if lead {
        let metrics = open_metrics(&metrics_path).map_err(io(&metrics_path))?;
        std::fs::create_dir_all(&samples).map_err(io(&samples))?;
        let mut names: Vec<&'static str> = trainer.logged().iter().map(|(n, _)| *n).collect();
        if opts.eval.is_some() {
            names.push("fid");
        }
        ring = Some(Readback::new(gpu, trainer.logged().into_iter().map(|(_, b)| b).collect(), 4)?);
        log = Some(Log {
            names,
            scale: trainer.logged_scale(),
            metrics,
            metrics_path,
            curve: opts.out.join("loss_curve.png"),
            // mpirun hands ranks a pseudo-terminal whatever it writes to: plain lines there.
            bar: if ranks == 1 && std::io::stdout().is_terminal() { Some(Bar::show(start, total)?) } else { None },
            began: Instant::now(),
            start,
            total,
            per_epoch,
            batch: global_batch as u64,
            last: Vec::new(),
            last_good: None,
            checkpoint: ckpt_path.clone(),
        });
    }
    let began = Instant::now();
    for step in start..total {
        let (epoch, index) = (step / per_epoch, (step % per_epoch) as usize);
        if index == 0 || step == start {
            data.shuffle(gpu, opts.seed, epoch)?;
        }
        trainer.prepare(gpu, data, step, index)?;
        let log_now = step % opts.log_every == 0 || step + 1 == total;
        let readback = ring.as_mut().filter(|_| log_now).map(|r| (r, step));
        match &mut sync {
            None => {
                gpu.submit("training step", &trainer.step_dispatches_at(step), readback)?;
            }
            Some(sync) => sync.step(gpu, step, comm, readback)?,
        }
        let finished = step + 1;
        let checkpoint = finished % opts.checkpoint_every == 0 || finished == total;
        if checkpoint && ranks > 1 {
            let differ = super::dist::count_divergent(gpu, trainer.store(), &trainer.optimizers(), comm)?;
            if differ > 0 {
                return Err(Error::Invalid(format!("after step {finished}, {differ} parameter or optimizer values differ between the {ranks} ranks: they diverged")));
            }
            if lead {
                log::info!("step {finished}: parameters and optimizer state bit-identical on {ranks} ranks");
            }
        }
        let (Some(log), Some(ring)) = (log.as_mut(), ring.as_mut()) else { continue };
        if let Some(bar) = &log.bar {
            bar.0.set_position(finished);
        }
        log.record(ring.collect(gpu, false)?)?;
        if checkpoint {
            log.record(ring.collect(gpu, true)?)?;
            save(gpu, trainer, opts, finished, &ckpt_path, ranks)?;
            log.last_good = Some(finished);
        }
        if let Some(eval) = opts.eval.as_ref().filter(|e| finished % e.every == 0 || finished == total) {
            if let Some(images) = trainer.generate(gpu, eval.n, eval.seed) {
                // Losses up to this step first, so metrics.jsonl stays in step order.
                log.record(ring.collect(gpu, true)?)?;
                log.record_fid(step, eval, eval.fid(gpu, &images?)?)?;
            }
        }
        let sample = finished % opts.sample_every == 0 || finished == total;
        if sample {
            trainer.save_samples(gpu, &samples, finished)?;
        }
        if (checkpoint || sample) && finished != total {
            log.plot();
        }
    }
    let done = total.saturating_sub(start);
    let seconds = began.elapsed().as_secs_f64();
    if let Some(sync) = sync.as_ref().filter(|s| s.times.steps > 0) {
        let t = sync.times;
        let per_step = |d: std::time::Duration| 1e3 * d.as_secs_f64() / t.steps as f64;
        log::info!(
            "rank {}: {:.1} ms per step ({}); waiting for the GPU {:.2} ms, staging {:.2} ms, all-reduce {:.2} ms, upload {:.2} ms",
            comm.rank(),
            1e3 * seconds / done.max(1) as f64,
            sync.describe(),
            per_step(t.compute),
            per_step(t.staging),
            per_step(t.all_reduce),
            per_step(t.upload)
        );
    }
    let (Some(mut log), Some(mut ring)) = (log, ring) else {
        return Ok(Summary { steps: done, images_per_second: (done * global_batch as u64) as f64 / seconds, last: Vec::new(), checkpoint: ckpt_path });
    };
    log.record(ring.collect(gpu, true)?)?;
    log.plot();
    if let Some(bar) = &log.bar {
        bar.0.finish();
    }
    Ok(Summary { steps: done, images_per_second: (done * log.batch) as f64 / log.began.elapsed().as_secs_f64(), last: log.last, checkpoint: ckpt_path })
}

/// Metrics lines, the progress bar or lines, the loss curve, and the NaN watch over the values
/// read back.
struct Log {
    names: Vec<&'static str>,
    scale: f32,
    metrics: std::fs::File,
    metrics_path: PathBuf,
    curve: PathBuf,
    /// Shown when stdout is a terminal; plain lines otherwise.
    bar: Option<Bar>,
    began: Instant,
    start: u64,
    total: u64,
    per_epoch: u64,
    batch: u64,
    last: Vec<(String, f32)>,
    last_good: Option<u64>,
    checkpoint: PathBuf,
}

impl Log {
    /// A metrics line with the FID after `step`, naming its sample counts and backbone.
    fn record_fid(&mut self, step: u64, eval: &super::score::SampleEval, fid: f64) -> Result<()> {
        let line = serde_json::json!({
            "step": step, "epoch": step / self.per_epoch, "fid": fid, "fid_generated": eval.n,
            "fid_reference": eval.reference.n, "fid_backbone": eval.backbone.id,
        });
        self.metrics.write_all(format!("{line}\n").as_bytes()).map_err(|source| Error::Io { path: self.metrics_path.display().to_string(), source })?;
        let text = format!("step {} FID {fid:.3} ({} generated vs {} reference images, {})", step + 1, eval.n, eval.reference.n, eval.backbone.id);
        match &self.bar {
            Some(bar) => bar.0.println(text),
            None => println!("{text}"),
        }
        Ok(())
    }

    fn record(&mut self, results: Vec<(u64, Vec<Vec<f32>>)>) -> Result<()> {
        for (step, values) in results {
            let values: Vec<f32> = values.iter().map(|v| v[0] * self.scale).collect();
            if let Some((i, v)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
                let good = self.last_good.map_or("none yet".to_string(), |s| format!("{} (step {s})", self.checkpoint.display()));
                return Err(Error::Invalid(format!("{} became {v} at step {step}; last good checkpoint: {good}", self.names[i])));
            }
            let rate = ((step + 1 - self.start) * self.batch) as f64 / self.began.elapsed().as_secs_f64();
            let epoch = step / self.per_epoch;
            let fields: Vec<String> = self.names.iter().zip(&values).map(|(n, v)| format!("\"{n}\":{v}")).collect();
            // One write per line, so that a killed run leaves at most its last line partial.
            let line = format!("{{\"step\":{step},\"epoch\":{epoch},{},\"images_per_s\":{rate:.1}}}\n", fields.join(","));
            self.metrics.write_all(line.as_bytes()).map_err(|source| Error::Io { path: self.metrics_path.display().to_string(), source })?;
            let shown: Vec<String> = self.names.iter().zip(&values).map(|(n, v)| format!("{n} {v:.4}")).collect();
            match &self.bar {
                Some(bar) => bar.0.set_message(format!("epoch {epoch} | {} | {rate:.0} img/s", shown.join(" "))),
                None => println!("step {}/{} epoch {epoch} {} {rate:.0} img/s", step + 1, self.total, shown.join(" ")),
            }
            self.last = self.names.iter().map(|n| n.to_string()).zip(values).collect();
        }
        Ok(())
    }

    /// Redraws the loss curve from metrics.jsonl. A curve that cannot be drawn is worth a
    /// warning, not the training run.
    fn plot(&self) {
        if let Err(e) = super::plot::write_loss_curve(&self.metrics_path, &self.names, &self.curve) {
            log::warn!("loss curve not updated: {e}");
        }
    }
}

/// Opens metrics.jsonl for appending. A killed run may have left half a line; ending it keeps
/// the resumed run's first line whole.
fn open_metrics(path: &Path) -> std::io::Result<std::fs::File> {
    let mut file = std::fs::OpenOptions::new().create(true).read(true).append(true).open(path)?;
    if file.metadata()?.len() > 0 {
        let mut last = [0];
        file.seek(SeekFrom::End(-1))?;
        file.read_exact(&mut last)?;
        if last[0] != b'\n' {
            file.write_all(b"\n")?;
        }
    }
    Ok(file)
}

/// The terminal's progress bar. While one is shown, `BarAwareLogger` takes it off the screen
/// around each log line.
struct Bar(ProgressBar, u64);

static SHOWN: Mutex<Option<(u64, ProgressBar)>> = Mutex::new(None);

impl Bar {
    fn show(start: u64, total: u64) -> Result<Bar> {
        // Two lines, so that a narrow terminal still shows every loss.
        let style = ProgressStyle::with_template("{wide_bar:.cyan/blue} step {pos}/{len}, ETA {eta}\n{wide_msg}")
            .map_err(|e| Error::Invalid(format!("progress bar template: {e}")))?;
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stdout()).with_style(style).with_position(start);
        // The ETA counts only this process's steps: the estimator learns the resumed position
        // first, then forgets the time it took.
        bar.tick();
        bar.reset_eta();
        // Steps can take seconds on CPU adapters; the ETA keeps counting down between them.
        bar.enable_steady_tick(Duration::from_millis(500));
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        *SHOWN.lock().unwrap_or_else(|e| e.into_inner()) = Some((id, bar.clone()));
        Ok(Bar(bar, id))
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        let mut shown = SHOWN.lock().unwrap_or_else(|e| e.into_inner());
        if shown.as_ref().is_some_and(|(id, _)| *id == self.1) {
            *shown = None;
        }
        drop(shown);
        // A run that stopped on an error leaves its bar where it was, above the error.
        if !self.0.is_finished() {
            self.0.abandon();
        }
    }
}

/// A logger that hides the training progress bar while `inner` writes a record, so log lines
/// (`RUST_LOG`) never land on the bar's line. The `kiln` binary wraps env_logger in it.
pub struct BarAwareLogger<L>(pub L);

impl<L: log::Log> log::Log for BarAwareLogger<L> {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        self.0.enabled(metadata)
    }

    fn log(&self, record: &log::Record) {
        if !self.0.enabled(record.metadata()) {
            return;
        }
        let shown = SHOWN.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map(|(_, bar)| bar.clone());
        match shown {
            Some(bar) => bar.suspend(|| self.0.log(record)),
            None => self.0.log(record),
        }
    }

    fn flush(&self) {
        self.0.flush()
    }
}

fn save(gpu: &Gpu, trainer: &dyn Trainer, opts: &RunOptions, step: u64, path: &Path, ranks: usize) -> Result<()> {
    let mut ckpt = Checkpoint::default();
    capture(gpu, trainer.store(), &trainer.optimizers(), &mut ckpt)?;
    capture_averages(gpu, trainer.store(), &trainer.averages(), &mut ckpt)?;
    ckpt.metadata.insert("kind".into(), trainer.kind().into());
    ckpt.metadata.insert("step".into(), step.to_string());
    ckpt.metadata.insert("seed".into(), opts.seed.to_string());
    ckpt.metadata.insert("config".into(), trainer.config_json());
    if ranks > 1 {
        ckpt.metadata.insert("ranks".into(), ranks.to_string());
    }
    ckpt.save(path)
}
