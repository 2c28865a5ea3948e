//! Importance-sampling estimators, all in log space and f64.
//!
//! Samples x_i ~ q (i = 1..N) carry log weights `log w_i = -S(x_i) - log q(x_i) (+ const)`.
//! Weights are never exponentiated raw: every sum goes through [`log_sum_exp`].

use crate::jackknife::jackknife_error;
use crate::{Result, StatsError, check_finite};

/// `LSE(x) = ln sum_i exp(x_i)`, computed as `m + ln sum_i exp(x_i - m)` with m = max_i x_i.
///
/// Empty input and all `-inf` give `-inf`; any `+inf` gives `+inf`; any NaN gives NaN.
pub fn log_sum_exp(xs: &[f64]) -> f64 {
    if xs.iter().any(|x| x.is_nan()) {
        return f64::NAN;
    }
    let max = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if max.is_infinite() {
        return max;
    }
    max + xs.iter().map(|x| (x - max).exp()).sum::<f64>().ln()
}

/// Effective-sample-size fraction `ESS / N = (sum w)^2 / (N sum w^2)
/// = exp(2 LSE(log w) - LSE(2 log w)) / N`, in (0, 1]; 1 for equal weights.
///
/// NaN for empty input, all-zero weights or NaN log weights.
pub fn ess_fraction(log_w: &[f64]) -> f64 {
    if log_w.is_empty() {
        return f64::NAN;
    }
    let doubled: Vec<f64> = log_w.iter().map(|l| 2.0 * l).collect();
    (2.0 * log_sum_exp(log_w) - log_sum_exp(&doubled)).exp() / log_w.len() as f64
}

/// Estimate of ln Z, `ln Zhat = LSE(log w) - ln N`, with its delta-method error.
///
/// Zhat = (1/N) sum w_i has relative variance s_w^2 / (N wbar^2) (s_w^2 the sample variance of
/// the weights, divisor N - 1), and d ln Z = dZ / Z, so
///
/// ```text
/// err = sqrt((N exp(LSE(2 log w) - 2 LSE(log w)) - 1) / (N - 1))
///     = sqrt((1 / ess_fraction - 1) / (N - 1)).
/// ```
///
/// Log weights may be `-inf` (zero weight) but not NaN or `+inf`; needs N >= 2 and at least one
/// non-zero weight. The estimate assumes independent samples (e.g. direct flow samples).
pub fn ln_z(log_w: &[f64]) -> Result<(f64, f64)> {
    check_log_weights(log_w)?;
    if log_w.len() < 2 {
        return Err(StatsError::TooShort {
            what: "log-weight series",
            n: log_w.len(),
            min: 2,
        });
    }
    let n = log_w.len() as f64;
    let lse = log_sum_exp(log_w);
    if lse == f64::NEG_INFINITY {
        return Err(StatsError::ZeroWeights { context: "" });
    }
    let doubled: Vec<f64> = log_w.iter().map(|l| 2.0 * l).collect();
    let relative_second_moment = n * (log_sum_exp(&doubled) - 2.0 * lse).exp();
    let err = ((relative_second_moment - 1.0).max(0.0) / (n - 1.0)).sqrt();
    Ok((lse - n.ln(), err))
}

/// Reweighted expectation value `<O> = sum_i w_i O_i / sum_i w_i` with a binned jackknife error.
///
/// `log_w[i]` and `values[i]` belong to sample i; `bin` is the jackknife bin size (1 for
/// independent samples, >> tau_int for a Markov chain). The first floor(N / bin) bins are used.
/// Each bin is reduced to (LSE of its log weights, its weighted mean of O) and bins are merged
/// in log space, so weights spanning hundreds of e-folds are handled exactly. Log weights may
/// be `-inf` but not NaN or `+inf`; values must be finite.
pub fn reweighted_mean(log_w: &[f64], values: &[f64], bin: usize) -> Result<(f64, f64)> {
    let (mean, leave_outs) = reweighted_leave_outs(log_w, values, bin)?;
    Ok((mean, jackknife_error(&leave_outs)))
}

