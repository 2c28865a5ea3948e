//! Solvated bistable dimer (Noé, Olsson, Köhler & Wu, Science 365 (2019) eaaw1147): two dimer
//! particles and n_s solvent particles (36 by default, 76 degrees of freedom) in a 2D box.
//!
//!   E = E_bond + E_restraint + E_box + E_repulsion,
//!   E_bond      = c s - a s^2 + b s^4,  s = 2 (d - d0),  d = |x_1 - x_2|,
//!   E_restraint = k_d (x_1x + x_2x)^2 + k_d (x_1y^2 + x_2y^2),
//!   E_box       = sum_(particles i) sum_(u in {x_ix, x_iy}) k_box (|u| - L)^2 [|u| > L],
//!   E_repulsion = sum_(i<j, (i,j) != (1,2)) eps (sigma / r_ij)^12,
//!
//! with d0 = 1.5, a = 25, b = 10, c = -0.5, k_d = 20, L = 3, k_box = 100, eps = 1,
//! sigma = 1.1 by default; S = E/T. Particles 1 and 2 (indices 0 and 1) are the dimer.
//!
//! Conventions: the wall energy is k_box (|u| - L)^2 outside the box, as in PHYSICS.md; the
//! reference code writes (sign(-u - L) + 1) k_box (u + L)^2, i.e. 2 k_box (|u| - L)^2, so set
//! `k_box = 200` to reproduce it. Solvent pairs are counted once.
//!
//! The dimer is closed for d < d0 and open for d >= d0; the free-energy difference in units
//! of kT is delta_f = F_open - F_closed = -ln(p_open / p_closed).

use serde::{Deserialize, Serialize};

use super::{
    PairDistanceHistogram, Potential, R2_FLOOR, count, distance, energy_observables, finite, one,
    positive, relax,
};
use crate::spec::validate_temperature;
use crate::{Derived, FnObservable, Observable, Result, Target, VectorObservable};

/// Solvated bistable dimer (Noe et al. 2019): 2 dimer + n solvent particles in a 2D box.
///
/// Only `temperature` and `n_solvent` are usually given; the other keys default to the
/// values of Noe et al. 2019.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DimerSpec {
    /// Temperature kT (default 1).
    #[serde(default = "one")]
    pub temperature: f64,
    /// Number of solvent particles (default 36).
    #[serde(default = "DimerSpec::default_solvent")]
    pub n_solvent: i64,
    /// Bond distance d0 between the closed and open states (default 1.5).
    #[serde(default = "DimerSpec::default_d0")]
    pub d0: f64,
    /// Bond quadratic coefficient a in c s - a s^2 + b s^4 (default 25).
    #[serde(default = "DimerSpec::default_a")]
    pub a: f64,
    /// Bond quartic coefficient b (default 10).
    #[serde(default = "DimerSpec::default_b")]
    pub b: f64,
    /// Bond linear coefficient c (default -0.5).
    #[serde(default = "DimerSpec::default_c")]
    pub c: f64,
    /// Dimer restraint k_d (default 20).
    #[serde(default = "DimerSpec::default_k_dimer")]
    pub k_dimer: f64,
    /// Half width L of the box [-L, L]^2 (default 3).
    #[serde(default = "DimerSpec::default_box_half")]
    pub box_half: f64,
    /// Wall strength k_box in k_box (|u| - L)^2 (default 100).
    #[serde(default = "DimerSpec::default_k_box")]
    pub k_box: f64,
    /// Repulsion strength eps (default 1).
    #[serde(default = "one")]
    pub eps: f64,
    /// Repulsion range sigma (default 1.1).
    #[serde(default = "DimerSpec::default_sigma")]
    pub sigma: f64,
}

impl DimerSpec {
    fn default_solvent() -> i64 {
        36
    }
    fn default_d0() -> f64 {
        1.5
    }
    fn default_a() -> f64 {
        25.0
    }
    fn default_b() -> f64 {
        10.0
    }
    fn default_c() -> f64 {
        -0.5
    }
    fn default_k_dimer() -> f64 {
        20.0
    }
    fn default_box_half() -> f64 {
        3.0
    }
    fn default_k_box() -> f64 {
        100.0
    }
    fn default_sigma() -> f64 {
        1.1
    }

