//! `boltzflow analyze`: every observable of an ensemble file with Gamma-method errors,
//! tau_int, split R-hat across chains, and the deviation from the exact value in sigma.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

use boltzflow_mcmc::chains::SAMPLER_SERIES;
use boltzflow_stats::{Estimate, gamma_method, gamma_method_derived, split_rhat};
use boltzflow_store::EnsembleReader;
use boltzflow_targets::{LatticeFile, Target};

/// Wolff's S parameter of the automatic window.
const S_TAU: f64 = 2.0;

/// Fewest draws per chain the Gamma method analyses.
const MIN_DRAWS: usize = 4;

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
    /// Vector observables component by component (`g` = G(x), `c_t` = C(t), histograms), and
    /// `m_eff` = arccosh[(C(t-1) + C(t+1)) / (2 C(t))] for t = 1 .. L0/2 - 1 where defined.
    pub vectors: BTreeMap<String, VectorReport>,
    /// Exact values the theory admits, including those not measured here (e.g. ln_z).
    pub exact: BTreeMap<String, f64>,
    /// kind "train": the final evaluation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub training: Option<TrainingReport>,
    /// kind "train": every evaluation, series by series (`step`, `loss`, `ess`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub series: Option<BTreeMap<String, Vec<f64>>>,
    /// kind "sample": ESS/N of the importance weights over all samples.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ess: Option<f64>,
    /// kind "sample": ln Z = LSE(log w) - ln N with its error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ln_z: Option<ValueReport>,
    /// kind "sample": importance-reweighted observables sum w O / sum w (binned jackknife,
    /// about 100 bins).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reweighted: Option<BTreeMap<String, ValueReport>>,
    /// kind "sample": the independence Metropolis-Hastings chain.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mh: Option<MhReport>,
}

/// The last evaluation of a training run.
#[derive(Clone, Debug, Serialize)]
pub struct TrainingReport {
    pub steps: f64,
    pub ess: f64,
    pub acceptance: f64,
    pub loss: f64,
    pub loss_err: f64,
    pub steps_per_s: f64,
}

/// An estimate with its error and, where known, the exact value and the deviation in sigma.
#[derive(Clone, Debug, Serialize)]
pub struct ValueReport {
    pub mean: f64,
    pub err: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exact: Option<f64>,
    /// (mean - exact) / err.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sigma: Option<f64>,
}

impl ValueReport {
    fn new((mean, err): (f64, f64), exact: Option<f64>) -> Self {
        let sigma = exact.and_then(|x| (err > 0.0).then(|| (mean - x) / err));
        Self {
            mean,
            err,
            exact,
            sigma,
        }
    }
}

/// Statistics of the independence Metropolis-Hastings chain.
#[derive(Clone, Debug, Serialize)]
pub struct MhReport {
    /// Fraction of accepted proposals.
    pub acceptance: f64,
    /// Longest run of consecutive rejections.
    pub longest_rejection_run: usize,
}

/// One vector observable's analysis, component by component.
#[derive(Clone, Debug, Default, Serialize)]
pub struct VectorReport {
    pub mean: Vec<f64>,
    pub err: Vec<f64>,
    pub tau_int: Vec<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exact: Option<Vec<f64>>,
    /// (mean - exact) / err per component.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sigma: Option<Vec<f64>>,
}

impl VectorReport {
    fn push(&mut self, e: &Estimate) {
        self.mean.push(e.mean);
        self.err.push(e.err);
        self.tau_int.push(e.tau_int);
    }

    fn compare(&mut self, exact: Option<Vec<f64>>) {
        if let Some(x) = exact.filter(|x| x.len() == self.mean.len()) {
            let sigma = self
                .mean
                .iter()
                .zip(&self.err)
                .zip(&x)
                .map(|((m, e), x)| if *e > 0.0 { (m - x) / e } else { f64::NAN })
                .collect();
            self.sigma = Some(sigma);
            self.exact = Some(x);
        }
    }
}

