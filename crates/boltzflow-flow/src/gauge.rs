//! [`GaugeFlow`]: gauge-equivariant coupling flows for 2D U(1) lattice gauge theory (Kanwar
//! et al. 2020, arXiv:2003.06413; the tutorial's `make_u1_equiv_layers`, arXiv:2101.08176) on
//! the native CPU kernels, mapping uniform link angles z ~ U[0, 2 pi)^(2V) to configurations
//! with an exact log q that is invariant under gauge transformations.
//!
//! # Masks
//! Layer l acts on the links of direction mu = l mod 2 in stripes of period 4 along nu = 1 - mu,
//! with offset o = floor(l / 2) mod 4 (x_nu is the site's coordinate along nu):
//!
//! ```text
//! active links        theta_mu(x)  with x_nu = o      (mod 4)
//! active plaquettes   P(x)         with x_nu = o      (each holds one active link)
//! frozen plaquettes   P(x)         with x_nu = o + 1, o + 2  (no active link)
//! passive plaquettes  P(x)         with x_nu = o + 3  (they change with the active links)
//! ```
//!
//! # One layer
//! With P(x) = theta_0(x) + theta_1(x+0) - theta_0(x+1) - theta_1(x) (PHYSICS.md):
//!
//! ```text
//! (raw, t) = NN_l(cos P, sin P on the frozen plaquettes, 0 elsewhere)   periodic conv net
//! P'(x) = h(P(x) mod 2 pi; raw(x)) + t(x)   (mod 2 pi)                  active plaquettes
//! theta_mu(x) <- theta_mu(x) + sign_mu (P'(x) - P(x)),  sign_0 = +1, sign_1 = -1
//! log|det J_l| = sum_(active x) log h'(P(x))
//! ```
//!
//! The conditioner sees only plaquettes (gauge invariant) and the links move by a gauge
//! invariant amount, so every layer commutes with gauge transformations; with the uniform
//! (gauge-invariant) prior, q(x) is gauge invariant. The Jacobian is triangular: an active
//! link enters only its own active plaquette, which the conditioner does not see.
//!
//! # Circle maps h
//! [`CircleMap::Ncp`]: the non-compact projection mixture
//! h(x) = (1/M) sum_i 2 atan(e^(s_i) tan(x / 2)), written 2 atan2(e^(s_i) sin(x/2), cos(x/2))
//! on [0, 2 pi), with h'(x) = (1/M) sum_i 1 / (e^(-s_i) cos^2(x/2) + e^(s_i) sin^2(x/2)); its
//! inverse is a safeguarded Newton iteration (h is monotone, h(0) = 0, h(2 pi) = 2 pi).
//! [`CircleMap::Spline`]: the circular rational-quadratic spline of
//! [`crate::spline::CircularSpline`], inverted in closed form. Both are followed by the
//! rotation t.
//!
//! # Shapes
//! Public methods take and return configurations `[batch, 2, L0, L1]` row-major (link
//! theta_mu(x) at mu V + x, as `boltzflow_targets::u1`), log-dets and log q `[batch]` f64.
//! Chunks of [`CHUNK_LANES`] samples run in parallel (rayon) in the batch-innermost layout of
//! [`crate::conv`] (`[2, V, lanes]` for links); results do not depend on the thread count.

use std::f64::consts::TAU;
use std::sync::Mutex;

use rand::{Rng, RngExt};
use rand_xoshiro::Xoshiro256PlusPlus;
use serde::{Deserialize, Serialize};

use boltzflow_targets::Target;

use crate::conditioner::{ConvNet, NetScratch, ParamGroup};
use crate::conv::Stencil;
use crate::flow::{
    CHUNK_LANES, NEAR_IDENTITY, check_architecture, concat_chunks, map_chunks, sum_chunk_gradients,
    two_slots,
};
use crate::model::FlowModel;
use crate::real::Real;
use crate::spline::{CircularSpline, MAX_BINS};
use crate::{FlowError, Result};

/// The invertible map of the circle applied to each active plaquette (before the rotation).
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum CircleMap {
    /// Mixture of `mix` non-compact projections 2 atan(e^s tan(x/2)) (raw outputs s_i).
    Ncp {
        /// Components M >= 1 (2 in the tutorial).
        mix: usize,
    },
    /// Circular rational-quadratic spline with `bins` bins (3K raw outputs).
    Spline {
        /// 2 <= K <= 64.
        bins: usize,
    },
}

impl CircleMap {
    /// Raw conditioner outputs per plaquette (without the rotation t).
    pub fn params(&self) -> usize {
        match *self {
            Self::Ncp { mix } => mix,
            Self::Spline { bins } => 3 * bins,
        }
    }

    /// Raw outputs of the identity map.
    pub fn identity(&self) -> Vec<f64> {
        match *self {
            Self::Ncp { mix } => vec![0.0; mix],
            Self::Spline { bins } => CircularSpline { bins }.identity(),
        }
    }

    fn validate(&self) -> Result<()> {
        match *self {
            Self::Ncp { mix: 0 } => Err(FlowError::InvalidConfig {
                name: "mix",
                value: "0".into(),
                fix: "the NCP mixture needs at least one component, e.g. mix = 2",
            }),
            Self::Spline { bins } if !(2..=MAX_BINS).contains(&bins) => {
                Err(FlowError::InvalidConfig {
                    name: "bins",
                    value: bins.to_string(),
                    fix: "native circular splines take 2 to 64 bins, e.g. bins = 8",
                })
            }
            _ => Ok(()),
        }
    }

    /// y = h(x) and log h'(x) for x in [0, 2 pi).
    pub fn forward(&self, x: f64, raw: &[f64]) -> (f64, f64) {
        match *self {
            Self::Ncp { .. } => ncp_forward(x, raw),
            Self::Spline { bins } => CircularSpline { bins }.forward(x, raw),
        }
    }

    /// x = h^-1(y) and log|dx/dy| for y in [0, 2 pi).
    pub fn inverse(&self, y: f64, raw: &[f64]) -> (f64, f64) {
        match *self {
            Self::Ncp { .. } => ncp_inverse(y, raw),
            Self::Spline { bins } => CircularSpline { bins }.inverse(y, raw),
        }
    }

