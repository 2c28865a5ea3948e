//! Scalar phi^4 theory on a periodic d-dimensional lattice (PHYSICS.md conventions).
//!
//! ```text
//! S(phi) = sum_x [ -2 sum_mu phi(x) phi(x+mu) + (2d + m2) phi(x)^2 + lam phi(x)^4 ].
//! ```
//!
//! Hopping form, with phi = sqrt(kappa) varphi:
//!
//! ```text
//! S = sum_x [ -2 kappa sum_mu varphi(x) varphi(x+mu) + (1 - 2 lam_h) varphi^2 + lam_h varphi^4 ],
//! ```
//!
//! so that m2 = (1 - 2 lam_h)/kappa - 2d and lam = lam_h / kappa^2.
//!
//! # Local updates
//! Changing the single site x from phi_x to phi_x' changes the action by
//! `local_action(phi_x', n_x) - local_action(phi_x, n_x)` ([`Phi4::local_action`]), where
//! n_x = sum_mu [phi(x+mu) + phi(x-mu)] is the neighbour sum ([`Phi4::neighbour_sum`]) and
//!
//! ```text
//! local_action(phi, n) = -2 phi n + (2d + m2) phi^2 + lam phi^4.
//! ```
//!
//! Sites of one checkerboard parity ([`crate::geometry::Lattice::parity`]) have no neighbours
//! in common, so they can be updated independently.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::exact::{fourier, free_field_ln_z, free_field_propagator};
use crate::geometry::Lattice;
use crate::{Derived, FnObservable, Observable, Result, TargetError, VectorObservable};

/// Parameters of phi^4 theory: give either (`m2`, `lam`) or the hopping form (`kappa`, `lam_h`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Phi4Spec {
    /// Lattice extents `[L0, L1, ...]`; the dimension d is its length.
    pub shape: Vec<i64>,
    /// Bare mass squared.
    pub m2: Option<f64>,
    /// Quartic coupling.
    pub lam: Option<f64>,
    /// Hopping parameter.
    pub kappa: Option<f64>,
    /// Quartic coupling in the hopping form.
    pub lam_h: Option<f64>,
}

fn invalid(name: &'static str, value: impl ToString, fix: &'static str) -> TargetError {
    TargetError::InvalidParameter {
        name,
        value: value.to_string(),
        fix,
    }
}

fn missing(name: &'static str, fix: &'static str) -> TargetError {
    invalid(name, "missing", fix)
}

impl Phi4Spec {
    /// Checks the parameters: exactly one complete pair (m2, lam) or (kappa, lam_h), finite
    /// values, lam >= 0, kappa > 0, a valid shape, and m2 > 0 when lam = 0 (otherwise
    /// exp(-S) is not normalisable).
    pub fn validate(&self) -> Result<()> {
        let direct = self.m2.is_some() || self.lam.is_some();
        let hopping = self.kappa.is_some() || self.lam_h.is_some();
        match (direct, hopping) {
            (true, true) => {
                return Err(invalid(
                    "kappa/lam_h",
                    "given together with m2/lam",
                    "give either (m2, lam) or (kappa, lam_h), not both",
                ));
            }
            (false, false) => {
                return Err(missing(
                    "m2",
                    "give the couplings as m2 and lam (or kappa and lam_h)",
                ));
            }
            (true, false) => {
                if self.m2.is_none() {
                    return Err(missing("m2", "give m2 together with lam"));
                }
                if self.lam.is_none() {
                    return Err(missing("lam", "give lam together with m2"));
                }
            }
            (false, true) => {
                if self.kappa.is_none() {
                    return Err(missing("kappa", "give kappa together with lam_h"));
                }
                if self.lam_h.is_none() {
                    return Err(missing("lam_h", "give lam_h together with kappa"));
                }
            }
        }
        let finite = [
            ("m2", self.m2),
            ("lam", self.lam),
            ("kappa", self.kappa),
            ("lam_h", self.lam_h),
        ];
        for (name, value) in finite {
            if let Some(v) = value
                && !v.is_finite()
            {
                return Err(invalid(name, v, "couplings must be finite numbers"));
            }
        }
        if let Some(lam) = self.lam
            && lam < 0.0
        {
            return Err(invalid(
                "lam",
                lam,
                "lam must be >= 0 (the action is unbounded below)",
            ));
        }
        if let Some(lam_h) = self.lam_h
            && lam_h < 0.0
        {
            return Err(invalid(
                "lam_h",
                lam_h,
                "lam_h must be >= 0 (the action is unbounded below)",
            ));
        }
        if let Some(kappa) = self.kappa
            && kappa <= 0.0
        {
            return Err(invalid("kappa", kappa, "kappa must be > 0"));
        }
        Lattice::new(&self.shape)?;
        let (m2, lam) = self.couplings();
        if lam == 0.0 && m2 <= 0.0 {
            return Err(if self.kappa.is_some() {
                invalid(
                    "kappa",
                    self.kappa.unwrap_or(f64::NAN),
                    "with lam_h = 0 the free field needs kappa < 1/(2d) (m2 > 0)",
                )
            } else {
                invalid(
                    "m2",
                    m2,
                    "with lam = 0 the free field needs m2 > 0 (exp(-S) is not normalisable)",
                )
            });
        }
        Ok(())
    }

