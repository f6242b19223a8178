"""Dask orchestration: catalog -> tasks of whole shards (load, transform, write) -> Zarr store.

Design (measured in ``benchmarks/pipeline.py``): **a task owns whole shards**. It loads its
maps from their references, transforms them with a per-worker cached transform and writes
each shard whole (data, then status). The alternative, per-map transform tasks plus one
writer task per shard, moves every coefficient array between processes and adds a task per
shard for no gain.

Inside a task the maps are cut into **transform batches** (``batch_size``, ``--gpu-batch``),
which may span several of the task's shards, and fed by a :class:`scatterdist.feed.BatchFeeder`:
while the device transforms batch ``n``, loader threads decode/simulate/read batches
``n + 1 .. n + prefetch`` and stage them (pinned host memory and a ``non_blocking`` copy on
a side stream on CUDA). Finished shards are written by a writer thread, so neither loading
nor writing waits for the device, nor the device for them. On the numpy backend a task is
one shard (CPU workers are one process per core); on the torch backend a task holds enough
shards for several device batches (``shards_per_task``). A batch that runs out of device
memory is split in halves (and the worker keeps the smaller size).

The device follows the worker: ``config["device"] = "auto"`` (the default of the torch
backend) means the worker's GPU when torch sees one, else its CPU, on any kind of cluster.

The client keeps a bounded window of tasks in flight (``distributed.as_completed``, refilled
as tasks finish), so a catalog of a million maps never becomes a million futures. A bad map
becomes ``status=-1`` plus a message; a raised error or a dead worker is retried by Dask
(``retries=`` and the scheduler's ``allowed-failures``), and a retried task skips the shards
its dead predecessor already wrote; a shard that still fails is marked failed with the reason.
Re-running resumes: shards whose maps are all done are skipped, failed maps are recomputed
only with ``retry_failed=True``.

Modules: :mod:`~scatterdist.pipeline.client` (orchestration, :func:`scatter`),
:mod:`~scatterdist.pipeline.task` (the worker task and its shard buffers),
:mod:`~scatterdist.pipeline.placement` (GPU placement as a Dask ``WorkerPlugin``),
:mod:`~scatterdist.pipeline.device` (the one device resolver).
"""

from __future__ import annotations

from scatterdist.pipeline.client import (
    BATCHES_PER_TASK,
    ScatterSummary,
    check_data_options,
    default_shard_size,
    scatter,
)
from scatterdist.pipeline.device import DEVICES, resolve_device, worker_devices
from scatterdist.pipeline.placement import GpuPlacement, plan_gpus, spread_gpus
from scatterdist.pipeline.task import (
    GPU_BATCH,
    PREFETCH,
    TRANSFORM_BATCH,
    DataOptions,
    ShardBuffer,
    ShardResult,
    ShardTask,
    TaskResult,
    _scattering,
    default_batch_size,
    run_shard,
    run_shards,
)

__all__ = ["ScatterSummary", "ShardResult", "ShardTask", "ShardBuffer", "TaskResult", "DataOptions",
           "scatter", "default_shard_size", "default_batch_size", "run_shard", "run_shards",
           "resolve_device", "worker_devices", "plan_gpus", "spread_gpus", "GpuPlacement",
           "check_data_options", "DEVICES", "GPU_BATCH", "TRANSFORM_BATCH", "PREFETCH",
           "BATCHES_PER_TASK", "_scattering"]
