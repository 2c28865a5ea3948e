//! Lattice files: TOML definitions of a target (theory, geometry, parameters, temperature)
//! with optional reference values.
//!
//! ```toml
//! theory = "phi4"
//! shape = [8, 8]
//! m2 = -4.0          # or: kappa = ..., lam_h = ...
//! lam = 8.0
//! description = "tutorial point"
//! [reference]
//! source = "..."
//! chi2 = 0.123
//! ```
//!
//! Unknown keys are rejected. `description` and `[reference]` are metadata; everything else
//! defines the target.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{Result, Target, TargetError, molecular, phi4, u1};

/// A parsed lattice file: the target definition plus its metadata.
#[derive(Clone, Debug, Serialize)]
pub struct LatticeFile {
    /// The target's definition.
    pub target: TargetSpec,
    /// Free-text description.
    pub description: Option<String>,
    /// Reference values quoted with their source (not used for exact checks).
    pub reference: Option<Reference>,
}

/// Reference values from the literature, keyed by observable name.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct Reference {
    /// Where the numbers come from.
    pub source: Option<String>,
    /// Values keyed by observable name.
    #[serde(flatten)]
    pub values: BTreeMap<String, f64>,
}

impl LatticeFile {
    /// Reads and validates a lattice file.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| TargetError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text).map_err(|e| TargetError::Parse(format!("{}: {e}", path.display())))
    }

    /// Parses and validates lattice-file text.
    pub fn parse(text: &str) -> Result<Self> {
        let mut table: toml::Table =
            toml::from_str(text).map_err(|e| TargetError::Parse(one_line(&e.to_string())))?;
        let description = match table.remove("description") {
            Some(toml::Value::String(s)) => Some(s),
            Some(_) => return Err(TargetError::Parse("`description` must be a string".into())),
            None => None,
        };
        let reference = match table.remove("reference") {
            Some(v) => Some(v.try_into::<Reference>().map_err(|e| {
                TargetError::Parse(format!("[reference]: {}", one_line(&e.to_string())))
            })?),
            None => None,
        };
        let target: TargetSpec = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| TargetError::Parse(one_line(&e.to_string())))?;
        target.validate()?;
        Ok(Self {
            target,
            description,
            reference,
        })
    }

    /// The lattice file as TOML text (what is stored in output metadata).
    pub fn to_toml(&self) -> String {
        let mut table = match toml::Value::try_from(&self.target) {
            Ok(toml::Value::Table(t)) => t,
            _ => toml::Table::new(),
        };
        if let Some(d) = &self.description {
            table.insert("description".into(), toml::Value::String(d.clone()));
        }
        if let Some(r) = &self.reference
            && let Ok(v) = toml::Value::try_from(r)
        {
            table.insert("reference".into(), v);
        }
        toml::to_string(&table).unwrap_or_default()
    }
}

/// Collapses a multi-line parser message into one line.
pub fn one_line(msg: &str) -> String {
    msg.split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.chars().all(|c| c == '|' || c == '^' || c == ' '))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The definition of a target, tagged by `theory`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(tag = "theory", rename_all = "snake_case")]
pub enum TargetSpec {
    /// Scalar phi^4 theory on a periodic lattice of any dimension.
    Phi4(phi4::Phi4Spec),
    /// Compact U(1) gauge theory in 2D with the Wilson action.
    U1(u1::U1Spec),
    /// 2D double well E = x^4 - 6 x^2 + x + y^2/2.
    DoubleWell(molecular::DoubleWellSpec),
    /// Mueller-Brown potential scaled by k.
    MuellerBrown(molecular::MuellerBrownSpec),
    /// Four particles in 2D with a double-well pair potential.
    Dw4(molecular::Dw4Spec),
    /// Lennard-Jones cluster (LJ13, LJ55) with a harmonic restraint to the centre of mass.
    Lj(molecular::LjSpec),
    /// Bistable dimer in a bath of repulsive solvent particles (Noe et al. 2019).
    Dimer(molecular::DimerSpec),
}

impl TargetSpec {
    /// Checks every parameter; the error names the parameter and the fix.
    pub fn validate(&self) -> Result<()> {
        match self {
            Self::Phi4(s) => s.validate(),
            Self::U1(s) => s.validate(),
            Self::DoubleWell(s) => s.validate(),
            Self::MuellerBrown(s) => s.validate(),
            Self::Dw4(s) => s.validate(),
            Self::Lj(s) => s.validate(),
            Self::Dimer(s) => s.validate(),
        }
    }

