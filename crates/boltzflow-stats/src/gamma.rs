//! Wolff's Gamma method with automatic windowing (U. Wolff, Comput. Phys. Commun. 156 (2004)
//! 143, hep-lat/0306017), following his reference implementation UWerr.
//!
//! Notation: replicas r = 1..R of lengths N_r, N = sum_r N_r, measurements a_{r,i}. With the
//! total mean abar = sum_{r,i} a_{r,i} / N (the N_r-weighted mean of the replica means),
//!
//! ```text
//! Gamma(t) = sum_r sum_{i=1}^{N_r - t} (a_{r,i} - abar)(a_{r,i+t} - abar) / sum_r (N_r - t),
//! rho(t)   = Gamma(t) / Gamma(0),
//! tau(W)   = 1/2 + sum_{t=1}^{W} rho(t),
//! C_F(W)   = Gamma(0) + 2 sum_{t=1}^{W} Gamma(t) = 2 tau(W) Gamma(0).
//! ```
//!
//! The window W is the first W = 1, 2, ... with
//! `g(W) = exp(-W / tau_W) - tau_W / sqrt(W N) < 0`, where
//! `tau_W = S / ln((2 tau(W) + 1) / (2 tau(W) - 1))` (and tau_W -> 0 when tau(W) <= 1/2).
//! Gamma(t) is computed lazily while W is searched, so the cost is O(N W), and W never exceeds
//! min_r N_r / 2 (UWerr's limit; W is that limit if the criterion never triggers).
//! The bias of Gamma from subtracting the estimated mean is then removed as in UWerr,
//! `Gamma(t) += C_F(W) / N`, and with the corrected values
//!
//! ```text
//! err         = sqrt(C_F(W) / N) = sqrt(2 tau_int Gamma(0) / N),
//! tau_int     = C_F(W) / (2 Gamma(0)),
//! tau_int_err = 2 tau_int sqrt((W + 1/2 - tau_int) / N)      (Wolff eq. 42).
//! ```

use crate::{Estimate, Result, StatsError, check_finite};

/// The shortest replica the Gamma method accepts.
const MIN_REPLICA_LEN: usize = 4;

/// Outcome of the windowing procedure on a set of deviation series.
struct Windowed {
    err: f64,
    tau_int: f64,
    tau_int_err: f64,
    window: usize,
}

/// Wolff's Gamma method for one observable measured on several replicas (independent chains).
///
/// `replicas[r]` is the series of replica r in Monte Carlo time (lengths may differ; each needs
/// at least 4 points). `s_tau` is Wolff's S (2.0 is the usual choice; 0 assumes no
/// autocorrelation and sets W = 0). The mean is the total mean, i.e. the N_r-weighted mean of
/// the replica means. A constant series gives `err = 0`, `tau_int = 1/2`, `window = 0`.
/// See the module documentation for the formulas.
pub fn gamma_method(replicas: &[&[f64]], s_tau: f64) -> Result<Estimate> {
    check_s_tau(s_tau)?;
    check_replicas("replica", replicas)?;
    let n: usize = replicas.iter().map(|r| r.len()).sum();
    let mean = replicas.iter().flat_map(|r| r.iter()).sum::<f64>() / n as f64;
    let deviations: Vec<Vec<f64>> = replicas
        .iter()
        .map(|r| r.iter().map(|a| a - mean).collect())
        .collect();
    let windowed = windowed_gamma(&deviations, n, s_tau)?;
    Ok(Estimate {
        mean,
        err: windowed.err,
        tau_int: windowed.tau_int,
        tau_int_err: windowed.tau_int_err,
        window: windowed.window,
        n,
    })
}