    /// Gradient of L = g h(x) + c log h'(x): returns dL/dx and writes dL/draw into
    /// `grad_raw` (overwritten).
    pub fn backward(&self, x: f64, raw: &[f64], g: f64, c: f64, grad_raw: &mut [f64]) -> f64 {
        match *self {
            Self::Ncp { .. } => ncp_backward(x, raw, g, c, grad_raw),
            Self::Spline { bins } => CircularSpline { bins }.backward(x, raw, g, c, grad_raw),
        }
    }
}

/// NCP mixture: (h(x), log h'(x)).
fn ncp_forward(x: f64, raw: &[f64]) -> (f64, f64) {
    let (sh, ch) = (0.5 * x).sin_cos();
    let (mut y, mut slope) = (0.0, 0.0);
    for &s in raw {
        let e = s.exp();
        y += 2.0 * (e * sh).atan2(ch);
        slope += 1.0 / (ch * ch / e + e * sh * sh);
    }
    let m = raw.len() as f64;
    (y / m, (slope / m).ln())
}

/// NCP mixture inverse by Newton steps kept inside a shrinking bracket (bisection when a step
/// leaves it).
fn ncp_inverse(y: f64, raw: &[f64]) -> (f64, f64) {
    let (mut lo, mut hi) = (0.0, TAU);
    let mut x = y;
    for _ in 0..200 {
        let (h, ld) = ncp_forward(x, raw);
        let f = h - y;
        if f.abs() < 1e-14 {
            break;
        }
        if f > 0.0 {
            hi = x;
        } else {
            lo = x;
        }
        let newton = x - f / ld.exp();
        x = if newton > lo && newton < hi {
            newton
        } else {
            0.5 * (lo + hi)
        };
        if hi - lo < 1e-15 {
            break;
        }
    }
    (x, -ncp_forward(x, raw).1)
}

/// dL/dx and dL/ds_i of L = g h(x) + c log h'(x) for the NCP mixture (see the module docs):
/// with D_i = e^(-s_i) cos^2(x/2) + e^(s_i) sin^2(x/2), h_i' = 1/D_i, w_i = h_i' / sum h_j',
/// dh_i/ds_i = sin(x) h_i', d log h_i'/dx = -sin(x) sinh(s_i) / D_i,
/// d log h_i'/ds_i = (e^(-s_i) cos^2 - e^(s_i) sin^2) / D_i.
fn ncp_backward(x: f64, raw: &[f64], g: f64, c: f64, grad_raw: &mut [f64]) -> f64 {
    let (sh, ch) = (0.5 * x).sin_cos();
    let sin_x = x.sin();
    let m = raw.len() as f64;
    let mut total = 0.0;
    for (gr, &s) in grad_raw.iter_mut().zip(raw) {
        let e = s.exp();
        let slope = 1.0 / (ch * ch / e + e * sh * sh);
        total += slope;
        *gr = slope;
    }
    let mut gx = g * total / m;
    for (gr, &s) in grad_raw.iter_mut().zip(raw) {
        let slope = *gr;
        let e = s.exp();
        let (a, b) = (ch * ch / e, e * sh * sh);
        let w = slope / total;
        gx += c * w * (-sin_x * 0.5 * (e - 1.0 / e) * slope);
        *gr = g * sin_x * slope / m + c * w * (a - b) * slope;
    }
    gx
}

/// Architecture and initialisation of a [`GaugeFlow`] (defaults: the tutorial's U(1) model).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GaugeFlowConfig {
    /// Lattice extents `[L0, L1]`, multiples of 4 (the stripes' period).
    pub shape: [usize; 2],
    /// Coupling layers (default 16: every direction and offset twice).
    #[serde(default = "crate::flow::default_layers")]
    pub layers: usize,
    /// Hidden channels of the conditioner (default `[8, 8]`).
    #[serde(default = "crate::flow::default_hidden")]
    pub hidden: Vec<usize>,
    /// Odd kernel size K (default 3).
    #[serde(default = "crate::flow::default_kernel")]
    pub kernel: usize,
    /// The circle map of the active plaquettes.
    pub circle: CircleMap,
    /// Seed of the parameter initialisation.
    pub seed: u64,
}

impl GaugeFlowConfig {
    /// The tutorial's model: 16 layers, NCP mixtures of 2, conv hidden [8, 8], 3x3 kernels.
    pub fn tutorial(shape: [usize; 2], seed: u64) -> Self {
        Self {
            shape,
            layers: crate::flow::default_layers(),
            hidden: crate::flow::default_hidden(),
            kernel: crate::flow::default_kernel(),
            circle: CircleMap::Ncp { mix: 2 },
            seed,
        }
    }
}

/// Sites of one layer: the direction of its active links and its plaquette masks.
#[derive(Clone, Debug)]
struct LayerMask {
    mu: usize,
    active: Vec<u32>,
    frozen: Vec<u32>,
}

/// A stack of gauge-equivariant coupling layers with conv conditioners (see the module
/// documentation). Parameters are one flat vector: layer after layer, each net's convs in
/// order, weight `[c_out, c_in, K, K]` then bias.
#[derive(Debug)]
pub struct GaugeFlow<T: Real = f32> {
    config: GaugeFlowConfig,
    stencil: Stencil,
    net: ConvNet,
    params: Vec<T>,
    groups: Vec<ParamGroup>,
    masks: Vec<LayerMask>,
    /// Site x + 0 and x + 1 of every site.
    forward_sites: Vec<[u32; 2]>,
    pool: Mutex<Vec<Workspace<T>>>,
}

/// Buffers of one chunk of `lanes` samples (allocated once per worker and reused).
#[derive(Debug)]
struct Workspace<T> {
    lanes: usize,
    /// Links: slot l holds the input of layer l (`[2, V, lanes]`, `layers + 1` slots).
    links: Vec<T>,
    /// Plaquette angles of each layer slot's input (`[V, lanes]`), kept for the backward pass.
    plaq: Vec<Vec<f64>>,
    /// Conditioner input (cos P, sin P) on the frozen plaquettes per layer slot
    /// (`[2, V, lanes]`).
    cond: Vec<Vec<T>>,
    /// Conditioner activations per layer slot.
    activations: Vec<Vec<Vec<T>>>,
    log_det: Vec<f64>,
    /// dL/d links (`[2, V, lanes]`).
    grad_links: Vec<T>,
    /// dL/d plaquettes (`[V, lanes]`).
    grad_plaq: Vec<f64>,
    /// dL/d conditioner output (`[P + 1, V, lanes]`) and input (`[2, V, lanes]`).
    grad_out: Vec<T>,
    grad_cond: Vec<T>,
    scratch: NetScratch<T>,
    grad_params: Vec<T>,
    raw: Vec<f64>,
    grad_raw: Vec<f64>,
    x64: Vec<f64>,
    force: Vec<f64>,
}

