"""K-fold evaluation of the CMB study (``scatterdist experiment cmb --folds K``).

One independent set of skies per alpha; the skies of each class are ranked by the SHA-256 of
their map id and dealt into ``K`` folds of (nearly) equal size, so every fold is balanced.
Round ``k`` tests on fold ``k``, validates on fold ``k + 1 (mod K)`` and trains on the rest:
every sky is tested exactly once. The per-round records are pooled per (alpha, model) into one
record whose test predictions cover every sky (:func:`pool_folds`); its standard error is the
bootstrap over skies (:func:`bootstrap_se`), floored by the binomial error in the report.

The HybridCNN is trained here on explicit index sets (:func:`train_cnn_fold`): the package's
trainer splits by hash fractions only, a fold needs given train/val/test maps.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import numpy as np

__all__ = ["BOOTSTRAP_RESAMPLES", "bootstrap_se", "fold_of", "fold_split", "pool_folds", "train_cnn_fold"]

#: Bootstrap resamples (over skies) of a pooled accuracy.
BOOTSTRAP_RESAMPLES = 2000


def fold_of(map_ids: np.ndarray | list[str], labels: np.ndarray, folds: int) -> np.ndarray:
    """Fold ``0..folds-1`` of every map ``(n,)`` int64, stratified per class.

    Within each class the maps are ranked by the SHA-256 of their id (ties by id) and the i-th of
    ``n_c`` gets fold ``floor(i * folds / n_c)``: fold sizes differ by at most one per class.
    """
    if folds < 3:
        raise ValueError(f"need folds >= 3 (one to test, one to validate, the rest to train), got {folds}")
    ids = np.array([str(m) for m in map_ids], dtype=object)
    labels = np.asarray(labels)
    if labels.shape != ids.shape:
        raise ValueError(f"labels {labels.shape} and map ids {ids.shape} differ in shape")
    u = np.array([int(hashlib.sha256(m.encode()).hexdigest()[:15], 16) for m in ids], dtype=np.int64)
    out = np.empty(ids.size, dtype=np.int64)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        if members.size < folds:
            raise ValueError(f"class {c} has {members.size} maps, fewer than folds={folds}: raise --n-per-class")
        order = members[np.lexsort((ids[members], u[members]))]
        out[order] = np.arange(order.size) * folds // order.size
    return out


def fold_split(fold: np.ndarray, k: int, folds: int) -> np.ndarray:
    """Split of round ``k``: ``"test"`` on fold k, ``"val"`` on fold k+1 (mod folds), ``"train"`` elsewhere."""
    if not 0 <= k < folds:
        raise ValueError(f"round k must be in 0..{folds - 1}, got {k}")
    return np.where(fold == k, "test", np.where(fold == (k + 1) % folds, "val", "train")).astype(object)


def bootstrap_se(correct: np.ndarray, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> float:
    """Standard error of the mean of ``correct`` (0/1 per sky) from ``resamples`` bootstrap resamples of the skies."""
    correct = np.asarray(correct, dtype=np.float64)
    if correct.size == 0:
        raise ValueError("bootstrap_se needs at least one sky")
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, correct.size, size=(resamples, correct.size))
    return float(correct[draws].mean(axis=1).std(ddof=1))


def pool_folds(records: list[dict[str, Any]], resamples: int = BOOTSTRAP_RESAMPLES) -> list[dict[str, Any]]:
    """One record per (alpha, model) from per-round records (each with ``fold`` and per-sky test predictions).

    Pooled: test accuracy over every sky (each tested once), validation accuracy over every
    round's validation skies, the concatenated per-sky predictions, ``se_bootstrap``, and for the
    recommended model the choice of every round (``choice``: the most frequent, ``choices``: all).
    """
    groups: dict[tuple[float, str], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((float(r["alpha"]), str(r["model"])), []).append(r)
    pooled = []
    for (alpha, model), rs in groups.items():
        rs = sorted(rs, key=lambda r: r["fold"])
        missing = [r["fold"] for r in rs if "test_ids" not in r]
        if missing:
            raise ValueError(f"alpha {alpha:g}, model {model}: rounds {missing} have no per-sky predictions")
        ids = [m for r in rs for m in r["test_ids"]]
        if len(set(ids)) != len(ids):
            raise ValueError(f"alpha {alpha:g}, model {model}: a sky is tested in more than one round")
        labels = np.array([v for r in rs for v in r["test_labels"]])
        pred = np.array([v for r in rs for v in r["test_predicted"]])
        correct = labels == pred
        n_val = sum(int(r["n_val"]) for r in rs)
        val = sum(float(r["val_accuracy"]) * int(r["n_val"]) for r in rs) / n_val if n_val else float("nan")
        seconds = [r.get("seconds") for r in rs]
        rec = {
            "alpha": alpha, "seed": rs[0]["seed"], "model": model, "folds": len(rs),
            "accuracy": float(correct.mean()), "n_test": int(correct.size), "val_accuracy": val, "n_val": n_val,
            "predicted": {str(c): int(np.sum(pred == c)) for c in (0, 1)},
            "se_bootstrap": bootstrap_se(correct, resamples), "bootstrap_resamples": resamples,
            "fold_accuracy": [float(r["accuracy"]) for r in rs],
            "test_ids": ids, "test_labels": [int(v) for v in labels], "test_predicted": [int(v) for v in pred],
            "seconds": None if None in seconds else float(sum(seconds)),
        }
        if model == "recommended":
            choices = [r["choice"] for r in rs]
            rec["choices"] = choices
            rec["choice"] = max(dict.fromkeys(choices), key=choices.count)
        pooled.append(rec)
    return pooled


def _predict(model: Any, dataset: Any, batch_size: int) -> np.ndarray:
    """Class index predicted for every item of ``dataset`` in order (its indices are sorted: shards hit the cache)."""
    import torch

    out = []
    model.eval()
    with torch.no_grad():
        for a in range(0, len(dataset), batch_size):
            x = torch.stack([dataset[i][0] for i in range(a, min(a + batch_size, len(dataset)))])
            out.append(model(x).argmax(-1).numpy())
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def train_cnn_fold(store: str, split: np.ndarray, run_dir: str, *, epochs: int, batch_size: int, lr: float,
                   hidden: int, layers: int, seed: int) -> dict[str, Any]:
    """Train the HybridCNN on the maps of ``store`` whose ``split`` (``(n_maps,)``, store order) is "train";
    score the final model on "val" and "test".

    Same model, normalisation (train-split channel statistics), shard-wise shuffling, Adam and
    cross-entropy as :func:`scatterdist.train.train`, single process. The result (the
    :func:`~scatterdist.experiments.features.logistic_scores` keys, per-sky test predictions
    included) is saved as ``run_dir/fold.json`` and returned from there when the command is
    repeated with the same split and settings.
    """
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader

    from scatterdist.store import read_store_info
    from scatterdist.train.data import CoefficientDataset, ShardDistributedSampler, channel_statistics
    from scatterdist.train.model import HybridCNN

    info = read_store_info(store)
    if info.labels is None or np.any(np.asarray(info.labels) < 0):
        raise ValueError(f"store {store} needs a label 0/1 on every map for a fold run")
    labels = np.asarray(info.labels, dtype=np.int64)
    split = np.asarray(split, dtype=object)
    if split.shape != labels.shape:
        raise ValueError(f"split has {split.shape} entries, store {store} has {labels.shape} maps")
    if not np.all(info.status == 1):
        raise RuntimeError(f"store {store} has maps that are not done (status != 1); rerun the command to finish it")
    settings = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "hidden": hidden, "layers": layers, "seed": seed,
                "split_sha256": hashlib.sha256("".join(split.tolist()).encode()).hexdigest(),
                "store_config_hash": str(info.attrs.get("config_hash", ""))}
    path = os.path.join(run_dir, "fold.json")
    if os.path.exists(path):
        with open(path) as fh:
            saved = json.load(fh)
        if saved.get("settings") == settings:
            return saved["scores"]
    idx = {s: np.flatnonzero(split == s) for s in ("train", "val", "test")}
    if any(v.size == 0 for v in idx.values()):
        raise ValueError(f"every split needs maps, got { {s: int(v.size) for s, v in idx.items()} }")
    coverage = info.masked
    mean, std = channel_statistics(store, idx["train"], info.shard_size, progress=False, coverage_channels=coverage)
    data = {s: CoefficientDataset(store, v, labels[v], info.shard_size, mean, std, coverage_channels=coverage)
            for s, v in idx.items()}
    sampler = ShardDistributedSampler(data["train"].shard_ids, 1, 0, shuffle=True, seed=seed, pad=False)
    loader = DataLoader(data["train"], batch_size=batch_size, sampler=sampler)
    torch.manual_seed(seed)
    model = HybridCNN(info.n_inputs(coverage), info.nside_out, 2 * info.nside_out - 1, hidden=hidden, n_classes=2,
                      n_layers=layers)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        model.train()
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    pred = {s: _predict(model, data[s], 2 * batch_size) for s in ("val", "test")}
    ids = np.asarray(info.map_ids, dtype=object)
    scores = {
        "accuracy": float(np.mean(pred["test"] == labels[idx["test"]])), "n_test": int(idx["test"].size),
        "val_accuracy": float(np.mean(pred["val"] == labels[idx["val"]])), "n_val": int(idx["val"].size),
        "predicted": {str(c): int(np.sum(pred["test"] == c)) for c in (0, 1)},
        "test_ids": [str(m) for m in ids[idx["test"]]], "test_labels": [int(v) for v in labels[idx["test"]]],
        "test_predicted": [int(v) for v in pred["test"]],
    }
    os.makedirs(run_dir, exist_ok=True)
    with open(path + ".tmp", "w") as fh:
        json.dump({"settings": settings, "scores": scores}, fh)
    os.replace(path + ".tmp", path)
    return scores
