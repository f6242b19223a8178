"""Catalog of input maps: one entry (id, source, label?) per map, plus how a task loads it.

A catalog never holds maps. Each entry carries a small picklable reference (:class:`MapRef`):
a FITS path, a (Zarr store, variable, row), or a (simulation spec, index). Dask tasks receive
references and load the maps themselves with :func:`load_maps`, which turns a bad input into
an exception *for that map only* (:class:`BadMapError`), never for the run.

Inputs accepted by :meth:`Catalog.from_inputs` (the ``scatterdist scatter INPUTS...``):

- ``map.fits`` / ``map.fits.gz``: a HEALPix FITS file (field 0 is read; NESTED files are
  converted to RING). Id = file name without the extension.
- a glob such as ``'skies/*.fits'`` (quote it); it must match at least one file.
- ``list.txt``: a text file with one FITS path per line (``#`` comments; relative paths are
  relative to the list file).
- ``maps.zarr``: a Zarr store with a data variable ``maps (map, pixel)`` (or the only
  variable with those dims); ids from its ``map`` coordinate, labels from ``label (map)``.
- ``sim:KEY=VALUE,...``: a simulation spec, e.g. ``sim:kind=mixed,n=64,nside=64,seed=0,alpha=1.0``,
  parsed into ``scatterdist.sims.SimulationSpec.from_dict({...})`` (values become int, float
  or str); maps are generated inside the tasks from their seeds.

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
    "Entry",
    "MapRef",
    "Catalog",
    "load_maps",
    "parse_sim_spec",
]

_FITS_SUFFIXES = (".fits", ".fits.gz", ".fit", ".fits.fz")
_GLOB_CHARS = set("*?[")
UNSEEN = -1.6375e30


class CatalogError(ValueError):
    """The inputs cannot make a catalog (no files match, unreadable list, bad spec, bad CSV)."""


class BadMapError(ValueError):
    """One input map is unusable (missing/corrupt file, wrong nside, NaN or UNSEEN pixels)."""


@dataclass(frozen=True)
class MapRef:
    """How a task finds one map. ``kind`` is ``"fits"``, ``"zarr"`` or ``"sim"``.

    fits: ``where`` = path. zarr: ``where`` = store path, ``variable``, ``index`` = row.
    sim: ``where`` = JSON of ``spec.to_dict()``, ``index`` = simulation index.
    """

    kind: str
    where: str
    index: int = -1
    variable: str = ""


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
        """FITS files from paths, globs and ``.txt`` lists (missing files stay: status -1 later)."""
        if isinstance(paths, (str, os.PathLike)):
            paths = [os.fspath(paths)]
        files = []
        for p in paths:
            files.extend(_expand(os.fspath(p)))
        entries = [Entry(id=_stem(f), source=os.path.abspath(f), ref=MapRef("fits", os.path.abspath(f)))
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

    def infer_nside(self) -> int:
        """The run's nside: known for Zarr/sim inputs, else from the first readable FITS header."""
        if self.nside is not None:
            return self.nside
        from astropy.io import fits as afits

        for e in self.entries:
            if e.ref.kind != "fits":
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


def _stem(path: str) -> str:
    name = os.path.basename(path)
    for suf in _FITS_SUFFIXES:
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


def _sim_spec(where: str) -> Any:
    with _SPEC_LOCK:
        spec = _SPEC_CACHE.get(where)
        if spec is None:
            from scatterdist.sims import SimulationSpec

            spec = _SPEC_CACHE[where] = SimulationSpec.from_dict(json.loads(where))
        return spec


def _check_values(m: np.ndarray, what: str) -> None:
    bad = ~np.isfinite(m)
    if bad.any():
        raise BadMapError(f"{what}: {int(bad.sum())} NaN or infinite pixels")
    unseen = np.isclose(m, UNSEEN, rtol=1e-5, atol=0.0)
    if unseen.any():
        frac = unseen.mean()
        kind = "an all-UNSEEN map" if frac == 1 else "a partial-sky map"
        raise BadMapError(f"{what}: {kind} ({int(unseen.sum())} of {m.size} pixels UNSEEN); "
                          "fill or inpaint masked pixels first")


def _load_fits(path: str, nside: int) -> np.ndarray:
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
            m = hp.read_map(path, field=0, dtype=np.float64, nest=False)
    except AstropyUserWarning as exc:
        raise BadMapError(f"truncated FITS file {path}: {exc}") from exc
    except (OSError, ValueError, TypeError, KeyError, IndexError, afits.VerifyError) as exc:
        raise BadMapError(f"unreadable FITS file {path}: {type(exc).__name__}: {exc}") from exc
    m = np.asarray(m, dtype=np.float64)
    got = hp.npix2nside(m.size) if hp.isnpixok(m.size) else None
    if got != nside:
        raise BadMapError(f"{path}: nside {got} (npix {m.size}) differs from the run's nside {nside}")
    _check_values(m, path)
    return m


def load_maps(refs: Sequence[MapRef], nside: int) -> list[np.ndarray | BadMapError]:
    """Load maps (float64 RING, ``(12*nside**2,)``) for ``refs``: a map or its BadMapError each.

    Zarr rows of one store are read in one call. Errors are per map: one bad input never
    prevents the others from loading.
    """
    out: list[np.ndarray | BadMapError] = [BadMapError("not loaded")] * len(refs)
    zarr_groups: dict[tuple[str, str], list[int]] = {}
    for k, ref in enumerate(refs):
        if ref.kind == "zarr":
            zarr_groups.setdefault((ref.where, ref.variable), []).append(k)
            continue
        try:
            if ref.kind == "fits":
                out[k] = _load_fits(ref.where, nside)
            elif ref.kind == "sim":
                m = np.asarray(_sim_spec(ref.where).generate(ref.index), dtype=np.float64)
                if m.shape != (12 * nside * nside,):
                    raise BadMapError(f"simulation {ref.index} has shape {m.shape}, run nside is {nside}")
                _check_values(m, f"simulation {ref.index}")
                out[k] = m
            else:
                raise BadMapError(f"unknown input kind {ref.kind!r}")
        except BadMapError as exc:
            out[k] = exc
    for (where, variable), ks in zarr_groups.items():
        import zarr

        rows = np.array([refs[k].index for k in ks])
        try:
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
            try:
                _check_values(m, f"{where}::{variable}[{refs[k].index}]")
                out[k] = np.ascontiguousarray(m)
            except BadMapError as exc:
                out[k] = exc
    return out


def iter_chunks(seq: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    """Consecutive slices of ``seq`` of at most ``size`` items."""
    for i in range(0, len(seq), size):
        yield seq[i : i + size]
