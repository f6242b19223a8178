"""The Zarr v3 store of scattering coefficients (schema of DESIGN.md).

Layout of a store at ``PATH`` (a directory; it opens with plain ``xarray.open_zarr(PATH)``):

- ``coefficients (map, field, path, pixel)`` float32, zstd; inner chunk = 1 map, shard = K
  maps. Maps not yet done (or failed) hold the fill value NaN. Stores made before fields
  existed (and ``create(..., fields=None)``) have ``coefficients (map, path, pixel)``:
  readers treat them as one field ``I``, coverage 1, sky fraction 1.
- coordinate ``field (field)``: field names, e.g. ``["I"]`` or ``["I", "E", "B"]`` (I, Q, U are
  Stokes parameters; E, B come from Q, U through the spin-2 transform).
- ``sky_fraction (map)`` float32: usable sky fraction of each map's weight mask (mean of the
  weights; 1.0 full sky); NaN before computed (and for maps that failed before it was known).
- ``coverage`` float32 in [0, 1] (shared by every field), NaN before computed: the fraction of
  each path's output that the mask lets through, per path and output pixel. Its layout
  follows one rule, fixed when the store is created (root attribute ``coverage_layout``):

  * ``coverage (path, pixel)`` ("shared") when masks cannot differ between maps: every input is
    a simulation and all share one mask setting (none, or the same ``mask``/``galactic_cut``),
    so every map's mask is that one times the global ``--mask``
    (``not catalog.masks_may_differ``);
  * ``coverage (map, path, pixel)`` ("per_map", chunked and sharded like ``coefficients``)
    otherwise: FITS, HealSparse and Zarr inputs can each carry their own mask (UNSEEN/NaN
    pixels, HealSparse coverage). ``create(per_map_coverage=...)`` forces either layout.
- ``status (map)`` int8: 0 todo, 1 ok, -1 failed. Chunked by shard (K maps), written by the
  shard's task *after* its data (coefficients, coverage, sky fraction), in a second call:
  completion is never inferred from chunk existence.
- ``error (map)`` str: a short message for failed maps, ``""`` otherwise (chunked by shard).
- ``source (map)`` str: where the map came from (FITS path, ``store::variable[row]``, sim).
- ``label (map)`` int8, only when the catalog has labels (-1 where an entry has none).
- coordinates ``map`` (ids), ``path`` (``"S0"``, ``"S1 j1=7"``, ``"S2 j1=7 j2=5"``),
  ``order (path)``, ``j1 (path)``, ``j2 (path)`` (-1 where absent), plus any other per-path
  coordinate the transform's ``path_coords()`` returns (e.g. ``kind``), ``pixel`` (HEALPix
  RING index at ``nside_out``) and its twin ``cell_ids (pixel)``; both carry the xdggs
  attributes ``grid_name="healpix"``, ``level=log2(nside_out)``, ``indexing_scheme="ring"``, so
  ``xdggs.decode(ds)`` (``cell_ids``) and ``xdggs.decode(ds, name="pixel")`` both work.
- root attributes: every transform parameter (``Scattering.config()``, also whole as the
  JSON string ``scattering_config``), the data settings ``fields`` (list), ``mask`` (absolute
  path of the global mask, ``""`` for none), ``mask_sha256``, ``min_fsky`` (also whole as the
  JSON string ``data_config``), ``coverage_layout``, ``config_hash`` (over the transform
  config and the data settings: resuming with other fields, another mask or min_fsky is
  refused), ``catalog_hash``, ``shard_size``, ``n_maps``, ``nside_out``, ``scatterdist_version``,
  ``created`` (UTC ISO 8601), ``masked_simulations`` (some input is a masked simulation).

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
    from scatterdist.inputs import Catalog

__all__ = [
    "StoreError",
    "StoreConfigError",
    "StoreLockedError",
    "StoreLock",
    "StoreLayout",
    "STATUS_TODO",
    "STATUS_OK",
    "STATUS_FAILED",
    "DEFAULT_MIN_FSKY",
    "ShardData",
    "config_hash",
    "coverage_layout",
    "create",
    "data_config",
    "read_shard",
    "write_coverage",
    "write_shard",
    "write_status",
    "read_status",
    "read_rows",
    "layout",
    "mask_summary",
    "open_coefficients",
    "MAX_ERROR_CHARS",
]

STATUS_TODO, STATUS_OK, STATUS_FAILED = 0, 1, -1
MAX_ERROR_CHARS = 300
#: Smallest usable sky fraction of a map (``scatterdist.inputs.DEFAULT_MIN_FSKY``).
DEFAULT_MIN_FSKY = 0.01
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


def _path_coords(paths: Sequence[tuple[int, ...]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    order = np.array([len(p) for p in paths], dtype=np.int8)
    j1 = np.array([p[0] if len(p) > 0 else -1 for p in paths], dtype=np.int16)
    j2 = np.array([p[1] if len(p) > 1 else -1 for p in paths], dtype=np.int16)
    return order, j1, j2


def _transform_path_coords(scattering: Any) -> dict[str, Any]:
    """Per-path coordinates: ``order``, ``j1``, ``j2`` and every other key of the transform's
    ``path_coords()`` (``label`` excepted: it is the ``path`` index itself)."""
    n = int(scattering.n_paths)
    order, j1, j2 = _path_coords(scattering.paths)
    out: dict[str, Any] = {
        "order": ("path", order),
        "j1": ("path", j1, {"description": "first wavelet scale (-1: absent)"}),
        "j2": ("path", j2, {"description": "second wavelet scale (-1: absent)"}),
    }
    extra = dict(scattering.path_coords()) if hasattr(scattering, "path_coords") else {}
    # Every store has kind/exponent (transforms without them, e.g. LowPass, are plain paths).
    extra.setdefault("kind", np.array(["modulus"] * n, dtype=object))
    extra.setdefault("exponent", np.ones(n, dtype=np.float32))
    for name, values in extra.items():
        if name in ("label", "path"):
            continue
        arr = np.asarray(values)
        if arr.shape != (n,):
            raise StoreError(f"the transform's path coordinate {name!r} has shape {arr.shape}, "
                             f"need ({n},) (one value per path)")
        if arr.dtype.kind in "US":
            arr = arr.astype(object)
        elif name == "order":
            arr = arr.astype(np.int8)
        elif name in ("j1", "j2"):
            arr = arr.astype(np.int16)
        attrs = out[name][2] if name in out and len(out[name]) > 2 else {}
        out[name] = ("path", arr, attrs) if attrs else ("path", arr)
    return out


def _xdggs_attrs(nside_out: int) -> dict[str, Any]:
    level = int(np.log2(nside_out))
    return {"grid_name": "healpix", "level": level, "indexing_scheme": "ring"}


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


def _root_attrs(config: dict[str, Any], chash: str, ids: Sequence[str], shard_size: int,
                scattering: Any, data: dict[str, Any] | None, coverage_layout: str) -> dict[str, Any]:
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
    if data is not None:
        attrs.update(data)
        attrs.update(data_config=json.dumps(data, sort_keys=True), coverage_layout=coverage_layout)
    return attrs


def _masked_simulations(catalog: Catalog) -> bool:
    """Whether some input is a simulation with its own mask (``mask`` or ``galactic_cut``)."""
    for ref in catalog.refs:
        if ref.kind == "sim":
            d = json.loads(ref.where)
            if d.get("mask") is not None or d.get("galactic_cut") is not None:
                return True
    return False


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


def create(
    path: str | os.PathLike,
    catalog: Catalog,
    scattering: Any,
    shard_size: int,
    overwrite: bool = False,
    *,
    fields: Sequence[str] | None = ("I",),
    mask: str | os.PathLike | None = None,
    min_fsky: float = DEFAULT_MIN_FSKY,
    per_map_coverage: bool | None = None,
) -> bool:
    """Write the store template (metadata, coords, ``source``, ``label``, zero ``status``).

    ``scattering`` is a ``scatterdist.Scattering`` (or any transform with ``n_paths``,
    ``npix_out``, ``nside_out``, ``paths``, ``path_labels``, ``config()`` and optionally
    ``path_coords()``). ``fields``: field names (``("I",)``, ``("I", "E", "B")``); ``mask``: the
    global mask file (its sha256 is recorded and hashed); ``min_fsky``: recorded and hashed;
    ``per_map_coverage``: force the coverage layout (default: :func:`coverage_layout`).
    An explicit ``fields=None`` with ``mask=None`` writes the legacy schema (no ``field``
    dimension, no ``coverage``/``sky_fraction``), as stores made before fields existed.

    When a store already exists at ``path`` and ``overwrite`` is False it is validated for
    resuming instead (same config hash — transform and data settings —, same catalog, same
    shard size, else :class:`StoreConfigError`). Returns True when a new store was written.
    """
    path = os.fspath(path)
    if shard_size is None or int(shard_size) < 1:
        raise StoreError(f"shard_size must be a positive integer, got {shard_size!r}")
    shard_size = int(shard_size)
    config = scattering.config()
    data = data_config(fields, mask, min_fsky)
    ids = catalog.ids
    if os.path.exists(path) and not overwrite:
        _check_compatible(path, config, ids, shard_size, data)
        return False
    if os.path.exists(path):
        if not os.path.isdir(path) or not (
            os.path.exists(os.path.join(path, "zarr.json")) or not os.listdir(path)
        ):
            raise StoreError(f"refusing to overwrite {path}: it is not a Zarr store")
        shutil.rmtree(path)
    n, p, q = len(ids), int(scattering.n_paths), int(scattering.npix_out)
    k = min(shard_size, max(n, 1))
    pixel = np.arange(q, dtype=np.int64)
    pix_attrs = _xdggs_attrs(int(scattering.nside_out))
    coeff_attrs = {"long_name": "scattering coefficients", "units": "input map units",
                   "description": "S[path] f sampled on the HEALPix RING grid at nside_out"}
    zstd = [zarr.codecs.ZstdCodec(level=3)]
    cov_layout = ""
    if data is None:
        coeff_dims: tuple[str, ...] = ("map", "path", "pixel")
        block: tuple[int, ...] = (p, q)
    else:
        nf = len(data["fields"])
        coeff_dims, block = ("map", "field", "path", "pixel"), (nf, p, q)
        cov_layout = coverage_layout(catalog, per_map_coverage)
    data_vars: dict[str, Any] = {
        "coefficients": (coeff_dims, da.full((n, *block), np.nan, dtype=np.float32, chunks=(k, *block)),
                         coeff_attrs),
        "status": (("map",), np.zeros(n, dtype=np.int8),
                   {"flag_values": [0, 1, -1], "flag_meanings": "todo ok failed"}),
        "error": (("map",), np.array([""] * n, dtype=object),
                  {"description": "why a map failed (empty when ok)"}),
        "source": (("map",), np.array(catalog.sources, dtype=object)),
    }
    encoding: dict[str, Any] = {
        "coefficients": {"chunks": (1, *block), "shards": (k, *block), "compressors": zstd},
        "status": {"chunks": (k,)},
        "error": {"chunks": (k,)},
        "source": {"chunks": (k,)},
    }
    if data is not None:
        data_vars["sky_fraction"] = (("map",), da.full((n,), np.nan, dtype=np.float32, chunks=(k,)),
                                     {"long_name": "usable sky fraction of the map's mask",
                                      "description": "mean of the weight mask (1: full sky); NaN: not computed"})
        encoding["sky_fraction"] = {"chunks": (k,)}
        cov_attrs = {"long_name": "coverage", "valid_range": [0.0, 1.0],
                     "description": "fraction of each path's output the mask lets through "
                                    "(shared by all fields); NaN: not computed",
                     "layout": cov_layout}
        if cov_layout == "per_map":
            data_vars["coverage"] = (("map", "path", "pixel"),
                                     da.full((n, p, q), np.nan, dtype=np.float32, chunks=(k, p, q)), cov_attrs)
            encoding["coverage"] = {"chunks": (1, p, q), "shards": (k, p, q), "compressors": zstd}
        else:
            data_vars["coverage"] = (("path", "pixel"), np.full((p, q), np.nan, dtype=np.float32), cov_attrs)
            encoding["coverage"] = {"chunks": (p, q), "compressors": zstd}
    labels = catalog.labels
    if labels is not None:
        data_vars["label"] = (("map",), np.asarray(labels, dtype=np.int8),
                              {"description": "class label (-1: none)"})
        encoding["label"] = {"chunks": (k,)}
    coords: dict[str, Any] = {
        "map": ("map", np.array(ids, dtype=object)),
        "path": ("path", np.array(scattering.path_labels, dtype=object)),
        **_transform_path_coords(scattering),
        "pixel": ("pixel", pixel, pix_attrs),
        "cell_ids": ("pixel", pixel.copy(), pix_attrs),
    }
    if data is not None:
        coords["field"] = ("field", np.array(data["fields"], dtype=object),
                           {"description": "I, Q, U: Stokes parameters; E, B: from Q, U (spin 2)"})
    chash = config_hash(_hashed(config, data))
    attrs = _root_attrs(config, chash, ids, shard_size, scattering, data, cov_layout)
    if data is not None:
        attrs["masked_simulations"] = _masked_simulations(catalog)
    ds = xr.Dataset(data_vars, coords=coords, attrs=attrs)
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


def _open_for_write(path: str | os.PathLike) -> tuple[zarr.Group, StoreLayout]:
    try:
        group = zarr.open_group(os.fspath(path), mode="r+")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError) as exc:
        raise StoreError(f"{path} is not a scatterdist store (no Zarr group there)") from exc
    if "shard_size" not in group.attrs or "coefficients" not in group:
        raise StoreError(f"{path} is not a scatterdist store")
    return group, layout(path)


def _check_coverage(coverage: np.ndarray, shape: tuple[int, ...], what: str) -> np.ndarray:
    cov = np.asarray(coverage, dtype=np.float32)
    if cov.shape != shape:
        raise StoreError(f"{what} needs coverage of shape {shape}, got {cov.shape}")
    finite = cov[np.isfinite(cov)]
    if finite.size and (finite.min() < 0 or finite.max() > 1):
        raise StoreError(f"{what}: coverage values must lie in [0, 1] (NaN: not computed), "
                         f"got [{finite.min()}, {finite.max()}]")
    return cov


def write_coverage(path: str | os.PathLike, coverage: np.ndarray) -> None:
    """Write the shared ``coverage (path, pixel)`` of a store whose masks cannot differ.

    Idempotent (the value depends only on the mask and the transform): any task, or the
    client once, may write it. Per-map stores take coverage through :func:`write_shard`.
    """
    group, lay = _open_for_write(path)
    if not lay.has_field_dim or lay.per_map_coverage:
        raise StoreError(f"{path} has no shared coverage (layout {lay.coverage_layout or 'none'}): "
                         "give per-map coverage to write_shard")
    group["coverage"][...] = _check_coverage(coverage, (lay.n_paths, lay.npix_out), f"store {path}")


def write_shard(
    path: str | os.PathLike,
    shard_index: int,
    coefficients: np.ndarray,
    status: np.ndarray,
    errors: Sequence[str],
    *,
    coverage: np.ndarray | None = None,
    sky_fraction: np.ndarray | None = None,
) -> None:
    """Write one whole shard of ``k`` maps, data first and ``error``/``status`` last.

    ``coefficients``: ``(k, F, n_paths, npix_out)``, or ``(k, n_paths, npix_out)`` when the
    store has one field (or no ``field`` dimension). ``status``: ``(k,)`` int8, 1 ok / -1
    failed; ``errors``: ``k`` messages. ``coverage``: ``(k, n_paths, npix_out)`` for a per-map
    store, ``(n_paths, npix_out)`` for a shared one; None means the maps were transformed full
    sky (ok rows get 1, failed rows NaN; refused when the store has a global mask).
    ``sky_fraction``: ``(k,)`` (NaN allowed); None means 1.0 for ok rows, NaN for failed rows.
    Rows of failed maps should be NaN. Only the task that owns a shard may call this.
    """
    group, lay = _open_for_write(path)
    start, stop = lay.bounds(shard_index)
    k = stop - start
    coefficients = np.asarray(coefficients)
    nf = lay.n_fields
    if lay.has_field_dim and coefficients.ndim == 3 and nf == 1:
        coefficients = coefficients[:, None]
    elif not lay.has_field_dim and coefficients.ndim == 4 and coefficients.shape[1:2] == (1,):
        coefficients = coefficients[:, 0]
    expected = (k, nf, lay.n_paths, lay.npix_out) if lay.has_field_dim else (k, lay.n_paths, lay.npix_out)
    if coefficients.shape != expected:
        raise StoreError(f"shard {shard_index} of {path} needs coefficients of shape {expected} "
                         f"(map, {'field, ' if lay.has_field_dim else ''}path, pixel), got {coefficients.shape}")
    status_arr = np.asarray(status)
    if status_arr.shape != (k,):
        raise StoreError(f"shard {shard_index} needs {k} status values, got shape {status_arr.shape}")
    ok = status_arr == STATUS_OK
    cov = frac = None
    if lay.has_field_dim:
        what = f"shard {shard_index} of {path}"
        if coverage is None:
            if group.attrs.get("mask") or group.attrs.get("masked_simulations"):
                why = (f"the global mask {group.attrs['mask']}" if group.attrs.get("mask")
                       else "masked simulations (mask or galactic_cut)")
                raise StoreError(f"{what}: the store has {why}; pass the transform's coverage")
            shape = (k, lay.n_paths, lay.npix_out) if lay.per_map_coverage else (lay.n_paths, lay.npix_out)
            cov = np.ones(shape, np.float32)
            if lay.per_map_coverage:
                cov[~ok] = np.nan
        else:
            shape = (k, lay.n_paths, lay.npix_out) if lay.per_map_coverage else (lay.n_paths, lay.npix_out)
            cov = _check_coverage(coverage, shape, what)
        if sky_fraction is None:
            frac = np.where(ok, 1.0, np.nan).astype(np.float32)
        else:
            frac = np.asarray(sky_fraction, dtype=np.float32)
            if frac.shape != (k,):
                raise StoreError(f"{what} needs {k} sky fractions, got shape {frac.shape}")
    group["coefficients"][start:stop] = coefficients.astype(np.float32, copy=False)
    if cov is not None:
        if lay.per_map_coverage:
            group["coverage"][start:stop] = cov
        else:
            group["coverage"][...] = cov
        group["sky_fraction"][start:stop] = frac
    _write_status(group, start, status_arr, errors)


@dataclass(frozen=True)
class ShardData:
    """What a shard holds (see :func:`read_shard`)."""

    coefficients: np.ndarray          #: (k, F, P, N) float32 (F = 1 for a store without fields)
    coverage: np.ndarray | None       #: (k, P, N) per map, (P, N) shared, None: no coverage
    sky_fraction: np.ndarray | None   #: (k,) float32, None: not recorded
    status: np.ndarray                #: (k,) int8
    errors: list[str]


def read_shard(path: str | os.PathLike, shard_index: int) -> ShardData:
    """Everything :func:`write_shard` wrote for one shard (to rewrite a shard whole on resume)."""
    lay = layout(path)
    start, stop = lay.bounds(shard_index)
    group = zarr.open_group(os.fspath(path), mode="r")
    coeffs = group["coefficients"][start:stop]
    if coeffs.ndim == 3:
        coeffs = coeffs[:, None]
    cov = frac = None
    if lay.has_field_dim:
        cov = group["coverage"][start:stop] if lay.per_map_coverage else group["coverage"][...]
        frac = group["sky_fraction"][start:stop]
    return ShardData(coeffs, cov, frac, group["status"][start:stop].astype(np.int8),
                     [str(e) for e in group["error"][start:stop]])


def read_status(path: str | os.PathLike) -> np.ndarray:
    """The ``status (map)`` int8 array of a store (0 todo, 1 ok, -1 failed)."""
    return zarr.open_array(os.fspath(path), path="status", mode="r")[:]


def read_rows(path: str | os.PathLike, start: int, stop: int) -> np.ndarray:
    """``coefficients[start:stop]`` as float32 numpy, as stored: ``(k, F, P, N)``, or
    ``(k, P, N)`` for a store without a ``field`` dimension."""
    return zarr.open_array(os.fspath(path), path="coefficients", mode="r")[start:stop]


def open_coefficients(path: str | os.PathLike) -> xr.Dataset:
    """Open a store lazily as an ``xarray.Dataset`` whose dask chunks are the shards."""
    lay = layout(path)
    return xr.open_zarr(os.fspath(path), chunks={"map": lay.shard_size}, consolidated=True)


def mask_summary(path: str | os.PathLike, min_coverage: float | None = None) -> dict[str, Any]:
    """Fields, masks, sky fractions and coverage of a store, for ``scatterdist info``.

    Returns ``{"fields", "mask", "coverage_layout", "sky_fraction", "coverage"}``:
    ``sky_fraction`` = ``{"n", "min", "median", "max"}`` over maps whose fraction is known (None
    if none is); ``coverage`` = ``{"min_coverage", "mean", "covered", "per_path"}`` where
    ``covered`` is the fraction of computed (map,) path, pixel values with coverage >=
    ``min_coverage`` (default: the store's ``min_coverage`` attribute, else 0.9) and
    ``per_path`` maps each path label to that fraction (None before any coverage is written).
    Stores without fields report field ``I``, full sky.
    """
    lay = layout(path)
    ds = open_coefficients(path)
    attrs = ds.attrs
    if not lay.has_field_dim:
        return {"fields": ["I"], "mask": "", "coverage_layout": "", "sky_fraction": None, "coverage": None}
    thr = float(attrs.get("min_coverage", 0.9) if min_coverage is None else min_coverage)
    frac = ds["sky_fraction"].values.astype(np.float64)
    known = frac[np.isfinite(frac)]
    sky = None if known.size == 0 else {"n": int(known.size), "min": float(known.min()),
                                        "median": float(np.median(known)), "max": float(known.max())}
    cov = ds["coverage"]
    other = [d for d in cov.dims if d != "path"]
    valid = cov.notnull()
    n_valid = valid.sum(other).values
    coverage = None
    if n_valid.sum() > 0:
        n_cov = (cov >= thr).sum(other).values
        per_path = {str(lbl): (float(c / n) if n else float("nan"))
                    for lbl, c, n in zip(ds["path"].values, n_cov, n_valid)}
        coverage = {"min_coverage": thr, "mean": float(cov.mean().values),
                    "covered": float(n_cov.sum() / n_valid.sum()), "per_path": per_path}
    return {"fields": list(lay.fields), "mask": str(attrs.get("mask", "")),
            "coverage_layout": lay.coverage_layout, "sky_fraction": sky, "coverage": coverage}


@contextlib.contextmanager
def locked(path: str | os.PathLike) -> Iterator[StoreLock]:
    """Context manager holding :class:`StoreLock` on ``path``."""
    with StoreLock(path) as lock:
        yield lock
