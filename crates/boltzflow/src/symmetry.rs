//! Finite symmetry groups of a target and the symmetrised proposal density of a flow.
//!
//! A group G of orthogonal maps of configurations with S(g x) = S(x) for every g turns any
//! flow q into the exact mixture
//!
//! ```text
//! q_G(x) = (1 / |G|) sum_(g in G) q(g x)
//! ```
//!
//! sampled by drawing x ~ q and applying a uniformly chosen g (the density of g x is q_G,
//! because g -> g^(-1) is a bijection of G and |det g| = 1). q_G is G-invariant like p, so a
//! flow that covers one of the |G| symmetry-related sectors of p (a fixed labelling of
//! identical particles, one chirality) covers all of them under q_G: the weights p / q_G are
//! those of the flow within its sector, and ln Z counts every sector. The price is |G| - 1
//! extra evaluations of log q per draw.
//!
//! Two groups: Z2 (x -> -x, phi^4) and the particle group (every permutation within each group
//! of identical particles, times the mirror image that negates the first Cartesian component
//! of every particle, for targets whose energy depends on pair distances and even functions
//! of the coordinates).

use anyhow::{Result, bail};
use rand::RngExt;
use rand_xoshiro::Xoshiro256PlusPlus;

use boltzflow_flow::FlowModel;
use boltzflow_targets::{Target, TargetSpec};

/// The largest particle group sampled exactly: each draw costs |G| evaluations of log q
/// (8! = 40320: up to 7 identical particles with the mirror, 8 without).
pub const MAX_GROUP: usize = 40_320;

/// Rows per call of [`FlowModel::log_prob`] when evaluating the |G| images of a batch.
const ROWS_PER_CALL: usize = 65_536;

/// A finite group of signed permutations of the variables of a configuration: element e maps
/// x to y with y[k] = sign[e][k] x[source[e][k]]. Element 0 is the identity.
#[derive(Clone, Debug)]
pub struct SymmetryGroup {
    /// The config key that asked for it, for error messages.
    key: &'static str,
    source: Vec<Vec<u32>>,
    sign: Vec<Vec<f32>>,
}

impl SymmetryGroup {
    /// Z2 on `dim` variables: the identity and x -> -x.
    pub fn z2(dim: usize) -> Self {
        let identity: Vec<u32> = (0..dim as u32).collect();
        Self {
            key: "sample.z2_mixture",
            source: vec![identity.clone(), identity],
            sign: vec![vec![1.0; dim], vec![-1.0; dim]],
        }
    }

    /// The particle group of `spec` (shape `[n_particles, d]`): every permutation within each
    /// of [`TargetSpec::identical_particles`], times {identity, mirror} when
    /// [`TargetSpec::mirror_symmetric`]. Refused for targets without identical particles and
    /// for groups of more than [`MAX_GROUP`] elements.
    pub fn particles(spec: &TargetSpec, shape: &[usize]) -> Result<Self> {
        let (groups, mirror) = particle_symmetries(spec)?;
        if shape.len() != 2 {
            bail!(
                "sample.symmetrize = \"particles\" needs configurations [particles, d] but `{}` has shape {shape:?}; remove it",
                spec.theory()
            );
        }
        let (n, d) = (shape[0], shape[1]);
        // Particle permutations: the product of the permutations of every group.
        let mut perms: Vec<Vec<usize>> = vec![(0..n).collect()];
        for g in &groups {
            let local = permutations(g.len());
            perms = perms
                .iter()
                .flat_map(|p| {
                    local.iter().map(move |l| {
                        let mut q = p.clone();
                        for (k, &j) in l.iter().enumerate() {
                            q[g.start + k] = p[g.start + j];
                        }
                        q
                    })
                })
                .collect();
        }
        let mirrors: &[bool] = if mirror { &[false, true] } else { &[false] };
        let (mut source, mut sign) = (Vec::new(), Vec::new());
        for &m in mirrors {
            for p in &perms {
                source.push((0..n * d).map(|k| (p[k / d] * d + k % d) as u32).collect());
                sign.push(
                    (0..n * d)
                        .map(|k| if m && k % d == 0 { -1.0 } else { 1.0 })
                        .collect(),
                );
            }
        }
        Ok(Self {
            key: "sample.symmetrize",
            source,
            sign,
        })
    }

    /// Number of elements |G|.
    pub fn len(&self) -> usize {
        self.source.len()
    }

