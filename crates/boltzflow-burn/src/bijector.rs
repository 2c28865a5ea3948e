//! The element-wise maths of coupling transforms, as plain tensor functions apart from the
//! networks that produce their parameters (distrax / zuko style).
//!
//! Every transform maps the active variables `x [N, M]` (N samples, M active variables each)
//! with per-variable parameters `params [N, M, P]` and returns `(y [N, M], log|dy/dx| [N, M])`
//! element-wise; the coupling layer sums the log-dets over the active variables. The inverse
//! returns the inverse's log-det, `-log|dy/dx|` at the preimage, so forward and inverse
//! log-dets cancel.
//!
//! | transform | P | forward |
//! |---|---|---|
//! | additive (NICE, Dinh et al. 2014) | 1 | y = x + t |
//! | affine (RealNVP, Dinh et al. 2016) | 2 | y = x e^s + t, s bounded by the conditioner's tanh |
//! | rational-quadratic spline (Durkan et al. 2019) | 3K - 1 | below, identity tails outside [-B, B] |
//! | circular rational-quadratic spline (Rezende et al. 2020) | 3K | below, on [0, 2 pi) |
//!
//! # Rational-quadratic spline (arXiv:1906.04032; conventions of PHYSICS.md)
//! K bins on [-B, B]; raw parameters `[w_raw (K), h_raw (K), d_raw (K - 1)]` per variable:
//!
//! ```text
//! w = m_w + (1 - K m_w) softmax(w_raw),   h = m_h + (1 - K m_h) softmax(h_raw)   (fractions of 2B)
//! d_inner = m_d + softplus(d_raw),         d_0 = d_K = 1 (linear tails continue with slope 1)
//! theta = (x - x_k) / w_k,  s_k = h_k / w_k,  on the bin k with x_k <= x < x_(k+1):
//! y = y_k + h_k [s_k theta^2 + d_k theta (1 - theta)] / [s_k + (d_k + d_(k+1) - 2 s_k) theta (1 - theta)]
//! dy/dx = s_k^2 [d_(k+1) theta^2 + 2 s_k theta (1 - theta) + d_k (1 - theta)^2] / den^2
//! ```
//!
//! The inverse solves a theta^2 + b theta + c = 0 by the stable root
//! theta = 2c / (-b - sqrt(b^2 - 4ac)) with the discriminant clamped at 0 (nflows issue 87).
//! The bin search is a comparison sum (branch-free); values outside [-B, B] are clamped before
//! the spline maths and replaced by the identity afterwards, so no input gives NaN.
//!
//! The circular spline uses knots from 0 to 2 pi, K inner-and-boundary derivatives with
//! d_K = d_0 (so the map is smooth on the circle) and wraps its input into [0, 2 pi) first.

use std::f64::consts::PI;

use burn::tensor::activation::{softmax, softplus};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};
use serde::{Deserialize, Serialize};

use crate::{FlowError, Result};

/// Minimum bin width (fraction of the interval), height and derivative of the splines.
pub const MIN_BIN: f64 = 1e-3;
/// Minimum derivative at the spline knots.
pub const MIN_DERIVATIVE: f64 = 1e-3;

/// d_raw whose derivative m_d + softplus(d_raw) is 1: ln(e^(1 - m_d) - 1). Conditioners start
/// their derivative outputs here so that a fresh spline layer is the identity.
pub fn identity_derivative_raw() -> f64 {
    (1.0 - MIN_DERIVATIVE).exp_m1().ln()
}

/// The element-wise transform of a coupling layer.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Transform {
    /// y = x + t.
    Additive,
    /// y = x e^s + t.
    Affine,
    /// Rational-quadratic spline with `bins` bins on [-bound, bound] and identity tails.
    Spline {
        /// Number of bins K (>= 2).
        bins: usize,
        /// Half-width B of the spline interval (> 0).
        bound: f64,
    },
    /// Circular rational-quadratic spline with `bins` bins on [0, 2 pi).
    CircularSpline {
        /// Number of bins K (>= 2).
        bins: usize,
    },
}