    /// The couplings (m2, lam), converted from the hopping form where that was given:
    /// m2 = (1 - 2 lam_h)/kappa - 2d, lam = lam_h/kappa^2. NaN where the spec is incomplete
    /// (see [`Phi4Spec::validate`]).
    pub fn couplings(&self) -> (f64, f64) {
        match (self.m2, self.lam, self.kappa, self.lam_h) {
            (Some(m2), Some(lam), _, _) => (m2, lam),
            (_, _, Some(kappa), Some(lam_h)) => {
                let d = self.shape.len() as f64;
                (
                    (1.0 - 2.0 * lam_h) / kappa - 2.0 * d,
                    lam_h / (kappa * kappa),
                )
            }
            _ => (f64::NAN, f64::NAN),
        }
    }

    /// The hopping form (kappa, lam_h) of the couplings, the positive root of
    /// 2 lam kappa^2 + (2d + m2) kappa - 1 = 0 and lam_h = lam kappa^2; `None` when no
    /// kappa > 0 exists (lam = 0 and 2d + m2 <= 0) or the spec is incomplete.
    pub fn hopping(&self) -> Option<(f64, f64)> {
        if let (Some(kappa), Some(lam_h)) = (self.kappa, self.lam_h) {
            return Some((kappa, lam_h));
        }
        let (m2, lam) = self.couplings();
        let b = 2.0 * self.shape.len() as f64 + m2;
        // Stable root 2 / (b + sqrt(b^2 + 8 lam)) of the quadratic.
        let denominator = b + (b * b + 8.0 * lam).sqrt();
        (denominator > 0.0 && denominator.is_finite()).then(|| {
            let kappa = 2.0 / denominator;
            (kappa, lam * kappa * kappa)
        })
    }
}

/// phi^4 target: the field phi(x) on a periodic lattice, configuration shape `[L0, L1, ...]`.
pub struct Phi4 {
    lattice: Arc<Lattice>,
    m2: f64,
    lam: f64,
    /// 2d + m2, the coefficient of phi^2.
    mass_term: f64,
}

impl Phi4 {
    /// Builds the target from a spec (validated here again).
    pub fn new(spec: &Phi4Spec) -> Result<Self> {
        spec.validate()?;
        let (m2, lam) = spec.couplings();
        let lattice = Lattice::new(&spec.shape)?;
        let mass_term = 2.0 * lattice.ndim() as f64 + m2;
        Ok(Self {
            lattice: Arc::new(lattice),
            m2,
            lam,
            mass_term,
        })
    }

    /// The lattice (shape, neighbour tables, parity).
    pub fn lattice(&self) -> &Lattice {
        &self.lattice
    }

    /// Bare mass squared m2.
    pub fn m2(&self) -> f64 {
        self.m2
    }

