//! Rational-quadratic spline couplings for the native engine (Durkan et al. 2019,
//! arXiv:1906.04032), element by element in f64, with the exact gradient of
//! L = g y + c log|dy/dx| with respect to x and the raw parameters.
//!
//! Conventions (PHYSICS.md, identical to `boltzflow_burn::bijector`): K bins on [-B, B] with
//! raw parameters `[w_raw (K), h_raw (K), d_raw (K - 1)]`,
//!
//! ```text
//! w = m + (1 - K m) softmax(w_raw),  h = m + (1 - K m) softmax(h_raw)     (fractions of 2B)
//! x_k = -B + 2B sum_(j<k) w_j (x_K = B exactly), likewise y_k
//! d_0 = d_K = 1,  d_i = m_d + softplus(d_raw_(i-1))
//! theta = (x - x_k) / W,  s = H / W,  W = x_(k+1) - x_k,  H = y_(k+1) - y_k
//! y = y_k + H [s theta^2 + d_k theta (1 - theta)] / [s + (d_k + d_(k+1) - 2 s) theta (1 - theta)]
//! ```
//!
//! with identity tails outside [-B, B]. The inverse uses the stable root
//! theta = 2c / (-b - sqrt(b^2 - 4ac)) with the discriminant clamped at 0.
//!
//! # Gradient
//! y and log|dy/dx| depend on the raw parameters only through the bin's six local quantities
//! (x_k, W, y_k, H, d_k, d_(k+1)); their partial derivatives (and d/dx) come from forward-mode
//! dual numbers, then the chain rule through the knot sums and the softmax,
//! d w_j / d w_raw_i = (1 - K m) w'_j (delta_ij - w'_i) with w' = softmax(w_raw), and through
//! softplus' = sigmoid.

use std::ops::{Add, Div, Mul, Sub};

/// Minimum bin width and height (fractions of the interval).
pub const MIN_BIN: f64 = 1e-3;
/// Minimum knot derivative.
pub const MIN_DERIVATIVE: f64 = 1e-3;
/// Most bins the native spline supports (its knots live on the stack: no allocation per
/// element in the hot loop).
pub const MAX_BINS: usize = 64;

/// A spline with `bins` bins on [-bound, bound].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spline {
    /// K >= 2.
    pub bins: usize,
    /// B > 0.
    pub bound: f64,
}

/// Knots of one spline: positions, heights and derivatives (first K + 1 entries), and the
/// softmax fractions of widths and heights (first K).
struct Knots {
    x: [f64; MAX_BINS + 1],
    y: [f64; MAX_BINS + 1],
    d: [f64; MAX_BINS + 1],
    soft_w: [f64; MAX_BINS],
    soft_h: [f64; MAX_BINS],
}

/// softmax(raw) into `out[..raw.len()]`.
fn softmax(raw: &[f64], out: &mut [f64; MAX_BINS]) {
    let max = raw.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mut sum = 0.0;
    for (o, r) in out.iter_mut().zip(raw) {
        *o = (r - max).exp();
        sum += *o;
    }
    for o in &mut out[..raw.len()] {
        *o /= sum;
    }
}

