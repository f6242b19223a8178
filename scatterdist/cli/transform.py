"""``scatterdist equivariance`` and ``scatterdist stability``: measured properties of a configuration."""

from __future__ import annotations

import argparse
import json
import os
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
    parser.add_argument("--N", type=int, default=1,
                        help="azimuthal band of the wavelets: 1 axisymmetric (default), N > 1 directional "
                        "(reduced over orientation to the mean and the first harmonic, h = 1)")


def scattering_from_args(args: argparse.Namespace, **extra):
    from scatterdist import Scattering

    return Scattering(args.nside, L=args.L, lam=args.lam, J0=args.J0, depth=args.depth,
                      oversample=args.oversample, analysis=args.analysis,
                      signed=getattr(args, "signed", False), powers=tuple(getattr(args, "powers", ()) or ()),
                      N=getattr(args, "N", 1), **extra)


def statistic_config(statistic: str, config: dict) -> dict:
    """Full configuration of the transform ``statistic`` (``"scattering"`` or ``"covariance"``) from
    the scatter command's transform settings (validated, defaults filled)."""
    from scatterdist import Scattering, ScatteringCovariance

    if statistic == "scattering":
        return Scattering(**config).config()
    if statistic != "covariance":
        raise ValueError(f"--statistic must be scattering or covariance, got {statistic!r}")
    config = dict(config)
    if config.pop("depth", 2) != 2:
        raise ValueError("--statistic covariance has fixed statistics (mean, S1..S4): drop --depth")
    return ScatteringCovariance(**config).config()


def _covariance_equivariance(args: argparse.Namespace) -> int:
    from scatterdist.equivariance import covariance_equivariance
    from scatterdist.scattering.covariance import ScatteringCovariance

    cov = ScatteringCovariance(args.nside, L=args.L, lam=args.lam, J0=args.J0, oversample=args.oversample,
                               analysis=args.analysis, nthreads=args.threads, N=args.N)
    print(cov)
    start = time.perf_counter()
    rows = covariance_equivariance(cov, n_trials=args.trials, seed=args.seed)
    print(f"{'kind':>8}  {'paths':>5}  {'mean error':>11}  {'max error':>11}  {'invariant mean':>14}  {'invariant max':>13}")
    for r in rows:
        print(f"{r['kind']:>8}  {r['paths']:>5}  {r['mean']:>11.3e}  {r['max']:>11.3e}  "
              f"{r['invariant_mean']:>14.3e}  {r['invariant_max']:>13.3e}")
    print(f"{args.trials} random rotations of random red-spectrum maps, {time.perf_counter() - start:.1f} s "
          "(invariant error: change of the spherical mean over the rms of the local map)")
    return 0


