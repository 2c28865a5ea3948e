//! Local Metropolis: checkerboard site updates (phi^4), link updates (U(1)),
//! single-particle moves (molecules).
//!
//! Every proposal is a symmetric uniform shift x' = x + step_size * u, u ~ U(-1, 1) per
//! coordinate, accepted with probability min(1, exp(-dS)), tested as `dS <= 0 || v < exp(-dS)`.
//!
//! * phi^4 ([`Phi4Metropolis`]): the local action of site x is the target's
//!   [`Phi4::local_action`] s_x(phi) = -2 phi n_x + (2d + m2) phi^2 + lam phi^4 with n_x the sum
//!   of the 2d neighbours, so dS = s_x(phi') - s_x(phi). On a bipartite lattice (all extents
//!   even) the sweep updates the even sites, then the odd ones ([`Checkerboard`]); sites of one
//!   colour are independent, so each colour is cut into fixed blocks updated in parallel, block
//!   b drawing from its own generator seeded by one `u64` of the chain generator. The result is
//!   bitwise the same for any number of threads.
//! * U(1) ([`U1Metropolis`]): the local action of a link is the target's [`U1::local_action`]
//!   S_link(theta) = -beta Re[exp(i theta) K], with K the staple sum of its two plaquettes
//!   ([`U1::staple`]).
//! * molecules and any other target ([`ParticleMetropolis`]): configurations of shape
//!   `[n, dim]` move one particle (all `dim` coordinates) at a time, with the full action
//!   difference; shape `[n]` (e.g. the 2D double well, `[2]`) moves the whole point.

use std::sync::Arc;

use rand::{Rng, RngExt};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use boltzflow_targets::Target;
use boltzflow_targets::phi4::Phi4;
use boltzflow_targets::u1::U1;

use crate::{ChainRng, McmcError, Result, Sampler, StepStats};

/// `[mcmc.metropolis]`: proposal width and hits per degree of freedom.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MetropolisConfig {
    /// Proposal half-width: x' = x + step_size * uniform(-1, 1) (default 0.5).
    pub step_size: f64,
    /// Metropolis hits per site (link, particle) per sweep (default 1).
    pub hits: usize,
}

impl Default for MetropolisConfig {
    fn default() -> Self {
        Self {
            step_size: 0.5,
            hits: 1,
        }
    }
}

impl MetropolisConfig {
    /// Checks `step_size > 0` (finite) and `hits >= 1`.
    pub fn validate(&self) -> Result<()> {
        if !(self.step_size > 0.0 && self.step_size.is_finite()) {
            return Err(McmcError::InvalidParameter {
                name: "metropolis.step_size",
                value: self.step_size.to_string(),
                fix: "the proposal half-width must be a positive finite number, e.g. 0.5",
            });
        }
        if self.hits == 0 {
            return Err(McmcError::InvalidParameter {
                name: "metropolis.hits",
                value: "0".into(),
                fix: "use at least 1 hit per site",
            });
        }
        Ok(())
    }
}

/// A small, fast generator for one block of a parallel sweep (wyrand, 64-bit state).
///
/// Seeded from one `u64` of the chain generator per block and sweep, so blocks never share
/// a stream within a sweep and the chain stays reproducible.
#[derive(Clone, Copy, Debug)]
pub struct BlockRng(u64);

impl BlockRng {
    /// Generator seeded with `seed`.
    #[inline]
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// Next 64 random bits.
    #[inline(always)]
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0xa076_1d64_78bd_642f);
        let t = u128::from(self.0) * u128::from(self.0 ^ 0xe703_7ed1_a0b4_28db);
        ((t >> 64) as u64) ^ (t as u64)
    }

    /// Uniform in [0, 1) with 53 random bits.
    #[inline(always)]
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in (-1, 1) on the grid m 2^-52 - 1, m odd in (0, 2^53): exactly symmetric
    /// (u and -u equally likely) and exactly representable.
    #[inline(always)]
    pub fn symmetric(&mut self) -> f64 {
        Self::symmetric_from_bits(self.next_u64())
    }

    /// [`BlockRng::symmetric`] from 64 random bits (the top 52 choose m).
    #[inline(always)]
    fn symmetric_from_bits(bits: u64) -> f64 {
        // 2 + j 2^-51 (j: the top 52 bits) - 3 + 2^-52 = (2 j + 1) 2^-52 - 1, every step exact
        f64::from_bits(0x4000_0000_0000_0000 | (bits >> 12)) - 3.0 + 1.0 / (1u64 << 52) as f64
    }
}

impl rand::TryRng for BlockRng {
    type Error = std::convert::Infallible;

    #[inline(always)]
    fn try_next_u32(&mut self) -> std::result::Result<u32, Self::Error> {
        Ok((self.next_u64() >> 32) as u32)
    }