/// ln(1 + e^x) without overflow.
fn softplus(x: f64) -> f64 {
    x.max(0.0) + (-x.abs()).exp().ln_1p()
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

impl Spline {
    /// Raw parameters per variable, 3K - 1.
    pub fn params(&self) -> usize {
        3 * self.bins - 1
    }

    /// The raw parameters of the identity map: zero widths/heights logits and d_raw with
    /// m_d + softplus(d_raw) = 1.
    pub fn identity(&self) -> Vec<f64> {
        let mut raw = vec![0.0; self.params()];
        raw[2 * self.bins..].fill((1.0 - MIN_DERIVATIVE).exp_m1().ln());
        raw
    }

    fn knots(&self, raw: &[f64]) -> Knots {
        knots(self.bins, (-self.bound, self.bound), raw, false)
    }

    /// y = f(x) and log|dy/dx|.
    pub fn forward(&self, x: f64, raw: &[f64]) -> (f64, f64) {
        if x.abs() > self.bound || x.is_nan() {
            return (x, 0.0);
        }
        evaluate(self.bins, &self.knots(raw), x)
    }

    /// x = f^-1(y) and log|dx/dy|.
    pub fn inverse(&self, y: f64, raw: &[f64]) -> (f64, f64) {
        if y.abs() > self.bound || y.is_nan() {
            return (y, 0.0);
        }
        let knots = self.knots(raw);
        let x = invert(&knots, locate(self.bins, y, &knots.y), y);
        (x, -evaluate(self.bins, &knots, x).1)
    }

    /// Gradient of L = g y(x) + c log|dy/dx| at `x`: returns dL/dx and writes dL/draw into
    /// `grad_raw` (`[3K - 1]`, overwritten).
    pub fn backward(&self, x: f64, raw: &[f64], g: f64, c: f64, grad_raw: &mut [f64]) -> f64 {
        grad_raw.fill(0.0);
        if x.abs() > self.bound || x.is_nan() {
            return g;
        }
        let knots = self.knots(raw);
        backward(
            self.bins,
            2.0 * self.bound,
            &knots,
            x,
            raw,
            (g, c),
            false,
            grad_raw,
        )
    }
}

/// A circular rational-quadratic spline (Rezende et al. 2020, arXiv:2002.02428) with `bins`
/// bins mapping [0, 2 pi) onto itself: raw parameters `[w_raw (K), h_raw (K), d_raw (K)]`,
/// knots from (0, 0) to (2 pi, 2 pi), d_k = m_d + softplus(d_raw_k) for k < K and d_K = d_0,
/// so that the map and its derivative are continuous on the circle (PHYSICS.md; the layout of
/// `boltzflow_burn`'s circular spline). The inverse is the same closed-form root as
/// [`Spline`]'s.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CircularSpline {
    /// 2 <= K <= [`MAX_BINS`].
    pub bins: usize,
}

impl CircularSpline {
    /// Raw parameters per variable, 3K.
    pub fn params(&self) -> usize {
        3 * self.bins
    }

    /// The raw parameters of the identity map.
    pub fn identity(&self) -> Vec<f64> {
        let mut raw = vec![0.0; self.params()];
        raw[2 * self.bins..].fill((1.0 - MIN_DERIVATIVE).exp_m1().ln());
        raw
    }

    fn knots(&self, raw: &[f64]) -> Knots {
        knots(self.bins, (0.0, std::f64::consts::TAU), raw, true)
    }

    /// y = f(x) and log|dy/dx| for x in [0, 2 pi) (y in [0, 2 pi]).
    pub fn forward(&self, x: f64, raw: &[f64]) -> (f64, f64) {
        evaluate(self.bins, &self.knots(raw), x)
    }

    /// x = f^-1(y) and log|dx/dy| for y in [0, 2 pi).
    pub fn inverse(&self, y: f64, raw: &[f64]) -> (f64, f64) {
        let knots = self.knots(raw);
        let x = invert(&knots, locate(self.bins, y, &knots.y), y);
        (x, -evaluate(self.bins, &knots, x).1)
    }

    /// Gradient of L = g y(x) + c log|dy/dx| at x in [0, 2 pi): returns dL/dx and writes
    /// dL/draw into `grad_raw` (`[3K]`, overwritten).
    pub fn backward(&self, x: f64, raw: &[f64], g: f64, c: f64, grad_raw: &mut [f64]) -> f64 {
        grad_raw.fill(0.0);
        let knots = self.knots(raw);
        backward(
            self.bins,
            std::f64::consts::TAU,
            &knots,
            x,
            raw,
            (g, c),
            true,
            grad_raw,
        )
    }
}

