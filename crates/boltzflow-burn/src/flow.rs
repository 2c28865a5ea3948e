//! [`Flow`]: a stack of coupling layers over any target's configuration space, generic over
//! the burn backend.
//!
//! Layer l splits the variables by its mask into frozen x1 and active x2, computes the
//! transform's parameters from x1 and maps x2:
//!
//! ```text
//! theta = NN_l(x1)                   (conditioner: periodic conv net or MLP)
//! y2 = T(x2; theta),  y1 = x1,        log|det J_l| = sum_active log|dT/dx2|
//! log q(x) = log pi(z) - sum_l log|det J_l|,   x = f_L o ... o f_1(z)
//! ```
//!
//! with the prior pi standard normal or uniform on [0, 2 pi) per variable. With `z2 = true`
//! (additive, affine, spline) each layer is made odd, T(-x2; theta(-x1)) = -T(x2; theta(x1)),
//! so q(-x) = q(x): the additive shift and affine shift are antisymmetrised, the affine
//! scale symmetrised, and the spline parameters averaged with their mirror image (bins and
//! derivatives reversed), theta_sym(x1) = [theta(x1) + R theta(-x1)] / 2.
//!
//! # Parameters
//! All parameters live in one flat vector (f32 on the device); layer by layer, each net's
//! convs (or linear maps) in order, weight then bias. Conv weights are `[c_out, c_in, K, K]`
//! (cross-correlation, PyTorch's convention), linear weights `[in, out]`. For the affine
//! transform with a conv conditioner this is exactly the layout of
//! `boltzflow_flow::AffineFlow`, so the two implementations load each other's parameters.
//!
//! # Centre of mass
//! With `centre_of_mass = "remove"` (particle systems `[n, d]` whose energy is translation
//! invariant, e.g. DW4 and LJ13) the couplings act on the `(n - 1) d` internal coordinates y
//! and x = y E with the orthonormal Helmert embedding `E [(n-1) d, n d]`,
//!
//! ```text
//! E[(k, c), (i, c)] = h_k[i],  h_k = (1, ..., 1, -k, 0, ..., 0) / sqrt(k (k + 1)),  k = 1 .. n-1
//! ```
//!
//! (k ones), so every sample has sum_i x_i = 0 and y = x E^T. E is an isometry onto the
//! centre-of-mass-free subspace, so it adds nothing to the log-det: log q is the density on
//! that subspace with respect to its own Lebesgue measure, and ln Z estimates
//! Z_int = integral over the subspace of exp(-S).
//!
//! # Prior variance
//! The normal prior has variance `v` (1 unless set with [`Flow::set_prior_variance`]):
//! the Boltzmann-generator trick of sampling temperature T with z ~ N(0, T / T_0).
//!
//! # Shapes
//! Configurations are `[N, dim]` with `dim` the product of `shape` (the target's flat
//! layout), prior draws `[N, latent_dim]` (`dim`, or `(n - 1) d` without the centre of
//! mass); log-dets and log q are `[N]`.

use std::f64::consts::PI;
use std::ops::Range;

use burn::tensor::activation::{leaky_relu, relu, silu};
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Element, Int, Tensor, TensorData};
use rand::{Rng, RngExt, SeedableRng};
use rand_distr::StandardNormal;
use rand_xoshiro::Xoshiro256PlusPlus;
use serde::{Deserialize, Serialize};

use crate::bijector::Transform;
use crate::{FlowError, Result};

/// Samples per forward pass in [`Flow::sample`] and [`Flow::log_prob`].
pub const SAMPLE_CHUNK: usize = 256;

/// Negative slope of the LeakyReLU (PyTorch's default).
pub const LEAKY_SLOPE: f64 = 0.01;

/// How a layer splits the variables into frozen and active ones.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Mask {
    /// Parity of the coordinate sum over `shape` (any number of dimensions): layer l freezes
    /// parity l mod 2.
    #[default]
    Checkerboard,
    /// Parity of the flat index.
    Alternating,
    /// First half of the flat variables frozen in even layers, second half in odd layers.
    Halves,
}

/// Activation of the hidden layers.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// LeakyReLU with slope 0.01 (the tutorial model).
    #[default]
    LeakyRelu,
    /// ReLU.
    Relu,
    /// tanh.
    Tanh,
    /// SiLU x sigmoid(x).
    Silu,
}

impl Activation {
    fn apply<B: Backend, const D: usize>(self, x: Tensor<B, D>) -> Tensor<B, D> {
        match self {
            Self::LeakyRelu => leaky_relu(x, LEAKY_SLOPE),
            Self::Relu => relu(x),
            Self::Tanh => x.tanh(),
            Self::Silu => silu(x),
        }
    }
}

