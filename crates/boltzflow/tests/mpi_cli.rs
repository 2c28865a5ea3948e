//! `mpirun -np 2 boltzflow ...` end to end (build with `--features mpi`; OpenMPI's mpirun on
//! the PATH): data-parallel training equals one process on the whole batch, a 2-rank sample
//! run's global estimates equal those of its rank files analysed together, a 2-rank MCMC run
//! collates to the single-process ensemble bitwise, and a rank killed mid-run leaves readable
//! files that `--resume` completes into that same ensemble.
//!
//! Each MPI job is a separate process tree (MPI initialises once per process), started from
//! this test binary, which never initialises MPI itself.
#![cfg(feature = "mpi")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use boltzflow_store::EnsembleReader;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_boltzflow");

/// MPI jobs of this file run one at a time (each takes both cores).
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// `mpirun -np <ranks> boltzflow <args>`, one rayon thread per rank, warnings only.
fn mpirun(ranks: usize, args: &[&str]) -> Command {
    mpirun_logged(ranks, args, "warn")
}

/// [`mpirun`] with log level `log`.
fn mpirun_logged(ranks: usize, args: &[&str], log: &str) -> Command {
    let mut cmd = Command::new("mpirun");
    cmd.args(["--allow-run-as-root", "--oversubscribe", "-np"])
        .arg(ranks.to_string())
        .args(["-x", "RAYON_NUM_THREADS=1", BIN])
        .args(args)
        .args(["--log", log, "--quiet"]);
    cmd
}

/// `boltzflow <args>` as a plain single process.
fn single(args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args).args(["--log", "warn", "--quiet"]);
    cmd.env("RAYON_NUM_THREADS", "1");
    cmd
}

fn ok(mut cmd: Command) -> Output {
    let out = cmd.output().expect("the command starts");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Free field L = 4, m2 = 4 and a tiny flow (native affine kernels, or burn with MLPs).
fn write_config(dir: &Path, recipe: &str) -> PathBuf {
    std::fs::write(
        dir.join("lattice.toml"),
        "theory = \"phi4\"\nshape = [4, 4]\nm2 = 4.0\nlam = 0.0\n",
    )
    .unwrap();
    let config = dir.join("run.toml");
    std::fs::write(&config, format!("lattice = \"lattice.toml\"\n\n{recipe}")).unwrap();
    config
}

const FLOW: &str = "[flow]\nlayers = 4\nhidden = [8, 8]\nseed = 1\n\n\
[train]\nsteps = 40\nbatch = 32\nlr = 3e-3\neval_every = 20\neval_batch = 256\n\
checkpoint_every = 20\nseed = 2\n\n\
[sample]\nsamples = 6000\nbatch = 500\nseed = 3\n\n\
[mcmc]\nsampler = \"metropolis\"\nchains = 4\nseed = 4\nthermalization = 50\n\
draws = 3000\nblock = 100\n";

fn params(dir: &Path) -> Vec<f64> {
    let model: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("model.json")).unwrap()).unwrap();
    model["params"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_f64().unwrap())
        .collect()
}

/// Largest |a - b| / (1 + |a|) over the parameters.
fn max_rel_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() / (1.0 + x.abs()))
        .fold(0.0, f64::max)
}

/// 2 ranks x batch 16 give the parameters of 1 process x batch 32 after 40 Adam steps, to f32
/// rounding of the gradient sums (1e-5 relative; measured 5e-7 native, 4e-8 burn with MLPs);
/// a run started on 2 ranks and resumed on 1 ends where the 1-process run ends.
#[test]
fn data_parallel_training_equals_one_process_on_the_whole_batch() {
    let _serial = serial();
    for (engine, extra, tol) in [
        ("native", "", 1e-5),
        ("burn", "conditioner = \"mlp\"\nhidden = [16]\n", 1e-5),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let recipe = FLOW.replace(
            "seed = 1\n",
            &format!("seed = 1\nengine = \"{engine}\"\n{extra}"),
        );
        let recipe = if engine == "burn" {
            recipe.replace("hidden = [8, 8]\n", "")
        } else {
            recipe
        };
        let config = write_config(dir.path(), &recipe);
        let one = dir.path().join("one");
        let two = dir.path().join("two");
        ok(single(&["train", s(&config), "--out", s(&one)]));
        ok(mpirun(2, &["train", s(&config), "--out", s(&two)]));
        let (p1, p2) = (params(&one), params(&two));
        let diff = max_rel_diff(&p1, &p2);
        eprintln!("{engine}: 2 ranks vs 1 process, largest relative parameter difference {diff:e}");
        assert!(
            diff < tol,
            "{engine}: 2 ranks differ from 1 process by {diff:e} (tolerance {tol:e})"
        );
        // And the 1-process run moved: the comparison is not between two initialisations.
        let moved = dir.path().join("moved");
        ok(single(&[
            "train",
            s(&config),
            "--out",
            s(&moved),
            "--set",
            "train.steps=1",
        ]));
        assert!(max_rel_diff(&p1, &params(&moved)) > 100.0 * tol);

        // Half the steps on 2 ranks, the rest on 1.
        let mixed = dir.path().join("mixed");
        ok(mpirun(
            2,
            &[
                "train",
                s(&config),
                "--out",
                s(&mixed),
                "--set",
                "train.steps=20",
            ],
        ));
        ok(single(&[
            "train",
            s(&config),
            "--out",
            s(&mixed),
            "--resume",
        ]));
        let diff = max_rel_diff(&p1, &params(&mixed));
        assert!(
            diff < tol,
            "{engine}: 2 -> 1 ranks resumed differs by {diff:e}"
        );
        // train.h5 holds each evaluation once.
        let evaluations = EnsembleReader::open(&mixed.join("train.h5"))
            .unwrap()
            .draws();
        assert_eq!(evaluations, 2);
    }
}