impl<T: Real> Workspace<T> {
    fn new(flow: &GaugeFlow<T>, lanes: usize) -> Self {
        let v = flow.volume();
        let layers = flow.config.layers;
        let outputs = flow.outputs();
        Self {
            lanes,
            links: vec![T::ZERO; (layers + 1) * 2 * v * lanes],
            plaq: vec![vec![0.0; v * lanes]; layers],
            cond: vec![vec![T::ZERO; 2 * v * lanes]; layers],
            activations: (0..layers)
                .map(|_| flow.net.activations(v, lanes))
                .collect(),
            log_det: vec![0.0; lanes],
            grad_links: vec![T::ZERO; 2 * v * lanes],
            grad_plaq: vec![0.0; v * lanes],
            grad_out: vec![T::ZERO; outputs * v * lanes],
            grad_cond: vec![T::ZERO; 2 * v * lanes],
            scratch: NetScratch::new(&flow.net, v, lanes),
            grad_params: vec![T::ZERO; flow.params.len()],
            raw: vec![0.0; outputs],
            grad_raw: vec![0.0; outputs],
            x64: vec![0.0; 2 * v],
            force: vec![0.0; 2 * v],
        }
    }
}

/// Maps an angle into [0, 2 pi).
fn wrap(angle: f64) -> f64 {
    let r = angle.rem_euclid(TAU);
    if r >= TAU { 0.0 } else { r }
}

impl<T: Real> GaugeFlow<T> {
    /// Builds the flow with PyTorch's default conv initialisation, seeded, except that each
    /// net's output conv starts near the identity map (weights scaled by [`NEAR_IDENTITY`],
    /// biases at the identity's raw outputs and t = 0).
    pub fn new(config: &GaugeFlowConfig) -> Result<Self> {
        check_architecture(
            config.layers,
            &config.hidden,
            "use at least one coupling layer (16 in the tutorial: both directions, four offsets, twice)",
        )?;
        if config.shape.iter().any(|&l| l < 4 || l % 4 != 0) {
            return Err(FlowError::InvalidConfig {
                name: "shape",
                value: format!("{:?}", config.shape),
                fix: "gauge-equivariant masks are stripes of period 4: use lattice extents divisible by 4, e.g. shape = [8, 8]",
            });
        }
        config.circle.validate()?;
        let stencil = Stencil::new(config.shape, config.kernel)?;
        let outputs = config.circle.params() + 1;
        let net = ConvNet::with_inputs(2, &config.hidden, stencil.taps(), outputs, false);
        let mut identity = config.circle.identity();
        identity.push(0.0);
        let (params, groups) =
            net.init_layers(config.layers, config.seed, NEAR_IDENTITY, &identity);
        let [l0, l1] = config.shape;
        let v = l0 * l1;
        let masks = (0..config.layers)
            .map(|l| {
                let (mu, off) = (l % 2, (l / 2) % 4);
                let nu = 1 - mu;
                let stripe = |s: usize| {
                    let c = if nu == 0 { s / l1 } else { s % l1 };
                    (c + 4 - off) % 4
                };
                LayerMask {
                    mu,
                    active: (0..v as u32).filter(|&s| stripe(s as usize) == 0).collect(),
                    frozen: (0..v as u32)
                        .filter(|&s| matches!(stripe(s as usize), 1 | 2))
                        .collect(),
                }
            })
            .collect();
        let forward_sites = (0..v)
            .map(|s| {
                let (y, x) = (s / l1, s % l1);
                [
                    (((y + 1) % l0) * l1 + x) as u32,
                    (y * l1 + (x + 1) % l1) as u32,
                ]
            })
            .collect();
        Ok(Self {
            config: config.clone(),
            stencil,
            net,
            params,
            groups,
            masks,
            forward_sites,
            pool: Mutex::new(Vec::new()),
        })
    }

    /// The configuration the flow was built from.
    pub fn config(&self) -> &GaugeFlowConfig {
        &self.config
    }

    /// Number of sites V (and plaquettes); a configuration has 2V links.
    pub fn volume(&self) -> usize {
        self.stencil.volume()
    }

    /// The flat parameter vector.
    pub fn params(&self) -> &[T] {
        &self.params
    }

    /// The flat parameter vector, mutable.
    pub fn params_mut(&mut self) -> &mut [T] {
        &mut self.params
    }

    /// Named parameter ranges (`layer{l}.conv{i}.weight` / `.bias`).
    pub fn param_groups(&self) -> &[ParamGroup] {
        &self.groups
    }

    /// The same flow in another precision.
    pub fn cast<U: Real>(&self) -> GaugeFlow<U> {
        GaugeFlow {
            config: self.config.clone(),
            stencil: self.stencil.clone(),
            net: self.net.clone(),
            params: self
                .params
                .iter()
                .map(|p| U::from_f64(p.to_f64()))
                .collect(),
            groups: self.groups.clone(),
            masks: self.masks.clone(),
            forward_sites: self.forward_sites.clone(),
            pool: Mutex::new(Vec::new()),
        }
    }

    fn outputs(&self) -> usize {
        self.config.circle.params() + 1
    }

    /// log of the uniform prior density on [0, 2 pi)^(2V): -2V ln(2 pi).
    pub fn log_prior(&self) -> f64 {
        -2.0 * self.volume() as f64 * TAU.ln()
    }

    /// `batch` prior draws z ~ U[0, 2 pi)^(2V), `[batch, 2V]`, sample after sample.
    pub fn draw_prior<R: Rng + ?Sized>(&self, batch: usize, rng: &mut R) -> Vec<T> {
        (0..batch * 2 * self.volume())
            .map(|_| T::from_f64(rng.random::<f64>() * TAU))
            .collect()
    }

