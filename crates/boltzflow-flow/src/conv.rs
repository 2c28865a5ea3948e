//! Periodic (circular-padding) 2D convolution on lattice fields, forward and backward.
//!
//! # Layout
//! Feature maps are stored *batch-innermost*: a buffer of `c` channels holds element
//! (channel ch, site s, sample b) at `(ch * V + s) * lanes + b`, shape `[c, V, lanes]`, with
//! sites numbered row-major on the `[L0, L1]` lattice (as in `boltzflow_targets::geometry`) and
//! `lanes` samples side by side. The periodic K x K stencil then becomes a table of K^2
//! neighbour sites per site ([`Stencil`]), and every multiply-add runs over contiguous samples,
//! which the compiler vectorises without any wrap-around logic.
//!
//! # Maths
//! PyTorch's `Conv2d(padding_mode = "circular")` (a cross-correlation), with taps
//! k = ky K + kx and neighbour n(s, k) = (y + ky - K/2, x + kx - K/2) mod (L0, L1):
//!
//! ```text
//! out[co, s, b] = bias[co] + sum_{ci, k} w[co, ci, k] in[ci, n(s, k), b]
//! ```
//!
//! with `w` of shape `[c_out, c_in, K, K]` (flat, row-major). Backward, for an upstream
//! gradient g = dL/d out:
//!
//! ```text
//! dL/d w[co, ci, k] = sum_{s, b} g[co, s, b] in[ci, n(s, k), b]
//! dL/d bias[co]     = sum_{s, b} g[co, s, b]
//! dL/d in[ci, s', b] = sum_{co, k} w[co, ci, k] g[co, n(s', K^2 - 1 - k), b]
//! ```
//!
//! The last line is again a convolution, with the transposed, flipped kernel
//! `wt[ci, co, k] = w[co, ci, K^2 - 1 - k]` ([`Conv2d::transpose_weight`]), since
//! n(., K^2 - 1 - k) is the inverse shift of n(., k).
//!
//! Every kernel takes the list of sites it works on, so that a coupling layer computes its
//! outputs only on the active sites of its checkerboard. The kernels never allocate.

use crate::real::Real;
use crate::{FlowError, Result};

/// Samples processed together by the register-blocked kernels (one AVX register of f32).
pub const TILE: usize = 8;

/// Neighbour table of a periodic K x K stencil on an `[L0, L1]` lattice, plus the
/// checkerboard site lists.
#[derive(Clone, Debug)]
pub struct Stencil {
    shape: [usize; 2],
    kernel: usize,
    /// `neighbours[s * K^2 + k]` = n(s, k).
    neighbours: Vec<u32>,
    /// Sites of parity 0 and 1, (y + x) mod 2.
    parity_sites: [Vec<u32>; 2],
    all_sites: Vec<u32>,
}

impl Stencil {
    /// The stencil of an odd kernel size `kernel` on a periodic `[L0, L1]` lattice.
    pub fn new(shape: [usize; 2], kernel: usize) -> Result<Self> {
        if kernel.is_multiple_of(2) {
            return Err(FlowError::InvalidConfig {
                name: "kernel",
                value: kernel.to_string(),
                fix: "the kernel size must be odd (3 for the tutorial model)",
            });
        }
        if shape.iter().any(|&l| l < 2) {
            return Err(FlowError::InvalidConfig {
                name: "shape",
                value: format!("{shape:?}"),
                fix: "give two lattice extents >= 2, e.g. shape = [8, 8]",
            });
        }
        if shape.iter().any(|&l| l % 2 == 1) {
            return Err(FlowError::InvalidConfig {
                name: "shape",
                value: format!("{shape:?}"),
                fix: "checkerboard masks need even extents on a periodic lattice",
            });
        }
        let [l0, l1] = shape;
        let half = (kernel / 2) as isize;
        let mut neighbours = Vec::with_capacity(l0 * l1 * kernel * kernel);
        let mut parity_sites = [Vec::new(), Vec::new()];
        for y in 0..l0 {
            for x in 0..l1 {
                for ky in 0..kernel as isize {
                    for kx in 0..kernel as isize {
                        let ny = (y as isize + ky - half).rem_euclid(l0 as isize) as usize;
                        let nx = (x as isize + kx - half).rem_euclid(l1 as isize) as usize;
                        neighbours.push((ny * l1 + nx) as u32);
                    }
                }
                parity_sites[(y + x) % 2].push((y * l1 + x) as u32);
            }
        }
        Ok(Self {
            shape,
            kernel,
            neighbours,
            parity_sites,
            all_sites: (0..(l0 * l1) as u32).collect(),
        })
    }

