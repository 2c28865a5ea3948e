//! Local Metropolis: checkerboard site updates (phi^4), link updates (U(1)),
//! single-particle moves (molecules).
//!
//! Every proposal is a symmetric uniform shift x' = x + step_size * u, u ~ U(-1, 1) per
//! coordinate, accepted with probability min(1, exp(-dS)), tested as `dS <= 0 || v < exp(-dS)`.
//!
//! * phi^4 ([`Phi4Metropolis`]): the local action of site x is
//!   s_x(phi) = -2 phi N_x + (2d + m2) phi^2 + lam phi^4 with N_x the sum of the 2d neighbours,
//!   so dS = s_x(phi') - s_x(phi). On a bipartite lattice (all extents even) the sweep updates
//!   the even sites, then the odd ones ([`Checkerboard`]); sites of one colour are independent,
//!   so each colour is cut into fixed blocks updated in parallel, block b drawing from its own
//!   generator seeded by one `u64` of the chain generator. The result is bitwise the same for
//!   any number of threads.
//! * U(1) ([`U1Metropolis`]): the local action of a link is -beta k cos(theta - alpha), with
//!   k e^{i alpha} the staple sum of its two plaquettes ([`U1Lattice::staple`]).
//! * molecules and any other target ([`ParticleMetropolis`]): configurations of shape
//!   `[n, dim]` move one particle (all `dim` coordinates) at a time, with the full action
//!   difference; shape `[n]` (e.g. the 2D double well, `[2]`) moves the whole point.

use std::sync::Arc;

use rand::{Rng, RngExt};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use boltzflow_targets::Target;
use boltzflow_targets::geometry::Lattice;

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

    /// Uniform in [-1, 1) with 53 random bits.
    #[inline(always)]
    pub fn symmetric(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 52) as f64) - 1.0
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

/// Metropolis test for an action change `ds`: accept with probability min(1, exp(-ds)).
///
/// Written as `ds <= 0 || ds < E` with E ~ Exp(1) from the ziggurat (P(E > ds) = exp(-ds)),
/// which is the same test as `v < exp(-ds)` but needs no `exp` in most draws.
#[inline(always)]
fn metropolis_accept(ds: f64, rng: &mut BlockRng) -> bool {
    ds <= 0.0 || ds < rng.sample(rand_distr::Exp1)
}

/// The phi^4 action S = sum_x [-2 sum_mu phi(x) phi(x+mu) + (2d + m2) phi^2 + lam phi^4].
pub fn phi4_action(lattice: &Lattice, m2: f64, lam: f64, phi: &[f64]) -> f64 {
    let d = lattice.ndim();
    let mass = 2.0 * d as f64 + m2;
    let mut s = 0.0;
    for (i, &p) in phi.iter().enumerate() {
        let mut hop = 0.0;
        for mu in 0..d {
            hop += phi[lattice.fwd(i, mu)];
        }
        let p2 = p * p;
        s += -2.0 * p * hop + mass * p2 + lam * p2 * p2;
    }
    s
}

