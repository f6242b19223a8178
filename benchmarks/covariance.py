"""Cost of the scattering covariances against the depth-2 scattering transform, side by side.

    python benchmarks/covariance.py [--nside 512] [--threads 2] [--repeat 3] [--batch 2] [--json out.json]

Both transforms (numpy backend, ``nthreads`` ducc0 threads, the same filters and multiresolution
plan) run interleaved in one process on the same random maps, so that load from other processes
on a shared machine falls on both alike; the ratio of the best times is what to quote. The
covariances are measured with and without the local maps (``invariants()`` and ``__call__``);
a full-sky call of either transform is one pass of the algorithm plus one synthesis per path
at the output resolution.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nside", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--batch", type=int, default=2, help="maps per call")
    parser.add_argument("--oversample", type=int, default=1)
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args()

    from scatterdist import Scattering, ScatteringCovariance

    sc = Scattering(args.nside, depth=2, oversample=args.oversample, nthreads=args.threads)
    cov = ScatteringCovariance(args.nside, oversample=args.oversample, nthreads=args.threads)
    maps = np.random.default_rng(0).standard_normal((args.batch, 12 * args.nside**2))
    runs = {"scattering depth 2": lambda: sc(maps), "covariance (local maps)": lambda: cov(maps),
            "covariance (invariants)": lambda: cov.invariants(maps)}
    for fn in runs.values():  # warm-up: plans, caches
        fn()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeat):  # interleaved: every repeat runs each transform once
        for name, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    best = {name: min(t) / args.batch for name, t in times.items()}
    base = best["scattering depth 2"]
    print(f"nside {args.nside} (L = {sc.L}), {args.batch} maps per call, numpy backend, {args.threads} threads, "
          f"best of {args.repeat}; {sc.n_paths} scattering paths, {cov.n_paths} covariance statistics")
    print(f"{'transform':>26}  {'s per map':>10}  {'ratio':>6}")
    for name, t in best.items():
        print(f"{name:>26}  {t:>10.3f}  {t / base:>6.2f}")
    print(f"load average at the end: {os.getloadavg()[0]:.1f} on os.cpu_count() = {os.cpu_count()}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"nside": args.nside, "L": sc.L, "threads": args.threads, "batch": args.batch,
                       "repeat": args.repeat, "oversample": args.oversample, "seconds_per_map": best,
                       "ratio": {k: v / base for k, v in best.items()}, "times": times,
                       "n_paths": {"scattering": sc.n_paths, "covariance": cov.n_paths},
                       "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count()},
                       "load_average": os.getloadavg()[0]}, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
