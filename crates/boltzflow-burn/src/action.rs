//! The tensor action S(x) of every target, for reverse-KL training of flows.
//!
//! Each type here is the batched, differentiable twin of a plain-f64 [`Target::action`] in
//! `boltzflow-targets`: the same formula, the same configuration layout, the same clamps, so
//! that the loss the flow is trained on and the weights the sampler uses agree (the test
//! `tests/action.rs` holds them equal on random configurations, and the autodiff gradient equal
//! to minus [`Target::force`]).
//!
//! Index tables (forward neighbours, plaquette corners, particle pairs) are built once at
//! construction as `Tensor<B, 1, Int>`; the hot path is a handful of gathers (`select`) and
//! element-wise ops over the whole batch, with no per-sample loop and no host round trip.
//! Clamps are branch free (`clamp_min`), so autodiff sees the same piecewise definition as the
//! f64 force: a pair whose r^2 sits on the floor and a coordinate inside the box walls get a
//! zero gradient.
//!
//! Division by the temperature is written as multiplication by 1/T: burn 0.21's autodiff
//! backward of `div_scalar` rounds the divisor's reciprocal to f32, which would put a relative
//! error of about 1e-8 into every f64 gradient.
//!
//! Quotients such as rm^2 / r^2 are true divisions, never `recip()`: burn-ndarray 0.21 computes
//! `recip` with the SIMD reciprocal estimate (`rcpps`, about 12 bits in f32; `rcp14` even in
//! f64 on AVX-512 CPUs).
//!
//! No float tensor is created from host data here: every constant enters as a scalar op or a
//! `full_like` of the input, so the action computes in the float dtype of its input `x` (on f32
//! it agrees with the f64 action to f32 rounding only). This matters because burn 0.21 keys a device's default float dtype by device, not by
//! backend: `NdArray<f32>` and `NdArray<f64>` share `NdArrayDevice::Cpu`, and whichever touches
//! it first in a process fixes the dtype of tensors created without an explicit one.
//!
//! [`Target::action`]: boltzflow_targets::Target::action
//! [`Target::force`]: boltzflow_targets::Target::force

use boltzflow_targets::geometry::Lattice;
use boltzflow_targets::molecular::{
    DimerSpec, DoubleWellSpec, Dw4Spec, LjSpec, MuellerBrownSpec, R2_FLOOR, mueller_brown,
};
use boltzflow_targets::phi4::Phi4Spec;
use boltzflow_targets::u1::U1Spec;
use boltzflow_targets::{Result, TargetSpec};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

/// The action S(x) = -log p(x) + const of a batch of configurations.
pub trait TensorAction<B: Backend>: Send + Sync {
    /// S(x) of every configuration in the batch.
    ///
    /// # Shapes
    /// - `x`: `[batch, dim]`, each row a configuration in the target's flat layout
    ///   ([`boltzflow_targets::Target::dim`], row-major in [`boltzflow_targets::Target::shape`]).
    /// - returns `[batch]`.
    fn action(&self, x: Tensor<B, 2>) -> Tensor<B, 1>;
}

/// The tensor action of a target spec, with its index tables built once on `device`.
///
/// The spec is validated first; an invalid spec returns the same error as
/// [`TargetSpec::build`].
pub fn tensor_action<B: Backend>(
    spec: &TargetSpec,
    device: &B::Device,
) -> Result<Box<dyn TensorAction<B>>> {
    spec.validate()?;
    Ok(match spec {
        TargetSpec::Phi4(s) => Box::new(Phi4Action::new(s, device)?),
        TargetSpec::U1(s) => Box::new(U1Action::new(s, device)?),
        TargetSpec::DoubleWell(s) => Box::new(DoubleWellAction::new(s)?),
        TargetSpec::MuellerBrown(s) => Box::new(MuellerBrownAction::new(s)?),
        TargetSpec::Dw4(s) => Box::new(Dw4Action::new(s, device)?),
        TargetSpec::Lj(s) => Box::new(LjAction::new(s, device)?),
        TargetSpec::Dimer(s) => Box::new(DimerAction::new(s, device)?),
    })
}