/// Sites of phi^4 split by colour (checkerboard) for parallel local updates.
///
/// On a lattice with all extents even, sites of parity c are copied into `fields[c]`
/// (order of increasing site index), and `neighbours[c][k * 2d + j]` is the position in
/// `fields[1 - c]` of neighbour j of the k-th site of colour c. In 2D the neighbours follow
/// from row arithmetic instead: with h = L1/2 sites of each colour per row and the k = x0 h + j
/// -th site of colour c at x1 = o + 2 j, o = (x0 + c) mod 2, its neighbours in the other colour
/// are j in rows x0 +- 1, and j and j - 1 (o = 0) or j + 1 (o = 1) in row x0.
/// On any other lattice the lattice is not bipartite and the sweep is sequential in site order.
#[derive(Clone, Debug)]
pub struct Checkerboard {
    lattice: Lattice,
    m2: f64,
    lam: f64,
    /// 2d: neighbours per site.
    n_nb: usize,
    bipartite: bool,
    /// Original site index of the k-th site of each colour.
    sites: [Vec<u32>; 2],
    /// Neighbour positions in the other colour, 2d per site (empty in 2D).
    neighbours: [Vec<u32>; 2],
    /// The field, split by colour (buffers reused every sweep).
    fields: [Vec<f64>; 2],
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
    /// Splits `lattice` into colours for the action with couplings `m2`, `lam`.
    pub fn new(lattice: Lattice, m2: f64, lam: f64) -> Self {
        let d = lattice.ndim();
        let n_nb = 2 * d;
        let bipartite = lattice.shape().iter().all(|l| l % 2 == 0);
        let mut sites: [Vec<u32>; 2] = [Vec::new(), Vec::new()];
        let mut neighbours: [Vec<u32>; 2] = [Vec::new(), Vec::new()];
        if bipartite {
            let mut position = vec![0u32; lattice.volume()];
            for i in 0..lattice.volume() {
                let c = lattice.parity(i);
                position[i] = sites[c].len() as u32;
                sites[c].push(i as u32);
            }
            if d != 2 {
                for c in 0..2 {
                    for &i in &sites[c] {
                        for mu in 0..d {
                            neighbours[c].push(position[lattice.fwd(i as usize, mu)]);
                            neighbours[c].push(position[lattice.bwd(i as usize, mu)]);
                        }
                    }
                }
            }
        }
        let fields = [vec![0.0; sites[0].len()], vec![0.0; sites[1].len()]];
        Self {
            lattice,
            m2,
            lam,
            n_nb,
            bipartite,
            sites,
            neighbours,
            fields,
            seeds: Vec::new(),
            partials: Vec::new(),
        }
    }

    /// The lattice.
    pub fn lattice(&self) -> &Lattice {
        &self.lattice
    }

    /// The couplings (m2, lam).
    pub fn couplings(&self) -> (f64, f64) {
        (self.m2, self.lam)
    }

    /// The action of `phi`.
    pub fn action(&self, phi: &[f64]) -> f64 {
        phi4_action(&self.lattice, self.m2, self.lam, phi)
    }

    /// One sweep of `hits` Metropolis hits on every site of `phi` (length V) with proposal
    /// half-width `step_size`.
    ///
    /// The action after the sweep is accumulated during it: the on-site terms
    /// (2d + m2) phi^2 + lam phi^4 of the even sites after the even half-sweep, and the full site
    /// action s(phi) = -2 phi N + (2d + m2) phi^2 + lam phi^4 of the odd sites after theirs
    /// (every bond has exactly one odd end).
    pub fn sweep(
        &mut self,
        phi: &mut [f64],
        rng: &mut ChainRng,
        step_size: f64,
        hits: usize,
    ) -> SweepResult {
        let params = SiteParams {
            mass: 2.0 * self.lattice.ndim() as f64 + self.m2,
            lam: self.lam,
            step_size,
            hits,
        };
        if !self.bipartite {
            let accepted = self.sweep_sequential(phi, rng, &params);
            return SweepResult {
                accepted,
                action: self.action(phi),
            };
        }
        self.split_colours(phi);
        let mut result = SweepResult::default();
        for c in 0..2 {
            match self.n_nb {
                2 => self.half_sweep::<2>(c, rng, &params),
                4 => self.half_sweep_2d(c, rng, &params),
                6 => self.half_sweep::<6>(c, rng, &params),
                8 => self.half_sweep::<8>(c, rng, &params),
                _ => self.half_sweep_dyn(c, rng, &params),
            };
            for &(acc, s) in &self.partials {
                result.accepted += acc;
                result.action += s;
            }
        }
        self.join_colours(phi);
        result
    }

