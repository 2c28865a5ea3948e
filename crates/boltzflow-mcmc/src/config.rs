//! The `[mcmc]` section of a run config and the sampler factory.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use boltzflow_targets::TargetSpec;
use boltzflow_targets::phi4::Phi4;
use boltzflow_targets::u1::U1;

use crate::heatbath::Heatbath;
use crate::hmc::Hmc;
use crate::local::{ParticleMetropolis, Phi4Metropolis, U1Metropolis};
use crate::wolff::Wolff;
use crate::{McmcError, Result, Sampler};

/// Which update a chain uses.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SamplerKind {
    /// Hybrid Monte Carlo (leapfrog), every target.
    Hmc,
    /// Local Metropolis: checkerboard sites (phi^4), links (U(1)), single particles (molecules).
    Metropolis,
    /// Wolff embedded-Ising clusters plus Metropolis sweeps (phi^4).
    Wolff,
    /// Heat bath plus over-relaxation (U(1)).
    Heatbath,
}

fn default_chains() -> usize {
    4
}
fn default_one() -> usize {
    1
}
fn default_block() -> usize {
    100
}
fn default_true() -> bool {
    true
}

/// How to sample: `[mcmc]` in a run config.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct McmcConfig {
    /// The update.
    pub sampler: SamplerKind,
    /// Independent chains, run in parallel (default 4).
    #[serde(default = "default_chains")]
    pub chains: usize,
    /// Base seed; chain c uses stream c of it.
    pub seed: u64,
    /// Updates discarded before the first draw (adaptation happens here only).
    pub thermalization: usize,
    /// Draws stored per chain.
    pub draws: usize,
    /// Updates between stored draws (default 1).
    #[serde(default = "default_one")]
    pub steps_per_draw: usize,
    /// Draws per chain between HDF5 flushes and checkpoints (default 100).
    #[serde(default = "default_block")]
    pub block: usize,
    /// Store configurations, not only observables (default true).
    #[serde(default = "default_true")]
    pub store_configs: bool,
    /// Coordinate files to start from (relative to the config file): chain c starts from
    /// file c mod len (e.g. one per metastable state); default: the target's cold start.
    /// Format of [`crate::start::read_coordinates`].
    #[serde(default)]
    pub start: Vec<std::path::PathBuf>,
    /// HMC parameters.
    #[serde(default)]
    pub hmc: crate::hmc::HmcConfig,
    /// Local Metropolis parameters.
    #[serde(default)]
    pub metropolis: crate::local::MetropolisConfig,
    /// Wolff cluster parameters.
    #[serde(default)]
    pub wolff: crate::wolff::WolffConfig,
    /// Heat-bath parameters.
    #[serde(default)]
    pub heatbath: crate::heatbath::HeatbathConfig,
}

impl McmcConfig {
    /// Checks every parameter; the error names the key and the fix.
    pub fn validate(&self) -> Result<()> {
        let at_least_one = |name: &'static str, value: usize, fix: &'static str| {
            if value == 0 {
                Err(McmcError::InvalidParameter {
                    name,
                    value: "0".into(),
                    fix,
                })
            } else {
                Ok(())
            }
        };
        at_least_one("chains", self.chains, "run at least 1 chain")?;
        at_least_one("draws", self.draws, "store at least 1 draw per chain")?;
        at_least_one(
            "steps_per_draw",
            self.steps_per_draw,
            "use at least 1 update between draws",
        )?;
        at_least_one("block", self.block, "flush at least every 1 draw")?;
        self.hmc.validate()?;
        self.metropolis.validate()?;
        self.wolff.validate()?;
        Ok(())
    }
}

impl SamplerKind {
    /// Name as in configs.
    pub fn name(self) -> &'static str {
        match self {
            Self::Hmc => "hmc",
            Self::Metropolis => "metropolis",
            Self::Wolff => "wolff",
            Self::Heatbath => "heatbath",
        }
    }
}

