//! Distribution over processes. A [`Communicator`] only splits work and reduces results; it
//! never changes the maths: a run on R ranks computes what one process computes, up to the
//! order of floating-point sums.
//!
//! [`World::init`] gives MPI's world communicator when the binary was built with the `mpi`
//! feature and started by an MPI launcher (`mpirun`, `srun`), and [`SingleProcess`] (rank 0
//! of 1, every collective the identity) otherwise, so a plain `boltzflow ...` never touches
//! MPI. A launcher that starts several processes of a build without MPI is refused with a
//! one-line error: they would otherwise each run the whole job.
//!
//! Ranks sharing a node are told apart by [`Communicator::local_rank`] (the launcher's
//! node-local rank), which picks the GPU of a rank.

use thiserror::Error;

/// What can go wrong when setting up the communicator.
#[derive(Debug, Error)]
pub enum DistError {
    /// Started by an MPI launcher with several processes, but built without MPI.
    #[error(
        "started as one of {size} processes by an MPI launcher, but this boltzflow was built without MPI; rebuild with `cargo build --release -p boltzflow --features mpi` (needs libopenmpi-dev and libclang-dev) or run a single process"
    )]
    NoMpi {
        /// The launcher's process count ("several" where it announced none).
        size: String,
    },
    /// MPI_Init failed or MPI was initialised twice.
    #[error("MPI could not be initialised (MPI_Init failed or was called twice)")]
    Init,
}

/// `Result` of this crate.
pub type Result<T> = std::result::Result<T, DistError>;

/// The collectives boltzflow needs. Every rank must make the same calls in the same order;
/// a collective returns only when every rank has entered it.
pub trait Communicator {
    /// This process's rank, `0..size()`.
    fn rank(&self) -> usize;
    /// Number of ranks.
    fn size(&self) -> usize;
    /// The rank among the processes on this node (for the choice of GPU).
    fn local_rank(&self) -> usize;
    /// Element-wise sum over ranks, in place on every rank.
    fn all_reduce_sum_f32(&self, values: &mut [f32]);
    /// Element-wise sum over ranks, in place on every rank.
    fn all_reduce_sum_f64(&self, values: &mut [f64]);
    /// Element-wise maximum over ranks, in place on every rank.
    fn all_reduce_max_f64(&self, values: &mut [f64]);
    /// One value from every rank, in rank order, on every rank.
    fn all_gather_u64(&self, value: u64) -> Vec<u64>;
    /// The concatenation, in rank order, of every rank's `values` (lengths may differ), on
    /// every rank.
    fn all_gather_f64(&self, values: &[f64]) -> Vec<f64>;
    /// Rank 0's `bytes` on every rank (the argument is ignored elsewhere).
    fn broadcast_bytes(&self, bytes: Vec<u8>) -> Vec<u8>;
    /// Returns when every rank has called it.
    fn barrier(&self);
    /// Ends every rank of the job with exit code `code` (MPI_Abort); a single process exits.
    fn abort(&self, code: i32) -> !;
    /// True on rank 0, the rank that writes shared outputs.
    fn is_root(&self) -> bool {
        self.rank() == 0
    }
}

/// One process: rank 0 of 1; every collective returns its input.
#[derive(Clone, Copy, Debug, Default)]
pub struct SingleProcess;

impl Communicator for SingleProcess {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn local_rank(&self) -> usize {
        0
    }
    fn all_reduce_sum_f32(&self, _values: &mut [f32]) {}
    fn all_reduce_sum_f64(&self, _values: &mut [f64]) {}
    fn all_reduce_max_f64(&self, _values: &mut [f64]) {}
    fn all_gather_u64(&self, value: u64) -> Vec<u64> {
        vec![value]
    }
    fn all_gather_f64(&self, values: &[f64]) -> Vec<f64> {
        values.to_vec()
    }
    fn broadcast_bytes(&self, bytes: Vec<u8>) -> Vec<u8> {
        bytes
    }
    fn barrier(&self) {}
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}

/// True when an MPI launcher (mpirun/mpiexec of OpenMPI or MPICH, or srun through PMI or
/// PMIx) started this process: it set a rank variable.
pub fn launched() -> bool {
    ["OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK"]
        .iter()
        .any(|name| std::env::var_os(name).is_some())
}

/// The process count the launcher announced, where it announces one.
pub fn launcher_size() -> Option<usize> {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE"]
        .iter()
        .find_map(|name| std::env::var(name).ok()?.trim().parse().ok())
}

/// The node-local rank the launcher announced (0 when it announced none).
pub fn launcher_local_rank() -> usize {
    [
        "OMPI_COMM_WORLD_LOCAL_RANK",
        "MPI_LOCALRANKID",
        "PMI_LOCAL_RANK",
        "SLURM_LOCALID",
    ]
    .iter()
    .find_map(|name| std::env::var(name).ok()?.trim().parse().ok())
    .unwrap_or(0)
}

/// The communicator of this process: MPI's world when built with `mpi` and started by a
/// launcher, one process otherwise. Keep it alive until the end of `main` (dropping it
/// finalises MPI).
pub struct World {
    inner: Inner,
}

enum Inner {
    Single(SingleProcess),
    #[cfg(feature = "mpi")]
    Mpi(mpi_world::MpiWorld),
}

