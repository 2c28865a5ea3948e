//! End-to-end tests of `boltzflow train` and `boltzflow sample` on tiny flows (L = 4, a few
//! layers, a few hundred steps): the files they write, bitwise resumption, exact free-field
//! values from importance weights and from the independence Metropolis chain, and one-line
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

/// Free field L = 4, m2 = 4: the flow learns it in a few hundred steps.
const FREE_L4: &str = "theory = \"phi4\"\nshape = [4, 4]\nm2 = 4.0\nlam = 0.0\n";

const RECIPE: &str = "[flow]\nlayers = 4\nhidden = [8, 8]\nseed = 1\n\n\
[train]\nsteps = 300\nbatch = 64\nlr = 3e-3\neval_every = 50\neval_batch = 512\n\
checkpoint_every = 100\nseed = 2\n\n\
[sample]\nsamples = 8192\nbatch = 1024\nseed = 3\n";

/// Writes `lattice` and a config naming it into `dir`; returns the config path.
fn write_config(dir: &Path, lattice: &str, recipe: &str) -> PathBuf {
    std::fs::write(dir.join("lattice.toml"), lattice).unwrap();
    let config = dir.join("run.toml");
    std::fs::write(&config, format!("lattice = \"lattice.toml\"\n\n{recipe}")).unwrap();
    config
}

fn train(config: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "train",
        config.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--quiet",
    ];
    args.extend_from_slice(extra);
    run(&args)
}

/// `boltzflow sample CONFIG --model MODEL --out OUT --quiet EXTRA...`.
fn sample_run(config: &Path, model: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "sample",
        config.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--quiet",
    ];
    args.extend_from_slice(extra);
    run(&args)
}

/// Asserts an `analyze --json` estimate `{mean, err, exact}` within 4 errors of its exact value.
fn within(v: &Value, what: &str) {
    let (mean, err, exact) = (
        v["mean"].as_f64().unwrap(),
        v["err"].as_f64().unwrap(),
        v["exact"].as_f64().unwrap(),
    );
    assert!(err > 0.0, "{what}: err {err}");
    assert!(
        (mean - exact).abs() < 4.0 * err,
        "{what}: {mean} +- {err} vs exact {exact}"
    );
}

fn analyze(file: &Path) -> Value {
    let out = run(&["analyze", file.to_str().unwrap(), "--json"]);
    assert_success(&out);
    serde_json::from_slice(&out.stdout).expect("analyze --json prints JSON")
}

fn model(dir: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("model.json")).unwrap()).unwrap()
}

