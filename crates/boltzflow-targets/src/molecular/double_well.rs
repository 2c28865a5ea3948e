//! 2D double well (Noe et al. 2019 code): E(x, y) = x^4 - 6 x^2 + x + y^2/2, S = E/T.
//!
//! Stationary points lie at y = 0 and the roots of V'(x) = 4 x^3 - 12 x + 1 = 0, with
//! V(x) = x^4 - 6 x^2 + x: the deep minimum A at x ≈ -1.773 (E ≈ -10.75), the barrier at
//! x ≈ 0.083 (E ≈ 0.04) and the shallow minimum B at x ≈ 1.690 (E ≈ -7.27).
//!
//! The reaction coordinate is x; state A is x < 0 and state B is x >= 0. The free-energy
//! difference in units of kT is delta_f = F_B - F_A = -ln(p_B / p_A).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Potential, energy_observables, one};
use crate::quadrature::{CompositeRule, confining_box};
use crate::spec::validate_temperature;
use crate::{Derived, FnObservable, Observable, Result, Target};

/// Outside the quadrature box E - E_min exceeds this many kT (truncated weight < 1e-15).
pub(crate) const EDGE_MARGIN_KT: f64 = 40.0;

/// 2D double well E = x^4 - 6 x^2 + x + y^2/2 (Noe et al. 2019 code).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DoubleWellSpec {
    /// Temperature kT (default 1).
    #[serde(default = "one")]
    pub temperature: f64,
}

impl DoubleWellSpec {
    /// Checks the parameters.
    pub fn validate(&self) -> Result<()> {
        validate_temperature(self.temperature)
    }
}

/// The 2D double well at temperature T.
///
/// # Shapes
/// A configuration is `[2]`: (x, y).
#[derive(Clone, Debug)]
pub struct DoubleWell {
    temperature: f64,
}

/// V(x) = x^4 - 6 x^2 + x, the x-part of the energy.
fn v(x: f64) -> f64 {
    let x2 = x * x;
    x2 * x2 - 6.0 * x2 + x
}

impl DoubleWell {
    /// Builds the target from a spec (validated here).
    pub fn new(spec: &DoubleWellSpec) -> Result<Self> {
        spec.validate()?;
        Ok(Self {
            temperature: spec.temperature,
        })
    }

    /// E(x, y) = x^4 - 6 x^2 + x + y^2/2.
    pub fn energy(&self, x: &[f64]) -> f64 {
        v(x[0]) + 0.5 * x[1] * x[1]
    }

    /// The roots of V'(x) = 4 x^3 - 12 x + 1 in increasing order (minimum A, barrier,
    /// minimum B), from the trigonometric solution of x^3 - 3 x + 1/4 = 0:
    /// x_k = 2 cos(arccos(-1/8)/3 - 2 pi k/3).
    pub fn stationary_points() -> [f64; 3] {
        let theta = (-0.125f64).acos() / 3.0;
        let mut roots =
            [0, 1, 2].map(|k| 2.0 * (theta - 2.0 * std::f64::consts::PI * k as f64 / 3.0).cos());
        roots.sort_by(f64::total_cmp);
        roots
    }

    /// The quadrature box ((x0, x1), (y0, y1)) and the lowest energy on its edges, which is at
    /// least E_min + 40 T: the box around both minima grown until
    /// exp(-(E - E_min)/T) < e^-40 on every edge.
    pub fn quadrature_box(&self) -> ((f64, f64), (f64, f64), f64) {
        let [x_a, _, x_b] = Self::stationary_points();
        confining_box(
            |x, y| v(x) + 0.5 * y * y,
            v(x_a),
            EDGE_MARGIN_KT * self.temperature,
            (x_a - 0.5, x_b + 0.5),
            (-1.0, 1.0),
        )
    }

