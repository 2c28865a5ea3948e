//! Heat bath and over-relaxation for U(1) links.
//!
//! With the staple sum k e^{i alpha} of a link ([`U1Lattice::staple`]), the conditional
//! density of the link is p(theta) ∝ exp(beta k cos(theta - alpha)): a von Mises distribution
//! with mean alpha and concentration kappa = beta k, sampled exactly with the Best-Fisher
//! algorithm (Appl. Statist. 28 (1979) 152). Over-relaxation theta -> 2 alpha - theta keeps the
//! local action exactly and decorrelates faster. One step is one heat-bath sweep followed by
//! `overrelax` over-relaxation sweeps, links in storage order.

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::local::{BlockRng, U1Lattice, wrap_angle};
use crate::{ChainRng, Result, Sampler, StepStats};

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

/// A draw from the von Mises distribution p(t) ∝ exp(kappa cos t) on (-pi, pi], kappa >= 0.
///
/// Best-Fisher: tau = 1 + sqrt(1 + 4 kappa^2), rho = (tau - sqrt(2 tau)) / (2 kappa),
/// r = (1 + rho^2) / (2 rho); repeat z = cos(pi u1), f = (1 + r z) / (r + z), c = kappa (r - f)
/// until c (2 - c) > u2 or ln(c / u2) + 1 >= c; return sign(u3 - 1/2) acos(f).
/// tau - sqrt(2 tau) is evaluated as tau (tau - 2) / (tau + sqrt(2 tau)) with
/// tau - 2 = 4 kappa^2 / (1 + sqrt(1 + 4 kappa^2)), exact also for small kappa.
pub fn von_mises(kappa: f64, rng: &mut BlockRng) -> f64 {
    use std::f64::consts::PI;
    if kappa <= 0.0 {
        return PI * rng.symmetric();
    }
    let root = (1.0 + 4.0 * kappa * kappa).sqrt();
    let tau = 1.0 + root;
    let tau_minus_2 = 4.0 * kappa * kappa / (1.0 + root);
    let rho = tau * tau_minus_2 / (tau + (2.0 * tau).sqrt()) / (2.0 * kappa);
    let r = (1.0 + rho * rho) / (2.0 * rho);
    loop {
        let z = (PI * rng.uniform()).cos();
        let f = (1.0 + r * z) / (r + z);
        let c = kappa * (r - f);
        let u2 = rng.uniform();
        if c * (2.0 - c) > u2 || (c / u2).ln() + 1.0 >= c {
            let t = f.clamp(-1.0, 1.0).acos();
            return if rng.uniform() < 0.5 { -t } else { t };
        }
    }
}

/// Heat bath plus over-relaxation for U(1).
#[derive(Clone, Debug)]
pub struct Heatbath {
    lattice: U1Lattice,
    config: HeatbathConfig,
}

impl Heatbath {
    /// Sampler for U(1) on `lattice`.
    pub fn new(lattice: U1Lattice, config: &HeatbathConfig) -> Result<Self> {
        Ok(Self {
            lattice,
            config: config.clone(),
        })
    }
}

impl Sampler for Heatbath {
    fn name(&self) -> &'static str {
        "heatbath"
    }

    fn step(&mut self, x: &mut [f64], rng: &mut ChainRng) -> StepStats {
        let beta = self.lattice.beta();
        let mut brng = BlockRng::new(rng.next_u64());
        for l in 0..x.len() {
            let (kc, ks) = self.lattice.staple(x, l);
            let k = kc.hypot(ks);
            let alpha = ks.atan2(kc);
            x[l] = wrap_angle(alpha + von_mises(beta * k, &mut brng));
        }
        for _ in 0..self.config.overrelax {
            for l in 0..x.len() {
                let (kc, ks) = self.lattice.staple(x, l);
                if kc == 0.0 && ks == 0.0 {
                    continue;
                }
                let alpha = ks.atan2(kc);
                x[l] = wrap_angle(2.0 * alpha - x[l]);
            }
        }
        StepStats {
            acceptance: 1.0,
            action: self.lattice.action(x),
            action_evals: 1.0 + self.config.overrelax as f64,
        }
    }
}
