"""Coefficient store -> torch: store metadata, labels, deterministic splits, lazy Dataset, shard sampler.

The store follows the schema of DESIGN.md (Zarr v3): ``coefficients (map, field, path, pixel)``
float32 sharded along ``map`` (``K`` maps per shard), ``status (map)`` int8 (1 = ok), optional
``label (map)``, ``sky_fraction (map)``, ``coverage`` ``(path, pixel)`` (one mask shared by every
map) or ``(map, path, pixel)`` (per-map masks), root attribute ``nside_out``. Stores written
before the ``field`` dimension existed (``coefficients (map, path, pixel)``, no coverage) read as
one field with coverage 1. Only maps with ``status == 1`` are ever read.

Model inputs (channels of one sample, ``(C, npix)`` float32):

- every field's paths, field-major: channel ``f * n_paths + p`` is field ``f``, path ``p``
  (labels ``"I S1 j1=3"``); ``C = n_fields * n_paths`` ...
- ... plus, for a *masked* store (some map with ``sky_fraction < 1``), one **coverage channel per
  path** (``"coverage S1 j1=3"``, values in [0, 1], not normalised): ``C = (n_fields + 1) * n_paths``.
- Normalisation ``(x - mean) / std`` per coefficient channel, with statistics over the covered
  (finite) pixels of the training maps only; then **NaN pixels (outside a path's coverage) are
  set to 0**, i.e. to the channel's training mean. The model sees where it is blind through the
  coverage channel.
- Rotation equivariance is kept: the coverage is a scalar map like the coefficients, and the
  normalisation and the NaN fill act pixel by pixel, so rotating a map with its mask rotates
  every input channel.
- A NaN is legitimate only where the coverage is below 1; any other non-finite value in a map
  with status 1 is an error.

Reading is shard-oriented: the Dataset reads a whole shard (one object in the store) the
first time one of its maps is asked for and keeps the last few shards in memory; the
:class:`ShardDistributedSampler` hands each rank whole shards, so every shard is read once per
epoch by one rank.
"""

from __future__ import annotations

import csv
import hashlib
import os
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from scatterdist._progress import progress_bar

SPLITS = ("train", "val", "test")


class StoreFormatError(ValueError):
    """The path is not a coefficient store the trainer can read (missing variable or attribute)."""


