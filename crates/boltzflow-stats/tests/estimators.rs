//! Jackknife, split R-hat and importance-sampling estimators against exact values.

mod common;

use boltzflow_stats::{
    StatsError, ess_fraction, jackknife, ln_z, log_sum_exp, reweighted_derived, reweighted_mean,
    split_rhat,
};
use common::{ar1, ar1_tau_int, normal};

/// Relative accuracy of a jackknife error from `n_bins` bins (chi distribution).
fn rel_err_of_err(n_bins: usize) -> f64 {
    1.0 / (2.0 * (n_bins as f64 - 1.0)).sqrt()
}

#[test]
fn jackknife_without_binning_is_the_naive_error() {
    let x = normal(10_000, 1);
    let n = x.len() as f64;
    let (mean, err) = jackknife(&[&x], 1, &|a| a[0]).unwrap();
    let sample_mean = x.iter().sum::<f64>() / n;
    let naive = (x.iter().map(|v| (v - sample_mean).powi(2)).sum::<f64>() / (n * (n - 1.0))).sqrt();
    assert!((mean - sample_mean).abs() < 1e-14);
    assert!((err - naive).abs() < 1e-10 * naive, "{err} vs {naive}");
    assert!(mean.abs() < 4.0 * err);
}

#[test]
fn binned_jackknife_errors_match_exact_ones() {
    // iid N(0, 1): exact error 1 / sqrt(N).
    let x = normal(20_000, 2);
    let (mean, err) = jackknife(&[&x], 100, &|a| a[0]).unwrap();
    let exact = 1.0 / (x.len() as f64).sqrt();
    assert!((err - exact).abs() < 4.0 * exact * rel_err_of_err(200));
    assert!(mean.abs() < 4.0 * err);

    // AR(1) with rho = 0.9: bins of 1000 >> tau_int = 9.5 give sqrt(2 tau_int / N).
    let x = ar1(0.9, 200_000, 3);
    let (mean, err) = jackknife(&[&x], 1000, &|a| a[0]).unwrap();
    let exact = (2.0 * ar1_tau_int(0.9) / x.len() as f64).sqrt();
    eprintln!(
        "binned jackknife AR(1): err {err:.4e}, exact {exact:.4e} ({:.2} sigma)",
        (err - exact) / (exact * rel_err_of_err(200))
    );
    assert!((err - exact).abs() < 4.0 * exact * rel_err_of_err(200));
    assert!(mean.abs() < 4.0 * err);

    // A trailing remainder shorter than a bin is dropped.
    let (full, _) = jackknife(&[&x[..2000]], 1000, &|a| a[0]).unwrap();
    let (trimmed, _) = jackknife(&[&x[..2999]], 1000, &|a| a[0]).unwrap();
    assert_eq!(full, trimmed);
}

#[test]
fn jackknife_of_a_nonlinear_function_matches_the_delta_method() {
    // The variance <x^2> - <x>^2 of iid N(1, 1) is 1; for a Gaussian its estimator has
    // variance 2 / N (the delta method through the gradient (-2 <x>, 1)).
    let x: Vec<f64> = normal(40_000, 4).iter().map(|v| v + 1.0).collect();
    let x2: Vec<f64> = x.iter().map(|v| v * v).collect();
    let (variance, err) = jackknife(&[&x, &x2], 200, &|a| a[1] - a[0] * a[0]).unwrap();
    let exact_err = (2.0 / x.len() as f64).sqrt();
    assert!((variance - 1.0).abs() < 4.0 * err);
    assert!((err - exact_err).abs() < 4.0 * exact_err * rel_err_of_err(200));
}

