"""The paper's CMB experiment end to end: Gaussian vs non-Gaussian skies, every model and baseline.

For every non-Gaussianity amplitude ``alpha`` and every seed:

1. a mixed :class:`~scatterdist.sims.SimulationSpec` of ``2 N`` skies (labels alternate 0/1;
   optionally with survey conditions: beam, white noise, Galactic cut) is turned into a
   :class:`~scatterdist.inputs.Catalog`; the skies are generated inside the Dask tasks from
   their seeds and never stored;
2. :func:`scatterdist.pipeline.scatter` writes three stores through the same pipeline: the
   paper's scattering transform (``Scattering(nside)``), the signed option
   (``Scattering(nside, signed=True, oversample=2)``: adds ``((f*Psi_j)|f*Psi_j|)*Phi``, which keeps the sign
   of the field) and the low-resolution store (``LowPass(nside)``: the raw map at the scattering
   output resolution); the baseline features (power spectrum, pixel moments, wavelet moments)
   are computed in Dask tasks too (:mod:`scatterdist.experiments.features`);
3. the Dask cluster is closed, then the HybridCNN is trained on each store with the
   distributed trainer (in-process, or ``torchrun`` with ``ranks=2``) and evaluated on the
   trainer's validation and test splits (stratified per class);
4. logistic regressions (baselines, and the rotation invariants of the signed store) are fitted
   on the train split and scored on the same validation and test skies;
5. the *recommended* scattering model of each (alpha, seed) is the scattering candidate
   (:data:`CANDIDATES`) with the best **validation** accuracy; its test accuracy is reported.
   Nothing is chosen on the test split;
6. ``cmb.md``, ``cmb_alpha.png`` and ``cmb.json`` are written to ``out``.

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

__all__ = ["ALL_MODELS", "CANDIDATES", "CMBConfig", "FULL", "QUICK", "SIGNED_OVERSAMPLE", "run_cmb", "signed_transform",
           "store_invariants"]


#: Oversampling of the covariance store. Under an exact rotation of 8 nside-128 skies, the invariants
#: move by up to 76% of their spread across skies at oversample 1 (an S1; S4 up to
#: 43%, S3 14%, S2 0.5%) and by up to 13% at 2 (S4 6%, S3 3%), for 1.2x the time per map
#: (``python scripts/covariance_invariant_rotation.py``; the mean is left out: every sky has no monopole,
#: its spread is rounding): at 1 the finest statistics are not rotation
#: invariants, so the study uses 2. (``results/nside128-cov`` and ``results/nside128-survey`` were computed at 1:
#: their commands carry ``--covariance-oversample 1``.)
COVARIANCE_OVERSAMPLE = 2


@dataclass(frozen=True)
class CMBConfig:
    """Settings of one CMB study (``scatterdist experiment cmb``).

    ``n_per_class``: skies per class (Gaussian and non-Gaussian) for each (alpha, seed);
    ``alphas``: non-Gaussianity amplitudes; ``seeds``: number of independent replicates
    (seed values ``seed0 .. seed0 + seeds - 1``). Training settings are passed to
    :class:`scatterdist.train.TrainConfig`; ``ranks`` > 1 trains under ``torchrun``.
    ``work`` defaults to ``<out>/cmb-work``. ``models``: which models to run (default all of
    :data:`ALL_MODELS`; only the stores they need are computed). ``fwhm_arcmin``,
    ``noise_uk_arcmin``, ``galactic_cut``: survey conditions of every sky (None: clean full sky).
    ``folds``: K-fold evaluation (:mod:`scatterdist.experiments.folds`) of ONE set of skies per alpha
    (``seeds`` must be 1): every sky is tested once; None: the trainer's split, one per seed.
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
    fwhm_arcmin: float | None = None
    noise_uk_arcmin: float | None = None
    galactic_cut: float | None = None
    models: tuple[str, ...] = ()
    folds: int | None = None
    covariance_oversample: int = COVARIANCE_OVERSAMPLE

    def __post_init__(self) -> None:
        from scatterdist.sphere import check_nside

        check_nside(self.nside)
        models = tuple(self.models) or ALL_MODELS
        unknown = sorted(set(models) - set(ALL_MODELS))
        if unknown:
            raise ValueError(f"unknown model(s) {unknown}; choose from {list(ALL_MODELS)}")
        if not set(models) & set(CANDIDATES):
            raise ValueError(f"--models needs at least one scattering model to recommend, one of {list(CANDIDATES)}")
        object.__setattr__(self, "models", tuple(m for m in ALL_MODELS if m in models))
        for name in ("fwhm_arcmin", "noise_uk_arcmin", "galactic_cut"):
            value = getattr(self, name)
            if value is not None and not (float(value) >= 0):
                raise ValueError(f"{name} must be >= 0 (or unset), got {value}")
        if self.n_per_class < 4:
            raise ValueError(f"n_per_class must be >= 4 skies per class, got {self.n_per_class}")
        if not self.alphas or any(not (float(a) >= 0) for a in self.alphas):
            raise ValueError(f"alphas must be a non-empty list of amplitudes >= 0, got {self.alphas}")
        if self.seeds < 1 or self.seed0 < 0 or self.seed0 + self.seeds > 1000:
            raise ValueError(f"need seeds >= 1, seed0 >= 0 and seed0 + seeds <= 1000, got {self.seeds}, {self.seed0}")
        if self.ranks < 1:
            raise ValueError(f"ranks must be >= 1, got {self.ranks}")
        if self.covariance_oversample not in (1, 2, 4):
            raise ValueError(f"covariance_oversample must be 1, 2 or 4, got {self.covariance_oversample}")
        if self.folds is not None:
            if self.folds < 3:
                raise ValueError(f"folds must be >= 3 (test, validation and training folds), got {self.folds}")
            if self.seeds != 1:
                raise ValueError(f"--folds uses one set of skies per alpha: pass --seeds 1 (got {self.seeds})")
            if self.n_per_class < self.folds:
                raise ValueError(f"n_per_class ({self.n_per_class}) must be >= folds ({self.folds})")
            if self.ranks > 1 and set(self.models) & set(CNN_MODELS.values()):
                raise ValueError("--folds trains the CNNs in one process: use --ranks 1")
        object.__setattr__(self, "alphas", tuple(float(a) for a in self.alphas))

    @property
    def survey(self) -> dict[str, float]:
        """The survey conditions that are set, as :class:`~scatterdist.sims.SimulationSpec` fields."""
        return {k: float(v) for k, v in (("fwhm_arcmin", self.fwhm_arcmin), ("noise_uK_arcmin", self.noise_uk_arcmin),
                                         ("galactic_cut", self.galactic_cut)) if v is not None}

    @property
    def work_dir(self) -> str:
        """Directory of the intermediate stores and runs."""
        return os.path.abspath(self.work or os.path.join(self.out, "cmb-work"))