/// A 1-d index tensor holding `indices`.
fn index_table<B: Backend>(indices: &[usize], device: &B::Device) -> Tensor<B, 1, Int> {
    let values: Vec<i64> = indices.iter().map(|&i| i as i64).collect();
    Tensor::from_data(TensorData::new(values, [indices.len()]), device)
}

/// Sums a `[batch, n]` tensor over its second axis: returns `[batch]`.
fn sum_rows<B: Backend>(t: Tensor<B, 2>) -> Tensor<B, 1> {
    t.sum_dim(1).squeeze_dim(1)
}

/// Column `c` of a `[batch, dim]` tensor, kept as `[batch, 1]`.
fn column<B: Backend>(x: &Tensor<B, 2>, c: usize) -> Tensor<B, 2> {
    x.clone().narrow(1, c, 1)
}

/// The pairs (i, j) of particles whose pair term enters the energy, as two index tables.
struct PairTable<B: Backend> {
    first: Tensor<B, 1, Int>,
    second: Tensor<B, 1, Int>,
}

impl<B: Backend> PairTable<B> {
    /// The pairs in `pairs`; `None` when there are none (a gather with no indices is skipped).
    fn new(pairs: &[(usize, usize)], device: &B::Device) -> Option<Self> {
        if pairs.is_empty() {
            return None;
        }
        let (first, second): (Vec<usize>, Vec<usize>) = pairs.iter().copied().unzip();
        Some(Self {
            first: index_table(&first, device),
            second: index_table(&second, device),
        })
    }

    /// All pairs i < j of `n` particles whose second particle is at least `j_min`.
    fn upper(n: usize, j_min: usize, device: &B::Device) -> Option<Self> {
        let pairs: Vec<(usize, usize)> = (0..n)
            .flat_map(|i| ((i + 1).max(j_min)..n).map(move |j| (i, j)))
            .collect();
        Self::new(&pairs, device)
    }

    /// Squared distances r_ij^2 = |x_i - x_j|^2 of the pairs.
    ///
    /// # Shapes
    /// - `particles`: `[batch, n, spatial_dim]`.
    /// - returns `[batch, n_pairs]`.
    fn squared_distances(&self, particles: Tensor<B, 3>) -> Tensor<B, 2> {
        let difference = particles.clone().select(1, self.first.clone())
            - particles.select(1, self.second.clone());
        difference.square().sum_dim(2).squeeze_dim(2)
    }
}

/// phi^4 theory on a periodic lattice of any dimension d (`boltzflow_targets::phi4`):
///
/// ```text
/// S(phi) = sum_x [ -2 phi(x) sum_mu phi(x + mu) + (2d + m2) phi(x)^2 + lam phi(x)^4 ].
/// ```
///
/// # Shapes
/// `x`: `[batch, V]`, sites in the row-major order of [`Lattice`].
pub struct Phi4Action<B: Backend> {
    /// `forward[mu V + x]` is the site x + mu_hat.
    forward: Tensor<B, 1, Int>,
    ndim: usize,
    volume: usize,
    /// 2d + m2, the coefficient of phi^2.
    mass_term: f64,
    lam: f64,
}

impl<B: Backend> Phi4Action<B> {
    /// The action of a phi^4 spec (validated here), neighbour table on `device`.
    pub fn new(spec: &Phi4Spec, device: &B::Device) -> Result<Self> {
        spec.validate()?;
        let lattice = Lattice::new(&spec.shape)?;
        let (m2, lam) = spec.couplings();
        let (ndim, volume) = (lattice.ndim(), lattice.volume());
        let forward: Vec<usize> = (0..ndim)
            .flat_map(|mu| (0..volume).map(move |x| (x, mu)))
            .map(|(x, mu)| lattice.fwd(x, mu))
            .collect();
        Ok(Self {
            forward: index_table(&forward, device),
            ndim,
            volume,
            mass_term: 2.0 * ndim as f64 + m2,
            lam,
        })
    }
}

impl<B: Backend> TensorAction<B> for Phi4Action<B> {
    fn action(&self, phi: Tensor<B, 2>) -> Tensor<B, 1> {
        let batch = phi.dims()[0];
        // hop(x) = sum_mu phi(x + mu): one gather of all d shifted copies, summed over mu
        let hop: Tensor<B, 2> = phi
            .clone()
            .select(1, self.forward.clone())
            .reshape([batch, self.ndim, self.volume])
            .sum_dim(1)
            .squeeze_dim(1);
        let phi2 = phi.clone().square();
        let local = phi.mul(hop).mul_scalar(-2.0)
            + phi2.clone() * (phi2.mul_scalar(self.lam).add_scalar(self.mass_term));
        sum_rows(local)
    }
}