@dataclass
class StoreInfo:
    """Metadata of a coefficient store (small arrays only; the coefficients stay on disk).

    ``map_ids`` are the ``map`` coordinate as strings; ``shard_size`` is the number of maps per
    shard of ``coefficients`` (the inner-chunk grouping that one task writes). ``fields`` are the
    field names (``["I"]`` for a store without a ``field`` dimension); ``coverage_layout`` is
    ``"shared"`` (``coverage (path, pixel)``), ``"per_map"`` (``coverage (map, path, pixel)``) or
    None (no coverage variable: full sky); ``sky_fraction (n_maps,)`` is None for old stores.
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
    def masked(self) -> bool:
        """True when some map with status 1 has a usable sky fraction below 1 (the store needs coverage channels)."""
        if self.sky_fraction is None:
            return False
        ok = self.status == 1
        return bool(np.any(self.sky_fraction[ok] < 1.0))

    def n_inputs(self, coverage_channels: bool) -> int:
        """Number of model input channels: ``n_fields * n_paths`` (+ ``n_paths`` coverage channels)."""
        return (self.n_fields + int(bool(coverage_channels))) * self.n_paths

    def channel_labels(self, coverage_channels: bool) -> list[str]:
        """Label of every model input channel, in order (see the module docstring)."""
        out = [f"{f} {p}" for f in self.fields for p in self.path_labels]
        if coverage_channels:
            out += [f"coverage {p}" for p in self.path_labels]
        return out


def _open_group(path: str):
    import zarr

    if not Path(path).exists():
        raise FileNotFoundError(f"coefficient store {path!r} does not exist")
    try:
        return zarr.open_group(path, mode="r")
    except Exception as exc:  # zarr raises several types for "not a group"
        raise StoreFormatError(f"{path!r} is not a readable Zarr group: {exc}") from exc


def _dims(array) -> tuple[str, ...] | None:
    names = getattr(getattr(array, "metadata", None), "dimension_names", None)
    return tuple(names) if names else None


def _coefficient_layout(path: str, array) -> bool:
    """True when ``coefficients`` has a ``field`` dimension (``(map, field, path, pixel)``)."""
    dims = _dims(array)
    if dims is not None:
        if dims == ("map", "field", "path", "pixel"):
            return True
        if dims == ("map", "path", "pixel"):
            return False
        raise StoreFormatError(
            f"store {path!r}: 'coefficients' has dimensions {dims}; expected (map, field, path, pixel) "
            "or, for stores written before fields existed, (map, path, pixel)"
        )
    if array.ndim in (3, 4):
        return array.ndim == 4
    raise StoreFormatError(f"'coefficients' must be (map, field, path, pixel), got shape {array.shape}")


def _coverage_layout(path: str, group, n_maps: int, n_paths: int, npix: int) -> str | None:
    if "coverage" not in group:
        return None
    cov = group["coverage"]
    dims = _dims(cov)
    if dims == ("path", "pixel") or (dims is None and cov.shape == (n_paths, npix)):
        layout = "shared"
    elif dims == ("map", "path", "pixel") or (dims is None and cov.shape == (n_maps, n_paths, npix)):
        layout = "per_map"
    else:
        raise StoreFormatError(
            f"store {path!r}: 'coverage' has dimensions {dims} and shape {cov.shape}; expected "
            f"(path, pixel) = ({n_paths}, {npix}) or (map, path, pixel) = ({n_maps}, {n_paths}, {npix})"
        )
    expected = (n_paths, npix) if layout == "shared" else (n_maps, n_paths, npix)
    if tuple(cov.shape) != expected:
        raise StoreFormatError(f"store {path!r}: 'coverage' has shape {cov.shape}, expected {expected}")
    return layout


def read_store_info(store: str | os.PathLike) -> StoreInfo:
    """Read the metadata of the coefficient store at ``store`` (a directory); old stores without ``field`` too."""
    path = os.path.abspath(os.fspath(store))
    group = _open_group(path)
    for name in ("coefficients", "status", "map"):
        if name not in group:
            raise StoreFormatError(f"store {path!r} has no {name!r} array (schema: see DESIGN.md)")
    coeffs = group["coefficients"]
    has_field = _coefficient_layout(path, coeffs)
    if has_field:
        n_maps, n_fields, n_paths, npix = (int(v) for v in coeffs.shape)
        fields = [str(v) for v in np.asarray(group["field"][:])] if "field" in group else [f"field {i}" for i in range(n_fields)]
        if len(fields) != n_fields:
            raise StoreFormatError(f"store {path!r}: 'field' has {len(fields)} names for {n_fields} fields")
    else:
        n_maps, n_paths, npix = (int(v) for v in coeffs.shape)
        fields = ["I"]
    attrs = dict(group.attrs)
    nside_out = int(attrs.get("nside_out", round(np.sqrt(npix / 12))))
    if 12 * nside_out**2 != npix:
        raise StoreFormatError(f"store attribute nside_out={nside_out} does not match {npix} pixels")
    shards = getattr(coeffs, "shards", None)
    shard_size = int(shards[0]) if shards else int(coeffs.chunks[0])
    if "shard_size" in attrs and int(attrs["shard_size"]) != shard_size:
        raise StoreFormatError(
            f"store attribute shard_size={attrs['shard_size']} disagrees with the array's shards ({shard_size})"
        )
    status = np.asarray(group["status"][:]).astype(np.int8)
    map_ids = np.asarray([str(v) for v in np.asarray(group["map"][:])], dtype=object)
    labels = np.asarray(group["label"][:]) if "label" in group else None
    path_labels = [str(v) for v in np.asarray(group["path"][:])] if "path" in group else [f"path {i}" for i in range(n_paths)]
    if status.shape != (n_maps,) or map_ids.shape != (n_maps,):
        raise StoreFormatError(f"'status' and 'map' must have {n_maps} entries")
    coverage_layout = _coverage_layout(path, group, n_maps, n_paths, npix)
    sky_fraction = np.asarray(group["sky_fraction"][:], dtype=np.float64) if "sky_fraction" in group else None
    if sky_fraction is not None and sky_fraction.shape != (n_maps,):
        raise StoreFormatError(f"store {path!r}: 'sky_fraction' must have {n_maps} entries, got {sky_fraction.shape}")
    return StoreInfo(
        path, n_maps, n_paths, npix, nside_out, shard_size, map_ids, status, labels, path_labels, attrs,
        fields, coverage_layout, sky_fraction,
    )


def _missing_label(value) -> bool:
    if value is None:
        return True
    if isinstance(value, (float, np.floating)):
        return bool(np.isnan(value))
    if isinstance(value, (int, np.integer)):
        return int(value) < 0
    return str(value).strip() == ""


def read_labels(info: StoreInfo, labels_csv: str | os.PathLike | None = None) -> np.ndarray:
    """Label of every map as a string (``""`` when unlabelled), from the store or a CSV.

    The CSV has a header with columns ``map`` (or ``id``, as the catalog's CSV) and ``label``; map ids are matched as strings.
    Store labels: negative integers, NaN and empty strings mean "no label".
    """
    out = np.full(info.n_maps, "", dtype=object)
    if labels_csv is not None:
        index = {mid: i for i, mid in enumerate(info.map_ids)}
        with open(labels_csv, newline="") as fh:
            reader = csv.DictReader(fh)
            fields = set(reader.fieldnames or ())
            key = "map" if "map" in fields else "id"
            if not {key, "label"} <= fields:
                raise ValueError(f"label CSV {labels_csv} needs a header with columns 'map' (or 'id') and 'label'")
            unknown = []
            for row in reader:
                i = index.get(row[key].strip())
                if i is None:
                    unknown.append(row[key])
                    continue
                out[i] = row["label"].strip()
        if unknown:
            warnings.warn(f"{len(unknown)} map ids in {labels_csv} are not in the store (e.g. {unknown[:3]})", stacklevel=2)
        return out
    if info.labels is None:
        raise ValueError(f"store {info.path} has no 'label' variable: pass a labels CSV (columns map,label)")
    for i, value in enumerate(info.labels.tolist()):
        if not _missing_label(value):
            out[i] = str(int(value)) if isinstance(value, (float, np.floating)) and float(value).is_integer() else str(value)
    return out


def class_names_of(labels: np.ndarray) -> list[str]:
    """Sorted distinct non-empty labels (numerically when all are integers)."""
    names = sorted({str(v) for v in labels if str(v) != ""})
    if all(n.lstrip("-").isdigit() for n in names):
        names.sort(key=int)
    return names


def _id_hash(map_ids: np.ndarray) -> np.ndarray:
    """Uniform number in [0, 1) of every map id (SHA-256 of the id as a string), float64."""
    return np.array([int(hashlib.sha256(str(m).encode()).hexdigest()[:15], 16) / 16.0**15 for m in map_ids])


def _label_keys(labels, n: int) -> np.ndarray:
    """Labels as strings, ``""`` where a map has none (None, NaN, negative integer, empty)."""
    labels = np.asarray(labels, dtype=object)
    if labels.shape != (n,):
        raise ValueError(f"labels must have one entry per map id ({n}), got shape {labels.shape}")
    out = np.full(n, "", dtype=object)
    for i, value in enumerate(labels.tolist()):
        if not _missing_label(value):
            number = isinstance(value, (float, np.floating)) and float(value).is_integer()
            out[i] = str(int(value)) if number else str(value)
    return out


def split_of(
    map_ids: np.ndarray,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    labels: np.ndarray | None = None,
) -> np.ndarray:
    """Deterministic split ``"train" | "val" | "test"`` of every map, ``(n,)`` object array.

    Every map id gets a number ``u`` in [0, 1) from the SHA-256 of the id (independent of the
    store order).

    - ``labels`` given (``(n,)``; ``None``, NaN, negative integers and ``""`` mean "no label"):
      **stratified per class**. Within each class the maps are ranked by ``u``; the first
      ``round(test_fraction * n_c)`` are "test", the next ones up to
      ``round((test_fraction + val_fraction) * n_c)`` are "val", the rest "train". Every class has
      the same share of each split (exact up to rounding), so a test split of equal-sized
      classes is balanced. Adding ``k`` maps to a class changes the split of at most ``2 k + 2``
      of its old maps (typically about ``k * (test_fraction + val_fraction)``), only at the quota
      boundaries and only to a neighbouring split, whatever the class size; other classes are
      untouched. Unlabelled maps follow the rule below.
    - no labels: ``u < test_fraction`` is "test", ``u < test_fraction + val_fraction`` "val",
      else "train": a map's split depends on its id alone (adding maps never moves old ones),
      with the fractions holding only on average.

    The split is a function of the ids and labels only (not of status), so every consumer that
    has the same ids and labels (trainer, evaluation, baselines) gets the same held-out maps.
    """
    if not (0 <= val_fraction and 0 <= test_fraction and val_fraction + test_fraction < 1):
        raise ValueError(f"need 0 <= val_fraction, test_fraction and their sum < 1, got {val_fraction}, {test_fraction}")
    map_ids = np.asarray(map_ids, dtype=object)
    n = len(map_ids)
    u = _id_hash(map_ids)
    out = np.where(u < test_fraction, "test", np.where(u < test_fraction + val_fraction, "val", "train")).astype(object)
    if labels is None:
        return out
    keys = _label_keys(labels, n)
    ids = np.array([str(m) for m in map_ids], dtype=object)
    for name in sorted(set(keys.tolist()) - {""}):
        members = np.flatnonzero(keys == name)
        order = members[np.lexsort((ids[members], u[members]))]  # rank by hash, ties by id
        n_c = len(order)
        n_test = int(np.floor(test_fraction * n_c + 0.5))
        n_held = int(np.floor((test_fraction + val_fraction) * n_c + 0.5))
        out[order[:n_test]] = "test"
        out[order[n_test:n_held]] = "val"
        out[order[n_held:]] = "train"
    return out


def split_class_counts(
    map_ids: np.ndarray,
    labels: np.ndarray,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    usable: np.ndarray | None = None,
) -> dict[str, dict[str, int]]:
    """Number of maps of every class in every split: ``{split: {class: count}}``.

    Splits are those of :func:`split_of` (stratified by ``labels``); unlabelled maps are not
    counted; ``usable`` (``(n,)`` bool, e.g. ``status == 1``) restricts the count to those maps.
    Classes are ordered as :func:`class_names_of` orders them.
    """
    map_ids = np.asarray(map_ids, dtype=object)
    keys = _label_keys(labels, len(map_ids))
    split = split_of(map_ids, val_fraction, test_fraction, keys)
    keep = keys != ""
    if usable is not None:
        usable = np.asarray(usable, dtype=bool)
        if usable.shape != keep.shape:
            raise ValueError(f"usable must have one entry per map id ({len(keep)}), got shape {usable.shape}")
        keep &= usable
    names = class_names_of(keys)
    return {s: {c: int(np.sum(keep & (split == s) & (keys == c))) for c in names} for s in SPLITS}


def store_split_counts(
    store: str | os.PathLike,
    labels_csv: str | os.PathLike | None = None,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
) -> dict[str, dict[str, int]]:
    """:func:`split_class_counts` of a coefficient store's maps with status 1 (what the trainer uses)."""
    info = read_store_info(store)
    labels = read_labels(info, labels_csv)
    return split_class_counts(info.map_ids, labels, val_fraction, test_fraction, usable=info.status == 1)


def select_maps(
    info: StoreInfo, labels: np.ndarray, split: str | None, val_fraction: float = 0.15, test_fraction: float = 0.15
) -> np.ndarray:
    """Store indices of the maps with status 1, a label, and in ``split`` (``None``/"all": every split).

    ``labels`` is :func:`read_labels`' output; the split is :func:`split_of` stratified by it.
    """
    ok = (info.status == 1) & (labels != "")
    if split not in (None, "all"):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS} or 'all', got {split!r}")
        ok &= split_of(info.map_ids, val_fraction, test_fraction, labels) == split
    return np.flatnonzero(ok)


