//! Normalizing flows for lattice field theory: the hand-written f32 CPU hot path of affine
//! coupling flows with periodic conv-net conditioners (Albergo et al. 2021,
//! arXiv:2101.08176), trained by reverse KL.
//!
//! - [`conv`]: periodic 3x3 (any odd K) convolution, forward and backward, on batch-innermost
//!   buffers `[channels, V, lanes]`.
//! - [`coupling`]: the affine coupling maths y = x e^s + t and its inverse, log-det, backward.
//! - [`conditioner`]: the conv net that maps the frozen sites to (s, t).
//! - [`flow`]: [`AffineFlow`], the composed flow: sampling with log q, forward, inverse,
//!   log q(x).
//! - [`gauge`]: [`GaugeFlow`], gauge-equivariant coupling layers for 2D U(1) links (NCP
//!   mixtures or circular splines on plaquettes, Kanwar et al. 2020).
//! - [`train`]: Adam and the reverse-KL training step with its metrics (loss, ESS/N,
//!   independence-Metropolis acceptance).
//!
//! All network maths is generic over [`Real`] (f32 for speed, f64 for exact tests); log-dets,
//! log q, actions and log weights are accumulated in f64.

pub mod conditioner;
pub mod conv;
pub mod coupling;
pub mod flow;
pub mod gauge;
pub mod model;
pub mod real;
pub mod spline;
pub mod train;

pub use conditioner::ParamGroup;
pub use flow::{AffineFlow, AffineFlowConfig};
pub use gauge::{CircleMap, GaugeFlow, GaugeFlowConfig};
pub use model::FlowModel;
pub use real::Real;
pub use train::{Adam, AdamConfig, StepMetrics, Trainer, mh_acceptance};

/// Errors raised by flow construction, evaluation and training.
#[derive(Debug, thiserror::Error)]
pub enum FlowError {
    /// A configuration value is out of range.
    #[error("invalid flow parameter `{name}` = {value}: {fix}")]
    InvalidConfig {
        name: &'static str,
        value: String,
        fix: &'static str,
    },
    /// A buffer does not hold a whole number of configurations.
    #[error(
        "{what} has length {len}, not a multiple of the lattice volume {volume}: pass [batch, L0, L1] row-major"
    )]
    Shape {
        what: &'static str,
        len: usize,
        volume: usize,
    },
    /// The target's configuration space differs from the flow's lattice.
    #[error(
        "target `{theory}` has shape {target:?} but the flow's lattice is {flow:?}: build the flow with the target's shape"
    )]
    TargetMismatch {
        theory: &'static str,
        target: Vec<usize>,
        flow: [usize; 2],
    },
    /// A gauge-equivariant flow asked to sample something other than its U(1) lattice.
    #[error(
        "target `{theory}` with shape {target:?} is not 2D U(1) on the gauge flow's lattice {flow:?}: build the flow for the target's lattice (links [2, L0, L1])"
    )]
    GaugeTargetMismatch {
        theory: &'static str,
        target: Vec<usize>,
        flow: [usize; 2],
    },
    /// A statistical estimate failed (e.g. all weights zero).
    #[error(transparent)]
    Stats(#[from] boltzflow_stats::StatsError),
}

/// `Result` with [`FlowError`].
pub type Result<T> = std::result::Result<T, FlowError>;