/// A function `f(<O_1>, ..., <O_n>)` of reweighted means (e.g. the free-energy difference
/// -ln(<1_B> / <1_A>)) with the binned jackknife error: the leave-one-bin-out estimates are
/// f of the leave-one-bin-out reweighted means. Inputs as in [`reweighted_mean`], every
/// series aligned with `log_w`.
pub fn reweighted_derived(
    log_w: &[f64],
    inputs: &[&[f64]],
    bin: usize,
    f: &dyn Fn(&[f64]) -> f64,
) -> Result<(f64, f64)> {
    if inputs.is_empty() {
        return Err(StatsError::NoData {
            what: "inputs of a derived quantity",
        });
    }
    let parts = inputs
        .iter()
        .map(|values| reweighted_leave_outs(log_w, values, bin))
        .collect::<Result<Vec<_>>>()?;
    let means: Vec<f64> = parts.iter().map(|(m, _)| *m).collect();
    let n_bins = parts[0].1.len();
    let leave_outs: Vec<f64> = (0..n_bins)
        .map(|k| f(&parts.iter().map(|(_, l)| l[k]).collect::<Vec<_>>()))
        .collect();
    let value = f(&means);
    if !value.is_finite() || leave_outs.iter().any(|v| !v.is_finite()) {
        return Err(StatsError::NonFinite {
            what: "derived quantity of reweighted means",
            index: 0,
            value,
        });
    }
    Ok((value, jackknife_error(&leave_outs)))
}

/// The reweighted mean and its leave-one-bin-out means (see [`reweighted_mean`]).
fn reweighted_leave_outs(log_w: &[f64], values: &[f64], bin: usize) -> Result<(f64, Vec<f64>)> {
    check_log_weights(log_w)?;
    check_finite("reweighted values", values)?;
    if values.len() != log_w.len() {
        return Err(StatsError::RaggedReplicas {
            what: "the value series",
            len: values.len(),
            expected: log_w.len(),
        });
    }
    if bin == 0 {
        return Err(StatsError::InvalidParameter {
            name: "bin",
            value: 0.0,
            fix: "use a bin size of at least 1",
        });
    }
    let n_bins = log_w.len() / bin;
    if n_bins < 2 {
        return Err(StatsError::TooShort {
            what: "reweighting series (in bins)",
            n: n_bins,
            min: 2,
        });
    }

    let bins: Vec<WeightedMean> = (0..n_bins)
        .map(|k| {
            let range = k * bin..(k + 1) * bin;
            let (lw, o) = (&log_w[range.clone()], &values[range]);
            let log_weight = log_sum_exp(lw);
            let mean = if log_weight == f64::NEG_INFINITY {
                0.0
            } else {
                lw.iter()
                    .zip(o)
                    .map(|(l, v)| (l - log_weight).exp() * v)
                    .sum()
            };
            WeightedMean { log_weight, mean }
        })
        .collect();

    let mut suffix = vec![WeightedMean::EMPTY; n_bins + 1];
    for k in (0..n_bins).rev() {
        suffix[k] = suffix[k + 1].merge(bins[k]);
    }
    if suffix[0].log_weight == f64::NEG_INFINITY {
        return Err(StatsError::ZeroWeights { context: "" });
    }
    let mut prefix = WeightedMean::EMPTY;
    let mut leave_outs = Vec::with_capacity(n_bins);
    for k in 0..n_bins {
        let complement = prefix.merge(suffix[k + 1]);
        if complement.log_weight == f64::NEG_INFINITY {
            return Err(StatsError::ZeroWeights {
                context: " outside one jackknife bin",
            });
        }
        leave_outs.push(complement.mean);
        prefix = prefix.merge(bins[k]);
    }
    Ok((suffix[0].mean, leave_outs))
}

/// A group of samples summarised by `log_weight = LSE(log w)` and the weighted mean of O.
#[derive(Clone, Copy, Debug)]
struct WeightedMean {
    log_weight: f64,
    mean: f64,
}

impl WeightedMean {
    /// The empty group (zero total weight).
    const EMPTY: Self = Self {
        log_weight: f64::NEG_INFINITY,
        mean: 0.0,
    };

    /// Union of two groups: weights add, means combine with their weight fractions.
    fn merge(self, other: Self) -> Self {
        if self.log_weight == f64::NEG_INFINITY {
            return other;
        }
        if other.log_weight == f64::NEG_INFINITY {
            return self;
        }
        let log_weight = log_sum_exp(&[self.log_weight, other.log_weight]);
        let mean = (self.log_weight - log_weight).exp() * self.mean
            + (other.log_weight - log_weight).exp() * other.mean;
        Self { log_weight, mean }
    }
}

/// Rejects empty input and NaN or `+inf` log weights (`-inf`, a zero weight, is allowed).
fn check_log_weights(log_w: &[f64]) -> Result<()> {
    if log_w.is_empty() {
        return Err(StatsError::NoData {
            what: "importance weights",
        });
    }
    match log_w.iter().position(|l| l.is_nan() || *l == f64::INFINITY) {
        Some(index) => Err(StatsError::NonFinite {
            what: "log-weight series",
            index,
            value: log_w[index],
        }),
        None => Ok(()),
    }
}
