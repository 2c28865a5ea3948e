//! Wolff's Gamma method against processes with exactly known autocorrelations.

mod common;

use boltzflow_stats::{Estimate, StatsError, autocorrelation, gamma_method, gamma_method_derived};
use common::{ar1, ar1_tau_int};

/// Wolff's error of the error, `err sqrt((W + 1/2) / N)` (UWerr's `ddvalue`).
fn err_of_err(e: &Estimate) -> f64 {
    e.err * ((e.window as f64 + 0.5) / e.n as f64).sqrt()
}

#[test]
fn ar1_tau_int_and_error_match_exact_values() {
    for (seed, rho, n) in [(1, 0.0, 100_000), (2, 0.5, 100_000), (3, 0.9, 200_000)] {
        let x = ar1(rho, n, seed);
        let e = gamma_method(&[&x], 2.0).unwrap();
        let tau = ar1_tau_int(rho);
        let exact_err = (2.0 * tau / n as f64).sqrt();
        eprintln!(
            "rho {rho}: tau_int {:.4} +- {:.4} (exact {tau:.4}, {:.2} sigma), W {}, err {:.3e} \
             (exact {exact_err:.3e}, {:.2} sigma), mean {:.2} sigma",
            e.tau_int,
            e.tau_int_err,
            (e.tau_int - tau) / e.tau_int_err,
            e.window,
            e.err,
            (e.err - exact_err) / err_of_err(&e),
            e.mean / e.err
        );
        assert_eq!(e.n, n);
        assert!((e.tau_int - tau).abs() < 4.0 * e.tau_int_err, "{e:?}");
        assert!((e.err - exact_err).abs() < 4.0 * err_of_err(&e), "{e:?}");
        assert!(e.mean.abs() < 4.0 * e.err, "{e:?}");
    }
}

#[test]
fn error_is_calibrated_over_independent_replicas() {
    // P(|mean| / err < 1) = 0.6827 for an honest one-sigma error; a naive error that ignores
    // tau_int = 1.5 would give P(|z| < 1/sqrt(3)) = 0.44.
    let trials = 400;
    let inside = (0..trials)
        .filter(|&seed| {
            let x = ar1(0.5, 1000, 1000 + seed);
            let e = gamma_method(&[&x], 2.0).unwrap();
            e.mean.abs() < e.err
        })
        .count();
    let p = 0.682_689_492;
    let fraction = inside as f64 / trials as f64;
    let sigma = (p * (1.0 - p) / trials as f64).sqrt();
    eprintln!(
        "coverage {fraction:.4} (expected {p:.4}, {:.2} sigma)",
        (fraction - p) / sigma
    );
    assert!((fraction - p).abs() < 4.0 * sigma);
}

#[test]
fn pooled_replicas_agree_with_one_long_chain() {
    let rho = 0.9;
    let lengths = [
        15_000, 20_000, 25_000, 30_000, 35_000, 25_000, 20_000, 30_000,
    ];
    let replicas: Vec<Vec<f64>> = lengths
        .iter()
        .enumerate()
        .map(|(r, &n)| ar1(rho, n, 100 + r as u64))
        .collect();
    let views: Vec<&[f64]> = replicas.iter().map(Vec::as_slice).collect();
    let total: usize = lengths.iter().sum();
    let pooled = gamma_method(&views, 2.0).unwrap();
    let long = gamma_method(&[&ar1(rho, total, 99)], 2.0).unwrap();
    let tau = ar1_tau_int(rho);
    eprintln!("pooled {pooled:?}\nlong   {long:?}");
    assert_eq!(pooled.n, total);
    let combined = pooled.tau_int_err.hypot(long.tau_int_err);
    assert!((pooled.tau_int - long.tau_int).abs() < 4.0 * combined);
    assert!((pooled.tau_int - tau).abs() < 4.0 * pooled.tau_int_err);
    let exact_err = (2.0 * tau / total as f64).sqrt();
    assert!((pooled.err - exact_err).abs() < 4.0 * err_of_err(&pooled));
    assert!(pooled.mean.abs() < 4.0 * pooled.err);
    // The mean is the N_r-weighted mean of the replica means.
    let weighted = replicas.iter().map(|r| r.iter().sum::<f64>()).sum::<f64>() / total as f64;
    assert!((pooled.mean - weighted).abs() < 1e-14);
}

