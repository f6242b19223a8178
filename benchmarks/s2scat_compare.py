"""Scattering covariances against the peer, ``s2scat`` (Mousset et al. 2024; JAX), on the same map.

s2scat needs JAX and s2fft, which scatterdist does not depend on, so the comparison runs in two
interpreters that exchange files:

    python benchmarks/s2scat_compare.py ours --L 256 --out /tmp/cmp          # writes alm.npy + ours.json
    S2_PYTHON benchmarks/s2scat_compare.py peer --L 256 --out /tmp/cmp       # s2scat's venv: peer.json
    python benchmarks/s2scat_compare.py report --out /tmp/cmp                # agreement and times

Matched definitions: s2scat with ``N = 1`` (axisymmetric wavelets), ``J_min = J0`` and lam = 2 uses
the scale-discretised kernels of ``ScatteringCovariance`` (S2LET's) divided by sqrt(2 pi) (the SO(3)
normalisation of its Wigner transforms), so its ``S1`` (mean of ``|W_j|``) and ``P00`` (mean of
``|W_j|^2``) are ours ``S1`` (before normalisation) over sqrt(2 pi) and ``S2`` over 2 pi.
Its ``C01`` / ``C11`` are complex, directional, and computed on MW sampling of each wavelet's own
bandlimit; ours are real, axisymmetric, on HEALPix grids: they are timed, not compared.
Time per map: best of ``--repeat`` calls after a warm-up (JIT compilation excluded for s2scat),
both with the threads the environment gives them (set ``OMP_NUM_THREADS`` / XLA flags alike).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np


def _best(fn, repeat: int) -> float:
    fn()
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return min(out)


def ours(args: argparse.Namespace) -> None:
    import healpy as hp

    from scatterdist import ScatteringCovariance
    from scatterdist.sims.skies import gaussian_cmb

    nside = args.L // 2
    cov = ScatteringCovariance(nside, L=args.L, J0=args.J0, normalize=False, nthreads=args.threads)
    f = gaussian_cmb(nside, 0)
    alm = hp.map2alm(f, lmax=args.L - 1, iter=3)
    f = hp.alm2map(alm, nside, lmax=args.L - 1)  # bandlimited: both codes see the same field
    os.makedirs(args.out, exist_ok=True)
    np.save(os.path.join(args.out, "alm.npy"), alm)
    inv = cov.invariants(f)
    seconds = _best(lambda: cov.invariants(f), args.repeat)
    kinds = [p.kind for p in cov.paths]
    pick = lambda k: [float(v) for v, kind in zip(inv, kinds) if kind == k]  # noqa: E731
    with open(os.path.join(args.out, "ours.json"), "w") as fh:
        json.dump({"L": args.L, "J0": cov.J0, "scales": list(cov.bank.scales), "S1": pick("S1"), "S2": pick("S2"),
                   "seconds": seconds, "n_statistics": cov.n_paths, "threads": args.threads}, fh, indent=1)


def peer(args: argparse.Namespace) -> None:
    import jax

    jax.config.update("jax_enable_x64", True)
    import s2fft
    import s2scat

    alm = np.load(os.path.join(args.out, "alm.npy"))
    flm = s2fft.sampling.reindex.flm_hp_to_2d_fast(alm, args.L)[:, args.L - 1:]  # reality: m >= 0 only
    config = s2scat.configure(args.L, 1, args.J0, reality=True, recursive=args.recursive)
    run = lambda: jax.block_until_ready(s2scat.scatter(flm, args.L, 1, args.J0, reality=True, config=config,  # noqa: E731
                                                       recursive=args.recursive))
    mean, var, S1, P00, C01, C11 = run()
    seconds = _best(run, args.repeat)
    with open(os.path.join(args.out, "peer.json"), "w") as fh:
        json.dump({"L": args.L, "J_min": args.J0, "S1": np.asarray(S1).real.tolist(),
                   "P00": np.asarray(P00).real.tolist(), "seconds": seconds,
                   "n_statistics": int(sum(np.asarray(x).size for x in (mean, var, S1, P00, C01, C11))),
                   "s2scat": getattr(s2scat, "__version__", "?"), "jax": jax.__version__}, fh, indent=1)


def report(args: argparse.Namespace) -> None:
    with open(os.path.join(args.out, "ours.json")) as fh:
        a = json.load(fh)
    with open(os.path.join(args.out, "peer.json")) as fh:
        b = json.load(fh)
    n = min(len(a["S1"]), len(b["S1"]))
    # s2scat's wavelets carry the SO(3) normalisation of its Wigner transforms: with N = 1 they are
    # S2LET's kernels over sqrt(2 pi), so its S1 is ours / sqrt(2 pi) and its P00 ours / (2 pi).
    c1, c2 = np.sqrt(2 * np.pi), 2 * np.pi
    print(f"L = {a['L']}, scales {a['scales']}: ours / s2scat per scale, and the difference after the "
          "wavelet normalisation (sqrt(2 pi) for S1, 2 pi for S2 = P00)")
    for k in range(n):
        r1, r2 = a["S1"][k] / b["S1"][k], a["S2"][k] / b["P00"][k]
        print(f"  j = {a['scales'][k]}: S1 ratio {r1:.4f} ({r1 / c1 - 1:+.1e})   S2/P00 ratio {r2:.4f} ({r2 / c2 - 1:+.1e})")
    print(f"time per map: ours {a['seconds']:.3f} s ({a['n_statistics']} statistics), "
          f"s2scat {b['seconds']:.3f} s ({b['n_statistics']} numbers, JAX {b['jax']})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("side", choices=("ours", "peer", "report"))
    parser.add_argument("--L", type=int, default=256)
    parser.add_argument("--J0", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", default="/tmp/s2scat-compare")
    parser.add_argument("--recursive", action="store_true",
                        help="s2scat's recursive (low-memory) transform instead of its precomputed matrices "
                             "(at L = 256 building the precomputed matrices and compiling took > 500 s here)")
    args = parser.parse_args()
    {"ours": ours, "peer": peer, "report": report}[args.side](args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
