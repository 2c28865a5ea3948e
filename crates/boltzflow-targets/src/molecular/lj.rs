//! Lennard-Jones cluster in 3D (LJ13, LJ55) with a harmonic restraint to the centre of mass:
//!
//!   E(x) = eps sum_(i<j) [(rm/r_ij)^12 - 2 (rm/r_ij)^6] + (k/2) sum_i |x_i - xbar|^2,
//!
//! xbar = (1/n) sum_i x_i, each pair counted once (some papers count pairs twice), eps = rm = 1
//! and k = 1 by default; S = E/T. The pair energy has its minimum -eps at r = rm. E is
//! invariant under permutations, rotations and translations (the restraint acts on
//! deviations from the centre of mass). The restraint's gradient is k (x_i - xbar), because
//! sum_j (x_j - xbar) = 0.

use serde::{Deserialize, Serialize};

use super::{
    PairDistanceHistogram, Potential, R2_FLOOR, count, energy_observables, mean_pair_distance, one,
    positive, relax,
};
use crate::spec::validate_temperature;
use crate::{FnObservable, Observable, Result, Target, VectorObservable};

/// Lennard-Jones cluster in 3D with a harmonic restraint to the centre of mass.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LjSpec {
    /// Temperature kT (default 1).
    #[serde(default = "one")]
    pub temperature: f64,
    /// Number of particles (13 for LJ13, 55 for LJ55).
    #[serde(default = "LjSpec::default_n")]
    pub n_particles: i64,
    /// Well depth epsilon (default 1).
    #[serde(default = "one")]
    pub eps: f64,
    /// Distance of the minimum r_m (default 1).
    #[serde(default = "one")]
    pub rm: f64,
    /// Strength of the restraint (1/2) k sum_i |x_i - xbar|^2 (default 1).
    #[serde(default = "one")]
    pub k_restraint: f64,
}

impl LjSpec {
    fn default_n() -> i64 {
        13
    }

    /// Checks the parameters.
    pub fn validate(&self) -> Result<()> {
        validate_temperature(self.temperature)?;
        count(
            "n_particles",
            self.n_particles,
            2,
            "a Lennard-Jones cluster needs an integer number of particles between 2 and 100000 (13 for LJ13)",
        )?;
        positive(
            "eps",
            self.eps,
            "the well depth eps must be a positive number (default 1)",
        )?;
        positive(
            "rm",
            self.rm,
            "the minimum distance rm must be a positive length (default 1)",
        )?;
        positive(
            "k_restraint",
            self.k_restraint,
            "the restraint k_restraint must be positive, or the cluster is not bound (default 1)",
        )
    }
}

/// The Lennard-Jones cluster.
///
/// # Shapes
/// A configuration is `[n_particles, 3]`, row-major: particle i is `x[3i..3i+3]`.
#[derive(Clone, Debug)]
pub struct Lj {
    temperature: f64,
    n: usize,
    eps: f64,
    rm: f64,
    k: f64,
}

impl Lj {
    /// Builds the target from a spec (validated here).
    pub fn new(spec: &LjSpec) -> Result<Self> {
        spec.validate()?;
        Ok(Self {
            temperature: spec.temperature,
            n: spec.n_particles as usize,
            eps: spec.eps,
            rm: spec.rm,
            k: spec.k_restraint,
        })
    }

    /// The Lennard-Jones part eps sum_(i<j) [(rm/r)^12 - 2 (rm/r)^6] alone (no restraint);
    /// r^2 is clamped at R2_FLOOR rm^2.
    pub fn pair_energy(&self, x: &[f64]) -> f64 {
        let (rm2, floor) = (self.rm * self.rm, R2_FLOOR * self.rm * self.rm);
        let mut e = 0.0;
        for i in 0..self.n {
            for j in i + 1..self.n {
                let q3 = (rm2 / squared(x, i, j).max(floor)).powi(3);
                e += q3 * q3 - 2.0 * q3;
            }
        }
        self.eps * e
    }

    /// The restraint (k/2) sum_i |x_i - xbar|^2 alone.
    pub fn restraint_energy(&self, x: &[f64]) -> f64 {
        let xbar = self.centre(x);
        let mut e = 0.0;
        for i in 0..self.n {
            for c in 0..3 {
                e += (x[3 * i + c] - xbar[c]).powi(2);
            }
        }
        0.5 * self.k * e
    }

