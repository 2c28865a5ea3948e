//! The on-disk schema: group and attribute names, typed attribute access, and reading the
//! metadata and the live checkpoint. Shared by the writer and the reader.

use std::path::Path;
use std::str::FromStr;

use hdf5::types::VarLenUnicode;
use hdf5::{Dataset, File, Group, Location};

use crate::error::{Hdf5Context, Result, StoreError};
use crate::{ChainCheckpoint, Checkpoint, FORMAT, FORMAT_VERSION, RunMeta, hyperslab};

pub(crate) const META: &str = "meta";
pub(crate) const CONFIGS: &str = "configs";
pub(crate) const SERIES: &str = "series";
pub(crate) const VECTORS: &str = "vectors";
pub(crate) const CHECKPOINT: &str = "checkpoint";

/// Name of checkpoint slot `generation % 2`.
pub(crate) fn slot_name(generation: u64) -> String {
    format!("slot{}", generation % 2)
}

/// Converts text to an HDF5 variable-length UTF-8 string; `field` names it in the error.
pub(crate) fn to_h5_text(field: &str, text: &str) -> Result<VarLenUnicode> {
    VarLenUnicode::from_str(text).map_err(|_| StoreError::InvalidText {
        field: field.to_string(),
    })
}

/// Creates the string attribute `name` on `location`.
pub(crate) fn create_text_attr(location: &Location, name: &str, text: &str) -> Result<()> {
    let value = to_h5_text(name, text)?;
    let path = Path::new(&location.filename()).to_path_buf();
    location
        .new_attr::<VarLenUnicode>()
        .create(name)
        .and_then(|attr| attr.write_scalar(&value))
        .context(&path, &format!("writing attribute `{name}`"))
}

/// Reads the string attribute `name` of `location`.
pub(crate) fn read_text_attr(location: &Location, name: &str) -> hdf5::Result<String> {
    Ok(location
        .attr(name)?
        .read_scalar::<VarLenUnicode>()?
        .as_str()
        .to_string())
}

/// Writes the u64 attribute `name` on `location`, creating it if needed.
pub(crate) fn write_u64_attr(location: &Location, name: &str, value: u64) -> hdf5::Result<()> {
    match location.attr(name) {
        Ok(attr) => attr.write_scalar(&value),
        Err(_) => location
            .new_attr::<u64>()
            .create(name)?
            .write_scalar(&value),
    }
}

/// Reads the u64 attribute `name` of `location`.
pub(crate) fn read_u64_attr(location: &Location, name: &str) -> hdf5::Result<u64> {
    location.attr(name)?.read_scalar::<u64>()
}

/// Checks that a dataset name is a plain HDF5 link name.
pub(crate) fn check_name(kind: &str, name: &str) -> Result<()> {
    if name.is_empty() || name.contains('/') || name == "." || name.contains('\0') {
        return Err(StoreError::InvalidLayout(format!(
            "{kind} name `{name}` must be non-empty and contain no '/' or NUL"
        )));
    }
    Ok(())
}

