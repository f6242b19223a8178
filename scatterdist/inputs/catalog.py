"""The catalog: one entry (id, source, label?) per input map, from files, globs, lists, Zarr
stores and simulation specs, plus the labels CSV. A catalog never holds maps (see
:mod:`scatterdist.inputs` for the inputs accepted)."""

from __future__ import annotations

import csv
import glob
import json
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from scatterdist.inputs.base import _FITS_SUFFIXES, _HSP_SUFFIXES, CatalogError, MapRef, _is_healsparse
from scatterdist.inputs.simulations import parse_sim_spec

__all__ = ["Catalog", "Entry", "iter_chunks", "read_labels_csv"]

_GLOB_CHARS = set("*?[")


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




def iter_chunks(seq: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    """Consecutive slices of ``seq`` of at most ``size`` items."""
    for i in range(0, len(seq), size):
        yield seq[i : i + size]