    /// Quartic coupling lam.
    pub fn lam(&self) -> f64 {
        self.lam
    }

    /// n_x = sum_mu [phi(x+mu) + phi(x-mu)], the neighbour sum of site `site`.
    #[inline]
    pub fn neighbour_sum(&self, phi: &[f64], site: usize) -> f64 {
        let lat = &*self.lattice;
        (0..lat.ndim())
            .map(|mu| phi[lat.fwd(site, mu)] + phi[lat.bwd(site, mu)])
            .sum()
    }

    /// The part of S that depends on one site's value phi with neighbour sum n:
    /// -2 phi n + (2d + m2) phi^2 + lam phi^4. A single-site change phi -> phi' changes S by
    /// `local_action(phi', n) - local_action(phi, n)`.
    #[inline]
    pub fn local_action(&self, phi: f64, neighbour_sum: f64) -> f64 {
        let phi2 = phi * phi;
        -2.0 * phi * neighbour_sum + self.mass_term * phi2 + self.lam * phi2 * phi2
    }
}

/// S(phi) with one pass over the forward neighbours.
fn action(lat: &Lattice, m2: f64, lam: f64, phi: &[f64]) -> f64 {
    debug_assert_eq!(phi.len(), lat.volume());
    let d = lat.ndim();
    let mass_term = 2.0 * d as f64 + m2;
    let mut s = 0.0;
    for (x, &p) in phi.iter().enumerate() {
        let mut hop = 0.0;
        for mu in 0..d {
            hop += phi[lat.fwd(x, mu)];
        }
        let p2 = p * p;
        s += -2.0 * p * hop + p2 * (mass_term + lam * p2);
    }
    s
}

/// M = sum_x phi(x).
fn magnetisation(phi: &[f64]) -> f64 {
    phi.iter().sum()
}

/// (1/V) sum_y phi(y) phi(y + mu) averaged over `directions`.
fn nearest_neighbour_correlation(lat: &Lattice, directions: usize, phi: &[f64]) -> f64 {
    let mut sum = 0.0;
    for (y, &p) in phi.iter().enumerate() {
        for mu in 0..directions {
            sum += p * phi[lat.fwd(y, mu)];
        }
    }
    sum / (lat.volume() * directions) as f64
}

/// Directions averaged in `g_1`: all of them on a hypercubic lattice (where G is symmetric),
/// direction 0 only otherwise.
fn g1_directions(shape: &[usize]) -> usize {
    if shape.iter().all(|&l| l == shape[0]) {
        shape.len()
    } else {
        1
    }
}

