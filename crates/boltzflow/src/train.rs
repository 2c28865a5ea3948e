//! `boltzflow train`: training of a coupling flow by reverse KL, forward KL or a mix,
//! checkpointed to `DIR/model.json` and evaluated into `DIR/train.h5`.
//!
//! Each step takes `batch_at(step)` samples, computes the gradient with the flow engine
//! (native kernels or burn, see [`crate::engine`]; f32 network, f64 actions and log q) and
//! applies Adam:
//!
//! ```text
//! reverse:  L_r = (1/B) sum_b [log q(x_b) + S(x_b)],  x_b ~ q     (KL(q || p) - ln Z)
//! forward:  L_f = -(1/B) sum_b log q(x_b),  x_b from the MCMC ensemble (KL(p || q) + const)
//! mix:      L = (1 - a) L_r + a L_f,  a = train.forward_weight
//! m <- b1 m + (1 - b1) g,  v <- b2 v + (1 - b2) g^2,
//! theta <- theta - lr_t mhat / (sqrt(vhat) + eps)
//! ```
//!
//! The forward KL draws its minibatch uniformly (with replacement) from every stored
//! configuration of `train.ensemble`, whose lattice must be the target's.
//!
//! A step whose loss or gradient is not finite is skipped (no update; counted and logged); 10
//! in a row stop the run with the last good checkpoint intact.
//!
//! Every `eval_every` steps (and at the end, on max(eval_batch, 16384) samples) a fresh batch
//! from its own stream (seeded by `train.seed` and the step, so evaluations never perturb the
//! training noise) gives log w = -S - log q and one draw of `train.h5` (kind "train", one
//! chain, no configurations): `step, loss, loss_err, ess, acceptance, grad_norm, lr,
//! log_w_mean, log_w_var, elapsed_s, steps_per_s`; `loss` is the mean of -log w over the
//! evaluation batch, `grad_norm` and `lr` those of the last step, `steps_per_s` the training
//! rate since the previous evaluation (evaluation time excluded).
//!
//! # Data-parallel training (`mpirun -np R boltzflow train ...`)
//!
//! `train.batch` is the global batch B; it must split evenly over the R ranks. Every rank
//! carries the same training RNG and draws the noise of the whole batch (B x dim normals,
//! negligible next to the flow), then takes its share: samples `[r B/R, (r+1) B/R)`. Each rank
//! computes the mean gradient of its share; the shares' gradients and losses are all-reduced
//! (summed, divided by R) before the Adam step, so every rank applies the same update and R
//! ranks x B/R compute what one process computes on B, up to the order of the f32 sums. A
//! hash of the parameters is compared across ranks at every evaluation; a difference stops
//! the run. Evaluations split their batch the same way and all-gather the log weights. Rank
//! 0 alone writes `model.json` and `train.h5`; on `--resume` it reads them and broadcasts the
//! state, so a run continues with any number of ranks that divides its batch.
//!
//! # State and resumption
//!
//! The full training state ([`ModelFile`]: flow config, parameters, Adam moments, step, RNG) is
//! written atomically to `model.json` every `checkpoint_every` steps and at the end, and into
//! the checkpoint of `train.h5` at every evaluation (`sampler` text = the model JSON, `rng` =
//! the training RNG, `x` = the parameters). At a step that has both, the evaluation is
//! committed first. `--resume` continues from the later of the two, so every evaluation up to
//! it is on file exactly once and the resumed run is bitwise the uninterrupted one.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use rand::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;
use serde::{Deserialize, Serialize};

use rand::RngExt;

use boltzflow_dist::Communicator;
use boltzflow_flow::{Adam, AdamConfig, FlowModel, mh_acceptance};
use boltzflow_store::{Block, ChainCheckpoint, Checkpoint, EnsembleReader, EnsembleWriter, Layout};
use boltzflow_targets::{LatticeFile, Target, TargetSpec};

use crate::config::{Loaded, Objective, TrainSection};
use crate::engine::{Architecture, Device};
use crate::output::{self, RunArgs, Shard, lock_output, run_meta, same_run};

/// Value of the `format` field of a model file.
pub const MODEL_FORMAT: &str = "boltzflow-model";
/// Model-file version this build writes and reads.
pub const MODEL_VERSION: u32 = 2;
/// Consecutive non-finite steps that stop training.
const MAX_NONFINITE: u64 = 10;
/// Fewest samples of the final evaluation.
const FINAL_EVAL: usize = 16384;
/// Salt of the evaluation streams (keeps them apart from the training stream).
const EVAL_SALT: u64 = 0x5eed_e7a1_0c0f_fee5;

