"""``scatterdist scatter`` (maps -> Zarr store of coefficients, on Dask) and ``scatterdist info``.

Exit status of ``scatter``: 0 when every map of the store is ok, 1 when some map failed (a
table of failures is printed), 2 for a refused run (store locked, other configuration, bad
inputs or options).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import numpy as np

EXIT_OK, EXIT_FAILED_MAPS, EXIT_REFUSED = 0, 1, 2
_TABLE_ROWS = 50


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``scatter`` and ``info`` subcommands."""
    from scatterdist.cluster import add_cluster_arguments

    p = subparsers.add_parser(
        "scatter",
        help="scattering coefficients of many maps into a resumable Zarr store (Dask)",
        description="Scatter HEALPix maps into a sharded Zarr store with Dask. INPUTS are FITS "
                    "files, globs ('dir/*.fits'), .txt lists of FITS paths, .zarr stores with a "
                    "maps (map, pixel) variable, or simulation specs such as "
                    "sim:kind=mixed,n=64,nside=64,seed=0,alpha=1.0. Running the same command "
                    "again resumes: only unfinished shards are computed.",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUTS")
    p.add_argument("--output", "-o", required=True, metavar="STORE", help="Zarr store directory")
    p.add_argument("--labels", default=None, metavar="CSV", help="CSV file with columns id,label")
    t = p.add_argument_group("transform")
    t.add_argument("--nside", type=int, default=None, help="input nside (default: from the inputs)")
    t.add_argument("--L", type=int, default=None, help="bandlimit (default 2*nside)")
    t.add_argument("--J0", type=int, default=None, help="lowest wavelet scale (default: lam**J0 ~ 16)")
    t.add_argument("--lam", type=float, default=2.0, help="dilation factor (default 2)")
    t.add_argument("--depth", type=int, default=2, help="scattering order (default 2)")
    t.add_argument("--statistic", choices=("scattering", "covariance"), default="scattering",
                   help="scattering (default) or covariance (ScatteringCovariance: mean, S1..S4; no --depth)")
    t.add_argument("--oversample", type=int, default=1, help="oversampling of each scale (default 1)")
    t.add_argument("--analysis", choices=("quadrature", "lsq"), default="quadrature")
    t.add_argument("--backend", choices=("numpy", "torch"), default="numpy",
                   help="numpy (ducc0, CPU) or torch (each worker's GPU when it has one, see --device)")
    t.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto",
                   help="torch backend: auto (default: the worker's GPU when torch sees one, else its "
                        "CPU; on every cluster kind), cuda (refused unless every worker sees a GPU), cpu")
    from scatterdist.sphere.mask import DEFAULT_APODIZE_DEG, DEFAULT_MIN_COVERAGE, DEFAULT_MIN_FSKY

    d = p.add_argument_group("cut sky and fields")
    d.add_argument("--fields", default="I", metavar="I,Q,U,E,B",
                   help="what is scattered from each input, any subset in any order (default I): "
                        "I, Q, U are FITS fields 0, 1, 2; E and B are made from Q and U by the "
                        "spin-2 transform. Stored as coefficients (map, field, path, pixel)")
    d.add_argument("--mask", default=None, metavar="PATH",
                   help="a mask for every map (FITS 0/1 or weights in [0, 1], any nside, or "
                        "HealSparse), multiplied with each map's own mask (its UNSEEN/NaN pixels, "
                        "HealSparse coverage); a mask that cannot be used refuses the run")
    d.add_argument("--min-fsky", type=float, default=DEFAULT_MIN_FSKY, metavar="F",
                   help=f"maps whose usable sky fraction is below F fail (default {DEFAULT_MIN_FSKY})")
    d.add_argument("--apodize", type=float, default=DEFAULT_APODIZE_DEG, metavar="DEG",
                   help="cosine apodisation of masks inside their edge, in degrees "
                        f"(default {DEFAULT_APODIZE_DEG}; 0: none)")
    d.add_argument("--min-coverage", type=float, default=DEFAULT_MIN_COVERAGE, metavar="C",
                   help="output pixels of a path whose coverage (what the mask lets through to "
                        f"them) is below C are NaN (default {DEFAULT_MIN_COVERAGE})")
    add_cluster_arguments(p)
    r = p.add_argument_group("run")
    r.add_argument("--shard-size", type=int, default=None, metavar="K",
                   help="maps per shard (default: ceil(n/16) in [1, 32]; the store's when resuming)")
    r.add_argument("--retries", type=int, default=3, help="Dask retries per shard task (default 3)")
    r.add_argument("--retry-failed", action="store_true", help="recompute maps whose status is -1")
    r.add_argument("--overwrite", action="store_true", help="delete an existing store first")
    r.add_argument("--gpu-batch", type=int, default=None, metavar="B",
                   help="maps per transform call, independent of --shard-size (default 32 on a GPU, "
                        "halved automatically when the GPU runs out of memory; 8 on CPU); a torch "
                        "task holds enough shards for 4 such batches and loads the next batches "
                        "while the device transforms one")
    r.add_argument("--prefetch", type=int, default=2, metavar="N",
                   help="batches loaded ahead of the one being transformed (default 2; 0: none)")
    r.add_argument("--progress", action="store_true", default=None,
                   help="draw the progress bar even when stderr is not a terminal")
    r.add_argument("--no-progress", action="store_false", dest="progress",
                   help="no progress bar (default: a bar only on a terminal)")
    p.set_defaults(func=run_scatter)

    q = subparsers.add_parser("info", help="configuration and status counts of a store",
                              description="Print a scatter store's configuration and status counts.")
    q.add_argument("store", metavar="STORE")
    q.add_argument("--failures", action="store_true", help="list every failed map")
    q.add_argument("--coverage", action="store_true",
                   help="list the covered fraction of every path (default: the least covered 3)")
    q.set_defaults(func=run_info)


