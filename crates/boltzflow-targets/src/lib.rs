//! Targets: the Boltzmann distributions p(x) ∝ exp(-S(x)) that boltzflow samples.
//!
//! Every target is plain f64 Rust (no burn): a batched action `S(x)`, the analytic force
//! `-dS/dx` for HMC, scalar and vector observables, and the exact values the theory admits.
//! Conventions are those of `shared/PHYSICS.md` and are written into every output file
//! ([`CONVENTIONS`]).
//!
//! A target is described by a lattice file (TOML, see [`TargetSpec`]); [`TargetSpec::build`]
//! validates it and returns a `Box<dyn Target>`.

pub mod exact;
pub mod geometry;
pub mod molecular;
pub mod phi4;
pub mod quadrature;
pub mod spec;
pub mod u1;

use std::collections::BTreeMap;

pub use spec::{LatticeFile, Reference, TargetSpec};

/// Errors raised while reading or validating a target definition.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// A parameter has a value the theory does not admit.
    #[error("invalid parameter `{name}` = {value}: {fix}")]
    InvalidParameter {
        name: &'static str,
        value: String,
        fix: &'static str,
    },
    /// The lattice file could not be parsed.
    #[error("{0}")]
    Parse(String),
    /// The lattice file could not be read.
    #[error("cannot read lattice file {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// `Result` with [`TargetError`].
pub type Result<T> = std::result::Result<T, TargetError>;

/// Conventions written into every output file's metadata.
pub const CONVENTIONS: &str = "phi4: S = sum_x [-2 sum_mu phi(x) phi(x+mu) + (2d + m2) phi^2 + lam phi^4] \
(hopping: phi = sqrt(kappa) varphi, m2 = (1 - 2 lam_h)/kappa - 2d, lam = lam_h/kappa^2); \
chi2 = <M^2>/V, abs_m = <|M|>/V, binder = 1 - <M^4>/(3 <M^2>^2); \
u1: S = -beta sum_P cos theta_P, theta_P(x) = theta_0(x) + theta_1(x+0) - theta_0(x+1) - theta_1(x), \
Q = (1/2pi) sum_P wrap(theta_P), chi_t = <Q^2>/V; \
molecular: reduced units, S = E/T; LJ pairs counted once; \
ln_z: log of the integral of exp(-S) over the configuration space with the Lebesgue measure \
(angles in [0, 2pi)); tau_int in Wolff's convention (1/2 + sum rho); errors are one sigma";

/// A probability density p(x) ∝ exp(-S(x)) over `dim()` real degrees of freedom.
///
/// Configurations are flat `&[f64]` slices in row-major order of [`Target::shape`]:
/// lattice fields `[L0, L1, ...]`, gauge links `[d, L0, L1]` (direction slowest),
/// particle coordinates `[n_particles, spatial_dim]`.
pub trait Target: Send + Sync {
    /// Short name of the theory, e.g. `"phi4"`, `"u1"`, `"double_well"`.
    fn theory(&self) -> &'static str;

    /// Shape of one configuration; the product is [`Target::dim`].
    fn shape(&self) -> Vec<usize>;

    /// Number of real degrees of freedom.
    fn dim(&self) -> usize {
        self.shape().iter().product()
    }

    /// The action S(x) (energy / kT for molecular systems).
    fn action(&self, x: &[f64]) -> f64;

    /// Writes the force `-dS/dx` into `force` (length `dim()`) and returns S(x).
    fn force(&self, x: &[f64], force: &mut [f64]) -> f64;

    /// Actions of a batch of configurations stored back to back; `out.len()` is the batch size.
    fn action_batch(&self, xs: &[f64], out: &mut [f64]) {
        use rayon::prelude::*;
        let dim = self.dim();
        out.par_iter_mut()
            .zip(xs.par_chunks(dim))
            .for_each(|(s, x)| *s = self.action(x));
    }

    /// Maps a configuration to its canonical representative (angles wrapped to [0, 2 pi)).
    fn canonicalize(&self, _x: &mut [f64]) {}

    /// A configuration to start Markov chains from (cold start).
    fn initial(&self) -> Vec<f64> {
        vec![0.0; self.dim()]
    }

    /// Scalar observables measured on every draw. Their names are the JSON keys of `analyze`.
    fn observables(&self) -> Vec<Box<dyn Observable>>;

    /// Vector observables (two-point function, correlator, histograms), stored per draw.
    fn vector_observables(&self) -> Vec<Box<dyn VectorObservable>> {
        Vec::new()
    }

    /// Quantities derived from the means of scalar observables (Binder cumulant, free-energy
    /// differences), analysed with linear error propagation.
    fn derived(&self) -> Vec<Derived> {
        Vec::new()
    }

    /// Every exact value the theory admits at these parameters, keyed by observable name
    /// (`chi2`, `g_0`, `g_1`, `ln_z`, `plaquette`, `q2`, `chi_t`, `delta_f`, `p_a`, ...).
    /// Empty when no exact solution is known.
    fn exact(&self) -> BTreeMap<String, f64> {
        BTreeMap::new()
    }

    /// Exact values of vector observables, keyed like [`Target::vector_observables`]
    /// (the free field's `g` and `c_t`). Empty when none are known.
    fn exact_vectors(&self) -> BTreeMap<String, Vec<f64>> {
        BTreeMap::new()
    }
}

/// A scalar function of one configuration.
pub trait Observable: Send + Sync {
    /// Name used in files and JSON output.
    fn name(&self) -> &str;
    /// Value on configuration `x`.
    fn measure(&self, x: &[f64]) -> f64;
}

/// A vector-valued function of one configuration (e.g. the two-point function G(x)).
pub trait VectorObservable: Send + Sync {
    /// Name used in files and JSON output.
    fn name(&self) -> &str;
    /// Number of components.
    fn len(&self) -> usize;
    /// True when the observable has no components.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Writes the components for configuration `x` into `out` (length `len()`).
    fn measure(&self, x: &[f64], out: &mut [f64]);
    /// The abscissa of each component when the vector is a function of one variable (the
    /// bin centres of a histogram); None otherwise.
    fn abscissa(&self) -> Option<Vec<f64>> {
        None
    }
}

/// A quantity f(<O_1>, ..., <O_n>) of the means of scalar observables.
#[derive(Clone, Debug)]
pub struct Derived {
    /// Name used in files and JSON output.
    pub name: &'static str,
    /// Names of the scalar observables whose means are the arguments of `f`.
    pub inputs: Vec<&'static str>,
    /// The function of the means.
    pub f: fn(&[f64]) -> f64,
}

/// An observable given by a name and a plain function.
pub struct FnObservable<F> {
    name: &'static str,
    f: F,
}

impl<F: Fn(&[f64]) -> f64 + Send + Sync> FnObservable<F> {
    /// Boxes `f` as an observable called `name`.
    pub fn boxed(name: &'static str, f: F) -> Box<dyn Observable>
    where
        F: 'static,
    {
        Box::new(Self { name, f })
    }
}

impl<F: Fn(&[f64]) -> f64 + Send + Sync> Observable for FnObservable<F> {
    fn name(&self) -> &str {
        self.name
    }
    fn measure(&self, x: &[f64]) -> f64 {
        (self.f)(x)
    }
}
