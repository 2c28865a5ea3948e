//! `boltzflow compare`: train a flow, sample it, run MCMC baselines on the same lattice, and
//! write a Markdown report with tables, costs per effectively independent sample and SVG plots.
//!
//! Cost of one effectively independent sample of an observable with integrated autocorrelation
//! time tau_int over N draws (all chains) taking wall time T and e action evaluations per draw:
//! wall seconds T / (N / (2 tau_int)) and action evaluations 2 tau_int e. For reweighted flow
//! samples the number of independent samples is the effective sample size ESS = (ESS/N) N.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use plotters::coord::Shift;
use plotters::prelude::*;

use boltzflow_mcmc::{SamplerKind, build_sampler};
use boltzflow_store::EnsembleReader;

use crate::analyze::{self, Report, format_value};
use crate::config::{Budget, CompareSection, Loaded};
use crate::output::RunArgs;
use crate::sample::{self, SampleArgs};
use crate::train;

mod pair_distance;

/// Options of `boltzflow compare`.
#[derive(Clone, Debug, clap::Args)]
pub struct CompareArgs {
    /// Run config (TOML): a lattice file, [flow], [train], [sample], [mcmc] and [compare].
    pub config: PathBuf,
    /// Override a config key by its dotted path: --set train.steps=500 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Output directory (default runs/<config name>/).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Use this trained model (DIR/model.json) instead of training one.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Overwrite existing outputs.
    #[arg(long)]
    pub force: bool,
    /// No progress bars and no summary table.
    #[arg(long)]
    pub quiet: bool,
}

/// One row of an observable table: a method's estimate and its cost.
struct Row {
    method: String,
    mean: f64,
    err: f64,
    /// None for reweighted estimates (no chain).
    tau_int: Option<f64>,
    exact: Option<f64>,
    sigma: Option<f64>,
    /// Effectively independent samples.
    independent: f64,
    wall_s: f64,
    /// Action evaluations per draw.
    evals_per_draw: f64,
    /// Draws in total.
    n: f64,
}

impl Row {
    fn wall_per_independent(&self) -> f64 {
        self.wall_s / self.independent
    }
    fn evals_per_independent(&self) -> f64 {
        self.evals_per_draw * self.n / self.independent
    }
}

/// One lattice's comparison: its report and tables.
struct Single {
    report: PathBuf,
    tables: Vec<(String, Vec<Row>)>,
    /// Training wall seconds (None with --model).
    training_s: Option<f64>,
    lattice: String,
}

/// Runs every stage and returns the path of report.md.
pub fn run(args: &CompareArgs) -> Result<PathBuf> {
    let loaded = Loaded::read(&args.config, &args.overrides)?;
    let compare = compare_section(&loaded, &args.config)?;
    if compare.scan.is_empty() {
        return Ok(run_single(args)?.report);
    }
    scan(args, &compare)
}

fn compare_section(loaded: &Loaded, path: &Path) -> Result<CompareSection> {
    loaded.config.compare.clone().ok_or_else(|| {
        anyhow!(
            "{} has no [compare] section; add one (see configs/compare_phi4_L8.toml)",
            path.display()
        )
    })
}

