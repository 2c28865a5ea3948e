#!/usr/bin/env python3
"""Check that h5py reads a boltzflow ensemble file (layout version 1).

Usage: python3 scripts/check_h5py.py RUN.h5

Checks that the /meta attributes are str (ints for format_version and seed), that the live
checkpoint slot is consistent with /checkpoint/committed and its texts decode, and that /configs, /series/* and /vectors/* have
shapes (chains, >= draws, ...) with finite committed values. Prints a one-line summary and exits
non-zero on any problem.
"""
import sys

TEXT_ATTRS = ["format", "kind", "program_version", "git_commit", "host", "date", "command",
              "config", "config_hash", "lattice", "conventions", "parameters"]


def fnv1a_hex(text):
    h = 0xCBF29CE484222325
    for b in text.encode("utf-8"):
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def check(path):
    import h5py
    import numpy as np

    problems = []
    try:  # SWMR read also opens a file whose writer is running or was killed
        f = h5py.File(path, "r", swmr=True)
    except OSError:
        f = h5py.File(path, "r")
    with f:
        meta = f["meta"].attrs
        for name in TEXT_ATTRS:
            if name not in meta:
                problems.append(f"/meta attribute {name} missing")
            elif not isinstance(meta[name], str):
                problems.append(f"/meta attribute {name} is {type(meta[name]).__name__}, not str")
        if meta.get("format") != "boltzflow-ensemble":
            problems.append(f"/meta format is {meta.get('format')!r}")
        if int(meta.get("format_version", -1)) != 1:
            problems.append(f"/meta format_version is {meta.get('format_version')!r}, expected 1")
        if "seed" not in meta or not np.issubdtype(np.asarray(meta["seed"]).dtype, np.integer):
            problems.append("/meta seed missing or not an integer")
        if isinstance(meta.get("config"), str) and meta.get("config_hash") != fnv1a_hex(meta["config"]):
            problems.append("/meta config_hash does not match the FNV-1a hash of config")

        cp = f["checkpoint"]
        chains = int(cp.attrs["chains"])
        generation, draws = (int(v) for v in cp["committed"][()])
        slot = cp[f"slot{generation % 2}"]
        if [int(v) for v in slot["stamp"][()]] != [generation, draws]:
            problems.append("live checkpoint slot stamp disagrees with /checkpoint/committed")
        if generation > 0:
            for name in ("rng", "sampler"):
                lens = slot[f"{name}_len"][()]
                texts = [bytes(slot[name][c, :n]).decode("utf-8") for c, n in enumerate(lens)]
                if len(texts) != chains:
                    problems.append(f"checkpoint {name} has {len(texts)} texts, expected {chains}")
            if slot["x"].shape[0] != chains:
                problems.append(f"checkpoint x has shape {slot['x'].shape}")

        datasets = []
        if "configs" in f:
            datasets.append(("configs", f["configs"]))
        for group in ("series", "vectors"):
            if group in f:
                datasets += [(f"{group}/{n}", d) for n, d in f[group].items()]
        for name, d in datasets:
            if d.dtype != np.float64:
                problems.append(f"{name} has dtype {d.dtype}")
            if d.ndim < 2 or d.shape[0] != chains or d.shape[1] < draws:
                problems.append(f"{name} has shape {d.shape}, expected ({chains}, >= {draws}, ...)")
                continue
            if not np.all(np.isfinite(d[:, :draws])):
                problems.append(f"{name} has non-finite committed values")
        summary = (f"{path}: chains={chains} draws={draws} datasets={len(datasets)} "
                   f"kind={meta.get('kind')} config_hash={meta.get('config_hash')}")
    return summary, problems


def main():
    if len(sys.argv) != 2:
        print("usage: check_h5py.py RUN.h5", file=sys.stderr)
        return 2
    try:
        summary, problems = check(sys.argv[1])
    except Exception as err:  # any h5py/KeyError failure is a problem with the file
        print(f"{sys.argv[1]}: FAILED: {type(err).__name__}: {err}")
        return 1
    if problems:
        print(f"{summary}: FAILED: " + "; ".join(problems))
        return 1
    print(f"{summary}: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
