//! Molecular and particle systems in reduced units: S(x) = E(x) / T.
//!
//! Parameters, defaults and conventions are those of `shared/PHYSICS.md`:
//!
//! | theory          | shape            | energy                                              |
//! |-----------------|------------------|-----------------------------------------------------|
//! | `double_well`   | `[2]` (x, y)     | x^4 - 6 x^2 + x + y^2/2                             |
//! | `mueller_brown` | `[2]` (x, y)     | k sum_j A_j exp[a_j dx^2 + b_j dx dy + c_j dy^2]    |
//! | `dw4`           | `[n, 2]`         | sum_(i<j) a u + b u^2 + c u^4, u = d_ij - d0         |
//! | `lj`            | `[n, 3]`         | eps sum_(i<j) [(rm/r)^12 - 2 (rm/r)^6] + restraint   |
//! | `dimer`         | `[2 + n_s, 2]`   | bistable bond + restraint + walls + solvent repulsion|
//!
//! Pairs i < j are counted once everywhere. Configurations are flat row-major slices: particle
//! i has coordinates `x[i * dim .. (i + 1) * dim]`.
//!
//! Coincident particles never produce NaN: pair terms use r^2 clamped from below at
//! [`R2_FLOOR`] times the squared length scale, and the pair force of a clamped pair is zero
//! (the derivative of the clamped, constant energy).
//!
//! Exact values (`ln_z`, `<E>`, basin populations) of the 2D targets come from the
//! tensor-product Gauss-Legendre quadrature of [`crate::quadrature`].

mod dimer;
mod double_well;
mod dw4;
mod lj;
pub mod mueller_brown;

pub use dimer::{Dimer, DimerSpec};
pub use double_well::{DoubleWell, DoubleWellSpec};
pub use dw4::{Dw4, Dw4Spec};
pub use lj::{Lj, LjSpec};
pub use mueller_brown::{MuellerBrown, MuellerBrownSpec};

use crate::{FnObservable, Observable, Result, TargetError, VectorObservable};

/// Pair terms use r^2 >= `R2_FLOOR` * (length scale)^2, so coincident particles give a large
/// but finite energy and a zero pair force instead of NaN.
pub const R2_FLOOR: f64 = 1e-12;

/// Largest particle number a spec accepts (bounds the memory of a configuration).
pub const MAX_PARTICLES: i64 = 100_000;

/// Number of bins of the `pair_distance_hist` vector observable.
pub const HISTOGRAM_BINS: usize = 100;

fn one() -> f64 {
    1.0
}

/// The error for parameter `name` with value `value`.
fn invalid(name: &'static str, value: impl ToString, fix: &'static str) -> TargetError {
    TargetError::InvalidParameter {
        name,
        value: value.to_string(),
        fix,
    }
}

/// Checks that `value` is finite and > 0.
fn positive(name: &'static str, value: f64, fix: &'static str) -> Result<()> {
    if value.is_finite() && value > 0.0 {
        Ok(())
    } else {
        Err(invalid(name, value, fix))
    }
}

/// Checks that `value` is finite.
fn finite(name: &'static str, value: f64) -> Result<()> {
    if value.is_finite() {
        Ok(())
    } else {
        Err(invalid(name, value, "give a finite number"))
    }
}

/// Checks `min <= n <= MAX_PARTICLES` and converts to usize.
fn count(name: &'static str, n: i64, min: i64, fix: &'static str) -> Result<usize> {
    if (min..=MAX_PARTICLES).contains(&n) {
        Ok(n as usize)
    } else {
        Err(invalid(name, n, fix))
    }
}

/// A potential energy E(x) at temperature T, with its gradient; S = E/T.
trait Potential: Clone + Send + Sync + 'static {
    /// Temperature kT.
    fn temperature(&self) -> f64;
    /// E(x).
    fn energy(&self, x: &[f64]) -> f64;
    /// Writes dE/dx into `grad` and returns E(x).
    fn energy_gradient(&self, x: &[f64], grad: &mut [f64]) -> f64;
}

