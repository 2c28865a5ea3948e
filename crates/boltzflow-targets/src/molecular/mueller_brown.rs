//! Mueller-Brown potential (Müller & Brown, Theor. Chim. Acta 53 (1979) 75), scaled by k:
//!
//!   E(x, y) = k sum_(j=1..4) A_j exp[a_j (x - X_j)^2 + b_j (x - X_j)(y - Y_j) + c_j (y - Y_j)^2],
//!
//! A = (-200, -100, -170, 15), a = (-1, -1, -6.5, 0.7), b = (0, 0, 11, 0.6),
//! c = (-10, -10, -6.5, 0.7), X = (1, 0, -0.5, -1), Y = (0, 0.5, 1.5, 1); k = 0.1 by default;
//! S = E/T.
//!
//! The three minima, A ≈ (-0.558, 1.442), B ≈ (0.623, 0.028), C ≈ (-0.050, 0.467) with
//! E/k ≈ -146.70, -108.17, -80.77, are located to machine precision by Newton's method at
//! construction. Basins are the Voronoi cells of the minima: a point belongs to the basin of
//! the nearest minimum (Euclidean distance, ties to the lower label). This approximates the
//! steepest-descent basins and, unlike them, has straight boundaries, which the quadrature of
//! the exact populations puts at breakpoints.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::double_well::EDGE_MARGIN_KT;
use super::{Potential, energy_observables, one, positive};
use crate::quadrature::{CompositeRule, confining_box};
use crate::spec::validate_temperature;
use crate::{FnObservable, Observable, Result, Target};

/// Amplitudes A_j of the four Gaussian terms (unscaled, k = 1).
pub const AMP: [f64; 4] = [-200.0, -100.0, -170.0, 15.0];
/// Coefficients a_j of (x - X_j)^2 in the exponents.
pub const A: [f64; 4] = [-1.0, -1.0, -6.5, 0.7];
/// Coefficients b_j of (x - X_j)(y - Y_j) in the exponents.
pub const B: [f64; 4] = [0.0, 0.0, 11.0, 0.6];
/// Coefficients c_j of (y - Y_j)^2 in the exponents.
pub const C: [f64; 4] = [-10.0, -10.0, -6.5, 0.7];
/// Centres X_j (x coordinates).
pub const X0: [f64; 4] = [1.0, 0.0, -0.5, -1.0];
/// Centres Y_j (y coordinates).
pub const Y0: [f64; 4] = [0.0, 0.5, 1.5, 1.0];

/// Approximate minima A, B, C (literature values), refined by Newton's method.
const MINIMA_GUESS: [[f64; 2]; 3] = [[-0.558, 1.442], [0.623, 0.028], [-0.050, 0.467]];

/// Mueller-Brown potential E = k sum_j A_j exp[...].
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MuellerBrownSpec {
    /// Temperature kT (default 1).
    #[serde(default = "one")]
    pub temperature: f64,
    /// Overall scale k (default 0.1).
    #[serde(default = "MuellerBrownSpec::default_k")]
    pub k: f64,
}

impl MuellerBrownSpec {
    fn default_k() -> f64 {
        0.1
    }

    /// Checks the parameters.
    pub fn validate(&self) -> Result<()> {
        validate_temperature(self.temperature)?;
        positive(
            "k",
            self.k,
            "the Mueller-Brown scale k must be a positive number (default 0.1)",
        )
    }
}

/// The unscaled potential (k = 1) with its gradient and Hessian at (x, y):
/// (E, [dE/dx, dE/dy], [d2E/dx2, d2E/dxdy, d2E/dy2]).
fn unscaled(x: f64, y: f64) -> (f64, [f64; 2], [f64; 3]) {
    let (mut e, mut g, mut h) = (0.0, [0.0; 2], [0.0; 3]);
    for j in 0..4 {
        let (dx, dy) = (x - X0[j], y - Y0[j]);
        let term = AMP[j] * (A[j] * dx * dx + B[j] * dx * dy + C[j] * dy * dy).exp();
        let qx = 2.0 * A[j] * dx + B[j] * dy;
        let qy = B[j] * dx + 2.0 * C[j] * dy;
        e += term;
        g[0] += term * qx;
        g[1] += term * qy;
        h[0] += term * (qx * qx + 2.0 * A[j]);
        h[1] += term * (qx * qy + B[j]);
        h[2] += term * (qy * qy + 2.0 * C[j]);
    }
    (e, g, h)
}

