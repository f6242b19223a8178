"""Measured cost of one CMB-study cell at a given nside, per map, on one thread (issue 13).

Times each step the study runs per sky (simulate a non-Gaussian sky, the paper's scattering
transform, the signed transform, the low-pass transform, the baseline features) on a few maps
in this process, then extrapolates to a sweep: ``skies x cells / workers``. The CNN training
cost is not estimated here (it depends on epochs; see results/*/cmb.md for measured times).

    python scripts/cmb_cost.py --nside 512 --maps 2 --n-per-class 300 --cells 9 --workers 2
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nside", type=int, default=512)
    ap.add_argument("--maps", type=int, default=2, help="maps timed per step (default 2)")
    ap.add_argument("--n-per-class", type=int, default=300)
    ap.add_argument("--cells", type=int, default=9, help="(alpha, seed) cells of the sweep (default 9: 3 x 3)")
    ap.add_argument("--workers", type=int, default=2, help="single-threaded Dask workers (default 2)")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    from scatterdist import Scattering
    from scatterdist.experiments.cmb import SIGNED_OVERSAMPLE
    from scatterdist.experiments.features import baseline_block
    from scatterdist.sims import SimulationSpec
    from scatterdist.transforms import LowPass

    spec = SimulationSpec(kind="nongaussian", nside=args.nside, n=args.maps, seed=0, alpha=0.01)
    t0 = time.perf_counter()
    maps = np.stack([spec.generate(i) for i in range(args.maps)])
    per = {"simulate": (time.perf_counter() - t0) / args.maps}
    for name, tr in [("scattering", Scattering(args.nside, nthreads=1)),
                     ("signed", Scattering(args.nside, signed=True, oversample=SIGNED_OVERSAMPLE, nthreads=1)),
                     ("lowpass", LowPass(args.nside, nthreads=1))]:
        tr(maps[:1])  # build caches
        t0 = time.perf_counter()
        tr(maps)
        per[name] = (time.perf_counter() - t0) / args.maps
    t0 = time.perf_counter()
    baseline_block(spec.to_dict(), 0, args.maps)
    per["features (incl. simulate)"] = (time.perf_counter() - t0) / args.maps

    skies = 2 * args.n_per_class * args.cells
    print(f"nside {args.nside}: seconds per sky on one thread (mean of {args.maps})")
    for k, v in per.items():
        print(f"  {k:<26} {v:8.2f} s")
    logistic = per["simulate"] + per["signed"] + per["features (incl. simulate)"]
    everything = 3 * per["simulate"] + per["scattering"] + per["signed"] + per["lowpass"] + per["features (incl. simulate)"]
    for label, s in [("signed store + features (logistic models)", logistic), ("all stores + features", everything)]:
        total = s * skies / args.workers
        print(f"{label}: {s:.2f} s/sky -> {skies} skies on {args.workers} workers: {total / 60:.0f} min "
              f"(+ CNN training)")


if __name__ == "__main__":
    main()
