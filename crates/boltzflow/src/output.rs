//! What every command does with its output: one writer per file, provenance, and the run's
//! identity for `--resume`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};

use boltzflow_dist::Communicator;
use boltzflow_store::RunMeta;
use boltzflow_targets::{CONVENTIONS, TargetSpec};

use crate::config::Loaded;

/// The options every run command shares (`mcmc`, `train`, `sample`).
#[derive(Clone, Debug, clap::Args)]
pub struct RunArgs {
    /// Run config (TOML): a lattice file and the sections the command needs.
    pub config: PathBuf,
    /// Override a config key by its dotted path: --set mcmc.draws=1000 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Output path (default: runs/<config name>.h5, or the directory runs/<config name>/ for
    /// `train`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue the run in --out from its last checkpoint (only its length may grow).
    #[arg(long)]
    pub resume: bool,
    /// Overwrite an existing output.
    #[arg(long, conflicts_with = "resume")]
    pub force: bool,
    /// No progress bar and no summary table.
    #[arg(long)]
    pub quiet: bool,
}
use crate::provenance;

/// This rank's share of work split evenly over the ranks of a run.
#[derive(Clone, Copy, Debug)]
pub struct Shard {
    /// This rank.
    pub rank: usize,
    /// Number of ranks.
    pub ranks: usize,
}

impl Shard {
    /// The share of this process in `comm`.
    pub fn of(comm: &dyn boltzflow_dist::Communicator) -> Self {
        Self {
            rank: comm.rank(),
            ranks: comm.size(),
        }
    }

    /// Items `[n r / R, n (r + 1) / R)` of `0..n`: contiguous, in rank order, sizes differing
    /// by at most one.
    pub fn range(self, n: usize) -> std::ops::Range<usize> {
        n * self.rank / self.ranks..n * (self.rank + 1) / self.ranks
    }
}

/// `<stem>.rank<r>.<ext>` beside `out`: the file rank `r` of a distributed run writes.
pub fn rank_path(out: &Path, rank: usize) -> PathBuf {
    let stem = out
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "run".into());
    let ext = out
        .extension()
        .map(|e| e.to_string_lossy().into_owned())
        .unwrap_or_else(|| "h5".into());
    out.with_file_name(format!("{stem}.rank{rank}.{ext}"))
}

/// The file this process writes for the output `collated`: `collated` itself on one process,
/// its [`rank_path`] on several, where `collated` is the file rank 0 collates at the end and
/// must not exist unless the run resumes or overwrites it.
pub fn rank_file(comm: &dyn Communicator, collated: &Path, args: &RunArgs) -> Result<PathBuf> {
    if comm.size() == 1 {
        return Ok(collated.to_path_buf());
    }
    if collated.exists() && !args.resume && !args.force {
        bail!(
            "{} already exists; pass --resume to continue it, --force to overwrite it, or choose another --out",
            collated.display()
        );
    }
    Ok(rank_path(collated, comm.rank()))
}

/// The target's parameters as JSON, with phi^4 couplings in both parametrisations.
pub fn parameters(spec: &TargetSpec) -> String {
    let mut value = serde_json::to_value(spec).unwrap_or_default();
    if let (TargetSpec::Phi4(phi4), Some(map)) = (spec, value.as_object_mut()) {
        let (m2, lam) = phi4.couplings();
        map.insert("m2".into(), m2.into());
        map.insert("lam".into(), lam.into());
        if let Some((kappa, lam_h)) = phi4.hopping() {
            map.insert("kappa".into(), kappa.into());
            map.insert("lam_h".into(), lam_h.into());
        }
    }
    value.to_string()
}

/// Provenance of a new output file of `kind`.
pub fn run_meta(kind: &str, loaded: &Loaded, seed: u64) -> RunMeta {
    RunMeta {
        kind: kind.into(),
        program_version: provenance::VERSION.into(),
        git_commit: provenance::GIT_COMMIT.into(),
        host: provenance::host(),
        date: provenance::utc_now(),
        command: provenance::command_line(),
        config_toml: loaded.toml.clone(),
        lattice_toml: loaded.lattice.to_toml(),
        conventions: CONVENTIONS.into(),
        parameters: parameters(&loaded.lattice.target),
        seed,
    }
}

/// True when two resolved configs describe the same run up to the key `section.key` (the
/// length of the run, which a resumed run may raise).
pub fn same_run(stored: &str, requested: &str, section: &str, key: &str) -> bool {
    let strip = |text: &str| -> Option<toml::Table> {
        let mut t: toml::Table = toml::from_str(text).ok()?;
        if let Some(m) = t.get_mut(section).and_then(|m| m.as_table_mut()) {
            m.remove(key);
        }
        Some(t)
    };
    matches!((strip(stored), strip(requested)), (Some(a), Some(b)) if a == b)
}

/// An exclusive lock on `<out>.lock`, removed when dropped (a killed process leaves the file
/// unlocked, and the next run takes it again).
pub struct OutputLock {
    path: PathBuf,
    _file: std::fs::File,
}

impl Drop for OutputLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Takes the writer's lock on `<out>.lock` (creating the output's directory).
pub fn lock_output(out: &Path) -> Result<OutputLock> {
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create output directory {}", dir.display()))?;
    }
    let mut name = out.as_os_str().to_owned();
    name.push(".lock");
    let path = PathBuf::from(name);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot create lock file {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(OutputLock { path, _file: file }),
        Err(std::fs::TryLockError::WouldBlock) => bail!(
            "{} is being written by another boltzflow process; wait for it to finish or choose another --out",
            out.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("cannot lock {}", path.display()))
        }
    }
}

/// A progress bar over `total` `unit`s on stderr (hidden with `quiet` or without a terminal).
pub fn progress_bar(total: u64, unit: &str, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    let template =
        format!("{{spinner}} {unit} {{pos}}/{{len}} [{{bar:30}}] {{per_sec}} eta {{eta}} {{msg}}");
    bar.set_style(
        ProgressStyle::with_template(&template)
            .map(|s| s.progress_chars("=> "))
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

/// After every rank has finished its file, rank 0 joins them into `collated` (chain order =
/// rank order); every rank returns once the collated file is complete.
pub fn collate_ranks(comm: &dyn Communicator, collated: &Path, block: usize) -> Result<()> {
    comm.barrier();
    let result = if comm.is_root() {
        let parts: Vec<PathBuf> = (0..comm.size()).map(|r| rank_path(collated, r)).collect();
        let clock = std::time::Instant::now();
        let result = boltzflow_store::collate(&parts, collated, block);
        if result.is_ok() {
            tracing::info!(
                "collated {} rank files into {} in {:.2?}",
                parts.len(),
                collated.display(),
                clock.elapsed()
            );
        }
        result
    } else {
        Ok(())
    };
    comm.barrier();
    Ok(result?)
}
