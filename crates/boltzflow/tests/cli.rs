//! End-to-end tests of the `boltzflow` binary: bad input gives one clear line and writes
//! nothing, a short MCMC run reproduces exact values, and a run killed with SIGKILL resumes
//! into exactly the chain an uninterrupted run produces.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// Tests in this binary run one at a time: a child process inherits every file descriptor the
/// test process has open at its spawn, HDF5's file locks included, so a child started by one
/// test while another test reads an ensemble would hold that file locked.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_boltzflow"))
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn run(args: &[&str]) -> Output {
    bin()
        .args(args)
        .args(["--log", "warn"])
        .output()
        .expect("boltzflow runs")
}

/// Asserts a failed run with a single `error:` line on stderr mentioning every `needle`.
fn assert_one_line_error(out: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "expected failure, got success; stderr: {stderr}"
    );
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    for n in needles {
        assert!(lines[0].contains(n), "`{n}` missing from: {stderr}");
    }
}

/// Runs `mcmc config --out out --quiet` and asserts that it succeeds.
fn run_mcmc(config: &Path, out: &Path) {
    let result = run(&[
        "mcmc",
        config.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
}

/// Writes a lattice file and a config naming it into `dir`; returns the config path.
fn write_config(dir: &Path, lattice: &str, mcmc: &str) -> PathBuf {
    std::fs::write(dir.join("lattice.toml"), lattice).unwrap();
    let config = dir.join("run.toml");
    std::fs::write(
        &config,
        format!("lattice = \"lattice.toml\"\n\n[mcmc]\n{mcmc}"),
    )
    .unwrap();
    config
}

const FREE_FIELD: &str = "theory = \"phi4\"\nshape = [8, 8]\nm2 = 1.0\nlam = 0.0\n";
const HMC: &str =
    "sampler = \"hmc\"\nchains = 2\nseed = 7\nthermalization = 100\ndraws = 400\nblock = 50\n";

#[test]
fn bad_input_gives_one_line_and_writes_nothing() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.h5");
    let out_arg = out.to_str().unwrap();

    let cases: Vec<(String, String, Vec<&str>)> = vec![
        (
            FREE_FIELD.into(),
            format!("{HMC}stepsize = 0.1\n"),
            vec!["stepsize"],
        ),
        (
            FREE_FIELD.into(),
            HMC.replace("draws = 400", "draws = \"many\""),
            vec!["draws"],
        ),
        (
            FREE_FIELD.replace("[8, 8]", "[8, 0]"),
            HMC.into(),
            vec!["shape"],
        ),
        (
            FREE_FIELD.replace("m2 = 1.0", "mass = 1.0"),
            HMC.into(),
            vec!["mass"],
        ),
        (
            "theory = \"u1\"\nshape = [8, 8]\nbeta = -1.0\n".into(),
            HMC.replace("\"hmc\"", "\"heatbath\""),
            vec!["beta"],
        ),
        (
            FREE_FIELD.into(),
            HMC.replace("\"hmc\"", "\"heatbath\""),
            vec!["heatbath", "phi4"],
        ),
    ];
    for (lattice, mcmc, needles) in cases {
        let config = write_config(dir.path(), &lattice, &mcmc);
        let result = run(&[
            "mcmc",
            config.to_str().unwrap(),
            "--out",
            out_arg,
            "--quiet",
        ]);
        assert_one_line_error(&result, &needles);
        assert!(!out.exists(), "a failed run wrote {}", out.display());
    }

    let missing = run(&["mcmc", "no/such/config.toml", "--out", out_arg]);
    assert_one_line_error(&missing, &["no/such/config.toml"]);
    let text = dir.path().join("notes.h5");
    std::fs::write(&text, "not an HDF5 file").unwrap();
    assert_one_line_error(&run(&["analyze", text.to_str().unwrap()]), &["notes.h5"]);
    assert_one_line_error(&run(&["analyze", "no/such/run.h5"]), &["no/such/run.h5"]);
}

#[test]
fn resume_refuses_another_config_and_refuses_to_overwrite() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), FREE_FIELD, HMC);
    let out = dir.path().join("run.h5");
    let (c, o) = (config.to_str().unwrap(), out.to_str().unwrap());
    assert!(run(&["mcmc", c, "--out", o, "--quiet"]).status.success());
    let before = std::fs::read(&out).unwrap();

    let again = run(&["mcmc", c, "--out", o, "--quiet"]);
    assert_one_line_error(&again, &["already exists", "--resume"]);
    let other = run(&[
        "mcmc",
        c,
        "--out",
        o,
        "--resume",
        "--set",
        "mcmc.seed=8",
        "--quiet",
    ]);
    assert_one_line_error(&other, &["another config"]);
    assert_eq!(
        std::fs::read(&out).unwrap(),
        before,
        "a refused run modified the file"
    );
}

