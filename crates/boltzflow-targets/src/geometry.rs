//! Periodic hypercubic lattices: site indexing and neighbour tables.
//!
//! Sites are numbered in row-major order of the shape `[L0, L1, ..., L(d-1)]`
//! (direction 0 slowest): `i = ((x0 * L1 + x1) * L2 + x2) ...`.

use crate::{Result, TargetError};

/// A periodic lattice with precomputed forward and backward neighbours.
#[derive(Clone, Debug)]
pub struct Lattice {
    shape: Vec<usize>,
    volume: usize,
    /// `fwd[i * d + mu]` is the index of site `i + mu_hat`.
    fwd: Vec<u32>,
    /// `bwd[i * d + mu]` is the index of site `i - mu_hat`.
    bwd: Vec<u32>,
}

impl Lattice {
    /// Builds the lattice; every extent must be at least 1 (at least 2 for a sensible theory).
    pub fn new(shape: &[i64]) -> Result<Self> {
        if shape.is_empty() {
            return Err(TargetError::InvalidParameter {
                name: "shape",
                value: "[]".into(),
                fix: "give the lattice extents, e.g. shape = [8, 8]",
            });
        }
        if let Some(&bad) = shape.iter().find(|&&l| l < 2) {
            return Err(TargetError::InvalidParameter {
                name: "shape",
                value: format!("{shape:?} (extent {bad})"),
                fix: "every lattice extent L must be an integer >= 2",
            });
        }
        let shape: Vec<usize> = shape.iter().map(|&l| l as usize).collect();
        let d = shape.len();
        let volume: usize = shape.iter().product();
        if volume > u32::MAX as usize {
            return Err(TargetError::InvalidParameter {
                name: "shape",
                value: format!("{shape:?}"),
                fix: "the lattice volume must be below 2^32 sites",
            });
        }
        let mut fwd = vec![0u32; volume * d];
        let mut bwd = vec![0u32; volume * d];
        let mut coord = vec![0usize; d];
        for i in 0..volume {
            for mu in 0..d {
                let mut c = coord.clone();
                c[mu] = (coord[mu] + 1) % shape[mu];
                fwd[i * d + mu] = index_of(&shape, &c) as u32;
                c[mu] = (coord[mu] + shape[mu] - 1) % shape[mu];
                bwd[i * d + mu] = index_of(&shape, &c) as u32;
            }
            // advance the row-major coordinate
            for mu in (0..d).rev() {
                coord[mu] += 1;
                if coord[mu] < shape[mu] {
                    break;
                }
                coord[mu] = 0;
            }
        }
        Ok(Self {
            shape,
            volume,
            fwd,
            bwd,
        })
    }

    /// Extents `[L0, ..., L(d-1)]`.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Number of dimensions d.
    pub fn ndim(&self) -> usize {
        self.shape.len()
    }

    /// Number of sites V.
    pub fn volume(&self) -> usize {
        self.volume
    }

    /// Index of site `i + mu_hat`.
    #[inline]
    pub fn fwd(&self, i: usize, mu: usize) -> usize {
        self.fwd[i * self.shape.len() + mu] as usize
    }

    /// Index of site `i - mu_hat`.
    #[inline]
    pub fn bwd(&self, i: usize, mu: usize) -> usize {
        self.bwd[i * self.shape.len() + mu] as usize
    }

    /// Coordinates of site `i`.
    pub fn coords(&self, mut i: usize) -> Vec<usize> {
        let mut c = vec![0; self.shape.len()];
        for mu in (0..self.shape.len()).rev() {
            c[mu] = i % self.shape[mu];
            i /= self.shape[mu];
        }
        c
    }

    /// Index of the site with coordinates `c` (taken modulo the extents).
    pub fn index(&self, c: &[usize]) -> usize {
        let c: Vec<usize> = c.iter().zip(&self.shape).map(|(x, l)| x % l).collect();
        index_of(&self.shape, &c)
    }

    /// Parity (x0 + x1 + ...) mod 2 of site `i`: the checkerboard colour.
    pub fn parity(&self, i: usize) -> usize {
        self.coords(i).iter().sum::<usize>() % 2
    }
}

fn index_of(shape: &[usize], c: &[usize]) -> usize {
    c.iter().zip(shape).fold(0, |acc, (x, l)| acc * l + x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neighbours_wrap_around() {
        let lat = Lattice::new(&[3, 4]).unwrap();
        assert_eq!(lat.volume(), 12);
        let i = lat.index(&[2, 3]);
        assert_eq!(lat.coords(lat.fwd(i, 0)), vec![0, 3]);
        assert_eq!(lat.coords(lat.fwd(i, 1)), vec![2, 0]);
        for j in 0..lat.volume() {
            for mu in 0..2 {
                assert_eq!(lat.bwd(lat.fwd(j, mu), mu), j);
            }
        }
    }

    #[test]
    fn rejects_small_extents() {
        assert!(Lattice::new(&[8, 0]).is_err());
        assert!(Lattice::new(&[-8, 8]).is_err());
        assert!(Lattice::new(&[]).is_err());
    }
}