impl crate::Target for Phi4 {
    fn theory(&self) -> &'static str {
        "phi4"
    }

    fn shape(&self) -> Vec<usize> {
        self.lattice.shape().to_vec()
    }

    fn action(&self, x: &[f64]) -> f64 {
        action(&self.lattice, self.m2, self.lam, x)
    }

    /// Force F(x) = -dS/dphi(x) = 2 n_x - 2 (2d + m2) phi(x) - 4 lam phi(x)^3.
    fn force(&self, x: &[f64], force: &mut [f64]) -> f64 {
        let lat = &*self.lattice;
        debug_assert_eq!(x.len(), lat.volume());
        let d = lat.ndim();
        let mass_term = self.mass_term;
        let mut s = 0.0;
        for (i, (&p, f)) in x.iter().zip(force.iter_mut()).enumerate() {
            let (mut fwd, mut bwd) = (0.0, 0.0);
            for mu in 0..d {
                fwd += x[lat.fwd(i, mu)];
                bwd += x[lat.bwd(i, mu)];
            }
            let p2 = p * p;
            s += -2.0 * p * fwd + p2 * (mass_term + self.lam * p2);
            *f = 2.0 * (fwd + bwd) - p * (2.0 * mass_term + 4.0 * self.lam * p2);
        }
        s
    }

    /// `action` (S), `m` (M/V), `abs_m` (|M|/V), `chi2` (M^2/V), `m4` (M^4/V^2),
    /// `g_0` (G(0)), `g_1` ((1/V) sum_y phi(y) phi(y + e_mu), averaged over all directions
    /// on a hypercubic lattice, direction 0 only otherwise), `action_density` (S/V).
    fn observables(&self) -> Vec<Box<dyn Observable>> {
        let v = self.lattice.volume() as f64;
        let (m2, lam) = (self.m2, self.lam);
        let (lat_s, lat_sd, lat_g1) = (
            self.lattice.clone(),
            self.lattice.clone(),
            self.lattice.clone(),
        );
        let directions = g1_directions(self.lattice.shape());
        vec![
            FnObservable::boxed("action", move |x| action(&lat_s, m2, lam, x)),
            FnObservable::boxed("m", move |x| magnetisation(x) / v),
            FnObservable::boxed("abs_m", move |x| magnetisation(x).abs() / v),
            FnObservable::boxed("chi2", move |x| magnetisation(x).powi(2) / v),
            FnObservable::boxed("m4", move |x| magnetisation(x).powi(4) / (v * v)),
            FnObservable::boxed("g_0", move |x| x.iter().map(|p| p * p).sum::<f64>() / v),
            FnObservable::boxed("g_1", move |x| {
                nearest_neighbour_correlation(&lat_g1, directions, x)
            }),
            FnObservable::boxed("action_density", move |x| action(&lat_sd, m2, lam, x) / v),
        ]
    }

    /// `g`: G(x) = (1/V) sum_y phi(y) phi(y+x) for every x (length V, row-major);
    /// `c_t`: C(t) = (1/V) sum_t0 S(t0) S(t0+t) along direction 0 (length L0), S(t) the
    /// sum of phi over time slice t, so that sum_t C(t) = M^2/V.
    fn vector_observables(&self) -> Vec<Box<dyn VectorObservable>> {
        let shape = self.lattice.shape().to_vec();
        vec![
            Box::new(TwoPointFunction {
                shape: shape.clone(),
            }),
            Box::new(ZeroMomentumCorrelator { shape }),
        ]
    }

    /// `binder = 1 - <m4> / (3 <chi2>^2) = 1 - <M^4> / (3 <M^2>^2)`.
    fn derived(&self) -> Vec<Derived> {
        vec![Derived {
            name: "binder",
            inputs: vec!["m4", "chi2"],
            f: |means| 1.0 - means[0] / (3.0 * means[1] * means[1]),
        }]
    }

    /// Free field (lam = 0) only: `g_0`, `g_1`, `chi2` = 1/(2 m2), `m4` = 3 chi2^2, `m` = 0,
    /// `abs_m` = sqrt(2 V chi2 / pi) / V (M is Gaussian with variance V chi2),
    /// `action` = V/2 (equipartition for a quadratic action), `action_density` = 1/2,
    /// `binder` = 0, `ln_z` from the momentum sum.
    fn exact(&self) -> BTreeMap<String, f64> {
        let mut exact = BTreeMap::new();
        if self.lam != 0.0 || self.m2 <= 0.0 {
            return exact;
        }
        let shape = self.lattice.shape();
        let v = self.lattice.volume() as f64;
        let g = free_field_propagator(shape, self.m2);
        let directions = g1_directions(shape);
        let g_1 = (0..directions)
            .map(|mu| g[shape[mu + 1..].iter().product::<usize>()])
            .sum::<f64>()
            / directions as f64;
        let chi2 = 1.0 / (2.0 * self.m2);
        let values = [
            ("g_0", g[0]),
            ("g_1", g_1),
            ("chi2", chi2),
            ("m4", 3.0 * chi2 * chi2),
            ("m", 0.0),
            ("abs_m", (2.0 * v * chi2 / std::f64::consts::PI).sqrt() / v),
            ("action", v / 2.0),
            ("action_density", 0.5),
            ("binder", 0.0),
            ("ln_z", free_field_ln_z(shape, self.m2)),
        ];
        for (name, value) in values {
            exact.insert(name.to_string(), value);
        }
        exact
    }

    /// Free field only: `g` = G(x) for every x, and `c_t` = C(t) = sum over the slice x0 = t
    /// of G(x).
    fn exact_vectors(&self) -> BTreeMap<String, Vec<f64>> {
        let mut exact = BTreeMap::new();
        if self.lam != 0.0 || self.m2 <= 0.0 {
            return exact;
        }
        let shape = self.lattice.shape();
        let g = free_field_propagator(shape, self.m2);
        let slice = self.lattice.volume() / shape[0];
        let c_t = g.chunks_exact(slice).map(|s| s.iter().sum()).collect();
        exact.insert("g".to_string(), g);
        exact.insert("c_t".to_string(), c_t);
        exact
    }
}