    /// x = f(z) (link angles in [0, 2 pi)) and log|det df/dz| per sample, `[batch, 2V]` ->
    /// (`[batch, 2V]`, `[batch]`).
    pub fn forward(&self, z: &[T]) -> Result<(Vec<T>, Vec<f64>)> {
        self.check_len("z", z.len())?;
        Ok(self.run_chunks(z, |flow, ws, chunk| {
            flow.chunk_pass(ws, chunk, false, false);
            flow.store(ws, false)
        }))
    }

    /// z = f^-1(x) and log|det df^-1/dx| per sample.
    pub fn inverse(&self, x: &[T]) -> Result<(Vec<T>, Vec<f64>)> {
        self.check_len("x", x.len())?;
        Ok(self.run_chunks(x, |flow, ws, chunk| {
            flow.chunk_pass(ws, chunk, false, true);
            flow.store(ws, false)
        }))
    }

    /// log q(x) = log pi(f^-1(x)) + log|det df^-1/dx| per sample.
    pub fn log_prob(&self, x: &[T]) -> Result<Vec<f64>> {
        let (_, log_det) = self.inverse(x)?;
        let prior = self.log_prior();
        Ok(log_det.iter().map(|ld| prior + ld).collect())
    }

    fn check_len(&self, what: &'static str, len: usize) -> Result<()> {
        let links = 2 * self.volume();
        if len.is_multiple_of(links) {
            Ok(())
        } else {
            Err(FlowError::Shape {
                what,
                len,
                volume: links,
            })
        }
    }

    fn run_chunks<F>(&self, input: &[T], f: F) -> (Vec<T>, Vec<f64>)
    where
        F: Fn(&Self, &mut Workspace<T>, &[T]) -> (Vec<T>, Vec<f64>) + Sync,
    {
        concat_chunks(self.map_chunks(input, f), input.len())
    }

    /// Runs `f` on chunks of [`CHUNK_LANES`] configurations in parallel; results in chunk
    /// order, independent of the assignment of chunks to workers.
    fn map_chunks<R, F>(&self, input: &[T], f: F) -> Vec<R>
    where
        R: Send,
        F: Fn(&Self, &mut Workspace<T>, &[T]) -> R + Sync,
    {
        map_chunks(
            input,
            CHUNK_LANES * 2 * self.volume(),
            &self.pool,
            || Workspace::new(self, CHUNK_LANES),
            |ws, chunk| f(self, ws, chunk),
        )
    }

    fn layer_params(&self, layer: usize) -> &[T] {
        let n = self.net.param_len();
        &self.params[layer * n..(layer + 1) * n]
    }

    /// Link slot of layer l's input and output, and its activation slot (all layers saved
    /// when `save`; otherwise two link slots and one activation slot reused).
    fn slots(layer: usize, save: bool) -> (usize, usize, usize) {
        if save {
            (layer, layer + 1, layer)
        } else {
            (layer % 2, (layer + 1) % 2, 0)
        }
    }

    /// Loads `chunk` (`[n, 2V]`) into link slot 0 (`[2V, n]`).
    fn load(&self, ws: &mut Workspace<T>, chunk: &[T]) {
        let links = 2 * self.volume();
        let n = chunk.len() / links;
        ws.lanes = n;
        let slot = &mut ws.links[..links * n];
        for (b, config) in chunk.chunks_exact(links).enumerate() {
            for (i, &value) in config.iter().enumerate() {
                slot[i * n + b] = value;
            }
        }
        ws.log_det[..n].fill(0.0);
    }

    /// The chunk's configurations from the final link slot, `[n, 2V]`, and its log-dets.
    fn store(&self, ws: &Workspace<T>, save: bool) -> (Vec<T>, Vec<f64>) {
        let links = 2 * self.volume();
        let n = ws.lanes;
        let last = if save {
            self.config.layers
        } else {
            self.config.layers % 2
        };
        let slot = &ws.links[last * links * n..(last + 1) * links * n];
        let mut out = vec![T::ZERO; links * n];
        for (b, config) in out.chunks_exact_mut(links).enumerate() {
            for (i, value) in config.iter_mut().enumerate() {
                *value = slot[i * n + b];
            }
        }
        (out, ws.log_det[..n].to_vec())
    }

    /// Plaquette angles (not wrapped) of `links` (`[2, V, n]`) into `plaq` (`[V, n]`).
    fn plaquettes(&self, links: &[T], n: usize, plaq: &mut [f64]) {
        let v = self.volume();
        for (s, fwd) in self.forward_sites.iter().enumerate() {
            let (x0, x1) = (fwd[0] as usize, fwd[1] as usize);
            let a = &links[s * n..(s + 1) * n];
            let b = &links[(v + x0) * n..(v + x0 + 1) * n];
            let c = &links[x1 * n..(x1 + 1) * n];
            let d = &links[(v + s) * n..(v + s + 1) * n];
            for (i, p) in plaq[s * n..(s + 1) * n].iter_mut().enumerate() {
                *p = a[i].to_f64() + b[i].to_f64() - c[i].to_f64() - d[i].to_f64();
            }
        }
    }

    /// Plaquettes of link slot `slot_in`, the conditioner input and the conditioner of layer
    /// l (activations in slot `slot_act`).
    fn condition(&self, ws: &mut Workspace<T>, l: usize, slot_in: usize, slot_act: usize) {
        let v = self.volume();
        let n = ws.lanes;
        let plane = v * n;
        let links = &ws.links[slot_in * 2 * plane..(slot_in + 1) * 2 * plane];
        let plaq = &mut ws.plaq[slot_act][..plane];
        self.plaquettes(links, n, plaq);
        let cond = &mut ws.cond[slot_act][..2 * plane];
        self.mask(plaq, l, n, cond);
        let acts = &mut ws.activations[slot_act];
        for (a, conv) in acts.iter_mut().zip(self.net.convs()) {
            a.resize(conv.c_out * plane, T::ZERO);
        }
        self.net.forward(
            &self.stencil,
            self.layer_params(l),
            cond,
            n,
            &self.masks[l].active,
            acts,
        );
    }