    #[inline(always)]
    fn try_next_u64(&mut self) -> std::result::Result<u64, Self::Error> {
        Ok(self.next_u64())
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> std::result::Result<(), Self::Error> {
        for chunk in dst.chunks_mut(8) {
            let bytes = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
        Ok(())
    }
}

/// Metropolis test for an action change `ds` (U(1) links): accept with probability
/// min(1, exp(-ds)).
///
/// Written as `ds <= 0 || ds < E` with E ~ Exp(1) from the ziggurat (P(E > ds) = exp(-ds)),
/// which is the same test as `v < exp(-ds)` but needs no `exp` in most draws.
#[inline(always)]
fn metropolis_accept(ds: f64, rng: &mut BlockRng) -> bool {
    ds <= 0.0 || ds < rng.sample(rand_distr::Exp1)
}

/// Sites of phi^4 coloured by parity (checkerboard) for parallel local updates.
///
/// On a lattice with all extents even, sites of one parity have no neighbours in common, so a
/// sweep updates the even sites, then the odd ones, each colour cut into fixed blocks (whole
/// rows in 2D) updated in parallel, block b drawing from its own [`BlockRng`] seeded by one
/// `u64` of the chain generator. Blocks and seeds do not depend on the number of threads, so
/// neither does the chain.
///
/// * 2D (the hot path): sites are updated in place in the row-major field. The colour-c sites
///   of row x0 are x1 = o + 2 j, o = (x0 + c) mod 2, j < L1/2, with neighbours x1 +- 1 in the
///   same row and x1 in rows x0 +- 1, all of the other colour (unchanged during the
///   half-sweep). A block reads the rows just outside it from `halo`, copies taken before the
///   half-sweep, so blocks borrow disjoint rows.
/// * other dimensions: sites of parity c are copied into `fields[c]` (order of increasing site
///   index), and `neighbours[c][k * 2d + j]` is the position in `fields[1 - c]` of neighbour j
///   of the k-th site of colour c.
///
/// On any other lattice the lattice is not bipartite and the sweep is sequential in site order.
/// Every path updates sites through [`update_segment`].
pub struct Checkerboard {
    /// The target: lattice, couplings, local and full action.
    target: Phi4,
    /// 2d: neighbours per site.
    n_nb: usize,
    bipartite: bool,
    /// Original site index of the k-th site of each colour (empty in 2D).
    sites: [Vec<u32>; 2],
    /// Neighbour positions in the other colour, 2d per site (empty in 2D).
    neighbours: [Vec<u32>; 2],
    /// The field, split by colour (empty in 2D; buffers reused every sweep).
    fields: [Vec<f64>; 2],
    /// 2D: rows just before and after each block, `[n_blocks, 2, L1]` (reused every sweep).
    halo: Vec<f64>,
    /// Per-block seeds of the current half-sweep.
    seeds: Vec<u64>,
    /// Per-block (accepted hits, partial action) of the current half-sweep.
    partials: Vec<(u64, f64)>,
}

/// Outcome of one sweep.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SweepResult {
    /// Accepted Metropolis hits.
    pub accepted: u64,
    /// The action S after the sweep.
    pub action: f64,
}

/// Sites per parallel block of one colour (fixed, so results do not depend on threads).
const BLOCK_SITES: usize = 2048;

impl Checkerboard {
    /// Colours the lattice of `target` (neighbour tables outside 2D).
    pub fn new(target: Phi4) -> Self {
        let lattice = target.lattice();
        let d = lattice.ndim();
        let n_nb = 2 * d;
        let bipartite = lattice.shape().iter().all(|l| l.is_multiple_of(2));
        let mut sites: [Vec<u32>; 2] = [Vec::new(), Vec::new()];
        let mut neighbours: [Vec<u32>; 2] = [Vec::new(), Vec::new()];
        if bipartite && d != 2 {
            let mut position = vec![0u32; lattice.volume()];
            for i in 0..lattice.volume() {
                let c = lattice.parity(i);
                position[i] = sites[c].len() as u32;
                sites[c].push(i as u32);
            }
            for c in 0..2 {
                for &i in &sites[c] {
                    for mu in 0..d {
                        neighbours[c].push(position[lattice.fwd(i as usize, mu)]);
                        neighbours[c].push(position[lattice.bwd(i as usize, mu)]);
                    }
                }
            }
        }
        let fields = [vec![0.0; sites[0].len()], vec![0.0; sites[1].len()]];
        Self {
            target,
            n_nb,
            bipartite,
            sites,
            neighbours,
            fields,
            halo: Vec::new(),
            seeds: Vec::new(),
            partials: Vec::new(),
        }
    }

    /// The phi^4 target (lattice and couplings).
    pub fn target(&self) -> &Phi4 {
        &self.target
    }

    /// One sweep of `hits` Metropolis hits on every site of `phi` (length V) with proposal
    /// half-width `step_size`.
    ///
    /// On a bipartite lattice the action after the sweep is accumulated during it: the on-site
    /// terms (2d + m2) phi^2 + lam phi^4 of the even sites after the even half-sweep, and the
    /// full local action s(phi) = -2 phi n + (2d + m2) phi^2 + lam phi^4
    /// ([`Phi4::local_action`]) of the odd sites after theirs (every bond has exactly one odd
    /// end). Otherwise it is the target's [`Target::action`] after the sweep.
    pub fn sweep(
        &mut self,
        phi: &mut [f64],
        rng: &mut ChainRng,
        step_size: f64,
        hits: usize,
    ) -> SweepResult {
        if !self.bipartite {
            let params = SiteParams {
                target: &self.target,
                step_size,
                hits,
            };
            let accepted = sweep_sequential(phi, rng, &params);
            return SweepResult {
                accepted,
                action: self.target.action(phi),
            };
        }
        let split = self.n_nb != 4;
        if split {
            self.split_colours(phi);
        }
        let mut result = SweepResult::default();
        for c in 0..2 {
            if split {
                self.half_sweep(c, rng, step_size, hits);
            } else {
                self.half_sweep_2d(phi, c, rng, step_size, hits);
            }
            for &(acc, s) in &self.partials {
                result.accepted += acc;
                result.action += s;
            }
        }
        if split {
            self.join_colours(phi);
        }
        result
    }