    /// Checks the parameters.
    pub fn validate(&self) -> Result<()> {
        validate_temperature(self.temperature)?;
        count(
            "n_solvent",
            self.n_solvent,
            0,
            "the number of solvent particles must be an integer between 0 and 100000 (default 36)",
        )?;
        positive(
            "d0",
            self.d0,
            "the bond distance d0 must be a positive length (default 1.5)",
        )?;
        finite("a", self.a)?;
        positive(
            "b",
            self.b,
            "the quartic bond coefficient b must be positive so that the bond is bound (default 10)",
        )?;
        finite("c", self.c)?;
        positive(
            "k_dimer",
            self.k_dimer,
            "the dimer restraint k_dimer must be positive (default 20)",
        )?;
        positive(
            "box_half",
            self.box_half,
            "the box half width box_half must be a positive length (default 3)",
        )?;
        positive(
            "k_box",
            self.k_box,
            "the wall strength k_box must be positive (default 100)",
        )?;
        positive(
            "eps",
            self.eps,
            "the repulsion strength eps must be positive (default 1)",
        )?;
        positive(
            "sigma",
            self.sigma,
            "the repulsion range sigma must be a positive length (default 1.1)",
        )
    }
}

/// The solvated dimer.
///
/// # Shapes
/// A configuration is `[2 + n_solvent, 2]`, row-major: particle i is `x[2i..2i+2]`, the dimer
/// particles first.
#[derive(Clone, Debug)]
pub struct Dimer {
    temperature: f64,
    n: usize,
    d0: f64,
    a: f64,
    b: f64,
    c: f64,
    k_dimer: f64,
    box_half: f64,
    k_box: f64,
    eps: f64,
    sigma: f64,
}

impl Dimer {
    /// Builds the target from a spec (validated here).
    pub fn new(spec: &DimerSpec) -> Result<Self> {
        spec.validate()?;
        Ok(Self {
            temperature: spec.temperature,
            n: 2 + spec.n_solvent as usize,
            d0: spec.d0,
            a: spec.a,
            b: spec.b,
            c: spec.c,
            k_dimer: spec.k_dimer,
            box_half: spec.box_half,
            k_box: spec.k_box,
            eps: spec.eps,
            sigma: spec.sigma,
        })
    }

    /// Bond energy c s - a s^2 + b s^4 with s = 2 (d - d0).
    pub fn bond_energy(&self, d: f64) -> f64 {
        let s = 2.0 * (d - self.d0);
        let s2 = s * s;
        self.c * s - self.a * s2 + self.b * s2 * s2
    }

    /// d E_bond / d d = 2 (c - 2 a s + 4 b s^3).
    fn bond_derivative(&self, d: f64) -> f64 {
        let s = 2.0 * (d - self.d0);
        2.0 * (self.c - 2.0 * self.a * s + 4.0 * self.b * s * s * s)
    }

    /// Dimer distance d = |x_1 - x_2|.
    pub fn dimer_distance(x: &[f64]) -> f64 {
        distance(&x[0..2], &x[2..4])
    }

    /// The bond length of the closed state: d0 + s/2 at the root s < 0 of
    /// dE_bond/ds = c - 2 a s + 4 b s^3 reached by Newton's method from -sqrt(a / (2b));
    /// d0 / 2 when that is not a positive length below d0 (a <= 0: no closed state).
    pub fn closed_distance(&self) -> f64 {
        let mut s = -(self.a.max(0.0) / (2.0 * self.b)).sqrt() - 0.1;
        for _ in 0..100 {
            let step = (self.c - 2.0 * self.a * s + 4.0 * self.b * s.powi(3))
                / (-2.0 * self.a + 12.0 * self.b * s * s);
            s -= step;
            if !step.is_finite() || step.abs() < 1e-15 {
                break;
            }
        }
        let d = self.d0 + 0.5 * s;
        if d.is_finite() && d > 0.0 && d < self.d0 {
            d
        } else {
            0.5 * self.d0
        }
    }

    /// E(x) (see the module documentation); r^2 is clamped at R2_FLOOR sigma^2 in the
    /// repulsion and at R2_FLOOR d0^2 in the bond.
    pub fn energy(&self, x: &[f64]) -> f64 {
        let r2 = super::squared_distance(&x[0..2], &x[2..4]);
        let mut e = self.bond_energy(r2.max(R2_FLOOR * self.d0 * self.d0).sqrt());
        e += self.k_dimer * ((x[0] + x[2]).powi(2) + x[1] * x[1] + x[3] * x[3]);
        for &u in &x[..2 * self.n] {
            let excess = u.abs() - self.box_half;
            if excess > 0.0 {
                e += self.k_box * excess * excess;
            }
        }
        let (s2, floor) = (self.sigma * self.sigma, R2_FLOOR * self.sigma * self.sigma);
        let mut repulsion = 0.0;
        for i in 0..self.n {
            for j in (i + 1).max(2)..self.n {
                let (dx, dy) = (x[2 * i] - x[2 * j], x[2 * i + 1] - x[2 * j + 1]);
                let q3 = (s2 / (dx * dx + dy * dy).max(floor)).powi(3);
                repulsion += q3 * q3;
            }
        }
        e + self.eps * repulsion
    }
}

