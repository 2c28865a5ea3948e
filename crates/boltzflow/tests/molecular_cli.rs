//! End-to-end tests of the molecular Boltzmann generators through the shipped configs
//! (shortened by `--set`): free-energy differences and basin populations against quadrature
//! (seeded, |x - exact| < 4 sigma), a flow trained at two temperatures sampling a third,
//! the centre of mass of DW4, MCMC start files, `compare` on the double well, and one-line
//! errors on bad input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_boltzflow"))
        .args(args)
        .args(["--log", "warn"])
        .output()
        .expect("boltzflow runs")
}

fn assert_success(out: &Output) {
    assert!(
        out.status.success(),
        "boltzflow failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Asserts a failed run with a single `error:` line on stderr mentioning every `needle`.
fn assert_one_line_error(out: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected failure; stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    for n in needles {
        assert!(lines[0].contains(n), "`{n}` missing from: {stderr}");
    }
}

fn configs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs")
}

fn config(name: &str) -> String {
    configs().join(name).to_str().unwrap().to_string()
}

fn analyze(file: &Path) -> Value {
    let out = run(&["analyze", file.to_str().unwrap(), "--json"]);
    assert_success(&out);
    serde_json::from_slice(&out.stdout).expect("analyze --json prints JSON")
}

/// |mean - exact| < 4 err with err > 0.
fn within(v: &Value, what: &str) {
    let (mean, err, exact) = (
        v["mean"].as_f64().unwrap(),
        v["err"].as_f64().unwrap(),
        v["exact"].as_f64().unwrap(),
    );
    eprintln!("{what}: {mean} +- {err} vs exact {exact}");
    assert!(err > 0.0, "{what}: err {err}");
    assert!(
        (mean - exact).abs() < 4.0 * err,
        "{what}: {mean} +- {err} vs exact {exact}"
    );
}

/// `boltzflow train CONFIG --out OUT --quiet --set ...`.
fn train(config: &str, out: &Path, sets: &[&str]) -> Output {
    let mut args = vec!["train", config, "--out", out.to_str().unwrap(), "--quiet"];
    for s in sets {
        args.extend(["--set", s]);
    }
    run(&args)
}

/// `boltzflow sample CONFIG --model OUT/model.json --out FILE --quiet --set ...`.
fn sample(config: &str, flow: &Path, file: &Path, sets: &[&str]) -> Output {
    let model = flow.join("model.json");
    let mut args = vec![
        "sample",
        config,
        "--model",
        model.to_str().unwrap(),
        "--out",
        file.to_str().unwrap(),
        "--quiet",
    ];
    for s in sets {
        args.extend(["--set", s]);
    }
    run(&args)
}

/// The double-well config with a shorter run, trained at kT = 1 and 3 (reverse KL at both,
/// maximum likelihood on the kT = 1 Metropolis ensemble it generates itself): at kT = 1 the
/// reweighted and MH free-energy differences and well populations agree with quadrature,
/// and at kT = 2, a temperature it was not trained at, so does the reweighted delta_f (the
/// sample file records the lattice at kT = 2, so the exact values are those of kT = 2).
#[test]
fn double_well_free_energy_at_trained_and_unseen_temperatures() {
    let dir = tempfile::tempdir().unwrap();
    let flow = dir.path().join("flow");
    let cfg = config("flow_double_well.toml");
    assert_success(&train(
        &cfg,
        &flow,
        &[
            "train.steps=600",
            "train.temperatures=[1.0, 3.0]",
            "mcmc.draws=2000",
        ],
    ));
    assert!(flow.join("ensemble.h5").exists());
    let file = dir.path().join("t1.h5");
    assert_success(&sample(&cfg, &flow, &file, &["sample.samples=16384"]));
    let r = analyze(&file);
    let ess = r["ess"].as_f64().unwrap();
    assert!(ess > 0.3, "ESS/N {ess}");
    for name in ["delta_f", "p_a", "p_b"] {
        within(&r["reweighted"][name], &format!("kT 1 reweighted {name}"));
        within(&r["observables"][name], &format!("kT 1 MH {name}"));
    }
    within(&r["ln_z"], "kT 1 ln Z");

    let file = dir.path().join("t2.h5");
    assert_success(&sample(
        &cfg,
        &flow,
        &file,
        &["sample.samples=16384", "sample.temperature=2.0"],
    ));
    let r = analyze(&file);
    let ess = r["ess"].as_f64().unwrap();
    assert!(ess > 0.1, "kT 2: ESS/N {ess}");
    let exact_t2 = r["reweighted"]["delta_f"]["exact"].as_f64().unwrap();
    let exact_t1 = 3.379901071224;
    assert!((exact_t2 - exact_t1).abs() > 0.5, "{exact_t2}: not kT = 2");
    within(&r["reweighted"]["delta_f"], "kT 2 reweighted delta_f");
    within(&r["ln_z"], "kT 2 ln Z");
}

/// Mueller-Brown through its config (shortened): the reweighted basin populations agree with
/// quadrature.
#[test]
fn mueller_brown_basin_populations_match_quadrature() {
    let dir = tempfile::tempdir().unwrap();
    let flow = dir.path().join("flow");
    let cfg = config("flow_mueller_brown.toml");
    assert_success(&train(&cfg, &flow, &["train.steps=600", "mcmc.draws=2000"]));
    let file = dir.path().join("mb.h5");
    assert_success(&sample(&cfg, &flow, &file, &["sample.samples=16384"]));
    let r = analyze(&file);
    let ess = r["ess"].as_f64().unwrap();
    assert!(ess > 0.1, "ESS/N {ess}");
    for name in ["p_a", "p_b", "p_c"] {
        within(&r["reweighted"][name], &format!("reweighted {name}"));
    }
    within(&r["ln_z"], "ln Z");
}

/// DW4 is translation invariant: its flow removes the centre of mass by default (the model
/// file says so), trains and samples; keeping it is refused with one line, as is removing it
/// on a target with a physical centre of mass.
#[test]
fn dw4_flow_removes_the_centre_of_mass() {
    let dir = tempfile::tempdir().unwrap();
    let flow = dir.path().join("flow");
    let cfg = config("flow_dw4.toml");
    assert_success(&train(
        &cfg,
        &flow,
        &["train.steps=20", "mcmc.draws=100", "train.eval_batch=256"],
    ));
    let model: Value =
        serde_json::from_str(&std::fs::read_to_string(flow.join("model.json")).unwrap()).unwrap();
    assert_eq!(model["flow"]["burn"]["centre_of_mass"], "remove");
    let file = dir.path().join("dw4.h5");
    assert_success(&sample(&cfg, &flow, &file, &["sample.samples=512"]));
    let r = analyze(&file);
    assert!(
        r["reweighted"]["energy"]["mean"]
            .as_f64()
            .unwrap()
            .is_finite()
    );

    let keep = train(
        &cfg,
        &dir.path().join("keep"),
        &["flow.centre_of_mass=\"keep\"", "train.steps=2"],
    );
    assert_one_line_error(&keep, &["flow.centre_of_mass", "not normalisable"]);
    let remove = train(
        &config("flow_double_well.toml"),
        &dir.path().join("remove"),
        &["flow.centre_of_mass=\"remove\"", "train.steps=2"],
    );
    assert_one_line_error(
        &remove,
        &["flow.centre_of_mass", "not translation invariant"],
    );
}

/// Two DW4 particles have exact values (quadrature over the pair distance on the
/// centre-of-mass-free plane): a short reverse-KL flow, sampled through the mixture over its
/// 2! x 2 relabellings and mirror images (`sample.symmetrize = "particles"`), reproduces ln Z,
/// the energy and the mean distance within 4 sigma, reweighted and on the MH chain. This
/// checks the centre-of-mass bookkeeping and the mixture's normalisation (a missing ln |G|
/// would move ln Z by ln 4, hundreds of sigma) end to end; two particles have no sectors to
/// miss (their swap is a rotation), so recovering missed sectors is checked by the unit tests
/// of `symmetry` and measured on DW4 in the README.
#[test]
fn symmetrised_two_particle_flow_matches_quadrature() {
    let dir = tempfile::tempdir().unwrap();
    let lattice = dir.path().join("dw2.toml");
    std::fs::write(
        &lattice,
        "theory = \"dw4\"\ndescription = \"two DW4 particles\"\nn_particles = 2\n",
    )
    .unwrap();
    let cfg = config("flow_dw4.toml");
    let set_lattice = format!("lattice=\"{}\"", lattice.display());
    let flow = dir.path().join("flow");
    assert_success(&train(
        &cfg,
        &flow,
        &[
            &set_lattice,
            "train.objective=\"reverse\"",
            "train.generate_ensemble=false",
            "train.steps=800",
            "train.temperatures=[1.0]",
            "train.eval_batch=1024",
        ],
    ));
    let file = dir.path().join("dw2.h5");
    assert_success(&sample(
        &cfg,
        &flow,
        &file,
        &[
            &set_lattice,
            "sample.samples=16384",
            "sample.symmetrize=\"particles\"",
        ],
    ));
    let r = analyze(&file);
    eprintln!("ESS/N {}", r["ess"]);
    within(&r["ln_z"], "ln Z");
    for o in ["energy", "mean_distance"] {
        within(&r["reweighted"][o], &format!("reweighted {o}"));
        within(&r["observables"][o], &format!("MH {o}"));
    }
}

/// `mcmc.start`: the dimer config's chains start closed and open and stay there in a short
/// run (p_open about 1/2 over the 4 chains, R-hat far from 1); a coordinate file with the
/// wrong number of particles is refused with one line naming both counts, before any file
/// is written.
#[test]
fn mcmc_starts_from_coordinate_files() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config("flow_dimer.toml");
    let out = dir.path().join("dimer.h5");
    let o = run(&[
        "mcmc",
        &cfg,
        "--out",
        out.to_str().unwrap(),
        "--quiet",
        "--set",
        "mcmc.draws=200",
        "--set",
        "mcmc.thermalization=200",
    ]);
    assert_success(&o);
    let r = analyze(&out);
    let p_open = r["observables"]["p_open"]["mean"].as_f64().unwrap();
    assert!((p_open - 0.5).abs() < 0.1, "p_open {p_open}");
    let d = r["observables"]["dimer_distance"]["mean"].as_f64().unwrap();
    assert!((d - 1.5).abs() < 0.3, "mean dimer distance {d}");

    let text = std::fs::read_to_string(configs().join("../lattices/dimer_open.txt")).unwrap();
    let short: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .skip(1)
        .collect();
    let bad = dir.path().join("short.txt");
    std::fs::write(&bad, short.join("\n")).unwrap();
    let start = format!("mcmc.start=[\"{}\"]", bad.display());
    let refused = dir.path().join("refused.h5");
    let o = run(&[
        "mcmc",
        &cfg,
        "--out",
        refused.to_str().unwrap(),
        "--quiet",
        "--set",
        &start,
    ]);
    assert_one_line_error(&o, &["holds 37 particles", "the target has 38"]);
    assert!(!refused.exists());
}