    /// (cos P, sin P) on layer l's frozen plaquettes, 0 elsewhere.
    fn mask(&self, plaq: &[f64], l: usize, n: usize, cond: &mut [T]) {
        cond.fill(T::ZERO);
        let plane = plaq.len();
        let (cos, sin) = cond.split_at_mut(plane);
        for &s in &self.masks[l].frozen {
            let r = s as usize * n..(s as usize + 1) * n;
            for i in r {
                let (sn, cs) = plaq[i].sin_cos();
                cos[i] = T::from_f64(cs);
                sin[i] = T::from_f64(sn);
            }
        }
    }

    /// Every layer in order (`inverse`: in reverse order, inverted) on one chunk.
    fn chunk_pass(&self, ws: &mut Workspace<T>, chunk: &[T], save: bool, inverse: bool) {
        self.load(ws, chunk);
        let layers = self.config.layers;
        let v = self.volume();
        let n = ws.lanes;
        let plane = v * n;
        let outputs = self.outputs();
        let circle = self.config.circle;
        for step in 0..layers {
            let l = if inverse { layers - 1 - step } else { step };
            let (slot_in, slot_out, slot_act) = Self::slots(step, save);
            self.condition(ws, l, slot_in, slot_act);
            let Workspace {
                links,
                plaq,
                activations,
                log_det,
                raw,
                ..
            } = ws;
            let (input, output) = two_slots(links, 2 * plane, slot_in, slot_out);
            output.copy_from_slice(input);
            let out = &activations[slot_act][self.net.convs().len() - 1];
            let plaq = &plaq[slot_act];
            let mask = &self.masks[l];
            let sign = if mask.mu == 0 { 1.0 } else { -1.0 };
            for &s in &mask.active {
                let s = s as usize;
                for b in 0..n {
                    let i = s * n + b;
                    for (p, r) in raw.iter_mut().enumerate() {
                        *r = out[p * plane + i].to_f64();
                    }
                    let t = raw[outputs - 1];
                    let map_raw = &raw[..outputs - 1];
                    let p_in = plaq[i];
                    let (delta, ld) = if inverse {
                        let (x, ld) = circle.inverse(wrap(p_in - t), map_raw);
                        (x - p_in, ld)
                    } else {
                        let (y, ld) = circle.forward(wrap(p_in), map_raw);
                        (y + t - p_in, ld)
                    };
                    log_det[b] += ld;
                    let link = (mask.mu * v + s) * n + b;
                    output[link] = T::from_f64(wrap(input[link].to_f64() + sign * delta));
                }
            }
        }
    }

    /// Backward pass of the reverse-KL loss through every layer of a chunk run with `save`
    /// (its plaquettes, conditioner inputs and activations reused, not recomputed):
    /// `ws.grad_links` holds dL/dx on entry; `log_det_weight` is dL/d(log|det J|) per sample.
    /// The parameter gradient lands in `ws.grad_params`.
    fn chunk_backward(&self, ws: &mut Workspace<T>, weights_t: &[T], log_det_weight: f64) {
        let v = self.volume();
        let n = ws.lanes;
        let plane = v * n;
        let outputs = self.outputs();
        let circle = self.config.circle;
        let np = self.net.param_len();
        ws.grad_params.fill(T::ZERO);
        for l in (0..self.config.layers).rev() {
            let Workspace {
                plaq,
                cond,
                activations,
                grad_links,
                grad_plaq,
                grad_out,
                grad_cond,
                scratch,
                grad_params,
                raw,
                grad_raw,
                ..
            } = ws;
            let (acts, plaq, cond) = (&activations[l], &plaq[l], &cond[l]);
            let out = &acts[acts.len() - 1];
            let mask = &self.masks[l];
            let sign = if mask.mu == 0 { 1.0 } else { -1.0 };
            let grad_out = &mut grad_out[..outputs * plane];
            grad_out.fill(T::ZERO);
            let grad_plaq = &mut grad_plaq[..plane];
            grad_plaq.fill(0.0);
            for &s in &mask.active {
                let s = s as usize;
                for b in 0..n {
                    let i = s * n + b;
                    for (p, r) in raw.iter_mut().enumerate() {
                        *r = out[p * plane + i].to_f64();
                    }
                    // delta = h(wrap P) + t - P moves the active link by sign * delta.
                    let g_delta = sign * grad_links[(mask.mu * v + s) * n + b].to_f64();
                    let gx = circle.backward(
                        wrap(plaq[i]),
                        &raw[..outputs - 1],
                        g_delta,
                        log_det_weight,
                        &mut grad_raw[..outputs - 1],
                    );
                    grad_plaq[i] = gx - g_delta;
                    for (p, &g) in grad_raw[..outputs - 1].iter().enumerate() {
                        grad_out[p * plane + i] = T::from_f64(g);
                    }
                    grad_out[(outputs - 1) * plane + i] = T::from_f64(g_delta);
                }
            }
            let grad_cond = &mut grad_cond[..2 * plane];
            grad_cond.fill(T::ZERO);
            self.net.backward(
                &self.stencil,
                &weights_t[l * np..(l + 1) * np],
                &cond[..2 * plane],
                acts,
                grad_out,
                n,
                &mask.active,
                &mask.frozen,
                &mut grad_params[l * np..(l + 1) * np],
                grad_cond,
                scratch,
            );
            let (g_cos, g_sin) = grad_cond.split_at(plane);
            for &s in &mask.frozen {
                for i in s as usize * n..(s as usize + 1) * n {
                    let (sn, cs) = plaq[i].sin_cos();
                    grad_plaq[i] = -g_cos[i].to_f64() * sn + g_sin[i].to_f64() * cs;
                }
            }
            // P(x) = theta_0(x) + theta_1(x+0) - theta_0(x+1) - theta_1(x).
            for &s in mask.active.iter().chain(&mask.frozen) {
                let s = s as usize;
                let [x0, x1] = self.forward_sites[s].map(|x| x as usize);
                for b in 0..n {
                    let g = grad_plaq[s * n + b];
                    for (link, sign) in [(s, 1.0), (v + x0, 1.0), (x1, -1.0), (v + s, -1.0)] {
                        let gl = &mut grad_links[link * n + b];
                        *gl = T::from_f64(gl.to_f64() + sign * g);
                    }
                }
            }
        }
    }

