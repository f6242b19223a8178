"""Training and evaluation loops: one process or DDP under torchrun, checkpoints, resume.

Run directory layout (``RUN_DIR``)::

    train.lock       {pid, host, time} of the trainer while it runs (one trainer per RUN_DIR)
    checkpoint.pt    last completed epoch (model, optimizer, normalisation, history, world size,
                     package version, store config hash), atomic
    metrics.jsonl    one JSON object per completed epoch (rewritten from the checkpoint's history)
    curves.png       loss and accuracy per epoch
    ranks.json       SHA-256 of the final weights on every rank (DDP consistency check)

Before training (rank 0 decides, every rank follows): a store still being written (its writer
lock held by a live process) is refused unless ``allow_partial``; a second trainer on the same
RUN_DIR is refused (:class:`~scatterdist.train.rundir.RunLock`); the line "training on N of M
maps: ..." says how many maps are skipped and why.

Resuming: when ``RUN_DIR/checkpoint.pt`` exists the same command continues after its last
epoch (``resume=True`` makes a missing checkpoint an error). Everything random is seeded
from ``seed`` and the epoch (model init, shard order), so a killed-and-resumed run ends
with the same metrics as an uninterrupted one; that holds for the same number of processes
only, so a resume with another world size is refused unless ``allow_world_size_change``, and a
store re-created with another configuration since the checkpoint is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader

from scatterdist import __version__
from scatterdist._progress import progress_bar
from scatterdist.store import live_writer
from scatterdist.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from scatterdist.train.data import (
    CoefficientDataset,
    ShardDistributedSampler,
    StoreInfo,
    channel_statistics,
    class_names_of,
    read_labels,
    read_store_info,
    select_maps,
    split_class_counts,
    split_of,
    usage,
)
from scatterdist.train.distributed import (
    DistContext,
    all_reduce_sum,
    barrier,
    broadcast_object,
    broadcast_tensor,
    init_distributed,
    shutdown,
    wrap_ddp,
)
from scatterdist.train.metrics import plot_curves, write_metrics
from scatterdist.train.model import HybridCNN
from scatterdist.train.rundir import RunLock, RunLockedError

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
CURVES = "curves.png"
RANKS = "ranks.json"

#: settings that must match to resume a run (``epochs`` may grow).
RESUME_KEYS = (
    "store", "labels_csv", "val_fraction", "test_fraction", "hidden", "n_layers", "nonlinearity",
    "batch_size", "lr", "seed",
)


class RunConfigError(ValueError):
    """The run directory holds a run with other settings, or a requested resume is impossible."""


class StoreInProgressError(RuntimeError):
    """The store is still being written (its writer lock is held by a live process)."""


@dataclass
class TrainConfig:
    """Settings of ``scatterdist train`` (see the CLI help for each).

    ``progress``: None draws bars on a terminal only, True always, False never
    (see :func:`scatterdist._progress.show_progress`; ``SCATTERDIST_PROGRESS=0|1`` overrides).
    ``allow_partial``: train on a store that is still being written (the maps done when the run
    starts). ``allow_world_size_change``: resume a checkpoint written with another number of
    processes (the run then differs from an uninterrupted one).
    """

    store: str
    out: str
    epochs: int = 20
    batch_size: int = 16
    lr: float = 3e-3
    seed: int = 0
    resume: bool = False
    labels_csv: str | None = None
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    hidden: int = 16
    n_layers: int = 2
    nonlinearity: str = "tensor"
    workers: int = 0
    device: str | None = None
    progress: bool | None = None
    allow_partial: bool = False
    allow_world_size_change: bool = False

    def __post_init__(self) -> None:
        self.store = os.path.abspath(os.fspath(self.store))
        self.out = os.path.abspath(os.fspath(self.out))
        if self.labels_csv is not None:
            self.labels_csv = os.path.abspath(os.fspath(self.labels_csv))
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0 or self.workers < 0:
            raise ValueError(
                f"need epochs >= 1, batch_size >= 1, lr > 0, workers >= 0; got {self.epochs}, "
                f"{self.batch_size}, {self.lr}, {self.workers}"
            )


def _targets(labels: np.ndarray, indices: np.ndarray, class_names: list[str], store: str) -> np.ndarray:
    lookup = {name: i for i, name in enumerate(class_names)}
    unknown = sorted({str(labels[i]) for i in indices} - lookup.keys())
    if unknown:
        raise ValueError(f"store {store} has labels {unknown} the model was not trained on (classes {class_names})")
    return np.array([lookup[str(labels[i])] for i in indices], dtype=np.int64)


def _loader(dataset: CoefficientDataset, sampler: ShardDistributedSampler, batch_size: int, workers: int) -> DataLoader:
    kwargs = {}
    if workers > 0:
        kwargs = {"multiprocessing_context": "forkserver", "persistent_workers": True}
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, **kwargs)


def _run_epoch(
    model: torch.nn.Module,
    loader: DataLoader,
    ctx: DistContext,
    n_classes: int,
    optimizer: torch.optim.Optimizer | None,
    desc: str,
    progress: bool | None,
) -> tuple[float, float, np.ndarray]:
    """One pass; returns (mean loss, accuracy, confusion matrix) summed over all ranks."""
    training = optimizer is not None
    model.train(training)
    loss_sum = torch.zeros((), dtype=torch.float64)
    confusion = torch.zeros(n_classes, n_classes, dtype=torch.float64)
    with torch.set_grad_enabled(training):
        for x, y in progress_bar(loader, progress=progress if ctx.is_main else False, desc=desc, unit="batch", leave=False):
            x, y = x.to(ctx.device), y.to(ctx.device)
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            if training:
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            loss_sum += float(loss.detach()) * len(y)
            pred = logits.detach().argmax(-1).cpu()
            confusion.index_put_((y.cpu(), pred), torch.ones(len(y), dtype=torch.float64), accumulate=True)
    totals = all_reduce_sum(torch.cat([loss_sum[None], confusion.flatten()]), ctx)
    confusion = totals[1:].reshape(n_classes, n_classes).numpy()
    n = float(confusion.sum())
    if n == 0:
        return float("nan"), float("nan"), confusion
    return float(totals[0]) / n, float(np.trace(confusion) / n), confusion


def _weights_digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _check_resumable(state: dict, cfg: TrainConfig, path: Path, world_size: int, store_hash: str) -> None:
    """Refuse to resume a checkpoint of another run: other settings, world size or store configuration."""
    saved = state.get("train_config", {})
    diff = {k: (saved.get(k), getattr(cfg, k)) for k in RESUME_KEYS if saved.get(k) != getattr(cfg, k)}
    if diff:
        raise RunConfigError(
            f"{path} belongs to a run with other settings {{setting: (saved, requested)}}: {diff}; "
            "repeat the original command to resume, or choose another --out"
        )
    saved_world = int(state.get("world_size", 1))
    if saved_world != world_size and not cfg.allow_world_size_change:
        raise RunConfigError(
            f"{path} was written by a run of {saved_world} process(es), this run has {world_size}: each rank's "
            f"shards and the batches per step would differ from the original run; resume with {saved_world} "
            "process(es) (torchrun --nproc-per-node ...) or pass --allow-world-size-change"
        )
    saved_hash = str(state.get("store", {}).get("config_hash", ""))
    if saved_hash != store_hash:
        raise RunConfigError(
            f"store {cfg.store} was re-created with another configuration since {path} was written (config hash "
            f"{saved_hash or 'unknown'} in the checkpoint, {store_hash} now): its coefficients are not the ones "
            "this model learned from; train into another --out"
        )


def _writer_text(owner: dict) -> str:
    return f"pid {owner.get('pid', '?')} on host {owner.get('host', '?')} since {owner.get('time', '?')}"


def _check_store_writer(cfg: TrainConfig) -> None:
    """Refuse a store with a live writer unless ``cfg.allow_partial`` (then say so on stderr)."""
    owner = live_writer(cfg.store)
    if owner is None:
        return
    if not cfg.allow_partial:
        raise StoreInProgressError(
            f"store {cfg.store} is still being written ({_writer_text(owner)}): maps not computed yet would be "
            "left out; wait for the writer to finish, or pass --allow-partial to train on the maps done so far"
        )
    print(
        f"warning: store {cfg.store} is still being written ({_writer_text(owner)}); training on the maps done "
        "so far (--allow-partial)", file=sys.stderr, flush=True,
    )


def _model_for(info: StoreInfo, n_classes: int, cfg: TrainConfig, coverage_channels: bool) -> HybridCNN:
    return HybridCNN(
        info.n_inputs(coverage_channels), info.nside_out, 2 * info.nside_out - 1, hidden=cfg.hidden, n_classes=n_classes,
        n_layers=cfg.n_layers, nonlinearity=cfg.nonlinearity,
    )


def _completed_epochs(state: dict | None) -> int:
    """Number of epochs a checkpoint state has completed (0 without one)."""
    return 0 if state is None else int(state["epoch"])


def train(cfg: TrainConfig) -> list[dict]:
    """Train (or resume training) a :class:`HybridCNN` on the store; returns the per-epoch history.

    Works alone or under ``torchrun`` (DDP, gloo on CPU / nccl on GPU); only rank 0 writes.
    """
    ctx = init_distributed(cfg.device)
    try:
        history = _train(cfg, ctx)
    except BaseException:
        shutdown(ctx)
        raise
    # Every rank finishes its collectives before any leaves the group: a rank that tore gloo down
    # while its peer was still in the last all-gather aborted at exit (SIGABRT, seen once in 3 suites).
    barrier(ctx)
    shutdown(ctx)
    return history


def _train(cfg: TrainConfig, ctx: DistContext) -> list[dict]:
    # every rank, before anything is touched: a store or labels file that cannot be read fails everywhere alike
    info = read_store_info(cfg.store)
    labels = read_labels(info, cfg.labels_csv)
    lock = RunLock(cfg.out)
    refusal = None
    if ctx.is_main:
        try:
            _check_store_writer(cfg)
            lock.acquire()
        except (StoreInProgressError, RunLockedError) as exc:
            refusal = exc
    refusal = broadcast_object(refusal, ctx)
    if refusal is not None:
        raise refusal
    try:
        # rank 0's status snapshot on every rank: a live writer (--allow-partial) must not split the ranks
        info.status = broadcast_tensor(torch.from_numpy(info.status.astype(np.int8)), ctx).numpy()
        return _train_locked(cfg, ctx, info, labels)
    finally:
        lock.release()


def _train_locked(cfg: TrainConfig, ctx: DistContext, info: StoreInfo, labels: np.ndarray) -> list[dict]:
    out = Path(cfg.out)
    ckpt_path = out / CHECKPOINT
    state = None
    if ckpt_path.exists():
        state = load_checkpoint(ckpt_path)
        _check_resumable(state, cfg, ckpt_path, ctx.world_size, info.config_hash)
    elif cfg.resume:
        raise RunConfigError(f"--resume given but {ckpt_path} does not exist (nothing to resume)")

    split = {s: select_maps(info, labels, s, cfg.val_fraction, cfg.test_fraction) for s in ("train", "val")}
    if split["train"].size == 0:
        raise ValueError(f"store {cfg.store} has no labelled maps with status 1 in the training split")
    if state is not None:
        class_names = list(state["class_names"])
        mean, std = state["norm_mean"].numpy(), state["norm_std"].numpy()
        coverage_channels = bool(state["store"].get("coverage_channels", False))
    else:
        coverage_channels = info.masked
        class_names = class_names_of(labels[split["train"]])
        if len(class_names) < 2:
            raise ValueError(f"the training split of {cfg.store} has fewer than 2 classes ({class_names})")
        stats = torch.zeros(2, info.n_inputs(coverage_channels), dtype=torch.float64)
        if ctx.is_main:
            mean, std = channel_statistics(
                cfg.store, split["train"], info.shard_size, progress=cfg.progress, coverage_channels=coverage_channels
            )
            stats = torch.from_numpy(np.stack([mean, std]))
        stats = broadcast_tensor(stats, ctx)
        mean, std = stats[0].numpy(), stats[1].numpy()
    n_classes = len(class_names)
    counts = split_class_counts(info.map_ids, labels, cfg.val_fraction, cfg.test_fraction, usable=info.status == 1)
    if ctx.is_main and _completed_epochs(state) < cfg.epochs:
        print(usage(info, labels).describe("training on"), flush=True)
        print("maps per class: " + "; ".join(f"{s} {counts[s]}" for s in counts), flush=True)

    datasets, loaders, samplers = {}, {}, {}
    for name, idx in split.items():
        if idx.size == 0:
            continue
        datasets[name] = CoefficientDataset(
            cfg.store, idx, _targets(labels, idx, class_names, cfg.store), info.shard_size, mean, std,
            coverage_channels=coverage_channels,
        )
        samplers[name] = ShardDistributedSampler(
            datasets[name].shard_ids, ctx.world_size, ctx.rank, shuffle=name == "train", seed=cfg.seed, pad=name == "train"
        )
        loaders[name] = _loader(datasets[name], samplers[name], cfg.batch_size, cfg.workers)

    torch.manual_seed(cfg.seed)
    model = _model_for(info, n_classes, cfg, coverage_channels).to(ctx.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    history: list[dict] = []
    start = 0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        history = [dict(row) for row in state["history"]]
        start = int(state["epoch"])
        if ctx.is_main:
            print(f"resuming {out} after epoch {start} of {cfg.epochs}", flush=True)
            saved_version, saved_world = state.get("scatterdist_version"), int(state.get("world_size", 1))
            if saved_version != __version__:
                print(f"note: {ckpt_path} was written by scatterdist {saved_version}, this is {__version__}", flush=True)
            if saved_world != ctx.world_size:
                print(f"note: world size {saved_world} -> {ctx.world_size} (--allow-world-size-change)", flush=True)
    net = wrap_ddp(model, ctx)

    for epoch in range(start, cfg.epochs):
        t0 = time.perf_counter()
        samplers["train"].set_epoch(epoch)
        loss, acc, _ = _run_epoch(net, loaders["train"], ctx, n_classes, optimizer, f"epoch {epoch + 1}", cfg.progress)
        row = {"epoch": epoch + 1, "train_loss": loss, "train_accuracy": acc}
        if "val" in loaders:
            vloss, vacc, _ = _run_epoch(model, loaders["val"], ctx, n_classes, None, "val", cfg.progress)
            row.update(val_loss=vloss, val_accuracy=vacc)
        row["seconds"] = time.perf_counter() - t0
        history.append(row)
        if ctx.is_main:
            save_checkpoint(ckpt_path, {
                "epoch": epoch + 1,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "model_config": dict(model.config),
                "train_config": {k: v for k, v in asdict(cfg).items() if k not in ("progress",)},
                "norm_mean": torch.as_tensor(mean, dtype=torch.float64),
                "norm_std": torch.as_tensor(std, dtype=torch.float64),
                "class_names": list(class_names),
                "split_counts": counts,
                "store": {
                    "path": cfg.store, "n_paths": info.n_paths, "nside_out": info.nside_out,
                    "path_labels": list(info.path_labels), "config_hash": str(info.attrs.get("config_hash", "")),
                    "fields": list(info.fields), "coverage_channels": coverage_channels,
                    "channel_labels": info.channel_labels(coverage_channels),
                },
                "world_size": ctx.world_size,
                "scatterdist_version": __version__,
                "history": history,
            })
            write_metrics(out / METRICS, history)
            plot_curves(out / CURVES, history)
            text = f"epoch {epoch + 1}/{cfg.epochs}: loss {loss:.4f} acc {acc:.3f}"
            if "val_loss" in row:
                text += f" | val loss {row['val_loss']:.4f} acc {row['val_accuracy']:.3f}"
            print(text, flush=True)
        barrier(ctx)

    digest = _weights_digest(model)
    digests = [digest]
    if ctx.distributed:
        digests = [None] * ctx.world_size
        dist.all_gather_object(digests, digest)
    if ctx.is_main:
        (out / RANKS).write_text(json.dumps({"world_size": ctx.world_size, "sha256": digests}, indent=1))
        if len(set(digests)) != 1:
            raise RuntimeError(f"DDP ranks ended with different weights (SHA-256 per rank: {digests})")
        if history:
            write_metrics(out / METRICS, history)
    return history


def load_run(run_dir: str | os.PathLike) -> tuple[HybridCNN, dict]:
    """The trained model (eval mode, CPU) and the checkpoint state of a run directory."""
    path = Path(run_dir) / CHECKPOINT
    if not path.exists():
        raise FileNotFoundError(f"{run_dir} has no {CHECKPOINT}: train first (scatterdist train STORE --out {run_dir})")
    state = load_checkpoint(path)
    try:
        model = HybridCNN(**state["model_config"])
        model.load_state_dict(state["model"])
    except (KeyError, TypeError, RuntimeError) as exc:
        raise CheckpointError(f"checkpoint {path} does not describe a HybridCNN this version can build: {exc}") from exc
    return model.eval(), state


def evaluate(
    run_dir: str | os.PathLike,
    store: str | os.PathLike,
    split: str | None = None,
    labels_csv: str | None = None,
    batch_size: int = 64,
    progress: bool | None = None,
) -> dict:
    """Accuracy and confusion matrix (rows: true class, columns: predicted) of a trained run.

    The result also holds ``class_counts`` (maps of each true class in the evaluated split) and
    ``skipped`` (maps of the split left out: ``{"failed", "todo", "unlabelled"}``). A store
    still being written is evaluated on the maps done so far, with a warning on stderr.

    ``split`` None means the held-out ``"test"`` split when ``store`` is the training store,
    and every map with status 1 (``"all"``) of any other store.
    """
    model, state = load_run(run_dir)
    info = read_store_info(store)
    owner = live_writer(info.path)
    if owner is not None:
        print(f"warning: store {info.path} is still being written ({_writer_text(owner)}); evaluating the maps "
              "done so far", file=sys.stderr, flush=True)
    cfg = state["model_config"]
    trained = state.get("store", {})
    coverage_channels = bool(trained.get("coverage_channels", False))
    if info.n_inputs(coverage_channels) != cfg["in_channels"] or info.nside_out != cfg["nside"]:
        raise ValueError(
            f"store {info.path} gives {info.n_inputs(coverage_channels)} input channels ({info.n_fields} field(s) "
            f"{info.fields} x {info.n_paths} paths{' + coverage' if coverage_channels else ''}) at "
            f"nside_out={info.nside_out}; the model expects {cfg['in_channels']} "
            f"(fields {trained.get('fields', ['I'])}) at nside_out={cfg['nside']}"
        )
    tcfg = state["train_config"]
    same = os.path.abspath(os.fspath(store)) == tcfg["store"]
    if split is None:
        split = "test" if same else "all"
    if labels_csv is None and same:
        labels_csv = tcfg.get("labels_csv")
    labels = read_labels(info, labels_csv)
    idx = select_maps(info, labels, split, tcfg["val_fraction"], tcfg["test_fraction"])
    within = None if split == "all" else split_of(info.map_ids, tcfg["val_fraction"], tcfg["test_fraction"], labels) == split
    used = usage(info, labels, within)
    if idx.size == 0:
        raise ValueError(f"no labelled maps with status 1 in split {split!r} of {info.path}")
    class_names = list(state["class_names"])
    dataset = CoefficientDataset(
        info.path, idx, _targets(labels, idx, class_names, info.path), info.shard_size,
        state["norm_mean"].numpy(), state["norm_std"].numpy(), coverage_channels=coverage_channels,
    )
    sampler = ShardDistributedSampler(dataset.shard_ids, 1, 0, shuffle=False, pad=False)
    loss, acc, confusion = _run_epoch(
        model, _loader(dataset, sampler, batch_size, 0), DistContext(), len(class_names), None, "evaluate", progress
    )
    return {
        "run_dir": os.path.abspath(os.fspath(run_dir)), "store": info.path, "split": split, "n_maps": int(idx.size),
        "loss": loss, "accuracy": acc, "class_names": class_names, "confusion": confusion.astype(int).tolist(),
        "class_counts": {name: int(n) for name, n in zip(class_names, confusion.sum(axis=1))},
        "skipped": {"failed": used.failed, "todo": used.todo, "unlabelled": used.unlabelled},
    }
