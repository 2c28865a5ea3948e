//! Compact U(1) gauge theory on a periodic 2D lattice with the Wilson action.
//!
//! Links theta_mu(x) are stored direction-slowest: configuration shape `[2, L0, L1]`, link
//! theta_mu(x) at index [`U1::link_index`]`(mu, x) = mu V + x`. The plaquette angle is
//!
//! ```text
//! theta_P(x) = theta_0(x) + theta_1(x+0) - theta_0(x+1) - theta_1(x),
//! ```
//!
//! the action S = -beta sum_P cos theta_P, and the topological charge
//! Q = (1/2pi) sum_P wrap(theta_P) with wrap to (-pi, pi].
//!
//! # Local updates
//! The part of S that depends on one link theta = theta_mu(x) is
//!
//! ```text
//! S_link(theta) = -beta Re[exp(i theta) K] = -beta |K| cos(theta + arg K),
//! ```
//!
//! with K the staple sum of [`U1::staple`]. A heat bath draws theta + arg K from
//! exp(beta |K| cos); a Metropolis step accepts with exp(-(S_link(theta') - S_link(theta))).

use std::collections::BTreeMap;
use std::f64::consts::{PI, TAU};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::exact::u1_exact;
use crate::geometry::Lattice;
use crate::{FnObservable, Observable, Result, TargetError};

/// Parameters of 2D U(1) gauge theory.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct U1Spec {
    /// Lattice extents `[L0, L1]`.
    pub shape: Vec<i64>,
    /// Inverse coupling beta > 0.
    pub beta: f64,
}

impl U1Spec {
    /// Checks the parameters: a 2D shape with extents >= 2 and a finite beta > 0.
    pub fn validate(&self) -> Result<()> {
        if self.shape.len() != 2 {
            return Err(TargetError::InvalidParameter {
                name: "shape",
                value: format!("{:?}", self.shape),
                fix: "U(1) gauge theory is implemented in 2D only: give shape = [L0, L1]",
            });
        }
        Lattice::new(&self.shape)?;
        if !(self.beta > 0.0 && self.beta.is_finite()) {
            return Err(TargetError::InvalidParameter {
                name: "beta",
                value: self.beta.to_string(),
                fix: "beta must be > 0 (and finite)",
            });
        }
        Ok(())
    }
}

/// U(1) target: link angles theta_mu(x), configuration shape `[2, L0, L1]`.
pub struct U1 {
    lattice: Arc<Lattice>,
    beta: f64,
}

impl U1 {
    /// Builds the target from a spec (validated here again).
    pub fn new(spec: &U1Spec) -> Result<Self> {
        spec.validate()?;
        Ok(Self {
            lattice: Arc::new(Lattice::new(&spec.shape)?),
            beta: spec.beta,
        })
    }

    /// The 2D lattice of sites (V = L0 L1 sites and plaquettes, 2V links).
    pub fn lattice(&self) -> &Lattice {
        &self.lattice
    }

    /// Inverse coupling beta.
    pub fn beta(&self) -> f64 {
        self.beta
    }

    /// Index of link theta_mu(x) in a configuration: mu V + x.
    #[inline]
    pub fn link_index(&self, mu: usize, site: usize) -> usize {
        mu * self.lattice.volume() + site
    }

    /// Plaquette angle theta_P(x) = theta_0(x) + theta_1(x+0) - theta_0(x+1) - theta_1(x)
    /// (not wrapped).
    #[inline]
    pub fn plaquette_angle(&self, theta: &[f64], site: usize) -> f64 {
        plaquette_angle(&self.lattice, theta, site)
    }

    /// The staple sum K = (re, im) of link theta_mu(x): S_link(theta) = -beta Re[exp(i theta) K]
    /// is the part of S that depends on that link. Written with the two plaquettes that
    /// contain it, theta_P = theta + a (link forward) and theta_P' = -theta + b (link backward),
    /// K = exp(i a) + exp(-i b):
    ///
    /// - mu = 0: a = theta_1(x+0) - theta_0(x+1) - theta_1(x) (plaquette x),
    ///   b = theta_0(x-1) + theta_1(x-1+0) - theta_1(x-1) (plaquette x-1);
    /// - mu = 1: a = theta_0(x-0) - theta_0(x-0+1) - theta_1(x-0) (plaquette x-0),
    ///   b = theta_0(x) + theta_1(x+0) - theta_0(x+1) (plaquette x).
    pub fn staple(&self, theta: &[f64], mu: usize, site: usize) -> (f64, f64) {
        let lat = &*self.lattice;
        let v = lat.volume();
        let (a, b) = if mu == 0 {
            let down = lat.bwd(site, 1);
            (
                theta[v + lat.fwd(site, 0)] - theta[lat.fwd(site, 1)] - theta[v + site],
                theta[down] + theta[v + lat.fwd(down, 0)] - theta[v + down],
            )
        } else {
            let back = lat.bwd(site, 0);
            (
                theta[back] - theta[lat.fwd(back, 1)] - theta[v + back],
                theta[site] + theta[v + lat.fwd(site, 0)] - theta[lat.fwd(site, 1)],
            )
        };
        (a.cos() + b.cos(), a.sin() - b.sin())
    }

