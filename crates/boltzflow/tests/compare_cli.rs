//! End-to-end tests of `boltzflow compare` on a tiny free field (L = 4, m2 = 4, lam = 0): the
//! report names every method and links SVG plots, and a config with baselines but no [mcmc]
//! fails with one line before writing anything.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_boltzflow"))
        .args(args)
        .args(["--log", "warn"])
        .output()
        .expect("boltzflow runs")
}

const FREE_L4: &str = "theory = \"phi4\"\nshape = [4, 4]\nm2 = 4.0\nlam = 0.0\n";

const FLOW: &str = "[flow]\nlayers = 2\nhidden = [8, 8]\nseed = 1\n\n\
[train]\nsteps = 50\nbatch = 64\nlr = 3e-3\neval_every = 10\neval_batch = 256\nseed = 2\n\n\
[sample]\nsamples = 2048\nbatch = 1024\nseed = 3\n\n\
[compare]\nbaselines = [\"hmc\", \"metropolis\"]\nobservables = [\"chi2\", \"abs_m\"]\n";

const MCMC: &str = "\n[mcmc]\nsampler = \"hmc\"\nchains = 2\nseed = 4\nthermalization = 100\n\
draws = 500\nblock = 250\n";

/// Runs `compare CONFIG --out OUT --quiet`, asserts success and that stdout names the report,
/// and returns the report text.
fn compare_ok(config: &Path, out: &Path) -> String {
    let o = run(&[
        "compare",
        config.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(
        o.status.success(),
        "compare failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("report.md"), "{stdout}");
    std::fs::read_to_string(out.join("report.md")).unwrap()
}

/// `analyze FILE --json`.
fn analyze_json(file: &Path) -> serde_json::Value {
    let o = run(&["analyze", file.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn write_config(dir: &Path, recipe: &str) -> PathBuf {
    std::fs::write(dir.join("lattice.toml"), FREE_L4).unwrap();
    let config = dir.join("run.toml");
    std::fs::write(&config, format!("lattice = \"lattice.toml\"\n\n{recipe}")).unwrap();
    config
}

#[test]
fn compare_writes_report_with_every_method_and_svg_plots() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &format!("{FLOW}{MCMC}"));
    let out = dir.path().join("cmp");
    let report = compare_ok(&config, &out);
    for needle in [
        "## chi2",
        "## abs_m",
        "| flow-MH |",
        "| reweighted |",
        "| hmc |",
        "| metropolis |",
        "ESS/N",
        "ln Z",
        "MH acceptance",
        "training.svg",
        "abs_m_hist.svg",
    ] {
        assert!(
            report.contains(needle),
            "`{needle}` missing from:\n{report}"
        );
    }
    // Two tables with one row per method each.
    assert_eq!(report.matches("| flow-MH |").count(), 2, "{report}");
    for svg in ["training.svg", "abs_m_hist.svg"] {
        let text = std::fs::read_to_string(out.join(svg)).unwrap();
        assert!(
            text.starts_with("<svg"),
            "{svg}: {}",
            &text[..40.min(text.len())]
        );
        assert!(text.trim_end().ends_with("</svg>"), "{svg}");
        assert!(text.contains("<polyline"), "{svg}");
        assert_eq!(
            text.matches('<').count(),
            text.matches('>').count(),
            "{svg}: unbalanced tags"
        );
    }
    for file in [
        "flow/model.json",
        "flow/train.h5",
        "flow_sample.h5",
        "hmc.h5",
        "metropolis.h5",
    ] {
        assert!(out.join(file).exists(), "{file} missing");
    }
}

#[test]
fn baselines_without_mcmc_section_fail_with_one_line_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), FLOW);
    let out = dir.path().join("cmp");
    let o = run(&[
        "compare",
        config.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "expected failure; stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {stderr}");
    assert!(
        lines[0].starts_with("error: ") && lines[0].contains("[mcmc]"),
        "{stderr}"
    );
    assert!(!out.exists(), "compare wrote {}", out.display());
}

/// `compare.scan` runs the comparison once per lattice, with per-lattice `set` overrides
/// (here a shorter training and the Z2-mixture proposal on the second lattice), and writes a
/// summary report with a row per lattice and method.
#[test]
fn scan_runs_every_lattice_with_its_overrides() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("free6.toml"),
        FREE_L4.replace("[4, 4]", "[6, 6]"),
    )
    .unwrap();
    let scan = "scan = [\"lattice.toml\", { lattice = \"free6.toml\", set = [\"train.steps=20\", \"sample.z2_mixture=true\"] }]\n";
    let config = write_config(dir.path(), &format!("{FLOW}{scan}{MCMC}"));
    let out = dir.path().join("scan");
    let report = compare_ok(&config, &out);
    assert!(report.contains("lattice [4, 4]"), "{report}");
    assert!(
        report.contains("free6 [6, 6] (train.steps=20, sample.z2_mixture=true)"),
        "{report}"
    );
    // Per observable: 2 lattices x (flow-MH, reweighted, hmc, metropolis).
    assert_eq!(report.matches("| flow-MH |").count(), 4, "{report}");
    let steps = |sub: &str| {
        analyze_json(&out.join(sub).join("flow/train.h5"))["training"]["steps"]
            .as_f64()
            .unwrap()
    };
    assert_eq!(steps("lattice"), 50.0);
    assert_eq!(steps("free6"), 20.0);
    // The exact value beside every estimate, and tau_int against L in the summary plot.
    assert!(report.contains("| exact | sigma |"), "{report}");
    assert!(report.contains("(tau_int_scan.svg)"), "{report}");
    assert_svg(&out.join("tau_int_scan.svg"));
}

