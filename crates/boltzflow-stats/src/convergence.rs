//! Convergence diagnostics across chains.

/// Split R-hat (Gelman-Rubin with split chains; the classic, rank-free form of
/// Vehtari et al. 2021, Bayesian Anal. 16, 667).
///
/// Each chain keeps its last `n = min_r N_r` points (so chains of different lengths compare the
/// same amount of data), and is split into a first and a second half of `n / 2` points (the
/// middle point is dropped when n is odd), giving m = 2R sub-chains of length L = n / 2. With
/// sub-chain means theta_j, sample variances s_j^2 (divisor L - 1) and theta = mean theta_j,
///
/// ```text
/// W = mean_j s_j^2,   B = L / (m - 1) sum_j (theta_j - theta)^2,
/// var+ = (L - 1) / L W + B / L,   R-hat = sqrt(var+ / W).
/// ```
///
/// R-hat -> 1 for chains that sample the same distribution; a common threshold for
/// convergence is R-hat < 1.01. Splitting also flags a drift within a single chain.
/// Degenerate cases: NaN when L < 2 (fewer than 4 points in the shortest chain) or the data are
/// non-finite; 1 when every chain is the same constant; +inf when each chain is constant but
/// they differ.
pub fn split_rhat(replicas: &[&[f64]]) -> f64 {
    let n = replicas.iter().map(|r| r.len()).min().unwrap_or(0);
    let half = n / 2;
    if half < 2 {
        return f64::NAN;
    }
    let sub_chains: Vec<&[f64]> = replicas
        .iter()
        .flat_map(|r| {
            let kept = &r[r.len() - n..];
            [&kept[..half], &kept[n - half..]]
        })
        .collect();
    let len = half as f64;
    let m = sub_chains.len() as f64;
    let means: Vec<f64> = sub_chains
        .iter()
        .map(|c| c.iter().sum::<f64>() / len)
        .collect();
    let within = sub_chains
        .iter()
        .zip(&means)
        .map(|(c, mean)| c.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (len - 1.0))
        .sum::<f64>()
        / m;
    let grand_mean = means.iter().sum::<f64>() / m;
    let between = len / (m - 1.0) * means.iter().map(|t| (t - grand_mean).powi(2)).sum::<f64>();
    if within == 0.0 {
        return if between == 0.0 { 1.0 } else { f64::INFINITY };
    }
    let var_plus = (len - 1.0) / len * within + between / len;
    (var_plus / within).sqrt()
}