/// The comparison on every lattice of `compare.scan`, then `DIR/report.md` with tau_int and
/// cost per independent sample against the lattice.
fn scan(args: &CompareArgs, compare: &CompareSection) -> Result<PathBuf> {
    if args.model.is_some() {
        bail!(
            "--model cannot be combined with compare.scan (one model per lattice is trained); drop --model or compare.scan"
        );
    }
    let dir = args
        .out
        .clone()
        .unwrap_or_else(|| train::default_dir(&args.config));
    // Validate every lattice before running any.
    let per_lattice: Vec<CompareArgs> = compare
        .scan
        .iter()
        .map(|entry| {
            let lattice = entry.lattice();
            let stem = lattice
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or("lattice".into());
            let mut sub = args.clone();
            sub.overrides
                .push(format!("lattice=\"{}\"", lattice.display()));
            sub.overrides.push("compare.scan=[]".into());
            sub.overrides.extend(entry.overrides().iter().cloned());
            sub.out = Some(dir.join(stem));
            sub.quiet = true;
            sub
        })
        .collect();
    for sub in &per_lattice {
        let loaded = Loaded::read(&sub.config, &sub.overrides)?;
        train::flow_shape(&loaded.lattice.target, &sub.config)?;
    }
    let report_path = dir.join("report.md");
    if report_path.exists() && !args.force {
        bail!(
            "{} already exists; pass --force to overwrite it or choose another --out",
            report_path.display()
        );
    }
    let mut singles = Vec::new();
    let mut coordinates = Vec::new();
    for (sub, entry) in per_lattice.iter().zip(&compare.scan) {
        tracing::info!(
            "compare scan: {}",
            sub.out
                .as_ref()
                .map_or(String::new(), |p| p.display().to_string())
        );
        let mut single = run_single(sub)?;
        let loaded = Loaded::read(&sub.config, &sub.overrides)?;
        let shape = train::flow_shape(&loaded.lattice.target, &sub.config)?;
        coordinates.push(scan_coordinate(&loaded.lattice.target));
        let stem = sub
            .out
            .as_ref()
            .and_then(|p| p.file_name())
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        single.lattice = format!("{stem} {shape:?}");
        if !entry.overrides().is_empty() {
            single.lattice += &format!(" ({})", entry.overrides().join(", "));
        }
        singles.push(single);
    }
    let mut md = String::new();
    let _ = writeln!(md, "# Flow against MCMC across lattices\n");
    let _ = writeln!(
        md,
        "Config `{}`; one comparison per lattice (its report linked). tau_int in Wolff's convention (1/2 + sum rho); cost per effectively independent sample of each observable in wall seconds and in action evaluations; flow training (wall seconds) listed separately; exact values where the target has them, and the deviation in standard errors.\n",
        args.config.display()
    );
    let svg = scan_svg(&singles, &coordinates, &compare.observables)?;
    write(&dir.join("tau_int_scan.svg"), &svg)?;
    let _ = writeln!(md, "![tau_int across the scan](tau_int_scan.svg)\n");
    for name in &compare.observables {
        let _ = writeln!(md, "## {name}\n");
        let _ = writeln!(
            md,
            "| lattice | method | mean | err | exact | sigma | tau_int | wall s / indep. | action evals / indep. | training s |"
        );
        let _ = writeln!(
            md,
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
        );
        for single in &singles {
            let Some((_, rows)) = single.tables.iter().find(|(n, _)| n == name) else {
                continue;
            };
            for r in rows {
                let training = if r.method == "flow-MH" || r.method == "reweighted" {
                    opt(single.training_s, |t| format!("{t:.0}"))
                } else {
                    "-".into()
                };
                let _ = writeln!(
                    md,
                    "| [{}]({}) | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    single.lattice,
                    single
                        .report
                        .strip_prefix(&dir)
                        .unwrap_or(&single.report)
                        .display(),
                    r.method,
                    sci(r.mean),
                    sci(r.err),
                    opt(r.exact, sci),
                    opt(r.sigma, |z| format!("{z:+.2}")),
                    opt(r.tau_int, |t| format!("{t:.2}")),
                    sci(r.wall_per_independent()),
                    sci(r.evals_per_independent()),
                    training
                );
            }
        }
        let _ = writeln!(md);
    }
    write(&report_path, &md)?;
    if !args.quiet {
        println!("{md}");
    }
    Ok(report_path)
}

/// The scan's x axis for one lattice: beta of a U(1) target, L of a phi^4 one, or none.
fn scan_coordinate(spec: &boltzflow_targets::TargetSpec) -> Option<(&'static str, f64)> {
    match spec {
        boltzflow_targets::TargetSpec::U1(u1) => Some(("beta", u1.beta)),
        boltzflow_targets::TargetSpec::Phi4(phi4) => phi4.shape.first().map(|&l| ("L", l as f64)),
        _ => None,
    }
}