    /// Exact values by tensor-product Gauss-Legendre quadrature of exp(-E/T) over a box
    /// outside which E - E_min > 40 kT: `order` points per panel, panels of width
    /// `panel_scale` times the thermal length sqrt(T / E'') of each axis at minimum A, the
    /// inner x-integral cut at x = 0 (the indicator of state A).
    ///
    /// Keys: `ln_z` = ln int exp(-E/T) dx dy, `energy` = `<E>`, `action` = `<E>/T`, `x` = `<x>`,
    /// `p_a` = P(x < 0), `p_b` = P(x >= 0), `delta_f` = -ln(p_b / p_a).
    pub fn exact_with(&self, order: usize, panel_scale: f64) -> BTreeMap<String, f64> {
        let t = self.temperature;
        let [x_a, _, _] = Self::stationary_points();
        let e_min = v(x_a);
        let energy = |x: f64, y: f64| v(x) + 0.5 * y * y;
        let (bx, by, _) = self.quadrature_box();
        let curvature_x = 12.0 * x_a * x_a - 12.0;
        let rule = CompositeRule::new(
            order,
            panel_scale * (t / curvature_x).sqrt(),
            panel_scale * t.sqrt(),
        );
        let [z, e, xm, za, zb] = rule.integrate_2d(
            bx,
            by,
            &[],
            |_, breaks| breaks.push(0.0),
            |x, y| {
                let e = energy(x, y);
                let w = (-(e - e_min) / t).exp();
                let (a, b) = if x < 0.0 { (w, 0.0) } else { (0.0, w) };
                [w, w * e, w * x, a, b]
            },
        );
        BTreeMap::from([
            ("ln_z".to_string(), z.ln() - e_min / t),
            ("energy".to_string(), e / z),
            ("action".to_string(), e / z / t),
            ("x".to_string(), xm / z),
            ("p_a".to_string(), za / z),
            ("p_b".to_string(), zb / z),
            ("delta_f".to_string(), (za / zb).ln()),
        ])
    }
}

impl Potential for DoubleWell {
    fn temperature(&self) -> f64 {
        self.temperature
    }

    fn energy(&self, x: &[f64]) -> f64 {
        DoubleWell::energy(self, x)
    }

    fn energy_gradient(&self, x: &[f64], grad: &mut [f64]) -> f64 {
        let (px, py) = (x[0], x[1]);
        grad[0] = 4.0 * px * px * px - 12.0 * px + 1.0;
        grad[1] = py;
        DoubleWell::energy(self, x)
    }
}

impl Target for DoubleWell {
    fn theory(&self) -> &'static str {
        "double_well"
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

    /// Minimum A: (x_A, 0), x_A ≈ -1.773.
    fn initial(&self) -> Vec<f64> {
        vec![Self::stationary_points()[0], 0.0]
    }

    /// `energy`, `action`, `x` (reaction coordinate), `p_a` = `1(x < 0)`, `p_b` = `1(x >= 0)`.
    fn observables(&self) -> Vec<Box<dyn Observable>> {
        let mut obs = energy_observables(self);
        obs.push(FnObservable::boxed("x", |x| x[0]));
        obs.push(FnObservable::boxed("p_a", |x| {
            f64::from(u8::from(x[0] < 0.0))
        }));
        obs.push(FnObservable::boxed("p_b", |x| {
            f64::from(u8::from(x[0] >= 0.0))
        }));
        obs
    }

    /// `delta_f` = F_B - F_A = -ln(p_b / p_a) in units of kT.
    fn derived(&self) -> Vec<Derived> {
        vec![Derived {
            name: "delta_f",
            inputs: vec!["p_a", "p_b"],
            f: |m| -(m[1] / m[0]).ln(),
        }]
    }

    /// See [`DoubleWell::exact_with`]; 12-point panels of one thermal length.
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

    fn target(t: f64) -> DoubleWell {
        DoubleWell::new(&DoubleWellSpec { temperature: t }).unwrap()
    }

    proptest! {
        #![proptest_config(Config { cases: 256, rng_seed: RngSeed::Fixed(11), ..Config::default() })]
        #[test]
        fn force_matches_finite_differences(x in -3.0f64..3.0, y in -3.0f64..3.0, t in 0.3f64..3.0) {
            prop_assert!(force_violation(&target(t), &[x, y], 1e-4, 1e-8) <= 0.0);
        }
    }