impl Potential for Dimer {
    fn temperature(&self) -> f64 {
        self.temperature
    }

    fn energy(&self, x: &[f64]) -> f64 {
        Dimer::energy(self, x)
    }

    /// Bond: dE/dx_1 = E_bond'(d) (x_1 - x_2) / d; restraint: 2 k_d (x_1x + x_2x) on both x
    /// components and 2 k_d x_iy on the y components; walls: 2 k_box (|u| - L) sign(u);
    /// repulsion: d[eps q^6]/d(r^2) = -6 eps q^6 / r^2 with q = sigma^2 / r^2.
    fn energy_gradient(&self, x: &[f64], grad: &mut [f64]) -> f64 {
        let n = self.n;
        grad[..2 * n].fill(0.0);
        // bond
        let (dx, dy) = (x[0] - x[2], x[1] - x[3]);
        let r2 = dx * dx + dy * dy;
        let floor = R2_FLOOR * self.d0 * self.d0;
        let d = r2.max(floor).sqrt();
        let mut e = self.bond_energy(d);
        if r2 > floor {
            let g = self.bond_derivative(d) / d;
            grad[0] += g * dx;
            grad[1] += g * dy;
            grad[2] -= g * dx;
            grad[3] -= g * dy;
        }
        // restraint
        let sx = x[0] + x[2];
        e += self.k_dimer * (sx * sx + x[1] * x[1] + x[3] * x[3]);
        grad[0] += 2.0 * self.k_dimer * sx;
        grad[2] += 2.0 * self.k_dimer * sx;
        grad[1] += 2.0 * self.k_dimer * x[1];
        grad[3] += 2.0 * self.k_dimer * x[3];
        // walls
        for (g, &u) in grad[..2 * n].iter_mut().zip(&x[..2 * n]) {
            let excess = u.abs() - self.box_half;
            if excess > 0.0 {
                e += self.k_box * excess * excess;
                *g += 2.0 * self.k_box * excess * u.signum();
            }
        }
        // repulsion: every pair but the dimer pair (0, 1)
        let (s2, floor) = (self.sigma * self.sigma, R2_FLOOR * self.sigma * self.sigma);
        let mut repulsion = 0.0;
        for i in 0..n {
            for j in (i + 1).max(2)..n {
                let (dx, dy) = (x[2 * i] - x[2 * j], x[2 * i + 1] - x[2 * j + 1]);
                let r2 = dx * dx + dy * dy;
                let q3 = (s2 / r2.max(floor)).powi(3);
                let q6 = q3 * q3;
                repulsion += q6;
                if r2 > floor {
                    let g = -12.0 * self.eps * q6 / r2;
                    grad[2 * i] += g * dx;
                    grad[2 * i + 1] += g * dy;
                    grad[2 * j] -= g * dx;
                    grad[2 * j + 1] -= g * dy;
                }
            }
        }
        e + self.eps * repulsion
    }
}

impl Target for Dimer {
    fn theory(&self) -> &'static str {
        "dimer"
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