def _equivariance(args: argparse.Namespace) -> int:
    from scatterdist.stability import equivariance_by_kind

    if args.statistic == "covariance":
        if args.depth != 2 or args.signed or args.powers:
            raise ValueError("--statistic covariance takes no --depth/--signed/--powers (its statistics are fixed)")
        return _covariance_equivariance(args)
    sc = scattering_from_args(args, nthreads=args.threads)
    print(sc)
    start = time.perf_counter()
    rows = equivariance_by_kind(sc, n_trials=args.trials, seed=args.seed)
    w = max(7, *(len(r["kind"]) for r in rows))
    print(f"{'order':>5}  {'kind':>{w}}  {'paths':>5}  {'mean error':>11}  {'max error':>11}")
    for r in rows:
        print(f"{r['order']:>5}  {r['kind']:>{w}}  {r['paths']:>5}  {r['mean']:>11.3e}  {r['max']:>11.3e}")
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
    p.add_argument("--statistic", choices=["scattering", "covariance"], default="scattering",
                   help="scattering (default) or covariance (ScatteringCovariance: rows per kind mean/S1..S4)")
    p.add_argument("--trials", type=int, default=4, help="random rotations (default 4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="SHT threads (default $OMP_NUM_THREADS or all cores)")
    p.set_defaults(func=_equivariance)
    register_stability(subparsers)


def _stability(args: argparse.Namespace) -> int:
    from scatterdist.stability import deformation_stability, plot_stability

    sc = scattering_from_args(args, nthreads=args.threads)
    print(sc)
    start = time.perf_counter()
    rows = deformation_stability(sc, args.amplitudes, n_maps=args.maps, lmax_displacement=args.lmax_displacement,
                                 seed=args.seed, nthreads=args.threads or 1)
    names = list(rows[0]["scattering"])
    head = f"{'pixels':>7}  {'arcmin':>7}  {'map':>9}  {'wavelets':>9}  " + "  ".join(f"{'S order ' + n:>12}" for n in names)
    print("relative change ||X(f_tau) - X(f)|| / ||X(f)|| under smooth random displacements of RMS amplitude:")
    print(head)
    for r in rows:
        print(f"{r['amplitude_pixels']:>7.3g}  {r['amplitude_arcmin']:>7.2f}  {r['map']:>9.3e}  {r['wavelets']:>9.3e}  "
              + "  ".join(f"{r['scattering'][n]:>12.3e}" for n in names))
    moved = [r for r in rows if r["amplitude_pixels"] > 0 and r["scattering"].get("1", 0) > 0]
    if moved:
        ratio = min(r["map"] / r["scattering"]["1"] for r in moved)
        print(f"map change / order-1 change: at least {ratio:.1f}x over these amplitudes")
    print(f"{args.maps} random red-spectrum maps, displacement potential lmax {args.lmax_displacement}, "
          f"{time.perf_counter() - start:.1f} s")
    if args.plot:
        os.makedirs(os.path.dirname(os.path.abspath(args.plot)), exist_ok=True)
        title = (f"nside {sc.nside}, L = {sc.L}, lam {sc.lam:g}, J0 {sc.J0}, depth {sc.depth}, oversample "
                 f"{sc.oversample}; {args.maps} maps, displacement lmax {args.lmax_displacement}")
        plot_stability(args.plot, rows, title=title)
        print(f"wrote {args.plot}")
    if args.markdown:
        _stability_markdown(args, sc, rows, names, time.perf_counter() - start)
        print(f"wrote {args.markdown}")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as fh:
            json.dump({"config": sc.config(), "maps": args.maps, "lmax_displacement": args.lmax_displacement,
                       "seed": args.seed, "rows": rows}, fh, indent=1)
        print(f"wrote {args.json}")
    return 0


def _stability_markdown(args: argparse.Namespace, sc, rows: list[dict], names: list[str], seconds: float) -> None:
    """The stability table as a results page (generated: rerun the command to update it)."""
    import shlex
    import sys

    cmd = shlex.join(["scatterdist", "stability", *sys.argv[2:]]) if sys.argv[1:2] == ["stability"] else "scatterdist stability"
    lines = [
        "# Stability to small deformations",
        "",
        "Generated by `scatterdist stability`; do not edit (rerun the command below).",
        "",
        "```", cmd, "```", "",
        f"Transform: `{sc.config()}`. {args.maps} random red-spectrum maps (C_l = 1/(l(l+1)), bandlimited at "
        f"L = {sc.L}), each deformed by one smooth random displacement field (gradient of a random potential "
        f"bandlimited at l <= {args.lmax_displacement}) scaled to the RMS amplitude below; the deformed map "
        "f_tau(n) = f(n + d(n)) is the harmonic series evaluated exactly at the displaced points "
        "(`ducc0.sht.synthesis_general`). Entries: relative change ||X(f_tau) - X(f)|| / ||X(f)|| (L2 on the "
        "sphere, pooled over maps) of the map, of its wavelet coefficients f * Psi_j (all scales) and of the "
        "scattering coefficients of each order.",
        "",
        "| RMS displacement (pixels) | (arcmin) | map | wavelets | " + " | ".join(f"scattering order {n}" for n in names)
        + " | map / order 1 |",
        "|---|---|---|---|" + "---|" * len(names) + "---|",
    ]
    for r in rows:
        s1 = r["scattering"].get("1", float("nan"))
        ratio = f"{r['map'] / s1:.1f}x" if s1 > 0 and r["amplitude_pixels"] > 0 else "-"
        lines.append(f"| {r['amplitude_pixels']:g} | {r['amplitude_arcmin']:.1f} | {r['map']:.3e} | {r['wavelets']:.3e} | "
                     + " | ".join(f"{r['scattering'][n]:.3e}" for n in names) + f" | {ratio} |")
    lines += ["", f"![relative change against amplitude]({os.path.basename(args.plot)})" if args.plot else "",
              "", f"Wall time: {seconds:.1f} s.", ""]
    os.makedirs(os.path.dirname(os.path.abspath(args.markdown)), exist_ok=True)
    with open(args.markdown, "w") as fh:
        fh.write("\n".join(lines))


def register_stability(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "stability",
        help="measure stability of the scattering transform to small deformations",
        description="Deform random bandlimited maps by smooth random displacement fields of growing RMS "
        "amplitude (exact resampling at the displaced points with ducc0) and print the relative change of "
        "the map, of its wavelet coefficients and of the scattering coefficients per order.",
    )
    add_transform_arguments(p, nside_default=64)
    p.add_argument("--amplitudes", type=float, nargs="+", default=[0.1, 0.25, 0.5, 1.0, 2.0], metavar="A",
                   help="RMS displacements in pixel units (default 0.1 0.25 0.5 1 2)")
    p.add_argument("--maps", type=int, default=2, help="random maps (default 2)")
    p.add_argument("--lmax-displacement", type=int, default=8,
                   help="bandlimit of the displacement potential (default 8: smooth fields)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="SHT threads (default $OMP_NUM_THREADS or all cores)")
    p.add_argument("--plot", default=None, metavar="PNG", help="write the change-vs-amplitude plot here")
    p.add_argument("--json", default=None, metavar="FILE", help="write the table as JSON here")
    p.add_argument("--markdown", default=None, metavar="MD", help="write the table as a results page here")
    p.set_defaults(func=_stability)