impl Transform {
    /// Checks K >= 2 and B > 0; the error names the key and the fix.
    pub fn validate(&self) -> Result<()> {
        let bins = match *self {
            Self::Additive | Self::Affine => return Ok(()),
            Self::Spline { bins, bound } => {
                if !(bound > 0.0 && bound.is_finite()) {
                    return Err(FlowError::InvalidConfig {
                        name: "bound",
                        value: bound.to_string(),
                        fix: "the spline interval [-bound, bound] needs a finite bound > 0, e.g. bound = 5.0",
                    });
                }
                bins
            }
            Self::CircularSpline { bins } => bins,
        };
        if bins < 2 {
            return Err(FlowError::InvalidConfig {
                name: "bins",
                value: bins.to_string(),
                fix: "a spline needs at least 2 bins, e.g. bins = 8",
            });
        }
        if (bins as f64) * MIN_BIN >= 1.0 {
            return Err(FlowError::InvalidConfig {
                name: "bins",
                value: bins.to_string(),
                fix: "bins times the minimum bin width 1e-3 must stay below 1: use fewer than 1000 bins",
            });
        }
        Ok(())
    }

    /// Parameters P per transformed variable.
    pub fn params_per_variable(&self) -> usize {
        match *self {
            Self::Additive => 1,
            Self::Affine => 2,
            Self::Spline { bins, .. } => 3 * bins - 1,
            Self::CircularSpline { bins } => 3 * bins,
        }
    }

    /// The value of each raw parameter that makes the transform the identity (conditioners
    /// initialise their output bias to it).
    pub fn identity_params(&self) -> Vec<f64> {
        let p = self.params_per_variable();
        match *self {
            Self::Additive | Self::Affine => vec![0.0; p],
            Self::Spline { bins, .. } | Self::CircularSpline { bins } => {
                let mut raw = vec![0.0; p];
                raw[2 * bins..].fill(identity_derivative_raw());
                raw
            }
        }
    }

    /// Forward map of the active variables. Shapes: `x [N, M]`, `params [N, M, P]`; returns
    /// `(y [N, M], log|dy/dx| [N, M])`.
    pub fn forward<B: Backend>(
        &self,
        x: Tensor<B, 2>,
        params: Tensor<B, 3>,
    ) -> (Tensor<B, 2>, Tensor<B, 2>) {
        self.apply(x, params, false)
    }

    /// Inverse map. Shapes as [`Transform::forward`]; returns `(x, log|dx/dy|)`.
    pub fn inverse<B: Backend>(
        &self,
        y: Tensor<B, 2>,
        params: Tensor<B, 3>,
    ) -> (Tensor<B, 2>, Tensor<B, 2>) {
        self.apply(y, params, true)
    }

    fn apply<B: Backend>(
        &self,
        x: Tensor<B, 2>,
        params: Tensor<B, 3>,
        inverse: bool,
    ) -> (Tensor<B, 2>, Tensor<B, 2>) {
        let channel = |i: usize| -> Tensor<B, 2> {
            let [n, m, _] = params.dims();
            params.clone().slice([0..n, 0..m, i..i + 1]).reshape([n, m])
        };
        match (*self, inverse) {
            (Self::Additive, false) => {
                let ld = x.zeros_like();
                (additive(x, channel(0)), ld)
            }
            (Self::Additive, true) => {
                let ld = x.zeros_like();
                (additive(x, -channel(0)), ld)
            }
            (Self::Affine, false) => affine(x, channel(0), channel(1)),
            (Self::Affine, true) => affine_inverse(x, channel(0), channel(1)),
            (Self::Spline { bins, bound }, _) => {
                let knots = Knots::interval(params, bins, bound);
                spline(x, &knots, inverse, false)
            }
            (Self::CircularSpline { bins }, _) => {
                let knots = Knots::circle(params, bins);
                spline(x, &knots, inverse, true)
            }
        }
    }
}

