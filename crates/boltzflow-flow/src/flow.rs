//! [`AffineFlow`]: a stack of checkerboard affine coupling layers on a periodic 2D lattice,
//! mapping prior noise z ~ N(0, 1)^V to field configurations x = f(z) with an exact log q(x).
//!
//! Layer l freezes the sites of checkerboard parity l mod 2 and transforms the others:
//!
//! ```text
//! (s, t) = NN_l(m),  m = x on frozen sites, 0 on active sites
//! y_active = x_active e^s + t,  y_frozen = x_frozen,  log|det J_l| = sum_active s
//! log q(x) = log N(z) - sum_l log|det J_l|,  log N(z) = -|z|^2/2 - (V/2) ln(2 pi)
//! ```
//!
//! # What it cannot represent exactly: Gaussian targets
//! The conditioners are convolutions and the prior is i.i.d., so a layer commutes with
//! translations by sublattice vectors. In sublattice momentum space (momenta p and p + (pi, pi)
//! paired into one 2x2 block per q) a *linear* layer is the triangular block [[e^s, T(q)],
//! [0, 1]] (or its transpose) with e^s independent of q, so every linear stack has
//! det M(q) = prod_l e^(s_l), the same for all q. A free-field target N(0, K^-1) needs
//! det C(q) = 1 / det K(q), proportional to 1 / ((phat^2 + m2)(8 - phat^2 + m2)) in 2D, which
//! varies over q by the factor (4 + m2)^2 / (m2 (8 + m2)). Minimising over the one free
//! constant gives a floor on KL(q || p) for any Gaussian flow of this family,
//! sum_q (c_q - 1 - ln c_q) with c_q = D sqrt(det K(q)) and D optimal: at L = 8 it is 0.244
//! (ESS/N <= 0.49) for m2 = 1 and 0.024 (ESS/N <= 0.95) for m2 = 4; at L = 4, m2 = 1 it is
//! 0.090 (ESS/N <= 0.72). Input-dependent s can trade Gaussianity for a q-dependent Jacobian,
//! which gets only slightly below that KL and gives heavy-tailed weights.
//!
//! # Shapes
//! Public methods take and return configurations as `[batch, L0, L1]` row-major (one
//! configuration after the other, sites as in `boltzflow_targets::geometry`) and per-sample
//! log-dets / log q as `[batch]` f64. Internally the batch is split into chunks of
//! [`CHUNK_LANES`] samples that run in parallel (rayon), each in its own workspace with the
//! batch-innermost layout of [`crate::conv`]; per-sample results do not depend on the chunking
//! or the number of threads.

use std::sync::Mutex;

use rand::{Rng, RngExt};
use rand_distr::StandardNormal;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::conditioner::{ConvNet, NetScratch, ParamGroup};
use crate::conv::Stencil;
use crate::coupling;
use crate::real::Real;
use crate::spline::Spline;
use crate::{FlowError, Result};

/// Scale of the output conv's initial weights (PyTorch's uniform init times this): every
/// layer starts close to the identity. On the tutorial point this raised the 5000-step MH
/// acceptance from 0.26-0.52 over seeds (PyTorch's init) to 0.50-0.56 (see the README).
pub const NEAR_IDENTITY: f64 = 0.01;

/// Samples per workspace chunk (the unit of parallelism and of the gradient reduction).
pub const CHUNK_LANES: usize = 32;

pub(crate) fn default_layers() -> usize {
    16
}
pub(crate) fn default_hidden() -> Vec<usize> {
    vec![8, 8]
}
pub(crate) fn default_kernel() -> usize {
    3
}

/// Architecture and initialisation of an [`AffineFlow`] (defaults: the tutorial model).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AffineFlowConfig {
    /// Lattice extents `[L0, L1]` (even, >= 2).
    pub shape: [usize; 2],
    /// Number of coupling layers (default 16).
    #[serde(default = "default_layers")]
    pub layers: usize,
    /// Hidden channels of the conditioner (default `[8, 8]`).
    #[serde(default = "default_hidden")]
    pub hidden: Vec<usize>,
    /// Odd kernel size K of every conv (default 3).
    #[serde(default = "default_kernel")]
    pub kernel: usize,
    /// Seed of the parameter initialisation.
    pub seed: u64,
    /// The coupling transform (default affine).
    #[serde(default, skip_serializing_if = "NativeCoupling::is_affine")]
    pub coupling: NativeCoupling,
    /// Make every layer odd, f(-z) = -f(z), so q(-x) = q(x) (phi^4's Z2 symmetry): the
    /// conditioner runs on m and -m and its outputs are symmetrised (affine: s even, t odd;
    /// spline: parameters averaged with their mirror image).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub z2: bool,
}

/// The coupling transform of the native engine.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum NativeCoupling {
    /// y = x e^s + t with (s, t) = tanh(net output).
    #[default]
    Affine,
    /// Rational-quadratic spline ([`crate::spline`]) with `bins` bins on [-bound, bound].
    Spline {
        /// K >= 2.
        bins: usize,
        /// B > 0.
        bound: f64,
    },
}

impl NativeCoupling {
    /// Whether this is the affine coupling (the serialisation default).
    pub fn is_affine(&self) -> bool {
        matches!(self, Self::Affine)
    }

    /// Conditioner outputs per site: 2 (s, t) or 3K - 1.
    pub fn params_per_site(&self) -> usize {
        match *self {
            Self::Affine => 2,
            Self::Spline { bins, .. } => 3 * bins - 1,
        }
    }

    /// Z2 symmetrisation of parameter plane `p`: the symmetrised plane is
    /// (a_p(m) + sign a_partner(-m)) / 2. Affine: s even (+, s), t odd (-, t); spline: the
    /// mirror image (bins and interior knots reversed, +).
    fn z2_partner(&self, p: usize) -> (usize, bool) {
        match *self {
            Self::Affine => (p, p == 0),
            Self::Spline { bins, .. } => {
                let k = bins;
                if p < k {
                    (k - 1 - p, true)
                } else if p < 2 * k {
                    (3 * k - 1 - p, true)
                } else {
                    (5 * k - 2 - p, true)
                }
            }
        }
    }

    /// Raw conditioner outputs of the identity transform: (s, t) = 0, or
    /// [`Spline::identity`].
    fn identity(&self) -> Vec<f64> {
        match self.spline() {
            None => vec![0.0; self.params_per_site()],
            Some(spline) => spline.identity(),
        }
    }

    fn spline(&self) -> Option<Spline> {
        match *self {
            Self::Affine => None,
            Self::Spline { bins, bound } => Some(Spline { bins, bound }),
        }
    }
}

impl AffineFlowConfig {
    /// The tutorial model (16 layers, hidden [8, 8], 3x3 kernels) on an `[L0, L1]` lattice.
    pub fn tutorial(shape: [usize; 2], seed: u64) -> Self {
        Self {
            shape,
            layers: default_layers(),
            hidden: default_hidden(),
            kernel: default_kernel(),
            seed,
            coupling: NativeCoupling::Affine,
            z2: false,
        }
    }

    /// Conditioner lanes per sample: 2 with Z2 symmetrisation (m and -m), else 1.
    fn copies(&self) -> usize {
        if self.z2 { 2 } else { 1 }
    }
}

