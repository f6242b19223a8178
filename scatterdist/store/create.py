"""Creating a store (the template: metadata, coords, source, label, zero status)."""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr
import zarr

from scatterdist import __version__
from scatterdist.store.errors import StoreError
from scatterdist.store.safety import check_output, remove_store, store_kind
from scatterdist.store.schema import (
    DEFAULT_MIN_FSKY,
    _catalog_hash,
    _check_compatible,
    _hashed,
    _jsonable,
    config_hash,
    coverage_layout,
    data_config,
)

if TYPE_CHECKING:  # pragma: no cover
    from scatterdist.inputs import Catalog

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
        failure_codes="0 none, 1 input, 2 machine",
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
    An explicit ``fields=None`` with ``mask=None`` writes the pre-field schema (no ``field``
    dimension), which every reader refuses: it exists only to test that refusal.

    The output path is checked first (:func:`scatterdist.store.safety.check_output`): only a
    missing path, an empty directory or a scatterdist store are accepted. When a store exists
    and ``overwrite`` is False it is validated for resuming instead (same config hash —
    transform and data settings —, same catalog, same shard size, else
    :class:`StoreConfigError`). ``overwrite`` removes only a scatterdist store. The template is
    written into a sibling temporary directory and renamed into place, so an interrupted
    creation (a full disk) never leaves a half-made store at ``path``. Returns True when a new
    store was written.
    """
    path = os.fspath(path)
    if shard_size is None or int(shard_size) < 1:
        raise StoreError(f"shard_size must be a positive integer, got {shard_size!r}")
    shard_size = int(shard_size)
    config = scattering.config()
    data = data_config(fields, mask, min_fsky)
    ids = catalog.ids
    real = check_output(path, overwrite)
    kind = store_kind(real)
    if kind == "store" and not overwrite:
        _check_compatible(path, config, ids, shard_size, data)
        return False
    ds, encoding = _template(catalog, scattering, shard_size, config, data, per_map_coverage)
    _remove_leftovers(real)
    tmp = f"{real}.creating-{os.getpid()}"
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part",
                                    category=UserWarning)
            ds.to_zarr(tmp, mode="w", encoding=encoding, compute=False, zarr_format=3,
                       consolidated=True)
        if kind in ("store", "incomplete"):
            remove_store(real)  # --overwrite: only now that the new template is complete
        if kind == "empty":
            os.rmdir(real)  # an empty directory the user made: the store takes its place
        os.replace(tmp, real)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # ours: made just above
        raise
    return True


def _remove_leftovers(real: str) -> None:
    """Remove ``PATH.creating-PID`` templates of dead creators on this host (ours by name and content)."""
    from scatterdist.store.lock import _pid_alive

    parent, name = os.path.split(real)
    try:
        entries = os.listdir(parent)
    except OSError:
        return
    for entry in entries:
        pid = entry[len(name) + len(".creating-"):]
        if entry.startswith(name + ".creating-") and pid.isdigit() and not _pid_alive(int(pid)):
            full = os.path.join(parent, entry)
            if store_kind(full) in ("store", "incomplete", "empty"):
                remove_store(full)


def _template(catalog: Catalog, scattering: Any, shard_size: int, config: dict[str, Any],
              data: dict[str, Any] | None, per_map_coverage: bool | None) -> tuple[xr.Dataset, dict[str, Any]]:
    """The store's dataset (lazy fill values) and its Zarr encoding."""
    import dask.array as da  # here, not at import: readers (train, evaluate) never need it (0.45 s per process)

    ids = catalog.ids
    n, p, q = len(ids), int(scattering.n_paths), int(scattering.npix_out)
    k = min(shard_size, max(n, 1))
    pixel = np.arange(q, dtype=np.int64)
    pix_attrs = _xdggs_attrs(int(scattering.nside_out))
    coeff_attrs = {"long_name": "scattering coefficients", "units": "input map units",
                   "description": "S[path] f sampled on the HEALPix RING grid at nside_out"}
    # crc32c after zstd: a damaged chunk fails its checksum instead of decoding to wrong numbers.
    codecs = [zarr.codecs.ZstdCodec(level=3), zarr.codecs.Crc32cCodec()]
    cov_layout = ""
    if data is None:
        coeff_dims: tuple[str, ...] = ("map", "path", "pixel")
        block: tuple[int, ...] = (p, q)
    else:
        nf = len(data["fields"])
        coeff_dims, block = ("map", "field", "path", "pixel"), (nf, p, q)
        cov_layout = coverage_layout(catalog, per_map_coverage)
    per_map = {"chunks": (k,)}
    data_vars: dict[str, Any] = {
        "coefficients": (coeff_dims, da.full((n, *block), np.nan, dtype=np.float32, chunks=(k, *block)),
                         coeff_attrs),
        "status": (("map",), np.zeros(n, dtype=np.int8),
                   {"flag_values": [0, 1, -1], "flag_meanings": "todo ok failed"}),
        "error": (("map",), np.array([""] * n, dtype=object),
                  {"description": "why a map failed (empty when ok)"}),
        "failure": (("map",), np.zeros(n, dtype=np.int8),
                    {"flag_values": [0, 1, 2], "flag_meanings": "none input machine",
                     "description": "what a failed map failed on: its input (stays failed until "
                                    "--retry-failed) or the machine (retried by the next run)"}),
        "source": (("map",), np.array(catalog.sources, dtype=object)),
        "input_path": (("map",), np.array([""] * n, dtype=object),
                       {"description": "the input file the map was computed from (empty: simulation "
                                       "or in-memory input)"}),
        "input_size": (("map",), np.full(n, -1, dtype=np.int64),
                       {"units": "bytes", "description": "size of input_path when read (-1: none)"}),
        "input_mtime": (("map",), np.full(n, np.nan, dtype=np.float64),
                        {"units": "s", "description": "modification time of input_path when read, "
                                                    "Unix time (seconds since 1970-01-01 UTC; NaN: none)"}),
        "input_sha256": (("map",), np.array([""] * n, dtype=object),
                         {"description": "sha256 of the pixel data as read (float64 RING, every field)"}),
    }
    encoding: dict[str, Any] = {
        "coefficients": {"chunks": (1, *block), "shards": (k, *block), "compressors": codecs},
        **{name: dict(per_map) for name in ("status", "error", "failure", "source", "input_path",
                                            "input_size", "input_mtime", "input_sha256", "map_id")},
    }
    if data is not None:
        data_vars["sky_fraction"] = (("map",), da.full((n,), np.nan, dtype=np.float32, chunks=(k,)),
                                     {"long_name": "usable sky fraction of the map's mask",
                                      "description": "mean of the weight mask (1: full sky); NaN: not computed"})
        encoding["sky_fraction"] = dict(per_map)
        cov_attrs = {"long_name": "coverage", "valid_range": [0.0, 1.0],
                     "description": "fraction of each path's output the mask lets through "
                                    "(shared by all fields); NaN: not computed",
                     "layout": cov_layout}
        if cov_layout == "per_map":
            data_vars["coverage"] = (("map", "path", "pixel"),
                                     da.full((n, p, q), np.nan, dtype=np.float32, chunks=(k, p, q)), cov_attrs)
            encoding["coverage"] = {"chunks": (1, p, q), "shards": (k, p, q), "compressors": codecs}
        else:
            data_vars["coverage"] = (("path", "pixel"), np.full((p, q), np.nan, dtype=np.float32), cov_attrs)
            encoding["coverage"] = {"chunks": (p, q), "compressors": codecs}
    labels = catalog.labels
    if labels is not None:
        data_vars["label"] = (("map",), np.asarray(labels, dtype=np.int64),
                              {"description": "class label (-1: none)"})
        encoding["label"] = dict(per_map)
    map_ids = np.array(ids, dtype=object)
    coords: dict[str, Any] = {
        "map": ("map", map_ids),
        # ``ds.map`` is Dataset.map (a method): ``ds.map_id`` is the attribute spelling of the ids.
        "map_id": ("map", map_ids.copy(), {"description": "map ids (the map coordinate; ds.map is "
                                                          "xarray's Dataset.map method)"}),
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
    return xr.Dataset(data_vars, coords=coords, attrs=attrs), encoding
