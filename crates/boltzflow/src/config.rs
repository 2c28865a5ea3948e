//! Run configs: a TOML recipe that names a lattice file and says how to sample.
//!
//! ```toml
//! lattice = "../lattices/phi4_L8.toml"   # relative to this file
//! [mcmc]
//! sampler = "hmc"
//! seed = 1
//! thermalization = 200
//! draws = 2000
//! ```
//!
//! `--set key=value` overrides any key by its dotted path (`--set mcmc.hmc.n_steps=20`); the
//! value is read as TOML (numbers, booleans, arrays) and otherwise as a string.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};

use boltzflow_mcmc::McmcConfig;
use boltzflow_targets::LatticeFile;
use boltzflow_targets::spec::one_line;

/// A run config after `--set` overrides, with its lattice file loaded.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// Path of the lattice file, relative to the config file.
    pub lattice: PathBuf,
    /// Free-text description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Markov-chain Monte Carlo baseline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcmc: Option<McmcConfig>,
    /// Flow architecture (`boltzflow train`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow: Option<FlowSection>,
    /// Reverse-KL training (`boltzflow train`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train: Option<TrainSection>,
    /// Sampling a trained flow (`boltzflow sample`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample: Option<SampleSection>,
    /// Flow against MCMC baselines (`boltzflow compare`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compare: Option<CompareSection>,
}

fn default_baselines() -> Vec<boltzflow_mcmc::SamplerKind> {
    use boltzflow_mcmc::SamplerKind;
    vec![
        SamplerKind::Hmc,
        SamplerKind::Metropolis,
        SamplerKind::Wolff,
    ]
}
fn default_compare_observables() -> Vec<String> {
    vec!["chi2".into(), "abs_m".into()]
}

/// `[compare]`: which MCMC baselines to run beside the flow and which observables to tabulate.
/// Each baseline runs the config's `[mcmc]` section with `sampler` replaced.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CompareSection {
    /// Samplers to run (default `["hmc", "metropolis", "wolff"]`); the first is the reference.
    #[serde(default = "default_baselines")]
    pub baselines: Vec<boltzflow_mcmc::SamplerKind>,
    /// Observables to tabulate (default `["chi2", "abs_m"]`).
    #[serde(default = "default_compare_observables")]
    pub observables: Vec<String>,
    /// Lattice files (relative to the config) to scan: the whole comparison runs once per
    /// lattice into `DIR/<lattice name>/`, and `DIR/report.md` tabulates tau_int and the cost
    /// per independent sample against the lattice (default: none, the config's lattice only).
    /// An entry is a path, or `{ lattice = "path", set = ["train.steps=12000", ...] }` with
    /// `--set` overrides for that lattice alone (e.g. a larger training budget on larger L).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scan: Vec<ScanEntry>,
    /// How long each baseline runs: `"config"` (default: `[mcmc] draws` as written) or
    /// `"action_evals"` (as many action evaluations after thermalisation as the flow's
    /// `sample.samples` proposals cost, one each; a short pilot run measures each sampler's
    /// evaluations per draw).
    #[serde(default)]
    pub budget: Budget,
}

/// The budget of the MCMC baselines in `boltzflow compare`.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Budget {
    /// `[mcmc] draws` as configured.
    #[default]
    Config,
    /// The flow's action evaluations (one per proposal).
    ActionEvals,
}

/// One lattice of `compare.scan`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum ScanEntry {
    /// A lattice file.
    Lattice(PathBuf),
    /// A lattice file with overrides of the config for this lattice.
    WithOverrides {
        /// The lattice file.
        lattice: PathBuf,
        /// `--set KEY=VALUE` overrides applied for this lattice only.
        #[serde(default)]
        set: Vec<String>,
    },
}

impl ScanEntry {
    /// The lattice file.
    pub fn lattice(&self) -> &Path {
        match self {
            Self::Lattice(path) | Self::WithOverrides { lattice: path, .. } => path,
        }
    }

    /// The overrides for this lattice (none for a bare path).
    pub fn overrides(&self) -> &[String] {
        match self {
            Self::Lattice(_) => &[],
            Self::WithOverrides { set, .. } => set,
        }
    }
}

