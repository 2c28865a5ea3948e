//! One table-driven test over every bijector and over full flows (zuko's
//! `tests/test_transforms.py` pattern): round trip, log-det against a finite-difference
//! Jacobian, forward + inverse log-dets = 0; spline continuity at knots and tails; no NaN for
//! any input; Z2 equivariance; the burn affine flow against the hand-written kernels.

use std::f64::consts::PI;

use burn::backend::NdArray;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use rand::{RngExt, SeedableRng};
use rand_distr::StandardNormal;
use rand_xoshiro::Xoshiro256PlusPlus;

use boltzflow_burn::flow::float_dtype;
use boltzflow_burn::{
    Activation, CentreOfMass, Conditioner, Flow, FlowConfig, Mask, Prior, Transform,
};

type B64 = NdArray<f64>;
type B32 = NdArray<f32>;

/// Every transform of the library, with the range its inputs are drawn from.
fn transforms() -> Vec<(Transform, f64)> {
    vec![
        (Transform::Additive, 3.0),
        (Transform::Affine, 3.0),
        (
            Transform::Spline {
                bins: 8,
                bound: 3.0,
            },
            4.5,
        ),
        (
            Transform::Spline {
                bins: 2,
                bound: 1.0,
            },
            2.0,
        ),
        (Transform::CircularSpline { bins: 6 }, 2.0 * PI),
    ]
}

fn gaussian(n: usize, scale: f64, rng: &mut Xoshiro256PlusPlus) -> Vec<f64> {
    (0..n)
        .map(|_| scale * rng.sample::<f64, _>(StandardNormal))
        .collect()
}

/// Inputs for `transform`: uniform on [-range, range] (or [0, 2 pi) for circles).
fn inputs(transform: Transform, range: f64, n: usize, rng: &mut Xoshiro256PlusPlus) -> Vec<f64> {
    (0..n)
        .map(|_| match transform {
            Transform::CircularSpline { .. } => rng.random::<f64>() * range,
            _ => (2.0 * rng.random::<f64>() - 1.0) * range,
        })
        .collect()
}

fn t2<B: Backend>(v: &[f64], shape: [usize; 2]) -> Tensor<B, 2> {
    Tensor::from_data(
        TensorData::new(v.to_vec(), shape),
        (&Default::default(), float_dtype::<B>()),
    )
}

fn t3<B: Backend>(v: &[f64], shape: [usize; 3]) -> Tensor<B, 3> {
    Tensor::from_data(
        TensorData::new(v.to_vec(), shape),
        (&Default::default(), float_dtype::<B>()),
    )
}

fn values<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f64> {
    t.into_data().convert::<f64>().to_vec().unwrap()
}

/// (y, log-det) of the element-wise transform on backend B.
fn apply<B: Backend>(
    transform: Transform,
    x: &[f64],
    params: &[f64],
    inverse: bool,
) -> (Vec<f64>, Vec<f64>) {
    let n = x.len();
    let p = transform.params_per_variable();
    let (xt, pt) = (t2::<B>(x, [1, n]), t3::<B>(params, [1, n, p]));
    let (y, ld) = if inverse {
        transform.inverse(xt, pt)
    } else {
        transform.forward(xt, pt)
    };
    (values(y), values(ld))
}