/// log10 tau_int of each observable against the scan coordinate (beta or L when every
/// lattice has a distinct one of the same kind, else the scan position), one curve per method
/// with a chain.
fn scan_svg(
    singles: &[Single],
    coordinates: &[Option<(&'static str, f64)>],
    observables: &[String],
) -> Result<String> {
    let kind = coordinates.first().copied().flatten().map(|c| c.0);
    let mut values: Vec<f64> = coordinates.iter().flatten().map(|c| c.1).collect();
    values.dedup();
    let distinct =
        values.len() == singles.len() && coordinates.iter().all(|c| c.map(|c| c.0) == kind);
    let (xlabel, xs): (String, Vec<f64>) = match kind {
        Some(k) if distinct => (k.into(), values),
        _ => (
            "scan entry".into(),
            (1..=singles.len()).map(|i| i as f64).collect(),
        ),
    };
    let panels: Vec<Panel> = observables
        .iter()
        .map(|name| {
            let mut curves: Vec<Curve> = Vec::new();
            for (single, &x) in singles.iter().zip(&xs) {
                let Some((_, rows)) = single.tables.iter().find(|(n, _)| n == name) else {
                    continue;
                };
                for r in rows {
                    let Some(tau) = r.tau_int else { continue };
                    let index = match curves.iter().position(|c| c.label == r.method) {
                        Some(i) => i,
                        None => {
                            curves.push(Curve {
                                label: r.method.clone(),
                                color: COLORS[curves.len() % COLORS.len()],
                                points: Vec::new(),
                            });
                            curves.len() - 1
                        }
                    };
                    curves[index].points.push((x, tau.log10()));
                }
            }
            Panel {
                title: format!("tau_int of {name}"),
                xlabel: xlabel.clone(),
                ylabel: "log10 tau_int".into(),
                curves,
            }
        })
        .collect();
    figure(&panels, 520, 420)
}

/// One comparison on the config's lattice.
fn run_single(args: &CompareArgs) -> Result<Single> {
    let path = &args.config;
    let loaded = Loaded::read(path, &args.overrides)?;
    let compare = compare_section(&loaded, path)?;
    // Everything is validated before any file is touched.
    if compare.observables.is_empty() {
        bail!("compare.observables is empty; list some, e.g. [\"chi2\", \"abs_m\"]");
    }
    for (i, b) in compare.baselines.iter().enumerate() {
        if compare.baselines[..i].contains(b) {
            bail!(
                "compare.baselines lists \"{}\" twice; list each sampler once",
                b.name()
            );
        }
    }
    if !compare.baselines.is_empty() {
        let mcmc = loaded.mcmc(path)?;
        for &kind in &compare.baselines {
            let mut config = mcmc.clone();
            config.sampler = kind;
            config
                .validate()
                .with_context(|| format!("baseline {}", kind.name()))?;
            build_sampler(&config, &loaded.lattice.target)
                .with_context(|| format!("baseline {}", kind.name()))?;
        }
    }
    if args.model.is_none() {
        loaded.training(path)?;
    }
    if let Some(t) = loaded.sampling(path)?.temperature {
        bail!(
            "sample.temperature = {t} would compare flow samples at kT = {t} with MCMC baselines at the lattice file's temperature; remove it, or compare with a lattice file at kT = {t}"
        );
    }
    train::flow_shape(&loaded.lattice.target, path)?;
    let target = loaded.lattice.target.build()?;
    let known: Vec<String> = target
        .observables()
        .iter()
        .map(|o| o.name().to_string())
        .chain(target.derived().iter().map(|d| d.name.to_string()))
        .collect();
    for o in &compare.observables {
        if !known.contains(o) {
            bail!(
                "compare.observables: the target has no observable \"{o}\"; choose from {}",
                known.join(", ")
            );
        }
    }

    let dir = args.out.clone().unwrap_or_else(|| train::default_dir(path));
    let flow_dir = dir.join("flow");
    let sample_path = dir.join("flow_sample.h5");
    let report_path = dir.join("report.md");
    let baseline_path = |k: SamplerKind| dir.join(format!("{}.h5", k.name()));
    if !args.force {
        let mut outputs = vec![sample_path.clone(), report_path.clone()];
        if args.model.is_none() {
            outputs.push(flow_dir.join("model.json"));
            outputs.push(flow_dir.join("train.h5"));
        }
        outputs.extend(compare.baselines.iter().map(|&k| baseline_path(k)));
        if let Some(existing) = outputs.iter().find(|p| p.exists()) {
            bail!(
                "{} already exists; pass --force to overwrite it or choose another --out",
                existing.display()
            );
        }
    }
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("cannot create output directory {}", dir.display()))?;

    let run_args = |out: PathBuf, extra: Option<String>| RunArgs {
        config: path.clone(),
        overrides: args.overrides.iter().cloned().chain(extra).collect(),
        out: Some(out),
        resume: false,
        force: args.force,
        quiet: args.quiet,
    };

    // Training.
    let (model, training) = match &args.model {
        Some(model) => (model.clone(), None),
        None => {
            tracing::info!("compare: training into {}", flow_dir.display());
            let start = Instant::now();
            train::run(
                &run_args(flow_dir.clone(), None),
                &boltzflow_dist::SingleProcess,
            )?;
            let wall = start.elapsed().as_secs_f64();
            let report = analyze::analyze(&flow_dir.join("train.h5"))?;
            (flow_dir.join("model.json"), Some((report, wall)))
        }
    };

    // Sampling.
    tracing::info!("compare: sampling into {}", sample_path.display());
    let start = Instant::now();
    sample::run(
        &SampleArgs {
            run: run_args(sample_path.clone(), None),
            model,
        },
        &boltzflow_dist::SingleProcess,
    )?;
    let sample_wall = start.elapsed().as_secs_f64();
    let flow = analyze::analyze(&sample_path)?;

    // Baselines.
    let mut baselines = Vec::new();
    for &kind in &compare.baselines {
        let out = baseline_path(kind);
        let mut extra = vec![format!("mcmc.sampler={}", kind.name())];
        if compare.budget == Budget::ActionEvals {
            let evals = flow.draws as f64;
            let draws = budget_draws(&loaded, kind, evals, &dir, &run_args)?;
            tracing::info!(
                "compare: {} gets {draws} draws per chain ({evals} action evaluations in all)",
                kind.name()
            );
            extra.push(format!("mcmc.draws={draws}"));
            extra.push(format!("mcmc.block={}", draws.min(1000)));
        }
        tracing::info!("compare: {} into {}", kind.name(), out.display());
        let start = Instant::now();
        let mut args = run_args(out.clone(), None);
        args.overrides.extend(extra);
        mcmc_run(&args)?;
        let wall = start.elapsed().as_secs_f64();
        baselines.push((kind, analyze::analyze(&out)?, wall, out));
    }

    // Tables.
    let mut tables: Vec<(String, Vec<Row>)> = Vec::new();
    for name in &compare.observables {
        tables.push((name.clone(), rows(name, &flow, sample_wall, &baselines)?));
    }

    // Plots.
    let mut plots = Vec::new();
    if let Some((report, _)) = &training
        && let Some(series) = &report.series
    {
        let svg = training_svg(series)?;
        write(&dir.join("training.svg"), &svg)?;
        plots.push(("Training curves", "training.svg"));
    }
    if let Some((svg, title, file)) = histogram_svg(&sample_path, &baselines)? {
        write(&dir.join(file), &svg)?;
        plots.push((title, file));
    }
    let pairs = pair_distance::compare(&sample_path, target.as_ref(), &baselines)?;
    if let Some(c) = &pairs {
        write(&dir.join("pair_distance.svg"), &pair_distance::svg(c)?)?;
        write(&dir.join("pair_distance.csv"), &pair_distance::csv(c))?;
        plots.push(("Pair-distance histogram", "pair_distance.svg"));
        for a in &c.agreement {
            tracing::info!(
                "compare: pair-distance histogram, flow reweighted vs {}: chi2 {:.1} over {} bins, max |z| {:.2}",
                a.baseline,
                a.chi2,
                a.bins,
                a.max_z
            );
        }
    }
    if let Some(svg) = autocorrelation_svg(&sample_path, &baselines, &compare.observables)? {
        write(&dir.join("autocorrelation.svg"), &svg)?;
        plots.push(("Autocorrelation functions", "autocorrelation.svg"));
    }

    let markdown = report_markdown(
        path,
        &loaded,
        &flow,
        sample_wall,
        training.as_ref(),
        &baselines,
        &tables,
        pairs.as_ref(),
        &plots,
    );
    write(&report_path, &markdown)?;
    if !args.quiet {
        print_summary(&tables, &baselines);
    }
    Ok(Single {
        report: report_path,
        tables,
        training_s: training.as_ref().map(|(_, wall)| *wall),
        lattice: train::lattice_summary(&loaded.lattice),
    })
}

fn mcmc_run(args: &RunArgs) -> Result<PathBuf> {
    crate::mcmc::run(args, &boltzflow_dist::SingleProcess)
}

/// Draws per chain that give baseline `kind` about `evals` action evaluations in all chains
/// after thermalisation (at least 50 per chain): a pilot of 200 draws per chain (its file is
/// removed) measures the sampler's evaluations per draw.
fn budget_draws(
    loaded: &Loaded,
    kind: SamplerKind,
    evals: f64,
    dir: &Path,
    run_args: &dyn Fn(PathBuf, Option<String>) -> RunArgs,
) -> Result<usize> {
    const PILOT: usize = 200;
    let chains = loaded.config.mcmc.as_ref().map_or(1, |m| m.chains.max(1));
    let pilot = dir.join(format!("{}_pilot.h5", kind.name()));
    let mut args = run_args(pilot.clone(), None);
    args.overrides.extend([
        format!("mcmc.sampler={}", kind.name()),
        format!("mcmc.draws={PILOT}"),
        format!("mcmc.block={PILOT}"),
        "mcmc.store_configs=false".into(),
    ]);
    args.quiet = true;
    args.force = true;
    mcmc_run(&args)?;
    let per_draw = analyze::analyze(&pilot)?.action_evals_per_draw;
    let _ = std::fs::remove_file(&pilot);
    if !(per_draw.is_finite() && per_draw > 0.0) {
        bail!(
            "compare.budget = \"action_evals\": the {} pilot reported {per_draw} action evaluations per draw; use compare.budget = \"config\"",
            kind.name()
        );
    }
    // At least 50 draws per chain, so that the Gamma method has something to work with.
    Ok(((evals / (chains as f64 * per_draw)).ceil() as usize).max(50))
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// The rows of one observable: flow-MH, reweighted, each baseline.
fn rows(
    name: &str,
    flow: &Report,
    sample_wall: f64,
    baselines: &[(SamplerKind, Report, f64, PathBuf)],
) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    let n_flow = (flow.draws * flow.chains) as f64;
    if let Some(o) = flow.observables.get(name) {
        rows.push(Row {
            method: "flow-MH".into(),
            mean: o.mean,
            err: o.err,
            tau_int: Some(o.tau_int),
            exact: o.exact,
            sigma: o.sigma,
            independent: n_flow / (2.0 * o.tau_int),
            wall_s: sample_wall,
            evals_per_draw: 1.0,
            n: n_flow,
        });
    }
    if let Some(o) = flow.reweighted.as_ref().and_then(|r| r.get(name)) {
        rows.push(Row {
            method: "reweighted".into(),
            mean: o.mean,
            err: o.err,
            tau_int: None,
            exact: o.exact,
            sigma: o.sigma,
            independent: flow.ess.unwrap_or(f64::NAN) * n_flow,
            wall_s: sample_wall,
            evals_per_draw: 1.0,
            n: n_flow,
        });
    }
    for (kind, report, wall, file) in baselines {
        let o = report
            .observables
            .get(name)
            .with_context(|| format!("{}: observable {name} was not analysed", file.display()))?;
        let n = (report.draws * report.chains) as f64;
        rows.push(Row {
            method: kind.name().into(),
            mean: o.mean,
            err: o.err,
            tau_int: Some(o.tau_int),
            exact: o.exact,
            sigma: o.sigma,
            independent: n / (2.0 * o.tau_int),
            wall_s: *wall,
            evals_per_draw: report.action_evals_per_draw,
            n,
        });
    }
    Ok(rows)
}

/// (mean - mean_ref) / sqrt(err^2 + err_ref^2).
fn deviation(row: &Row, reference: Option<&Row>) -> Option<f64> {
    let r = reference?;
    let s = row.err.hypot(r.err);
    (s > 0.0).then(|| (row.mean - r.mean) / s)
}

fn opt(x: Option<f64>, f: impl Fn(f64) -> String) -> String {
    x.map_or("-".into(), f)
}

fn sci(x: f64) -> String {
    if !x.is_finite() {
        "-".into()
    } else if x == 0.0 || (1e-3..1e4).contains(&x.abs()) {
        format!("{x:.4}")
    } else {
        format!("{x:.3e}")
    }
}

#[allow(clippy::too_many_arguments)]
fn report_markdown(
    config: &Path,
    loaded: &Loaded,
    flow: &Report,
    sample_wall: f64,
    training: Option<&(Report, f64)>,
    baselines: &[(SamplerKind, Report, f64, PathBuf)],
    tables: &[(String, Vec<Row>)],
    pairs: Option<&pair_distance::Comparison>,
    plots: &[(&str, &str)],
) -> String {
    let mut s = String::new();
    let reference = baselines.first().map(|b| b.0.name()).unwrap_or("-");
    let _ = writeln!(s, "# boltzflow compare: {}\n", config.display());
    let _ = writeln!(
        s,
        "Lattice: `{}`. Generated {} by boltzflow {}.\n",
        train::lattice_summary(&loaded.lattice),
        crate::provenance::utc_now(),
        crate::provenance::VERSION
    );
    let _ = writeln!(
        s,
        "Errors: Gamma method (flow-MH, MCMC; all chains), binned jackknife (reweighted). \
         `vs {reference}` is (mean - mean_{reference}) / sqrt(err^2 + err_{reference}^2). \
         Cost per effectively independent sample: wall s / (N / (2 tau_int)) and action \
         evaluations per draw x 2 tau_int; for reweighted samples N / (2 tau_int) is replaced by \
         ESS = (ESS/N) N. Wall times of MCMC runs include thermalisation; the flow's exclude \
         training (listed separately).\n"
    );
    let budget = loaded.config.compare.as_ref().map(|c| c.budget);
    let _ = writeln!(
        s,
        "Budget: {}\n",
        if budget == Some(Budget::ActionEvals) {
            "equal action evaluations: each baseline ran as many action evaluations after \
             thermalisation (all chains) as the flow's proposals cost (one each)."
        } else {
            "the config's `[mcmc] draws` per baseline, `sample.samples` for the flow \
             (compare.budget = \"config\")."
        }
    );
    for (name, rows) in tables {
        let first = rows.iter().find(|r| r.method == reference);
        let _ = writeln!(s, "## {name}\n");
        let _ = writeln!(
            s,
            "| method | mean | err | tau_int | vs {reference} (sigma) | exact | sigma | N | wall s | wall s / indep | action evals / indep |"
        );
        let _ = writeln!(
            s,
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
        );
        for r in rows {
            let dev = if r.method == reference {
                "-".into()
            } else {
                opt(deviation(r, first), |d| format!("{d:+.2}"))
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {:.2} | {} | {} |",
                r.method,
                sci(r.mean),
                sci(r.err),
                opt(r.tau_int, |t| format!("{t:.2}")),
                dev,
                opt(r.exact, sci),
                opt(r.sigma, |x| format!("{x:+.2}")),
                r.n,
                r.wall_s,
                sci(r.wall_per_independent()),
                sci(r.evals_per_independent()),
            );
        }
        s.push('\n');
    }
    if let Some(c) = pairs {
        let _ = writeln!(s, "## Pair-distance histogram\n");
        let _ = writeln!(
            s,
            "Per bin of g(r) (`{}`, {} bins): z = (flow reweighted - MCMC) / combined error; \
             chi2 = sum z^2 over the bins with a positive error. Bins are correlated, so \
             chi2 / bins near 1 means agreement, not a p-value. Values: `pair_distance.csv`.\n",
            pair_distance::NAME,
            c.centres.len()
        );
        let _ = writeln!(
            s,
            "| flow reweighted vs | chi2 | bins | chi2 / bins | max abs z | at r |"
        );
        let _ = writeln!(s, "| --- | --- | --- | --- | --- | --- |");
        for a in &c.agreement {
            let _ = writeln!(
                s,
                "| {} | {:.1} | {} | {:.2} | {:.2} | {} |",
                a.baseline,
                a.chi2,
                a.bins,
                a.chi2 / a.bins.max(1) as f64,
                a.max_z,
                sci(a.at)
            );
        }
        s.push('\n');
    }
    let _ = writeln!(s, "## Flow\n");
    match training {
        Some((report, wall)) => {
            if let Some(t) = &report.training {
                let _ = writeln!(
                    s,
                    "- training: {} steps in {wall:.2} s ({:.1} steps/s); final ESS/N {:.4}, \
                     MH acceptance {:.4}, loss {}",
                    t.steps,
                    t.steps_per_s,
                    t.ess,
                    t.acceptance,
                    format_value(t.loss, t.loss_err)
                );
            }
        }
        None => {
            let _ = writeln!(s, "- training: none here (a trained model was given)");
        }
    }
    let _ = writeln!(
        s,
        "- sampling: {} samples in {sample_wall:.2} s",
        flow.draws
    );
    if let Some((_, wall)) = training {
        // Training amortised over this run's independent samples.
        let mut parts = Vec::new();
        for (name, rows) in tables {
            for r in rows
                .iter()
                .filter(|r| r.method == "flow-MH" || r.method == "reweighted")
            {
                parts.push(format!(
                    "{name} {} {}",
                    r.method,
                    sci((r.wall_s + wall) / r.independent)
                ));
            }
        }
        let _ = writeln!(
            s,
            "- wall s per independent sample with the training amortised over this run: {}",
            parts.join(", ")
        );
    }
    if let Some(ess) = flow.ess {
        let _ = writeln!(s, "- ESS/N: {ess:.4}");
    }
    if let Some(l) = &flow.ln_z {
        let _ = writeln!(
            s,
            "- ln Z: {}{}",
            format_value(l.mean, l.err),
            match (l.exact, l.sigma) {
                (Some(x), Some(sg)) => format!(" (exact {x:.6}, {sg:+.2} sigma)"),
                _ => String::new(),
            }
        );
    }
    if let Some(mh) = &flow.mh {
        let _ = writeln!(
            s,
            "- MH acceptance: {:.4} (longest rejection run {})",
            mh.acceptance, mh.longest_rejection_run
        );
    }
    if !baselines.is_empty() {
        let _ = writeln!(s, "\n## Baselines\n");
        for (kind, report, wall, file) in baselines {
            let _ = writeln!(
                s,
                "- {}: {} chains x {} draws in {wall:.2} s, acceptance {:.4}, {:.1} action evals/draw ({})",
                kind.name(),
                report.chains,
                report.draws,
                report.acceptance,
                report.action_evals_per_draw,
                file.file_name().unwrap_or_default().to_string_lossy()
            );
        }
    }
    if !plots.is_empty() {
        let _ = writeln!(s, "\n## Plots\n");
        for (title, file) in plots {
            let _ = writeln!(s, "- [{title}]({file})\n\n  ![{title}]({file})");
        }
    }
    s
}

fn print_summary(tables: &[(String, Vec<Row>)], baselines: &[(SamplerKind, Report, f64, PathBuf)]) {
    let reference = baselines.first().map(|b| b.0.name());
    println!(
        "{:<10} {:<11} {:>20} {:>8} {:>8} {:>12} {:>12}",
        "observable", "method", "value", "tau_int", "vs ref", "s/indep", "evals/indep"
    );
    for (name, rows) in tables {
        let first = rows.iter().find(|r| Some(r.method.as_str()) == reference);
        for r in rows {
            let dev = if Some(r.method.as_str()) == reference {
                "-".into()
            } else {
                opt(deviation(r, first), |d| format!("{d:+.2}"))
            };
            println!(
                "{:<10} {:<11} {:>20} {:>8} {:>8} {:>12} {:>12}",
                name,
                r.method,
                format_value(r.mean, r.err),
                opt(r.tau_int, |t| format!("{t:.2}")),
                dev,
                sci(r.wall_per_independent()),
                sci(r.evals_per_independent())
            );
        }
    }
}

// ---- plots (plotters, SVG) ----------------------------------------------------------------

const COLORS: [RGBColor; 6] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
];

