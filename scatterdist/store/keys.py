"""Where a store's shard files are on disk (Zarr v3 default chunk keys, ``/`` separator)."""

from __future__ import annotations

import json
import os
from typing import Any


def shard_file_in(path: str, name: str, meta: dict[str, Any], shard: int, ndim: int) -> str | None:
    """File of shard ``shard`` (along ``map``) of array ``name``, None for a key encoding we do
    not know (then the full check is the only one)."""
    enc = meta.get("chunk_key_encoding", {})
    if enc.get("name") != "default" or enc.get("configuration", {}).get("separator", "/") != "/":
        return None
    return os.path.join(path, name, "c", str(shard), *(["0"] * (ndim - 1)))


def shard_file(path: str, name: str, shard: int) -> str | None:
    """The file of shard ``shard`` of the sharded per-map array ``name`` (None when the array's
    key encoding is not the default one)."""
    with open(os.path.join(path, name, "zarr.json"), encoding="utf-8") as fh:
        meta = json.load(fh)
    return shard_file_in(path, name, meta, shard, len(meta["shape"]))
