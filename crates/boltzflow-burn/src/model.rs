//! [`BurnModel`]: a [`Flow`] on an autodiff backend with the target's tensor action, trained
//! through [`FlowModel`].
//!
//! ```text
//! reverse KL:  L = (1/B) sum_b [log q(f(z_b)) + S(f(z_b))],  z_b ~ pi   (reparameterised)
//! forward KL:  L = -(1/B) sum_b log q(x_b),  log q(x) = log pi(f^-1(x)) + log|det J_f^-1(x)|
//! ```
//!
//! Gradients come from burn's autodiff on the flat parameter tensor and are copied to the
//! host, where the optimiser (the flow crate's Adam, serialisable for exact resumption) runs.

use burn::backend::{Autodiff, NdArray};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Tensor, TensorData};
use rand_xoshiro::Xoshiro256PlusPlus;

use boltzflow_targets::{Target, TargetSpec};

use crate::action::{TensorAction, tensor_action};
use crate::flow::{Flow, FlowConfig, Prior, host, host64};
use crate::{FlowError, FlowModel, Result};

/// The default CPU backend: burn's ndarray backend with autodiff.
pub type CpuBackend = Autodiff<NdArray<f32>>;

/// burn-cuda with autodiff.
#[cfg(feature = "cuda")]
pub type CudaBackend = Autodiff<burn::backend::Cuda<f32>>;

/// A flow with its target's tensor action on backend `B`.
pub struct BurnModel<B: AutodiffBackend> {
    flow: Flow<B>,
    action: Box<dyn TensorAction<B>>,
    /// T / T_0 of [`FlowModel::set_temperature`]: the prior variance, and the divisor of the
    /// actions.
    temperature: f64,
    /// Whether the target is E / T (molecular), so that a temperature change is meaningful.
    thermal: bool,
    /// [`FlowModel::set_regularization`]'s threshold.
    regularize_above: Option<f64>,
}

impl<B: AutodiffBackend> BurnModel<B> {
    /// A fresh flow for `spec` on `device`; the flow's shape must be the target's.
    pub fn new(config: &FlowConfig, spec: &TargetSpec, device: &B::Device) -> Result<Self> {
        let target = spec.build().map_err(|e| FlowError::InvalidConfig {
            name: "target",
            value: e.to_string(),
            fix: "fix the lattice file",
        })?;
        let thermal = spec.temperature().is_some();
        if target.shape() != config.shape {
            return Err(FlowError::InvalidConfig {
                name: "shape",
                value: format!("{:?}", config.shape),
                fix: "the flow's shape must be the target's shape",
            });
        }
        Ok(Self {
            flow: Flow::new(config, device)?,
            action: tensor_action::<B>(spec, device).map_err(|e| FlowError::InvalidConfig {
                name: "target",
                value: e.to_string(),
                fix: "fix the lattice file",
            })?,
            temperature: 1.0,
            thermal,
            regularize_above: None,
        })
    }

    /// The flow.
    pub fn flow(&self) -> &Flow<B> {
        &self.flow
    }

    /// The architecture.
    pub fn config(&self) -> &FlowConfig {
        self.flow.config()
    }

    /// The parameters as a leaf tensor that records gradients.
    fn tracked(&self) -> Flow<B> {
        self.flow
            .with_params(self.flow.params().clone().detach().require_grad())
    }
}

/// Copies d loss / d params to `grad`.
fn write_gradient<B: AutodiffBackend>(
    loss: Tensor<B, 1>,
    params: &Tensor<B, 1>,
    grad: &mut [f32],
) -> Result<()> {
    let grads = loss.backward();
    let g = params
        .grad(&grads)
        .map(host)
        .unwrap_or_else(|| vec![0.0; grad.len()]);
    if g.len() != grad.len() {
        return Err(FlowError::Shape {
            what: "gradient buffer",
            len: grad.len(),
            volume: g.len(),
        });
    }
    grad.copy_from_slice(&g);
    Ok(())
}

impl<B: AutodiffBackend> FlowModel for BurnModel<B> {
    fn dim(&self) -> usize {
        self.flow.config().dim()
    }

    fn params(&self) -> Vec<f32> {
        self.flow.params_host()
    }

    fn set_params(&mut self, params: &[f32]) -> Result<()> {
        self.flow.set_params(params)
    }

