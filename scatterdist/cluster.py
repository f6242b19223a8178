"""Dask cluster factories: local, existing scheduler, SLURM/PBS (dask-jobqueue), CUDA (dask-cuda).

``connect(...)`` is a context manager that yields a ``distributed.Client`` and tears down
whatever it started (it never closes a scheduler it merely connected to).

Cluster specifications (the ``cluster`` argument, ``--cluster`` on the command line):

- ``"local"`` (default): a ``LocalCluster`` of worker *processes* (under Nannies) bound to
  127.0.0.1, dashboard on 127.0.0.1 (random free port).
- ``"tcp://HOST:PORT"``, ``"tls://HOST:PORT"`` (or any ``scheme://`` address): an existing
  scheduler. Use TLS (``security=``) for anything that crosses machines.
- a path to a scheduler file (as written by ``dask scheduler --scheduler-file``), or
  ``scheduler_file=PATH``.
- ``"slurm"`` / ``"pbs"``: ``dask_jobqueue.SLURMCluster`` / ``PBSCluster``, configured by the
  standard jobqueue configuration (``~/.config/dask/jobqueue.yaml``, sections
  ``jobqueue.slurm`` / ``jobqueue.pbs`` of ``dask.config``); ``workers`` is the number of
  jobs (``cluster.scale(jobs=workers)``).
- ``"jobqueue-local"``: ``dask_jobqueue.LocalCluster``: the job scripts dask-jobqueue
  generates (section ``jobqueue.local``) run as local processes instead of batch jobs; a
  dry run of the login-node workflow on one machine.
- ``"cuda"``: ``dask_cuda.LocalCUDACluster``, one worker per GPU, every worker advertising
  ``resources={"GPU": 1}``. The torch backend (``--backend torch``, ``--device auto``) runs on
  each worker's GPU on this and every other kind of cluster (see :mod:`scatterdist.pipeline`).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any

import dask
from distributed import Client, LocalCluster

__all__ = [
    "ClusterError",
    "connect",
    "add_cluster_arguments",
    "client_from_args",
    "dashboard_link",
]

LOOPBACK = "127.0.0.1"


class ClusterError(RuntimeError):
    """A cluster could not be created or reached (bad spec, missing optional package)."""


def _is_address(spec: str) -> bool:
    return "://" in spec


#: Dask's nannies export MALLOC_TRIM_THRESHOLD_=65536 to their workers. An explicit
#: threshold switches off glibc's adaptive mmap threshold, so every large numpy temporary
#: of the transform is mmapped and page-faulted afresh: 0.78x the speed of glibc's default at
#: nside 256 (python benchmarks/malloc_trim.py). Workers we start keep glibc's default instead.
WORKER_ENVIRON = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}


def _local_cluster(workers: int | None, threads_per_worker: int | None,
                   **kwargs: Any) -> LocalCluster:
    n_workers = workers if workers is not None else max(1, (os.cpu_count() or 1) // max(1, threads_per_worker or 1))
    with dask.config.set(WORKER_ENVIRON):
        return LocalCluster(
            n_workers=n_workers,
            threads_per_worker=threads_per_worker or 1,
            processes=True,
            host=LOOPBACK,
            dashboard_address=f"{LOOPBACK}:0",  # never all interfaces
            **kwargs,
        )


def _jobqueue_cluster(kind: str, workers: int | None, **kwargs: Any):
    try:
        import dask_jobqueue
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ClusterError(
            f"--cluster {kind} needs dask-jobqueue: pip install dask-jobqueue"
        ) from exc
    from dask_jobqueue.local import LocalCluster as JobqueueLocalCluster

    cls = {"slurm": dask_jobqueue.SLURMCluster, "pbs": dask_jobqueue.PBSCluster,
           "jobqueue-local": JobqueueLocalCluster}[kind]
    # Every unset parameter comes from dask.config["jobqueue"][kind] (jobqueue.yaml).
    cluster = cls(**kwargs)
    cluster.scale(jobs=workers if workers is not None else 1)
    return cluster


def _cuda_cluster(workers: int | None, threads_per_worker: int | None, **kwargs: Any):
    try:
        from dask_cuda import LocalCUDACluster
    except ImportError as exc:
        raise ClusterError(
            "--cluster cuda needs dask-cuda (and a CUDA GPU): pip install 'scatterdist[cuda]'"
        ) from exc
    options: dict[str, Any] = dict(
        host=LOOPBACK,
        dashboard_address=f"{LOOPBACK}:0",  # never all interfaces
        resources={"GPU": 1},
        threads_per_worker=threads_per_worker or 1,
    )
    if workers is not None:
        options["n_workers"] = workers
    options.update(kwargs)
    with dask.config.set(WORKER_ENVIRON):
        return LocalCUDACluster(**options)


@contextlib.contextmanager
def connect(
    cluster: str = "local",
    workers: int | None = None,
    threads_per_worker: int | None = None,
    scheduler_file: str | None = None,
    security: Any = None,
    timeout: float = 60.0,
    **cluster_kwargs: Any,
) -> Iterator[Client]:
    """Yield a ``distributed.Client`` for the cluster described by ``cluster``.

    ``workers``: worker processes (local/cuda) or jobs (slurm/pbs); ``threads_per_worker``:
    threads in each worker (local default 1). Extra ``cluster_kwargs`` go to the cluster class.
    Clusters started here are closed on exit; remote schedulers are left running. Local and
    CUDA clusters bind the scheduler, workers and dashboard to 127.0.0.1 only.
    """
    spec = (cluster or "local").strip()
    if scheduler_file is not None:
        with Client(scheduler_file=scheduler_file, security=security, timeout=timeout) as client:
            yield client
        return
    if _is_address(spec):
        with Client(spec, security=security, timeout=timeout) as client:
            yield client
        return
    if spec not in ("local", "slurm", "pbs", "jobqueue-local", "cuda"):
        if os.path.isfile(spec):
            with Client(scheduler_file=spec, security=security, timeout=timeout) as client:
                yield client
            return
        raise ClusterError(
            f"unknown cluster {spec!r}: use local, slurm, pbs, jobqueue-local, cuda, a scheduler address "
            "(tcp://HOST:PORT, tls://HOST:PORT) or the path of an existing scheduler file"
        )
    if spec == "local":
        made = _local_cluster(workers, threads_per_worker, **cluster_kwargs)
    elif spec == "cuda":
        made = _cuda_cluster(workers, threads_per_worker, **cluster_kwargs)
    else:
        made = _jobqueue_cluster(spec, workers, **cluster_kwargs)
    try:
        with Client(made, security=security, timeout=timeout) as client:
            yield client
    finally:
        made.close()


def dashboard_link(client: Client) -> str | None:
    """The dashboard URL of ``client``'s scheduler, or None when it serves none."""
    try:
        info = client.scheduler_info()
    except (OSError, RuntimeError):  # pragma: no cover - scheduler gone
        return None
    if "dashboard" not in info.get("services", {}):
        return None
    return client.dashboard_link


