//! Exact references: Bessel sums, lattice Fourier sums and numerical quadrature.
