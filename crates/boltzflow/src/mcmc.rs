//! `boltzflow mcmc`: Markov chains of a baseline sampler, written block by block to HDF5.
//!
//! The run loop owns stepping, commits and resumption; the HDF5 writer and the progress bar
//! observe it. Each block is appended, then the checkpoint (configurations, generator and
//! sampler states, draw counter) is written, then the file is flushed: a run killed at any
//! moment resumes from its last committed block with the generator state it had, so the
//! resumed chain is bitwise the chain an uninterrupted run would have produced.
//!
//! Under `mpirun -np R` the `mcmc.chains` chains are split over the ranks in contiguous
//! blocks (rank r runs chains `[C r / R, C (r + 1) / R)`, each on its own stream of the seed,
//! exactly as one process would), rank r writes `<out stem>.rank<r>.h5`, and at the end rank
//! 0 collates the rank files into `--out`: the same ensemble a single process writes, chain
//! for chain. A rank killed mid-run leaves every rank file readable; `--resume` with the same
//! number of ranks continues each from its last commit and collates again.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Result, bail};

use boltzflow_dist::Communicator;
use boltzflow_mcmc::{BlockData, ChainState, Chains};
use boltzflow_store::{Block, ChainCheckpoint, Checkpoint, EnsembleReader, EnsembleWriter, Layout};

use crate::config::Loaded;
use crate::output::{self, RunArgs, Shard, lock_output, rank_file, run_meta, same_run};

/// Runs the chains (this rank's share of them) and returns the path of the ensemble file.
pub fn run(args: &RunArgs, comm: &dyn Communicator) -> Result<PathBuf> {
    let loaded = Loaded::read(&args.config, &args.overrides)?;
    let mcmc = loaded.mcmc(&args.config)?.clone();
    let ranks = comm.size();
    if mcmc.chains < ranks {
        bail!(
            "mcmc.chains = {} is fewer than the {ranks} ranks and every rank runs at least one chain; set mcmc.chains >= {ranks} (e.g. --set mcmc.chains={ranks})",
            mcmc.chains
        );
    }
    let share = Shard::of(comm).range(mcmc.chains);
    let mut local = mcmc.clone();
    local.chains = share.len();
    // Everything is validated before any file is touched.
    let mut chains = Chains::new(&local, &loaded.lattice.target, share.start as u64)?;
    let starts = mcmc
        .start
        .iter()
        .map(|p| {
            boltzflow_mcmc::start::read_coordinates(
                &crate::config::resolve(&args.config, p),
                &loaded.lattice.target,
            )
        })
        .collect::<boltzflow_mcmc::Result<Vec<_>>>()?;
    chains.start_from(&starts, share.start as u64)?;
    let collated = args
        .out
        .clone()
        .unwrap_or_else(|| default_out(&args.config));
    let out = rank_file(comm, &collated, args)?;
    let layout = Layout {
        chains: local.chains,
        config_shape: mcmc.store_configs.then(|| chains.target().shape()),
        series: chains.series_names(),
        vectors: chains.vector_names(),
        block: mcmc.block,
    };

    // One writer per file: a second `mcmc` on the same --out (resume or --force) is refused
    // while this one runs. The lock is released when the process ends, however it ends.
    let _lock = lock_output(&out)?;
    let (mut writer, mut done) = if args.resume {
        if !out.exists() {
            bail!(
                "nothing to resume: {} does not exist; run without --resume",
                out.display()
            );
        }
        let (stored, stored_lattice) = stored_config(&out)?;
        if !same_run(&stored, &loaded.toml, "mcmc", "draws")
            || stored_lattice != loaded.lattice.to_toml()
        {
            bail!(
                "{} was written by another config or lattice; rerun without --resume (and another --out) or with the same config and lattice file",
                out.display()
            );
        }
        let (writer, checkpoint) = EnsembleWriter::resume(&out, &stored, &layout)?;
        let done = if checkpoint.chains.is_empty() {
            tracing::info!("no checkpoint yet: thermalising again from the start");
            chains.thermalize(mcmc.thermalization);
            0
        } else {
            let states: Vec<ChainState> = checkpoint
                .chains
                .iter()
                .map(|c| ChainState {
                    x: c.x.clone(),
                    rng: c.rng.clone(),
                    sampler: c.sampler.clone(),
                })
                .collect();
            chains.restore(&states)?;
            checkpoint.draws as usize
        };
        tracing::info!(
            "resuming {} at draw {done} of {}",
            out.display(),
            mcmc.draws
        );
        (writer, done)
    } else {
        if out.exists() && !args.force {
            bail!(
                "{} already exists; pass --resume to continue it, --force to overwrite it, or choose another --out",
                out.display()
            );
        }
        let meta = run_meta("mcmc", &loaded, mcmc.seed);
        let mut writer = EnsembleWriter::create(&out, &meta, &layout, args.force)?;
        let start = Instant::now();
        chains.thermalize(mcmc.thermalization);
        tracing::info!(
            "thermalised {} chains x {} updates in {:.2?}",
            chains.len(),
            mcmc.thermalization,
            start.elapsed()
        );
        writer.commit(
            &to_block(BlockData::default(), &layout),
            &checkpoint(&chains, 0),
        )?;
        (writer, 0)
    };

    let progress = output::progress_bar(mcmc.draws as u64, "draws", args.quiet || !comm.is_root());
    progress.set_position(done as u64);
    let start = Instant::now();
    while done < mcmc.draws {
        let n = mcmc.block.min(mcmc.draws - done);
        let block = chains.run_block(n);
        done += n;
        writer.commit(&to_block(block, &layout), &checkpoint(&chains, done))?;
        progress.set_position(done as u64);
    }
    progress.finish_and_clear();
    tracing::info!(
        "{} chains x {} draws in {:.2?}; wrote {}",
        chains.len(),
        mcmc.draws,
        start.elapsed(),
        writer.path().display()
    );
    drop(writer);
    if ranks > 1 {
        output::collate_ranks(comm, &collated, mcmc.block)?;
    }
    Ok(collated)
}

/// `runs/<config stem>.h5`.
fn default_out(config: &Path) -> PathBuf {
    let stem = config
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or("run".into());
    PathBuf::from("runs").join(format!("{stem}.h5"))
}

/// The config and lattice texts stored in an existing ensemble file.
fn stored_config(path: &Path) -> Result<(String, String)> {
    let reader = EnsembleReader::open(path)?;
    let meta = reader.meta();
    Ok((meta.config_toml.clone(), meta.lattice_toml.clone()))
}

fn checkpoint(chains: &Chains, draws: usize) -> Checkpoint {
    Checkpoint {
        draws: draws as u64,
        chains: chains
            .states()
            .into_iter()
            .map(|s| ChainCheckpoint {
                x: s.x,
                rng: s.rng,
                sampler: s.sampler,
            })
            .collect(),
    }
}

fn to_block(block: BlockData, layout: &Layout) -> Block {
    let mut series = block.series;
    if series.is_empty() {
        series = layout
            .series
            .iter()
            .map(|n| (n.clone(), Vec::new()))
            .collect();
    }
    let mut vectors = block.vectors;
    if vectors.is_empty() {
        vectors = layout
            .vectors
            .iter()
            .map(|(n, _)| (n.clone(), Vec::new()))
            .collect();
    }
    Block {
        draws: block.draws,
        configs: block.configs,
        series,
        vectors,
    }
}
