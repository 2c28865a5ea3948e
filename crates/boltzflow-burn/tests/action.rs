//! The tensor action of every target equals the plain-f64 `Target::action` on random
//! configurations (NdArray f64 to 1e-10, NdArray f32 to 1e-4, relative), and its autodiff
//! gradient equals minus `Target::force` (to 1e-8, relative). Run with
//! `cargo test -p boltzflow-burn --test action`.

use std::collections::BTreeSet;
use std::f64::consts::TAU;
use std::path::Path;

use boltzflow_burn::action::{TensorAction, tensor_action};
use boltzflow_targets::{LatticeFile, Target, TargetSpec};
use burn::backend::{Autodiff, NdArray};
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData};
use rand::{RngExt, SeedableRng};
use rand_distr::StandardNormal;
use rand_xoshiro::Xoshiro256PlusPlus;

/// Configurations per target.
const BATCH: usize = 8;

/// Every lattice file of the repository, plus geometries the files do not cover (phi^4 in 1D
/// and 3D, in both coupling forms; a dimer without solvent; five DW4 particles), as
/// (name, spec).
fn cases() -> Vec<(String, TargetSpec)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../lattices");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    paths.sort();
    let mut cases: Vec<(String, TargetSpec)> = paths
        .iter()
        .map(|p| {
            let file = LatticeFile::read(p).unwrap_or_else(|e| panic!("{e}"));
            (p.display().to_string(), file.target)
        })
        .collect();
    for text in [
        "theory = \"phi4\"\nshape = [7]\nm2 = 0.5\nlam = 1.0",
        "theory = \"phi4\"\nshape = [3, 4, 5]\nkappa = 0.18\nlam_h = 1.1",
        "theory = \"phi4\"\nshape = [2, 3, 2, 3]\nm2 = -1.0\nlam = 2.0",
        "theory = \"dimer\"\nn_solvent = 0\ntemperature = 0.7",
        "theory = \"dw4\"\nn_particles = 5\na = 0.3\ntemperature = 2.0",
        "theory = \"mueller_brown\"\nk = 0.25\ntemperature = 3.0",
    ] {
        let file = LatticeFile::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        cases.push((text.replace('\n', "; "), file.target));
    }
    cases
}

/// `BATCH` configurations of `target` stored back to back: uniform angles on [0, 2 pi) for
/// U(1); otherwise the cold start or relaxed minimum plus Gaussian noise on the scale of the
/// thermal fluctuations (small enough that no two particles coincide). Half of the dimer
/// configurations are stretched by 1.3 so that solvent particles leave the box.
fn configurations(target: &dyn Target, spec: &TargetSpec, seed: u64) -> Vec<f64> {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let dim = target.dim();
    if target.theory() == "u1" {
        return (0..BATCH * dim)
            .map(|_| TAU * rng.random::<f64>())
            .collect();
    }
    let noise = match target.theory() {
        "phi4" | "double_well" => 1.0,
        "mueller_brown" | "dw4" => 0.3,
        "dimer" => 0.1,
        "lj" => 0.05,
        other => panic!("no noise scale for theory {other}"),
    };
    let start = target.initial();
    let mut xs = Vec::with_capacity(BATCH * dim);
    for b in 0..BATCH {
        let stretch = if target.theory() == "dimer" && b >= BATCH / 2 {
            1.3
        } else {
            1.0
        };
        for &x0 in &start {
            let z: f64 = rng.sample(StandardNormal);
            xs.push(stretch * (x0 + noise * z));
        }
    }
    if let TargetSpec::Dimer(s) = spec
        && s.n_solvent > 0
    {
        assert!(
            xs.iter().any(|u| u.abs() > s.box_half),
            "no coordinate outside the box: the wall term is not tested"
        );
    }
    xs
}

/// The tensor action of `xs` on backend `B`, read back as f64. The input tensor gets the dtype
/// of `xs` explicitly: burn 0.21 shares one default float dtype between `NdArray<f32>` and
/// `NdArray<f64>` (set by whichever touches the CPU device first), so without it the "f32"
/// check could silently run in f64 or the reverse.
fn tensor_actions<B: Backend>(action: &dyn TensorAction<B>, xs: TensorData) -> Vec<f64> {
    let dtype = xs.dtype;
    let x = Tensor::<B, 2>::from_data(xs, (&Default::default(), dtype));
    let s = action.action(x);
    assert_eq!(s.dims(), [BATCH]);
    assert_eq!(s.dtype(), dtype, "the action computes in the input's dtype");
    s.into_data()
        .convert::<f64>()
        .to_vec::<f64>()
        .expect("f64 data")
}