    fn latent_dim(&self) -> usize {
        self.flow.config().latent_dim()
    }

    fn set_temperature(&mut self, ratio: f64) -> Result<()> {
        if ratio != 1.0 && !(self.thermal && self.flow.config().prior == Prior::Normal) {
            return Err(FlowError::InvalidConfig {
                name: "temperature",
                value: ratio.to_string(),
                fix: "other temperatures need a molecular target (S = E / T) and a normal prior",
            });
        }
        self.flow.set_prior_variance(ratio)?;
        self.temperature = ratio;
        Ok(())
    }

    fn set_regularization(&mut self, c: Option<f64>) -> Result<()> {
        if let Some(c) = c
            && !c.is_finite()
        {
            return Err(FlowError::InvalidConfig {
                name: "regularize_above",
                value: c.to_string(),
                fix: "give a finite action threshold, e.g. 1e3",
            });
        }
        self.regularize_above = c;
        Ok(())
    }

    fn draw_prior(&self, n: usize, rng: &mut Xoshiro256PlusPlus) -> Vec<f32> {
        self.flow.draw_prior(n, rng)
    }

    fn push_forward(&self, z: &[f32]) -> Result<(Vec<f32>, Vec<f64>)> {
        let inner: Flow<B::InnerBackend> = self.flow.valid();
        inner.push_forward(z)
    }

    fn log_prob(&self, x: &[f32]) -> Result<Vec<f64>> {
        self.flow.valid().log_prob(x)
    }

    fn reverse_kl_gradient_at(
        &mut self,
        target: &dyn Target,
        z: &[f32],
        grad: &mut [f32],
    ) -> Result<(Vec<f64>, Vec<f64>)> {
        let dim = self.latent_dim();
        if z.is_empty() || !z.len().is_multiple_of(dim) {
            return Err(FlowError::InvalidConfig {
                name: "prior draws",
                value: z.len().to_string(),
                fix: "pass whole configurations [batch, latent_dim]",
            });
        }
        let batch = z.len() / dim;
        let log_prior: Vec<f64> = z.chunks(dim).map(|z| self.flow.log_prior_host(z)).collect();
        let tracked = self.tracked();
        let zt = Tensor::<B, 2>::from_data(
            TensorData::new(z.to_vec(), [batch, dim]),
            self.flow.options(),
        );
        let (x, log_det) = tracked.forward(zt.clone());
        let log_q_t = tracked.log_prior(zt) - log_det.clone();
        let beta = 1.0 / self.temperature;
        let action = self.action.action(x.clone());
        let action = if beta == 1.0 {
            action
        } else {
            action.mul_scalar(beta)
        };
        // c + ln(1 + relu(S - c)) + min(S, c) - c = the regularised action, branch-free
        let action = match self.regularize_above {
            Some(c) => action.clone().clamp_max(c) + action.sub_scalar(c).clamp_min(0.0).log1p(),
            None => action,
        };
        let loss = (log_q_t + action).mean();
        write_gradient(loss, tracked.params(), grad)?;
        let x = host(x);
        let x64: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
        let mut actions = vec![0.0; batch];
        target.action_batch(&x64, &mut actions);
        actions.iter_mut().for_each(|s| *s *= beta);
        if let Some(c) = self.regularize_above {
            actions
                .iter_mut()
                .for_each(|s| *s = boltzflow_flow::model::regularized_action(*s, c));
        }
        let log_q = log_prior
            .iter()
            .zip(host64(log_det))
            .map(|(lp, ld)| lp - ld)
            .collect();
        Ok((actions, log_q))
    }

    fn forward_kl_gradient(&mut self, x: &[f32], grad: &mut [f32]) -> Result<Vec<f64>> {
        let tracked = self.tracked();
        let xt = tracked.tensor(x)?;
        let (z, log_det) = tracked.inverse(xt);
        let log_q_t = tracked.log_prior(z.clone()) + log_det.clone();
        write_gradient(-log_q_t.mean(), tracked.params(), grad)?;
        let dim = self.latent_dim();
        Ok(host64(z)
            .chunks(dim)
            .zip(host64(log_det))
            .map(|(z, ld)| self.flow.log_prior_host(z) + ld)
            .collect())
    }
}