/// Checks the format markers of `/meta` and returns the run metadata.
pub(crate) fn read_meta(file: &File, path: &Path) -> Result<RunMeta> {
    let not_ensemble = |reason: &str| StoreError::NotEnsemble {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    let meta = file
        .group(META)
        .map_err(|_| not_ensemble("no /meta group"))?;
    let format = read_text_attr(&meta, "format").map_err(|_| not_ensemble("no /meta format"))?;
    if format != FORMAT {
        return Err(not_ensemble(&format!("/meta format is `{format}`")));
    }
    let version = meta
        .attr("format_version")
        .and_then(|a| a.read_scalar::<i64>())
        .map_err(|_| not_ensemble("no /meta format_version"))?;
    if version != FORMAT_VERSION {
        return Err(StoreError::FormatVersion {
            path: path.to_path_buf(),
            found: version,
            expected: FORMAT_VERSION,
        });
    }
    let text = |name: &str| {
        read_text_attr(&meta, name).map_err(|_| StoreError::Damaged {
            path: path.to_path_buf(),
            what: format!("/meta attribute `{name}` is missing"),
        })
    };
    Ok(RunMeta {
        kind: text("kind")?,
        program_version: text("program_version")?,
        git_commit: text("git_commit")?,
        host: text("host")?,
        date: text("date")?,
        command: text("command")?,
        config_toml: text("config")?,
        lattice_toml: text("lattice")?,
        conventions: text("conventions")?,
        parameters: text("parameters")?,
        seed: read_u64_attr(&meta, "seed").map_err(|_| StoreError::Damaged {
            path: path.to_path_buf(),
            what: "/meta attribute `seed` is missing".to_string(),
        })?,
    })
}

/// The live checkpoint as found in the file.
pub(crate) struct LiveCheckpoint {
    pub(crate) generation: u64,
    pub(crate) chains: usize,
    pub(crate) draws: u64,
}

/// Reads the `[generation, draws]` pair of a `committed` or `stamp` dataset.
fn read_pair(group: &Group, name: &str, path: &Path) -> Result<[u64; 2]> {
    let values = group
        .dataset(name)
        .and_then(|d| d.read_raw::<u64>())
        .map_err(|_| StoreError::Damaged {
            path: path.to_path_buf(),
            what: format!("{}/{name} is missing or unreadable", group.name()),
        })?;
    <[u64; 2]>::try_from(values.as_slice()).map_err(|_| StoreError::Damaged {
        path: path.to_path_buf(),
        what: format!("{}/{name} does not hold [generation, draws]", group.name()),
    })
}

/// Reads `/checkpoint/committed` and checks the live slot's stamp against it.
pub(crate) fn read_live(file: &File, path: &Path) -> Result<LiveCheckpoint> {
    let damaged = |what: String| StoreError::Damaged {
        path: path.to_path_buf(),
        what,
    };
    let group = file
        .group(CHECKPOINT)
        .map_err(|_| damaged("no /checkpoint group".into()))?;
    let chains = read_u64_attr(&group, "chains")
        .map_err(|_| damaged("/checkpoint has no `chains` attribute".into()))?
        as usize;
    let [generation, draws] = read_pair(&group, "committed", path)?;
    let slot = live_slot(&group, generation, path)?;
    let stamp = read_pair(&slot, "stamp", path)?;
    if stamp != [generation, draws] {
        return Err(damaged(format!(
            "live checkpoint slot is stamped {stamp:?}, /checkpoint/committed is {:?}",
            [generation, draws]
        )));
    }
    Ok(LiveCheckpoint {
        generation,
        chains,
        draws,
    })
}

/// The live checkpoint slot group.
pub(crate) fn live_slot(checkpoint: &Group, generation: u64, path: &Path) -> Result<Group> {
    let name = slot_name(generation);
    checkpoint.group(&name).map_err(|_| StoreError::Damaged {
        path: path.to_path_buf(),
        what: format!("no /checkpoint/{name} group"),
    })
}

/// Reads the state of every chain from the live slot (none before the first commit).
pub(crate) fn read_checkpoint(file: &File, path: &Path) -> Result<Checkpoint> {
    let live = read_live(file, path)?;
    if live.generation == 0 {
        return Ok(Checkpoint {
            draws: live.draws,
            chains: Vec::new(),
        });
    }
    let group = file
        .group(CHECKPOINT)
        .context(path, "opening /checkpoint")?;
    let slot = live_slot(&group, live.generation, path)?;
    let x_set = slot.dataset("x").context(path, "opening checkpoint x")?;
    let &[rows, dim] = x_set.shape().as_slice() else {
        return Err(StoreError::Damaged {
            path: path.to_path_buf(),
            what: "checkpoint x is not (chain, dim)".into(),
        });
    };
    if rows != live.chains as usize {
        return Err(StoreError::Damaged {
            path: path.to_path_buf(),
            what: format!(
                "checkpoint x has {rows} chains, /checkpoint says {}",
                live.chains
            ),
        });
    }
    let x: Vec<f64> =
        hyperslab::read_draws(&x_set, 0..dim).context(path, "reading checkpoint x")?;
    let rng = read_texts(&slot, "rng", live.chains, path)?;
    let sampler = read_texts(&slot, "sampler", live.chains, path)?;
    let chains = (0..live.chains)
        .map(|c| ChainCheckpoint {
            x: x[c * dim..(c + 1) * dim].to_vec(),
            rng: rng[c].clone(),
            sampler: sampler[c].clone(),
        })
        .collect();
    Ok(Checkpoint {
        draws: live.draws,
        chains,
    })
}

/// Reads the per-chain UTF-8 texts stored as bytes `<name>` (chain, capacity) with lengths
/// `<name>_len` (chain,).
fn read_texts(slot: &Group, name: &str, chains: usize, path: &Path) -> Result<Vec<String>> {
    let action = format!("reading checkpoint {name}");
    let lens = slot
        .dataset(&format!("{name}_len"))
        .and_then(|d| d.read_raw::<u64>())
        .context(path, &action)?;
    let set = slot.dataset(name).context(path, &action)?;
    let capacity = set.shape().get(1).copied().unwrap_or(0);
    let bytes: Vec<u8> = hyperslab::read_draws(&set, 0..capacity).context(path, &action)?;
    if lens.len() != chains || lens.iter().any(|&n| n as usize > capacity) {
        return Err(StoreError::Damaged {
            path: path.to_path_buf(),
            what: format!("checkpoint {name} lengths do not fit its {chains} x {capacity} bytes"),
        });
    }
    (0..chains)
        .map(|c| {
            let text = &bytes[c * capacity..c * capacity + lens[c] as usize];
            String::from_utf8(text.to_vec()).map_err(|_| StoreError::Damaged {
                path: path.to_path_buf(),
                what: format!("checkpoint {name} of chain {c} is not UTF-8"),
            })
        })
        .collect()
}

/// Opens the draw-indexed datasets of a group (`/series` or `/vectors`), sorted by name.
pub(crate) fn named_datasets(
    file: &File,
    group: &str,
    path: &Path,
) -> Result<Vec<(String, Dataset)>> {
    if !file.link_exists(group) {
        return Ok(Vec::new());
    }
    let group = file
        .group(group)
        .context(path, &format!("opening /{group}"))?;
    let mut names = group.member_names().context(path, "listing datasets")?;
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let set = group
                .dataset(&name)
                .context(path, &format!("opening dataset `{name}`"))?;
            Ok((name, set))
        })
        .collect()
}
