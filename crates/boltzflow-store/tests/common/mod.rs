//! Shared fixtures: a small layout and deterministic draws whose every value encodes its
//! position, so a read-back can be checked exactly.
#![allow(dead_code)]

use boltzflow_store::{Block, ChainCheckpoint, Checkpoint, Layout, RunMeta};

pub const CONFIG: &str = "[mcmc]\nsampler = \"hmc\"\nchains = 3\n";

pub fn meta() -> RunMeta {
    RunMeta {
        kind: "mcmc".into(),
        program_version: "0.1.0".into(),
        git_commit: "0123abc".into(),
        host: "testhost".into(),
        date: "2025-01-02T03:04:05Z".into(),
        command: "boltzflow mcmc --out run.h5".into(),
        config_toml: CONFIG.into(),
        lattice_toml: "[phi4]\nL = [4, 3]\nm2 = -4.0\nlam = 8.0\n".into(),
        conventions: "S = sum_x [...] (ünïcode ok)".into(),
        parameters: "{\"m2\": -4.0}".into(),
        seed: u64::MAX - 7,
    }
}

pub fn layout(block: usize) -> Layout {
    Layout {
        chains: 3,
        config_shape: Some(vec![4, 3]),
        series: vec!["action".into(), "acceptance".into()],
        vectors: vec![("two_point".into(), 5)],
        block,
    }
}

/// The value stored at (`tag`, chain, draw, component): unique and exactly representable.
pub fn value(tag: u32, chain: usize, draw: usize, k: usize) -> f64 {
    f64::from(tag) * 1e9 + chain as f64 * 1e7 + draw as f64 + k as f64 * 1e-4
}

/// Draws `start..start + draws` of every chain of `layout`, with the matching checkpoint.
pub fn block(layout: &Layout, start: usize, draws: usize) -> (Block, Checkpoint) {
    let dim: usize = layout
        .config_shape
        .as_ref()
        .map_or(0, |s| s.iter().product());
    let rows = |tag: u32, len: usize| -> Vec<f64> {
        let mut out = Vec::with_capacity(layout.chains * draws * len);
        for c in 0..layout.chains {
            for d in start..start + draws {
                out.extend((0..len).map(|k| value(tag, c, d, k)));
            }
        }
        out
    };
    let block = Block {
        draws,
        configs: rows(1, dim),
        series: layout
            .series
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), rows(10 + i as u32, 1)))
            .collect(),
        vectors: layout
            .vectors
            .iter()
            .enumerate()
            .map(|(i, (n, len))| (n.clone(), rows(20 + i as u32, *len)))
            .collect(),
    };
    (block, checkpoint(layout, start + draws))
}

/// The checkpoint after `draws` draws: x = last configuration, JSON texts naming the draw.
pub fn checkpoint(layout: &Layout, draws: usize) -> Checkpoint {
    let dim: usize = layout
        .config_shape
        .as_ref()
        .map_or(2, |s| s.iter().product());
    Checkpoint {
        draws: draws as u64,
        chains: (0..layout.chains)
            .map(|c| ChainCheckpoint {
                x: (0..dim)
                    .map(|k| value(1, c, draws.saturating_sub(1), k))
                    .collect(),
                rng: format!("{{\"chain\":{c},\"draws\":{draws}}}"),
                sampler: format!("{{\"step\":0.1,\"draws\":{draws}}}"),
            })
            .collect(),
    }
}

/// Checks every committed draw of the file at `path` against [`value`]; returns the draws.
pub fn verify(path: &std::path::Path, layout: &Layout) -> usize {
    let reader = boltzflow_store::EnsembleReader::open(path).expect("file opens");
    let draws = reader.draws();
    assert_eq!(reader.chains(), layout.chains);
    let dim: usize = layout
        .config_shape
        .as_ref()
        .map_or(0, |s| s.iter().product());
    for (i, name) in layout.series.iter().enumerate() {
        let series = reader.series(name).unwrap();
        assert_eq!(series.len(), layout.chains);
        for (c, chain) in series.iter().enumerate() {
            assert_eq!(chain.len(), draws);
            for (d, &v) in chain.iter().enumerate() {
                assert_eq!(
                    v,
                    value(10 + i as u32, c, d, 0),
                    "series {name} chain {c} draw {d}"
                );
            }
        }
    }
    for (i, (name, len)) in layout.vectors.iter().enumerate() {
        let vector = reader.vector(name).unwrap();
        for (c, chain) in vector.iter().enumerate() {
            assert_eq!(chain.len(), draws);
            for (d, row) in chain.iter().enumerate() {
                assert_eq!(row.len(), *len);
                for (k, &v) in row.iter().enumerate() {
                    assert_eq!(v, value(20 + i as u32, c, d, k), "vector {name}");
                }
            }
        }
    }
    if layout.config_shape.is_some() {
        for c in 0..layout.chains {
            let configs = reader.configs(c, 0..draws).unwrap();
            assert_eq!(configs.len(), draws * dim);
            for d in 0..draws {
                for k in 0..dim {
                    assert_eq!(
                        configs[d * dim + k],
                        value(1, c, d, k),
                        "config chain {c} draw {d}"
                    );
                }
            }
        }
    }
    let saved = reader.checkpoint().unwrap();
    assert_eq!(saved.draws as usize, draws);
    if draws > 0 {
        assert_eq!(
            saved,
            checkpoint(layout, draws),
            "checkpoint is consistent with its draws"
        );
    }
    draws
}