    /// The closed dimer at (∓d_closed/2, 0); the solvent on the cell centres of the smallest
    /// m x m grid over the box that has n_s centres at least sigma from both dimer particles
    /// (those farthest from the dimer are used), then relaxed by steepest descent with the
    /// dimer held fixed.
    fn initial(&self) -> Vec<f64> {
        let half = 0.5 * self.closed_distance();
        let mut x = vec![-half, 0.0, half, 0.0];
        let n_solvent = self.n - 2;
        let clearance = |p: &[f64; 2]| {
            let d1 = (p[0] + half).hypot(p[1]);
            let d2 = (p[0] - half).hypot(p[1]);
            d1.min(d2)
        };
        let mut candidates: Vec<[f64; 2]> = Vec::new();
        let first = (n_solvent as f64).sqrt().ceil() as usize;
        // Finer grids until enough cells clear sigma; a box too small for that (possible only
        // with unphysical parameters) takes the finest grid's cells farthest from the dimer
        // and leaves the overlaps to the relaxation below.
        let (m_min, m_max) = (first.max(1), 4 * first.max(1) + 64);
        for m in m_min..=m_max {
            if n_solvent == 0 {
                break;
            }
            let h = 2.0 * self.box_half / m as f64;
            let centre = |i: usize| -self.box_half + (i as f64 + 0.5) * h;
            let grid = (0..m * m).map(|k| [centre(k % m), centre(k / m)]);
            candidates = if m == m_max {
                grid.collect()
            } else {
                grid.filter(|p| clearance(p) >= self.sigma).collect()
            };
            if candidates.len() >= n_solvent {
                break;
            }
        }
        candidates.sort_by(|p, q| clearance(q).total_cmp(&clearance(p)));
        x.extend(candidates.iter().take(n_solvent).flatten());
        if self.n <= 1000 {
            relax(self, &mut x, 4, 2000, 1e-6);
        }
        x
    }

    /// `energy`, `action`, `dimer_distance` d, `p_closed` = `1(d < d0)`, `p_open` = `1(d >= d0)`.
    fn observables(&self) -> Vec<Box<dyn Observable>> {
        let mut obs = energy_observables(self);
        let d0 = self.d0;
        obs.push(FnObservable::boxed("dimer_distance", Dimer::dimer_distance));
        obs.push(FnObservable::boxed("p_closed", move |x| {
            f64::from(u8::from(Dimer::dimer_distance(x) < d0))
        }));
        obs.push(FnObservable::boxed("p_open", move |x| {
            f64::from(u8::from(Dimer::dimer_distance(x) >= d0))
        }));
        obs
    }

    /// `pair_distance_hist` of all pairs (dimer and solvent) on 100 bins of [0, 4 L / 3]
    /// (= [0, 4] at the default L = 3).
    fn vector_observables(&self) -> Vec<Box<dyn VectorObservable>> {
        vec![Box::new(PairDistanceHistogram::new(
            2,
            4.0 * self.box_half / 3.0,
        ))]
    }