    /// Variables per configuration.
    fn dim(&self) -> usize {
        self.source[0].len()
    }

    /// Writes g_e x into `out` (f32 flow configurations or f64 target configurations).
    fn apply<T: Copy + From<f32> + std::ops::Mul<Output = T>>(
        &self,
        e: usize,
        x: &[T],
        out: &mut [T],
    ) {
        for ((o, &s), &sign) in out.iter_mut().zip(&self.source[e]).zip(&self.sign[e]) {
            *o = T::from(sign) * x[s as usize];
        }
    }

    /// log q_G(x) of configurations `x` `[n, dim]` whose log q(x) is `log_q`: the
    /// log-sum-exp of log q(g x) over the group minus ln |G|.
    pub fn log_mixture(&self, flow: &dyn FlowModel, x: &[f32], log_q: &[f64]) -> Result<Vec<f64>> {
        let dim = self.dim();
        let images = self.len() - 1;
        let per_call = (ROWS_PER_CALL / images.max(1)).max(1);
        let mut out = Vec::with_capacity(log_q.len());
        let mut batch = Vec::new();
        for (xs, lq) in x.chunks(per_call * dim).zip(log_q.chunks(per_call)) {
            batch.clear();
            batch.resize(xs.len() * images, 0.0);
            for (i, config) in xs.chunks_exact(dim).enumerate() {
                for e in 1..self.len() {
                    let row = (i * images + e - 1) * dim;
                    self.apply(e, config, &mut batch[row..row + dim]);
                }
            }
            let others = flow.log_prob(&batch)?;
            let size = self.len() as f64;
            out.extend(lq.iter().enumerate().map(|(i, &own)| {
                let row = &others[i * images..(i + 1) * images];
                let m = row.iter().fold(own, |m, &v| m.max(v));
                if m == f64::NEG_INFINITY {
                    return m;
                }
                let sum = (own - m).exp() + row.iter().map(|&v| (v - m).exp()).sum::<f64>();
                m + (sum / size).ln()
            }));
        }
        Ok(out)
    }

    /// Replaces every configuration of `x` by its image under a uniformly drawn element (a
    /// coin per configuration for a group of two, as the Z2 mixture always drew).
    pub fn scatter(&self, x: &mut [f32], rng: &mut Xoshiro256PlusPlus) {
        let dim = self.dim();
        let mut image = vec![0.0; dim];
        for config in x.chunks_exact_mut(dim) {
            let e = if self.len() == 2 {
                usize::from(rng.random::<bool>())
            } else {
                rng.random_range(0..self.len())
            };
            if e != 0 {
                self.apply(e, config, &mut image);
                config.copy_from_slice(&image);
            }
        }
    }

    /// Checks S(g x) = S(x) for every element on one configuration `x` with action `action`.
    pub fn check_invariant(&self, target: &dyn Target, x: &[f64], action: f64) -> Result<()> {
        let mut image = vec![0.0; x.len()];
        for e in 1..self.len() {
            self.apply(e, x, &mut image);
            let moved = target.action(&image);
            if (moved - action).abs() > 1e-9 * (1.0 + action.abs()) {
                let fix = if self.key == "sample.z2_mixture" {
                    "set sample.z2_mixture = false"
                } else {
                    "remove sample.symmetrize"
                };
                bail!(
                    "{} asks for a symmetry of target `{}` that it lacks (S = {moved} != S(x) = {action} after one of its maps); {fix}",
                    self.key,
                    target.theory()
                );
            }
        }
        Ok(())
    }
}

/// The identical-particle groups of `spec` and whether it is mirror symmetric, refused when
/// it has no identical particles or the group has more than [`MAX_GROUP`] elements.
pub fn particle_symmetries(spec: &TargetSpec) -> Result<(Vec<std::ops::Range<usize>>, bool)> {
    let groups = spec.identical_particles();
    if groups.is_empty() {
        bail!(
            "sample.symmetrize = \"particles\" needs identical particles but `{}` has none; remove it (for the Z2 symmetry of phi^4 use sample.z2_mixture = true)",
            spec.theory()
        );
    }
    let mirror = spec.mirror_symmetric();
    let size: f64 = groups
        .iter()
        .map(|g| (1..=g.len()).map(|k| k as f64).product::<f64>())
        .product::<f64>()
        * if mirror { 2.0 } else { 1.0 };
    if size > MAX_GROUP as f64 {
        let sizes: Vec<String> = groups.iter().map(|g| format!("{}!", g.len())).collect();
        bail!(
            "sample.symmetrize = \"particles\": the symmetry group of `{}` has {}{} = {size:.3e} elements and each draw would cost that many evaluations of log q; it is sampled exactly up to {MAX_GROUP} elements (dw4: 48); remove sample.symmetrize",
            spec.theory(),
            sizes.join(" x "),
            if mirror { " x 2" } else { "" },
        );
    }
    Ok((groups, mirror))
}

