//! Normalizing flows in burn, generic over the burn backend (CPU ndarray by default, CUDA
//! behind the `cuda` feature): the bijector library, conditioners, priors, tensor actions and
//! KL gradients behind [`boltzflow_flow::FlowModel`].
//!
//! - [`bijector`]: the element-wise maths of coupling transforms as plain tensor functions:
//!   additive, affine, rational-quadratic spline, circular rational-quadratic spline.
//! - [`flow`]: [`Flow`], coupling layers with checkerboard / alternating / half masks,
//!   periodic conv or MLP conditioners, optional Z2 equivariance, normal or circular prior.
//! - [`action`]: the tensor action S(x) of every target, for reverse-KL training.
//! - [`model`]: [`BurnModel`], reverse and forward KL gradients by burn's autodiff.
//!
//! Networks run in f32 on the device; log q, actions and log weights are returned in f64
//! (the prior density is evaluated on the host in f64, the log-det summed on the device).

pub mod action;
pub mod bijector;
pub mod flow;
pub mod model;

pub use bijector::Transform;
pub use boltzflow_flow::{FlowError, FlowModel, Result};
pub use flow::{Activation, CentreOfMass, Conditioner, Flow, FlowConfig, Mask, Prior};
pub use model::{BurnModel, CpuBackend};

/// A CUDA GPU by index (in the order of CUDA_VISIBLE_DEVICES).
#[cfg(feature = "cuda")]
pub use burn::backend::cuda::CudaDevice;
#[cfg(feature = "cuda")]
pub use model::CudaBackend;
