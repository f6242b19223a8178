"""The one device resolver of the pipeline: which device a worker's transform runs on.

``config["device"]`` of the torch backend is ``"auto"`` (the worker's GPU when torch sees one,
else its CPU), ``"cuda"``, ``"cuda:N"`` or ``"cpu"``; the numpy backend runs on CPU. The client
checks the setting (:func:`check_device`); each worker resolves it (:func:`resolve_device`),
taking the GPU that :mod:`scatterdist.pipeline.placement` assigned to it, if any.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["DEVICES", "resolve_device", "check_device", "resolved_config", "transform_device",
           "device_name", "worker_devices", "assign_gpu", "assigned_gpu"]

DEVICES = ("auto", "cuda", "cpu")

#: The GPU this worker process was assigned (None: ``cuda`` = its current device). Set by
#: :class:`scatterdist.pipeline.placement.GpuPlacement` whenever the worker process starts.
_WORKER_GPU: int | None = None


def assign_gpu(index: int | None) -> int:
    """Make ``cuda`` mean GPU ``index`` in this process (None: its current device); returns the pid."""
    global _WORKER_GPU
    _WORKER_GPU = None if index is None else int(index)
    return os.getpid()


def assigned_gpu() -> int | None:
    """The GPU index assigned to this process, None when none was."""
    return _WORKER_GPU


def resolve_device(device: str | None) -> str:
    """``"auto"``/None -> ``"cuda"`` when torch sees a GPU in this process, else ``"cpu"``.

    ``"cuda"`` without a visible GPU raises ValueError. On a dask-cuda worker (or any worker
    started with ``CUDA_VISIBLE_DEVICES`` set to one GPU) ``"cuda"`` is that worker's GPU; on a
    worker given a GPU by the placement plugin it is ``cuda:N`` of that GPU.
    """
    device = "auto" if device is None else str(device)
    if device not in DEVICES and not device.startswith("cuda:"):
        raise ValueError(f"device must be one of {DEVICES} (or cuda:N), got {device!r}")
    if device == "cpu":
        return "cpu"
    import torch

    if torch.cuda.is_available():
        if device.startswith("cuda:"):
            return device
        return f"cuda:{_WORKER_GPU}" if _WORKER_GPU is not None else "cuda"
    if device == "auto":
        return "cpu"
    raise ValueError(f"--device {device}: torch on worker pid {os.getpid()} sees no CUDA device "
                     "(CUDA_VISIBLE_DEVICES={!r}); use --device auto or cpu, or GPU workers"
                     .format(os.environ.get("CUDA_VISIBLE_DEVICES")))


def check_device(config: dict[str, Any]) -> None:
    """Refuse a device the config cannot use (checked on the client; resolved on each worker)."""
    device = config.get("device")
    if config.get("backend", "numpy") == "torch":
        if device is not None and device not in DEVICES and not str(device).startswith("cuda:"):
            raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    elif device not in (None, "auto", "cpu"):
        raise ValueError(f"device {device!r} needs the torch backend (--backend torch); "
                         "the numpy backend runs on CPU")


def resolved_config(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with the torch backend's device resolved in this process (numpy: no device)."""
    check_device(config)
    config = dict(config)
    if config.get("backend", "numpy") == "torch":
        config["device"] = resolve_device(config.get("device"))
    else:
        config.pop("device", None)
    return config


def transform_device(sc: Any) -> Any:
    """The torch device a built transform runs on, or None for numpy transforms."""
    backend = getattr(sc, "backend", None)
    return getattr(backend, "device", None) if getattr(backend, "name", "") == "torch" else None


def device_name(device: Any) -> str:
    """``"cpu"`` for None (numpy), else ``str(device)`` (``"cuda:0"``, ``"cpu"``)."""
    return "cpu" if device is None else str(device)


def worker_devices() -> dict[str, Any]:
    """What this worker process offers: ``{"cuda": n visible GPUs, "names": [...], "pid": ...,
    "CUDA_VISIBLE_DEVICES": ..., "assigned": GPU index or None}``."""
    info: dict[str, Any] = {"pid": os.getpid(), "cuda": 0, "names": [],
                            "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
                            "assigned": _WORKER_GPU}
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return info
    if torch.cuda.is_available():
        info["cuda"] = torch.cuda.device_count()
        info["names"] = [torch.cuda.get_device_name(i) for i in range(info["cuda"])]
    return info
