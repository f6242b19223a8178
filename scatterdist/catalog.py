"""Catalog of input maps: one entry (id, source, label?) per map, plus how a task loads it.

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

import csv
import glob
import json
import os
import threading
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "CatalogError",
    "BadMapError",
    "DEFAULT_MIN_FSKY",
    "Entry",
    "FIELDS",
    "LoadedMap",
    "MapRef",
    "Catalog",
    "check_fields",
    "load_maps",
    "parse_sim_spec",
    "read_global_mask",
    "stack_maps",
]

_FITS_SUFFIXES = (".fits", ".fits.gz", ".fit", ".fits.fz")
_HSP_SUFFIXES = (".hsp", ".hs")
#: Field names a store can hold: Stokes I, Q, U (FITS fields 0, 1, 2) and E, B from (Q, U).
FIELDS = ("I", "Q", "U", "E", "B")
_STOKES_COLUMN = {"I": 0, "Q": 1, "U": 2}
#: Smallest usable sky fraction of a map (same value as ``scatterdist.sphere.mask.DEFAULT_MIN_FSKY``).
DEFAULT_MIN_FSKY = 0.01
_GLOB_CHARS = set("*?[")
UNSEEN = -1.6375e30


class CatalogError(ValueError):
    """The inputs cannot make a catalog (no files match, unreadable list, bad spec, bad CSV)."""


class BadMapError(ValueError):
    """One input map is unusable (missing/corrupt file, wrong nside, NaN or UNSEEN pixels)."""


@dataclass(frozen=True)
class MapRef:
    """How a task finds one map. ``kind`` is ``"fits"``, ``"hsp"``, ``"zarr"`` or ``"sim"``.

    fits, hsp (HealSparse): ``where`` = path. zarr: ``where`` = store path, ``variable``, ``index`` = row.
    sim: ``where`` = JSON of ``spec.to_dict()``, ``index`` = simulation index.
    """

    kind: str
    where: str
    index: int = -1
    variable: str = ""


@dataclass(frozen=True, eq=False)
class LoadedMap:
    """One loaded map: its fields, its weight mask and its sky fraction.

    ``data``: ``(F, npix)`` float64, HEALPix RING, fields in the order asked for, in the
    input's units; pixels whose weight is 0 hold 0.0 (finite). ``mask``: ``(npix,)`` float64
    weights in [0, 1] (the map's own mask times the global mask, not apodised), or None for a
    full-sky map with no global mask. ``sky_fraction``: mean of the weights (1.0 when ``mask``
    is None). ``own_mask``: the input itself carried a mask (UNSEEN/NaN pixels, HealSparse
    coverage, a simulation's mask).
    """

    data: np.ndarray
    mask: np.ndarray | None
    sky_fraction: float
    fields: tuple[str, ...]
    own_mask: bool = False

    @property
    def weights(self) -> np.ndarray:
        """The mask as an array: ``mask``, or ones for a full-sky map."""
        return np.ones(self.data.shape[-1]) if self.mask is None else self.mask


@dataclass(frozen=True)
class Entry:
    """One catalog entry: unique ``id``, human-readable ``source``, optional int ``label``."""

    id: str
    source: str
    ref: MapRef
    label: int | None = None


@dataclass
class Catalog:
    """An ordered list of :class:`Entry`; ``nside`` is known for Zarr/simulation inputs."""

    entries: list[Entry] = field(default_factory=list)
    nside: int | None = None

    # ------------------------------------------------------------------ views
    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self):
        return iter(self.entries)

    def __getitem__(self, i: int) -> Entry:
        return self.entries[i]

    @property
    def ids(self) -> list[str]:
        return [e.id for e in self.entries]

    @property
    def sources(self) -> list[str]:
        return [e.source for e in self.entries]

    @property
    def refs(self) -> list[MapRef]:
        return [e.ref for e in self.entries]

    @property
    def labels(self) -> np.ndarray | None:
        """int8 labels (-1 where missing), or None when no entry has a label."""
        if all(e.label is None for e in self.entries):
            return None
        return np.array([-1 if e.label is None else e.label for e in self.entries], dtype=np.int8)

    # ------------------------------------------------------------------ building
    def __add__(self, other: Catalog) -> Catalog:
        if self.nside is not None and other.nside is not None and self.nside != other.nside:
            raise CatalogError(f"cannot combine inputs at nside {self.nside} and {other.nside}")
        return Catalog(_unique(self.entries + other.entries), self.nside or other.nside)

    @classmethod
    def from_fits(cls, paths: str | Sequence[str]) -> Catalog:
        """FITS and HealSparse (``.hsp``/``.hs``) files from paths, globs and ``.txt`` lists
        (missing files stay: status -1 later)."""
        if isinstance(paths, (str, os.PathLike)):
            paths = [os.fspath(paths)]
        files = []
        for p in paths:
            files.extend(_expand(os.fspath(p)))
        entries = [Entry(id=_stem(f), source=os.path.abspath(f),
                         ref=MapRef("hsp" if _is_healsparse(f) else "fits", os.path.abspath(f)))
                   for f in files]
        return cls(_unique(entries))

    @classmethod
    def from_zarr(cls, data: Any, variable: str | None = None) -> Catalog:
        """Maps ``(map, pixel)`` of a Zarr store path, or an xarray object opened from one."""
        import xarray as xr

        if isinstance(data, (str, os.PathLike)):
            path = os.path.abspath(os.fspath(data))
            if not os.path.exists(path):
                raise CatalogError(f"Zarr input {path} does not exist")
            with warnings.catch_warnings():  # stores without consolidated metadata are fine
                warnings.filterwarnings("ignore", message="Failed to open Zarr store with consolidated")
                ds = xr.open_zarr(path, consolidated=None)
        else:
            ds = data
            path, found = _zarr_source(ds)
            variable = variable or found
        if isinstance(ds, xr.DataArray):
            variable = variable or ds.name
            ds = ds.to_dataset(name=variable) if ds.name is None else ds.to_dataset()
        variable = variable or _pick_variable(ds)
        if variable not in ds:
            raise CatalogError(f"Zarr input {path} has no variable {variable!r} (has {list(ds.data_vars)})")
        arr = ds[variable]
        if arr.dims != ("map", "pixel"):
            raise CatalogError(f"variable {variable!r} of {path} has dims {arr.dims}, need ('map', 'pixel')")
        from scatterdist.sphere import npix2nside

        try:
            nside = npix2nside(arr.sizes["pixel"])
        except ValueError as exc:
            raise CatalogError(f"{path}: {arr.sizes['pixel']} pixels is not a HEALPix map size") from exc
        n = arr.sizes["map"]
        ids = ([str(v) for v in ds["map"].values] if "map" in ds.coords else [f"map{i:06d}" for i in range(n)])
        labels = ds["label"].values if "label" in ds and ds["label"].dims == ("map",) else None
        entries = [
            Entry(id=ids[i], source=f"{path}::{variable}[{i}]",
                  ref=MapRef("zarr", path, i, variable),
                  label=None if labels is None else int(labels[i]))
            for i in range(n)
        ]
        return cls(_unique(entries), nside)

    @classmethod
    def from_simulation(cls, spec: Any) -> Catalog:
        """Entries of a ``scatterdist.sims.SimulationSpec``; maps are generated in the tasks."""
        ids = list(spec.map_ids())
        labels = np.asarray(spec.labels())
        if len(ids) != spec.n or len(labels) != spec.n:
            raise CatalogError(f"simulation spec gives {len(ids)} ids and {len(labels)} labels for n={spec.n}")
        where = json.dumps(spec.to_dict(), sort_keys=True)
        entries = [Entry(id=ids[i], source=spec.source(i), ref=MapRef("sim", where, i), label=int(labels[i]))
                   for i in range(spec.n)]
        return cls(_unique(entries), int(spec.nside))

    @classmethod
    def from_inputs(cls, inputs: Sequence[str], labels_csv: str | None = None) -> Catalog:
        """Catalog from CLI inputs (FITS, globs, ``.txt`` lists, ``.zarr``, ``sim:...``), in order."""
        if not inputs:
            raise CatalogError("no inputs given")
        cat = cls()
        fits: list[str] = []

        def flush() -> None:
            nonlocal cat, fits
            if fits:
                cat = cat + cls.from_fits(fits)
                fits = []

        for item in inputs:
            text = os.fspath(item)
            if text.startswith("sim:"):
                flush()
                cat = cat + cls.from_simulation(parse_sim_spec(text))
            elif text.rstrip("/").endswith(".zarr") or (os.path.isdir(text) and os.path.exists(os.path.join(text, "zarr.json"))):
                flush()
                cat = cat + cls.from_zarr(text)
            else:
                fits.append(text)
        flush()
        if labels_csv is not None:
            cat = cat.with_labels_csv(labels_csv)
        return cat

    def with_labels_csv(self, path: str) -> Catalog:
        """A copy whose labels come from a CSV with columns ``id,label`` (unlisted ids keep theirs)."""
        labels = read_labels_csv(path)
        unknown = set(labels) - set(self.ids)
        if unknown:
            raise CatalogError(f"labels file {path} names {len(unknown)} ids not in the inputs, "
                               f"e.g. {sorted(unknown)[:3]}")
        entries = [Entry(e.id, e.source, e.ref, labels.get(e.id, e.label)) for e in self.entries]
        return Catalog(entries, self.nside)

    @property
    def masks_may_differ(self) -> bool:
        """Whether two maps of this catalog can have different masks (before a global mask).

        False only when every input is a simulation and all share one mask setting (none, or
        the same ``mask``/``galactic_cut``); FITS, HealSparse and Zarr inputs can each carry
        their own mask (UNSEEN/NaN pixels, coverage), so any of them makes this True.
        """
        settings = set()
        for e in self.entries:
            if e.ref.kind != "sim":
                return True
            d = json.loads(e.ref.where)
            settings.add((d.get("mask"), d.get("galactic_cut")))
        return len(settings) > 1

    def infer_nside(self) -> int:
        """The run's nside: known for Zarr/sim inputs, else from the first readable FITS or
        HealSparse header (a HealSparse map's ``nside_sparse``)."""
        if self.nside is not None:
            return self.nside
        from astropy.io import fits as afits

        for e in self.entries:
            if e.ref.kind not in ("fits", "hsp"):
                continue
            try:
                with afits.open(e.ref.where) as hdul:
                    for hdu in hdul[1:] + hdul[:1]:
                        if "NSIDE" in hdu.header:
                            return int(hdu.header["NSIDE"])
            except (OSError, ValueError):
                continue
        raise CatalogError("cannot infer nside: no input has a readable NSIDE header; pass --nside")


def parse_sim_spec(text: str) -> Any:
    """``"sim:kind=mixed,n=64,nside=64,seed=0,alpha=1.0"`` -> ``SimulationSpec``."""
    body = text[4:] if text.startswith("sim:") else text
    params: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in body.split(","))):
        if "=" not in part:
            raise CatalogError(f"simulation spec {text!r}: {part!r} is not KEY=VALUE")
        key, value = (s.strip() for s in part.split("=", 1))
        params[key] = _parse_value(value)
    try:
        from scatterdist.sims import SimulationSpec
    except ImportError as exc:
        raise CatalogError(f"simulation inputs need scatterdist.sims: {exc}") from exc
    try:
        return SimulationSpec.from_dict(params)
    except (TypeError, ValueError, KeyError) as exc:
        raise CatalogError(f"invalid simulation spec {text!r}: {exc}") from exc


def read_labels_csv(path: str) -> dict[str, int]:
    """``{id: label}`` from a CSV with a header ``id,label``."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames is None or not {"id", "label"} <= set(reader.fieldnames):
                raise CatalogError(f"labels file {path} needs a header with columns id,label; got {reader.fieldnames}")
            out = {}
            for lineno, row in enumerate(reader, start=2):
                try:
                    out[row["id"].strip()] = int(row["label"])
                except (TypeError, ValueError) as exc:
                    raise CatalogError(f"{path}:{lineno}: label {row['label']!r} is not an integer") from exc
    except OSError as exc:
        raise CatalogError(f"cannot read labels file {path}: {exc}") from exc
    return out


# ---------------------------------------------------------------------- helpers


def _parse_value(value: str) -> Any:
    for conv in (int, float):
        try:
            return conv(value)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None}.get(value.lower(), value)


def _is_healsparse(path: str) -> bool:
    return path.lower().endswith(_HSP_SUFFIXES)


def _stem(path: str) -> str:
    name = os.path.basename(path)
    for suf in _FITS_SUFFIXES + _HSP_SUFFIXES:
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return name


def _expand(item: str) -> list[str]:
    if any(c in item for c in _GLOB_CHARS) and not os.path.exists(item):
        found = sorted(glob.glob(item))
        if not found:
            raise CatalogError(f"the pattern {item!r} matches no file")
        return found
    if item.endswith(".txt"):
        try:
            with open(item, encoding="utf-8") as fh:
                lines = [ln.strip() for ln in fh]
        except OSError as exc:
            raise CatalogError(f"cannot read list file {item}: {exc}") from exc
        base = os.path.dirname(os.path.abspath(item))
        out = []
        for ln in lines:
            if ln and not ln.startswith("#"):
                out.extend(_expand(ln if os.path.isabs(ln) else os.path.join(base, ln)))
        return out
    return [item]  # a missing file is kept: it becomes a failed map, not a failed run


def _unique(entries: list[Entry]) -> list[Entry]:
    """Make ids unique: colliding ids get ``#2``, ``#3``... in order."""
    seen: dict[str, int] = {}
    out = []
    for e in entries:
        n = seen.get(e.id, 0) + 1
        seen[e.id] = n
        out.append(e if n == 1 else Entry(f"{e.id}#{n}", e.source, e.ref, e.label))
    return out


def _backing_zarr_array(data: Any) -> Any:
    """The ``zarr.Array`` behind an xarray variable opened lazily from a store, or None."""
    import zarr

    objs = list(data.dask.values()) if hasattr(data, "dask") else [data]
    for obj in objs:
        for _ in range(8):  # unwrap xarray's lazy indexing adapters
            inner = getattr(obj, "_array", None)
            if isinstance(inner, zarr.Array):
                return inner
            obj = getattr(obj, "array", None)
            if obj is None:
                break
    return None


def _zarr_source(obj: Any) -> tuple[str, str | None]:
    """(store path, variable name or None) of an xarray object opened from a Zarr store."""
    src = obj.encoding.get("source")
    if src and os.path.exists(src):
        return os.path.abspath(src), None
    if hasattr(obj, "variable"):  # a DataArray: find the zarr array behind it
        arr = _backing_zarr_array(obj.variable._data)
        root = getattr(getattr(getattr(arr, "store_path", None), "store", None), "root", None)
        if arr is not None and root is not None and tuple(arr.shape) == tuple(obj.shape):
            return os.path.abspath(os.fspath(root)), arr.store_path.path
    raise CatalogError(
        "this xarray object is not a whole variable of a Zarr store, and tasks never receive "
        "maps: write it first with ds.to_zarr(PATH) and pass PATH (or xarray.open_zarr(PATH))"
    )


def _pick_variable(ds: Any) -> str:
    if "maps" in ds.data_vars:
        return "maps"
    cands = [k for k, v in ds.data_vars.items() if v.dims == ("map", "pixel")]
    if len(cands) != 1:
        raise CatalogError(f"cannot tell which variable holds the maps among {list(ds.data_vars)}; name it 'maps'")
    return str(cands[0])


# ---------------------------------------------------------------------- loading (worker side)

_SPEC_CACHE: dict[str, Any] = {}
_SPEC_LOCK = threading.Lock()
_MASK_CACHE: dict[tuple[str, int, int, int], np.ndarray] = {}
_MASK_LOCK = threading.Lock()


def _sim_spec(where: str) -> Any:
    with _SPEC_LOCK:
        spec = _SPEC_CACHE.get(where)
        if spec is None:
            from scatterdist.sims import SimulationSpec

            spec = _SPEC_CACHE[where] = SimulationSpec.from_dict(json.loads(where))
        return spec


def check_fields(fields: str | Sequence[str]) -> tuple[str, ...]:
    """Validate field names (``"I,E,B"`` or ``("I", "E", "B")``) against :data:`FIELDS`.

    Returns the tuple of names in the order given; raises :class:`CatalogError` for an unknown,
    repeated or empty selection.
    """
    if isinstance(fields, str):
        fields = [f.strip() for f in fields.split(",") if f.strip()]
    names = tuple(str(f).strip().upper() for f in fields)
    if not names:
        raise CatalogError(f"no fields selected; choose among {', '.join(FIELDS)}")
    unknown = [f for f in names if f not in FIELDS]
    if unknown:
        raise CatalogError(f"unknown field(s) {unknown}; choose among {', '.join(FIELDS)} "
                           "(I, Q, U are FITS fields 0, 1, 2; E, B are made from Q, U)")
    if len(set(names)) != len(names):
        raise CatalogError(f"field(s) repeated in {list(names)}")
    return names


def _stokes_columns(fields: Sequence[str]) -> tuple[int, ...]:
    """FITS columns (0 I, 1 Q, 2 U) needed for ``fields``, in increasing order."""
    cols = set()
    for f in fields:
        cols.update((1, 2) if f in ("E", "B") else (_STOKES_COLUMN[f],))
    return tuple(sorted(cols))


def read_global_mask(mask: str | os.PathLike | np.ndarray, nside: int) -> np.ndarray:
    """The global weight mask ``(12*nside**2,)`` float64 in [0, 1], RING.

    ``mask``: a FITS path (read by :func:`scatterdist.sphere.mask.read_mask`, which brings it
    to ``nside``), a HealSparse ``.hsp``/``.hs`` file (weights = its values on valid pixels, 0
    elsewhere; averaged over sub-pixels when degraded), or an array already at ``nside``. Files
    are cached per process by path, size and modification time. Raises ``scatterdist.sphere.mask.MaskError`` for a mask that cannot be used.
    """
    from scatterdist.sphere.mask import MaskError, read_mask

    npix = 12 * int(nside) ** 2
    if isinstance(mask, np.ndarray):
        w = np.asarray(mask, dtype=np.float64)
        if w.shape != (npix,):
            raise MaskError(f"mask array has shape {w.shape}, need ({npix},) for nside {nside}")
        if not np.all(np.isfinite(w)) or w.min() < 0 or w.max() > 1:
            raise MaskError("mask array has values outside [0, 1] (or NaN): weights must lie in [0, 1]")
        return w
    path = os.path.abspath(os.fspath(mask))
    try:
        st = os.stat(path)
    except OSError as exc:
        raise MaskError(f"cannot read mask {path}: {exc}") from exc
    key = (path, int(nside), st.st_size, st.st_mtime_ns)
    with _MASK_LOCK:
        w = _MASK_CACHE.get(key)
    if w is None:
        w = _read_healsparse_mask(path, int(nside)) if _is_healsparse(path) else \
            np.asarray(read_mask(path, int(nside)), dtype=np.float64)
        if w.shape != (npix,):
            raise MaskError(f"mask {path} was read with shape {w.shape}, need ({npix},)")
        w.setflags(write=False)
        with _MASK_LOCK:
            _MASK_CACHE.clear()  # one global mask per run: keep the latest only
            _MASK_CACHE[key] = w
    return w


def _check_values(m: np.ndarray, what: str) -> None:
    """Legacy (``fields=None``) check: NaN, infinite and UNSEEN pixels are all fatal."""
    bad = ~np.isfinite(m)
    if bad.any():
        raise BadMapError(f"{what}: {int(bad.sum())} NaN or infinite pixels")
    unseen = np.isclose(m, UNSEEN, rtol=1e-5, atol=0.0)
    if unseen.any():
        frac = unseen.mean()
        kind = "an all-UNSEEN map" if frac == 1 else "a partial-sky map"
        raise BadMapError(f"{what}: {kind} ({int(unseen.sum())} of {m.size} pixels UNSEEN); "
                          "fill or inpaint masked pixels first")


def _fits_columns(hdul: Any) -> int:
    """Number of map columns of the first table HDU (a partial-sky file's PIXEL column excluded)."""
    for hdu in hdul[1:]:
        cols = getattr(hdu, "columns", None)
        if cols is not None:
            names = [c.upper() for c in cols.names]
            explicit = str(hdu.header.get("INDXSCHM", "")).upper() == "EXPLICIT" or (
                names and names[0] == "PIXEL")
            return len(names) - (1 if explicit else 0)
    return 0


def _read_fits(path: str, nside: int, cols: tuple[int, ...], fields: Sequence[str] = ()) -> np.ndarray:
    """Columns ``cols`` of a HEALPix FITS file, ``(len(cols), npix)`` float64 RING."""
    import healpy as hp
    from astropy.io import fits as afits
    from astropy.utils.exceptions import AstropyUserWarning

    if not os.path.exists(path):
        raise BadMapError(f"missing file: {path}")
    try:
        with warnings.catch_warnings():
            # filterwarnings prepends: the last filter added wins.
            warnings.filterwarnings("ignore", category=AstropyUserWarning)
            warnings.filterwarnings("error", message=".*truncated.*", category=AstropyUserWarning)
            if max(cols) > 0:
                with afits.open(path) as hdul:
                    have = _fits_columns(hdul)
                if max(cols) >= have:
                    want = ", ".join(f for f in fields if f != "I") or "Q, U"
                    raise BadMapError(
                        f"{path} has {have} field(s); field(s) {want} need(s) Stokes Q and U "
                        f"(FITS fields 1 and 2): choose --fields I for a temperature-only file")
            m = hp.read_map(path, field=cols, dtype=np.float64, nest=False)
    except AstropyUserWarning as exc:
        raise BadMapError(f"truncated FITS file {path}: {exc}") from exc
    except (OSError, ValueError, TypeError, KeyError, IndexError, afits.VerifyError) as exc:
        if isinstance(exc, BadMapError):
            raise
        raise BadMapError(f"unreadable FITS file {path}: {type(exc).__name__}: {exc}") from exc
    m = np.atleast_2d(np.asarray(m, dtype=np.float64))
    got = hp.npix2nside(m.shape[-1]) if hp.isnpixok(m.shape[-1]) else None
    if got != nside:
        raise BadMapError(f"{path}: nside {got} (npix {m.shape[-1]}) differs from the run's nside {nside}")
    return m


def _load_fits(path: str, nside: int) -> np.ndarray:
    m = _read_fits(path, nside, (0,))[0]
    _check_values(m, path)
    return m


def _read_healsparse(path: str, nside: int) -> tuple[np.ndarray, np.ndarray]:
    """A scalar HealSparse map at ``nside``: ``(values, weights)``, both ``(npix,)`` RING.

    Valid pixels are the mask. Degraded maps (``nside < nside_sparse``) hold the mean of the
    valid sub-pixels (``generate_healpix_map(nside, reduction="mean")``) and weigh each pixel by
    its covered fraction (``fracdet_map``; below the coverage nside, the coverage map averaged
    with ``healpy.ud_grade``); upgraded maps repeat each value (``HealSparseMap.upgrade``).
    """
    import healpy as hp

    if not os.path.exists(path):
        raise BadMapError(f"missing file: {path}")
    try:
        import healsparse
    except ImportError as exc:
        raise BadMapError(f"{path} is a HealSparse map: install healsparse "
                          "(pip install 'scatterdist[healsparse]')") from exc
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # astropy truncation chatter, optional backends
            hsp = healsparse.HealSparseMap.read(path)
    except Exception as exc:  # noqa: BLE001 - healsparse/astropy raise many types for bad files
        raise BadMapError(f"corrupt or unreadable HealSparse file {path}: "
                          f"{type(exc).__name__}: {exc}") from exc
    if hsp.is_rec_array or hsp.is_wide_mask_map:
        raise BadMapError(f"{path}: HealSparse {'record-array' if hsp.is_rec_array else 'wide-mask'} "
                          "maps are not supported; give a scalar (float or integer) map")
    ns = int(hsp.nside_sparse)
    try:
        if nside == ns:
            values = hsp.generate_healpix_map(nest=False)
            weights = None
        elif nside > ns:
            values = hsp.upgrade(nside).generate_healpix_map(nest=False)
            weights = None
        else:
            values = hsp.generate_healpix_map(nside=nside, reduction="mean", nest=False)
            if nside >= hsp.nside_coverage:
                weights = hsp.fracdet_map(nside).generate_healpix_map(nest=False)
            else:
                cov = np.asarray(hsp.coverage_map, dtype=np.float64)  # covered fraction, NEST
                weights = hp.ud_grade(cov, nside, order_in="NEST", order_out="RING", power=0)
    except (ValueError, RuntimeError, MemoryError, TypeError, IndexError, KeyError, AttributeError) as exc:
        raise BadMapError(f"{path}: cannot bring the HealSparse map at nside {ns} to nside "
                          f"{nside}: {exc}") from exc
    values = np.asarray(values, dtype=np.float64)
    invalid = np.isclose(values, UNSEEN, rtol=1e-5, atol=0.0) | np.isnan(values)
    if weights is None:
        weights = (~invalid).astype(np.float64)
    else:
        weights = np.where(invalid, 0.0, np.clip(np.asarray(weights, dtype=np.float64), 0.0, 1.0))
    return values, weights


_APO_CACHE: dict[tuple[bytes, float], np.ndarray] = {}
_APO_CACHE_SIZE = 4


def _apodized(mask: np.ndarray, deg: float) -> np.ndarray:
    """``scatterdist.sphere.mask.apodize(mask, deg)``, cached by the mask's bytes: maps sharing
    a mask (a global ``--mask``, the same UNSEEN pattern) apodise it once per process."""
    import hashlib

    from scatterdist.sphere.mask import apodize

    deg = float(deg)
    key = (hashlib.sha1(np.ascontiguousarray(mask).view(np.uint8)).digest(), deg)
    with _MASK_LOCK:
        hit = _APO_CACHE.get(key)
    if hit is not None:
        return hit
    out = np.asarray(apodize(mask, deg), dtype=np.float64)
    out.setflags(write=False)
    with _MASK_LOCK:
        while len(_APO_CACHE) >= _APO_CACHE_SIZE:
            _APO_CACHE.pop(next(iter(_APO_CACHE)))
        _APO_CACHE[key] = out
    return out


def _read_healsparse_mask(path: str, nside: int) -> np.ndarray:
    """A HealSparse weight mask at ``nside``: its values on valid pixels, 0 elsewhere."""
    from scatterdist.sphere.mask import MaskError

    try:
        values, frac = _read_healsparse(path, nside)
    except BadMapError as exc:
        raise MaskError(f"cannot use the mask {path}: {exc}") from exc
    valid = frac > 0
    w = np.where(valid, values, 0.0) * frac  # degraded: mean over all sub-pixels, invalid = 0
    if not np.all(np.isfinite(w)) or w.min() < 0 or w.max() > 1:
        raise MaskError(f"mask {path} has values outside [0, 1] (range [{np.nanmin(w):g}, {np.nanmax(w):g}]): "
                        "weights must lie in [0, 1]")
    return w


def _finish(raw: np.ndarray, cols: tuple[int, ...], own: np.ndarray | None, fields: tuple[str, ...],
            gmask: np.ndarray | None, min_fsky: float, what: str,
            apodize_deg: float | None = None) -> LoadedMap:
    """Raw columns ``(C, npix)`` (+ the input's own weights) -> :class:`LoadedMap`."""
    raw = np.asarray(raw, dtype=np.float64)
    lo, hi = float(raw.min()), float(raw.max())  # NaN propagates: fast path for clean maps
    if np.isfinite(lo) and np.isfinite(hi) and lo > -1e30:
        bad = np.zeros(raw.shape[-1], dtype=bool)
    else:
        inf = np.isinf(raw)
        if inf.any():
            raise BadMapError(f"{what}: {int(inf.sum())} infinite pixels")
        bad = (np.isnan(raw) | np.isclose(raw, UNSEEN, rtol=1e-5, atol=0.0)).any(axis=0)
    has_own = own is not None or bool(bad.any())
    w = np.ones(raw.shape[-1]) if own is None else np.asarray(own, dtype=np.float64).copy()
    w[bad] = 0.0
    if gmask is not None:
        w *= gmask
    fsky = float(w.mean())
    npix = raw.shape[-1]
    if fsky <= 0.0:
        raise BadMapError(f"{what}: the map is entirely masked (no pixel of {npix} has weight > 0: "
                          f"{int(bad.sum())} UNSEEN/NaN{', the rest outside the mask' if gmask is not None else ''})")
    if fsky < min_fsky:
        raise BadMapError(f"{what}: usable sky fraction {fsky:.4g} is below min_fsky {min_fsky:g} "
                          "(lower --min-fsky to keep it)")
    out = np.where(w > 0, raw, 0.0)
    mask = w if (has_own or gmask is not None) else None
    col = {c: out[k] for k, c in enumerate(cols)}
    eb: tuple[np.ndarray, np.ndarray] | None = None
    rows = []
    for f in fields:
        if f in _STOKES_COLUMN:
            rows.append(col[_STOKES_COLUMN[f]])
            continue
        if eb is None:
            from scatterdist.sphere.spin import qu_to_eb

            weights = mask
            if mask is not None and apodize_deg:  # raw weights unless asked (see load_maps)
                weights = _apodized(mask, apodize_deg)
            e, b = qu_to_eb(col[1], col[2], mask=weights)
            eb = (np.where(w > 0, np.asarray(e, dtype=np.float64), 0.0),
                  np.where(w > 0, np.asarray(b, dtype=np.float64), 0.0))
        rows.append(eb[0] if f == "E" else eb[1])
    return LoadedMap(np.ascontiguousarray(np.stack(rows)), mask, fsky if mask is not None else 1.0,
                     fields, has_own)


def _scalar_only(fields: tuple[str, ...], what: str, kind: str) -> None:
    if fields != ("I",):
        extra = [f for f in fields if f != "I"]
        raise BadMapError(f"{what}: {kind} inputs hold one scalar field (I); field(s) {extra} "
                          "need a FITS file with Stokes I, Q, U: choose --fields I")


def _load_one(ref: MapRef, nside: int, fields: tuple[str, ...], gmask: np.ndarray | None,
              min_fsky: float, apodize_deg: float | None = None) -> LoadedMap:
    if ref.kind == "fits":
        cols = _stokes_columns(fields)
        return _finish(_read_fits(ref.where, nside, cols, fields), cols, None, fields, gmask,
                       min_fsky, ref.where, apodize_deg)
    if ref.kind == "hsp":
        if not os.path.exists(ref.where):
            raise BadMapError(f"missing file: {ref.where}")
        _scalar_only(fields, ref.where, "HealSparse")
        values, weights = _read_healsparse(ref.where, nside)
        return _finish(values[None], (0,), weights, fields, gmask, min_fsky, ref.where)
    if ref.kind == "sim":
        what = f"simulation {ref.index}"
        _scalar_only(fields, what, "simulation")
        spec = _sim_spec(ref.where)
        m = np.asarray(spec.generate(ref.index), dtype=np.float64)
        if m.shape != (12 * nside * nside,):
            raise BadMapError(f"{what} has shape {m.shape}, run nside is {nside}")
        own = spec.mask_weights() if hasattr(spec, "mask_weights") else None
        return _finish(m[None], (0,), own, fields, gmask, min_fsky, what)
    raise BadMapError(f"unknown input kind {ref.kind!r}")


def load_maps(
    refs: Sequence[MapRef],
    nside: int,
    fields: Sequence[str] | str | None = ("I",),
    mask: str | os.PathLike | np.ndarray | None = None,
    *,
    min_fsky: float = DEFAULT_MIN_FSKY,
    apodize: float | None = None,
) -> list[Any]:
    """Load the maps of ``refs`` at ``nside``: one :class:`LoadedMap` or :class:`BadMapError` each.

    ``fields``: names from :data:`FIELDS` (e.g. ``("I",)``, ``("I", "E", "B")``); ``mask``: the
    global mask (path or ``(npix,)`` weights, see :func:`read_global_mask`; a bad one raises
    ``MaskError`` for the whole call); ``min_fsky``: smallest usable sky fraction of a map;
    ``apodize``: degrees of cosine apodisation of the weights applied to Q, U before E/B are
    made; None or 0 (default, recommended) uses the raw weights: the transform's own
    apodisation is what limits the E/B leakage, and apodising Q/U's weights as well only spreads
    it over the taper (measured in docs/cut-sky.md, ``scripts/masked_bias.py --polarisation``).
    The returned ``mask`` is never apodised (the transform apodises it).
    Errors are per map: one bad input never prevents the others from loading. Zarr rows of one
    store are read in one call.

    Legacy form (for stores made before fields existed): with an explicit ``fields=None`` and
    ``mask=None`` the result is a float64 ``(npix,)`` array or a :class:`BadMapError` per map,
    and NaN or UNSEEN pixels are errors, exactly as before masks existed.
    """
    legacy = fields is None and mask is None
    if not legacy:
        fields = check_fields(("I",) if fields is None else fields)
        min_fsky = float(min_fsky)
        if not 0.0 <= min_fsky <= 1.0:
            raise CatalogError(f"min_fsky must lie in [0, 1], got {min_fsky}")
    gmask = None if mask is None else read_global_mask(mask, nside)
    out: list[Any] = [BadMapError("not loaded")] * len(refs)
    zarr_groups: dict[tuple[str, str], list[int]] = {}
    for k, ref in enumerate(refs):
        if ref.kind == "zarr":
            zarr_groups.setdefault((ref.where, ref.variable), []).append(k)
            continue
        try:
            if not legacy:
                out[k] = _load_one(ref, nside, fields, gmask, min_fsky, apodize)
            elif ref.kind == "fits":
                out[k] = _load_fits(ref.where, nside)
            elif ref.kind == "sim":
                m = np.asarray(_sim_spec(ref.where).generate(ref.index), dtype=np.float64)
                if m.shape != (12 * nside * nside,):
                    raise BadMapError(f"simulation {ref.index} has shape {m.shape}, run nside is {nside}")
                _check_values(m, f"simulation {ref.index}")
                out[k] = m
            else:
                raise BadMapError(f"input kind {ref.kind!r} ({ref.where}) needs load_maps(..., fields=...)"
                                  if ref.kind == "hsp" else f"unknown input kind {ref.kind!r}")
        except BadMapError as exc:
            out[k] = exc
    for (where, variable), ks in zarr_groups.items():
        import zarr

        rows = np.array([refs[k].index for k in ks])
        try:
            if not legacy:
                _scalar_only(fields, f"{where}::{variable}", "Zarr")
            arr = zarr.open_array(where, path=variable, mode="r")
            if arr.shape[-1] != 12 * nside * nside:
                raise BadMapError(f"{where}::{variable} has {arr.shape[-1]} pixels, run nside is {nside}")
            lo, hi = int(rows.min()), int(rows.max()) + 1
            block = np.asarray(arr[lo:hi], dtype=np.float64)[rows - lo]
        except BadMapError as exc:
            for k in ks:
                out[k] = exc
            continue
        except (OSError, ValueError, KeyError) as exc:
            err = BadMapError(f"cannot read {where}::{variable}: {type(exc).__name__}: {exc}")
            for k in ks:
                out[k] = err
            continue
        for k, m in zip(ks, block):
            what = f"{where}::{variable}[{refs[k].index}]"
            try:
                if legacy:
                    _check_values(m, what)
                    out[k] = np.ascontiguousarray(m)
                else:
                    out[k] = _finish(m[None], (0,), None, fields, gmask, min_fsky, what)
            except BadMapError as exc:
                out[k] = exc
    return out


def stack_maps(loaded: Sequence[LoadedMap]) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Batch :class:`LoadedMap` objects for one transform call.

    Returns ``data (B, F, npix)`` float64, ``masks (B, npix)`` float64 (ones for full-sky maps)
    or None when no map has a mask, and ``sky_fraction (B,)`` float64. All maps must have the
    same fields and size.
    """
    if not loaded:
        raise ValueError("stack_maps needs at least one loaded map")
    fields = loaded[0].fields
    if any(m.fields != fields for m in loaded):
        raise ValueError(f"cannot stack maps with different fields: {sorted({m.fields for m in loaded})}")
    data = np.stack([m.data for m in loaded])
    masks = None if all(m.mask is None for m in loaded) else np.stack([m.weights for m in loaded])
    return data, masks, np.array([m.sky_fraction for m in loaded], dtype=np.float64)


def iter_chunks(seq: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    """Consecutive slices of ``seq`` of at most ``size`` items."""
    for i in range(0, len(seq), size):
        yield seq[i : i + size]