/// Temperatures must be positive kT, apply to molecular targets only, and `compare` refuses
/// a sampling temperature its MCMC baselines would not share.
#[test]
fn bad_temperatures_give_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config("flow_double_well.toml");
    let o = train(
        &cfg,
        &dir.path().join("a"),
        &["train.temperatures=[1.0, -2.0]"],
    );
    assert_one_line_error(&o, &["train.temperatures", "-2"]);
    let o = train(
        &config("flow_phi4_L8.toml"),
        &dir.path().join("b"),
        &["train.temperatures=[2.0]"],
    );
    assert_one_line_error(&o, &["train.temperatures", "molecular"]);
    std::fs::write(
        dir.path().join("cold.toml"),
        "theory = \"double_well\"\ntemperature = 0.0\n",
    )
    .unwrap();
    let recipe = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("../lattices/double_well.toml", "cold.toml");
    let cold = dir.path().join("cold_run.toml");
    std::fs::write(&cold, recipe).unwrap();
    let o = train(cold.to_str().unwrap(), &dir.path().join("c"), &[]);
    assert_one_line_error(&o, &["temperature", "positive"]);
    assert!(!dir.path().join("c").exists());
    // compare would put the flow at another temperature than its MCMC baselines
    let out = dir.path().join("cmp");
    let o = run(&[
        "compare",
        &cfg,
        "--out",
        out.to_str().unwrap(),
        "--quiet",
        "--set",
        "sample.temperature=2.0",
    ]);
    assert_one_line_error(&o, &["sample.temperature", "MCMC baselines"]);
    assert!(!out.exists());
}

