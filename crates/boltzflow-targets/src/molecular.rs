//! Molecular and particle systems in reduced units: S(x) = E(x) / T.
//!
//! Parameters and their defaults are those of `shared/PHYSICS.md`.

use serde::{Deserialize, Serialize};

use crate::Result;

fn one() -> f64 {
    1.0
}

/// 2D double well E = x^4 - 6 x^2 + x + y^2/2 (Noe et al. 2019 code).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DoubleWellSpec {
    /// Temperature kT (default 1).
    #[serde(default = "one")]
    pub temperature: f64,
}

/// Mueller-Brown potential E = k sum_j A_j exp[...].
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MuellerBrownSpec {
    /// Temperature kT (default 1).
    #[serde(default = "one")]
    pub temperature: f64,
    /// Overall scale k (default 0.1).
    #[serde(default = "MuellerBrownSpec::default_k")]
    pub k: f64,
}

impl MuellerBrownSpec {
    fn default_k() -> f64 {
        0.1
    }
}

/// DW4: particles in 2D with pair energy a (d - d0) + b (d - d0)^2 + c (d - d0)^4.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Dw4Spec {
    /// Temperature kT (default 1).
    #[serde(default = "one")]
    pub temperature: f64,
    /// Number of particles (default 4).
    #[serde(default = "Dw4Spec::default_n")]
    pub n_particles: i64,
    /// Linear coefficient (default 0).
    #[serde(default)]
    pub a: f64,
    /// Quadratic coefficient (default -4).
    #[serde(default = "Dw4Spec::default_b")]
    pub b: f64,
    /// Quartic coefficient (default 0.9).
    #[serde(default = "Dw4Spec::default_c")]
    pub c: f64,
    /// Reference distance (default 4).
    #[serde(default = "Dw4Spec::default_d0")]
    pub d0: f64,
}

impl Dw4Spec {
    fn default_n() -> i64 {
        4
    }
    fn default_b() -> f64 {
        -4.0
    }
    fn default_c() -> f64 {
        0.9
    }
    fn default_d0() -> f64 {
        4.0
    }
}

/// Lennard-Jones cluster in 3D with a harmonic restraint to the centre of mass.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LjSpec {
    /// Temperature kT (default 1).
    #[serde(default = "one")]
    pub temperature: f64,
    /// Number of particles (13 for LJ13, 55 for LJ55).
    #[serde(default = "LjSpec::default_n")]
    pub n_particles: i64,
    /// Well depth epsilon (default 1).
    #[serde(default = "one")]
    pub eps: f64,
    /// Distance of the minimum r_m (default 1).
    #[serde(default = "one")]
    pub rm: f64,
    /// Strength of the restraint (1/2) k sum_i |x_i - xbar|^2 (default 1).
    #[serde(default = "one")]
    pub k_restraint: f64,
}

impl LjSpec {
    fn default_n() -> i64 {
        13
    }
}

/// Solvated bistable dimer (Noe et al. 2019): 2 dimer + n solvent particles in a 2D box.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DimerSpec {
    /// Temperature kT (default 1).
    #[serde(default = "one")]
    pub temperature: f64,
    /// Number of solvent particles (default 36).
    #[serde(default = "DimerSpec::default_solvent")]
    pub n_solvent: i64,
}

impl DimerSpec {
    fn default_solvent() -> i64 {
        36
    }
}

macro_rules! todo_target {
    ($($spec:ident => $target:ident),*) => {$(
        impl $spec {
            /// Checks the parameters.
            pub fn validate(&self) -> Result<()> {
                todo!()
            }
        }
        /// Target built from the spec.
        pub struct $target {}
        impl $target {
            /// Builds the target from a validated spec.
            pub fn new(_spec: &$spec) -> Result<Self> {
                todo!()
            }
        }

        impl crate::Target for $target {
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

    )*};
}

todo_target!(DoubleWellSpec => DoubleWell, MuellerBrownSpec => MuellerBrown, Dw4Spec => Dw4,
    LjSpec => Lj, DimerSpec => Dimer);