/// Per-chunk buffers, reused across calls (layout `[channels, V, lanes]`).
#[derive(Debug)]
struct Workspace<T> {
    lanes: usize,
    /// Layer inputs: slot l holds the input of layer l (`[V, lanes]` each, `layers + 1` slots).
    fields: Vec<T>,
    /// Conditioner input of the current layer: m (`[V, lanes]`), or with Z2 m and -m
    /// (`[V, 2 lanes]`: lanes then their negatives).
    masked: Vec<T>,
    /// Conditioner activations per layer slot (`[c, V, lanes]`, or `2 lanes` with Z2).
    activations: Vec<Vec<Vec<T>>>,
    /// Z2-symmetrised transform parameters of the current layer (`[P, V, lanes]`).
    sym: Vec<T>,
    /// dL/d(conditioner output) over both copies (`[P, V, 2 lanes]`, Z2 only).
    grad_cond: Vec<T>,
    /// dL/d(conditioner input) over both copies (`[V, 2 lanes]`, Z2 only).
    grad_masked: Vec<T>,
    /// Accumulated log|det J| per sample.
    log_det: Vec<f64>,
    /// dL/dx of the current layer's output, then input.
    grad_field: Vec<T>,
    /// dL/d(s, t) of the current layer.
    grad_st: Vec<T>,
    scratch: NetScratch<T>,
    /// Parameter gradient of this chunk.
    grad_params: Vec<T>,
    /// One configuration in f64 and its force, for the target.
    x64: Vec<f64>,
    force: Vec<f64>,
}

impl<T: Real> Workspace<T> {
    fn new(flow: &AffineFlow<T>, lanes: usize) -> Self {
        let v = flow.stencil.volume();
        let layers = flow.config.layers;
        let cond_lanes = lanes * flow.config.copies();
        let p = flow.config.coupling.params_per_site();
        let z2_len = |len: usize| if flow.config.z2 { len } else { 0 };
        Self {
            lanes,
            fields: vec![T::ZERO; (layers + 1) * v * lanes],
            masked: vec![T::ZERO; v * cond_lanes],
            activations: (0..layers.max(1))
                .map(|_| flow.net.activations(v, cond_lanes))
                .collect(),
            sym: vec![T::ZERO; z2_len(p * v * lanes)],
            grad_cond: vec![T::ZERO; z2_len(p * v * cond_lanes)],
            grad_masked: vec![T::ZERO; z2_len(v * cond_lanes)],
            log_det: vec![0.0; lanes],
            grad_field: vec![T::ZERO; v * lanes],
            grad_st: vec![T::ZERO; p * v * lanes],
            scratch: NetScratch::new(&flow.net, v, cond_lanes),
            grad_params: vec![T::ZERO; flow.params.len()],
            x64: vec![0.0; v],
            force: vec![0.0; v],
        }
    }
}

/// Checkerboard affine coupling flow with conv-net conditioners, generic over the float type
/// of the network (`f32` for speed, `f64` for exact tests).
#[derive(Debug)]
pub struct AffineFlow<T: Real = f32> {
    config: AffineFlowConfig,
    stencil: Stencil,
    net: ConvNet,
    /// All parameters: layer l's net at `l * net.param_len()`.
    params: Vec<T>,
    groups: Vec<ParamGroup>,
    pool: Mutex<Vec<Workspace<T>>>,
}

impl<T: Real> Clone for AffineFlow<T> {
    fn clone(&self) -> Self {
        Self {
            config: self.config.clone(),
            stencil: self.stencil.clone(),
            net: self.net.clone(),
            params: self.params.clone(),
            groups: self.groups.clone(),
            pool: Mutex::new(Vec::new()),
        }
    }
}

impl<T: Real> AffineFlow<T> {
    /// Builds the flow with PyTorch's default conv initialisation, seeded:
    /// weights and biases ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = c_in K^2, except
    /// that each net's output conv starts near the identity transform (weights scaled by
    /// [`NEAR_IDENTITY`], biases at the identity's raw parameters).
    pub fn new(config: &AffineFlowConfig) -> Result<Self> {
        check_architecture(
            config.layers,
            &config.hidden,
            "use at least one coupling layer (2 to cover both checkerboard parities)",
        )?;
        if let NativeCoupling::Spline { bins, bound } = config.coupling {
            if !(2..=crate::spline::MAX_BINS).contains(&bins) {
                return Err(FlowError::InvalidConfig {
                    name: "bins",
                    value: bins.to_string(),
                    fix: "native splines take 2 to 64 bins, e.g. bins = 8 (the burn engine takes more)",
                });
            }
            if !(bound > 0.0 && bound.is_finite()) {
                return Err(FlowError::InvalidConfig {
                    name: "bound",
                    value: bound.to_string(),
                    fix: "the spline interval [-bound, bound] needs bound > 0, e.g. bound = 5.0",
                });
            }
        }
        let stencil = Stencil::new(config.shape, config.kernel)?;
        let outputs = config.coupling.params_per_site();
        let net = ConvNet::new(
            &config.hidden,
            stencil.taps(),
            outputs,
            config.coupling.is_affine(),
        );
        let (params, groups) = net.init_layers(
            config.layers,
            config.seed,
            NEAR_IDENTITY,
            &config.coupling.identity(),
        );
        Ok(Self {
            config: config.clone(),
            stencil,
            net,
            params,
            groups,
            pool: Mutex::new(Vec::new()),
        })
    }

    /// The configuration the flow was built from.
    pub fn config(&self) -> &AffineFlowConfig {
        &self.config
    }

    /// Number of sites V = L0 L1 (the dimension of a configuration).
    pub fn volume(&self) -> usize {
        self.stencil.volume()
    }

    /// The flat parameter vector (layer l's net at `l * params().len() / layers`).
    pub fn params(&self) -> &[T] {
        &self.params
    }

    /// Mutable parameters (the optimiser's view).
    pub fn params_mut(&mut self) -> &mut [T] {
        &mut self.params
    }

    /// Named ranges of the parameter vector (`layer{l}.conv{i}.weight` / `.bias`).
    pub fn param_groups(&self) -> &[ParamGroup] {
        &self.groups
    }

    /// The same flow with its parameters converted to another float type.
    pub fn cast<U: Real>(&self) -> AffineFlow<U> {
        AffineFlow {
            config: self.config.clone(),
            stencil: self.stencil.clone(),
            net: self.net.clone(),
            params: self
                .params
                .iter()
                .map(|p| U::from_f64(p.to_f64()))
                .collect(),
            groups: self.groups.clone(),
            pool: Mutex::new(Vec::new()),
        }
    }

    /// log N(z) = -|z|^2/2 - (V/2) ln(2 pi) of one configuration `[V]`.
    pub fn log_prior(z: &[T]) -> f64 {
        let sq: f64 = z.iter().map(|&v| v.to_f64() * v.to_f64()).sum();
        -0.5 * sq - 0.5 * z.len() as f64 * (2.0 * std::f64::consts::PI).ln()
    }

