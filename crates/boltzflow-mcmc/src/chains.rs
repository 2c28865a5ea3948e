//! Several independent Markov chains of one sampler on one target, advanced in blocks.
//!
//! Chains run in parallel (rayon); chain `c` draws from stream `stream_offset + c` of the
//! run's seed, so the result is bitwise reproducible whatever the number of threads, and a
//! run restored from a [`ChainState`] checkpoint continues exactly where it stopped.

use std::sync::Arc;

use rayon::prelude::*;

use boltzflow_targets::{Observable, Target, TargetSpec, VectorObservable};

use crate::{ChainRng, McmcConfig, McmcError, Result, Sampler, build_sampler, chain_rng};

/// Per-draw series recorded besides the target's observables.
pub const SAMPLER_SERIES: [&str; 2] = ["acceptance", "action_evals"];

/// One chain: its configuration, generator and sampler.
pub struct Chain {
    /// Current configuration.
    pub x: Vec<f64>,
    /// The chain's own random stream.
    pub rng: ChainRng,
    /// The update.
    pub sampler: Box<dyn Sampler>,
}

/// The resumable state of one chain, serialised for checkpoints.
#[derive(Clone, Debug, PartialEq)]
pub struct ChainState {
    /// Current configuration.
    pub x: Vec<f64>,
    /// Generator state as JSON.
    pub rng: String,
    /// Sampler tuning state as JSON.
    pub sampler: String,
}

/// Draws of every chain for one block, laid out chain-major.
#[derive(Clone, Debug, Default)]
pub struct BlockData {
    /// Draws per chain in this block.
    pub draws: usize,
    /// Configurations `[chain][draw][dim]` (empty when configurations are not stored).
    pub configs: Vec<f64>,
    /// Scalar series `[chain][draw]`, by name.
    pub series: Vec<(String, Vec<f64>)>,
    /// Vector series `[chain][draw][len]`, by name.
    pub vectors: Vec<(String, Vec<f64>)>,
}

/// What one chain produced in a block, before the chains are interleaved.
struct ChainBlock {
    configs: Vec<f64>,
    series: Vec<Vec<f64>>,
    vectors: Vec<Vec<f64>>,
}

/// Independent chains of one sampler on one target.
pub struct Chains {
    target: Arc<dyn Target>,
    chains: Vec<Chain>,
    observables: Vec<Box<dyn Observable>>,
    vectors: Vec<Box<dyn VectorObservable>>,
    steps_per_draw: usize,
    store_configs: bool,
}

