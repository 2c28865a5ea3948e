//! Gauss-Legendre quadrature for exact references: composite 1D rules (U(1) character
//! integrals) and tensor-product rules (2D molecular targets).
//!
//! An integral over a box [x0, x1] x [y0, y1] is computed as an iterated integral: the outer
//! y-integral and, for every outer node y, the inner x-integral each use a composite
//! Gauss-Legendre rule. Every interval between consecutive breakpoints is cut into equal panels
//! of width at most `panel`, and each panel is integrated with an n-point rule (exact for
//! polynomials of degree 2n - 1). For an integrand that is smooth (analytic) on every piece
//! between breakpoints the error decays exponentially with n and with 1/panel.
//!
//! Discontinuous integrands (basin indicators) are handled by putting the discontinuities at
//! breakpoints: the x-breakpoints may depend on y (a straight basin boundary crosses the line
//! of constant y at one x), and y-breakpoints mark where the x-breakpoints cross one another.

use rayon::prelude::*;

/// An n-point Gauss-Legendre rule on [-1, 1]: sum_k w_k f(t_k) = int_(-1)^(1) f(t) dt, exact
/// for polynomials of degree <= 2n - 1.
#[derive(Clone, Debug)]
pub struct GaussLegendre {
    nodes: Vec<f64>,
    weights: Vec<f64>,
}

impl GaussLegendre {
    /// The rule of `order` points (at least 1): nodes are the roots of the Legendre polynomial
    /// P_n, found by Newton's method from t_k = cos(pi (k + 3/4) / (n + 1/2)); weights are
    /// w_k = 2 / ((1 - t_k^2) P_n'(t_k)^2).
    pub fn new(order: usize) -> Self {
        let n = order.max(1);
        let mut nodes = Vec::with_capacity(n);
        let mut weights = Vec::with_capacity(n);
        for k in 0..n {
            let mut t = (std::f64::consts::PI * (k as f64 + 0.75) / (n as f64 + 0.5)).cos();
            for _ in 0..100 {
                let (p, dp) = legendre(n, t);
                let step = p / dp;
                t -= step;
                if step.abs() <= 1e-16 {
                    break;
                }
            }
            let (_, dp) = legendre(n, t);
            nodes.push(t);
            weights.push(2.0 / ((1.0 - t * t) * dp * dp));
        }
        Self { nodes, weights }
    }

    /// Number of points n.
    pub fn order(&self) -> usize {
        self.nodes.len()
    }

    /// Nodes t_k in (-1, 1).
    pub fn nodes(&self) -> &[f64] {
        &self.nodes
    }

    /// Weights w_k (summing to 2).
    pub fn weights(&self) -> &[f64] {
        &self.weights
    }
}

/// Composite rule: `panels` equal panels on [a, b], each with `rule`. Returns the
/// (abscissa, weight) pairs.
pub fn composite(a: f64, b: f64, panels: usize, rule: &GaussLegendre) -> Vec<(f64, f64)> {
    let h = (b - a) / panels as f64;
    let mut out = Vec::with_capacity(panels * rule.order());
    for k in 0..panels {
        let mid = a + (k as f64 + 0.5) * h;
        for (x, w) in rule.nodes().iter().zip(rule.weights()) {
            out.push((mid + 0.5 * h * x, 0.5 * h * w));
        }
    }
    out
}

/// (P_n(t), P_n'(t)) by the recurrence (k + 1) P_(k+1) = (2k + 1) t P_k - k P_(k-1) and
/// P_n' = n (t P_n - P_(n-1)) / (t^2 - 1).
fn legendre(n: usize, t: f64) -> (f64, f64) {
    let (mut p_prev, mut p) = (1.0, t);
    for k in 1..n {
        let kf = k as f64;
        let p_next = ((2.0 * kf + 1.0) * t * p - kf * p_prev) / (kf + 1.0);
        p_prev = p;
        p = p_next;
    }
    if n == 0 {
        return (1.0, 0.0);
    }
    (p, n as f64 * (t * p - p_prev) / (t * t - 1.0))
}

