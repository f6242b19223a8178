"""Speed of the scattering transform against its floor, and of the wavelet transform against S2LET.

    python benchmarks/transform.py [--nside 256 512] [--threads 2] [--repeat 3]

Everything is measured side by side in one process; the ratios are what to quote
(absolute times drift on shared machines). The floor is one ducc0 analysis + synthesis
pair at full L: no scattering transform of depth >= 1 can do less.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np


def best_time(fn, repeat: int) -> float:
    fn()  # warm-up: plans, caches
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nside", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--batch", type=int, default=2, help="maps per call")
    parser.add_argument("--oversample", type=int, default=1)
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # healpy / pys2let threads too

    import healpy as hp
    import pys2let

    from scatterdist import Scattering, wavelet_transform
    from scatterdist.equivariance import random_bandlimited_alm
    from scatterdist.sphere import analysis, synthesis

    print(f"threads={args.threads} batch={args.batch} oversample={args.oversample} (best of {args.repeat})")
    print(f"{'nside':>5} {'L':>5} {'depth':>5} {'paths':>5} {'s/map':>8} {'floor s/map':>11} {'ratio':>6}")
    for nside in args.nside:
        L = 2 * nside
        maps = synthesis(random_bandlimited_alm(L, np.random.default_rng(0), n=args.batch), nside, L - 1, nthreads=args.threads)
        floor = best_time(lambda: synthesis(analysis(maps, L - 1, nthreads=args.threads), nside, L - 1, nthreads=args.threads), args.repeat) / args.batch
        for depth in (1, 2):
            sc = Scattering(nside, depth=depth, oversample=args.oversample, nthreads=args.threads)
            t = best_time(lambda: sc(maps), args.repeat) / args.batch
            print(f"{nside:>5} {L:>5} {depth:>5} {sc.n_paths:>5} {t:>8.4f} {floor:>11.4f} {t / floor:>6.2f}")

    # First-order wavelet transform vs pys2let's HEALPix route at L = 512 (nside 256).
    nside, L, J0 = 256, 512, 2
    f = synthesis(random_bandlimited_alm(L, np.random.default_rng(1))[0], nside, L - 1)

    def s2let_route():
        f_lm = hp.map2alm(f, lmax=L - 1, iter=0)
        f_wav_lm, f_scal_lm = pys2let.analysis_axisym_lm_wav(f_lm, 2.0, L, J0)
        hp.alm2map(f_scal_lm, nside, lmax=L - 1)
        for k in range(f_wav_lm.shape[1]):
            hp.alm2map(np.ascontiguousarray(f_wav_lm[:, k]), nside, lmax=L - 1)

    ours = best_time(lambda: wavelet_transform(f, L=L, J0=J0, nthreads=args.threads), args.repeat)
    theirs = best_time(s2let_route, args.repeat)
    print(f"wavelet transform L={L} J0={J0}: scatterdist {ours:.4f} s, pys2let+healpy {theirs:.4f} s, "
          f"speed-up {theirs / ours:.2f}x")


if __name__ == "__main__":
    main()