/// Wolff's Gamma method for a derived quantity F = f(<A_1>, ..., <A_n>).
///
/// `observables[a][r]` is the series of observable a on replica r; every observable must have
/// the same number of replicas and the same replica lengths (measured on the same draws).
/// The fluctuations are projected on the gradient of f at the total means abar,
/// `delta_{r,i} = sum_a (df/dA_a)(abar) (a_{a,r,i} - abar_a)`, and the projected series is
/// analysed as in [`gamma_method`]. The gradient is a central difference with Wolff's step
/// `h_a = sigma_a / (2 sqrt(N))` (sigma_a the standard deviation of observable a; a constant
/// observable gets derivative 0), so f only needs to be smooth on the scale of the errors.
///
/// The value is f(abar). With R >= 2 replicas and f finite at every replica mean, the
/// O(1/N) bias is cancelled as in UWerr: with `Fbar = sum_r N_r f(abar_r) / N`, the value is
/// `f(abar) - (Fbar - f(abar)) / (R - 1)`.
pub fn gamma_method_derived(
    observables: &[Vec<&[f64]>],
    f: &dyn Fn(&[f64]) -> f64,
    s_tau: f64,
) -> Result<Estimate> {
    check_s_tau(s_tau)?;
    let Some(first) = observables.first() else {
        return Err(StatsError::NoData {
            what: "derived quantity (no observables)",
        });
    };
    for replicas in observables {
        check_replicas("replica", replicas)?;
        if replicas.len() != first.len() {
            return Err(StatsError::RaggedReplicas {
                what: "number of replicas of an observable",
                len: replicas.len(),
                expected: first.len(),
            });
        }
        for (series, reference) in replicas.iter().zip(first.iter()) {
            if series.len() != reference.len() {
                return Err(StatsError::RaggedReplicas {
                    what: "a replica of an observable",
                    len: series.len(),
                    expected: reference.len(),
                });
            }
        }
    }
    let n: usize = first.iter().map(|r| r.len()).sum();
    let n_f = n as f64;

    // Total means abar_a and replica means abar_{a,r}.
    let replica_means: Vec<Vec<f64>> = observables
        .iter()
        .map(|replicas| {
            replicas
                .iter()
                .map(|r| r.iter().sum::<f64>() / r.len() as f64)
                .collect()
        })
        .collect();
    let means: Vec<f64> = replica_means
        .iter()
        .map(|per_replica| {
            per_replica
                .iter()
                .zip(first.iter())
                .map(|(m, r)| m * r.len() as f64)
                .sum::<f64>()
                / n_f
        })
        .collect();

    let value = f(&means);
    if !value.is_finite() {
        return Err(StatsError::DerivedNonFinite { value });
    }

    // Central-difference gradient with step h_a = sigma_a / (2 sqrt(N)).
    let mut gradient = vec![0.0; observables.len()];
    let mut shifted = means.clone();
    for (a, replicas) in observables.iter().enumerate() {
        let variance = replicas
            .iter()
            .flat_map(|r| r.iter())
            .map(|x| (x - means[a]).powi(2))
            .sum::<f64>()
            / n_f;
        let h = variance.sqrt() / (2.0 * n_f.sqrt());
        if h > 0.0 {
            shifted[a] = means[a] + h;
            let up = f(&shifted);
            shifted[a] = means[a] - h;
            let down = f(&shifted);
            shifted[a] = means[a];
            gradient[a] = (up - down) / (2.0 * h);
            if !gradient[a].is_finite() {
                return Err(StatsError::DerivedNonFinite { value: gradient[a] });
            }
        }
    }

    // Projected deviations delta_{r,i}.
    let deviations: Vec<Vec<f64>> = (0..first.len())
        .map(|r| {
            let mut delta = vec![0.0; first[r].len()];
            for (a, replicas) in observables.iter().enumerate() {
                for (d, x) in delta.iter_mut().zip(replicas[r].iter()) {
                    *d += gradient[a] * (x - means[a]);
                }
            }
            delta
        })
        .collect();
    let windowed = windowed_gamma(&deviations, n, s_tau)?;

    // UWerr's cancellation of the O(1/N) bias of f(abar) across replicas.
    let n_replicas = first.len();
    let mut mean = value;
    if n_replicas >= 2 {
        let mut replica_point = vec![0.0; observables.len()];
        let mut weighted = 0.0;
        let mut finite = true;
        for r in 0..n_replicas {
            for (a, per_replica) in replica_means.iter().enumerate() {
                replica_point[a] = per_replica[r];
            }
            let f_r = f(&replica_point);
            finite &= f_r.is_finite();
            weighted += first[r].len() as f64 * f_r;
        }
        if finite {
            mean = value - (weighted / n_f - value) / (n_replicas - 1) as f64;
        }
    }

    Ok(Estimate {
        mean,
        err: windowed.err,
        tau_int: windowed.tau_int,
        tau_int_err: windowed.tau_int_err,
        window: windowed.window,
        n,
    })
}

/// Normalised autocorrelation function rho(t) = Gamma(t) / Gamma(0), t = 0..=t_max, pooled over
/// replicas about the total mean (the estimator of the module documentation, without UWerr's
/// bias correction).
///
/// Lags for which no replica has data (t >= max_r N_r) are left out, so the result has
/// `min(t_max + 1, max_r N_r)` entries. A constant series gives rho = (1, 0, 0, ...); empty
/// input gives an empty vector; non-finite data give NaN.
pub fn autocorrelation(replicas: &[&[f64]], t_max: usize) -> Vec<f64> {
    let n: usize = replicas.iter().map(|r| r.len()).sum();
    let longest = replicas.iter().map(|r| r.len()).max().unwrap_or(0);
    if n == 0 {
        return Vec::new();
    }
    let mean = replicas.iter().flat_map(|r| r.iter()).sum::<f64>() / n as f64;
    let deviations: Vec<Vec<f64>> = replicas
        .iter()
        .map(|r| r.iter().map(|a| a - mean).collect())
        .collect();
    let gamma0 = gamma_at(&deviations, 0);
    (0..=t_max.min(longest - 1))
        .map(|t| {
            if gamma0 == 0.0 {
                if t == 0 { 1.0 } else { 0.0 }
            } else {
                gamma_at(&deviations, t) / gamma0
            }
        })
        .collect()
}