/// Compact U(1) gauge theory in 2D with the Wilson action (`boltzflow_targets::u1`):
///
/// ```text
/// S = -beta sum_x cos theta_P(x),
/// theta_P(x) = theta_0(x) + theta_1(x + 0) - theta_0(x + 1) - theta_1(x).
/// ```
///
/// # Shapes
/// `x`: `[batch, 2 V]`, link theta_mu(x) at column mu V + x.
pub struct U1Action<B: Backend> {
    /// Columns of theta_0(x), theta_1(x + 0), theta_0(x + 1), theta_1(x), for x = 0 .. V.
    corners: [Tensor<B, 1, Int>; 4],
    beta: f64,
}

impl<B: Backend> U1Action<B> {
    /// The action of a U(1) spec (validated here), plaquette tables on `device`.
    pub fn new(spec: &U1Spec, device: &B::Device) -> Result<Self> {
        spec.validate()?;
        let lattice = Lattice::new(&spec.shape)?;
        let v = lattice.volume();
        let table = |link: &dyn Fn(usize) -> usize| {
            let columns: Vec<usize> = (0..v).map(link).collect();
            index_table(&columns, device)
        };
        Ok(Self {
            corners: [
                table(&|x| x),
                table(&|x| v + lattice.fwd(x, 0)),
                table(&|x| lattice.fwd(x, 1)),
                table(&|x| v + x),
            ],
            beta: spec.beta,
        })
    }
}

impl<B: Backend> TensorAction<B> for U1Action<B> {
    fn action(&self, theta: Tensor<B, 2>) -> Tensor<B, 1> {
        let link = |k: usize| theta.clone().select(1, self.corners[k].clone());
        let plaquette_angle = link(0) + link(1) - link(2) - link(3);
        sum_rows(plaquette_angle.cos()).mul_scalar(-self.beta)
    }
}

/// 2D double well, S = E/T with E(x, y) = x^4 - 6 x^2 + x + y^2/2
/// (`boltzflow_targets::molecular::DoubleWell`).
///
/// # Shapes
/// `x`: `[batch, 2]`, columns (x, y).
pub struct DoubleWellAction {
    temperature: f64,
}

impl DoubleWellAction {
    /// The action of a double-well spec (validated here).
    pub fn new(spec: &DoubleWellSpec) -> Result<Self> {
        spec.validate()?;
        Ok(Self {
            temperature: spec.temperature,
        })
    }
}

impl<B: Backend> TensorAction<B> for DoubleWellAction {
    fn action(&self, xy: Tensor<B, 2>) -> Tensor<B, 1> {
        let (x, y) = (column(&xy, 0), column(&xy, 1));
        let x2 = x.clone().square();
        let energy = x2.clone().square() - x2.mul_scalar(6.0) + x + y.square().mul_scalar(0.5);
        sum_rows(energy).mul_scalar(self.temperature.recip())
    }
}

/// Mueller-Brown potential, S = E/T with
/// E(x, y) = k sum_j A_j exp[a_j (x - X_j)^2 + b_j (x - X_j)(y - Y_j) + c_j (y - Y_j)^2]
/// (constants of [`boltzflow_targets::molecular::mueller_brown`]).
///
/// # Shapes
/// `x`: `[batch, 2]`, columns (x, y).
pub struct MuellerBrownAction {
    temperature: f64,
    k: f64,
}

impl MuellerBrownAction {
    /// The action of a Mueller-Brown spec (validated here).
    pub fn new(spec: &MuellerBrownSpec) -> Result<Self> {
        spec.validate()?;
        Ok(Self {
            temperature: spec.temperature,
            k: spec.k,
        })
    }
}