    /// Copies `phi` into the colour arrays (not used in 2D).
    fn split_colours(&mut self, phi: &[f64]) {
        for (field, sites) in self.fields.iter_mut().zip(&self.sites) {
            for (f, &i) in field.iter_mut().zip(sites) {
                *f = phi[i as usize];
            }
        }
    }

    /// Copies the colour arrays back into `phi` (inverse of [`Checkerboard::split_colours`]).
    fn join_colours(&self, phi: &mut [f64]) {
        for (field, sites) in self.fields.iter().zip(&self.sites) {
            for (&f, &i) in field.iter().zip(sites) {
                phi[i as usize] = f;
            }
        }
    }

    /// Draws one seed per block of `n_blocks` from the chain generator.
    fn draw_seeds(&mut self, n_blocks: usize, rng: &mut ChainRng) {
        self.seeds.clear();
        self.seeds.extend((0..n_blocks).map(|_| rng.next_u64()));
    }

    /// Updates every site of colour `c` of the 2D field `phi` (`[L0, L1]`, row-major) in
    /// place, blocks of whole rows in parallel; fills `partials`.
    fn half_sweep_2d(
        &mut self,
        phi: &mut [f64],
        c: usize,
        rng: &mut ChainRng,
        step_size: f64,
        hits: usize,
    ) {
        let shape = self.target.lattice().shape();
        let (l0, l1) = (shape[0], shape[1]);
        let rows_per_block = (2 * BLOCK_SITES / l1).clamp(1, l0);
        let n_blocks = l0.div_ceil(rows_per_block);
        self.draw_seeds(n_blocks, rng);
        // the rows just outside each block: they hold the other colour, fixed in this half
        self.halo.resize(n_blocks * 2 * l1, 0.0);
        for (b, pair) in self.halo.chunks_exact_mut(2 * l1).enumerate() {
            let first = b * rows_per_block;
            let last = (first + rows_per_block).min(l0) - 1;
            let (before, after) = pair.split_at_mut(l1);
            before.copy_from_slice(&phi[((first + l0 - 1) % l0) * l1..][..l1]);
            after.copy_from_slice(&phi[((last + 1) % l0) * l1..][..l1]);
        }
        let p = &SiteParams {
            target: &self.target,
            step_size,
            hits,
        };
        let block = |b: usize, rows: &mut [f64], halo: &[f64], seed: u64| {
            let (before, after) = halo.split_at(l1);
            let first = b * rows_per_block;
            update_rows_2d(rows, before, after, first, c, BlockRng::new(seed), p)
        };
        if n_blocks == 1 || rayon::current_num_threads() == 1 {
            // the same blocks in order, without handing work to the thread pool
            let rows = phi.chunks_mut(rows_per_block * l1);
            let halos = self.halo.chunks_exact(2 * l1);
            self.partials.clear();
            self.partials.extend(
                (rows.zip(halos).zip(&self.seeds).enumerate())
                    .map(|(b, ((rows, halo), &seed))| block(b, rows, halo, seed)),
            );
            return;
        }
        phi.par_chunks_mut(rows_per_block * l1)
            .zip(self.halo.par_chunks(2 * l1))
            .zip(self.seeds.par_iter())
            .enumerate()
            .map(|(b, ((rows, halo), &seed))| block(b, rows, halo, seed))
            .collect_into_vec(&mut self.partials);
    }

    /// Updates every site of colour `c` through the neighbour table, block by block (in
    /// parallel for several blocks); fills `partials`.
    fn half_sweep(&mut self, c: usize, rng: &mut ChainRng, step_size: f64, hits: usize) {
        let n = self.fields[c].len();
        let n_nb = self.n_nb;
        self.draw_seeds(n.div_ceil(BLOCK_SITES), rng);
        let p = &SiteParams {
            target: &self.target,
            step_size,
            hits,
        };
        let [even, odd] = &mut self.fields;
        let (active, other): (&mut [f64], &[f64]) = if c == 0 { (even, odd) } else { (odd, even) };
        let neighbours = &self.neighbours[c];
        let update = |((a, nb), &seed): ((&mut [f64], &[u32]), &u64)| {
            update_block(a, nb, n_nb, other, seed, p, c)
        };
        if self.seeds.len() <= 1 || rayon::current_num_threads() == 1 {
            // the same blocks in order, without handing work to the thread pool
            let blocks = active.chunks_mut(BLOCK_SITES);
            let tables = neighbours.chunks(BLOCK_SITES * n_nb);
            self.partials.clear();
            self.partials
                .extend(blocks.zip(tables).zip(&self.seeds).map(update));
            return;
        }
        active
            .par_chunks_mut(BLOCK_SITES)
            .zip(neighbours.par_chunks(BLOCK_SITES * n_nb))
            .zip(self.seeds.par_iter())
            .map(update)
            .collect_into_vec(&mut self.partials);
    }
}

/// Sequential sweep in site order (non-bipartite lattices: some extent odd), with the
/// target's neighbour sum [`Phi4::neighbour_sum`].
fn sweep_sequential(phi: &mut [f64], rng: &mut ChainRng, p: &SiteParams) -> u64 {
    let mut brng = BlockRng::new(rng.next_u64());
    let mut scratch = Scratch::new();
    let mut accepted = 0;
    for i in 0..phi.len() {
        let n_sum = p.target.neighbour_sum(phi, i);
        accepted += update_segment(&mut phi[i..=i], &[n_sum], &mut scratch, &mut brng, p, 1).0;
    }
    accepted
}

/// The target (local action) and the proposal of a site update.
#[derive(Clone, Copy)]
struct SiteParams<'a> {
    target: &'a Phi4,
    step_size: f64,
    hits: usize,
}

