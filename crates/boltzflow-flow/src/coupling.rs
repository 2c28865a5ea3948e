//! The element-wise maths of an affine coupling layer (Dinh et al. 2016, arXiv:1605.08803;
//! lattice form: Albergo et al. 2021, arXiv:2101.08176), apart from the network that
//! produces its parameters.
//!
//! On an active site, with scale s and shift t computed from the frozen sites:
//!
//! ```text
//! forward:  y = x e^s + t,        log|dy/dx| = s
//! inverse:  x = (y - t) e^(-s),   log|dx/dy| = -s
//! ```
//!
//! Frozen sites pass unchanged, so the Jacobian is triangular and log|det J| is the sum of s
//! over the active sites. Every function works on equal-length slices (one site, all samples
//! of a chunk side by side); log-dets are accumulated per sample in f64.

use crate::real::Real;

/// In place `x <- x e^s + t`, and `log_det[b] += s[b]`.
///
/// Shapes: all slices `[lanes]`.
#[inline]
pub fn forward<T: Real>(x: &mut [T], s: &[T], t: &[T], log_det: &mut [f64]) {
    for (((x, &s), &t), ld) in x.iter_mut().zip(s).zip(t).zip(log_det) {
        *x = *x * s.exp() + t;
        *ld += s.to_f64();
    }
}

/// In place `y <- (y - t) e^(-s)`, and `log_det[b] -= s[b]` (the inverse's log-det).
///
/// Shapes: all slices `[lanes]`.
#[inline]
pub fn inverse<T: Real>(y: &mut [T], s: &[T], t: &[T], log_det: &mut [f64]) {
    for (((y, &s), &t), ld) in y.iter_mut().zip(s).zip(t).zip(log_det) {
        *y = (*y - t) * (-s).exp();
        *ld -= s.to_f64();
    }
}

/// Backward through `y = x e^s + t` for a loss L that also contains `c sum s` (c =
/// `log_det_weight`, e.g. -1/B for the reverse KL, whose log q contains -log|det J|):
///
/// ```text
/// dL/dx = g e^s,   dL/ds = g x e^s + c,   dL/dt = g,     g = dL/dy
/// ```
///
/// `grad` holds g on entry and dL/dx on exit; `x` is the layer's input.
/// Shapes: all slices `[lanes]`.
#[inline]
pub fn backward<T: Real>(
    grad: &mut [T],
    x: &[T],
    s: &[T],
    log_det_weight: T,
    grad_s: &mut [T],
    grad_t: &mut [T],
) {
    for ((((g, &x), &s), gs), gt) in grad.iter_mut().zip(x).zip(s).zip(grad_s).zip(grad_t) {
        let scale = s.exp();
        *gt = *g;
        *gs = *g * x * scale + log_det_weight;
        *g = *g * scale;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inverse_undoes_forward_and_log_dets_cancel() {
        let x0 = [0.3, -1.2, 2.5, 0.0];
        let s = [0.7, -0.4, 0.0, 1.9];
        let t = [-0.2, 0.5, 1.0, -3.0];
        let mut x = x0;
        let mut ld = [0.1f64; 4];
        forward(&mut x, &s, &t, &mut ld);
        for b in 0..4 {
            assert!((x[b] - (x0[b] * f64::exp(s[b]) + t[b])).abs() < 1e-15);
        }
        inverse(&mut x, &s, &t, &mut ld);
        for b in 0..4 {
            assert!((x[b] - x0[b]).abs() < 1e-14);
            assert!((ld[b] - 0.1).abs() < 1e-15);
        }
    }

    /// dL/dx, dL/ds, dL/dt for L = r y + c s against central differences.
    #[test]
    fn backward_matches_finite_differences() {
        let (x, s, t, r, c) = (0.8f64, -0.6f64, 0.3f64, 1.7f64, -0.25f64);
        let loss = |x: f64, s: f64, t: f64| {
            let (mut y, mut ld) = ([x], [0.0]);
            forward(&mut y, &[s], &[t], &mut ld);
            r * y[0] + c * ld[0]
        };
        let (mut g, mut gs, mut gt) = ([r], [0.0], [0.0]);
        backward(&mut g, &[x], &[s], c, &mut gs, &mut gt);
        let h = 1e-5;
        let d = |f: &dyn Fn(f64) -> f64, v: f64| (f(v + h) - f(v - h)) / (2.0 * h);
        assert!((d(&|v| loss(v, s, t), x) - g[0]).abs() < 1e-8);
        assert!((d(&|v| loss(x, v, t), s) - gs[0]).abs() < 1e-8);
        assert!((d(&|v| loss(x, s, v), t) - gt[0]).abs() < 1e-8);
    }
}