impl World {
    /// Sets up the communicator (see [`World`]).
    pub fn init() -> Result<Self> {
        if !launched() {
            return Ok(Self::single());
        }
        #[cfg(feature = "mpi")]
        {
            Ok(Self {
                inner: Inner::Mpi(mpi_world::MpiWorld::init()?),
            })
        }
        #[cfg(not(feature = "mpi"))]
        match launcher_size() {
            Some(1) => Ok(Self::single()),
            size => Err(DistError::NoMpi {
                size: size.map_or("several".into(), |n| n.to_string()),
            }),
        }
    }

    /// One process, whatever the environment says.
    pub fn single() -> Self {
        Self {
            inner: Inner::Single(SingleProcess),
        }
    }

    /// The communicator.
    pub fn comm(&self) -> &dyn Communicator {
        match &self.inner {
            Inner::Single(single) => single,
            #[cfg(feature = "mpi")]
            Inner::Mpi(world) => world,
        }
    }
}

/// True when this build can run across MPI ranks.
pub const MPI_ENABLED: bool = cfg!(feature = "mpi");

#[cfg(feature = "mpi")]
mod mpi_world {
    use mpi::Count;
    use mpi::collective::SystemOperation;
    use mpi::datatype::PartitionMut;
    use mpi::environment::Universe;
    use mpi::topology::SimpleCommunicator;
    use mpi::traits::*;

    use super::{Communicator as BoltzflowCommunicator, DistError, Result, launcher_local_rank};

    /// MPI_COMM_WORLD of an initialised universe (finalised on drop).
    pub struct MpiWorld {
        world: SimpleCommunicator,
        local_rank: usize,
        _universe: Universe,
    }

    impl MpiWorld {
        pub fn init() -> Result<Self> {
            // Only the main thread calls MPI (rayon workers never do): MPI_THREAD_FUNNELED.
            let (universe, _) =
                mpi::initialize_with_threading(mpi::Threading::Funneled).ok_or(DistError::Init)?;
            Ok(Self {
                world: universe.world(),
                local_rank: launcher_local_rank(),
                _universe: universe,
            })
        }
    }

    impl BoltzflowCommunicator for MpiWorld {
        fn rank(&self) -> usize {
            self.world.rank() as usize
        }
        fn size(&self) -> usize {
            self.world.size() as usize
        }
        fn local_rank(&self) -> usize {
            self.local_rank
        }
        fn all_reduce_sum_f32(&self, values: &mut [f32]) {
            let send = values.to_vec();
            self.world
                .all_reduce_into(&send[..], values, SystemOperation::sum());
        }
        fn all_reduce_sum_f64(&self, values: &mut [f64]) {
            let send = values.to_vec();
            self.world
                .all_reduce_into(&send[..], values, SystemOperation::sum());
        }
        fn all_reduce_max_f64(&self, values: &mut [f64]) {
            let send = values.to_vec();
            self.world
                .all_reduce_into(&send[..], values, SystemOperation::max());
        }
        fn all_gather_u64(&self, value: u64) -> Vec<u64> {
            let mut out = vec![0u64; self.size()];
            self.world.all_gather_into(&value, &mut out[..]);
            out
        }
        fn all_gather_f64(&self, values: &[f64]) -> Vec<f64> {
            let counts: Vec<Count> = self
                .all_gather_u64(values.len() as u64)
                .into_iter()
                .map(|n| n as Count)
                .collect();
            let displs: Vec<Count> = counts
                .iter()
                .scan(0, |acc, &n| {
                    let at = *acc;
                    *acc += n;
                    Some(at)
                })
                .collect();
            let total = counts.iter().map(|&n| n as usize).sum();
            let mut out = vec![0.0; total];
            {
                let mut partition = PartitionMut::new(&mut out[..], counts, &displs[..]);
                self.world.all_gather_varcount_into(values, &mut partition);
            }
            out
        }
        fn broadcast_bytes(&self, bytes: Vec<u8>) -> Vec<u8> {
            let root = self.world.process_at_rank(0);
            let mut len = bytes.len() as u64;
            root.broadcast_into(&mut len);
            let mut buf = if self.rank() == 0 {
                bytes
            } else {
                vec![0u8; len as usize]
            };
            root.broadcast_into(&mut buf[..]);
            buf
        }
        fn barrier(&self) {
            self.world.barrier();
        }
        fn abort(&self, code: i32) -> ! {
            self.world.abort(code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One process: rank 0 of 1, collectives are the identity.
    #[test]
    fn single_process_collectives_are_the_identity() {
        let comm = SingleProcess;
        assert_eq!((comm.rank(), comm.size(), comm.is_root()), (0, 1, true));
        let mut v = [1.5f64, -2.0];
        comm.all_reduce_sum_f64(&mut v);
        comm.all_reduce_max_f64(&mut v);
        assert_eq!(v, [1.5, -2.0]);
        assert_eq!(comm.all_gather_f64(&v), vec![1.5, -2.0]);
        assert_eq!(comm.all_gather_u64(7), vec![7]);
        assert_eq!(comm.broadcast_bytes(b"model".to_vec()), b"model".to_vec());
    }
}