    #[test]
    fn stationary_points_have_zero_force_and_known_energies() {
        let dw = target(1.0);
        let [a, barrier, b] = DoubleWell::stationary_points();
        let mut f = [0.0; 2];
        for p in [a, barrier, b] {
            dw.force(&[p, 0.0], &mut f);
            assert!(f[0].abs() < 1e-12 && f[1] == 0.0, "{p}: {f:?}");
        }
        // PHYSICS check (V(x) = x^4 - 6x^2 + x): minima at x = -1.7723 (E = -10.7524) and
        // 1.6888 (E = -7.2893), barrier at 0.0835 (E = 0.0417); four decimals.
        for (x, e, x_ref, e_ref) in [
            (a, dw.energy(&[a, 0.0]), -1.7723, -10.7524),
            (barrier, dw.energy(&[barrier, 0.0]), 0.0835, 0.0417),
            (b, dw.energy(&[b, 0.0]), 1.6888, -7.2893),
        ] {
            assert!(
                (x - x_ref).abs() < 5e-5 && (e - e_ref).abs() < 5e-5,
                "{x} {e}"
            );
        }
        assert_eq!(dw.initial(), vec![a, 0.0]);
    }

    #[test]
    fn quadrature_converges_and_matches_the_separable_integral() {
        for t in [0.2, 1.0, 5.0] {
            let dw = target(t);
            let coarse = dw.exact();
            let fine = dw.exact_with(12, 0.5);
            for (key, value) in &coarse {
                let rel = (value - fine[key]).abs() / fine[key].abs().max(1e-300);
                assert!(rel < 1e-9, "T={t} {key}: {value} vs {}", fine[key]);
            }
            assert!((coarse["p_a"] + coarse["p_b"] - 1.0).abs() < 1e-13);
            let delta_f = (dw.derived()[0].f)(&[coarse["p_a"], coarse["p_b"]]);
            assert!((delta_f - coarse["delta_f"]).abs() < 1e-12);
            let (_, _, edge) = dw.quadrature_box();
            let [x_a, _, _] = DoubleWell::stationary_points();
            assert!(edge >= v(x_a) + 40.0 * t, "T={t}: box edge at {edge}");
            // separable: Z = int exp(-V(x)/T) dx * sqrt(2 pi T), with an independent 1D rule
            let [x_a, _, _] = DoubleWell::stationary_points();
            let rule = CompositeRule::new(20, 0.01, 0.01);
            let w = |x: f64| (-(v(x) - v(x_a)) / t).exp();
            let [zx, zxa, vx] = rule.integrate_1d((-8.0, 8.0), &[0.0], |x| {
                [w(x), if x < 0.0 { w(x) } else { 0.0 }, w(x) * v(x)]
            });
            let ln_z = zx.ln() - v(x_a) / t + 0.5 * (std::f64::consts::TAU * t).ln();
            assert!((coarse["ln_z"] - ln_z).abs() < 1e-10 * ln_z.abs(), "T={t}");
            assert!((coarse["p_a"] - zxa / zx).abs() < 1e-10, "T={t}");
            // <E> = <V> + T/2 (equipartition in y)
            assert!(
                (coarse["energy"] - (vx / zx + 0.5 * t)).abs() < 1e-10 * t,
                "T={t}"
            );
        }
    }

    #[test]
    fn metropolis_agrees_with_quadrature() {
        let dw = target(3.0);
        let exact = dw.exact();
        let means = metropolis_means(&dw, &dw.initial(), 1.5, 2_000_000, 40, 7);
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
    fn rejects_bad_temperature() {
        for t in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let err = DoubleWell::new(&DoubleWellSpec { temperature: t })
                .err()
                .unwrap();
            assert!(err.to_string().contains("temperature"), "{err}");
        }
    }
}