impl Chains {
    /// Builds `config.chains` chains from a cold start; chain `c` uses stream
    /// `stream_offset + c` of `config.seed` (the offset separates MPI ranks).
    pub fn new(config: &McmcConfig, spec: &TargetSpec, stream_offset: u64) -> Result<Self> {
        config.validate()?;
        let target: Arc<dyn Target> = Arc::from(spec.build()?);
        let chains = (0..config.chains)
            .map(|c| {
                Ok(Chain {
                    x: target.initial(),
                    rng: chain_rng(config.seed, stream_offset + c as u64),
                    sampler: build_sampler(config, spec)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            observables: target.observables(),
            vectors: target.vector_observables(),
            target,
            chains,
            steps_per_draw: config.steps_per_draw,
            store_configs: config.store_configs,
        })
    }

    /// Starts chain c from `starts[(stream_offset + c) % starts.len()]` (every start has
    /// `dim` values; see [`crate::start::read_coordinates`]); no-op for no starts.
    pub fn start_from(&mut self, starts: &[Vec<f64>], stream_offset: u64) -> Result<()> {
        let dim = self.target.dim();
        if let Some(bad) = starts.iter().find(|s| s.len() != dim) {
            return Err(McmcError::State(format!(
                "a start configuration has {} values, the target needs {dim}",
                bad.len()
            )));
        }
        if starts.is_empty() {
            return Ok(());
        }
        for (c, chain) in self.chains.iter_mut().enumerate() {
            let k = (stream_offset as usize + c) % starts.len();
            chain.x.copy_from_slice(&starts[k]);
        }
        Ok(())
    }

    /// The target.
    pub fn target(&self) -> &Arc<dyn Target> {
        &self.target
    }

    /// Number of chains.
    pub fn len(&self) -> usize {
        self.chains.len()
    }

    /// True when there are no chains.
    pub fn is_empty(&self) -> bool {
        self.chains.is_empty()
    }

    /// Names of the scalar series of a block: the sampler's, then the target's observables.
    pub fn series_names(&self) -> Vec<String> {
        SAMPLER_SERIES
            .iter()
            .map(|s| s.to_string())
            .chain(self.observables.iter().map(|o| o.name().to_string()))
            .collect()
    }

    /// Names and lengths of the vector series of a block.
    pub fn vector_names(&self) -> Vec<(String, usize)> {
        self.vectors
            .iter()
            .map(|v| (v.name().to_string(), v.len()))
            .collect()
    }

    /// `n` updates of every chain with step-size adaptation, nothing recorded.
    pub fn thermalize(&mut self, n: usize) {
        self.chains.par_iter_mut().for_each(|chain| {
            for _ in 0..n {
                let stats = chain.sampler.step(&mut chain.x, &mut chain.rng);
                chain.sampler.adapt(&stats);
            }
        });
    }

    /// `draws` draws of every chain, `steps_per_draw` updates apart, with every observable.
    pub fn run_block(&mut self, draws: usize) -> BlockData {
        let target = &*self.target;
        let observables = &self.observables;
        let vectors = &self.vectors;
        let steps = self.steps_per_draw;
        let store = self.store_configs;
        let dim = target.dim();
        let n_series = SAMPLER_SERIES.len() + observables.len();
        let per_chain: Vec<ChainBlock> = self
            .chains
            .par_iter_mut()
            .map(|chain| {
                let mut out = ChainBlock {
                    configs: Vec::with_capacity(if store { draws * dim } else { 0 }),
                    series: vec![Vec::with_capacity(draws); n_series],
                    vectors: vectors
                        .iter()
                        .map(|v| Vec::with_capacity(draws * v.len()))
                        .collect(),
                };
                let mut canonical = vec![0.0; dim];
                for _ in 0..draws {
                    let (mut acceptance, mut evals) = (0.0, 0.0);
                    for _ in 0..steps {
                        let stats = chain.sampler.step(&mut chain.x, &mut chain.rng);
                        acceptance += stats.acceptance;
                        evals += stats.action_evals;
                    }
                    canonical.copy_from_slice(&chain.x);
                    target.canonicalize(&mut canonical);
                    out.series[0].push(acceptance / steps as f64);
                    out.series[1].push(evals);
                    for (k, o) in observables.iter().enumerate() {
                        out.series[SAMPLER_SERIES.len() + k].push(o.measure(&canonical));
                    }
                    for (k, v) in vectors.iter().enumerate() {
                        let start = out.vectors[k].len();
                        out.vectors[k].resize(start + v.len(), 0.0);
                        v.measure(&canonical, &mut out.vectors[k][start..]);
                    }
                    if store {
                        out.configs.extend_from_slice(&canonical);
                    }
                }
                out
            })
            .collect();
        let names = self.series_names();
        let series = names
            .into_iter()
            .enumerate()
            .map(|(k, name)| {
                (
                    name,
                    per_chain
                        .iter()
                        .flat_map(|c| c.series[k].iter().copied())
                        .collect(),
                )
            })
            .collect();
        let vectors = self
            .vectors
            .iter()
            .enumerate()
            .map(|(k, v)| {
                let values = per_chain
                    .iter()
                    .flat_map(|c| c.vectors[k].iter().copied())
                    .collect();
                (v.name().to_string(), values)
            })
            .collect();
        let configs = per_chain.into_iter().flat_map(|c| c.configs).collect();
        BlockData {
            draws,
            configs,
            series,
            vectors,
        }
    }

    /// The state of every chain, for a checkpoint.
    pub fn states(&self) -> Vec<ChainState> {
        self.chains
            .iter()
            .map(|c| ChainState {
                x: c.x.clone(),
                rng: serde_json::to_string(&c.rng).expect("xoshiro state serialises"),
                sampler: c.sampler.state().to_string(),
            })
            .collect()
    }

    /// Restores every chain from a checkpoint written by [`Chains::states`].
    pub fn restore(&mut self, states: &[ChainState]) -> Result<()> {
        if states.len() != self.chains.len() {
            return Err(McmcError::State(format!(
                "the checkpoint holds {} chains but the config asks for {}",
                states.len(),
                self.chains.len()
            )));
        }
        // Parse and check every state before touching any chain, so a bad checkpoint leaves
        // the chains as they were.
        let dim = self.target.dim();
        let mut parsed = Vec::with_capacity(states.len());
        for state in states {
            if state.x.len() != dim {
                return Err(McmcError::State(format!(
                    "checkpointed configuration has {} values, the target needs {dim}",
                    state.x.len()
                )));
            }
            let rng: ChainRng = serde_json::from_str(&state.rng)
                .map_err(|e| McmcError::State(format!("generator state: {e}")))?;
            let sampler: serde_json::Value = serde_json::from_str(&state.sampler)
                .map_err(|e| McmcError::State(format!("sampler state: {e}")))?;
            parsed.push((rng, sampler));
        }
        for ((chain, state), (rng, sampler)) in self.chains.iter_mut().zip(states).zip(parsed) {
            chain.sampler.set_state(&sampler)?;
            chain.x.copy_from_slice(&state.x);
            chain.rng = rng;
        }
        Ok(())
    }
}