/// UWerr transcribed literally: Gamma(t) for every t up to min N_r / 2, then the window.
fn uwerr_reference(replicas: &[&[f64]], s_tau: f64) -> (f64, f64, f64, f64, usize) {
    let n: usize = replicas.iter().map(|r| r.len()).sum();
    let n_f = n as f64;
    let mean = replicas
        .iter()
        .map(|r| r.len() as f64 * (r.iter().sum::<f64>() / r.len() as f64))
        .sum::<f64>()
        / n_f;
    let t_max = replicas.iter().map(|r| r.len()).min().unwrap() / 2;
    let gamma: Vec<f64> = (0..=t_max)
        .map(|t| {
            let mut sum = 0.0;
            for r in replicas {
                for i in 0..r.len() - t {
                    sum += (r[i] - mean) * (r[i + t] - mean);
                }
            }
            sum / (n - replicas.len() * t) as f64
        })
        .collect();
    let mut window = t_max;
    if s_tau == 0.0 {
        window = 0;
    } else {
        for w in 1..=t_max {
            let tau = 0.5 + gamma[1..=w].iter().sum::<f64>() / gamma[0];
            let tau_w = if tau <= 0.5 {
                f64::EPSILON
            } else {
                s_tau / ((2.0 * tau + 1.0) / (2.0 * tau - 1.0)).ln()
            };
            if (-(w as f64) / tau_w).exp() - tau_w / (w as f64 * n_f).sqrt() < 0.0 {
                window = w;
                break;
            }
        }
    }
    let c_f_raw = gamma[0] + 2.0 * gamma[1..=window].iter().sum::<f64>();
    let corrected: Vec<f64> = gamma.iter().map(|g| g + c_f_raw / n_f).collect();
    let c_f = corrected[0] + 2.0 * corrected[1..=window].iter().sum::<f64>();
    let tau = c_f / (2.0 * corrected[0]);
    let tau_err = 2.0 * tau * ((window as f64 + 0.5 - tau) / n_f).sqrt();
    (mean, (c_f / n_f).sqrt(), tau, tau_err, window)
}

#[test]
fn lazy_windowing_reproduces_literal_uwerr() {
    let replicas = [ar1(0.7, 500, 7), ar1(0.7, 730, 8), ar1(0.7, 911, 9)];
    let views: Vec<&[f64]> = replicas.iter().map(Vec::as_slice).collect();
    for s_tau in [0.0, 1.0, 2.0, 3.5] {
        let e = gamma_method(&views, s_tau).unwrap();
        let (mean, err, tau, tau_err, window) = uwerr_reference(&views, s_tau);
        assert_eq!(e.window, window, "s_tau {s_tau}");
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-10 * b.abs().max(1e-300);
        assert!(close(e.mean, mean) || (e.mean - mean).abs() < 1e-15);
        assert!(close(e.err, err), "s_tau {s_tau}: {} vs {err}", e.err);
        assert!(
            close(e.tau_int, tau),
            "s_tau {s_tau}: {} vs {tau}",
            e.tau_int
        );
        assert!(close(e.tau_int_err, tau_err) || (s_tau == 0.0 && e.tau_int_err == 0.0));
    }
}