    /// Copies `phi` into the colour arrays (row by row in 2D, where colour 0 starts at
    /// x1 = x0 mod 2).
    fn split_colours(&mut self, phi: &[f64]) {
        let [even, odd] = &mut self.fields;
        if self.n_nb == 4 {
            let (l1, half) = (self.lattice.shape()[1], self.lattice.shape()[1] / 2);
            for (x0, ((row, e), o)) in phi
                .chunks_exact(l1)
                .zip(even.chunks_exact_mut(half))
                .zip(odd.chunks_exact_mut(half))
                .enumerate()
            {
                let (first, second) = if x0 % 2 == 0 { (e, o) } else { (o, e) };
                for ((pair, a), b) in row.chunks_exact(2).zip(first).zip(second) {
                    *a = pair[0];
                    *b = pair[1];
                }
            }
        } else {
            for (f, &i) in even.iter_mut().zip(&self.sites[0]) {
                *f = phi[i as usize];
            }
            for (f, &i) in odd.iter_mut().zip(&self.sites[1]) {
                *f = phi[i as usize];
            }
        }
    }

    /// Copies the colour arrays back into `phi` (inverse of [`Checkerboard::split_colours`]).
    fn join_colours(&self, phi: &mut [f64]) {
        let [even, odd] = &self.fields;
        if self.n_nb == 4 {
            let (l1, half) = (self.lattice.shape()[1], self.lattice.shape()[1] / 2);
            for (x0, ((row, e), o)) in phi
                .chunks_exact_mut(l1)
                .zip(even.chunks_exact(half))
                .zip(odd.chunks_exact(half))
                .enumerate()
            {
                let (first, second) = if x0 % 2 == 0 { (e, o) } else { (o, e) };
                for ((pair, a), b) in row.chunks_exact_mut(2).zip(first).zip(second) {
                    pair[0] = *a;
                    pair[1] = *b;
                }
            }
        } else {
            for (&f, &i) in even.iter().zip(&self.sites[0]) {
                phi[i as usize] = f;
            }
            for (&f, &i) in odd.iter().zip(&self.sites[1]) {
                phi[i as usize] = f;
            }
        }
    }

    /// Draws one seed per block of `n_blocks` from the chain generator.
    fn draw_seeds(&mut self, n_blocks: usize, rng: &mut ChainRng) {
        self.seeds.clear();
        self.seeds.extend((0..n_blocks).map(|_| rng.next_u64()));
    }

    /// Updates every site of colour `c` of a 2D lattice by row arithmetic, blocks of whole
    /// rows in parallel; fills `partials`.
    fn half_sweep_2d(&mut self, c: usize, rng: &mut ChainRng, p: &SiteParams) {
        let shape = self.lattice.shape();
        let (l0, half) = (shape[0], shape[1] / 2);
        let rows_per_block = (BLOCK_SITES / half).max(1);
        let chunk = rows_per_block * half;
        self.draw_seeds(l0.div_ceil(rows_per_block), rng);
        let [even, odd] = &mut self.fields;
        let (active, other): (&mut [f64], &[f64]) = if c == 0 { (even, odd) } else { (odd, even) };
        let block = |(b, (rows, &seed)): (usize, (&mut [f64], &u64))| {
            let p = *p;
            let mut brng = BlockRng::new(seed);
            let mut part = (0, 0.0);
            for (r, row) in rows.chunks_exact_mut(half).enumerate() {
                let x0 = b * rows_per_block + r;
                let up = &other[((x0 + 1) % l0) * half..][..half];
                let down = &other[((x0 + l0 - 1) % l0) * half..][..half];
                let same = &other[x0 * half..][..half];
                let shift_back = (x0 + c) % 2 == 0;
                for (j, phi) in row.iter_mut().enumerate() {
                    let side = if shift_back {
                        same[if j == 0 { half - 1 } else { j - 1 }]
                    } else {
                        same[if j + 1 == half { 0 } else { j + 1 }]
                    };
                    let n_sum = up[j] + down[j] + same[j] + side;
                    let (acc, s) = update_site(phi, n_sum, &mut brng, &p, c);
                    part.0 += acc;
                    part.1 += s;
                }
            }
            part
        };
        if self.seeds.len() <= 1 {
            self.partials.clear();
            self.partials.push(block((0, (active, &self.seeds[0]))));
            return;
        }
        active
            .par_chunks_mut(chunk)
            .zip(self.seeds.par_iter())
            .enumerate()
            .map(block)
            .collect_into_vec(&mut self.partials);
    }

