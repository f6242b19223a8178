"""Speed of the scattering transform against its floor, of the masked (cut-sky) transform
against the full-sky one, and of the wavelet transform against S2LET.

    python benchmarks/transform.py [--nside 256 512] [--threads 2] [--repeat 3]
    python benchmarks/transform.py --masked-only          # just the cut-sky ratio at nside 256

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
    parser.add_argument("--masked-nside", type=int, default=256)
    parser.add_argument("--masked-only", action="store_true", help="only the masked vs full-sky comparison")
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # healpy / pys2let threads too

    import healpy as hp
    import pys2let

    from scatterdist import Scattering, wavelet_transform
    from scatterdist.equivariance import random_bandlimited_alm
    from scatterdist.sphere import analysis, synthesis

    masked_vs_full(args)
    if args.masked_only:
        return
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


def masked_vs_full(args) -> None:
    """Masked scattering (Galactic cut |b| > 20 deg, default apodisation) side by side with the
    full-sky transform of the same maps: steady state (one mask shared by every map, its
    geometry cached, as in the pipeline with --mask) and cold (a new mask every call, e.g.
    maps with their own UNSEEN pixels)."""
    import healpy as hp

    from scatterdist import Scattering
    from scatterdist.equivariance import random_bandlimited_alm
    from scatterdist.sphere import synthesis

    nside = args.masked_nside
    L = 2 * nside
    maps = synthesis(random_bandlimited_alm(L, np.random.default_rng(2), n=args.batch), nside, L - 1, nthreads=args.threads)
    theta, _ = hp.pix2ang(nside, np.arange(12 * nside**2))
    mask = (np.abs(90 - np.degrees(theta)) > 20).astype(np.float64)
    sc = Scattering(nside, depth=2, oversample=args.oversample, nthreads=args.threads)
    # Interleaved (full, masked, full, masked, ...) so that a change in the machine's load
    # hits both alike; best of each.
    sc(maps), sc(maps, mask=mask)  # warm-up: plans, caches, the mask's geometry
    full_t, masked_t = [], []
    for _ in range(max(args.repeat, 5)):
        for fn, out in ((lambda: sc(maps), full_t), (lambda: sc(maps, mask=mask), masked_t)):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    full, masked = min(full_t) / args.batch, min(masked_t) / args.batch
    rng = np.random.default_rng(3)

    def cold():
        m = mask.copy()
        m[rng.integers(0, m.size, 16)] = 0.0  # a mask never seen before
        sc(maps, mask=m)

    cold_t = best_time(cold, args.repeat) / args.batch
    print(f"masked vs full sky, nside {nside} depth 2, {sc.n_paths} paths, {args.batch} maps per call, "
          f"threads={args.threads} (best of {args.repeat})")
    print(f"  full sky {full:.4f} s/map, masked (shared mask) {masked:.4f} s/map: ratio {masked / full:.2f} (target <= 1.5)")
    print(f"  masked with a new mask every call {cold_t:.4f} s/map: ratio {cold_t / full:.2f} "
          "(apodisation and mask geometry once per distinct mask)")


if __name__ == "__main__":
    main()