/// The training series of `train.h5`, in file order.
pub const TRAIN_SERIES: [&str; 11] = [
    "step",
    "loss",
    "loss_err",
    "ess",
    "acceptance",
    "grad_norm",
    "lr",
    "log_w_mean",
    "log_w_var",
    "elapsed_s",
    "steps_per_s",
];

/// `model.json`: everything needed to sample the flow and to continue training it exactly.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelFile {
    /// [`MODEL_FORMAT`].
    pub format: String,
    /// [`MODEL_VERSION`].
    pub version: u32,
    /// The flow's engine, architecture and configuration shape.
    pub flow: Architecture,
    /// The lattice file the flow was trained on (TOML text).
    pub lattice: String,
    /// The resolved run config (TOML text).
    pub config: String,
    /// The flow's parameters (flat, in the engine's layout).
    pub params: Vec<f32>,
    /// The optimiser state.
    pub adam: Adam,
    /// Training steps taken (skipped ones included).
    pub step: u64,
    /// Evaluations committed to train.h5 up to `step`.
    pub evaluations: u64,
    /// The training RNG after `step` steps.
    pub rng: Xoshiro256PlusPlus,
    /// Steps skipped for a non-finite loss or gradient.
    pub skipped: u64,
    /// Training wall time so far, seconds (all sessions).
    pub elapsed_s: f64,
}