/// Sites updated together by [`update_segment`] (its stack buffers).
const SEGMENT: usize = 64;

/// Buffers of [`update_segment`], made once per block.
struct Scratch {
    /// Field and local action before and after a hit (alternating).
    field: [[f64; SEGMENT]; 2],
    action: [[f64; SEGMENT]; 2],
    /// The hit's proposed shifts step_size u, acceptance uniforms v and action changes dS.
    shift: [f64; SEGMENT],
    v: [f64; SEGMENT],
    ds: [f64; SEGMENT],
}

impl Scratch {
    fn new() -> Self {
        Self {
            field: [[0.0; SEGMENT]; 2],
            action: [[0.0; SEGMENT]; 2],
            shift: [0.0; SEGMENT],
            v: [0.0; SEGMENT],
            ds: [0.0; SEGMENT],
        }
    }
}

/// Relative margin around [`exp_estimate`] inside which [`update_segment`] falls back to
/// `f64::exp`: 20 times the estimate's error (< 5e-6), so the bounds are rigorous.
const EXP_MARGIN: f64 = 1e-4;

/// e^x for x in [-700, 0] with relative error below 5e-6, branch-free so that loops over it
/// vectorise; only used as a bound ([`metropolis_bounds`]).
///
/// x = n ln 2 + r with n = round(x / ln 2) and |r| <= ln(2)/2; e^r from its Taylor series to
/// r^5 (remainder <= e^0.35 0.35^6 / 6! < 3.5e-6, relative to e^r >= 0.7: < 5e-6; rounding
/// adds ~1e-13), and 2^n written straight into the exponent bits: adding 1.5 * 2^52 + 1023
/// rounds x / ln 2 to an integer and leaves n + 1023 (in [13, 1023]) in the low mantissa bits.
#[inline(always)]
fn exp_estimate(x: f64) -> f64 {
    const SHIFT: f64 = 6_755_399_441_055_744.0 + 1023.0;
    let t = x * std::f64::consts::LOG2_E + SHIFT;
    let n = t - SHIFT;
    let r = x - n * std::f64::consts::LN_2;
    let taylor =
        1.0 + r * (1.0 + r * (1.0 / 2.0 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0)))));
    f64::from_bits(t.to_bits() << 52) * taylor
}

/// The Metropolis test `ds <= 0 || v < exp(-ds)` for a uniform v in [0, 1), decided where
/// possible from [`exp_estimate`]: returns (accept, undecided). `accept` is only returned
/// when the exact test accepts; when `undecided` is false, the exact test rejects
/// (`!accept`). Undecided (|v - exp(-ds)| within about [`EXP_MARGIN`] exp(-ds), or ds > 700
/// with v < e^-700) has probability below 2 [`EXP_MARGIN`] and is settled with `f64::exp`.
/// NaN is rejected.
#[inline(always)]
fn metropolis_bounds(ds: f64, v: f64) -> (bool, bool) {
    let x = -ds;
    let in_range = x >= -700.0;
    let estimate = exp_estimate(if in_range { x.min(0.0) } else { -700.0 });
    // e^x < e^-700 <= upper outside the range, where no acceptance is decided
    let lower = if in_range {
        estimate * (1.0 - EXP_MARGIN)
    } else {
        0.0
    };
    let upper = estimate * (1.0 + EXP_MARGIN);
    let accept = (ds <= 0.0) | (v < lower);
    (accept, !accept & (v < upper))
}

