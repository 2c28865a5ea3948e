//! Reading an ensemble file: metadata, committed series, vectors, configurations, checkpoint.

use std::io::Read;
use std::ops::Range;
use std::path::{Path, PathBuf};

use hdf5::{Dataset, File, MinorErrorCode};

use crate::error::{Hdf5Context, Result, StoreError};
use crate::schema::{self, CONFIGS, SERIES, VECTORS};
use crate::{Checkpoint, RunMeta, hyperslab, swmr};

/// The 8-byte HDF5 format signature.
const HDF5_SIGNATURE: [u8; 8] = [0x89, b'H', b'D', b'F', b'\r', b'\n', 0x1a, b'\n'];

/// Read access to an ensemble file; only committed draws (those the checkpoint counts) are
/// ever returned.
#[derive(Debug)]
pub struct EnsembleReader {
    path: PathBuf,
    file: File,
    meta: RunMeta,
    chains: usize,
    draws: usize,
    configs: Option<Dataset>,
    series: Vec<(String, Dataset)>,
    vectors: Vec<(String, Dataset)>,
}

impl EnsembleReader {
    /// Opens a file for reading.
    ///
    /// Fails with a one-line error for a missing file, a file that is not HDF5, an HDF5 file
    /// that is not a boltzflow ensemble, and another format version.
    pub fn open(path: &Path) -> Result<Self> {
        check_openable(path)?;
        let file = swmr::open_for_reading(path).map_err(|err| open_error(path, err))?;
        let meta = schema::read_meta(&file, path)?;
        let live = schema::read_live(&file, path)?;
        let draws = live.draws as usize;
        let configs = if file.link_exists(CONFIGS) {
            Some(file.dataset(CONFIGS).context(path, "opening /configs")?)
        } else {
            None
        };
        let series = schema::named_datasets(&file, SERIES, path)?;
        let vectors = schema::named_datasets(&file, VECTORS, path)?;
        let mut sets: Vec<(&Dataset, Option<usize>)> = configs.iter().map(|s| (s, None)).collect();
        sets.extend(series.iter().map(|(_, s)| (s, Some(2))));
        sets.extend(vectors.iter().map(|(_, s)| (s, Some(3))));
        for (set, ndim) in sets {
            let shape = set.shape();
            if shape.len() < 2
                || ndim.is_some_and(|n| n != shape.len())
                || shape[0] != live.chains
                || shape[1] < draws
            {
                return Err(StoreError::Damaged {
                    path: path.to_path_buf(),
                    what: format!(
                        "{} has shape {shape:?} but the checkpoint counts {} chains x {draws} draws",
                        set.name(),
                        live.chains
                    ),
                });
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            file,
            meta,
            chains: live.chains,
            draws,
            configs,
            series,
            vectors,
        })
    }

    /// The run's provenance (`/meta`).
    pub fn meta(&self) -> &RunMeta {
        &self.meta
    }

    /// Number of chains.
    pub fn chains(&self) -> usize {
        self.chains
    }

    /// Committed draws per chain (from the checkpoint).
    pub fn draws(&self) -> usize {
        self.draws
    }

    /// Names of the scalar series, sorted.
    pub fn series_names(&self) -> Vec<String> {
        self.series.iter().map(|(n, _)| n.clone()).collect()
    }

    /// The committed draws of series `name`, as `[chain][draw]`.
    pub fn series(&self, name: &str) -> Result<Vec<Vec<f64>>> {
        let set = self.named(&self.series, "series", name)?;
        let flat = hyperslab::read_draws(set, 0..self.draws)
            .context(&self.path, &format!("reading series `{name}`"))?;
        Ok((0..self.chains)
            .map(|c| flat[c * self.draws..(c + 1) * self.draws].to_vec())
            .collect())
    }

    /// Names of the vector observables, sorted.
    pub fn vector_names(&self) -> Vec<String> {
        self.vectors.iter().map(|(n, _)| n.clone()).collect()
    }