/// Effective mass from C(t-1), C(t), C(t+1): arccosh[(C(t-1) + C(t+1)) / (2 C(t))].
fn effective_mass(c: &[f64]) -> f64 {
    ((c[0] + c[2]) / (2.0 * c[1])).acosh()
}

/// Component-wise Gamma-method analysis of a vector observable (`per_chain[chain][draw][k]`),
/// plus the effective mass when it is the zero-momentum correlator `c_t`.
fn analyze_vector(
    name: &str,
    per_chain: &[Vec<Vec<f64>>],
    exact: Option<&Vec<f64>>,
    vectors: &mut BTreeMap<String, VectorReport>,
) -> Result<()> {
    let len = per_chain
        .first()
        .and_then(|c| c.first())
        .map_or(0, Vec::len);
    // components[k][chain] = series of component k on that chain
    let components: Vec<Vec<Vec<f64>>> = (0..len)
        .map(|k| {
            per_chain
                .iter()
                .map(|chain| chain.iter().map(|d| d[k]).collect())
                .collect()
        })
        .collect();
    let mut report = VectorReport::default();
    for (k, series) in components.iter().enumerate() {
        let replicas: Vec<&[f64]> = series.iter().map(Vec::as_slice).collect();
        let estimate = gamma_method(&replicas, S_TAU).unwrap_or_else(|e| {
            tracing::warn!("vector {name}[{k}] not analysed: {e}");
            Estimate {
                mean: f64::NAN,
                err: f64::NAN,
                tau_int: f64::NAN,
                tau_int_err: f64::NAN,
                window: 0,
                n: 0,
            }
        });
        report.push(&estimate);
    }
    report.compare(exact.cloned());
    vectors.insert(name.to_string(), report);
    if name == "c_t" && len >= 4 {
        let mut m_eff = VectorReport::default();
        for t in 1..len / 2 {
            let inputs: Vec<Vec<&[f64]>> = (t - 1..=t + 1)
                .map(|k| components[k].iter().map(Vec::as_slice).collect())
                .collect();
            match gamma_method_derived(&inputs, &effective_mass, S_TAU) {
                Ok(e) => m_eff.push(&e),
                Err(_) => break, // C(t) lost in noise: the effective mass is undefined from here
            }
        }
        let exact_m_eff = exact.map(|c| {
            (1..len / 2)
                .map(|t| effective_mass(&c[t - 1..=t + 1]))
                .collect()
        });
        let exact_m_eff = exact_m_eff.map(|x: Vec<f64>| x[..m_eff.mean.len()].to_vec());
        m_eff.compare(exact_m_eff);
        if !m_eff.mean.is_empty() {
            vectors.insert("m_eff".to_string(), m_eff);
        }
    }
    Ok(())
}