#[test]
fn every_bijector_inverts_and_its_log_det_is_the_numerical_one() {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(7);
    let n = 400;
    for (transform, range) in transforms() {
        let p = transform.params_per_variable();
        let params = gaussian(n * p, 1.0, &mut rng);
        let x = inputs(transform, range, n, &mut rng);

        // f64: round trip 1e-10, log-dets cancel, log-det = log|dy/dx| by central differences.
        let (y, ld) = apply::<B64>(transform, &x, &params, false);
        let (back, ld_inv) = apply::<B64>(transform, &y, &params, true);
        let h = 1e-6;
        let xp: Vec<f64> = x.iter().map(|v| v + h).collect();
        let xm: Vec<f64> = x.iter().map(|v| v - h).collect();
        let (yp, _) = apply::<B64>(transform, &xp, &params, false);
        let (ym, _) = apply::<B64>(transform, &xm, &params, false);
        for i in 0..n {
            let name = format!("{transform:?} at x = {}", x[i]);
            assert!(y[i].is_finite() && ld[i].is_finite(), "{name}: not finite");
            assert!(
                (back[i] - x[i]).abs() < 1e-10 * (1.0 + x[i].abs()),
                "{name}: round trip {}",
                back[i]
            );
            assert!(
                (ld[i] + ld_inv[i]).abs() < 1e-9,
                "{name}: log-dets {} + {}",
                ld[i],
                ld_inv[i]
            );
            // Skip the few points within h of a knot or tail boundary, where the one-sided
            // slopes differ at O(h).
            let numerical = ((yp[i] - ym[i]) / (2.0 * h)).abs().ln();
            assert!(
                (numerical - ld[i]).abs() < 1e-5 * (1.0 + ld[i].abs()),
                "{name}: log-det {} vs numerical {numerical}",
                ld[i]
            );
        }

        // f32: round trip 1e-5, relative to the conditioning of the inverse: where the map
        // is flat (dx/dy up to 1/min derivative = 1000) an f32 rounding of y moves x by
        // dx/dy times as much, whatever the implementation.
        let (y32, _) = apply::<B32>(transform, &x, &params, false);
        let (back32, _) = apply::<B32>(transform, &y32, &params, true);
        for i in 0..n {
            let condition = (-ld[i]).exp().max(1.0);
            assert!(
                (back32[i] - x[i]).abs() < 1e-5 * condition * (1.0 + x[i].abs()),
                "{transform:?} f32 round trip at {}: {} (dx/dy {condition})",
                x[i],
                back32[i]
            );
        }
    }
}

#[test]
fn splines_are_continuous_at_knots_and_tails_and_never_nan() {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(11);
    for (transform, bins, lo, hi) in [
        (
            Transform::Spline {
                bins: 8,
                bound: 3.0,
            },
            8,
            -3.0,
            3.0,
        ),
        (Transform::CircularSpline { bins: 8 }, 8, 0.0, 2.0 * PI),
    ] {
        let p = transform.params_per_variable();
        let params = gaussian(p, 1.5, &mut rng);
        // Knots x_k = lo + (hi - lo) cumsum(w): recompute from the same formula.
        let raw = &params[..bins];
        let max = raw.iter().cloned().fold(f64::MIN, f64::max);
        let e: Vec<f64> = raw.iter().map(|r| (r - max).exp()).collect();
        let sum: f64 = e.iter().sum();
        let mut knots = vec![lo];
        let mut c = 0.0;
        for w in &e {
            c += 1e-3 + (1.0 - bins as f64 * 1e-3) * w / sum;
            knots.push(lo + (hi - lo) * c);
        }
        let eps = 1e-9;
        let mut at = Vec::new();
        for &k in &knots[1..bins] {
            at.extend([k - eps, k + eps]);
        }
        let (y, ld) = apply::<B64>(transform, &at, &params.repeat(at.len()), false);
        for j in 0..bins - 1 {
            let (a, b) = (2 * j, 2 * j + 1);
            assert!(
                (y[a] - y[b]).abs() < 1e-7,
                "{transform:?}: value jumps at knot {j}"
            );
            assert!(
                (ld[a] - ld[b]).abs() < 1e-4,
                "{transform:?}: slope jumps at knot {j}: {} {} at {}",
                ld[a],
                ld[b],
                at[a]
            );
        }
        // Ends: the interval maps onto itself; interval splines continue with slope 1 (the
        // identity tails), circular ones have equal slopes at 0 and 2 pi.
        let ends = [lo - eps, lo + eps, hi - eps, hi + eps];
        let (y, ld) = apply::<B64>(transform, &ends, &params.repeat(4), false);
        match transform {
            Transform::Spline { .. } => {
                for i in 0..4 {
                    assert!((y[i] - ends[i]).abs() < 1e-5, "tail value at {}", ends[i]);
                    assert!(ld[i].abs() < 1e-4, "tail slope at {}: {}", ends[i], ld[i]);
                }
            }
            _ => {
                assert!((y[1] - lo).abs() < 1e-5 && (y[2] - hi).abs() < 1e-5);
                assert!((ld[1] - ld[2]).abs() < 1e-4, "slopes at 0 and 2 pi differ");
                // Wrapping: x and x + 2 pi map to the same point of the circle.
                let (y0, _) =
                    apply::<B64>(transform, &[1.0, 1.0 + 2.0 * PI], &params.repeat(2), false);
                assert!((y0[0] - y0[1]).abs() < 1e-9);
            }
        }

        // Extreme inputs and parameters: finite values, finite log-dets, in both directions.
        let wild = [
            -1e6,
            -1e3,
            lo,
            -1e-30,
            0.0,
            1e-30,
            hi,
            1e3,
            1e6,
            f64::from(f32::MAX) / 10.0,
        ];
        let extreme: Vec<f64> = (0..wild.len() * p)
            .map(|i| if i % 3 == 0 { 40.0 } else { -40.0 })
            .collect();
        for inverse in [false, true] {
            for params in [&params.repeat(wild.len()), &extreme] {
                let (y, ld) = apply::<B64>(transform, &wild, params, inverse);
                let (y32, ld32) = apply::<B32>(transform, &wild, params, inverse);
                for v in y.iter().chain(&ld).chain(&y32).chain(&ld32) {
                    assert!(v.is_finite(), "{transform:?} (inverse {inverse}) gave {v}");
                }
            }
        }
    }
}

