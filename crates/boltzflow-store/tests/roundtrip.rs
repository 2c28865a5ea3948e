//! Round trips, resume, and the error paths of the ensemble store.

mod common;

use boltzflow_store::{EnsembleReader, EnsembleWriter, StoreError, fnv1a_hex};
use common::{CONFIG, block, checkpoint, layout, meta, verify};

#[test]
fn every_dataset_and_metadata_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run.h5");
    let layout = layout(4);
    let mut writer = EnsembleWriter::create(&path, &meta(), &layout, false).unwrap();
    assert_eq!(writer.path(), path);
    let mut start = 0;
    for draws in [4, 7, 1, 0, 3] {
        let (b, cp) = block(&layout, start, draws);
        writer.commit(&b, &cp).unwrap();
        start += draws;
    }
    drop(writer);
    assert_eq!(verify(&path, &layout), 15);

    let reader = EnsembleReader::open(&path).unwrap();
    assert_eq!(reader.meta(), &meta());
    assert_eq!(reader.config_shape(), Some(vec![4, 3]));
    assert_eq!(reader.series_names(), vec!["acceptance", "action"]);
    assert_eq!(reader.vector_names(), vec!["two_point"]);
    assert_eq!(reader.configs(2, 5..9).unwrap().len(), 4 * 12);
    assert!(matches!(
        reader.configs(3, 0..1),
        Err(StoreError::OutOfRange { .. })
    ));
    assert!(matches!(
        reader.configs(0, 0..16),
        Err(StoreError::OutOfRange { .. })
    ));
    assert!(matches!(
        reader.series("energy"),
        Err(StoreError::UnknownDataset { .. })
    ));

    let file = hdf5::File::open(&path).unwrap();
    let meta_group = file.group("meta").unwrap();
    let hash = meta_group
        .attr("config_hash")
        .unwrap()
        .read_scalar::<hdf5::types::VarLenUnicode>()
        .unwrap();
    assert_eq!(hash.as_str(), fnv1a_hex(CONFIG));
    assert_eq!(
        file.dataset("configs").unwrap().chunk(),
        Some(vec![1, 4, 4, 3])
    );
}

#[test]
fn layout_without_configs_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run.h5");
    let mut layout = layout(2);
    layout.config_shape = None;
    layout.vectors.clear();
    let mut writer = EnsembleWriter::create(&path, &meta(), &layout, false).unwrap();
    let reader_empty = EnsembleReader::open(&path).unwrap();
    assert_eq!(reader_empty.draws(), 0);
    assert_eq!(
        reader_empty.series("action").unwrap(),
        vec![Vec::<f64>::new(); 3]
    );
    assert!(reader_empty.checkpoint().unwrap().chains.is_empty());
    let (b, cp) = block(&layout, 0, 5);
    writer.commit(&b, &cp).unwrap();
    assert_eq!(verify(&path, &layout), 5);
    let reader = EnsembleReader::open(&path).unwrap();
    assert_eq!(reader.config_shape(), None);
    assert!(matches!(
        reader.configs(0, 0..1),
        Err(StoreError::UnknownDataset { .. })
    ));
}

#[test]
fn resume_truncates_uncommitted_draws_and_continues() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run.h5");
    let layout = layout(3);
    let mut writer = EnsembleWriter::create(&path, &meta(), &layout, false).unwrap();
    let (b, cp) = block(&layout, 0, 6);
    writer.commit(&b, &cp).unwrap();
    drop(writer);

    // Simulate a crash after step 1 of a commit: every dataset grew by 4 draws of garbage.
    {
        let file = hdf5::File::open_rw(&path).unwrap();
        for name in [
            "configs",
            "series/action",
            "series/acceptance",
            "vectors/two_point",
        ] {
            let set = file.dataset(name).unwrap();
            let mut shape = set.shape();
            shape[1] += 4;
            set.resize(shape).unwrap();
        }
    }
    assert_eq!(
        EnsembleReader::open(&path).unwrap().draws(),
        6,
        "reader ignores uncommitted draws"
    );
    let (mut writer, saved) = EnsembleWriter::resume(&path, CONFIG, &layout).unwrap();
    assert_eq!(saved, checkpoint(&layout, 6));
    assert_eq!(writer.draws(), 6);
    let file = hdf5::File::open(&path).unwrap();
    assert_eq!(
        file.dataset("configs").unwrap().shape(),
        vec![3, 6, 4, 3],
        "truncated"
    );
    assert_eq!(file.dataset("series/action").unwrap().shape(), vec![3, 6]);
    drop(file);
    let (b, cp) = block(&layout, 6, 5);
    writer.commit(&b, &cp).unwrap();
    drop(writer);
    assert_eq!(verify(&path, &layout), 11);
}