/// `hits` Metropolis hits on each site of a segment of independent sites (no two
/// neighbours): `phi[k]` (at most [`SEGMENT`]) with neighbour sums `n_sum[k]`, dS = s(phi') -
/// s(phi) for the target's local action s ([`Phi4::local_action`]). Returns the accepted hits
/// and the segment's share of the action after the update: the on-site terms
/// s(phi) + 2 phi n for c = 0, the full s(phi) for c = 1.
///
/// Exact Metropolis: each hit proposes phi' = phi + step_size u with u = m 2^-52 - 1, m odd
/// and uniform in (0, 2^53) (an exactly symmetric grid: u and -u are equally likely, all
/// exactly representable), and accepts if dS <= 0 or v < exp(-dS), v uniform in [0, 1)
/// ([`metropolis_bounds`], with `f64::exp` where its bound is undecided). The hits of the
/// segment run site-parallel: random numbers first, then a branch-free pass (vectorisable,
/// no mispredicted accept branch) choosing phi' or phi by the test's outcome.
#[inline(always)]
fn update_segment(
    phi: &mut [f64],
    n_sum: &[f64],
    scratch: &mut Scratch,
    rng: &mut BlockRng,
    p: &SiteParams,
    c: usize,
) -> (u64, f64) {
    let len = phi.len();
    assert!(len <= SEGMENT && n_sum.len() == len);
    let target = p.target;
    let Scratch {
        field,
        action,
        shift,
        v,
        ds,
    } = scratch;
    for k in 0..len {
        field[0][k] = phi[k];
        action[0][k] = target.local_action(phi[k], n_sum[k]);
    }
    let mut accepted = 0;
    for hit in 0..p.hits {
        for k in 0..len {
            shift[k] = p.step_size * rng.symmetric();
            v[k] = rng.uniform();
        }
        // read (field, action) before the hit from one buffer, write the other in full
        let ([f0, f1], [a0, a1]) = (&mut *field, &mut *action);
        let (x, s, x_next, s_next) = if hit % 2 == 0 {
            (&*f0, &*a0, f1, a1)
        } else {
            (&*f1, &*a1, f0, a0)
        };
        let mut n_undecided = 0u64;
        for k in 0..len {
            let new = x[k] + shift[k];
            let s_new = target.local_action(new, n_sum[k]);
            ds[k] = s_new - s[k];
            let (accept, undecided) = metropolis_bounds(ds[k], v[k]);
            x_next[k] = if accept { new } else { x[k] };
            s_next[k] = if accept { s_new } else { s[k] };
            accepted += u64::from(accept);
            n_undecided += u64::from(undecided);
        }
        if n_undecided > 0 {
            // undecided sites were not moved: settle them with the exact exponential
            for k in 0..len {
                if metropolis_bounds(ds[k], v[k]).1 && v[k] < (-ds[k]).exp() {
                    x_next[k] = x[k] + shift[k];
                    s_next[k] = target.local_action(x_next[k], n_sum[k]);
                    accepted += 1;
                }
            }
        }
    }
    let (x, s) = (&field[p.hits % 2][..len], &action[p.hits % 2][..len]);
    phi.copy_from_slice(x);
    let mut share = 0.0;
    for k in 0..len {
        share += if c == 0 {
            s[k] + 2.0 * x[k] * n_sum[k]
        } else {
            s[k]
        };
    }
    (accepted, share)
}

/// Updates the colour-c sites of consecutive rows `first, first + 1, ...` of a 2D field
/// (`rows`: whole rows of length L1), with `before` and `after` the rows just outside.
/// Returns (accepted hits, the rows' share of the action).
fn update_rows_2d(
    rows: &mut [f64],
    before: &[f64],
    after: &[f64],
    first: usize,
    c: usize,
    mut rng: BlockRng,
    p: &SiteParams,
) -> (u64, f64) {
    let l1 = before.len();
    let n_rows = rows.len() / l1;
    let mut part = (0, 0.0);
    let (mut values, mut n_sum) = ([0.0; SEGMENT], [0.0; SEGMENT]);
    let mut scratch = Scratch::new();
    for r in 0..n_rows {
        let (done, rest) = rows.split_at_mut(r * l1);
        let (row, later) = rest.split_at_mut(l1);
        let prev = if r == 0 {
            before
        } else {
            &done[(r - 1) * l1..]
        };
        let next = if r + 1 == n_rows { after } else { &later[..l1] };
        let offset = (first + r + c) % 2;
        // colour-c sites x1 = offset + 2 j of this row, SEGMENT at a time
        for start in (offset..l1).step_by(2 * SEGMENT) {
            let len = (l1 - start).div_ceil(2).min(SEGMENT);
            for k in 0..len {
                let x1 = start + 2 * k;
                let left = if x1 == 0 { l1 - 1 } else { x1 - 1 };
                let right = if x1 + 1 == l1 { 0 } else { x1 + 1 };
                values[k] = row[x1];
                n_sum[k] = prev[x1] + next[x1] + row[left] + row[right];
            }
            let (acc, s) = update_segment(
                &mut values[..len],
                &n_sum[..len],
                &mut scratch,
                &mut rng,
                p,
                c,
            );
            part.0 += acc;
            part.1 += s;
            for k in 0..len {
                row[start + 2 * k] = values[k];
            }
        }
    }
    part
}

/// Updates one block of sites of colour `c` (`active`, split by colour); `nb` holds `n_nb`
/// neighbour positions in `other` per site. Returns (accepted hits, the block's share of the
/// action).
#[inline(always)]
fn update_block(
    active: &mut [f64],
    nb: &[u32],
    n_nb: usize,
    other: &[f64],
    seed: u64,
    p: &SiteParams,
    c: usize,
) -> (u64, f64) {
    let mut rng = BlockRng::new(seed);
    let mut part = (0, 0.0);
    let mut n_sum = [0.0; SEGMENT];
    let mut scratch = Scratch::new();
    for (values, nbs) in active.chunks_mut(SEGMENT).zip(nb.chunks(SEGMENT * n_nb)) {
        for (n, site) in n_sum.iter_mut().zip(nbs.chunks_exact(n_nb)) {
            *n = site.iter().map(|&j| other[j as usize]).sum();
        }
        let (acc, s) = update_segment(values, &n_sum[..values.len()], &mut scratch, &mut rng, p, c);
        part.0 += acc;
        part.1 += s;
    }
    part
}

/// Checkerboard Metropolis for phi^4; one step is one sweep over all sites.
pub struct Phi4Metropolis {
    board: Checkerboard,
    config: MetropolisConfig,
}

