"""Schema facts of a store: status codes, config and catalog hashes, layout, compatibility."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr

from scatterdist.store.errors import StoreConfigError, StoreError

if TYPE_CHECKING:  # pragma: no cover
    from scatterdist.inputs import Catalog

STATUS_TODO, STATUS_OK, STATUS_FAILED = 0, 1, -1
MAX_ERROR_CHARS = 300
#: Smallest usable sky fraction of a map (``scatterdist.inputs.DEFAULT_MIN_FSKY``).
DEFAULT_MIN_FSKY = 0.01
#: Config keys that change how a result is computed, not what it is.
_HASH_EXCLUDE = frozenset({"nthreads", "backend", "device"})


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


def config_hash(config: dict[str, Any]) -> str:
    """sha256 (hex, 16 chars) of the canonical JSON of a transform config.

    Execution details (``nthreads``, ``backend``, ``device``) are left out: a store made on
    CPU can be resumed on GPU workers.
    """
    canon = {k: _jsonable(v) for k, v in config.items() if k not in _HASH_EXCLUDE}
    text = json.dumps(canon, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _catalog_hash(ids: Sequence[str]) -> str:
    h = hashlib.sha256()
    for i in ids:
        h.update(i.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class StoreLayout:
    """Shape of a store: ``n_maps`` maps in shards of ``shard_size`` (the last may be short).

    ``fields`` is ``()`` for a store without a ``field`` dimension (made before fields
    existed); ``coverage_layout`` is ``"shared"``, ``"per_map"`` or ``""`` (no coverage).
    """

    n_maps: int
    shard_size: int
    n_paths: int
    npix_out: int
    config_hash: str
    fields: tuple[str, ...] = ()
    coverage_layout: str = ""

    @property
    def n_fields(self) -> int:
        """Number of fields (1 for a store without a ``field`` dimension)."""
        return max(1, len(self.fields))

    @property
    def has_field_dim(self) -> bool:
        return bool(self.fields)

    @property
    def per_map_coverage(self) -> bool:
        return self.coverage_layout == "per_map"

    @property
    def n_shards(self) -> int:
        return -(-self.n_maps // self.shard_size)

    def bounds(self, shard_index: int) -> tuple[int, int]:
        """Map range ``[start, stop)`` of a shard."""
        if not 0 <= shard_index < self.n_shards:
            raise StoreError(f"shard {shard_index} out of range [0, {self.n_shards})")
        start = shard_index * self.shard_size
        return start, min(start + self.shard_size, self.n_maps)


def _file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def data_config(fields: Sequence[str] | None, mask: str | os.PathLike | None = None,
                min_fsky: float = DEFAULT_MIN_FSKY) -> dict[str, Any] | None:
    """The data settings a store records and hashes: ``fields``, ``mask`` (absolute path or
    ``""``), ``mask_sha256`` (of the file's bytes, ``""`` for none) and ``min_fsky``.

    None for the legacy schema (``fields is None and mask is None``).
    """
    if fields is None and mask is None:
        return None
    from scatterdist.inputs import check_fields

    names = list(check_fields(("I",) if fields is None else fields))
    mpath, digest = "", ""
    if mask is not None:
        mpath = os.path.abspath(os.fspath(mask))
        try:
            digest = _file_sha256(mpath)
        except OSError as exc:
            raise StoreError(f"cannot read the mask {mpath}: {exc}") from exc
    return {"fields": names, "mask": mpath, "mask_sha256": digest, "min_fsky": float(min_fsky)}


def _hashed(config: dict[str, Any], data: dict[str, Any] | None) -> dict[str, Any]:
    """What ``config_hash`` covers: the transform config plus the data settings (not the
    mask's path: a mask moved elsewhere with the same bytes is the same mask)."""
    if data is None:
        return dict(config)
    out = dict(config)
    out.update({f"data.{k}": v for k, v in data.items() if k != "mask"})
    return out


def layout(path: str | os.PathLike) -> StoreLayout:
    """Read the layout of an existing store (raises :class:`StoreError` if it is not one)."""
    try:
        group = zarr.open_group(os.fspath(path), mode="r")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError) as exc:
        raise StoreError(f"{path} is not a scatterdist store (no Zarr group there)") from exc
    attrs = dict(group.attrs)
    missing = {"shard_size", "n_maps", "config_hash"} - attrs.keys()
    if missing or "coefficients" not in group:
        raise StoreError(f"{path} is a Zarr group but not a scatterdist store "
                         f"(attributes {sorted(missing) or ['coefficients']} missing)")
    shape = group["coefficients"].shape
    fields = tuple(str(f) for f in attrs.get("fields", ())) if len(shape) == 4 else ()
    return StoreLayout(n_maps=int(attrs["n_maps"]), shard_size=int(attrs["shard_size"]),
                       n_paths=int(shape[-2]), npix_out=int(shape[-1]),
                       config_hash=str(attrs["config_hash"]), fields=fields,
                       coverage_layout=str(attrs.get("coverage_layout", "")) if fields else "")


def _check_compatible(path: str, config: dict[str, Any], ids: Sequence[str],
                      shard_size: int | None, data: dict[str, Any] | None = None) -> StoreLayout:
    lay = layout(path)
    attrs = dict(zarr.open_group(path, mode="r").attrs)
    chash = config_hash(_hashed(config, data))
    if attrs["config_hash"] != chash:
        stored = json.loads(attrs.get("scattering_config", "{}"))
        diff = {k: (stored.get(k), config.get(k)) for k in set(stored) | set(config)
                if k not in _HASH_EXCLUDE and _jsonable(stored.get(k)) != _jsonable(config.get(k))}
        stored_data = json.loads(attrs["data_config"]) if "data_config" in attrs else None
        if (stored_data is None) != (data is None):
            diff["field dimension"] = ("absent" if stored_data is None else "present",
                                       "absent" if data is None else "present")
        elif data is not None:
            diff.update({k: (stored_data.get(k), v) for k, v in data.items()
                         if k != "mask" and _jsonable(stored_data.get(k)) != _jsonable(v)})
        raise StoreConfigError(
            f"store {path} was made with another configuration (hash {attrs['config_hash']} "
            f"!= {chash}); differing parameters (stored, requested): {diff}. Use the same "
            "parameters to resume, another --output, or --overwrite to start again"
        )
    if attrs.get("catalog_hash") != _catalog_hash(ids):
        raise StoreConfigError(
            f"store {path} holds another catalog ({attrs['n_maps']} maps, catalog hash "
            f"{attrs.get('catalog_hash')}; requested {len(ids)} maps, hash {_catalog_hash(ids)}): "
            "resume with the same inputs in the same order, another --output, or --overwrite"
        )
    if shard_size is not None and int(shard_size) != lay.shard_size:
        raise StoreConfigError(
            f"store {path} has shard size {lay.shard_size}, requested {shard_size}: "
            "omit --shard-size to resume, or use --overwrite"
        )
    return lay


def coverage_layout(catalog: Catalog, per_map_coverage: bool | None = None) -> str:
    """``"per_map"`` when masks may differ between the catalog's maps, else ``"shared"``
    (see the module docstring); ``per_map_coverage`` forces it."""
    if per_map_coverage is None:
        per_map_coverage = bool(catalog.masks_may_differ)
    return "per_map" if per_map_coverage else "shared"

