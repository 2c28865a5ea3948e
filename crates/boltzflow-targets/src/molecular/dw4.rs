//! DW4 (Köhler, Klein & Noé 2020): n particles in 2D (n = 4 by default) with the double-well
//! pair potential
//!
//!   E(x) = sum_(i<j) [a u_ij + b u_ij^2 + c u_ij^4],  u_ij = |x_i - x_j| - d0,
//!
//! a = 0, b = -4, c = 0.9, d0 = 4 by default; S = E/T. With a = 0 the pair minima lie at
//! u = ±sqrt(-b / (2c)) with pair energy -b^2 / (4c). E depends only on distances, so it is
//! invariant under permutations, rotations and translations of the particles.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{
    PairDistanceHistogram, Potential, R2_FLOOR, count, energy_observables, finite,
    mean_pair_distance, one, positive, relax,
};
use crate::quadrature::CompositeRule;
use crate::spec::validate_temperature;
use crate::{FnObservable, Observable, Result, Target, VectorObservable};

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

    /// Checks the parameters.
    pub fn validate(&self) -> Result<()> {
        validate_temperature(self.temperature)?;
        count(
            "n_particles",
            self.n_particles,
            2,
            "DW4 needs an integer number of particles between 2 and 100000 (default 4)",
        )?;
        finite("a", self.a)?;
        finite("b", self.b)?;
        positive(
            "c",
            self.c,
            "the quartic coefficient c must be positive so that the pair energy is bounded below (default 0.9)",
        )?;
        positive(
            "d0",
            self.d0,
            "the reference distance d0 must be a positive length (default 4)",
        )
    }
}

/// The DW4 system.
///
/// # Shapes
/// A configuration is `[n_particles, 2]`, row-major: particle i is `x[2i..2i+2]`.
#[derive(Clone, Debug)]
pub struct Dw4 {
    temperature: f64,
    n: usize,
    a: f64,
    b: f64,
    c: f64,
    d0: f64,
}

impl Dw4 {
    /// Builds the target from a spec (validated here).
    pub fn new(spec: &Dw4Spec) -> Result<Self> {
        spec.validate()?;
        Ok(Self {
            temperature: spec.temperature,
            n: spec.n_particles as usize,
            a: spec.a,
            b: spec.b,
            c: spec.c,
            d0: spec.d0,
        })
    }

    /// Pair energy phi(d) = a u + b u^2 + c u^4, u = d - d0.
    pub fn pair_energy(&self, d: f64) -> f64 {
        let u = d - self.d0;
        let u2 = u * u;
        self.a * u + self.b * u2 + self.c * u2 * u2
    }

    /// Exact values of two particles (empty for more): ln Z, `energy`, `action` and
    /// `mean_distance` by quadrature over the pair distance r. On the centre-of-mass-free
    /// plane of the Helmert coordinate y = (x_1 - x_2) / sqrt(2) (r = sqrt(2) |y|, the
    /// measure of a flow with `centre_of_mass = "remove"`),
    ///
    ///   Z = int d^2y exp(-phi(r) / T) = pi int_0^inf r exp(-phi(r) / T) dr,
    ///
    /// integrated with an `order`-point composite Gauss-Legendre rule on panels of width
    /// `panel` over [0, r_max], r_max where phi exceeds its minimum by 200 T (and rises).
    pub fn exact_pair(&self, order: usize, panel: f64) -> BTreeMap<String, f64> {
        if self.n != 2 {
            return BTreeMap::new();
        }
        let t = self.temperature;
        let minimum = |hi: f64| {
            (0..=8000)
                .map(|k| self.pair_energy(hi * k as f64 / 8000.0))
                .fold(f64::INFINITY, f64::min)
        };
        let mut hi = self.d0 + 1.0;
        let mut e_min = minimum(hi);
        while self.pair_energy(hi) - e_min < 200.0 * t || self.pair_derivative(hi) <= 0.0 {
            hi += 0.5;
            e_min = minimum(hi);
        }
        let rule = CompositeRule::new(order, panel, panel);
        let [z, e, r] = rule.integrate_1d((0.0, hi), &[], |r| {
            let phi = self.pair_energy(r);
            let w = r * (-(phi - e_min) / t).exp();
            [w, w * phi, w * r]
        });
        BTreeMap::from([
            (
                "ln_z".to_string(),
                (std::f64::consts::PI * z).ln() - e_min / t,
            ),
            ("energy".to_string(), e / z),
            ("action".to_string(), e / z / t),
            ("mean_distance".to_string(), r / z),
        ])
    }