/// `train` writes model.json (format tag, flow config, parameters, Adam state, step, RNG) and
/// train.h5 with one draw per evaluation; `analyze` reports the final evaluation.
#[test]
fn train_writes_model_and_training_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), FREE_L4, RECIPE);
    let out = dir.path().join("flow");
    assert_success(&train(&config, &out, &["--set", "train.steps=120"]));
    let m = model(&out);
    assert_eq!(m["format"], "boltzflow-model");
    assert_eq!(m["step"], 120);
    assert_eq!(m["flow"]["native"]["shape"], serde_json::json!([4, 4]));
    assert_eq!(m["flow"]["native"]["layers"], 4);
    let n = m["params"].as_array().unwrap().len();
    assert!(n > 0);
    assert_eq!(m["adam"]["m"].as_array().unwrap().len(), n);
    assert_eq!(m["adam"]["t"], 120);

    let report = analyze(&out.join("train.h5"));
    assert_eq!(report["kind"], "train");
    // evaluations at steps 50, 100 and the final one at 120
    assert_eq!(report["draws"], 3);
    let t = &report["training"];
    assert_eq!(t["steps"], 120.0);
    for key in ["ess", "acceptance"] {
        let v = t[key].as_f64().unwrap();
        assert!(v > 0.0 && v <= 1.0, "{key} = {v}");
    }
    assert!(t["loss"].as_f64().unwrap().is_finite());
    assert!(t["steps_per_s"].as_f64().unwrap() > 0.0);
    assert_eq!(
        report["series"]["step"],
        serde_json::json!([50.0, 100.0, 120.0])
    );
    assert!(!report["series"]["lr"].as_array().unwrap().is_empty());

    // A second train on the same directory is refused without --force or --resume.
    assert_one_line_error(&train(&config, &out, &[]), &["already exists", "--resume"]);

    // train.init starts another run, here on a 6x6 lattice, from these parameters (a fresh
    // Adam; its first checkpoint, written before step 1, holds them); a model of other [flow]
    // settings is refused with one line.
    let model_path = out.join("model.json");
    let init = format!("train.init=\"{}\"", model_path.display());
    let larger = tempfile::tempdir().unwrap();
    let larger_config = write_config(larger.path(), &FREE_L4.replace("[4, 4]", "[6, 6]"), RECIPE);
    let started = larger.path().join("flow");
    assert_success(&train(
        &larger_config,
        &started,
        &["--set", &init, "--set", "train.steps=1"],
    ));
    let s = model(&started);
    assert_eq!(s["flow"]["native"]["shape"], serde_json::json!([6, 6]));
    assert_eq!(s["adam"]["t"], 1);
    // One Adam step moves each parameter by at most lr (1 + eps): the run started from the
    // stored parameters, not from a fresh initialisation.
    let (a, b) = (
        s["params"].as_array().unwrap(),
        m["params"].as_array().unwrap(),
    );
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
        assert!((x - y).abs() <= 3.1e-3, "{x} vs {y}");
    }
    assert_one_line_error(
        &train(
            &larger_config,
            &larger.path().join("other"),
            &["--set", &init, "--set", "flow.layers=2"],
        ),
        &["train.init", "same [flow] settings"],
    );
}

/// A run trained to K steps and resumed to 2K ends with exactly the parameters, Adam state and
/// RNG of an uninterrupted 2K-step run; so does a resume whose model.json lags behind the
/// checkpoint in train.h5 (a run killed between an evaluation and the next model write).
#[test]
fn resumed_training_equals_uninterrupted_training_bitwise() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), FREE_L4, RECIPE);
    let short = [
        "--set",
        "train.eval_every=20",
        "--set",
        "train.checkpoint_every=40",
    ];
    let with = |steps: &'static str| {
        let mut v = short.to_vec();
        v.extend(["--set", steps]);
        v
    };

    let whole = dir.path().join("whole");
    assert_success(&train(&config, &whole, &with("train.steps=120")));

    let parts = dir.path().join("parts");
    assert_success(&train(&config, &parts, &with("train.steps=60")));
    let mut resume = with("train.steps=120");
    resume.push("--resume");
    assert_success(&train(&config, &parts, &resume));

    // model.json from step 40 with train.h5 at step 60: resume picks the later state.
    let lagging = dir.path().join("lagging");
    assert_success(&train(&config, &lagging, &with("train.steps=40")));
    let at_40 = std::fs::read(lagging.join("model.json")).unwrap();
    let mut to_60 = with("train.steps=60");
    to_60.push("--resume");
    assert_success(&train(&config, &lagging, &to_60));
    std::fs::write(lagging.join("model.json"), at_40).unwrap();
    assert_success(&train(&config, &lagging, &resume));

    let reference = model(&whole);
    assert_eq!(reference["step"], 120);
    for dir in [&parts, &lagging] {
        let m = model(dir);
        for key in ["params", "adam", "rng", "step"] {
            assert_eq!(m[key], reference[key], "{key} differs in {}", dir.display());
        }
        let steps = &analyze(&dir.join("train.h5"))["series"]["step"];
        let expected: Vec<f64> = (1..=6).map(|k| 20.0 * k as f64).collect();
        assert_eq!(*steps, serde_json::json!(expected), "{}", dir.display());
    }
}