    /// Lattice extents `[L0, L1]`.
    pub fn shape(&self) -> [usize; 2] {
        self.shape
    }

    /// Kernel size K.
    pub fn kernel(&self) -> usize {
        self.kernel
    }

    /// Number of taps K^2.
    pub fn taps(&self) -> usize {
        self.kernel * self.kernel
    }

    /// Number of sites V = L0 L1.
    pub fn volume(&self) -> usize {
        self.shape[0] * self.shape[1]
    }

    /// Site n(s, k) reached by tap k from site s.
    pub fn neighbour(&self, site: usize, tap: usize) -> usize {
        self.neighbours[site * self.taps() + tap] as usize
    }

    /// Sites of checkerboard parity `parity` ((y + x) mod 2), ascending.
    pub fn parity_sites(&self, parity: usize) -> &[u32] {
        &self.parity_sites[parity % 2]
    }

    /// All sites 0..V.
    pub fn all_sites(&self) -> &[u32] {
        &self.all_sites
    }
}

/// Shape of one periodic convolution: `c_in` -> `c_out` channels with a K x K kernel.
///
/// Parameters live outside (in the flow's flat parameter vector): the weight `[c_out, c_in,
/// K, K]` followed by the bias `[c_out]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2d {
    /// Input channels.
    pub c_in: usize,
    /// Output channels.
    pub c_out: usize,
    /// Taps K^2.
    pub taps: usize,
}

impl Conv2d {
    /// Number of weights c_out c_in K^2.
    pub fn weight_len(&self) -> usize {
        self.c_out * self.c_in * self.taps
    }

    /// Writes the transposed, flipped kernel `wt[ci, co, k] = w[co, ci, K^2 - 1 - k]`
    /// (shape `[c_in, c_out, K, K]`) used by [`Conv2d::backward_input`].
    pub fn transpose_weight<T: Real>(&self, weight: &[T], weight_t: &mut [T]) {
        let taps = self.taps;
        for co in 0..self.c_out {
            for ci in 0..self.c_in {
                for k in 0..taps {
                    weight_t[(ci * self.c_out + co) * taps + k] =
                        weight[(co * self.c_in + ci) * taps + taps - 1 - k];
                }
            }
        }
    }

    /// `out[co, s, b] = bias[co] + sum_{ci, k} w[co, ci, k] in[ci, n(s, k), b]` for every s in
    /// `sites` (other sites of `out` are left untouched).
    ///
    /// Shapes: `weight` `[c_out, c_in, K, K]`, `bias` `[c_out]` (zero when `None`), `input`
    /// `[c_in, V, lanes]`, `out` `[c_out, V, lanes]`.
    pub fn forward<T: Real>(
        &self,
        stencil: &Stencil,
        weight: &[T],
        bias: Option<&[T]>,
        input: &[T],
        lanes: usize,
        sites: &[u32],
        out: &mut [T],
    ) {
        let v = stencil.volume();
        assert_eq!(weight.len(), self.weight_len(), "conv weight length");
        assert_eq!(input.len(), self.c_in * v * lanes, "conv input length");
        assert_eq!(out.len(), self.c_out * v * lanes, "conv output length");
        assert_eq!(stencil.taps(), self.taps, "conv taps");
        let geometry = Geometry {
            c_in: self.c_in,
            taps: self.taps,
            volume: v,
            lanes,
            neighbours: &stencil.neighbours,
        };
        let mut co = 0;
        while co < self.c_out {
            let block = match self.c_out - co {
                n if n >= 4 => 4,
                n if n >= 2 => 2,
                _ => 1,
            };
            for &site in sites {
                let site = site as usize;
                let mut b0 = 0;
                while b0 + TILE <= lanes {
                    match block {
                        4 => forward_tile::<T, 4, TILE>(
                            &geometry, weight, bias, input, co, site, b0, out,
                        ),
                        2 => forward_tile::<T, 2, TILE>(
                            &geometry, weight, bias, input, co, site, b0, out,
                        ),
                        _ => forward_tile::<T, 1, TILE>(
                            &geometry, weight, bias, input, co, site, b0, out,
                        ),
                    }
                    b0 += TILE;
                }
                for b in b0..lanes {
                    for j in 0..block {
                        forward_tile::<T, 1, 1>(
                            &geometry,
                            weight,
                            bias,
                            input,
                            co + j,
                            site,
                            b,
                            out,
                        );
                    }
                }
            }
            co += block;
        }
    }