/// Analyses several ensemble files of one run together (e.g. the per-rank files of a
/// distributed run): their chains are joined, in the order given, into one ensemble (a
/// temporary file, see [`boltzflow_store::collate`]) and analysed as one file.
pub fn analyze_files(paths: &[PathBuf]) -> Result<Report> {
    let [first, rest @ ..] = paths else {
        anyhow::bail!("analyze needs at least one ensemble file");
    };
    if rest.is_empty() {
        return analyze(first);
    }
    let meta = EnsembleReader::open(first)?.meta().clone();
    for path in rest {
        let other = EnsembleReader::open(path)?.meta().clone();
        if other.kind != meta.kind
            || other.config_toml != meta.config_toml
            || other.lattice_toml != meta.lattice_toml
        {
            anyhow::bail!(
                "{} and {} come from different runs (kind, config or lattice differ); analyse files of one run together",
                first.display(),
                path.display()
            );
        }
    }
    let joined = std::env::temp_dir().join(format!(
        "boltzflow-analyze-{}-{}.h5",
        std::process::id(),
        meta.seed
    ));
    let result = boltzflow_store::collate(paths, &joined, 4096)
        .map_err(anyhow::Error::from)
        .and_then(|()| analyze(&joined));
    let _ = std::fs::remove_file(&joined);
    let mut report = result?;
    report.file = paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(" + ");
    Ok(report)
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
    match meta.kind.as_str() {
        "train" => return analyze_train(path, &reader, target.theory(), exact),
        "sample" => return analyze_sample(path, &reader, target.as_ref(), exact),
        _ => {}
    }
    if draws < MIN_DRAWS {
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
        match gamma_method(&replicas, S_TAU) {
            Ok(estimate) => {
                let rhat = (replicas.len() > 1).then(|| split_rhat(&replicas));
                observables.insert(
                    name.clone(),
                    report(estimate, rhat, exact.get(name).copied()),
                );
            }
            Err(e) => tracing::warn!("{}: observable {name} not analysed: {e}", path.display()),
        }
    }
    insert_derived(
        target.as_ref(),
        |name| {
            series
                .get(name)
                .map(|c| c.iter().map(Vec::as_slice).collect())
        },
        &exact,
        &mut observables,
    );
    let exact_vectors = target.exact_vectors();
    let mut vectors = BTreeMap::new();
    for name in reader.vector_names() {
        let per_chain = reader.vector(&name)?;
        analyze_vector(&name, &per_chain, exact_vectors.get(&name), &mut vectors)
            .with_context(|| format!("{}", path.display()))?;
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
        vectors,
        exact,
        training: None,
        series: None,
        ess: None,
        ln_z: None,
        reweighted: None,
        mh: None,
    })
}

/// A report with the fields every kind has; the kind-specific ones empty.
fn base_report(
    path: &Path,
    reader: &EnsembleReader,
    theory: &str,
    exact: BTreeMap<String, f64>,
) -> Report {
    Report {
        file: path.display().to_string(),
        kind: reader.meta().kind.clone(),
        theory: theory.to_string(),
        sampler: None,
        chains: reader.chains(),
        draws: reader.draws(),
        acceptance: f64::NAN,
        action_evals_per_draw: f64::NAN,
        observables: BTreeMap::new(),
        vectors: BTreeMap::new(),
        exact,
        training: None,
        series: None,
        ess: None,
        ln_z: None,
        reweighted: None,
        mh: None,
    }
}

/// Every series of chain 0.
fn chain0_series(reader: &EnsembleReader) -> Result<BTreeMap<String, Vec<f64>>> {
    let mut series = BTreeMap::new();
    for name in reader.series_names() {
        let mut chains = reader.series(&name)?;
        series.insert(name, chains.swap_remove(0));
    }
    Ok(series)
}

/// A training file: the last evaluation and the table of all of them.
fn analyze_train(
    path: &Path,
    reader: &EnsembleReader,
    theory: &str,
    exact: BTreeMap<String, f64>,
) -> Result<Report> {
    if reader.draws() < 1 {
        anyhow::bail!(
            "{} holds no evaluation yet; train for at least train.eval_every steps",
            path.display()
        );
    }
    let series = chain0_series(reader)?;
    let last = |name: &str| {
        series
            .get(name)
            .and_then(|s| s.last().copied())
            .unwrap_or(f64::NAN)
    };
    let training = TrainingReport {
        steps: last("step"),
        ess: last("ess"),
        acceptance: last("acceptance"),
        loss: last("loss"),
        loss_err: last("loss_err"),
        steps_per_s: last("steps_per_s"),
    };
    let mut report = base_report(path, reader, theory, exact);
    report.acceptance = training.acceptance;
    report.training = Some(training);
    report.series = Some(series);
    Ok(report)
}