#[test]
fn jackknife_rejects_bad_input() {
    let x = normal(100, 5);
    let id = |a: &[f64]| a[0];
    assert!(matches!(
        jackknife(&[], 1, &id),
        Err(StatsError::NoData { .. })
    ));
    assert!(matches!(
        jackknife(&[&x], 0, &id),
        Err(StatsError::InvalidParameter { name: "bin", .. })
    ));
    assert!(matches!(
        jackknife(&[&x], 51, &id),
        Err(StatsError::TooShort { n: 1, min: 2, .. })
    ));
    assert!(matches!(
        jackknife(&[&x, &x[..99]], 1, &id),
        Err(StatsError::RaggedReplicas {
            len: 99,
            expected: 100,
            ..
        })
    ));
    assert!(matches!(
        jackknife(&[&[1.0, f64::INFINITY]], 1, &id),
        Err(StatsError::NonFinite { index: 1, .. })
    ));
    assert!(matches!(
        jackknife(&[&x], 1, &|a| a[0] / 0.0 * 0.0),
        Err(StatsError::DerivedNonFinite { .. })
    ));
}

#[test]
fn split_rhat_detects_unconverged_chains() {
    let chains: Vec<Vec<f64>> = (0..4).map(|c| ar1(0.5, 2000, 10 + c)).collect();
    let views: Vec<&[f64]> = chains.iter().map(Vec::as_slice).collect();
    let converged = split_rhat(&views);
    assert!((converged - 1.0).abs() < 0.01, "{converged}");

    // One chain stuck around a shifted mean.
    let shifted: Vec<f64> = chains[3].iter().map(|x| x + 1.0).collect();
    let stuck = split_rhat(&[views[0], views[1], views[2], &shifted]);
    assert!(stuck > 1.1, "{stuck}");

    // A single chain that drifts by two units: caught only because chains are split.
    let n = chains[0].len() as f64;
    let drifting: Vec<f64> = chains[0]
        .iter()
        .enumerate()
        .map(|(i, x)| x + 2.0 * i as f64 / n)
        .collect();
    let drift = split_rhat(&[&drifting]);
    assert!(drift > 1.1, "{drift}");
    eprintln!("split R-hat: converged {converged:.4}, stuck {stuck:.3}, drift {drift:.3}");

    assert_eq!(split_rhat(&[&[2.0; 10], &[2.0; 12]]), 1.0);
    assert_eq!(split_rhat(&[&[2.0; 10], &[3.0; 10]]), f64::INFINITY);
    assert!(split_rhat(&[&[1.0, 2.0, 3.0]]).is_nan());
    assert!(split_rhat(&[]).is_nan());
}

#[test]
fn log_sum_exp_is_stable() {
    assert_eq!(log_sum_exp(&[1000.0, 1000.0]), 1000.0 + 2.0_f64.ln());
    assert_eq!(log_sum_exp(&[f64::NEG_INFINITY, 0.0]), 0.0);
    assert_eq!(log_sum_exp(&[]), f64::NEG_INFINITY);
    assert_eq!(log_sum_exp(&[f64::NEG_INFINITY; 3]), f64::NEG_INFINITY);
    assert_eq!(log_sum_exp(&[1.0, f64::INFINITY]), f64::INFINITY);
    assert!(log_sum_exp(&[1.0, f64::NAN]).is_nan());
    let xs = [-1.5, 0.3, 2.0, -7.0];
    let direct = xs.iter().map(|x: &f64| x.exp()).sum::<f64>().ln();
    assert!((log_sum_exp(&xs) - direct).abs() < 1e-14);
}

#[test]
fn ess_fraction_of_known_weights() {
    assert!((ess_fraction(&[3.0; 100]) - 1.0).abs() < 1e-14);
    assert!((ess_fraction(&[1.0e4; 100]) - 1.0).abs() < 1e-11);
    // w = (1, 3): (1 + 3)^2 / (2 (1 + 9)) = 0.8, whatever the common factor.
    let two_point = [0.0, 3.0_f64.ln()];
    assert!((ess_fraction(&two_point) - 0.8).abs() < 1e-14);
    let shifted = two_point.map(|l| l - 2000.0);
    assert!((ess_fraction(&shifted) - 0.8).abs() < 1e-12);
    assert!(ess_fraction(&[]).is_nan());
}

/// Importance sampling of p(x) ∝ exp(-x^2 / 2) (Z = sqrt(2 pi)) from q = N(0, s^2), s = 1.5.
/// Returns (x, log w).
fn gaussian_importance_samples(n: usize, seed: u64) -> (Vec<f64>, Vec<f64>) {
    let s: f64 = 1.5;
    let x: Vec<f64> = normal(n, seed).iter().map(|z| s * z).collect();
    let log_q = |x: f64| -x * x / (2.0 * s * s) - (s * (2.0 * std::f64::consts::PI).sqrt()).ln();
    let log_w = x.iter().map(|&x| -x * x / 2.0 - log_q(x)).collect();
    (x, log_w)
}