fn default_hidden() -> Vec<usize> {
    vec![8, 8]
}
fn default_kernel() -> usize {
    3
}

/// The network that maps frozen variables to transform parameters.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Conditioner {
    /// Periodic (circularly padded) conv net on a 2D lattice: translation equivariant.
    Conv {
        /// Hidden channels (default `[8, 8]`).
        #[serde(default = "default_hidden")]
        hidden: Vec<usize>,
        /// Odd kernel size K (default 3).
        #[serde(default = "default_kernel")]
        kernel: usize,
        /// Hidden activation (default leaky_relu).
        #[serde(default)]
        activation: Activation,
    },
    /// Fully connected net from the frozen to the active variables' parameters.
    Mlp {
        /// Hidden widths (default `[8, 8]`).
        #[serde(default = "default_hidden")]
        hidden: Vec<usize>,
        /// Hidden activation (default leaky_relu).
        #[serde(default)]
        activation: Activation,
    },
}

/// The base distribution pi(z).
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Prior {
    /// z ~ N(0, 1) per variable.
    #[default]
    Normal,
    /// z ~ U[0, 2 pi) per variable (angles).
    UniformCircle,
}

impl Prior {
    /// log pi(z) of one sample (f32 or f64 values), in f64.
    pub fn log_density<T: Copy + Into<f64>>(self, z: &[T]) -> f64 {
        self.log_density_with(z, 1.0)
    }

    /// log pi(z) with the normal prior's variance `var` (N(0, var) per variable; the
    /// circular prior ignores it).
    pub fn log_density_with<T: Copy + Into<f64>>(self, z: &[T], var: f64) -> f64 {
        match self {
            Self::Normal => {
                -0.5 * z.iter().map(|&v| v.into().powi(2)).sum::<f64>() / var
                    - 0.5 * z.len() as f64 * (2.0 * PI * var).ln()
            }
            Self::UniformCircle => -(z.len() as f64) * (2.0 * PI).ln(),
        }
    }

    /// n values drawn from pi.
    pub fn draw<R: Rng + ?Sized>(self, n: usize, rng: &mut R) -> Vec<f32> {
        self.draw_with(n, 1.0, rng)
    }

    /// n values drawn from pi with the normal prior's variance `var`.
    pub fn draw_with<R: Rng + ?Sized>(self, n: usize, var: f64, rng: &mut R) -> Vec<f32> {
        let sd = var.sqrt();
        match self {
            Self::Normal => (0..n)
                .map(|_| (sd * rng.sample::<f64, _>(StandardNormal)) as f32)
                .collect(),
            Self::UniformCircle => (0..n)
                .map(|_| (rng.random::<f64>() * 2.0 * PI) as f32)
                .collect(),
        }
    }
}

fn default_layers() -> usize {
    16
}

/// What a flow over particles `[n, d]` does with the centre of mass.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CentreOfMass {
    /// The flow models every coordinate.
    #[default]
    Keep,
    /// The flow models the `(n - 1) d` internal coordinates; samples have zero centre of
    /// mass (module docs).
    Remove,
}

/// Architecture and initialisation of a [`Flow`].
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FlowConfig {
    /// Shape of one configuration (the target's `shape()`, e.g. `[8, 8]`).
    pub shape: Vec<usize>,
    /// Number of coupling layers (default 16).
    #[serde(default = "default_layers")]
    pub layers: usize,
    /// The element-wise transform.
    pub transform: Transform,
    /// The parameter network.
    pub conditioner: Conditioner,
    /// The frozen/active split.
    #[serde(default)]
    pub mask: Mask,
    /// Make every layer odd, so q(-x) = q(x) (phi^4's Z2 symmetry).
    #[serde(default)]
    pub z2: bool,
    /// The base distribution.
    #[serde(default)]
    pub prior: Prior,
    /// Centre-of-mass handling of particle systems `[n, d]` (default keep).
    #[serde(default)]
    pub centre_of_mass: CentreOfMass,
    /// Seed of the parameter initialisation.
    pub seed: u64,
}

impl FlowConfig {
    /// `layers` couplings of `transform` on a 2D lattice with the tutorial conditioner
    /// (periodic conv, hidden [8, 8], 3x3 kernels, LeakyReLU), checkerboard masks, a normal
    /// prior and no Z2.
    pub fn lattice(shape: [usize; 2], layers: usize, transform: Transform, seed: u64) -> Self {
        Self {
            shape: shape.to_vec(),
            layers,
            transform,
            conditioner: Conditioner::Conv {
                hidden: default_hidden(),
                kernel: default_kernel(),
                activation: Activation::LeakyRelu,
            },
            mask: Mask::Checkerboard,
            z2: false,
            prior: Prior::Normal,
            centre_of_mass: CentreOfMass::Keep,
            seed,
        }
    }

