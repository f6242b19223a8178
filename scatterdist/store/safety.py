"""Output safety: a store path must name a scatterdist store or nothing; only stores are removed.

A scatterdist store is recognised by its root ``zarr.json``: a Zarr group whose attributes carry
``scatterdist_version`` and ``config_hash`` (written by :func:`scatterdist.store.create`). Nothing
else is ever deleted or written into: an empty ``--output``, ``.``, the working directory, a
parent of it, a file, or a directory with other content are refused before anything is touched.
"""

from __future__ import annotations

import json
import os
import shutil

from scatterdist.store.errors import StoreError
from scatterdist.store.lock import resolved_path

__all__ = ["OutputRefusedError", "IncompleteStoreError", "store_kind", "check_output", "remove_store"]

#: Root attributes every scatterdist store has.
_MARKERS = ("scatterdist_version", "config_hash")


class OutputRefusedError(StoreError):
    """The output path is not one a store may be written to (nothing was touched)."""


class IncompleteStoreError(StoreError):
    """A scatterdist store whose creation did not finish (e.g. the disk filled)."""


def store_kind(path: str | os.PathLike) -> str:
    """What is at ``path``: ``"missing"``, ``"empty"`` (an empty directory), ``"store"`` (a
    complete scatterdist store), ``"incomplete"`` (a scatterdist store whose creation was
    interrupted: root attributes present, arrays missing), ``"file"`` or ``"other"`` (a
    directory with content that is not a scatterdist store)."""
    path = os.fspath(path)
    if not os.path.lexists(path):
        return "missing"
    if not os.path.isdir(path):
        return "file"
    try:
        with open(os.path.join(path, "zarr.json"), encoding="utf-8") as fh:
            attrs = json.load(fh).get("attributes", {})
    except FileNotFoundError:
        return "empty" if not os.listdir(path) else "other"
    except (OSError, ValueError, AttributeError):
        return "other"
    if not isinstance(attrs, dict) or not all(k in attrs for k in _MARKERS):
        return "other"
    complete = all(os.path.exists(os.path.join(path, name, "zarr.json"))
                   for name in ("coefficients", "status", "error", "source", "map"))
    return "store" if complete else "incomplete"


def check_output(path: str | os.PathLike, overwrite: bool = False) -> str:
    """Refuse an output path that is not a store path; returns the resolved path.

    Refused (:class:`OutputRefusedError`, before anything is touched): an empty path, the
    working directory or any parent of it (``.``, ``..``, ``/``), a file, a directory with
    content that is not a scatterdist store. A half-made scatterdist store raises
    :class:`IncompleteStoreError` unless ``overwrite`` (then it is removed and made again).
    """
    text = os.fspath(path)
    if not text.strip():
        raise OutputRefusedError("the output path is empty (an unset variable?): name the store "
                                 "directory to create, e.g. --output maps.zarr")
    real = resolved_path(text)
    cwd = resolved_path(os.getcwd())
    if real == cwd or cwd.startswith(real.rstrip(os.sep) + os.sep) or real == os.sep:
        raise OutputRefusedError(f"the output {text!r} is the working directory or a parent of it "
                                 f"({real}): name a new store directory, e.g. --output {text.rstrip(os.sep) or '.'}/maps.zarr")
    kind = store_kind(real)
    if kind == "file":
        raise OutputRefusedError(f"the output {text} is a file, not a store: choose another --output")
    if kind == "other":
        raise OutputRefusedError(f"the output {text} is a directory with content that is not a "
                                 "scatterdist store: nothing was touched; choose a new --output "
                                 "(a store is never written into, or deleted from, another directory)")
    if kind == "incomplete" and not overwrite:
        raise IncompleteStoreError(f"the store {text} is incomplete (its creation was interrupted, "
                                   "e.g. the disk filled): make it again with --overwrite")
    return real


def remove_store(path: str | os.PathLike) -> None:
    """Delete a scatterdist store (complete or incomplete); refuse anything else."""
    kind = store_kind(path)
    if kind == "missing":
        return
    if kind == "empty":
        os.rmdir(path)
        return
    if kind not in ("store", "incomplete"):
        raise OutputRefusedError(f"refusing to delete {os.fspath(path)}: it is not a scatterdist store")
    shutil.rmtree(path)