    /// `grad_in[ci, s', b] = sum_{co, k} w[co, ci, k] g[co, n(s', K^2 - 1 - k), b]` for every s'
    /// in `sites` (overwritten; other sites untouched), given `weight_t` from
    /// [`Conv2d::transpose_weight`].
    ///
    /// Shapes: `grad_out` `[c_out, V, lanes]`, `grad_in` `[c_in, V, lanes]`.
    pub fn backward_input<T: Real>(
        &self,
        stencil: &Stencil,
        weight_t: &[T],
        grad_out: &[T],
        lanes: usize,
        sites: &[u32],
        grad_in: &mut [T],
    ) {
        let transposed = Conv2d {
            c_in: self.c_out,
            c_out: self.c_in,
            taps: self.taps,
        };
        transposed.forward(stencil, weight_t, None, grad_out, lanes, sites, grad_in);
    }

    /// Accumulates `grad_w[co, ci, k] += sum_{s in sites, b} g[co, s, b] in[ci, n(s, k), b]` and
    /// `grad_b[co] += sum_{s in sites, b} g[co, s, b]`; `g` must vanish off `sites`.
    ///
    /// Shapes: `input` `[c_in, V, lanes]`, `grad_out` `[c_out, V, lanes]`, `grad_w`
    /// `[c_out, c_in, K, K]`, `grad_b` `[c_out]`.
    pub fn backward_params<T: Real>(
        &self,
        stencil: &Stencil,
        input: &[T],
        grad_out: &[T],
        lanes: usize,
        sites: &[u32],
        grad_w: &mut [T],
        grad_b: &mut [T],
    ) {
        let v = stencil.volume();
        assert_eq!(input.len(), self.c_in * v * lanes, "conv input length");
        assert_eq!(grad_out.len(), self.c_out * v * lanes, "conv output length");
        assert_eq!(
            grad_w.len(),
            self.weight_len(),
            "conv weight-gradient length"
        );
        assert_eq!(grad_b.len(), self.c_out, "conv bias-gradient length");
        let geometry = Geometry {
            c_in: self.c_in,
            taps: self.taps,
            volume: v,
            lanes,
            neighbours: &stencil.neighbours,
        };
        for (co, gb) in grad_b.iter_mut().enumerate() {
            let plane = &grad_out[co * v * lanes..(co + 1) * v * lanes];
            let mut acc = [T::ZERO; TILE];
            let mut tail = T::ZERO;
            for &site in sites {
                let row = &plane[site as usize * lanes..(site as usize + 1) * lanes];
                let mut chunks = row.chunks_exact(TILE);
                for c in &mut chunks {
                    for l in 0..TILE {
                        acc[l] += c[l];
                    }
                }
                for &r in chunks.remainder() {
                    tail += r;
                }
            }
            *gb += horizontal_sum(&acc) + tail;
        }
        let mut co = 0;
        while co < self.c_out {
            let block = if self.c_out - co >= 2 { 2 } else { 1 };
            for ci in 0..self.c_in {
                let mut k = 0;
                while k < self.taps {
                    let taps = if self.taps - k >= 3 { 3 } else { 1 };
                    match (block, taps) {
                        (2, 3) => weight_grad_block::<T, 2, 3>(
                            &geometry, input, grad_out, sites, co, ci, k, grad_w,
                        ),
                        (2, _) => weight_grad_block::<T, 2, 1>(
                            &geometry, input, grad_out, sites, co, ci, k, grad_w,
                        ),
                        (_, 3) => weight_grad_block::<T, 1, 3>(
                            &geometry, input, grad_out, sites, co, ci, k, grad_w,
                        ),
                        _ => weight_grad_block::<T, 1, 1>(
                            &geometry, input, grad_out, sites, co, ci, k, grad_w,
                        ),
                    }
                    k += taps;
                }
            }
            co += block;
        }
    }
}

