//! Every sampler against exact results, in units of the Gamma-method error (|x - exact| < 4 sigma).
//!
//! Chains are built with `build_sampler` from a config, thermalised (adapting), then measured
//! with the target's own observables on every draw; errors come from Wolff's Gamma method over
//! the chains (S = 2), so they include the autocorrelation.

use std::collections::BTreeMap;
use std::sync::Arc;

use boltzflow_mcmc::heatbath::HeatbathConfig;
use boltzflow_mcmc::hmc::HmcConfig;
use boltzflow_mcmc::local::MetropolisConfig;
use boltzflow_mcmc::wolff::WolffConfig;
use boltzflow_mcmc::{McmcConfig, SamplerKind, build_sampler, chain_rng};
use boltzflow_stats::{gamma_method, gamma_method_derived};
use boltzflow_targets::{Target, TargetSpec};

/// Measured series: observable name -> one series per chain. `step_action` is the action
/// reported by the sampler's `StepStats`.
type Series = BTreeMap<String, Vec<Vec<f64>>>;

fn config(
    sampler: SamplerKind,
    seed: u64,
    chains: usize,
    thermalization: usize,
    draws: usize,
) -> McmcConfig {
    McmcConfig {
        sampler,
        chains,
        seed,
        thermalization,
        draws,
        steps_per_draw: 1,
        block: 100,
        store_configs: false,
        start: Vec::new(),
        hmc: HmcConfig::default(),
        metropolis: MetropolisConfig::default(),
        wolff: WolffConfig::default(),
        heatbath: HeatbathConfig::default(),
    }
}

fn spec(toml: &str) -> TargetSpec {
    boltzflow_targets::LatticeFile::parse(toml)
        .expect("valid lattice file")
        .target
}

/// Runs `config.chains` chains of the configured sampler on `spec` from the target's start.
fn run(spec: &TargetSpec, config: &McmcConfig) -> (Arc<dyn Target>, Series) {
    let target: Arc<dyn Target> = Arc::from(spec.build().expect("valid target"));
    let observables = target.observables();
    let mut series = Series::new();
    for chain in 0..config.chains {
        let mut sampler = build_sampler(config, spec).expect("sampler applies");
        let mut rng = chain_rng(config.seed, chain as u64);
        let mut x = target.initial();
        for _ in 0..config.thermalization {
            let stats = sampler.step(&mut x, &mut rng);
            sampler.adapt(&stats);
        }
        let mut measured: Vec<Vec<f64>> =
            vec![Vec::with_capacity(config.draws); observables.len() + 1];
        for _ in 0..config.draws {
            let mut stats = Default::default();
            for _ in 0..config.steps_per_draw {
                stats = sampler.step(&mut x, &mut rng);
            }
            for (o, m) in observables.iter().zip(measured.iter_mut()) {
                m.push(o.measure(&x));
            }
            measured[observables.len()].push(stats.action);
        }
        let names = observables
            .iter()
            .map(|o| o.name().to_string())
            .chain(["step_action".to_string()]);
        for (name, m) in names.zip(measured) {
            series.entry(name).or_default().push(m);
        }
    }
    (target, series)
}