/// A curve: label, colour and (x, y) points (non-finite points are skipped).
struct Curve {
    label: String,
    color: RGBColor,
    points: Vec<(f64, f64)>,
}

/// One panel of a figure: title, axis labels and its curves.
struct Panel {
    title: String,
    xlabel: String,
    ylabel: String,
    curves: Vec<Curve>,
}

/// (lo, hi) of the values, widened when degenerate.
fn range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    if hi - lo <= 1e-12 * lo.abs().max(1.0) {
        return (lo - 0.5, hi + 0.5);
    }
    (lo, hi)
}

/// Axis tick label: integers as such, 3 decimals (trailing zeros dropped) in [0.01, 1e4),
/// scientific otherwise.
fn tick(x: &f64) -> String {
    let x = *x;
    if x.fract() == 0.0 && x.abs() < 1e7 {
        format!("{x:.0}")
    } else if (1e-2..1e4).contains(&x.abs()) {
        let s = format!("{x:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        format!("{x:.2e}")
    }
}

/// The panels side by side, each `width` x `height` pixels, as an SVG document.
fn figure(panels: &[Panel], width: u32, height: u32) -> Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (width * panels.len() as u32, height))
            .into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        for (area, panel) in root.split_evenly((1, panels.len())).iter().zip(panels) {
            draw_panel(area, panel)?;
        }
        root.present().map_err(plot_error)?;
    }
    Ok(svg)
}