    /// Draws `batch` configurations x = f(z), z ~ N(0, 1)^V, with log q(x) = log N(z) -
    /// sum_l log|det J_l|. Returns x `[batch, L0, L1]` and log q `[batch]`; z is drawn from
    /// `rng` sample after sample, so the result does not depend on the number of threads.
    pub fn sample<R: Rng + ?Sized>(&self, batch: usize, rng: &mut R) -> (Vec<T>, Vec<f64>) {
        let z = self.draw_prior(batch, rng);
        let (x, log_det) = self.forward_unchecked(&z);
        let v = self.volume();
        let log_q = z
            .chunks_exact(v)
            .zip(&log_det)
            .map(|(z, ld)| Self::log_prior(z) - ld)
            .collect();
        (x, log_q)
    }

    /// `batch` prior draws z ~ N(0, 1)^V, `[batch, V]`.
    pub fn draw_prior<R: Rng + ?Sized>(&self, batch: usize, rng: &mut R) -> Vec<T> {
        (0..batch * self.volume())
            .map(|_| T::from_f64(rng.sample::<f64, _>(StandardNormal)))
            .collect()
    }

    /// x = f(z) and log|det df/dz| per sample. Shapes: z `[batch, V]` -> (`[batch, V]`,
    /// `[batch]`).
    pub fn forward(&self, z: &[T]) -> Result<(Vec<T>, Vec<f64>)> {
        self.check_len("z", z.len())?;
        Ok(self.forward_unchecked(z))
    }

    /// z = f^-1(x) and log|det df^-1/dx| per sample (= minus the forward log-det at z).
    /// Shapes: x `[batch, V]` -> (`[batch, V]`, `[batch]`).
    pub fn inverse(&self, x: &[T]) -> Result<(Vec<T>, Vec<f64>)> {
        self.check_len("x", x.len())?;
        Ok(self.run_chunks(x, |flow, ws, chunk| flow.chunk_inverse(ws, chunk)))
    }

    /// log q(x) = log N(f^-1(x)) + log|det df^-1/dx| per sample, `[batch, V]` -> `[batch]`.
    pub fn log_prob(&self, x: &[T]) -> Result<Vec<f64>> {
        let (z, log_det) = self.inverse(x)?;
        Ok(z.chunks_exact(self.volume())
            .zip(&log_det)
            .map(|(z, ld)| Self::log_prior(z) + ld)
            .collect())
    }

    fn check_len(&self, what: &'static str, len: usize) -> Result<()> {
        let volume = self.volume();
        if len.is_multiple_of(volume) {
            Ok(())
        } else {
            Err(FlowError::Shape { what, len, volume })
        }
    }

    fn forward_unchecked(&self, z: &[T]) -> (Vec<T>, Vec<f64>) {
        self.run_chunks(z, |flow, ws, chunk| {
            flow.chunk_forward(ws, chunk, false);
            flow.store_output(ws, false)
        })
    }

    /// Runs `f` on chunks of [`CHUNK_LANES`] configurations of `input` (`[batch, V]`) in
    /// parallel and concatenates the per-chunk (configurations, per-sample values).
    fn run_chunks<F>(&self, input: &[T], f: F) -> (Vec<T>, Vec<f64>)
    where
        F: Fn(&Self, &mut Workspace<T>, &[T]) -> (Vec<T>, Vec<f64>) + Sync,
    {
        concat_chunks(self.map_chunks(input, f), input.len())
    }

    /// Runs `f` on chunks of [`CHUNK_LANES`] configurations of `input` in parallel; results in
    /// chunk order (see [`map_chunks`]).
    fn map_chunks<R, F>(&self, input: &[T], f: F) -> Vec<R>
    where
        R: Send,
        F: Fn(&Self, &mut Workspace<T>, &[T]) -> R + Sync,
    {
        map_chunks(
            input,
            CHUNK_LANES * self.volume(),
            &self.pool,
            || Workspace::new(self, CHUNK_LANES),
            |ws, chunk| f(self, ws, chunk),
        )
    }

