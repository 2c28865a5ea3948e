//! Run with `cargo bench -p boltzflow-benches --bench flow` (quick: append
//! `-- --warm-up-time 1 --measurement-time 5`; one core: `RAYON_NUM_THREADS=1`). Measures the
//! tutorial affine coupling flow (16 layers, conv net [8, 8], 3x3 kernels; phi^4 at L = 8,
//! m2 = -4, lam = 8) at batch 64: reverse-KL training steps (forward with saved activations,
//! action and force, backward, Adam; throughput in steps) and sampling with log q (throughput
//! in samples). Alongside: the spline model of `configs/flow_phi4_L8_spline.toml` (8 layers,
//! K = 4, fewer parameters than the affine model) on the native kernels, and both models on
//! the burn engine (ndarray backend, autodiff). And the gauge-equivariant U(1) flows of
//! `configs/flow_u1_L8_b2.toml` (16 layers, conv net [8, 8] on (cos P, sin P); NCP mixtures of
//! 2 as in the tutorial, or circular splines with 8 bins) at beta = 2 on L = 8 and 16:
//! reverse-KL gradients at batch 64 and sampling with log q.

use std::hint::black_box;

use boltzflow_burn::{BurnModel, CpuBackend, FlowConfig, Transform};
use boltzflow_flow::flow::NativeCoupling;
use boltzflow_flow::{
    AdamConfig, AffineFlow, AffineFlowConfig, CircleMap, FlowModel, GaugeFlow, GaugeFlowConfig,
    Trainer,
};
use boltzflow_targets::TargetSpec;
use boltzflow_targets::phi4::{Phi4, Phi4Spec};
use boltzflow_targets::u1::{U1, U1Spec};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rand::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;

const BATCH: usize = 64;

fn spec() -> Phi4Spec {
    Phi4Spec {
        shape: vec![8, 8],
        m2: Some(-4.0),
        lam: Some(8.0),
        kappa: None,
        lam_h: None,
    }
}

fn target() -> Phi4 {
    Phi4::new(&spec()).expect("valid phi^4 spec")
}

/// The tutorial model (affine) or the spline model of the comparison, on burn's CPU backend.
fn burn_model(transform: Transform, layers: usize) -> BurnModel<CpuBackend> {
    let config = FlowConfig::lattice([8, 8], layers, transform, 1);
    BurnModel::new(&config, &TargetSpec::Phi4(spec()), &Default::default()).expect("burn flow")
}

fn burn_engine(c: &mut Criterion) {
    let target = target();
    let mut g = c.benchmark_group("flow_burn");
    for (name, transform, layers) in [
        ("affine16", Transform::Affine, 16),
        (
            "spline8_k4",
            Transform::Spline {
                bins: 4,
                bound: 5.0,
            },
            8,
        ),
    ] {
        let mut model = burn_model(transform, layers);
        let mut grad = vec![0f32; model.params().len()];
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(2);
        g.throughput(Throughput::Elements(1));
        g.bench_function(format!("reverse_kl_gradient_{name}_L8_b64"), |b| {
            b.iter(|| {
                black_box(
                    model
                        .reverse_kl_gradient(&target, BATCH, &mut rng, &mut grad)
                        .expect("gradient"),
                )
            })
        });
        g.throughput(Throughput::Elements(1024));
        g.bench_function(format!("sample_with_log_q_{name}_L8_b1024"), |b| {
            b.iter(|| black_box(model.sample(1024, &mut rng)))
        });
    }
    g.finish();
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

/// The spline model of configs/flow_phi4_L8_spline.toml on the native kernels.
fn native_spline(c: &mut Criterion) {
    let target = target();
    let config = AffineFlowConfig {
        layers: 8,
        coupling: NativeCoupling::Spline {
            bins: 4,
            bound: 5.0,
        },
        ..AffineFlowConfig::tutorial([8, 8], 1)
    };
    let flow = AffineFlow::<f32>::new(&config).expect("flow");
    let mut trainer = Trainer::new(flow.clone(), AdamConfig::default()).expect("trainer");
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(2);
    let mut g = c.benchmark_group("flow_native_spline");
    g.throughput(Throughput::Elements(1));
    g.bench_function("reverse_kl_step_spline8_k4_L8_b64", |b| {
        b.iter(|| {
            black_box(
                trainer
                    .reverse_kl_step(&target, BATCH, &mut rng)
                    .expect("step"),
            )
        })
    });
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function("sample_with_log_q_spline8_k4_L8_b64", |b| {
        b.iter(|| black_box(flow.sample(BATCH, &mut rng)))
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

/// The tutorial model with Z2-equivariant layers (the conditioner runs on m and -m), and the
/// extra cost of sampling the Z2 mixture [q(x) + q(-x)] / 2: log q of the mirrored draws.
fn native_z2(c: &mut Criterion) {
    let target = target();
    let config = AffineFlowConfig {
        z2: true,
        ..AffineFlowConfig::tutorial([8, 8], 1)
    };
    let flow = AffineFlow::<f32>::new(&config).expect("flow");
    let mut trainer = Trainer::new(flow, AdamConfig::default()).expect("trainer");
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(2);
    let mut g = c.benchmark_group("flow_native_z2");
    g.throughput(Throughput::Elements(1));
    g.bench_function("reverse_kl_step_z2_L8_b64", |b| {
        b.iter(|| {
            black_box(
                trainer
                    .reverse_kl_step(&target, BATCH, &mut rng)
                    .expect("step"),
            )
        })
    });
    let plain = AffineFlow::<f32>::new(&AffineFlowConfig::tutorial([8, 8], 1)).expect("flow");
    let (x, _) = plain.sample(BATCH, &mut rng);
    let minus: Vec<f32> = x.iter().map(|v| -v).collect();
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function("log_q_of_mirrored_draws_L8_b64", |b| {
        b.iter(|| black_box(plain.log_prob(&minus).expect("log q")))
    });
    g.finish();
}

/// The gauge-equivariant U(1) flows (NCP and circular spline) at beta = 2.
fn gauge(c: &mut Criterion) {
    let mut g = c.benchmark_group("flow_gauge");
    for (name, circle, l) in [
        ("ncp2", CircleMap::Ncp { mix: 2 }, 8),
        ("spline8", CircleMap::Spline { bins: 8 }, 8),
        ("spline8", CircleMap::Spline { bins: 8 }, 16),
    ] {
        let target = U1::new(&U1Spec {
            shape: vec![l as i64, l as i64],
            beta: 2.0,
        })
        .expect("valid U(1) spec");
        let config = GaugeFlowConfig {
            circle,
            ..GaugeFlowConfig::tutorial([l, l], 1)
        };
        let mut flow = GaugeFlow::<f32>::new(&config).expect("gauge flow");
        let mut grad = vec![0f32; flow.params().len()];
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(2);
        g.throughput(Throughput::Elements(1));
        g.bench_function(format!("reverse_kl_gradient_{name}_L{l}_b64"), |b| {
            b.iter(|| {
                black_box(
                    FlowModel::reverse_kl_gradient(&mut flow, &target, BATCH, &mut rng, &mut grad)
                        .expect("gradient"),
                )
            })
        });
        g.throughput(Throughput::Elements(BATCH as u64));
        g.bench_function(format!("sample_with_log_q_{name}_L{l}_b64"), |b| {
            b.iter(|| black_box(FlowModel::sample(&flow, BATCH, &mut rng)))
        });
    }
    g.finish();
}

criterion_group!(
    benches,
    gauge,
    training,
    sampling,
    native_spline,
    native_z2,
    burn_engine
);
criterion_main!(benches);