def add_cluster_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--cluster``, ``--workers``, ``--threads-per-worker``, ``--scheduler-file``."""
    group = parser.add_argument_group("cluster")
    group.add_argument(
        "--cluster", default="local", metavar="local|ADDRESS|slurm|pbs|cuda",
        help="where tasks run: local (default, loopback LocalCluster), a scheduler address "
             "tcp://HOST:PORT or tls://..., a scheduler file, slurm/pbs (dask-jobqueue, "
             "jobqueue.yaml), jobqueue-local (dask-jobqueue's job scripts as local processes), "
             "cuda (dask-cuda, one worker per GPU). --backend torch uses each worker's GPU on any of them",
    )
    group.add_argument("--workers", type=int, default=None, metavar="N",
                       help="worker processes (local, cuda) or jobs (slurm, pbs)")
    group.add_argument("--threads-per-worker", type=int, default=None, metavar="T",
                       help="threads per worker (local default 1)")
    group.add_argument("--scheduler-file", default=None, metavar="PATH",
                       help="connect to the scheduler described by this file")


@contextlib.contextmanager
def client_from_args(args: argparse.Namespace, stream=None) -> Iterator[Client]:
    """``connect`` from the parsed ``add_cluster_arguments`` flags; prints the dashboard link."""
    for name in ("workers", "threads_per_worker"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise ClusterError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    stream = stream if stream is not None else sys.stderr
    with connect(
        getattr(args, "cluster", "local") or "local",
        workers=getattr(args, "workers", None),
        threads_per_worker=getattr(args, "threads_per_worker", None),
        scheduler_file=getattr(args, "scheduler_file", None),
    ) as client:
        link = dashboard_link(client)
        print(f"dask scheduler {client.scheduler.address}; dashboard: "
              f"{link if link else 'not available (install bokeh>=3.1)'}", file=stream, flush=True)
        yield client