    /// Parameters of layer l's conditioner.
    fn layer_params<'a>(&self, params: &'a [T], layer: usize) -> &'a [T] {
        let n = self.net.param_len();
        &params[layer * n..(layer + 1) * n]
    }

    /// (frozen, active) sites of layer l.
    fn layer_sites(&self, layer: usize) -> (&[u32], &[u32]) {
        (
            self.stencil.parity_sites(layer % 2),
            self.stencil.parity_sites(layer % 2 + 1),
        )
    }

    /// Field slot of layer l's input and its activation slot; without `save` two field slots
    /// and one activation slot are reused (they stay in cache).
    fn slots(&self, layer: usize, save: bool) -> (usize, usize, usize) {
        if save {
            (layer, layer + 1, layer)
        } else {
            (layer % 2, (layer + 1) % 2, 0)
        }
    }

    /// Loads `chunk` (`[n, V]`) into field slot 0 of `ws` (`[V, n]`), setting `ws.lanes = n`.
    fn load(&self, ws: &mut Workspace<T>, chunk: &[T]) {
        let v = self.volume();
        let n = chunk.len() / v;
        ws.lanes = n;
        let field = &mut ws.fields[..v * n];
        for (b, config) in chunk.chunks_exact(v).enumerate() {
            for (s, &value) in config.iter().enumerate() {
                field[s * n + b] = value;
            }
        }
        ws.log_det[..n].fill(0.0);
    }

    /// Writes the conditioner input into `masked`: m = field on the frozen sites, 0 on the
    /// active sites (`[V, lanes]`); with Z2, m and -m (`[V, 2 lanes]`).
    fn mask(&self, field: &[T], frozen: &[u32], lanes: usize, masked: &mut [T]) {
        masked.fill(T::ZERO);
        let width = lanes * self.config.copies();
        for &site in frozen {
            let site = site as usize;
            let values = &field[site * lanes..(site + 1) * lanes];
            let row = &mut masked[site * width..(site + 1) * width];
            row[..lanes].copy_from_slice(values);
            if self.config.z2 {
                for (m, &v) in row[lanes..].iter_mut().zip(values) {
                    *m = -v;
                }
            }
        }
    }

    /// Z2 symmetrisation of the conditioner output `out` (`[P, V, 2 lanes]`) into `sym`
    /// (`[P, V, lanes]`) on the `active` sites.
    fn symmetrise(&self, out: &[T], lanes: usize, active: &[u32], sym: &mut [T]) {
        let v = self.volume();
        let (plane, plane2) = (v * lanes, v * 2 * lanes);
        let half = T::from_f64(0.5);
        for p in 0..self.config.coupling.params_per_site() {
            let (q, even) = self.config.coupling.z2_partner(p);
            for &site in active {
                let site = site as usize;
                let a = &out[p * plane2 + site * 2 * lanes..][..lanes];
                let b = &out[q * plane2 + site * 2 * lanes + lanes..][..lanes];
                let o = &mut sym[p * plane + site * lanes..][..lanes];
                for ((o, &a), &b) in o.iter_mut().zip(a).zip(b) {
                    *o = half * if even { a + b } else { a - b };
                }
            }
        }
    }

    /// Transpose of [`AffineFlow::symmetrise`]: spreads dL/d(sym) (`grad_sym`, `[P, V, lanes]`)
    /// over both conditioner copies (`grad_out`, `[P, V, 2 lanes]`).
    fn unsymmetrise(&self, grad_sym: &[T], lanes: usize, active: &[u32], grad_out: &mut [T]) {
        let v = self.volume();
        let (plane, plane2) = (v * lanes, v * 2 * lanes);
        let half = T::from_f64(0.5);
        grad_out.fill(T::ZERO);
        for p in 0..self.config.coupling.params_per_site() {
            let (q, even) = self.config.coupling.z2_partner(p);
            for &site in active {
                let site = site as usize;
                let g = &grad_sym[p * plane + site * lanes..][..lanes];
                for (b, &g) in g.iter().enumerate() {
                    let g = half * g;
                    grad_out[p * plane2 + site * 2 * lanes + b] += g;
                    grad_out[q * plane2 + site * 2 * lanes + lanes + b] +=
                        if even { g } else { -g };
                }
            }
        }
    }

    /// The shared first half of a layer in either direction: copies field slot `slot_in` to
    /// `slot_out`, runs layer `l`'s conditioner on the masked input (frozen sites only) with
    /// activations in `slot_act`, and returns the output slot with the transform's parameter
    /// planes (`[P, V, n]`: s and t for affine couplings, the 3K - 1 raw spline parameters
    /// otherwise; meaningful on the active sites) and the log-det accumulators.
    fn condition<'w>(
        &self,
        ws: &'w mut Workspace<T>,
        l: usize,
        slot_in: usize,
        slot_out: usize,
        slot_act: usize,
    ) -> (&'w mut [T], &'w [T], &'w mut [f64]) {
        let lanes = ws.lanes;
        let plane = self.volume() * lanes;
        let cond_plane = plane * self.config.copies();
        let (frozen, active) = self.layer_sites(l);
        let (input, output) = two_slots(&mut ws.fields, plane, slot_in, slot_out);
        output.copy_from_slice(input);
        self.mask(input, frozen, lanes, &mut ws.masked[..cond_plane]);
        let acts = &mut ws.activations[slot_act];
        self.net.forward(
            &self.stencil,
            self.layer_params(&self.params, l),
            &ws.masked[..cond_plane],
            lanes * self.config.copies(),
            active,
            acts_view(acts, &self.net, cond_plane),
        );
        let p = self.config.coupling.params_per_site();
        let planes = &acts[acts.len() - 1][..p * cond_plane];
        let planes = if self.config.z2 {
            self.symmetrise(planes, lanes, active, &mut ws.sym[..p * plane]);
            &ws.sym[..p * plane]
        } else {
            planes
        };
        (output, planes, &mut ws.log_det[..lanes])
    }

    /// Applies layer `l`'s transform (or its inverse) to the active sites of `output`.
    fn transform(
        &self,
        l: usize,
        output: &mut [T],
        planes: &[T],
        log_det: &mut [f64],
        n: usize,
        inverse: bool,
    ) {
        let plane = self.volume() * n;
        let active = self.layer_sites(l).1;
        match self.config.coupling.spline() {
            None => {
                let (s, t) = planes.split_at(plane);
                for &site in active {
                    let r = site as usize * n..(site as usize + 1) * n;
                    if inverse {
                        coupling::inverse(&mut output[r.clone()], &s[r.clone()], &t[r], log_det);
                    } else {
                        coupling::forward(&mut output[r.clone()], &s[r.clone()], &t[r], log_det);
                    }
                }
            }
            Some(spline) => {
                let mut raw = vec![0.0; spline.params()];
                for &site in active {
                    for b in 0..n {
                        let i = site as usize * n + b;
                        for (p, r) in raw.iter_mut().enumerate() {
                            *r = planes[p * plane + i].to_f64();
                        }
                        let v = output[i].to_f64();
                        let (y, ld) = if inverse {
                            spline.inverse(v, &raw)
                        } else {
                            spline.forward(v, &raw)
                        };
                        output[i] = T::from_f64(y);
                        log_det[b] += ld;
                    }
                }
            }
        }
    }

    /// Forward pass of one chunk through every layer (saving every layer's input and
    /// activations when `save`).
    fn chunk_forward(&self, ws: &mut Workspace<T>, chunk: &[T], save: bool) {
        self.load(ws, chunk);
        let n = ws.lanes;
        for l in 0..self.config.layers {
            let (slot_in, slot_out, slot_act) = self.slots(l, save);
            let (output, planes, log_det) = self.condition(ws, l, slot_in, slot_out, slot_act);
            self.transform(l, output, planes, log_det, n, false);
        }
    }

    /// Final field and log-dets of a chunk in `[n, V]` / `[n]` order.
    fn store_output(&self, ws: &Workspace<T>, save: bool) -> (Vec<T>, Vec<f64>) {
        let layers = self.config.layers;
        let slot = self.slots(layers - 1, save).1;
        (self.unload(ws, slot), ws.log_det[..ws.lanes].to_vec())
    }

    /// Field slot `slot` of `ws` as `[n, V]`.
    fn unload(&self, ws: &Workspace<T>, slot: usize) -> Vec<T> {
        let (v, n) = (self.volume(), ws.lanes);
        let field = &ws.fields[slot * v * n..(slot + 1) * v * n];
        let mut out = vec![T::ZERO; v * n];
        for (b, config) in out.chunks_exact_mut(v).enumerate() {
            for (s, value) in config.iter_mut().enumerate() {
                *value = field[s * n + b];
            }
        }
        out
    }

    /// Inverse pass of one chunk: layers in reverse, x = (y - t) e^(-s) on active sites.
    fn chunk_inverse(&self, ws: &mut Workspace<T>, chunk: &[T]) -> (Vec<T>, Vec<f64>) {
        self.load(ws, chunk);
        let n = ws.lanes;
        let mut slot = 0;
        for l in (0..self.config.layers).rev() {
            let (output, planes, log_det) = self.condition(ws, l, slot, 1 - slot, 0);
            self.transform(l, output, planes, log_det, n, true);
            slot = 1 - slot;
        }
        (self.unload(ws, slot), ws.log_det[..n].to_vec())
    }

    /// Backward pass of one chunk after `chunk_forward(.., save = true)`: on entry
    /// `ws.grad_field` holds dL/dx of the flow's output; `log_det_weight` is the coefficient
    /// c of sum_l log|det J_l| in L. Leaves dL/d params (of this chunk) in `ws.grad_params`
    /// and dL/dz in `ws.grad_field`.
    fn chunk_backward(&self, ws: &mut Workspace<T>, weights_t: &[T], log_det_weight: T) {
        let (v, n) = (self.volume(), ws.lanes);
        let plane = v * n;
        ws.grad_params.fill(T::ZERO);
        let np = self.net.param_len();
        let p = self.config.coupling.params_per_site();
        let copies = self.config.copies();
        let cond_plane = plane * copies;
        for l in (0..self.config.layers).rev() {
            let (frozen, active) = self.layer_sites(l);
            let input = &ws.fields[l * plane..(l + 1) * plane];
            let acts = &ws.activations[l];
            let planes = &acts[acts.len() - 1][..p * cond_plane];
            let planes = if self.config.z2 {
                self.symmetrise(planes, n, active, &mut ws.sym[..p * plane]);
                &ws.sym[..p * plane]
            } else {
                planes
            };
            let grad_st = &mut ws.grad_st[..p * plane];
            grad_st.fill(T::ZERO);
            let grad_field = &mut ws.grad_field[..plane];
            match self.config.coupling.spline() {
                None => {
                    let s = &planes[..plane];
                    let (grad_s, grad_t) = grad_st.split_at_mut(plane);
                    for &site in active {
                        let r = site as usize * n..(site as usize + 1) * n;
                        coupling::backward(
                            &mut grad_field[r.clone()],
                            &input[r.clone()],
                            &s[r.clone()],
                            log_det_weight,
                            &mut grad_s[r.clone()],
                            &mut grad_t[r],
                        );
                    }
                }
                Some(spline) => {
                    let c = log_det_weight.to_f64();
                    let mut raw = vec![0.0; p];
                    let mut grad_raw = vec![0.0; p];
                    for &site in active {
                        for b in 0..n {
                            let i = site as usize * n + b;
                            for (q, r) in raw.iter_mut().enumerate() {
                                *r = planes[q * plane + i].to_f64();
                            }
                            let gx = spline.backward(
                                input[i].to_f64(),
                                &raw,
                                grad_field[i].to_f64(),
                                c,
                                &mut grad_raw,
                            );
                            grad_field[i] = T::from_f64(gx);
                            for (q, g) in grad_raw.iter().enumerate() {
                                grad_st[q * plane + i] = T::from_f64(*g);
                            }
                        }
                    }
                }
            }
            self.mask(input, frozen, n, &mut ws.masked[..cond_plane]);
            let weights_t = &weights_t[l * np..(l + 1) * np];
            let grad_params = &mut ws.grad_params[l * np..(l + 1) * np];
            if !self.config.z2 {
                self.net.backward(
                    &self.stencil,
                    weights_t,
                    &ws.masked[..plane],
                    acts,
                    grad_st,
                    n,
                    active,
                    frozen,
                    grad_params,
                    grad_field,
                    &mut ws.scratch,
                );
                continue;
            }
            let grad_cond = &mut ws.grad_cond[..p * cond_plane];
            self.unsymmetrise(grad_st, n, active, grad_cond);
            let grad_masked = &mut ws.grad_masked[..cond_plane];
            grad_masked.fill(T::ZERO);
            self.net.backward(
                &self.stencil,
                weights_t,
                &ws.masked[..cond_plane],
                acts,
                grad_cond,
                2 * n,
                active,
                frozen,
                grad_params,
                grad_masked,
                &mut ws.scratch,
            );
            // m enters as m (first copy) and -m (second copy).
            for &site in frozen {
                let site = site as usize;
                let g = &grad_masked[site * 2 * n..(site + 1) * 2 * n];
                for (b, gf) in grad_field[site * n..(site + 1) * n].iter_mut().enumerate() {
                    *gf += g[b] - g[n + b];
                }
            }
        }
    }

    /// Forward with saved activations, target action and force, and backward for the reverse
    /// KL loss L = (1/B) sum_b [log q(x_b) + S(x_b)] of one chunk (B = `batch`). Returns
    /// (S, log|det J|) per sample; the chunk's gradient is left in `ws.grad_params`.
    fn chunk_reverse_kl(
        &self,
        ws: &mut Workspace<T>,
        chunk: &[T],
        target: &dyn boltzflow_targets::Target,
        weights_t: &[T],
        batch: usize,
    ) -> (Vec<f64>, Vec<f64>) {
        self.chunk_forward(ws, chunk, true);
        let (v, n) = (self.volume(), ws.lanes);
        let layers = self.config.layers;
        let inv_batch = 1.0 / batch as f64;
        let mut actions = Vec::with_capacity(n);
        {
            let Workspace {
                fields,
                grad_field,
                x64,
                force,
                ..
            } = ws;
            let x = &fields[layers * v * n..(layers + 1) * v * n];
            for b in 0..n {
                for s in 0..v {
                    x64[s] = x[s * n + b].to_f64();
                }
                actions.push(target.force(x64, force));
                // dL/dx = (1/B) dS/dx = -(1/B) force
                for s in 0..v {
                    grad_field[s * n + b] = T::from_f64(-force[s] * inv_batch);
                }
            }
        }
        self.chunk_backward(ws, weights_t, T::from_f64(-inv_batch));
        (actions, ws.log_det[..n].to_vec())
    }

    /// Transposed conv kernels of every layer (for the backward pass), `[params().len()]`.
    pub(crate) fn transposed_weights(&self) -> Vec<T> {
        self.net.transpose_layers(&self.params)
    }

    /// Reverse-KL loss pieces and gradient for the prior draws `z` (`[B, V]`):
    /// returns (S, log|det J|) per sample and dL/d params, L = (1/B) sum_b [log q + S].
    pub(crate) fn reverse_kl_gradient(
        &self,
        z: &[T],
        target: &dyn boltzflow_targets::Target,
        grad: &mut [T],
    ) -> (Vec<f64>, Vec<f64>) {
        let batch = z.len() / self.volume();
        let weights_t = self.transposed_weights();
        let results = self.map_chunks(z, |flow, ws, chunk| {
            let out = flow.chunk_reverse_kl(ws, chunk, target, &weights_t, batch);
            (out, ws.grad_params.clone())
        });
        sum_chunk_gradients(results, grad)
    }
}