class _BlockReader:
    """Reads map blocks of a store as model channels: ``(k, n_fields * n_paths, npix)`` float32
    coefficients (NaN kept) and their coverage ``(k, n_paths, npix)`` (ones for a full-sky store)."""

    def __init__(self, store: str) -> None:
        group = _open_group(store)
        self.store = store
        self.coefficients = group["coefficients"]
        shape = tuple(int(v) for v in self.coefficients.shape)
        has_field = _coefficient_layout(store, self.coefficients)
        self.n_fields = shape[1] if has_field else 1
        self.n_paths, self.npix = shape[-2], shape[-1]
        self.layout = _coverage_layout(store, group, shape[0], self.n_paths, self.npix)
        self.coverage = group["coverage"] if self.layout is not None else None
        self._shared = None
        if self.layout == "shared":
            self._shared = np.asarray(self.coverage[:], dtype=np.float32)

    def read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        x = np.asarray(self.coefficients[start:stop], dtype=np.float32)
        k = x.shape[0]
        x = x.reshape(k, self.n_fields * self.n_paths, self.npix)
        if self.layout == "per_map":
            cov = np.asarray(self.coverage[start:stop], dtype=np.float32)
        elif self.layout == "shared":
            cov = np.broadcast_to(self._shared, (k, self.n_paths, self.npix))
        else:
            cov = np.ones((k, self.n_paths, self.npix), dtype=np.float32)
        return x, cov

    def valid_rows(self, x: np.ndarray, cov: np.ndarray) -> np.ndarray:
        """``(k,)`` bool: no non-finite value except NaN where the path's coverage is below 1."""
        finite = np.isfinite(x).all(axis=(1, 2))
        if self.layout is None or finite.all():
            return finite
        cov_f = np.tile(cov, (1, self.n_fields, 1))
        bad = ~np.isfinite(x) & ~(np.isnan(x) & (cov_f < 1))
        return ~(bad.any(axis=(1, 2)) | ~np.isfinite(cov).all(axis=(1, 2)))