    /// S_link(theta) = -beta Re[exp(i theta) K] = -beta (cos theta K_re - sin theta K_im) for
    /// the staple sum K of [`U1::staple`].
    #[inline]
    pub fn local_action(&self, theta: f64, staple: (f64, f64)) -> f64 {
        let (s, c) = theta.sin_cos();
        -self.beta * (c * staple.0 - s * staple.1)
    }
}

#[inline]
fn plaquette_angle(lat: &Lattice, theta: &[f64], x: usize) -> f64 {
    let v = lat.volume();
    theta[x] + theta[v + lat.fwd(x, 0)] - theta[lat.fwd(x, 1)] - theta[v + x]
}

/// sum_P cos theta_P.
fn cos_sum(lat: &Lattice, theta: &[f64]) -> f64 {
    (0..lat.volume())
        .map(|x| plaquette_angle(lat, theta, x).cos())
        .sum()
}

/// Maps an angle to (-pi, pi].
fn wrap(angle: f64) -> f64 {
    let r = angle.rem_euclid(TAU);
    if r > PI { r - TAU } else { r }
}

/// Q = (1/2pi) sum_P wrap(theta_P), rounded to the integer it equals up to rounding.
fn topological_charge(lat: &Lattice, theta: &[f64]) -> f64 {
    let sum: f64 = (0..lat.volume())
        .map(|x| wrap(plaquette_angle(lat, theta, x)))
        .sum();
    (sum / TAU).round()
}