fn default_layers() -> usize {
    16
}
fn default_hidden() -> Vec<usize> {
    vec![8, 8]
}
fn default_kernel() -> usize {
    3
}
fn default_bins() -> usize {
    8
}
fn default_bound() -> f64 {
    5.0
}
fn default_mix() -> usize {
    2
}
fn default_forward_weight() -> f64 {
    0.5
}
fn default_batch() -> usize {
    64
}
fn default_lr() -> f64 {
    1e-3
}
fn default_gamma() -> f64 {
    0.5
}
fn default_eval_every() -> usize {
    100
}
fn default_eval_batch() -> usize {
    1024
}
fn default_checkpoint_every() -> usize {
    500
}
fn default_samples() -> usize {
    65536
}
fn default_sample_batch() -> usize {
    1024
}
fn default_true() -> bool {
    true
}
fn default_one() -> usize {
    1
}

/// `[flow]`: the flow's architecture; the configuration shape comes from the lattice file.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FlowSection {
    /// Coupling layers (default 16).
    #[serde(default = "default_layers")]
    pub layers: usize,
    /// Coupling transform (default "affine").
    #[serde(default)]
    pub coupling: Coupling,
    /// Spline bins K >= 2 (default 8; splines only).
    #[serde(default = "default_bins")]
    pub bins: usize,
    /// Spline interval half-width B > 0 (default 5; identity tails outside).
    #[serde(default = "default_bound")]
    pub bound: f64,
    /// Components of the NCP mixture (default 2; coupling "ncp" only).
    #[serde(default = "default_mix")]
    pub mix: usize,
    /// Conditioner network (default "conv" on lattices: periodic, translation equivariant;
    /// "mlp" on molecular targets).
    #[serde(default)]
    pub conditioner: Option<ConditionerKind>,
    /// Hidden channels (conv) or widths (mlp) of each conditioner (default `[8, 8]`).
    #[serde(default = "default_hidden")]
    pub hidden: Vec<usize>,
    /// Odd conv kernel size (default 3).
    #[serde(default = "default_kernel")]
    pub kernel: usize,
    /// Hidden activation (default "leaky_relu"; "relu", "tanh", "silu").
    #[serde(default)]
    pub activation: boltzflow_burn::Activation,
    /// Frozen/active split (default "checkerboard" on lattices, "halves" on molecular
    /// targets; "alternating").
    #[serde(default)]
    pub mask: Option<boltzflow_burn::Mask>,
    /// Centre of mass of particle systems (default "remove" where the energy is translation
    /// invariant, DW4 and LJ, whose density is not normalisable along it; "keep" otherwise).
    #[serde(default)]
    pub centre_of_mass: Option<boltzflow_burn::CentreOfMass>,
    /// Make the flow odd, q(-x) = q(x) (phi^4's Z2 symmetry; default false).
    #[serde(default)]
    pub z2: bool,
    /// Implementation (default "auto": the native CPU kernels when they can run the model,
    /// burn otherwise; "native"; "burn").
    #[serde(default)]
    pub engine: Engine,
    /// Device of the burn engine (default "cpu"; "cuda" needs `--features cuda`).
    #[serde(default)]
    pub device: crate::engine::Device,
    /// Seed of the parameter initialisation.
    pub seed: u64,
}

/// The coupling transform.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Coupling {
    /// y = x e^s + t with s = tanh(.) (RealNVP).
    #[default]
    Affine,
    /// y = x + t (NICE).
    Additive,
    /// Rational-quadratic spline on [-bound, bound], identity tails.
    Spline,
    /// Circular rational-quadratic spline on [0, 2 pi) (uniform prior).
    CircularSpline,
    /// Mixture of `mix` non-compact projections (U(1) gauge-equivariant flows).
    Ncp,
}

/// The conditioner network.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ConditionerKind {
    /// Periodic conv net (2D lattices).
    #[default]
    Conv,
    /// Fully connected net.
    Mlp,
}

/// Which implementation runs the flow.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Engine {
    /// Native kernels when possible, burn otherwise.
    #[default]
    Auto,
    /// The hand-written CPU kernels (affine conv flows, reverse KL).
    Native,
    /// burn (any model, any objective, CPU or CUDA).
    Burn,
}

