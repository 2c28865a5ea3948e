//! Store: one HDF5 file per run, holding every draw of every chain with its provenance.
//!
//! [`EnsembleWriter`] creates a file, appends blocks of draws to it ([`EnsembleWriter::commit`])
//! and resumes it after a crash ([`EnsembleWriter::resume`]); [`EnsembleReader`] reads it back.
//! Python reads the same file with h5py (`scripts/check_h5py.py` checks one).
//!
//! # Layout (format "boltzflow-ensemble", version 1)
//!
//! See also `docs/hdf5-layout.md`. All numbers are little-endian `f64` unless stated; `chain`
//! is the chain index, `draw` the draw index within a chain. Every draw-indexed dataset is
//! chunked `(1, c, ...)` and resizable (unlimited) along `draw`; its extent may exceed the
//! committed draw count after a crash, and readers must only look at the first `draws`
//! entries (from `/checkpoint/committed`).
//!
//! ```text
//! /meta                    group; attributes (strings are variable-length UTF-8):
//!     format               "boltzflow-ensemble"
//!     format_version       i64, 1
//!     kind                 "mcmc" ("sample", "train" later)
//!     program_version, git_commit, host, date (UTC ISO 8601), command
//!     config               the full resolved run config, TOML text
//!     config_hash          FNV-1a 64 of `config`, 16 lower-case hex digits
//!     lattice              the lattice file, TOML text
//!     conventions          the physics conventions, text
//!     parameters           the target's parameters in every parametrisation, JSON text
//!     seed                 u64
//! /configs                 (chain, draw, ...config_shape), optional
//! /series/<name>           (chain, draw): one scalar per draw (action, acceptance, ...)
//! /vectors/<name>          (chain, draw, len): one vector per draw (two-point function, ...)
//! /checkpoint              group; attribute chains (u64)
//!     committed            u64 [generation, draws]: commits so far, committed draws per chain
//!     slot0, slot1         the two checkpoint buffers; the live one is slot<generation % 2>
//!         stamp            u64 [generation, draws] of the state the slot holds
//!         x                (chain, dim): current configuration of each chain
//!         rng, sampler     u8 (chain, capacity): UTF-8 JSON state of each chain's random
//!                          generator / sampler, zero-padded
//!         rng_len, sampler_len
//!                          u64 (chain,): byte length of each text
//! ```
//!
//! Before the first commit `generation` is 0 and the slots hold no state.
//!
//! # Crash safety
//!
//! A run may be killed (kill -9) at any moment. Files are created under `<path>.partial` and
//! renamed into place once complete, so `path` never names a half-created file. The writer
//! then works in HDF5's SWMR-write mode (see the `swmr` module: plain HDF5 is not
//! crash-consistent inside a flush). Each commit does, in this order:
//!
//! 1. grow every draw-indexed dataset and write the block; write the next checkpoint into the
//!    *idle* slot (`slot<(generation + 1) % 2>`) and stamp it; flush the file;
//! 2. write `/checkpoint/committed = [generation + 1, draws]`; flush the file.
//!
//! `committed` is a compact dataset (stored inside its object header), so step 2 is a single
//! small write that switches the live checkpoint only after everything it points to is on
//! disk: the live checkpoint never counts draws that were not written and always holds one
//! consistent state for every chain. Draws written after the last completed commit are ignored
//! by readers and removed by [`EnsembleWriter::resume`].
//!
//! Files use HDF5's latest format (superblock v3, readable by HDF5 >= 1.10). A killed writer
//! leaves the superblock's "open for writing" flag set; [`EnsembleReader`] opens files in
//! SWMR-read mode, which accepts that, and so must other readers: h5py
//! `h5py.File(path, "r", swmr=True)` (or clear the flag with `h5clear -s path`).

mod collate;
mod error;
mod hyperslab;
mod reader;
mod schema;
mod swmr;
mod writer;

pub use collate::collate;
pub use error::{Result, StoreError};
pub use reader::EnsembleReader;
pub use writer::EnsembleWriter;

/// Value of the `/meta` `format` attribute.
pub const FORMAT: &str = "boltzflow-ensemble";
/// Value of the `/meta` `format_version` attribute that this build writes and reads.
pub const FORMAT_VERSION: i64 = 1;

/// Provenance of a run, written to `/meta`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RunMeta {
    /// What produced the file: "mcmc" (later "sample", "train").
    pub kind: String,
    pub program_version: String,
    pub git_commit: String,
    pub host: String,
    /// Start time, UTC ISO 8601.
    pub date: String,
    /// The command line.
    pub command: String,
    /// The full resolved run config (TOML text); its FNV-1a hash guards `resume`.
    pub config_toml: String,
    /// The lattice file (TOML text).
    pub lattice_toml: String,
    /// The physics conventions (text).
    pub conventions: String,
    /// The target's parameters in every parametrisation it admits (JSON object), e.g.
    /// phi^4 couplings as both (m2, lam) and (kappa, lam_h).
    pub parameters: String,
    pub seed: u64,
}

/// What a run stores: the datasets and their shapes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Layout {
    /// Number of chains (first axis of every dataset).
    pub chains: usize,
    /// Shape of one configuration, or `None` to not store configurations.
    pub config_shape: Option<Vec<usize>>,
    /// Names of the per-draw scalar series (`/series/<name>`).
    pub series: Vec<String>,
    /// Names and lengths of the per-draw vectors (`/vectors/<name>`).
    pub vectors: Vec<(String, usize)>,
    /// Typical number of draws per commit; a hint for chunk sizes.
    pub block: usize,
}

/// A block of draws to append, the same number for every chain.
///
/// # Shapes
///
/// All buffers are flat row-major: `configs` is `[chain][draw][site]` (empty when the layout
/// stores no configurations), each series `[chain][draw]`, each vector `[chain][draw][len]`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Block {
    /// Draws per chain in this block.
    pub draws: usize,
    /// Configurations: `[chain][draw][dim]` flattened (empty if not stored).
    pub configs: Vec<f64>,
    /// Every series of the layout, each `[chain][draw]`.
    pub series: Vec<(String, Vec<f64>)>,
    /// Every vector of the layout, each `[chain][draw][len]`.
    pub vectors: Vec<(String, Vec<f64>)>,
}

/// The state of one chain, enough to continue it exactly.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ChainCheckpoint {
    /// Current configuration (`dim` values, row-major).
    pub x: Vec<f64>,
    /// Random generator state, JSON text.
    pub rng: String,
    /// Sampler state (step size, counters, ...), JSON text.
    pub sampler: String,
}

/// The committed state of a run.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Checkpoint {
    /// Draws per chain committed to the file.
    pub draws: u64,
    /// One entry per chain; empty when nothing has been committed yet (start afresh).
    pub chains: Vec<ChainCheckpoint>,
}

/// FNV-1a 64-bit hash of `text`, as 16 lower-case hex digits.
///
/// h = 0xcbf29ce484222325; for each byte b: h = (h xor b) * 0x100000001b3 (mod 2^64).
pub fn fnv1a_hex(text: &str) -> String {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let hash = text
        .bytes()
        .fold(OFFSET, |h, b| (h ^ u64::from(b)).wrapping_mul(PRIME));
    format!("{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::fnv1a_hex;

    #[test]
    fn fnv1a_matches_reference_vectors() {
        // Published FNV-1a 64 test vectors (Fowler/Noll/Vo reference suite).
        assert_eq!(fnv1a_hex(""), "cbf29ce484222325");
        assert_eq!(fnv1a_hex("a"), "af63dc4c8601ec8c");
        assert_eq!(fnv1a_hex("foobar"), "85944171f73967e8");
    }
}