/// y = x + t (log-det 0).
pub fn additive<B: Backend>(x: Tensor<B, 2>, t: Tensor<B, 2>) -> Tensor<B, 2> {
    x + t
}

/// y = x e^s + t; returns `(y, s)`.
pub fn affine<B: Backend>(
    x: Tensor<B, 2>,
    s: Tensor<B, 2>,
    t: Tensor<B, 2>,
) -> (Tensor<B, 2>, Tensor<B, 2>) {
    (x * s.clone().exp() + t, s)
}

/// x = (y - t) e^(-s); returns `(x, -s)`.
pub fn affine_inverse<B: Backend>(
    y: Tensor<B, 2>,
    s: Tensor<B, 2>,
    t: Tensor<B, 2>,
) -> (Tensor<B, 2>, Tensor<B, 2>) {
    ((y - t) * (-s.clone()).exp(), -s)
}

/// Knot positions and derivatives of a batch of splines.
///
/// # Shapes
/// `x`, `y`, `d`: `[N, M, K + 1]` (knot k = 0..K).
struct Knots<B: Backend> {
    x: Tensor<B, 3>,
    y: Tensor<B, 3>,
    d: Tensor<B, 3>,
    /// Interval [lo, hi] of both x and y.
    lo: f64,
    hi: f64,
    bins: usize,
}

impl<B: Backend> Knots<B> {
    /// Knots on [-B, B] with unit boundary derivatives from `[w_raw, h_raw, d_raw (K - 1)]`.
    fn interval(params: Tensor<B, 3>, bins: usize, bound: f64) -> Self {
        let [n, m, _] = params.dims();
        let inner = min_plus_softplus(params.clone().slice([0..n, 0..m, 2 * bins..3 * bins - 1]));
        let one = Tensor::ones([n, m, 1], (&params.device(), params.dtype()));
        let d = Tensor::cat(vec![one.clone(), inner, one], 2);
        Self::new(params, bins, -bound, bound, d)
    }

    /// Knots on [0, 2 pi] with d_K = d_0 from `[w_raw, h_raw, d_raw (K)]`.
    fn circle(params: Tensor<B, 3>, bins: usize) -> Self {
        let [n, m, _] = params.dims();
        let d = min_plus_softplus(params.clone().slice([0..n, 0..m, 2 * bins..3 * bins]));
        let first = d.clone().slice([0..n, 0..m, 0..1]);
        let d = Tensor::cat(vec![d, first], 2);
        Self::new(params, bins, 0.0, 2.0 * PI, d)
    }

    fn new(params: Tensor<B, 3>, bins: usize, lo: f64, hi: f64, d: Tensor<B, 3>) -> Self {
        let [n, m, _] = params.dims();
        let positions = |raw: Tensor<B, 3>| -> Tensor<B, 3> {
            let fractions = softmax(raw, 2)
                .mul_scalar(1.0 - bins as f64 * MIN_BIN)
                .add_scalar(MIN_BIN);
            let cumulative = fractions.cumsum(2).slice([0..n, 0..m, 0..bins - 1]);
            let options = (&cumulative.device(), cumulative.dtype());
            let zero = Tensor::zeros([n, m, 1], options);
            let one = Tensor::ones([n, m, 1], options);
            // The last knot is exactly 1 (hi), not the rounded sum of the fractions.
            Tensor::cat(vec![zero, cumulative, one], 2)
                .mul_scalar(hi - lo)
                .add_scalar(lo)
        };
        let x = positions(params.clone().slice([0..n, 0..m, 0..bins]));
        let y = positions(params.slice([0..n, 0..m, bins..2 * bins]));
        Self {
            x,
            y,
            d,
            lo,
            hi,
            bins,
        }
    }
}

/// m_d + softplus(raw).
fn min_plus_softplus<B: Backend>(raw: Tensor<B, 3>) -> Tensor<B, 3> {
    softplus(raw, 1.0).add_scalar(MIN_DERIVATIVE)
}

