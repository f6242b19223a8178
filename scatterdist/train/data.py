"""Coefficient store -> torch: store metadata, labels, deterministic splits, lazy Dataset, shard sampler.

Every read of the store goes through :mod:`scatterdist.store` (:func:`~scatterdist.store.read_store_info`,
:class:`~scatterdist.store.CoefficientBlocks`): this module never names the store's arrays.
Only maps with status ok (1) and a label are ever read; :func:`usage` counts the others by
reason (failed, not computed, no label).

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

import hashlib
import os
import warnings
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from scatterdist._progress import progress_bar
from scatterdist.store import (
    NO_LABEL,
    STATUS_FAILED,
    STATUS_OK,
    STATUS_TODO,
    CoefficientBlocks,
    DamagedStoreError,
    StoreFormatError,
    StoreInfo,
    read_store_info,
)

SPLITS = ("train", "val", "test")


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

    The CSV is read by :func:`scatterdist.inputs.read_labels_csv` (the reader of ``scatter
    --labels``: header ``id`` or ``map``, and ``label``), labels kept as text (``"cat"`` works);
    maps not in the CSV, or with an empty label, have none. Store labels are integers of any
    value, :data:`~scatterdist.store.NO_LABEL` (-1) meaning none.
    """
    out = np.full(info.n_maps, "", dtype=object)
    if labels_csv is not None:
        from scatterdist.inputs import read_labels_csv  # here: DataLoader workers never need the input readers

        index = {mid: i for i, mid in enumerate(info.map_ids)}
        unknown = []
        for mid, label in read_labels_csv(labels_csv, integer=False).items():
            i = index.get(mid)
            if i is None:
                unknown.append(mid)
            else:
                out[i] = label
        if unknown:
            warnings.warn(f"{len(unknown)} map ids in {labels_csv} are not in the store (e.g. {unknown[:3]})", stacklevel=2)
        return out
    if info.labels is None:
        raise ValueError(f"store {info.path} has no 'label' variable: pass a labels CSV (columns id or map, and label)")
    labelled = info.labels != NO_LABEL
    out[labelled] = [str(v) for v in info.labels[labelled].tolist()]
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
    return split_class_counts(info.map_ids, labels, val_fraction, test_fraction, usable=info.status == STATUS_OK)


def select_maps(
    info: StoreInfo, labels: np.ndarray, split: str | None, val_fraction: float = 0.15, test_fraction: float = 0.15
) -> np.ndarray:
    """Store indices of the maps with status 1, a label, and in ``split`` (``None``/"all": every split).

    ``labels`` is :func:`read_labels`' output; the split is :func:`split_of` stratified by it.
    """
    ok = (info.status == STATUS_OK) & (labels != "")
    if split not in (None, "all"):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS} or 'all', got {split!r}")
        ok &= split_of(info.map_ids, val_fraction, test_fraction, labels) == split
    return np.flatnonzero(ok)


@dataclass(frozen=True)
class MapUsage:
    """How many of a store's maps a run uses and why it skips the others.

    ``used``: status ok with a label; ``failed``: status failed; ``todo``: not computed
    (status todo, e.g. a store still being written); ``unlabelled``: status ok without a label.
    """

    n_maps: int
    used: int
    failed: int
    todo: int
    unlabelled: int

    def describe(self, verb: str = "training on") -> str:
        """One line, e.g. ``"training on 60 of 64 maps: 3 failed, 1 not computed"``."""
        reasons = [f"{n} {why}" for n, why in ((self.failed, "failed"), (self.todo, "not computed"),
                                              (self.unlabelled, "without a label")) if n]
        text = f"{verb} {self.used} of {self.n_maps} maps"
        return text + (": " + ", ".join(reasons) if reasons else "")


def usage(info: StoreInfo, labels: np.ndarray, within: np.ndarray | None = None) -> MapUsage:
    """:class:`MapUsage` of a store given :func:`read_labels`' output.

    ``within`` (``(n_maps,)`` bool, e.g. one split): count only those maps; default every map.
    """
    within = np.ones(info.n_maps, dtype=bool) if within is None else np.asarray(within, dtype=bool)
    ok = (info.status == STATUS_OK) & within
    return MapUsage(
        n_maps=int(within.sum()), used=int(np.sum(ok & (labels != ""))),
        failed=int(np.sum((info.status == STATUS_FAILED) & within)),
        todo=int(np.sum((info.status == STATUS_TODO) & within)), unlabelled=int(np.sum(ok & (labels == ""))),
    )


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
            self._array = CoefficientBlocks(self.store)
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
            raise DamagedStoreError(
                f"map {index} of store {self.store} has non-finite coefficients outside its masked area "
                f"(or a non-finite coverage) although its status is ok: a chunk may be missing; run "
                f"`scatterdist verify {self.store}` to mark damaged maps todo, then scatter again"
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
    reader = CoefficientBlocks(store)
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
