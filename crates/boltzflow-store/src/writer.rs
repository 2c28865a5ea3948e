//! Writing an ensemble file: create, commit blocks of draws, resume after a crash.

use std::path::{Path, PathBuf};

use hdf5::{Dataset, Extent, File, Group};

use crate::error::{Hdf5Context, Result, StoreError};
use crate::schema::{self, CHECKPOINT, CONFIGS, META, SERIES, VECTORS};
use crate::{
    Block, Checkpoint, FORMAT, FORMAT_VERSION, Layout, RunMeta, fnv1a_hex, hyperslab, swmr,
};

/// Largest chunk the writer aims for, in bytes (HDF5 advises chunks of at most a few MiB).
const CHUNK_BYTES: usize = 1 << 20;
/// Smallest number of draws per chunk of a scalar series (keeps the chunk index small).
const SERIES_CHUNK_DRAWS: usize = 1024;

/// Appends blocks of draws to an ensemble file; see the crate docs for the layout and the
/// commit protocol.
#[derive(Debug)]
pub struct EnsembleWriter {
    path: PathBuf,
    file: File,
    layout: Layout,
    /// Draws per chain committed so far.
    draws: usize,
    /// Number of commits so far (selects the live checkpoint slot).
    generation: u64,
    configs: Option<Dataset>,
    /// Series datasets in layout order.
    series: Vec<(String, Dataset)>,
    /// Vector datasets in layout order, with their lengths.
    vectors: Vec<(String, usize, Dataset)>,
    checkpoint: Group,
    /// `/checkpoint/committed`: `[generation, draws]`, the switch of the live slot.
    committed: Dataset,
}

