//! `boltzflow analyze`: every observable of an ensemble file with Gamma-method errors,
//! tau_int, split R-hat across chains, and the deviation from the exact value in sigma.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use boltzflow_mcmc::chains::SAMPLER_SERIES;
use boltzflow_stats::{Estimate, gamma_method, gamma_method_derived, split_rhat};
use boltzflow_store::EnsembleReader;
use boltzflow_targets::LatticeFile;

/// Wolff's S parameter of the automatic window.
const S_TAU: f64 = 2.0;

/// One observable's analysis.
#[derive(Clone, Debug, Serialize)]
pub struct ObservableReport {
    pub mean: f64,
    pub err: f64,
    pub tau_int: f64,
    pub tau_int_err: f64,
    pub window: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rhat: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exact: Option<f64>,
    /// (mean - exact) / err.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sigma: Option<f64>,
}

/// The analysis of one file, as printed by `analyze --json`.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub file: String,
    pub kind: String,
    pub theory: String,
    pub sampler: Option<String>,
    pub chains: usize,
    pub draws: usize,
    pub acceptance: f64,
    /// Action (or force) evaluations per draw, summed over the updates between draws.
    pub action_evals_per_draw: f64,
    pub observables: BTreeMap<String, ObservableReport>,
    /// Exact values the theory admits, including those not measured here (e.g. ln_z).
    pub exact: BTreeMap<String, f64>,
}

/// Analyses an ensemble file.
pub fn analyze(path: &Path) -> Result<Report> {
    let reader = EnsembleReader::open(path)?;
    let meta = reader.meta();
    let lattice = LatticeFile::parse(&meta.lattice_toml)
        .with_context(|| format!("{}: stored lattice definition", path.display()))?;
    let target = lattice.target.build()?;
    let exact = target.exact();
    let draws = reader.draws();
    if draws < 2 {
        anyhow::bail!(
            "{} holds {draws} committed draws; run more (or --resume the run) before analysing",
            path.display()
        );
    }
    let config: toml::Table = toml::from_str(&meta.config_toml).unwrap_or_default();
    let sampler = config
        .get("mcmc")
        .and_then(|m| m.get("sampler"))
        .and_then(|s| s.as_str())
        .map(String::from);

    let mut series = BTreeMap::new();
    for name in reader.series_names() {
        series.insert(name.clone(), reader.series(&name)?);
    }
    let mean_of = |name: &str| -> f64 {
        series.get(name).map_or(f64::NAN, |chains| {
            let n: usize = chains.iter().map(Vec::len).sum();
            chains.iter().flatten().sum::<f64>() / n as f64
        })
    };
    let acceptance = mean_of("acceptance");
    let action_evals_per_draw = mean_of("action_evals");

    let mut observables = BTreeMap::new();
    for (name, chains) in &series {
        if SAMPLER_SERIES.contains(&name.as_str()) {
            continue;
        }
        let replicas: Vec<&[f64]> = chains.iter().map(Vec::as_slice).collect();
        let estimate = gamma_method(&replicas, S_TAU)
            .with_context(|| format!("{}: observable {name}", path.display()))?;
        let rhat = (replicas.len() > 1).then(|| split_rhat(&replicas));
        observables.insert(
            name.clone(),
            report(estimate, rhat, exact.get(name).copied()),
        );
    }
    for derived in target.derived() {
        let Some(inputs) = derived
            .inputs
            .iter()
            .map(|n| {
                series
                    .get(*n)
                    .map(|c| c.iter().map(Vec::as_slice).collect::<Vec<_>>())
            })
            .collect::<Option<Vec<_>>>()
        else {
            continue;
        };
        let f = derived.f;
        match gamma_method_derived(&inputs, &|means: &[f64]| f(means), S_TAU) {
            Ok(estimate) => {
                let exact_value = exact.get(derived.name).copied();
                observables.insert(
                    derived.name.to_string(),
                    report(estimate, None, exact_value),
                );
            }
            Err(e) => tracing::warn!("{}: {e}", derived.name),
        }
    }
    Ok(Report {
        file: path.display().to_string(),
        kind: meta.kind.clone(),
        theory: target.theory().to_string(),
        sampler,
        chains: reader.chains(),
        draws,
        acceptance,
        action_evals_per_draw,
        observables,
        exact,
    })
}

fn report(e: Estimate, rhat: Option<f64>, exact: Option<f64>) -> ObservableReport {
    let sigma = exact.and_then(|x| (e.err > 0.0).then(|| (e.mean - x) / e.err));
    ObservableReport {
        mean: e.mean,
        err: e.err,
        tau_int: e.tau_int,
        tau_int_err: e.tau_int_err,
        window: e.window,
        rhat,
        exact,
        sigma,
    }
}

/// Formats `mean ± err` as `0.5012(31)`: two significant digits of the error.
pub fn format_value(mean: f64, err: f64) -> String {
    if !err.is_finite() || err <= 0.0 {
        return format!("{mean:.6}");
    }
    let digits = (1 - err.log10().floor() as i32).clamp(0, 12) as usize;
    let scaled = (err * 10f64.powi(digits as i32)).round() as i64;
    format!("{mean:.digits$}({scaled})")
}

/// The human-readable table.
pub fn print_table(r: &Report) {
    println!(
        "{}: {} {} ensemble, {} chains x {} draws, sampler {}, acceptance {:.3}",
        r.file,
        r.theory,
        r.kind,
        r.chains,
        r.draws,
        r.sampler.as_deref().unwrap_or("-"),
        r.acceptance
    );
    println!(
        "{:<16} {:>22} {:>14} {:>7} {:>16} {:>8}",
        "observable", "mean(err)", "tau_int", "R-hat", "exact", "sigma"
    );
    for (name, o) in &r.observables {
        println!(
            "{:<16} {:>22} {:>14} {:>7} {:>16} {:>8}",
            name,
            format_value(o.mean, o.err),
            format!("{:.2}({:.2})", o.tau_int, o.tau_int_err),
            o.rhat.map_or("-".into(), |x| format!("{x:.3}")),
            o.exact.map_or("-".into(), |x| format!("{x:.8}")),
            o.sigma.map_or("-".into(), |s| format!("{s:+.2}")),
        );
    }
    let unmeasured: Vec<String> = r
        .exact
        .iter()
        .filter(|(k, _)| !r.observables.contains_key(*k))
        .map(|(k, v)| format!("{k} = {v:.10}"))
        .collect();
    if !unmeasured.is_empty() {
        println!("exact, not measured by this run: {}", unmeasured.join(", "));
    }
}

#[cfg(test)]
mod tests {
    use super::format_value;

    #[test]
    fn values_print_with_two_error_digits() {
        assert_eq!(format_value(0.50123, 0.0031), "0.5012(31)");
        assert_eq!(format_value(12.345, 1.2), "12.3(12)");
        assert_eq!(format_value(1.0, 0.0), "1.000000");
    }
}