/// A plotted SVG: well-formed enough, with at least one curve.
fn assert_svg(path: &Path) {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.starts_with("<svg"), "{}", path.display());
    assert!(text.trim_end().ends_with("</svg>"), "{}", path.display());
    assert!(text.contains("<polyline"), "{}", path.display());
}

/// U(1) through `compare`: the gauge-equivariant flow against HMC and heat bath on a 4x4
/// torus, with Q^2 and the plaquette tabulated beside their exact values and the histogram
/// of Q plotted.
#[test]
fn compare_runs_u1_against_hmc_and_heat_bath() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("u1.toml"),
        "theory = \"u1\"\nshape = [4, 4]\nbeta = 1.0\n",
    )
    .unwrap();
    let recipe = FLOW
        .replace(
            "layers = 2",
            "coupling = \"circular_spline\"\nbins = 4\nlayers = 4",
        )
        .replace("[\"hmc\", \"metropolis\"]", "[\"hmc\", \"heatbath\"]")
        .replace("[\"chi2\", \"abs_m\"]", "[\"q2\", \"plaquette\"]");
    let config = dir.path().join("run.toml");
    std::fs::write(&config, format!("lattice = \"u1.toml\"\n\n{recipe}{MCMC}")).unwrap();
    let out = dir.path().join("u1");
    let report = compare_ok(&config, &out);
    for method in ["flow-MH", "reweighted", "hmc", "heatbath"] {
        assert_eq!(
            report.matches(&format!("| {method} |")).count(),
            2,
            "{report}"
        );
    }
    assert!(
        report.contains("## q2") && report.contains("## plaquette"),
        "{report}"
    );
    assert!(report.contains("(q_hist.svg)"), "{report}");
    assert_svg(&out.join("q_hist.svg"));
}

/// `compare.budget = "action_evals"`: each baseline runs about as many action evaluations
/// (all chains, after thermalisation) as the flow's 2048 proposals, and the report says so.
#[test]
fn equal_action_evaluation_budget() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!("{}budget = \"action_evals\"\n{MCMC}", FLOW),
    );
    let out = dir.path().join("budget");
    let report = compare_ok(&config, &out);
    assert!(
        report.contains("Budget: equal action evaluations"),
        "{report}"
    );
    for baseline in ["hmc", "metropolis"] {
        let v = analyze_json(&out.join(format!("{baseline}.h5")));
        let total = v["chains"].as_f64().unwrap()
            * v["draws"].as_f64().unwrap()
            * v["action_evals_per_draw"].as_f64().unwrap();
        assert!(
            (0.9 * 2048.0..1.2 * 2048.0 + 400.0).contains(&total),
            "{baseline}: {total} action evaluations for a budget of 2048"
        );
        assert!(!out.join(format!("{baseline}_pilot.h5")).exists());
    }
}
