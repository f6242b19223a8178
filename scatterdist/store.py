"""The Zarr v3 store of scattering coefficients (schema of DESIGN.md).

Layout of a store at ``PATH`` (a directory; it opens with plain ``xarray.open_zarr(PATH)``):

- ``coefficients (map, path, pixel)`` float32, zstd; inner chunk = 1 map, shard = K maps.
  Maps not yet done (or failed) hold the fill value NaN.
- ``status (map)`` int8: 0 todo, 1 ok, -1 failed. Chunked by shard (K maps), written by the
  shard's task *after* its data, in a second call: completion is never inferred from chunk
  existence.
- ``error (map)`` str: a short message for failed maps, ``""`` otherwise (chunked by shard).
- ``source (map)`` str: where the map came from (FITS path, ``store::variable[row]``, sim).
- ``label (map)`` int8, only when the catalog has labels (-1 where an entry has none).
- coordinates ``map`` (ids), ``path`` (``"S0"``, ``"S1 j1=7"``, ``"S2 j1=7 j2=5"``),
  ``order (path)``, ``j1 (path)``, ``j2 (path)`` (-1 where absent), ``pixel`` (HEALPix RING
  index at ``nside_out``) and its twin ``cell_ids (pixel)``; both carry the xdggs attributes
  ``grid_name="healpix"``, ``level=log2(nside_out)``, ``indexing_scheme="ring"``, so
  ``xdggs.decode(ds)`` (``cell_ids``) and ``xdggs.decode(ds, name="pixel")`` both work.
- root attributes: every transform parameter (``Scattering.config()``, also whole as the
  JSON string ``scattering_config``), ``config_hash``, ``catalog_hash``, ``shard_size``,
  ``n_maps``, ``nside_out``, ``scatterdist_version``, ``created`` (UTC ISO 8601).

A writer holds ``PATH.lock`` (see :class:`StoreLock`) for the duration of a run.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import shutil
import socket
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import dask.array as da
import numpy as np
import xarray as xr
import zarr

from scatterdist import __version__

if TYPE_CHECKING:  # pragma: no cover
    from scatterdist.catalog import Catalog

__all__ = [
    "StoreError",
    "StoreConfigError",
    "StoreLockedError",
    "StoreLock",
    "StoreLayout",
    "STATUS_TODO",
    "STATUS_OK",
    "STATUS_FAILED",
    "config_hash",
    "create",
    "write_shard",
    "write_status",
    "read_status",
    "read_rows",
    "layout",
    "open_coefficients",
    "MAX_ERROR_CHARS",
]

STATUS_TODO, STATUS_OK, STATUS_FAILED = 0, 1, -1
MAX_ERROR_CHARS = 300
#: Config keys that change how a result is computed, not what it is.
_HASH_EXCLUDE = frozenset({"nthreads", "backend", "device"})


class StoreError(RuntimeError):
    """The store is missing, malformed, or a write does not fit its layout."""


class StoreConfigError(StoreError):
    """An existing store was made with another configuration or catalog: refuse to resume."""


class StoreLockedError(StoreError):
    """Another live process holds the store's lock."""


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