    /// Updates every site of colour `c` through the neighbour table, block by block (in
    /// parallel for several blocks); fills `partials`.
    fn half_sweep<const NB: usize>(&mut self, c: usize, rng: &mut ChainRng, p: &SiteParams) {
        let n = self.fields[c].len();
        self.draw_seeds(n.div_ceil(BLOCK_SITES), rng);
        let [even, odd] = &mut self.fields;
        let (active, other): (&mut [f64], &[f64]) = if c == 0 { (even, odd) } else { (odd, even) };
        let neighbours = &self.neighbours[c];
        if self.seeds.len() <= 1 {
            self.partials.clear();
            self.partials.push(update_block::<NB>(
                active,
                neighbours,
                other,
                self.seeds[0],
                p,
                c,
            ));
            return;
        }
        active
            .par_chunks_mut(BLOCK_SITES)
            .zip(neighbours.par_chunks(BLOCK_SITES * NB))
            .zip(self.seeds.par_iter())
            .map(|((a, nb), &seed)| update_block::<NB>(a, nb, other, seed, p, c))
            .collect_into_vec(&mut self.partials);
    }

    /// [`Checkerboard::half_sweep`] for dimensions above 4.
    fn half_sweep_dyn(&mut self, c: usize, rng: &mut ChainRng, p: &SiteParams) {
        let n = self.fields[c].len();
        let n_nb = self.n_nb;
        self.draw_seeds(n.div_ceil(BLOCK_SITES), rng);
        let [even, odd] = &mut self.fields;
        let (active, other): (&mut [f64], &[f64]) = if c == 0 { (even, odd) } else { (odd, even) };
        active
            .par_chunks_mut(BLOCK_SITES)
            .zip(self.neighbours[c].par_chunks(BLOCK_SITES * n_nb))
            .zip(self.seeds.par_iter())
            .map(|((a, nb), &seed)| {
                let mut brng = BlockRng::new(seed);
                let mut part = (0, 0.0);
                for (phi, nbs) in a.iter_mut().zip(nb.chunks_exact(n_nb)) {
                    let n_sum: f64 = nbs.iter().map(|&j| other[j as usize]).sum();
                    let (acc, s) = update_site(phi, n_sum, &mut brng, p, c);
                    part.0 += acc;
                    part.1 += s;
                }
                part
            })
            .collect_into_vec(&mut self.partials);
    }

    /// Sequential sweep in site order (non-bipartite lattices: some extent odd).
    fn sweep_sequential(&mut self, phi: &mut [f64], rng: &mut ChainRng, p: &SiteParams) -> u64 {
        let d = self.lattice.ndim();
        let mut brng = BlockRng::new(rng.next_u64());
        let mut accepted = 0;
        for i in 0..phi.len() {
            let mut n_sum = 0.0;
            for mu in 0..d {
                n_sum += phi[self.lattice.fwd(i, mu)] + phi[self.lattice.bwd(i, mu)];
            }
            accepted += update_site(&mut phi[i], n_sum, &mut brng, p, 1).0;
        }
        accepted
    }
}

/// Couplings and proposal of a site update.
#[derive(Clone, Copy, Debug)]
struct SiteParams {
    /// 2d + m2.
    mass: f64,
    lam: f64,
    step_size: f64,
    hits: usize,
}

/// The part of S that depends on one site: s(phi) = -2 phi N + mass phi^2 + lam phi^4,
/// N the neighbour sum and mass = 2d + m2.
#[inline(always)]
fn site_action(phi: f64, n_sum: f64, p: &SiteParams) -> f64 {
    let phi2 = phi * phi;
    -2.0 * phi * n_sum + p.mass * phi2 + p.lam * phi2 * phi2
}

