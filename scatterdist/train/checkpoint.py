"""Checkpoints: atomic writes, integrity check, and loading that never unpickles arbitrary objects.

File format (one file, written to ``PATH.tmp-PID`` then ``os.replace``-d onto ``PATH``)::

    torch.save({"format": FORMAT, "sha256": hex, "payload": uint8 tensor})

where ``payload`` holds the bytes of ``torch.save(state)``. Loading reads the outer dict and
then the payload with ``torch.load(weights_only=True)`` (only tensors and plain containers,
never arbitrary classes), after checking the payload's SHA-256. The hash detects corruption
and edits of the file; it is not a signature (anyone who can write the file can recompute it):
``weights_only`` is what keeps a hostile file from running code.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
from pathlib import Path

import torch

FORMAT = "scatterdist-checkpoint-v1"


class CheckpointError(RuntimeError):
    """A checkpoint is unreadable, corrupted, tampered with, or holds disallowed objects."""


def _safe_load(source, what: str) -> object:
    try:
        return torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{what} holds objects other than tensors and plain containers; refusing to unpickle it "
            f"(torch.load(weights_only=True)): {str(exc).splitlines()[0]}"
        ) from exc
    except (RuntimeError, EOFError, ValueError) as exc:
        raise CheckpointError(f"{what} is not a readable torch checkpoint (truncated or corrupted?): {exc}") from exc


def save_checkpoint(path: str | os.PathLike, state: dict) -> str:
    """Write ``state`` (tensors, numbers, strings, lists, dicts) atomically; returns its SHA-256."""
    path = Path(path)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    try:  # refuse to write what weights_only loading would refuse to read
        torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise TypeError(
            "checkpoint state must hold only tensors, numbers, strings, lists, tuples and dicts "
            f"(no numpy scalars or custom objects): {str(exc).splitlines()[-1]}"
        ) from exc
    digest = hashlib.sha256(payload).hexdigest()
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        torch.save(
            {"format": FORMAT, "sha256": digest, "payload": torch.frombuffer(bytearray(payload), dtype=torch.uint8)}, fh
        )
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return digest


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read and verify a checkpoint written by :func:`save_checkpoint` (tensors on CPU).

    Raises FileNotFoundError when absent and :class:`CheckpointError` when the file is not in
    this format, fails its SHA-256 check, or holds objects ``weights_only`` loading refuses.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    outer = _safe_load(path, f"checkpoint {path}")
    if not isinstance(outer, dict) or outer.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a scatterdist checkpoint (expected format {FORMAT!r})")
    payload = outer.get("payload")
    digest = outer.get("sha256")
    if not isinstance(payload, torch.Tensor) or payload.dtype != torch.uint8 or not isinstance(digest, str):
        raise CheckpointError(f"checkpoint {path} is malformed (payload or sha256 missing)")
    data = payload.numpy().tobytes()
    actual = hashlib.sha256(data).hexdigest()
    if actual != digest:
        raise CheckpointError(
            f"checkpoint {path} failed its integrity check: SHA-256 of the payload is {actual}, "
            f"the file records {digest}; it was modified or corrupted after it was written. "
            "Restore it from a copy or delete it to start the run again"
        )
    state = _safe_load(io.BytesIO(data), f"payload of checkpoint {path}")
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} payload is a {type(state).__name__}, expected a dict")
    return state