/// On the free field the trained flow's importance weights reproduce the exact g_0, chi2 and
/// ln Z within 4 sigma (binned jackknife), and the independence Metropolis chain reproduces
/// g_0 and chi2 within 4 sigma (Gamma method). Sampling resumed halfway gives the same file
/// contents as an uninterrupted run.
#[test]
fn sampled_free_field_matches_exact_values() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), FREE_L4, RECIPE);
    let flow = dir.path().join("flow");
    assert_success(&train(&config, &flow, &[]));
    let model_path = flow.join("model.json");
    let sample = |out: &Path, extra: &[&str]| sample_run(&config, &model_path, out, extra);
    let out = dir.path().join("samples.h5");
    assert_success(&sample(&out, &[]));
    let r = analyze(&out);
    assert_eq!(r["kind"], "sample");
    assert_eq!(r["draws"], 8192);
    let ess = r["ess"].as_f64().unwrap();
    assert!(ess > 0.3 && ess <= 1.0, "ESS/N {ess}");
    within(&r["ln_z"], "ln_z");
    for name in ["g_0", "chi2"] {
        within(&r["reweighted"][name], &format!("reweighted {name}"));
        within(&r["observables"][name], &format!("MH {name}"));
    }
    let acceptance = r["mh"]["acceptance"].as_f64().unwrap();
    assert!(acceptance > 0.0 && acceptance < 1.0, "{acceptance}");
    assert!(r["mh"]["longest_rejection_run"].as_u64().unwrap() >= 1);

    // The Z2-symmetrised proposal q_s(x) = [q(x) + q(-x)] / 2: unbiased, and its ESS is
    // never below the flow's in expectation (1/q is convex and p is even).
    let sym = dir.path().join("z2.h5");
    assert_success(&sample(
        &sym,
        &[
            "--set",
            "sample.z2_mixture=true",
            "--set",
            "sample.store_configs=false",
        ],
    ));
    let z = analyze(&sym);
    within(&z["ln_z"], "Z2 mixture ln_z");
    for name in ["g_0", "chi2"] {
        within(
            &z["reweighted"][name],
            &format!("Z2 mixture reweighted {name}"),
        );
        within(&z["observables"][name], &format!("Z2 mixture MH {name}"));
    }
    let ess_sym = z["ess"].as_f64().unwrap();
    assert!(ess_sym > 0.9 * ess, "Z2 mixture ESS/N {ess_sym} vs {ess}");

    let half = dir.path().join("half.h5");
    assert_success(&sample(
        &half,
        &[
            "--set",
            "sample.samples=4096",
            "--set",
            "sample.store_configs=false",
        ],
    ));
    assert_success(&sample(
        &half,
        &["--set", "sample.store_configs=false", "--resume"],
    ));
    let h = analyze(&half);
    for key in ["ln_z", "ess", "mh", "reweighted", "observables"] {
        assert_eq!(h[key], r[key], "{key} differs after resuming");
    }

    // Flow proposals interleaved with local Metropolis sweeps: the chain's observables are
    // stored and agree with the exact values; resuming mid-run gives the same chain bitwise.
    let mixed = dir.path().join("mixed.h5");
    let local = [
        "--set",
        "sample.local=\"metropolis\"",
        "--set",
        "sample.store_configs=false",
    ];
    assert_success(&sample(&mixed, &local));
    let m = analyze(&mixed);
    for name in ["g_0", "chi2"] {
        within(
            &m["observables"][name],
            &format!("flow-MH + Metropolis {name}"),
        );
    }
    let tau_mixed = m["observables"]["chi2"]["tau_int"].as_f64().unwrap();
    let tau_flow = r["observables"]["chi2"]["tau_int"].as_f64().unwrap();
    assert!(tau_mixed.is_finite() && tau_flow.is_finite());
    let part = dir.path().join("mixed_part.h5");
    let mut first = local.to_vec();
    first.extend(["--set", "sample.samples=3072"]);
    assert_success(&sample(&part, &first));
    let mut rest = local.to_vec();
    rest.push("--resume");
    assert_success(&sample(&part, &rest));
    assert_eq!(
        analyze(&part)["observables"],
        m["observables"],
        "interleaved chain differs after resuming"
    );
}

