//! Exact references: Bessel sums, lattice Fourier sums and numerical quadrature.
//!
//! - Free scalar field (phi^4 at lam = 0, m2 > 0), PHYSICS.md conventions:
//!   G(x) = (1/V) sum_p exp(i p.x) / (2 (phat^2 + m2)), p_mu = 2 pi n_mu / L_mu,
//!   phat^2 = sum_mu 4 sin^2(p_mu / 2); chi_2 = sum_x G(x) = 1/(2 m2);
//!   ln Z = (V/2) ln(2 pi) - (1/2) sum_p ln(2 (phat^2 + m2)).
//! - 2D U(1) on a periodic torus with V plaquettes, through the character expansion
//!   exp(beta cos theta) = sum_n I_n(beta) exp(i n theta):
//!
//!   ```text
//!   Z = (2 pi)^(2V) sum_n I_n^V,
//!   <cos theta_P> = sum_n I_n^(V-1) (I_(n-1) + I_(n+1))/2 / sum_n I_n^V,
//!   <Q^2> = -(1/(4 pi^2)) sum_n F''(n) / sum_n F(n),   F(nu) = f_nu^V,
//!   f_nu(beta) = (1/2pi) int_(-pi)^(pi) exp(beta cos phi) cos(nu phi) dphi   (f_n = I_n).
//!   ```
//!
//! The integrals f_nu and their nu-derivatives are computed by composite Gauss-Legendre
//! quadrature on [0, pi] (even integrand), which converges exponentially; every sum is
//! carried relative to its n = 0 term so that I_0(beta)^V never overflows.

pub(crate) mod fourier;

use std::f64::consts::{PI, TAU};

use crate::quadrature::{GaussLegendre, composite};

/// The free-field two-point function G(x) = (1/V) sum_p exp(i p.x) / (2 (phat^2 + m2)) for
/// every site x, in row-major order of `shape`.
///
/// Requires m2 > 0 (at m2 <= 0 the Gaussian is not normalisable and the result is not finite).
///
/// # Shapes
/// `shape = [L0, ..., L(d-1)]`; the result has length V = prod L_mu.
pub fn free_field_propagator(shape: &[usize], m2: f64) -> Vec<f64> {
    let volume = shape.iter().product::<usize>();
    let mut re: Vec<f64> = fourier::momentum_squared(shape)
        .into_iter()
        .map(|phat2| 1.0 / (2.0 * (phat2 + m2)))
        .collect();
    let mut im = vec![0.0; volume];
    fourier::transform(shape, &mut re, &mut im, 1.0);
    re.iter_mut().for_each(|g| *g /= volume as f64);
    re
}

/// ln Z = (V/2) ln(2 pi) - (1/2) sum_p ln(2 (phat^2 + m2)) of the free field
/// (Z = int d^V phi exp(-S), Lebesgue measure). Requires m2 > 0.
pub fn free_field_ln_z(shape: &[usize], m2: f64) -> f64 {
    let volume = shape.iter().product::<usize>() as f64;
    let log_det: f64 = fourier::momentum_squared(shape)
        .into_iter()
        .map(|phat2| (2.0 * (phat2 + m2)).ln())
        .sum();
    0.5 * volume * TAU.ln() - 0.5 * log_det
}

/// Exact expectation values of 2D U(1) gauge theory with the Wilson action on a periodic
/// torus of V plaquettes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct U1Exact {
    /// `<cos theta_P>`.
    pub plaquette: f64,
    /// `<Q^2>`.
    pub q2: f64,
    /// `chi_t = <Q^2> / V`.
    pub chi_t: f64,
    /// ln of int_[0, 2pi)^(2V) exp(-S) d theta = 2V ln(2 pi) + ln sum_n I_n(beta)^V.
    pub ln_z: f64,
    /// `<S> = -beta V <cos theta_P>`.
    pub action: f64,
}

