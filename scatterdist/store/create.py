"""Creating a store (the template: metadata, coords, source, label, zero status)."""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import dask.array as da
import numpy as np
import xarray as xr
import zarr

from scatterdist import __version__
from scatterdist.store.errors import StoreError
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