impl EnsembleWriter {
    /// Creates a new file (error if it exists and `overwrite` is false: message says to pass
    /// --resume or choose another --out).
    ///
    /// The file is built under `<path>.partial` and renamed to `path` once complete, so `path`
    /// never names a half-created file.
    pub fn create(path: &Path, meta: &RunMeta, layout: &Layout, overwrite: bool) -> Result<Self> {
        check_layout(layout)?;
        if path.exists() && !overwrite {
            return Err(StoreError::Exists {
                path: path.to_path_buf(),
            });
        }
        let mut partial = path.as_os_str().to_owned();
        partial.push(".partial");
        let partial = PathBuf::from(partial);
        let file = swmr::create(&partial).context(path, "creating the file")?;
        write_meta(&file, meta, path)?;
        create_datasets(&file, layout, path)?;
        create_checkpoint(&file, layout, path)?;
        file.flush().context(path, "flushing the new file")?;
        swmr::start_writing(&file).context(path, "starting SWMR writing")?;
        std::fs::rename(&partial, path).map_err(|source| StoreError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::attach(path, file, layout, 0, 0)
    }

    /// Opens an existing run to continue it.
    ///
    /// Checks the file is a boltzflow ensemble of a compatible format_version, that its
    /// config_hash equals the hash of `config_toml`, and that its datasets match `layout`;
    /// truncates every draw-indexed dataset to the checkpointed draw count (draws written
    /// after the last commit are discarded) and returns the checkpoint.
    pub fn resume(path: &Path, config_toml: &str, layout: &Layout) -> Result<(Self, Checkpoint)> {
        check_layout(layout)?;
        crate::reader::check_openable(path)?;
        let file = swmr::reopen_for_writing(path).context(path, "reopening the file to resume")?;
        schema::read_meta(&file, path)?;
        let meta = file.group(META).context(path, "opening /meta")?;
        let found =
            schema::read_text_attr(&meta, "config_hash").context(path, "reading config_hash")?;
        let expected = fnv1a_hex(config_toml);
        if found != expected {
            return Err(StoreError::ConfigMismatch {
                path: path.to_path_buf(),
                found,
                expected,
            });
        }
        let live = schema::read_live(&file, path)?;
        if live.chains != layout.chains {
            return Err(StoreError::LayoutMismatch {
                path: path.to_path_buf(),
                what: format!(
                    "the number of chains ({} vs {})",
                    live.chains, layout.chains
                ),
            });
        }
        let checkpoint = schema::read_checkpoint(&file, path)?;
        let draws = live.draws as usize;
        let writer = Self::attach(path, file, layout, draws, live.generation)?;
        writer.truncate()?;
        swmr::start_writing(&writer.file).context(path, "starting SWMR writing")?;
        Ok((writer, checkpoint))
    }

    /// Appends a block of draws to every dataset, then writes the checkpoint, then flushes the
    /// file (H5Fflush) — in that order, so a kill -9 at any moment leaves a readable file whose
    /// checkpoint never counts draws that were not written.
    ///
    /// `checkpoint.draws` must equal the draws committed so far plus `block.draws`, and
    /// `checkpoint.chains` must hold one state per chain.
    pub fn commit(&mut self, block: &Block, checkpoint: &Checkpoint) -> Result<()> {
        self.check_block(block, checkpoint)?;
        let path = self.path.clone();
        let (old, new) = (self.draws, self.draws + block.draws);

        // 1. the draws, and the next checkpoint into the idle slot; flush.
        if let Some(set) = &self.configs {
            append(set, old..new, &block.configs, &path)?;
        }
        for (name, set) in &self.series {
            let values = &find(&block.series, name).expect("checked").1;
            append(set, old..new, values, &path)?;
        }
        for (name, _, set) in &self.vectors {
            let values = &find(&block.vectors, name).expect("checked").1;
            append(set, old..new, values, &path)?;
        }
        let generation = self.generation + 1;
        self.write_slot(generation, checkpoint)?;
        self.file.flush().context(&path, "flushing the block")?;

        // 2. switch the live checkpoint; flush.
        self.committed
            .write_raw(&[generation, new as u64])
            .context(&path, "publishing the checkpoint")?;
        self.file
            .flush()
            .context(&path, "flushing the checkpoint")?;
        self.draws = new;
        self.generation = generation;
        Ok(())
    }

    /// The file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Draws per chain committed so far.
    pub fn draws(&self) -> usize {
        self.draws
    }

    /// Opens the datasets of a file whose structure matches `layout`.
    fn attach(
        path: &Path,
        file: File,
        layout: &Layout,
        draws: usize,
        generation: u64,
    ) -> Result<Self> {
        let mismatch = |what: String| StoreError::LayoutMismatch {
            path: path.to_path_buf(),
            what,
        };
        let configs = match (&layout.config_shape, file.link_exists(CONFIGS)) {
            (Some(shape), true) => {
                let set = file.dataset(CONFIGS).context(path, "opening /configs")?;
                let file_shape = set.shape();
                if file_shape.len() < 2
                    || file_shape[0] != layout.chains
                    || file_shape[2..] != shape[..]
                {
                    return Err(mismatch(format!(
                        "/configs shape {file_shape:?} (this run: ({}, draw, {shape:?}))",
                        layout.chains
                    )));
                }
                Some(set)
            }
            (None, false) => None,
            (Some(_), false) => {
                return Err(mismatch("whether configs are stored (file: no)".into()));
            }
            (None, true) => return Err(mismatch("whether configs are stored (file: yes)".into())),
        };
        let on_file = schema::named_datasets(&file, SERIES, path)?;
        let mut wanted: Vec<&String> = layout.series.iter().collect();
        wanted.sort();
        let found: Vec<&String> = on_file.iter().map(|(n, _)| n).collect();
        if wanted != found {
            return Err(mismatch(format!("the series ({found:?} vs {wanted:?})")));
        }
        let series = layout
            .series
            .iter()
            .map(|name| {
                let set = on_file
                    .iter()
                    .find(|(n, _)| n == name)
                    .expect("same names")
                    .1
                    .clone();
                (name.clone(), set)
            })
            .collect();
        let on_file = schema::named_datasets(&file, VECTORS, path)?;
        let mut wanted: Vec<(String, usize)> = layout.vectors.clone();
        wanted.sort();
        let found: Vec<(String, usize)> = on_file
            .iter()
            .map(|(n, set)| (n.clone(), set.shape().get(2).copied().unwrap_or(0)))
            .collect();
        if wanted != found {
            return Err(mismatch(format!("the vectors ({found:?} vs {wanted:?})")));
        }
        let vectors = layout
            .vectors
            .iter()
            .map(|(name, len)| {
                let set = on_file
                    .iter()
                    .find(|(n, _)| n == name)
                    .expect("same names")
                    .1
                    .clone();
                (name.clone(), *len, set)
            })
            .collect();
        let checkpoint = file
            .group(CHECKPOINT)
            .context(path, "opening /checkpoint")?;
        let committed = checkpoint
            .dataset("committed")
            .context(path, "opening /checkpoint/committed")?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
            layout: layout.clone(),
            draws,
            generation,
            configs,
            series,
            vectors,
            checkpoint,
            committed,
        })
    }

    /// Every draw-indexed dataset, each with its row length (values per draw).
    fn draw_datasets(&self) -> Vec<&Dataset> {
        self.configs
            .iter()
            .chain(self.series.iter().map(|(_, s)| s))
            .chain(self.vectors.iter().map(|(_, _, s)| s))
            .collect()
    }

    /// Cuts every draw-indexed dataset back to the committed draws and flushes.
    fn truncate(&self) -> Result<()> {
        for set in self.draw_datasets() {
            let mut shape = set.shape();
            if shape[1] != self.draws {
                if shape[1] < self.draws {
                    return Err(StoreError::Damaged {
                        path: self.path.clone(),
                        what: format!(
                            "{} holds {} draws but the checkpoint counts {}",
                            set.name(),
                            shape[1],
                            self.draws
                        ),
                    });
                }
                shape[1] = self.draws;
                set.resize(shape)
                    .context(&self.path, "truncating uncommitted draws")?;
            }
        }
        self.file
            .flush()
            .context(&self.path, "flushing the truncated file")
    }

    /// Writes `checkpoint` into slot `generation % 2` and stamps it `[generation, draws]`.
    fn write_slot(&self, generation: u64, checkpoint: &Checkpoint) -> Result<()> {
        let path = &self.path;
        let slot = self
            .checkpoint
            .group(&schema::slot_name(generation))
            .context(path, "opening a checkpoint slot")?;
        let chains = self.layout.chains;
        let dim = checkpoint.chains[0].x.len();
        let x_set = slot.dataset("x").context(path, "opening checkpoint x")?;
        if x_set.shape() != [chains, dim] {
            x_set
                .resize([chains, dim])
                .context(path, "resizing checkpoint x")?;
        }
        let x: Vec<f64> = checkpoint
            .chains
            .iter()
            .flat_map(|c| c.x.iter().copied())
            .collect();
        hyperslab::write_draws(&x_set, 0..dim, &x).context(path, "writing checkpoint x")?;
        write_texts(
            &slot,
            "rng",
            checkpoint.chains.iter().map(|c| c.rng.as_str()),
            path,
        )?;
        write_texts(
            &slot,
            "sampler",
            checkpoint.chains.iter().map(|c| c.sampler.as_str()),
            path,
        )?;
        slot.dataset("stamp")
            .and_then(|set| set.write_raw(&[generation, checkpoint.draws]))
            .context(path, "stamping the checkpoint slot")
    }

    fn check_block(&self, block: &Block, checkpoint: &Checkpoint) -> Result<()> {
        let bad = |what: String| StoreError::BlockShape {
            path: self.path.clone(),
            what,
        };
        let chains = self.layout.chains;
        let rows = chains * block.draws;
        let dim: usize = self
            .layout
            .config_shape
            .as_ref()
            .map_or(0, |s| s.iter().product());
        if block.configs.len() != rows * dim {
            return Err(bad(format!(
                "configs have {} values, expected {chains} chains x {} draws x {dim}",
                block.configs.len(),
                block.draws
            )));
        }
        check_named(
            &block.series,
            self.series.iter().map(|(n, _)| (n, 1)),
            rows,
            "series",
            &bad,
        )?;
        check_named(
            &block.vectors,
            self.vectors.iter().map(|(n, l, _)| (n, *l)),
            rows,
            "vector",
            &bad,
        )?;
        if checkpoint.draws != (self.draws + block.draws) as u64 {
            return Err(bad(format!(
                "checkpoint counts {} draws, expected {} committed + {} in the block",
                checkpoint.draws, self.draws, block.draws
            )));
        }
        if checkpoint.chains.len() != chains {
            return Err(bad(format!(
                "checkpoint has {} chain states, expected {chains}",
                checkpoint.chains.len()
            )));
        }
        let dim = checkpoint.chains[0].x.len();
        if checkpoint.chains.iter().any(|c| c.x.len() != dim) {
            return Err(bad(
                "checkpoint configurations differ in length between chains".into(),
            ));
        }
        Ok(())
    }
}

