//! Hybrid Monte Carlo with a leapfrog integrator, for every target.
//!
//! One trajectory (Duane, Kennedy, Pendleton, Roweth 1987): draw momenta p ~ N(0, 1) per
//! degree of freedom, integrate H(x, p) = S(x) + p^2 / 2 with `n_steps` leapfrog steps of size
//! epsilon (p += epsilon/2 F, x += epsilon p, p += epsilon/2 F, with F = -dS/dx), and accept the
//! end point with probability min(1, exp(-dH)), dH = H_end - H_start in f64. Leapfrog is
//! reversible and volume preserving, so this leaves exp(-S) invariant. Each trajectory uses
//! epsilon (1 + jitter u), u ~ U(-1, 1), drawn independently of the state (Mackenzie 1989), so
//! no mode of a (nearly) Gaussian target stays frozen by a resonant trajectory length.
//!
//! During thermalisation [`Sampler::adapt`] moves log epsilon by a Robbins-Monro step
//! gamma_t (a_t - a*) with a_t = min(1, exp(-dH)) of the last trajectory, a* the target
//! acceptance and gamma_t = 0.5 / (1 + t / 10)^0.6 decreasing, so epsilon settles.

use std::sync::Arc;

use rand::RngExt;
use rand_distr::StandardNormal;
use serde::{Deserialize, Serialize};

use boltzflow_targets::Target;

use crate::{ChainRng, McmcError, Result, Sampler, StepStats};

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
    /// Relative jitter of the step size: each trajectory uses
    /// epsilon (1 + jitter u), u ~ U(-1, 1), which breaks the resonances that freeze modes
    /// of (nearly) Gaussian targets at a fixed trajectory length (default 0.1; 0 disables).
    pub jitter: f64,
}

impl Default for HmcConfig {
    fn default() -> Self {
        Self {
            step_size: 0.1,
            n_steps: 10,
            adapt: true,
            target_acceptance: 0.8,
            jitter: 0.1,
        }
    }
}

impl HmcConfig {
    /// Checks `step_size > 0` (finite), `n_steps >= 1` and `0 < target_acceptance < 1`.
    pub fn validate(&self) -> Result<()> {
        if !(self.step_size > 0.0 && self.step_size.is_finite()) {
            return Err(McmcError::InvalidParameter {
                name: "hmc.step_size",
                value: self.step_size.to_string(),
                fix: "the leapfrog step size must be a positive finite number, e.g. 0.1",
            });
        }
        if self.n_steps == 0 {
            return Err(McmcError::InvalidParameter {
                name: "hmc.n_steps",
                value: "0".into(),
                fix: "a trajectory needs at least 1 leapfrog step",
            });
        }
        if !(self.target_acceptance > 0.0 && self.target_acceptance < 1.0) {
            return Err(McmcError::InvalidParameter {
                name: "hmc.target_acceptance",
                value: self.target_acceptance.to_string(),
                fix: "the target acceptance must lie strictly between 0 and 1, e.g. 0.8",
            });
        }
        if !(0.0..1.0).contains(&self.jitter) {
            return Err(McmcError::InvalidParameter {
                name: "hmc.jitter",
                value: self.jitter.to_string(),
                fix: "the relative step-size jitter must lie in [0, 1), e.g. 0.1",
            });
        }
        Ok(())
    }
}

/// The adaptable state written into checkpoints.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct HmcState {
    step_size: f64,
    adapt_steps: u64,
}

/// HMC sampler; buffers for the trajectory live in the struct (no allocation per step).
pub struct Hmc {
    target: Arc<dyn Target>,
    config: HmcConfig,
    /// Current leapfrog step size (adapted during thermalisation).
    step_size: f64,
    /// Adaptation steps taken so far (t of the Robbins-Monro gain).
    adapt_steps: u64,
    /// min(1, exp(-dH)) of the last trajectory.
    last_accept_prob: f64,
    /// Start of the trajectory and its force, restored on rejection.
    x_start: Vec<f64>,
    force_start: Vec<f64>,
    momentum: Vec<f64>,
    /// F(x) of the current configuration.
    force: Vec<f64>,
    /// The configuration left by the last step and its action: `force` holds F(cached_x).
    cached_x: Vec<f64>,
    cached_action: Option<f64>,
}

