"""Feeding a device: prepare the next batches' inputs while the device transforms this one.

A GPU worker that decodes a FITS file, generates a simulation or reads Zarr rows between
two transforms leaves the GPU idle for that time (issue 11 measured a dask-cuda worker at
0.09 of the bare GPU loop). :class:`BatchFeeder` runs the loading of batch ``n + 1 ..
n + prefetch`` in a thread pool while the caller transforms batch ``n``: FITS decoding
(astropy/healpy), simulations (ducc0) and Zarr decompression release the GIL for most of their
time, so the loads really run beside the transform.

:class:`DeviceStager` is the last loading step, done in the loader threads too: the batch is
converted to the transform's dtype and, on CUDA, copied into pinned (page-locked) host memory
and sent to the GPU with a ``non_blocking`` copy on a side stream; the consumer's stream
waits for that copy (an event, not a host synchronisation), so the copy of batch ``n + 1``
overlaps the kernels of batch ``n``.

Every batch's load and transform times are recorded (:class:`BatchTiming`, seconds of
``time.perf_counter`` on the worker); the pipeline returns them so that overlap and device
idle time can be checked (``tests/test_gpu_pipeline.py``) and reported
(``benchmarks/pipeline.py``).
"""

from __future__ import annotations

import collections
import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np

__all__ = ["BatchTiming", "BatchFeeder", "DeviceStager", "Staged", "overlap_summary", "split_batches"]

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class BatchTiming:
    """When one batch was loaded and transformed (``time.perf_counter`` seconds, one process).

    ``transform_start``/``transform_end`` are NaN until :meth:`BatchFeeder.transformed`
    records them.
    """

    index: int
    size: int
    load_start: float
    load_end: float
    transform_start: float = math.nan
    transform_end: float = math.nan

    def as_tuple(self) -> tuple[int, int, float, float, float, float]:
        return (self.index, self.size, self.load_start, self.load_end,
                self.transform_start, self.transform_end)


def split_batches(items: Sequence[T], size: int) -> list[Sequence[T]]:
    """Consecutive slices of ``items`` of at most ``size`` (>= 1) items."""
    if size < 1:
        raise ValueError(f"batch size must be >= 1, got {size}")
    return [items[i : i + size] for i in range(0, len(items), size)]


class BatchFeeder(Generic[T, R]):
    """Iterate ``load(batch)`` over ``batches`` in order, loading up to ``prefetch`` batches ahead.

    ``load`` runs in a pool of ``threads`` threads (default ``prefetch``): while the caller
    works on batch ``n``, batches ``n + 1 .. n + prefetch`` are being loaded, so at most
    ``prefetch + 1`` loaded batches exist at a time (bounded memory). ``prefetch=0`` loads
    each batch only when it is asked for (no overlap; the baseline). An exception raised by
    ``load`` is raised by the iteration at that batch. Use as a context manager (or call
    :meth:`close`) so that pending loads are cancelled when the caller stops early.

    >>> with BatchFeeder([[1, 2], [3]], lambda b: sum(b), prefetch=1) as feed:
    ...     [(i, out) for i, _, out in feed]
    [(0, 3), (1, 3)]
    """

    def __init__(self, batches: Sequence[Sequence[T]], load: Callable[[Sequence[T]], R], *,
                 prefetch: int = 2, threads: int | None = None) -> None:
        if prefetch < 0:
            raise ValueError(f"prefetch must be >= 0, got {prefetch}")
        self.batches = list(batches)
        self.load = load
        self.prefetch = int(prefetch)
        nthreads = threads if threads is not None else max(1, self.prefetch)
        if nthreads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self._pool = ThreadPoolExecutor(max_workers=nthreads, thread_name_prefix="scatterdist-feed")
        self._futures: collections.deque[Future] = collections.deque()
        self._next = 0
        self._lock = threading.Lock()
        self.timings: list[BatchTiming] = []

    def _timed_load(self, index: int) -> tuple[R, BatchTiming]:
        t0 = time.perf_counter()
        out = self.load(self.batches[index])
        return out, BatchTiming(index, len(self.batches[index]), t0, time.perf_counter())

    def _submit_until(self, upto: int) -> None:
        while self._next < min(upto, len(self.batches)):
            self._futures.append(self._pool.submit(self._timed_load, self._next))
            self._next += 1

    def __iter__(self) -> Iterator[tuple[int, Sequence[T], R]]:
        for index in range(len(self.batches)):
            # Keep batches index .. index + prefetch submitted before waiting for this one.
            self._submit_until(index + 1 + self.prefetch)
            out, timing = self._futures.popleft().result()
            with self._lock:
                self.timings.append(timing)
            yield index, self.batches[index], out

    def transformed(self, index: int, start: float, end: float) -> None:
        """Record when batch ``index`` was transformed (``time.perf_counter`` seconds)."""
        with self._lock:
            for t in self.timings:
                if t.index == index:
                    t.transform_start, t.transform_end = start, end
                    return
        raise KeyError(f"batch {index} has not been loaded")

    def close(self) -> None:
        """Cancel the loads not started yet and wait for the running ones."""
        for fut in self._futures:
            fut.cancel()
        self._futures.clear()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> BatchFeeder[T, R]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def overlap_summary(timings: Sequence[BatchTiming | Sequence[float]]) -> dict[str, float]:
    """Overlap figures of one task's batches (in order).

    ``overlapped``: fraction of batches ``n + 1`` whose load started before batch ``n``'s
    transform ended; ``busy``: transform time / (last transform end - first load start), the
    fraction of the task's time the device was working; ``load_s``, ``transform_s``: totals.
    """
    rows = [t.as_tuple() if isinstance(t, BatchTiming) else tuple(t) for t in timings]
    rows = sorted(rows, key=lambda r: r[0])
    if not rows:
        return {"batches": 0, "overlapped": math.nan, "busy": math.nan, "load_s": 0.0, "transform_s": 0.0}
    pairs = list(zip(rows[:-1], rows[1:]))
    overlapped = (sum(1 for a, b in pairs if b[2] < a[5]) / len(pairs)) if pairs else math.nan
    transform_s = float(sum(r[5] - r[4] for r in rows))
    span = rows[-1][5] - rows[0][2]
    return {"batches": len(rows), "overlapped": overlapped,
            "busy": transform_s / span if span > 0 else math.nan,
            "load_s": float(sum(r[3] - r[2] for r in rows)), "transform_s": transform_s}