/// The minimum near `guess` by Newton's method on the gradient (30 iterations at most).
fn newton_minimum(guess: [f64; 2]) -> [f64; 2] {
    let mut p = guess;
    for _ in 0..30 {
        let (_, g, h) = unscaled(p[0], p[1]);
        let det = h[0] * h[2] - h[1] * h[1];
        let step = [
            (h[2] * g[0] - h[1] * g[1]) / det,
            (h[0] * g[1] - h[1] * g[0]) / det,
        ];
        if !(step[0].is_finite() && step[1].is_finite()) {
            break;
        }
        p = [p[0] - step[0], p[1] - step[1]];
        if step[0].abs().max(step[1].abs()) < 1e-15 {
            break;
        }
    }
    p
}

/// The Mueller-Brown potential at temperature T.
///
/// # Shapes
/// A configuration is `[2]`: (x, y).
#[derive(Clone, Debug)]
pub struct MuellerBrown {
    temperature: f64,
    k: f64,
    minima: [[f64; 2]; 3],
}

impl MuellerBrown {
    /// Builds the target from a spec (validated here) and locates the three minima.
    pub fn new(spec: &MuellerBrownSpec) -> Result<Self> {
        spec.validate()?;
        Ok(Self {
            temperature: spec.temperature,
            k: spec.k,
            minima: MINIMA_GUESS.map(newton_minimum),
        })
    }

    /// E(x, y) = k sum_j A_j exp[...].
    pub fn energy(&self, x: &[f64]) -> f64 {
        let mut e = 0.0;
        for j in 0..4 {
            let (dx, dy) = (x[0] - X0[j], x[1] - Y0[j]);
            e += AMP[j] * (A[j] * dx * dx + B[j] * dx * dy + C[j] * dy * dy).exp();
        }
        self.k * e
    }

    /// The minima A, B, C (independent of k).
    pub fn minima(&self) -> [[f64; 2]; 3] {
        self.minima
    }

    /// Basin label 0 (A), 1 (B) or 2 (C): the nearest minimum, ties to the lower label.
    pub fn basin(&self, x: &[f64]) -> usize {
        basin_of(&self.minima, x[0], x[1])
    }

    /// The lowest energy, E at minimum A.
    pub fn min_energy(&self) -> f64 {
        self.minima
            .iter()
            .map(|m| self.energy(m))
            .fold(f64::INFINITY, f64::min)
    }

    /// The quadrature box ((x0, x1), (y0, y1)) and the lowest energy on its edges, which is at
    /// least E_min + 40 T: the box around the minima grown until exp(-(E - E_min)/T) < e^-40
    /// on every edge (E grows without bound outside, through the positive fourth term).
    pub fn quadrature_box(&self) -> ((f64, f64), (f64, f64), f64) {
        let minima = self.minima;
        let lo = |c: usize| minima.iter().map(|m| m[c]).fold(f64::INFINITY, f64::min);
        let hi = |c: usize| {
            minima
                .iter()
                .map(|m| m[c])
                .fold(f64::NEG_INFINITY, f64::max)
        };
        confining_box(
            |x, y| self.k * unscaled(x, y).0,
            self.min_energy(),
            EDGE_MARGIN_KT * self.temperature,
            (lo(0) - 0.5, hi(0) + 0.5),
            (lo(1) - 0.5, hi(1) + 0.5),
        )
    }