/// Exact relative variance Var_q(w) / Z^2 = s / sqrt(2 - 1/s^2) - 1 for the setup above.
fn gaussian_relative_variance() -> f64 {
    let s: f64 = 1.5;
    s / (2.0 - 1.0 / (s * s)).sqrt() - 1.0
}

#[test]
fn ln_z_of_a_gaussian_matches_the_exact_normalisation() {
    let (_, log_w) = gaussian_importance_samples(50_000, 6);
    let (estimate, err) = ln_z(&log_w).unwrap();
    let exact = 0.5 * (2.0 * std::f64::consts::PI).ln();
    let n = log_w.len() as f64;
    eprintln!(
        "ln Z {estimate:.5} +- {err:.5} (exact {exact:.5}, {:.2} sigma); err exact {:.5}",
        (estimate - exact) / err,
        (gaussian_relative_variance() / n).sqrt()
    );
    assert!((estimate - exact).abs() < 4.0 * err);

    // A constant shift of the log weights shifts ln Z and leaves the error alone.
    let shifted: Vec<f64> = log_w.iter().map(|l| l + 5000.0).collect();
    let (estimate_shifted, err_shifted) = ln_z(&shifted).unwrap();
    assert!((estimate_shifted - 5000.0 - estimate).abs() < 1e-9);
    assert!((err_shifted - err).abs() < 1e-9 * err);

    // ESS fraction against its exact limit 1 / (1 + Var(w) / Z^2), with a jackknife error of
    // (sum w)^2 / (N sum w^2) computed from the weights w / max w.
    let max = log_w.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let w: Vec<f64> = log_w.iter().map(|l| (l - max).exp()).collect();
    let w2: Vec<f64> = w.iter().map(|v| v * v).collect();
    let (jack, jack_err) = jackknife(&[&w, &w2], 250, &|a| a[0] * a[0] / a[1]).unwrap();
    let ess = ess_fraction(&log_w);
    let exact_ess = 1.0 / (1.0 + gaussian_relative_variance());
    assert!((ess - jack).abs() < 1e-12);
    assert!(
        (ess - exact_ess).abs() < 4.0 * jack_err,
        "{ess} vs {exact_ess} +- {jack_err}"
    );
}

#[test]
fn reweighted_mean_of_x_squared_is_one() {
    let (x, log_w) = gaussian_importance_samples(50_000, 7);
    let x2: Vec<f64> = x.iter().map(|v| v * v).collect();
    let (mean, err) = reweighted_mean(&log_w, &x2, 10).unwrap();
    eprintln!(
        "reweighted <x^2> {mean:.5} +- {err:.5} ({:.2} sigma)",
        (mean - 1.0) / err
    );
    assert!((mean - 1.0).abs() < 4.0 * err);
    // Unreweighted, the same samples give <x^2>_q = 2.25, far outside the error.
    assert!((x2.iter().sum::<f64>() / x2.len() as f64 - 1.0).abs() > 10.0 * err);

    // Log space: a shift of 10^5 e-folds changes nothing beyond the rounding of the shifted log
    // weights (1e5 * 2^-52 ~ 2e-11 each).
    let shifted: Vec<f64> = log_w.iter().map(|l| l + 1.0e5).collect();
    let (mean_shifted, err_shifted) = reweighted_mean(&shifted, &x2, 10).unwrap();
    assert!((mean_shifted - mean).abs() < 1e-9 && (err_shifted - err).abs() < 1e-9);

    // Equal weights and bin 1: the plain mean and the naive error.
    let y = normal(1000, 8);
    let (mean, err) = reweighted_mean(&vec![0.0; y.len()], &y, 1).unwrap();
    let (jack_mean, jack_err) = jackknife(&[&y], 1, &|a| a[0]).unwrap();
    assert!((mean - jack_mean).abs() < 1e-13 && (err - jack_err).abs() < 1e-10 * jack_err);
}