/// The f64 actions of the configurations stored back to back in `xs`.
fn reference_actions(target: &dyn Target, xs: &[f64]) -> Vec<f64> {
    xs.chunks(target.dim()).map(|x| target.action(x)).collect()
}

/// Asserts |s - s_ref| <= tol max(|s_ref|, 1) for every configuration.
fn assert_close(name: &str, what: &str, tensor: &[f64], reference: &[f64], tol: f64) {
    assert_eq!(tensor.len(), reference.len());
    for (b, (s, r)) in tensor.iter().zip(reference).enumerate() {
        assert!(
            r.is_finite(),
            "{name}: f64 action of configuration {b} is {r}"
        );
        let err = (s - r).abs() / r.abs().max(1.0);
        assert!(
            err <= tol,
            "{name} ({what}), configuration {b}: tensor {s} vs f64 {r} (relative error {err:e})"
        );
    }
}

#[test]
fn tensor_action_equals_f64_action_on_every_target() {
    let cases = cases();
    let theories: BTreeSet<&str> = cases.iter().map(|(_, spec)| spec.theory()).collect();
    assert_eq!(
        theories,
        BTreeSet::from([
            "dimer",
            "double_well",
            "dw4",
            "lj",
            "mueller_brown",
            "phi4",
            "u1"
        ]),
        "every theory has a case"
    );
    for (seed, (name, spec)) in cases.iter().enumerate() {
        let target = spec.build().unwrap_or_else(|e| panic!("{name}: {e}"));
        let dim = target.dim();
        let xs = configurations(&*target, spec, 1000 + seed as u64);

        // f64: the same arithmetic up to summation order
        let action64 =
            tensor_action::<NdArray<f64>>(spec, &Default::default()).expect("valid spec");
        let s64 = tensor_actions(&*action64, TensorData::new(xs.clone(), [BATCH, dim]));
        assert_close(name, "f64", &s64, &reference_actions(&*target, &xs), 1e-10);

        // f32: the reference is evaluated on the f32-rounded configurations
        let xs32: Vec<f32> = xs.iter().map(|&x| x as f32).collect();
        let rounded: Vec<f64> = xs32.iter().map(|&x| f64::from(x)).collect();
        let action32 =
            tensor_action::<NdArray<f32>>(spec, &Default::default()).expect("valid spec");
        let s32 = tensor_actions(&*action32, TensorData::new(xs32, [BATCH, dim]));
        assert_close(
            name,
            "f32",
            &s32,
            &reference_actions(&*target, &rounded),
            1e-4,
        );
    }
}

#[test]
fn autodiff_gradient_equals_minus_force_on_every_target() {
    type Ad = Autodiff<NdArray<f64>>;
    for (seed, (name, spec)) in cases().iter().enumerate() {
        let target = spec.build().unwrap_or_else(|e| panic!("{name}: {e}"));
        let dim = target.dim();
        let xs = configurations(&*target, spec, 2000 + seed as u64);
        let action = tensor_action::<Ad>(spec, &Default::default()).expect("valid spec");
        let x = Tensor::<Ad, 2>::from_data(
            TensorData::new(xs.clone(), [BATCH, dim]),
            (&Default::default(), DType::F64),
        )
        .require_grad();
        let grads = action.action(x.clone()).sum().backward();
        let gradient = x
            .grad(&grads)
            .expect("x requires a gradient")
            .into_data()
            .to_vec::<f64>()
            .expect("f64 data");
        assert_eq!(gradient.len(), BATCH * dim);
        let mut force = vec![0.0; dim];
        for (b, (x, g)) in xs.chunks(dim).zip(gradient.chunks(dim)).enumerate() {
            target.force(x, &mut force);
            let scale = force.iter().fold(1.0f64, |m, f| m.max(f.abs()));
            for (k, (g, f)) in g.iter().zip(&force).enumerate() {
                let err = (g + f).abs() / scale;
                assert!(
                    err <= 1e-8,
                    "{name}, configuration {b}, component {k}: dS/dx {g} vs -force {} \
                     (relative error {err:e})",
                    -f
                );
            }
        }
    }
}

/// An invalid spec is an error naming the parameter, not a panic.
#[test]
fn invalid_spec_is_an_error() {
    let spec = TargetSpec::Phi4(boltzflow_targets::phi4::Phi4Spec {
        shape: vec![1, 8],
        m2: Some(-4.0),
        lam: Some(8.0),
        kappa: None,
        lam_h: None,
    });
    let err = tensor_action::<NdArray<f64>>(&spec, &Default::default())
        .err()
        .expect("extent 1 is rejected")
        .to_string();
    assert!(err.contains("shape"), "{err}");
}