impl<B: Backend> TensorAction<B> for MuellerBrownAction {
    fn action(&self, xy: Tensor<B, 2>) -> Tensor<B, 1> {
        let (x, y) = (column(&xy, 0), column(&xy, 1));
        let term = |j: usize| {
            let dx = x.clone().sub_scalar(mueller_brown::X0[j]);
            let dy = y.clone().sub_scalar(mueller_brown::Y0[j]);
            let exponent = dx.clone().square().mul_scalar(mueller_brown::A[j])
                + (dx * dy.clone()).mul_scalar(mueller_brown::B[j])
                + dy.square().mul_scalar(mueller_brown::C[j]);
            exponent.exp().mul_scalar(mueller_brown::AMP[j])
        };
        let energy = term(0) + term(1) + term(2) + term(3);
        sum_rows(energy).mul_scalar(self.k * self.temperature.recip())
    }
}

/// DW4, S = E/T with E = sum_(i<j) [a u_ij + b u_ij^2 + c u_ij^4], u_ij = d_ij - d0 and
/// d_ij = sqrt(max(r_ij^2, R2_FLOOR d0^2)) (`boltzflow_targets::molecular::Dw4`).
///
/// # Shapes
/// `x`: `[batch, 2 n]`, particle i at columns 2i, 2i + 1.
pub struct Dw4Action<B: Backend> {
    pairs: PairTable<B>,
    n: usize,
    a: f64,
    b: f64,
    c: f64,
    d0: f64,
    temperature: f64,
}

impl<B: Backend> Dw4Action<B> {
    /// The action of a DW4 spec (validated here), pair table on `device`.
    pub fn new(spec: &Dw4Spec, device: &B::Device) -> Result<Self> {
        spec.validate()?;
        let n = spec.n_particles as usize;
        Ok(Self {
            pairs: PairTable::upper(n, 0, device).ok_or_else(|| too_few("n_particles", n))?,
            n,
            a: spec.a,
            b: spec.b,
            c: spec.c,
            d0: spec.d0,
            temperature: spec.temperature,
        })
    }
}

impl<B: Backend> TensorAction<B> for Dw4Action<B> {
    fn action(&self, x: Tensor<B, 2>) -> Tensor<B, 1> {
        let batch = x.dims()[0];
        let r2 = self.pairs.squared_distances(x.reshape([batch, self.n, 2]));
        let d = r2.clamp_min(R2_FLOOR * self.d0 * self.d0).sqrt();
        let u = d.sub_scalar(self.d0);
        let u2 = u.clone().square();
        let pair_energy =
            u.mul_scalar(self.a) + u2.clone().mul_scalar(self.b) + u2.square().mul_scalar(self.c);
        sum_rows(pair_energy).mul_scalar(self.temperature.recip())
    }
}

/// Lennard-Jones cluster in 3D with a harmonic restraint to the centre of mass, S = E/T with
///
/// ```text
/// E = eps sum_(i<j) [q_ij^6 - 2 q_ij^3] + (k/2) sum_i |x_i - xbar|^2,
/// q_ij = rm^2 / max(r_ij^2, R2_FLOOR rm^2),  xbar = (1/n) sum_i x_i
/// ```
///
/// (`boltzflow_targets::molecular::Lj`).
///
/// # Shapes
/// `x`: `[batch, 3 n]`, particle i at columns 3i .. 3i + 3.
pub struct LjAction<B: Backend> {
    pairs: PairTable<B>,
    n: usize,
    eps: f64,
    rm: f64,
    k: f64,
    temperature: f64,
}

impl<B: Backend> LjAction<B> {
    /// The action of a Lennard-Jones spec (validated here), pair table on `device`.
    pub fn new(spec: &LjSpec, device: &B::Device) -> Result<Self> {
        spec.validate()?;
        let n = spec.n_particles as usize;
        Ok(Self {
            pairs: PairTable::upper(n, 0, device).ok_or_else(|| too_few("n_particles", n))?,
            n,
            eps: spec.eps,
            rm: spec.rm,
            k: spec.k_restraint,
            temperature: spec.temperature,
        })
    }
}

