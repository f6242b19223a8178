"""``scatterdist scatter`` (maps -> Zarr store of coefficients, on Dask), ``scatterdist info`` and
``scatterdist verify``.

Exit status of ``scatter``: 0 when every map of the store is ok, 1 when some map failed or is
still todo (a table of failures, one line per map, says which failed on their input and which on
the machine, and how to retry each), 2 for a refused run (an output that is not a store path, a
locked store, other configuration, bad inputs or options, a damaged ``status``). ``verify``: 0
sound, 1 maps marked todo, 2 refused. Tracebacks only with ``--debug``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Iterator
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
    p.add_argument("--labels", default=None, metavar="CSV",
                   help="CSV file with columns id (or map) and label (any integer; -1: none)")
    t = p.add_argument_group("transform")
    t.add_argument("--nside", type=int, default=None,
                   help="run nside; FITS maps of another nside are resampled to it in harmonic space "
                        "(default: the first input's header nside, and maps of another nside fail)")
    t.add_argument("--L", type=int, default=None, help="bandlimit (default 2*nside)")
    t.add_argument("--J0", type=int, default=None, help="lowest wavelet scale (default: lam**J0 ~ 16)")
    t.add_argument("--lam", type=float, default=2.0, help="dilation factor (default 2)")
    t.add_argument("--depth", type=int, default=2, help="scattering order (default 2)")
    t.add_argument("--statistic", choices=("scattering", "covariance"), default="scattering",
                   help="scattering (default) or covariance (ScatteringCovariance: mean, S1..S4; no --depth)")
    t.add_argument("--oversample", type=int, default=1, help="oversampling of each scale (default 1)")
    t.add_argument("--analysis", choices=("quadrature", "lsq"), default="quadrature")
    t.add_argument("--N", type=int, default=1,
                   help="azimuthal band of the wavelets: 1 axisymmetric (default), N > 1 directional "
                        "(either backend; scattering and covariance paths gain the coordinate orientation_harmonic)")
    t.add_argument("--backend", choices=("numpy", "torch"), default="numpy",
                   help="numpy (ducc0, CPU) or torch (each worker's GPU when it has one, see --device)")
    t.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto",
                   help="torch backend: auto (default: the worker's GPU when torch sees one, else its "
                        "CPU; on every cluster kind), cuda (refused unless every worker sees a GPU), cpu")
    from scatterdist.sphere.mask import DEFAULT_APODIZE_DEG, DEFAULT_MIN_COVERAGE, DEFAULT_MIN_FSKY

    d = p.add_argument_group("cut sky and fields")
    d.add_argument("--fields", default="I", metavar="I,Q,U,E,B",
                   help="what is scattered from each input, any subset in any order (default I): "
                        "I, Q, U are found by FITS column name (TEMPERATURE/I_STOKES/I, Q_POLARISATION/"
                        "Q_STOKES/Q, U_...); E and B are made from Q and U by the "
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
    r.add_argument("--retries", type=int, default=3,
                   help="Dask retries per shard task when it raises or its worker dies (default 3, >= 0)")
    r.add_argument("--retry-failed", action="store_true",
                   help="also recompute maps that failed on their input (maps that failed on the "
                        "machine are retried by every run)")
    r.add_argument("--overwrite", action="store_true",
                   help="replace an existing scatterdist store (nothing else is ever deleted)")
    r.add_argument("--keep-changed-inputs", action="store_true",
                   help="on resume, keep the results of maps whose input file changed since they "
                        "were computed (default: recompute them); they are listed either way")
    r.add_argument("--debug", action="store_true",
                   help="show worker logs and the tracebacks of failed tasks")
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
                              description="Print a scatter store's configuration, status counts, "
                                          "a running writer and damaged shards (quick check).")
    q.add_argument("store", metavar="STORE")
    q.add_argument("--failures", action="store_true", help="list every failed map")
    q.add_argument("--coverage", action="store_true",
                   help="list the covered fraction of every path (default: the least covered 3)")
    q.set_defaults(func=run_info)

    v = subparsers.add_parser(
        "verify", help="read every shard of a store; mark damaged maps todo",
        description="Read every chunk of a store (missing, truncated or checksum-failing chunks; "
                    "maps that read as NaN although their status is ok), mark the damaged maps "
                    "todo (status 0) and list them: the next scatter run recomputes them. Exit 0 "
                    "when nothing is damaged, 1 when maps were marked, 2 when refused.")
    v.add_argument("store", metavar="STORE")
    v.add_argument("--quick", action="store_true",
                   help="read only the shard indexes (the check every resume runs)")
    v.add_argument("--inputs", action="store_true",
                   help="also re-read every input file and compare the sha256 of its pixels with "
                        "the recorded one; maps whose input changed are marked todo")
    v.add_argument("--dry-run", action="store_true", help="report only; change nothing")
    v.set_defaults(func=run_verify)


def _config(args: argparse.Namespace, nside: int) -> dict[str, Any]:
    config: dict[str, Any] = {"nside": nside, "lam": args.lam, "depth": args.depth,
                              "oversample": args.oversample, "analysis": args.analysis,
                              "apodize": args.apodize, "min_coverage": args.min_coverage}
    if args.L is not None:
        config["L"] = args.L
    if args.J0 is not None:
        config["J0"] = args.J0
    if args.N != 1:
        config["N"] = args.N
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


def _kind_name(code: int) -> str:
    from scatterdist import store as zstore

    return {zstore.FAILURE_INPUT: "input", zstore.FAILURE_MACHINE: "machine"}.get(int(code), "")


def _failures_table(table: Any, rows: np.ndarray, stream, limit: int = _TABLE_ROWS) -> None:
    """One line per failed map (id, input/machine, reason), then how to retry each kind."""
    from scatterdist import store as zstore

    ids, errs, kinds = table.ids[rows], table.errors[rows], table.failure[rows]
    width = min(40, max([len("map")] + [len(str(i)) for i in ids]))
    print(f"\n{len(ids)} failed map(s):", file=stream)
    print(f"  {'map':<{width}}  {'failed on':<9}  error", file=stream)
    for i, k, e in list(zip(ids, kinds, errs))[:limit]:
        print(f"  {str(i):<{width}}  {_kind_name(k) or '?':<9}  {zstore.one_line(e)}", file=stream)
    if len(ids) > limit:
        print(f"  ... and {len(ids) - limit} more (scatterdist info STORE --failures)", file=stream)
    n_machine = int(np.sum(kinds == zstore.FAILURE_MACHINE))
    n_input = len(ids) - n_machine
    if n_machine:
        print(f"{n_machine} map(s) failed on the machine (worker lost, out of memory, no space): "
              "run the same command again to retry them", file=stream)
    if n_input:
        print(f"{n_input} map(s) failed on their input: fix the inputs, then run the same command "
              "with --retry-failed to recompute them", file=stream)


@contextlib.contextmanager
def _quiet_workers(debug: bool) -> Iterator[None]:
    """Without ``--debug``, workers started by this command log errors only (no per-task
    tracebacks on the terminal: each failure is one line of the closing table). Dask reads
    ``DASK_LOGGING`` in every worker process it spawns; both it and the in-process logger level
    are put back afterwards."""
    import logging

    if debug:
        yield
        return
    logger = logging.getLogger("distributed.worker")
    old_env, old_level = os.environ.get("DASK_LOGGING"), logger.level
    if old_env is None:
        os.environ["DASK_LOGGING"] = repr({"distributed.worker": "critical"})
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(old_level)
        if old_env is None:
            os.environ.pop("DASK_LOGGING", None)


def _say_checks(summary: Any) -> None:
    """The resume's findings: damaged maps (recomputed) and changed inputs, one line each."""
    for mid, why in summary.damaged:
        print(f"damaged: {mid}: {why} (recomputed)", file=sys.stderr)
    if summary.damaged:
        print(f"{len(summary.damaged)} map(s) were damaged on disk and are recomputed: "
              + ", ".join(m for m, _ in summary.damaged[:20])
              + (" ..." if len(summary.damaged) > 20 else ""), file=sys.stderr)
    if summary.changed:
        what = "recomputed" if summary.recomputed_changed else "KEPT (--keep-changed-inputs)"
        print(f"{len(summary.changed)} map(s) whose input changed since they were computed, {what}: "
              + ", ".join(f"{m} ({why})" for m, why in summary.changed[:20])
              + (" ..." if len(summary.changed) > 20 else ""), file=sys.stderr)
    if summary.retried_machine:
        print(f"retrying {summary.retried_machine} map(s) that failed on the machine earlier",
              file=sys.stderr)


