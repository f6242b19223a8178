"""Coefficient store -> torch: metadata, labels, splits, lazy Dataset under spawn, shard sampler (issue 6)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
import zarr
from torch.utils.data import DataLoader

from scatterdist.store import CoefficientBlocks, DamagedStoreError, StoreError, open_coefficients
from scatterdist.train import data as D
from scatterdist.testing import write_synthetic_store

N_MAPS, SHARD = 40, 8
FAILED, TODO = (3, 17), (38, 39)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("train_data") / "coeffs.zarr"
    write_synthetic_store(path, n_maps=N_MAPS, shard_size=SHARD, failed=FAILED, todo=TODO, seed=3, fields=("I",))
    return str(path)


@pytest.fixture(scope="module")
def info(store) -> D.StoreInfo:
    return D.read_store_info(store)


def test_store_info_reads_schema(store, info):
    assert (info.n_maps, info.n_paths, info.nside_out, info.npix) == (N_MAPS, 3, 8, 768)
    assert info.shard_size == SHARD == zarr.open_array(store, path="coefficients", mode="r").shards[0]
    assert set(np.flatnonzero(info.status != 1)) == set(FAILED) | set(TODO)
    assert info.map_ids[0] == "syn00000"


def test_missing_store_and_bad_store_are_clear_errors(tmp_path):
    with pytest.raises(StoreError, match="does not exist"):
        D.read_store_info(tmp_path / "nope.zarr")
    zarr.open_group(tmp_path / "empty.zarr", mode="w")
    with pytest.raises(StoreError, match="not a scatterdist store"):
        D.read_store_info(tmp_path / "empty.zarr")


def test_split_is_deterministic_by_id_and_skips_bad_maps(info):
    labels = D.read_labels(info)
    parts = {s: D.select_maps(info, labels, s) for s in D.SPLITS}
    union = np.concatenate(list(parts.values()))
    assert len(union) == len(set(union.tolist())) == N_MAPS - len(FAILED) - len(TODO)
    assert not set(union.tolist()) & (set(FAILED) | set(TODO))
    # the split of a map depends on its id only: reversing the order or dropping maps changes nothing
    ids = info.map_ids
    np.testing.assert_array_equal(D.split_of(ids[::-1])[::-1], D.split_of(ids))
    np.testing.assert_array_equal(D.split_of(ids[:10]), D.split_of(ids)[:10])
    many = D.split_of(np.array([f"m{i}" for i in range(4000)]), 0.2, 0.1)
    assert abs((many == "val").mean() - 0.2) < 0.03 and abs((many == "test").mean() - 0.1) < 0.03


def test_split_is_stratified_per_class_when_labels_are_known():
    # the CMB study's layout: classes alternate in the store order, 300 skies per class
    ids = np.array([f"cmb-a0.01-s{i % 3}-{i:05d}" for i in range(600)], dtype=object)
    labels = np.arange(600) % 2
    split = D.split_of(ids, 0.15, 0.15, labels)
    for c in (0, 1):  # exactly round(f * n_c) of each class in val and test
        assert ((split == "test") & (labels == c)).sum() == 45
        assert ((split == "val") & (labels == c)).sum() == 45
    counts = D.split_class_counts(ids, labels, 0.15, 0.15)
    assert counts == {"train": {"0": 210, "1": 210}, "val": {"0": 45, "1": 45}, "test": {"0": 45, "1": 45}}
    # the id-hash rule alone is not balanced on this data: the reason for stratifying
    plain = D.split_of(ids, 0.15, 0.15)
    assert ((plain == "test") & (labels == 0)).sum() != ((plain == "test") & (labels == 1)).sum()
    # deterministic from the ids: store order does not matter, string and integer labels agree
    perm = np.random.default_rng(1).permutation(600)
    np.testing.assert_array_equal(D.split_of(ids[perm], 0.15, 0.15, labels[perm]), split[perm])
    np.testing.assert_array_equal(D.split_of(ids, 0.15, 0.15, labels.astype(str).astype(object)), split)
    # unequal classes keep their own shares; unlabelled maps (-1, NaN, "") follow the id hash
    lab3 = np.where(np.arange(600) < 500, labels, 2)
    c3 = D.split_class_counts(ids, lab3, 0.2, 0.1)
    assert c3["test"] == {"0": 25, "1": 25, "2": 10} and c3["val"] == {"0": 50, "1": 50, "2": 20}
    unl = np.where(np.arange(600) % 7 == 0, -1, labels)
    s_unl = D.split_of(ids, 0.15, 0.15, unl)
    np.testing.assert_array_equal(s_unl[unl < 0], plain[unl < 0])
    assert sum(D.split_class_counts(ids, unl)[s]["0"] for s in D.SPLITS) == ((unl == 0).sum())
    with pytest.raises(ValueError, match="one entry per map id"):
        D.split_of(ids, 0.15, 0.15, labels[:10])


def test_stratified_split_is_stable_when_maps_are_added():
    ids = np.array([f"m{i}" for i in range(400)], dtype=object)
    labels = np.arange(400) % 2
    split = D.split_of(ids, 0.15, 0.15, labels)
    order = {"test": 0, "val": 1, "train": 2}
    for k in (1, 4, 30):
        more = np.concatenate([ids, [f"new{k}-{i}" for i in range(2 * k)]])
        grown = D.split_of(more, 0.15, 0.15, np.arange(len(more)) % 2)[:400]
        moved = np.flatnonzero(grown != split)
        for c in (0, 1):
            assert np.sum(labels[moved] == c) <= 2 * k + 2
        # only to a neighbouring split (test <-> val, val <-> train)
        assert all(abs(order[grown[i]] - order[split[i]]) == 1 for i in moved)
    # adding a class leaves the other classes' maps where they were
    more = np.concatenate([ids, [f"x{i}" for i in range(50)]])
    grown = D.split_of(more, 0.15, 0.15, np.concatenate([labels, np.full(50, 7)]))
    np.testing.assert_array_equal(grown[:400], split)


def test_store_split_counts_count_usable_maps(store, info):
    counts = D.store_split_counts(store)
    labels = D.read_labels(info)
    for s in D.SPLITS:
        idx = D.select_maps(info, labels, s)
        assert sum(counts[s].values()) == len(idx)
        for c, n in counts[s].items():
            assert n == np.sum(labels[idx] == c)


def test_labels_from_csv_override_store(tmp_path, info):
    csv = tmp_path / "labels.csv"
    csv.write_text("map,label\n" + "".join(f"{m},{'cat' if i % 3 else 'dog'}\n" for i, m in enumerate(info.map_ids[:20])))
    labels = D.read_labels(info, csv)
    assert labels[0] == "dog" and labels[1] == "cat" and labels[25] == ""
    assert D.class_names_of(labels) == ["cat", "dog"]
    assert set(D.select_maps(info, labels, "all").tolist()) <= set(range(20))
    bad = tmp_path / "bad.csv"
    bad.write_text("name,value\na,1\n")
    with pytest.raises(ValueError, match=r"columns id \(or map\) and label"):
        D.read_labels(info, bad)


def test_channel_statistics_match_xarray(store, info):
    idx = D.select_maps(info, D.read_labels(info), "train")
    mean, std = D.channel_statistics(store, idx, info.shard_size, progress=False)
    ds = open_coefficients(store)
    x = ds["coefficients"].values[idx, 0].astype(np.float64)  # the one field: (map, path, pixel)
    np.testing.assert_allclose(mean, x.mean(axis=(0, 2)), rtol=1e-10)
    np.testing.assert_allclose(std, x.std(axis=(0, 2)), rtol=1e-8)


def _dataset(store, info, split="all"):
    labels = D.read_labels(info)
    idx = D.select_maps(info, labels, split)
    mean, std = np.arange(3.0), np.arange(1.0, 4.0)
    return D.CoefficientDataset(store, idx, labels[idx].astype(int), info.shard_size, mean, std), idx, mean, std


def test_dataset_opens_lazily_and_works_in_spawned_workers(store, info):
    ds, idx, mean, std = _dataset(store, info)
    assert ds._array is None  # nothing opened in __init__
    raw = open_coefficients(store)["coefficients"].values[:, 0]  # (map, path, pixel) of the one field
    x, y = ds[5]
    np.testing.assert_allclose(x.numpy(), (raw[idx[5]] - mean[:, None]) / std[:, None], rtol=1e-6)
    assert int(y) == int(info.labels[idx[5]])
    assert ds._array is not None
    clone = pickle.loads(pickle.dumps(ds))  # what a spawn/forkserver worker receives
    assert clone._array is None and len(clone._cache) == 0
    sampler = D.ShardDistributedSampler(ds.shard_ids, 1, 0, shuffle=False, pad=False)
    loader = DataLoader(ds, batch_size=4, sampler=sampler, num_workers=2, multiprocessing_context="spawn")
    xs, ys = zip(*loader)
    got = torch.cat(xs).numpy()
    order = np.fromiter(iter(sampler), dtype=np.int64)
    np.testing.assert_allclose(got, (raw[idx[order]] - mean[:, None]) / std[:, None], rtol=1e-6)
    np.testing.assert_array_equal(torch.cat(ys).numpy(), info.labels[idx[order]])


def test_dataset_reads_each_shard_once_in_sampler_order(store, info):
    ds, idx, _, _ = _dataset(store, info)
    sampler = D.ShardDistributedSampler(ds.shard_ids, 1, 0, shuffle=True, seed=1)
    for i in sampler:
        ds[i]
    assert ds.shard_reads == len(np.unique(idx // SHARD))


def test_dataset_refuses_non_finite_coefficients(store, info):
    ds = D.CoefficientDataset(store, np.array([FAILED[0]]), np.array([0]), info.shard_size)
    with pytest.raises(DamagedStoreError, match="non-finite.*scatterdist verify"):
        ds[0]


@pytest.mark.parametrize("damage", ["truncated", "deleted"])
def test_damaged_shard_is_one_line_naming_its_maps_and_verify(tmp_path, damage):
    """Issue 17 row 4, the reader's side: a truncated chunk fails its checksum, a deleted one reads
    as NaN; either way the trainer says which maps and how to repair, never a bare codec error."""
    path = tmp_path / "s.zarr"
    write_synthetic_store(path, n_maps=16, shard_size=8, seed=2)
    shard = path / "coefficients" / "c" / "1"  # the object of shard 1 (maps 8-15)
    while shard.is_dir():
        shard = next(shard.iterdir())
    if damage == "truncated":
        shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    else:
        shard.unlink()
    info = D.read_store_info(path)
    ds = D.CoefficientDataset(path, np.arange(16), np.zeros(16), info.shard_size)
    ds[0]  # shard 0 is intact
    with pytest.raises(DamagedStoreError, match="scatterdist verify") as err:
        ds[9]
    assert (damage == "deleted") == ("non-finite" in str(err.value))
    assert damage == "deleted" or "maps 8-15" in str(err.value)
    assert "\n" not in str(err.value)


def test_shard_sampler_gives_ranks_whole_disjoint_shards(info):
    labels = D.read_labels(info)
    idx = D.select_maps(info, labels, "all")
    shard_ids = idx // SHARD
    ranks = [D.ShardDistributedSampler(shard_ids, 2, r, shuffle=True, seed=7) for r in range(2)]
    for epoch in (0, 1):
        for s in ranks:
            s.set_epoch(epoch)
        items = [np.fromiter(iter(s), dtype=np.int64) for s in ranks]
        assert len(items[0]) == len(items[1]) == len(ranks[0]) == len(ranks[1])  # same number of DDP steps
        shards = [set(shard_ids[it].tolist()) for it in items]
        assert not shards[0] & shards[1]
        assert shards[0] | shards[1] == set(shard_ids.tolist())
        for r in range(2):  # a rank gets every item of each of its shards, and only those
            own = np.flatnonzero(np.isin(shard_ids, list(shards[r])))
            assert set(items[r].tolist()) == set(own.tolist())
            assert shards[r] == set(ranks[r].assignment()[r].tolist())
    # reshuffled per epoch, reproducible for a given epoch
    s = D.ShardDistributedSampler(shard_ids, 2, 0, shuffle=True, seed=7)
    s.set_epoch(0)
    e0 = list(s)
    s.set_epoch(1)
    assert list(s) != e0
    s.set_epoch(0)
    assert list(s) == e0
    # evaluation mode: every item exactly once over the ranks
    ev = [list(D.ShardDistributedSampler(shard_ids, 3, r, shuffle=False, pad=False)) for r in range(3)]
    assert sorted(sum(ev, [])) == list(range(len(idx)))
    with pytest.raises(ValueError, match="fewer than the 9 ranks"):
        D.ShardDistributedSampler(shard_ids, 9, 0)


def test_progress_bars_only_on_terminals_unless_asked(monkeypatch, tmp_path):
    import io
    import os

    from scatterdist._progress import ENV_VAR, progress_bar, show_progress

    monkeypatch.delenv(ENV_VAR, raising=False)
    log = open(tmp_path / "log.txt", "w")
    master, slave = os.openpty()
    tty = os.fdopen(slave, "w")
    try:
        assert not show_progress(None, log) and not show_progress(None, io.StringIO())
        assert show_progress(None, tty)
        assert show_progress(True, log) and not show_progress(False, tty)
        monkeypatch.setenv(ENV_VAR, "1")
        assert show_progress(None, log) and not show_progress(False, log)
        monkeypatch.setenv(ENV_VAR, "0")
        assert not show_progress(None, tty) and not show_progress(True, tty)  # disabling wins
        monkeypatch.setenv(ENV_VAR, "maybe")
        with pytest.warns(RuntimeWarning, match="neither 1 nor 0"):
            assert not show_progress(None, log)
    finally:
        tty.close()
        os.close(master)
        log.close()
    # a bar on a pipe/file writes nothing at all; a forced one does
    monkeypatch.delenv(ENV_VAR)
    for forced, expect in ((None, ""), (True, "stats")):
        out = io.StringIO()
        for _ in progress_bar(range(3), progress=forced, file=out, desc="stats"):
            pass
        assert (expect in out.getvalue()) and (out.getvalue() == "") == (expect == "")


@pytest.mark.parametrize("mask", ["shared", "per_map"])
def test_masked_multi_field_store_reads_as_channels(tmp_path, mask):
    path = str(tmp_path / f"{mask}.zarr")
    write_synthetic_store(path, n_maps=24, shard_size=8, n_channels=3, fields=("I", "E", "B"), mask=mask, failed=(5,), seed=4)
    info = D.read_store_info(path)
    assert info.fields == ["I", "E", "B"] and info.coverage_layout == mask and info.masked
    assert info.n_inputs(False) == 9 and info.n_inputs(True) == 12
    assert info.channel_labels(True)[3] == "E synthetic 0" and info.channel_labels(True)[9] == "coverage synthetic 0"
    ds = open_coefficients(path)
    raw = ds["coefficients"].values.astype(np.float64)  # (map, field, path, pixel), NaN outside coverage
    cov = ds["coverage"].values
    cov = np.broadcast_to(cov, (24, 3, cov.shape[-1])) if mask == "shared" else cov
    assert np.isnan(raw[0]).any()
    idx = D.select_maps(info, D.read_labels(info), "train")
    mean, std = D.channel_statistics(path, idx, info.shard_size, progress=False, coverage_channels=True)
    x = raw[idx].reshape(len(idx), 9, -1)
    np.testing.assert_allclose(mean[:9], np.nanmean(x, axis=(0, 2)), rtol=1e-9)
    np.testing.assert_allclose(std[:9], np.nanstd(x, axis=(0, 2)), rtol=1e-6)
    np.testing.assert_array_equal(mean[9:], 0.0)
    np.testing.assert_array_equal(std[9:], 1.0)
    data = D.CoefficientDataset(path, idx, np.zeros(len(idx)), info.shard_size, mean, std, coverage_channels=True)
    for item in (0, len(idx) - 1):
        got = data[item][0].numpy()
        m = idx[item]
        assert got.shape == (12, 768) and np.isfinite(got).all()
        want = (raw[m].reshape(9, -1) - mean[:9, None]) / std[:9, None]
        covered = ~np.isnan(want)
        np.testing.assert_allclose(got[:9][covered], want[covered], rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(got[:9][~covered], 0.0)  # NaN -> the channel mean
        np.testing.assert_allclose(got[9:], cov[m], rtol=1e-6)  # the coverage, not normalised
        cov_f = np.tile(cov[m], (3, 1))  # every field shares the path's coverage
        assert np.all(cov_f[covered] >= 0.5) and np.all(cov_f[~covered] < 0.5)
    # a NaN where the coverage is 1 is still refused
    assert 5 not in idx
    with pytest.raises(DamagedStoreError, match="non-finite"):
        D.CoefficientDataset(path, np.array([5]), np.array([0]), info.shard_size)[0]


def test_full_sky_one_field_store_is_unmasked(info):
    assert info.fields == ["I"] and info.coverage_layout == "shared" and not info.masked
    assert info.n_inputs(True) == 2 * info.n_paths and info.channel_labels(False)[0] == "I synthetic 0"
    assert info.labels.dtype == np.int64 and info.config_hash == info.attrs["config_hash"]


def test_pre_field_store_is_refused_with_the_command_that_recreates_it(tmp_path):
    path = tmp_path / "legacy.zarr"
    write_synthetic_store(path, n_maps=8, shard_size=8, fields=None)  # the schema before fields existed
    with pytest.raises(StoreError, match="pre-field schema") as err:
        D.read_store_info(path)
    assert f"--output {path} --overwrite" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(StoreError, match="pre-field schema"):
        CoefficientBlocks(path)


def test_usage_counts_skipped_maps_by_reason(info, tmp_path):
    u = D.usage(info, D.read_labels(info))
    assert (u.n_maps, u.used, u.failed, u.todo, u.unlabelled) == (N_MAPS, N_MAPS - 4, 2, 2, 0)
    assert u.describe() == f"training on {N_MAPS - 4} of {N_MAPS} maps: 2 failed, 2 not computed"
    csv = tmp_path / "labels.csv"  # 30 maps labelled, of which 2 failed (3, 17): 10 ok maps without a label
    csv.write_text("id,label\n" + "".join(f"{m},{i % 2}\n" for i, m in enumerate(info.map_ids[:30])))
    u = D.usage(info, D.read_labels(info, csv))
    assert u.describe() == f"training on 28 of {N_MAPS} maps: 2 failed, 2 not computed, 8 without a label"


def test_store_labels_of_any_integer_value(tmp_path):
    """Issue 17 row 10 on the trainer's side: int64 labels in the store, only -1 means none."""
    import json

    from scatterdist.inputs import Catalog, Entry, MapRef
    from scatterdist.store import create, write_shard
    from scatterdist.testing import SyntheticChannels, synthetic_maps

    spec = SyntheticChannels(8, 2, (1.0, 2.5))
    values = [128, 2**40, -1, -7]
    entries = [Entry(id=f"m{i}", source="synthetic", ref=MapRef("sim", json.dumps(spec.config()), i), label=v)
               for i, v in enumerate(values)]
    path = tmp_path / "big.zarr"
    create(path, Catalog(entries, 8), spec, 4, fields=("I",))
    write_shard(path, 0, synthetic_maps(np.zeros(4), 8, 2, spec.slopes), np.ones(4, np.int8), [""] * 4)
    info = D.read_store_info(path)
    assert info.labels.dtype == np.int64 and info.labels.tolist() == values
    labels = D.read_labels(info)
    assert labels.tolist() == ["128", "1099511627776", "", "-7"]
    assert D.class_names_of(labels) == ["-7", "128", "1099511627776"]
    assert D.usage(info, labels).describe() == "training on 3 of 4 maps: 1 without a label"