/// Values beyond the spline interval pass a flow's layers unchanged whatever the batch size:
/// a one-layer flow on 16 samples, one active value per sample far in a tail, the others
/// inside. (burn-ndarray once laid out the tail mask of the selected active variables in
/// another order, so that batches > 1 clamped tail values to +-B.)
#[test]
fn spline_tails_are_the_identity_in_batches() {
    let config = FlowConfig {
        shape: vec![3, 2],
        layers: 1,
        transform: Transform::Spline {
            bins: 4,
            bound: 5.0,
        },
        conditioner: Conditioner::Mlp {
            hidden: vec![8],
            activation: Activation::Tanh,
        },
        mask: Mask::Alternating,
        z2: false,
        prior: Prior::Normal,
        centre_of_mass: CentreOfMass::Keep,
        seed: 3,
    };
    let flow = Flow::<B32>::new(&config, &Default::default()).unwrap();
    for n in [1, 2, 16] {
        let mut z = vec![0.1f32; 6 * n];
        // layer 0 freezes the even flat indices: index 1 (then 3, 5, ...) is active
        for b in 0..n {
            z[6 * b + 1 + 2 * (b % 3)] = -6.5 - b as f32;
        }
        let (x, log_det) = flow.forward(flow.tensor(&z).unwrap());
        let x = boltzflow_burn::flow::host(x);
        for b in 0..n {
            let i = 6 * b + 1 + 2 * (b % 3);
            assert_eq!(x[i], z[i], "batch {n}, sample {b}: the tail value moved");
        }
        let (back, ld_inv) = flow.inverse(flow.tensor(&x).unwrap());
        let back = boltzflow_burn::flow::host(back);
        for (a, b) in z.iter().zip(&back) {
            assert!((a - b).abs() < 1e-5, "batch {n}: round trip {a} {b}");
        }
        let sum = boltzflow_burn::flow::host(log_det + ld_inv);
        assert!(sum.iter().all(|s| s.abs() < 1e-5), "{sum:?}");
    }
}

