//! Scalar phi^4 theory on a periodic d-dimensional lattice (PHYSICS.md conventions).
//!
//! S(phi) = sum_x [ -2 sum_mu phi(x) phi(x+mu) + (2d + m2) phi(x)^2 + lam phi(x)^4 ].

use serde::{Deserialize, Serialize};

use crate::Result;

/// Parameters of phi^4 theory: give either (`m2`, `lam`) or the hopping form (`kappa`, `lam_h`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Phi4Spec {
    /// Lattice extents `[L0, L1, ...]`; the dimension d is its length.
    pub shape: Vec<i64>,
    /// Bare mass squared.
    pub m2: Option<f64>,
    /// Quartic coupling.
    pub lam: Option<f64>,
    /// Hopping parameter.
    pub kappa: Option<f64>,
    /// Quartic coupling in the hopping form.
    pub lam_h: Option<f64>,
}

impl Phi4Spec {
    /// Checks the parameters.
    pub fn validate(&self) -> Result<()> {
        todo!()
    }

    /// The couplings (m2, lam), converted from the hopping form where that was given.
    pub fn couplings(&self) -> (f64, f64) {
        todo!()
    }
}

/// phi^4 target.
pub struct Phi4 {}

impl Phi4 {
    /// Builds the target from a validated spec.
    pub fn new(_spec: &Phi4Spec) -> Result<Self> {
        todo!()
    }
}

impl crate::Target for Phi4 {
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
