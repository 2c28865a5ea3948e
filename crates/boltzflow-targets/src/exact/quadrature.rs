//! Gauss-Legendre quadrature, plain and composite.

/// Nodes and weights of the n-point Gauss-Legendre rule on [-1, 1], by Newton iteration on
/// the Legendre polynomial P_n from the asymptotic guess cos(pi (i + 3/4) / (n + 1/2)).
pub fn gauss_legendre(n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut nodes = vec![0.0; n];
    let mut weights = vec![0.0; n];
    for i in 0..n.div_ceil(2) {
        let mut x = (std::f64::consts::PI * (i as f64 + 0.75) / (n as f64 + 0.5)).cos();
        let mut dp = 1.0;
        for _ in 0..100 {
            // P_n(x) and P_n'(x) by the three-term recurrence.
            let (mut p0, mut p1) = (1.0, x);
            for k in 2..=n {
                let p2 = ((2 * k - 1) as f64 * x * p1 - (k - 1) as f64 * p0) / k as f64;
                p0 = p1;
                p1 = p2;
            }
            let pn = if n == 0 { 1.0 } else { p1 };
            let pn_1 = if n == 1 { 1.0 } else { p0 };
            dp = n as f64 * (x * pn - pn_1) / (x * x - 1.0);
            let dx = pn / dp;
            x -= dx;
            if dx.abs() < 1e-16 {
                break;
            }
        }
        let w = 2.0 / ((1.0 - x * x) * dp * dp);
        nodes[i] = x;
        nodes[n - 1 - i] = -x;
        weights[i] = w;
        weights[n - 1 - i] = w;
    }
    (nodes, weights)
}

/// Composite Gauss-Legendre rule: `panels` equal panels on [a, b], each with the rule
/// (`nodes`, `weights`) of [`gauss_legendre`]. Returns the (abscissa, weight) pairs.
pub fn composite(a: f64, b: f64, panels: usize, nodes: &[f64], weights: &[f64]) -> Vec<(f64, f64)> {
    let h = (b - a) / panels as f64;
    let mut rule = Vec::with_capacity(panels * nodes.len());
    for k in 0..panels {
        let mid = a + (k as f64 + 0.5) * h;
        for (x, w) in nodes.iter().zip(weights) {
            rule.push((mid + 0.5 * h * x, 0.5 * h * w));
        }
    }
    rule
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integrates_polynomials_exactly() {
        let (x, w) = gauss_legendre(20);
        assert!((w.iter().sum::<f64>() - 2.0).abs() < 1e-14);
        // int_{-1}^{1} t^38 dt = 2/39: degree 2n - 2 is exact.
        let i38: f64 = x.iter().zip(&w).map(|(t, w)| w * t.powi(38)).sum();
        assert!((i38 - 2.0 / 39.0).abs() < 1e-14);
    }

    #[test]
    fn composite_integrates_smooth_functions() {
        let (x, w) = gauss_legendre(20);
        let rule = composite(0.0, std::f64::consts::PI, 4, &x, &w);
        let i: f64 = rule.iter().map(|(t, w)| w * t.sin()).sum();
        assert!((i - 2.0).abs() < 1e-14);
    }
}