fn plot_error<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow!("cannot draw a plot: {e}")
}

fn draw_panel(area: &DrawingArea<SVGBackend, Shift>, panel: &Panel) -> Result<()> {
    let finite = |c: &Curve| {
        c.points
            .iter()
            .copied()
            .filter(|p| p.0.is_finite() && p.1.is_finite())
            .collect::<Vec<_>>()
    };
    let (xl, xh) = range(
        panel
            .curves
            .iter()
            .flat_map(|c| c.points.iter().map(|p| p.0)),
    );
    let (yl, yh) = range(
        panel
            .curves
            .iter()
            .flat_map(|c| c.points.iter().map(|p| p.1)),
    );
    let pad = 0.05 * (yh - yl);
    let (yl, yh) = (yl - pad, yh + pad);
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(xl..xh, yl..yh)
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .x_desc(panel.xlabel.as_str())
        .y_desc(panel.ylabel.as_str())
        .x_labels(6)
        .y_labels(6)
        .x_label_formatter(&tick)
        .y_label_formatter(&tick)
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(plot_error)?;
    for curve in &panel.curves {
        let color = curve.color;
        chart
            .draw_series(LineSeries::new(finite(curve), color.stroke_width(2)))
            .map_err(plot_error)?
            .label(curve.label.as_str())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], color.stroke_width(2)));
    }
    if panel.curves.len() < 2 {
        return Ok(());
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(plot_error)?;
    Ok(())
}