    /// Forward with saved activations, the target's action and force, and the backward pass
    /// of L = (1/B) sum_b [log q(x_b) + S(x_b)] for one chunk (B = `batch`). Returns (S,
    /// log|det J|) per sample; the chunk's gradient is left in `ws.grad_params`.
    fn chunk_reverse_kl(
        &self,
        ws: &mut Workspace<T>,
        chunk: &[T],
        target: &dyn Target,
        weights_t: &[T],
        batch: usize,
    ) -> (Vec<f64>, Vec<f64>) {
        self.chunk_pass(ws, chunk, true, false);
        let links = 2 * self.volume();
        let n = ws.lanes;
        let inv_batch = 1.0 / batch as f64;
        let last = self.config.layers;
        let mut actions = Vec::with_capacity(n);
        {
            let Workspace {
                links: slots,
                grad_links,
                x64,
                force,
                ..
            } = ws;
            let x = &slots[last * links * n..(last + 1) * links * n];
            for b in 0..n {
                for i in 0..links {
                    x64[i] = x[i * n + b].to_f64();
                }
                actions.push(target.force(x64, force));
                for i in 0..links {
                    grad_links[i * n + b] = T::from_f64(-force[i] * inv_batch);
                }
            }
        }
        self.chunk_backward(ws, weights_t, -inv_batch);
        (actions, ws.log_det[..n].to_vec())
    }

    /// Reverse-KL loss pieces and gradient for prior draws `z` (`[B, 2V]`): returns (S,
    /// log|det J|) per sample and writes dL/dtheta, L = (1/B) sum_b [log q + S], into `grad`.
    pub fn reverse_kl(
        &self,
        z: &[T],
        target: &dyn Target,
        grad: &mut [T],
    ) -> Result<(Vec<f64>, Vec<f64>)> {
        self.check_target(target)?;
        self.check_len("prior draws", z.len())?;
        if z.is_empty() {
            return Err(FlowError::Shape {
                what: "prior draws",
                len: 0,
                volume: 2 * self.volume(),
            });
        }
        let batch = z.len() / (2 * self.volume());
        let weights_t = self.net.transpose_layers(&self.params);
        let results = self.map_chunks(z, |flow, ws, chunk| {
            let out = flow.chunk_reverse_kl(ws, chunk, target, &weights_t, batch);
            (out, ws.grad_params.clone())
        });
        Ok(sum_chunk_gradients(results, grad))
    }

    fn check_target(&self, target: &dyn Target) -> Result<()> {
        let [l0, l1] = self.config.shape;
        if target.theory() != "u1" || target.shape() != [2, l0, l1] {
            return Err(FlowError::GaugeTargetMismatch {
                theory: target.theory(),
                target: target.shape(),
                flow: self.config.shape,
            });
        }
        Ok(())
    }
}

impl FlowModel for GaugeFlow<f32> {
    fn dim(&self) -> usize {
        2 * self.volume()
    }

    fn params(&self) -> Vec<f32> {
        self.params.clone()
    }

    fn set_params(&mut self, params: &[f32]) -> Result<()> {
        if params.len() != self.params.len() {
            return Err(FlowError::Shape {
                what: "parameter vector",
                len: params.len(),
                volume: self.params.len(),
            });
        }
        self.params.copy_from_slice(params);
        Ok(())
    }

    fn draw_prior(&self, n: usize, rng: &mut Xoshiro256PlusPlus) -> Vec<f32> {
        GaugeFlow::draw_prior(self, n, rng)
    }

    fn push_forward(&self, z: &[f32]) -> Result<(Vec<f32>, Vec<f64>)> {
        let (x, log_det) = self.forward(z)?;
        let prior = self.log_prior();
        Ok((x, log_det.iter().map(|ld| prior - ld).collect()))
    }

    fn log_prob(&self, x: &[f32]) -> Result<Vec<f64>> {
        GaugeFlow::log_prob(self, x)
    }

    fn reverse_kl_gradient_at(
        &mut self,
        target: &dyn Target,
        z: &[f32],
        grad: &mut [f32],
    ) -> Result<(Vec<f64>, Vec<f64>)> {
        let (actions, log_det) = self.reverse_kl(z, target, grad)?;
        let prior = self.log_prior();
        Ok((actions, log_det.iter().map(|ld| prior - ld).collect()))
    }