/// The training objective.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Objective {
    /// KL(q || p) from the action alone (self-training).
    #[default]
    Reverse,
    /// KL(p || q): maximum likelihood on an MCMC ensemble (`train.ensemble`).
    Forward,
    /// (1 - forward_weight) reverse + forward_weight forward.
    Mix,
}

/// Learning-rate schedule over the `steps` training steps (t = 0, 1, ..., steps - 1).
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    /// lr_t = lr.
    #[default]
    Constant,
    /// lr_t = lr (1 + cos(pi t / steps)) / 2.
    Cosine,
    /// lr_t = lr gamma^floor(t / step_every).
    Step,
}

/// `[train]`: reverse-KL training with Adam.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TrainSection {
    /// Training steps in total (a resumed run may raise it).
    pub steps: usize,
    /// Samples per step (default 64).
    #[serde(default = "default_batch")]
    pub batch: usize,
    /// Adam's base learning rate (default 1e-3).
    #[serde(default = "default_lr")]
    pub lr: f64,
    /// Learning-rate schedule (default "constant").
    #[serde(default)]
    pub schedule: Schedule,
    /// Final learning rate of the "cosine" schedule (default 0).
    #[serde(default)]
    pub lr_min: f64,
    /// Factor of the "step" schedule (default 0.5).
    #[serde(default = "default_gamma")]
    pub gamma: f64,
    /// Steps between decays of the "step" schedule (required for it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_every: Option<usize>,
    /// Rescale gradients to this global L2 norm when larger (default: no clipping).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grad_clip: Option<f64>,
    /// Steps between evaluations (default 100).
    #[serde(default = "default_eval_every")]
    pub eval_every: usize,
    /// Fresh samples per evaluation (default 1024); the final one uses max(eval_batch, 16384).
    #[serde(default = "default_eval_batch")]
    pub eval_batch: usize,
    /// Steps between writes of model.json (default 500; also written at the end).
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every: usize,
    /// Seed of the training noise.
    pub seed: u64,
    /// Training objective (default "reverse"; "forward", "mix").
    #[serde(default)]
    pub objective: Objective,
    /// Weight of the forward KL in "mix" (default 0.5).
    #[serde(default = "default_forward_weight")]
    pub forward_weight: f64,
    /// Generate the forward-KL ensemble first: run this config's `[mcmc]` section into
    /// `DIR/ensemble.h5` (reused by `--resume`) and train on it, instead of
    /// `train.ensemble` (default false).
    #[serde(default)]
    pub generate_ensemble: bool,
    /// Temperatures kT of the reverse KL (molecular targets): step t trains at
    /// `temperatures[t mod len]`, with energy / T and prior variance T / T_0 (T_0 the
    /// lattice file's), so that one flow samples a range of temperatures (`sample.temperature`).
    /// The forward KL always uses the ensemble's T_0. Default: T_0 only.
    #[serde(default)]
    pub temperatures: Vec<f64>,
    /// Regularise the reverse KL's action above this value: S -> c + ln(1 + S - c) for
    /// S > c (Noe et al. 2019), so that rare samples in a steep wall or a particle clash do
    /// not dominate the gradient (burn engine; sampling and reweighting use the true S).
    /// Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regularize_above: Option<f64>,
    /// Relabel identical particles of each forward-KL minibatch configuration by a random
    /// permutation (data augmentation towards a permutation-symmetric q; default false: the
    /// labelling of the MCMC chains).
    #[serde(default)]
    pub augment_permutations: bool,
    /// MCMC ensemble for the forward KL (an HDF5 file of `boltzflow mcmc` with stored
    /// configurations; relative to the config file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ensemble: Option<PathBuf>,
    /// Start from the parameters of this trained model (`model.json`; relative to the config
    /// file) instead of a fresh initialisation: the same architecture, possibly on another
    /// lattice size (conv conditioners are translation equivariant, so a flow trained on a
    /// small lattice is a good start on a large one). Adam starts afresh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<PathBuf>,
    /// Batch-size schedule: `[[step, batch], ...]`; from each `step` on, `batch` samples per
    /// step (before the first entry: `batch`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub batch_schedule: Vec<[usize; 2]>,
}