    /// phi'(d) = a + 2 b u + 4 c u^3.
    fn pair_derivative(&self, d: f64) -> f64 {
        let u = d - self.d0;
        self.a + 2.0 * self.b * u + 4.0 * self.c * u * u * u
    }

    /// E(x) = sum_(i<j) phi(|x_i - x_j|); r^2 is clamped at R2_FLOOR d0^2.
    pub fn energy(&self, x: &[f64]) -> f64 {
        let floor = R2_FLOOR * self.d0 * self.d0;
        let mut e = 0.0;
        for i in 0..self.n {
            for j in i + 1..self.n {
                let (dx, dy) = (x[2 * i] - x[2 * j], x[2 * i + 1] - x[2 * j + 1]);
                e += self.pair_energy((dx * dx + dy * dy).max(floor).sqrt());
            }
        }
        e
    }
}

impl Potential for Dw4 {
    fn temperature(&self) -> f64 {
        self.temperature
    }

    fn energy(&self, x: &[f64]) -> f64 {
        Dw4::energy(self, x)
    }

    /// dE/dx_i = sum_(j != i) phi'(d_ij) (x_i - x_j) / d_ij (zero for a clamped pair).
    fn energy_gradient(&self, x: &[f64], grad: &mut [f64]) -> f64 {
        let floor = R2_FLOOR * self.d0 * self.d0;
        grad[..2 * self.n].fill(0.0);
        let mut e = 0.0;
        for i in 0..self.n {
            for j in i + 1..self.n {
                let (dx, dy) = (x[2 * i] - x[2 * j], x[2 * i + 1] - x[2 * j + 1]);
                let r2 = dx * dx + dy * dy;
                let d = r2.max(floor).sqrt();
                e += self.pair_energy(d);
                if r2 > floor {
                    let g = self.pair_derivative(d) / d;
                    grad[2 * i] += g * dx;
                    grad[2 * i + 1] += g * dy;
                    grad[2 * j] -= g * dx;
                    grad[2 * j + 1] -= g * dy;
                }
            }
        }
        e
    }
}

