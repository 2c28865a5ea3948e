//! One ensemble from several: the per-rank files of a distributed run, concatenated along
//! the chain axis in the order given (rank order), as if one process had run every chain.

use std::path::{Path, PathBuf};

use crate::{Block, Checkpoint, EnsembleReader, EnsembleWriter, Layout, Result, StoreError};

/// Writes `out` with the chains of every file of `parts`, in order: part 0's chains first.
///
/// Every part must have the same series, vectors and configuration shape and the same number
/// of committed draws (a finished run; a run stopped part way is resumed first). The result
/// carries part 0's metadata, and as its checkpoint the parts' chain states (for an MCMC
/// ensemble, enough for a single process to continue it with `--resume`). It is written to
/// `<out>.collating` and renamed, so `out` is never a half-written file. `block` draws are
/// copied per commit.
pub fn collate(parts: &[PathBuf], out: &Path, block: usize) -> Result<()> {
    let readers = parts
        .iter()
        .map(|p| EnsembleReader::open(p))
        .collect::<Result<Vec<_>>>()?;
    let first = readers.first().ok_or_else(|| {
        StoreError::InvalidLayout("collating needs at least one ensemble file".into())
    })?;
    let mismatch = |part: &Path, what: String| StoreError::Collate {
        path: part.to_path_buf(),
        what,
    };
    let draws = first.draws();
    let mut vectors = Vec::new();
    for name in first.vector_names() {
        let len = first
            .vector(&name)?
            .first()
            .and_then(|c| c.first())
            .map_or(0, Vec::len);
        vectors.push((name, len));
    }
    for (reader, part) in readers.iter().zip(parts).skip(1) {
        if reader.series_names() != first.series_names()
            || reader.vector_names() != first.vector_names()
            || reader.config_shape() != first.config_shape()
        {
            return Err(mismatch(
                part,
                format!(
                    "its series, vectors or configuration shape differ from those of {}; collate files of one run",
                    parts[0].display()
                ),
            ));
        }
        if reader.draws() != draws {
            return Err(mismatch(
                part,
                format!(
                    "it holds {} draws but {} holds {draws}; resume the run so that every rank finishes",
                    reader.draws(),
                    parts[0].display()
                ),
            ));
        }
    }
    let chains: usize = readers.iter().map(EnsembleReader::chains).sum();
    let layout = Layout {
        chains,
        config_shape: first.config_shape(),
        series: first.series_names(),
        vectors,
        block: block.max(1),
    };
    let mut states = Vec::with_capacity(chains);
    for reader in &readers {
        states.extend(reader.checkpoint()?.chains);
    }
    // Every part is read whole for its series (small); configurations block by block.
    let series: Vec<(String, Vec<Vec<f64>>)> = layout
        .series
        .iter()
        .map(|name| {
            let mut all = Vec::with_capacity(chains);
            for reader in &readers {
                all.extend(reader.series(name)?);
            }
            Ok((name.clone(), all))
        })
        .collect::<Result<_>>()?;
    let vector_data: Vec<(String, Vec<Vec<Vec<f64>>>)> = layout
        .vectors
        .iter()
        .map(|(name, _)| {
            let mut all = Vec::with_capacity(chains);
            for reader in &readers {
                all.extend(reader.vector(name)?);
            }
            Ok((name.clone(), all))
        })
        .collect::<Result<_>>()?;

    let mut staging = out.as_os_str().to_owned();
    staging.push(".collating");
    let staging = PathBuf::from(staging);
    let mut writer = EnsembleWriter::create(&staging, first.meta(), &layout, true)?;
    let mut done = 0;
    // A file with no draws still gets its checkpoint.
    while done < draws || (done == 0 && writer.draws() == 0) {
        let n = layout.block.min(draws - done);
        let range = done..done + n;
        let mut configs = Vec::new();
        if layout.config_shape.is_some() {
            for reader in &readers {
                for chain in 0..reader.chains() {
                    configs.extend(reader.configs(chain, range.clone())?);
                }
            }
        }
        let block = Block {
            draws: n,
            configs,
            series: series
                .iter()
                .map(|(name, chains)| {
                    let flat = chains.iter().flat_map(|c| &c[range.clone()]).copied();
                    (name.clone(), flat.collect())
                })
                .collect(),
            vectors: vector_data
                .iter()
                .map(|(name, chains)| {
                    let flat = chains
                        .iter()
                        .flat_map(|c| &c[range.clone()])
                        .flatten()
                        .copied();
                    (name.clone(), flat.collect())
                })
                .collect(),
        };
        done += n;
        let checkpoint = Checkpoint {
            draws: done as u64,
            chains: states.clone(),
        };
        writer.commit(&block, &checkpoint)?;
        if n == 0 {
            break;
        }
    }
    drop(writer);
    std::fs::rename(&staging, out).map_err(|source| StoreError::Io {
        path: out.to_path_buf(),
        source,
    })
}