/// Index k of the bin holding `v` (`[N, M, 1]`), as the number of inner knots <= v.
fn locate<B: Backend>(v: Tensor<B, 3>, knots: Tensor<B, 3>, bins: usize) -> Tensor<B, 3, Int> {
    let [n, m, _] = knots.dims();
    let inner = knots.slice([0..n, 0..m, 1..bins]);
    v.greater_equal(inner).int().sum_dim(2)
}

/// The spline (or its inverse) of `v [N, M]` with `knots`; returns `(out, log-det)`.
fn spline<B: Backend>(
    v: Tensor<B, 2>,
    knots: &Knots<B>,
    inverse: bool,
    circular: bool,
) -> (Tensor<B, 2>, Tensor<B, 2>) {
    let [n, m] = v.dims();
    // A fresh row-major copy: on burn-ndarray 0.21 the tail mask of a strided input (the
    // active variables come from a select) came out in another element order than the input,
    // which clamped tail values of batches > 1 to +-B (kept by
    // `spline_tails_are_the_identity_in_batches`).
    let v = v.reshape([n * m]).reshape([n, m]);
    let period = knots.hi - knots.lo;
    // Interval inputs are clamped (the tails are restored below); circle inputs are wrapped.
    let inside_value = if circular {
        v.clone() - v.clone().div_scalar(period).floor().mul_scalar(period)
    } else {
        v.clone().clamp(knots.lo, knots.hi)
    };
    let value = inside_value.reshape([n, m, 1]);
    let from = if inverse { &knots.y } else { &knots.x };
    let k = locate(value.clone(), from.clone(), knots.bins);
    let k1 = k.clone().add_scalar(1);
    let pick = |t: &Tensor<B, 3>, idx: &Tensor<B, 3, Int>| t.clone().gather(2, idx.clone());
    let (x_k, x_k1) = (pick(&knots.x, &k), pick(&knots.x, &k1));
    let (y_k, y_k1) = (pick(&knots.y, &k), pick(&knots.y, &k1));
    let (d_k, d_k1) = (pick(&knots.d, &k), pick(&knots.d, &k1));
    let (w, h) = (x_k1 - x_k.clone(), y_k1 - y_k.clone());
    let slope = h.clone() / w.clone();
    let curvature = d_k.clone() + d_k1.clone() - slope.clone().mul_scalar(2.0);

    let theta = if inverse {
        // a theta^2 + b theta + c = 0 with dy = y - y_k.
        let dy = value.clone() - y_k.clone();
        let a = h.clone() * (slope.clone() - d_k.clone()) + dy.clone() * curvature.clone();
        let b = h.clone() * d_k.clone() - dy.clone() * curvature.clone();
        let c = -(slope.clone() * dy);
        let disc = (b.clone().square() - a.mul_scalar(4.0) * c.clone()).clamp_min(0.0);
        (c.mul_scalar(2.0) / (-b - disc.sqrt())).clamp(0.0, 1.0)
    } else {
        (value.clone() - x_k.clone()) / w.clone()
    };
    let one_minus = (-theta.clone()).add_scalar(1.0);
    let mixed = theta.clone() * one_minus.clone();
    let den = slope.clone() + curvature * mixed.clone();
    let log_dydx = (slope.clone().square()
        * (d_k1 * theta.clone().square()
            + slope.clone().mul_scalar(2.0) * mixed.clone()
            + d_k.clone() * one_minus.square()))
    .log()
        - den.clone().square().log();
    let out = if inverse {
        x_k + theta * w
    } else {
        y_k + h * (slope * theta.clone().square() + d_k * mixed) / den
    };
    let out = out.reshape([n, m]);
    let log_det = if inverse { -log_dydx } else { log_dydx }.reshape([n, m]);
    if circular {
        return (out, log_det);
    }
    let outside = v.clone().abs().greater_elem(knots.hi);
    let log_det = log_det.mask_fill(outside.clone(), 0.0);
    (out.mask_where(outside, v), log_det)
}
