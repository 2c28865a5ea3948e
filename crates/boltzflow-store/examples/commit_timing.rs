//! Times `EnsembleWriter::commit` for 4 chains of 64x64 configurations, 100 draws per block.
//! Run: `cargo run --release -p boltzflow-store --example commit_timing [blocks]`.
//! Prints the mean and slowest commit, the bandwidth, and the file growth per empty commit
//! (the overhead of the checkpoint alone).

use std::time::Instant;

use boltzflow_store::{Block, ChainCheckpoint, Checkpoint, EnsembleWriter, Layout, RunMeta};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let blocks: usize = std::env::args().nth(1).map_or(Ok(30), |a| a.parse())?;
    let (chains, draws, side) = (4, 100, 64);
    let dim = side * side;
    let layout = Layout {
        chains,
        config_shape: Some(vec![side, side]),
        series: vec!["action".into(), "acceptance".into(), "magnetisation".into()],
        vectors: vec![("two_point".into(), side)],
        block: draws,
    };
    let meta = RunMeta {
        kind: "mcmc".into(),
        config_toml: "timing = true\n".into(),
        ..RunMeta::default()
    };
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("timing.h5");
    let mut writer = EnsembleWriter::create(&path, &meta, &layout, false)?;
    let checkpoint = |n: usize| Checkpoint {
        draws: n as u64,
        chains: (0..chains)
            .map(|c| ChainCheckpoint {
                x: vec![c as f64; dim],
                rng: format!("{{\"s\":[{n},1,2,3]}}"),
                sampler: format!("{{\"step_size\":0.1,\"accepted\":{n}}}"),
            })
            .collect(),
    };
    let mut times = Vec::new();
    for b in 0..blocks {
        let block = Block {
            draws,
            configs: (0..chains * draws * dim)
                .map(|i| (i + b) as f64 * 1e-3)
                .collect(),
            series: layout
                .series
                .iter()
                .map(|n| (n.clone(), vec![b as f64; chains * draws]))
                .collect(),
            vectors: vec![("two_point".into(), vec![0.5; chains * draws * side])],
        };
        let start = Instant::now();
        writer.commit(&block, &checkpoint((b + 1) * draws))?;
        times.push(start.elapsed().as_secs_f64());
    }
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    let slowest = times.iter().copied().fold(0.0, f64::max);
    let bytes = (chains * draws * (dim + 3 + side) * 8) as f64;
    println!(
        "commit of {draws} draws x {chains} chains of {side}x{side}: mean {:.2} ms, slowest {:.2} ms, {:.2} GB/s",
        mean * 1e3,
        slowest * 1e3,
        bytes / mean / 1e9
    );

    let empty = Block {
        draws: 0,
        configs: Vec::new(),
        series: layout
            .series
            .iter()
            .map(|n| (n.clone(), Vec::new()))
            .collect(),
        vectors: vec![("two_point".into(), Vec::new())],
    };
    let before = std::fs::metadata(&path)?.len();
    let empties = 1000;
    let start = Instant::now();
    for _ in 0..empties {
        writer.commit(&empty, &checkpoint(blocks * draws))?;
    }
    let per_commit = start.elapsed().as_secs_f64() / empties as f64;
    let growth = (std::fs::metadata(&path)?.len() - before) as f64 / empties as f64;
    println!(
        "empty commit (checkpoint only): {:.3} ms, file growth {growth:.0} bytes per commit",
        per_commit * 1e3
    );
    Ok(())
}