impl crate::Target for U1 {
    fn theory(&self) -> &'static str {
        "u1"
    }

    fn shape(&self) -> Vec<usize> {
        let s = self.lattice.shape();
        vec![2, s[0], s[1]]
    }

    fn action(&self, x: &[f64]) -> f64 {
        debug_assert_eq!(x.len(), 2 * self.lattice.volume());
        -self.beta * cos_sum(&self.lattice, x)
    }

    /// Force -dS/dtheta: each plaquette contributes -beta sin theta_P with the sign of the
    /// link in theta_P: -dS/dtheta_0(x) = -beta [sin theta_P(x) - sin theta_P(x-1)],
    /// -dS/dtheta_1(x) = -beta [sin theta_P(x-0) - sin theta_P(x)].
    fn force(&self, x: &[f64], force: &mut [f64]) -> f64 {
        let lat = &*self.lattice;
        let v = lat.volume();
        debug_assert_eq!(x.len(), 2 * v);
        force.fill(0.0);
        let mut cos_total = 0.0;
        for site in 0..v {
            let (s, c) = plaquette_angle(lat, x, site).sin_cos();
            cos_total += c;
            let f = self.beta * s;
            force[site] -= f;
            force[v + lat.fwd(site, 0)] -= f;
            force[lat.fwd(site, 1)] += f;
            force[v + site] += f;
        }
        -self.beta * cos_total
    }

    /// Wraps every link angle into [0, 2 pi).
    fn canonicalize(&self, x: &mut [f64]) {
        for theta in x.iter_mut() {
            let r = theta.rem_euclid(TAU);
            // rem_euclid of a tiny negative angle rounds to 2 pi.
            *theta = if r >= TAU { 0.0 } else { r };
        }
    }

    /// `action` (S), `plaquette` (mean cos theta_P), `q` (Q), `q2` (Q^2), `chi_t` (Q^2/V).
    fn observables(&self) -> Vec<Box<dyn Observable>> {
        let beta = self.beta;
        let v = self.lattice.volume() as f64;
        let lat = || self.lattice.clone();
        let (l_s, l_p, l_q, l_q2, l_chi) = (lat(), lat(), lat(), lat(), lat());
        vec![
            FnObservable::boxed("action", move |x| -beta * cos_sum(&l_s, x)),
            FnObservable::boxed("plaquette", move |x| cos_sum(&l_p, x) / v),
            FnObservable::boxed("q", move |x| topological_charge(&l_q, x)),
            FnObservable::boxed("q2", move |x| topological_charge(&l_q2, x).powi(2)),
            FnObservable::boxed("chi_t", move |x| topological_charge(&l_chi, x).powi(2) / v),
        ]
    }

    /// `plaquette`, `q2`, `chi_t`, `ln_z`, `action` from the character expansion
    /// ([`crate::exact::u1_exact`]); `q` = 0 by charge conjugation.
    fn exact(&self) -> BTreeMap<String, f64> {
        let e = u1_exact(self.lattice.shape(), self.beta);
        [
            ("plaquette", e.plaquette),
            ("q2", e.q2),
            ("chi_t", e.chi_t),
            ("ln_z", e.ln_z),
            ("action", e.action),
            ("q", 0.0),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{LatticeFile, Target};
    use proptest::prelude::*;
    use rand::{RngExt, SeedableRng};
    use rand_xoshiro::Xoshiro256PlusPlus;

    fn target(shape: [i64; 2], beta: f64) -> U1 {
        U1::new(&U1Spec {
            shape: shape.to_vec(),
            beta,
        })
        .unwrap()
    }

    /// Link angles spread over several windings, to exercise wrapping.
    fn random_links(n: usize, seed: u64) -> Vec<f64> {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        (0..n)
            .map(|_| 3.0 * TAU * (rng.random::<f64>() - 0.5))
            .collect()
    }

    fn measure(target: &U1, theta: &[f64]) -> BTreeMap<String, f64> {
        target
            .observables()
            .iter()
            .map(|o| (o.name().to_string(), o.measure(theta)))
            .collect()
    }

    /// Links with every plaquette angle equal to 2 pi q / V mod 2 pi: charge q.
    fn instanton(shape: [usize; 2], q: f64) -> Vec<f64> {
        let (l0, l1) = (shape[0], shape[1]);
        let v = l0 * l1;
        let a = TAU * q / v as f64;
        let b = TAU * q - a * l0 as f64;
        let mut theta = vec![0.0; 2 * v];
        for x0 in 0..l0 {
            for x1 in 0..l1 {
                let x = x0 * l1 + x1;
                theta[v + x] = a * x0 as f64;
                if x0 == l0 - 1 {
                    theta[x] = b * x1 as f64;
                }
            }
        }
        theta
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// -dS/dtheta against central finite differences, every link.
        #[test]
        fn force_matches_finite_differences(
            l0 in 2i64..6, l1 in 2i64..6, beta in 0.05..8.0f64, seed in any::<u64>(),
        ) {
            let target = target([l0, l1], beta);
            let mut theta = random_links(target.dim(), seed);
            let mut force = vec![0.0; theta.len()];
            let s = target.force(&theta, &mut force);
            prop_assert!((s - target.action(&theta)).abs() < 1e-12 * (1.0 + s.abs()));
            let h = 1e-5;
            for i in 0..theta.len() {
                let t = theta[i];
                theta[i] = t + h;
                let up = target.action(&theta);
                theta[i] = t - h;
                let down = target.action(&theta);
                theta[i] = t;
                let numeric = -(up - down) / (2.0 * h);
                prop_assert!((numeric - force[i]).abs() < 1e-7 * (1.0 + beta),
                    "link {i}: numeric {numeric} vs analytic {}", force[i]);
            }
        }

        /// Changing one link changes S by the difference of its local actions from the staple.
        #[test]
        fn staple_gives_single_link_change(
            l0 in 2i64..6, l1 in 2i64..6, beta in 0.05..8.0f64, seed in any::<u64>(),
            mu in 0usize..2, site_frac in 0.0..1.0f64, new_angle in -7.0..7.0f64,
        ) {
            let target = target([l0, l1], beta);
            let mut theta = random_links(target.dim(), seed);
            let v = target.lattice().volume();
            let site = ((site_frac * v as f64) as usize).min(v - 1);
            let link = target.link_index(mu, site);
            let k = target.staple(&theta, mu, site);
            let predicted = target.local_action(new_angle, k) - target.local_action(theta[link], k);
            let before = target.action(&theta);
            theta[link] = new_angle;
            let change = target.action(&theta) - before;
            prop_assert!((change - predicted).abs() < 1e-10 * (1.0 + before.abs()),
                "{change} vs {predicted}");
        }

        /// Gauge transformations theta_mu(x) -> theta_mu(x) + alpha(x) - alpha(x+mu) and
        /// canonicalisation leave S and Q unchanged; Q is an integer.
        #[test]
        fn gauge_invariance_and_canonical_angles(
            l0 in 2i64..7, l1 in 2i64..7, seed in any::<u64>(),
        ) {
            let target = target([l0, l1], 1.3);
            let lat = target.lattice();
            let v = lat.volume();
            let theta = random_links(target.dim(), seed);
            let alpha = random_links(v, seed ^ 0x5eed);
            let mut gauged = theta.clone();
            for x in 0..v {
                for mu in 0..2 {
                    gauged[target.link_index(mu, x)] += alpha[x] - alpha[lat.fwd(x, mu)];
                }
            }
            let mut canonical = gauged.clone();
            target.canonicalize(&mut canonical);
            prop_assert!(canonical.iter().all(|&t| (0.0..TAU).contains(&t)));
            let reference = measure(&target, &theta);
            let raw_q: f64 = (0..v).map(|x| wrap(target.plaquette_angle(&theta, x))).sum::<f64>() / TAU;
            prop_assert!((raw_q - raw_q.round()).abs() < 1e-10);
            for config in [&gauged, &canonical] {
                let m = measure(&target, config);
                prop_assert!((m["action"] - reference["action"]).abs() < 1e-10 * v as f64);
                prop_assert_eq!(m["q"], reference["q"]);
            }
        }
    }

    #[test]
    fn instanton_configurations_have_their_charge() {
        for shape in [[4usize, 4], [3, 5], [8, 6]] {
            let target = target([shape[0] as i64, shape[1] as i64], 2.0);
            let v = (shape[0] * shape[1]) as f64;
            for q in [-2.0, -1.0, 0.0, 1.0, 2.0] {
                let m = measure(&target, &instanton(shape, q));
                assert_eq!(m["q"], q, "{shape:?}");
                assert_eq!(m["q2"], q * q);
                assert!((m["chi_t"] - q * q / v).abs() < 1e-15);
                let plaquette = (TAU * q / v).cos();
                assert!((m["plaquette"] - plaquette).abs() < 1e-12);
                assert!((m["action"] + 2.0 * v * plaquette).abs() < 1e-10);
            }
        }
    }

    #[test]
    fn wrap_maps_into_half_open_interval() {
        assert_eq!(wrap(PI), PI);
        assert!((wrap(-PI) - PI).abs() < 1e-15);
        assert!((wrap(3.0 * PI / 2.0) + PI / 2.0).abs() < 1e-15);
        assert!((wrap(-7.0) - (-7.0 + TAU)).abs() < 1e-15);
    }

    #[test]
    fn exact_values_come_from_the_character_expansion() {
        let target = target([4, 4], 1.5);
        let exact = target.exact();
        let reference = u1_exact(&[4, 4], 1.5);
        assert_eq!(exact["plaquette"], reference.plaquette);
        assert_eq!(exact["q2"], reference.q2);
        assert_eq!(exact["chi_t"], reference.q2 / 16.0);
        assert_eq!(exact["action"], -1.5 * 16.0 * reference.plaquette);
        assert_eq!(target.shape(), vec![2, 4, 4]);
    }

    #[test]
    fn bad_parameters_name_the_key() {
        let cases = [
            (vec![4, 4, 4], 1.0, "`shape`"),
            (vec![4], 1.0, "`shape`"),
            (vec![4, 1], 1.0, "`shape`"),
            (vec![4, 4], 0.0, "`beta`"),
            (vec![4, 4], -1.0, "`beta`"),
            (vec![4, 4], f64::INFINITY, "`beta`"),
        ];
        for (shape, beta, key) in cases {
            let message = match U1::new(&U1Spec { shape, beta }) {
                Ok(_) => panic!("accepted"),
                Err(e) => e.to_string(),
            };
            assert!(message.contains(key), "`{message}` does not name {key}");
        }
        let message = U1::new(&U1Spec {
            shape: vec![4, 4],
            beta: -1.0,
        })
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(message.contains("beta must be > 0"), "{message}");
    }

    #[test]
    fn lattice_file_rejects_unknown_keys() {
        let good = "theory = \"u1\"\nshape = [6, 4]\nbeta = 2.0\n";
        let target = LatticeFile::parse(good).unwrap().target.build().unwrap();
        assert_eq!(target.shape(), vec![2, 6, 4]);
        let unknown = "theory = \"u1\"\nshape = [6, 4]\nbeta = 2.0\nmass = 1\n";
        let message = LatticeFile::parse(unknown).unwrap_err().to_string();
        assert!(message.contains("mass"), "{message}");
    }
}