#: Oversampling of the signed store. At oversample 1 the rotation invariants of the finest signed
#: path move under an exact rotation by 52% of their spread across skies (the modulus paths by
#: 8-12%); at 2 by 3% (1-2%): ``python scripts/signed_invariant_rotation.py``. The paper's
#: scattering store keeps oversample 1 so that its reproduction stays as published.
SIGNED_OVERSAMPLE = 2


def signed_transform(nside: int) -> Any:
    """The signed option of the study: ``Scattering(nside, signed=True, oversample=SIGNED_OVERSAMPLE)``."""
    from scatterdist import Scattering

    return Scattering(nside, signed=True, oversample=SIGNED_OVERSAMPLE)




def covariance_transform(nside: int, oversample: int = COVARIANCE_OVERSAMPLE) -> Any:
    """The study's scattering covariances: ``ScatteringCovariance(nside, oversample=oversample)``
    (default :data:`COVARIANCE_OVERSAMPLE`; ``--covariance-oversample`` sets it)."""
    from scatterdist import ScatteringCovariance

    return ScatteringCovariance(nside, oversample=oversample)


def _store_configs(nside: int, covariance_oversample: int = COVARIANCE_OVERSAMPLE) -> dict[str, dict[str, Any]]:
    from scatterdist import Scattering
    from scatterdist.transforms import LowPass

    return {"scattering": Scattering(nside).config(), "signed": signed_transform(nside).config(),
            "lowpass": LowPass(nside).config(), "covariance": covariance_transform(nside, covariance_oversample).config()}


#: store -> model key of the HybridCNN trained on it.
CNN_MODELS = {"scattering": "scattering", "signed": "scattering_signed", "lowpass": "lowpass",
              "covariance": "covariance_cnn"}