impl TrainSection {
    /// The batch size of step t (0-based).
    pub fn batch_at(&self, t: usize) -> usize {
        self.batch_schedule
            .iter()
            .filter(|[from, _]| *from <= t)
            .max_by_key(|[from, _]| *from)
            .map_or(self.batch, |[_, b]| *b)
    }

    /// Whether the objective needs the forward KL (an ensemble).
    pub fn forward_kl(&self) -> bool {
        !matches!(self.objective, Objective::Reverse)
    }

    /// Checks every value; the error names the key.
    pub fn validate(&self) -> Result<()> {
        if self.steps < 1 {
            bail!("train.steps must be >= 1");
        }
        if self.batch < 2 {
            bail!("train.batch must be >= 2 (64 in the tutorial)");
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            bail!("train.lr must be a positive number, e.g. 1e-3");
        }
        if !(self.lr_min >= 0.0 && self.lr_min <= self.lr) {
            bail!("train.lr_min must be between 0 and train.lr, e.g. 1e-5");
        }
        if !(self.gamma > 0.0 && self.gamma <= 1.0) {
            bail!("train.gamma must lie in (0, 1], e.g. 0.5");
        }
        match (self.schedule, self.step_every) {
            (Schedule::Step, None) => {
                bail!("train.step_every must be set when train.schedule = \"step\"")
            }
            (_, Some(0)) => bail!("train.step_every must be >= 1"),
            _ => {}
        }
        if let Some(c) = self.grad_clip
            && !(c > 0.0 && c.is_finite())
        {
            bail!("train.grad_clip must be a positive number (or omitted for no clipping)");
        }
        if self.eval_every < 1 {
            bail!("train.eval_every must be >= 1");
        }
        if self.eval_batch < 2 {
            bail!("train.eval_batch must be >= 2");
        }
        if self.checkpoint_every < 1 {
            bail!("train.checkpoint_every must be >= 1");
        }
        if let Some([_, b]) = self.batch_schedule.iter().find(|[_, b]| *b < 2) {
            bail!("train.batch_schedule lists batch {b}; every batch must be >= 2");
        }
        if !(0.0..=1.0).contains(&self.forward_weight) {
            bail!("train.forward_weight must lie in [0, 1], e.g. 0.5");
        }
        if let Some(t) = self
            .temperatures
            .iter()
            .find(|t| !(t.is_finite() && **t > 0.0))
        {
            bail!(
                "train.temperatures lists {t}; every temperature must be a positive kT, e.g. [1.0, 2.0, 3.0]"
            );
        }
        if let Some(c) = self.regularize_above
            && !c.is_finite()
        {
            bail!("train.regularize_above must be a finite action, e.g. 1e3");
        }
        if self.generate_ensemble && self.ensemble.is_some() {
            bail!(
                "train.generate_ensemble = true writes its own ensemble; remove train.ensemble or set generate_ensemble = false"
            );
        }
        if self.generate_ensemble && !self.forward_kl() {
            bail!(
                "train.generate_ensemble = true but train.objective = \"reverse\" uses no ensemble; set train.objective = \"mix\" or \"forward\""
            );
        }
        if self.forward_kl() && self.ensemble.is_none() && !self.generate_ensemble {
            bail!(
                "train.objective = \"{}\" needs train.ensemble = \"<file.h5>\" (an ensemble written by boltzflow mcmc) or train.generate_ensemble = true",
                if matches!(self.objective, Objective::Forward) {
                    "forward"
                } else {
                    "mix"
                }
            );
        }
        Ok(())
    }

    /// The learning rate of step t (0-based).
    pub fn lr_at(&self, t: usize) -> f64 {
        match self.schedule {
            Schedule::Constant => self.lr,
            Schedule::Cosine => {
                let x = t as f64 / self.steps as f64;
                self.lr_min
                    + (self.lr - self.lr_min) * 0.5 * (1.0 + (std::f64::consts::PI * x).cos())
            }
            Schedule::Step => {
                let every = self.step_every.unwrap_or(usize::MAX).max(1);
                self.lr * self.gamma.powi((t / every).min(i32::MAX as usize) as i32)
            }
        }
    }
}