impl Phi4Metropolis {
    /// Sampler for the phi^4 `target` (its lattice, couplings and local action).
    pub fn new(target: Phi4, config: &MetropolisConfig) -> Result<Self> {
        config.validate()?;
        Ok(Self {
            board: Checkerboard::new(target),
            config: config.clone(),
        })
    }
}

impl Sampler for Phi4Metropolis {
    fn name(&self) -> &'static str {
        "metropolis"
    }

    fn step(&mut self, x: &mut [f64], rng: &mut ChainRng) -> StepStats {
        let hits = self.config.hits;
        let sweep = self.board.sweep(x, rng, self.config.step_size, hits);
        StepStats {
            acceptance: sweep.accepted as f64 / (x.len() * hits) as f64,
            action: sweep.action,
            action_evals: 1.0,
        }
    }
}

/// Wraps an angle to [0, 2 pi).
#[inline]
pub fn wrap_angle(theta: f64) -> f64 {
    theta.rem_euclid(std::f64::consts::TAU)
}

/// Link-by-link Metropolis for U(1), links in storage order theta_mu(x) at
/// [`U1::link_index`]`(mu, x)`, with the target's staple and local action.
pub struct U1Metropolis {
    target: U1,
    config: MetropolisConfig,
}

impl U1Metropolis {
    /// Sampler for the U(1) `target`.
    pub fn new(target: U1, config: &MetropolisConfig) -> Result<Self> {
        config.validate()?;
        Ok(Self {
            target,
            config: config.clone(),
        })
    }
}

impl Sampler for U1Metropolis {
    fn name(&self) -> &'static str {
        "metropolis"
    }

    fn step(&mut self, x: &mut [f64], rng: &mut ChainRng) -> StepStats {
        let target = &self.target;
        let mut brng = BlockRng::new(rng.next_u64());
        let mut accepted = 0u64;
        for mu in 0..2 {
            for site in 0..target.lattice().volume() {
                let staple = target.staple(x, mu, site);
                let l = target.link_index(mu, site);
                let mut old = x[l];
                let mut s_old = target.local_action(old, staple);
                for _ in 0..self.config.hits {
                    let new = wrap_angle(old + self.config.step_size * brng.symmetric());
                    let s_new = target.local_action(new, staple);
                    if metropolis_accept(s_new - s_old, &mut brng) {
                        old = new;
                        s_old = s_new;
                        accepted += 1;
                    }
                }
                x[l] = old;
            }
        }
        StepStats {
            acceptance: accepted as f64 / (x.len() * self.config.hits) as f64,
            action: target.action(x),
            action_evals: 1.0,
        }
    }
}

/// Single-particle Metropolis with full action differences, for any target.
///
/// Shape `[n, dim, ...]` moves the n particles one at a time (all their coordinates at once);
/// shape `[n]` moves the whole configuration. One step visits every particle `hits` times;
/// its cost is `n * hits` action evaluations.
pub struct ParticleMetropolis {
    target: Arc<dyn Target>,
    config: MetropolisConfig,
    /// Coordinates moved together.
    particle_dim: usize,
    /// The proposal (buffer).
    proposal: Vec<f64>,
}

impl ParticleMetropolis {
    /// Sampler for `target`.
    pub fn new(target: Arc<dyn Target>, config: &MetropolisConfig) -> Result<Self> {
        config.validate()?;
        let shape = target.shape();
        let dim = target.dim();
        let particle_dim = if shape.len() <= 1 {
            dim
        } else {
            dim / shape[0]
        };
        Ok(Self {
            target,
            config: config.clone(),
            particle_dim: particle_dim.max(1),
            proposal: vec![0.0; dim],
        })
    }
}