/// Two distinct field slots of length `plane`: (slot a, slot b) as (shared, mutable).
/// Runs `f` on the chunks of `chunk_len` elements of `input` in parallel (rayon), one
/// workspace per thread at most: taken from `pool` (or made by `make`) and put back after.
/// Workspace w takes chunks w, w + W, w + 2W, ...; results come in chunk order and depend only
/// on the chunk, not on the assignment or the number of threads.
pub(crate) fn map_chunks<T, W, R, F>(
    input: &[T],
    chunk_len: usize,
    pool: &Mutex<Vec<W>>,
    make: impl Fn() -> W,
    f: F,
) -> Vec<R>
where
    T: Sync,
    W: Send,
    R: Send,
    F: Fn(&mut W, &[T]) -> R + Sync,
{
    let chunks: Vec<&[T]> = input.chunks(chunk_len).collect();
    let n_workspaces = chunks.len().min(rayon::current_num_threads()).max(1);
    let mut workspaces: Vec<W> = {
        let mut pool = pool.lock().unwrap_or_else(|e| e.into_inner());
        let take = n_workspaces.min(pool.len());
        pool.drain(..take).collect()
    };
    while workspaces.len() < n_workspaces {
        workspaces.push(make());
    }
    let results = if n_workspaces == 1 {
        chunks.iter().map(|c| f(&mut workspaces[0], c)).collect()
    } else {
        let per_workspace: Vec<Vec<(usize, R)>> = workspaces
            .par_iter_mut()
            .enumerate()
            .map(|(w, ws)| {
                (w..chunks.len())
                    .step_by(n_workspaces)
                    .map(|c| (c, f(ws, chunks[c])))
                    .collect()
            })
            .collect();
        let mut indexed: Vec<(usize, R)> = per_workspace.into_iter().flatten().collect();
        indexed.sort_by_key(|(c, _)| *c);
        indexed.into_iter().map(|(_, r)| r).collect()
    };
    pool.lock()
        .unwrap_or_else(|e| e.into_inner())
        .extend(workspaces);
    results
}