/// Mean and error of the series of `name`: Wolff's Gamma method (S = 2) or, where it fails
/// (a strongly anti-correlated series such as the magnetisation under Wolff flips makes
/// C_F(W) negative), the spread of 20 block means per chain.
fn estimate(series: &Series, name: &str) -> (f64, f64, f64) {
    let replicas: Vec<&[f64]> = series[name].iter().map(Vec::as_slice).collect();
    if let Ok(e) = gamma_method(&replicas, 2.0) {
        return (e.mean, e.err, e.tau_int);
    }
    let blocks: Vec<f64> = replicas
        .iter()
        .flat_map(|r| r.chunks_exact(r.len() / 20))
        .map(|b| b.iter().sum::<f64>() / b.len() as f64)
        .collect();
    let n = blocks.len() as f64;
    let mean = blocks.iter().sum::<f64>() / n;
    let var = blocks.iter().map(|b| (b - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, (var / n).sqrt(), f64::NAN)
}

/// Asserts |mean - exact| < 4 sigma for observable `name`; returns the deviation in sigma.
fn check(label: &str, series: &Series, name: &str, exact: f64) -> f64 {
    let (mean, err, tau_int) = estimate(series, name);
    let z = (mean - exact) / err;
    eprintln!(
        "{label} {name}: {mean:.5} ± {err:.5} (tau_int {tau_int:.1}) vs exact {exact:.5}: {z:+.2} sigma"
    );
    assert!(
        err > 0.0 && z.abs() < 4.0,
        "{label} {name}: {mean} ± {err} vs {exact} ({z:.2} sigma)"
    );
    z
}

/// Checks every named observable against the target's exact value.
fn check_exact(label: &str, target: &dyn Target, series: &Series, names: &[&str]) {
    let exact = target.exact();
    for &name in names {
        let value = *exact.get(name).unwrap_or_else(|| panic!("no exact {name}"));
        check(label, series, name, value);
    }
}

const FREE_FIELD: &str = "theory = \"phi4\"\nshape = [8, 8]\nm2 = 1.0\nlam = 0.0\n";

#[test]
fn hmc_reproduces_the_free_field() {
    let spec = spec(FREE_FIELD);
    let mut config = config(SamplerKind::Hmc, 11, 4, 500, 4000);
    config.hmc.step_size = 0.2;
    let (target, series) = run(&spec, &config);
    check_exact("hmc", &*target, &series, &["g_0", "g_1", "chi2", "action"]);
    check("hmc", &series, "step_action", target.exact()["action"]);
}

#[test]
fn metropolis_reproduces_the_free_field() {
    let spec = spec(FREE_FIELD);
    let mut config = config(SamplerKind::Metropolis, 12, 4, 500, 5000);
    config.metropolis = MetropolisConfig {
        step_size: 1.0,
        hits: 2,
    };
    let (target, series) = run(&spec, &config);
    check_exact(
        "metropolis",
        &*target,
        &series,
        &["g_0", "g_1", "chi2", "action"],
    );
    check(
        "metropolis",
        &series,
        "step_action",
        target.exact()["action"],
    );
}

#[test]
fn metropolis_reproduces_the_free_field_in_1d_3d_and_on_odd_lattices() {
    // neighbour tables (1D, 3D) and the sequential sweep (odd extent)
    for (shape, seed) in [("[6]", 21), ("[4, 4, 4]", 22), ("[5, 6]", 23)] {
        let spec = spec(&format!(
            "theory = \"phi4\"\nshape = {shape}\nm2 = 1.0\nlam = 0.0\n"
        ));
        let mut config = config(SamplerKind::Metropolis, seed, 4, 200, 3000);
        config.metropolis = MetropolisConfig {
            step_size: 1.0,
            hits: 2,
        };
        let (target, series) = run(&spec, &config);
        let label = format!("metropolis {shape}");
        check_exact(&label, &*target, &series, &["g_0", "chi2"]);
        check(&label, &series, "step_action", target.exact()["action"]);
    }
}

#[test]
fn wolff_reproduces_the_free_field() {
    let spec = spec(FREE_FIELD);
    let mut config = config(SamplerKind::Wolff, 13, 4, 500, 4000);
    config.metropolis = MetropolisConfig {
        step_size: 1.0,
        hits: 1,
    };
    let (target, series) = run(&spec, &config);
    check_exact(
        "wolff",
        &*target,
        &series,
        &["g_0", "g_1", "chi2", "action"],
    );
    check("wolff", &series, "step_action", target.exact()["action"]);
}

/// <O> on two sites (shape [2], periodic: both neighbours of a site are the other site), where
/// S(a, b) = -4 a b + (2 + m2)(a^2 + b^2) + lam (a^4 + b^4), by a Riemann sum on [-R, R]^2
/// (exponentially accurate for this smooth, quartically decaying integrand).
fn two_site_mean(m2: f64, lam: f64, f: impl Fn(f64, f64) -> f64) -> f64 {
    let (n, r) = (1601, 4.0);
    let h = 2.0 * r / (n - 1) as f64;
    let (mut z, mut num) = (0.0, 0.0);
    for i in 0..n {
        let a = -r + i as f64 * h;
        for j in 0..n {
            let b = -r + j as f64 * h;
            let w =
                (4.0 * a * b - (2.0 + m2) * (a * a + b * b) - lam * (a.powi(4) + b.powi(4))).exp();
            z += w;
            num += w * f(a, b);
        }
    }
    num / z
}

#[test]
fn interacting_two_site_model_matches_quadrature() {
    // a double well with barrier 4.5: Metropolis must tunnel, Wolff flips the signs
    let (m2, lam) = (-3.0, 1.0);
    let spec = spec(&format!(
        "theory = \"phi4\"\nshape = [2]\nm2 = {m2}\nlam = {lam}\n"
    ));
    let g_0 = two_site_mean(m2, lam, |a, b| (a * a + b * b) / 2.0);
    let chi2 = two_site_mean(m2, lam, |a, b| (a + b).powi(2) / 2.0);
    let m4 = two_site_mean(m2, lam, |a, b| (a + b).powi(4) / 4.0);
    for (kind, seed) in [
        (SamplerKind::Metropolis, 31),
        (SamplerKind::Wolff, 32),
        (SamplerKind::Hmc, 33),
    ] {
        let mut config = config(kind, seed, 4, 500, 20000);
        config.metropolis = MetropolisConfig {
            step_size: 1.5,
            hits: 1,
        };
        config.hmc.step_size = 0.1;
        let (_, series) = run(&spec, &config);
        let label = format!("{kind:?} two sites");
        check(&label, &series, "g_0", g_0);
        check(&label, &series, "chi2", chi2);
        check(&label, &series, "m4", m4);
        check(&label, &series, "m", 0.0);
    }
}

const U1_L8: &str = "theory = \"u1\"\nshape = [8, 8]\nbeta = 2.0\n";

#[test]
fn hmc_reproduces_u1() {
    let spec = spec(U1_L8);
    let mut config = config(SamplerKind::Hmc, 41, 4, 300, 3000);
    config.hmc.step_size = 0.15;
    let (target, series) = run(&spec, &config);
    check_exact("hmc u1", &*target, &series, &["plaquette", "q2"]);
}

#[test]
fn heatbath_reproduces_u1() {
    let spec = spec(U1_L8);
    let (target, series) = run(&spec, &config(SamplerKind::Heatbath, 42, 4, 200, 3000));
    check_exact(
        "heatbath u1",
        &*target,
        &series,
        &["plaquette", "q2", "action"],
    );
    check(
        "heatbath u1",
        &series,
        "step_action",
        target.exact()["action"],
    );
}

#[test]
fn link_metropolis_reproduces_u1() {
    let spec = spec(U1_L8);
    let mut config = config(SamplerKind::Metropolis, 43, 4, 200, 3000);
    config.metropolis = MetropolisConfig {
        step_size: 1.5,
        hits: 2,
    };
    let (target, series) = run(&spec, &config);
    check_exact("metropolis u1", &*target, &series, &["plaquette", "q2"]);
    check(
        "metropolis u1",
        &series,
        "step_action",
        target.exact()["action"],
    );
}

#[test]
fn metropolis_reproduces_the_double_well_free_energy() {
    let spec = spec("theory = \"double_well\"\n");
    // steps up to 3.5 jump between the wells (minima at x = -1.77 and 1.69) directly
    // (the indicator decorrelates in ~20 steps: 10 steps per draw keep tau_int ~ 1)
    let mut config = config(SamplerKind::Metropolis, 51, 4, 200, 40000);
    config.steps_per_draw = 10;
    config.metropolis = MetropolisConfig {
        step_size: 3.5,
        hits: 1,
    };
    let (target, series) = run(&spec, &config);
    check_exact("double well", &*target, &series, &["p_a", "p_b"]);
    // delta_f = -ln(p_b / p_a) with the Gamma method's error propagation
    let derived = target.derived();
    let delta_f = derived
        .iter()
        .find(|d| d.name == "delta_f")
        .expect("delta_f is derived");
    let inputs: Vec<Vec<&[f64]>> = delta_f
        .inputs
        .iter()
        .map(|name| series[*name].iter().map(Vec::as_slice).collect())
        .collect();
    let e = gamma_method_derived(&inputs, &|m| (delta_f.f)(m), 2.0).expect("enough data");
    let exact = target.exact()["delta_f"];
    let z = (e.mean - exact) / e.err;
    eprintln!(
        "double well delta_f: {:.4} ± {:.4} vs exact {exact:.4}: {z:+.2} sigma",
        e.mean, e.err
    );
    assert!(z.abs() < 4.0, "delta_f {} ± {} vs {exact}", e.mean, e.err);
}

#[test]
fn metropolis_reproduces_mueller_brown_basins() {
    let spec = spec("theory = \"mueller_brown\"\n");
    let mut config = config(SamplerKind::Metropolis, 52, 4, 500, 50000);
    config.metropolis = MetropolisConfig {
        step_size: 0.7,
        hits: 1,
    };
    let (target, series) = run(&spec, &config);
    check_exact("mueller-brown", &*target, &series, &["p_a", "p_b", "p_c"]);
}

/// The action each local sampler reports (accumulated during the checkerboard sweep for
/// phi^4, including the hopping-form couplings) equals the target's action of the updated
/// configuration.
#[test]
fn local_actions_agree_with_the_targets() {
    use rand::RngExt;
    let mut rng = chain_rng(61, 0);
    let mut cases: Vec<(TargetSpec, SamplerKind)> = Vec::new();
    for shape in [vec![6i64, 4], vec![3, 4, 2], vec![4, 2, 6]] {
        let text = format!("theory = \"phi4\"\nshape = {shape:?}\nkappa = 0.2\nlam_h = 0.9\n");
        cases.push((spec(&text), SamplerKind::Metropolis));
        cases.push((spec(&text), SamplerKind::Wolff));
    }
    cases.push((spec(U1_L8), SamplerKind::Metropolis));
    cases.push((spec(U1_L8), SamplerKind::Heatbath));
    for (spec, kind) in cases {
        let target = spec.build().unwrap();
        let mut sampler = build_sampler(&config(kind, 62, 1, 0, 1), &spec).unwrap();
        let mut x: Vec<f64> = (0..target.dim())
            .map(|_| rng.random::<f64>() * 4.0 - 2.0)
            .collect();
        for _ in 0..3 {
            let a = sampler.step(&mut x, &mut rng).action;
            let b = target.action(&x);
            assert!(
                (a - b).abs() < 1e-12 * b.abs(),
                "{kind:?} {:?}: {a} vs {b}",
                target.shape()
            );
        }
    }
}