impl Hmc {
    /// HMC on `target` with the given parameters.
    pub fn new(target: Arc<dyn Target>, config: &HmcConfig) -> Result<Self> {
        config.validate()?;
        let dim = target.dim();
        Ok(Self {
            target,
            step_size: config.step_size,
            config: config.clone(),
            adapt_steps: 0,
            last_accept_prob: 0.0,
            x_start: vec![0.0; dim],
            force_start: vec![0.0; dim],
            momentum: vec![0.0; dim],
            force: vec![0.0; dim],
            cached_x: vec![0.0; dim],
            cached_action: None,
        })
    }

    /// The current leapfrog step size.
    pub fn step_size(&self) -> f64 {
        self.step_size
    }

    /// Integrates `n_steps` leapfrog steps of size `step_size()` (no jitter) from (x, p) in place and
    /// returns S at the end point. Costs `n_steps + 1` force evaluations; inside
    /// [`Sampler::step`] the first one is reused from the previous trajectory when the
    /// configuration has not changed in between, so a trajectory costs `n_steps`.
    pub fn leapfrog(&mut self, x: &mut [f64], p: &mut [f64]) -> f64 {
        let mut force = std::mem::take(&mut self.force);
        self.target.force(x, &mut force);
        let s = self.integrate(x, p, &mut force, self.step_size);
        self.force = force;
        self.cached_action = None;
        s
    }

    /// Leapfrog with step `eps` from (x, p) with `force` = F(x) on entry; leaves F(x_end) in
    /// `force`.
    fn integrate(&self, x: &mut [f64], p: &mut [f64], force: &mut [f64], eps: f64) -> f64 {
        let half = 0.5 * eps;
        let mut s = 0.0;
        for _ in 0..self.config.n_steps {
            for (pi, fi) in p.iter_mut().zip(force.iter()) {
                *pi += half * fi;
            }
            for (xi, pi) in x.iter_mut().zip(p.iter()) {
                *xi += eps * pi;
            }
            s = self.target.force(x, force);
            for (pi, fi) in p.iter_mut().zip(force.iter()) {
                *pi += half * fi;
            }
        }
        s
    }
}

fn kinetic(p: &[f64]) -> f64 {
    0.5 * p.iter().map(|v| v * v).sum::<f64>()
}