/// (S, log|det J|) per sample of one chunk.
pub(crate) type PerSample = (Vec<f64>, Vec<f64>);

/// The per-chunk ((S, log|det J|) per sample, parameter gradient) of a batch: concatenates the
/// per-sample values and sums the gradients into `grad`.
pub(crate) fn sum_chunk_gradients<T: Real>(
    results: Vec<(PerSample, Vec<T>)>,
    grad: &mut [T],
) -> (Vec<f64>, Vec<f64>) {
    grad.fill(T::ZERO);
    let (mut actions, mut log_det) = (Vec::new(), Vec::new());
    for ((s, ld), g) in results {
        actions.extend(s);
        log_det.extend(ld);
        for (acc, g) in grad.iter_mut().zip(g) {
            *acc += g;
        }
    }
    (actions, log_det)
}

/// Refuses an empty stack or a hidden layer without channels.
pub(crate) fn check_architecture(
    layers: usize,
    hidden: &[usize],
    fix_layers: &'static str,
) -> Result<()> {
    if layers == 0 {
        return Err(FlowError::InvalidConfig {
            name: "layers",
            value: "0".into(),
            fix: fix_layers,
        });
    }
    if hidden.contains(&0) {
        return Err(FlowError::InvalidConfig {
            name: "hidden",
            value: format!("{hidden:?}"),
            fix: "every hidden layer needs at least one channel, e.g. hidden = [8, 8]",
        });
    }
    Ok(())
}

/// Concatenates per-chunk (configurations, per-sample values) of an input of `len` elements.
pub(crate) fn concat_chunks<T>(results: Vec<(Vec<T>, Vec<f64>)>, len: usize) -> (Vec<T>, Vec<f64>) {
    let mut configs = Vec::with_capacity(len);
    let mut values = Vec::new();
    for (c, v) in results {
        configs.extend(c);
        values.extend(v);
    }
    (configs, values)
}

/// Slot `a` (read) and slot `b` (written) of `plane`-sized slots in `fields`.
pub(crate) fn two_slots<T>(fields: &mut [T], plane: usize, a: usize, b: usize) -> (&[T], &mut [T]) {
    debug_assert_ne!(a, b);
    if a < b {
        let (lo, hi) = fields.split_at_mut(b * plane);
        (&lo[a * plane..(a + 1) * plane], &mut hi[..plane])
    } else {
        let (lo, hi) = fields.split_at_mut(a * plane);
        (&hi[..plane], &mut lo[b * plane..(b + 1) * plane])
    }
}

/// The activation buffers trimmed to the chunk's lane count (`[c_out_i, V, lanes]` each).
fn acts_view<'a, T: Real>(acts: &'a mut [Vec<T>], net: &ConvNet, plane: usize) -> &'a mut [Vec<T>] {
    for (a, conv) in acts.iter_mut().zip(net.convs()) {
        a.resize(conv.c_out * plane, T::ZERO);
    }
    acts
}

#[cfg(test)]
mod tests {
    use super::*;
    use boltzflow_targets::phi4::{Phi4, Phi4Spec};
    use rand::SeedableRng;
    use rand_xoshiro::Xoshiro256PlusPlus;

    fn config(shape: [usize; 2], layers: usize, seed: u64) -> AffineFlowConfig {
        AffineFlowConfig {
            layers,
            ..AffineFlowConfig::tutorial(shape, seed)
        }
    }

    /// A flow with its default init moved off the identity (a deterministic offset of up to
    /// +-0.15 per parameter) and scaled by `scale`, so that s and t are far from 0.
    fn scaled_flow<T: Real>(config: &AffineFlowConfig, scale: f64) -> AffineFlow<T> {
        let mut flow = AffineFlow::<T>::new(config).unwrap();
        for (i, p) in flow.params_mut().iter_mut().enumerate() {
            let offset = 0.3 * ((i * 7919 % 13) as f64 / 13.0 - 0.5);
            *p = T::from_f64((p.to_f64() + offset) * scale);
        }
        flow
    }

    fn rng(seed: u64) -> Xoshiro256PlusPlus {
        Xoshiro256PlusPlus::seed_from_u64(seed)
    }

    /// Shifts every configuration of `x` (`[batch, L0, L1]`) by (dy, dx) periodically.
    fn shift<T: Copy>(x: &[T], shape: [usize; 2], dy: usize, dx: usize) -> Vec<T> {
        let [l0, l1] = shape;
        let mut out = x.to_vec();
        for (src, dst) in x.chunks_exact(l0 * l1).zip(out.chunks_exact_mut(l0 * l1)) {
            for y in 0..l0 {
                for xx in 0..l1 {
                    dst[((y + dy) % l0) * l1 + (xx + dx) % l1] = src[y * l1 + xx];
                }
            }
        }
        out
    }

    /// log|det| of a row-major n x n matrix (nalgebra's LU).
    fn log_abs_det(a: Vec<f64>, n: usize) -> f64 {
        nalgebra::DMatrix::from_row_slice(n, n, &a)
            .lu()
            .determinant()
            .abs()
            .ln()
    }

    /// The tutorial flow (16 layers, L = 8) with init scaled by 1.5 (log-dets ~ 20, |x| ~ 6):
    /// inverse(forward(z)) = z to 1e-5 (relative to 1 + |z|) in f32 and forward + inverse
    /// log-dets cancel; in f64 both hold to 1e-12. The batch of 40 is one full chunk plus a
    /// ragged one.
    #[test]
    fn inverse_undoes_forward() {
        let cfg = config([8, 8], 16, 1);
        let flow32 = scaled_flow::<f32>(&cfg, 1.5);
        let flow64 = flow32.cast::<f64>();
        let z32 = flow32.draw_prior(40, &mut rng(2));
        let (x, ld) = flow32.forward(&z32).unwrap();
        let (z_back, ld_inv) = flow32.inverse(&x).unwrap();
        let max_x = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let spread = ld.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        assert!(
            spread > 5.0,
            "log-dets {spread} too small for a non-trivial test"
        );
        let worst = z_back
            .iter()
            .zip(&z32)
            .map(|(a, b)| (a - b).abs() / (1.0 + b.abs()))
            .fold(0.0f32, f32::max);
        eprintln!("round trip: worst {worst}, max |x| {max_x}, log-dets up to {spread}");
        assert!(
            worst < 1e-5,
            "f32 round trip off by {worst} (max |x| {max_x})"
        );
        for (f, i) in ld.iter().zip(&ld_inv) {
            assert!((f + i).abs() < 1e-4 * (1.0 + f.abs()), "{f} + {i}");
        }
        let z64: Vec<f64> = z32.iter().map(|&v| v as f64).collect();
        let (x64, ld64) = flow64.forward(&z64).unwrap();
        let (z64_back, ld64_inv) = flow64.inverse(&x64).unwrap();
        for (a, b) in z64_back.iter().zip(&z64) {
            assert!((a - b).abs() < 1e-12);
        }
        for (f, i) in ld64.iter().zip(&ld64_inv) {
            assert!((f + i).abs() < 1e-12 * (1.0 + f.abs()));
        }
        // The f32 hot path agrees with the f64 evaluation of the same parameters.
        for (a, b) in x.iter().zip(&x64) {
            assert!(
                ((*a as f64) - b).abs() < 1e-4 * (1.0 + b.abs()),
                "{a} vs {b}"
            );
        }
        for (a, b) in ld.iter().zip(&ld64) {
            assert!((a - b).abs() < 1e-4 * (1.0 + b.abs()), "{a} vs {b}");
        }
    }

