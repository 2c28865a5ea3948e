//! Run with `cargo bench -p boltzflow-benches --bench mcmc` (quick: append
//! `-- --warm-up-time 1 --measurement-time 3`; one core: `RAYON_NUM_THREADS=1`). Measures the
//! MCMC baselines on 2D phi^4 at m2 = -4, lam = 8: checkerboard Metropolis sweeps (throughput
//! in site updates/s) at L = 64 and 256, HMC trajectories (10 leapfrog steps) at L = 8 and 64,
//! and Wolff steps (one cluster + one Metropolis sweep) at L = 64.

use std::hint::black_box;
use std::sync::Arc;

use boltzflow_mcmc::hmc::{Hmc, HmcConfig};
use boltzflow_mcmc::local::{MetropolisConfig, Phi4Metropolis};
use boltzflow_mcmc::wolff::{Wolff, WolffConfig};
use boltzflow_mcmc::{Sampler, chain_rng};
use boltzflow_targets::phi4::{Phi4, Phi4Spec};
use boltzflow_targets::{Target, TargetSpec};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const M2: f64 = -4.0;
const LAM: f64 = 8.0;

fn phi4(l: i64) -> Phi4 {
    Phi4::new(&Phi4Spec {
        shape: vec![l, l],
        m2: Some(M2),
        lam: Some(LAM),
        kappa: None,
        lam_h: None,
    })
    .expect("valid phi^4 spec")
}

fn phi4_target(l: i64) -> Arc<dyn Target> {
    let spec = TargetSpec::Phi4(Phi4Spec {
        shape: vec![l, l],
        m2: Some(M2),
        lam: Some(LAM),
        kappa: None,
        lam_h: None,
    });
    Arc::from(spec.build().expect("valid phi4 target"))
}

/// Runs `sampler` for `thermalization` steps from a cold start and benches one more step.
fn bench_steps(
    c: &mut Criterion,
    group: &str,
    id: &str,
    elements: u64,
    mut sampler: Box<dyn Sampler>,
    dim: usize,
) {
    let mut x = vec![0.5; dim];
    let mut rng = chain_rng(1, 0);
    for _ in 0..20 {
        let stats = sampler.step(&mut x, &mut rng);
        sampler.adapt(&stats);
    }
    let mut g = c.benchmark_group(group);
    g.throughput(Throughput::Elements(elements));
    g.bench_function(id, |b| b.iter(|| black_box(sampler.step(&mut x, &mut rng))));
    g.finish();
}

fn metropolis(c: &mut Criterion) {
    for l in [64i64, 256] {
        let v = (l * l) as usize;
        let sampler = Phi4Metropolis::new(
            phi4(l),
            &MetropolisConfig {
                step_size: 1.0,
                hits: 1,
            },
        )
        .expect("valid config");
        bench_steps(
            c,
            "metropolis_site_updates",
            &format!("L{l}"),
            v as u64,
            Box::new(sampler),
            v,
        );
    }
}

fn hmc(c: &mut Criterion) {
    for l in [8i64, 64] {
        let config = HmcConfig {
            step_size: 0.05,
            n_steps: 10,
            ..HmcConfig::default()
        };
        let sampler = Hmc::new(phi4_target(l), &config).expect("valid config");
        bench_steps(
            c,
            "hmc_trajectories",
            &format!("L{l}"),
            1,
            Box::new(sampler),
            (l * l) as usize,
        );
    }
}

fn wolff(c: &mut Criterion) {
    let l = 64i64;
    let sampler = Wolff::new(
        phi4(l),
        &WolffConfig::default(),
        &MetropolisConfig {
            step_size: 1.0,
            hits: 1,
        },
    )
    .expect("valid config");
    bench_steps(
        c,
        "wolff_updates",
        &format!("L{l}"),
        1,
        Box::new(sampler),
        (l * l) as usize,
    );
}

criterion_group!(benches, metropolis, hmc, wolff);
criterion_main!(benches);