impl Sampler for Hmc {
    fn name(&self) -> &'static str {
        "hmc"
    }

    fn step(&mut self, x: &mut [f64], rng: &mut ChainRng) -> StepStats {
        let mut momentum = std::mem::take(&mut self.momentum);
        let mut force = std::mem::take(&mut self.force);
        for p in momentum.iter_mut() {
            *p = rng.sample(StandardNormal);
        }
        // F(x) and S(x) are known from the previous trajectory if x has not changed since
        let cached = self
            .cached_action
            .filter(|_| self.cached_x.as_slice() == &*x);
        // The cost is n_steps force evaluations per trajectory in the steady state; the one-off
        // evaluation after a start or resume is not counted, so a resumed chain reports the
        // same series as an uninterrupted one.
        let evals = self.config.n_steps as f64;
        let s_start = match cached {
            Some(s) => s,
            None => self.target.force(x, &mut force),
        };
        self.x_start.copy_from_slice(x);
        self.force_start.copy_from_slice(&force);
        let h_start = s_start + kinetic(&momentum);
        let eps = self.step_size * (1.0 + self.config.jitter * (2.0 * rng.random::<f64>() - 1.0));
        let s_end = self.integrate(x, &mut momentum, &mut force, eps);
        let dh = s_end + kinetic(&momentum) - h_start;
        // NaN (integrator blew up) is rejected
        let accept = dh <= 0.0 || rng.random::<f64>() < (-dh).exp();
        self.last_accept_prob = if dh.is_nan() {
            0.0
        } else {
            (-dh).exp().min(1.0)
        };
        let action = if accept {
            self.cached_x.copy_from_slice(x);
            self.target.canonicalize(x);
            // the cached force is valid only for the very same bits
            self.cached_action = (self.cached_x.as_slice() == &*x).then_some(s_end);
            s_end
        } else {
            x.copy_from_slice(&self.x_start);
            force.copy_from_slice(&self.force_start);
            self.cached_x.copy_from_slice(x);
            self.cached_action = Some(s_start);
            s_start
        };
        self.momentum = momentum;
        self.force = force;
        StepStats {
            acceptance: if accept { 1.0 } else { 0.0 },
            action,
            action_evals: evals,
        }
    }

    fn adapt(&mut self, _stats: &StepStats) {
        if !self.config.adapt {
            return;
        }
        let gain = 0.5 / (1.0 + self.adapt_steps as f64 / 10.0).powf(0.6);
        let log_eps =
            self.step_size.ln() + gain * (self.last_accept_prob - self.config.target_acceptance);
        self.step_size = log_eps.exp().clamp(1e-8, 1e3);
        self.adapt_steps += 1;
    }

    fn state(&self) -> serde_json::Value {
        serde_json::to_value(HmcState {
            step_size: self.step_size,
            adapt_steps: self.adapt_steps,
        })
        .unwrap_or(serde_json::Value::Null)
    }

    fn set_state(&mut self, state: &serde_json::Value) -> Result<()> {
        let s: HmcState = serde_json::from_value(state.clone())
            .map_err(|e| McmcError::State(format!("HMC state {state}: {e}")))?;
        if !(s.step_size > 0.0 && s.step_size.is_finite()) {
            return Err(McmcError::State(format!(
                "HMC step_size {} is not a positive finite number",
                s.step_size
            )));
        }
        self.step_size = s.step_size;
        self.adapt_steps = s.adapt_steps;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use boltzflow_targets::{LatticeFile, TargetSpec};

    fn target(toml: &str) -> Arc<dyn Target> {
        let spec: TargetSpec = LatticeFile::parse(toml).unwrap().target;
        Arc::from(spec.build().unwrap())
    }

    fn gaussian_vector(n: usize, rng: &mut ChainRng) -> Vec<f64> {
        (0..n).map(|_| rng.sample(StandardNormal)).collect()
    }

    #[test]
    fn leapfrog_is_reversible() {
        for toml in [
            "theory = \"phi4\"\nshape = [4, 4]\nm2 = -4.0\nlam = 8.0\n",
            "theory = \"u1\"\nshape = [4, 4]\nbeta = 2.0\n",
        ] {
            let target = target(toml);
            let config = HmcConfig {
                step_size: 0.05,
                n_steps: 20,
                ..HmcConfig::default()
            };
            let mut hmc = Hmc::new(target.clone(), &config).unwrap();
            let mut rng = crate::chain_rng(5, 0);
            let x0: Vec<f64> = gaussian_vector(target.dim(), &mut rng)
                .iter()
                .map(|v| 0.5 * v)
                .collect();
            let p0 = gaussian_vector(target.dim(), &mut rng);
            let (mut x, mut p) = (x0.clone(), p0.clone());
            hmc.leapfrog(&mut x, &mut p);
            assert!(
                x.iter().zip(&x0).any(|(a, b)| (a - b).abs() > 1e-3),
                "{toml}: no motion"
            );
            p.iter_mut().for_each(|v| *v = -*v);
            hmc.leapfrog(&mut x, &mut p);
            for (a, b) in x.iter().zip(&x0) {
                assert!((a - b).abs() < 1e-12, "{toml}: x {a} vs {b}");
            }
            for (a, b) in p.iter().zip(&p0) {
                assert!((a + b).abs() < 1e-12, "{toml}: p {a} vs {b}");
            }
        }
    }

    #[test]
    fn energy_error_shrinks_as_epsilon_squared() {
        // leapfrog is second order: dH(eps) / dH(eps/2) ~ 4 for a fixed trajectory length
        let target = target("theory = \"phi4\"\nshape = [4, 4]\nm2 = -4.0\nlam = 8.0\n");
        let mut rng = crate::chain_rng(6, 0);
        let x0: Vec<f64> = gaussian_vector(16, &mut rng)
            .iter()
            .map(|v| 0.3 * v)
            .collect();
        let p0 = gaussian_vector(16, &mut rng);
        let dh = |eps: f64, n: usize| {
            let config = HmcConfig {
                step_size: eps,
                n_steps: n,
                ..HmcConfig::default()
            };
            let mut hmc = Hmc::new(target.clone(), &config).unwrap();
            let (mut x, mut p) = (x0.clone(), p0.clone());
            let h0 = target.action(&x0) + kinetic(&p0);
            let s = hmc.leapfrog(&mut x, &mut p);
            (s + kinetic(&p) - h0).abs()
        };
        let ratio = dh(0.01, 40) / dh(0.005, 80);
        assert!((3.0..5.0).contains(&ratio), "ratio {ratio}");
    }

    #[test]
    fn state_round_trips_and_continues_the_same_chain() {
        let target = target("theory = \"phi4\"\nshape = [4, 4]\nm2 = -4.0\nlam = 8.0\n");
        let mut hmc = Hmc::new(target.clone(), &HmcConfig::default()).unwrap();
        let mut rng = crate::chain_rng(8, 0);
        let mut x = target.initial();
        for _ in 0..50 {
            let stats = hmc.step(&mut x, &mut rng);
            hmc.adapt(&stats);
        }
        assert_ne!(hmc.step_size(), HmcConfig::default().step_size);
        let state = hmc.state();
        let mut restored = Hmc::new(target.clone(), &HmcConfig::default()).unwrap();
        restored.set_state(&state).unwrap();
        assert_eq!(restored.state(), state);
        // both continue bitwise identically (the restored one has no cached force)
        let (mut x2, mut rng2) = (x.clone(), rng.clone());
        for _ in 0..20 {
            let a = hmc.step(&mut x, &mut rng);
            let b = restored.step(&mut x2, &mut rng2);
            assert_eq!(a.action.to_bits(), b.action.to_bits());
        }
        assert_eq!(x, x2);
        let bad = serde_json::json!({"step_size": -1.0, "adapt_steps": 0});
        assert!(restored.set_state(&bad).is_err());
        assert!(
            restored
                .set_state(&serde_json::json!({"eps": 0.1}))
                .is_err()
        );
    }

    #[test]
    fn adaptation_reaches_the_target_acceptance() {
        let target = target("theory = \"phi4\"\nshape = [8, 8]\nm2 = -4.0\nlam = 8.0\n");
        let config = HmcConfig {
            step_size: 1.0,
            ..HmcConfig::default()
        };
        let mut hmc = Hmc::new(target.clone(), &config).unwrap();
        let mut rng = crate::chain_rng(9, 0);
        let mut x = target.initial();
        for _ in 0..1000 {
            let stats = hmc.step(&mut x, &mut rng);
            hmc.adapt(&stats);
        }
        let n = 2000;
        let acceptance: f64 = (0..n)
            .map(|_| hmc.step(&mut x, &mut rng).acceptance)
            .sum::<f64>()
            / n as f64;
        // binomial error of the mean at most sqrt(0.25 / n) ~ 0.011 (plus autocorrelation)
        assert!((acceptance - 0.8).abs() < 0.1, "acceptance {acceptance}");
    }

    #[test]
    fn rejects_bad_parameters() {
        for (config, key) in [
            (
                HmcConfig {
                    step_size: 0.0,
                    ..HmcConfig::default()
                },
                "hmc.step_size",
            ),
            (
                HmcConfig {
                    n_steps: 0,
                    ..HmcConfig::default()
                },
                "hmc.n_steps",
            ),
            (
                HmcConfig {
                    target_acceptance: 1.0,
                    ..HmcConfig::default()
                },
                "hmc.target_acceptance",
            ),
            (
                HmcConfig {
                    jitter: -0.1,
                    ..HmcConfig::default()
                },
                "hmc.jitter",
            ),
        ] {
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains(key), "{err}");
        }
    }
}