/// Knots of a spline with `bins` bins on `[lo, hi]`: d_0 = d_K = 1 and K - 1 inner derivative
/// parameters, or (`circular`) K derivative parameters with d_K = d_0.
fn knots(bins: usize, (lo, hi): (f64, f64), raw: &[f64], circular: bool) -> Knots {
    let k = bins;
    debug_assert!((2..=MAX_BINS).contains(&k));
    let positions = |soft: &[f64; MAX_BINS], p: &mut [f64; MAX_BINS + 1]| {
        p[0] = lo;
        let mut c = 0.0;
        for (i, s) in soft[..k - 1].iter().enumerate() {
            c += MIN_BIN + (1.0 - k as f64 * MIN_BIN) * s;
            p[i + 1] = lo + (hi - lo) * c;
        }
        p[k] = hi;
    };
    let mut knots = Knots {
        x: [0.0; MAX_BINS + 1],
        y: [0.0; MAX_BINS + 1],
        // d_0 = d_K = 1 unless circular; the others are set below.
        d: [1.0; MAX_BINS + 1],
        soft_w: [0.0; MAX_BINS],
        soft_h: [0.0; MAX_BINS],
    };
    softmax(&raw[..k], &mut knots.soft_w);
    softmax(&raw[k..2 * k], &mut knots.soft_h);
    positions(&knots.soft_w, &mut knots.x);
    positions(&knots.soft_h, &mut knots.y);
    if circular {
        for (i, &r) in raw[2 * k..3 * k].iter().enumerate() {
            knots.d[i] = MIN_DERIVATIVE + softplus(r);
        }
        knots.d[k] = knots.d[0];
    } else {
        for (i, &r) in raw[2 * k..3 * k - 1].iter().enumerate() {
            knots.d[i + 1] = MIN_DERIVATIVE + softplus(r);
        }
    }
    knots
}

/// Bin of `v` among the `bins + 1` knot positions `knots` (number of inner knots <= v).
fn locate(bins: usize, v: f64, knots: &[f64]) -> usize {
    knots[1..bins].iter().filter(|&&k| v >= k).count()
}

/// y = f(x) and log|dy/dx| inside the knots' interval.
fn evaluate(bins: usize, knots: &Knots, x: f64) -> (f64, f64) {
    let k = locate(bins, x, &knots.x);
    rq(x, local(knots, k).map(|v| v.v))
}

/// The x of bin k with f(x) = y: the stable root theta = 2c / (-b - sqrt(b^2 - 4ac)).
fn invert(knots: &Knots, k: usize, y: f64) -> f64 {
    let (xk, w) = (knots.x[k], knots.x[k + 1] - knots.x[k]);
    let (yk, h) = (knots.y[k], knots.y[k + 1] - knots.y[k]);
    let (d0, d1) = (knots.d[k], knots.d[k + 1]);
    let s = h / w;
    let dy = y - yk;
    let curvature = d0 + d1 - 2.0 * s;
    let a = h * (s - d0) + dy * curvature;
    let b = h * d0 - dy * curvature;
    let c = -s * dy;
    let disc = (b * b - 4.0 * a * c).max(0.0);
    let theta = (2.0 * c / (-b - disc.sqrt())).clamp(0.0, 1.0);
    xk + theta * w
}