def _config(args: argparse.Namespace, nside: int) -> dict[str, Any]:
    config: dict[str, Any] = {"nside": nside, "lam": args.lam, "depth": args.depth,
                              "oversample": args.oversample, "analysis": args.analysis,
                              "apodize": args.apodize, "min_coverage": args.min_coverage}
    if args.L is not None:
        config["L"] = args.L
    if args.J0 is not None:
        config["J0"] = args.J0
    from scatterdist.cli.transform import statistic_config

    full = statistic_config(args.statistic, config)  # validates and fills the defaults
    if args.backend == "torch":
        full["backend"] = "torch"
        full["device"] = args.device
    elif args.device != "auto":
        raise ValueError(f"--device {args.device} needs --backend torch (the numpy backend runs on CPU)")
    return full


def _gpu_setup(args: argparse.Namespace, client: Any) -> dict[str, float] | None:
    """Check ``--device`` against what the workers see, say which devices run, pick resources.

    Returns the Dask resources for every task: ``{"GPU": 1}`` on ``--cluster cuda`` and,
    with the torch backend, whenever every worker advertises a ``GPU`` resource (the deploy
    scripts' GPU workers do). Raises ValueError for ``--device cuda`` on a worker without GPU.
    """
    from scatterdist.pipeline import worker_devices

    resources = {"GPU": 1} if args.cluster == "cuda" else None
    if args.backend != "torch":
        return resources
    try:  # batch jobs start the client beside their workers: give one a moment to join
        client.wait_for_workers(1, timeout=30)
    except (TimeoutError, OSError):
        print("torch backend: no worker has joined yet; each will use its GPU if it has one "
              f"(--device {args.device})", file=sys.stderr, flush=True)
    workers = client.scheduler_info().get("workers", {})
    if workers and all(w.get("resources", {}).get("GPU", 0) >= 1 for w in workers.values()):
        resources = {"GPU": 1}
    infos = client.run(worker_devices) if workers else {}
    gpu = [a for a, i in infos.items() if i["cuda"]]
    if args.device == "cuda" and len(gpu) < len(infos):
        raise ValueError(f"--device cuda but {len(infos) - len(gpu)} of {len(infos)} worker(s) see no "
                         "CUDA device: use --device auto (CPU where there is no GPU), or GPU workers "
                         "(--cluster cuda, deploy/slurm/scatter-gpu.sbatch)")
    names = sorted({n for i in infos.values() for n in i["names"]})
    if infos:
        where = (f"{len(gpu)} of {len(infos)} worker(s) see a GPU ({', '.join(names)})" if gpu
                 else f"none of {len(infos)} worker(s) sees a GPU")
        runs = "CPU" if args.device == "cpu" or not gpu else "each worker's GPU (CPU on the others)"
        print(f"torch backend, --device {args.device}: {where}; transforms run on {runs}"
              + (f", batches of {args.gpu_batch}" if args.gpu_batch else ""), file=sys.stderr, flush=True)
    return resources


def _failures_table(ids: Any, errors: Any, stream, limit: int = _TABLE_ROWS) -> None:
    rows = list(zip(ids, errors))
    width = min(40, max([len("map")] + [len(str(i)) for i, _ in rows]))
    print(f"\n{len(rows)} failed map(s):", file=stream)
    print(f"  {'map':<{width}}  error", file=stream)
    for i, e in rows[:limit]:
        print(f"  {str(i):<{width}}  {e}", file=stream)
    if len(rows) > limit:
        print(f"  ... and {len(rows) - limit} more (scatterdist info STORE --failures)", file=stream)


