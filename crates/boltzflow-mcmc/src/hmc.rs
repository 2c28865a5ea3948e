//! Hybrid Monte Carlo with a leapfrog integrator, for every target.

use serde::{Deserialize, Serialize};

/// `[mcmc.hmc]`: leapfrog step size and trajectory length.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HmcConfig {
    /// Leapfrog step size epsilon (default 0.1).
    pub step_size: f64,
    /// Leapfrog steps per trajectory (default 10).
    pub n_steps: usize,
    /// Adapt the step size towards `target_acceptance` during thermalisation (default true).
    pub adapt: bool,
    /// Acceptance the adaptation aims for (default 0.8).
    pub target_acceptance: f64,
}

impl Default for HmcConfig {
    fn default() -> Self {
        Self {
            step_size: 0.1,
            n_steps: 10,
            adapt: true,
            target_acceptance: 0.8,
        }
    }
}