/// A composite Gauss-Legendre rule: intervals between breakpoints are cut into equal panels of
/// width at most `panel_x` (inner x-integral) or `panel_y` (outer y-integral).
#[derive(Clone, Debug)]
pub struct CompositeRule {
    rule: GaussLegendre,
    /// Largest panel width along x.
    pub panel_x: f64,
    /// Largest panel width along y.
    pub panel_y: f64,
    /// At most this many panels per interval between breakpoints (bounds the cost).
    pub max_panels: usize,
}

impl CompositeRule {
    /// An `order`-point rule on panels no wider than `panel_x` along x and `panel_y` along y.
    pub fn new(order: usize, panel_x: f64, panel_y: f64) -> Self {
        Self {
            rule: GaussLegendre::new(order),
            panel_x,
            panel_y,
            max_panels: 4000,
        }
    }

    /// Calls `visit(t, w)` for every node t and weight w of the composite rule on [a, b], with
    /// the interval first cut at the `breaks` that lie strictly inside (a, b) (any order).
    pub fn for_each_node(
        &self,
        a: f64,
        b: f64,
        breaks: &[f64],
        panel: f64,
        mut visit: impl FnMut(f64, f64),
    ) {
        let mut inner = [0.0; 16];
        let mut points: Vec<f64>;
        let cuts: &mut [f64] = if breaks.len() <= inner.len() - 2 {
            inner[0] = a;
            let mut n = 1;
            for &t in breaks.iter().filter(|&&t| t > a && t < b) {
                inner[n] = t;
                n += 1;
            }
            inner[n] = b;
            &mut inner[..=n]
        } else {
            points = std::iter::once(a)
                .chain(breaks.iter().copied().filter(|&t| t > a && t < b))
                .chain(std::iter::once(b))
                .collect();
            &mut points
        };
        cuts.sort_by(f64::total_cmp);
        for seg in cuts.windows(2) {
            let length = seg[1] - seg[0];
            if length <= 0.0 {
                continue;
            }
            let panels = ((length / panel).ceil() as usize).clamp(1, self.max_panels);
            let half = 0.5 * length / panels as f64;
            for p in 0..panels {
                let mid = seg[0] + (2 * p + 1) as f64 * half;
                for (t, w) in self.rule.nodes.iter().zip(&self.rule.weights) {
                    visit(mid + half * t, half * w);
                }
            }
        }
    }

    /// int_a^b f(x) dx for a vector of M integrands, cut at `breaks`.
    pub fn integrate_1d<const M: usize>(
        &self,
        (a, b): (f64, f64),
        breaks: &[f64],
        f: impl Fn(f64) -> [f64; M],
    ) -> [f64; M] {
        let mut sum = [0.0; M];
        self.for_each_node(a, b, breaks, self.panel_x, |x, w| {
            let v = f(x);
            for m in 0..M {
                sum[m] += w * v[m];
            }
        });
        sum
    }

    /// int_(y0)^(y1) dy int_(x0)^(x1) dx f(x, y) for a vector of M integrands. The outer
    /// integral is cut at `y_breaks`; for each outer node y, `x_breaks(y, &mut breaks)` pushes
    /// the cuts of the inner integral (the vector arrives empty).
    pub fn integrate_2d<const M: usize>(
        &self,
        (x0, x1): (f64, f64),
        (y0, y1): (f64, f64),
        y_breaks: &[f64],
        x_breaks: impl Fn(f64, &mut Vec<f64>) + Sync,
        f: impl Fn(f64, f64) -> [f64; M] + Sync,
    ) -> [f64; M] {
        let mut outer = Vec::new();
        self.for_each_node(y0, y1, y_breaks, self.panel_y, |y, w| outer.push((y, w)));
        outer
            .par_iter()
            .map_init(Vec::new, |breaks, &(y, wy)| {
                breaks.clear();
                x_breaks(y, breaks);
                let mut sum = [0.0; M];
                self.for_each_node(x0, x1, breaks, self.panel_x, |x, wx| {
                    let v = f(x, y);
                    for m in 0..M {
                        sum[m] += wx * v[m];
                    }
                });
                sum.map(|s| s * wy)
            })
            .reduce(
                || [0.0; M],
                |mut a, b| {
                    for m in 0..M {
                        a[m] += b[m];
                    }
                    a
                },
            )
    }
}

