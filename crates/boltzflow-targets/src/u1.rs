//! Compact U(1) gauge theory on a periodic 2D lattice with the Wilson action.

use serde::{Deserialize, Serialize};

use crate::Result;

/// Parameters of 2D U(1) gauge theory.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct U1Spec {
    /// Lattice extents `[L0, L1]`.
    pub shape: Vec<i64>,
    /// Inverse coupling beta > 0.
    pub beta: f64,
}

impl U1Spec {
    /// Checks the parameters.
    pub fn validate(&self) -> Result<()> {
        todo!()
    }
}

/// U(1) target.
pub struct U1 {}

impl U1 {
    /// Builds the target from a validated spec.
    pub fn new(_spec: &U1Spec) -> Result<Self> {
        todo!()
    }
}

impl crate::Target for U1 {
    fn theory(&self) -> &'static str {
        todo!()
    }
    fn shape(&self) -> Vec<usize> {
        todo!()
    }
    fn action(&self, _x: &[f64]) -> f64 {
        todo!()
    }
    fn force(&self, _x: &[f64], _force: &mut [f64]) -> f64 {
        todo!()
    }
    fn observables(&self) -> Vec<Box<dyn crate::Observable>> {
        todo!()
    }
}
