//! [`Collective`] over MPI. One communication thread initialises MPI and makes every MPI call
//! but `MPI_Abort`, in the order the training thread posts them, so the training thread can
//! post a gradient bucket's sum and go on recording GPU work while it runs (as PyTorch DDP's
//! reducer does), and every rank still issues its collectives in the same order.

use super::{Collective, Pending};
use crate::{Error, Result};
use mpi::traits::*;
use std::sync::mpsc::{self, Sender};
use std::thread::JoinHandle;

enum Job {
    AllReduceSum(Vec<f32>, Sender<Result<Vec<f32>>>),
    Broadcast(Vec<u8>, usize, Sender<Result<Vec<u8>>>),
    Barrier(Sender<Result<()>>),
}

pub struct Mpi {
    rank: usize,
    size: usize,
    local_rank: usize,
    jobs: Option<Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl Mpi {
    /// Initialises MPI on a communication thread of its own. MPI's default error handler
    /// (`MPI_ERRORS_ARE_FATAL`) stays: a failed collective, such as one whose peer was killed,
    /// ends the whole job rather than hanging it.
    pub fn init() -> Result<Mpi> {
        let (jobs, inbox) = mpsc::channel::<Job>();
        let (ready, started) = mpsc::channel::<Result<(usize, usize, usize)>>();
        let thread = std::thread::Builder::new()
            .name("kiln-mpi".into())
            .spawn(move || {
                // Multiple, so that `abort` may call MPI_Abort from the training thread.
                let Some((universe, _threading)) = mpi::initialize_with_threading(mpi::Threading::Multiple) else {
                    let _ = ready.send(Err(Error::Invalid("MPI was already initialised in this process".into())));
                    return;
                };
                let world = universe.world();
                let local = world.split_shared(world.rank());
                let _ = ready.send(Ok((world.rank() as usize, world.size() as usize, local.rank() as usize)));
                // Receive buffers by length: each sent vector becomes the next receive buffer of
                // its length, so a training step's all-reduces allocate nothing.
                let mut spare: std::collections::HashMap<usize, Vec<f32>> = Default::default();
                for job in inbox {
                    match job {
                        Job::AllReduceSum(values, done) => {
                            let mut sum = spare.remove(&values.len()).unwrap_or_else(|| vec![0f32; values.len()]);
                            world.all_reduce_into(&values[..], &mut sum[..], mpi::collective::SystemOperation::sum());
                            spare.insert(values.len(), values);
                            let _ = done.send(Ok(sum));
                        }
                        Job::Broadcast(mut bytes, root, done) => {
                            world.process_at_rank(root as i32).broadcast_into(&mut bytes[..]);
                            let _ = done.send(Ok(bytes));
                        }
                        Job::Barrier(done) => {
                            world.barrier();
                            let _ = done.send(Ok(()));
                        }
                    }
                }
                // Dropping the universe calls MPI_Finalize once the training thread is done.
                drop(local);
                drop(universe);
            })
            .map_err(|e| Error::Invalid(format!("cannot start the MPI communication thread: {e}")))?;
        let (rank, size, local_rank) = started.recv().map_err(|_| Error::Invalid("MPI failed to initialise".into()))??;
        Ok(Mpi { rank, size, local_rank, jobs: Some(jobs), thread: Some(thread) })
    }

    fn post<T>(&self, job: impl FnOnce(Sender<Result<T>>) -> Job) -> Pending<T> {
        let (tx, rx) = mpsc::channel();
        if let Some(jobs) = &self.jobs {
            // A send fails only once the thread has ended; the receiver then reports it.
            let _ = jobs.send(job(tx));
        }
        Pending(rx)
    }
}

impl Collective for Mpi {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.size
    }
    fn local_rank(&self) -> usize {
        self.local_rank
    }
    fn start_all_reduce_sum(&self, values: Vec<f32>) -> Pending<Vec<f32>> {
        self.post(|done| Job::AllReduceSum(values, done))
    }
    fn broadcast(&self, bytes: &mut [u8], root: usize) -> Result<()> {
        if root >= self.size {
            crate::bail!(Invalid, "broadcast from rank {root} in a world of {}", self.size);
        }
        let out = self.post(|done| Job::Broadcast(bytes.to_vec(), root, done)).wait()?;
        bytes.copy_from_slice(&out);
        Ok(())
    }
    fn barrier(&self) -> Result<()> {
        self.post(Job::Barrier).wait()
    }
    fn abort(&self, code: i32) {
        // Straight from this thread: the communication thread may be waiting in a collective
        // that the other ranks will never join.
        unsafe {
            mpi::ffi::MPI_Abort(mpi::ffi::RSMPI_COMM_WORLD, code);
        }
    }
}

impl Drop for Mpi {
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
