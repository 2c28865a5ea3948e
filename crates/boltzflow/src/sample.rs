//! `boltzflow sample`: independent draws of a trained flow, their importance weights, and the
//! independence Metropolis-Hastings chain built from them, written batch by batch to HDF5.
//!
//! For each draw x_i ~ q (f32 network, f64 log q) the run stores
//!
//! ```text
//! log_q = log q(x_i),  action = S(x_i),  log_w = -S(x_i) - log q(x_i)    (f64)
//! ```
//!
//! and every scalar observable of the target (except `action`, stored once). With `sample.mh`
//! the proposals also drive an independence Metropolis-Hastings chain: proposal i is accepted
//! with probability min(1, w_i / w_c), w_c the weight of the chain's current state (proposal 0
//! starts the chain), using a seeded uniform stream of its own. Series `mh_accepted` (0/1) and
//! `mh_index` (index of the chain's state after proposal i) make the chain's observables the
//! proposals' values at `mh_index`.
//!
//! With `sample.local` (e.g. "metropolis") the chain alternates two p-invariant kernels: the
//! flow proposal above, then `local_steps` updates of that local MCMC sampler (settings from
//! `[mcmc]`). The chain's state then leaves the set of proposals, so after the local updates
//! its log w = -S - log q is recomputed (log q by the flow's inverse) for the next
//! acceptance test, and its observables are stored as `chain_<name>` series, which `analyze`
//! uses for the chain instead of `mh_index`.
//!
//! With `sample.z2_mixture` the proposals come from the Z2-symmetrised flow q_s(x) =
//! [q(x) + q(-x)] / 2, with `sample.symmetrize = "particles"` from the mixture over the
//! relabellings and mirror images of identical particles (see [`Proposer`]); `log_q` then
//! holds the log density of the mixture.
//!
//! Under `mpirun -np R` the `sample.samples` draws (a multiple of R) are split evenly over
//! the ranks; rank r draws from its own streams of
//! `sample.seed` (the single-process streams advanced by r jumps of 2^128), runs its own
//! Metropolis chain and writes `<out stem>.rank<r>.h5`; at the end the ranks reduce the
//! global ESS/N and ln Z (logged), and rank 0 collates the rank files into `--out`, one chain
//! per rank, which `analyze` treats as replicas.
//!
//! The file has kind "sample", one chain, configurations optional (`sample.store_configs`).
//! Each batch is one commit; the checkpoint holds `x` = the chain's current configuration,
//! `rng` = the flow's and the uniforms' generators, `sampler` = the chain's state (index of
//! the current draw, the bits of its log w, acceptances): `--resume` continues bitwise.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Result, anyhow, bail};
use rand::{RngExt, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use boltzflow_dist::Communicator;
use boltzflow_store::{Block, ChainCheckpoint, Checkpoint, EnsembleReader, EnsembleWriter, Layout};
use boltzflow_targets::LatticeFile;

use crate::config::Loaded;
use crate::output::{self, RunArgs, lock_output, rank_file, run_meta, same_run};
use crate::symmetry::SymmetryGroup;
use crate::train::{self, ModelFile, lattice_summary};

/// The independence Metropolis-Hastings series.
pub const MH_SERIES: [&str; 2] = ["mh_accepted", "mh_index"];

/// Options of `boltzflow sample`.
pub struct SampleArgs {
    /// The options every run command shares.
    pub run: RunArgs,
    /// The model file written by `boltzflow train`.
    pub model: PathBuf,
}

/// The generators of a sampling run (checkpoint `rng` text).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct Generators {
    /// Prior noise of the flow.
    flow: Xoshiro256PlusPlus,
    /// Uniforms of the Metropolis decisions.
    mh: Xoshiro256PlusPlus,
    /// The interleaved local updates.
    #[serde(default = "local_stream")]
    local: Xoshiro256PlusPlus,
}

/// The local updates' stream for a run without one in its checkpoint.
fn local_stream() -> Xoshiro256PlusPlus {
    Xoshiro256PlusPlus::seed_from_u64(0)
}

/// The Metropolis chain's state (checkpoint `sampler` text).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct ChainState {
    /// Index of the current draw (None before the first).
    current: Option<u64>,
    /// `f64::to_bits` of the current draw's log w (exact, and -inf survives JSON).
    log_w_bits: u64,
    /// Proposals accepted so far.
    accepted: u64,
}