/// Exact U(1) values for lattice `shape` (any extents; only V = L0 L1 enters) at `beta`.
///
/// Requires beta > 0 and V >= 3; accurate to about 1e-12 relative.
pub fn u1_exact(shape: &[usize], beta: f64) -> U1Exact {
    let volume = shape.iter().product::<usize>();
    let v = volume as f64;
    let vi = volume as i32;
    let rule = CharacterRule::new();
    // Characters e^-beta (f_n, f_n', f_n'') relative to f_0.
    let (f0, _, d2f0) = rule.character(0, beta);
    let relative = |(f, df, d2f): (f64, f64, f64)| (f / f0, df / f0, d2f / f0);
    // n = 0 terms (f_-1 = f_1, f_0' = 0).
    let (mut f_prev, mut current) = (1.0, relative(rule.character(1, beta)));
    let mut z = 1.0;
    let mut plaq = current.0;
    let q2_zero = v * d2f0 / f0;
    let mut q2_num = q2_zero;
    let mut n = 1u64;
    loop {
        let (f_n, df, d2f) = current;
        let next = relative(rule.character(n + 1, beta));
        let pow_v2 = f_n.powi(vi - 2);
        // Each n != 0 appears together with -n (all terms are even in n).
        z += 2.0 * pow_v2 * f_n * f_n;
        plaq += 2.0 * pow_v2 * f_n * 0.5 * (f_prev + next.0);
        q2_num += 2.0 * pow_v2 * (v * f_n * d2f + v * (v - 1.0) * df * df);
        // Bound on every later term: |f'| <= pi f_0, |f''| <= pi^2 f_0, f_n decreasing.
        let bound = pow_v2.abs() * v * v * PI * PI;
        if bound < 1e-18 * q2_zero.abs().min(plaq).min(1.0) || n > 1_000_000 {
            break;
        }
        f_prev = f_n;
        current = next;
        n += 1;
    }
    let plaquette = plaq / z;
    let q2 = -q2_num / z / (4.0 * PI * PI);
    let ln_z = 2.0 * v * TAU.ln() + v * (beta + f0.ln()) + z.ln();
    U1Exact {
        plaquette,
        q2,
        chi_t: q2 / v,
        ln_z,
        action: -beta * v * plaquette,
    }
}

/// The modified Bessel function I_n(beta) = (1/pi) int_0^pi exp(beta cos phi) cos(n phi) dphi
/// by quadrature (overflows f64 above beta ~ 700).
pub fn bessel_i(n: u32, beta: f64) -> f64 {
    beta.exp() * CharacterRule::new().character(n as u64, beta).0
}

/// Composite Gauss-Legendre quadrature of the U(1) character integrals.
struct CharacterRule {
    rule: GaussLegendre,
}

impl CharacterRule {
    /// Points per panel.
    const ORDER: usize = 24;

    fn new() -> Self {
        Self {
            rule: GaussLegendre::new(Self::ORDER),
        }
    }

    /// e^-beta (f_n, df/dnu, d2f/dnu2) at integer nu = n:
    ///
    /// ```text
    /// f_n    =  (1/pi) int_0^pi exp(beta cos phi) cos(n phi) dphi,
    /// f_n'   = -(1/pi) int_0^pi phi sin(n phi) exp(beta cos phi) dphi,
    /// f_n''  = -(1/pi) int_0^pi phi^2 cos(n phi) exp(beta cos phi) dphi.
    /// ```
    ///
    /// Panels shrink with the oscillation frequency n and the peak width 1/sqrt(beta).
    fn character(&self, n: u64, beta: f64) -> (f64, f64, f64) {
        let panels = 4 + (n as f64 / 2.0 + 2.0 * beta.sqrt()).ceil() as usize;
        let rule = composite(0.0, PI, panels, &self.rule);
        let (mut f, mut df, mut d2f) = (0.0, 0.0, 0.0);
        for (phi, w) in rule {
            let g = w * (beta * (phi.cos() - 1.0)).exp();
            let (s, c) = (n as f64 * phi).sin_cos();
            f += g * c;
            df -= g * phi * s;
            d2f -= g * phi * phi * c;
        }
        (f / PI, df / PI, d2f / PI)
    }
}

/// Dense linear algebra for the free-field tests: the precision matrix and its Cholesky factor.
#[cfg(test)]
pub(crate) mod dense {
    use crate::geometry::Lattice;

    /// The symmetric matrix A with S = phi^T A phi at lam = 0 (row-major V x V).
    pub fn free_field_matrix(lat: &Lattice, m2: f64) -> Vec<f64> {
        let v = lat.volume();
        let d = lat.ndim();
        let mut a = vec![0.0; v * v];
        for x in 0..v {
            a[x * v + x] += 2.0 * d as f64 + m2;
            for mu in 0..d {
                let y = lat.fwd(x, mu);
                a[x * v + y] -= 1.0;
                a[y * v + x] -= 1.0;
            }
        }
        a
    }