    /// E(x): pair energy plus restraint.
    pub fn energy(&self, x: &[f64]) -> f64 {
        self.pair_energy(x) + self.restraint_energy(x)
    }

    /// Centre of mass xbar.
    fn centre(&self, x: &[f64]) -> [f64; 3] {
        let mut xbar = [0.0; 3];
        for i in 0..self.n {
            for c in 0..3 {
                xbar[c] += x[3 * i + c];
            }
        }
        xbar.map(|s| s / self.n as f64)
    }
}

/// |x_i - x_j|^2 for 3D particles.
fn squared(x: &[f64], i: usize, j: usize) -> f64 {
    let d = [0, 1, 2].map(|c| x[3 * i + c] - x[3 * j + c]);
    d[0] * d[0] + d[1] * d[1] + d[2] * d[2]
}

impl Potential for Lj {
    fn temperature(&self) -> f64 {
        self.temperature
    }

    fn energy(&self, x: &[f64]) -> f64 {
        Lj::energy(self, x)
    }

    /// Pair part: dphi/d(r^2) = 6 eps (q^3 - q^6) / r^2 with q = rm^2 / r^2, so
    /// dE/dx_i += 2 dphi/d(r^2) (x_i - x_j) (zero for a clamped pair); restraint:
    /// dE/dx_i += k (x_i - xbar).
    fn energy_gradient(&self, x: &[f64], grad: &mut [f64]) -> f64 {
        let (rm2, floor) = (self.rm * self.rm, R2_FLOOR * self.rm * self.rm);
        let xbar = self.centre(x);
        let mut pair = 0.0;
        let mut restraint = 0.0;
        for i in 0..self.n {
            for c in 0..3 {
                let dev = x[3 * i + c] - xbar[c];
                restraint += dev * dev;
                grad[3 * i + c] = self.k * dev;
            }
        }
        for i in 0..self.n {
            for j in i + 1..self.n {
                let r2 = squared(x, i, j);
                let q3 = (rm2 / r2.max(floor)).powi(3);
                pair += q3 * q3 - 2.0 * q3;
                if r2 > floor {
                    let g = 12.0 * self.eps * (q3 - q3 * q3) / r2;
                    for c in 0..3 {
                        let d = g * (x[3 * i + c] - x[3 * j + c]);
                        grad[3 * i + c] += d;
                        grad[3 * j + c] -= d;
                    }
                }
            }
        }
        self.eps * pair + 0.5 * self.k * restraint
    }
}