    /// `delta_f` = F_open - F_closed = -ln(p_open / p_closed) in units of kT.
    fn derived(&self) -> Vec<Derived> {
        vec![Derived {
            name: "delta_f",
            inputs: vec!["p_closed", "p_open"],
            f: |m| -(m[1] / m[0]).ln(),
        }]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::molecular::testing::force_violation;
    use proptest::prelude::*;
    use proptest::test_runner::{Config, RngSeed};

    fn spec(n_solvent: i64) -> DimerSpec {
        toml::from_str::<DimerSpec>(&format!("n_solvent = {n_solvent}")).unwrap()
    }

    fn target(n_solvent: i64) -> Dimer {
        Dimer::new(&spec(n_solvent)).unwrap()
    }

    proptest! {
        #![proptest_config(Config { cases: 64, rng_seed: RngSeed::Fixed(15), ..Config::default() })]
        #[test]
        fn force_matches_finite_differences(noise in prop::collection::vec(-0.15f64..0.15, 76), t in 0.3f64..2.0) {
            let dimer = Dimer::new(&DimerSpec { temperature: t, ..spec(36) }).unwrap();
            // push two solvent particles through the walls to exercise the wall force
            let mut x: Vec<f64> = dimer.initial().iter().zip(&noise).map(|(x, e)| x + e).collect();
            x[4] = 3.2 + noise[0];
            x[7] = -3.3 + noise[1];
            // the wall energy is C1 but not C2 at |u| = L: keep coordinates away from the kink,
            // where a finite difference over [u - 2h, u + 2h] is not accurate
            for u in &mut x {
                if (u.abs() - 3.0).abs() < 1e-3 {
                    *u = u.signum() * (3.0 - 2e-3);
                }
            }
            prop_assert!(force_violation(&dimer, &x, 1e-4, 1e-8) <= 0.0);
        }
    }

    #[test]
    fn energy_terms_follow_the_stated_conventions() {
        let dimer = target(1);
        let d: f64 = 1.2;
        // dimer on the x axis, centred: only the bond; solvent far away inside the box
        let x = [-0.5 * d, 0.0, 0.5 * d, 0.0, 0.0, 2.9];
        let s = 2.0 * (d - 1.5);
        let bond = -0.5 * s - 25.0 * s * s + 10.0 * s.powi(4);
        let rep = |r2: f64| (1.1f64 * 1.1 / r2).powi(6);
        let solvent = rep(0.36 + 2.9 * 2.9) * 2.0;
        assert!((dimer.energy(&x) - (bond + solvent)).abs() < 1e-12);
        // shift the dimer off centre: restraint 20 (x1x + x2x)^2 + 20 (x1y^2 + x2y^2)
        let y = [-0.5 * d + 0.1, 0.2, 0.5 * d + 0.1, 0.2, 0.0, 2.9];
        let restraint = 20.0 * (0.2f64.powi(2) + 0.04 + 0.04);
        let solvent =
            rep((0.5 * d - 0.1).powi(2) + 2.7 * 2.7) + rep((0.5 * d + 0.1).powi(2) + 2.7 * 2.7);
        assert!((dimer.energy(&y) - (bond + restraint + solvent)).abs() < 1e-12);
        // a solvent particle 0.5 outside the wall at x = 3 costs k_box * 0.5^2 = 25 (not 12.5)
        let z = [-0.5 * d, 0.0, 0.5 * d, 0.0, 3.5, 0.0];
        let solvent = rep((3.5 - 0.5 * d).powi(2)) + rep((3.5 + 0.5 * d).powi(2));
        assert!((dimer.energy(&z) - (bond + 25.0 + solvent)).abs() < 1e-12);
    }

    #[test]
    fn bond_minima_and_closed_distance() {
        let dimer = target(0);
        let d_closed = dimer.closed_distance();
        let mut f = [0.0; 4];
        dimer.force(&[-0.5 * d_closed, 0.0, 0.5 * d_closed, 0.0], &mut f);
        assert!(f.iter().all(|g| g.abs() < 1e-10), "{f:?}");
        // PHYSICS check: s = 2 (d - d0) at the minima solves 40 s^3 - 50 s - 0.5 = 0:
        // s ≈ -1.1130 (closed, d ≈ 0.9435) and s ≈ 1.1230 (open, d ≈ 2.0615)
        assert!((d_closed - 0.9435).abs() < 1e-4, "{d_closed}");
    }

    #[test]
    fn initial_is_closed_inside_the_box_without_overlaps() {
        for n_solvent in [0, 1, 20, 36] {
            let dimer = target(n_solvent);
            let x = dimer.initial();
            assert_eq!(x.len(), 2 * (2 + n_solvent as usize));
            assert!(Dimer::dimer_distance(&x) < 1.5);
            let worst = x.iter().fold(0.0f64, |m, u| m.max(u.abs()));
            // soft walls: the relaxed solvent may press into the wall by a tiny amount
            assert!(worst <= 3.1, "n_s={n_solvent}: outside the box at {worst}");
            let n = x.len() / 2;
            for i in 0..n {
                for j in (i + 1).max(2)..n {
                    let r = distance(&x[2 * i..2 * i + 2], &x[2 * j..2 * j + 2]);
                    assert!(r > 0.75 * 1.1, "n_s={n_solvent}: particles {i},{j} at {r}");
                }
            }
            assert!(dimer.energy(&x).is_finite());
        }
    }

    #[test]
    fn coincident_particles_give_finite_energy_and_force() {
        let dimer = target(2);
        let x = [0.0; 8];
        let mut f = [0.0; 8];
        let s = dimer.force(&x, &mut f);
        assert!(s.is_finite() && f.iter().all(|g| g.is_finite()));
    }

    #[test]
    fn rejects_bad_parameters() {
        let cases = [
            (
                DimerSpec {
                    n_solvent: -1,
                    ..spec(36)
                },
                "n_solvent",
            ),
            (
                DimerSpec {
                    temperature: f64::NAN,
                    ..spec(36)
                },
                "temperature",
            ),
            (DimerSpec { b: 0.0, ..spec(36) }, "`b`"),
            (
                DimerSpec {
                    k_box: -1.0,
                    ..spec(36)
                },
                "k_box",
            ),
            (
                DimerSpec {
                    sigma: 0.0,
                    ..spec(36)
                },
                "sigma",
            ),
            (
                DimerSpec {
                    eps: 0.0,
                    ..spec(36)
                },
                "`eps`",
            ),
            (
                DimerSpec {
                    box_half: 0.0,
                    ..spec(36)
                },
                "box_half",
            ),
        ];
        for (s, key) in cases {
            let err = Dimer::new(&s).err().unwrap().to_string();
            assert!(err.contains(key), "{err}");
        }
    }
}
