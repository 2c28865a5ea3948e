//! Binned jackknife of a function of means.

use crate::{Result, StatsError, check_finite};

/// Jackknife estimate of F = f(<A_1>, ..., <A_n>) with binning.
///
/// `series[a]` is the series of observable a (all of the same length N, measured on the same
/// draws); `bin` is the bin size b. The first `N_b = floor(N / b)` bins are used (a trailing
/// remainder of fewer than b points is dropped). With abar the means over the used points and
/// abar^(k) the means with bin k left out, f_k = f(abar^(k)) and fbar = sum_k f_k / N_b,
///
/// ```text
/// value = f(abar),   err = sqrt((N_b - 1) / N_b * sum_k (f_k - fbar)^2).
/// ```
///
/// Binning makes the error honest for autocorrelated data once b >> tau_int. The left-out
/// sums are formed from prefix and suffix sums of bins (no subtraction), so no cancellation
/// occurs when one bin dominates. Needs N_b >= 2.
pub fn jackknife(series: &[&[f64]], bin: usize, f: &dyn Fn(&[f64]) -> f64) -> Result<(f64, f64)> {
    let Some(first) = series.first() else {
        return Err(StatsError::NoData { what: "jackknife" });
    };
    if bin == 0 {
        return Err(StatsError::InvalidParameter {
            name: "bin",
            value: 0.0,
            fix: "use a bin size of at least 1",
        });
    }
    for s in series {
        if s.len() != first.len() {
            return Err(StatsError::RaggedReplicas {
                what: "a jackknife series",
                len: s.len(),
                expected: first.len(),
            });
        }
        check_finite("jackknife series", s)?;
    }
    let n_bins = first.len() / bin;
    if n_bins < 2 {
        return Err(StatsError::TooShort {
            what: "jackknife series (in bins)",
            n: n_bins,
            min: 2,
        });
    }

    // bin_sums[k][a]: sum of observable a over bin k.
    let bin_sums: Vec<Vec<f64>> = (0..n_bins)
        .map(|k| {
            series
                .iter()
                .map(|s| s[k * bin..(k + 1) * bin].iter().sum())
                .collect()
        })
        .collect();
    let (value, leave_outs) = leave_one_out(&bin_sums, bin, |sums, count| {
        let means: Vec<f64> = sums.iter().map(|s| s / count as f64).collect();
        f(&means)
    });
    if !value.is_finite() {
        return Err(StatsError::DerivedNonFinite { value });
    }
    if let Some(&bad) = leave_outs.iter().find(|v| !v.is_finite()) {
        return Err(StatsError::DerivedNonFinite { value: bad });
    }
    Ok((value, jackknife_error(&leave_outs)))
}

/// Evaluates `estimate(sums, points)` on all bins and on every set with one bin left out.
///
/// `bin_sums[k]` holds the per-observable sums of bin k, each over `bin` points. Returns the
/// full estimate and the N_b leave-one-out estimates; sums are built from prefix and suffix
/// sums so that no subtraction is involved.
fn leave_one_out(
    bin_sums: &[Vec<f64>],
    bin: usize,
    estimate: impl Fn(&[f64], usize) -> f64,
) -> (f64, Vec<f64>) {
    let n_bins = bin_sums.len();
    let n_obs = bin_sums[0].len();
    // suffix[k] = sum of bins k..n_bins.
    let mut suffix = vec![vec![0.0; n_obs]; n_bins + 1];
    for k in (0..n_bins).rev() {
        for a in 0..n_obs {
            suffix[k][a] = suffix[k + 1][a] + bin_sums[k][a];
        }
    }
    let mut prefix = vec![0.0; n_obs];
    let mut complement = vec![0.0; n_obs];
    let mut leave_outs = Vec::with_capacity(n_bins);
    for k in 0..n_bins {
        for a in 0..n_obs {
            complement[a] = prefix[a] + suffix[k + 1][a];
        }
        leave_outs.push(estimate(&complement, (n_bins - 1) * bin));
        for a in 0..n_obs {
            prefix[a] += bin_sums[k][a];
        }
    }
    (estimate(&suffix[0], n_bins * bin), leave_outs)
}

/// Jackknife error `sqrt((N_b - 1) / N_b * sum_k (f_k - fbar)^2)` of leave-one-out estimates.
pub(crate) fn jackknife_error(leave_outs: &[f64]) -> f64 {
    let n_bins = leave_outs.len() as f64;
    let fbar = leave_outs.iter().sum::<f64>() / n_bins;
    let sum_sq: f64 = leave_outs.iter().map(|v| (v - fbar).powi(2)).sum();
    ((n_bins - 1.0) / n_bins * sum_sq).sqrt()
}