/// The gauge-equivariant U(1) flow end to end on a 4x4 torus at beta = 1, with both circle
/// maps: the model file records the gauge architecture; reweighted and flow-MH estimates of
/// the plaquette, Q^2 and ln Z agree with the exact torus values within 4 sigma.
#[test]
fn gauge_flow_samples_u1_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "theory = \"u1\"\nshape = [4, 4]\nbeta = 1.0\n",
        "[flow]\ncoupling = \"circular_spline\"\nbins = 4\nlayers = 8\nhidden = [8]\nseed = 1\n\n\
[train]\nsteps = 200\nbatch = 64\nlr = 5e-3\neval_every = 100\neval_batch = 512\n\
checkpoint_every = 100\nseed = 2\n\n\
[sample]\nsamples = 8192\nbatch = 1024\nseed = 3\nstore_configs = false\n",
    );
    for (name, extra) in [
        ("spline", &[][..]),
        (
            "ncp",
            &["--set", "flow.coupling=\"ncp\"", "--set", "flow.mix=3"][..],
        ),
    ] {
        let flow = dir.path().join(name);
        assert_success(&train(&config, &flow, extra));
        let m = model(&flow);
        assert_eq!(
            m["flow"]["gauge"]["shape"],
            serde_json::json!([4, 4]),
            "{name}"
        );
        let circle = &m["flow"]["gauge"]["circle"]["type"];
        assert_eq!(circle, if name == "ncp" { "ncp" } else { "spline" });
        let out = dir.path().join(format!("{name}.h5"));
        let model_path = flow.join("model.json");
        assert_success(&sample_run(&config, &model_path, &out, &[]));
        let r = analyze(&out);
        within(&r["ln_z"], &format!("{name} ln_z"));
        for obs in ["plaquette", "q2"] {
            within(&r["reweighted"][obs], &format!("{name} reweighted {obs}"));
            within(&r["observables"][obs], &format!("{name} MH {obs}"));
        }
        let acceptance = r["mh"]["acceptance"].as_f64().unwrap();
        assert!(acceptance > 0.3, "{name}: MH acceptance {acceptance}");
    }
}

/// Forward KL (maximum likelihood on an HMC ensemble of the free field, burn engine) learns
/// the target: ESS/N of fresh samples well above that of the untrained flow; the mix of both
/// objectives trains too, and the model file records the burn architecture.
#[test]
fn forward_kl_training_learns_from_an_mcmc_ensemble() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), FREE_L4, RECIPE);
    let ensemble = dir.path().join("hmc.h5");
    std::fs::write(
        dir.path().join("mcmc.toml"),
        "lattice = \"lattice.toml\"\n[mcmc]\nsampler = \"hmc\"\nchains = 2\nseed = 5\nthermalization = 100\ndraws = 2000\n",
    )
    .unwrap();
    assert_success(&run(&[
        "mcmc",
        dir.path().join("mcmc.toml").to_str().unwrap(),
        "--out",
        ensemble.to_str().unwrap(),
        "--quiet",
    ]));
    let ensemble_set = format!("train.ensemble=\"{}\"", ensemble.display());
    let untrained = dir.path().join("untrained");
    assert_success(&train(&config, &untrained, &["--set", "train.steps=1"]));
    let ess0 = analyze(&untrained.join("train.h5"))["training"]["ess"]
        .as_f64()
        .unwrap();
    for (objective, steps) in [("forward", 300), ("mix", 60)] {
        let out = dir.path().join(objective);
        let steps = format!("train.steps={steps}");
        let objective_set = format!("train.objective=\"{objective}\"");
        assert_success(&train(
            &config,
            &out,
            &[
                "--set",
                &objective_set,
                "--set",
                &ensemble_set,
                "--set",
                &steps,
            ],
        ));
        let m = model(&out);
        assert_eq!(m["flow"]["burn"]["transform"]["type"], "affine");
        let ess = analyze(&out.join("train.h5"))["training"]["ess"]
            .as_f64()
            .unwrap();
        if objective == "forward" {
            assert!(
                ess > 0.8 && ess > ess0 + 0.2,
                "forward KL: ESS/N {ess} (untrained {ess0})"
            );
        } else {
            assert!(ess.is_finite() && ess > 0.0, "mix: ESS/N {ess}");
        }
    }
}