    /// Checks the architecture; each error names the key and the fix.
    pub fn validate(&self) -> Result<()> {
        self.transform.validate()?;
        let invalid = |name, value: String, fix| Err(FlowError::InvalidConfig { name, value, fix });
        if self.layers == 0 {
            return invalid(
                "layers",
                "0".into(),
                "a flow needs at least one coupling layer",
            );
        }
        if self.centre_of_mass == CentreOfMass::Remove {
            if self.shape.len() != 2 || self.shape[0] < 2 {
                return invalid(
                    "centre_of_mass",
                    format!("remove on shape {:?}", self.shape),
                    "removing the centre of mass needs particles [n >= 2, d]; set centre_of_mass = \"keep\"",
                );
            }
            if matches!(self.prior, Prior::UniformCircle) {
                return invalid(
                    "centre_of_mass",
                    "remove".into(),
                    "angles have no centre of mass; set centre_of_mass = \"keep\"",
                );
            }
        }
        if self.latent_dim() < 2 {
            return invalid(
                "shape",
                format!("{:?}", self.shape),
                "a coupling flow needs at least two variables",
            );
        }
        if self.z2 && matches!(self.transform, Transform::CircularSpline { .. }) {
            return invalid(
                "z2",
                "true".into(),
                "angles have no x -> -x symmetry: set z2 = false for circular splines",
            );
        }
        match &self.conditioner {
            Conditioner::Conv { .. } if self.centre_of_mass == CentreOfMass::Remove => {
                return invalid(
                    "conditioner",
                    "conv without the centre of mass".into(),
                    "internal particle coordinates are no lattice; use an mlp conditioner",
                );
            }
            Conditioner::Conv { hidden, kernel, .. } => {
                if self.shape.len() != 2 {
                    return invalid(
                        "conditioner",
                        format!("conv on shape {:?}", self.shape),
                        "conv conditioners need a 2D lattice; use an mlp conditioner (flow.conditioner = \"mlp\") for other shapes",
                    );
                }
                if kernel % 2 == 0 {
                    return invalid(
                        "kernel",
                        kernel.to_string(),
                        "the kernel size must be odd, e.g. 3",
                    );
                }
                if *kernel > self.shape[0] || *kernel > self.shape[1] {
                    return invalid(
                        "kernel",
                        kernel.to_string(),
                        "the kernel must not be wider than the lattice",
                    );
                }
                if hidden.contains(&0) {
                    return invalid(
                        "hidden",
                        format!("{hidden:?}"),
                        "every hidden layer needs >= 1 channel",
                    );
                }
            }
            Conditioner::Mlp { hidden, .. } => {
                if hidden.contains(&0) {
                    return invalid(
                        "hidden",
                        format!("{hidden:?}"),
                        "every hidden layer needs >= 1 unit",
                    );
                }
            }
        }
        let latent = self.latent_shape();
        if matches!(self.mask, Mask::Checkerboard) && latent.iter().any(|l| l % 2 == 1) {
            return invalid(
                "shape",
                format!("{latent:?}"),
                "checkerboard masks need even extents on a periodic lattice; use mask = \"alternating\" (or \"halves\")",
            );
        }
        Ok(())
    }

    /// Number of variables per configuration.
    pub fn dim(&self) -> usize {
        self.shape.iter().product()
    }

    /// Shape of the variables the couplings act on: `shape`, or `[n - 1, d]` without the
    /// centre of mass.
    pub fn latent_shape(&self) -> Vec<usize> {
        match self.centre_of_mass {
            CentreOfMass::Remove if self.shape.len() == 2 && self.shape[0] >= 1 => {
                vec![self.shape[0] - 1, self.shape[1]]
            }
            _ => self.shape.clone(),
        }
    }

    /// Number of variables the couplings act on (prior draws per configuration).
    pub fn latent_dim(&self) -> usize {
        self.latent_shape().iter().product()
    }
}

/// The orthonormal Helmert embedding `E [(n-1) d, n d]` (row-major) of the internal
/// coordinates of n particles in d dimensions (module docs).
pub fn helmert_embedding(n: usize, d: usize) -> Vec<f64> {
    let mut e = vec![0.0; (n - 1) * d * n * d];
    for k in 1..n {
        let norm = 1.0 / ((k * (k + 1)) as f64).sqrt();
        for i in 0..=k {
            let h = if i < k { norm } else { -(k as f64) * norm };
            for c in 0..d {
                e[((k - 1) * d + c) * n * d + i * d + c] = h;
            }
        }
    }
    e
}

