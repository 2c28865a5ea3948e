//! Heat bath and over-relaxation for U(1) links.

use serde::{Deserialize, Serialize};

/// `[mcmc.heatbath]`: over-relaxation sweeps per heat-bath sweep.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HeatbathConfig {
    /// Over-relaxation sweeps after each heat-bath sweep (default 2).
    pub overrelax: usize,
}

impl Default for HeatbathConfig {
    fn default() -> Self {
        Self { overrelax: 2 }
    }
}
