//! Reading and writing flat buffers into a hyperslab of a dataset.
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

use hdf5::{Dataset, Dataspace, Datatype, H5Type, Hyperslab, Selection, SliceOrIndex};

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

/// The file dataspace of `dataset` with the hyperslab `(chains, draws, .., ..)` selected, and
/// a memory dataspace of the hyperslab's block shape.
///
/// The memory space has the block's shape (not a flat 1-D one) so that HDF5 maps the two
/// selections with its fast same-shape path: with a 1-D memory space it falls back to
/// element-wise span iteration, about 10x slower for large blocks.
fn select(
    dataset: &Dataset,
    chains: SliceOrIndex,
    draws: Range<usize>,
) -> hdf5::Result<(Dataspace, Dataspace)> {
    let space = dataset.space()?;
    let shape = space.shape();
    let mut block = vec![
        if chains.is_index() { 1 } else { shape[0] },
        draws.end.saturating_sub(draws.start),
    ];
    block.extend_from_slice(&shape[2..]);
    let mut slab = vec![chains, SliceOrIndex::from(draws)];
    slab.extend((2..space.ndim()).map(|_| SliceOrIndex::from(..)));
    let file_space = space.select(Selection::Hyperslab(Hyperslab::from(slab)))?;
    Ok((file_space, Dataspace::try_new(block)?))
}

/// Writes `values` (row-major `[chain][draw][...]`) into draws `draws` of every chain.
///
/// `values.len()` must equal the number of selected elements.
pub(crate) fn write_draws<T: H5Type>(
    dataset: &Dataset,
    draws: Range<usize>,
    values: &[T],
) -> hdf5::Result<()> {
    let (file_space, mem_space) = select(dataset, SliceOrIndex::from(..), draws)?;
    transfer_check(file_space.selection_size(), values.len())?;
    if values.is_empty() {
        return Ok(());
    }
    let mem_type = Datatype::from_type::<T>()?;
    // SAFETY: the memory dataspace has exactly `values.len()` elements of type T, the buffer is a
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
pub(crate) fn read_chain<T: H5Type + Default + Clone>(
    dataset: &Dataset,
    chain: usize,
    draws: Range<usize>,
) -> hdf5::Result<Vec<T>> {
    let (file_space, mem_space) = select(dataset, SliceOrIndex::from(chain), draws)?;
    read_selection(dataset, &file_space, &mem_space)
}

/// Reads draws `draws` of every chain as a flat row-major `[chain][draw][...]` buffer.
pub(crate) fn read_draws<T: H5Type + Default + Clone>(
    dataset: &Dataset,
    draws: Range<usize>,
) -> hdf5::Result<Vec<T>> {
    let (file_space, mem_space) = select(dataset, SliceOrIndex::from(..), draws)?;
    read_selection(dataset, &file_space, &mem_space)
}

fn read_selection<T: H5Type + Default + Clone>(
    dataset: &Dataset,
    file_space: &Dataspace,
    mem_space: &Dataspace,
) -> hdf5::Result<Vec<T>> {
    let count = file_space.selection_size();
    let mut values = vec![T::default(); count];
    if count == 0 {
        return Ok(values);
    }
    let mem_type = Datatype::from_type::<T>()?;
    // SAFETY: the memory dataspace has exactly `count` elements of type T and `values` holds
    // `count` Ts; every id is owned by a live hdf5-metno object.
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
