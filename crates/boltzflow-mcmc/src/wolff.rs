//! Wolff cluster updates of the embedded Ising signs of phi^4 (Brower-Tamayo), combined
//! with Metropolis sweeps for ergodicity.
//!
//! Write phi(x) = s(x) |phi(x)| with Ising signs s. At fixed |phi| the hopping term
//! -2 phi(x) phi(y) of each bond is an Ising coupling J_xy = 2 |phi(x) phi(y)|, so the Wolff
//! cluster algorithm (U. Wolff, PRL 62 (1989) 361; R. Brower and P. Tamayo, PRL 62 (1989) 1087)
//! applies: from a random seed site, add each neighbour y of a cluster site x with
//! phi(x) phi(y) > 0 with probability p = 1 - exp(-4 phi(x) phi(y)), and flip the signs of the
//! whole cluster. This leaves exp(-S) invariant but only changes signs, so `metropolis_sweeps`
//! checkerboard Metropolis sweeps ([`crate::local::Checkerboard`]) follow each step.

use rand::RngExt;
use serde::{Deserialize, Serialize};

use boltzflow_targets::Target;
use boltzflow_targets::phi4::Phi4;

use crate::local::{Checkerboard, MetropolisConfig};
use crate::{ChainRng, McmcError, Result, Sampler, StepStats};

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

impl WolffConfig {
    /// Checks `clusters >= 1`: a step without clusters is a plain Metropolis sweep.
    pub fn validate(&self) -> Result<()> {
        if self.clusters == 0 {
            return Err(McmcError::InvalidParameter {
                name: "wolff.clusters",
                value: "0".into(),
                fix: "flip at least 1 cluster per step (or use sampler = \"metropolis\")",
            });
        }
        Ok(())
    }
}

/// Wolff cluster sampler for phi^4; the cluster stack is kept between steps.
pub struct Wolff {
    board: Checkerboard,
    config: WolffConfig,
    metropolis: MetropolisConfig,
    /// Sites added to the cluster whose neighbours are still to be tested.
    stack: Vec<u32>,
}

impl Wolff {
    /// Sampler for the phi^4 `target`; the sweeps use `metropolis`.
    pub fn new(target: Phi4, config: &WolffConfig, metropolis: &MetropolisConfig) -> Result<Self> {
        config.validate()?;
        metropolis.validate()?;
        let volume = target.lattice().volume();
        Ok(Self {
            board: Checkerboard::new(target),
            config: config.clone(),
            metropolis: metropolis.clone(),
            stack: Vec::with_capacity(volume),
        })
    }

    /// Grows one cluster from a random seed site and flips it; returns its size.
    ///
    /// A site is flipped when it joins, so a neighbour y of cluster site x (original value
    /// -phi(x) after the flip) can join only if -phi(x) phi(y) > 0: sites already in the
    /// cluster have the opposite sign and are never tested twice; no visited mask is needed.
    pub fn flip_cluster(&mut self, phi: &mut [f64], rng: &mut ChainRng) -> usize {
        let lattice = self.board.target().lattice();
        let d = lattice.ndim();
        let seed = rng.random_range(0..phi.len());
        self.stack.clear();
        phi[seed] = -phi[seed];
        self.stack.push(seed as u32);
        let mut size = 1;
        while let Some(x) = self.stack.pop() {
            let x = x as usize;
            let phi_x = -phi[x];
            for mu in 0..d {
                for y in [lattice.fwd(x, mu), lattice.bwd(x, mu)] {
                    let bond = phi_x * phi[y];
                    if bond > 0.0 && rng.random::<f64>() < -(-4.0 * bond).exp_m1() {
                        phi[y] = -phi[y];
                        self.stack.push(y as u32);
                        size += 1;
                    }
                }
            }
        }
        size
    }
}

impl Sampler for Wolff {
    fn name(&self) -> &'static str {
        "wolff"
    }

    fn step(&mut self, x: &mut [f64], rng: &mut ChainRng) -> StepStats {
        let mut sizes = 0;
        for _ in 0..self.config.clusters {
            sizes += self.flip_cluster(x, rng);
        }
        let mut action = None;
        for _ in 0..self.config.metropolis_sweeps {
            let sweep = self
                .board
                .sweep(x, rng, self.metropolis.step_size, self.metropolis.hits);
            action = Some(sweep.action);
        }
        StepStats {
            acceptance: sizes as f64 / (self.config.clusters * x.len()) as f64,
            action: action.unwrap_or_else(|| self.board.target().action(x)),
            action_evals: (sizes as f64 / x.len() as f64) + self.config.metropolis_sweeps as f64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wolff(shape: &[i64]) -> Wolff {
        let target = Phi4::new(&boltzflow_targets::phi4::Phi4Spec {
            shape: shape.to_vec(),
            m2: Some(-4.0),
            lam: Some(8.0),
            kappa: None,
            lam_h: None,
        })
        .unwrap();
        Wolff::new(
            target,
            &WolffConfig::default(),
            &MetropolisConfig::default(),
        )
        .unwrap()
    }

    #[test]
    fn clusters_only_flip_signs() {
        let mut w = wolff(&[8, 8]);
        let mut rng = crate::chain_rng(2, 0);
        let mut phi: Vec<f64> = (0..64)
            .map(|i| ((i * 37 % 11) as f64 - 5.0) * 0.3 + 0.05)
            .collect();
        let before = phi.clone();
        let mut flipped_total = 0;
        for _ in 0..20 {
            let size = w.flip_cluster(&mut phi, &mut rng);
            assert!((1..=64).contains(&size));
            flipped_total += size;
        }
        assert!(phi.iter().zip(&before).all(|(a, b)| a.abs() == b.abs()));
        assert!(flipped_total > 20, "clusters never grew");
    }

    #[test]
    fn strong_bonds_flip_everything_and_weak_bonds_one_site() {
        let mut w = wolff(&[6, 4]);
        let mut rng = crate::chain_rng(3, 0);
        // p = 1 - exp(-4 * 100) = 1 on every bond
        let mut phi = vec![10.0; 24];
        assert_eq!(w.flip_cluster(&mut phi, &mut rng), 24);
        assert!(phi.iter().all(|&p| p == -10.0));
        // alternating signs: no bond has phi(x) phi(y) > 0
        let mut phi: Vec<f64> = (0..24)
            .map(|i| if (i / 4 + i % 4) % 2 == 0 { 1.0 } else { -1.0 })
            .collect();
        assert_eq!(w.flip_cluster(&mut phi, &mut rng), 1);
    }

    #[test]
    fn same_seed_same_chain() {
        let run = || {
            let mut w = wolff(&[8, 8]);
            let mut rng = crate::chain_rng(4, 0);
            let mut phi = vec![0.5; 64];
            let stats: Vec<f64> = (0..10)
                .map(|_| w.step(&mut phi, &mut rng).acceptance)
                .collect();
            (phi, stats)
        };
        assert_eq!(run(), run());
    }
}