    /// Validates and builds the target.
    pub fn build(&self) -> Result<Box<dyn Target>> {
        self.validate()?;
        Ok(match self {
            Self::Phi4(s) => Box::new(phi4::Phi4::new(s)?),
            Self::U1(s) => Box::new(u1::U1::new(s)?),
            Self::DoubleWell(s) => Box::new(molecular::DoubleWell::new(s)?),
            Self::MuellerBrown(s) => Box::new(molecular::MuellerBrown::new(s)?),
            Self::Dw4(s) => Box::new(molecular::Dw4::new(s)?),
            Self::Lj(s) => Box::new(molecular::Lj::new(s)?),
            Self::Dimer(s) => Box::new(molecular::Dimer::new(s)?),
        })
    }

    /// kT of a molecular target (S = E / kT); None for lattice field theories.
    pub fn temperature(&self) -> Option<f64> {
        match self {
            Self::Phi4(_) | Self::U1(_) => None,
            Self::DoubleWell(s) => Some(s.temperature),
            Self::MuellerBrown(s) => Some(s.temperature),
            Self::Dw4(s) => Some(s.temperature),
            Self::Lj(s) => Some(s.temperature),
            Self::Dimer(s) => Some(s.temperature),
        }
    }

    /// The same molecular target at temperature `t` (None for lattice field theories).
    pub fn with_temperature(&self, t: f64) -> Option<Self> {
        let mut spec = self.clone();
        match &mut spec {
            Self::Phi4(_) | Self::U1(_) => return None,
            Self::DoubleWell(s) => s.temperature = t,
            Self::MuellerBrown(s) => s.temperature = t,
            Self::Dw4(s) => s.temperature = t,
            Self::Lj(s) => s.temperature = t,
            Self::Dimer(s) => s.temperature = t,
        }
        Some(spec)
    }

    /// Whether S(x) is invariant under translating every particle by the same vector (DW4
    /// and LJ: their density is not normalisable along the centre of mass, which flows must
    /// remove and MCMC lets diffuse).
    pub fn translation_invariant(&self) -> bool {
        matches!(self, Self::Dw4(_) | Self::Lj(_))
    }

    /// Groups of identical particles (consecutive index ranges): S(x) is invariant under
    /// any permutation within a group. Empty for targets that are not particle systems.
    pub fn identical_particles(&self) -> Vec<std::ops::Range<usize>> {
        match self {
            Self::Dw4(s) => vec![0..s.n_particles as usize],
            Self::Lj(s) => vec![0..s.n_particles as usize],
            // the two dimer atoms (bond, restraint and repulsion are symmetric in them) and
            // the solvent
            Self::Dimer(s) => vec![0..2, 2..2 + s.n_solvent as usize],
            _ => Vec::new(),
        }
    }

    /// True when S is invariant under the mirror image that negates the first Cartesian
    /// component of every particle: DW4 (pair distances only), LJ (pair distances and a
    /// restraint on distances from the centre of mass) and the dimer (pair distances, its
    /// restraint (x_1x + x_2x)^2 + x_1y^2 + x_2y^2 and the box, all unchanged when every x
    /// component changes sign).
    pub fn mirror_symmetric(&self) -> bool {
        matches!(self, Self::Dw4(_) | Self::Lj(_) | Self::Dimer(_))
    }

    /// The theory tag as written in lattice files.
    pub fn theory(&self) -> &'static str {
        match self {
            Self::Phi4(_) => "phi4",
            Self::U1(_) => "u1",
            Self::DoubleWell(_) => "double_well",
            Self::MuellerBrown(_) => "mueller_brown",
            Self::Dw4(_) => "dw4",
            Self::Lj(_) => "lj",
            Self::Dimer(_) => "dimer",
        }
    }
}

/// Checks that a temperature is positive and finite.
pub fn validate_temperature(t: f64) -> Result<()> {
    if t > 0.0 && t.is_finite() {
        Ok(())
    } else {
        Err(TargetError::InvalidParameter {
            name: "temperature",
            value: t.to_string(),
            fix: "the temperature must be a positive number (kT in reduced units, default 1)",
        })
    }
}