/// Builds the configured sampler for a target; errors if the update does not apply to it.
///
/// `hmc` and `metropolis` apply to every theory (checkerboard sites for phi^4, links for
/// U(1), single particles otherwise), `wolff` only to phi^4 and `heatbath` only to U(1).
pub fn build_sampler(config: &McmcConfig, target: &TargetSpec) -> Result<Box<dyn Sampler>> {
    config.validate()?;
    target.validate()?;
    let unsupported = |fix: &'static str| McmcError::Unsupported {
        sampler: config.sampler.name(),
        theory: target.theory(),
        fix,
    };
    Ok(match (config.sampler, target) {
        (SamplerKind::Hmc, _) => Box::new(Hmc::new(Arc::from(target.build()?), &config.hmc)?),
        (SamplerKind::Metropolis, TargetSpec::Phi4(spec)) => {
            Box::new(Phi4Metropolis::new(Phi4::new(spec)?, &config.metropolis)?)
        }
        (SamplerKind::Metropolis, TargetSpec::U1(spec)) => {
            Box::new(U1Metropolis::new(U1::new(spec)?, &config.metropolis)?)
        }
        (SamplerKind::Metropolis, _) => Box::new(ParticleMetropolis::new(
            Arc::from(target.build()?),
            &config.metropolis,
        )?),
        (SamplerKind::Wolff, TargetSpec::Phi4(spec)) => Box::new(Wolff::new(
            Phi4::new(spec)?,
            &config.wolff,
            &config.metropolis,
        )?),
        (SamplerKind::Wolff, _) => {
            return Err(unsupported(
                "wolff applies only to phi4; use hmc or metropolis",
            ));
        }
        (SamplerKind::Heatbath, TargetSpec::U1(spec)) => {
            Box::new(Heatbath::new(U1::new(spec)?, &config.heatbath)?)
        }
        (SamplerKind::Heatbath, _) => {
            return Err(unsupported(
                "heatbath applies only to u1; use hmc or metropolis",
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use boltzflow_targets::LatticeFile;

    fn config(sampler: SamplerKind) -> McmcConfig {
        serde_json::from_value(serde_json::json!({
            "sampler": sampler,
            "seed": 1,
            "thermalization": 10,
            "draws": 10,
        }))
        .unwrap()
    }

    fn spec(toml: &str) -> TargetSpec {
        LatticeFile::parse(toml).unwrap().target
    }

    #[test]
    fn builds_the_sampler_that_applies() {
        let phi4 = spec("theory = \"phi4\"\nshape = [4, 4]\nm2 = -4.0\nlam = 8.0\n");
        let u1 = spec("theory = \"u1\"\nshape = [4, 4]\nbeta = 2.0\n");
        let dw = spec("theory = \"double_well\"\n");
        for (kind, target, name) in [
            (SamplerKind::Hmc, &phi4, "hmc"),
            (SamplerKind::Hmc, &u1, "hmc"),
            (SamplerKind::Hmc, &dw, "hmc"),
            (SamplerKind::Metropolis, &phi4, "metropolis"),
            (SamplerKind::Metropolis, &u1, "metropolis"),
            (SamplerKind::Metropolis, &dw, "metropolis"),
            (SamplerKind::Wolff, &phi4, "wolff"),
            (SamplerKind::Heatbath, &u1, "heatbath"),
        ] {
            let sampler = build_sampler(&config(kind), target).unwrap();
            assert_eq!(sampler.name(), name);
        }
    }

    #[test]
    fn refuses_samplers_that_do_not_apply() {
        let u1 = spec("theory = \"u1\"\nshape = [4, 4]\nbeta = 2.0\n");
        let err = build_sampler(&config(SamplerKind::Wolff), &u1)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("wolff") && err.contains("u1") && err.contains("hmc or metropolis"),
            "{err}"
        );
        let dw = spec("theory = \"double_well\"\n");
        let err = build_sampler(&config(SamplerKind::Heatbath), &dw)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("heatbath") && err.contains("double_well"),
            "{err}"
        );
    }

    #[test]
    fn rejects_bad_parameters_naming_the_key() {
        let phi4 = spec("theory = \"phi4\"\nshape = [4, 4]\nm2 = -4.0\nlam = 8.0\n");
        let mut cases: Vec<(McmcConfig, &str)> = Vec::new();
        for key in ["chains", "draws", "steps_per_draw", "block"] {
            let mut c = serde_json::to_value(config(SamplerKind::Metropolis)).unwrap();
            c[key] = serde_json::json!(0);
            cases.push((serde_json::from_value(c).unwrap(), key));
        }
        let mut c = config(SamplerKind::Hmc);
        c.hmc.step_size = f64::INFINITY;
        cases.push((c, "hmc.step_size"));
        let mut c = config(SamplerKind::Metropolis);
        c.metropolis.hits = 0;
        cases.push((c, "metropolis.hits"));
        let mut c = config(SamplerKind::Wolff);
        c.wolff.clusters = 0;
        cases.push((c, "wolff.clusters"));
        for (c, key) in cases {
            let err = build_sampler(&c, &phi4).err().unwrap().to_string();
            assert!(err.contains(&format!("`{key}`")), "{key}: {err}");
            assert!(!err.contains('\n'));
        }
    }
}