impl<B: Backend> TensorAction<B> for LjAction<B> {
    fn action(&self, x: Tensor<B, 2>) -> Tensor<B, 1> {
        let batch = x.dims()[0];
        let particles = x.reshape([batch, self.n, 3]);
        let rm2 = self.rm * self.rm;
        let r2 = self.pairs.squared_distances(particles.clone());
        let r2 = r2.clamp_min(R2_FLOOR * rm2);
        let q = r2.full_like(rm2) / r2;
        let q3 = q.clone() * q.clone() * q;
        let pair = sum_rows(q3.clone().square() - q3.mul_scalar(2.0)).mul_scalar(self.eps);
        // xbar: [batch, 1, 3], broadcast over the particles
        let centre = particles.clone().mean_dim(1);
        let deviation = (particles - centre).reshape([batch, 3 * self.n]);
        let restraint = sum_rows(deviation.square()).mul_scalar(0.5 * self.k);
        (pair + restraint).mul_scalar(self.temperature.recip())
    }
}

/// Solvated bistable dimer, S = E/T with E = E_bond + E_restraint + E_box + E_repulsion
/// (`boltzflow_targets::molecular::Dimer`):
///
/// ```text
/// E_bond      = c s - a s^2 + b s^4,  s = 2 (d - d0),  d = sqrt(max(r_12^2, R2_FLOOR d0^2)),
/// E_restraint = k_d (x_1x + x_2x)^2 + k_d (x_1y^2 + x_2y^2),
/// E_box       = k_box sum_(all coordinates u) max(|u| - L, 0)^2,
/// E_repulsion = eps sum_(i<j, (i,j) != (1,2)) q_ij^6,  q_ij = sigma^2 / max(r_ij^2, R2_FLOOR sigma^2).
/// ```
///
/// # Shapes
/// `x`: `[batch, 2 n]`, particle i at columns 2i, 2i + 1, the dimer particles first.
pub struct DimerAction<B: Backend> {
    /// Every pair but the dimer pair; `None` without solvent.
    solvent_pairs: Option<PairTable<B>>,
    n: usize,
    spec: DimerSpec,
}

impl<B: Backend> DimerAction<B> {
    /// The action of a dimer spec (validated here), pair table on `device`.
    pub fn new(spec: &DimerSpec, device: &B::Device) -> Result<Self> {
        spec.validate()?;
        let n = 2 + spec.n_solvent as usize;
        Ok(Self {
            solvent_pairs: PairTable::upper(n, 2, device),
            n,
            spec: spec.clone(),
        })
    }
}

impl<B: Backend> TensorAction<B> for DimerAction<B> {
    fn action(&self, x: Tensor<B, 2>) -> Tensor<B, 1> {
        let p = &self.spec;
        let batch = x.dims()[0];
        let (x1, y1, x2, y2) = (column(&x, 0), column(&x, 1), column(&x, 2), column(&x, 3));
        // bond
        let r2 = (x1.clone() - x2.clone()).square() + (y1.clone() - y2.clone()).square();
        let d = r2.clamp_min(R2_FLOOR * p.d0 * p.d0).sqrt();
        let s = d.sub_scalar(p.d0).mul_scalar(2.0);
        let s2 = s.clone().square();
        let bond = s.mul_scalar(p.c) - s2.clone().mul_scalar(p.a) + s2.square().mul_scalar(p.b);
        // restraint
        let restraint = ((x1 + x2).square() + y1.square() + y2.square()).mul_scalar(p.k_dimer);
        let mut energy = sum_rows(bond + restraint);
        // walls
        let excess = x.clone().abs().sub_scalar(p.box_half).clamp_min(0.0);
        energy = energy + sum_rows(excess.square()).mul_scalar(p.k_box);
        // repulsion
        if let Some(pairs) = &self.solvent_pairs {
            let r2 = pairs.squared_distances(x.reshape([batch, self.n, 2]));
            let sigma2 = p.sigma * p.sigma;
            let r2 = r2.clamp_min(R2_FLOOR * sigma2);
            let q = r2.full_like(sigma2) / r2;
            let q3 = q.clone() * q.clone() * q;
            energy = energy + sum_rows(q3.square()).mul_scalar(p.eps);
        }
        energy.mul_scalar(p.temperature.recip())
    }
}

/// The error for a particle count with no pair (unreachable after validation).
fn too_few(name: &'static str, n: usize) -> boltzflow_targets::TargetError {
    boltzflow_targets::TargetError::InvalidParameter {
        name,
        value: n.to_string(),
        fix: "give at least 2 particles",
    }
}