fn analyze_json(path: &Path) -> Value {
    let out = run(&["analyze", path.to_str().unwrap(), "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("analyze --json prints one JSON object")
}

#[test]
fn free_field_hmc_matches_exact_values() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let mcmc = HMC
        .replace("draws = 400", "draws = 4000")
        .replace("block = 50", "block = 1000");
    let config = write_config(dir.path(), FREE_FIELD, &mcmc);
    let out = dir.path().join("free.h5");
    run_mcmc(&config, &out);

    let report = analyze_json(&out);
    let exact = run(&["exact", config.to_str().unwrap(), "--json"]);
    let exact: Value = serde_json::from_slice(&exact.stdout).unwrap();
    assert!((exact["chi2"].as_f64().unwrap() - 0.5).abs() < 1e-12);
    for name in ["chi2", "g_0", "g_1"] {
        let o = &report["observables"][name];
        let (mean, err) = (o["mean"].as_f64().unwrap(), o["err"].as_f64().unwrap());
        let x = exact[name].as_f64().unwrap();
        assert!(err > 0.0 && o["tau_int"].as_f64().unwrap() >= 0.5 - 1e-9);
        assert!(
            (mean - x).abs() < 4.0 * err,
            "{name}: {mean} +- {err} vs exact {x}"
        );
        assert_eq!(o["exact"].as_f64(), Some(x));
    }
    // Vector observables: every component of G(x) and C(t), and the effective mass, whose
    // exact free-field value is arccosh(1 + m2/2) at every t.
    for name in ["g", "c_t", "m_eff"] {
        let v = &report["vectors"][name];
        let sigma = v["sigma"]
            .as_array()
            .unwrap_or_else(|| panic!("{name}: no exact comparison"));
        assert!(!sigma.is_empty());
        for (k, s) in sigma.iter().enumerate() {
            let s = s.as_f64().unwrap();
            assert!(s.abs() < 4.0, "{name}[{k}] deviates by {s} sigma");
        }
    }
    let m_eff = report["vectors"]["m_eff"]["exact"][0].as_f64().unwrap();
    assert!((m_eff - 1.5f64.acosh()).abs() < 1e-12);
    let acceptance = report["acceptance"].as_f64().unwrap();
    assert!(
        acceptance > 0.5 && acceptance <= 1.0,
        "acceptance {acceptance}"
    );
}

/// Every series of a file, as JSON-able nested vectors, read through h5py-independent Rust.
fn series_of(path: &Path) -> Vec<(String, Vec<Vec<f64>>)> {
    let reader = boltzflow_store::EnsembleReader::open(path).unwrap();
    reader
        .series_names()
        .into_iter()
        .map(|n| {
            let s = reader.series(&n).unwrap();
            (n, s)
        })
        .collect()
}

/// Committed draws per chain of a run in progress (0 if the file cannot be read yet).
fn committed_draws(path: &Path) -> usize {
    boltzflow_store::EnsembleReader::open(path).map_or(0, |r| r.draws())
}

/// Runs `mcmc` on `config`, killing it with SIGKILL once each of `kill_at` draws per chain
/// has been committed, then resumes to the end; the result must equal `expected` exactly,
/// and the file must hold a prefix of it after every kill.
fn kill_and_resume(
    config: &Path,
    out: &Path,
    kill_at: &[usize],
    expected: &[(String, Vec<Vec<f64>>)],
) {
    let (c, k) = (config.to_str().unwrap(), out.to_str().unwrap());
    for &target in kill_at {
        let mut args = vec!["mcmc", c, "--out", k, "--quiet", "--log", "warn"];
        if out.exists() {
            args.push("--resume");
        }
        let mut child = bin()
            .args(&args)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while committed_draws(out) < target {
            if let Some(status) = child.try_wait().unwrap() {
                let mut stderr = String::new();
                std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).ok();
                panic!("the run ended ({status}) before draw {target}: {stderr}");
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no progress to draw {target}"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let done = committed_draws(out);
        assert!(done >= target);
        for (name, chains) in series_of(out) {
            let full = &expected.iter().find(|(n, _)| *n == name).unwrap().1;
            for (chain, values) in chains.iter().enumerate() {
                assert_eq!(values.len(), done);
                assert_eq!(
                    values[..],
                    full[chain][..done],
                    "{name} differs after a kill"
                );
            }
        }
    }
    let resumed = run(&["mcmc", c, "--out", k, "--quiet", "--resume"]);
    assert!(
        resumed.status.success(),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    assert_eq!(
        series_of(out),
        expected,
        "resumed chain differs from the uninterrupted one"
    );
}

#[test]
fn killed_run_resumes_into_the_uninterrupted_chain() {
    let _serial = serial();
    let lattice = "theory = \"phi4\"\nshape = [16, 16]\nm2 = -4.0\nlam = 8.0\n";
    // Metropolis (per-block seeds) and HMC (adapted step size in the sampler state).
    let samplers = [
        "sampler = \"metropolis\"\nchains = 2\nseed = 11\nthermalization = 10\n\
         draws = 1500\nsteps_per_draw = 40\nblock = 25\n",
        "sampler = \"hmc\"\nchains = 2\nseed = 12\nthermalization = 50\n\
         draws = 1500\nsteps_per_draw = 8\nblock = 25\n",
    ];
    for mcmc in samplers {
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(dir.path(), lattice, mcmc);
        let reference = dir.path().join("reference.h5");
        run_mcmc(&config, &reference);
        let expected = series_of(&reference);
        kill_and_resume(
            &config,
            &dir.path().join("killed.h5"),
            &[100, 600, 1100],
            &expected,
        );
    }
}

#[test]
fn shipped_lattices_and_configs_parse() {
    let _serial = serial();
    for entry in std::fs::read_dir(repo().join("lattices")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            // start coordinates for mcmc.start (tests/molecular_cli.rs reads them)
            assert_eq!(path.extension().unwrap(), "txt", "{}", path.display());
            continue;
        }
        let out = run(&["exact", path.to_str().unwrap(), "--json"]);
        assert!(
            out.status.success(),
            "{}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let _: Value = serde_json::from_slice(&out.stdout).unwrap();
    }
    for entry in std::fs::read_dir(repo().join("configs")).unwrap() {
        let path = entry.unwrap().path();
        let table: toml::Table = toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        if !table.contains_key("mcmc") {
            // Flow configs: tests/flow_cli.rs runs every one of them.
            assert!(
                table.contains_key("train") || table.contains_key("sample"),
                "{} has no [mcmc], [train] or [sample] section",
                path.display()
            );
            continue;
        }
        // A run of zero length validates the whole config without sampling.
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("x.h5");
        let result = run(&[
            "mcmc",
            path.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--set",
            "mcmc.thermalization=0",
            "--set",
            "mcmc.draws=2",
            "--set",
            "mcmc.chains=1",
            "--quiet",
        ]);
        assert!(
            result.status.success(),
            "{}: {}",
            path.display(),
            String::from_utf8_lossy(&result.stderr)
        );
    }
}

#[test]
fn h5py_reads_an_ensemble() {
    let _serial = serial();
    let has_h5py = Command::new("python3")
        .args(["-c", "import h5py"])
        .status()
        .is_ok_and(|s| s.success());
    if !has_h5py {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have h5py (scripts/setup installs it)"
        );
        eprintln!(
            "note: python3 with h5py not found; skipping the h5py check (scripts/setup installs it)"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), FREE_FIELD, HMC);
    let out = dir.path().join("run.h5");
    let result = run(&[
        "mcmc",
        config.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(result.status.success());
    let check = Command::new("python3")
        .arg(repo().join("scripts/check_h5py.py"))
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
}
