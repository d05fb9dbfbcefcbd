//! Collectives between the processes of a data-parallel run: one process per GPU, gradients
//! staged through host memory (wgpu has no peer-to-peer copies between devices). The trainers
//! see only [`Collective`]; a plain build uses [`Single`], the one-process world in which
//! every collective is the identity, and `--features mpi` adds [`Mpi`] over the system's MPI
//! (Open MPI or MPICH, through the `mpi` crate), chosen by [`init`] when the process was
//! started by `mpirun`.

#[cfg(feature = "mpi")]
mod mpi;
#[cfg(feature = "mpi")]
pub use self::mpi::Mpi;

use crate::Result;
use std::sync::mpsc::{self, Receiver};

/// What a data-parallel training loop needs from its processes. Every rank must call the
/// same collectives in the same order (as MPI requires); each call blocks until this rank's
/// part is done.
pub trait Collective {
    /// This process's index, 0 for the one that logs and writes checkpoints.
    fn rank(&self) -> usize;
    /// How many processes train together.
    fn size(&self) -> usize;
    /// This process's index among those on the same machine: which GPU it opens.
    fn local_rank(&self) -> usize;
    /// Sums `values` element-wise over every rank, without blocking: the result comes back
    /// through [`Pending::wait`], the same bits on every rank.
    fn start_all_reduce_sum(&self, values: Vec<f32>) -> Pending<Vec<f32>>;
    /// `bytes` as `root` holds them, on every rank.
    fn broadcast(&self, bytes: &mut [u8], root: usize) -> Result<()>;
    /// Returns once every rank has called it.
    fn barrier(&self) -> Result<()>;
    /// Ends every process of the job with `code`, for an error on this rank that would leave
    /// the others waiting in a collective. Returns only where there are no others.
    fn abort(&self, code: i32);

    /// [`start_all_reduce_sum`](Self::start_all_reduce_sum), waited for, in place.
    fn all_reduce_sum(&self, values: &mut Vec<f32>) -> Result<()> {
        *values = self.start_all_reduce_sum(std::mem::take(values)).wait()?;
        Ok(())
    }
}

/// A collective under way on the communication thread.
pub struct Pending<T>(Receiver<Result<T>>);

impl<T> Pending<T> {
    pub fn ready(value: T) -> Pending<T> {
        let (tx, rx) = mpsc::channel();
        let _ = tx.send(Ok(value));
        Pending(rx)
    }

    pub fn wait(self) -> Result<T> {
        self.0.recv().unwrap_or_else(|_| Err(crate::Error::Invalid("the MPI communication thread ended during a collective".into())))
    }
}

/// The world of one process: rank 0 of 1, every collective the identity. Single-process
/// training takes exactly the path it took before distributed training existed.
pub struct Single;

impl Collective for Single {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn local_rank(&self) -> usize {
        0
    }
    fn start_all_reduce_sum(&self, values: Vec<f32>) -> Pending<Vec<f32>> {
        Pending::ready(values)
    }
    fn broadcast(&self, _: &mut [u8], _: usize) -> Result<()> {
        Ok(())
    }
    fn barrier(&self) -> Result<()> {
        Ok(())
    }
    fn abort(&self, _: i32) {}
}

/// Whether this process was started by an MPI launcher (Open MPI's or MPICH's `mpirun`, or
/// Slurm's `srun` with PMI), judged by the variables they set for every rank.
pub fn launched_by_mpirun() -> bool {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "PMI_RANK"].iter().any(|v| std::env::var_os(v).is_some())
}

/// The processes of this run: MPI's world when started by `mpirun` in a build with the `mpi`
/// feature, else [`Single`]. A build without the feature started by `mpirun` is refused, since
/// its N copies would each train alone and write the same files.
pub fn init() -> Result<Box<dyn Collective>> {
    #[cfg(feature = "mpi")]
    if launched_by_mpirun() {
        return Ok(Box::new(Mpi::init()?));
    }
    #[cfg(not(feature = "mpi"))]
    if launched_by_mpirun() && mpirun_size() > 1 {
        crate::bail!(Invalid, "started by mpirun with {} processes, but this kiln was built without MPI: build it with `cargo build --release --features mpi` (docs/DISTRIBUTED.md)", mpirun_size());
    }
    Ok(Box::new(Single))
}

#[cfg(not(feature = "mpi"))]
fn mpirun_size() -> usize {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE"].iter().find_map(|v| std::env::var(v).ok()?.parse().ok()).unwrap_or(1)
}