impl FlowSection {
    /// The conditioner (resolved by [`FlowSection::for_target`]).
    pub fn conditioner(&self) -> ConditionerKind {
        self.conditioner.unwrap_or_default()
    }

    /// The mask (resolved by [`FlowSection::for_target`]).
    pub fn mask(&self) -> boltzflow_burn::Mask {
        self.mask.unwrap_or_default()
    }

    /// The centre-of-mass handling (resolved by [`FlowSection::for_target`]).
    pub fn centre_of_mass(&self) -> boltzflow_burn::CentreOfMass {
        self.centre_of_mass.unwrap_or_default()
    }

    /// The section with the defaults that depend on the target filled in: MLP conditioners,
    /// "halves" masks on molecular targets, the centre of mass removed on translation-
    /// invariant ones. Keeping the centre of mass of a translation-invariant target, or
    /// removing it elsewhere, is refused.
    pub fn for_target(&self, spec: &boltzflow_targets::TargetSpec) -> Result<Self> {
        use boltzflow_burn::{CentreOfMass, Mask};
        let molecular = spec.temperature().is_some();
        let invariant = spec.translation_invariant();
        let com = self.centre_of_mass.unwrap_or(if invariant {
            CentreOfMass::Remove
        } else {
            CentreOfMass::Keep
        });
        match com {
            CentreOfMass::Keep if invariant => bail!(
                "flow.centre_of_mass = \"keep\" but the energy of `{}` does not change when every particle moves together, so exp(-S) is not normalisable along the centre of mass; set flow.centre_of_mass = \"remove\" (the default)",
                spec.theory()
            ),
            CentreOfMass::Remove if !invariant => bail!(
                "flow.centre_of_mass = \"remove\" but `{}` is not translation invariant (its centre of mass is physical); remove the key",
                spec.theory()
            ),
            _ => {}
        }
        Ok(Self {
            conditioner: Some(self.conditioner.unwrap_or(if molecular {
                ConditionerKind::Mlp
            } else {
                ConditionerKind::Conv
            })),
            mask: Some(self.mask.unwrap_or(if molecular {
                Mask::Halves
            } else {
                Mask::Checkerboard
            })),
            centre_of_mass: Some(com),
            ..self.clone()
        })
    }

    /// Checks every value; the error names the key.
    pub fn validate(&self) -> Result<()> {
        if self.layers < 1 {
            bail!("flow.layers must be >= 1 (16 in the tutorial)");
        }
        if self.hidden.contains(&0) {
            bail!("flow.hidden must list positive channel counts, e.g. [8, 8]");
        }
        if self.kernel < 1 || self.kernel.is_multiple_of(2) {
            bail!("flow.kernel must be odd and >= 1, e.g. 3");
        }
        if matches!(self.coupling, Coupling::Spline | Coupling::CircularSpline) && self.bins < 2 {
            bail!(
                "flow.bins = {} but a spline needs at least 2 bins, e.g. bins = 8",
                self.bins
            );
        }
        if matches!(self.coupling, Coupling::Ncp) && self.mix < 1 {
            bail!("flow.mix = 0 but the NCP mixture needs at least one component, e.g. mix = 2");
        }
        if matches!(self.coupling, Coupling::Spline)
            && !(self.bound > 0.0 && self.bound.is_finite())
        {
            bail!(
                "flow.bound = {} but the spline interval [-bound, bound] needs bound > 0, e.g. bound = 5.0",
                self.bound
            );
        }
        Ok(())
    }
}

/// The symmetry group of `sample.symmetrize`.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Symmetrize {
    /// Permutations of identical particles and the mirror image.
    Particles,
}