#: logistic models on the rotation invariants (pixel means) of the signed store: model -> path kinds used.
INVARIANT_MODELS = {"signed_invariants": ("signed",), "scattering_invariants": ("modulus", "signed"),
                    "modulus_invariants": ("modulus",)}
#: every model the study can run (``CMBConfig.models``), and the store each needs (None: baseline features).
STORE_OF: dict[str, str | None] = {
    "scattering": "scattering", "scattering_signed": "signed", "lowpass": "lowpass",
    **{m: "signed" for m in INVARIANT_MODELS},
    "covariance_invariants": "covariance", "covariance_cnn": "covariance",
    "power_spectrum": None, "pixel_moments": None, "wavelet_moments": None, "cubic": None,
}
ALL_MODELS = tuple(STORE_OF)
#: scattering models among which the recommended one is chosen on the validation split (ties: first listed).
CANDIDATES = ("covariance_invariants", "signed_invariants", "scattering_invariants", "covariance_cnn",
              "scattering_signed", "scattering")
#: ``--quick``: nside 64, one alpha, two seeds, a smaller CNN, covariances on the native grid
#: (oversample 1: a quarter of the pixels; at alpha 0.05 every covariance model is at 100% either
#: way); under a minute on 2 cores (run by the test suite).
QUICK = CMBConfig(nside=64, n_per_class=150, alphas=(0.05,), seeds=2, epochs=4, hidden=8, quick=True,
                  models=tuple(m for m in ALL_MODELS if m not in ("scattering_signed", "covariance_cnn")),
                  covariance_oversample=1)

#: ``make cmb`` (``results/cmb.md``): the study at L = 1024 around the alpha where the best model
#: crosses 95%: 3 alphas x 3 seeds x 50 skies per class, every model. Measured on the 2-core
#: development machine with nothing else running: see the wall time in ``results/cmb.md``
#: (``scripts/cmb_cost.py --nside 512`` gives the per-sky cost of each step for other sizes).
FULL = CMBConfig(nside=512, n_per_class=50, alphas=(0.003, 0.006, 0.01), seeds=3, epochs=10)


#: every timed step of a cell (ledger keys), in report order.
STEP_KEYS = ("simulate + scattering store", "simulate + signed store", "simulate + lowpass store",
             "simulate + covariance store", "simulate + baseline features", "train + evaluate scattering CNN",
             "train + evaluate signed CNN", "train + evaluate lowpass CNN", "train + evaluate covariance CNN")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


#: Most skies per Dask task by nside: at nside 1024 a shard of 8 skies in the signed transform
#: (oversample 2) killed 12 GB workers (the first L = 2048 run of results/nside1024); 2 fit.
_MAX_SHARD = {1024: 2, 2048: 2}