impl Target for Dw4 {
    fn theory(&self) -> &'static str {
        "dw4"
    }

    fn shape(&self) -> Vec<usize> {
        vec![self.n, 2]
    }

    fn action(&self, x: &[f64]) -> f64 {
        super::action(self, x)
    }

    fn force(&self, x: &[f64], force: &mut [f64]) -> f64 {
        super::force(self, x, force)
    }

    /// Particles on a square grid of ceil(sqrt(n)) columns centred at the origin (a square for
    /// n = 4), with the spacing that minimises E among 400 spacings in [0.25 d0, 2 d0], then
    /// relaxed by steepest descent.
    fn initial(&self) -> Vec<f64> {
        let columns = (self.n as f64).sqrt().ceil() as usize;
        let grid = |s: f64| {
            let mut x = Vec::with_capacity(2 * self.n);
            for i in 0..self.n {
                x.push(s * (i % columns) as f64);
                x.push(s * (i / columns) as f64);
            }
            let centre = [0, 1].map(|c| x.iter().skip(c).step_by(2).sum::<f64>() / self.n as f64);
            x.iter_mut()
                .enumerate()
                .for_each(|(k, v)| *v -= centre[k % 2]);
            x
        };
        let spacing = (0..400)
            .map(|i| self.d0 * (0.25 + 1.75 * i as f64 / 399.0))
            .min_by(|&s, &t| self.energy(&grid(s)).total_cmp(&self.energy(&grid(t))))
            .unwrap_or(self.d0);
        let mut x = grid(spacing);
        if self.n <= 1000 {
            relax(self, &mut x, 0, 2000, 1e-8);
        }
        x
    }

    /// `energy`, `action`, `mean_distance` (mean over the n(n-1)/2 pair distances).
    fn observables(&self) -> Vec<Box<dyn Observable>> {
        let mut obs = energy_observables(self);
        obs.push(FnObservable::boxed("mean_distance", |x| {
            mean_pair_distance(x, 2)
        }));
        obs
    }

    /// [`Dw4::exact_pair`] for two particles; none for more.
    fn exact(&self) -> BTreeMap<String, f64> {
        self.exact_pair(12, 0.05)
    }

    /// `pair_distance_hist` on 100 bins of [0, 2 d0] (= [0, 8] at the default d0 = 4).
    fn vector_observables(&self) -> Vec<Box<dyn VectorObservable>> {
        vec![Box::new(PairDistanceHistogram::new(2, 2.0 * self.d0))]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::molecular::testing::{force_violation, rng};
    use proptest::prelude::*;
    use proptest::test_runner::{Config, RngSeed};
    use rand::RngExt;

    fn spec() -> Dw4Spec {
        Dw4Spec {
            temperature: 1.0,
            n_particles: 4,
            a: 0.0,
            b: -4.0,
            c: 0.9,
            d0: 4.0,
        }
    }

    fn target() -> Dw4 {
        Dw4::new(&spec()).unwrap()
    }

    proptest! {
        #![proptest_config(Config { cases: 128, rng_seed: RngSeed::Fixed(13), ..Config::default() })]
        #[test]
        fn force_matches_finite_differences(noise in prop::collection::vec(-1.0f64..1.0, 8), a in -1.0f64..1.0) {
            let dw4 = Dw4::new(&Dw4Spec { a, temperature: 0.7, ..spec() }).unwrap();
            let x: Vec<f64> = dw4.initial().iter().zip(&noise).map(|(x, e)| x + e).collect();
            prop_assert!(force_violation(&dw4, &x, 1e-4, 1e-8) <= 0.0);
        }
    }

    #[test]
    fn pair_minima_have_the_known_energy_and_zero_force() {
        let dw4 = Dw4::new(&Dw4Spec {
            n_particles: 2,
            ..spec()
        })
        .unwrap();
        // phi has minima at u = ±sqrt(-b/(2c)) = ±sqrt(20/9) with phi = -b^2/(4c) = -40/9
        let mut f = [0.0; 4];
        for u in [-(20f64 / 9.0).sqrt(), (20f64 / 9.0).sqrt()] {
            let x = [0.3, -0.2, 0.3 + (4.0 + u) * 0.6, -0.2 + (4.0 + u) * 0.8];
            assert!((dw4.energy(&x) + 40.0 / 9.0).abs() < 1e-12);
            dw4.force(&x, &mut f);
            assert!(f.iter().all(|g| g.abs() < 1e-12), "{f:?}");
        }
    }

    /// The two-particle quadrature over r equals a tensor-product quadrature over the
    /// centre-of-mass-free plane y (x_1 = y / sqrt(2), x_2 = -y / sqrt(2)), is converged in
    /// the rule, and is empty for four particles.
    #[test]
    fn two_particle_exact_values_match_the_plane_integral() {
        let pair = Dw4::new(&Dw4Spec {
            n_particles: 2,
            temperature: 1.3,
            a: 0.4,
            ..spec()
        })
        .unwrap();
        let exact = pair.exact();
        let finer = pair.exact_pair(16, 0.02);
        for (k, v) in &exact {
            assert!(
                (v - finer[k]).abs() < 1e-11 * (1.0 + v.abs()),
                "{k}: {v} vs {}",
                finer[k]
            );
        }
        let rule = CompositeRule::new(12, 0.1, 0.1);
        let s = std::f64::consts::FRAC_1_SQRT_2;
        let [z, e] = rule.integrate_2d(
            (-6.0, 6.0),
            (-6.0, 6.0),
            &[],
            |_, _| {},
            |y0, y1| {
                let x = [s * y0, s * y1, -s * y0, -s * y1];
                let energy = pair.energy(&x);
                let w = (-energy / 1.3).exp();
                [w, w * energy]
            },
        );
        assert!(
            (z.ln() - exact["ln_z"]).abs() < 1e-9,
            "{} vs {}",
            z.ln(),
            exact["ln_z"]
        );
        assert!((e / z - exact["energy"]).abs() < 1e-9);
        assert!(target().exact().is_empty());
    }

    #[test]
    fn energy_is_invariant_under_permutation_rotation_translation() {
        let dw4 = target();
        let mut rng = rng(5);
        for _ in 0..50 {
            let x: Vec<f64> = (0..8).map(|_| 6.0 * rng.random::<f64>() - 3.0).collect();
            let theta = std::f64::consts::TAU * rng.random::<f64>();
            let shift = [
                rng.random::<f64>() * 10.0 - 5.0,
                rng.random::<f64>() * 10.0 - 5.0,
            ];
            let perm = [2, 0, 3, 1];
            let mut y = vec![0.0; 8];
            for (i, &p) in perm.iter().enumerate() {
                let (px, py) = (x[2 * p], x[2 * p + 1]);
                y[2 * i] = theta.cos() * px - theta.sin() * py + shift[0];
                y[2 * i + 1] = theta.sin() * px + theta.cos() * py + shift[1];
            }
            let (e, e_moved) = (dw4.energy(&x), dw4.energy(&y));
            assert!(
                (e - e_moved).abs() < 1e-11 * (1.0 + e.abs()),
                "{e} vs {e_moved}"
            );
        }
    }

    #[test]
    fn initial_is_a_relaxed_square() {
        let dw4 = target();
        let x = dw4.initial();
        let mut f = vec![0.0; 8];
        dw4.force(&x, &mut f);
        assert!(f.iter().all(|g| g.abs() < 1e-6), "not relaxed: {f:?}");
        // grid order: corners 0, 1, 3, 2 around the square
        let corner = |i: usize| &x[2 * i..2 * i + 2];
        let d: Vec<f64> = [(0, 1), (1, 3), (3, 2), (2, 0)]
            .map(|(i, j)| super::super::distance(corner(i), corner(j)))
            .to_vec();
        let diagonal = super::super::distance(corner(0), corner(3));
        assert!((diagonal - 2f64.sqrt() * d[0]).abs() < 1e-6, "{diagonal}");
        assert!(
            d.iter().all(|s| (s - d[0]).abs() < 1e-6),
            "not a square: {d:?}"
        );
        // every side sits in a pair minimum or between the two (no overlap)
        assert!(d[0] > 2.0 && d[0] < 6.0, "{d:?}");
    }

    #[test]
    fn coincident_particles_give_finite_energy_and_force() {
        let dw4 = target();
        let x = [1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0];
        let mut f = [0.0; 8];
        let s = dw4.force(&x, &mut f);
        assert!(s.is_finite() && f.iter().all(|g| g.is_finite()));
    }

    #[test]
    fn histogram_is_a_normalised_density() {
        let dw4 = target();
        let hist = &dw4.vector_observables()[0];
        let mut out = vec![0.0; hist.len()];
        hist.measure(&dw4.initial(), &mut out);
        let integral: f64 = out.iter().sum::<f64>() * 8.0 / 100.0;
        assert!((integral - 1.0).abs() < 1e-12);
    }

    #[test]
    fn rejects_bad_parameters() {
        let cases = [
            (
                Dw4Spec {
                    n_particles: 1,
                    ..spec()
                },
                "n_particles",
            ),
            (
                Dw4Spec {
                    n_particles: -4,
                    ..spec()
                },
                "n_particles",
            ),
            (Dw4Spec { c: 0.0, ..spec() }, "`c`"),
            (Dw4Spec { d0: -1.0, ..spec() }, "`d0`"),
            (
                Dw4Spec {
                    b: f64::NAN,
                    ..spec()
                },
                "`b`",
            ),
            (
                Dw4Spec {
                    temperature: -1.0,
                    ..spec()
                },
                "temperature",
            ),
        ];
        for (s, key) in cases {
            let err = Dw4::new(&s).err().unwrap().to_string();
            assert!(err.contains(key), "{err}");
        }
    }
}