impl Target for Lj {
    fn theory(&self) -> &'static str {
        "lj"
    }

    fn shape(&self) -> Vec<usize> {
        vec![self.n, 3]
    }

    fn action(&self, x: &[f64]) -> f64 {
        super::action(self, x)
    }

    fn force(&self, x: &[f64], force: &mut [f64]) -> f64 {
        super::force(self, x, force)
    }

    /// The n sites of an fcc lattice with nearest-neighbour distance rm closest to a lattice
    /// site (13 sites: a cuboctahedron; ties broken in lexicographic order), centred on the
    /// centre of mass and relaxed by steepest descent.
    fn initial(&self) -> Vec<f64> {
        let reach = (self.n as f64).cbrt().ceil() as i64 + 2;
        let mut sites = Vec::new();
        for i in -reach..=reach {
            for j in -reach..=reach {
                for k in -reach..=reach {
                    if (i + j + k).rem_euclid(2) == 0 {
                        sites.push([i, j, k]);
                    }
                }
            }
        }
        sites.sort_by_key(|s| (s[0] * s[0] + s[1] * s[1] + s[2] * s[2], *s));
        // fcc sites (i, j, k), i + j + k even, scaled by rm/sqrt(2): nearest neighbours at rm
        let scale = self.rm / 2f64.sqrt();
        let mut x: Vec<f64> = sites[..self.n]
            .iter()
            .flat_map(|s| s.map(|c| c as f64 * scale))
            .collect();
        let xbar = self.centre(&x);
        x.iter_mut()
            .enumerate()
            .for_each(|(k, v)| *v -= xbar[k % 3]);
        if self.n <= 1000 {
            relax(self, &mut x, 0, 2000, 1e-8 * self.eps / self.rm);
        }
        x
    }

    /// `energy`, `action`, `mean_distance` (mean over the n(n-1)/2 pair distances).
    fn observables(&self) -> Vec<Box<dyn Observable>> {
        let mut obs = energy_observables(self);
        obs.push(FnObservable::boxed("mean_distance", |x| {
            mean_pair_distance(x, 3)
        }));
        obs
    }

    /// `pair_distance_hist` on 100 bins of [0, 3 rm] (= [0, 3] at the default rm = 1).
    fn vector_observables(&self) -> Vec<Box<dyn VectorObservable>> {
        vec![Box::new(PairDistanceHistogram::new(3, 3.0 * self.rm))]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::molecular::testing::{force_violation, rng};
    use proptest::prelude::*;
    use proptest::test_runner::{Config, RngSeed};
    use rand::RngExt;

    fn spec(n: i64) -> LjSpec {
        LjSpec {
            temperature: 1.0,
            n_particles: n,
            eps: 1.0,
            rm: 1.0,
            k_restraint: 1.0,
        }
    }

    fn target(n: i64) -> Lj {
        Lj::new(&spec(n)).unwrap()
    }

    /// The 12 vertices of a regular icosahedron of circumradius r, plus the centre.
    fn icosahedron(r: f64) -> Vec<f64> {
        let phi = (1.0 + 5f64.sqrt()) / 2.0;
        let norm = (1.0 + phi * phi).sqrt();
        let mut x = vec![0.0; 3];
        for (a, b) in [(1.0, phi), (-1.0, phi), (1.0, -phi), (-1.0, -phi)] {
            for cyc in 0..3 {
                let mut v = [0.0, a, b];
                v.rotate_right(cyc);
                x.extend(v.iter().map(|c| c * r / norm));
            }
        }
        x
    }

    proptest! {
        #![proptest_config(Config { cases: 64, rng_seed: RngSeed::Fixed(14), ..Config::default() })]
        #[test]
        fn force_matches_finite_differences(noise in prop::collection::vec(-0.1f64..0.1, 39), t in 0.3f64..2.0) {
            let lj = Lj::new(&LjSpec { temperature: t, ..spec(13) }).unwrap();
            let x: Vec<f64> = lj.initial().iter().zip(&noise).map(|(x, e)| x + e).collect();
            prop_assert!(force_violation(&lj, &x, 1e-4, 1e-8) <= 0.0);
        }
    }

    #[test]
    fn dimer_trimer_and_lj13_minimum_energies() {
        // PHYSICS checks (eps = rm = 1, pairs counted once, no restraint):
        // dimer at rm: -1; equilateral trimer of side rm: -3;
        // LJ13 global minimum (icosahedron, Cambridge Cluster Database): -44.326801.
        let lj2 = target(2);
        assert!((lj2.pair_energy(&[0.1, 0.2, 0.3, 0.1, 0.2, 1.3]) + 1.0).abs() < 1e-14);
        let lj3 = target(3);
        let h = 3f64.sqrt() / 2.0;
        assert!(
            (lj3.pair_energy(&[0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.5, h, 0.0]) + 3.0).abs() < 1e-13
        );
        // The icosahedral minimum has one free parameter, the radius: golden-section search.
        let lj13 = target(13);
        let e = |r: f64| lj13.pair_energy(&icosahedron(r));
        let (mut lo, mut hi) = (0.8, 1.2);
        let g = (5f64.sqrt() - 1.0) / 2.0;
        for _ in 0..200 {
            let (m1, m2) = (hi - g * (hi - lo), lo + g * (hi - lo));
            if e(m1) < e(m2) { hi = m2 } else { lo = m1 }
        }
        let e_min = e(0.5 * (lo + hi));
        assert!((e_min + 44.326801).abs() < 5e-7, "{e_min}");
        // for a structure centred at the origin the restraint is (k/2) sum_i |x_i|^2
        let x = icosahedron(0.5 * (lo + hi));
        let r2: f64 = x.iter().map(|c| c * c).sum();
        assert!((lj13.restraint_energy(&x) - 0.5 * r2).abs() < 1e-12);
    }

    #[test]
    fn energy_and_force_are_invariant_under_permutation_rotation_translation() {
        let lj = target(13);
        let mut rng = rng(6);
        let x0 = lj.initial();
        for _ in 0..20 {
            let x: Vec<f64> = x0
                .iter()
                .map(|c| c + 0.2 * rng.random::<f64>() - 0.1)
                .collect();
            // random rotation from a random unit quaternion
            let mut q = [0.0f64; 4].map(|_| rng.random::<f64>() - 0.5);
            let norm = q.iter().map(|c| c * c).sum::<f64>().sqrt();
            q.iter_mut().for_each(|c| *c /= norm);
            let [w, a, b, c] = q;
            let rot = [
                [
                    1.0 - 2.0 * (b * b + c * c),
                    2.0 * (a * b - w * c),
                    2.0 * (a * c + w * b),
                ],
                [
                    2.0 * (a * b + w * c),
                    1.0 - 2.0 * (a * a + c * c),
                    2.0 * (b * c - w * a),
                ],
                [
                    2.0 * (a * c - w * b),
                    2.0 * (b * c + w * a),
                    1.0 - 2.0 * (a * a + b * b),
                ],
            ];
            let shift = [0.0; 3].map(|_: f64| 4.0 * rng.random::<f64>() - 2.0);
            let perm: Vec<usize> = (0..13).map(|i| (5 * i + 3) % 13).collect();
            let apply =
                |v: &[f64]| [0, 1, 2].map(|r| (0..3).map(|c| rot[r][c] * v[c]).sum::<f64>());
            let mut y = vec![0.0; 39];
            for (i, &p) in perm.iter().enumerate() {
                let v = apply(&x[3 * p..3 * p + 3]);
                for c in 0..3 {
                    y[3 * i + c] = v[c] + shift[c];
                }
            }
            let (mut fx, mut fy) = (vec![0.0; 39], vec![0.0; 39]);
            let (sx, sy) = (lj.force(&x, &mut fx), lj.force(&y, &mut fy));
            assert!((sx - sy).abs() < 1e-11 * (1.0 + sx.abs()), "{sx} vs {sy}");
            for (i, &p) in perm.iter().enumerate() {
                let rotated = apply(&fx[3 * p..3 * p + 3]);
                for c in 0..3 {
                    assert!((rotated[c] - fy[3 * i + c]).abs() < 1e-9 * (1.0 + rotated[c].abs()));
                }
            }
        }
    }

    #[test]
    fn initial_is_a_compact_relaxed_cluster() {
        for n in [13, 55] {
            let lj = target(n);
            let x = lj.initial();
            let n = n as usize;
            let mut min_r: f64 = f64::INFINITY;
            for i in 0..n {
                for j in i + 1..n {
                    min_r = min_r.min(squared(&x, i, j).sqrt());
                }
            }
            assert!(min_r > 0.85, "overlap: {min_r}");
            let mut f = vec![0.0; 3 * n];
            lj.force(&x, &mut f);
            assert!(f.iter().all(|g| g.abs() < 1e-4), "not relaxed");
            // bound: at least ~2.5 eps per particle below zero
            assert!(lj.energy(&x) < -2.5 * n as f64, "{}", lj.energy(&x));
        }
    }

    #[test]
    fn coincident_particles_give_finite_energy_and_force() {
        let lj = target(3);
        let x = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0];
        let mut f = [0.0; 9];
        let s = lj.force(&x, &mut f);
        assert!(s.is_finite() && f.iter().all(|g| g.is_finite()));
    }

    #[test]
    fn rejects_bad_parameters() {
        let cases = [
            (
                LjSpec {
                    n_particles: 1,
                    ..spec(13)
                },
                "n_particles",
            ),
            (
                LjSpec {
                    n_particles: 1 << 40,
                    ..spec(13)
                },
                "n_particles",
            ),
            (
                LjSpec {
                    eps: 0.0,
                    ..spec(13)
                },
                "`eps`",
            ),
            (
                LjSpec {
                    rm: -1.0,
                    ..spec(13)
                },
                "`rm`",
            ),
            (
                LjSpec {
                    k_restraint: 0.0,
                    ..spec(13)
                },
                "k_restraint",
            ),
            (
                LjSpec {
                    temperature: 0.0,
                    ..spec(13)
                },
                "temperature",
            ),
        ];
        for (s, key) in cases {
            let err = Lj::new(&s).err().unwrap().to_string();
            assert!(err.contains(key), "{err}");
        }
    }
}