/// Loss, ESS/N and MH acceptance against the training step, side by side.
fn training_svg(series: &BTreeMap<String, Vec<f64>>) -> Result<String> {
    let empty = Vec::new();
    let step = series.get("step").unwrap_or(&empty);
    let panel = |name: &str, title: &str, label: &str, color| Panel {
        title: title.into(),
        xlabel: "step".into(),
        ylabel: label.into(),
        curves: vec![Curve {
            label: label.into(),
            color,
            points: step
                .iter()
                .zip(series.get(name).unwrap_or(&empty))
                .map(|(&x, &y)| (x, y))
                .collect(),
        }],
    };
    figure(
        &[
            panel("loss", "reverse-KL loss", "loss", COLORS[0]),
            panel("ess", "ESS/N", "ESS/N", COLORS[1]),
            panel(
                "acceptance",
                "independence-MH acceptance",
                "acceptance",
                COLORS[2],
            ),
        ],
        480,
        340,
    )
}

/// Lags shown in the autocorrelation plot.
const ACF_LAGS: usize = 50;

/// rho(t), t = 0..50, of each tabulated observable (that is a stored series): the flow-MH
/// chain (its `chain_<name>` series, or the proposals at `mh_index`) and every baseline (all
/// chains, Gamma-method estimator). One panel per observable.
fn autocorrelation_svg(
    sample: &Path,
    baselines: &[(SamplerKind, Report, f64, PathBuf)],
    observables: &[String],
) -> Result<Option<String>> {
    let reader = EnsembleReader::open(sample)?;
    let names = reader.series_names();
    if !names.iter().any(|n| n == "mh_index") {
        return Ok(None);
    }
    let index = reader.series("mh_index")?.swap_remove(0);
    let mut panels = Vec::new();
    for name in observables.iter().filter(|n| names.contains(n)) {
        let chain = if names.contains(&format!("chain_{name}")) {
            reader.series(&format!("chain_{name}"))?.swap_remove(0)
        } else {
            let values = reader.series(name)?.swap_remove(0);
            index.iter().map(|&i| values[i as usize]).collect()
        };
        let mut sets = vec![("flow-MH".to_string(), vec![chain])];
        for (kind, _, _, file) in baselines {
            sets.push((
                kind.name().into(),
                EnsembleReader::open(file)?.series(name)?,
            ));
        }
        let curves: Vec<Curve> = sets
            .iter()
            .enumerate()
            .map(|(i, (label, replicas))| {
                let slices: Vec<&[f64]> = replicas.iter().map(|r| r.as_slice()).collect();
                Curve {
                    label: label.clone(),
                    color: COLORS[i % COLORS.len()],
                    points: boltzflow_stats::autocorrelation(&slices, ACF_LAGS)
                        .into_iter()
                        .enumerate()
                        .map(|(t, rho)| (t as f64, rho))
                        .collect(),
                }
            })
            .collect();
        panels.push(Panel {
            title: format!("autocorrelation of {name}"),
            xlabel: "lag t (draws)".into(),
            ylabel: "rho(t)".into(),
            curves,
        });
    }
    if panels.is_empty() {
        return Ok(None);
    }
    Ok(Some(figure(&panels, 560, 400)?))
}

