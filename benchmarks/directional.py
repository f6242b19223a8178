"""Cost of directional wavelets (azimuthal band N), measured side by side in one run.

    python benchmarks/directional.py [--nside 256 512] [--N 4] [--threads 2] [--maps 2] [--rounds 2] [--torch] [--ops]

For each nside (L = 2*nside, default J0), seconds per map of:

- ``Scattering(depth=2)`` at N = 1 and at N (numpy backend, ``--threads`` ducc0 threads);
- with ``--torch``: the same N transform on the torch backend on the CPU (float64 and float32,
  ``--threads`` torch threads; its default engine there is ducc0 through zero-copy views, see
  :mod:`scatterdist.sphere.torch_spin`), timed alternating with the numpy one;
- with ``--ops``: aten ops (GPU kernel launches) of one torch scattering call at N = 1 and at N
  with the GPU engines on CPU tensors (``LEGENDRE_ENGINE = "torch"``, float32, ``--maps`` maps);
- the directional wavelet transform alone, every scale j >= J0 on its own grid:
  ours on HEALPix (:func:`scatterdist.scattering.directional.directional_wavelet_transform`,
  N orientations ``k pi / N``) against ``pys2let.analysis_lm2wav`` (S2LET, multiresolution MW
  SO(3) grids with 2N - 1 orientations), both from the same alm, ours at 1 thread and at
  ``--threads`` (S2LET's C library runs on one thread).

Best of ``--rounds``; the runs alternate so that load from other processes hits all alike. The
scattering line also gives the ratio of process CPU times (all threads), which the load of other
processes on a shared machine disturbs much less than the wall time.
Then, for the scattering, where the time goes (one profiled call each, in wall and in CPU time:
ducc0 syntheses, ducc0 analyses, the rest, and of the rest the fused steering and orientation
reduction, and that reduction alone on the finest grid's first-order signals, in CPU time) and
what one ducc0 synthesis costs at the finest grid (scalar against the
gradient-only spin-1 and spin-3 syntheses that N = 4 needs for each wavelet signal; then the
scalar and spin-3 ones on a Gauss-Legendre grid, which has half HEALPix's rings).
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def _best(fns: dict, rounds: int, cpu: dict | None = None) -> dict:
    """Best wall time of each callable over ``rounds``, the callables alternating within each round.
    ``cpu``: filled with the best process CPU time (all threads) of each, which other processes'
    load on a shared machine disturbs much less than the wall time."""
    best = dict.fromkeys(fns, float("inf"))
    if cpu is not None:
        cpu.update(dict.fromkeys(fns, float("inf")))
    for _ in range(rounds):
        for name, fn in fns.items():
            t, c = time.perf_counter(), time.process_time()
            fn()
            best[name] = min(best[name], time.perf_counter() - t)
            if cpu is not None:
                cpu[name] = min(cpu[name], time.process_time() - c)
    return best


def _breakdown(fn, timer=time.perf_counter) -> dict:
    """Seconds of one call of ``fn`` in ducc0 syntheses, ducc0 analyses and everything else (cProfile),
    and of the latter in the fused steering and orientation reduction of N > 1
    (:func:`scatterdist.scattering.directional.oriented_moduli`). ``timer``: ``time.perf_counter``
    (wall) or ``time.process_time`` (CPU time of all threads: ducc0's included; less disturbed by
    other processes' load)."""
    import cProfile
    import pstats

    prof = cProfile.Profile(timer)
    t = timer()
    prof.enable()
    fn()
    prof.disable()
    total = timer() - t
    stats = pstats.Stats(prof).stats
    own = {name[2]: v[2] for name, v in stats.items()}
    cum = {(name[0].rsplit("/", 1)[-1], name[2]): v[3] for name, v in stats.items()}
    synth = own.get("<built-in method ducc0.sht.synthesis>", 0.0)
    anal = own.get("<built-in method ducc0.sht.adjoint_synthesis>", 0.0)
    orient = cum.get(("directional.py", "oriented_moduli"), 0.0)
    return {"synthesis": synth, "analysis": anal, "rest": total - synth - anal, "of which orientations": orient,
            "total": total}


def _sht_costs(nside: int, lmax: int, maps: int, threads: int, rounds: int) -> dict:
    """Best time of one scalar and one gradient-only spin-1 / spin-3 ducc0 synthesis of ``maps`` alm sets."""
    import ducc0

    from scatterdist.sphere.alm import alm_size
    from scatterdist.sphere.healpix import ring_geometry

    geo = ring_geometry(nside)
    rng = np.random.default_rng(1)
    alm = rng.standard_normal((maps, 1, alm_size(lmax))) + 1j * rng.standard_normal((maps, 1, alm_size(lmax)))
    alm[..., : lmax + 1] = alm[..., : lmax + 1].real
    fns = {"scalar": lambda: ducc0.sht.synthesis(alm=alm, lmax=lmax, spin=0, nthreads=threads, **geo)}
    for n in (1, 3):
        fns[f"spin-{n}"] = lambda n=n: ducc0.sht.synthesis(alm=alm, lmax=lmax, spin=n, mode="GRAD_ONLY",
                                                          nthreads=threads, **geo)
    # the same on a Gauss-Legendre grid (lmax + 1 rings, 2 lmax + 2 points each; half HEALPix's rings)
    gl = dict(lmax=lmax, geometry="GL", ntheta=lmax + 1, nphi=2 * lmax + 2, nthreads=threads)
    fns["scalar on GL"] = lambda: [ducc0.sht.synthesis_2d(alm=a, spin=0, **gl) for a in alm]
    fns["spin-3 on GL"] = lambda: [ducc0.sht.synthesis_2d(alm=a, spin=3, mode="GRAD_ONLY", **gl) for a in alm]
    return _best(fns, rounds + 1)


def _reduction_cost(nside: int, N: int, signals: int, rounds: int) -> float:
    """Best CPU time of the fused steering and orientation reduction alone
    (:func:`scatterdist.scattering.directional.oriented_moduli`, harmonic 1) of ``signals`` wavelet
    signals at ``nside``: N random component planes each, in the ``(N, signals, npix)`` layout that
    ducc0 writes them in."""
    from scatterdist.scattering.directional import max_harmonic, oriented_moduli

    comps = np.random.default_rng(2).standard_normal((N, signals, 12 * nside**2))
    best = float("inf")
    for _ in range(rounds + 1):
        c = time.process_time()
        oriented_moduli(comps, N, max_harmonic(N))
        best = min(best, time.process_time() - c)
    return best


def _torch_row(nside: int, args: argparse.Namespace, maps: np.ndarray, sc_numpy) -> None:
    """Scattering depth 2 at N: torch backend on the CPU (float64, float32) against the numpy backend."""
    import torch

    from scatterdist import Scattering

    x = torch.from_numpy(maps)
    fns = {"numpy": lambda: sc_numpy(maps)}
    for name, dtype in (("float64", torch.float64), ("float32", torch.float32)):
        sc = Scattering(nside, depth=2, N=args.N, backend="torch", device="cpu", dtype=dtype, nthreads=args.threads)
        xd = x.to(dtype)
        sc(xd[:1])  # warm caches
        fns[name] = lambda sc=sc, xd=xd: sc(xd)
    t = {k: v / args.maps for k, v in _best(fns, args.rounds).items()}
    print(f"nside {nside}: Scattering depth 2 N={args.N}, torch backend (CPU, {args.threads} threads): "
          f"float64 {t['float64']:.3f} s ({t['float64'] / t['numpy']:.2f}x numpy), "
          f"float32 {t['float32']:.3f} s ({t['float32'] / t['numpy']:.2f}x numpy); numpy {t['numpy']:.3f} s", flush=True)


def _ops_row(nside: int, args: argparse.Namespace, maps: np.ndarray) -> None:
    """aten ops of one torch Scattering(depth=2) call at N = 1 and N, GPU engines on CPU tensors."""
    from collections import Counter

    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    from scatterdist import Scattering
    from scatterdist.sphere import torch_sht

    class Count(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.ops: Counter[str] = Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops[str(func)] += 1
            return func(*args, **(kwargs or {}))

    previous, torch_sht.LEGENDRE_ENGINE = torch_sht.LEGENDRE_ENGINE, "torch"
    try:
        x = torch.from_numpy(maps).float()
        counts = {}
        for N in (1, args.N):
            sc = Scattering(nside, depth=2, N=N, backend="torch", device="cpu", dtype=torch.float32,
                            nthreads=args.threads)
            sc(x)  # plans and tables outside the count
            with Count() as counter:
                sc(x)
            counts[N] = (sum(counter.ops.values()), sc.n_paths)
    finally:
        torch_sht.LEGENDRE_ENGINE = previous
    print(f"nside {nside}: aten ops per torch scattering call ({args.maps} maps, GPU engines on CPU): "
          + ", ".join(f"N={N} {n} ({p} paths)" for N, (n, p) in counts.items()), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nside", type=int, nargs="+", default=[256])
    parser.add_argument("--N", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--maps", type=int, default=2, help="maps per scattering call")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--no-pys2let", action="store_true", help="skip S2LET (slow at large L)")
    parser.add_argument("--torch", action="store_true", help="also time the torch backend (CPU) at N")
    parser.add_argument("--ops", action="store_true", help="also count aten ops of a torch call (GPU engines)")
    args = parser.parse_args()

    from scatterdist import Scattering
    from scatterdist.scattering.directional import directional_wavelet_transform
    from scatterdist.sphere import analysis

    print(f"N = {args.N}, {args.threads} threads for scatterdist, {args.maps} maps per scattering call, "
          f"best of {args.rounds}; seconds per map")
    for nside in args.nside:
        rng = np.random.default_rng(0)
        maps = rng.standard_normal((args.maps, 12 * nside**2))
        sc1 = Scattering(nside, depth=2, nthreads=args.threads)
        scN = Scattering(nside, depth=2, nthreads=args.threads, N=args.N)
        L, J0 = sc1.L, sc1.J0
        alm = analysis(maps[0], L - 1)
        sc1(maps[:1])
        scN(maps[:1])  # warm caches
        cpu: dict = {}
        t = _best({"N1": lambda: sc1(maps), "NN": lambda: scN(maps)}, args.rounds, cpu)
        t1, tN = t["N1"] / args.maps, t["NN"] / args.maps
        print(f"nside {nside} (L {L}, J0 {J0}): Scattering depth 2: N=1 {t1:.3f} s ({sc1.n_paths} paths), "
              f"N={args.N} {tN:.3f} s ({scN.n_paths} paths): {tN / t1:.2f}x; CPU time (all threads) "
              f"{cpu['N1'] / args.maps:.3f} s and {cpu['NN'] / args.maps:.3f} s: {cpu['NN'] / cpu['N1']:.2f}x")
        for clock, timer in (("wall", time.perf_counter), ("CPU", time.process_time)):
            for name, sc in ((1, sc1), (args.N, scN)):
                parts = _breakdown(lambda sc=sc: sc(maps), timer)
                print(f"nside {nside}: N={name} per map, {clock} time: "
                      + ", ".join(f"{k} {v / args.maps:.3f} s" for k, v in parts.items()))
        print(f"nside {nside}: one ducc0 synthesis at nside {nside}, lmax {L - 1}, {args.maps} maps: "
              + ", ".join(f"{k} {v:.4f} s" for k, v in _sht_costs(nside, L - 1, args.maps, args.threads, args.rounds).items()))
        red = _reduction_cost(nside, args.N, 2 * args.maps, args.rounds)
        print(f"nside {nside}: orientation reduction alone (N={args.N}, {2 * args.maps} wavelet signals at nside {nside}, "
              f"the finest grid's first order): {red:.4f} s CPU time, "
              f"{red / (2 * args.maps * 12 * nside**2) * 1e9:.1f} ns per pixel of each signal", flush=True)
        if args.torch:
            _torch_row(nside, args, maps, scN)
        if args.ops:
            _ops_row(nside, args, maps)
        fns = {"ours1": lambda: directional_wavelet_transform(alm, L, 2.0, J0, args.N, nthreads=1),
               "oursT": lambda: directional_wavelet_transform(alm, L, 2.0, J0, args.N, nthreads=args.threads)}
        if not args.no_pys2let:
            import pys2let

            fns["s2let"] = lambda: pys2let.analysis_lm2wav(alm, 2.0, L, J0, args.N, 0, 0)
        t = _best(fns, args.rounds)
        line = (f"nside {nside}: directional wavelet transform N={args.N}, scales {J0}..{sc1.J}: "
                f"scatterdist {t['ours1']:.3f} s (1 thread), {t['oursT']:.3f} s ({args.threads} threads)")
        if "s2let" in t:
            line += f"; pys2let analysis_lm2wav {t['s2let']:.3f} s (1 thread): {t['s2let'] / t['ours1']:.1f}x scatterdist's 1-thread time"
        print(line, flush=True)


if __name__ == "__main__":
    main()
