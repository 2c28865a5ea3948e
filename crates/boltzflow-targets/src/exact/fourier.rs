//! Discrete Fourier transforms on a periodic lattice, axis by axis.
//!
//! For a field f on the lattice `shape = [L0, ..., L(d-1)]` (row-major site order),
//! [`transform`] computes in place
//!
//! ```text
//! f~(p) = sum_x f(x) exp(sign i p.x),   p_mu = 2 pi n_mu / L_mu,
//! ```
//!
//! with p in the same row-major order as x (n_mu in 0..L_mu). Each axis is a plain DFT with a
//! precomputed twiddle table, so the cost is O(V sum_mu L_mu): cheap for the lattices that are
//! sampled, and free of any FFT dependency.

use std::f64::consts::TAU;

/// In-place d-dimensional DFT of `(re, im)` (each of length V) with phase `exp(sign i p.x)`.
///
/// `sign` is -1 for the forward transform and +1 for the inverse (no 1/V factor applied).
pub fn transform(shape: &[usize], re: &mut [f64], im: &mut [f64], sign: f64) {
    let volume: usize = shape.iter().product();
    debug_assert_eq!(re.len(), volume);
    debug_assert_eq!(im.len(), volume);
    let max_l = shape.iter().copied().max().unwrap_or(1);
    let (mut line_re, mut line_im) = (vec![0.0; max_l], vec![0.0; max_l]);
    let (mut cos_k, mut sin_k) = (vec![0.0; max_l], vec![0.0; max_l]);
    for (mu, &l) in shape.iter().enumerate() {
        let stride: usize = shape[mu + 1..].iter().product();
        let outer = volume / (l * stride);
        for k in 0..l {
            let angle = TAU * k as f64 / l as f64;
            cos_k[k] = angle.cos();
            sin_k[k] = sign * angle.sin();
        }
        for o in 0..outer {
            for inner in 0..stride {
                let base = o * l * stride + inner;
                for j in 0..l {
                    line_re[j] = re[base + j * stride];
                    line_im[j] = im[base + j * stride];
                }
                for k in 0..l {
                    let (mut acc_re, mut acc_im) = (0.0, 0.0);
                    for j in 0..l {
                        let t = (j * k) % l;
                        let (c, s) = (cos_k[t], sin_k[t]);
                        acc_re += line_re[j] * c - line_im[j] * s;
                        acc_im += line_re[j] * s + line_im[j] * c;
                    }
                    re[base + k * stride] = acc_re;
                    im[base + k * stride] = acc_im;
                }
            }
        }
    }
}

/// The lattice momentum squared phat^2 = sum_mu 4 sin^2(p_mu / 2) of every momentum, in
/// row-major order of `shape` (length V).
pub fn momentum_squared(shape: &[usize]) -> Vec<f64> {
    let volume: usize = shape.iter().product();
    let mut phat2 = vec![0.0; volume];
    let mut n = vec![0usize; shape.len()];
    for value in phat2.iter_mut() {
        *value = n
            .iter()
            .zip(shape)
            .map(|(&n_mu, &l)| {
                let s = (std::f64::consts::PI * n_mu as f64 / l as f64).sin();
                4.0 * s * s
            })
            .sum();
        for mu in (0..shape.len()).rev() {
            n[mu] += 1;
            if n[mu] < shape[mu] {
                break;
            }
            n[mu] = 0;
        }
    }
    phat2
}

/// The periodic autocorrelation G(x) = (1/V) sum_y f(y) f(y+x) of a real field, through
/// G(x) = (1/V^2) sum_p |f~(p)|^2 exp(i p.x).
///
/// # Shapes
/// `field` and `out` have length V.
pub fn autocorrelation(shape: &[usize], field: &[f64], out: &mut [f64]) {
    let volume = field.len() as f64;
    let mut re = field.to_vec();
    let mut im = vec![0.0; field.len()];
    transform(shape, &mut re, &mut im, -1.0);
    for (r, i) in re.iter_mut().zip(im.iter_mut()) {
        *r = *r * *r + *i * *i;
        *i = 0.0;
    }
    transform(shape, &mut re, &mut im, 1.0);
    for (o, r) in out.iter_mut().zip(&re) {
        *o = r / (volume * volume);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Direct O(V^2) autocorrelation from coordinates.
    fn direct_autocorrelation(shape: &[usize], field: &[f64]) -> Vec<f64> {
        let lat =
            crate::geometry::Lattice::new(&shape.iter().map(|&l| l as i64).collect::<Vec<_>>())
                .unwrap();
        let v = lat.volume();
        let mut g = vec![0.0; v];
        for (x, gx) in g.iter_mut().enumerate() {
            let cx = lat.coords(x);
            for y in 0..v {
                let cy = lat.coords(y);
                let c: Vec<usize> = cx.iter().zip(&cy).map(|(a, b)| a + b).collect();
                *gx += field[y] * field[lat.index(&c)];
            }
            *gx /= v as f64;
        }
        g
    }

    #[test]
    fn autocorrelation_matches_direct_sum() {
        for shape in [vec![5], vec![3, 4], vec![2, 3, 5]] {
            let v: usize = shape.iter().product();
            let field: Vec<f64> = (0..v).map(|i| ((i * 7919) % 13) as f64 - 6.3).collect();
            let mut g = vec![0.0; v];
            autocorrelation(&shape, &field, &mut g);
            let direct = direct_autocorrelation(&shape, &field);
            for (a, b) in g.iter().zip(&direct) {
                assert!((a - b).abs() < 1e-12 * (1.0 + b.abs()), "{a} vs {b}");
            }
        }
    }

    #[test]
    fn inverse_undoes_forward() {
        let shape = [4, 3, 2];
        let field: Vec<f64> = (0..24).map(|i| (i as f64 * 0.37).sin()).collect();
        let (mut re, mut im) = (field.clone(), vec![0.0; 24]);
        transform(&shape, &mut re, &mut im, -1.0);
        transform(&shape, &mut re, &mut im, 1.0);
        for (r, f) in re.iter().zip(&field) {
            assert!((r / 24.0 - f).abs() < 1e-14);
        }
        assert!(im.iter().all(|i| i.abs() < 1e-13));
    }
}