/// What the kernels need to know about the stencil and the buffers.
struct Geometry<'a> {
    c_in: usize,
    taps: usize,
    volume: usize,
    lanes: usize,
    neighbours: &'a [u32],
}

#[inline(always)]
fn horizontal_sum<T: Real, const W: usize>(acc: &[T; W]) -> T {
    let mut sum = T::ZERO;
    for &a in acc {
        sum += a;
    }
    sum
}

/// Output channels co0..co0+CB at one site for samples b0..b0+W, accumulated in registers.
#[inline(always)]
fn forward_tile<T: Real, const CB: usize, const W: usize>(
    g: &Geometry,
    weight: &[T],
    bias: Option<&[T]>,
    input: &[T],
    co0: usize,
    site: usize,
    b0: usize,
    out: &mut [T],
) {
    let mut acc = [[T::ZERO; W]; CB];
    if let Some(bias) = bias {
        for j in 0..CB {
            acc[j] = [bias[co0 + j]; W];
        }
    }
    let neighbours = &g.neighbours[site * g.taps..(site + 1) * g.taps];
    let plane_len = g.volume * g.lanes;
    for ci in 0..g.c_in {
        let plane = &input[ci * plane_len..(ci + 1) * plane_len];
        for (k, &n) in neighbours.iter().enumerate() {
            let start = n as usize * g.lanes + b0;
            let v: &[T; W] = plane[start..start + W].try_into().expect("tile in bounds");
            for j in 0..CB {
                let w = weight[((co0 + j) * g.c_in + ci) * g.taps + k];
                for l in 0..W {
                    acc[j][l] += w * v[l];
                }
            }
        }
    }
    for j in 0..CB {
        let start = (co0 + j) * plane_len + site * g.lanes + b0;
        out[start..start + W].copy_from_slice(&acc[j]);
    }
}

