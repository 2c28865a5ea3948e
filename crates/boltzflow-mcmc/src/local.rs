//! Local Metropolis: checkerboard site updates (phi^4), link updates (U(1)),
//! single-particle moves (molecules).

use serde::{Deserialize, Serialize};

/// `[mcmc.metropolis]`: proposal width and hits per degree of freedom.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MetropolisConfig {
    /// Proposal half-width: x' = x + step_size * uniform(-1, 1) (default 0.5).
    pub step_size: f64,
    /// Metropolis hits per site (link, particle) per sweep (default 1).
    pub hits: usize,
}

impl Default for MetropolisConfig {
    fn default() -> Self {
        Self {
            step_size: 0.5,
            hits: 1,
        }
    }
}