/// Every permutation of 0..k (k! of them, the identity first).
fn permutations(k: usize) -> Vec<Vec<usize>> {
    let mut out = vec![(0..k).collect::<Vec<_>>()];
    let mut p: Vec<usize> = (0..k).collect();
    // Lexicographic successor until the last permutation.
    loop {
        let Some(i) = (1..k).rev().find(|&i| p[i - 1] < p[i]) else {
            return out;
        };
        let j = (i..k)
            .rev()
            .find(|&j| p[j] > p[i - 1])
            .expect("p[i] > p[i - 1]");
        p.swap(i - 1, j);
        p[i..].reverse();
        out.push(p.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use boltzflow_flow::FlowError;
    use boltzflow_targets::LatticeFile;
    use rand::SeedableRng;

    fn spec(text: &str) -> TargetSpec {
        LatticeFile::parse(text).unwrap().target
    }

    fn dw4(n: usize) -> TargetSpec {
        spec(&format!("theory = \"dw4\"\nn_particles = {n}\n"))
    }

    /// A stand-in flow: q = N(mu, sigma^2) with a mean that breaks every symmetry, its
    /// density in closed form. It only samples.
    struct Gaussian {
        mu: Vec<f64>,
        sigma: f64,
    }

    impl FlowModel for Gaussian {
        fn dim(&self) -> usize {
            self.mu.len()
        }
        fn params(&self) -> Vec<f32> {
            Vec::new()
        }
        fn set_params(&mut self, _: &[f32]) -> boltzflow_flow::Result<()> {
            Ok(())
        }
        fn draw_prior(&self, n: usize, rng: &mut Xoshiro256PlusPlus) -> Vec<f32> {
            (0..n * self.dim())
                .map(|_| {
                    let (u, v): (f64, f64) = (rng.random(), rng.random());
                    ((-2.0 * (1.0 - u).ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
                })
                .collect()
        }
        fn push_forward(&self, z: &[f32]) -> boltzflow_flow::Result<(Vec<f32>, Vec<f64>)> {
            let x: Vec<f32> = z
                .iter()
                .enumerate()
                .map(|(k, &z)| (self.mu[k % self.dim()] + self.sigma * f64::from(z)) as f32)
                .collect();
            let log_q = self.log_prob(&x)?;
            Ok((x, log_q))
        }
        fn log_prob(&self, x: &[f32]) -> boltzflow_flow::Result<Vec<f64>> {
            let d = self.dim() as f64;
            Ok(x.chunks_exact(self.dim())
                .map(|c| {
                    let r2: f64 = c
                        .iter()
                        .zip(&self.mu)
                        .map(|(&x, m)| ((f64::from(x) - m) / self.sigma).powi(2))
                        .sum();
                    -0.5 * r2 - d * (self.sigma * std::f64::consts::TAU.sqrt()).ln()
                })
                .collect())
        }
        fn reverse_kl_gradient_at(
            &mut self,
            _: &dyn Target,
            _: &[f32],
            _: &mut [f32],
        ) -> boltzflow_flow::Result<(Vec<f64>, Vec<f64>)> {
            Err(FlowError::InvalidConfig {
                name: "objective",
                value: "reverse_kl".into(),
                fix: "the test Gaussian only samples",
            })
        }
        fn forward_kl_gradient(
            &mut self,
            _: &[f32],
            _: &mut [f32],
        ) -> boltzflow_flow::Result<Vec<f64>> {
            Err(FlowError::InvalidConfig {
                name: "objective",
                value: "forward_kl".into(),
                fix: "the test Gaussian only samples",
            })
        }
    }

    /// DW4's group has 4! x 2 = 48 distinct elements, the identity first, closed under
    /// composition, each preserving the action; too large groups and targets without
    /// identical particles are refused with one line.
    #[test]
    fn particle_groups_are_the_target_symmetries() {
        let spec4 = dw4(4);
        let group = SymmetryGroup::particles(&spec4, &[4, 2]).unwrap();
        assert_eq!(group.len(), 48);
        assert_eq!(group.source[0], (0..8).collect::<Vec<u32>>());
        assert!(group.sign[0].iter().all(|&s| s == 1.0));
        let key = |e: usize| {
            (
                group.source[e].clone(),
                group.sign[e].iter().map(|s| *s as i8).collect::<Vec<_>>(),
            )
        };
        let elements: std::collections::BTreeSet<_> = (0..48).map(key).collect();
        assert_eq!(elements.len(), 48, "elements repeat");
        let x: Vec<f32> = (0..8)
            .map(|k| (k as f32 * 1.37 + 0.5).sin() * 3.0)
            .collect();
        let (mut a, mut b) = (vec![0.0; 8], vec![0.0; 8]);
        for e in 0..48 {
            for f in 0..48 {
                group.apply(f, &x, &mut a);
                group.apply(e, &a.clone(), &mut a);
                let hit = (0..48).any(|h| {
                    group.apply(h, &x, &mut b);
                    a == b
                });
                assert!(hit, "g_{e} g_{f} is not in the group");
            }
        }
        let target = spec4.build().unwrap();
        let x64: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
        group
            .check_invariant(target.as_ref(), &x64, target.action(&x64))
            .unwrap();
        assert_eq!(SymmetryGroup::particles(&dw4(2), &[2, 2]).unwrap().len(), 4);

        let lj = spec("theory = \"lj\"\nn_particles = 13\n");
        let err = SymmetryGroup::particles(&lj, &[13, 3])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("13! x 2")
                && err.contains("remove sample.symmetrize")
                && !err.contains('\n'),
            "{err}"
        );
        let well = spec("theory = \"double_well\"\n");
        let err = SymmetryGroup::particles(&well, &[1, 2])
            .unwrap_err()
            .to_string();
        assert!(err.contains("has none") && !err.contains('\n'), "{err}");
    }

    /// q_G of an asymmetric Gaussian is G-invariant, integrates to one (importance sampling
    /// from a wide normal, within 4 sigma), and the density `sample` reports is q_G of the
    /// configurations it returns.
    #[test]
    fn mixture_is_an_invariant_normalised_density() {
        let group = SymmetryGroup::particles(&dw4(2), &[2, 2]).unwrap();
        let flow = Gaussian {
            mu: vec![1.5, -0.4, 0.3, 0.9],
            sigma: 0.6,
        };
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(3);
        let (mut x, log_q) = flow.sample(2000, &mut rng);
        let mixed = group.log_mixture(&flow, &x, &log_q).unwrap();
        let mut image = vec![0.0; 4];
        for (config, &lq) in x.chunks_exact(4).zip(&mixed).take(50) {
            for e in 0..group.len() {
                group.apply(e, config, &mut image);
                let own = flow.log_prob(&image).unwrap();
                let moved = group.log_mixture(&flow, &image, &own).unwrap()[0];
                assert!((moved - lq).abs() < 1e-9, "element {e}: {moved} vs {lq}");
            }
        }
        group.scatter(&mut x, &mut rng);
        let own = flow.log_prob(&x).unwrap();
        let again = group.log_mixture(&flow, &x, &own).unwrap();
        assert!(mixed.iter().zip(&again).all(|(a, b)| (a - b).abs() < 1e-9));
        // the scattered draws left the flow's own mode: some land on every image of mu
        let moved = x.chunks_exact(4).filter(|c| c[0] < 0.0).count();
        assert!(moved > 600 && moved < 1400, "{moved} of 2000 mirrored");

        let wide = Gaussian {
            mu: vec![0.0; 4],
            sigma: 2.5,
        };
        let (y, log_wide) = wide.sample(200_000, &mut rng);
        let own = flow.log_prob(&y).unwrap();
        let w: Vec<f64> = group
            .log_mixture(&flow, &y, &own)
            .unwrap()
            .iter()
            .zip(&log_wide)
            .map(|(a, b)| (a - b).exp())
            .collect();
        let n = w.len() as f64;
        let mean = w.iter().sum::<f64>() / n;
        let err = (w.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0) / n).sqrt();
        assert!(
            (mean - 1.0).abs() < 4.0 * err,
            "integral of q_G = {mean} +- {err}"
        );
    }
}