    /// Lower-triangular L with L L^T = a (row-major n x n).
    pub fn cholesky(a: &[f64], n: usize) -> Vec<f64> {
        let mut l = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..=i {
                let s: f64 =
                    a[i * n + j] - (0..j).map(|k| l[i * n + k] * l[j * n + k]).sum::<f64>();
                l[i * n + j] = if i == j { s.sqrt() } else { s / l[j * n + j] };
            }
        }
        l
    }

    /// Inverse of a symmetric positive-definite matrix through its Cholesky factor.
    pub fn spd_inverse(a: &[f64], n: usize) -> Vec<f64> {
        let l = cholesky(a, n);
        let mut inv = vec![0.0; n * n];
        for col in 0..n {
            // Solve L y = e_col, then L^T x = y.
            let mut y = vec![0.0; n];
            for i in 0..n {
                let e = if i == col { 1.0 } else { 0.0 };
                y[i] = (e - (0..i).map(|k| l[i * n + k] * y[k]).sum::<f64>()) / l[i * n + i];
            }
            for i in (0..n).rev() {
                let s: f64 = (i + 1..n).map(|k| l[k * n + i] * inv[k * n + col]).sum();
                inv[i * n + col] = (y[i] - s) / l[i * n + i];
            }
        }
        inv
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geometry::Lattice;

    fn lattice(shape: &[usize]) -> Lattice {
        Lattice::new(&shape.iter().map(|&l| l as i64).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn free_propagator_sums_to_chi2() {
        for shape in [vec![5], vec![3, 4], vec![2, 3, 4], vec![8, 8]] {
            for m2 in [0.05, 0.3, 2.0] {
                let g = free_field_propagator(&shape, m2);
                let chi2: f64 = g.iter().sum();
                assert!(
                    (chi2 - 1.0 / (2.0 * m2)).abs() < 1e-12 / m2,
                    "{shape:?} {m2}"
                );
            }
        }
    }

    /// G(x) and ln Z against the inverse and determinant of the V x V matrix 2A.
    #[test]
    fn free_field_matches_dense_gaussian() {
        for (shape, m2) in [(vec![3, 4], 0.7), (vec![2, 3, 2], 0.2), (vec![7], 1.3)] {
            let lat = lattice(&shape);
            let v = lat.volume();
            let two_a: Vec<f64> = dense::free_field_matrix(&lat, m2)
                .iter()
                .map(|a| 2.0 * a)
                .collect();
            let cov = dense::spd_inverse(&two_a, v);
            let g = free_field_propagator(&shape, m2);
            for x in 0..v {
                let cx = lat.coords(x);
                let direct: f64 = (0..v)
                    .map(|y| {
                        let c: Vec<usize> =
                            lat.coords(y).iter().zip(&cx).map(|(a, b)| a + b).collect();
                        cov[y * v + lat.index(&c)]
                    })
                    .sum::<f64>()
                    / v as f64;
                assert!(
                    (g[x] - direct).abs() < 1e-12,
                    "{shape:?} x={x}: {} vs {direct}",
                    g[x]
                );
            }
            let l = dense::cholesky(&two_a, v);
            let log_det: f64 = (0..v).map(|i| 2.0 * l[i * v + i].ln()).sum();
            let ln_z = 0.5 * v as f64 * TAU.ln() - 0.5 * log_det;
            let exact = free_field_ln_z(&shape, m2);
            assert!(
                (exact - ln_z).abs() < 1e-11 * ln_z.abs(),
                "{exact} vs {ln_z}"
            );
        }
    }

    /// I_n(beta) = sum_k (beta/2)^(2k+n) / (k! (k+n)!).
    fn bessel_series(n: u32, beta: f64) -> f64 {
        let mut term = (0.5 * beta).powi(n as i32) / (1..=n).map(f64::from).product::<f64>();
        let mut sum = 0.0;
        for k in 0..200 {
            sum += term;
            term *= 0.25 * beta * beta / ((k + 1) as f64 * (k + 1 + n) as f64);
        }
        sum
    }

    #[test]
    fn bessel_quadrature_matches_power_series() {
        for beta in [0.1, 1.0, 4.5, 12.0, 30.0] {
            for n in 0..12 {
                let (q, s) = (bessel_i(n, beta), bessel_series(n, beta));
                // Absolute accuracy relative to I_0: the quadrature integrates exp(beta cos).
                let scale = bessel_series(0, beta);
                assert!(
                    (q - s).abs() < 1e-14 * scale,
                    "n={n} beta={beta}: {q} vs {s}"
                );
                if s > 1e-2 * scale {
                    assert!((q - s).abs() < 1e-13 * s, "n={n} beta={beta}: {q} vs {s}");
                }
            }
        }
    }

    #[test]
    fn plaquette_tends_to_bessel_ratio() {
        for beta in [0.5, 2.0, 6.0] {
            let e = u1_exact(&[32, 32], beta);
            let ratio = bessel_series(1, beta) / bessel_series(0, beta);
            assert!(
                (e.plaquette - ratio).abs() < 1e-12,
                "{} vs {ratio}",
                e.plaquette
            );
        }
        // On a small torus the n != 0 sectors matter.
        let small = u1_exact(&[2, 2], 2.0);
        let ratio = bessel_series(1, 2.0) / bessel_series(0, 2.0);
        assert!((small.plaquette - ratio).abs() > 1e-3);
    }

    #[test]
    fn plaquette_is_derivative_of_ln_z() {
        for shape in [[2, 2], [3, 5], [4, 4], [16, 16]] {
            let v = (shape[0] * shape[1]) as f64;
            for beta in [0.3, 1.0, 3.0, 6.0] {
                let h = 1e-3;
                let ln_z = |b: f64| u1_exact(&shape, b).ln_z;
                let derivative = (-ln_z(beta + 2.0 * h) + 8.0 * ln_z(beta + h)
                    - 8.0 * ln_z(beta - h)
                    + ln_z(beta - 2.0 * h))
                    / (12.0 * h);
                let e = u1_exact(&shape, beta);
                let expected = v * e.plaquette;
                assert!(
                    (derivative - expected).abs() < 1e-8 * expected,
                    "{shape:?} beta={beta}: {derivative} vs {expected}"
                );
                assert!((e.action + beta * expected).abs() < 1e-12 * beta * expected);
                assert!((e.chi_t - e.q2 / v).abs() < 1e-15 * e.q2);
            }
        }
    }

    #[test]
    fn q2_tends_to_v_over_12_at_strong_coupling() {
        for shape in [[2, 2], [4, 4], [3, 6]] {
            let v = (shape[0] * shape[1]) as f64;
            let e = u1_exact(&shape, 1e-6);
            assert!((e.q2 - v / 12.0).abs() < 1e-4 * v, "{shape:?}: {}", e.q2);
        }
    }

    /// On the 2 x 2 torus (V = 4), <Q^2> and Z from the plaquette-angle representation
    /// Z = (2 pi)^(V+1) sum_Q Z_Q, Z_Q = int_(-pi,pi]^V prod_P exp(beta cos theta_P)
    /// delta(sum_P theta_P - 2 pi Q) = (g2 * g2)(2 pi Q), with g2 = g * g the convolution of
    /// g(theta) = exp(beta cos theta) on (-pi, pi]. Each convolution is integrated piecewise
    /// between its kinks with composite Gauss-Legendre: independent of the character expansion.
    #[test]
    fn u1_two_by_two_matches_plaquette_convolution() {
        let rule = GaussLegendre::new(24);
        let integrate = |a: f64, b: f64, f: &dyn Fn(f64) -> f64| -> f64 {
            composite(a, b, 16, &rule)
                .into_iter()
                .map(|(t, w)| w * f(t))
                .sum()
        };
        for beta in [0.5, 1.5, 4.0] {
            let g = |t: f64| (beta * t.cos()).exp();
            let g2 = |s: f64| {
                let (lo, hi) = ((s - PI).max(-PI), (s + PI).min(PI));
                if hi <= lo {
                    0.0
                } else {
                    integrate(lo, hi, &|c| g(c) * g(s - c))
                }
            };
            let z_q = |q: f64| {
                let s = TAU * q;
                let (lo, hi) = ((s - TAU).max(-TAU), (s + TAU).min(TAU));
                let mut cuts = vec![lo, hi];
                cuts.extend([0.0, s].into_iter().filter(|&c| c > lo && c < hi));
                cuts.sort_by(f64::total_cmp);
                cuts.windows(2)
                    .map(|w| integrate(w[0], w[1], &|t| g2(t) * g2(s - t)))
                    .sum::<f64>()
            };
            let (z0, z1) = (z_q(0.0), z_q(1.0));
            let q2 = 2.0 * z1 / (z0 + 2.0 * z1);
            let ln_z = 5.0 * TAU.ln() + (z0 + 2.0 * z1).ln();
            let e = u1_exact(&[2, 2], beta);
            assert!(
                (e.q2 - q2).abs() < 1e-11 * q2,
                "beta={beta}: {} vs {q2}",
                e.q2
            );
            assert!(
                (e.ln_z - ln_z).abs() < 1e-11 * ln_z.abs(),
                "beta={beta}: {} vs {ln_z}",
                e.ln_z
            );
        }
    }
}