/// dL/dx and dL/draw (into `grad_raw`, zeroed by the caller) of L = g y + c log|dy/dx| at
/// `x` inside the spline's interval of width `span`.
#[allow(clippy::too_many_arguments)]
fn backward(
    k_bins: usize,
    span: f64,
    knots: &Knots,
    x: f64,
    raw: &[f64],
    (g, c): (f64, f64),
    circular: bool,
    grad_raw: &mut [f64],
) -> f64 {
    let k = locate(k_bins, x, &knots.x);
    let (y, ld) = rq(D::var(x, 0), local(knots, k));
    // dL/d(x, x_k, W, y_k, H, d_k, d_(k+1)).
    let grad: [f64; N] = std::array::from_fn(|i| g * y.d[i] + c * ld.d[i]);
    // Knot positions and widths as functions of the fractions w_j (j < K): x_k = lo +
    // span sum_(j<k) w_j; W = span w_k, except for the last bin where x_K = hi.
    let fraction_grad = |g_pos: f64, g_width: f64| -> [f64; MAX_BINS] {
        std::array::from_fn(|j| {
            if j >= k_bins {
                return 0.0;
            }
            let from_pos = if j < k { g_pos * span } else { 0.0 };
            let from_width = if k + 1 < k_bins {
                if j == k { g_width * span } else { 0.0 }
            } else if j < k {
                -g_width * span
            } else {
                0.0
            };
            from_pos + from_width
        })
    };
    let scale = 1.0 - k_bins as f64 * MIN_BIN;
    let through_softmax = |gf: &[f64; MAX_BINS], soft: &[f64; MAX_BINS], out: &mut [f64]| {
        let dot: f64 = gf[..k_bins]
            .iter()
            .zip(&soft[..k_bins])
            .map(|(g, a)| g * a)
            .sum();
        for i in 0..k_bins {
            out[i] = scale * soft[i] * (gf[i] - dot);
        }
    };
    let (gw, rest) = grad_raw.split_at_mut(k_bins);
    let (gh, gd) = rest.split_at_mut(k_bins);
    through_softmax(&fraction_grad(grad[1], grad[2]), &knots.soft_w, gw);
    through_softmax(&fraction_grad(grad[3], grad[4]), &knots.soft_h, gh);
    let d_raw = &raw[2 * k_bins..];
    if circular {
        let next = (k + 1) % k_bins;
        gd[k] += grad[5] * sigmoid(d_raw[k]);
        gd[next] += grad[6] * sigmoid(d_raw[next]);
    } else {
        if k >= 1 {
            gd[k - 1] += grad[5] * sigmoid(d_raw[k - 1]);
        }
        if k + 1 < k_bins {
            gd[k] += grad[6] * sigmoid(d_raw[k]);
        }
    }
    grad[0]
}

/// The bin's local quantities as dual variables 1..=6: (x_k, W, y_k, H, d_k, d_(k+1)).
fn local(knots: &Knots, k: usize) -> [D; 6] {
    [
        D::var(knots.x[k], 1),
        D::var(knots.x[k + 1] - knots.x[k], 2),
        D::var(knots.y[k], 3),
        D::var(knots.y[k + 1] - knots.y[k], 4),
        D::var(knots.d[k], 5),
        D::var(knots.d[k + 1], 6),
    ]
}

/// Arithmetic that [`rq`] needs: plain f64 (forward and inverse) or dual numbers (gradient).
trait Scalar:
    Copy + Add<Output = Self> + Sub<Output = Self> + Mul<Output = Self> + Div<Output = Self>
{
    fn constant(v: f64) -> Self;
    fn ln(self) -> Self;
}

impl Scalar for f64 {
    fn constant(v: f64) -> Self {
        v
    }
    fn ln(self) -> Self {
        f64::ln(self)
    }
}

impl Scalar for D {
    fn constant(v: f64) -> Self {
        D::constant(v)
    }
    fn ln(self) -> Self {
        D::ln(self)
    }
}

/// y and log|dy/dx| of one rational-quadratic bin with local quantities
/// (x_k, W, y_k, H, d_k, d_(k+1)).
fn rq<S: Scalar>(x: S, [xk, w, yk, h, d0, d1]: [S; 6]) -> (S, S) {
    let one = S::constant(1.0);
    let two = S::constant(2.0);
    let theta = (x - xk) / w;
    let s = h / w;
    let mixed = theta * (one - theta);
    let den = s + (d0 + d1 - two * s) * mixed;
    let y = yk + h * (s * theta * theta + d0 * mixed) / den;
    let one_minus = one - theta;
    let numerator = s * s * (d1 * theta * theta + two * s * mixed + d0 * one_minus * one_minus);
    (y, numerator.ln() - two * den.ln())
}

/// Number of dual directions: x and the six local quantities.
const N: usize = 7;

/// A forward-mode dual number with [`N`] directions.
#[derive(Clone, Copy, Debug)]
struct D {
    v: f64,
    d: [f64; N],
}

impl D {
    fn constant(v: f64) -> Self {
        Self { v, d: [0.0; N] }
    }
    fn var(v: f64, i: usize) -> Self {
        let mut d = [0.0; N];
        d[i] = 1.0;
        Self { v, d }
    }
    fn ln(self) -> Self {
        Self {
            v: self.v.ln(),
            d: self.d.map(|d| d / self.v),
        }
    }
}