# --------------------------------------------------------------------------- host -> device


@dataclass
class Staged:
    """A batch made ready for the transform: ``data`` (numpy or a torch tensor on the device)
    and, for CUDA, the event recorded after its copy (None otherwise)."""

    data: Any
    event: Any = None


class DeviceStager:
    """Turn a host batch ``(B, ...)`` float64 numpy array into the transform's input.

    ``device=None``: the numpy backend; the array is returned as C-contiguous float64.
    A CPU ``torch.device``: a tensor in ``dtype`` (the conversion happens in the loader thread).
    A CUDA device: a pinned host tensor in ``dtype``, copied with ``non_blocking=True`` on a
    side stream; :meth:`ready` (called by the consumer) makes the consumer's current stream
    wait for that copy and tells the caching allocator the tensor is used there.
    """

    def __init__(self, device: Any = None, dtype: Any = None) -> None:
        self.device = device
        self.dtype = dtype
        self.cuda = device is not None and getattr(device, "type", None) == "cuda"
        self._streams: dict[int, Any] = {}

    def _copy_stream(self) -> Any:
        import torch

        key = threading.get_ident()  # one side stream per loader thread
        stream = self._streams.get(key)
        if stream is None:
            stream = self._streams[key] = torch.cuda.Stream(device=self.device)
        return stream

    def stage(self, x: np.ndarray) -> Staged:
        """Host array -> :class:`Staged` (runs in a loader thread)."""
        if self.device is None:
            return Staged(np.ascontiguousarray(x, dtype=np.float64))
        import torch

        if not self.cuda:
            return Staged(torch.from_numpy(np.ascontiguousarray(x)).to(self.dtype))
        host = torch.empty(x.shape, dtype=self.dtype, pin_memory=True)
        host.copy_(torch.from_numpy(np.ascontiguousarray(x)))
        stream = self._copy_stream()
        with torch.cuda.stream(stream):
            dev = host.to(self.device, non_blocking=True)
            event = torch.cuda.Event()
            event.record(stream)
        return Staged(dev, event)

    def ready(self, staged: Staged) -> Any:
        """The staged data, safe to use on the caller's current stream (runs in the consumer)."""
        if staged.event is None:
            return staged.data
        import torch

        current = torch.cuda.current_stream(self.device)
        current.wait_event(staged.event)
        staged.data.record_stream(current)
        return staged.data