/// G(x) = (1/V) sum_y phi(y) phi(y+x), computed through lattice Fourier transforms.
struct TwoPointFunction {
    shape: Vec<usize>,
}

impl VectorObservable for TwoPointFunction {
    fn name(&self) -> &str {
        "g"
    }
    fn len(&self) -> usize {
        self.shape.iter().product()
    }
    fn measure(&self, x: &[f64], out: &mut [f64]) {
        fourier::autocorrelation(&self.shape, x, out);
    }
}

/// C(t) = (1/V) sum_t0 S(t0) S(t0 + t), S(t) = sum of phi over the slice x_0 = t.
struct ZeroMomentumCorrelator {
    shape: Vec<usize>,
}

impl VectorObservable for ZeroMomentumCorrelator {
    fn name(&self) -> &str {
        "c_t"
    }
    fn len(&self) -> usize {
        self.shape[0]
    }
    fn measure(&self, x: &[f64], out: &mut [f64]) {
        let l0 = self.shape[0];
        // Direction 0 is slowest: slice t is one contiguous block.
        let slices: Vec<f64> = x.chunks(x.len() / l0).map(|s| s.iter().sum()).collect();
        let v = x.len() as f64;
        for (t, c) in out.iter_mut().enumerate() {
            *c = (0..l0)
                .map(|t0| slices[t0] * slices[(t0 + t) % l0])
                .sum::<f64>()
                / v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exact::dense;
    use crate::{LatticeFile, Target};
    use proptest::prelude::*;
    use rand::{RngExt, SeedableRng};
    use rand_xoshiro::Xoshiro256PlusPlus;

    fn spec(shape: &[i64], m2: f64, lam: f64) -> Phi4Spec {
        Phi4Spec {
            shape: shape.to_vec(),
            m2: Some(m2),
            lam: Some(lam),
            kappa: None,
            lam_h: None,
        }
    }

    fn hopping_spec(shape: &[i64], kappa: f64, lam_h: f64) -> Phi4Spec {
        Phi4Spec {
            shape: shape.to_vec(),
            m2: None,
            lam: None,
            kappa: Some(kappa),
            lam_h: Some(lam_h),
        }
    }

    fn random_field(n: usize, seed: u64, scale: f64) -> Vec<f64> {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        (0..n)
            .map(|_| scale * (2.0 * rng.random::<f64>() - 1.0))
            .collect()
    }

    fn shapes() -> impl Strategy<Value = Vec<i64>> {
        prop::collection::vec(2i64..6, 1..=3)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// -dS/dphi against central finite differences, every component.
        #[test]
        fn force_matches_finite_differences(
            shape in shapes(), m2 in -6.0..4.0f64, lam in 0.0..10.0f64, seed in any::<u64>(),
        ) {
            let target = Phi4::new(&spec(&shape, m2, lam)).unwrap();
            let mut phi = random_field(target.dim(), seed, 1.5);
            let mut force = vec![0.0; phi.len()];
            let s = target.force(&phi, &mut force);
            prop_assert!((s - target.action(&phi)).abs() < 1e-12 * (1.0 + s.abs()));
            let h = 1e-5;
            for i in 0..phi.len() {
                let p = phi[i];
                phi[i] = p + h;
                let up = target.action(&phi);
                phi[i] = p - h;
                let down = target.action(&phi);
                phi[i] = p;
                let numeric = -(up - down) / (2.0 * h);
                prop_assert!((numeric - force[i]).abs() < 1e-5 * (1.0 + force[i].abs()),
                    "site {i}: numeric {numeric} vs analytic {}", force[i]);
            }
        }

        /// The hopping-form action of varphi equals S(phi) at phi = sqrt(kappa) varphi.
        #[test]
        fn hopping_form_gives_identical_action(
            shape in shapes(), kappa in 0.02..0.6f64, lam_h in 0.001..3.0f64, seed in any::<u64>(),
        ) {
            let target = Phi4::new(&hopping_spec(&shape, kappa, lam_h)).unwrap();
            let lat = target.lattice();
            let varphi = random_field(target.dim(), seed, 2.0);
            let mut s_hop = 0.0;
            for x in 0..lat.volume() {
                let v = varphi[x];
                let hop: f64 = (0..lat.ndim()).map(|mu| varphi[lat.fwd(x, mu)]).sum();
                s_hop += -2.0 * kappa * v * hop + (1.0 - 2.0 * lam_h) * v * v + lam_h * v.powi(4);
            }
            let phi: Vec<f64> = varphi.iter().map(|v| kappa.sqrt() * v).collect();
            let s = target.action(&phi);
            prop_assert!((s - s_hop).abs() < 1e-11 * (1.0 + s_hop.abs()), "{s} vs {s_hop}");
        }

        /// A single-site change changes S by the difference of local actions.
        #[test]
        fn local_action_gives_single_site_change(
            shape in shapes(), m2 in -6.0..4.0f64, lam in 0.0..10.0f64, seed in any::<u64>(),
            site_frac in 0.0..1.0f64, new_value in -3.0..3.0f64,
        ) {
            let target = Phi4::new(&spec(&shape, m2, lam)).unwrap();
            let mut phi = random_field(target.dim(), seed, 1.5);
            let site = ((site_frac * phi.len() as f64) as usize).min(phi.len() - 1);
            let n = target.neighbour_sum(&phi, site);
            let predicted = target.local_action(new_value, n) - target.local_action(phi[site], n);
            let before = target.action(&phi);
            phi[site] = new_value;
            let change = target.action(&phi) - before;
            prop_assert!((change - predicted).abs() < 1e-10 * (1.0 + before.abs()));
        }
    }

    #[test]
    fn hopping_round_trip() {
        for (shape, m2, lam) in [
            (vec![8, 8], -4.0, 8.0),
            (vec![6], 0.5, 0.0),
            (vec![4, 4, 4], -1.0, 0.3),
        ] {
            let direct = spec(&shape, m2, lam);
            let (kappa, lam_h) = direct.hopping().unwrap();
            let (m2_back, lam_back) = hopping_spec(&shape, kappa, lam_h).couplings();
            assert!((m2_back - m2).abs() < 1e-12 && (lam_back - lam).abs() < 1e-12);
        }
        assert!(spec(&[4, 4], -5.0, 0.0).hopping().is_none());
    }

    /// Vector observables against the scalar ones on a random field: sum_x G(x) = M^2/V,
    /// G(0) = g_0, G(e_mu) gives g_1, C(t) = sum_(x_0 = t) G(x).
    #[test]
    fn vector_observables_agree_with_scalars() {
        for shape in [vec![4, 4], vec![3, 5], vec![2, 3, 4], vec![7]] {
            let target = Phi4::new(&spec(&shape, -1.0, 1.0)).unwrap();
            let phi = random_field(target.dim(), 7, 1.0);
            let scalars: BTreeMap<String, f64> = target
                .observables()
                .iter()
                .map(|o| (o.name().to_string(), o.measure(&phi)))
                .collect();
            let vectors: BTreeMap<String, Vec<f64>> = target
                .vector_observables()
                .iter()
                .map(|o| {
                    let mut out = vec![0.0; o.len()];
                    o.measure(&phi, &mut out);
                    (o.name().to_string(), out)
                })
                .collect();
            let (g, c_t) = (&vectors["g"], &vectors["c_t"]);
            let close = |a: f64, b: f64| (a - b).abs() < 1e-12 * (1.0 + b.abs());
            assert!(close(g.iter().sum(), scalars["chi2"]));
            assert!(close(c_t.iter().sum(), scalars["chi2"]));
            assert!(close(g[0], scalars["g_0"]));
            let lat = target.lattice();
            let dirs = g1_directions(lat.shape());
            let g1: f64 = (0..dirs).map(|mu| g[lat.fwd(0, mu)]).sum::<f64>() / dirs as f64;
            assert!(close(g1, scalars["g_1"]));
            for (t, &c) in c_t.iter().enumerate() {
                let slice: f64 = (0..lat.volume())
                    .filter(|&x| lat.coords(x)[0] == t)
                    .map(|x| g[x])
                    .sum();
                assert!(close(c, slice), "{shape:?} t={t}");
            }
            let s = target.action(&phi);
            assert!(close(scalars["action"], s));
            assert!(close(scalars["action_density"], s / lat.volume() as f64));
        }
    }

    /// Free-field exact values against independent Gaussian draws phi = L^-T z with
    /// L L^T = 2A (so Cov(phi) = (2A)^-1): every exact observable within 4 sigma.
    #[test]
    fn free_field_exact_values_match_gaussian_draws() {
        for (shape, m2, seed) in [(vec![4, 3], 0.5, 11u64), (vec![3, 3], 0.2, 12)] {
            let target = Phi4::new(&spec(&shape, m2, 0.0)).unwrap();
            let lat = target.lattice();
            let v = lat.volume();
            let two_a: Vec<f64> = dense::free_field_matrix(lat, m2)
                .iter()
                .map(|a| 2.0 * a)
                .collect();
            let l = dense::cholesky(&two_a, v);
            let observables = target.observables();
            let exact = target.exact();
            let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
            let draws = 20_000;
            let mut sums = vec![(0.0, 0.0); observables.len()];
            let mut phi = vec![0.0; v];
            for _ in 0..draws {
                let z: Vec<f64> = (0..v).map(|_| normal(&mut rng)).collect();
                for i in (0..v).rev() {
                    let s: f64 = (i + 1..v).map(|k| l[k * v + i] * phi[k]).sum();
                    phi[i] = (z[i] - s) / l[i * v + i];
                }
                for (o, (s1, s2)) in observables.iter().zip(sums.iter_mut()) {
                    let value = o.measure(&phi);
                    *s1 += value;
                    *s2 += value * value;
                }
            }
            let mut checked = 0;
            for (o, (s1, s2)) in observables.iter().zip(&sums) {
                let n = draws as f64;
                let mean = s1 / n;
                let sigma = ((s2 / n - mean * mean) / (n - 1.0)).sqrt();
                let expected = exact[o.name()];
                assert!(
                    (mean - expected).abs() < 4.0 * sigma,
                    "{shape:?} {}: {mean} +- {sigma} vs exact {expected}",
                    o.name()
                );
                checked += 1;
            }
            assert_eq!(checked, 8);
        }
    }

    fn normal(rng: &mut Xoshiro256PlusPlus) -> f64 {
        // Box-Muller; 1 - u lies in (0, 1].
        let (u, w): (f64, f64) = (rng.random(), rng.random());
        (-2.0 * (1.0 - u).ln()).sqrt() * (std::f64::consts::TAU * w).cos()
    }

    #[test]
    fn exact_values_only_for_the_free_field() {
        assert!(
            Phi4::new(&spec(&[4, 4], -4.0, 8.0))
                .unwrap()
                .exact()
                .is_empty()
        );
        let free = Phi4::new(&spec(&[4, 4], 0.5, 0.0)).unwrap().exact();
        assert!((free["chi2"] - 1.0).abs() < 1e-15);
        assert!((free["action"] - 8.0).abs() < 1e-15);
    }

    fn error_message(spec: &Phi4Spec) -> String {
        match Phi4::new(spec) {
            Ok(_) => panic!("{spec:?} was accepted"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn bad_parameters_name_the_key() {
        let cases = [
            (spec(&[4, 4], 1.0, -0.5), "`lam`"),
            (spec(&[4, 1], 1.0, 0.5), "`shape`"),
            (spec(&[], 1.0, 0.5), "`shape`"),
            (spec(&[4, 4], -1.0, 0.0), "`m2`"),
            (spec(&[4, 4], f64::NAN, 1.0), "`m2`"),
            (hopping_spec(&[4, 4], -0.1, 0.5), "`kappa`"),
            (hopping_spec(&[4, 4], 0.1, -0.5), "`lam_h`"),
            (hopping_spec(&[4, 4], 0.3, 0.0), "`kappa`"),
            (
                Phi4Spec {
                    lam: None,
                    ..spec(&[4, 4], 1.0, 0.0)
                },
                "`lam`",
            ),
            (
                Phi4Spec {
                    m2: None,
                    ..spec(&[4, 4], 1.0, 0.0)
                },
                "`m2`",
            ),
            (
                Phi4Spec {
                    lam_h: None,
                    ..hopping_spec(&[4, 4], 0.1, 0.0)
                },
                "`lam_h`",
            ),
            (
                Phi4Spec {
                    kappa: None,
                    ..hopping_spec(&[4, 4], 0.1, 0.0)
                },
                "`kappa`",
            ),
            (
                Phi4Spec {
                    m2: None,
                    lam: None,
                    ..spec(&[4, 4], 1.0, 0.0)
                },
                "`m2`",
            ),
            (
                Phi4Spec {
                    kappa: Some(0.1),
                    ..spec(&[4, 4], 1.0, 0.0)
                },
                "kappa",
            ),
        ];
        for (bad, key) in cases {
            let message = error_message(&bad);
            assert!(
                message.contains(key),
                "{bad:?}: `{message}` does not name {key}"
            );
            assert!(!message.contains('\n'));
        }
    }

    #[test]
    fn lattice_file_parses_and_rejects_unknown_keys() {
        let good = "theory = \"phi4\"\nshape = [8, 4]\nkappa = 0.2\nlam_h = 0.5\n";
        let file = LatticeFile::parse(good).unwrap();
        let target = file.target.build().unwrap();
        assert_eq!(target.shape(), vec![8, 4]);
        let crate::TargetSpec::Phi4(s) = &file.target else {
            panic!("not phi4")
        };
        let (m2, lam) = s.couplings();
        assert!((m2 - (0.0 / 0.2 - 4.0)).abs() < 1e-12 && (lam - 12.5).abs() < 1e-12);

        let unknown = "theory = \"phi4\"\nshape = [8, 8]\nm2 = -4.0\nlam = 8.0\nmass = 1\n";
        let message = LatticeFile::parse(unknown).unwrap_err().to_string();
        assert!(message.contains("mass"), "{message}");

        let both = "theory = \"phi4\"\nshape = [8, 8]\nm2 = -4.0\nlam = 8.0\nkappa = 0.2\n";
        let message = LatticeFile::parse(both).unwrap_err().to_string();
        assert!(message.contains("kappa"), "{message}");
    }

    #[test]
    fn exact_vectors_are_consistent_with_the_scalars() {
        let target = Phi4::new(&spec(&[6, 4], 0.7, 0.0)).unwrap();
        let (scalars, vectors) = (target.exact(), target.exact_vectors());
        let (g, c_t) = (&vectors["g"], &vectors["c_t"]);
        assert_eq!((g.len(), c_t.len()), (24, 6));
        assert!((c_t.iter().sum::<f64>() - scalars["chi2"]).abs() < 1e-12);
        assert!((g[0] - scalars["g_0"]).abs() < 1e-14);
        // C(t) = C(L0 - t) on the periodic lattice.
        for t in 1..6 {
            assert!((c_t[t] - c_t[6 - t]).abs() < 1e-14);
        }
        assert!(
            Phi4::new(&spec(&[6, 4], -4.0, 8.0))
                .unwrap()
                .exact_vectors()
                .is_empty()
        );
    }
}