/// Bad input: one clear line, nothing written.
#[test]
fn bad_flow_input_gives_one_line_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), FREE_L4, RECIPE);
    let flow = dir.path().join("flow");
    assert_success(&train(&config, &flow, &["--set", "train.steps=20"]));
    let model_path = flow.join("model.json");
    let out = dir.path().join("out.h5");
    let sample = |config: &Path, model: &Path| {
        run(&[
            "sample",
            config.to_str().unwrap(),
            "--model",
            model.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--quiet",
        ])
    };

    // A model of another lattice size.
    let other = tempfile::tempdir().unwrap();
    let l6 = write_config(other.path(), &FREE_L4.replace("[4, 4]", "[6, 6]"), RECIPE);
    assert_one_line_error(&sample(&l6, &model_path), &["model", "[4,4]", "[6,6]"]);
    assert!(!out.exists());

    // A truncated model file.
    let text = std::fs::read_to_string(&model_path).unwrap();
    let truncated = dir.path().join("truncated.json");
    std::fs::write(&truncated, &text[..text.len() / 2]).unwrap();
    assert_one_line_error(&sample(&config, &truncated), &["truncated.json", "model"]);
    assert!(!out.exists());

    // A conv conditioner on a configuration space that is not a 2D lattice, a coupling that
    // does not map angles on U(1) links, and out-of-range settings.
    const U1_L4: &str = "theory = \"u1\"\nshape = [4, 4]\nbeta = 1.0\n";
    for (lattice, needles) in [
        (
            "theory = \"phi4\"\nshape = [16]\nm2 = 4.0\nlam = 0.0\n",
            &["conv conditioners need a 2D lattice", "mlp"][..],
        ),
        (
            U1_L4,
            &["flow.coupling = \"affine\"", "ncp", "circular_spline"][..],
        ),
    ] {
        let d = tempfile::tempdir().unwrap();
        let c = write_config(d.path(), lattice, RECIPE);
        let out = d.path().join("flow");
        assert_one_line_error(&train(&c, &out, &[]), needles);
        assert!(!out.exists());
    }
    let u1 = tempfile::tempdir().unwrap();
    let u1_config = write_config(u1.path(), U1_L4, RECIPE);
    let u1_out = u1.path().join("flow");
    // Gauge-equivariant flows: settings they cannot honour, lattices their stripes do not
    // tile, beta <= 0, and the NCP map on a target without angles.
    for (set, needle) in [
        ("flow.mix=0", "flow.mix"),
        ("flow.conditioner=\"mlp\"", "flow.conditioner"),
        ("flow.z2=true", "flow.z2"),
        (
            "train.objective=\"forward\" train.ensemble=\"x.h5\"",
            "train.objective",
        ),
    ] {
        let mut args = vec!["--set", "flow.coupling=\"ncp\""];
        args.extend(set.split(' ').flat_map(|s| ["--set", s]));
        assert_one_line_error(&train(&u1_config, &u1_out, &args), &[needle]);
        assert!(!u1_out.exists(), "{set}");
    }
    for (lattice, needle) in [
        ("shape = [6, 6]\nbeta = 1.0", "divisible by 4"),
        ("shape = [7, 8]\nbeta = 1.0", "divisible by 4"),
        ("shape = [8, 8]\nbeta = 0.0", "beta"),
    ] {
        let config = write_config(u1.path(), &format!("theory = \"u1\"\n{lattice}\n"), RECIPE);
        let out = &train(
            &config,
            &u1_out,
            &["--set", "flow.coupling=\"circular_spline\""],
        );
        assert_one_line_error(out, &[needle]);
        assert!(!u1_out.exists(), "{lattice}");
    }
    assert_one_line_error(
        &train(&config, &u1_out, &["--set", "flow.coupling=\"ncp\""]),
        &["ncp", "U(1)"],
    );
    for (set, key) in [
        ("train.batch=0", "train.batch"),
        ("train.lr=-1.0", "train.lr"),
        ("flow.kernel=2", "flow.kernel"),
        ("train.schedule=\"step\"", "train.step_every"),
        ("train.bogus=1", "bogus"),
        ("flow.coupling=\"quadratic\"", "quadratic"),
        ("flow.coupling=\"spline\" flow.bins=1", "flow.bins"),
        ("flow.coupling=\"spline\" flow.bound=0.0", "flow.bound"),
        ("flow.device=\"cuda\" flow.engine=\"burn\"", "cuda"),
        (
            "flow.engine=\"native\" flow.mask=\"alternating\"",
            "flow.engine",
        ),
        ("train.objective=\"forward\"", "train.ensemble"),
        (
            "train.objective=\"forward\" train.ensemble=\"missing.h5\"",
            "missing.h5",
        ),
    ] {
        let set: Vec<&str> = set.split(' ').flat_map(|s| ["--set", s]).collect();
        let bad = dir.path().join("bad");
        assert_one_line_error(&train(&config, &bad, &set), &[key]);
        assert!(!bad.exists(), "--set {set:?} wrote {}", bad.display());
    }

    // A forward-KL ensemble of another lattice.
    let l6_ensemble = other.path().join("l6.h5");
    std::fs::write(
        other.path().join("mcmc.toml"),
        "lattice = \"lattice.toml\"\n[mcmc]\nsampler = \"hmc\"\nchains = 1\nseed = 1\nthermalization = 10\ndraws = 20\n",
    )
    .unwrap();
    assert_success(&run(&[
        "mcmc",
        other.path().join("mcmc.toml").to_str().unwrap(),
        "--out",
        l6_ensemble.to_str().unwrap(),
        "--quiet",
    ]));
    let bad = dir.path().join("bad");
    let ensemble = format!("train.ensemble=\"{}\"", l6_ensemble.display());
    assert_one_line_error(
        &train(
            &config,
            &bad,
            &["--set", "train.objective=\"forward\"", "--set", &ensemble],
        ),
        &["l6.h5", "lattice", "[6,6]", "[4,4]"],
    );
    assert!(!bad.exists());
}