def _shard_size(cfg: CMBConfig) -> int:
    """Even shard size (classes alternate, so every shard is balanced), >= 2 shards per rank."""
    if cfg.shard_size is not None:
        return int(cfg.shard_size)
    n = 2 * cfg.n_per_class
    k = max(2, min(32, _MAX_SHARD.get(cfg.nside, 2 if cfg.nside > 2048 else 32), -(-n // 16)))
    return k + (k % 2)


def _spec(cfg: CMBConfig, alpha: float, seed: int) -> Any:
    import dataclasses

    from scatterdist.sims import SimulationSpec

    fields = {f.name for f in dataclasses.fields(SimulationSpec)}
    missing = sorted(set(cfg.survey) - fields)
    if missing:
        raise ValueError(
            f"survey conditions {missing} are not supported by this scatterdist's SimulationSpec "
            f"(fields: {sorted(fields)}); drop --fwhm-arcmin/--noise-uk-arcmin/--galactic-cut"
        )
    return SimulationSpec(kind="mixed", nside=cfg.nside, n=2 * cfg.n_per_class, seed=sky_seed(seed, alpha),
                          alpha=alpha, **cfg.survey)


def sky_seed(seed: int, alpha: float) -> int:
    """Simulation seed of replicate ``seed`` at amplitude ``alpha``: ``round(alpha * 1e6) * 1000 + seed``.

    Every (alpha, seed) gets its own skies and, since map ids carry the simulation seed, its own
    train/val/test split: the rows of a study are independent samples (the same sky is never reused
    at another alpha). Distinct for seeds < 1000 and alphas that differ by >= 1e-6.
    """
    if not 0 <= seed < 1000:
        raise ValueError(f"seed must be in [0, 1000), got {seed}")
    return int(round(float(alpha) * 1e6)) * 1000 + int(seed)


def _specs(cfg: CMBConfig) -> list[tuple[float, int, Any]]:
    return [(alpha, seed, _spec(cfg, alpha, seed)) for alpha in cfg.alphas for seed in range(cfg.seed0, cfg.seed0 + cfg.seeds)]


def _survey_tag(cfg: CMBConfig) -> str:
    tags = {"fwhm_arcmin": "beam", "noise_uK_arcmin": "noise", "galactic_cut": "cut"}
    return "".join(f"-{tags[k]}{v:g}" for k, v in cfg.survey.items())


def _cell_dir(cfg: CMBConfig, alpha: float, seed: int) -> str:
    return os.path.join(cfg.work_dir, f"nside{cfg.nside}-n{cfg.n_per_class}{_survey_tag(cfg)}", f"alpha{alpha:g}-seed{seed}")


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
    """Steps 1-2 and the baseline features: every store and feature file under ``cfg.work_dir``.

    Existing stores are resumed (the pipeline skips finished shards); existing feature files
    are reused when they were made from the same simulation spec and feature version.
    """
    from scatterdist.inputs import Catalog
    from scatterdist.experiments.features import BIN_WIDTH, FEATURES_VERSION, baseline_features
    from scatterdist.pipeline import scatter

    needed = {STORE_OF[m] for m in cfg.models}
    configs = {k: v for k, v in _store_configs(cfg.nside, cfg.covariance_oversample).items() if k in needed}
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
        path = os.path.join(cell, "features.npz")
        spec_json = json.dumps(spec.to_dict(), sort_keys=True)
        if None not in needed:
            continue
        if os.path.exists(path):
            with np.load(path) as f:
                if (str(f["spec"]) == spec_json and int(f["bin_width"]) == BIN_WIDTH
                        and int(f["version"]) == FEATURES_VERSION):
                    continue
        _log(f"alpha={alpha:g} seed={seed}: simulate + baseline features")
        t0 = time.perf_counter()
        feats = baseline_features(spec, client, progress=cfg.progress)
        np.savez(path + ".tmp.npz", **{f"features_{k}": v for k, v in feats.items()}, labels=spec.labels(),
                 ids=np.array(spec.map_ids()), spec=spec_json, bin_width=BIN_WIDTH, version=FEATURES_VERSION)
        os.replace(path + ".tmp.npz", path)
        _ledger(cell, "simulate + baseline features", time.perf_counter() - t0)


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


def train_and_evaluate(cfg: CMBConfig, store: str, run_dir: str, seed: int) -> dict[str, Any]:
    """Train the HybridCNN on ``store`` (resuming ``run_dir``); its scores on the val and test splits.

    Returns ``{"accuracy", "n_test", "val_accuracy", "n_val", "predicted": {class: test maps
    predicted as it}, "class_counts": {class: test maps of it}}``.
    """
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
    val = evaluate(run_dir, store, split="val", progress=False)
    confusion = np.asarray(result["confusion"])
    names = [str(c) for c in result["class_names"]]
    return {
        "accuracy": float(result["accuracy"]), "n_test": int(result["n_maps"]),
        "val_accuracy": float(val["accuracy"]), "n_val": int(val["n_maps"]),
        "predicted": {c: int(n) for c, n in zip(names, confusion.sum(axis=0))},
        "class_counts": {c: int(n) for c, n in zip(names, confusion.sum(axis=1))},
    }


def _epochs_done(run_dir: str) -> int:
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return 0
    with open(path) as fh:
        return sum(1 for line in fh if line.strip())


def store_invariants(store: str) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray]:
    """Rotation invariants of every map of a coefficient store: pixel means ``(n_maps, [n_fields *] n_paths)``.

    Returns (features, labels, map ids, path kind of every feature column: ``"modulus"``,
    ``"signed"``, ``"power"``, read from the path labels). The store must be complete.
    """
    from scatterdist.store import StoreError, pixel_means

    try:
        means, labels, ids, paths, kind_list = pixel_means(store)  # (map, field, path)
    except StoreError as exc:
        raise RuntimeError(str(exc)) from exc
    if kind_list is not None:
        kind = np.array(kind_list)
    else:  # stores written before the kind coord: the label says it
        kind = np.array(["signed" if lab.endswith(" signed") else "power" if " q=" in lab else "modulus" for lab in paths])
    kinds = np.broadcast_to(kind, means.shape[1:]).reshape(-1)
    return means.reshape(means.shape[0], -1), labels, ids, kinds

def _record(alpha: float, seed: int, model: str, scores: dict[str, Any], seconds: float | None, **extra: Any) -> dict[str, Any]:
    return {"alpha": alpha, "seed": seed, "model": model, **scores, "seconds": seconds, **extra}


def _round_split(ids: Any, labels: np.ndarray, cfg: CMBConfig, k: int | None) -> np.ndarray | None:
    """Split of round ``k`` (``--folds``) of maps with these ids and labels; None in seed mode (the trainer's split)."""
    from scatterdist.experiments.folds import fold_of, fold_split

    if k is None:
        return None
    return fold_split(fold_of(ids, labels, cfg.folds), k, cfg.folds)


def _rounds(cfg: CMBConfig) -> list[int | None]:
    return [None] if cfg.folds is None else list(range(cfg.folds))


def _train_cnn(cfg: CMBConfig, cell: str, name: str, seed: int, k: int | None) -> tuple[dict[str, Any], bool]:
    """Scores of the HybridCNN on store ``name`` of ``cell`` (round ``k`` of ``--folds``, or the trainer's split)
    and whether this call trained it (False: found finished)."""
    from scatterdist.experiments.folds import train_cnn_fold
    from scatterdist.store import read_store_info

    store = os.path.join(cell, f"{name}.zarr")
    if k is None:
        run_dir = os.path.join(cell, f"run-{name}")
        epochs_before = _epochs_done(run_dir)
        scores = train_and_evaluate(cfg, store, run_dir, seed)
        return scores, _epochs_done(run_dir) > epochs_before
    run_dir = os.path.join(cell, f"run-{name}-fold{k}")
    existed = os.path.exists(os.path.join(run_dir, "fold.json"))
    info = read_store_info(store)
    split = _round_split(info.map_ids, np.asarray(info.labels), cfg, k)
    before = os.path.getmtime(os.path.join(run_dir, "fold.json")) if existed else None
    scores = train_cnn_fold(store, split, run_dir, epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr,
                            hidden=cfg.hidden, layers=cfg.layers, seed=1000 * seed + k)
    after = os.path.getmtime(os.path.join(run_dir, "fold.json"))
    return scores, before != after


def train_models(cfg: CMBConfig, timings: dict[str, float]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Steps 3-5 for every (alpha, seed) or, with ``--folds``, every (alpha, round): the CNNs, the logistic
    models, the validation-selected model.

    Returns (records, split class counts per cell ``{"alpha=A seed=S": {split: {class: n}}}``; with
    folds ``"alpha=A fold=K"``). Fold records carry ``fold`` and per-sky predictions for every model.
    """
    from scatterdist.experiments.features import BASELINES, logistic_scores
    from scatterdist.train.data import split_class_counts

    records, splits = [], {}
    for alpha, seed, spec in _specs(cfg):
        cell = _cell_dir(cfg, alpha, seed)
        spec_ids, spec_labels = np.array(spec.map_ids(), dtype=object), spec.labels()
        invariant_models = [m for m in INVARIANT_MODELS if m in cfg.models]
        signed = store_invariants(os.path.join(cell, "signed.zarr")) if invariant_models else None
        cov = store_invariants(os.path.join(cell, "covariance.zarr")) if "covariance_invariants" in cfg.models else None
        baselines = [m for m in BASELINES if m in cfg.models]
        feats_file = dict(np.load(os.path.join(cell, "features.npz"))) if baselines else None
        for k in _rounds(cfg):
            tag = f"seed={seed}" if k is None else f"fold={k}"
            extra = {} if k is None else {"fold": k}
            if k is None:
                splits[f"alpha={alpha:g} {tag}"] = split_class_counts(spec_ids, spec_labels, cfg.val_fraction,
                                                                      cfg.test_fraction)
            else:
                sp = _round_split(spec_ids, spec_labels, cfg, k)
                splits[f"alpha={alpha:g} {tag}"] = {s: {str(c): int(np.sum((sp == s) & (spec_labels == c))) for c in (0, 1)}
                                                    for s in ("train", "val", "test")}
            cell_records = []
            for name, model in CNN_MODELS.items():
                if model not in cfg.models:
                    continue
                _log(f"alpha={alpha:g} {tag}: train + evaluate the HybridCNN on the {name} store")
                t0 = time.perf_counter()
                scores, trained = _train_cnn(cfg, cell, name, seed, k)
                spent = time.perf_counter() - t0 if trained else None
                total = _ledger(cell, f"train + evaluate {name} CNN", spent)
                dt = total if k is None else spent  # per round: this call's time (None when found finished)
                cell_records.append(_record(alpha, seed, model, scores, dt, **extra))
                _log(f"  {model}: test accuracy {scores['accuracy']:.3f} on {scores['n_test']} skies "
                     f"(val {scores['val_accuracy']:.3f}; predicted {scores['predicted']})")
            n_cnn = len(cell_records)

            def logistic(model: str, feats: np.ndarray, labels: np.ndarray, ids: Any) -> None:
                t0 = time.perf_counter()
                scores = logistic_scores(feats, labels, ids, cfg.val_fraction, cfg.test_fraction,
                                         split=_round_split(ids, np.asarray(labels), cfg, k))
                cell_records.append(_record(alpha, seed, model, scores, time.perf_counter() - t0, **extra))

            if signed is not None:
                feats, labels, ids, kinds = signed
                for model in invariant_models:
                    logistic(model, feats[:, np.isin(kinds, INVARIANT_MODELS[model])], labels, ids)
            if cov is not None:
                logistic("covariance_invariants", cov[0], cov[1], cov[2])
            for name in baselines:
                logistic(name, feats_file[f"features_{name}"], feats_file["labels"], feats_file["ids"])
            by_model = {r["model"]: r for r in cell_records}
            candidates = [m for m in CANDIDATES if m in by_model]
            best = max(candidates, key=lambda m: (by_model[m]["val_accuracy"], -CANDIDATES.index(m)))
            chosen = {k2: by_model[best][k2] for k2 in ("accuracy", "n_test", "val_accuracy", "n_val", "predicted",
                                                        "test_ids", "test_labels", "test_predicted") if k2 in by_model[best]}
            cell_records.append(_record(alpha, seed, "recommended", chosen, None, choice=best, **extra))
            for r in cell_records[n_cnn:]:
                _log(f"  {r['model']}: test accuracy {r['accuracy']:.3f} on {r['n_test']} skies "
                     f"(val {r['val_accuracy']:.3f})" + (f" = {r['choice']}" if "choice" in r else ""))
            records += cell_records
    return records, splits


def command_line(cfg: CMBConfig) -> str:
    """The ``scatterdist experiment cmb`` command that reproduces ``cfg`` (every option explicit)."""
    parts = ["scatterdist", "experiment", "cmb"]
    if cfg.quick:
        parts.append("--quick")
    parts += [
        "--nside", str(cfg.nside), "--n-per-class", str(cfg.n_per_class), "--alpha", *(f"{a:g}" for a in cfg.alphas),
        "--seeds", str(cfg.seeds), *(["--folds", str(cfg.folds)] if cfg.folds is not None else []), "--epochs", str(cfg.epochs), "--batch-size", str(cfg.batch_size),
        "--lr", f"{cfg.lr:g}", "--hidden", str(cfg.hidden), "--layers", str(cfg.layers), "--ranks", str(cfg.ranks),
    ]
    for flag, value in (("--fwhm-arcmin", cfg.fwhm_arcmin), ("--noise-uk-arcmin", cfg.noise_uk_arcmin),
                        ("--galactic-cut", cfg.galactic_cut)):
        if value is not None:
            parts += [flag, f"{value:g}"]
    if cfg.models != ALL_MODELS and not (cfg.quick and cfg.models == QUICK.models):
        parts += ["--models", *cfg.models]
    if cfg.covariance_oversample != COVARIANCE_OVERSAMPLE:
        parts += ["--covariance-oversample", str(cfg.covariance_oversample)]
    if cfg.shard_size is not None:
        parts += ["--shard-size", str(cfg.shard_size)]
    if cfg.workers is not None:
        parts += ["--workers", str(cfg.workers)]
    parts += ["--out", cfg.out]
    return shlex.join(parts)


def run_cmb(cfg: CMBConfig) -> dict[str, Any]:
    """Run the whole study; returns the content of ``cmb.json`` (records, summary, settings, timings)."""
    from scatterdist import Scattering
    from scatterdist.cluster import connect, dashboard_link
    from scatterdist.experiments.report import machine_info, plot_accuracy, summarise, write_markdown
    from scatterdist.experiments.features import BIN_WIDTH
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
    records, splits = train_models(cfg, timings)
    fold_records = None
    if cfg.folds is not None:
        from scatterdist.experiments.folds import pool_folds

        fold_records, records = records, pool_folds(records)
    needed = {STORE_OF[m] for m in cfg.models}
    keys = [k for k in STEP_KEYS
            if any(k == f"simulate + {s} store" for s in needed) or (k == "simulate + baseline features" and None in needed)
            or any(k == f"train + evaluate {s} CNN" and m in cfg.models for s, m in CNN_MODELS.items())]
    for alpha, seed, _ in _specs(cfg):
        cell = _cell_dir(cfg, alpha, seed)
        for key in keys:
            spent = _ledger(cell, key)
            timings[key] = None if spent is None or timings.get(key, 0.0) is None else timings.get(key, 0.0) + spent
    steps = [v for k, v in timings.items() if k.startswith(("simulate", "train"))]
    timings["total"] = None if None in steps else timings["cluster start"] + sum(steps)
    timings["this invocation"] = time.perf_counter() - t_start

    sc, lp = Scattering(cfg.nside), LowPass(cfg.nside)
    signed = signed_transform(cfg.nside)
    cov = covariance_transform(cfg.nside, cfg.covariance_oversample)
    settings = {
        "covariance_config": cov.config(), "n_covariance_paths": cov.n_paths,
        "sky_seed_rule": "round(ALPHA * 1e6) * 1000 + SEED",
        **asdict(cfg),
        "alphas": list(cfg.alphas), "work": cfg.work_dir, "survey": cfg.survey,
        "scattering_config": sc.config(), "signed_config": signed.config(), "n_signed_paths": signed.n_paths,
        "lowpass_config": lp.config(), "n_paths": sc.n_paths, "splits": splits, "models": list(cfg.models),
        "candidates": [m for m in CANDIDATES if m in cfg.models],
        "nside_out": sc.nside_out, "bin_width": BIN_WIDTH, "dask_workers": dask_workers,
        "dask_threads": dask_threads, "machine": machine_info(),
    }
    command = command_line(cfg)
    figure = "cmb_alpha.png"
    survey = ", ".join(f"{k} {v:g}" for k, v in cfg.survey.items())
    design = f"{cfg.seeds} seeds" if cfg.folds is None else f"{cfg.folds} folds"
    plot_accuracy(os.path.join(cfg.out, figure), records,
                  f"CMB, nside {cfg.nside} (L = {2 * cfg.nside}), N = {cfg.n_per_class}/class, {design}"
                  + (f"\n{survey}" if survey else ""))
    write_markdown(os.path.join(cfg.out, "cmb.md"), records, settings, timings, command, figure, fold_records)
    result = {"command": command, "records": records, "summary": summarise(records), "settings": settings,
              "timings": timings}
    if fold_records is not None:
        result["fold_records"] = fold_records
    with open(os.path.join(cfg.out, "cmb.json"), "w") as fh:
        json.dump(result, fh, indent=1, default=str)
    write_predictions(os.path.join(cfg.out, "predictions.csv"), records)
    return result


def write_predictions(path: str, records: list[dict[str, Any]]) -> int:
    """Per-sky test predictions of every model that has them (``alpha,seed,model,map,label,predicted``);
    returns the number of rows. The CNN records have none (the trainer's evaluation reports counts)."""
    rows = 0
    with open(path + ".tmp", "w") as fh:
        fh.write("alpha,seed,model,map,label,predicted\n")
        for r in records:
            for map_id, label, pred in zip(r.get("test_ids", ()), r.get("test_labels", ()), r.get("test_predicted", ())):
                fh.write(f"{r['alpha']:g},{r['seed']},{r['model']},{map_id},{label},{pred}\n")
                rows += 1
    os.replace(path + ".tmp", path)
    return rows


def with_overrides(base: CMBConfig, **overrides: Any) -> CMBConfig:
    """``base`` with every override that is not None applied."""
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})