    fn forward_kl_gradient(&mut self, _x: &[f32], _grad: &mut [f32]) -> Result<Vec<f64>> {
        Err(FlowError::InvalidConfig {
            name: "objective",
            value: "forward".into(),
            fix: "gauge-equivariant flows train by reverse KL only; set train.objective = \"reverse\"",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use boltzflow_targets::u1::{U1, U1Spec};
    use rand::SeedableRng;

    /// Angle difference wrapped to (-pi, pi].
    fn angle_diff(a: f64, b: f64) -> f64 {
        let d = (a - b).rem_euclid(TAU);
        if d > std::f64::consts::PI { d - TAU } else { d }
    }

    fn config(shape: [usize; 2], layers: usize, circle: CircleMap, seed: u64) -> GaugeFlowConfig {
        GaugeFlowConfig {
            layers,
            circle,
            ..GaugeFlowConfig::tutorial(shape, seed)
        }
    }

    /// A flow moved far from the identity: every parameter offset deterministically by up to
    /// +-`scale`, so that the circle maps and rotations are far from trivial.
    fn scrambled<T: Real>(config: &GaugeFlowConfig, scale: f64) -> GaugeFlow<T> {
        let mut flow = GaugeFlow::<T>::new(config).unwrap();
        for (i, p) in flow.params_mut().iter_mut().enumerate() {
            let offset = ((i as u64 * 2654435761 % 1000) as f64 / 1000.0 - 0.5) * 2.0 * scale;
            *p = T::from_f64(p.to_f64() + offset);
        }
        flow
    }

    fn circles() -> [CircleMap; 3] {
        [
            CircleMap::Ncp { mix: 1 },
            CircleMap::Ncp { mix: 3 },
            CircleMap::Spline { bins: 4 },
        ]
    }

    fn raw_values(n: usize, seed: u64) -> Vec<f64> {
        (0..n)
            .map(|i| (((i as u64 * 2654435761 + seed * 97) % 1000) as f64 / 1000.0 - 0.5) * 3.0)
            .collect()
    }

    /// Each circle map sends [0, 2 pi) onto itself monotonically with h(0) = 0, its inverse
    /// undoes it, its log-derivative matches a central difference and is continuous across
    /// 0 = 2 pi, and its identity parameters give the identity.
    #[test]
    fn circle_maps_are_diffeomorphisms_of_the_circle() {
        for circle in circles() {
            let raw = raw_values(circle.params(), 3);
            assert!(circle.forward(0.0, &raw).0.abs() < 1e-12, "{circle:?}");
            let end = circle.forward(TAU - 1e-9, &raw);
            assert!((end.0 - TAU).abs() < 1e-7, "{circle:?}: {end:?}");
            let start = circle.forward(0.0, &raw);
            assert!(
                (start.1 - end.1).abs() < 1e-6,
                "{circle:?}: h'(0) vs h'(2 pi)"
            );
            let mut previous = -1.0;
            for i in 0..400 {
                let x = TAU * i as f64 / 400.0;
                let (y, ld) = circle.forward(x, &raw);
                assert!(y > previous, "{circle:?} not increasing at {x}");
                previous = y;
                let (back, ld_inv) = circle.inverse(y, &raw);
                assert!((back - x).abs() < 1e-10, "{circle:?} {x}: {back}");
                assert!((ld + ld_inv).abs() < 1e-10);
                let h = 1e-6;
                if x > h && x < TAU - h {
                    let num =
                        (circle.forward(x + h, &raw).0 - circle.forward(x - h, &raw).0) / (2.0 * h);
                    assert!(
                        (ld - num.ln()).abs() < 1e-6,
                        "{circle:?} {x}: {ld} vs {}",
                        num.ln()
                    );
                }
            }
            let id = circle.identity();
            for x in [0.0, 0.4, 3.0, 6.2] {
                let (y, ld) = circle.forward(x, &id);
                assert!((y - x).abs() < 1e-12 && ld.abs() < 1e-12, "{circle:?} {x}");
            }
        }
    }

    /// dL/dx and dL/draw of L = g h + c log h' against central differences.
    #[test]
    fn circle_map_gradients_match_finite_differences() {
        let (g, c) = (0.7, -1.3);
        for circle in circles() {
            let raw = raw_values(circle.params(), 5);
            let loss = |x: f64, r: &[f64]| {
                let (y, ld) = circle.forward(x, r);
                g * y + c * ld
            };
            for i in 0..30 {
                let x = TAU * (i as f64 + 0.37) / 30.0;
                let mut grad = vec![0.0; circle.params()];
                let gx = circle.backward(x, &raw, g, c, &mut grad);
                let h = 1e-6;
                let num = (loss(x + h, &raw) - loss(x - h, &raw)) / (2.0 * h);
                assert!(
                    (gx - num).abs() < 1e-6 * (1.0 + num.abs()),
                    "{circle:?} x {x}"
                );
                for p in 0..circle.params() {
                    let (mut up, mut down) = (raw.clone(), raw.clone());
                    up[p] += h;
                    down[p] -= h;
                    let num = (loss(x, &up) - loss(x, &down)) / (2.0 * h);
                    assert!(
                        (grad[p] - num).abs() < 1e-6 * (1.0 + num.abs()),
                        "{circle:?} x {x} raw {p}: {} vs {num}",
                        grad[p]
                    );
                }
            }
        }
    }

    /// f^-1(f(z)) = z on the circle and the log-dets cancel, for every circle map; the
    /// outputs lie in [0, 2 pi).
    #[test]
    fn inverse_undoes_forward() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(1);
        for circle in circles() {
            let flow = scrambled::<f64>(&config([8, 4], 8, circle, 2), 0.3);
            let z = flow.draw_prior(37, &mut rng);
            let (x, ld) = flow.forward(&z).unwrap();
            assert!(x.iter().all(|&a| (0.0..TAU).contains(&a)));
            assert!(ld.iter().any(|l| l.abs() > 0.1), "{circle:?}: {ld:?}");
            let (back, ld_inv) = flow.inverse(&x).unwrap();
            for (a, b) in back.iter().zip(&z) {
                assert!(angle_diff(*a, *b).abs() < 1e-9, "{circle:?}: {a} vs {b}");
            }
            for (a, b) in ld.iter().zip(&ld_inv) {
                assert!((a + b).abs() < 1e-9);
            }
        }
    }

    /// A random gauge transformation theta_mu(x) -> theta_mu(x) + a(x) - a(x + mu) of the
    /// prior draw transforms the output the same way and leaves the log-det unchanged, so
    /// log q(x) is gauge invariant (checked also through log_prob, in f32).
    #[test]
    fn flow_is_gauge_equivariant() {
        let shape = [8, 8];
        let v = 64;
        let lat = boltzflow_targets::geometry::Lattice::new(&[8, 8]).unwrap();
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(7);
        let gauge = |links: &[f64], alpha: &[f64]| -> Vec<f64> {
            let mut out = links.to_vec();
            for (b, config) in out.chunks_exact_mut(2 * v).enumerate() {
                for mu in 0..2 {
                    for s in 0..v {
                        let a = &alpha[b * v..(b + 1) * v];
                        config[mu * v + s] = wrap(config[mu * v + s] + a[s] - a[lat.fwd(s, mu)]);
                    }
                }
            }
            out
        };
        for circle in [CircleMap::Ncp { mix: 2 }, CircleMap::Spline { bins: 6 }] {
            let flow = scrambled::<f64>(&config(shape, 16, circle, 3), 0.3);
            let z = flow.draw_prior(20, &mut rng);
            let alpha: Vec<f64> = (0..20 * v).map(|_| rng.random::<f64>() * TAU).collect();
            let (x, ld) = flow.forward(&z).unwrap();
            let (xg, ldg) = flow.forward(&gauge(&z, &alpha)).unwrap();
            for (a, b) in xg.iter().zip(&gauge(&x, &alpha)) {
                assert!(angle_diff(*a, *b).abs() < 1e-9, "{circle:?}: {a} vs {b}");
            }
            for (a, b) in ld.iter().zip(&ldg) {
                assert!((a - b).abs() < 1e-9, "{circle:?}: {a} vs {b}");
            }
            let flow32 = flow.cast::<f32>();
            let x32: Vec<f32> = x.iter().map(|&a| a as f32).collect();
            let xg32: Vec<f32> = gauge(&x, &alpha).iter().map(|&a| a as f32).collect();
            let (lq, lqg) = (
                flow32.log_prob(&x32).unwrap(),
                flow32.log_prob(&xg32).unwrap(),
            );
            // f32 round-off through 16 inverse layers: at most 0.056 on |log q| ~ 235 here
            // (2.4e-4 relative); the f64 check above is the exact one.
            for (a, b) in lq.iter().zip(&lqg) {
                assert!(
                    (a - b).abs() < 5e-4 * (1.0 + a.abs()),
                    "{circle:?} f32: {a} vs {b}"
                );
            }
        }
    }

    /// log|det df/dz| equals the log-determinant of the numerical Jacobian of the whole map
    /// (central differences on the 2V = 32 links of a 4x4 lattice, all 16 layers).
    #[test]
    fn log_det_matches_numerical_jacobian() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(11);
        for circle in [CircleMap::Ncp { mix: 2 }, CircleMap::Spline { bins: 5 }] {
            let flow = scrambled::<f64>(&config([4, 4], 16, circle, 5), 0.3);
            let n = 32;
            for _ in 0..3 {
                let z = flow.draw_prior(1, &mut rng);
                let (x, ld) = flow.forward(&z).unwrap();
                let h = 1e-6;
                let mut jac = nalgebra::DMatrix::<f64>::zeros(n, n);
                for j in 0..n {
                    let (mut up, mut down) = (z.clone(), z.clone());
                    up[j] += h;
                    down[j] -= h;
                    let (xu, _) = flow.forward(&up).unwrap();
                    let (xd, _) = flow.forward(&down).unwrap();
                    for i in 0..n {
                        jac[(i, j)] = angle_diff(xu[i], xd[i]) / (2.0 * h);
                    }
                }
                let numerical = jac.determinant().abs().ln();
                assert!(
                    (numerical - ld[0]).abs() < 1e-5 * (1.0 + ld[0].abs()),
                    "{circle:?}: numerical {numerical} vs flow {} (x[0] {})",
                    ld[0],
                    x[0]
                );
            }
        }
    }

    /// The reverse-KL gradient against central differences of the loss
    /// L = (1/B) sum_b [log q(f(z_b)) + S(f(z_b))] at fixed z, in f64.
    #[test]
    fn reverse_kl_gradient_matches_finite_differences() {
        let target = U1::new(&U1Spec {
            shape: vec![4, 4],
            beta: 1.7,
        })
        .unwrap();
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(13);
        for circle in [CircleMap::Ncp { mix: 2 }, CircleMap::Spline { bins: 3 }] {
            let flow = scrambled::<f64>(&config([4, 4], 4, circle, 9), 0.3);
            let z = flow.draw_prior(5, &mut rng);
            let mut grad = vec![0.0; flow.params().len()];
            let (actions, log_det) = flow.reverse_kl(&z, &target, &mut grad).unwrap();
            let loss_of = |f: &GaugeFlow<f64>| {
                let (x, ld) = f.forward(&z).unwrap();
                let mut total = 0.0;
                for (config, ld) in x.chunks_exact(32).zip(&ld) {
                    total += f.log_prior() - ld + target.action(config);
                }
                total / 5.0
            };
            let loss = actions
                .iter()
                .zip(&log_det)
                .map(|(s, ld)| s + flow.log_prior() - ld)
                .sum::<f64>()
                / 5.0;
            assert!((loss - loss_of(&flow)).abs() < 1e-10);
            let mut probe = flow.cast::<f64>();
            let h = 1e-6;
            let n = grad.len();
            for p in (0..n).step_by(7).chain([n - 1, n - 2]) {
                let old = probe.params()[p];
                probe.params_mut()[p] = old + h;
                let up = loss_of(&probe);
                probe.params_mut()[p] = old - h;
                let down = loss_of(&probe);
                probe.params_mut()[p] = old;
                let num = (up - down) / (2.0 * h);
                assert!(
                    (grad[p] - num).abs() < 1e-6 * (1.0 + num.abs()),
                    "{circle:?} param {p}: {} vs {num}",
                    grad[p]
                );
            }
        }
    }

    /// Chunking and threads do not change per-sample results: a batch of 70 (three chunks)
    /// equals the samples pushed one at a time.
    #[test]
    fn results_do_not_depend_on_the_batch() {
        let flow = scrambled::<f32>(&config([8, 8], 4, CircleMap::Ncp { mix: 2 }, 1), 0.2);
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(3);
        let z = flow.draw_prior(70, &mut rng);
        let (x, ld) = flow.forward(&z).unwrap();
        for b in [0, 33, 69] {
            let (xb, ldb) = flow.forward(&z[b * 128..(b + 1) * 128]).unwrap();
            assert_eq!(&x[b * 128..(b + 1) * 128], &xb[..]);
            assert_eq!(ld[b], ldb[0]);
        }
    }

    /// Lattices the stripes do not tile, empty nets and foreign targets are refused with the
    /// fix named.
    #[test]
    fn bad_configurations_name_the_fix() {
        for shape in [[6, 8], [8, 7], [2, 4], [9, 9]] {
            let err = GaugeFlow::<f32>::new(&GaugeFlowConfig::tutorial(shape, 1)).unwrap_err();
            assert!(err.to_string().contains("divisible by 4"), "{err}");
        }
        let err =
            GaugeFlow::<f32>::new(&config([8, 8], 2, CircleMap::Ncp { mix: 0 }, 1)).unwrap_err();
        assert!(err.to_string().contains("mix"), "{err}");
        let flow = GaugeFlow::<f32>::new(&GaugeFlowConfig::tutorial([8, 8], 1)).unwrap();
        let other = U1::new(&U1Spec {
            shape: vec![4, 4],
            beta: 1.0,
        })
        .unwrap();
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(3);
        let z = flow.draw_prior(2, &mut rng);
        let mut grad = vec![0.0; flow.params().len()];
        let err = flow.reverse_kl(&z, &other, &mut grad).unwrap_err();
        assert!(err.to_string().contains("[2, 4, 4]"), "{err}");
    }
}