impl Generators {
    /// The streams of rank `rank`: seeded by `seed`, advanced by `rank` jumps of 2^128 (the
    /// Metropolis and local streams sit one and two long jumps of 2^192 further on).
    fn of(seed: u64, rank: usize) -> Self {
        let mut base = Xoshiro256PlusPlus::seed_from_u64(seed);
        for _ in 0..rank {
            base.jump();
        }
        let mut mh = base.clone();
        mh.long_jump();
        let mut local = mh.clone();
        local.long_jump();
        Self {
            flow: base,
            mh,
            local,
        }
    }
}

/// Draws the samples (this rank's share of them) and returns the path of the ensemble file.
pub fn run(args: &SampleArgs, comm: &dyn Communicator) -> Result<PathBuf> {
    let mut loaded = Loaded::read(&args.run.config, &args.run.overrides)?;
    let sample = loaded.sampling(&args.run.config)?;
    let ranks = comm.size();
    if !sample.samples.is_multiple_of(ranks) {
        bail!(
            "sample.samples = {} does not split evenly over {ranks} ranks (the collated file has one chain of equal length per rank); use a multiple of {ranks}",
            sample.samples
        );
    }
    let samples = sample.samples / ranks;
    train::flow_shape(&loaded.lattice.target, &args.run.config)?;
    let model = ModelFile::read(&args.model)?;
    let model_lattice = LatticeFile::parse(&model.lattice)
        .map_err(|e| anyhow!("model file {}: stored lattice: {e}", args.model.display()))?;
    if model_lattice.target != loaded.lattice.target {
        bail!(
            "model {} was trained on lattice {} but {} names lattice {}; sample with the config the model was trained for or train a model on this lattice",
            args.model.display(),
            lattice_summary(&model_lattice),
            args.run.config.display(),
            lattice_summary(&loaded.lattice)
        );
    }
    let device = loaded
        .config
        .flow
        .as_ref()
        .map_or(crate::engine::Device::Cpu, |f| f.device);
    let mut flow = model.build_flow(device)?;
    if let Some(t) = sample.temperature {
        // Sample and reweight at T: the target (and every file's lattice) at T, the prior
        // variance T / T_0. Reference values of the lattice file hold at T_0 only.
        let t0 = loaded.lattice.target.temperature().unwrap_or(1.0);
        flow.set_temperature(t / t0)
            .map_err(|e| anyhow!("sample.temperature: {e}"))?;
        loaded.lattice.target = loaded
            .lattice
            .target
            .with_temperature(t)
            .expect("sampling() admits temperatures on molecular targets only");
        loaded.lattice.target.validate()?;
        loaded.lattice.reference = None;
        loaded.lattice.description = Some(format!(
            "{} (sampled at kT = {t})",
            loaded.lattice.description.as_deref().unwrap_or("")
        ));
    }
    let target = loaded.lattice.target.build()?;
    let group = if sample.z2_mixture {
        Some(SymmetryGroup::z2(target.dim()))
    } else if sample.symmetrize.is_some() {
        Some(SymmetryGroup::particles(
            &loaded.lattice.target,
            &target.shape(),
        )?)
    } else {
        None
    };
    let proposer = Proposer {
        flow: flow.as_ref(),
        group,
    };
    let observables: Vec<_> = target
        .observables()
        .into_iter()
        .filter(|o| o.name() != "action")
        .collect();
    let mut series: Vec<String> = ["log_q", "action", "log_w"].map(String::from).to_vec();
    series.extend(observables.iter().map(|o| o.name().to_string()));
    if sample.mh {
        series.extend(MH_SERIES.map(String::from));
    }
    let mut local = match sample.local {
        Some(kind) => Some(local_sampler(&loaded, kind)?),
        None => None,
    };
    if local.is_some() {
        series.extend(observables.iter().map(|o| format!("chain_{}", o.name())));
    }
    let layout = Layout {
        chains: 1,
        config_shape: sample.store_configs.then(|| target.shape()),
        series,
        vectors: Vec::new(),
        block: sample.batch,
    };
    let collated = args.run.out.clone().unwrap_or_else(|| {
        let dir = train::default_dir(&args.run.config);
        dir.with_extension("h5")
    });
    let out = rank_file(comm, &collated, &args.run)?;

    let _lock = lock_output(&out)?;
    let mut generators = Generators::of(sample.seed, comm.rank());
    let mut chain = ChainState::default();
    let mut current_x: Vec<f64> = Vec::new();
    let (mut writer, mut done) = if args.run.resume {
        if !out.exists() {
            bail!(
                "nothing to resume: {} does not exist; run without --resume",
                out.display()
            );
        }
        let (stored, stored_lattice) = {
            let reader = EnsembleReader::open(&out)?;
            let meta = reader.meta();
            (meta.config_toml.clone(), meta.lattice_toml.clone())
        };
        if !same_run(&stored, &loaded.toml, "sample", "samples")
            || stored_lattice != loaded.lattice.to_toml()
        {
            bail!(
                "{} was written by another config or lattice; rerun without --resume (and another --out) or with the same config and lattice file",
                out.display()
            );
        }
        let (writer, checkpoint) = EnsembleWriter::resume(&out, &stored, &layout)?;
        if let Some(c) = checkpoint.chains.first() {
            generators = serde_json::from_str(&c.rng)
                .map_err(|e| anyhow!("{}: checkpoint rng: {e}", out.display()))?;
            chain = serde_json::from_str(&c.sampler)
                .map_err(|e| anyhow!("{}: checkpoint sampler: {e}", out.display()))?;
            current_x = c.x.clone();
        }
        tracing::info!(
            "resuming {} at sample {} of {}",
            out.display(),
            checkpoint.draws,
            samples
        );
        (writer, checkpoint.draws as usize)
    } else {
        if out.exists() && !args.run.force {
            bail!(
                "{} already exists; pass --resume to continue it, --force to overwrite it, or choose another --out",
                out.display()
            );
        }
        let meta = run_meta("sample", &loaded, sample.seed);
        (
            EnsembleWriter::create(&out, &meta, &layout, args.run.force)?,
            0,
        )
    };

    let progress =
        output::progress_bar(samples as u64, "samples", args.run.quiet || !comm.is_root());
    progress.set_position(done as u64);
    let start = Instant::now();
    let first = done;
    let dim = target.dim();
    while done < samples {
        let n = sample.batch.min(samples - done);
        let (x, log_q) = proposer.sample(n, &mut generators.flow)?;
        let x: Vec<f64> = x.iter().map(|&p| f64::from(p)).collect();
        let mut action = vec![0.0; n];
        target.action_batch(&x, &mut action);
        if let Some(group) = proposer.group.as_ref()
            && done == first
        {
            group.check_invariant(target.as_ref(), &x[..dim], action[0])?;
        }
        let log_w: Vec<f64> = action.iter().zip(&log_q).map(|(s, lq)| -s - lq).collect();
        let mut block_series = vec![("log_q".to_string(), log_q), ("action".to_string(), action)];
        for o in &observables {
            let values = x.par_chunks(dim).map(|c| o.measure(c)).collect();
            block_series.push((o.name().to_string(), values));
        }
        if let Some(sampler) = local.as_mut() {
            let steps = sample.local_steps;
            let (accepted, index, on_chain) = interleaved(
                Proposals {
                    x: &x,
                    log_w: &log_w,
                    offset: done as u64,
                    dim,
                },
                (&mut chain, &mut current_x),
                (sampler.as_mut(), steps),
                (&proposer, target.as_ref(), &observables),
                &mut generators,
            )?;
            block_series.push(("mh_accepted".to_string(), accepted));
            block_series.push(("mh_index".to_string(), index));
            for (o, values) in observables.iter().zip(on_chain) {
                block_series.push((format!("chain_{}", o.name()), values));
            }
        } else if sample.mh {
            let (accepted, index) = metropolis(&log_w, done as u64, &mut chain, &mut generators.mh);
            let last = chain.current.expect("the chain has a state after a batch") as usize;
            if last >= done {
                current_x = x[(last - done) * dim..(last - done + 1) * dim].to_vec();
            }
            block_series.push(("mh_accepted".to_string(), accepted));
            block_series.push(("mh_index".to_string(), index));
        } else {
            current_x = x[(n - 1) * dim..].to_vec();
        }
        block_series.push(("log_w".to_string(), log_w));
        done += n;
        let block = Block {
            draws: n,
            configs: if sample.store_configs { x } else { Vec::new() },
            series: block_series,
            vectors: Vec::new(),
        };
        let checkpoint = Checkpoint {
            draws: done as u64,
            chains: vec![ChainCheckpoint {
                x: current_x.clone(),
                rng: serde_json::to_string(&generators)?,
                sampler: serde_json::to_string(&chain)?,
            }],
        };
        writer.commit(&block, &checkpoint)?;
        progress.set_position(done as u64);
    }
    progress.finish_and_clear();
    let seconds = start.elapsed().as_secs_f64();
    tracing::info!(
        "{} samples in {seconds:.2} s ({:.0} samples/s); wrote {}",
        done - first,
        (done - first) as f64 / seconds.max(1e-9),
        out.display()
    );
    drop(writer);
    if ranks > 1 {
        global_estimates(comm, &out)?;
        output::collate_ranks(comm, &collated, sample.batch)?;
    }
    Ok(collated)
}