/// `hits` Metropolis hits on one site of colour `c` with neighbour sum `n_sum`, with
/// dS = s(phi') - s(phi) ([`site_action`]). Returns the accepted hits and the site's share of
/// the action after the update: the on-site terms for c = 0, the full s(phi) for c = 1.
#[inline(always)]
fn update_site(
    phi: &mut f64,
    n_sum: f64,
    rng: &mut BlockRng,
    p: &SiteParams,
    c: usize,
) -> (u64, f64) {
    let mut acc = 0;
    let mut old = *phi;
    let mut s_old = site_action(old, n_sum, p);
    for _ in 0..p.hits {
        let new = old + p.step_size * rng.symmetric();
        let s_new = site_action(new, n_sum, p);
        if metropolis_accept(s_new - s_old, rng) {
            old = new;
            s_old = s_new;
            acc += 1;
        }
    }
    *phi = old;
    let share = if c == 0 {
        s_old + 2.0 * old * n_sum
    } else {
        s_old
    };
    (acc, share)
}

/// Updates one block of sites of colour `c`; `nb` holds NB neighbour positions per site.
/// Returns (accepted hits, the block's share of the action).
#[inline(always)]
fn update_block<const NB: usize>(
    active: &mut [f64],
    nb: &[u32],
    other: &[f64],
    seed: u64,
    p: &SiteParams,
    c: usize,
) -> (u64, f64) {
    let mut rng = BlockRng::new(seed);
    let mut part = (0, 0.0);
    for (phi, nbs) in active.iter_mut().zip(nb.chunks_exact(NB)) {
        let nbs: &[u32; NB] = nbs.try_into().expect("chunks_exact yields NB entries");
        let mut n_sum = 0.0;
        for &j in nbs {
            n_sum += other[j as usize];
        }
        let (acc, s) = update_site(phi, n_sum, &mut rng, p, c);
        part.0 += acc;
        part.1 += s;
    }
    part
}

/// Checkerboard Metropolis for phi^4; one step is one sweep over all sites.
#[derive(Clone, Debug)]
pub struct Phi4Metropolis {
    board: Checkerboard,
    config: MetropolisConfig,
}