/// Grows the box `[x0, x1] x [y0, y1]` edge by edge until the energy on every edge exceeds
/// `e_min + margin`, so that exp(-(E - e_min)/T) is below exp(-margin/T) outside the box of a
/// confining potential. Each edge is probed at 2001 points; an edge that fails moves out by a
/// quarter of the starting extent. Returns the box and the smallest edge energy found.
pub fn confining_box(
    energy: impl Fn(f64, f64) -> f64,
    e_min: f64,
    margin: f64,
    (mut x0, mut x1): (f64, f64),
    (mut y0, mut y1): (f64, f64),
) -> ((f64, f64), (f64, f64), f64) {
    let (dx, dy) = (0.25 * (x1 - x0), 0.25 * (y1 - y0));
    const PROBES: usize = 2001;
    let edge_min = |along_x: bool, fixed: f64, lo: f64, hi: f64| {
        (0..PROBES)
            .map(|i| {
                let t = lo + (hi - lo) * i as f64 / (PROBES - 1) as f64;
                if along_x {
                    energy(t, fixed)
                } else {
                    energy(fixed, t)
                }
            })
            .fold(f64::INFINITY, f64::min)
    };
    let mut lowest = f64::NEG_INFINITY;
    for _ in 0..10_000 {
        let edges = [
            edge_min(false, x0, y0, y1),
            edge_min(false, x1, y0, y1),
            edge_min(true, y0, x0, x1),
            edge_min(true, y1, x0, x1),
        ];
        lowest = edges.iter().copied().fold(f64::INFINITY, f64::min);
        if lowest >= e_min + margin {
            break;
        }
        let low = |e: f64| e < e_min + margin;
        if low(edges[0]) {
            x0 -= dx;
        }
        if low(edges[1]) {
            x1 += dx;
        }
        if low(edges[2]) {
            y0 -= dy;
        }
        if low(edges[3]) {
            y1 += dy;
        }
    }
    ((x0, x1), (y0, y1), lowest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gauss_legendre_is_exact_for_polynomials_of_degree_2n_minus_1() {
        for n in [1, 2, 5, 16] {
            let gl = GaussLegendre::new(n);
            assert!((gl.weights().iter().sum::<f64>() - 2.0).abs() < 1e-14);
            for degree in 0..2 * n {
                let quad: f64 = gl
                    .nodes()
                    .iter()
                    .zip(gl.weights())
                    .map(|(t, w)| w * t.powi(degree as i32))
                    .sum();
                let exact = if degree % 2 == 1 {
                    0.0
                } else {
                    2.0 / (degree as f64 + 1.0)
                };
                assert!(
                    (quad - exact).abs() < 1e-13,
                    "n={n} degree={degree}: {quad}"
                );
            }
        }
    }

    #[test]
    fn composite_rule_integrates_gaussians_and_steps() {
        let rule = CompositeRule::new(16, 0.5, 0.5);
        // int exp(-x^2) over [-10, 10] = sqrt(pi) (truncation ~1e-45)
        let [g] = rule.integrate_1d((-10.0, 10.0), &[], |x| [(-x * x).exp()]);
        assert!((g - std::f64::consts::PI.sqrt()).abs() < 1e-14);
        // a step at an irrational point is exact when it is a breakpoint
        let s = 2f64.sqrt() / 3.0;
        let [h] = rule.integrate_1d((-1.0, 1.0), &[s], |x| [if x < s { 1.0 } else { 0.0 }]);
        assert!((h - (1.0 + s)).abs() < 1e-14);
        // 2D: the area of a half-plane x < y inside [0, 1]^2 is 1/2
        let [area] = rule.integrate_2d(
            (0.0, 1.0),
            (0.0, 1.0),
            &[],
            |y, b| b.push(y),
            |x, y| [if x < y { 1.0 } else { 0.0 }],
        );
        assert!((area - 0.5).abs() < 1e-14);
    }

    #[test]
    fn confining_box_reaches_the_margin() {
        let ((x0, x1), (y0, y1), lowest) =
            confining_box(|x, y| x * x + y * y, 0.0, 40.0, (-1.0, 1.0), (-1.0, 1.0));
        assert!(lowest >= 40.0);
        assert!(x0 <= -40f64.sqrt() && x1 >= 40f64.sqrt());
        assert!(y0 <= -40f64.sqrt() && y1 >= 40f64.sqrt());
    }
}
