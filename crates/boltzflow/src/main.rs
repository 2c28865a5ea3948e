//! The `boltzflow` command line: sample Boltzmann distributions with flows and MCMC,
//! analyse ensembles with honest errors, and print exact reference values.

mod analyze;
mod compare;
mod config;
mod engine;
mod mcmc;
mod output;
mod provenance;
mod sample;
mod symmetry;
mod train;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Result, anyhow};
use clap::{Parser, Subcommand};

use boltzflow_dist::{Communicator, World};

use boltzflow_targets::LatticeFile;

use crate::output::RunArgs;

#[derive(Parser)]
#[command(
    name = "boltzflow",
    version,
    about = "Boltzmann generators and MCMC baselines for lattice field theories and molecular systems"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log level (error, warn, info, debug, trace); RUST_LOG overrides it.
    #[arg(long, global = true, default_value = "info")]
    log: String,
}

#[derive(Subcommand)]
enum Command {
    /// Run Markov chains of an MCMC baseline ([mcmc]) and write an HDF5 ensemble.
    Mcmc(RunArgs),
    /// Train a coupling flow by reverse KL, forward KL or a mix ([flow], [train]); writes
    /// DIR/model.json and DIR/train.h5.
    Train(RunArgs),
    /// Draw samples from a trained flow ([sample]) with importance weights and an independence
    /// Metropolis-Hastings chain; writes an HDF5 ensemble.
    Sample {
        #[command(flatten)]
        run: RunArgs,
        /// The model file written by `boltzflow train` (DIR/model.json).
        #[arg(long)]
        model: PathBuf,
    },
    /// Train a flow, sample it, run MCMC baselines ([compare]) and write DIR/report.md with
    /// tables, costs per independent sample and SVG plots.
    Compare(compare::CompareArgs),
    /// Analyse an ensemble file: means, errors, tau_int, R-hat, deviation from exact values.
    Analyze {
        /// HDF5 file written by boltzflow; several files of one run (e.g. the per-rank files
        /// of an MPI run) are analysed together, their chains joined in the order given.
        #[arg(required = true, num_args = 1..)]
        files: Vec<PathBuf>,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print every exact value the target of a lattice file (or run config) admits.
    Exact {
        /// Lattice file, or a run config naming one.
        lattice: PathBuf,
        /// Print one JSON object {"name": value}.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cli.log));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let world = match World::init() {
        Ok(world) => world,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let comm = world.comm();
    match run(cli.command, comm) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if comm.size() > 1 => {
            // The other ranks may be waiting in a collective: end the whole job.
            eprintln!(
                "error: rank {} of {}: {}",
                comm.rank(),
                comm.size(),
                one_line(&e)
            );
            comm.abort(2)
        }
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::from(2)
        }
    }
}

/// Refuses to run a single-process command as one of several MPI ranks.
fn single_process(comm: &dyn Communicator, command: &str) -> Result<()> {
    if comm.size() > 1 {
        anyhow::bail!(
            "`boltzflow {command}` runs on one process, not under mpirun with {} ranks; run it directly (mpirun is for train, sample and mcmc)",
            comm.size()
        );
    }
    Ok(())
}

/// The error chain on one line, outermost context first.
fn one_line(e: &anyhow::Error) -> String {
    e.chain()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(": ")
        .replace('\n', " ")
}

fn run(command: Command, comm: &dyn Communicator) -> Result<()> {
    match command {
        Command::Mcmc(args) => {
            let path = mcmc::run(&args, comm)?;
            if !args.quiet && comm.is_root() {
                summarise(&path);
            }
            Ok(())
        }
        Command::Train(args) => {
            let dir = train::run(&args, comm)?;
            if !args.quiet && comm.is_root() {
                summarise(&dir.join("train.h5"));
            }
            Ok(())
        }
        Command::Sample { run, model } => {
            let quiet = run.quiet;
            let path = sample::run(&sample::SampleArgs { run, model }, comm)?;
            if !quiet && comm.is_root() {
                summarise(&path);
            }
            Ok(())
        }
        Command::Compare(args) => {
            single_process(comm, "compare")?;
            let report = compare::run(&args)?;
            println!("report: {}", report.display());
            Ok(())
        }
        Command::Analyze { files, json } => {
            single_process(comm, "analyze")?;
            let report = analyze::analyze_files(&files)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                analyze::print_table(&report);
            }
            Ok(())
        }
        Command::Exact { lattice, json } => {
            single_process(comm, "exact")?;
            let values = exact_values(&lattice)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&values)?);
            } else if values.is_empty() {
                println!(
                    "{}: no exact values are known for this target",
                    lattice.display()
                );
            } else {
                for (name, value) in &values {
                    println!("{name:<12} {value:.12e}");
                }
            }
            Ok(())
        }
    }
}

/// Prints the analysis table of a file just written; a failed analysis is reported, not fatal.
fn summarise(path: &Path) {
    match analyze::analyze(path) {
        Ok(report) => analyze::print_table(&report),
        Err(e) => tracing::warn!("analysis of {}: {}", path.display(), one_line(&e)),
    }
}

/// Exact values of the target in a lattice file, or in the lattice a run config names.
fn exact_values(path: &Path) -> Result<BTreeMap<String, f64>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow!("cannot read {}: {e}", path.display()))?;
    let table: toml::Table = toml::from_str(&text).map_err(|e| {
        anyhow!(
            "{}: {}",
            path.display(),
            boltzflow_targets::spec::one_line(&e.to_string())
        )
    })?;
    let lattice = match table.get("lattice").and_then(|v| v.as_str()) {
        Some(relative) if !table.contains_key("theory") => {
            LatticeFile::read(&config::resolve(path, Path::new(relative)))?
        }
        _ => LatticeFile::read(path)?,
    };
    Ok(lattice.target.build()?.exact())
}
