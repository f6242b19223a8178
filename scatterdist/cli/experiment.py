"""``scatterdist experiment cmb``: the paper's CMB study end to end (simulate, scatter, train, report)."""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``experiment`` with its ``cmb`` subcommand."""
    from scatterdist.cluster import add_cluster_arguments

    exp = subparsers.add_parser("experiment", help="end-to-end experiments (cmb)",
                                description="End-to-end experiments built on the whole package.")
    sub = exp.add_subparsers(dest="experiment", metavar="EXPERIMENT")
    exp.set_defaults(func=lambda args: (exp.print_help(), 2)[1])
    p = sub.add_parser(
        "cmb",
        help="Gaussian vs non-Gaussian CMB skies: scattering models vs low-res CNN and specialist baselines",
        description=(
            "Reproduce the CMB result of McEwen et al. (ICLR 2022): simulate N Gaussian and N non-Gaussian "
            "skies per (alpha, seed) inside Dask tasks, scatter them (paper transform, signed option, "
            "low-resolution maps) into Zarr stores through the distributed pipeline, train the HybridCNN on "
            "each store, fit logistic baselines (power spectrum, pixel moments, wavelet moments, signed "
            "scattering invariants) on the same splits, choose the recommended scattering model on the "
            "validation split, and write OUT/cmb.md, OUT/cmb_alpha.png and OUT/cmb.json. "
            "Defaults are the full study (nside 512, L = 1024); --quick is a one-minute nside-64 run (2 seeds). "
            "Options given with --quick override its presets. Repeating a command resumes from OUT/cmb-work."
        ),
    )
    p.add_argument("--quick", action="store_true",
                   help="small preset: nside 64, 150 skies per class, alpha 0.05, 3 seeds, 4 epochs, hidden 8")
    p.add_argument("--nside", type=int, default=None, help="HEALPix nside of the skies (full default 512)")
    p.add_argument("--n-per-class", type=int, default=None, metavar="N",
                   help="skies per class for every (alpha, seed) (full default 50)")
    p.add_argument("--alpha", type=float, nargs="+", default=None, metavar="A",
                   help="non-Gaussianity amplitude(s) (full default 0.003 0.006 0.01)")
    p.add_argument("--seeds", type=int, default=None, help="independent replicates (skies, split, init; default 3)")
    p.add_argument("--folds", type=int, default=None, metavar="K",
                   help="K-fold evaluation of ONE set of skies per alpha (implies --seeds 1): round k tests on fold k, "
                        "validates on fold k+1 (mod K), trains on the rest; every sky is tested once, errors by "
                        "bootstrap over skies (default: the trainer's split, one per seed)")
    p.add_argument("--seed0", type=int, default=None, help="first seed value (default 0)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs per model (full default 10)")
    p.add_argument("--batch-size", type=int, default=None, help="maps per batch and per rank (default 16)")
    p.add_argument("--lr", type=float, default=None, help="Adam learning rate (default 3e-3)")
    p.add_argument("--hidden", type=int, default=None, help="channels of the equivariant layers (default 16)")
    p.add_argument("--layers", type=int, default=None, help="conv + nonlinearity blocks (default 2)")
    p.add_argument("--ranks", type=int, default=None,
                   help="training processes: 1 trains in-process, 2 or more under torchrun (DDP, gloo, loopback)")
    p.add_argument("--out", default=None, metavar="DIR", help="results directory (default results/)")
    p.add_argument("--work", default=None, metavar="DIR",
                   help="intermediate stores and runs (default OUT/cmb-work; reused when a run is repeated)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--models", nargs="+", default=None, metavar="MODEL",
                   help="models to run (default all; only the stores they need are computed): "
                        "scattering scattering_signed lowpass signed_invariants scattering_invariants "
                        "modulus_invariants covariance_invariants covariance_cnn power_spectrum pixel_moments "
                        "wavelet_moments cubic (cubic: the optimal cubic statistic T)")
    survey = p.add_argument_group("survey conditions (every sky of both classes; default: clean full skies)")
    survey.add_argument("--fwhm-arcmin", type=float, default=None, metavar="ARCMIN",
                        help="Gaussian beam FWHM in arcmin (issue 13: 5)")
    survey.add_argument("--noise-uk-arcmin", type=float, default=None, metavar="UK_ARCMIN",
                        help="white noise level in uK-arcmin (issue 13: 45)")
    survey.add_argument("--galactic-cut", type=float, default=None, metavar="DEG",
                        help="mask |b| < DEG degrees (issue 13: 20)")
    p.add_argument("--covariance-oversample", type=int, default=None, choices=(1, 2, 4), metavar="K",
                   help="oversampling of the scattering-covariance store (default 2: at 1 the finest "
                        "statistics move under rotation by up to 76%% of their spread across skies)")
    p.add_argument("--shard-size", type=int, default=None, metavar="K",
                   help="skies per store shard and per Dask task (default: even, 2-32, fewer at nside >= 1024 "
                        "so that a task fits a worker's memory)")
    add_cluster_arguments(p)
    p.set_defaults(func=run_cmb_command)


def config_from_args(args: argparse.Namespace):
    """The :class:`~scatterdist.experiments.CMBConfig` of the parsed flags (preset, then overrides)."""
    from scatterdist.experiments.cmb import FULL, QUICK, with_overrides

    for name in ("workers", "threads_per_worker", "shard_size"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    return with_overrides(
        QUICK if args.quick else FULL,
        nside=args.nside, n_per_class=args.n_per_class, alphas=tuple(args.alpha) if args.alpha else None,
        seeds=args.seeds if args.seeds is not None or args.folds is None else 1, folds=args.folds, seed0=args.seed0, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        hidden=args.hidden, layers=args.layers, ranks=args.ranks, out=args.out, work=args.work,
        cluster=args.cluster, workers=args.workers, threads_per_worker=args.threads_per_worker,
        scheduler_file=args.scheduler_file, progress=False if args.no_progress else None, shard_size=args.shard_size,
        models=tuple(args.models) if args.models else None, fwhm_arcmin=args.fwhm_arcmin, noise_uk_arcmin=args.noise_uk_arcmin, galactic_cut=args.galactic_cut,
        covariance_oversample=args.covariance_oversample,
    )


def run_cmb_command(args: argparse.Namespace) -> int:
    """Run the study and print its summary table; exit status 0."""
    from scatterdist.experiments.cmb import run_cmb
    from scatterdist.experiments.report import MODELS

    cfg = config_from_args(args)
    result = run_cmb(cfg)
    design = f"{cfg.seeds} seeds" if cfg.folds is None else f"{cfg.folds} folds"
    print(f"CMB study, nside {cfg.nside}, N = {cfg.n_per_class} per class, {design} "
          f"(this command {result['timings']['this invocation']:.0f} s):")
    for row in result["summary"]:
        print(f"  alpha={row['alpha']:g}  {MODELS[row['model']][0]:<40} {100 * row['mean']:5.1f}% "
              f"± {100 * row['se']:.1f}")
    print(f"wrote {cfg.out}/cmb.md, {cfg.out}/cmb_alpha.png, {cfg.out}/cmb.json")
    return 0


if __name__ == "__main__":  # pragma: no cover
    from scatterdist.cli import main

    sys.exit(main(["experiment", *sys.argv[1:]]))
