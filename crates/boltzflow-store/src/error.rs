//! Errors of the ensemble store.

use std::path::PathBuf;

/// Everything that can go wrong while writing or reading an ensemble file.
///
/// Every message is one line that names the file and says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file does not exist.
    #[error("{}: no such file; check the path (or run the sampler first to create it)", path.display())]
    NotFound { path: PathBuf },
    /// The file exists but is not HDF5 at all.
    #[error("{} is not an HDF5 file; pass a boltzflow ensemble (.h5) written by `boltzflow mcmc`", path.display())]
    NotHdf5 { path: PathBuf },
    /// The file is HDF5 but lacks the boltzflow ensemble markers.
    #[error("{} is an HDF5 file but not a boltzflow ensemble ({reason}); pass a file written by boltzflow", path.display())]
    NotEnsemble { path: PathBuf, reason: String },
    /// The file uses a layout version this build cannot read.
    #[error("{} uses boltzflow layout version {found}; this boltzflow reads version {expected} (use a matching boltzflow release)", path.display())]
    FormatVersion {
        path: PathBuf,
        found: i64,
        expected: i64,
    },
    /// `create` found an existing file and was not told to overwrite it.
    #[error("{} already exists; pass --resume to continue it or choose another --out", path.display())]
    Exists { path: PathBuf },
    /// `resume` was given a config whose hash differs from the one in the file.
    #[error("{} was written by another config (hash {found}, this config {expected}); rerun without --resume or with the same config", path.display())]
    ConfigMismatch {
        path: PathBuf,
        found: String,
        expected: String,
    },
    /// `resume` was given a layout (chains, datasets, shapes) that differs from the file's.
    #[error("{}: {what} in the file differs from this run; rerun without --resume or with the same config", path.display())]
    LayoutMismatch { path: PathBuf, what: String },
    /// Per-rank files that cannot be joined into one ensemble.
    #[error("{}: cannot collate: {what}", path.display())]
    Collate { path: PathBuf, what: String },
    /// The layout itself is unusable (bad dataset name, zero chains, ...).
    #[error("invalid ensemble layout: {0}")]
    InvalidLayout(String),
    /// A block or checkpoint handed to `commit` has the wrong size.
    #[error("{}: cannot commit: {what} (the sampler must fill every dataset of the layout)", path.display())]
    BlockShape { path: PathBuf, what: String },
    /// A dataset asked for by name is not in the file.
    #[error("{}: no {kind} named `{name}`; the file has: {available}", path.display())]
    UnknownDataset {
        path: PathBuf,
        kind: &'static str,
        name: String,
        available: String,
    },
    /// A request reaches past the committed draws or chains.
    #[error("{}: {what}", path.display())]
    OutOfRange { path: PathBuf, what: String },
    /// The file is an ensemble but its contents are inconsistent.
    #[error("{} is damaged ({what}); rerun without --resume to start a new file", path.display())]
    Damaged { path: PathBuf, what: String },
    /// A text field cannot be stored as an HDF5 string.
    #[error("{field} contains a NUL byte and cannot be stored as an HDF5 string; remove it")]
    InvalidText { field: String },
    /// An operating-system error on the file itself (rename, metadata).
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The HDF5 library reported an error.
    #[error("{}: HDF5 error while {action}: {message}", path.display())]
    Hdf5 {
        path: PathBuf,
        action: String,
        message: String,
    },
}

/// `Result` with [`StoreError`].
pub type Result<T> = std::result::Result<T, StoreError>;

/// Attaches a file path and an action to an HDF5 error.
pub(crate) trait Hdf5Context<T> {
    fn context(self, path: &std::path::Path, action: &str) -> Result<T>;
}

impl<T> Hdf5Context<T> for hdf5::Result<T> {
    fn context(self, path: &std::path::Path, action: &str) -> Result<T> {
        self.map_err(|err| StoreError::Hdf5 {
            path: path.to_path_buf(),
            action: action.to_string(),
            message: err.to_string().replace('\n', " "),
        })
    }
}