/// ESS/N and ln Z = LSE(log w) - ln N over the samples of every rank, reduced over the ranks
/// (max, then the sums of w / w_max and (w / w_max)^2 and the count); logged and returned.
fn global_estimates(comm: &dyn Communicator, file: &std::path::Path) -> Result<(f64, f64)> {
    let log_w = EnsembleReader::open(file)?.series("log_w")?.swap_remove(0);
    let mut max = [log_w.iter().copied().fold(f64::NEG_INFINITY, f64::max)];
    comm.all_reduce_max_f64(&mut max);
    let mut sums = [0.0, 0.0, log_w.len() as f64];
    for lw in &log_w {
        let w = (lw - max[0]).exp();
        sums[0] += w;
        sums[1] += w * w;
    }
    comm.all_reduce_sum_f64(&mut sums);
    let [s1, s2, n] = sums;
    let ess = s1 * s1 / s2 / n;
    let ln_z = max[0] + s1.ln() - n.ln();
    if comm.is_root() {
        tracing::info!(
            "{} ranks, {n} samples in all: ESS/N {ess:.6}, ln Z {ln_z:.10}",
            comm.size()
        );
    }
    Ok((ess, ln_z))
}

/// The local sampler of `sample.local`, with the settings of `[mcmc]` when the config has
/// one.
fn local_sampler(
    loaded: &Loaded,
    kind: boltzflow_mcmc::SamplerKind,
) -> Result<Box<dyn boltzflow_mcmc::Sampler>> {
    let mut config = match &loaded.config.mcmc {
        Some(mcmc) => mcmc.clone(),
        None => toml::from_str::<boltzflow_mcmc::McmcConfig>(
            "sampler = \"hmc\"\nseed = 0\nthermalization = 0\ndraws = 1\n",
        )?,
    };
    config.sampler = kind;
    boltzflow_mcmc::build_sampler(&config, &loaded.lattice.target)
        .map_err(|e| anyhow!("sample.local: {e}"))
}