/// Rejects a negative or non-finite S.
fn check_s_tau(s_tau: f64) -> Result<()> {
    if s_tau.is_finite() && s_tau >= 0.0 {
        Ok(())
    } else {
        Err(StatsError::InvalidParameter {
            name: "s_tau",
            value: s_tau,
            fix: "use a finite S >= 0 (2.0 is Wolff's default; 0 assumes no autocorrelation)",
        })
    }
}

/// Checks that there is at least one replica, each long enough and finite.
fn check_replicas(what: &'static str, replicas: &[&[f64]]) -> Result<()> {
    if replicas.is_empty() {
        return Err(StatsError::NoData {
            what: "Gamma method",
        });
    }
    for series in replicas {
        if series.len() < MIN_REPLICA_LEN {
            return Err(StatsError::TooShort {
                what,
                n: series.len(),
                min: MIN_REPLICA_LEN,
            });
        }
        check_finite(what, series)?;
    }
    Ok(())
}

/// Gamma(t) = sum_r sum_i d_{r,i} d_{r,i+t} / sum_r (N_r - t), over replicas with N_r > t.
fn gamma_at(deviations: &[Vec<f64>], t: usize) -> f64 {
    let mut sum = 0.0;
    let mut pairs = 0usize;
    for d in deviations.iter().filter(|d| d.len() > t) {
        sum += dot(&d[..d.len() - t], &d[t..]);
        pairs += d.len() - t;
    }
    sum / pairs as f64
}

/// Dot product with four independent accumulators (lets the compiler pipeline the loop).
fn dot(x: &[f64], y: &[f64]) -> f64 {
    let mut acc = [0.0; 4];
    let (x4, y4) = (x.chunks_exact(4), y.chunks_exact(4));
    let tail: f64 = x4
        .remainder()
        .iter()
        .zip(y4.remainder())
        .map(|(a, b)| a * b)
        .sum();
    for (a, b) in x4.zip(y4) {
        for k in 0..4 {
            acc[k] += a[k] * b[k];
        }
    }
    (acc[0] + acc[1]) + (acc[2] + acc[3]) + tail
}

/// Automatic windowing, bias correction and errors for deviation series d_{r,i} (already
/// centred on the total mean), N = `n` points in all. Replicas have >= `MIN_REPLICA_LEN` points.
fn windowed_gamma(deviations: &[Vec<f64>], n: usize, s_tau: f64) -> Result<Windowed> {
    let n_f = n as f64;
    let gamma0 = gamma_at(deviations, 0);
    if gamma0 == 0.0 {
        return Ok(Windowed {
            err: 0.0,
            tau_int: 0.5,
            tau_int_err: 0.0,
            window: 0,
        });
    }

    // Search W, computing Gamma(t) only up to the window.
    let t_limit = deviations.iter().map(Vec::len).min().unwrap_or(0) / 2;
    let mut gamma = vec![gamma0];
    let mut window = t_limit;
    if s_tau == 0.0 {
        window = 0;
    } else {
        let mut rho_sum = 0.0;
        for t in 1..=t_limit {
            let gamma_t = gamma_at(deviations, t);
            gamma.push(gamma_t);
            rho_sum += gamma_t / gamma0;
            // tau(W) - 1/2 = rho_sum, so (2 tau + 1) / (2 tau - 1) = (rho_sum + 1) / rho_sum.
            let tau_w = if rho_sum <= 0.0 {
                f64::EPSILON
            } else {
                s_tau / ((rho_sum + 1.0) / rho_sum).ln()
            };
            let g = (-(t as f64) / tau_w).exp() - tau_w / (t as f64 * n_f).sqrt();
            if g < 0.0 {
                window = t;
                break;
            }
        }
    }

    let c_f = gamma0 + 2.0 * gamma[1..=window].iter().sum::<f64>();
    if c_f <= 0.0 {
        return Err(StatsError::PathologicalGamma { c_f, window });
    }
    // Bias correction: Gamma(t) += C_F / N for t = 0..=W, hence C_F -> C_F (1 + (2W + 1) / N).
    let gamma0 = gamma0 + c_f / n_f;
    let c_f = c_f * (1.0 + (2 * window + 1) as f64 / n_f);
    let tau_int = c_f / (2.0 * gamma0);
    let w = window as f64;
    Ok(Windowed {
        err: (c_f / n_f).sqrt(),
        tau_int,
        tau_int_err: 2.0 * tau_int * ((w + 0.5 - tau_int).max(0.0) / n_f).sqrt(),
        window,
    })
}
