//! Error analysis of Monte Carlo data: autocorrelation-aware errors, jackknife, convergence
//! diagnostics and importance-sampling estimators.
//!
//! - [`gamma_method`], [`gamma_method_derived`], [`autocorrelation`]: Wolff's Gamma method
//!   (U. Wolff, Comput. Phys. Commun. 156 (2004) 143, hep-lat/0306017) with automatic windowing,
//!   following his reference implementation UWerr. `tau_int = 1/2 + sum_t rho(t)` (Wolff's
//!   convention; emcee's tau is twice this); the effective number of independent samples is
//!   `N / (2 tau_int)`.
//! - [`jackknife`]: binned jackknife of any function of means.
//! - [`split_rhat`]: split R-hat across chains.
//! - [`log_sum_exp`], [`ess_fraction`], [`ln_z`], [`reweighted_mean`]: importance weights,
//!   all in log space and f64.
//!
//! Every function works on plain series (`&[f64]` in Monte Carlo time); nothing here knows
//! about targets or samplers.

mod convergence;
mod gamma;
mod importance;
mod jackknife;

pub use convergence::split_rhat;
pub use gamma::{autocorrelation, gamma_method, gamma_method_derived};
pub use importance::{ess_fraction, ln_z, log_sum_exp, reweighted_derived, reweighted_mean};
pub use jackknife::jackknife;

/// Result of an error analysis of one observable (or derived quantity).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Estimate {
    /// Estimate of the expectation value.
    pub mean: f64,
    /// One-sigma error of `mean`, including autocorrelations.
    pub err: f64,
    /// Integrated autocorrelation time `1/2 + sum_{t=1}^{W} rho(t)` (Wolff's convention).
    pub tau_int: f64,
    /// One-sigma error of `tau_int` (Wolff eq. 42).
    pub tau_int_err: f64,
    /// Summation window W chosen by the automatic windowing procedure.
    pub window: usize,
    /// Total number of measurements, summed over replicas.
    pub n: usize,
}

/// Errors raised by the statistical analysis.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StatsError {
    /// No series was given.
    #[error("no data given for {what}: pass at least one non-empty series")]
    NoData { what: &'static str },
    /// A series is too short for the analysis.
    #[error("{what} has {n} points, fewer than the {min} needed: collect more data")]
    TooShort {
        what: &'static str,
        n: usize,
        min: usize,
    },
    /// Observables (or values and weights) disagree in their replica structure.
    #[error(
        "ragged input: {what} has length {len} but {expected} was expected; \
         measure every observable on the same draws"
    )]
    RaggedReplicas {
        what: &'static str,
        len: usize,
        expected: usize,
    },
    /// A sample is NaN or infinite.
    #[error(
        "{what} holds a non-finite value ({value}) at index {index}: remove or fix that sample"
    )]
    NonFinite {
        what: &'static str,
        index: usize,
        value: f64,
    },
    /// A parameter is outside its domain.
    #[error("invalid {name} = {value}: {fix}")]
    InvalidParameter {
        name: &'static str,
        value: f64,
        fix: &'static str,
    },
    /// The derived quantity is not finite at the means.
    #[error("derived quantity f(means) = {value} is not finite: check f near the means")]
    DerivedNonFinite { value: f64 },
    /// The windowed autocorrelation sum is not positive, so no error can be assigned.
    #[error(
        "summed autocorrelation function C_F = {c_f} is not positive (window {window}): the series \
         is too short or strongly anticorrelated; collect more data or use s_tau = 0"
    )]
    PathologicalGamma { c_f: f64, window: usize },
    /// Every importance weight (or every weight left in a jackknife sample) is zero.
    #[error(
        "all importance weights{context} are zero (log w = -inf): no estimate exists; use a larger bin or more samples"
    )]
    ZeroWeights { context: &'static str },
}

/// `Result` with [`StatsError`].
pub type Result<T> = std::result::Result<T, StatsError>;

/// Checks that every value is finite.
fn check_finite(what: &'static str, xs: &[f64]) -> Result<()> {
    match xs.iter().position(|x| !x.is_finite()) {
        Some(index) => Err(StatsError::NonFinite {
            what,
            index,
            value: xs[index],
        }),
        None => Ok(()),
    }
}