#[test]
fn derived_kurtosis_of_gaussian_ar1_is_three() {
    // For a Gaussian process <x^4> / <x^2>^2 = 3 and <x^2> / <x^4> = 1/3 exactly.
    let replicas: Vec<Vec<f64>> = (0..4).map(|r| ar1(0.5, 50_000, 200 + r)).collect();
    let squares: Vec<Vec<f64>> = replicas
        .iter()
        .map(|r| r.iter().map(|x| x * x).collect())
        .collect();
    let fourths: Vec<Vec<f64>> = squares
        .iter()
        .map(|r| r.iter().map(|x2| x2 * x2).collect())
        .collect();
    let observables = vec![
        squares.iter().map(Vec::as_slice).collect::<Vec<_>>(),
        fourths.iter().map(Vec::as_slice).collect::<Vec<_>>(),
    ];
    let kurtosis = gamma_method_derived(&observables, &|a| a[1] / (a[0] * a[0]), 2.0).unwrap();
    let ratio = gamma_method_derived(&observables, &|a| a[0] / a[1], 2.0).unwrap();
    eprintln!("kurtosis {kurtosis:?}\nratio {ratio:?}");
    assert!((kurtosis.mean - 3.0).abs() < 4.0 * kurtosis.err);
    assert!((ratio.mean - 1.0 / 3.0).abs() < 4.0 * ratio.err);
    // With Hermite polynomials He_2 = x^2 - 1, He_4 = x^4 - 6 x^2 + 3 (variances 2, 24,
    // autocorrelations rho^{2t}, rho^{4t}), the gradient projections are
    // kurtosis: x^4 - 6 x^2 = He_4 + const, ratio: 3 x^2 - x^4 = -(He_4 + 3 He_2) + const,
    // so tau_int = 1/2 + (sum_k c_k^2 Var(He_k) S_k) / (sum_k c_k^2 Var(He_k)),
    // with S_k = sum_{t>=1} rho^{kt} = rho^k / (1 - rho^k).
    let s = |k: i32| 0.5_f64.powi(k) / (1.0 - 0.5_f64.powi(k));
    let tau_kurtosis = 0.5 + s(4);
    let tau_ratio = 0.5 + (24.0 * s(4) + 9.0 * 2.0 * s(2)) / (24.0 + 9.0 * 2.0);
    assert!((kurtosis.tau_int - tau_kurtosis).abs() < 4.0 * kurtosis.tau_int_err);
    // Error of the kurtosis: sqrt(2 tau_int Var(He_4) / N).
    let exact_err = (2.0 * tau_kurtosis * 24.0 / kurtosis.n as f64).sqrt();
    assert!((kurtosis.err - exact_err).abs() < 4.0 * err_of_err(&kurtosis));
    assert!((ratio.tau_int - tau_ratio).abs() < 4.0 * ratio.tau_int_err);
}

#[test]
fn derived_identity_equals_primary_analysis() {
    let replicas = [ar1(0.8, 3000, 11), ar1(0.8, 4000, 12), ar1(0.8, 5000, 13)];
    let views: Vec<&[f64]> = replicas.iter().map(Vec::as_slice).collect();
    let primary = gamma_method(&views, 2.0).unwrap();
    let derived = gamma_method_derived(std::slice::from_ref(&views), &|a| a[0], 2.0).unwrap();
    assert_eq!(primary.window, derived.window);
    assert_eq!(primary.n, derived.n);
    for (a, b) in [
        (primary.mean, derived.mean),
        (primary.err, derived.err),
        (primary.tau_int, derived.tau_int),
        (primary.tau_int_err, derived.tau_int_err),
    ] {
        assert!(
            (a - b).abs() <= 1e-10 * a.abs().max(1e-12),
            "{primary:?} vs {derived:?}"
        );
    }
    // A linear f scales mean and error by its slope (an exact check of the gradient).
    let scaled = gamma_method_derived(&[views], &|a| 3.0 * a[0] - 2.0, 2.0).unwrap();
    assert!((scaled.mean - (3.0 * primary.mean - 2.0)).abs() < 1e-10);
    assert!((scaled.err - 3.0 * primary.err).abs() < 1e-10 * primary.err);
}

#[test]
fn constant_series_has_zero_error() {
    let x = vec![2.5; 100];
    let e = gamma_method(&[&x, &x[..50]], 2.0).unwrap();
    assert_eq!(
        (e.mean, e.err, e.tau_int, e.window, e.n),
        (2.5, 0.0, 0.5, 0, 150)
    );
    let d = gamma_method_derived(&[vec![&x[..]]], &|a| a[0] * a[0], 2.0).unwrap();
    assert_eq!((d.mean, d.err, d.tau_int), (6.25, 0.0, 0.5));
    assert_eq!(autocorrelation(&[&x], 2), vec![1.0, 0.0, 0.0]);
}

