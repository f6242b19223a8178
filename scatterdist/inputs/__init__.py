"""Inputs: the only code that knows file formats. Catalog of input maps (one entry per map),
readers (FITS, HealSparse, Zarr, simulations), fields (I, Q, U, E, B) and masks.

Modules, by job: :mod:`~scatterdist.inputs.catalog` (listing entries, globs, lists, labels
CSV), :mod:`~scatterdist.inputs.readers` (FITS, HealSparse, Zarr),
:mod:`~scatterdist.inputs.simulations` (``sim:`` specs), :mod:`~scatterdist.inputs.fields`,
:mod:`~scatterdist.inputs.masks`, :mod:`~scatterdist.inputs.load` (worker-side loading) and
:mod:`~scatterdist.inputs.base` (errors, constants, references).

A catalog never holds maps. Each entry carries a small picklable reference (:class:`MapRef`):
a FITS path, a (Zarr store, variable, row), or a (simulation spec, index). Dask tasks receive
references and load the maps themselves with :func:`load_maps`, which turns a bad input into
an exception *for that map only* (:class:`BadMapError`), never for the run.

Inputs accepted by :meth:`Catalog.from_inputs` (the ``scatterdist scatter INPUTS...``):

- ``map.fits`` / ``map.fits.gz``: a HEALPix FITS file (fields 0, 1, 2 are I, Q, U; the ones
  asked for are read; NESTED files are converted to RING). Id = file name without the extension.
- ``map.hsp`` / ``map.hs``: a HealSparse map (``healsparse.HealSparseMap.read``); its valid
  pixels are the map's mask. It is brought to the run nside with healsparse (degraded: mean of
  the valid sub-pixels, mask weight = covered fraction; upgraded: ``HealSparseMap.upgrade``).
- a glob such as ``'skies/*.fits'`` (quote it); it must match at least one file.
- ``list.txt``: a text file with one FITS path per line (``#`` comments; relative paths are
  relative to the list file).
- ``maps.zarr``: a Zarr store with a data variable ``maps (map, pixel)`` (or the only
  variable with those dims); ids from its ``map`` coordinate, labels from ``label (map)``.
- ``sim:KEY=VALUE,...``: a simulation spec, e.g. ``sim:kind=mixed,n=64,nside=64,seed=0,alpha=1.0``,
  parsed into ``scatterdist.sims.SimulationSpec.from_dict({...})`` (values become int, float
  or str); maps are generated inside the tasks from their seeds.

Fields (:data:`FIELDS`): ``I``, ``Q``, ``U`` are FITS fields 0, 1, 2; ``E`` and ``B`` are made
from (Q, U) by :func:`scatterdist.sphere.spin.qu_to_eb` (spin-2 harmonic transform) at the run
nside. HealSparse, Zarr and simulation inputs hold ``I`` only. A field the input lacks is a
:class:`BadMapError` for that map.

Masks (:func:`load_maps` with ``fields``): a map's weight mask in [0, 1] is its own mask (0 at
UNSEEN/NaN pixels of any field read, HealSparse coverage, a simulation's mask) times the global
mask (``--mask``, read once with :func:`scatterdist.sphere.mask.read_mask`). UNSEEN/NaN pixels
are data, not errors; infinite pixels are errors. A map whose sky fraction (mean of its weights:
HEALPix pixels have equal areas) is 0, or below ``min_fsky``, is a :class:`BadMapError`.

Labels: a ``label`` variable of a Zarr input, the simulation's ``labels()``, or a CSV file
(``labels_csv``, columns ``id,label``) that overrides them. Missing labels are stored as -1.
"""

from __future__ import annotations

from scatterdist.inputs.base import DEFAULT_MIN_FSKY, UNSEEN, BadMapError, CatalogError, LoadedMap, MapRef
from scatterdist.inputs.catalog import Catalog, Entry, read_labels_csv
from scatterdist.inputs.fields import FIELDS, check_fields
from scatterdist.inputs.load import load_maps, stack_maps
from scatterdist.inputs.masks import read_global_mask
from scatterdist.inputs.simulations import parse_sim_spec

__all__ = [
    "CatalogError",
    "BadMapError",
    "DEFAULT_MIN_FSKY",
    "Entry",
    "FIELDS",
    "LoadedMap",
    "MapRef",
    "Catalog",
    "UNSEEN",
    "check_fields",
    "load_maps",
    "parse_sim_spec",
    "read_global_mask",
    "read_labels_csv",
    "stack_maps",
]