fn analyze(files: &[&Path]) -> Value {
    let mut cmd = Command::new(BIN);
    cmd.arg("analyze").args(files).arg("--json");
    serde_json::from_slice(&ok(cmd).stdout).unwrap()
}

/// A 2-rank `sample`: rank files of 3000 samples each, a collated file with 2 chains whose
/// analysis equals that of the rank files analysed together, the ranks' reduced ESS/N and
/// ln Z (logged) equal to it, and ln Z within 4 sigma of the exact free-field value.
#[test]
fn distributed_sampling_reduces_to_the_union_of_the_rank_files() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &FLOW.replace("steps = 40", "steps = 200"));
    let model = dir.path().join("flow");
    ok(single(&["train", s(&config), "--out", s(&model)]));
    let out = dir.path().join("flow.h5");
    // The reduced estimates are logged at info level.
    let run = ok(mpirun_logged(
        2,
        &[
            "sample",
            s(&config),
            "--model",
            s(&model.join("model.json")),
            "--out",
            s(&out),
        ],
        "info",
    ));
    let log = String::from_utf8_lossy(&run.stderr);

    let ranks = [
        dir.path().join("flow.rank0.h5"),
        dir.path().join("flow.rank1.h5"),
    ];
    for r in &ranks {
        assert_eq!(EnsembleReader::open(r).unwrap().draws(), 3000);
    }
    let collated = EnsembleReader::open(&out).unwrap();
    assert_eq!((collated.chains(), collated.draws()), (2, 3000));
    let joined = analyze(&[&out]);
    let union = analyze(&[&ranks[0], &ranks[1]]);
    for key in ["ess", "ln_z", "reweighted", "observables", "acceptance"] {
        assert_eq!(joined[key], union[key], "{key}");
    }
    // The two ranks drew different samples.
    let lw0 = EnsembleReader::open(&ranks[0])
        .unwrap()
        .series("log_w")
        .unwrap();
    let lw1 = EnsembleReader::open(&ranks[1])
        .unwrap()
        .series("log_w")
        .unwrap();
    assert_ne!(lw0[0][..10], lw1[0][..10]);

    let line = log
        .lines()
        .find(|l| l.contains("samples in all"))
        .unwrap_or_else(|| panic!("no reduced estimate logged: {log}"));
    let number = |tag: &str| -> f64 {
        let rest = &line[line.find(tag).unwrap() + tag.len()..];
        rest.split([' ', ','])
            .find(|w| !w.is_empty())
            .unwrap()
            .parse()
            .unwrap()
    };
    let (ess, ln_z) = (number("ESS/N "), number("ln Z "));
    assert!(
        (ess - joined["ess"].as_f64().unwrap()).abs() < 1e-5,
        "{line}"
    );
    let ln_z_file = joined["ln_z"]["mean"].as_f64().unwrap();
    assert!((ln_z - ln_z_file).abs() < 1e-8, "{line} vs {ln_z_file}");
    let err = joined["ln_z"]["err"].as_f64().unwrap();
    let exact = joined["exact"]["ln_z"].as_f64().unwrap();
    assert!(
        (ln_z_file - exact).abs() < 4.0 * err,
        "ln Z {ln_z_file} +- {err} vs exact {exact}"
    );
}