impl ModelFile {
    /// Reads and checks a model file; every failure is one line naming the file.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow!("cannot read model file {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| anyhow!("model file {}: {e}", path.display()))
    }

    fn parse(text: &str) -> Result<Self> {
        let model: Self = serde_json::from_str(text).map_err(|e| {
            anyhow!("not a valid boltzflow model ({e}); rerun boltzflow train to rewrite it")
        })?;
        if model.format != MODEL_FORMAT || model.version != MODEL_VERSION {
            bail!(
                "format {} version {} is not {MODEL_FORMAT} version {MODEL_VERSION}; retrain with this boltzflow",
                model.format,
                model.version
            );
        }
        let n = model.build_flow(Device::Cpu)?.params().len();
        if model.params.len() != n || model.adam.len() != n {
            bail!(
                "holds {} parameters (Adam: {}) but its flow config needs {n}; the file is damaged, retrain",
                model.params.len(),
                model.adam.len()
            );
        }
        Ok(model)
    }

    /// The flow with these parameters on `device`.
    pub fn build_flow(&self, device: Device) -> Result<Box<dyn FlowModel>> {
        let lattice = LatticeFile::parse(&self.lattice)
            .map_err(|e| anyhow!("stored lattice: {e}; the file is damaged, retrain"))?;
        let mut flow = self.flow.build(&lattice.target, device)?;
        if self.params.len() == flow.params().len() {
            flow.set_params(&self.params).map_err(|e| anyhow!("{e}"))?;
        }
        Ok(flow)
    }

    /// Writes the model to `path` atomically: `<path>.tmp`, fsync, rename.
    pub fn write_atomic(&self, path: &Path) -> Result<()> {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let text = serde_json::to_string(self).context("serialising the model")?;
        let mut file = std::fs::File::create(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        file.write_all(text.as_bytes())
            .and_then(|()| file.sync_all())
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
            && let Ok(d) = std::fs::File::open(dir)
        {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

/// The parameters of the trained model at `path` (`train.init`), which must have the
/// architecture `flow` up to the lattice shape and `n` parameters.
fn initial_params(path: &Path, flow: &Architecture, n: usize) -> Result<Vec<f32>> {
    let init = ModelFile::read(path)?;
    if init.flow.reshaped(flow) != *flow || init.params.len() != n {
        bail!(
            "train.init = {}: that model is a {} with {} parameters, this run's flow a {} with {n}; point train.init at a model of the same [flow] settings (any lattice size)",
            path.display(),
            init.flow.summary(),
            init.params.len(),
            flow.summary()
        );
    }
    tracing::info!("starting from the parameters of {}", path.display());
    Ok(init.params)
}

/// The configuration shape of a target (the flow's shape), or a one-line error naming the
/// lattice file.
pub fn flow_shape(spec: &TargetSpec, config: &Path) -> Result<Vec<usize>> {
    let target = spec
        .build()
        .map_err(|e| anyhow!("lattice of {}: {e}", config.display()))?;
    Ok(target.shape())
}

/// The lattice definition as one line (for messages).
pub fn lattice_summary(lattice: &LatticeFile) -> String {
    serde_json::to_string(&lattice.target).unwrap_or_default()
}

/// `runs/<config stem>`.
pub fn default_dir(config: &Path) -> PathBuf {
    let stem = config
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or("run".into());
    PathBuf::from("runs").join(stem)
}

/// One evaluation's numbers, in [`TRAIN_SERIES`] order: `n` samples drawn from the
/// evaluation stream of `step`, split over the ranks of `comm` (log w all-gathered).
fn evaluate(
    flow: &dyn FlowModel,
    target: &dyn Target,
    n: usize,
    (seed, step): (u64, u64),
    comm: &dyn Communicator,
) -> Result<[f64; 5]> {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(
        seed ^ EVAL_SALT ^ step.wrapping_mul(0x9e37_79b9_7f4a_7c15),
    );
    let dim = flow.latent_dim();
    let z = flow.draw_prior(n, &mut rng);
    let share = Shard::of(comm).range(n);
    let (x, log_q) = flow
        .push_forward(&z[share.start * dim..share.end * dim])
        .map_err(|e| anyhow!("{e}"))?;
    let x: Vec<f64> = x.iter().map(|&p| f64::from(p)).collect();
    let mut action = vec![0.0; share.len()];
    target.action_batch(&x, &mut action);
    let local: Vec<f64> = action.iter().zip(&log_q).map(|(s, lq)| -s - lq).collect();
    let log_w = if comm.size() > 1 {
        comm.all_gather_f64(&local)
    } else {
        local
    };
    let nf = n as f64;
    let mean = log_w.iter().sum::<f64>() / nf;
    let var = log_w.iter().map(|l| (l - mean).powi(2)).sum::<f64>() / (nf - 1.0);
    Ok([
        -mean,
        (var / nf).sqrt(),
        boltzflow_stats::ess_fraction(&log_w),
        mh_acceptance(&log_w),
        var,
    ])
}

/// FNV-1a over the bits of the parameters: equal on every rank of a healthy data-parallel run.
fn parameter_hash(params: &[f32]) -> u64 {
    params.iter().fold(0xcbf2_9ce4_8422_2325, |h, p| {
        (h ^ u64::from(p.to_bits())).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Stops the run when the ranks' parameters differ (they must stay bitwise equal).
fn check_replicas(comm: &dyn Communicator, params: &[f32], step: u64) -> Result<()> {
    if comm.size() == 1 {
        return Ok(());
    }
    let hashes = comm.all_gather_u64(parameter_hash(params));
    if let Some(rank) = hashes.iter().position(|&h| h != hashes[0]) {
        bail!(
            "data-parallel training diverged: the parameters of rank {rank} differ from rank 0's at step {step} (hash {:016x} vs {:016x}); the MPI reduction is not deterministic across ranks, rerun with one rank per node or report the MPI library",
            hashes[rank],
            hashes[0]
        );
    }
    Ok(())
}

/// Trains and returns the output directory; with several ranks in `comm`, data-parallel
/// (see the module documentation).
pub fn run(args: &RunArgs, comm: &dyn Communicator) -> Result<PathBuf> {
    let loaded = Loaded::read(&args.config, &args.overrides)?;
    let (flow_section, train) = loaded.training(&args.config)?;
    let ranks = comm.size();
    let batches = std::iter::once(train.batch).chain(train.batch_schedule.iter().map(|[_, b]| *b));
    for b in batches {
        if !b.is_multiple_of(ranks) {
            bail!(
                "the training batch {b} (train.batch or train.batch_schedule) does not split evenly over {ranks} ranks; use a multiple of {ranks} or another number of ranks"
            );
        }
    }
    let shape = flow_shape(&loaded.lattice.target, &args.config)?;
    let target = loaded.lattice.target.build()?;
    let flow_config = Architecture::resolve(
        &flow_section,
        &loaded.lattice.target,
        &shape,
        train.forward_kl(),
    )?;
    let mut model = flow_config.build(&loaded.lattice.target, flow_section.device)?;
    let t0 = loaded.lattice.target.temperature().unwrap_or(1.0);
    let ratios: Vec<f64> = train.temperatures.iter().map(|t| t / t0).collect();
    if let Some(&r) = ratios.iter().find(|&&r| r != 1.0) {
        model
            .set_temperature(r)
            .and_then(|_| model.set_temperature(1.0))
            .map_err(|e| anyhow!("train.temperatures: {e}"))?;
    }
    model
        .set_regularization(train.regularize_above)
        .map_err(|e| anyhow!("train.regularize_above: {e}"))?;
    let dir = args
        .out
        .clone()
        .unwrap_or_else(|| default_dir(&args.config));
    let ensemble_path = match &train.ensemble {
        Some(path) => Some(crate::config::resolve(&args.config, path)),
        None if train.generate_ensemble => Some(generate_ensemble(args, &dir, comm)?),
        None => None,
    };
    let ensemble = match &ensemble_path {
        Some(path) if train.forward_kl() => {
            let mut data = read_ensemble(path, &loaded.lattice)?;
            if train.augment_permutations {
                data.groups = loaded.lattice.target.identical_particles();
                data.spatial = shape.get(1).copied().unwrap_or(1);
            }
            Some(data)
        }
        _ => None,
    };
    tracing::info!("{}", flow_config.summary());
    let model_path = dir.join("model.json");
    let h5_path = dir.join("train.h5");
    let layout = Layout {
        chains: 1,
        config_shape: None,
        series: TRAIN_SERIES.iter().map(|s| s.to_string()).collect(),
        vectors: Vec::new(),
        block: 1,
    };

    // Rank 0 owns the files; the others receive its state.
    let _lock = if comm.is_root() {
        Some(lock_output(&model_path)?)
    } else {
        None
    };
    let (mut writer, mut state) = if !comm.is_root() {
        (None, None)
    } else if args.resume {
        let (writer, state) = resume(&loaded, &model_path, &h5_path, &layout, &flow_config)?;
        (Some(writer), Some(state))
    } else {
        for existing in [&model_path, &h5_path].into_iter().filter(|p| p.exists()) {
            if !args.force {
                bail!(
                    "{} already exists; pass --resume to continue it, --force to overwrite it, or choose another --out",
                    existing.display()
                );
            }
        }
        let n = model.params().len();
        let initial = match &train.init {
            Some(path) => {
                initial_params(&crate::config::resolve(&args.config, path), &flow_config, n)?
            }
            None => model.params(),
        };
        let state = ModelFile {
            format: MODEL_FORMAT.into(),
            version: MODEL_VERSION,
            flow: flow_config.clone(),
            lattice: loaded.lattice.to_toml(),
            config: loaded.toml.clone(),
            params: initial,
            adam: Adam::new(
                AdamConfig {
                    lr: train.lr,
                    grad_clip: train.grad_clip,
                    ..AdamConfig::default()
                },
                n,
            )
            .map_err(|e| anyhow!("{e}"))?,
            step: 0,
            evaluations: 0,
            rng: Xoshiro256PlusPlus::seed_from_u64(train.seed),
            skipped: 0,
            elapsed_s: 0.0,
        };
        let meta = run_meta("train", &loaded, train.seed);
        let writer = EnsembleWriter::create(&h5_path, &meta, &layout, args.force)?;
        state.write_atomic(&model_path)?;
        (Some(writer), Some(state))
    };
    let mut state = if ranks > 1 {
        let bytes = match &state {
            Some(state) => serde_json::to_vec(state)?,
            None => Vec::new(),
        };
        let bytes = comm.broadcast_bytes(bytes);
        serde_json::from_slice::<ModelFile>(&bytes)
            .map_err(|e| anyhow!("training state from rank 0: {e}"))?
    } else {
        state.take().expect("rank 0 holds the state")
    };
    // The run may have grown: the stored config is the one of this session from now on.
    state.config = loaded.toml.clone();

    let steps = train.steps as u64;
    if state.step >= steps {
        tracing::info!(
            "{} is already trained for {} steps (train.steps = {steps}); raise train.steps to continue",
            model_path.display(),
            state.step
        );
        return Ok(dir);
    }
    model
        .set_params(&state.params)
        .map_err(|e| anyhow!("{e}"))?;
    let mut params = state.params.clone();
    let progress = output::progress_bar(steps, "steps", args.quiet || !comm.is_root());
    let shard = Shard::of(comm);
    // Seconds spent waiting for the other ranks, and in the all-reduce of gradients and losses,
    // this session.
    let (mut wait_s, mut reduce_s) = (0.0, 0.0);
    progress.set_position(state.step);
    let session = Instant::now();
    let elapsed_before = state.elapsed_s;
    // Training rate since the last evaluation, its time excluded: (clock, step).
    let mut rate_clock = (Instant::now(), state.step);
    let rate_from = state.step;
    let mut grad = vec![0f32; params.len()];
    let mut grad_forward = vec![0f32; params.len()];
    let (mut grad_norm, mut consecutive) = (f64::NAN, 0u64);
    let mut last_checkpoint = state.step;
    let mut eval_line = String::new();

    while state.step < steps {
        let lr = train.lr_at(state.step as usize);
        let batch = train.batch_at(state.step as usize);
        let ratio = match ratios.as_slice() {
            [] => 1.0,
            r => r[state.step as usize % r.len()],
        };
        let mut loss = gradient_step(
            model.as_mut(),
            (&train, ratio),
            (target.as_ref(), ensemble.as_ref()),
            (batch, shard),
            &mut state.rng,
            (&mut grad, &mut grad_forward),
        )?;
        if ranks > 1 {
            // The barrier separates waiting for the slowest rank from the reduction itself.
            let clock = Instant::now();
            comm.barrier();
            let reached = Instant::now();
            loss = all_reduce_mean(comm, &mut grad, loss);
            wait_s += (reached - clock).as_secs_f64();
            reduce_s += reached.elapsed().as_secs_f64();
        }
        state.step += 1;
        if loss.is_finite() && grad.iter().all(|g| g.is_finite()) {
            state.adam.set_lr(lr);
            grad_norm = state.adam.step(&mut params, &grad);
            model.set_params(&params).map_err(|e| anyhow!("{e}"))?;
            consecutive = 0;
        } else {
            state.skipped += 1;
            consecutive += 1;
            tracing::warn!(
                "step {}: non-finite loss ({loss}) or gradient; step skipped ({} skipped so far)",
                state.step,
                state.skipped
            );
            if consecutive >= MAX_NONFINITE {
                progress.abandon();
                bail!(
                    "training diverged: {MAX_NONFINITE} consecutive steps up to step {} had a non-finite loss or gradient; {} holds the last good checkpoint (step {last_checkpoint}); lower train.lr or set train.grad_clip",
                    state.step,
                    model_path.display()
                );
            }
        }
        progress.set_position(state.step);
        if !args.quiet {
            progress.set_message(format!("loss {loss:.4}{eval_line}"));
        }

        let last = state.step == steps;
        if last || state.step.is_multiple_of(train.eval_every as u64) {
            let (clock, from) = rate_clock;
            let steps_per_s = (state.step - from) as f64 / clock.elapsed().as_secs_f64().max(1e-9);
            let n = if last {
                train.eval_batch.max(FINAL_EVAL)
            } else {
                train.eval_batch
            };
            check_replicas(comm, &params, state.step)?;
            let [eval_loss, loss_err, ess, acceptance, log_w_var] = evaluate(
                model.as_ref(),
                target.as_ref(),
                n,
                (train.seed, state.step),
                comm,
            )?;
            state.elapsed_s = elapsed_before + session.elapsed().as_secs_f64();
            state.params.copy_from_slice(&params);
            state.evaluations += 1;
            let values = [
                state.step as f64,
                eval_loss,
                loss_err,
                ess,
                acceptance,
                grad_norm,
                lr,
                -eval_loss,
                log_w_var,
                state.elapsed_s,
                steps_per_s,
            ];
            if let Some(writer) = writer.as_mut() {
                commit_evaluation(writer, &state, &values)?;
            }
            eval_line = format!(" ESS/N {ess:.3} acc {acceptance:.3}");
            tracing::debug!("step {}: loss {eval_loss:.4}{eval_line}", state.step);
        }
        if last || state.step.is_multiple_of(train.checkpoint_every as u64) {
            state.elapsed_s = elapsed_before + session.elapsed().as_secs_f64();
            state.params.copy_from_slice(&params);
            if comm.is_root() {
                state.write_atomic(&model_path)?;
            }
            last_checkpoint = state.step;
        }
        if last || state.step.is_multiple_of(train.eval_every as u64) {
            rate_clock = (Instant::now(), state.step);
        }
    }
    progress.finish_and_clear();
    if ranks > 1 {
        let session_s = session.elapsed().as_secs_f64();
        let per_step = 1e3 / (state.step - rate_from).max(1) as f64;
        tracing::info!(
            "rank {} of {ranks}, batch {} per rank: all-reduce {:.3} ms per step ({:.2}% of the session), waiting for other ranks {:.3} ms per step ({:.2}%)",
            comm.rank(),
            train.batch / ranks,
            reduce_s * per_step,
            100.0 * reduce_s / session_s.max(1e-9),
            wait_s * per_step,
            100.0 * wait_s / session_s.max(1e-9)
        );
    }
    if !comm.is_root() {
        return Ok(dir);
    }
    tracing::info!(
        "trained {} steps ({} skipped) in {:.2?} this session; wrote {} and {}",
        state.step,
        state.skipped,
        session.elapsed(),
        model_path.display(),
        h5_path.display()
    );
    Ok(dir)
}

/// Runs the config's `[mcmc]` section into `dir/ensemble.h5` for the forward KL
/// (`train.generate_ensemble`); with `--resume` an existing file is reused as it is.
fn generate_ensemble(args: &RunArgs, dir: &Path, comm: &dyn Communicator) -> Result<PathBuf> {
    let path = dir.join("ensemble.h5");
    if args.resume && path.exists() {
        tracing::info!("forward KL on the existing {}", path.display());
        return Ok(path);
    }
    tracing::info!(
        "train.generate_ensemble: running [mcmc] into {}",
        path.display()
    );
    let mcmc_args = RunArgs {
        out: Some(path.clone()),
        resume: false,
        ..args.clone()
    };
    crate::mcmc::run(&mcmc_args, comm)?;
    comm.barrier();
    Ok(path)
}

/// Stored configurations of an MCMC ensemble for the forward KL, `[n, dim]` f32.
struct Ensemble {
    configs: Vec<f32>,
    dim: usize,
    /// Groups of identical particles relabelled at random in every minibatch
    /// (`train.augment_permutations`; empty: none).
    groups: Vec<std::ops::Range<usize>>,
    /// Coordinates per particle.
    spatial: usize,
}

impl Ensemble {
    /// Appends configuration i to `x`, its identical particles permuted uniformly at random
    /// within each group (Fisher-Yates) when augmenting.
    fn push(&self, i: usize, x: &mut Vec<f32>, rng: &mut Xoshiro256PlusPlus) {
        let config = &self.configs[i * self.dim..(i + 1) * self.dim];
        if self.groups.is_empty() {
            x.extend_from_slice(config);
            return;
        }
        let start = x.len();
        x.extend_from_slice(config);
        let d = self.spatial;
        let out = &mut x[start..];
        for group in &self.groups {
            for k in (group.start + 1..group.end).rev() {
                let j = rng.random_range(group.start..=k);
                for c in 0..d {
                    out.swap(k * d + c, j * d + c);
                }
            }
        }
    }
}

/// Reads every stored configuration of `path`; the ensemble's lattice must be `lattice`.
fn read_ensemble(path: &Path, lattice: &LatticeFile) -> Result<Ensemble> {
    if !path.exists() {
        bail!(
            "train.ensemble {} does not exist; write it with `boltzflow mcmc` (mcmc.store_configs = true) first",
            path.display()
        );
    }
    let reader = EnsembleReader::open(path)?;
    let stored = LatticeFile::parse(&reader.meta().lattice_toml)
        .map_err(|e| anyhow!("train.ensemble {}: stored lattice: {e}", path.display()))?;
    if stored.target != lattice.target {
        bail!(
            "train.ensemble {} was generated on lattice {} but the target is {}; use an ensemble of the same lattice",
            path.display(),
            lattice_summary(&stored),
            lattice_summary(lattice)
        );
    }
    let Some(shape) = reader.config_shape() else {
        bail!(
            "train.ensemble {} holds no configurations; rerun boltzflow mcmc with mcmc.store_configs = true",
            path.display()
        );
    };
    let dim: usize = shape.iter().product();
    let mut configs = Vec::new();
    for chain in 0..reader.chains() {
        configs.extend(
            reader
                .configs(chain, 0..reader.draws())?
                .iter()
                .map(|&v| v as f32),
        );
    }
    if configs.is_empty() {
        bail!("train.ensemble {} holds no draws yet", path.display());
    }
    tracing::info!(
        "forward KL on {} configurations of {}",
        configs.len() / dim,
        path.display()
    );
    Ok(Ensemble {
        configs,
        dim,
        groups: Vec::new(),
        spatial: 1,
    })
}

/// -(1/b) sum log q on this rank's share of a minibatch of `batch` configurations drawn
/// uniformly from the ensemble (every rank draws every index); its gradient into `grad`.
fn forward_nll(
    model: &mut dyn FlowModel,
    ensemble: Option<&Ensemble>,
    (batch, shard): (usize, Shard),
    rng: &mut Xoshiro256PlusPlus,
    grad: &mut [f32],
) -> Result<f64> {
    let data = ensemble.ok_or_else(|| anyhow!("the forward KL needs train.ensemble"))?;
    let n = data.configs.len() / data.dim;
    let indices: Vec<usize> = (0..batch).map(|_| rng.random_range(0..n)).collect();
    let share = &indices[shard.range(batch)];
    let mut x = Vec::with_capacity(share.len() * data.dim);
    for &i in share {
        data.push(i, &mut x, rng);
    }
    let log_q = model
        .forward_kl_gradient(&x, grad)
        .map_err(|e| anyhow!("{e}"))?;
    Ok(-log_q.iter().sum::<f64>() / share.len() as f64)
}

/// The gradient of this rank's share of one step's batch into `grads.0` (scratch in
/// `grads.1`); returns the share's loss: the reverse-KL estimate for "reverse" and "mix",
/// the negative log-likelihood for "forward". Every rank draws the noise of the whole batch.
fn gradient_step(
    model: &mut dyn FlowModel,
    (train, ratio): (&TrainSection, f64),
    (target, ensemble): (&dyn Target, Option<&Ensemble>),
    (batch, shard): (usize, Shard),
    rng: &mut Xoshiro256PlusPlus,
    grads: (&mut [f32], &mut [f32]),
) -> Result<f64> {
    let (grad, forward) = grads;
    match train.objective {
        Objective::Forward => {
            let nll = forward_nll(model, ensemble, (batch, shard), rng, forward)?;
            grad.copy_from_slice(forward);
            Ok(nll)
        }
        Objective::Reverse | Objective::Mix => {
            let dim = model.latent_dim();
            // The reverse KL at T = ratio T_0; everything else at T_0.
            model.set_temperature(ratio).map_err(|e| anyhow!("{e}"))?;
            let z = model.draw_prior(batch, rng);
            let share = shard.range(batch);
            let reverse =
                model.reverse_kl_gradient_at(target, &z[share.start * dim..share.end * dim], grad);
            model.set_temperature(1.0).map_err(|e| anyhow!("{e}"))?;
            let (actions, log_q) = reverse.map_err(|e| anyhow!("{e}"))?;
            let loss = actions
                .iter()
                .zip(&log_q)
                .map(|(s, lq)| s + lq)
                .sum::<f64>()
                / actions.len() as f64;
            if matches!(train.objective, Objective::Mix) {
                forward_nll(model, ensemble, (batch, shard), rng, forward)?;
                let a = train.forward_weight as f32;
                for (g, f) in grad.iter_mut().zip(forward.iter()) {
                    *g = (1.0 - a) * *g + a * f;
                }
            }
            Ok(loss)
        }
    }
}

/// The mean over ranks of every rank's gradient (in place) and loss (returned): equal shares
/// make it the gradient and loss of the whole batch.
fn all_reduce_mean(comm: &dyn Communicator, grad: &mut [f32], loss: f64) -> f64 {
    let ranks = comm.size();
    comm.all_reduce_sum_f32(grad);
    let scale = 1.0 / ranks as f32;
    grad.iter_mut().for_each(|g| *g *= scale);
    let mut loss = [loss];
    comm.all_reduce_sum_f64(&mut loss);
    loss[0] / ranks as f64
}

/// Appends one evaluation to train.h5 with the state after it as the checkpoint.
fn commit_evaluation(writer: &mut EnsembleWriter, state: &ModelFile, values: &[f64]) -> Result<()> {
    let block = Block {
        draws: 1,
        configs: Vec::new(),
        series: TRAIN_SERIES
            .iter()
            .zip(values)
            .map(|(name, v)| (name.to_string(), vec![*v]))
            .collect(),
        vectors: Vec::new(),
    };
    let checkpoint = Checkpoint {
        draws: state.evaluations,
        chains: vec![ChainCheckpoint {
            x: state.params.iter().map(|&p| f64::from(p)).collect(),
            rng: serde_json::to_string(&state.rng)?,
            sampler: serde_json::to_string(state)?,
        }],
    };
    writer.commit(&block, &checkpoint)?;
    Ok(())
}

/// Reopens model.json and train.h5 and returns the later of their two states.
fn resume(
    loaded: &Loaded,
    model_path: &Path,
    h5_path: &Path,
    layout: &Layout,
    flow_config: &Architecture,
) -> Result<(EnsembleWriter, ModelFile)> {
    for p in [model_path, h5_path] {
        if !p.exists() {
            bail!(
                "nothing to resume: {} does not exist; run without --resume",
                p.display()
            );
        }
    }
    let model = ModelFile::read(model_path)?;
    let (stored, stored_lattice) = {
        let reader = EnsembleReader::open(h5_path)?;
        let meta = reader.meta();
        (meta.config_toml.clone(), meta.lattice_toml.clone())
    };
    let lattice = loaded.lattice.to_toml();
    for (what, config, stored_lattice) in [
        (model_path, &model.config, &model.lattice),
        (h5_path, &stored, &stored_lattice),
    ] {
        if !same_run(config, &loaded.toml, "train", "steps")
            || *stored_lattice != lattice
            || model.flow != *flow_config
        {
            bail!(
                "{} was written by another config or lattice; rerun without --resume (and another --out) or with the same config and lattice file",
                what.display()
            );
        }
    }
    let (writer, checkpoint) = EnsembleWriter::resume(h5_path, &stored, layout)?;
    let from_h5 = match checkpoint.chains.first() {
        Some(c) => Some(
            ModelFile::parse(&c.sampler)
                .map_err(|e| anyhow!("{}: checkpoint: {e}", h5_path.display()))?,
        ),
        None => None,
    };
    let state = match from_h5 {
        Some(h5) if h5.step > model.step => h5,
        _ => model,
    };
    if state.evaluations != checkpoint.draws {
        bail!(
            "{} counts {} evaluations but {} holds {}; the files do not belong together, rerun without --resume",
            model_path.display(),
            state.evaluations,
            h5_path.display(),
            checkpoint.draws
        );
    }
    tracing::info!("resuming {} at step {}", model_path.display(), state.step);
    Ok((writer, state))
}

#[cfg(test)]
mod tests {
    use crate::config::{Schedule, TrainSection};

    /// The schedules: constant, cosine from lr to ~0, step decay by gamma every step_every.
    #[test]
    fn learning_rate_schedules() {
        let mut t: TrainSection = toml::from_str("steps = 100\nseed = 1\nlr = 0.01").unwrap();
        assert_eq!(t.lr_at(73), 0.01);
        t.schedule = Schedule::Cosine;
        assert_eq!(t.lr_at(0), 0.01);
        assert!((t.lr_at(50) - 0.005).abs() < 1e-15);
        t.lr_min = 1e-4;
        assert!((t.lr_at(100) - 1e-4).abs() < 1e-15);
        assert!((t.lr_at(50) - 0.00505).abs() < 1e-15);
        t.schedule = Schedule::Step;
        t.step_every = Some(30);
        assert_eq!(t.lr_at(29), 0.01);
        assert_eq!(t.lr_at(60), 0.01 * 0.25);
    }

    /// The batch-size schedule: `batch` before the first entry, then the latest entry's.
    #[test]
    fn batch_size_schedule() {
        let t: TrainSection = toml::from_str(
            "steps = 100\nseed = 1\nbatch = 64\nbatch_schedule = [[50, 256], [20, 128]]",
        )
        .unwrap();
        t.validate().unwrap();
        assert_eq!(t.batch_at(0), 64);
        assert_eq!(t.batch_at(19), 64);
        assert_eq!(t.batch_at(20), 128);
        assert_eq!(t.batch_at(49), 128);
        assert_eq!(t.batch_at(99), 256);
        let bad: TrainSection =
            toml::from_str("steps = 100\nseed = 1\nbatch_schedule = [[10, 1]]").unwrap();
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("batch_schedule")
        );
    }
}