#[test]
fn invalid_input_is_an_error_not_a_panic() {
    let x = ar1(0.5, 100, 5);
    let nan = [1.0, f64::NAN, 2.0, 3.0, 4.0];
    assert!(matches!(
        gamma_method(&[], 2.0),
        Err(StatsError::NoData { .. })
    ));
    assert!(matches!(
        gamma_method(&[&x, &x[..3]], 2.0),
        Err(StatsError::TooShort { n: 3, min: 4, .. })
    ));
    assert!(matches!(
        gamma_method(&[&nan], 2.0),
        Err(StatsError::NonFinite { index: 1, .. })
    ));
    for s_tau in [-1.0, f64::NAN, f64::INFINITY] {
        assert!(matches!(
            gamma_method(&[&x], s_tau),
            Err(StatsError::InvalidParameter { name: "s_tau", .. })
        ));
    }
    // Alternating series: rho(1) = -1, so C_F < 0.
    let alternating: Vec<f64> = (0..100)
        .map(|i| if i % 2 == 0 { 1.0 } else { -1.0 })
        .collect();
    assert!(matches!(
        gamma_method(&[&alternating], 2.0),
        Err(StatsError::PathologicalGamma { .. })
    ));
    assert!(matches!(
        gamma_method_derived(&[], &|a| a[0], 2.0),
        Err(StatsError::NoData { .. })
    ));
    assert!(matches!(
        gamma_method_derived(&[vec![&x[..]], vec![&x[..50]]], &|a| a[0], 2.0),
        Err(StatsError::RaggedReplicas {
            len: 50,
            expected: 100,
            ..
        })
    ));
    assert!(matches!(
        gamma_method_derived(&[vec![&x[..]], vec![&x[..], &x[..]]], &|a| a[0], 2.0),
        Err(StatsError::RaggedReplicas {
            len: 2,
            expected: 1,
            ..
        })
    ));
    assert!(matches!(
        gamma_method_derived(&[vec![&x[..]]], &|a| a[0].ln() * f64::NAN, 2.0),
        Err(StatsError::DerivedNonFinite { .. })
    ));
}

#[test]
fn autocorrelation_follows_rho_to_the_t() {
    let phi: f64 = 0.8;
    let n = 200_000;
    let x = ar1(phi, n, 21);
    let rho = autocorrelation(&[&x[..n / 2], &x[n / 2..]], 12);
    assert_eq!(rho.len(), 13);
    assert_eq!(rho[0], 1.0);
    for t in 1..=12 {
        // Bartlett's variance of rho_hat(t) for AR(1).
        let p2 = phi.powi(2 * t as i32);
        let var =
            ((1.0 + phi * phi) * (1.0 - p2) / (1.0 - phi * phi) - 2.0 * t as f64 * p2) / n as f64;
        let exact = phi.powi(t as i32);
        assert!(
            (rho[t] - exact).abs() < 4.0 * var.sqrt(),
            "t {t}: {} vs {exact} +- {}",
            rho[t],
            var.sqrt()
        );
    }
    assert_eq!(autocorrelation(&[&x[..5]], 100).len(), 5);
    assert!(autocorrelation(&[], 3).is_empty());
}

#[test]
/// A long series is analysed at O(N W) cost (0.04 s for 1e6 points on the development
/// machine; timing is reported, not asserted, since test machines are shared).
fn a_million_points_are_analysed() {
    let x = ar1(0.9, 1_000_000, 31);
    let start = std::time::Instant::now();
    let e = gamma_method(&[&x], 2.0).unwrap();
    let elapsed = start.elapsed().as_secs_f64();
    eprintln!(
        "gamma_method on 1e6 points: {elapsed:.3} s, W = {}",
        e.window
    );
    assert!((e.tau_int - ar1_tau_int(0.9)).abs() < 4.0 * e.tau_int_err);
}