/// Normalised densities of `values` with `weights` over `bins` bins on [lo, hi], as the
/// corners of a step curve.
fn density(
    values: &[f64],
    weights: Option<&[f64]>,
    lo: f64,
    hi: f64,
    bins: usize,
) -> Vec<(f64, f64)> {
    let width = (hi - lo) / bins as f64;
    let mut counts = vec![0.0; bins];
    for (i, &v) in values.iter().enumerate() {
        let w = weights.map_or(1.0, |w| w[i]);
        if !v.is_finite() || !w.is_finite() {
            continue;
        }
        let b = (((v - lo) / width) as usize).min(bins - 1);
        counts[b] += w;
    }
    let total: f64 = counts.iter().sum();
    let mut points = Vec::with_capacity(2 * bins + 2);
    points.push((lo, 0.0));
    for (b, c) in counts.iter().enumerate() {
        let d = if total > 0.0 {
            c / (total * width)
        } else {
            0.0
        };
        points.push((lo + b as f64 * width, d));
        points.push((lo + (b + 1) as f64 * width, d));
    }
    points.push((hi, 0.0));
    points
}

/// Weights exp(log w - LSE(log w)), summing to 1 (0 for non-finite log w).
fn normalised_weights(log_w: &[f64]) -> Vec<f64> {
    let max = log_w
        .iter()
        .copied()
        .filter(|l| l.is_finite())
        .fold(f64::NEG_INFINITY, f64::max);
    if !max.is_finite() {
        return vec![0.0; log_w.len()];
    }
    let lse = max
        + log_w
            .iter()
            .filter(|l| l.is_finite())
            .map(|l| (l - max).exp())
            .sum::<f64>()
            .ln();
    log_w
        .iter()
        .map(|&l| if l.is_finite() { (l - lse).exp() } else { 0.0 })
        .collect()
}