/// `[sample]`: drawing from a trained flow.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SampleSection {
    /// Configurations to draw (default 65536; a resumed run may raise it).
    #[serde(default = "default_samples")]
    pub samples: usize,
    /// Configurations per batch and per commit (default 1024).
    #[serde(default = "default_sample_batch")]
    pub batch: usize,
    /// Seed of the flow's noise and of the Metropolis uniforms.
    pub seed: u64,
    /// Run the independence Metropolis-Hastings chain over the proposals (default true).
    #[serde(default = "default_true")]
    pub mh: bool,
    /// Store every configuration (default true).
    #[serde(default = "default_true")]
    pub store_configs: bool,
    /// Interleave this local MCMC update with the flow proposals of the Metropolis-Hastings
    /// chain ("metropolis", "hmc", "wolff", "heatbath"; settings from the config's `[mcmc]`
    /// section when present). Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<boltzflow_mcmc::SamplerKind>,
    /// Local updates after each flow proposal (default 1).
    #[serde(default = "default_one")]
    pub local_steps: usize,
    /// Propose from the Z2-symmetrised flow q_s(x) = [q(x) + q(-x)] / 2 (for targets with
    /// S(-x) = S(x), e.g. phi^4): each draw's sign is flipped with probability 1/2 and log q_s
    /// costs one extra inverse pass. Default false.
    #[serde(default)]
    pub z2_mixture: bool,
    /// Propose from the mixture over the target's particle symmetries, q_G(x) =
    /// (1 / |G|) sum_g q(g x), G = every relabelling of identical particles times the
    /// mirror image (`"particles"`; dw4: |G| = 4! x 2 = 48): a flow that learnt one
    /// labelling and one chirality then covers all of them. Each draw costs |G| - 1 extra
    /// inverse passes; groups above 40320 elements (LJ13, the solvated dimer) are refused.
    /// Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symmetrize: Option<Symmetrize>,
    /// Sample and reweight at this temperature kT instead of the lattice file's T_0
    /// (molecular targets; the flow's prior variance becomes T / T_0, the recipe of a flow
    /// trained with `train.temperatures`). The sample file records the lattice at T.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
}

impl SampleSection {
    /// Checks every value; the error names the key.
    pub fn validate(&self) -> Result<()> {
        if self.samples < 2 {
            bail!("sample.samples must be >= 2");
        }
        if self.batch < 1 {
            bail!("sample.batch must be >= 1");
        }
        if self.local.is_some() && !self.mh {
            bail!(
                "sample.local interleaves local updates with the Metropolis-Hastings chain; set sample.mh = true or remove sample.local"
            );
        }
        if self.local_steps < 1 {
            bail!("sample.local_steps must be >= 1");
        }
        if self.z2_mixture && self.symmetrize.is_some() {
            bail!(
                "sample.z2_mixture and sample.symmetrize both symmetrise the proposal; keep one (z2_mixture for phi^4, symmetrize = \"particles\" for identical particles)"
            );
        }
        if let Some(t) = self.temperature
            && !(t.is_finite() && t > 0.0)
        {
            bail!("sample.temperature = {t}; the temperature must be a positive kT, e.g. 1.0");
        }
        Ok(())
    }
}

/// A loaded config: the parsed recipe, its resolved TOML text and the lattice it names.
pub struct Loaded {
    /// The recipe.
    pub config: RunConfig,
    /// The recipe as resolved TOML (overrides applied), as stored in output files.
    pub toml: String,
    /// The lattice file.
    pub lattice: LatticeFile,
}