/// One linear map of a conditioner: a conv `[c_out, c_in, K, K]` or a dense `[in, out]` map.
#[derive(Clone, Debug)]
struct Map {
    /// Weight and bias ranges in the flat parameter vector.
    weight: Range<usize>,
    bias: Range<usize>,
    c_in: usize,
    c_out: usize,
}

/// Host-side plan of one coupling layer.
#[derive(Clone, Debug)]
struct Layer {
    frozen: Vec<i64>,
    active: Vec<i64>,
    /// Position of variable i in `cat([frozen, active])`.
    inverse_permutation: Vec<i64>,
    /// 1 on frozen variables, 0 on active ones.
    frozen_indicator: Vec<f32>,
    maps: Vec<Map>,
}

/// Device-side index tables of one layer (built once per flow and device).
#[derive(Clone, Debug)]
struct LayerTables<B: Backend> {
    frozen: Tensor<B, 1, Int>,
    active: Tensor<B, 1, Int>,
    inverse_permutation: Tensor<B, 1, Int>,
    /// `[1, dim]`.
    frozen_indicator: Tensor<B, 2>,
}

/// A coupling flow with its parameters on the device of backend `B`.
#[derive(Clone, Debug)]
pub struct Flow<B: Backend> {
    config: FlowConfig,
    layers: Vec<Layer>,
    tables: Vec<LayerTables<B>>,
    /// Periodic K x K neighbourhoods: `neighbours[s K^2 + k]` = site (y + ky - K/2, x + kx -
    /// K/2) of site s = (y, x), k = ky K + kx (conv conditioners only).
    neighbours: Option<Tensor<B, 1, Int>>,
    /// The centre-of-mass embedding `E` and its transpose (module docs).
    embedding: Option<(Tensor<B, 2>, Tensor<B, 2>)>,
    /// Variance of the normal prior.
    prior_var: f64,
    params: Tensor<B, 1>,
    device: B::Device,
}

impl<B: Backend> Flow<B> {
    /// A flow with freshly initialised parameters (seeded by `config.seed`): every map
    /// uniform in +-1/sqrt(fan_in) (PyTorch's default), except that the output map starts
    /// near the identity transform (weights scaled by 0.01, bias at
    /// [`Transform::identity_params`]), as in the native kernels.
    pub fn new(config: &FlowConfig, device: &B::Device) -> Result<Self> {
        config.validate()?;
        let layers = plan(config);
        let len = layers
            .last()
            .and_then(|l| l.maps.last())
            .map_or(0, |m| m.bias.end);
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(config.seed);
        let mut params = vec![0f32; len];
        let identity = config.transform.identity_params();
        let taps = match config.conditioner {
            Conditioner::Conv { kernel, .. } => kernel * kernel,
            Conditioner::Mlp { .. } => 1,
        };
        for layer in &layers {
            for (i, map) in layer.maps.iter().enumerate() {
                let last = i + 1 == layer.maps.len();
                let bound = 1.0 / ((map.c_in * taps) as f64).sqrt();
                let scale = if last { 0.01 } else { 1.0 };
                for w in &mut params[map.weight.clone()] {
                    *w = (scale * bound * (2.0 * rng.random::<f64>() - 1.0)) as f32;
                }
                for (j, b) in params[map.bias.clone()].iter_mut().enumerate() {
                    *b = if last {
                        identity[j % identity.len()] as f32
                    } else {
                        (bound * (2.0 * rng.random::<f64>() - 1.0)) as f32
                    };
                }
            }
        }
        let params =
            Tensor::from_data(TensorData::new(params, [len]), (device, float_dtype::<B>()));
        let (tables, neighbours) = build_tables::<B>(config, &layers, device);
        Ok(Self {
            config: config.clone(),
            layers,
            tables,
            neighbours,
            embedding: embedding_tables(config, device),
            prior_var: 1.0,
            params,
            device: device.clone(),
        })
    }

    /// Variance of the normal prior (1 by default).
    pub fn prior_variance(&self) -> f64 {
        self.prior_var
    }

    /// Sets the normal prior's variance `var > 0` (sampling at T = var T_0).
    pub fn set_prior_variance(&mut self, var: f64) -> Result<()> {
        if !(var.is_finite() && var > 0.0) {
            return Err(FlowError::InvalidConfig {
                name: "prior variance",
                value: var.to_string(),
                fix: "the prior variance (temperature ratio) must be finite and > 0",
            });
        }
        self.prior_var = var;
        Ok(())
    }

    /// log pi(z) of one host prior draw in f64.
    pub fn log_prior_host<T: Copy + Into<f64>>(&self, z: &[T]) -> f64 {
        self.config.prior.log_density_with(z, self.prior_var)
    }