def run_scatter(args: argparse.Namespace) -> int:
    """Handler of ``scatterdist scatter``."""
    from scatterdist import store as zstore
    from scatterdist.inputs import Catalog, CatalogError
    from scatterdist.cluster import ClusterError, client_from_args
    from scatterdist.pipeline import check_data_options, scatter

    try:
        catalog = Catalog.from_inputs(args.inputs, labels_csv=args.labels)
        nside = args.nside if args.nside is not None else catalog.infer_nside()
        config = _config(args, nside)
        check_data_options(nside, args.fields, args.mask, args.min_fsky)
    except (CatalogError, ValueError) as exc:  # MaskError is a ValueError
        print(f"scatterdist scatter: refused: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    print(f"{len(catalog)} maps, nside {nside}, config {json.dumps(config, sort_keys=True)}",
          file=sys.stderr, flush=True)
    try:
        with client_from_args(args) as client:
            resources = _gpu_setup(args, client)
            summary = scatter(catalog, args.output, config, client=client,
                              shard_size=args.shard_size, retries=args.retries,
                              retry_failed=args.retry_failed, progress=args.progress,
                              overwrite=args.overwrite, resources=resources,
                              batch_size=args.gpu_batch, prefetch=args.prefetch,
                              fields=args.fields, mask=args.mask, min_fsky=args.min_fsky)
    except (zstore.StoreError, ClusterError, ValueError) as exc:
        print(f"scatterdist scatter: refused: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except OSError as exc:  # cannot reach the scheduler, cannot write the store
        print(f"scatterdist scatter: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    print(f"computed {summary.shards_computed} shard(s), skipped {summary.shards_skipped}; "
          f"maps ok {summary.ok}, failed {summary.failed}, skipped {summary.skipped}; "
          f"{summary.maps_per_s:.2f} maps/s over {summary.seconds:.1f} s"
          + (f"; tasks per device {summary.devices}, devices busy {100 * summary.device_busy:.0f}% "
             "of their tasks' time" if summary.devices and args.backend == "torch" else ""), flush=True)
    ds = zstore.open_coefficients(args.output)
    status = ds["status"].values
    if (status == zstore.STATUS_OK).all():
        print(f"all {status.size} maps ok -> {args.output}")
        return EXIT_OK
    bad = status != zstore.STATUS_OK
    _failures_table(ds["map"].values[bad], ds["error"].values[bad], sys.stdout)
    return EXIT_FAILED_MAPS


def _print_sky(summary: dict[str, Any], all_paths: bool = False) -> None:
    """The fields / mask / sky fraction / coverage lines of ``scatterdist info``."""
    print("fields     " + ", ".join(summary["fields"]))
    print(f"mask       {summary['mask'] or 'none (each map: its own UNSEEN/NaN pixels or coverage)'}")
    sky = summary["sky_fraction"]
    if sky is None:
        print("sky        full sky (store without masks)" if not summary["coverage_layout"]
              else "sky        no map done yet")
    else:
        print(f"sky        fraction min {sky['min']:.3f}, median {sky['median']:.3f}, max {sky['max']:.3f} "
              f"over {sky['n']} map(s)")
    cov = summary["coverage"]
    if cov is not None:
        per_path = sorted(cov["per_path"].items(), key=lambda kv: (np.nan_to_num(kv[1], nan=-1.0), kv[0]))
        shown = per_path if all_paths else per_path[:3]
        print(f"coverage   {summary['coverage_layout']}: mean {cov['mean']:.3f}; {100 * cov['covered']:.1f}% "
              f"of output pixels have coverage >= {cov['min_coverage']:g} (the rest are NaN)")
        print(("           per path: " if all_paths else "           least covered: ")
              + ", ".join(f"{k} {100 * v:.1f}%" for k, v in shown)
              + ("" if all_paths else " (--coverage lists every path)"))


def run_info(args: argparse.Namespace) -> int:
    """Handler of ``scatterdist info``."""
    from scatterdist import store as zstore

    try:
        ds = zstore.open_coefficients(args.store)
    except zstore.StoreError as exc:
        print(f"scatterdist info: error: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    attrs = ds.attrs
    print(f"store      {args.store}")
    print(f"created    {attrs.get('created')} by scatterdist {attrs.get('scatterdist_version')}")
    config = json.loads(attrs.get("scattering_config", "{}"))
    print("config     " + ", ".join(f"{k}={v}" for k, v in config.items()))
    print(f"hash       {attrs.get('config_hash')}")
    fields = f"field={ds.sizes['field']} " if "field" in ds.sizes else ""
    print(f"shape      map={ds.sizes['map']} {fields}path={ds.sizes['path']} pixel={ds.sizes['pixel']} "
          f"(nside_out {attrs.get('nside_out')}), shard size {attrs.get('shard_size')}")
    _print_sky(zstore.mask_summary(args.store), args.coverage)
    print("paths      " + ", ".join(str(p) for p in ds["path"].values))
    status = ds["status"].values
    counts = {name: int((status == code).sum()) for name, code in
              (("ok", zstore.STATUS_OK), ("failed", zstore.STATUS_FAILED), ("todo", zstore.STATUS_TODO))}
    print("status     " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    if "label" in ds:
        labels, n = np.unique(ds["label"].values, return_counts=True)
        print("labels     " + ", ".join(f"{int(a)}: {int(b)}" for a, b in zip(labels, n)))
    bad = status == zstore.STATUS_FAILED
    if bad.any():
        ids, errs = ds["map"].values[bad], ds["error"].values[bad]
        _failures_table(ids, errs, sys.stdout, limit=len(ids) if args.failures else 5)
    return EXIT_OK