/// A sample file: importance weights (ESS, ln Z, reweighted observables) over the samples of
/// every chain together, and the independence Metropolis chains (one per chain of the file,
/// i.e. per rank of a distributed run; Gamma method over them as replicas on the proposals'
/// values at `mh_index`, split R-hat across them).
fn analyze_sample(
    path: &Path,
    reader: &EnsembleReader,
    target: &dyn boltzflow_targets::Target,
    exact: BTreeMap<String, f64>,
) -> Result<Report> {
    let n = reader.draws();
    if n < MIN_DRAWS {
        anyhow::bail!(
            "{} holds {n} committed samples; sample more (or --resume the run) before analysing",
            path.display()
        );
    }
    let mut series: BTreeMap<String, Vec<Vec<f64>>> = BTreeMap::new();
    for name in reader.series_names() {
        series.insert(name.clone(), reader.series(&name)?);
    }
    // The importance-sampling estimates see the chains' samples as one set.
    let all = |name: &str| -> Option<Vec<f64>> { series.get(name).map(|c| c.concat()) };
    let log_w = all("log_w")
        .with_context(|| format!("{}: no series log_w; is it a sample file?", path.display()))?;
    let mut report = base_report(path, reader, target.theory(), exact.clone());
    report.action_evals_per_draw = 1.0;
    report.ess = Some(boltzflow_stats::ess_fraction(&log_w));
    report.ln_z = Some(ValueReport::new(
        boltzflow_stats::ln_z(&log_w).with_context(|| format!("{}: ln Z", path.display()))?,
        exact.get("ln_z").copied(),
    ));
    let bin = (log_w.len() / 100).max(1);
    let names: Vec<&String> = series
        .keys()
        .filter(|k| !["log_q", "log_w", "mh_accepted", "mh_index"].contains(&k.as_str()))
        .filter(|k| !k.starts_with("chain_"))
        .collect();
    let mut reweighted = BTreeMap::new();
    for name in &names {
        let values = all(name).expect("a series of the file");
        match boltzflow_stats::reweighted_mean(&log_w, &values, bin) {
            Ok(value) => {
                reweighted.insert(
                    name.to_string(),
                    ValueReport::new(value, exact.get(*name).copied()),
                );
            }
            Err(e) => tracing::warn!("{}: {name} not reweighted: {e}", path.display()),
        }
    }
    // Derived quantities (free-energy differences, Binder cumulant) of reweighted means,
    // with the jackknife over the same bins.
    for derived in target.derived() {
        let Some(inputs) = derived
            .inputs
            .iter()
            .map(|n| all(n))
            .collect::<Option<Vec<_>>>()
        else {
            continue;
        };
        let inputs: Vec<&[f64]> = inputs.iter().map(Vec::as_slice).collect();
        let f = derived.f;
        match boltzflow_stats::reweighted_derived(&log_w, &inputs, bin, &|m: &[f64]| f(m)) {
            Ok(value) => {
                reweighted.insert(
                    derived.name.to_string(),
                    ValueReport::new(value, exact.get(derived.name).copied()),
                );
            }
            Err(e) => tracing::warn!("{}: {} not reweighted: {e}", path.display(), derived.name),
        }
    }
    report.reweighted = Some(reweighted);
    if let (Some(accepted), Some(index)) = (series.get("mh_accepted"), series.get("mh_index")) {
        // Per observable, the MH chain of every file chain: with interleaved local updates
        // the chain's values are stored; otherwise the chain is the proposals at mh_index.
        let chain: BTreeMap<&str, Vec<Vec<f64>>> = names
            .iter()
            .map(|name| {
                let on_chain = match series.get(&format!("chain_{name}")) {
                    Some(values) => values.clone(),
                    None => series[*name]
                        .iter()
                        .zip(index)
                        .map(|(values, index)| index.iter().map(|&i| values[i as usize]).collect())
                        .collect(),
                };
                (name.as_str(), on_chain)
            })
            .collect();
        for (name, chains) in &chain {
            let replicas: Vec<&[f64]> = chains.iter().map(Vec::as_slice).collect();
            match gamma_method(&replicas, S_TAU) {
                Ok(e) => {
                    let rhat = (replicas.len() > 1).then(|| split_rhat(&replicas));
                    report.observables.insert(
                        name.to_string(),
                        self::report(e, rhat, exact.get(*name).copied()),
                    );
                }
                Err(e) => {
                    tracing::warn!("{}: MH chain of {name} not analysed: {e}", path.display())
                }
            }
        }
        insert_derived(
            target,
            |name| {
                chain
                    .get(name)
                    .map(|c| c.iter().map(Vec::as_slice).collect())
            },
            &exact,
            &mut report.observables,
        );
        let accepted_all = accepted.concat();
        let acceptance = accepted_all.iter().sum::<f64>() / accepted_all.len() as f64;
        let mut longest = 0;
        for chain in accepted {
            let mut run = 0;
            for &a in chain {
                run = if a == 0.0 { run + 1 } else { 0 };
                longest = longest.max(run);
            }
        }
        report.acceptance = acceptance;
        report.mh = Some(MhReport {
            acceptance,
            longest_rejection_run: longest,
        });
    }
    Ok(report)
}