/// A free-energy difference of reweighted indicator means, -ln(<1(x > 1)> / <1(x <= 1)>)
/// under N(0, 1) (exact: -ln(Phi(-1) / Phi(1)) = 1.668227...), within 4 sigma of its
/// jackknife error; with one input and the identity it is exactly `reweighted_mean`.
#[test]
fn reweighted_free_energy_difference_matches_the_normal_tails() {
    let (x, log_w) = gaussian_importance_samples(50_000, 11);
    let b: Vec<f64> = x.iter().map(|&v| f64::from(u8::from(v > 1.0))).collect();
    let a: Vec<f64> = b.iter().map(|v| 1.0 - v).collect();
    let (df, err) =
        reweighted_derived(&log_w, &[&a, &b], 10, &|m: &[f64]| -(m[1] / m[0]).ln()).unwrap();
    let exact = -(0.158_655_253_931_457_05_f64 / 0.841_344_746_068_542_9).ln();
    eprintln!("delta_f {df:.5} +- {err:.5} vs {exact:.5}");
    assert!((df - exact).abs() < 4.0 * err && err > 0.0);
    let (mean, mean_err) = reweighted_mean(&log_w, &b, 10).unwrap();
    let (same, same_err) = reweighted_derived(&log_w, &[&b], 10, &|m: &[f64]| m[0]).unwrap();
    assert!((same - mean).abs() < 1e-15 && (same_err - mean_err).abs() < 1e-15);
    // An empty basin gives an infinite difference: an error, not a number.
    let none = vec![0.0; x.len()];
    assert!(
        reweighted_derived(&log_w, &[&a, &none], 10, &|m: &[f64]| -(m[1] / m[0]).ln()).is_err()
    );
}

#[test]
fn importance_estimators_reject_bad_weights() {
    let inf = f64::NEG_INFINITY;
    assert!(matches!(ln_z(&[]), Err(StatsError::NoData { .. })));
    assert!(matches!(ln_z(&[0.0]), Err(StatsError::TooShort { .. })));
    assert!(matches!(
        ln_z(&[inf, inf]),
        Err(StatsError::ZeroWeights { .. })
    ));
    assert!(matches!(
        ln_z(&[0.0, f64::NAN]),
        Err(StatsError::NonFinite { index: 1, .. })
    ));
    assert!(matches!(
        ln_z(&[f64::INFINITY, 0.0]),
        Err(StatsError::NonFinite { index: 0, .. })
    ));
    // Zero weights are fine as long as some weight survives.
    let (estimate, _) = ln_z(&[0.0, inf]).unwrap();
    assert!((estimate - 0.5_f64.ln()).abs() < 1e-15);

    let values = [1.0, 2.0, 3.0, 4.0];
    assert!(matches!(
        reweighted_mean(&[0.0, inf, inf, inf], &values, 1),
        Err(StatsError::ZeroWeights { .. })
    ));
    assert!(matches!(
        reweighted_mean(&[inf; 4], &values, 1),
        Err(StatsError::ZeroWeights { .. })
    ));
    assert!(matches!(
        reweighted_mean(&[0.0; 3], &values, 1),
        Err(StatsError::RaggedReplicas {
            len: 4,
            expected: 3,
            ..
        })
    ));
    assert!(matches!(
        reweighted_mean(&[0.0; 4], &values, 3),
        Err(StatsError::TooShort { .. })
    ));
    assert!(matches!(
        reweighted_mean(&[0.0; 4], &values, 0),
        Err(StatsError::InvalidParameter { .. })
    ));
    assert!(matches!(
        reweighted_mean(&[0.0; 4], &[1.0, f64::NAN, 0.0, 0.0], 1),
        Err(StatsError::NonFinite { index: 1, .. })
    ));
    // Weights w = (1, 0, 3, 0) on values (1, 2, 3, 4): (1 + 9) / 4 = 2.5.
    let (mean, _) = reweighted_mean(&[0.0, inf, 3.0_f64.ln(), inf], &values, 2).unwrap();
    assert!((mean - 2.5).abs() < 1e-14);
}