    /// The committed draws of vector `name`, as `[chain][draw][len]`.
    pub fn vector(&self, name: &str) -> Result<Vec<Vec<Vec<f64>>>> {
        let set = self.named(&self.vectors, "vector", name)?;
        let len = set.shape()[2];
        let flat = hyperslab::read_draws(set, 0..self.draws)
            .context(&self.path, &format!("reading vector `{name}`"))?;
        let per_chain = self.draws * len;
        Ok((0..self.chains)
            .map(|c| {
                let chain = &flat[c * per_chain..(c + 1) * per_chain];
                (0..self.draws)
                    .map(|d| chain[d * len..(d + 1) * len].to_vec())
                    .collect()
            })
            .collect())
    }

    /// Configurations of chain `chain`, draws `draws`, as a flat row-major `[draw][site]`
    /// buffer of `draws.len() * prod(config_shape)` values.
    pub fn configs(&self, chain: usize, draws: Range<usize>) -> Result<Vec<f64>> {
        let Some(set) = &self.configs else {
            return Err(StoreError::UnknownDataset {
                path: self.path.clone(),
                kind: "dataset",
                name: "configs".into(),
                available: "no configurations (the run did not store them)".into(),
            });
        };
        if chain >= self.chains || draws.start > draws.end || draws.end > self.draws {
            return Err(StoreError::OutOfRange {
                path: self.path.clone(),
                what: format!(
                    "configs of chain {chain}, draws {draws:?} requested; the file has {} chains and {} committed draws",
                    self.chains, self.draws
                ),
            });
        }
        hyperslab::read_chain(set, chain, draws).context(&self.path, "reading /configs")
    }

    /// Shape of one configuration, or `None` when the run did not store configurations.
    pub fn config_shape(&self) -> Option<Vec<usize>> {
        self.configs.as_ref().map(|set| set.shape()[2..].to_vec())
    }

    /// The live checkpoint: committed draws and the state of every chain.
    pub fn checkpoint(&self) -> Result<Checkpoint> {
        schema::read_checkpoint(&self.file, &self.path)
    }

    fn named<'a>(
        &self,
        sets: &'a [(String, Dataset)],
        kind: &'static str,
        name: &str,
    ) -> Result<&'a Dataset> {
        sets.iter()
            .find(|(n, _)| n == name)
            .map(|(_, s)| s)
            .ok_or_else(|| StoreError::UnknownDataset {
                path: self.path.clone(),
                kind,
                name: name.to_string(),
                available: sets
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }
}

/// Fails early, with a clear error, for a missing file or one without the HDF5 signature.
///
/// HDF5 looks for its signature at byte 0, 512, 1024, 2048, ... (after an optional user block).
pub(crate) fn check_openable(path: &Path) -> Result<()> {
    let io = |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    };
    if !path.exists() {
        return Err(StoreError::NotFound {
            path: path.to_path_buf(),
        });
    }
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut head = Vec::new();
    file.by_ref()
        .take(1 << 16)
        .read_to_end(&mut head)
        .map_err(io)?;
    let has_signature = std::iter::once(0)
        .chain((9..16).map(|k| 1usize << k))
        .any(|offset| head.get(offset..offset + 8) == Some(&HDF5_SIGNATURE[..]));
    if !has_signature {
        return Err(StoreError::NotHdf5 {
            path: path.to_path_buf(),
        });
    }
    Ok(())
}

/// Maps an HDF5 error from opening `path` to a [`StoreError`].
pub(crate) fn open_error(path: &Path, err: hdf5::Error) -> StoreError {
    if err.contains_minor(MinorErrorCode::NotHdf5) {
        return StoreError::NotHdf5 {
            path: path.to_path_buf(),
        };
    }
    StoreError::Hdf5 {
        path: path.to_path_buf(),
        action: "opening the file (is another process writing it?)".into(),
        message: err.to_string().replace('\n', " "),
    }
}