impl Add for D {
    type Output = Self;
    fn add(self, o: Self) -> Self {
        Self {
            v: self.v + o.v,
            d: std::array::from_fn(|i| self.d[i] + o.d[i]),
        }
    }
}

impl Sub for D {
    type Output = Self;
    fn sub(self, o: Self) -> Self {
        Self {
            v: self.v - o.v,
            d: std::array::from_fn(|i| self.d[i] - o.d[i]),
        }
    }
}

impl Mul for D {
    type Output = Self;
    // The product rule: d(uv) = u' v + u v'.
    #[allow(clippy::suspicious_arithmetic_impl)]
    fn mul(self, o: Self) -> Self {
        Self {
            v: self.v * o.v,
            d: std::array::from_fn(|i| self.d[i] * o.v + self.v * o.d[i]),
        }
    }
}

impl Div for D {
    type Output = Self;
    #[allow(clippy::suspicious_arithmetic_impl)]
    fn div(self, o: Self) -> Self {
        let inv = 1.0 / o.v;
        Self {
            v: self.v * inv,
            d: std::array::from_fn(|i| (self.d[i] - self.v * inv * o.d[i]) * inv),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(spline: &Spline, seed: u64) -> Vec<f64> {
        // A deterministic spread of values in [-1.5, 1.5].
        (0..spline.params())
            .map(|i| (((i as u64 * 2654435761 + seed * 97) % 1000) as f64 / 1000.0 - 0.5) * 3.0)
            .collect()
    }

    #[test]
    fn inverse_undoes_forward_and_log_dets_cancel() {
        let spline = Spline {
            bins: 5,
            bound: 3.0,
        };
        let r = raw(&spline, 1);
        for i in 0..200 {
            let x = -4.0 + 8.0 * i as f64 / 199.0;
            let (y, ld) = spline.forward(x, &r);
            let (back, ld_inv) = spline.inverse(y, &r);
            assert!((back - x).abs() < 1e-12, "{x}: {back}");
            assert!((ld + ld_inv).abs() < 1e-12);
        }
    }

    /// dL/dx and dL/draw for L = g y + c ld against central differences, inside every bin
    /// and in the tails.
    #[test]
    fn backward_matches_finite_differences() {
        for (bins, seed) in [(2, 3), (4, 5), (8, 7)] {
            let spline = Spline { bins, bound: 2.5 };
            let r = raw(&spline, seed);
            let (g, c) = (0.7, -1.3);
            let loss = |x: f64, r: &[f64]| {
                let (y, ld) = spline.forward(x, r);
                g * y + c * ld
            };
            for i in 0..40 {
                let x = -3.0 + 6.0 * (i as f64 + 0.37) / 40.0;
                let mut grad = vec![0.0; spline.params()];
                let gx = spline.backward(x, &r, g, c, &mut grad);
                let h = 1e-6;
                let num_x = (loss(x + h, &r) - loss(x - h, &r)) / (2.0 * h);
                assert!(
                    (gx - num_x).abs() < 1e-6 * (1.0 + num_x.abs()),
                    "x {x}: {gx} vs {num_x}"
                );
                for p in 0..spline.params() {
                    let (mut up, mut down) = (r.clone(), r.clone());
                    up[p] += h;
                    down[p] -= h;
                    let num = (loss(x, &up) - loss(x, &down)) / (2.0 * h);
                    assert!(
                        (grad[p] - num).abs() < 1e-6 * (1.0 + num.abs()),
                        "K {bins}, x {x}, raw {p}: {} vs {num}",
                        grad[p]
                    );
                }
            }
        }
    }

    #[test]
    fn identity_parameters_give_the_identity() {
        let spline = Spline {
            bins: 6,
            bound: 4.0,
        };
        let r = spline.identity();
        for x in [-3.9, -1.0, 0.0, 0.3, 2.2] {
            let (y, ld) = spline.forward(x, &r);
            assert!((y - x).abs() < 1e-12 && ld.abs() < 1e-12, "{x}: {y} {ld}");
        }
    }
}
