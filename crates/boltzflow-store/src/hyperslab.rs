//! Reading and writing flat `f64` buffers into a hyperslab of a dataset.
//!
//! hdf5-metno's slice API takes `ndarray` views; this crate keeps its buffers as flat
//! row-major `Vec<f64>` and does not depend on `ndarray`. A hyperslab written from or read
//! into a flat buffer of the same element count is exactly what `H5Dwrite`/`H5Dread` do with a
//! 1-D memory dataspace, so the two calls are made directly here (under hdf5-metno's global
//! lock, with dataspaces and datatypes built by hdf5-metno). The symbols come from the
//! libhdf5 that hdf5-metno-sys links.
//!
//! # Shapes
//!
//! A dataset of shape `(chain, draw, d2, d3, ...)`; the hyperslab is every chain, draws
//! `draws.start..draws.end`, and everything along the trailing axes. In row-major order that
//! block is `[chain][draw][d2][d3]...`, the order of [`crate::Block`]'s buffers. For a single
//! chain ([`read_chain`]) the block is `[draw][d2]...`.

use std::ffi::{c_int, c_void};
use std::ops::Range;

use hdf5::{Dataset, Dataspace, Datatype, Hyperslab, Selection, SliceOrIndex};

/// HDF5's `hid_t` (64-bit since HDF5 1.10).
type Hid = i64;
/// HDF5's `H5P_DEFAULT`.
const H5P_DEFAULT: Hid = 0;

unsafe extern "C" {
    fn H5Dwrite(
        dset_id: Hid,
        mem_type_id: Hid,
        mem_space_id: Hid,
        file_space_id: Hid,
        plist_id: Hid,
        buf: *const c_void,
    ) -> c_int;
    fn H5Dread(
        dset_id: Hid,
        mem_type_id: Hid,
        mem_space_id: Hid,
        file_space_id: Hid,
        plist_id: Hid,
        buf: *mut c_void,
    ) -> c_int;
}

/// The file dataspace of `dataset` with the hyperslab `(chains, draws, .., ..)` selected.
fn select(dataset: &Dataset, chains: SliceOrIndex, draws: Range<usize>) -> hdf5::Result<Dataspace> {
    let space = dataset.space()?;
    let mut slab = vec![chains, SliceOrIndex::from(draws)];
    slab.extend((2..space.ndim()).map(|_| SliceOrIndex::from(..)));
    space.select(Selection::Hyperslab(Hyperslab::from(slab)))
}

/// Writes `values` (row-major `[chain][draw][...]`) into draws `draws` of every chain.
///
/// `values.len()` must equal the number of selected elements.
pub(crate) fn write_draws(dataset: &Dataset, draws: Range<usize>, values: &[f64]) -> hdf5::Result<()> {
    let file_space = select(dataset, SliceOrIndex::from(..), draws)?;
    transfer_check(file_space.selection_size(), values.len())?;
    if values.is_empty() {
        return Ok(());
    }
    let mem_space = Dataspace::try_new(vec![values.len()])?;
    let mem_type = Datatype::from_type::<f64>()?;
    // SAFETY: the memory dataspace has exactly `values.len()` f64 elements, the buffer is a
    // live slice of that length, and every id is owned by a live hdf5-metno object.
    let status = hdf5::sync::sync(|| unsafe {
        H5Dwrite(
            dataset.id(),
            mem_type.id(),
            mem_space.id(),
            file_space.id(),
            H5P_DEFAULT,
            values.as_ptr().cast(),
        )
    });
    if status < 0 {
        return Err(hdf5::Error::from("H5Dwrite failed"));
    }
    Ok(())
}

/// Reads draws `draws` of chain `chain` as a flat row-major `[draw][...]` buffer.
pub(crate) fn read_chain(dataset: &Dataset, chain: usize, draws: Range<usize>) -> hdf5::Result<Vec<f64>> {
    let file_space = select(dataset, SliceOrIndex::from(chain), draws)?;
    read_selection(dataset, &file_space)
}

/// Reads draws `draws` of every chain as a flat row-major `[chain][draw][...]` buffer.
pub(crate) fn read_draws(dataset: &Dataset, draws: Range<usize>) -> hdf5::Result<Vec<f64>> {
    let file_space = select(dataset, SliceOrIndex::from(..), draws)?;
    read_selection(dataset, &file_space)
}

fn read_selection(dataset: &Dataset, file_space: &Dataspace) -> hdf5::Result<Vec<f64>> {
    let count = file_space.selection_size();
    let mut values = vec![0.0; count];
    if count == 0 {
        return Ok(values);
    }
    let mem_space = Dataspace::try_new(vec![count])?;
    let mem_type = Datatype::from_type::<f64>()?;
    // SAFETY: the memory dataspace has exactly `count` f64 elements and `values` holds `count`
    // f64s; every id is owned by a live hdf5-metno object.
    let status = hdf5::sync::sync(|| unsafe {
        H5Dread(
            dataset.id(),
            mem_type.id(),
            mem_space.id(),
            file_space.id(),
            H5P_DEFAULT,
            values.as_mut_ptr().cast(),
        )
    });
    if status < 0 {
        return Err(hdf5::Error::from("H5Dread failed"));
    }
    Ok(values)
}

fn transfer_check(selected: usize, given: usize) -> hdf5::Result<()> {
    if selected != given {
        return Err(hdf5::Error::from(format!(
            "buffer has {given} values but the selection has {selected}"
        )));
    }
    Ok(())
}