/// The flows of the table: every transform with a conv conditioner on a 4x4 lattice, MLPs
/// on 6 variables, Z2 variants.
fn flows() -> Vec<FlowConfig> {
    let mut configs = Vec::new();
    for (transform, _) in transforms() {
        let circle = matches!(transform, Transform::CircularSpline { .. });
        let prior = if circle {
            Prior::UniformCircle
        } else {
            Prior::Normal
        };
        for z2 in [false, true] {
            if z2 && circle {
                continue;
            }
            configs.push(FlowConfig {
                shape: vec![4, 4],
                layers: 4,
                transform,
                conditioner: Conditioner::Conv {
                    hidden: vec![4, 4],
                    kernel: 3,
                    activation: Activation::LeakyRelu,
                },
                mask: Mask::Checkerboard,
                z2,
                prior,
                centre_of_mass: CentreOfMass::Keep,
                seed: 3,
            });
            configs.push(FlowConfig {
                shape: vec![3, 2],
                layers: 3,
                transform,
                conditioner: Conditioner::Mlp {
                    hidden: vec![16],
                    activation: Activation::Tanh,
                },
                mask: if z2 { Mask::Halves } else { Mask::Alternating },
                z2,
                prior,
                centre_of_mass: CentreOfMass::Keep,
                seed: 4,
            });
            if !circle && !z2 {
                // 4 particles in 2D without their centre of mass: 6 internal coordinates.
                configs.push(FlowConfig {
                    shape: vec![4, 2],
                    layers: 3,
                    transform,
                    conditioner: Conditioner::Mlp {
                        hidden: vec![16],
                        activation: Activation::Tanh,
                    },
                    mask: Mask::Alternating,
                    z2,
                    prior,
                    centre_of_mass: CentreOfMass::Remove,
                    seed: 6,
                });
            }
        }
    }
    configs
}

/// Perturbs the fresh parameters so that every layer is far from the identity.
fn randomised(config: &FlowConfig) -> Flow<B64> {
    let mut flow = Flow::<B64>::new(config, &Default::default()).unwrap();
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(config.seed + 100);
    let params: Vec<f32> = flow
        .params_host()
        .iter()
        .map(|p| p + 0.1 * rng.sample::<f32, _>(StandardNormal))
        .collect();
    flow.set_params(&params).unwrap();
    flow
}

/// log|det| of a row-major n x n matrix (nalgebra's LU).
fn log_abs_det(a: Vec<f64>, n: usize) -> f64 {
    nalgebra::DMatrix::from_row_slice(n, n, &a)
        .lu()
        .determinant()
        .abs()
        .ln()
}

#[test]
fn every_flow_inverts_and_its_log_det_is_the_numerical_jacobian() {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(5);
    for config in flows() {
        let flow = randomised(&config);
        // Without the centre of mass, z and the Jacobian live on the (n - 1) d internal
        // coordinates y = x E^T (E orthonormal, so log q needs no extra term).
        let dim = config.latent_dim();
        let full = config.dim();
        let batch = 3;
        let z = config.prior.draw(batch * dim, &mut rng);
        let z64: Vec<f64> = z.iter().map(|&v| f64::from(v)).collect();
        let (x, ld) = flow.forward(t2(&z64, [batch, dim]));
        let (x, ld) = (values(x), values(ld));
        if config.centre_of_mass == CentreOfMass::Remove {
            let d = config.shape[1];
            for sample in x.chunks(full) {
                for c in 0..d {
                    let centre: f64 = sample.iter().skip(c).step_by(d).sum();
                    assert!(centre.abs() < 1e-12, "{config:?}: centre of mass {centre}");
                }
            }
        }
        let (back, ld_inv) = flow.inverse(t2(&x, [batch, full]));
        let (back, ld_inv) = (values(back), values(ld_inv));
        let h = 1e-6;
        for b in 0..batch {
            let name = format!("{config:?} sample {b}");
            for i in 0..dim {
                let (orig, got) = (z64[b * dim + i], back[b * dim + i]);
                assert!(
                    (orig - got).abs() < 1e-10 * (1.0 + orig.abs()),
                    "{name}: round trip {orig} {got}"
                );
            }
            assert!(
                (ld[b] + ld_inv[b]).abs() < 1e-9,
                "{name}: log-dets do not cancel"
            );
            // Jacobian dx/dz by central differences, column by column.
            let mut jac = vec![0.0; dim * dim];
            for j in 0..dim {
                let mut plus = z64[b * dim..(b + 1) * dim].to_vec();
                let mut minus = plus.clone();
                plus[j] += h;
                minus[j] -= h;
                // the Jacobian of z -> y = f(z) E^T
                let (xp, _) = flow.forward(t2(&plus, [1, dim]));
                let (xm, _) = flow.forward(t2(&minus, [1, dim]));
                let (yp, ym) = (values(flow.internal(xp)), values(flow.internal(xm)));
                for i in 0..dim {
                    jac[i * dim + j] = (yp[i] - ym[i]) / (2.0 * h);
                }
            }
            let numerical = log_abs_det(jac, dim);
            assert!(
                (numerical - ld[b]).abs() < 1e-5 * (1.0 + ld[b].abs()),
                "{name}: log-det {} vs numerical {numerical}",
                ld[b]
            );
        }
        if config.z2 {
            let minus: Vec<f32> = x.iter().map(|&v| -(v as f32)).collect();
            let plus: Vec<f32> = x.iter().map(|&v| v as f32).collect();
            let (lp, lm) = (
                flow.log_prob(&plus).unwrap(),
                flow.log_prob(&minus).unwrap(),
            );
            for b in 0..batch {
                assert!((lp[b] - lm[b]).abs() < 1e-9, "{config:?}: q(-x) != q(x)");
            }
        }
    }
}