/// S = E/T.
fn action<P: Potential>(p: &P, x: &[f64]) -> f64 {
    p.energy(x) / p.temperature()
}

/// Writes -dS/dx = -(dE/dx)/T into `force` and returns S.
fn force<P: Potential>(p: &P, x: &[f64], force: &mut [f64]) -> f64 {
    let e = p.energy_gradient(x, force);
    let scale = -1.0 / p.temperature();
    force.iter_mut().for_each(|f| *f *= scale);
    e / p.temperature()
}

/// The observables every molecular target has: "energy" (E, not E/T) and "action" (E/T).
fn energy_observables<P: Potential>(p: &P) -> Vec<Box<dyn Observable>> {
    let (pe, pa) = (p.clone(), p.clone());
    vec![
        FnObservable::boxed("energy", move |x| pe.energy(x)),
        FnObservable::boxed("action", move |x| action(&pa, x)),
    ]
}

/// Mean distance over the n (n - 1) / 2 pairs of particles i < j; particles are consecutive
/// `dim`-vectors of `x`.
fn mean_pair_distance(x: &[f64], dim: usize) -> f64 {
    let n = x.len() / dim;
    let mut sum = 0.0;
    for i in 0..n {
        for j in i + 1..n {
            sum += distance(&x[i * dim..(i + 1) * dim], &x[j * dim..(j + 1) * dim]);
        }
    }
    sum / (n * (n - 1) / 2) as f64
}

/// |a - b|.
fn distance(a: &[f64], b: &[f64]) -> f64 {
    squared_distance(a, b).sqrt()
}

/// |a - b|^2.
fn squared_distance(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(p, q)| (p - q) * (p - q)).sum()
}

/// `pair_distance_hist`: the density of the pair distances of one configuration on
/// [`HISTOGRAM_BINS`] equal bins of [0, r_max]. Bin b counts the pairs i < j with
/// r_ij in [b h, (b + 1) h), h = r_max / bins, divided by n_pairs h, so that
/// sum_b value_b h is the fraction of pairs closer than r_max (1 when none is farther).
#[derive(Clone, Debug)]
pub struct PairDistanceHistogram {
    dim: usize,
    r_max: f64,
}

impl PairDistanceHistogram {
    /// Histogram of particles in `dim` dimensions on [0, r_max].
    pub fn new(dim: usize, r_max: f64) -> Self {
        Self { dim, r_max }
    }

    /// Bin centres (b + 1/2) h, b = 0 .. bins.
    pub fn bin_centres(&self) -> Vec<f64> {
        let h = self.r_max / HISTOGRAM_BINS as f64;
        (0..HISTOGRAM_BINS).map(|b| (b as f64 + 0.5) * h).collect()
    }
}

impl VectorObservable for PairDistanceHistogram {
    fn name(&self) -> &str {
        "pair_distance_hist"
    }

    fn len(&self) -> usize {
        HISTOGRAM_BINS
    }

    fn abscissa(&self) -> Option<Vec<f64>> {
        Some(self.bin_centres())
    }

    fn measure(&self, x: &[f64], out: &mut [f64]) {
        let dim = self.dim;
        let n = x.len() / dim;
        let h = self.r_max / HISTOGRAM_BINS as f64;
        let unit = 1.0 / ((n * (n - 1) / 2) as f64 * h);
        out.fill(0.0);
        for i in 0..n {
            for j in i + 1..n {
                let r = distance(&x[i * dim..(i + 1) * dim], &x[j * dim..(j + 1) * dim]);
                let b = (r / h).floor();
                if b >= 0.0 && b < HISTOGRAM_BINS as f64 {
                    out[b as usize] += unit;
                }
            }
        }
    }
}

