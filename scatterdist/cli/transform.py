"""``scatterdist equivariance``: measure the rotation equivariance of a configuration."""

from __future__ import annotations

import argparse
import time


def add_transform_arguments(parser: argparse.ArgumentParser, nside_default: int | None = None) -> None:
    """The flags that define a :class:`~scatterdist.Scattering` (shared by several commands)."""
    parser.add_argument("--nside", type=int, default=nside_default, required=nside_default is None,
                        help="input resolution (power of two)")
    parser.add_argument("--L", type=int, default=None, help="bandlimit, lmax = L-1 (default 2*nside)")
    parser.add_argument("--lam", type=float, default=2.0, help="wavelet dilation factor (default 2)")
    parser.add_argument("--J0", type=int, default=None, help="lowest wavelet scale (default: lam**J0 closest to 16)")
    parser.add_argument("--depth", type=int, default=2, help="scattering depth (default 2)")
    parser.add_argument("--oversample", type=int, default=1, help="resolution factor per scale (1, 2, 4)")
    parser.add_argument("--analysis", choices=["quadrature", "lsq"], default="quadrature",
                        help="harmonic analysis of the input maps")
    parser.add_argument("--signed", action="store_true",
                        help="add signed first-order paths ((f*Psi_j)|f*Psi_j|)*Phi (keep the sign of f)")
    parser.add_argument("--powers", type=float, nargs="+", default=(), metavar="Q",
                        help="add first-order paths |f*Psi_j|**Q * Phi for each Q (> 0, != 1)")


def scattering_from_args(args: argparse.Namespace, **extra):
    from scatterdist import Scattering

    return Scattering(args.nside, L=args.L, lam=args.lam, J0=args.J0, depth=args.depth,
                      oversample=args.oversample, analysis=args.analysis,
                      signed=getattr(args, "signed", False), powers=tuple(getattr(args, "powers", ()) or ()),
                      **extra)


def _equivariance(args: argparse.Namespace) -> int:
    from scatterdist.stability import equivariance_by_kind

    sc = scattering_from_args(args, nthreads=args.threads)
    print(sc)
    start = time.perf_counter()
    rows = equivariance_by_kind(sc, n_trials=args.trials, seed=args.seed)
    print(f"{'order':>5}  {'kind':>7}  {'paths':>5}  {'mean error':>11}  {'max error':>11}")
    for r in rows:
        print(f"{r['order']:>5}  {r['kind']:>7}  {r['paths']:>5}  {r['mean']:>11.3e}  {r['max']:>11.3e}")
    print(f"{args.trials} random rotations of random red-spectrum maps, {time.perf_counter() - start:.1f} s")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "equivariance",
        help="measure rotation equivariance of the scattering transform",
        description="Compare S(R f) with R S(f) for random exact rotations R of random bandlimited "
        "maps and print the relative error per scattering order and path kind (modulus, signed, "
        "power).",
    )
    add_transform_arguments(p, nside_default=64)
    p.add_argument("--trials", type=int, default=4, help="random rotations (default 4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="SHT threads (default $OMP_NUM_THREADS or all cores)")
    p.set_defaults(func=_equivariance)
