"""The trainer's and evaluator's reads of a store: its info, labels, and blocks of maps.

Everything a consumer of a finished (or partly finished) store needs, without knowing the
array names: :func:`read_store_info` (fields, paths, coverage layout, shard size, number of
maps, status, labels, sky fractions, attributes), :func:`read_labels` (int64, -1 = none) and
:class:`CoefficientBlocks` (coefficients and coverage of a range of maps as model channels).
The pre-field schema is refused (:func:`~scatterdist.store.layout` raises
:class:`~scatterdist.store.LegacyStoreError` with the command that re-creates it); a chunk that
cannot be read raises :class:`~scatterdist.store.DamagedStoreError` naming its maps and the fix.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import zarr

from scatterdist.store.errors import StoreError
from scatterdist.store.read import DamagedStoreError, read_status_table
from scatterdist.store.schema import STATUS_OK, StoreLayout, layout

#: Label value of a map without one.
NO_LABEL = -1


class StoreFormatError(StoreError, ValueError):
    """The store's arrays do not agree with its attributes (shapes, dtypes)."""


@dataclass
class StoreInfo:
    """Metadata of a coefficient store (small arrays only; the coefficients stay on disk).

    ``map_ids`` are the ``map`` coordinate as strings; ``shard_size`` is the number of maps per
    shard (the grouping one task writes); ``status (n_maps,)`` int8 (1 ok, 0 todo, -1 failed);
    ``labels (n_maps,)`` int64 (any integer; -1 = no label), None when the store has no labels;
    ``fields`` the field names; ``coverage_layout`` ``"shared"`` (one ``(path, pixel)`` coverage
    for every map) or ``"per_map"``; ``sky_fraction (n_maps,)`` float64 (NaN: not computed);
    ``config_hash`` the store's configuration hash.
    """

    path: str
    n_maps: int
    n_paths: int
    npix: int
    nside_out: int
    shard_size: int
    map_ids: np.ndarray
    status: np.ndarray
    labels: np.ndarray | None
    path_labels: list[str]
    attrs: dict = field(default_factory=dict)
    fields: list[str] = field(default_factory=lambda: ["I"])
    coverage_layout: str | None = None
    sky_fraction: np.ndarray | None = None

    @property
    def n_fields(self) -> int:
        return len(self.fields)

    @property
    def config_hash(self) -> str:
        return str(self.attrs.get("config_hash", ""))

    @property
    def masked(self) -> bool:
        """True when some map with status 1 has a usable sky fraction below 1 (the store needs coverage channels)."""
        if self.sky_fraction is None:
            return False
        ok = self.status == STATUS_OK
        return bool(np.any(self.sky_fraction[ok] < 1.0))

    def n_inputs(self, coverage_channels: bool) -> int:
        """Number of model input channels: ``n_fields * n_paths`` (+ ``n_paths`` coverage channels)."""
        return (self.n_fields + int(bool(coverage_channels))) * self.n_paths

    def channel_labels(self, coverage_channels: bool) -> list[str]:
        """Label of every model input channel: ``"F PATH"`` field-major, then ``"coverage PATH"``."""
        out = [f"{f} {p}" for f in self.fields for p in self.path_labels]
        if coverage_channels:
            out += [f"coverage {p}" for p in self.path_labels]
        return out


def _strings(group: zarr.Group, name: str) -> list[str]:
    return [str(v) for v in np.asarray(group[name][:])]


def read_labels(store: str | os.PathLike) -> np.ndarray | None:
    """Label of every map, ``(n_maps,)`` int64 (any integer; -1: no label), or None when the store has none."""
    return read_status_table(os.path.abspath(os.fspath(store))).labels