    /// `n` host prior draws `[n, latent_dim]`.
    pub fn draw_prior<R: Rng + ?Sized>(&self, n: usize, rng: &mut R) -> Vec<f32> {
        self.config
            .prior
            .draw_with(n * self.config.latent_dim(), self.prior_var, rng)
    }

    /// The architecture.
    pub fn config(&self) -> &FlowConfig {
        &self.config
    }

    /// The device the parameters live on.
    pub fn device(&self) -> &B::Device {
        &self.device
    }

    /// Number of parameters.
    pub fn param_count(&self) -> usize {
        self.params.dims()[0]
    }

    /// The parameter tensor `[param_count]`.
    pub fn params(&self) -> &Tensor<B, 1> {
        &self.params
    }

    /// The parameters, copied to the host.
    pub fn params_host(&self) -> Vec<f32> {
        self.params
            .clone()
            .into_data()
            .convert::<f32>()
            .to_vec()
            .unwrap_or_default()
    }

    /// Replaces the parameters; the length must be [`Flow::param_count`].
    pub fn set_params(&mut self, params: &[f32]) -> Result<()> {
        if params.len() != self.param_count() {
            return Err(FlowError::Shape {
                what: "parameter vector",
                len: params.len(),
                volume: self.param_count(),
            });
        }
        self.params = Tensor::from_data(
            TensorData::new(params.to_vec(), [params.len()]),
            self.options(),
        );
        Ok(())
    }

    /// Replaces the parameter tensor (e.g. by one that requires gradients).
    pub fn with_params(&self, params: Tensor<B, 1>) -> Self {
        Self {
            params,
            ..self.clone()
        }
    }

    /// Uploads `[n, dim]` host values.
    pub fn tensor(&self, values: &[f32]) -> Result<Tensor<B, 2>> {
        let dim = self.config.dim();
        if values.is_empty() || !values.len().is_multiple_of(dim) {
            return Err(FlowError::Shape {
                what: "configuration buffer",
                len: values.len(),
                volume: dim,
            });
        }
        Ok(Tensor::from_data(
            TensorData::new(values.to_vec(), [values.len() / dim, dim]),
            self.options(),
        ))
    }

    /// x = f(z) and sum_l log|det J_l|. Shapes: `[N, latent_dim]` -> (`[N, dim]`, `[N]`).
    pub fn forward(&self, z: Tensor<B, 2>) -> (Tensor<B, 2>, Tensor<B, 1>) {
        let [n, _] = z.dims();
        let mut log_det = Tensor::<B, 1>::zeros([n], self.options());
        let mut x = z;
        for l in 0..self.layers.len() {
            let (y, ld) = self.couple(l, x, false);
            x = y;
            log_det = log_det + ld;
        }
        if let Some((e, _)) = &self.embedding {
            x = x.matmul(e.clone());
        }
        (x, log_det)
    }

    /// The coordinates the couplings act on: y = x E^T without the centre of mass, x
    /// otherwise. Shapes: `[N, dim]` -> `[N, latent_dim]`.
    pub fn internal(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        match &self.embedding {
            Some((_, e_t)) => x.matmul(e_t.clone()),
            None => x,
        }
    }

    /// z = f^-1(x) and sum_l log|det J_l^-1| (= minus the forward log-det at z). Without
    /// the centre of mass, x is first projected onto the internal coordinates y = x E^T
    /// (its centre of mass, if any, is dropped). Shapes: `[N, dim]` -> (`[N, latent_dim]`,
    /// `[N]`).
    pub fn inverse(&self, x: Tensor<B, 2>) -> (Tensor<B, 2>, Tensor<B, 1>) {
        let [n, _] = x.dims();
        let mut log_det = Tensor::<B, 1>::zeros([n], self.options());
        let mut z = self.internal(x);
        for l in (0..self.layers.len()).rev() {
            let (y, ld) = self.couple(l, z, true);
            z = y;
            log_det = log_det + ld;
        }
        (z, log_det)
    }

    /// log pi(z) per sample as a tensor `[N]` (for losses).
    pub fn log_prior(&self, z: Tensor<B, 2>) -> Tensor<B, 1> {
        let [n, dim] = z.dims();
        let var = self.prior_var;
        match self.config.prior {
            Prior::Normal => (z.square().sum_dim(1).mul_scalar(-0.5 / var)
                - (0.5 * dim as f64 * (2.0 * PI * var).ln()))
            .reshape([n]),
            Prior::UniformCircle => {
                Tensor::<B, 1>::full([n], -(dim as f64) * (2.0 * PI).ln(), self.options())
            }
        }
    }

