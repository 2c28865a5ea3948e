//! Run with `cargo bench -p boltzflow-benches --bench flow` (quick: append
//! `-- --warm-up-time 1 --measurement-time 5`; one core: `RAYON_NUM_THREADS=1`). Measures the
//! tutorial affine coupling flow (16 layers, conv net [8, 8], 3x3 kernels; phi^4 at L = 8,
//! m2 = -4, lam = 8) at batch 64: reverse-KL training steps (forward with saved activations,
//! action and force, backward, Adam; throughput in steps) and sampling with log q (throughput
//! in samples).

use std::hint::black_box;

use boltzflow_flow::{AdamConfig, AffineFlow, AffineFlowConfig, Trainer};
use boltzflow_targets::phi4::{Phi4, Phi4Spec};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rand::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;

const BATCH: usize = 64;

fn target() -> Phi4 {
    Phi4::new(&Phi4Spec {
        shape: vec![8, 8],
        m2: Some(-4.0),
        lam: Some(8.0),
        kappa: None,
        lam_h: None,
    })
    .expect("valid phi^4 spec")
}

fn training(c: &mut Criterion) {
    let target = target();
    let flow = AffineFlow::<f32>::new(&AffineFlowConfig::tutorial([8, 8], 1)).expect("flow");
    let mut trainer = Trainer::new(flow, AdamConfig::default()).expect("trainer");
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(2);
    let mut g = c.benchmark_group("flow_train");
    g.throughput(Throughput::Elements(1));
    g.bench_function("reverse_kl_step_L8_b64", |b| {
        b.iter(|| {
            black_box(
                trainer
                    .reverse_kl_step(&target, BATCH, &mut rng)
                    .expect("step"),
            )
        })
    });
    g.finish();
}

fn sampling(c: &mut Criterion) {
    let flow = AffineFlow::<f32>::new(&AffineFlowConfig::tutorial([8, 8], 1)).expect("flow");
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(3);
    let mut g = c.benchmark_group("flow_sample");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function("sample_with_log_q_L8_b64", |b| {
        b.iter(|| black_box(flow.sample(BATCH, &mut rng)))
    });
    g.finish();
}

criterion_group!(benches, training, sampling);
criterion_main!(benches);
