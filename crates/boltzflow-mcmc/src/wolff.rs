//! Wolff cluster updates of the embedded Ising signs of phi^4 (Brower-Tamayo), combined
//! with Metropolis sweeps for ergodicity.

use serde::{Deserialize, Serialize};

/// `[mcmc.wolff]`: clusters and Metropolis sweeps per step.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WolffConfig {
    /// Wolff clusters flipped per step (default 1).
    pub clusters: usize,
    /// Checkerboard Metropolis sweeps per step, using `[mcmc.metropolis]` (default 1).
    pub metropolis_sweeps: usize,
}

impl Default for WolffConfig {
    fn default() -> Self {
        Self {
            clusters: 1,
            metropolis_sweeps: 1,
        }
    }
}