    /// Exact values by tensor-product Gauss-Legendre quadrature of exp(-E/T) over a box
    /// outside which E - E_min > 40 kT: `order` points per panel, panels of width
    /// `panel_scale` times the smallest thermal length sqrt(T / E'') of each axis over the
    /// minima. The basin boundaries are the perpendicular bisectors of pairs of minima: the
    /// inner x-integral is cut where they cross the line of constant y, and the outer
    /// y-integral at the Voronoi vertex where they cross one another, so every piece is smooth.
    ///
    /// Keys: `ln_z` = ln int exp(-E/T) dx dy, `energy` = `<E>`, `action` = `<E>/T`, `p_a`, `p_b`,
    /// `p_c` (basin populations) and `basin` = p_b + 2 p_c.
    pub fn exact_with(&self, order: usize, panel_scale: f64) -> BTreeMap<String, f64> {
        let (t, k, minima) = (self.temperature, self.k, self.minima);
        let energy = |x: f64, y: f64| k * unscaled(x, y).0;
        let e_min = self.min_energy();
        let (bx, by, _) = self.quadrature_box();
        let curvature = |c: usize| {
            minima
                .iter()
                .map(|m| k * unscaled(m[0], m[1]).2[2 * c])
                .fold(0.0, f64::max)
        };
        let rule = CompositeRule::new(
            order,
            panel_scale * (t / curvature(0)).sqrt(),
            panel_scale * (t / curvature(1)).sqrt(),
        );
        let bisectors = bisectors(&minima);
        let mut y_breaks = Vec::new();
        for (i, (n, c)) in bisectors.iter().enumerate() {
            if n[0] == 0.0 {
                y_breaks.push(c / n[1]);
            }
            for (m, d) in &bisectors[i + 1..] {
                let det = n[0] * m[1] - n[1] * m[0];
                if det != 0.0 {
                    y_breaks.push((n[0] * d - m[0] * c) / det);
                }
            }
        }
        let [z, e, za, zb, zc] = rule.integrate_2d(
            bx,
            by,
            &y_breaks,
            |y, breaks| {
                for (n, c) in &bisectors {
                    if n[0] != 0.0 {
                        breaks.push((c - n[1] * y) / n[0]);
                    }
                }
            },
            |x, y| {
                let e = energy(x, y);
                let w = (-(e - e_min) / t).exp();
                let mut v = [w, w * e, 0.0, 0.0, 0.0];
                v[2 + basin_of(&minima, x, y)] = w;
                v
            },
        );
        BTreeMap::from([
            ("ln_z".to_string(), z.ln() - e_min / t),
            ("energy".to_string(), e / z),
            ("action".to_string(), e / z / t),
            ("p_a".to_string(), za / z),
            ("p_b".to_string(), zb / z),
            ("p_c".to_string(), zc / z),
            ("basin".to_string(), (zb + 2.0 * zc) / z),
        ])
    }
}

/// Nearest of the three minima to (x, y), ties to the lower label.
fn basin_of(minima: &[[f64; 2]; 3], x: f64, y: f64) -> usize {
    let d2 = |m: &[f64; 2]| (x - m[0]).powi(2) + (y - m[1]).powi(2);
    let mut best = 0;
    for i in 1..3 {
        if d2(&minima[i]) < d2(&minima[best]) {
            best = i;
        }
    }
    best
}

/// The perpendicular bisector of each pair of minima as (n, c) with the line n . p = c:
/// n = m_j - m_i, c = (|m_j|^2 - |m_i|^2) / 2.
fn bisectors(minima: &[[f64; 2]; 3]) -> [([f64; 2], f64); 3] {
    [(0, 1), (0, 2), (1, 2)].map(|(i, j)| {
        let (mi, mj) = (minima[i], minima[j]);
        let n = [mj[0] - mi[0], mj[1] - mi[1]];
        let c = 0.5 * (mj[0] * mj[0] + mj[1] * mj[1] - mi[0] * mi[0] - mi[1] * mi[1]);
        (n, c)
    })
}

impl Potential for MuellerBrown {
    fn temperature(&self) -> f64 {
        self.temperature
    }

    fn energy(&self, x: &[f64]) -> f64 {
        MuellerBrown::energy(self, x)
    }

    fn energy_gradient(&self, x: &[f64], grad: &mut [f64]) -> f64 {
        let mut e = 0.0;
        grad[..2].fill(0.0);
        for j in 0..4 {
            let (dx, dy) = (x[0] - X0[j], x[1] - Y0[j]);
            let term = AMP[j] * (A[j] * dx * dx + B[j] * dx * dy + C[j] * dy * dy).exp();
            e += term;
            grad[0] += term * (2.0 * A[j] * dx + B[j] * dy);
            grad[1] += term * (B[j] * dx + 2.0 * C[j] * dy);
        }
        grad[0] *= self.k;
        grad[1] *= self.k;
        self.k * e
    }
}

