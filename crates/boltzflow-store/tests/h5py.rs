//! h5py interoperability: `scripts/check_h5py.py` must accept a file written here.
//!
//! Kept in its own test binary: the child python process inherits the open file descriptors of
//! the test process, and with them HDF5's file locks on files other tests have open.

mod common;

use boltzflow_store::EnsembleWriter;
use common::{block, layout, meta};

#[test]
fn h5py_reads_the_file() {
    let python_ok = std::process::Command::new("python3")
        .args(["-c", "import h5py"])
        .status()
        .is_ok_and(|s| s.success());
    if !python_ok {
        eprintln!(
            "note: python3 with h5py not available; skipping the h5py check (scripts/setup installs it)"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run.h5");
    let layout = layout(3);
    let mut writer = EnsembleWriter::create(&path, &meta(), &layout, false).unwrap();
    let (b, cp) = block(&layout, 0, 4);
    writer.commit(&b, &cp).unwrap();
    drop(writer);
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/check_h5py.py");
    let out = std::process::Command::new("python3")
        .arg(&script)
        .arg(&path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "check_h5py failed: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("chains=3 draws=4"), "{stdout}");

    // The script must also fail on a broken file: a text file.
    let text = dir.path().join("notes.h5");
    std::fs::write(&text, "not hdf5").unwrap();
    let out = std::process::Command::new("python3")
        .arg(&script)
        .arg(&text)
        .output()
        .unwrap();
    assert!(!out.status.success());
}
