"""GPU placement: one GPU per worker where several workers of a host see the same GPUs.

A plain ``LocalCluster`` on a 4-GPU node starts workers that all see GPUs 0-3 and would all use
GPU 0. :func:`plan_gpus` gives them GPUs round-robin per host; :class:`GpuPlacement`, a Dask
``WorkerPlugin`` registered with the scheduler, applies the plan in every worker process *when it
starts*, so a worker that dies and is restarted by its nanny (same name, new process) gets its GPU
back, as does a worker that joins later under a planned name.
"""

from __future__ import annotations

from typing import Any

from distributed import Client
from distributed.diagnostics.plugin import WorkerPlugin

from scatterdist.pipeline.device import assign_gpu, worker_devices

__all__ = ["GpuPlacement", "PLUGIN_NAME", "plan_gpus", "spread_gpus"]

PLUGIN_NAME = "scatterdist-gpu-placement"


def plan_gpus(infos: dict[str, dict[str, Any]]) -> dict[str, int]:
    """Which GPU each worker should use, when several workers of one host see the same GPUs.

    ``infos``: :func:`scatterdist.pipeline.device.worker_devices` of every worker, keyed by
    worker address. Workers that see several GPUs through the same ``CUDA_VISIBLE_DEVICES``
    get GPUs round-robin per host. Workers whose ``CUDA_VISIBLE_DEVICES`` differ (dask-cuda
    rotates it so that each worker's GPU 0 is its own) or that see one GPU are left alone.
    Returns ``{address: gpu index}`` for those to move.
    """
    groups: dict[tuple[str, Any], list[str]] = {}
    for addr, info in infos.items():
        if info.get("cuda", 0) > 1:
            host = addr.rsplit(":", 1)[0]
            groups.setdefault((host, info.get("CUDA_VISIBLE_DEVICES")), []).append(addr)
    plan = {}
    for addrs in groups.values():
        if len(addrs) < 2:
            continue
        n = infos[addrs[0]]["cuda"]
        for k, addr in enumerate(sorted(addrs)):
            plan[addr] = k % n
    return plan


class GpuPlacement(WorkerPlugin):
    """Assigns ``plan[worker.name]`` as the worker's GPU in every worker process it is set up in.

    The scheduler keeps registered worker plugins and sets them up again in each (re)started
    worker process, so the assignment survives worker restarts. Workers not in the plan keep
    their current device.
    """

    def __init__(self, plan: dict[str, int]) -> None:
        self.plan = {str(k): int(v) for k, v in plan.items()}

    def setup(self, worker: Any) -> None:
        index = self.plan.get(str(worker.name))
        if index is not None:
            assign_gpu(index)


def spread_gpus(client: Client) -> dict[str, int]:
    """Give each worker its own GPU where several share a host's GPUs (see :func:`plan_gpus`),
    through :class:`GpuPlacement`. Returns the plan ``{address: gpu index}`` (empty: nothing moved)."""
    infos = client.run(worker_devices)
    plan = plan_gpus(infos)
    if plan:
        names = {addr: str(w.get("name", addr))
                 for addr, w in client.scheduler_info().get("workers", {}).items()}
        client.register_plugin(GpuPlacement({names.get(a, a): i for a, i in plan.items()}),
                               name=PLUGIN_NAME)
    return plan