impl Target for MuellerBrown {
    fn theory(&self) -> &'static str {
        "mueller_brown"
    }

    fn shape(&self) -> Vec<usize> {
        vec![2]
    }

    fn action(&self, x: &[f64]) -> f64 {
        super::action(self, x)
    }

    fn force(&self, x: &[f64], force: &mut [f64]) -> f64 {
        super::force(self, x, force)
    }

    /// Minimum A.
    fn initial(&self) -> Vec<f64> {
        self.minima[0].to_vec()
    }

    /// `energy`, `action`, `basin` (0, 1, 2 for A, B, C) and the indicators `p_a`, `p_b`,
    /// `p_c` of the Voronoi basins.
    fn observables(&self) -> Vec<Box<dyn Observable>> {
        let mut obs = energy_observables(self);
        let minima = self.minima;
        obs.push(FnObservable::boxed("basin", move |x| {
            basin_of(&minima, x[0], x[1]) as f64
        }));
        for (label, name) in ["p_a", "p_b", "p_c"].into_iter().enumerate() {
            obs.push(FnObservable::boxed(name, move |x| {
                f64::from(u8::from(basin_of(&minima, x[0], x[1]) == label))
            }));
        }
        obs
    }

    /// See [`MuellerBrown::exact_with`]; 12-point panels of one thermal length.
    fn exact(&self) -> BTreeMap<String, f64> {
        self.exact_with(12, 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::molecular::testing::{force_violation, metropolis_means};
    use proptest::prelude::*;
    use proptest::test_runner::{Config, RngSeed};

    fn target(t: f64, k: f64) -> MuellerBrown {
        MuellerBrown::new(&MuellerBrownSpec { temperature: t, k }).unwrap()
    }

    proptest! {
        #![proptest_config(Config { cases: 256, rng_seed: RngSeed::Fixed(12), ..Config::default() })]
        #[test]
        fn force_matches_finite_differences(x in -1.5f64..1.2, y in -0.5f64..2.0, t in 0.3f64..3.0) {
            prop_assert!(force_violation(&target(t, 0.1), &[x, y], 1e-4, 1e-8) <= 0.0);
        }
    }

    #[test]
    fn minima_match_the_literature() {
        // PHYSICS check: Mueller & Brown minima (3 decimals) and E/k = -146.700, -108.167,
        // -80.768 (e.g. Table 1 of Müller & Brown 1979; quoted to 0.01).
        let mb = target(1.0, 0.1);
        let reference = [
            (-146.700, MINIMA_GUESS[0]),
            (-108.167, MINIMA_GUESS[1]),
            (-80.768, MINIMA_GUESS[2]),
        ];
        let mut f = [0.0; 2];
        for (m, (e_ref, p_ref)) in mb.minima().iter().zip(reference) {
            assert!(
                (m[0] - p_ref[0]).abs() < 1e-3 && (m[1] - p_ref[1]).abs() < 1e-3,
                "{m:?}"
            );
            assert!(
                (mb.energy(m) / 0.1 - e_ref).abs() < 1e-2,
                "{m:?}: {}",
                mb.energy(m)
            );
            mb.force(m, &mut f);
            assert!(f[0].abs() < 1e-10 && f[1].abs() < 1e-10, "{f:?}");
            let (_, _, h) = unscaled(m[0], m[1]);
            assert!(
                h[0] > 0.0 && h[0] * h[2] - h[1] * h[1] > 0.0,
                "not a minimum"
            );
        }
        for (label, m) in mb.minima().iter().enumerate() {
            assert_eq!(mb.basin(m), label);
        }
    }

    #[test]
    fn quadrature_converges_and_basins_add_up() {
        for (t, k) in [(1.0, 0.1), (0.5, 0.1), (10.0, 0.1), (1.0, 1.0)] {
            let mb = target(t, k);
            let coarse = mb.exact();
            let fine = mb.exact_with(12, 0.5);
            for (key, value) in &coarse {
                let rel = (value - fine[key]).abs() / fine[key].abs().max(1e-300);
                assert!(rel < 1e-9, "T={t} k={k} {key}: {value} vs {}", fine[key]);
            }
            let (_, _, edge) = mb.quadrature_box();
            assert!(
                edge >= mb.min_energy() + 40.0 * t,
                "T={t} k={k}: box edge at {edge}"
            );
            let total = coarse["p_a"] + coarse["p_b"] + coarse["p_c"];
            assert!((total - 1.0).abs() < 1e-13, "T={t} k={k}: {total}");
        }
    }

    #[test]
    fn metropolis_agrees_with_quadrature() {
        let mb = target(4.0, 0.1);
        let exact = mb.exact();
        let means = metropolis_means(&mb, &mb.initial(), 0.3, 2_000_000, 40, 8);
        for (name, mean, err) in means {
            let z = (mean - exact[&name]) / err;
            eprintln!(
                "{name}: {mean:.5} ± {err:.5} vs exact {:.5} ({z:+.2} sigma)",
                exact[&name]
            );
            assert!(
                z.abs() < 4.0,
                "{name}: {mean} ± {err} vs {} ({z:.2} sigma)",
                exact[&name]
            );
        }
    }

    #[test]
    fn rejects_bad_parameters() {
        for (t, k, key) in [
            (0.0, 0.1, "temperature"),
            (1.0, 0.0, "`k`"),
            (1.0, f64::NAN, "`k`"),
        ] {
            let err = MuellerBrown::new(&MuellerBrownSpec { temperature: t, k })
                .err()
                .unwrap();
            assert!(err.to_string().contains(key), "{err}");
        }
    }
}