#[test]
fn burn_affine_flow_equals_the_hand_written_kernels() {
    for z2 in [false, true] {
        burn_equals_native(
            boltzflow_flow::flow::NativeCoupling::Affine,
            Transform::Affine,
            z2,
        );
    }
}

#[test]
fn burn_spline_flow_equals_the_hand_written_kernels() {
    burn_equals_native(
        boltzflow_flow::flow::NativeCoupling::Spline {
            bins: 5,
            bound: 3.0,
        },
        Transform::Spline {
            bins: 5,
            bound: 3.0,
        },
        false,
    );
}

/// Z2-equivariant spline layers: the engines symmetrise the same way (mirror image).
#[test]
fn burn_z2_spline_flow_equals_the_hand_written_kernels() {
    burn_equals_native(
        boltzflow_flow::flow::NativeCoupling::Spline {
            bins: 4,
            bound: 3.0,
        },
        Transform::Spline {
            bins: 4,
            bound: 3.0,
        },
        true,
    );
}

/// The same parameters give the same log q in both engines (f64 burn against the native
/// kernels in f64), for configurations drawn from the native flow, with or without Z2
/// symmetrisation.
fn burn_equals_native(
    coupling: boltzflow_flow::flow::NativeCoupling,
    transform: Transform,
    z2: bool,
) {
    let tolerance = 1e-10;
    let mut native = boltzflow_flow::AffineFlow::<f32>::new(&boltzflow_flow::AffineFlowConfig {
        coupling,
        z2,
        ..boltzflow_flow::AffineFlowConfig::tutorial([4, 6], 9)
    })
    .unwrap();
    // Away from the (spline) identity.
    for (i, p) in native.params_mut().iter_mut().enumerate() {
        *p += 0.2 * ((i * 7919 % 13) as f32 / 13.0 - 0.5);
    }
    let config = FlowConfig {
        z2,
        ..FlowConfig::lattice([4, 6], 16, transform, 0)
    };
    let mut flow = Flow::<B64>::new(&config, &Default::default()).unwrap();
    assert_eq!(flow.param_count(), native.params().len());
    flow.set_params(native.params()).unwrap();
    let native64 = native.cast::<f64>();
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(1);
    let (x, log_q) = native64.sample(5, &mut rng);
    let x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
    let burn_log_q = flow.log_prob(&x32).unwrap();
    let native_log_q = native64
        .log_prob(&x32.iter().map(|&v| f64::from(v)).collect::<Vec<_>>())
        .unwrap();
    for b in 0..5 {
        assert!(log_q[b].is_finite());
        assert!(
            (burn_log_q[b] - native_log_q[b]).abs() < tolerance * (1.0 + native_log_q[b].abs()),
            "sample {b}: burn {} vs native {}",
            burn_log_q[b],
            native_log_q[b]
        );
    }
}