def run_scatter(args: argparse.Namespace) -> int:
    """Handler of ``scatterdist scatter``."""
    from scatterdist import store as zstore
    from scatterdist.cluster import ClusterError, client_from_args
    from scatterdist.inputs import Catalog, CatalogError, plan_inputs
    from scatterdist.pipeline import check_data_options, scatter

    if args.retries < 0:
        print(f"scatterdist scatter: refused: --retries must be >= 0, got {args.retries}", file=sys.stderr)
        return EXIT_REFUSED
    try:
        zstore.check_output(args.output, args.overwrite)  # before anything is touched
        if zstore.store_kind(args.output) == "store" and not args.overwrite:
            zstore.layout(args.output)  # a store this version cannot resume: say so before starting
        writer = zstore.live_writer(args.output)
        if writer is not None:  # the run would be refused by the lock: say so before starting
            raise zstore.StoreLockedError(
                f"store {args.output} is being written by pid {writer.get('pid')} on host "
                f"{writer.get('host')} since {writer.get('time')}: wait for it to finish")
    except zstore.StoreError as exc:
        print(f"scatterdist scatter: refused: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    try:
        catalog = Catalog.from_inputs(args.inputs, labels_csv=args.labels)
        plan = plan_inputs(catalog, args.nside, args.mask)  # nside rule, resampling, mask frame
        catalog, nside = plan.catalog, plan.nside
        config = _config(args, nside)
        check_data_options(nside, args.fields, args.mask, args.min_fsky)
    except (CatalogError, ValueError) as exc:  # MaskError is a ValueError
        print(f"scatterdist scatter: refused: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    for line in plan.lines:
        print(line, file=sys.stderr)
    print(f"{len(catalog)} maps, nside {nside}, config {json.dumps(config, sort_keys=True)}",
          file=sys.stderr, flush=True)
    try:
        # Only the plain local cluster's workers are quietened: jobqueue-local workers, for one,
        # are watched through their log (and workers of other clusters are not ours to configure).
        local = (getattr(args, "cluster", None) or "local") == "local"
        with _quiet_workers(args.debug or not local), client_from_args(args) as client:
            resources = _gpu_setup(args, client)
            summary = scatter(catalog, args.output, config, client=client,
                              shard_size=args.shard_size, retries=args.retries,
                              retry_failed=args.retry_failed, progress=args.progress,
                              overwrite=args.overwrite, resources=resources,
                              batch_size=args.gpu_batch, prefetch=args.prefetch,
                              fields=args.fields, mask=args.mask, min_fsky=args.min_fsky,
                              keep_changed=args.keep_changed_inputs)
    except zstore.DamagedStoreError as exc:
        print(f"scatterdist: error: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except (zstore.StoreError, ClusterError, ValueError) as exc:
        print(f"scatterdist scatter: refused: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except OSError as exc:  # cannot reach the scheduler, cannot write the store (disk full)
        if args.debug:
            raise
        print(f"scatterdist: error: {type(exc).__name__}: {zstore.one_line(str(exc))} "
              f"(store {args.output})", file=sys.stderr)
        return EXIT_REFUSED
    _say_checks(summary)
    if args.debug:
        for tb in summary.tracebacks:
            print(tb, file=sys.stderr)
    print(f"computed {summary.shards_computed} shard(s), skipped {summary.shards_skipped}; "
          f"maps ok {summary.ok}, failed {summary.failed}, skipped {summary.skipped}; "
          f"{summary.maps_per_s:.2f} maps/s over {summary.seconds:.1f} s"
          + (f"; tasks per device {summary.devices}, devices busy {100 * summary.device_busy:.0f}% "
             "of their tasks' time" if summary.devices and args.backend == "torch" else ""), flush=True)
    try:
        table = zstore.read_status_table(args.output)
    except zstore.StoreError as exc:
        print(f"scatterdist: error: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    status = table.status
    if (status == zstore.STATUS_OK).all():
        print(f"all {status.size} maps ok -> {args.output}")
        return EXIT_OK
    failed = status == zstore.STATUS_FAILED
    if failed.any():
        _failures_table(table, failed, sys.stdout)
    todo = int(np.sum(status == zstore.STATUS_TODO))
    if todo:
        print(f"{todo} map(s) not computed yet: run the same command again")
    return EXIT_FAILED_MAPS


def _print_sky(summary: dict[str, Any], all_paths: bool = False) -> None:
    """The fields / mask / sky fraction / coverage lines of ``scatterdist info``."""
    print("fields     " + ", ".join(summary["fields"]))
    print(f"mask       {summary['mask'] or 'none (each map: its own UNSEEN/NaN pixels or coverage)'}")
    sky = summary.get("sky_fraction")
    if sky is None:
        print("sky        full sky (store without masks)" if not summary["coverage_layout"]
              else "sky        no map done yet")
    else:
        print(f"sky        fraction min {sky['min']:.3f}, median {sky['median']:.3f}, max {sky['max']:.3f} "
              f"over {sky['n']} map(s)")
    cov = summary.get("coverage")
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
        table = zstore.read_status_table(args.store)
        summary = zstore.mask_summary(args.store)
        report = zstore.verify(args.store, depth="quick")
    except (zstore.StoreError, OSError) as exc:
        print(f"scatterdist: error: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    attrs = ds.attrs
    print(f"store      {args.store}")
    print(f"created    {attrs.get('created')} by scatterdist {attrs.get('scatterdist_version')}")
    writer = zstore.live_writer(args.store)
    print("writer     " + (f"running: pid {writer.get('pid')} on host {writer.get('host')} since "
                           f"{writer.get('time')}" if writer else "none"))
    config = json.loads(attrs.get("scattering_config", "{}"))
    print("config     " + ", ".join(f"{k}={v}" for k, v in config.items()))
    print(f"hash       {attrs.get('config_hash')}")
    print(f"shape      map={ds.sizes['map']} field={ds.sizes['field']} path={ds.sizes['path']} "
          f"pixel={ds.sizes['pixel']} (nside_out {attrs.get('nside_out')}), shard size {attrs.get('shard_size')}")
    _print_sky(summary, args.coverage)
    print("paths      " + ", ".join(str(p) for p in ds["path"].values))
    counts = table.counts()
    failed = table.status == zstore.STATUS_FAILED
    n_machine = int(np.sum(failed & (table.failure == zstore.FAILURE_MACHINE)))
    kinds = f" (input {counts['failed'] - n_machine}, machine {n_machine})" if counts["failed"] else ""
    print(f"status     ok {counts['ok']}, failed {counts['failed']}{kinds}, todo {counts['todo']}")
    if table.labels is not None:
        labels, n = np.unique(table.labels, return_counts=True)
        print("labels     " + ", ".join(f"{int(a)}: {int(b)}" for a, b in zip(labels, n)))
    if report.ok:
        print(f"damaged    none (quick check of the shard indexes, {report.seconds:.2f} s)")
    else:
        lay = zstore.layout(args.store)
        shards = sorted({i // lay.shard_size for i in report.damaged} |
                        {a // lay.shard_size for a, _ in report.status_damaged})
        print(f"damaged    {len(report.damaged)} map(s) in shard(s) {', '.join(map(str, shards[:20]))}"
              f"{' ...' if len(shards) > 20 else ''}: run `scatterdist verify {args.store}` to mark "
              "them todo, then scatter again")
    if failed.any():
        _failures_table(table, failed, sys.stdout, limit=int(failed.sum()) if args.failures else 5)
    return EXIT_OK


def run_verify(args: argparse.Namespace) -> int:
    """Handler of ``scatterdist verify``."""
    from scatterdist import store as zstore

    try:
        zstore.layout(args.store)
        with zstore.StoreLock(args.store):  # no writer may run while maps are marked
            report = zstore.verify(args.store, depth="quick" if args.quick else "full")
            changed: list[tuple[int, str]] = []
            if args.inputs:
                from scatterdist.pipeline.identity import content_changes

                changed = content_changes(args.store)
            if not args.dry_run:
                zstore.repair(report)
                zstore.mark_todo(args.store, [i for i, _ in changed])
            ids = zstore.read_map_ids(args.store)
    except (zstore.StoreError, OSError) as exc:
        print(f"scatterdist: error: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    for a, b in report.status_damaged:
        print(f"status of maps {ids[a]}..{ids[b - 1]} cannot be read"
              + ("" if args.dry_run else ": rewritten as todo"))
    for i, why in sorted(report.damaged.items()):
        print(f"{ids[i]}: {why}")
    for i, why in changed:
        print(f"{ids[i]}: input {why}")
    n = len(set(report.damaged) | {i for a, b in report.status_damaged for i in range(a, b)}
             | {i for i, _ in changed})
    depth = "shard indexes" if args.quick else "every chunk"
    if n == 0:
        print(f"ok: {report.n_maps} maps, {depth} read in {report.seconds:.2f} s"
              + (", inputs unchanged" if args.inputs else ""))
        return EXIT_OK
    what = ("found (nothing changed: --dry-run)" if args.dry_run
            else "marked todo: run scatter again to recompute them")
    print(f"{n} map(s) damaged or changed, {what} ({depth} read in {report.seconds:.2f} s)")
    return EXIT_FAILED_MAPS