/// `compare` on the double well (shortened): the report tabulates delta_f for the flow and
/// both baselines with the exact value, and plots the histogram of x.
#[test]
fn compare_double_well_reports_delta_f() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cmp");
    let o = run(&[
        "compare",
        &config("flow_double_well.toml"),
        "--out",
        out.to_str().unwrap(),
        "--quiet",
        "--set",
        "train.steps=300",
        "--set",
        "mcmc.draws=1000",
        "--set",
        "sample.samples=8192",
    ]);
    assert_success(&o);
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("## delta_f"), "{report}");
    for method in ["flow-MH", "reweighted", "metropolis", "hmc"] {
        assert!(
            report.contains(&format!("| {method} |")),
            "{method}: {report}"
        );
    }
    assert!(report.contains("3.3799"), "exact delta_f missing: {report}");
    assert!(report.contains("(x_hist.svg)"), "{report}");
    assert!(out.join("x_hist.svg").exists());
}

/// `sample.symmetrize` is refused with one line, before a model is read, where the group is
/// too large to sum over (LJ13: 13! x 2), where there are no identical particles (the double
/// well), and together with the Z2 mixture.
#[test]
fn symmetrize_refusals_are_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("none");
    let refuse = |cfg: &str, sets: &[&str], needles: &[&str]| {
        let o = sample(&config(cfg), &missing, &dir.path().join("s.h5"), sets);
        assert_one_line_error(&o, needles);
    };
    let sym = "sample.symmetrize=\"particles\"";
    refuse(
        "flow_lj13.toml",
        &[sym],
        &["13! x 2", "remove sample.symmetrize"],
    );
    refuse(
        "flow_double_well.toml",
        &[sym],
        &["identical particles", "has none"],
    );
    refuse(
        "flow_dw4.toml",
        &[sym, "sample.z2_mixture=true"],
        &["sample.z2_mixture", "keep one"],
    );
    assert!(!dir.path().join("s.h5").exists());
}

