//! Opening files in HDF5's single-writer/multiple-reader (SWMR) mode, and reopening a file
//! whose writer was killed.
//!
//! Why SWMR: without it, `H5Fflush` writes dirty metadata in no particular order and the
//! superblock (with the end-of-allocation address, EOA) last, so a writer killed inside a
//! flush can leave B-tree nodes that point at unwritten nodes or past the stored EOA; after
//! such a kill, resuming failed with "addr overflow ... eoa" and committed draws became
//! unreadable (reproduced by `tests/crash.rs` within ~120 kills). In SWMR-write mode HDF5
//! orders metadata writes by flush dependencies (children before parents, data before
//! index), so the file on disk is at every moment one that a SWMR reader can read, which is
//! exactly what a killed writer leaves behind.
//!
//! The price: SWMR needs the latest file format (superblock v3; readable by HDF5 >= 1.10), no
//! objects or attributes may be created or changed after `H5Fstart_swmr_write` (so everything
//! a commit touches is a dataset created up front), and a killed writer leaves the
//! superblock's "open for writing" flag set. Readers therefore open with `H5F_ACC_SWMR_READ`
//! (h5py: `h5py.File(path, "r", swmr=True)`), and [`reopen_for_writing`] clears the flag and
//! moves the EOA to the end of the file, as the `h5clear -s -i 0` tool would.

use std::ffi::{CString, c_char, c_int, c_uint, c_void};
use std::path::Path;

use hdf5::file::FileAccess;
use hdf5::{File, OpenMode};

type Hid = i64;
/// `H5F_ACC_RDWR`.
const H5F_ACC_RDWR: c_uint = 0x0001;

unsafe extern "C" {
    fn H5Pset(plist_id: Hid, name: *const c_char, value: *const c_void) -> c_int;
    fn H5Fopen(filename: *const c_char, flags: c_uint, access_plist: Hid) -> Hid;
    fn H5Fincrement_filesize(file_id: Hid, increment: u64) -> c_int;
}

/// File access with the latest format bounds (needed by SWMR).
fn latest_format() -> hdf5::Result<FileAccess> {
    FileAccess::build().libver_latest().finish()
}

/// Creates (truncating) a file in the latest format; call [`start_writing`] once every object
/// exists.
pub(crate) fn create(path: &Path) -> hdf5::Result<File> {
    File::with_options()
        .with_fapl(|fapl| fapl.libver_latest())
        .create(path)
}

/// Switches an open writable file to SWMR-write mode.
pub(crate) fn start_writing(file: &File) -> hdf5::Result<()> {
    file.start_swmr()
}

/// Opens a file for reading: SWMR-read first (works while a writer is running and after one
/// was killed), a plain read-only open otherwise (files that are not SWMR-capable).
pub(crate) fn open_for_reading(path: &Path) -> hdf5::Result<File> {
    File::with_options()
        .with_fapl(|fapl| fapl.libver_latest())
        .open_as(path, OpenMode::ReadSWMR)
        .or_else(|_| File::open(path))
}

/// Opens a file for writing even if its last writer was killed: clears the superblock's
/// "open for writing" flags and sets the EOA to at least the end of the file.
pub(crate) fn reopen_for_writing(path: &Path) -> hdf5::Result<File> {
    let fapl = latest_format()?;
    // Library-registered file-access properties that h5clear sets (HDF5 >= 1.10.2).
    for property in ["clear_status_flags", "skip_eof_check"] {
        let name = CString::new(property).expect("no NUL");
        let enable: u8 = 1; // hbool_t
        // SAFETY: `fapl` is a live file-access list; the property is a registered hbool_t.
        let status = hdf5::sync::sync(|| unsafe {
            H5Pset(fapl.id(), name.as_ptr(), (&raw const enable).cast())
        });
        if status < 0 {
            return Err(hdf5::Error::from(format!(
                "this HDF5 library lacks the `{property}` file-access property (needs >= 1.10.2)"
            )));
        }
    }
    let name = path
        .to_str()
        .and_then(|p| CString::new(p).ok())
        .ok_or_else(|| hdf5::Error::from("the path is not valid UTF-8 without NUL"))?;
    // A reader (`analyze`, h5py) holds HDF5's shared file lock while it opens the file, which
    // makes an exclusive open fail for that moment: retry for about two seconds before giving
    // up (a process that really writes the file holds the lock far longer).
    let mut id = -1;
    for attempt in 0..40 {
        if attempt > 0 {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        // SAFETY: valid NUL-terminated name and live property list; the returned id is owned
        // by the `File` built from it.
        id = hdf5::sync::sync(|| unsafe { H5Fopen(name.as_ptr(), H5F_ACC_RDWR, fapl.id()) });
        if id >= 0 {
            break;
        }
    }
    if id < 0 {
        return Err(hdf5::Error::from(
            "H5Fopen failed (is another process writing the file, or is it not writable?)",
        ));
    }
    // SAFETY: `id` is a new file id from H5Fopen with reference count 1.
    let file = unsafe { hdf5::from_id::<File>(id) }?;
    // SAFETY: `file` is a live file id.
    let status = hdf5::sync::sync(|| unsafe { H5Fincrement_filesize(file.id(), 0) });
    if status < 0 {
        return Err(hdf5::Error::from("H5Fincrement_filesize failed"));
    }
    Ok(file)
}
