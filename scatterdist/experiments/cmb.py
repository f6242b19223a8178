"""The paper's CMB experiment end to end: Gaussian vs non-Gaussian skies, three classifiers.

For every non-Gaussianity amplitude ``alpha`` and every seed:

1. a mixed :class:`~scatterdist.sims.SimulationSpec` of ``2 N`` skies (labels alternate 0/1)
   is turned into a :class:`~scatterdist.catalog.Catalog`; the skies are generated inside the
   Dask tasks from their seeds and never stored;
2. :func:`scatterdist.pipeline.scatter` writes the scattering store (``Scattering(nside)``)
   and, through the same pipeline, the low-resolution store (``LowPass(nside)``: the raw map
   reduced to the scattering output resolution); the power spectra are computed in Dask tasks
   too (:mod:`scatterdist.experiments.spectra`);
3. the Dask cluster is closed, then the HybridCNN is trained on each store with the
   distributed trainer (in-process, or ``torchrun`` with ``ranks=2``) and evaluated on the
   trainer's deterministic test split;
4. the power-spectrum logistic regression is fitted and scored on the same split;
5. ``cmb.md``, ``cmb_alpha.png`` and ``cmb.json`` are written to ``out``.

A seed changes everything random: the skies, the train/val/test split (map ids contain the
seed) and the model initialisation. Intermediate stores and runs live under ``work`` and are
reused when the command is repeated (the pipeline and the trainer both resume).
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

__all__ = ["CMBConfig", "FULL", "QUICK", "run_cmb"]


@dataclass(frozen=True)
class CMBConfig:
    """Settings of one CMB study (``scatterdist experiment cmb``).

    ``n_per_class``: skies per class (Gaussian and non-Gaussian) for each (alpha, seed);
    ``alphas``: non-Gaussianity amplitudes; ``seeds``: number of independent replicates
    (seed values ``seed0 .. seed0 + seeds - 1``). Training settings are passed to
    :class:`scatterdist.train.TrainConfig`; ``ranks`` > 1 trains under ``torchrun``.
    ``work`` defaults to ``<out>/cmb-work``.
    """

    nside: int = 512
    n_per_class: int = 200
    alphas: tuple[float, ...] = (0.005, 0.01)
    seeds: int = 3
    seed0: int = 0
    epochs: int = 10
    batch_size: int = 16
    lr: float = 3e-3
    hidden: int = 16
    layers: int = 2
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    ranks: int = 1
    out: str = "results"
    work: str | None = None
    cluster: str = "local"
    workers: int | None = 2
    threads_per_worker: int | None = 1
    scheduler_file: str | None = None
    shard_size: int | None = None
    quick: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        from scatterdist.sphere import check_nside

        check_nside(self.nside)
        if self.n_per_class < 4:
            raise ValueError(f"n_per_class must be >= 4 skies per class, got {self.n_per_class}")
        if not self.alphas or any(not (float(a) >= 0) for a in self.alphas):
            raise ValueError(f"alphas must be a non-empty list of amplitudes >= 0, got {self.alphas}")
        if self.seeds < 1 or self.seed0 < 0:
            raise ValueError(f"need seeds >= 1 and seed0 >= 0, got {self.seeds}, {self.seed0}")
        if self.ranks < 1:
            raise ValueError(f"ranks must be >= 1, got {self.ranks}")
        object.__setattr__(self, "alphas", tuple(float(a) for a in self.alphas))

    @property
    def work_dir(self) -> str:
        """Directory of the intermediate stores and runs."""
        return os.path.abspath(self.work or os.path.join(self.out, "cmb-work"))


#: ``--quick``: nside 64, one alpha, a smaller CNN; about 1-2 minutes on 2 cores (run by the test suite).
QUICK = CMBConfig(nside=64, n_per_class=150, alphas=(0.05,), seeds=3, epochs=4, hidden=8, quick=True)
#: ``make cmb``: the full study at L = 1024: 2 alphas x 3 seeds x 400 skies. Measured on the
#: 2-core development machine: one (alpha, seed) cell of 400 skies took 9.5 min to simulate,
#: scatter, low-pass, take C_l of and train both CNNs on (results/cmb.md: 3 cells, 28.5 min),
#: so about an hour in all.
FULL = CMBConfig(nside=512, n_per_class=200, alphas=(0.005, 0.01), seeds=3, epochs=10)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _shard_size(cfg: CMBConfig) -> int:
    """Even shard size (classes alternate, so every shard is balanced), >= 2 shards per rank."""
    if cfg.shard_size is not None:
        return int(cfg.shard_size)
    n = 2 * cfg.n_per_class
    k = max(2, min(32, -(-n // 16)))
    return k + (k % 2)


def _specs(cfg: CMBConfig) -> list[tuple[float, int, Any]]:
    from scatterdist.sims import SimulationSpec

    return [
        (alpha, seed, SimulationSpec(kind="mixed", nside=cfg.nside, n=2 * cfg.n_per_class, seed=seed, alpha=alpha))
        for alpha in cfg.alphas
        for seed in range(cfg.seed0, cfg.seed0 + cfg.seeds)
    ]


def _cell_dir(cfg: CMBConfig, alpha: float, seed: int) -> str:
    return os.path.join(cfg.work_dir, f"nside{cfg.nside}-n{cfg.n_per_class}", f"alpha{alpha:g}-seed{seed}")


def _log(msg: str) -> None:
    print(f"[cmb] {msg}", file=sys.stderr, flush=True)


def _ledger(cell: str, key: str, seconds: float | None = None) -> float | None:
    """Seconds spent on step ``key`` of ``cell``, accumulated over every invocation.

    A resumed study reuses finished stores, features and runs; its report must show what
    they cost when they were computed, not the near-zero cost of finding them again. With
    ``seconds``, add them (atomically rewriting ``cell/timings.json``); return the total, or
    None when the step was never timed (work made before timings were kept).
    """
    path = os.path.join(cell, "timings.json")
    book: dict[str, float] = {}
    if os.path.exists(path):
        with open(path) as fh:
            book = json.load(fh)
    if seconds is not None:
        book[key] = book.get(key, 0.0) + seconds
        with open(path + ".tmp", "w") as fh:
            json.dump(book, fh, indent=1)
        os.replace(path + ".tmp", path)
    return float(book[key]) if key in book else None


def prepare_data(cfg: CMBConfig, client: Any, timings: dict[str, float]) -> None:
    """Steps 1-2 and the power spectra: every store and feature file under ``cfg.work_dir``.

    Existing stores are resumed (the pipeline skips finished shards); existing feature files
    are reused when they were made from the same simulation spec.
    """
    from scatterdist import Scattering
    from scatterdist.catalog import Catalog
    from scatterdist.experiments.spectra import BIN_WIDTH, power_spectra
    from scatterdist.pipeline import scatter
    from scatterdist.transforms import LowPass

    configs = {"scattering": Scattering(cfg.nside).config(), "lowpass": LowPass(cfg.nside).config()}
    for alpha, seed, spec in _specs(cfg):
        cell = _cell_dir(cfg, alpha, seed)
        os.makedirs(cell, exist_ok=True)
        catalog = Catalog.from_simulation(spec)
        for name, config in configs.items():
            _log(f"alpha={alpha:g} seed={seed}: simulate + {name} ({spec.n} skies, nside {cfg.nside})")
            t0 = time.perf_counter()
            summary = scatter(catalog, os.path.join(cell, f"{name}.zarr"), config, client=client,
                              shard_size=_shard_size(cfg), progress=cfg.progress)
            if not summary.all_ok:
                raise RuntimeError(
                    f"{summary.failed} skies failed in {summary.store} (first: {summary.failures[:1]}); "
                    "see its 'error' variable"
                )
            if summary.shards_computed:  # only time spent computing counts, not finding it done
                _ledger(cell, f"simulate + {name} store", time.perf_counter() - t0)
        path = os.path.join(cell, "spectra.npz")
        spec_json = json.dumps(spec.to_dict(), sort_keys=True)
        if os.path.exists(path):
            with np.load(path) as f:
                if str(f["spec"]) == spec_json and int(f["bin_width"]) == BIN_WIDTH:
                    continue
        _log(f"alpha={alpha:g} seed={seed}: simulate + power spectra")
        t0 = time.perf_counter()
        feats = power_spectra(spec, client, progress=cfg.progress)
        np.savez(path + ".tmp.npz", features=feats, labels=spec.labels(), ids=np.array(spec.map_ids()),
                 spec=spec_json, bin_width=BIN_WIDTH)
        os.replace(path + ".tmp.npz", path)
        _ledger(cell, "simulate + power spectra", time.perf_counter() - t0)


def _train_torchrun(tcfg: Any, ranks: int) -> None:
    """``torchrun --nproc-per-node ranks -m scatterdist train ...`` on loopback; raises on failure."""
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(ranks),
        "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{_free_port()}", "--max-restarts", "0",
        "-m", "scatterdist", "train", tcfg.store, "--out", tcfg.out, "--epochs", str(tcfg.epochs),
        "--batch-size", str(tcfg.batch_size), "--lr", repr(tcfg.lr), "--seed", str(tcfg.seed),
        "--hidden", str(tcfg.hidden), "--layers", str(tcfg.n_layers),
        "--val-fraction", repr(tcfg.val_fraction), "--test-fraction", repr(tcfg.test_fraction),
        "--device", "cpu",
    ]
    if not tcfg.progress:
        cmd.append("--no-progress")
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // ranks))))
    proc = subprocess.run(cmd, env=env, stdout=sys.stderr, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"torchrun training failed (exit {proc.returncode}): {shlex.join(cmd)}\n{proc.stderr[-3000:]}")


def train_and_evaluate(cfg: CMBConfig, store: str, run_dir: str, seed: int) -> tuple[float, int]:
    """Train the HybridCNN on ``store`` (resuming ``run_dir``), return (test accuracy, test size)."""
    from scatterdist.train import TrainConfig, evaluate, train

    tcfg = TrainConfig(
        store=store, out=run_dir, epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, seed=seed,
        hidden=cfg.hidden, n_layers=cfg.layers, val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction,
        device="cpu", progress=cfg.progress,
    )
    if cfg.ranks > 1:
        _train_torchrun(tcfg, cfg.ranks)
    else:
        train(tcfg)
    result = evaluate(run_dir, store, progress=False)
    if result["split"] != "test":
        raise RuntimeError(f"evaluation used split {result['split']!r}, expected the held-out 'test' split")
    return float(result["accuracy"]), int(result["n_maps"])


def _epochs_done(run_dir: str) -> int:
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return 0
    with open(path) as fh:
        return sum(1 for line in fh if line.strip())


def train_models(cfg: CMBConfig, timings: dict[str, float]) -> list[dict[str, Any]]:
    """Steps 3-4: both CNNs and the power-spectrum classifier for every (alpha, seed)."""
    from scatterdist.experiments.spectra import power_spectrum_accuracy

    records = []
    for alpha, seed, _ in _specs(cfg):
        cell = _cell_dir(cfg, alpha, seed)
        for name in ("scattering", "lowpass"):
            _log(f"alpha={alpha:g} seed={seed}: train + evaluate the HybridCNN on the {name} store")
            t0 = time.perf_counter()
            run_dir = os.path.join(cell, f"run-{name}")
            epochs_before = _epochs_done(run_dir)
            acc, n_test = train_and_evaluate(cfg, os.path.join(cell, f"{name}.zarr"), run_dir, seed)
            key = f"train + evaluate {name} CNN"
            trained = _epochs_done(run_dir) > epochs_before
            dt = _ledger(cell, key, time.perf_counter() - t0 if trained else None)
            records.append({"alpha": alpha, "seed": seed, "model": name, "accuracy": acc, "n_test": n_test, "seconds": dt})
            _log(f"  {name}: test accuracy {acc:.3f} on {n_test} skies")
        t0 = time.perf_counter()
        with np.load(os.path.join(cell, "spectra.npz")) as f:
            acc, n_test = power_spectrum_accuracy(f["features"], f["labels"], f["ids"], cfg.val_fraction, cfg.test_fraction)
        dt = time.perf_counter() - t0
        records.append({"alpha": alpha, "seed": seed, "model": "power_spectrum", "accuracy": acc, "n_test": n_test, "seconds": dt})
        _log(f"  power spectrum: test accuracy {acc:.3f} on {n_test} skies")
    return records


def command_line(cfg: CMBConfig) -> str:
    """The ``scatterdist experiment cmb`` command that reproduces ``cfg`` (every option explicit)."""
    parts = ["scatterdist", "experiment", "cmb"]
    if cfg.quick:
        parts.append("--quick")
    parts += [
        "--nside", str(cfg.nside), "--n-per-class", str(cfg.n_per_class), "--alpha", *(f"{a:g}" for a in cfg.alphas),
        "--seeds", str(cfg.seeds), "--epochs", str(cfg.epochs), "--batch-size", str(cfg.batch_size),
        "--lr", f"{cfg.lr:g}", "--hidden", str(cfg.hidden), "--layers", str(cfg.layers), "--ranks", str(cfg.ranks),
    ]
    if cfg.workers is not None:
        parts += ["--workers", str(cfg.workers)]
    parts += ["--out", cfg.out]
    return shlex.join(parts)


def run_cmb(cfg: CMBConfig) -> dict[str, Any]:
    """Run the whole study; returns the content of ``cmb.json`` (records, summary, settings, timings)."""
    from scatterdist import Scattering
    from scatterdist.cluster import connect, dashboard_link
    from scatterdist.experiments.report import machine_info, plot_accuracy, summarise, write_markdown
    from scatterdist.experiments.spectra import BIN_WIDTH
    from scatterdist.transforms import LowPass

    t_start = time.perf_counter()
    os.makedirs(cfg.out, exist_ok=True)
    os.makedirs(cfg.work_dir, exist_ok=True)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    with connect(cfg.cluster, workers=cfg.workers, threads_per_worker=cfg.threads_per_worker,
                 scheduler_file=cfg.scheduler_file) as client:
        link = dashboard_link(client)
        _log(f"dask scheduler {client.scheduler.address}; dashboard: {link or 'not available'}")
        nthreads = client.nthreads()
        dask_workers, dask_threads = len(nthreads), max(nthreads.values(), default=0)
        timings["cluster start"] = time.perf_counter() - t0
        prepare_data(cfg, client, timings)
    records = train_models(cfg, timings)
    for alpha, seed, _ in _specs(cfg):
        cell = _cell_dir(cfg, alpha, seed)
        for key in ("simulate + scattering store", "simulate + lowpass store", "simulate + power spectra",
                    "train + evaluate scattering CNN", "train + evaluate lowpass CNN"):
            spent = _ledger(cell, key)
            timings[key] = None if spent is None or timings.get(key, 0.0) is None else timings.get(key, 0.0) + spent
    steps = [v for k, v in timings.items() if k.startswith(("simulate", "train"))]
    timings["total"] = None if None in steps else timings["cluster start"] + sum(steps)
    timings["this invocation"] = time.perf_counter() - t_start

    sc, lp = Scattering(cfg.nside), LowPass(cfg.nside)
    settings = {
        **asdict(cfg),
        "alphas": list(cfg.alphas), "work": cfg.work_dir,
        "scattering_config": sc.config(), "lowpass_config": lp.config(), "n_paths": sc.n_paths,
        "nside_out": sc.nside_out, "bin_width": BIN_WIDTH, "dask_workers": dask_workers,
        "dask_threads": dask_threads, "machine": machine_info(),
    }
    command = command_line(cfg)
    figure = "cmb_alpha.png"
    plot_accuracy(os.path.join(cfg.out, figure), records,
                  f"CMB, nside {cfg.nside} (L = {2 * cfg.nside}), N = {cfg.n_per_class}/class, {cfg.seeds} seeds")
    write_markdown(os.path.join(cfg.out, "cmb.md"), records, settings, timings, command, figure)
    result = {"command": command, "records": records, "summary": summarise(records), "settings": settings,
              "timings": timings}
    with open(os.path.join(cfg.out, "cmb.json"), "w") as fh:
        json.dump(result, fh, indent=1, default=str)
    return result


def with_overrides(base: CMBConfig, **overrides: Any) -> CMBConfig:
    """``base`` with every override that is not None applied."""
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})
