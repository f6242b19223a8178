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

from scatterdist.store.create import create
from scatterdist.store.errors import StoreConfigError, StoreError, StoreLockedError
from scatterdist.store.lock import StoreLock, locked
from scatterdist.store.read import (
    ShardData,
    mask_summary,
    open_coefficients,
    read_rows,
    read_shard,
    read_status,
)
from scatterdist.store.schema import (
    DEFAULT_MIN_FSKY,
    MAX_ERROR_CHARS,
    STATUS_FAILED,
    STATUS_OK,
    STATUS_TODO,
    StoreLayout,
    config_hash,
    coverage_layout,
    data_config,
    layout,
)
from scatterdist.store.write import write_coverage, write_shard, write_status

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
    "locked",
]