/// A batch of flow proposals: `x [n, dim]`, their log weights, and the index of the first.
struct Proposals<'a> {
    x: &'a [f64],
    log_w: &'a [f64],
    offset: u64,
    dim: usize,
}

/// The independence Metropolis chain with `steps` local updates after every proposal:
/// accept proposal i when ln u < log_w_i - log_w_c, then update the chain's configuration
/// locally and recompute its log w. Returns (`mh_accepted`, `mh_index` = the last accepted
/// proposal, the chain's observables per draw).
#[allow(clippy::type_complexity)]
fn interleaved(
    proposals: Proposals,
    (chain, current): (&mut ChainState, &mut Vec<f64>),
    (sampler, steps): (&mut dyn boltzflow_mcmc::Sampler, usize),
    (proposer, target, observables): (
        &Proposer,
        &dyn boltzflow_targets::Target,
        &[Box<dyn boltzflow_targets::Observable>],
    ),
    generators: &mut Generators,
) -> Result<(Vec<f64>, Vec<f64>, Vec<Vec<f64>>)> {
    let Proposals {
        x,
        log_w,
        offset,
        dim,
    } = proposals;
    let n = log_w.len();
    let mut accepted = Vec::with_capacity(n);
    let mut index = Vec::with_capacity(n);
    let mut on_chain = vec![Vec::with_capacity(n); observables.len()];
    for (i, &lw) in log_w.iter().enumerate() {
        let u: f64 = generators.mh.random();
        let accept = match chain.current {
            None => true,
            Some(_) => u.ln() < lw - f64::from_bits(chain.log_w_bits),
        };
        if accept {
            chain.current = Some(offset + i as u64);
            chain.accepted += 1;
            current.clear();
            current.extend_from_slice(&x[i * dim..(i + 1) * dim]);
        }
        for _ in 0..steps {
            sampler.step(current, &mut generators.local);
        }
        let x32: Vec<f32> = current.iter().map(|&v| v as f32).collect();
        let log_q = proposer
            .log_prob(&x32)
            .map_err(|e| anyhow!("log q of the chain state: {e}"))?[0];
        chain.log_w_bits = (-target.action(current) - log_q).to_bits();
        accepted.push(f64::from(u8::from(accept)));
        index.push(chain.current.expect("set by the first proposal") as f64);
        for (o, values) in observables.iter().zip(&mut on_chain) {
            values.push(o.measure(current));
        }
    }
    Ok((accepted, index, on_chain))
}

