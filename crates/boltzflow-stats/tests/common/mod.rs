//! Seeded test processes with exactly known statistics.

#![allow(dead_code)]

use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};
use rand_xoshiro::Xoshiro256PlusPlus;

/// A seeded generator.
pub fn rng(seed: u64) -> Xoshiro256PlusPlus {
    Xoshiro256PlusPlus::seed_from_u64(seed)
}

/// `n` independent standard normal numbers.
pub fn normal(n: usize, seed: u64) -> Vec<f64> {
    let mut rng = rng(seed);
    (0..n).map(|_| StandardNormal.sample(&mut rng)).collect()
}

/// Stationary AR(1) process `x_t = rho x_{t-1} + sqrt(1 - rho^2) eps_t`, x_0 ~ N(0, 1):
/// mean 0, variance 1, rho(t) = rho^|t|.
pub fn ar1(rho: f64, n: usize, seed: u64) -> Vec<f64> {
    let mut rng = rng(seed);
    let noise = (1.0 - rho * rho).sqrt();
    let mut x: f64 = StandardNormal.sample(&mut rng);
    (0..n)
        .map(|_| {
            let current = x;
            let eps: f64 = StandardNormal.sample(&mut rng);
            x = rho * x + noise * eps;
            current
        })
        .collect()
}

/// Exact integrated autocorrelation time of AR(1) in Wolff's convention:
/// 1/2 + sum_{t>=1} rho^t = (1/2)(1 + rho)/(1 - rho).
pub fn ar1_tau_int(rho: f64) -> f64 {
    0.5 * (1.0 + rho) / (1.0 - rho)
}
