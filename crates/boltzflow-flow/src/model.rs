//! [`FlowModel`]: what the command-line tool needs from a trainable flow, whichever engine
//! runs it (the hand-written CPU kernels of this crate, or a burn backend).

use rand_xoshiro::Xoshiro256PlusPlus;

use boltzflow_targets::Target;

use crate::{AffineFlow, FlowError, Result, Trainer};

/// A trainable flow with exact log q: sampling, density evaluation and KL gradients with
/// respect to a flat f32 parameter vector.
///
/// # Shapes
/// Configurations `[n, dim]` row-major f32; log q, actions `[n]` f64; parameters and
/// gradients `[param_count]` f32.
pub trait FlowModel: Send {
    /// Variables per configuration.
    fn dim(&self) -> usize;
    /// The parameters.
    fn params(&self) -> Vec<f32>;
    /// Replaces the parameters (length [`FlowModel::params`]`.len()`).
    fn set_params(&mut self, params: &[f32]) -> Result<()>;
    /// `n` samples x ~ q and log q(x).
    fn sample(&self, n: usize, rng: &mut Xoshiro256PlusPlus) -> (Vec<f32>, Vec<f64>);
    /// log q(x) of given configurations.
    fn log_prob(&self, x: &[f32]) -> Result<Vec<f64>>;
    /// Reverse KL on `batch` fresh samples: writes d/dtheta of (1/B) sum_b [log q(x_b) +
    /// S(x_b)] (reparameterised) into `grad` and returns (S, log q) per sample.
    fn reverse_kl_gradient(
        &mut self,
        target: &dyn Target,
        batch: usize,
        rng: &mut Xoshiro256PlusPlus,
        grad: &mut [f32],
    ) -> Result<(Vec<f64>, Vec<f64>)>;
    /// Forward KL (maximum likelihood) on data `x`: writes d/dtheta of -(1/B) sum_b log q(x_b)
    /// into `grad` and returns log q per sample.
    fn forward_kl_gradient(&mut self, x: &[f32], grad: &mut [f32]) -> Result<Vec<f64>>;
}

impl FlowModel for Trainer<f32> {
    fn dim(&self) -> usize {
        self.flow.volume()
    }

    fn params(&self) -> Vec<f32> {
        self.flow.params().to_vec()
    }

    fn set_params(&mut self, params: &[f32]) -> Result<()> {
        let n = self.flow.params().len();
        if params.len() != n {
            return Err(FlowError::Shape {
                what: "parameter vector",
                len: params.len(),
                volume: n,
            });
        }
        self.flow.params_mut().copy_from_slice(params);
        Ok(())
    }

    fn sample(&self, n: usize, rng: &mut Xoshiro256PlusPlus) -> (Vec<f32>, Vec<f64>) {
        self.flow.sample(n, rng)
    }

    fn log_prob(&self, x: &[f32]) -> Result<Vec<f64>> {
        AffineFlow::log_prob(&self.flow, x)
    }

    fn reverse_kl_gradient(
        &mut self,
        target: &dyn Target,
        batch: usize,
        rng: &mut Xoshiro256PlusPlus,
        grad: &mut [f32],
    ) -> Result<(Vec<f64>, Vec<f64>)> {
        let out = Trainer::reverse_kl_gradient(self, target, batch, rng)?;
        grad.copy_from_slice(self.gradient());
        Ok(out)
    }

    fn forward_kl_gradient(&mut self, _x: &[f32], _grad: &mut [f32]) -> Result<Vec<f64>> {
        Err(FlowError::InvalidConfig {
            name: "engine",
            value: "native".into(),
            fix: "the native affine kernels train by reverse KL only; set flow.engine = \"burn\" for forward KL",
        })
    }
}
