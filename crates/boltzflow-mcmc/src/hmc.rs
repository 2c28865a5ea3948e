//! Hybrid Monte Carlo with a leapfrog integrator, for every target.
//!
//! One trajectory (Duane, Kennedy, Pendleton, Roweth 1987): draw momenta p ~ N(0, 1) per
//! degree of freedom, integrate H(x, p) = S(x) + p^2 / 2 with `n_steps` leapfrog steps of size
//! epsilon (p += epsilon/2 F, x += epsilon p, p += epsilon/2 F, with F = -dS/dx), and accept the
//! end point with probability min(1, exp(-dH)), dH = H_end - H_start in f64. Leapfrog is
//! reversible and volume preserving, so this leaves exp(-S) invariant.
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
}

impl Default for HmcConfig {
    fn default() -> Self {
        Self {
            step_size: 0.1,
            n_steps: 10,
            adapt: true,
            target_acceptance: 0.8,
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

    /// Integrates `n_steps` leapfrog steps of size `step_size()` from (x, p) in place and
    /// returns S at the end point. Costs `n_steps + 1` force evaluations; inside
    /// [`Sampler::step`] the first one is reused from the previous trajectory when the
    /// configuration has not changed in between, so a trajectory costs `n_steps`.
    pub fn leapfrog(&mut self, x: &mut [f64], p: &mut [f64]) -> f64 {
        let mut force = std::mem::take(&mut self.force);
        self.target.force(x, &mut force);
        let s = self.integrate(x, p, &mut force);
        self.force = force;
        self.cached_action = None;
        s
    }

    /// Leapfrog from (x, p) with `force` = F(x) on entry; leaves F(x_end) in `force`.
    fn integrate(&self, x: &mut [f64], p: &mut [f64], force: &mut [f64]) -> f64 {
        let eps = self.step_size;
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
        let mut evals = self.config.n_steps as f64;
        let s_start = match cached {
            Some(s) => s,
            None => {
                evals += 1.0;
                self.target.force(x, &mut force)
            }
        };
        self.x_start.copy_from_slice(x);
        self.force_start.copy_from_slice(&force);
        let h_start = s_start + kinetic(&momentum);
        let s_end = self.integrate(x, &mut momentum, &mut force);
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