/// Steepest descent with an adaptive step on the coordinates `x[frozen..]`: a step
/// x -> x - alpha dE/dx is taken when it lowers E (then alpha grows by 1.2), otherwise alpha
/// halves. Stops after `iterations` steps or when max |dE/dx| < `tolerance`. Used to relax
/// the starting configurations into a nearby local minimum.
fn relax<P: Potential>(p: &P, x: &mut [f64], frozen: usize, iterations: usize, tolerance: f64) {
    let mut grad = vec![0.0; x.len()];
    let mut trial = x.to_vec();
    let mut trial_grad = vec![0.0; x.len()];
    let mut e = p.energy_gradient(x, &mut grad);
    let mut alpha: f64 = 1e-3;
    for _ in 0..iterations {
        let g_max = grad[frozen..].iter().fold(0.0f64, |m, g| m.max(g.abs()));
        if g_max < tolerance || !e.is_finite() {
            break;
        }
        // never move a coordinate by more than 0.1 length units in one step
        let step = alpha.min(0.1 / g_max);
        for k in frozen..x.len() {
            trial[k] = x[k] - step * grad[k];
        }
        let e_trial = p.energy_gradient(&trial, &mut trial_grad);
        if e_trial < e {
            x.copy_from_slice(&trial);
            grad.copy_from_slice(&trial_grad);
            e = e_trial;
            alpha *= 1.2;
        } else {
            trial.copy_from_slice(x);
            alpha *= 0.5;
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::LatticeFile;

    /// (theory, shape, observable names, exact keys)
    type Case = (
        &'static str,
        &'static [usize],
        &'static [&'static str],
        &'static [&'static str],
    );

    /// Every molecular theory parses from a lattice file with its defaults and builds a target
    /// whose shape, start, observables and exact values are consistent.
    #[test]
    fn lattice_files_build_consistent_targets() {
        let cases: [Case; 5] = [
            (
                "double_well",
                &[2],
                &["energy", "action", "x", "p_a", "p_b"],
                &["ln_z", "energy", "x", "p_a", "p_b", "delta_f"],
            ),
            (
                "mueller_brown",
                &[2],
                &["energy", "action", "basin", "p_a", "p_b", "p_c"],
                &["ln_z", "energy", "p_a", "p_b", "p_c"],
            ),
            ("dw4", &[4, 2], &["energy", "action", "mean_distance"], &[]),
            ("lj", &[13, 3], &["energy", "action", "mean_distance"], &[]),
            (
                "dimer",
                &[38, 2],
                &["energy", "action", "dimer_distance", "p_closed", "p_open"],
                &[],
            ),
        ];
        for (theory, shape, observables, exact) in cases {
            let file = LatticeFile::parse(&format!("theory = \"{theory}\"")).unwrap();
            let target = file.target.build().unwrap();
            assert_eq!(target.theory(), theory);
            assert_eq!(target.shape(), shape);
            let x = target.initial();
            assert_eq!(x.len(), target.dim());
            let mut force = vec![0.0; x.len()];
            let s = target.force(&x, &mut force);
            assert!(
                s.is_finite() && force.iter().all(|f| f.is_finite()),
                "{theory}"
            );
            let names: Vec<String> = target
                .observables()
                .iter()
                .map(|o| o.name().to_string())
                .collect();
            assert_eq!(names, observables, "{theory}");
            let values = target.exact();
            assert!(
                exact.iter().all(|k| values.contains_key(*k)),
                "{theory}: {values:?}"
            );
            for v in target.vector_observables() {
                assert_eq!(v.name(), "pair_distance_hist");
                let mut out = vec![0.0; v.len()];
                v.measure(&x, &mut out);
                assert!(out.iter().all(|h| h.is_finite() && *h >= 0.0));
            }
            // round trip through the stored TOML
            let again = LatticeFile::parse(&file.to_toml()).unwrap();
            assert_eq!(again.target, file.target);
        }
    }

    #[test]
    fn bad_lattice_files_name_the_key() {
        for (text, key) in [
            ("theory = \"lj\"\nn_particles = 1", "n_particles"),
            ("theory = \"dimer\"\nn_solvent = -3", "n_solvent"),
            ("theory = \"mueller_brown\"\nk = -0.1", "`k`"),
            ("theory = \"double_well\"\ntemperature = 0.0", "temperature"),
            ("theory = \"dw4\"\nc = -1.0", "`c`"),
        ] {
            let err = LatticeFile::parse(text).err().unwrap().to_string();
            assert!(err.contains(key) && !err.contains('\n'), "{err}");
        }
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! Shared test tools: finite-difference forces, a random-walk Metropolis chain and
    //! binned errors.

    use rand::{RngExt, SeedableRng};
    use rand_xoshiro::Xoshiro256PlusPlus;

    use crate::Target;

    /// Largest violation |F_fd - F| - tol (1 + |F|) - roundoff over all components, where
    /// F_fd is the Richardson-extrapolated central difference (4 D(h) - D(2h)) / 3 (error
    /// O(h^4)) and roundoff = 100 eps_mach |S| / h bounds the rounding error of the
    /// differences of S (sums of many terms).
    pub fn force_violation(target: &dyn Target, x: &[f64], h: f64, tol: f64) -> f64 {
        let mut force = vec![0.0; x.len()];
        let s = target.force(x, &mut force);
        let roundoff = 100.0 * f64::EPSILON * s.abs() / h;
        assert!((s - target.action(x)).abs() <= 1e-12 * s.abs().max(1.0));
        let mut y = x.to_vec();
        let mut worst = f64::NEG_INFINITY;
        for k in 0..x.len() {
            let mut diff = |step: f64| {
                y[k] = x[k] + step;
                let plus = target.action(&y);
                y[k] = x[k] - step;
                let minus = target.action(&y);
                y[k] = x[k];
                -(plus - minus) / (2.0 * step)
            };
            let fd = (4.0 * diff(h) - diff(2.0 * h)) / 3.0;
            let excess = (fd - force[k]).abs() - tol * (1.0 + force[k].abs()) - roundoff;
            if excess > 0.0 {
                eprintln!("component {k}: finite difference {fd}, force {}", force[k]);
            }
            worst = worst.max(excess);
        }
        worst
    }

    /// Means and binned errors of scalar observables along a random-walk Metropolis chain
    /// (uniform proposals in [-step, step]^dim) of `n_steps` steps after `n_steps / 10`
    /// thermalisation steps, measured every step and binned into `blocks` blocks.
    pub fn metropolis_means(
        target: &dyn Target,
        x0: &[f64],
        step: f64,
        n_steps: usize,
        blocks: usize,
        seed: u64,
    ) -> Vec<(String, f64, f64)> {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        let observables = target.observables();
        let mut x = x0.to_vec();
        let mut trial = x.clone();
        let mut s = target.action(&x);
        let block_len = n_steps / blocks;
        let mut block_means = vec![vec![0.0; blocks]; observables.len()];
        for t in 0..n_steps / 10 + block_len * blocks {
            for (xt, xo) in trial.iter_mut().zip(&x) {
                *xt = xo + step * (2.0 * rng.random::<f64>() - 1.0);
            }
            let s_trial = target.action(&trial);
            if rng.random::<f64>() < (s - s_trial).exp() {
                x.copy_from_slice(&trial);
                s = s_trial;
            } else {
                trial.copy_from_slice(&x);
            }
            if let Some(m) = t.checked_sub(n_steps / 10) {
                for (o, means) in observables.iter().zip(&mut block_means) {
                    means[m / block_len] += o.measure(&x) / block_len as f64;
                }
            }
        }
        observables
            .iter()
            .zip(block_means)
            .map(|(o, means)| {
                let nb = means.len() as f64;
                let mean = means.iter().sum::<f64>() / nb;
                let var = means.iter().map(|m| (m - mean).powi(2)).sum::<f64>() / (nb - 1.0);
                (o.name().to_string(), mean, (var / nb).sqrt())
            })
            .collect()
    }

    /// A deterministic generator for configuration noise in tests.
    pub fn rng(seed: u64) -> Xoshiro256PlusPlus {
        Xoshiro256PlusPlus::seed_from_u64(seed)
    }
}
