"""Proving what is on disk: find maps whose chunks are missing, truncated or fail their checksum.

Two depths:

- ``quick`` (run at the start of every resume; reads only the shard indexes, a few hundred bytes
  per shard): every shard file of ``coefficients`` (and per-map ``coverage``) must exist when one
  of its maps is ok, its index must pass its crc32c checksum and point inside the file, and every
  ok map must have a chunk (a chunk absent from the index reads as the fill value NaN).
- ``full`` (``scatterdist verify STORE``): additionally decodes every chunk (zstd and the crc32c
  of each chunk in stores made since checksums were added) and checks that no ok map reads as
  all-NaN.

Damaged maps are marked todo (status 0, error cleared) with :func:`repair`, so the next run
recomputes them. A ``status`` chunk that cannot be read is rewritten as todo by ``repair``.
"""

from __future__ import annotations

import json
import os
import struct
import time
from dataclasses import dataclass, field
from typing import Any

import google_crc32c
import numpy as np
import zarr

from scatterdist.store.keys import shard_file_in
from scatterdist.store.read import DamagedStoreError, _read_status, unreadable_chunks
from scatterdist.store.schema import STATUS_OK, StoreLayout, _open_group, layout
from scatterdist.store.write import mark_todo

__all__ = ["VerifyReport", "verify", "repair"]

_EMPTY = 2**64 - 1