impl Sampler for ParticleMetropolis {
    fn name(&self) -> &'static str {
        "metropolis"
    }

    fn step(&mut self, x: &mut [f64], rng: &mut ChainRng) -> StepStats {
        let mut s_old = self.target.action(x);
        self.proposal.copy_from_slice(x);
        let n_particles = x.len() / self.particle_dim;
        let mut accepted = 0u64;
        let mut evals = 0.0;
        for i in 0..n_particles {
            let range = i * self.particle_dim..(i + 1) * self.particle_dim;
            for _ in 0..self.config.hits {
                for k in range.clone() {
                    let u: f64 = rng.random::<f64>() * 2.0 - 1.0;
                    self.proposal[k] = x[k] + self.config.step_size * u;
                }
                let s_new = self.target.action(&self.proposal);
                evals += 1.0;
                let ds = s_new - s_old;
                // NaN (proposal outside the support) is rejected
                if ds <= 0.0 || rng.random::<f64>() < (-ds).exp() {
                    x[range.clone()].copy_from_slice(&self.proposal[range.clone()]);
                    s_old = s_new;
                    accepted += 1;
                } else {
                    self.proposal[range.clone()].copy_from_slice(&x[range.clone()]);
                }
            }
        }
        StepStats {
            acceptance: accepted as f64 / (n_particles * self.config.hits) as f64,
            action: s_old,
            action_evals: evals,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use boltzflow_targets::phi4::Phi4Spec;
    use boltzflow_targets::u1::U1Spec;
    use rand::SeedableRng;

    fn random_field(n: usize, seed: u64) -> Vec<f64> {
        let mut rng = ChainRng::seed_from_u64(seed);
        (0..n).map(|_| rng.random::<f64>() * 4.0 - 2.0).collect()
    }

    fn phi4(shape: &[i64], m2: f64, lam: f64) -> Phi4 {
        Phi4::new(&Phi4Spec {
            shape: shape.to_vec(),
            m2: Some(m2),
            lam: Some(lam),
            kappa: None,
            lam_h: None,
        })
        .unwrap()
    }

    fn u1(shape: &[i64], beta: f64) -> Result<U1> {
        Ok(U1::new(&U1Spec {
            shape: shape.to_vec(),
            beta,
        })?)
    }

    /// One hit of `update_segment` on one site changes S by the local-action difference, and its share of
    /// the action is the on-site terms s(phi, 0) (colour 0) or the full s(phi, n) (colour 1).
    #[test]
    fn site_action_difference_is_full_action_difference() {
        for shape in [vec![4i64, 6], vec![3, 4], vec![2, 2, 4]] {
            let target = phi4(&shape, -1.3, 0.7);
            let p = SiteParams {
                target: &target,
                step_size: 1.0,
                hits: 1,
            };
            let mut rng = BlockRng::new(3);
            let mut phi = random_field(target.dim(), 1);
            let mut moved = 0;
            for i in 0..phi.len() {
                let n_sum = target.neighbour_sum(&phi, i);
                let s0 = target.action(&phi);
                let old = phi[i];
                let c = i % 2;
                let (acc, share) = update_segment(
                    &mut phi[i..=i],
                    &[n_sum],
                    &mut Scratch::new(),
                    &mut rng,
                    &p,
                    c,
                );
                let new = phi[i];
                moved += acc;
                assert_eq!(acc == 1, new != old);
                let s1 = target.action(&phi);
                let ds = target.local_action(new, n_sum) - target.local_action(old, n_sum);
                assert!(
                    (s1 - s0 - ds).abs() < 1e-10 * s0.abs().max(1.0),
                    "{shape:?} site {i}"
                );
                let expected = target.local_action(new, if c == 0 { 0.0 } else { n_sum });
                assert!((share - expected).abs() < 1e-12 * expected.abs().max(1.0));
            }
            assert!(moved > 0, "{shape:?}: no hit accepted");
        }
    }

    /// The branch-free segment update makes the same decisions as the plain test
    /// `ds <= 0 || v < exp(-ds)` with the same random numbers (hit by hit, site by site),
    /// including draws close enough to the threshold to need the exact fallback.
    #[test]
    fn segment_update_is_the_plain_metropolis_test() {
        let target = phi4(&[8, 8], -4.0, 8.0);
        let mut near_threshold = 0;
        for seed in 0..1000 {
            let (hits, step_size) = [(1, 1.0), (3, 0.3), (2, 4.0)][seed as usize % 3];
            let p = SiteParams {
                target: &target,
                step_size,
                hits,
            };
            let mut phi = random_field(SEGMENT, seed);
            let n_sum: Vec<f64> = random_field(SEGMENT, seed + 5000)
                .iter()
                .map(|n| 2.0 * n)
                .collect();
            let mut expected = phi.clone();
            let mut rng = BlockRng::new(seed);
            let mut accepted = 0;
            for _ in 0..hits {
                for k in 0..SEGMENT {
                    let new = expected[k] + step_size * rng.symmetric();
                    let v = rng.uniform();
                    let ds = target.local_action(new, n_sum[k])
                        - target.local_action(expected[k], n_sum[k]);
                    let p_accept = (-ds).exp();
                    if ds > 0.0 && (v - p_accept).abs() < EXP_MARGIN * p_accept {
                        near_threshold += 1;
                    }
                    if ds <= 0.0 || v < p_accept {
                        expected[k] = new;
                        accepted += 1;
                    }
                }
            }
            let mut rng = BlockRng::new(seed);
            let (acc, share) =
                update_segment(&mut phi, &n_sum, &mut Scratch::new(), &mut rng, &p, 1);
            assert_eq!(acc, accepted);
            assert_eq!(phi, expected, "seed {seed}");
            let s: f64 = (0..SEGMENT)
                .map(|k| target.local_action(phi[k], n_sum[k]))
                .sum();
            assert!((share - s).abs() < 1e-12 * s.abs().max(1.0));
        }
        assert!(near_threshold > 0, "the exact fallback was not exercised");
    }

    /// The estimate of e^x is within 5e-6 (relative) of `f64::exp` on [-700, 0], far inside
    /// the margin, so the bounds of the Metropolis test hold; an undecided draw is flagged,
    /// not guessed.
    #[test]
    fn exp_estimate_bounds_the_exact_test() {
        let mut worst: f64 = 0.0;
        for i in 0..=1_400_000 {
            let x = -700.0 * i as f64 / 1_400_000.0;
            worst = worst.max((exp_estimate(x) / x.exp() - 1.0).abs());
        }
        assert!(worst < EXP_MARGIN / 20.0, "{worst}");
        assert!(worst > 0.0);
        let mut rng = BlockRng::new(8);
        for _ in 0..100_000 {
            let ds = 40.0 * rng.symmetric();
            let v = rng.uniform();
            let exact = ds <= 0.0 || v < (-ds).exp();
            let (accept, undecided) = metropolis_bounds(ds, v);
            assert!(!accept || exact, "accepted ds = {ds}, v = {v}");
            assert!(accept || undecided || !exact, "rejected ds = {ds}, v = {v}");
        }
        // at v = exp(-ds) the estimate cannot decide; far outside the range it rejects
        for ds in [1e-3, 0.5, 3.0, 80.0] {
            assert_eq!(metropolis_bounds(ds, (-ds).exp()), (false, true));
        }
        assert_eq!(metropolis_bounds(800.0, 0.0), (false, true));
        assert_eq!(metropolis_bounds(800.0, 1e-300), (false, false));
        assert_eq!(metropolis_bounds(f64::NAN, 0.5), (false, false));
        assert_eq!(metropolis_bounds(-1e300, 0.99), (true, false));
    }

    /// The proposal grid is symmetric: u(m) = -u(2^53 - m) for odd m, all in (-1, 1).
    #[test]
    fn symmetric_draw_is_symmetric() {
        let u = |bits: u64| BlockRng::symmetric_from_bits(bits);
        for bits in [
            0u64,
            1,
            1 << 11,
            12345 << 11,
            u64::MAX,
            u64::MAX - (1 << 11),
        ] {
            let mirrored = (!bits >> 11) << 11;
            assert_eq!(u(bits), -u(mirrored), "{bits:x}");
            let m = (bits >> 11) | 1;
            assert_eq!(u(bits), m as f64 / (1u64 << 52) as f64 - 1.0);
            assert!(u(bits).abs() < 1.0);
        }
    }

    fn sweeps_in_pool(threads: usize, sweeps: usize) -> Vec<f64> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let config = MetropolisConfig {
                step_size: 1.0,
                hits: 2,
            };
            let mut sampler = Phi4Metropolis::new(phi4(&[128, 96], -4.0, 8.0), &config).unwrap();
            let mut phi = random_field(128 * 96, 2);
            let mut rng = crate::chain_rng(7, 1);
            for _ in 0..sweeps {
                sampler.step(&mut phi, &mut rng);
            }
            phi
        })
    }

    #[test]
    fn checkerboard_is_independent_of_thread_count() {
        let one = sweeps_in_pool(1, 5);
        let two = sweeps_in_pool(2, 5);
        assert!(
            one.iter()
                .zip(&two)
                .all(|(a, b)| a.to_bits() == b.to_bits())
        );
        // and the chain moved: it is not the initial field
        assert_ne!(one, random_field(128 * 96, 2));
    }

    #[test]
    fn same_seed_same_chain() {
        let run = |seed: u64| {
            let mut sampler =
                Phi4Metropolis::new(phi4(&[8, 8], 1.0, 0.0), &MetropolisConfig::default()).unwrap();
            let mut phi = vec![0.0; 64];
            let mut rng = crate::chain_rng(seed, 0);
            let actions: Vec<f64> = (0..20)
                .map(|_| sampler.step(&mut phi, &mut rng).action)
                .collect();
            (phi, actions)
        };
        assert_eq!(run(3), run(3));
        assert_ne!(run(3).0, run(4).0);
    }

    #[test]
    fn step_reports_the_action_after_the_sweep() {
        // 2D row arithmetic, 1D/3D neighbour tables, and the sequential sweep (odd extent)
        for shape in [
            vec![6i64, 6],
            vec![4, 2],
            vec![2, 6],
            vec![4],
            vec![4, 2, 6],
            vec![5, 4],
        ] {
            let check = phi4(&shape, -4.0, 8.0);
            let v = check.dim();
            let config = MetropolisConfig {
                step_size: 0.5,
                hits: 3,
            };
            let mut sampler = Phi4Metropolis::new(phi4(&shape, -4.0, 8.0), &config).unwrap();
            let mut phi = random_field(v, 5);
            let mut rng = crate::chain_rng(1, 0);
            for _ in 0..3 {
                let stats = sampler.step(&mut phi, &mut rng);
                let exact = check.action(&phi);
                assert!(
                    (stats.action - exact).abs() < 1e-12 * exact.abs().max(1.0),
                    "{shape:?}: {} vs {exact}",
                    stats.action
                );
                assert!(stats.acceptance > 0.0 && stats.acceptance < 1.0);
            }
        }
    }

    /// Links visited in storage order l = mu V + x: the target's staple and local action give
    /// the action change of each link.
    #[test]
    fn staple_gives_the_local_action() {
        let target = u1(&[4, 6], 1.7).unwrap();
        let v = target.lattice().volume();
        let mut theta: Vec<f64> = random_field(48, 9).iter().map(|t| t * 3.0).collect();
        for l in 0..theta.len() {
            let (mu, site) = (l / v, l % v);
            assert_eq!(target.link_index(mu, site), l);
            let staple = target.staple(&theta, mu, site);
            let local = |t: f64| target.local_action(t, staple);
            let s0 = target.action(&theta);
            let old = theta[l];
            theta[l] = old - 1.1;
            let s1 = target.action(&theta);
            assert!(
                (s1 - s0 - (local(old - 1.1) - local(old))).abs() < 1e-10,
                "link {l}"
            );
        }
    }

    #[test]
    fn rejects_bad_parameters() {
        let bad = MetropolisConfig {
            step_size: f64::NAN,
            hits: 1,
        };
        let err = bad.validate().unwrap_err().to_string();
        assert!(err.contains("metropolis.step_size"), "{err}");
        let bad = MetropolisConfig {
            step_size: 0.5,
            hits: 0,
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("metropolis.hits")
        );
        assert!(u1(&[4, 4, 4], 1.0).is_err());
    }
}