/// Histogrammed observables: series, axis label, plot title, file. The first one a sample
/// file has is plotted (|M|/V for phi^4, Q for U(1), the reaction coordinate of the double
/// well and the dimer, the energy of the other molecular systems).
const HISTOGRAMS: [(&str, &str, &str, &str); 5] = [
    ("abs_m", "|M|/V", "Histogram of |M|/V", "abs_m_hist.svg"),
    (
        "q",
        "Q",
        "Histogram of the topological charge Q",
        "q_hist.svg",
    ),
    (
        "x",
        "x",
        "Histogram of the reaction coordinate x",
        "x_hist.svg",
    ),
    (
        "dimer_distance",
        "d",
        "Histogram of the dimer distance d",
        "d_hist.svg",
    ),
    (
        "energy",
        "E",
        "Histogram of the energy E",
        "energy_hist.svg",
    ),
];

/// Overlaid histograms of |M|/V or Q: flow proposals, reweighted flow, each baseline (all
/// chains), with the plot's title and file name. None when the sample file has neither.
fn histogram_svg(
    sample: &Path,
    baselines: &[(SamplerKind, Report, f64, PathBuf)],
) -> Result<Option<(String, &'static str, &'static str)>> {
    let reader = EnsembleReader::open(sample)?;
    let names = reader.series_names();
    let Some(&(series, label, title, file)) =
        HISTOGRAMS.iter().find(|h| names.iter().any(|n| n == h.0))
    else {
        return Ok(None);
    };
    let flow = reader.series(series)?.swap_remove(0);
    let log_w = reader.series("log_w")?.swap_remove(0);
    let weights = normalised_weights(&log_w);
    let mut sets: Vec<(String, Vec<f64>, Option<Vec<f64>>)> = vec![
        ("flow proposals".into(), flow.clone(), None),
        ("flow reweighted".into(), flow, Some(weights)),
    ];
    for (kind, _, _, file) in baselines {
        let r = EnsembleReader::open(file)?;
        sets.push((kind.name().into(), r.series(series)?.concat(), None));
    }
    let (lo, hi) = if series == "q" {
        range(sets.iter().flat_map(|s| s.1.iter().copied()))
    } else {
        // The central 99.8% of the values: a rare flow proposal far out (a clash of two
        // particles has an energy of 10^6) must not squeeze the histograms into one bin.
        let mut all: Vec<f64> = sets
            .iter()
            .flat_map(|s| s.1.iter().copied())
            .filter(|v| v.is_finite())
            .collect();
        all.sort_by(f64::total_cmp);
        let at = |p: f64| all[((all.len() - 1) as f64 * p).round() as usize];
        if all.is_empty() {
            (0.0, 1.0)
        } else {
            (at(0.001), at(0.999).max(at(0.001) + 1e-12))
        }
    };
    // Q is an integer: one bin per charge.
    let (lo, hi, bins) = if series == "q" {
        (
            lo.round() - 0.5,
            hi.round() + 0.5,
            (hi.round() - lo.round()) as usize + 1,
        )
    } else {
        (if series == "abs_m" { lo.min(0.0) } else { lo }, hi, 40)
    };
    let curves: Vec<Curve> = sets
        .iter()
        .enumerate()
        .map(|(i, (label, values, weights))| Curve {
            label: label.clone(),
            color: COLORS[i % COLORS.len()],
            points: density(values, weights.as_deref(), lo, hi, bins),
        })
        .collect();
    let panel = Panel {
        title: format!("histogram of {label}"),
        xlabel: label.into(),
        ylabel: "density".into(),
        curves,
    };
    Ok(Some((figure(&[panel], 640, 420)?, title, file)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_labels_are_short() {
        let labels: Vec<String> = [0.0, 50.0, 2000.0, 0.25, 0.125, 1.5e-4, -3.0]
            .iter()
            .map(tick)
            .collect();
        assert_eq!(
            labels,
            ["0", "50", "2000", "0.25", "0.125", "1.50e-4", "-3"]
        );
    }

    #[test]
    fn weights_are_normalised_and_density_integrates_to_one() {
        let w = normalised_weights(&[0.0, 1.0, f64::NEG_INFINITY, 1000.0]);
        assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert_eq!(w[2], 0.0);
        let values = [0.1, 0.2, 0.25, 0.9];
        let d = density(&values, None, 0.0, 1.0, 10);
        // the step curve's area: sum over bins of density x width
        let area: f64 = d[1..d.len() - 1]
            .chunks(2)
            .map(|p| p[0].1 * (p[1].0 - p[0].0))
            .sum();
        assert!((area - 1.0).abs() < 1e-12);
    }
}