/// The proposal density of a sampling run: the flow q, or with a symmetry group G its
/// symmetrised mixture q_G(x) = (1 / |G|) sum_g q(g x) (see [`crate::symmetry`]): draw x ~ q
/// and apply a uniformly drawn g; log q_G costs |G| - 1 extra inverse passes. With
/// `sample.z2_mixture` G = {1, x -> -x}: for a Z2-symmetric target q_G is never further from
/// p than q and removes any imbalance between the +M and -M modes; with
/// `sample.symmetrize = "particles"` G relabels identical particles and mirrors them.
struct Proposer<'a> {
    flow: &'a dyn boltzflow_flow::FlowModel,
    group: Option<SymmetryGroup>,
}

impl Proposer<'_> {
    /// `n` draws x ~ q (or q_G) with their log density; the group elements are drawn from
    /// `rng` after the flow's noise.
    fn sample(&self, n: usize, rng: &mut Xoshiro256PlusPlus) -> Result<(Vec<f32>, Vec<f64>)> {
        let (mut x, mut log_q) = self.flow.sample(n, rng);
        if let Some(group) = &self.group {
            log_q = group.log_mixture(self.flow, &x, &log_q)?;
            group.scatter(&mut x, rng);
        }
        Ok((x, log_q))
    }

    /// log q(x) (or log q_G(x)) of configurations `x` `[n, dim]`.
    fn log_prob(&self, x: &[f32]) -> Result<Vec<f64>> {
        let log_q = self.flow.log_prob(x)?;
        match &self.group {
            Some(group) => group.log_mixture(self.flow, x, &log_q),
            None => Ok(log_q),
        }
    }
}

/// Runs the independence Metropolis chain over proposals with log weights `log_w`, the first
/// of which has global index `offset`: proposal i is accepted when ln u < log_w_i - log_w_c
/// (u uniform in [0, 1); a NaN weight is never accepted). Returns (`mh_accepted`, `mh_index`).
fn metropolis(
    log_w: &[f64],
    offset: u64,
    chain: &mut ChainState,
    rng: &mut Xoshiro256PlusPlus,
) -> (Vec<f64>, Vec<f64>) {
    let mut accepted = Vec::with_capacity(log_w.len());
    let mut index = Vec::with_capacity(log_w.len());
    for (i, &lw) in log_w.iter().enumerate() {
        let u: f64 = rng.random();
        let accept = match chain.current {
            None => true,
            Some(_) => u.ln() < lw - f64::from_bits(chain.log_w_bits),
        };
        if accept {
            chain.current = Some(offset + i as u64);
            chain.log_w_bits = lw.to_bits();
            chain.accepted += 1;
        }
        accepted.push(f64::from(u8::from(accept)));
        index.push(chain.current.expect("set by the first proposal") as f64);
    }
    (accepted, index)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Z2 mixture is refused for a target without x -> -x symmetry (the double well's
    /// linear term) and accepted for phi^4.
    #[test]
    fn z2_mixture_needs_a_symmetric_target() {
        let lattices = concat!(env!("CARGO_MANIFEST_DIR"), "/../../lattices/");
        let target = |name: &str| {
            let text = std::fs::read_to_string(format!("{lattices}{name}")).unwrap();
            LatticeFile::parse(&text).unwrap().target.build().unwrap()
        };
        let well = target("double_well.toml");
        let x = vec![0.7; well.dim()];
        let z2 = SymmetryGroup::z2(well.dim());
        let err = z2
            .check_invariant(well.as_ref(), &x, well.action(&x))
            .unwrap_err();
        assert!(
            err.to_string().contains("sample.z2_mixture = false"),
            "{err}"
        );
        let phi4 = target("phi4_L8.toml");
        let x: Vec<f64> = (0..phi4.dim()).map(|i| (i as f64 * 0.37).sin()).collect();
        SymmetryGroup::z2(phi4.dim())
            .check_invariant(phi4.as_ref(), &x, phi4.action(&x))
            .unwrap();
    }

    /// Equal weights accept every proposal; a proposal of weight w_c e^-30 after the first is
    /// (almost surely) rejected, and the index keeps pointing at the current state.
    #[test]
    fn metropolis_follows_weight_ratios() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(1);
        let mut chain = ChainState::default();
        let (acc, idx) = metropolis(&[0.5; 4], 10, &mut chain, &mut rng);
        assert_eq!(acc, vec![1.0; 4]);
        assert_eq!(idx, vec![10.0, 11.0, 12.0, 13.0]);
        let (acc, idx) = metropolis(&[-29.5, f64::NAN, 2.0], 14, &mut chain, &mut rng);
        assert_eq!(acc, vec![0.0, 0.0, 1.0]);
        assert_eq!(idx, vec![13.0, 13.0, 16.0]);
        assert_eq!(chain.accepted, 5);
    }
}