/// Checks that `given` holds exactly the `expected` names, each with `rows * len` values.
fn check_named<'a>(
    given: &[(String, Vec<f64>)],
    expected: impl Iterator<Item = (&'a String, usize)>,
    rows: usize,
    kind: &str,
    bad: &dyn Fn(String) -> StoreError,
) -> Result<()> {
    let mut count = 0;
    for (name, len) in expected {
        count += 1;
        let Some((_, values)) = find(given, name) else {
            return Err(bad(format!("{kind} `{name}` is missing from the block")));
        };
        if values.len() != rows * len {
            return Err(bad(format!(
                "{kind} `{name}` has {} values, expected {rows} (chains x draws) x {len}",
                values.len()
            )));
        }
    }
    if given.len() != count {
        let names: Vec<&str> = given.iter().map(|(n, _)| n.as_str()).collect();
        return Err(bad(format!(
            "the block's {kind} {names:?} include names not in the layout (or repeats)"
        )));
    }
    Ok(())
}

fn find<'a>(named: &'a [(String, Vec<f64>)], name: &str) -> Option<&'a (String, Vec<f64>)> {
    named.iter().find(|(n, _)| n == name)
}

/// Grows `set` along draws to `draws.end` and writes `values` into `draws`.
fn append(set: &Dataset, draws: std::ops::Range<usize>, values: &[f64], path: &Path) -> Result<()> {
    let mut shape = set.shape();
    shape[1] = draws.end;
    set.resize(shape).context(path, "growing a dataset")?;
    hyperslab::write_draws(set, draws, values).context(path, &format!("writing {}", set.name()))
}

