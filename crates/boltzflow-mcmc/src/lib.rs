//! Markov-chain Monte Carlo baselines: HMC, local Metropolis, Wolff clusters, heat bath.
//!
//! Every sampler implements [`Sampler`]: one `step` updates a configuration in place and
//! reports [`StepStats`]. Chains are seeded per chain ([`chain_rng`]) so that a run is
//! reproducible bitwise, whatever the number of threads.

pub mod chains;
pub mod config;
pub mod heatbath;
pub mod hmc;
pub mod local;
pub mod start;
pub mod wolff;

use rand::SeedableRng;

pub use chains::{BlockData, Chain, ChainState, Chains};
pub use config::{McmcConfig, SamplerKind, build_sampler};

/// The per-chain random number generator (xoshiro256++, 2^128 jumps apart per stream).
pub type ChainRng = rand_xoshiro::Xoshiro256PlusPlus;

/// The generator of stream `stream` (chain index, or rank * chains + chain) for `seed`:
/// streams are 2^128 draws apart, so they never overlap.
pub fn chain_rng(seed: u64, stream: u64) -> ChainRng {
    let mut rng = ChainRng::seed_from_u64(seed);
    for _ in 0..stream {
        rng.jump();
    }
    rng
}

/// Errors raised while building or restoring a sampler.
#[derive(Debug, thiserror::Error)]
pub enum McmcError {
    /// The sampler does not apply to this target.
    #[error("sampler `{sampler}` does not apply to theory `{theory}`: {fix}")]
    Unsupported {
        sampler: &'static str,
        theory: &'static str,
        fix: &'static str,
    },
    /// A sampler parameter is out of range.
    #[error("invalid sampler parameter `{name}` = {value}: {fix}")]
    InvalidParameter {
        name: &'static str,
        value: String,
        fix: &'static str,
    },
    /// The target could not be built.
    #[error(transparent)]
    Target(#[from] boltzflow_targets::TargetError),
    /// A checkpointed sampler state could not be restored.
    #[error("cannot restore sampler state: {0}")]
    State(String),
    /// A start-coordinates file is missing or does not fit the target.
    #[error("mcmc.start {path}: {problem}; {fix}")]
    Start {
        path: String,
        problem: String,
        fix: &'static str,
    },
}

/// `Result` with [`McmcError`].
pub type Result<T> = std::result::Result<T, McmcError>;

/// What one update reports.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StepStats {
    /// Acceptance of the update: 0 or 1 for HMC, the accepted fraction for sweeps; for
    /// cluster updates the mean cluster size / V.
    pub acceptance: f64,
    /// Action S(x) after the update.
    pub action: f64,
    /// Cost: number of full-action (or force) evaluations equivalent, for cost comparisons.
    /// A sweep of V local updates counts as 1; an HMC trajectory of n leapfrog steps as n.
    pub action_evals: f64,
}

/// A Markov-chain update that leaves exp(-S) invariant.
pub trait Sampler: Send {
    /// Name as in configs (`"hmc"`, `"metropolis"`, `"wolff"`, `"heatbath"`).
    fn name(&self) -> &'static str;

    /// One update of `x` in place (a trajectory, a sweep, a cluster update plus sweeps).
    fn step(&mut self, x: &mut [f64], rng: &mut ChainRng) -> StepStats;

    /// Tunes parameters from the last step's statistics; called only during thermalisation,
    /// so the stored chain is an exact Markov chain.
    fn adapt(&mut self, _stats: &StepStats) {}

    /// Tunable state (step sizes...) for checkpoints.
    fn state(&self) -> serde_json::Value {
        serde_json::Value::Null
    }

    /// Restores the state written by [`Sampler::state`].
    fn set_state(&mut self, _state: &serde_json::Value) -> Result<()> {
        Ok(())
    }
}