/// Every series of two ensemble files, bitwise.
fn assert_same_ensemble(a: &Path, b: &Path) {
    let (ra, rb) = (
        EnsembleReader::open(a).unwrap(),
        EnsembleReader::open(b).unwrap(),
    );
    assert_eq!((ra.chains(), ra.draws()), (rb.chains(), rb.draws()));
    assert_eq!(ra.series_names(), rb.series_names());
    for name in ra.series_names() {
        assert_eq!(
            ra.series(&name).unwrap(),
            rb.series(&name).unwrap(),
            "{name}"
        );
    }
    for chain in 0..ra.chains() {
        let all = 0..ra.draws();
        assert_eq!(
            ra.configs(chain, all.clone()).unwrap(),
            rb.configs(chain, all).unwrap()
        );
    }
}

/// `mcmc` on 2 ranks (2 of the 4 chains each) collates to the single-process file bitwise.
#[test]
fn distributed_mcmc_collates_to_the_single_process_ensemble() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), FLOW);
    let one = dir.path().join("one.h5");
    let two = dir.path().join("two.h5");
    ok(single(&["mcmc", s(&config), "--out", s(&one)]));
    ok(mpirun(2, &["mcmc", s(&config), "--out", s(&two)]));
    assert_same_ensemble(&one, &two);
    assert_eq!(
        EnsembleReader::open(&dir.path().join("two.rank1.h5"))
            .unwrap()
            .chains(),
        2
    );
    // Fewer chains than ranks: one clear line (from each rank).
    let mut cmd = mpirun(
        2,
        &["mcmc", s(&config), "--out", s(&dir.path().join("x.h5"))],
    );
    cmd.args(["--set", "mcmc.chains=1"]);
    let out = cmd.output().unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("mcmc.chains = 1 is fewer than the 2 ranks")
    );
    // Samples that do not split evenly over the ranks: refused before anything is read.
    let mut cmd = mpirun(
        2,
        &[
            "sample",
            s(&config),
            "--model",
            "none.json",
            "--out",
            s(&dir.path().join("y.h5")),
        ],
    );
    cmd.args(["--set", "sample.samples=6001"]);
    let out = cmd.output().unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not split evenly over 2 ranks"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The pids of the ranks of a job whose command line names `needle`, by rank.
fn rank_pids(needle: &str) -> Vec<(usize, u32)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline);
        if !cmdline.starts_with(BIN) || !cmdline.contains(needle) {
            continue;
        }
        let environ = std::fs::read(entry.path().join("environ")).unwrap_or_default();
        let rank = String::from_utf8_lossy(&environ)
            .split('\0')
            .find_map(|v| v.strip_prefix("OMPI_COMM_WORLD_RANK=")?.parse().ok());
        if let Some(rank) = rank {
            found.push((rank, pid));
        }
    }
    found
}

/// Rank 1 of a 2-rank `mcmc` killed with SIGKILL mid-run: the job ends with an error, both
/// rank files open and hold committed draws, and `--resume` on 2 ranks completes the run
/// into the ensemble an uninterrupted single process writes, bitwise.
#[test]
fn a_killed_rank_leaves_readable_files_that_resume_completes() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &FLOW
            .replace("draws = 3000", "draws = 20000\nsteps_per_draw = 200")
            .replace("block = 100", "block = 500"),
    );
    let out = dir.path().join("killed.h5");
    let rank1 = dir.path().join("killed.rank1.h5");
    let job = mpirun(2, &["mcmc", s(&config), "--out", s(&out)])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until rank 1 has committed a few blocks, then kill it.
    let start = Instant::now();
    loop {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "rank 1 never committed"
        );
        std::thread::sleep(Duration::from_millis(10));
        let draws = EnsembleReader::open(&rank1).map(|r| r.draws()).unwrap_or(0);
        if draws >= 1000 {
            break;
        }
    }
    let pids = rank_pids(s(&out));
    let (_, pid) = *pids
        .iter()
        .find(|(r, _)| *r == 1)
        .expect("rank 1 is running");
    Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    let ended = job.wait_with_output().unwrap();
    assert!(
        !ended.status.success(),
        "the job must fail when a rank dies"
    );
    assert!(!out.exists(), "no collated file from a failed run");
    for r in 0..2 {
        let reader = EnsembleReader::open(&dir.path().join(format!("killed.rank{r}.h5")))
            .expect("a killed run's rank file stays readable");
        assert!(reader.draws() < 20000, "rank {r} finished before the kill");
    }

    ok(mpirun(
        2,
        &["mcmc", s(&config), "--out", s(&out), "--resume"],
    ));
    let reference = dir.path().join("reference.h5");
    ok(single(&["mcmc", s(&config), "--out", s(&reference)]));
    assert_same_ensemble(&reference, &out);
}