/// Writes one UTF-8 text per chain as bytes into `<name>` (chain, capacity), growing the
/// capacity when needed, and the byte lengths into `<name>_len` (chain,).
fn write_texts<'a>(
    slot: &Group,
    name: &str,
    texts: impl Iterator<Item = &'a str>,
    path: &Path,
) -> Result<()> {
    let action = format!("writing checkpoint {name}");
    let texts: Vec<&str> = texts.collect();
    let set = slot.dataset(name).context(path, &action)?;
    let mut shape = set.shape();
    let longest = texts.iter().map(|t| t.len()).max().unwrap_or(0);
    if longest > shape[1] {
        shape[1] = longest.next_power_of_two();
        set.resize(shape.clone()).context(path, &action)?;
    }
    let capacity = shape[1];
    let mut bytes = vec![0u8; texts.len() * capacity];
    for (c, text) in texts.iter().enumerate() {
        bytes[c * capacity..c * capacity + text.len()].copy_from_slice(text.as_bytes());
    }
    hyperslab::write_draws(&set, 0..capacity, &bytes).context(path, &action)?;
    let lens: Vec<u64> = texts.iter().map(|t| t.len() as u64).collect();
    slot.dataset(&format!("{name}_len"))
        .and_then(|set| set.write_raw(&lens))
        .context(path, &action)
}

/// Creates `/checkpoint` with `committed = [0, 0]` and two empty slots. Every dataset a commit
/// writes exists from the start (SWMR allows no new objects later).
fn create_checkpoint(file: &File, layout: &Layout, path: &Path) -> Result<()> {
    let action = "creating /checkpoint";
    let chains = layout.chains;
    let checkpoint = file.create_group(CHECKPOINT).context(path, action)?;
    schema::write_u64_attr(&checkpoint, "chains", chains as u64).context(path, action)?;
    create_pair(&checkpoint, "committed", path)?;
    let dim_hint = layout
        .config_shape
        .as_ref()
        .map_or(1024, |s| s.iter().product());
    for generation in 0..2 {
        let slot = checkpoint
            .create_group(&schema::slot_name(generation))
            .context(path, action)?;
        create_pair(&slot, "stamp", path)?;
        slot.new_dataset::<f64>()
            .chunk([1, dim_hint.clamp(1, CHUNK_BYTES / 8)])
            .shape([Extent::fixed(chains), Extent::resizable(0)])
            .create("x")
            .context(path, action)?;
        for name in ["rng", "sampler"] {
            slot.new_dataset::<u8>()
                .chunk([1, 256])
                .shape([Extent::fixed(chains), Extent::resizable(0)])
                .create(name)
                .context(path, action)?;
            slot.new_dataset::<u64>()
                .chunk([chains])
                .shape([chains])
                .create(format!("{name}_len").as_str())
                .context(path, action)?;
        }
    }
    Ok(())
}

/// Creates a compact u64 dataset `[generation, draws] = [0, 0]`: stored inside its object
/// header, so one metadata write updates both numbers together.
fn create_pair(group: &Group, name: &str, path: &Path) -> Result<()> {
    group
        .new_dataset::<u64>()
        .layout(hdf5::dataset::Layout::Compact)
        .shape([2])
        .create(name)
        .and_then(|set| set.write_raw(&[0u64, 0]))
        .context(path, &format!("creating {name}"))
}