    /// `n` samples x ~ q and log q(x) (f64: log pi(z) on the host in f64 minus the log-det).
    /// Runs in chunks of [`SAMPLE_CHUNK`] samples (the conv conditioners' patch matrices grow
    /// with the batch). Shapes: (`[n, dim]` row-major, `[n]`).
    pub fn sample<R: Rng + ?Sized>(&self, n: usize, rng: &mut R) -> (Vec<f32>, Vec<f64>) {
        let z = self.draw_prior(n, rng);
        self.push_forward(&z)
            .expect("the prior draws whole configurations")
    }

    /// x = f(z) and log q(x) = log pi(z) - log|det df/dz| of host prior draws `z`
    /// `[n, latent_dim]`, in chunks of [`SAMPLE_CHUNK`] samples.
    pub fn push_forward(&self, z: &[f32]) -> Result<(Vec<f32>, Vec<f64>)> {
        let dim = self.config.latent_dim();
        if !z.len().is_multiple_of(dim) {
            return Err(FlowError::Shape {
                what: "prior draws",
                len: z.len(),
                volume: dim,
            });
        }
        let n = z.len() / dim;
        let mut x = Vec::with_capacity(n * self.config.dim());
        let mut log_q = Vec::with_capacity(n);
        for z in z.chunks(SAMPLE_CHUNK * dim) {
            let m = z.len() / dim;
            let zt = Tensor::from_data(TensorData::new(z.to_vec(), [m, dim]), self.options());
            let (xt, log_det) = self.forward(zt);
            x.extend(host(xt));
            log_q.extend(
                z.chunks(dim)
                    .zip(host64(log_det))
                    .map(|(z, ld)| self.log_prior_host(z) - ld),
            );
        }
        Ok((x, log_q))
    }

    /// log q(x) of `[n, dim]` host configurations (in chunks of [`SAMPLE_CHUNK`]).
    pub fn log_prob(&self, x: &[f32]) -> Result<Vec<f64>> {
        let dim = self.config.dim();
        let latent = self.config.latent_dim();
        self.tensor(x)?;
        let mut log_q = Vec::with_capacity(x.len() / dim);
        for x in x.chunks(SAMPLE_CHUNK * dim) {
            let (z, log_det) = self.inverse(self.tensor(x)?);
            let z = host64(z);
            log_q.extend(
                z.chunks(latent)
                    .zip(host64(log_det))
                    .map(|(z, ld)| self.log_prior_host(z) + ld),
            );
        }
        Ok(log_q)
    }

    /// One coupling layer (forward or inverse) of `x [N, dim]`; returns `(y, log-det [N])`.
    fn couple(&self, l: usize, x: Tensor<B, 2>, inverse: bool) -> (Tensor<B, 2>, Tensor<B, 1>) {
        let [n, _] = x.dims();
        let tables = &self.tables[l];
        let params = self.conditioner_output(l, x.clone());
        let x1 = x.clone().select(1, tables.frozen.clone());
        let x2 = x.select(1, tables.active.clone());
        let (y2, log_det) = if inverse {
            self.config.transform.inverse(x2, params)
        } else {
            self.config.transform.forward(x2, params)
        };
        let y = Tensor::cat(vec![x1, y2], 1).select(1, tables.inverse_permutation.clone());
        (y, log_det.sum_dim(1).reshape([n]))
    }

    /// Transform parameters of the active variables `[N, M, P]` from the frozen ones,
    /// symmetrised for Z2 if configured.
    fn conditioner_output(&self, l: usize, x: Tensor<B, 2>) -> Tensor<B, 3> {
        if !self.config.z2 {
            return self.finish(self.net(l, x));
        }
        let [n, _] = x.dims();
        // Symmetrised after the affine tanh, as in the native kernels.
        let both = self.finish(self.net(l, Tensor::cat(vec![x.clone(), -x], 0)));
        let [_, m, p] = both.dims();
        let plus = both.clone().slice([0..n, 0..m, 0..p]);
        let minus = both.slice([n..2 * n, 0..m, 0..p]);
        let channels = |t: Tensor<B, 3>, r: Range<usize>| t.slice([0..n, 0..m, r]);
        match self.config.transform {
            // [t]: t odd.
            Transform::Additive => (plus - minus).mul_scalar(0.5),
            // [s, t]: s even, t odd.
            Transform::Affine => {
                let s =
                    (channels(plus.clone(), 0..1) + channels(minus.clone(), 0..1)).mul_scalar(0.5);
                let t = (channels(plus, 1..2) - channels(minus, 1..2)).mul_scalar(0.5);
                Tensor::cat(vec![s, t], 2)
            }
            // [w, h, d]: average with the mirror image (bins and knots reversed).
            Transform::Spline { bins, .. } => {
                let mirror = Tensor::cat(
                    vec![
                        channels(minus.clone(), 0..bins).flip([2]),
                        channels(minus.clone(), bins..2 * bins).flip([2]),
                        channels(minus, 2 * bins..3 * bins - 1).flip([2]),
                    ],
                    2,
                );
                (plus + mirror).mul_scalar(0.5)
            }
            Transform::CircularSpline { .. } => {
                unreachable!("validate rejects z2 with circular splines")
            }
        }
    }