/// `compare` on DW4 (shortened) compares the pair-distance histogram of the reweighted flow
/// with each baseline's, bin by bin: a report section with chi^2 per baseline, the plot, and
/// the values as CSV (r, then mean and error of the flow and of each baseline).
#[test]
fn compare_dw4_reports_the_pair_distance_histogram() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cmp");
    let mut args = vec![
        "compare".to_string(),
        config("flow_dw4.toml"),
        "--out".into(),
        out.to_str().unwrap().into(),
        "--quiet".into(),
    ];
    for s in [
        "train.steps=50",
        "train.eval_batch=256",
        "mcmc.draws=500",
        "sample.samples=4096",
    ] {
        args.extend(["--set".into(), s.into()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_success(&run(&args));
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("## Pair-distance histogram"), "{report}");
    let section = &report[report.find("## Pair-distance histogram").unwrap()..];
    for b in ["hmc", "metropolis"] {
        let row = section
            .lines()
            .find(|l| l.starts_with(&format!("| {b} | ")))
            .unwrap_or_else(|| panic!("{b} row missing: {report}"));
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let (chi2, bins): (f64, usize) = (cells[2].parse().unwrap(), cells[3].parse().unwrap());
        assert!(chi2.is_finite() && chi2 >= 0.0 && bins > 10, "{row}");
    }
    assert!(report.contains("(pair_distance.svg)"), "{report}");
    let csv = std::fs::read_to_string(out.join("pair_distance.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 101, "header + 100 bins");
    assert_eq!(
        lines[0],
        "r,flow_reweighted,flow_reweighted_err,hmc,hmc_err,metropolis,metropolis_err"
    );
    // g(r) of HMC integrates to one over the bins (every pair distance lies in [0, 8)).
    let rows: Vec<Vec<f64>> = lines[1..]
        .iter()
        .map(|l| l.split(',').map(|v| v.parse().unwrap()).collect())
        .collect();
    assert!(
        rows.iter().flatten().all(|v| v.is_finite()),
        "non-finite value: {csv}"
    );
    assert!(
        rows.iter().any(|r| r[1] > 0.0 && r[2] > 0.0),
        "the flow's histogram is empty: {csv}"
    );
    let h = rows[1][0] - rows[0][0];
    let integral: f64 = rows.iter().map(|r| r[3] * h).sum();
    assert!(
        (integral - 1.0).abs() < 0.01,
        "hmc g(r) integrates to {integral}"
    );
}