# --------------------------------------------------------------------------- lock


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class StoreLock:
    """Exclusive writer lock ``PATH.lock`` (``O_CREAT | O_EXCL``) holding ``{pid, host, time}``.

    A lock whose pid is dead on this same host is stale and is taken over; a lock held by a
    live process, or by another host, raises :class:`StoreLockedError`.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.store = os.path.abspath(os.fspath(path)).rstrip(os.sep)
        self.path = self.store + ".lock"
        self.held = False

    def _owner(self) -> dict[str, Any] | None:
        try:
            with open(self.path, encoding="utf-8") as fh:
                return json.load(fh)
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, UnicodeDecodeError):
            return {}  # being written right now, or garbage: treat as held

    def acquire(self) -> None:
        """Take the lock or raise :class:`StoreLockedError`."""
        me = {"pid": os.getpid(), "host": socket.gethostname(),
              "time": _dt.datetime.now(_dt.timezone.utc).isoformat()}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if owner is None:
                    continue  # released in between: try again
                same_host = owner.get("host") == me["host"]
                pid = owner.get("pid")
                if same_host and isinstance(pid, int) and not _pid_alive(pid):
                    # Stale: move it aside atomically so only one taker wins, then retry.
                    stale = f"{self.path}.stale-{os.getpid()}"
                    with contextlib.suppress(FileNotFoundError):
                        os.rename(self.path, stale)
                        os.unlink(stale)
                    continue
                raise StoreLockedError(
                    f"store {self.store} is being written by pid {pid} on host "
                    f"{owner.get('host')} since {owner.get('time')} (lock file {self.path}); "
                    "wait for it to finish, or delete the lock file if that process is gone"
                ) from None
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(me, fh)
            self.held = True
            return
        raise StoreLockedError(f"could not take the lock {self.path}: it keeps changing owner")

    def release(self) -> None:
        """Remove the lock file if this object holds it."""
        if self.held:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            self.held = False

    def __enter__(self) -> StoreLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


# --------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class StoreLayout:
    """Shape of a store: ``n_maps`` maps in shards of ``shard_size`` (the last may be short)."""

    n_maps: int
    shard_size: int
    n_paths: int
    npix_out: int
    config_hash: str

    @property
    def n_shards(self) -> int:
        return -(-self.n_maps // self.shard_size)

    def bounds(self, shard_index: int) -> tuple[int, int]:
        """Map range ``[start, stop)`` of a shard."""
        if not 0 <= shard_index < self.n_shards:
            raise StoreError(f"shard {shard_index} out of range [0, {self.n_shards})")
        start = shard_index * self.shard_size
        return start, min(start + self.shard_size, self.n_maps)


def _path_coords(paths: Sequence[tuple[int, ...]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    order = np.array([len(p) for p in paths], dtype=np.int8)
    j1 = np.array([p[0] if len(p) > 0 else -1 for p in paths], dtype=np.int16)
    j2 = np.array([p[1] if len(p) > 1 else -1 for p in paths], dtype=np.int16)
    return order, j1, j2


def _xdggs_attrs(nside_out: int) -> dict[str, Any]:
    level = int(np.log2(nside_out))
    return {"grid_name": "healpix", "level": level, "indexing_scheme": "ring"}


def _root_attrs(config: dict[str, Any], chash: str, ids: Sequence[str], shard_size: int,
                scattering: Any) -> dict[str, Any]:
    attrs: dict[str, Any] = {k: _jsonable(v) for k, v in config.items()}
    attrs.update(
        scattering_config=json.dumps(_jsonable(config), sort_keys=True),
        config_hash=chash,
        catalog_hash=_catalog_hash(ids),
        shard_size=int(shard_size),
        n_maps=len(ids),
        n_paths=int(scattering.n_paths),
        nside_out=int(scattering.nside_out),
        scatterdist_version=__version__,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        status_codes="0 todo, 1 ok, -1 failed",
    )
    return attrs


def layout(path: str | os.PathLike) -> StoreLayout:
    """Read the layout of an existing store (raises :class:`StoreError` if it is not one)."""
    try:
        group = zarr.open_group(os.fspath(path), mode="r")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError) as exc:
        raise StoreError(f"{path} is not a scatterdist store (no Zarr group there)") from exc
    attrs = dict(group.attrs)
    missing = {"shard_size", "n_maps", "config_hash"} - attrs.keys()
    if missing:
        raise StoreError(f"{path} is a Zarr group but not a scatterdist store "
                         f"(attributes {sorted(missing)} missing)")
    shape = group["coefficients"].shape
    return StoreLayout(n_maps=int(attrs["n_maps"]), shard_size=int(attrs["shard_size"]),
                       n_paths=int(shape[1]), npix_out=int(shape[2]),
                       config_hash=str(attrs["config_hash"]))


def _check_compatible(path: str, config: dict[str, Any], ids: Sequence[str],
                      shard_size: int | None) -> StoreLayout:
    lay = layout(path)
    attrs = dict(zarr.open_group(path, mode="r").attrs)
    chash = config_hash(config)
    if attrs["config_hash"] != chash:
        stored = json.loads(attrs.get("scattering_config", "{}"))
        diff = {k: (stored.get(k), config.get(k)) for k in set(stored) | set(config)
                if k not in _HASH_EXCLUDE and _jsonable(stored.get(k)) != _jsonable(config.get(k))}
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


def create(
    path: str | os.PathLike,
    catalog: Catalog,
    scattering: Any,
    shard_size: int,
    overwrite: bool = False,
) -> bool:
    """Write the store template (metadata, coords, ``source``, ``label``, zero ``status``).

    ``scattering`` is a ``scatterdist.Scattering``. When a store already exists at ``path`` and
    ``overwrite`` is False it is validated for resuming instead (same config hash, same catalog,
    same shard size, else :class:`StoreConfigError`). Returns True when a new store was written.
    """
    path = os.fspath(path)
    if shard_size is None or int(shard_size) < 1:
        raise StoreError(f"shard_size must be a positive integer, got {shard_size!r}")
    shard_size = int(shard_size)
    config = scattering.config()
    ids = catalog.ids
    if os.path.exists(path) and not overwrite:
        _check_compatible(path, config, ids, shard_size)
        return False
    if os.path.exists(path):
        if not os.path.isdir(path) or not (
            os.path.exists(os.path.join(path, "zarr.json")) or not os.listdir(path)
        ):
            raise StoreError(f"refusing to overwrite {path}: it is not a Zarr store")
        shutil.rmtree(path)
    n, p, q = len(ids), int(scattering.n_paths), int(scattering.npix_out)
    k = min(shard_size, max(n, 1))
    order, j1, j2 = _path_coords(scattering.paths)
    pixel = np.arange(q, dtype=np.int64)
    pix_attrs = _xdggs_attrs(int(scattering.nside_out))
    data_vars: dict[str, Any] = {
        "coefficients": (("map", "path", "pixel"),
                         da.full((n, p, q), np.nan, dtype=np.float32, chunks=(k, p, q)),
                         {"long_name": "scattering coefficients", "units": "input map units",
                          "description": "S[path] f sampled on the HEALPix RING grid at nside_out"}),
        "status": (("map",), np.zeros(n, dtype=np.int8),
                   {"flag_values": [0, 1, -1], "flag_meanings": "todo ok failed"}),
        "error": (("map",), np.array([""] * n, dtype=object),
                  {"description": "why a map failed (empty when ok)"}),
        "source": (("map",), np.array(catalog.sources, dtype=object)),
    }
    labels = catalog.labels
    if labels is not None:
        data_vars["label"] = (("map",), np.asarray(labels, dtype=np.int8),
                              {"description": "class label (-1: none)"})
    coords = {
        "map": ("map", np.array(ids, dtype=object)),
        "path": ("path", np.array(scattering.path_labels, dtype=object)),
        "order": ("path", order),
        "j1": ("path", j1, {"description": "first wavelet scale (-1: absent)"}),
        "j2": ("path", j2, {"description": "second wavelet scale (-1: absent)"}),
        "pixel": ("pixel", pixel, pix_attrs),
        "cell_ids": ("pixel", pixel.copy(), pix_attrs),
    }
    ds = xr.Dataset(data_vars, coords=coords,
                    attrs=_root_attrs(config, config_hash(config), ids, shard_size, scattering))
    encoding = {
        "coefficients": {"chunks": (1, p, q), "shards": (k, p, q),
                         "compressors": [zarr.codecs.ZstdCodec(level=3)]},
        "status": {"chunks": (k,)},
        "error": {"chunks": (k,)},
        "source": {"chunks": (k,)},
    }
    if labels is not None:
        encoding["label"] = {"chunks": (k,)}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part",
                                category=UserWarning)
        ds.to_zarr(path, mode="w", encoding=encoding, compute=False, zarr_format=3,
                   consolidated=True)
    return True


def _write_status(group: zarr.Group, start: int, status: np.ndarray, errors: Sequence[str]) -> None:
    status = np.asarray(status, dtype=np.int8)
    if len(errors) != len(status):
        raise StoreError(f"{len(errors)} error messages for {len(status)} status values")
    stop = start + len(status)
    group["error"][start:stop] = np.array([str(e)[:MAX_ERROR_CHARS] for e in errors], dtype=object)
    group["status"][start:stop] = status


def write_status(path: str | os.PathLike, start: int, status: np.ndarray,
                 errors: Sequence[str]) -> None:
    """Write ``error`` then ``status`` for maps ``[start, start+len(status))`` (one shard)."""
    _write_status(zarr.open_group(os.fspath(path), mode="r+"), start, status, errors)


def write_shard(
    path: str | os.PathLike,
    shard_index: int,
    coefficients: np.ndarray,
    status: np.ndarray,
    errors: Sequence[str],
) -> None:
    """Write one whole shard: ``coefficients (k, n_paths, npix_out)`` first, then in a second
    call ``error`` and ``status`` (``(k,)`` int8, 1 ok / -1 failed). ``k`` is the shard's length.

    Rows of failed maps should be NaN. Only the task that owns a shard may call this.
    """
    group = zarr.open_group(os.fspath(path), mode="r+")
    attrs = group.attrs
    if "shard_size" not in attrs or "coefficients" not in group:
        raise StoreError(f"{path} is not a scatterdist store")
    coeff = group["coefficients"]
    lay = StoreLayout(int(attrs["n_maps"]), int(attrs["shard_size"]), int(coeff.shape[1]),
                      int(coeff.shape[2]), str(attrs["config_hash"]))
    start, stop = lay.bounds(shard_index)
    coefficients = np.asarray(coefficients)
    expected = (stop - start, lay.n_paths, lay.npix_out)
    if coefficients.shape != expected:
        raise StoreError(f"shard {shard_index} of {path} needs coefficients of shape {expected}, "
                         f"got {coefficients.shape}")
    if np.shape(status) != (stop - start,):
        raise StoreError(f"shard {shard_index} needs {stop - start} status values, "
                         f"got shape {np.shape(status)}")
    coeff[start:stop] = coefficients.astype(np.float32, copy=False)
    _write_status(group, start, status, errors)


def read_status(path: str | os.PathLike) -> np.ndarray:
    """The ``status (map)`` int8 array of a store (0 todo, 1 ok, -1 failed)."""
    return zarr.open_array(os.fspath(path), path="status", mode="r")[:]


def read_rows(path: str | os.PathLike, start: int, stop: int) -> np.ndarray:
    """``coefficients[start:stop]`` as float32 numpy."""
    return zarr.open_array(os.fspath(path), path="coefficients", mode="r")[start:stop]


def open_coefficients(path: str | os.PathLike) -> xr.Dataset:
    """Open a store lazily as an ``xarray.Dataset`` whose dask chunks are the shards."""
    lay = layout(path)
    return xr.open_zarr(os.fspath(path), chunks={"map": lay.shard_size}, consolidated=True)


@contextlib.contextmanager
def locked(path: str | os.PathLike) -> Iterator[StoreLock]:
    """Context manager holding :class:`StoreLock` on ``path``."""
    with StoreLock(path) as lock:
        yield lock