class CoefficientDataset(Dataset):
    """Map-style Dataset of ``(maps (C, npix) float32, label int64)`` over a coefficient store.

    ``indices`` are store map indices (all with status 1), ``targets`` their class indices.
    ``C = n_fields * n_paths`` (+ ``n_paths`` coverage channels when ``coverage_channels``), as
    the module docstring describes. ``mean``/``std`` ``(C,)``: per-channel normalisation
    ``(x - mean) / std``, after which NaN pixels are set to 0.
    The store is opened lazily on first ``__getitem__`` in each process (DataLoader workers
    under spawn/forkserver get a pickled Dataset without any open handle).
    """

    def __init__(
        self,
        store: str | os.PathLike,
        indices: np.ndarray,
        targets: np.ndarray,
        shard_size: int,
        mean: np.ndarray | None = None,
        std: np.ndarray | None = None,
        cache_shards: int = 2,
        coverage_channels: bool = False,
    ) -> None:
        self.store = os.path.abspath(os.fspath(store))
        self.indices = np.asarray(indices, dtype=np.int64)
        self.targets = np.asarray(targets, dtype=np.int64)
        if self.indices.shape != self.targets.shape:
            raise ValueError(f"indices {self.indices.shape} and targets {self.targets.shape} differ in shape")
        self.shard_size = int(shard_size)
        self.mean = None if mean is None else np.asarray(mean, dtype=np.float32)[:, None]
        self.std = None if std is None else np.asarray(std, dtype=np.float32)[:, None]
        self.cache_shards = max(1, int(cache_shards))
        self.coverage_channels = bool(coverage_channels)
        self._array = None
        self._cache: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self.shard_reads = 0

    @property
    def shard_ids(self) -> np.ndarray:
        """Shard of every item, ``(len(self),)``."""
        return self.indices // self.shard_size

    def __len__(self) -> int:
        return len(self.indices)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_array"] = None
        state["_cache"] = OrderedDict()
        return state

    def _shard(self, shard: int) -> tuple[np.ndarray, np.ndarray]:
        """Normalised, NaN-filled float32 channels of a whole shard and which of its rows are valid (cached)."""
        if shard in self._cache:
            self._cache.move_to_end(shard)
            return self._cache[shard]
        if self._array is None:
            self._array = _BlockReader(self.store)
        start = shard * self.shard_size
        x, cov = self._array.read(start, start + self.shard_size)
        self.shard_reads += 1
        valid = self._array.valid_rows(x, cov)
        block = np.concatenate([x, cov], axis=1) if self.coverage_channels else x
        if self.mean is not None:
            if self.mean.shape[0] != block.shape[1]:
                raise ValueError(
                    f"normalisation has {self.mean.shape[0]} channels, store {self.store} gives {block.shape[1]} "
                    f"(coverage_channels={self.coverage_channels})"
                )
            block = (block - self.mean) / self.std
        nan = np.isnan(block)
        if nan.any():
            block = np.where(nan, np.float32(0), block)
        block = block.astype(np.float32, copy=False)
        self._cache[shard] = (block, valid)
        while len(self._cache) > self.cache_shards:
            self._cache.popitem(last=False)
        return block, valid

    def __getitem__(self, item: int) -> tuple[torch.Tensor, torch.Tensor]:
        index = int(self.indices[item])
        block, valid = self._shard(index // self.shard_size)
        row = index % self.shard_size
        if not valid[row]:
            raise ValueError(
                f"map {index} of store {self.store} has non-finite coefficients outside its masked area "
                "(or a non-finite coverage) although its status is 1"
            )
        return torch.from_numpy(block[row]), torch.tensor(self.targets[item])


def channel_statistics(
    store: str | os.PathLike,
    indices: np.ndarray,
    shard_size: int,
    progress: bool | None = None,
    coverage_channels: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std ``(C,)`` float64 of the maps ``indices`` (reads whole shards).

    Coefficient channels: over covered (non-NaN) pixels only. Coverage channels (when
    ``coverage_channels``) are not normalised: mean 0, std 1.
    Raises ValueError for a channel with zero variance or without any covered pixel.
    """
    indices = np.sort(np.asarray(indices, dtype=np.int64))
    if indices.size == 0:
        raise ValueError("no maps to compute normalisation statistics from")
    reader = _BlockReader(os.path.abspath(os.fspath(store)))
    n_coeff = reader.n_fields * reader.n_paths
    total = np.zeros(n_coeff)
    sq = np.zeros(n_coeff)
    count = np.zeros(n_coeff)
    shards = np.unique(indices // shard_size)
    for shard in progress_bar(shards, progress=progress, desc="channel statistics", unit="shard"):
        start = int(shard) * shard_size
        sel = indices[(indices >= start) & (indices < start + shard_size)] - start
        x, _ = reader.read(start, start + shard_size)
        x = x[sel].astype(np.float64)
        covered = ~np.isnan(x)
        x = np.where(covered, x, 0.0)
        total += x.sum(axis=(0, 2))
        sq += (x * x).sum(axis=(0, 2))
        count += covered.sum(axis=(0, 2))
    if np.any(count == 0):
        bad = np.flatnonzero(count == 0).tolist()
        raise ValueError(f"channels {bad} have no covered (non-NaN) pixel in the training maps of {store}")
    mean = total / count
    var = np.maximum(sq / count - mean**2, 0.0)
    if np.any(var <= 0) or not np.all(np.isfinite(var)):
        bad = np.flatnonzero(~(var > 0)).tolist()
        raise ValueError(f"channels {bad} have zero or non-finite variance over the training maps")
    if coverage_channels:
        mean = np.concatenate([mean, np.zeros(reader.n_paths)])
        var = np.concatenate([var, np.ones(reader.n_paths)])
    return mean, np.sqrt(var)


class ShardDistributedSampler(Sampler[int]):
    """Distributed sampler that gives each rank whole shards of the store.

    Every epoch (``set_epoch``) the shards are permuted with ``seed + epoch`` and dealt
    greedily to the rank with the fewest items so far; items are shuffled within each shard,
    shards are visited one after the other (so the Dataset's shard cache always hits).
    With ``pad=True`` (training) every rank yields the same number of items (the largest
    rank's), repeating its own items, so DDP ranks run the same number of steps;
    with ``pad=False`` (evaluation) every item is yielded exactly once over all ranks.
    """

    def __init__(
        self,
        shard_ids: np.ndarray,
        num_replicas: int | None = None,
        rank: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        pad: bool = True,
    ) -> None:
        if num_replicas is None or rank is None:
            dist = torch.distributed
            ready = dist.is_available() and dist.is_initialized()
            num_replicas = (dist.get_world_size() if ready else 1) if num_replicas is None else num_replicas
            rank = (dist.get_rank() if ready else 0) if rank is None else rank
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} outside 0..{num_replicas - 1}")
        self.shard_ids = np.asarray(shard_ids, dtype=np.int64)
        self.num_replicas, self.rank = int(num_replicas), int(rank)
        self.shuffle, self.seed, self.pad = bool(shuffle), int(seed), bool(pad)
        self.shards = np.unique(self.shard_ids)
        if pad and len(self.shards) < self.num_replicas:
            raise ValueError(
                f"{len(self.shards)} shards hold these maps, fewer than the {self.num_replicas} ranks: "
                "every rank needs at least one whole shard (write the store with smaller shards or use fewer ranks)"
            )
        self.epoch = 0
        self._plan = self._make_plan()

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle for ``epoch`` (call it every epoch, before iterating)."""
        self.epoch = int(epoch)
        self._plan = self._make_plan()

    def assignment(self) -> list[np.ndarray]:
        """Shards dealt to every rank this epoch (list over ranks)."""
        return self._plan[1]

    def _make_plan(self) -> tuple[np.ndarray, list[np.ndarray]]:
        gen = np.random.default_rng([self.seed, self.epoch])
        order = gen.permutation(self.shards) if self.shuffle else self.shards
        members = {int(s): np.flatnonzero(self.shard_ids == s) for s in order}
        if self.shuffle:
            members = {s: gen.permutation(m) for s, m in members.items()}
        loads = np.zeros(self.num_replicas, dtype=np.int64)
        dealt: list[list[int]] = [[] for _ in range(self.num_replicas)]
        for s in order:
            r = int(np.argmin(loads))
            dealt[r].append(int(s))
            loads[r] += len(members[int(s)])
        mine = [members[s] for s in dealt[self.rank]]
        items = np.concatenate(mine) if mine else np.zeros(0, dtype=np.int64)
        if self.pad:
            target = int(loads.max())
            items = np.resize(items, target) if items.size else items
        return items, [np.asarray(d, dtype=np.int64) for d in dealt]

    def __iter__(self):
        return iter(self._plan[0].tolist())

    def __len__(self) -> int:
        return len(self._plan[0])