impl Phi4Metropolis {
    /// Sampler for phi^4 with couplings `m2`, `lam` on `lattice`.
    pub fn new(lattice: Lattice, m2: f64, lam: f64, config: &MetropolisConfig) -> Result<Self> {
        config.validate()?;
        Ok(Self {
            board: Checkerboard::new(lattice, m2, lam),
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

/// Geometry and local actions of 2D U(1) links, layout `[2, L0, L1]` (direction slowest).
///
/// Link theta_mu(x) sits at `mu * V + x0 * L1 + x1`; the plaquette is
/// theta_P(x) = theta_0(x) + theta_1(x+0) - theta_0(x+1) - theta_1(x), S = -beta sum_P cos theta_P.
#[derive(Clone, Debug)]
pub struct U1Lattice {
    l0: usize,
    l1: usize,
    beta: f64,
}

impl U1Lattice {
    /// Lattice `[L0, L1]` at coupling `beta`.
    pub fn new(shape: &[i64], beta: f64) -> Result<Self> {
        if shape.len() != 2 || shape.iter().any(|&l| l < 2) {
            return Err(McmcError::InvalidParameter {
                name: "shape",
                value: format!("{shape:?}"),
                fix: "U(1) gauge theory needs a 2D lattice shape = [L0, L1] with L >= 2",
            });
        }
        Ok(Self {
            l0: shape[0] as usize,
            l1: shape[1] as usize,
            beta,
        })
    }

    /// Number of sites V = L0 L1 (and of plaquettes); there are 2V links.
    pub fn volume(&self) -> usize {
        self.l0 * self.l1
    }

    /// Coupling beta.
    pub fn beta(&self) -> f64 {
        self.beta
    }

    /// Index of link theta_mu(x0, x1) (coordinates taken modulo the extents).
    #[inline]
    pub fn link(&self, mu: usize, x0: usize, x1: usize) -> usize {
        mu * self.volume() + (x0 % self.l0) * self.l1 + x1 % self.l1
    }

    /// theta_P(x) of the plaquette at (x0, x1).
    #[inline]
    pub fn plaquette_angle(&self, theta: &[f64], x0: usize, x1: usize) -> f64 {
        theta[self.link(0, x0, x1)] + theta[self.link(1, x0 + 1, x1)]
            - theta[self.link(0, x0, x1 + 1)]
            - theta[self.link(1, x0, x1)]
    }

    /// The Wilson action -beta sum_P cos theta_P.
    pub fn action(&self, theta: &[f64]) -> f64 {
        let mut s = 0.0;
        for x0 in 0..self.l0 {
            for x1 in 0..self.l1 {
                s += self.plaquette_angle(theta, x0, x1).cos();
            }
        }
        -self.beta * s
    }

    /// Staple sum of link `l`: `(k cos alpha, k sin alpha)` such that the two plaquettes
    /// containing theta_l contribute cos(theta_l - b_1) + cos(theta_l - b_2) = k cos(theta_l - alpha),
    /// i.e. the local action is -beta k cos(theta_l - alpha).
    ///
    /// For theta_0(x): b_1 = theta_0(x+1) + theta_1(x) - theta_1(x+0) (from P(x)),
    /// b_2 = theta_0(x-1) + theta_1(x-1+0) - theta_1(x-1) (from P(x-1)).
    /// For theta_1(x): b_1 = theta_0(x) + theta_1(x+0) - theta_0(x+1) (from P(x)),
    /// b_2 = theta_1(x-0) + theta_0(x-0+1) - theta_0(x-0) (from P(x-0)).
    #[inline]
    pub fn staple(&self, theta: &[f64], l: usize) -> (f64, f64) {
        let v = self.volume();
        let mu = l / v;
        let (x0, x1) = ((l % v) / self.l1, l % self.l1);
        let (l0, l1) = (self.l0, self.l1);
        let t = |nu: usize, y0: usize, y1: usize| theta[self.link(nu, y0, y1)];
        let (b1, b2) = if mu == 0 {
            let xm = x1 + l1 - 1;
            (
                t(0, x0, x1 + 1) + t(1, x0, x1) - t(1, x0 + 1, x1),
                t(0, x0, xm) + t(1, x0 + 1, xm) - t(1, x0, xm),
            )
        } else {
            let xm = x0 + l0 - 1;
            (
                t(0, x0, x1) + t(1, x0 + 1, x1) - t(0, x0, x1 + 1),
                t(1, xm, x1) + t(0, xm, x1 + 1) - t(0, xm, x1),
            )
        };
        let (s1, c1) = b1.sin_cos();
        let (s2, c2) = b2.sin_cos();
        (c1 + c2, s1 + s2)
    }
}

/// Wraps an angle to [0, 2 pi).
#[inline]
pub fn wrap_angle(theta: f64) -> f64 {
    theta.rem_euclid(std::f64::consts::TAU)
}

/// Link-by-link Metropolis for U(1) (links in storage order), using the staple.
#[derive(Clone, Debug)]
pub struct U1Metropolis {
    lattice: U1Lattice,
    config: MetropolisConfig,
}

impl U1Metropolis {
    /// Sampler for U(1) on `lattice`.
    pub fn new(lattice: U1Lattice, config: &MetropolisConfig) -> Result<Self> {
        config.validate()?;
        Ok(Self {
            lattice,
            config: config.clone(),
        })
    }
}

impl Sampler for U1Metropolis {
    fn name(&self) -> &'static str {
        "metropolis"
    }

    fn step(&mut self, x: &mut [f64], rng: &mut ChainRng) -> StepStats {
        let beta = self.lattice.beta;
        let mut brng = BlockRng::new(rng.next_u64());
        let mut accepted = 0u64;
        for l in 0..x.len() {
            let (kc, ks) = self.lattice.staple(x, l);
            // local action -beta (kc cos theta + ks sin theta)
            let local = |th: f64| {
                let (s, c) = th.sin_cos();
                -beta * (kc * c + ks * s)
            };
            let mut old = x[l];
            let mut s_old = local(old);
            for _ in 0..self.config.hits {
                let new = wrap_angle(old + self.config.step_size * brng.symmetric());
                let s_new = local(new);
                if metropolis_accept(s_new - s_old, &mut brng) {
                    old = new;
                    s_old = s_new;
                    accepted += 1;
                }
            }
            x[l] = old;
        }
        StepStats {
            acceptance: accepted as f64 / (x.len() * self.config.hits) as f64,
            action: self.lattice.action(x),
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
    use rand::SeedableRng;

    fn random_field(n: usize, seed: u64) -> Vec<f64> {
        let mut rng = ChainRng::seed_from_u64(seed);
        (0..n).map(|_| rng.random::<f64>() * 4.0 - 2.0).collect()
    }

    #[test]
    fn site_action_difference_is_full_action_difference() {
        for shape in [vec![4i64, 6], vec![3, 4], vec![2, 2, 4]] {
            let lattice = Lattice::new(&shape).unwrap();
            let (m2, lam) = (-1.3, 0.7);
            let p = SiteParams {
                mass: 2.0 * lattice.ndim() as f64 + m2,
                lam,
                step_size: 1.0,
                hits: 1,
            };
            let mut phi = random_field(lattice.volume(), 1);
            for i in 0..lattice.volume() {
                let n_sum: f64 = (0..lattice.ndim())
                    .map(|mu| phi[lattice.fwd(i, mu)] + phi[lattice.bwd(i, mu)])
                    .sum();
                let s0 = phi4_action(&lattice, m2, lam, &phi);
                let old = phi[i];
                phi[i] = old + 0.37;
                let s1 = phi4_action(&lattice, m2, lam, &phi);
                let ds = site_action(old + 0.37, n_sum, &p) - site_action(old, n_sum, &p);
                assert!(
                    (s1 - s0 - ds).abs() < 1e-10 * s0.abs().max(1.0),
                    "{shape:?} site {i}"
                );
            }
        }
    }

    fn sweeps_in_pool(threads: usize, sweeps: usize) -> Vec<f64> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let lattice = Lattice::new(&[128, 96]).unwrap();
            let config = MetropolisConfig {
                step_size: 1.0,
                hits: 2,
            };
            let mut sampler = Phi4Metropolis::new(lattice, -4.0, 8.0, &config).unwrap();
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
            let lattice = Lattice::new(&[8, 8]).unwrap();
            let mut sampler =
                Phi4Metropolis::new(lattice, 1.0, 0.0, &MetropolisConfig::default()).unwrap();
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
        for shape in [vec![6i64, 6], vec![4], vec![4, 2, 6], vec![5, 4]] {
            let lattice = Lattice::new(&shape).unwrap();
            let check = lattice.clone();
            let v = lattice.volume();
            let config = MetropolisConfig { step_size: 0.5, hits: 3 };
            let mut sampler = Phi4Metropolis::new(lattice, -4.0, 8.0, &config).unwrap();
            let mut phi = random_field(v, 5);
            let mut rng = crate::chain_rng(1, 0);
            for _ in 0..3 {
                let stats = sampler.step(&mut phi, &mut rng);
                let exact = phi4_action(&check, -4.0, 8.0, &phi);
                assert!(
                    (stats.action - exact).abs() < 1e-12 * exact.abs().max(1.0),
                    "{shape:?}: {} vs {exact}",
                    stats.action
                );
                assert!(stats.acceptance > 0.0 && stats.acceptance < 1.0);
            }
        }
    }

    #[test]
    fn staple_gives_the_local_action() {
        let lattice = U1Lattice::new(&[4, 6], 1.7).unwrap();
        let mut theta: Vec<f64> = random_field(48, 9).iter().map(|t| t * 3.0).collect();
        for l in 0..theta.len() {
            let (kc, ks) = lattice.staple(&theta, l);
            let local = |t: f64| -lattice.beta() * (kc * t.cos() + ks * t.sin());
            let s0 = lattice.action(&theta);
            let old = theta[l];
            theta[l] = old - 1.1;
            let s1 = lattice.action(&theta);
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
        assert!(U1Lattice::new(&[4, 4, 4], 1.0).is_err());
    }
}
