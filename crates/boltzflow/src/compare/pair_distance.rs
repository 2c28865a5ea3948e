//! The pair-distance histogram of particle systems, compared bin by bin between the
//! reweighted flow and each MCMC baseline.
//!
//! Per bin b the flow's estimate is the self-normalised reweighted mean of the per-draw
//! histogram g_b(x) (binned jackknife error over about 100 bins of draws); a baseline's is its
//! report's component-wise analysis of the stored vector `pair_distance_hist` (Gamma method
//! over all chains, as `analyze` prints it). The agreement of the two curves is
//!
//! ```text
//! z_b = (g_flow,b - g_mcmc,b) / sqrt(err_flow,b^2 + err_mcmc,b^2),   chi^2 = sum_b z_b^2
//! ```
//!
//! over the bins where the combined error is positive. Neighbouring bins are correlated
//! (every draw fills n (n - 1) / 2 of them), so chi^2 / bins is a summary, not a p-value.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rayon::prelude::*;

use boltzflow_mcmc::SamplerKind;
use boltzflow_store::EnsembleReader;
use boltzflow_targets::Target;

use super::{COLORS, Curve, Panel, figure};
use crate::analyze::Report;

/// The vector observable compared here.
pub const NAME: &str = "pair_distance_hist";

/// A binned density with one-sigma errors per bin.
pub struct Binned {
    /// Who estimated it ("flow reweighted", a baseline's name).
    pub label: String,
    pub mean: Vec<f64>,
    pub err: Vec<f64>,
}

/// The agreement of the flow's histogram with one baseline's.
pub struct Agreement {
    pub baseline: String,
    pub chi2: f64,
    /// Bins with a positive combined error.
    pub bins: usize,
    /// The largest |z_b| and the bin centre where it occurs.
    pub max_z: f64,
    pub at: f64,
}

/// The comparison: bin centres, the flow's histogram, each baseline's, their agreement.
pub struct Comparison {
    pub centres: Vec<f64>,
    pub flow: Binned,
    pub baselines: Vec<Binned>,
    pub agreement: Vec<Agreement>,
}

/// Compares the pair-distance histogram of the flow sample file `sample` (which must hold its
/// configurations) with that of every baseline. None when the target has no such histogram,
/// the sample file stored no configurations, or no baseline stored it.
pub fn compare(
    sample: &Path,
    target: &dyn Target,
    baselines: &[(SamplerKind, Report, f64, PathBuf)],
) -> Result<Option<Comparison>> {
    let Some(observable) = target
        .vector_observables()
        .into_iter()
        .find(|v| v.name() == NAME)
    else {
        return Ok(None);
    };
    // The baselines' histograms are already analysed component by component (Gamma method
    // over the chains) in their reports.
    let binned: Vec<Binned> = baselines
        .iter()
        .filter_map(|(kind, report, _, _)| {
            report.vectors.get(NAME).map(|v| Binned {
                label: kind.name().into(),
                mean: v.mean.clone(),
                err: v.err.clone(),
            })
        })
        .collect();
    if binned.is_empty() {
        return Ok(None);
    }
    let reader = EnsembleReader::open(sample)?;
    if reader.config_shape().is_none() {
        tracing::info!(
            "compare: {} stored no configurations (sample.store_configs = false): no pair-distance histogram",
            sample.display()
        );
        return Ok(None);
    }
    let bins = observable.len();
    let draws = reader.draws();
    let dim = target.dim();
    // Every chain of the file (one per rank of a collated MPI run), back to back.
    let mut configs = Vec::with_capacity(reader.chains() * draws * dim);
    for chain in 0..reader.chains() {
        configs.extend(reader.configs(chain, 0..draws)?);
    }
    let log_w = reader.series("log_w")?.concat();
    // The per-draw histograms, `[draw][bin]` in one buffer.
    let mut rows = vec![0.0; log_w.len() * bins];
    rows.par_chunks_exact_mut(bins)
        .zip(configs.par_chunks_exact(dim))
        .for_each(|(out, x)| observable.measure(x, out));
    let bin = (log_w.len() / 100).max(1);
    let (mean, err): (Vec<f64>, Vec<f64>) = (0..bins)
        .into_par_iter()
        .map(|b| {
            let column: Vec<f64> = rows.iter().skip(b).step_by(bins).copied().collect();
            boltzflow_stats::reweighted_mean(&log_w, &column, bin)
                .with_context(|| format!("reweighted {NAME} bin {b}"))
        })
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .unzip();
    let flow = Binned {
        label: "flow reweighted".into(),
        mean,
        err,
    };

    let centres = observable
        .abscissa()
        .unwrap_or_else(|| (0..bins).map(|b| b as f64).collect());
    let agreement = binned
        .iter()
        .map(|base| agreement(&flow, base, &centres))
        .collect();
    Ok(Some(Comparison {
        centres,
        flow,
        baselines: binned,
        agreement,
    }))
}