@dataclass
class VerifyReport:
    """Outcome of :func:`verify`: ``damaged`` maps (index -> reason), ``status_damaged`` map
    ranges whose status chunk cannot be read, the depth and the seconds it took."""

    path: str
    n_maps: int
    depth: str
    damaged: dict[int, str] = field(default_factory=dict)
    status_damaged: list[tuple[int, int]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.damaged and not self.status_damaged

    def add(self, maps: range | list[int], reason: str) -> None:
        for i in maps:
            self.damaged.setdefault(int(i), reason)


def _sharding(meta: dict[str, Any]) -> dict[str, Any] | None:
    codecs = meta.get("codecs", [])
    if len(codecs) == 1 and codecs[0].get("name") == "sharding_indexed":
        conf = codecs[0]["configuration"]
        names = [c.get("name") for c in conf.get("index_codecs", [])]
        if conf.get("index_location", "end") == "end" and names == ["bytes", "crc32c"]:
            return conf
    return None


def _index(fname: str, n_chunks: int) -> tuple[np.ndarray | None, str]:
    """The ``(n_chunks, 2)`` (offset, nbytes) index of a shard file, or None and why not."""
    size = os.path.getsize(fname)
    nbytes = 16 * n_chunks + 4
    if size < nbytes:
        return None, f"shard file {fname} is truncated ({size} bytes)"
    with open(fname, "rb") as fh:
        fh.seek(size - nbytes)
        raw = fh.read(nbytes)
    body, (crc,) = raw[:-4], struct.unpack("<I", raw[-4:])
    if google_crc32c.value(body) != crc:
        return None, f"shard file {fname} is truncated or damaged (its index fails the crc32c checksum)"
    index = np.frombuffer(body, dtype="<u8").reshape(n_chunks, 2)
    used = index[:, 0] != _EMPTY
    if np.any(index[used, 0] + index[used, 1] > size - nbytes):
        return None, f"shard file {fname} is truncated (its index points past the end)"
    return index, ""


def _quick_array(path: str, name: str, lay: StoreLayout, status: np.ndarray, report: VerifyReport) -> bool:
    """Check the shard files of one sharded per-map array; False when its format is not one
    this check knows (the caller then decodes it fully)."""
    with open(os.path.join(path, name, "zarr.json"), encoding="utf-8") as fh:
        meta = json.load(fh)
    conf = _sharding(meta)
    if conf is None:
        return False
    shard_shape, chunk_shape = meta["chunk_grid"]["configuration"]["chunk_shape"], conf["chunk_shape"]
    per_shard = [s // c for s, c in zip(shard_shape, chunk_shape)]
    if per_shard[1:] != [1] * (len(per_shard) - 1) or per_shard[0] != lay.shard_size:
        return False
    for s in range(lay.n_shards):
        a, b = lay.bounds(s)
        ok = np.flatnonzero(status[a:b] == STATUS_OK)
        if ok.size == 0:
            continue
        fname = shard_file_in(path, name, meta, s, len(shard_shape))
        if fname is None:
            return False
        if not os.path.exists(fname):
            report.add([a + i for i in ok], f"{name}: shard file {os.path.relpath(fname, path)} is missing")
            continue
        index, why = _index(fname, lay.shard_size)
        if index is None:
            report.add(range(a, b), f"{name}: {why.replace(path + os.sep, '')}")
            continue
        empty = [a + i for i in ok if index[i, 0] == _EMPTY]
        report.add(empty, f"{name}: the map's chunk is missing from its shard (it would read as NaN)")
    return True


def _full_array(group: zarr.Group, name: str, lay: StoreLayout, status: np.ndarray,
                report: VerifyReport) -> None:
    """Decode every shard of a per-map array; narrow a failing shard down to its maps."""
    arr = group[name]
    for s in range(lay.n_shards):
        a, b = lay.bounds(s)
        try:
            block = arr[a:b]
        except Exception as exc:  # noqa: BLE001 - any decoding/checksum error
            why = " ".join(f"{type(exc).__name__}: {exc}".split())[:160]
            for i in range(a, b):
                try:
                    arr[i : i + 1]
                except Exception:  # noqa: BLE001
                    report.add([i], f"{name}: cannot be read ({why})")
            if not any(a <= i < b for i in report.damaged):
                report.add(range(a, b), f"{name}: cannot be read ({why})")
            continue
        if name == "coefficients":
            flat = block.reshape(b - a, -1)
            blank = np.all(np.isnan(flat), axis=1) & (status[a:b] == STATUS_OK)
            report.add([a + i for i in np.flatnonzero(blank)],
                       f"{name}: the map reads as all NaN (a missing chunk) although its status is ok")


def verify(path: str | os.PathLike, depth: str = "full") -> VerifyReport:
    """Check a store; returns what is damaged (nothing is changed: see :func:`repair`).

    ``depth``: ``"quick"`` (shard indexes) or ``"full"`` (every chunk decoded), see the module
    docstring. Raises :class:`StoreError` when ``path`` is not a store.
    """
    if depth not in ("quick", "full"):
        raise ValueError(f"depth must be 'quick' or 'full', got {depth!r}")
    t0 = time.perf_counter()
    path = os.fspath(path)
    lay = layout(path)
    group = _open_group(path)
    report = VerifyReport(path, lay.n_maps, depth)
    try:
        status = _read_status(group, path)
    except DamagedStoreError:
        report.status_damaged = unreadable_chunks(group["status"])
        status = np.asarray(_status_filled(group, report.status_damaged), np.int8)
    names = ["coefficients"] + (["coverage"] if lay.per_map_coverage else [])
    for name in names:
        if depth == "full" or not _quick_array(path, name, lay, status, report):
            _full_array(group, name, lay, status, report)
    for name in ("error", "source", "sky_fraction", "failure", "input_sha256"):
        if name in group:
            for a, b in unreadable_chunks(group[name]):
                report.add(range(a, b), f"{name}: a chunk cannot be read")
    report.seconds = time.perf_counter() - t0
    return report


def _status_filled(group: zarr.Group, bad: list[tuple[int, int]]) -> np.ndarray:
    arr = group["status"]
    out = np.zeros(arr.shape[0], np.int8)
    for a in range(0, arr.shape[0], arr.chunks[0]):
        b = min(a + arr.chunks[0], arr.shape[0])
        if (a, b) not in bad:
            out[a:b] = arr[a:b]
    return out


def repair(report: VerifyReport) -> list[int]:
    """Mark every damaged map of ``report`` todo (and rewrite unreadable status chunks as todo);
    returns the map indices marked. The caller must hold the store's lock (or know no writer runs)."""
    maps = sorted(set(report.damaged) | {i for a, b in report.status_damaged for i in range(a, b)})
    if maps:
        mark_todo(report.path, maps)
    return maps