#[test]
fn resume_with_another_config_or_layout_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run.h5");
    let layout = layout(3);
    let writer = EnsembleWriter::create(&path, &meta(), &layout, false).unwrap();
    drop(writer);
    let err = EnsembleWriter::resume(&path, "[mcmc]\nchains = 4\n", &layout).unwrap_err();
    assert!(matches!(err, StoreError::ConfigMismatch { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("rerun without --resume or with the same config")
    );

    let mut other = layout.clone();
    other.series.push("magnetisation".into());
    let err = EnsembleWriter::resume(&path, CONFIG, &other).unwrap_err();
    assert!(matches!(err, StoreError::LayoutMismatch { .. }), "{err}");
    let mut other = layout.clone();
    other.config_shape = Some(vec![3, 4]);
    let err = EnsembleWriter::resume(&path, CONFIG, &other).unwrap_err();
    assert!(matches!(err, StoreError::LayoutMismatch { .. }), "{err}");
}

#[test]
fn create_refuses_an_existing_file_unless_overwriting() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run.h5");
    let layout = layout(3);
    drop(EnsembleWriter::create(&path, &meta(), &layout, false).unwrap());
    let err = EnsembleWriter::create(&path, &meta(), &layout, false).unwrap_err();
    assert!(matches!(err, StoreError::Exists { .. }));
    assert!(err.to_string().contains("pass --resume"), "{err}");
    let mut writer = EnsembleWriter::create(&path, &meta(), &layout, true).unwrap();
    let (b, cp) = block(&layout, 0, 2);
    writer.commit(&b, &cp).unwrap();
    assert_eq!(verify(&path, &layout), 2);
    assert!(!dir.path().join("run.h5.partial").exists());
}

#[test]
fn malformed_blocks_are_rejected_without_writing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run.h5");
    let layout = layout(3);
    let mut writer = EnsembleWriter::create(&path, &meta(), &layout, false).unwrap();
    let (good, cp) = block(&layout, 0, 2);

    let mut b = good.clone();
    b.configs.pop();
    assert!(matches!(
        writer.commit(&b, &cp),
        Err(StoreError::BlockShape { .. })
    ));
    let mut b = good.clone();
    b.series.pop();
    assert!(matches!(
        writer.commit(&b, &cp),
        Err(StoreError::BlockShape { .. })
    ));
    let mut b = good.clone();
    b.series.push(("extra".into(), vec![0.0; 6]));
    assert!(matches!(
        writer.commit(&b, &cp),
        Err(StoreError::BlockShape { .. })
    ));
    let mut b = good.clone();
    b.vectors[0].1.push(1.0);
    assert!(matches!(
        writer.commit(&b, &cp),
        Err(StoreError::BlockShape { .. })
    ));
    let wrong_draws = checkpoint(&layout, 3);
    assert!(matches!(
        writer.commit(&good, &wrong_draws),
        Err(StoreError::BlockShape { .. })
    ));
    let mut short = cp.clone();
    short.chains.pop();
    assert!(matches!(
        writer.commit(&good, &short),
        Err(StoreError::BlockShape { .. })
    ));

    writer.commit(&good, &cp).unwrap();
    assert_eq!(verify(&path, &layout), 2);
}

#[test]
fn open_reports_missing_non_hdf5_foreign_and_future_files() {
    let dir = tempfile::tempdir().unwrap();

    let missing = dir.path().join("missing.h5");
    let err = EnsembleReader::open(&missing).unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err}");

    let text = dir.path().join("notes.h5");
    std::fs::write(&text, "this is a text file\n").unwrap();
    let err = EnsembleReader::open(&text).unwrap_err();
    assert!(matches!(err, StoreError::NotHdf5 { .. }), "{err}");
    assert!(err.to_string().contains("is not an HDF5 file"), "{err}");
    assert!(matches!(
        EnsembleWriter::resume(&text, CONFIG, &layout(1)),
        Err(StoreError::NotHdf5 { .. })
    ));

    let foreign = dir.path().join("foreign.h5");
    hdf5::File::create(&foreign)
        .unwrap()
        .create_group("data")
        .unwrap();
    let err = EnsembleReader::open(&foreign).unwrap_err();
    assert!(matches!(err, StoreError::NotEnsemble { .. }), "{err}");

    let future = dir.path().join("future.h5");
    drop(EnsembleWriter::create(&future, &meta(), &layout(1), false).unwrap());
    hdf5::File::open_rw(&future)
        .unwrap()
        .group("meta")
        .unwrap()
        .attr("format_version")
        .unwrap()
        .write_scalar(&2i64)
        .unwrap();
    let err = EnsembleReader::open(&future).unwrap_err();
    assert!(
        matches!(err, StoreError::FormatVersion { found: 2, .. }),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("layout version 2; this boltzflow reads version 1"),
        "{err}"
    );
    assert!(matches!(
        EnsembleWriter::resume(&future, CONFIG, &layout(1)),
        Err(StoreError::FormatVersion { .. })
    ));
}
