"""Cost of Dask's worker malloc setting for the transform, measured side by side.

    python benchmarks/malloc_trim.py [--nside 256] [--maps 8] [--rounds 2]

Dask's nannies export ``MALLOC_TRIM_THRESHOLD_=65536`` to worker processes. glibc reads it
at start-up, so each setting runs in a fresh 1-thread child process; the script prints maps/s
of ``Scattering`` with glibc's default, with Dask's value, with a large trim threshold alone, and
with what the batch scripts export (large trim and mmap thresholds), alternating the runs (best of ``--rounds``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

CHILD = """
import time, numpy as np
from scatterdist import Scattering
sc = Scattering({nside}, nthreads=1)
maps = np.random.default_rng(0).standard_normal(({maps}, 12 * {nside}**2))
sc(maps[0])
t = time.perf_counter()
for m in maps:
    sc(m)
print({maps} / (time.perf_counter() - t))
"""

#: MALLOC_* variables of each setting (glibc reads them at process start).
SETTINGS = {
    "glibc default": {},
    "Dask (trim 64 KiB)": {"MALLOC_TRIM_THRESHOLD_": "65536"},
    "trim 1 GiB only": {"MALLOC_TRIM_THRESHOLD_": "1073741824"},
    "batch scripts": {"MALLOC_TRIM_THRESHOLD_": "1073741824", "MALLOC_MMAP_THRESHOLD_": "33554432"},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nside", type=int, default=256)
    parser.add_argument("--maps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    code = CHILD.format(nside=args.nside, maps=args.maps)
    best = dict.fromkeys(SETTINGS, 0.0)
    for _ in range(args.rounds):
        for name, value in SETTINGS.items():
            env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
            env.update(value, OMP_NUM_THREADS="1")
            out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
            best[name] = max(best[name], float(out.stdout.strip()))
    base = best["glibc default"]
    print(f"nside {args.nside}, {args.maps} maps, 1 thread, best of {args.rounds}")
    for name, rate in best.items():
        print(f"{name:<24} {rate:6.2f} maps/s   {rate / base:.2f} of glibc's default")


if __name__ == "__main__":
    main()