    /// The affine transform's bounded (s, t) = tanh(raw) (the tutorial's final tanh).
    fn finish(&self, raw: Tensor<B, 3>) -> Tensor<B, 3> {
        match self.config.transform {
            Transform::Affine => raw.tanh(),
            _ => raw,
        }
    }

    /// The raw conditioner output `[N, M, P]` of `x [N, dim]`.
    ///
    /// Conv nets run channels-last as gather + matmul (im2col with the periodic neighbour
    /// table): `h [N, V, C] -> patches [N V, K^2 C] -> patches W [N V, C_out] + b`, with
    /// `W[(k, ci), co] = w[co, ci, k]`; this is the periodic cross-correlation of PyTorch's
    /// `Conv2d(padding_mode="circular")` in a handful of large ops.
    fn net(&self, l: usize, x: Tensor<B, 2>) -> Tensor<B, 3> {
        let layer = &self.layers[l];
        let tables = &self.tables[l];
        let [n, dim] = x.dims();
        let m = layer.active.len();
        let p = self.config.transform.params_per_variable();
        let last = layer.maps.len() - 1;
        match (&self.config.conditioner, &self.neighbours) {
            (
                Conditioner::Conv {
                    kernel, activation, ..
                },
                Some(neighbours),
            ) => {
                let taps = kernel * kernel;
                let mut h = (x * tables.frozen_indicator.clone()).reshape([n, dim, 1]);
                for (i, map) in layer.maps.iter().enumerate() {
                    let weight = self
                        .slice(&map.weight)
                        .reshape([map.c_out, map.c_in, taps])
                        .permute([2, 1, 0])
                        .reshape([taps * map.c_in, map.c_out]);
                    let bias = self.slice(&map.bias).reshape([1, map.c_out]);
                    let patches = h
                        .select(1, neighbours.clone())
                        .reshape([n * dim, taps * map.c_in]);
                    let out = patches.matmul(weight) + bias;
                    h = if i < last { activation.apply(out) } else { out }
                        .reshape([n, dim, map.c_out]);
                }
                h.select(1, tables.active.clone())
            }
            (Conditioner::Mlp { activation, .. }, _)
            | (Conditioner::Conv { activation, .. }, None) => {
                let mut h = x.select(1, tables.frozen.clone());
                for (i, map) in layer.maps.iter().enumerate() {
                    let weight = self.slice(&map.weight).reshape([map.c_in, map.c_out]);
                    let bias = self.slice(&map.bias).unsqueeze::<2>();
                    h = h.matmul(weight) + bias;
                    if i < last {
                        h = activation.apply(h);
                    }
                }
                h.reshape([n, m, p])
            }
        }
    }

    /// Creation options for float tensors: this device with the backend's float dtype
    /// (burn 0.21 keys the default float dtype by device, so `NdArray<f32>` and
    /// `NdArray<f64>` in one process would otherwise share whichever came first).
    pub fn options(&self) -> (&B::Device, DType) {
        (&self.device, float_dtype::<B>())
    }

    fn slice(&self, range: &Range<usize>) -> Tensor<B, 1> {
        self.params.clone().slice([range.clone()])
    }
}

/// The float dtype of backend `B`.
pub fn float_dtype<B: Backend>() -> DType {
    <B::FloatElem as Element>::dtype()
}

/// A tensor's values on the host as f64 (exact for f32 and f64 backends): log-dets and
/// latent values that enter log q, which is accumulated in f64.
pub fn host64<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f64> {
    t.into_data()
        .convert::<f64>()
        .to_vec()
        .expect("float tensor data converts to Vec<f64>")
}

/// A tensor's values on the host as f32.
pub fn host<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .to_vec()
        .expect("f32 tensor data converts to Vec<f32>")
}