fn check_layout(layout: &Layout) -> Result<()> {
    if layout.chains == 0 {
        return Err(StoreError::InvalidLayout(
            "chains must be at least 1".into(),
        ));
    }
    for name in &layout.series {
        schema::check_name("series", name)?;
    }
    for (name, _) in &layout.vectors {
        schema::check_name("vector", name)?;
    }
    let mut names: Vec<&String> = layout
        .series
        .iter()
        .chain(layout.vectors.iter().map(|(n, _)| n))
        .collect();
    names.sort();
    if names.windows(2).any(|w| w[0] == w[1]) {
        return Err(StoreError::InvalidLayout(
            "a series or vector name appears twice".into(),
        ));
    }
    if layout
        .config_shape
        .as_ref()
        .is_some_and(|s| s.is_empty() || s.contains(&0))
    {
        return Err(StoreError::InvalidLayout(
            "config_shape must have at least one axis, all non-zero".into(),
        ));
    }
    Ok(())
}

fn write_meta(file: &File, meta: &RunMeta, path: &Path) -> Result<()> {
    let group = file.create_group(META).context(path, "creating /meta")?;
    let texts = [
        ("format", FORMAT),
        ("kind", meta.kind.as_str()),
        ("program_version", meta.program_version.as_str()),
        ("git_commit", meta.git_commit.as_str()),
        ("host", meta.host.as_str()),
        ("date", meta.date.as_str()),
        ("command", meta.command.as_str()),
        ("config", meta.config_toml.as_str()),
        ("config_hash", &fnv1a_hex(&meta.config_toml)),
        ("lattice", meta.lattice_toml.as_str()),
        ("conventions", meta.conventions.as_str()),
        ("parameters", meta.parameters.as_str()),
    ];
    for (name, text) in texts {
        schema::create_text_attr(&group, name, text)?;
    }
    group
        .new_attr::<i64>()
        .create("format_version")
        .and_then(|a| a.write_scalar(&FORMAT_VERSION))
        .and_then(|_| group.new_attr::<u64>().create("seed"))
        .and_then(|a| a.write_scalar(&meta.seed))
        .context(path, "writing /meta")
}

/// Creates `/configs`, `/series/*` and `/vectors/*` with zero draws.
fn create_datasets(file: &File, layout: &Layout, path: &Path) -> Result<()> {
    let block = layout.block.max(1);
    if let Some(shape) = &layout.config_shape {
        let dim: usize = shape.iter().product();
        create_draw_dataset(
            file,
            CONFIGS,
            layout.chains,
            shape,
            chunk_draws(dim, block, 1),
            path,
        )?;
    }
    let series = file
        .create_group(SERIES)
        .context(path, "creating /series")?;
    for name in &layout.series {
        create_draw_dataset(
            &series,
            name,
            layout.chains,
            &[],
            chunk_draws(1, block, SERIES_CHUNK_DRAWS),
            path,
        )?;
    }
    let vectors = file
        .create_group(VECTORS)
        .context(path, "creating /vectors")?;
    for (name, len) in &layout.vectors {
        create_draw_dataset(
            &vectors,
            name,
            layout.chains,
            &[*len],
            chunk_draws(*len, block, 1),
            path,
        )?;
    }
    Ok(())
}

/// Draws per chunk for rows of `row` values: at least `min_draws` and about one commit block,
/// capped so a chunk stays under [`CHUNK_BYTES`] (but holds at least one draw).
fn chunk_draws(row: usize, block: usize, min_draws: usize) -> usize {
    let cap = (CHUNK_BYTES / (8 * row.max(1))).max(1);
    block.max(min_draws).min(cap)
}

/// Creates a `(chains, 0, ...row_shape)` f64 dataset, unlimited along draws, chunked as
/// `(1, chunk, ...row_shape)`.
fn create_draw_dataset(
    parent: &Group,
    name: &str,
    chains: usize,
    row_shape: &[usize],
    chunk: usize,
    path: &Path,
) -> Result<()> {
    let mut extents = vec![Extent::fixed(chains), Extent::resizable(0)];
    extents.extend(row_shape.iter().map(|&n| Extent::fixed(n)));
    let mut chunk_shape = vec![1, chunk];
    chunk_shape.extend_from_slice(row_shape);
    parent
        .new_dataset::<f64>()
        .chunk(chunk_shape)
        .shape(extents)
        .create(name)
        .context(path, &format!("creating dataset `{name}`"))?;
    Ok(())
}