def read_store_info(store: str | os.PathLike) -> StoreInfo:
    """Read the metadata of the coefficient store at ``store`` (a directory)."""
    path = os.path.abspath(os.fspath(store))
    lay = layout(path)
    table = read_status_table(path)
    group = zarr.open_group(path, mode="r")
    n_maps, n_paths, npix = lay.n_maps, lay.n_paths, lay.npix_out
    if tuple(group["coefficients"].shape) != (n_maps, lay.n_fields, n_paths, npix):
        raise StoreFormatError(f"store {path}: coefficients have shape {group['coefficients'].shape}, "
                               f"its attributes say {n_maps} maps")
    attrs = dict(group.attrs)
    nside_out = int(attrs.get("nside_out", round(np.sqrt(npix / 12))))
    if 12 * nside_out**2 != npix:
        raise StoreFormatError(f"store {path}: attribute nside_out={nside_out} does not match {npix} pixels")
    if table.status.shape != (n_maps,) or table.ids.shape != (n_maps,):
        raise StoreFormatError(f"store {path}: 'status' and 'map' must have {n_maps} entries")
    sky_fraction = np.asarray(group["sky_fraction"][:], dtype=np.float64)
    if sky_fraction.shape != (n_maps,):
        raise StoreFormatError(f"store {path}: 'sky_fraction' must have {n_maps} entries, got {sky_fraction.shape}")
    return StoreInfo(
        path=path, n_maps=n_maps, n_paths=n_paths, npix=npix, nside_out=nside_out, shard_size=lay.shard_size,
        map_ids=table.ids, status=table.status, labels=table.labels, path_labels=_strings(group, "path"), attrs=attrs,
        fields=list(lay.fields), coverage_layout=lay.coverage_layout, sky_fraction=sky_fraction,
    )


class CoefficientBlocks:
    """Blocks of consecutive maps of a store as model channels.

    :meth:`read` gives ``(k, n_fields * n_paths, npix)`` float32 coefficients, field-major,
    NaN kept (outside a path's coverage, or in maps not computed), and their coverage
    ``(k, n_paths, npix)`` float32. Opening reads only metadata (and the shared coverage).
    """

    def __init__(self, store: str | os.PathLike) -> None:
        self.store = os.path.abspath(os.fspath(store))
        lay: StoreLayout = layout(self.store)
        group = zarr.open_group(self.store, mode="r")
        self._coefficients = group["coefficients"]
        self._coverage = group["coverage"]
        self.n_fields, self.n_paths, self.npix = lay.n_fields, lay.n_paths, lay.npix_out
        self.coverage_layout = lay.coverage_layout
        self._shared = None
        if self.coverage_layout != "per_map":
            self._shared = self._checked(lambda: self._coverage[...], "the shared coverage")

    def _checked(self, read, what: str) -> np.ndarray:
        """``read()`` as float32; a chunk that cannot be decoded becomes one DamagedStoreError line."""
        try:
            return np.asarray(read(), dtype=np.float32)
        except Exception as exc:  # noqa: BLE001 - any decoding error of a missing, truncated or corrupt chunk
            raise DamagedStoreError(
                f"store {self.store}: {what} cannot be read ({type(exc).__name__}: {' '.join(str(exc).split())[:120]}); "
                f"run `scatterdist verify {self.store}` to mark the damaged maps todo, then scatter again"
            ) from exc

    def read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Coefficients and coverage of maps ``[start, stop)`` (see the class docstring)."""
        what = f"maps {start}-{stop - 1}"
        x = self._checked(lambda: self._coefficients[start:stop], f"the coefficients of {what}")
        k = x.shape[0]
        x = x.reshape(k, self.n_fields * self.n_paths, self.npix)
        if self._shared is None:
            cov = self._checked(lambda: self._coverage[start:stop], f"the coverage of {what}")
        else:
            cov = np.broadcast_to(self._shared, (k, self.n_paths, self.npix))
        return x, cov

    def valid_rows(self, x: np.ndarray, cov: np.ndarray) -> np.ndarray:
        """``(k,)`` bool: no non-finite value except NaN where the path's coverage is below 1."""
        finite = np.isfinite(x).all(axis=(1, 2))
        if finite.all():
            return finite
        cov_f = np.tile(cov, (1, self.n_fields, 1))
        bad = ~np.isfinite(x) & ~(np.isnan(x) & (cov_f < 1))
        return ~(bad.any(axis=(1, 2)) | ~np.isfinite(cov).all(axis=(1, 2)))