    /// Forward log-det against log|det| of the central-difference Jacobian (f64, 4x4 lattice,
    /// 4 layers, init moved off the identity and scaled by 1.5), and log_prob(sample) = the sample's log q.
    #[test]
    fn log_det_matches_numerical_jacobian() {
        check_log_det(NativeCoupling::Affine, false, 1.5);
    }

    /// The same, inverse included, for spline couplings (K = 5 on [-4, 4]).
    #[test]
    fn spline_log_det_matches_numerical_jacobian() {
        let spline = NativeCoupling::Spline {
            bins: 5,
            bound: 4.0,
        };
        check_log_det(spline, false, 1.5);
        let flow = scaled_flow::<f64>(
            &AffineFlowConfig {
                coupling: spline,
                ..config([4, 6], 4, 9)
            },
            1.5,
        );
        let z = flow.draw_prior(7, &mut rng(3));
        let (x, ld) = flow.forward(&z).unwrap();
        let (back, ld_inv) = flow.inverse(&x).unwrap();
        for (a, b) in back.iter().zip(&z) {
            assert!((a - b).abs() < 1e-10 * (1.0 + b.abs()), "{a} vs {b}");
        }
        for (f, i) in ld.iter().zip(&ld_inv) {
            assert!((f + i).abs() < 1e-10 * (1.0 + f.abs()));
        }
    }

    fn check_log_det(coupling: NativeCoupling, z2: bool, scale: f64) {
        let cfg = AffineFlowConfig {
            coupling,
            z2,
            ..config([4, 4], 4, 3)
        };
        let flow = scaled_flow::<f64>(&cfg, scale);
        let v = flow.volume();
        let z = flow.draw_prior(3, &mut rng(4));
        let (_, log_det) = flow.forward(&z).unwrap();
        // Affine: absolute 1e-7; splines (larger curvature, so a larger central-difference
        // truncation error at h = 1e-5): 1e-7 relative to 1 + |log-det| of the sample.
        let tolerance = |ld: f64| {
            if coupling.is_affine() {
                1e-7
            } else {
                1e-7 * (1.0 + ld.abs())
            }
        };
        assert!(
            log_det.iter().any(|ld| ld.abs() > 1.0),
            "log-dets {log_det:?} too small for a non-trivial test"
        );
        let h = 1e-5;
        for (b, z_b) in z.chunks_exact(v).enumerate() {
            let mut jacobian = vec![0.0; v * v];
            for j in 0..v {
                let mut up = z_b.to_vec();
                up[j] += h;
                let mut down = z_b.to_vec();
                down[j] -= h;
                let (x_up, _) = flow.forward(&up).unwrap();
                let (x_down, _) = flow.forward(&down).unwrap();
                for i in 0..v {
                    jacobian[i * v + j] = (x_up[i] - x_down[i]) / (2.0 * h);
                }
            }
            let numeric = log_abs_det(jacobian, v);
            assert!(
                (numeric - log_det[b]).abs() < tolerance(log_det[b]),
                "{numeric} vs {}",
                log_det[b]
            );
        }
        let (x, log_q) = flow.sample(5, &mut rng(5));
        for (a, b) in flow.log_prob(&x).unwrap().iter().zip(&log_q) {
            assert!((a - b).abs() < 1e-10 * (1.0 + b.abs()), "{a} vs {b}");
        }
    }

    /// Shifting z by (1, 1) (which maps each checkerboard onto itself) shifts x = f(z) and
    /// keeps the log-det: the periodic conv net is translation equivariant. A shift by (0, 1)
    /// swaps the parities and must change the output.
    #[test]
    fn flow_is_translation_equivariant() {
        let shape = [4, 6];
        let flow = scaled_flow::<f64>(&config(shape, 4, 6), 2.0);
        let z = flow.draw_prior(3, &mut rng(7));
        let (x, ld) = flow.forward(&z).unwrap();
        let (x_shifted, ld_shifted) = flow.forward(&shift(&z, shape, 1, 1)).unwrap();
        for (a, b) in x_shifted.iter().zip(&shift(&x, shape, 1, 1)) {
            assert!((a - b).abs() < 1e-12);
        }
        for (a, b) in ld.iter().zip(&ld_shifted) {
            assert!((a - b).abs() < 1e-12);
        }
        let (x_odd, _) = flow.forward(&shift(&z, shape, 0, 1)).unwrap();
        let differs = x_odd
            .iter()
            .zip(&shift(&x, shape, 0, 1))
            .any(|(a, b)| (a - b).abs() > 1e-3);
        assert!(differs);
    }

    /// The conditioner alone is equivariant under every lattice translation.
    #[test]
    fn conditioner_is_translation_equivariant() {
        let shape = [4, 6];
        let flow = scaled_flow::<f64>(&config(shape, 1, 8), 2.0);
        let (v, lanes) = (flow.volume(), 3);
        let m = flow.draw_prior(lanes, &mut rng(9));
        let to_lanes = |x: &[f64]| {
            let mut out = vec![0.0; x.len()];
            for b in 0..lanes {
                for s in 0..v {
                    out[s * lanes + b] = x[b * v + s];
                }
            }
            out
        };
        let run = |m: &[f64]| {
            let mut acts = flow.net.activations::<f64>(v, lanes);
            let all = flow.stencil.all_sites();
            flow.net.forward(
                &flow.stencil,
                flow.params(),
                &to_lanes(m),
                lanes,
                all,
                &mut acts,
            );
            // back to [channel * lanes, V] so that `shift` applies per (channel, sample)
            let out = &acts[acts.len() - 1];
            let mut maps = vec![0.0; out.len()];
            for c in 0..2 {
                for b in 0..lanes {
                    for s in 0..v {
                        maps[(c * lanes + b) * v + s] = out[(c * v + s) * lanes + b];
                    }
                }
            }
            maps
        };
        let out = run(&m);
        let out_shifted = run(&shift(&m, shape, 0, 1));
        for (a, b) in out_shifted.iter().zip(&shift(&out, shape, 0, 1)) {
            assert!((a - b).abs() < 1e-13);
        }
    }

    /// Reverse-KL gradient against central differences of the loss
    /// L(theta) = (1/B) sum_b [log N(z_b) - log|det J| + S(x_b)] at fixed z (f64, 4x4,
    /// 4 layers, phi^4 at m2 = -4, lam = 8): for every parameter group the directional
    /// derivative along two random directions, and 3 single components per group.
    #[test]
    fn gradient_matches_finite_differences() {
        check_gradient(NativeCoupling::Affine, false);
    }

    /// The same for spline couplings (K = 4 on [-3, 3]; hand-written spline backward).
    #[test]
    fn spline_gradient_matches_finite_differences() {
        check_gradient(
            NativeCoupling::Spline {
                bins: 4,
                bound: 3.0,
            },
            false,
        );
    }