/// Analyses the target's derived quantities (Binder cumulant, free-energy differences) by the
/// Gamma method with linear error propagation; `replicas(name)` gives an observable's series
/// per replica. A quantity whose inputs are missing is skipped; one that fails is logged.
fn insert_derived<'a>(
    target: &dyn Target,
    replicas: impl Fn(&str) -> Option<Vec<&'a [f64]>>,
    exact: &BTreeMap<String, f64>,
    observables: &mut BTreeMap<String, ObservableReport>,
) {
    for derived in target.derived() {
        let Some(inputs) = derived
            .inputs
            .iter()
            .map(|n| replicas(n))
            .collect::<Option<Vec<_>>>()
        else {
            continue;
        };
        let f = derived.f;
        match gamma_method_derived(&inputs, &|means: &[f64]| f(means), S_TAU) {
            Ok(e) => {
                let exact_value = exact.get(derived.name).copied();
                observables.insert(derived.name.to_string(), report(e, None, exact_value));
            }
            Err(e) => tracing::warn!("{}: {e}", derived.name),
        }
    }
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
    match r.kind.as_str() {
        "train" => return print_train(r),
        "sample" => return print_sample(r),
        _ => {}
    }
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
    for name in ["c_t", "m_eff"] {
        let Some(v) = r.vectors.get(name) else {
            continue;
        };
        let first = usize::from(name == "m_eff");
        for (k, (mean, err)) in v.mean.iter().zip(&v.err).enumerate() {
            println!(
                "{:<16} {:>22} {:>14} {:>7} {:>16} {:>8}",
                format!("{name}({})", k + first),
                format_value(*mean, *err),
                format!("{:.2}", v.tau_int[k]),
                "-",
                v.exact
                    .as_ref()
                    .map_or("-".into(), |x| format!("{:.8}", x[k])),
                v.sigma
                    .as_ref()
                    .map_or("-".into(), |s| format!("{:+.2}", s[k])),
            );
        }
    }
    if let Some(sigma) = r.vectors.get("g").and_then(|g| g.sigma.as_ref()) {
        let worst = sigma.iter().fold(0.0f64, |w, s| w.max(s.abs()));
        println!(
            "g (G(x), {} components): largest |deviation| from exact {worst:.2} sigma",
            sigma.len()
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

/// The table of a training file: one row per evaluation, then the final numbers.
fn print_train(r: &Report) {
    println!("{}: {} training, {} evaluations", r.file, r.theory, r.draws);
    let Some(series) = &r.series else { return };
    let col = |name: &str| series.get(name).cloned().unwrap_or_default();
    let (step, loss, loss_err, ess, acc, grad, lr, rate) = (
        col("step"),
        col("loss"),
        col("loss_err"),
        col("ess"),
        col("acceptance"),
        col("grad_norm"),
        col("lr"),
        col("steps_per_s"),
    );
    println!(
        "{:>8} {:>20} {:>8} {:>8} {:>10} {:>10} {:>9}",
        "step", "loss(err)", "ESS/N", "accept", "grad_norm", "lr", "steps/s"
    );
    for k in 0..step.len() {
        println!(
            "{:>8} {:>20} {:>8.4} {:>8.4} {:>10.3e} {:>10.3e} {:>9.1}",
            step[k],
            format_value(loss[k], loss_err[k]),
            ess[k],
            acc[k],
            grad[k],
            lr[k],
            rate[k]
        );
    }
    if let Some(t) = &r.training {
        println!(
            "final: step {}, loss {}, ESS/N {:.4}, MH acceptance {:.4}, {:.1} steps/s",
            t.steps,
            format_value(t.loss, t.loss_err),
            t.ess,
            t.acceptance,
            t.steps_per_s
        );
    }
}

/// Below this effective sample size (ESS/N x N) reweighted estimates and their jackknife
/// errors are dominated by a handful of samples, and `analyze` says so.
pub const MIN_EFFECTIVE: f64 = 100.0;

/// The table of a sample file: reweighted and MH-chain estimates side by side.
fn print_sample(r: &Report) {
    let draws = if r.chains > 1 {
        format!("{} chains (ranks) x {} draws", r.chains, r.draws)
    } else {
        format!("{} draws", r.draws)
    };
    println!(
        "{}: {} flow samples, {draws}, ESS/N {:.4}",
        r.file,
        r.theory,
        r.ess.unwrap_or(f64::NAN)
    );
    let effective = r.ess.unwrap_or(f64::NAN) * (r.draws * r.chains) as f64;
    if effective < MIN_EFFECTIVE {
        println!(
            "warning: the weights rest on {effective:.1} effective samples (ESS/N x N < {MIN_EFFECTIVE}): the reweighted errors are not reliable; train the flow longer or sample more"
        );
    }
    if let Some(z) = &r.ln_z {
        println!(
            "ln Z = {}  exact {}  sigma {}",
            format_value(z.mean, z.err),
            z.exact.map_or("-".into(), |x| format!("{x:.8}")),
            z.sigma.map_or("-".into(), |s| format!("{s:+.2}"))
        );
    }
    if let Some(mh) = &r.mh {
        println!(
            "independence MH: acceptance {:.4}, longest rejection run {}",
            mh.acceptance, mh.longest_rejection_run
        );
    }
    println!(
        "{:<16} {:>20} {:>8} {:>20} {:>8} {:>7} {:>16}",
        "observable", "reweighted", "sigma", "MH chain", "sigma", "tau_int", "exact"
    );
    let empty = BTreeMap::new();
    let reweighted = r.reweighted.as_ref().unwrap_or(&empty);
    let mut names: Vec<&String> = reweighted.keys().chain(r.observables.keys()).collect();
    names.sort();
    names.dedup();
    for name in names {
        let rw = reweighted.get(name);
        let mh = r.observables.get(name);
        let exact = rw.and_then(|v| v.exact).or(mh.and_then(|o| o.exact));
        println!(
            "{:<16} {:>20} {:>8} {:>20} {:>8} {:>7} {:>16}",
            name,
            rw.map_or("-".into(), |v| format_value(v.mean, v.err)),
            rw.and_then(|v| v.sigma)
                .map_or("-".into(), |s| format!("{s:+.2}")),
            mh.map_or("-".into(), |o| format_value(o.mean, o.err)),
            mh.and_then(|o| o.sigma)
                .map_or("-".into(), |s| format!("{s:+.2}")),
            mh.map_or("-".into(), |o| format!("{:.2}", o.tau_int)),
            exact.map_or("-".into(), |x| format!("{x:.8}")),
        );
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