impl Loaded {
    /// Reads `path`, applies `--set` overrides and loads the lattice file it names.
    pub fn read(path: &Path, overrides: &[String]) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow!("cannot read config file {}: {e}", path.display()))?;
        let mut table: toml::Table = toml::from_str(&text)
            .map_err(|e| anyhow!("{}: {}", path.display(), one_line(&e.to_string())))?;
        for o in overrides {
            apply_override(&mut table, o)?;
        }
        let config: RunConfig =
            toml::Value::Table(table.clone())
                .try_into()
                .map_err(|e: toml::de::Error| {
                    anyhow!("{}: {}", path.display(), one_line(&e.to_string()))
                })?;
        let lattice_path = resolve(path, &config.lattice);
        let lattice = LatticeFile::read(&lattice_path)
            .with_context(|| format!("lattice file named by {}", path.display()))?;
        let toml = toml::to_string(&table).expect("a parsed table serialises");
        Ok(Self {
            config,
            toml,
            lattice,
        })
    }

    /// The `[mcmc]` section, or an error saying the config has none.
    pub fn mcmc(&self, path: &Path) -> Result<&McmcConfig> {
        self.config.mcmc.as_ref().ok_or_else(|| {
            anyhow!(
                "{} has no [mcmc] section; add one (see configs/hmc_phi4_L8.toml)",
                path.display()
            )
        })
    }

    /// The validated `[flow]` and `[train]` sections, or an error naming the missing one.
    pub fn training(&self, path: &Path) -> Result<(FlowSection, TrainSection)> {
        let flow = self.config.flow.clone().ok_or_else(|| {
            anyhow!(
                "{} has no [flow] section; add one (see configs/flow_phi4_L8.toml)",
                path.display()
            )
        })?;
        let train = self.config.train.clone().ok_or_else(|| {
            anyhow!(
                "{} has no [train] section; add one (see configs/flow_phi4_L8.toml)",
                path.display()
            )
        })?;
        flow.validate()?;
        train.validate()?;
        if !train.temperatures.is_empty() && self.lattice.target.temperature().is_none() {
            bail!(
                "train.temperatures applies to molecular targets (S = E / kT) but `{}` has no temperature; remove it",
                self.lattice.target.theory()
            );
        }
        if train.augment_permutations && self.lattice.target.identical_particles().is_empty() {
            bail!(
                "train.augment_permutations relabels identical particles but `{}` has none; remove it",
                self.lattice.target.theory()
            );
        }
        if train.generate_ensemble && self.config.mcmc.is_none() {
            bail!(
                "train.generate_ensemble = true runs the config's [mcmc] section but {} has none; add one (see configs/flow_double_well.toml)",
                path.display()
            );
        }
        Ok((flow, train))
    }

    /// The validated `[sample]` section, or an error saying the config has none.
    pub fn sampling(&self, path: &Path) -> Result<SampleSection> {
        let sample = self.config.sample.clone().ok_or_else(|| {
            anyhow!(
                "{} has no [sample] section; add one (see configs/sample_phi4_L8.toml)",
                path.display()
            )
        })?;
        sample.validate()?;
        if sample.symmetrize.is_some() {
            crate::symmetry::particle_symmetries(&self.lattice.target)?;
        }
        if sample.temperature.is_some() && self.lattice.target.temperature().is_none() {
            bail!(
                "sample.temperature applies to molecular targets (S = E / kT) but `{}` has no temperature; remove it",
                self.lattice.target.theory()
            );
        }
        Ok(sample)
    }
}

/// Resolves `relative` against the directory of `config`.
pub fn resolve(config: &Path, relative: &Path) -> PathBuf {
    if relative.is_absolute() {
        relative.to_path_buf()
    } else {
        config.parent().unwrap_or(Path::new(".")).join(relative)
    }
}

/// Applies one `key.path=value` override to a TOML table.
pub fn apply_override(table: &mut toml::Table, assignment: &str) -> Result<()> {
    let Some((key, value)) = assignment.split_once('=') else {
        bail!("--set {assignment}: expected key=value, e.g. --set mcmc.draws=1000");
    };
    let key = key.trim();
    let value = value.trim();
    let parsed: toml::Value = toml::from_str::<toml::Table>(&format!("v = {value}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_string()));
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        bail!("--set {assignment}: empty key segment; use dotted keys like mcmc.hmc.step_size");
    }
    let mut node = table;
    for part in &parts[..parts.len() - 1] {
        let entry = node
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        node = entry
            .as_table_mut()
            .ok_or_else(|| anyhow!("--set {assignment}: `{part}` is a value, not a section"))?;
    }
    node.insert(parts[parts.len() - 1].to_string(), parsed);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_parse_values_and_create_sections() {
        let mut t: toml::Table = toml::from_str("[mcmc]\ndraws = 10\n").unwrap();
        apply_override(&mut t, "mcmc.draws=20").unwrap();
        apply_override(&mut t, "mcmc.hmc.step_size = 0.05").unwrap();
        apply_override(&mut t, "mcmc.sampler=hmc").unwrap();
        assert_eq!(t["mcmc"]["draws"].as_integer(), Some(20));
        assert_eq!(t["mcmc"]["hmc"]["step_size"].as_float(), Some(0.05));
        assert_eq!(t["mcmc"]["sampler"].as_str(), Some("hmc"));
        assert!(apply_override(&mut t, "mcmc.draws.x=1").is_err());
        assert!(apply_override(&mut t, "novalue").is_err());
    }
}
