//! [`FlowModel`]: what the command-line tool needs from a trainable flow, whichever engine
//! runs it (the hand-written CPU kernels of this crate, or a burn backend).

use rand_xoshiro::Xoshiro256PlusPlus;

use boltzflow_targets::Target;

use crate::{AffineFlow, FlowError, Result, Trainer};

/// `S` regularised above `c`: c + ln(1 + S - c) for S > c, S otherwise (also for S = inf,
/// which maps to inf).
pub fn regularized_action(s: f64, c: f64) -> f64 {
    if s > c { c + (s - c).ln_1p() } else { s }
}

/// A trainable flow with exact log q: sampling, density evaluation and KL gradients with
/// respect to a flat f32 parameter vector.
///
/// # Shapes
/// Configurations `[n, dim]` row-major f32; log q, actions `[n]` f64; parameters and
/// gradients `[param_count]` f32.
pub trait FlowModel: Send {
    /// Variables per configuration.
    fn dim(&self) -> usize;
    /// Variables per prior draw: [`FlowModel::dim`], or fewer when the flow maps onto a
    /// subspace (particles without their centre of mass).
    fn latent_dim(&self) -> usize {
        self.dim()
    }
    /// Trains and samples at temperature `ratio` T_0 (T_0 the target's): the normal prior
    /// gets variance `ratio` and the tensor action of the reverse KL becomes S / ratio (the
    /// Boltzmann-generator recipe, Noe et al. 2019); the actions this model returns are
    /// scaled alike. `ratio = 1` restores the target's temperature. Only flows with a normal
    /// prior and a target of the form E / T support it.
    fn set_temperature(&mut self, ratio: f64) -> Result<()> {
        if ratio == 1.0 {
            Ok(())
        } else {
            Err(FlowError::InvalidConfig {
                name: "temperature",
                value: ratio.to_string(),
                fix: "this flow trains at the target's temperature only; use the burn engine with a normal prior",
            })
        }
    }
    /// The parameters.
    fn params(&self) -> Vec<f32>;
    /// Replaces the parameters (length [`FlowModel::params`]`.len()`).
    fn set_params(&mut self, params: &[f32]) -> Result<()>;
    /// Regularises the action of the reverse KL above `c`: S -> c + ln(1 + S - c) for S > c
    /// (Noe et al. 2019), so that a rare sample deep in a wall or a particle clash does not
    /// dominate the gradient; the actions returned by the reverse-KL gradient are the
    /// regularised ones, sampling and reweighting always use the true S. `None` switches it
    /// off. Only the burn engine supports it.
    fn set_regularization(&mut self, c: Option<f64>) -> Result<()> {
        match c {
            None => Ok(()),
            Some(c) => Err(FlowError::InvalidConfig {
                name: "regularize_above",
                value: c.to_string(),
                fix: "only burn flows regularise the action; set flow.engine = \"burn\" or remove train.regularize_above",
            }),
        }
    }
    /// `n` prior draws z ~ pi, `[n, latent_dim]`: the noise of [`FlowModel::sample`] and
    /// [`FlowModel::reverse_kl_gradient`], drawn sample after sample from `rng`, so that the
    /// first k of `n` draws are the k draws of a call with k (how data-parallel ranks split
    /// one batch).
    fn draw_prior(&self, n: usize, rng: &mut Xoshiro256PlusPlus) -> Vec<f32>;
    /// x = f(z) and log q(x) = log pi(z) - log|det df/dz| of prior draws `z` `[n, dim]`.
    fn push_forward(&self, z: &[f32]) -> Result<(Vec<f32>, Vec<f64>)>;
    /// `n` samples x ~ q and log q(x).
    fn sample(&self, n: usize, rng: &mut Xoshiro256PlusPlus) -> (Vec<f32>, Vec<f64>) {
        let z = self.draw_prior(n, rng);
        self.push_forward(&z)
            .expect("draw_prior returns whole configurations")
    }
    /// log q(x) of given configurations.
    fn log_prob(&self, x: &[f32]) -> Result<Vec<f64>>;
    /// Reverse KL on the samples x_b = f(z_b) of given prior draws `z` `[B, latent_dim]`: writes
    /// d/dtheta of (1/B) sum_b [log q(x_b) + S(x_b)] (reparameterised) into `grad` and
    /// returns (S, log q) per sample.
    fn reverse_kl_gradient_at(
        &mut self,
        target: &dyn Target,
        z: &[f32],
        grad: &mut [f32],
    ) -> Result<(Vec<f64>, Vec<f64>)>;
    /// Reverse KL on `batch` fresh samples (at least 2): [`FlowModel::reverse_kl_gradient_at`]
    /// on `batch` draws of [`FlowModel::draw_prior`].
    fn reverse_kl_gradient(
        &mut self,
        target: &dyn Target,
        batch: usize,
        rng: &mut Xoshiro256PlusPlus,
        grad: &mut [f32],
    ) -> Result<(Vec<f64>, Vec<f64>)> {
        crate::train::check_batch(batch)?;
        let z = self.draw_prior(batch, rng);
        self.reverse_kl_gradient_at(target, &z, grad)
    }
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

    fn draw_prior(&self, n: usize, rng: &mut Xoshiro256PlusPlus) -> Vec<f32> {
        self.flow.draw_prior(n, rng)
    }

    fn push_forward(&self, z: &[f32]) -> Result<(Vec<f32>, Vec<f64>)> {
        let (x, log_det) = self.flow.forward(z)?;
        let log_q = z
            .chunks_exact(self.flow.volume())
            .zip(&log_det)
            .map(|(z, ld)| AffineFlow::<f32>::log_prior(z) - ld)
            .collect();
        Ok((x, log_q))
    }

    fn log_prob(&self, x: &[f32]) -> Result<Vec<f64>> {
        AffineFlow::log_prob(&self.flow, x)
    }

    fn reverse_kl_gradient_at(
        &mut self,
        target: &dyn Target,
        z: &[f32],
        grad: &mut [f32],
    ) -> Result<(Vec<f64>, Vec<f64>)> {
        let out = Trainer::reverse_kl_gradient_at(self, target, z)?;
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