/// Every shipped flow config runs as written but for its length: configs with [train] train
/// for 2 steps; configs with [sample] draw 64 samples from the model of a config on the same
/// lattice.
#[test]
fn shipped_flow_configs_run() {
    let configs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
    let dir = tempfile::tempdir().unwrap();
    let mut models: Vec<(String, PathBuf)> = Vec::new();
    let mut samplers: Vec<(String, PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(&configs).unwrap() {
        let path = entry.unwrap().path();
        let table: toml::Table = toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let lattice = table["lattice"].as_str().unwrap().to_string();
        if table.contains_key("train") {
            let out = dir.path().join(path.file_stem().unwrap());
            let mut sets = vec!["--set", "train.steps=2", "--set", "train.eval_batch=64"];
            if table.contains_key("mcmc") {
                // train.generate_ensemble runs the [mcmc] section first: keep it short
                sets.extend(["--set", "mcmc.draws=20", "--set", "mcmc.thermalization=20"]);
            }
            let result = train(&path, &out, &sets);
            assert_success(&result);
            models.push((lattice.clone(), out.join("model.json")));
        }
        if table.contains_key("sample") {
            samplers.push((lattice, path));
        }
    }
    assert!(!models.is_empty() && !samplers.is_empty());
    for (lattice, path) in &samplers {
        let model = &models
            .iter()
            .find(|(l, _)| l == lattice)
            .unwrap_or_else(|| panic!("no flow config trains on {lattice}"))
            .1;
        let out = dir.path().join("samples.h5");
        let result = run(&[
            "sample",
            path.to_str().unwrap(),
            "--model",
            model.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--force",
            "--quiet",
            "--set",
            "sample.samples=64",
            "--set",
            "sample.batch=32",
        ]);
        assert_success(&result);
    }
}