    /// Z2-equivariant layers: the log-det, inverse and gradient checks above (the conditioner
    /// runs on m and -m, the backward pass folds both copies), for affine and spline
    /// couplings, and the flow is odd: f(-z) = -f(z) with equal log-dets, so q(-x) = q(x).
    #[test]
    fn z2_flows_are_odd_with_exact_log_dets_and_gradients() {
        let spline = NativeCoupling::Spline {
            bins: 4,
            bound: 3.0,
        };
        for coupling in [NativeCoupling::Affine, spline] {
            check_log_det(coupling, true, 1.5);
            check_gradient(coupling, true);
            let flow = scaled_flow::<f64>(
                &AffineFlowConfig {
                    coupling,
                    z2: true,
                    ..config([4, 6], 4, 12)
                },
                2.0,
            );
            let z = flow.draw_prior(4, &mut rng(13));
            let minus: Vec<f64> = z.iter().map(|v| -v).collect();
            let (x, ld) = flow.forward(&z).unwrap();
            let (x_minus, ld_minus) = flow.forward(&minus).unwrap();
            for (a, b) in x.iter().zip(&x_minus) {
                assert!((a + b).abs() < 1e-12 * (1.0 + a.abs()), "{a} vs {b}");
            }
            for (a, b) in ld.iter().zip(&ld_minus) {
                assert!((a - b).abs() < 1e-12 * (1.0 + a.abs()), "{a} vs {b}");
            }
            // The same flow without symmetrisation is not odd (the test has teeth).
            let mut plain = flow.cast::<f64>();
            plain.config.z2 = false;
            let (y, _) = plain.forward(&z).unwrap();
            let (y_minus, _) = plain.forward(&minus).unwrap();
            let odd_defect = y
                .iter()
                .zip(&y_minus)
                .map(|(a, b)| (a + b).abs())
                .fold(0.0, f64::max);
            assert!(odd_defect > 1e-3, "plain flow odd to {odd_defect}");
        }
    }

    fn check_gradient(coupling: NativeCoupling, z2: bool) {
        let shape = [4, 4];
        let flow = scaled_flow::<f64>(
            &AffineFlowConfig {
                coupling,
                z2,
                ..config(shape, 4, 10)
            },
            1.5,
        );
        let target = Phi4::new(&Phi4Spec {
            shape: vec![4, 4],
            m2: Some(-4.0),
            lam: Some(8.0),
            kappa: None,
            lam_h: None,
        })
        .unwrap();
        let v = flow.volume();
        let mut r = rng(11);
        let z = flow.draw_prior(5, &mut r);
        let mut grad = vec![0.0; flow.params().len()];
        flow.reverse_kl_gradient(&z, &target, &mut grad);
        let loss = |params: &[f64]| {
            let mut f = flow.clone();
            f.params_mut().copy_from_slice(params);
            let (x, ld) = f.forward(&z).unwrap();
            let mut sum = 0.0;
            for ((x, z), ld) in x.chunks_exact(v).zip(z.chunks_exact(v)).zip(&ld) {
                sum += AffineFlow::<f64>::log_prior(z) - ld
                    + boltzflow_targets::Target::action(&target, x);
            }
            sum / 5.0
        };
        let theta = flow.params().to_vec();
        let h = 1e-6;
        let directional = |u: &[f64]| {
            let up: Vec<f64> = theta.iter().zip(u).map(|(t, u)| t + h * u).collect();
            let down: Vec<f64> = theta.iter().zip(u).map(|(t, u)| t - h * u).collect();
            (loss(&up) - loss(&down)) / (2.0 * h)
        };
        assert_eq!(flow.param_groups().len(), 4 * 6);
        for group in flow.param_groups() {
            let mut checks = Vec::new();
            for _ in 0..2 {
                let mut u = vec![0.0; theta.len()];
                for i in group.range.clone() {
                    u[i] = r.random::<f64>() * 2.0 - 1.0;
                }
                checks.push(u);
            }
            for k in 0..3 {
                let mut u = vec![0.0; theta.len()];
                u[group.range.start + (k * 7) % group.range.len()] = 1.0;
                checks.push(u);
            }
            for u in checks {
                let analytic: f64 = grad.iter().zip(&u).map(|(g, u)| g * u).sum();
                let numeric = directional(&u);
                assert!(
                    (analytic - numeric).abs() < 1e-6 * (1.0 + numeric.abs()),
                    "{}: analytic {analytic} vs numeric {numeric}",
                    group.name
                );
            }
        }
        // The f32 hot path gives the same gradient to f32 accuracy.
        let flow32 = flow.cast::<f32>();
        let z32: Vec<f32> = z.iter().map(|&v| v as f32).collect();
        let mut grad32 = vec![0.0f32; grad.len()];
        flow32.reverse_kl_gradient(&z32, &target, &mut grad32);
        let norm = grad.iter().map(|g| g * g).sum::<f64>().sqrt();
        let diff = grad
            .iter()
            .zip(&grad32)
            .map(|(a, &b)| (a - b as f64).powi(2))
            .sum::<f64>()
            .sqrt();
        assert!(
            diff < 1e-4 * norm,
            "f32 gradient off by {diff} (norm {norm})"
        );
    }

    /// Samples, log q and the reverse-KL gradient are bitwise identical with 1 and 3 rayon
    /// threads (batch 100: three full chunks and a ragged one).
    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        let flow = scaled_flow::<f32>(&config([4, 4], 4, 12), 1.5);
        let target = Phi4::new(&Phi4Spec {
            shape: vec![4, 4],
            m2: Some(-4.0),
            lam: Some(8.0),
            kappa: None,
            lam_h: None,
        })
        .unwrap();
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let (x, log_q) = flow.sample(100, &mut rng(13));
                let z = flow.draw_prior(100, &mut rng(14));
                let mut grad = vec![0.0f32; flow.params().len()];
                let (actions, log_det) = flow.reverse_kl_gradient(&z, &target, &mut grad);
                (x, log_q, grad, actions, log_det)
            })
        };
        assert_eq!(run(1), run(3));
    }

    #[test]
    fn bad_inputs_are_errors() {
        let flow = AffineFlow::<f32>::new(&config([4, 4], 2, 0)).unwrap();
        let message = flow.forward(&[0.0; 17]).unwrap_err().to_string();
        assert!(
            message.contains("17") && message.contains("16"),
            "{message}"
        );
        assert!(flow.inverse(&[0.0; 15]).is_err());
        assert!(AffineFlow::<f32>::new(&config([4, 4], 0, 0)).is_err());
        assert!(AffineFlow::<f32>::new(&config([5, 4], 2, 0)).is_err());
        let text = r#"{"shape": [8, 8], "seed": 1, "layer": 3}"#;
        assert!(serde_json::from_str::<AffineFlowConfig>(text).is_err());
        let text = r#"{"shape": [8, 8], "seed": 1}"#;
        let parsed: AffineFlowConfig = serde_json::from_str(text).unwrap();
        assert_eq!(parsed, AffineFlowConfig::tutorial([8, 8], 1));
    }
}
