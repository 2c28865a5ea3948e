//! Heat bath and over-relaxation for U(1) links.
//!
//! With the staple sum K of a link ([`U1::staple`]), the link's local action is
//! S_link(theta) = -beta Re[exp(i theta) K] = -beta |K| cos(theta - alpha) with alpha = -arg K
//! ([`U1::local_action`]), so its conditional density is p(theta) ∝ exp(beta |K| cos(theta - alpha)):
//! a von Mises distribution with mean alpha and concentration kappa = beta |K|, sampled exactly
//! with the Best-Fisher algorithm (Appl. Statist. 28 (1979) 152). Over-relaxation
//! theta -> 2 alpha - theta keeps the local action exactly and decorrelates faster. One step is
//! one heat-bath sweep followed by `overrelax` over-relaxation sweeps, links in storage order
//! theta_mu(x) at [`U1::link_index`]`(mu, x)`.

use rand::Rng;
use serde::{Deserialize, Serialize};

use boltzflow_targets::Target;
use boltzflow_targets::u1::U1;

use crate::local::{BlockRng, wrap_angle};
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

/// Over-relaxation of link theta_mu(x): theta -> 2 alpha - theta with alpha = -arg K, the
/// reflection about the staple direction, which keeps cos(theta - alpha) and so the action
/// (a zero staple is left alone).
pub fn overrelax_link(target: &U1, theta: &mut [f64], mu: usize, site: usize) {
    let (re, im) = target.staple(theta, mu, site);
    if re != 0.0 || im != 0.0 {
        let l = target.link_index(mu, site);
        theta[l] = wrap_angle(-2.0 * im.atan2(re) - theta[l]);
    }
}

/// Heat bath plus over-relaxation for U(1).
pub struct Heatbath {
    target: U1,
    config: HeatbathConfig,
}

impl Heatbath {
    /// Sampler for the U(1) `target`.
    pub fn new(target: U1, config: &HeatbathConfig) -> Result<Self> {
        Ok(Self {
            target,
            config: config.clone(),
        })
    }
}

impl Sampler for Heatbath {
    fn name(&self) -> &'static str {
        "heatbath"
    }

    fn step(&mut self, x: &mut [f64], rng: &mut ChainRng) -> StepStats {
        let target = &self.target;
        let (beta, v) = (target.beta(), target.lattice().volume());
        let mut brng = BlockRng::new(rng.next_u64());
        for mu in 0..2 {
            for site in 0..v {
                let (re, im) = target.staple(x, mu, site);
                let alpha = -im.atan2(re);
                let kappa = beta * re.hypot(im);
                x[target.link_index(mu, site)] = wrap_angle(alpha + von_mises(kappa, &mut brng));
            }
        }
        for _ in 0..self.config.overrelax {
            for mu in 0..2 {
                for site in 0..v {
                    overrelax_link(target, x, mu, site);
                }
            }
        }
        StepStats {
            acceptance: 1.0,
            action: target.action(x),
            action_evals: 1.0 + self.config.overrelax as f64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use boltzflow_targets::exact::bessel_i;
    use boltzflow_targets::u1::U1Spec;

    fn u1(shape: [i64; 2], beta: f64) -> U1 {
        U1::new(&U1Spec {
            shape: shape.to_vec(),
            beta,
        })
        .unwrap()
    }

    #[test]
    fn von_mises_has_the_exact_mean_cosine() {
        // <cos t> = I_1(kappa) / I_0(kappa), <cos 2t> = I_2 / I_0 and <sin t> = 0; iid draws,
        // error of the mean sqrt(var / n)
        let mut rng = BlockRng::new(17);
        let n = 200_000;
        for kappa in [0.0, 1e-9, 0.05, 1.0, 4.0, 60.0] {
            let draws: Vec<f64> = (0..n).map(|_| von_mises(kappa, &mut rng)).collect();
            assert!(draws.iter().all(|t| t.abs() <= std::f64::consts::PI));
            let i0 = bessel_i(0, kappa);
            for (f, exact) in [
                (
                    Box::new(|t: f64| t.cos()) as Box<dyn Fn(f64) -> f64>,
                    bessel_i(1, kappa) / i0,
                ),
                (Box::new(|t: f64| (2.0 * t).cos()), bessel_i(2, kappa) / i0),
                (Box::new(|t: f64| t.sin()), 0.0),
            ] {
                let values: Vec<f64> = draws.iter().map(|&t| f(t)).collect();
                let mean = values.iter().sum::<f64>() / n as f64;
                let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
                let err = (var / n as f64).sqrt();
                assert!(
                    (mean - exact).abs() < 4.0 * err,
                    "kappa {kappa}: {mean} ± {err} vs {exact}"
                );
            }
        }
    }

    #[test]
    fn overrelaxation_keeps_the_action() {
        let target = u1([6, 4], 2.5);
        let mut rng = crate::chain_rng(3, 0);
        let mut theta: Vec<f64> = (0..48)
            .map(|_| std::f64::consts::TAU * (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64)
            .collect();
        let s0 = target.action(&theta);
        let before = theta.clone();
        for mu in 0..2 {
            for site in 0..24 {
                overrelax_link(&target, &mut theta, mu, site);
            }
        }
        assert!((target.action(&theta) - s0).abs() < 1e-12 * s0.abs());
        assert!(theta.iter().zip(&before).any(|(a, b)| (a - b).abs() > 1e-3));
    }

    #[test]
    fn same_seed_same_chain() {
        let run = || {
            let mut hb = Heatbath::new(u1([4, 4], 1.0), &HeatbathConfig::default()).unwrap();
            let mut rng = crate::chain_rng(4, 2);
            let mut theta = vec![0.0; 32];
            for _ in 0..10 {
                hb.step(&mut theta, &mut rng);
            }
            theta
        };
        assert_eq!(run(), run());
    }
}