/// The layers' masks and parameter ranges.
fn plan(config: &FlowConfig) -> Vec<Layer> {
    let dim = config.latent_dim();
    let shape = config.latent_shape();
    let p = config.transform.params_per_variable();
    let coordinate_parity = |mut i: usize| -> usize {
        let mut sum = 0;
        for &l in shape.iter().rev() {
            sum += i % l;
            i /= l;
        }
        sum % 2
    };
    let mut offset = 0;
    let mut layers = Vec::with_capacity(config.layers);
    for l in 0..config.layers {
        let is_frozen = |i: usize| match config.mask {
            Mask::Checkerboard => coordinate_parity(i) == l % 2,
            Mask::Alternating => i % 2 == l % 2,
            Mask::Halves => (i < dim / 2) == (l % 2 == 0),
        };
        let frozen: Vec<i64> = (0..dim)
            .filter(|&i| is_frozen(i))
            .map(|i| i as i64)
            .collect();
        let active: Vec<i64> = (0..dim)
            .filter(|&i| !is_frozen(i))
            .map(|i| i as i64)
            .collect();
        let mut inverse_permutation = vec![0i64; dim];
        for (position, &i) in frozen.iter().chain(&active).enumerate() {
            inverse_permutation[i as usize] = position as i64;
        }
        let frozen_indicator = (0..dim)
            .map(|i| if is_frozen(i) { 1.0 } else { 0.0 })
            .collect();
        let (channels, taps) = match &config.conditioner {
            Conditioner::Conv { hidden, kernel, .. } => {
                let mut c = vec![1];
                c.extend(hidden);
                c.push(p);
                (c, kernel * kernel)
            }
            Conditioner::Mlp { hidden, .. } => {
                let mut c = vec![frozen.len()];
                c.extend(hidden);
                c.push(active.len() * p);
                (c, 1)
            }
        };
        let maps = channels
            .windows(2)
            .map(|c| {
                let weight = offset..offset + c[0] * c[1] * taps;
                let bias = weight.end..weight.end + c[1];
                offset = bias.end;
                Map {
                    weight,
                    bias,
                    c_in: c[0],
                    c_out: c[1],
                }
            })
            .collect();
        layers.push(Layer {
            frozen,
            active,
            inverse_permutation,
            frozen_indicator,
            maps,
        });
    }
    layers
}

impl<B: burn::tensor::backend::AutodiffBackend> Flow<B> {
    /// The same flow on the inner (non-autodiff) backend, for sampling without a graph.
    pub fn valid(&self) -> Flow<B::InnerBackend> {
        let (tables, neighbours) = build_tables(&self.config, &self.layers, &self.device);
        Flow {
            config: self.config.clone(),
            layers: self.layers.clone(),
            tables,
            neighbours,
            embedding: embedding_tables(&self.config, &self.device),
            prior_var: self.prior_var,
            params: self.params.clone().inner(),
            device: self.device.clone(),
        }
    }
}

/// `E` and `E^T` on `device` when the flow removes the centre of mass.
fn embedding_tables<B: Backend>(
    config: &FlowConfig,
    device: &B::Device,
) -> Option<(Tensor<B, 2>, Tensor<B, 2>)> {
    if config.centre_of_mass != CentreOfMass::Remove {
        return None;
    }
    let [n, d] = [config.shape[0], config.shape[1]];
    let e = Tensor::<B, 2>::from_data(
        TensorData::new(helmert_embedding(n, d), [(n - 1) * d, n * d]),
        (device, float_dtype::<B>()),
    );
    let e_t = e.clone().transpose();
    Some((e, e_t))
}

/// The device-side tables of every layer and, for conv conditioners, the neighbour table.
fn build_tables<B: Backend>(
    config: &FlowConfig,
    layers: &[Layer],
    device: &B::Device,
) -> (Vec<LayerTables<B>>, Option<Tensor<B, 1, Int>>) {
    let index = |values: &[i64]| -> Tensor<B, 1, Int> {
        Tensor::from_data(TensorData::new(values.to_vec(), [values.len()]), device)
    };
    let tables = layers
        .iter()
        .map(|layer| LayerTables {
            frozen: index(&layer.frozen),
            active: index(&layer.active),
            inverse_permutation: index(&layer.inverse_permutation),
            frozen_indicator: Tensor::from_data(
                TensorData::new(
                    layer.frozen_indicator.clone(),
                    [1, layer.frozen_indicator.len()],
                ),
                (device, float_dtype::<B>()),
            ),
        })
        .collect();
    let neighbours = match config.conditioner {
        Conditioner::Conv { kernel, .. } if config.shape.len() == 2 => {
            let [l0, l1] = [config.shape[0] as i64, config.shape[1] as i64];
            let half = (kernel / 2) as i64;
            let mut table = Vec::with_capacity((l0 * l1) as usize * kernel * kernel);
            for y in 0..l0 {
                for x in 0..l1 {
                    for ky in 0..kernel as i64 {
                        for kx in 0..kernel as i64 {
                            let ny = (y + ky - half).rem_euclid(l0);
                            let nx = (x + kx - half).rem_euclid(l1);
                            table.push(ny * l1 + nx);
                        }
                    }
                }
            }
            Some(index(&table))
        }
        _ => None,
    };
    (tables, neighbours)
}
