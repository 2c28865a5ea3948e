#!/usr/bin/env python3
"""Writes the start configurations of the solvated dimer (lattices/dimer.toml) in its closed
and open states, lattices/dimer_closed.txt and lattices/dimer_open.txt: the dimer on the x
axis at its bond minimum (d = 0.9435 closed, 2.0615 open), the 36 solvent particles on the
cell centres of the coarsest m x m grid over the box [-3, 3]^2 that keeps them at least
sigma = 1.1 from both dimer atoms (the farthest ones), as the target's own cold start does.
The MCMC's thermalisation relaxes the solvent. Format: one particle per line (mcmc.start)."""
import math
import pathlib

BOX, SIGMA, N_SOLVENT = 3.0, 1.1, 36
STATES = {"closed": 0.9435, "open": 2.0615}

root = pathlib.Path(__file__).resolve().parent.parent
for name, d in STATES.items():
    half = d / 2
    dimer = [(-half, 0.0), (half, 0.0)]

    def clearance(p):
        return min(math.hypot(p[0] - q[0], p[1] - q[1]) for q in dimer)

    m = math.ceil(math.sqrt(N_SOLVENT))
    while True:
        h = 2 * BOX / m
        grid = [(-BOX + (i + 0.5) * h, -BOX + (j + 0.5) * h) for j in range(m) for i in range(m)]
        clear = [p for p in grid if clearance(p) >= SIGMA]
        if len(clear) >= N_SOLVENT:
            break
        m += 1
    clear.sort(key=clearance, reverse=True)
    particles = dimer + clear[:N_SOLVENT]
    lines = [f"# solvated dimer, {name} state (d = {d}); written by scripts/dimer_starts.py"]
    lines += [f"{x:.6f} {y:.6f}" for x, y in particles]
    (root / "lattices" / f"dimer_{name}.txt").write_text("\n".join(lines) + "\n")
    print(f"dimer_{name}.txt: {len(particles)} particles, grid {m}x{m}")