/// z_b, chi^2 and the largest |z_b| of the flow's histogram against `base`.
fn agreement(flow: &Binned, base: &Binned, centres: &[f64]) -> Agreement {
    let mut out = Agreement {
        baseline: base.label.clone(),
        chi2: 0.0,
        bins: 0,
        max_z: 0.0,
        at: f64::NAN,
    };
    for (b, z) in z_scores(flow, base).into_iter().enumerate() {
        let Some(z) = z else { continue };
        out.chi2 += z * z;
        out.bins += 1;
        if z.abs() > out.max_z {
            out.max_z = z.abs();
            out.at = centres[b];
        }
    }
    out
}

/// z_b per bin, None where the combined error is zero.
fn z_scores(flow: &Binned, base: &Binned) -> Vec<Option<f64>> {
    flow.mean
        .iter()
        .zip(&flow.err)
        .zip(base.mean.iter().zip(&base.err))
        .map(|((m, e), (mb, eb))| {
            let s = (e * e + eb * eb).sqrt();
            (s > 0.0 && s.is_finite()).then(|| (m - mb) / s)
        })
        .collect()
}

/// Two panels: the histograms (flow reweighted and each baseline), and z_b of the flow
/// against each baseline.
pub fn svg(c: &Comparison) -> Result<String> {
    let sets = std::iter::once(&c.flow).chain(&c.baselines);
    let curves = sets
        .enumerate()
        .map(|(i, set)| Curve {
            label: set.label.clone(),
            color: COLORS[(i + 1) % COLORS.len()],
            points: c
                .centres
                .iter()
                .copied()
                .zip(set.mean.iter().copied())
                .collect(),
        })
        .collect();
    let densities = Panel {
        title: "pair-distance histogram g(r)".into(),
        xlabel: "r".into(),
        ylabel: "density".into(),
        curves,
    };
    let z = c
        .baselines
        .iter()
        .enumerate()
        .map(|(i, base)| Curve {
            label: format!("flow vs {}", base.label),
            color: COLORS[(i + 2) % COLORS.len()],
            points: c
                .centres
                .iter()
                .zip(z_scores(&c.flow, base))
                .filter_map(|(&r, z)| z.map(|z| (r, z)))
                .collect(),
        })
        .collect();
    let deviations = Panel {
        title: "(flow - MCMC) / combined error per bin".into(),
        xlabel: "r".into(),
        ylabel: "z".into(),
        curves: z,
    };
    figure(&[densities, deviations], 560, 420)
}

/// The comparison as CSV: r, flow mean and error, then mean and error of each baseline.
pub fn csv(c: &Comparison) -> String {
    let mut s = String::from("r,flow_reweighted,flow_reweighted_err");
    for b in &c.baselines {
        s.push_str(&format!(",{0},{0}_err", b.label));
    }
    s.push('\n');
    for (k, r) in c.centres.iter().enumerate() {
        s.push_str(&format!("{r},{},{}", c.flow.mean[k], c.flow.err[k]));
        for b in &c.baselines {
            s.push_str(&format!(",{},{}", b.mean[k], b.err[k]));
        }
        s.push('\n');
    }
    s
}