/// `grad_w[co0 + j, ci, k0 + i] += sum_{s, b} g[co0 + j, s, b] in[ci, n(s, k0 + i), b]` for
/// j < CB, i < KB, accumulated lane-wise in registers.
#[inline(always)]
fn weight_grad_block<T: Real, const CB: usize, const KB: usize>(
    g: &Geometry,
    input: &[T],
    grad_out: &[T],
    sites: &[u32],
    co0: usize,
    ci: usize,
    k0: usize,
    grad_w: &mut [T],
) {
    let plane_len = g.volume * g.lanes;
    let in_plane = &input[ci * plane_len..(ci + 1) * plane_len];
    let mut acc = [[[T::ZERO; TILE]; KB]; CB];
    let mut tail = [[T::ZERO; KB]; CB];
    for &site in sites {
        let site = site as usize;
        let mut starts = [0usize; KB];
        for i in 0..KB {
            starts[i] = g.neighbours[site * g.taps + k0 + i] as usize * g.lanes;
        }
        let mut b0 = 0;
        while b0 + TILE <= g.lanes {
            let mut gv = [[T::ZERO; TILE]; CB];
            for j in 0..CB {
                let start = (co0 + j) * plane_len + site * g.lanes + b0;
                gv[j] = grad_out[start..start + TILE]
                    .try_into()
                    .expect("tile in bounds");
            }
            for i in 0..KB {
                let v: &[T; TILE] = in_plane[starts[i] + b0..starts[i] + b0 + TILE]
                    .try_into()
                    .expect("tile in bounds");
                for j in 0..CB {
                    for l in 0..TILE {
                        acc[j][i][l] += gv[j][l] * v[l];
                    }
                }
            }
            b0 += TILE;
        }
        for b in b0..g.lanes {
            for j in 0..CB {
                let gj = grad_out[(co0 + j) * plane_len + site * g.lanes + b];
                for i in 0..KB {
                    tail[j][i] += gj * in_plane[starts[i] + b];
                }
            }
        }
    }
    for j in 0..CB {
        for i in 0..KB {
            grad_w[((co0 + j) * g.c_in + ci) * g.taps + k0 + i] +=
                horizontal_sum(&acc[j][i]) + tail[j][i];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngExt, SeedableRng};
    use rand_xoshiro::Xoshiro256PlusPlus;

    fn random(n: usize, rng: &mut Xoshiro256PlusPlus) -> Vec<f64> {
        (0..n).map(|_| rng.random::<f64>() * 2.0 - 1.0).collect()
    }

    /// Direct evaluation of the periodic cross-correlation from coordinates.
    fn reference_conv(
        shape: [usize; 2],
        kernel: usize,
        conv: Conv2d,
        w: &[f64],
        bias: &[f64],
        input: &[f64],
        lanes: usize,
    ) -> Vec<f64> {
        let [l0, l1] = shape;
        let v = l0 * l1;
        let h = kernel as isize / 2;
        let mut out = vec![0.0; conv.c_out * v * lanes];
        for co in 0..conv.c_out {
            for y in 0..l0 {
                for x in 0..l1 {
                    for b in 0..lanes {
                        let mut sum = bias[co];
                        for ci in 0..conv.c_in {
                            for ky in 0..kernel {
                                for kx in 0..kernel {
                                    let ny = (y as isize + ky as isize - h).rem_euclid(l0 as isize)
                                        as usize;
                                    let nx = (x as isize + kx as isize - h).rem_euclid(l1 as isize)
                                        as usize;
                                    sum += w[((co * conv.c_in + ci) * kernel + ky) * kernel + kx]
                                        * input[(ci * v + ny * l1 + nx) * lanes + b];
                                }
                            }
                        }
                        out[(co * v + y * l1 + x) * lanes + b] = sum;
                    }
                }
            }
        }
        out
    }

    /// Forward against the coordinate formula for several shapes, channel counts (covering
    /// every register block) and lane counts (full tiles and remainders).
    #[test]
    fn forward_matches_direct_formula() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(1);
        for (shape, kernel, c_in, c_out, lanes) in [
            ([4, 6], 3, 3, 7, 11),
            ([8, 8], 3, 8, 8, 16),
            ([4, 4], 5, 2, 2, 3),
            ([2, 4], 1, 1, 5, 9),
        ] {
            let st = Stencil::new(shape, kernel).unwrap();
            let conv = Conv2d {
                c_in,
                c_out,
                taps: kernel * kernel,
            };
            let w = random(conv.weight_len(), &mut rng);
            let bias = random(c_out, &mut rng);
            let input = random(c_in * st.volume() * lanes, &mut rng);
            let mut out = vec![0.0; c_out * st.volume() * lanes];
            conv.forward(
                &st,
                &w,
                Some(&bias),
                &input,
                lanes,
                st.all_sites(),
                &mut out,
            );
            let expected = reference_conv(shape, kernel, conv, &w, &bias, &input, lanes);
            for (a, e) in out.iter().zip(&expected) {
                assert!((a - e).abs() < 1e-12, "{shape:?} {kernel}: {a} vs {e}");
            }
        }
    }

    /// Input, weight and bias gradients of L = sum_{co,s,b} r[co,s,b] out[co,s,b] (r random)
    /// against central finite differences of the forward map (f64; L is linear in each, so
    /// the difference quotient is exact up to round-off).
    #[test]
    fn backward_matches_finite_differences() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(2);
        for (shape, kernel, c_in, c_out, lanes) in [([4, 6], 3, 3, 5, 10), ([4, 4], 3, 8, 2, 8)] {
            let st = Stencil::new(shape, kernel).unwrap();
            let v = st.volume();
            let conv = Conv2d {
                c_in,
                c_out,
                taps: kernel * kernel,
            };
            let mut w = random(conv.weight_len(), &mut rng);
            let mut bias = random(c_out, &mut rng);
            let mut input = random(c_in * v * lanes, &mut rng);
            let r = random(c_out * v * lanes, &mut rng);
            let loss = |w: &[f64], bias: &[f64], input: &[f64]| {
                let mut out = vec![0.0; c_out * v * lanes];
                conv.forward(&st, w, Some(bias), input, lanes, st.all_sites(), &mut out);
                out.iter().zip(&r).map(|(o, r)| o * r).sum::<f64>()
            };
            let mut wt = vec![0.0; conv.weight_len()];
            conv.transpose_weight(&w, &mut wt);
            let mut grad_in = vec![0.0; input.len()];
            conv.backward_input(&st, &wt, &r, lanes, st.all_sites(), &mut grad_in);
            let mut grad_w = vec![0.0; w.len()];
            let mut grad_b = vec![0.0; c_out];
            conv.backward_params(
                &st,
                &input,
                &r,
                lanes,
                st.all_sites(),
                &mut grad_w,
                &mut grad_b,
            );
            let h = 1e-3;
            let check = |analytic: f64, up: f64, down: f64, what: &str| {
                let numeric = (up - down) / (2.0 * h);
                assert!(
                    (numeric - analytic).abs() < 1e-8 * (1.0 + numeric.abs()),
                    "{what}: {numeric} vs {analytic}"
                );
            };
            for i in 0..input.len() {
                let x = input[i];
                input[i] = x + h;
                let up = loss(&w, &bias, &input);
                input[i] = x - h;
                let down = loss(&w, &bias, &input);
                input[i] = x;
                check(grad_in[i], up, down, "input");
            }
            for i in 0..w.len() {
                let x = w[i];
                w[i] = x + h;
                let up = loss(&w, &bias, &input);
                w[i] = x - h;
                let down = loss(&w, &bias, &input);
                w[i] = x;
                check(grad_w[i], up, down, "weight");
            }
            for i in 0..bias.len() {
                let x = bias[i];
                bias[i] = x + h;
                let up = loss(&w, &bias, &input);
                bias[i] = x - h;
                let down = loss(&w, &bias, &input);
                bias[i] = x;
                check(grad_b[i], up, down, "bias");
            }
        }
    }

    /// Site lists: computing on the two parities separately gives the full result, and
    /// parameter gradients restricted to a parity sum to the full ones.
    #[test]
    fn site_lists_partition_the_work() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(3);
        let st = Stencil::new([4, 4], 3).unwrap();
        let lanes = 9;
        let conv = Conv2d {
            c_in: 3,
            c_out: 3,
            taps: 9,
        };
        let w = random(conv.weight_len(), &mut rng);
        let input = random(3 * 16 * lanes, &mut rng);
        let mut full = vec![0.0; input.len()];
        conv.forward(&st, &w, None, &input, lanes, st.all_sites(), &mut full);
        let mut split = vec![f64::NAN; input.len()];
        conv.forward(&st, &w, None, &input, lanes, st.parity_sites(0), &mut split);
        conv.forward(&st, &w, None, &input, lanes, st.parity_sites(1), &mut split);
        assert_eq!(full, split);
        let (mut gw_full, mut gb_full) = (vec![0.0; w.len()], vec![0.0; 3]);
        conv.backward_params(
            &st,
            &input,
            &full,
            lanes,
            st.all_sites(),
            &mut gw_full,
            &mut gb_full,
        );
        let (mut gw, mut gb) = (vec![0.0; w.len()], vec![0.0; 3]);
        for p in 0..2 {
            conv.backward_params(
                &st,
                &input,
                &full,
                lanes,
                st.parity_sites(p),
                &mut gw,
                &mut gb,
            );
        }
        for (a, b) in gw.iter().chain(&gb).zip(gw_full.iter().chain(&gb_full)) {
            assert!((a - b).abs() < 1e-12 * (1.0 + b.abs()));
        }
    }

    #[test]
    fn bad_geometry_is_rejected() {
        assert!(Stencil::new([8, 8], 2).is_err());
        assert!(Stencil::new([8, 1], 3).is_err());
        assert!(Stencil::new([8, 5], 3).is_err());
    }
}
