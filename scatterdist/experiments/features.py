"""Baselines of the CMB experiment: per-map features computed in Dask tasks, scored by logistic regression.

Each task receives a simulation spec (as a dict) and a block of map indices, regenerates those
maps from their seeds (maps never travel between processes) and returns, for each map, the
features of every baseline (:data:`BASELINES`):

- ``power_spectrum``: binned ``log C_l`` (:func:`scatterdist.sims.baseline.power_spectrum_features`);
- ``pixel_moments``: skewness and excess kurtosis of the map;
- ``wavelet_moments``: skewness and excess kurtosis of every wavelet scale ``f * Psi_j``;
- ``cubic``: the optimal cubic statistic ``T`` of the model (:mod:`scatterdist.experiments.cubic`),
  one number per map: ``mean_x f^2 (C^-1 f)`` on the full sky (``C`` the sky spectrum times the
  beam squared); on a cut sky the KSW form with the Wiener filter and the linear term from
  :data:`CUBIC_MC` Gaussian skies observed the same way (a clean cut sky is filtered as if it had
  :data:`CUBIC_NOISE_FLOOR` muK-arcmin of white noise, a regularisation the data does not have).

With survey conditions (a spec whose maps carry a mask) the moments use unmasked pixels only
and the power spectrum is the pseudo-C_l of the masked map (the same for both classes).
Every classifier is the package's L2 logistic regression, fitted on the trainer's "train"
split (:func:`scatterdist.train.data.split_of`, stratified by label), scored on its "val"
and "test" splits: all models of the experiment see the same held-out skies.
"""

from __future__ import annotations

import sys
from typing import Any, Callable

import numpy as np
from distributed import Client, as_completed

from scatterdist.sims.baseline import (
    LogisticRegression,
    pixel_moment_features,
    power_spectrum_features,
    wavelet_moment_features,
)
from scatterdist.sims.spec import SimulationSpec
from scatterdist.train.data import split_of

__all__ = ["BASELINES", "BIN_WIDTH", "FEATURES_VERSION", "baseline_block", "baseline_features", "logistic_scores"]

#: Multipoles per bin of the C_l features (bins start at l = 2).
BIN_WIDTH = 8
#: Feature files record this; a file with another version is recomputed.
FEATURES_VERSION = 3
#: Baseline names, in report order.
BASELINES = ("power_spectrum", "pixel_moments", "wavelet_moments", "cubic")
#: Gaussian skies for the linear term of the cut-sky cubic statistic (simulation seed CUBIC_MC_SEED).
CUBIC_MC = 32
CUBIC_MC_SEED = 999_999
#: White-noise level (muK arcmin) assumed by the cut-sky Wiener filter when the skies have none.
CUBIC_NOISE_FLOOR = 45.0


def _mask_weights(spec: SimulationSpec) -> np.ndarray | None:
    getter = getattr(spec, "mask_weights", None)
    return None if getter is None else getter()


def survey_model(spec: SimulationSpec) -> Any:
    """The :class:`~scatterdist.experiments.cubic.SurveyModel` of a masked spec (None on the full sky)."""
    from scatterdist.experiments.cubic import SurveyModel
    from scatterdist.sims.observe import beam_window, noise_sigma_pixel
    from scatterdist.sims.spectrum import cmb_cl

    weights = _mask_weights(spec)
    if weights is None:
        return None
    lmax = 2 * spec.nside - 1
    noise = spec.noise_uK_arcmin if spec.noise_uK_arcmin else CUBIC_NOISE_FLOOR
    beam = None if spec.fwhm_arcmin is None else beam_window(spec.fwhm_arcmin, lmax)
    return SurveyModel(cl=cmb_cl(lmax), mask=weights, noise_sigma=noise_sigma_pixel(spec.nside, noise), beam=beam)


def cubic_linear_term(spec: SimulationSpec, n_mc: int = CUBIC_MC) -> tuple[np.ndarray, np.ndarray] | None:
    """Linear-term maps of the cut-sky cubic statistic from ``n_mc`` Gaussian skies observed like ``spec``
    (simulation seed :data:`CUBIC_MC_SEED`); None on the full sky."""
    import dataclasses

    from scatterdist.experiments.cubic import linear_term_maps

    model = survey_model(spec)
    if model is None:
        return None
    gauss = dataclasses.replace(spec, kind="gaussian", n=n_mc, seed=CUBIC_MC_SEED, alpha=0.0)
    return linear_term_maps(np.stack([gauss.generate(i) for i in range(n_mc)]), model)


def _cubic(spec: SimulationSpec, maps: np.ndarray, linear: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray:
    from scatterdist.experiments.cubic import cubic_statistic, masked_cubic_statistic
    from scatterdist.sims.observe import beam_window
    from scatterdist.sims.spectrum import cmb_cl

    model = survey_model(spec)
    if model is None:
        lmax = 2 * spec.nside - 1
        cl = cmb_cl(lmax) * (1.0 if spec.fwhm_arcmin is None else beam_window(spec.fwhm_arcmin, lmax) ** 2)
        return cubic_statistic(maps, cl)[:, None]
    if linear is None:
        raise ValueError("the cut-sky cubic statistic needs its linear term (cubic_linear_term(spec))")
    return masked_cubic_statistic(maps, model, linear)[:, None]


def baseline_block(spec_dict: dict[str, Any], start: int, stop: int, bin_width: int = BIN_WIDTH,
                   linear: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Task body: ``{baseline: (stop - start, n_features)}`` float64 for maps ``start..stop-1`` of the spec.

    One ducc0 thread (Dask supplies the parallelism); C_l up to ``2*nside - 1`` by quadrature.
    ``linear``: the cut-sky cubic statistic's linear term (:func:`cubic_linear_term`), masked specs only.
    """
    spec = SimulationSpec.from_dict(spec_dict)
    maps = np.stack([spec.generate(i) for i in range(start, stop)])
    weights = _mask_weights(spec)
    clean = maps if weights is None else np.where(weights > 0, maps * weights, 0.0)
    return {
        "power_spectrum": power_spectrum_features(clean, bin_width=bin_width, mode="quadrature", nthreads=1),
        "pixel_moments": pixel_moment_features(maps, weights),
        "wavelet_moments": wavelet_moment_features(maps, weights, nthreads=1),
        "cubic": _cubic(spec, maps, linear),
    }


def _run_blocks(client: Client, fn: Callable, args: tuple, n: int, block: int, window: int | None,
                desc: str, progress: bool) -> list[Any]:
    """Run ``fn(*args, start, stop, ...)`` over blocks of ``n`` maps, at most ``window`` tasks in flight."""
    from tqdm.auto import tqdm

    if block < 1:
        raise ValueError(f"block must be >= 1 maps per task, got {block}")
    bounds = [(a, min(a + block, n)) for a in range(0, n, block)]
    nthreads = sum(client.nthreads().values()) or 1
    window = window or max(2, 2 * nthreads)
    parts: dict[int, Any] = {}
    pending = iter(bounds)
    futures: dict[Any, tuple[int, int]] = {}

    def submit(ac: as_completed | None) -> None:
        item = next(pending, None)
        if item is None:
            return
        fut = client.submit(fn, args[0], item[0], item[1], *args[1:], pure=False, retries=2)
        futures[fut] = item
        if ac is not None:
            ac.add(fut)

    for _ in range(window):
        submit(None)
    ac = as_completed(list(futures))
    with tqdm(total=n, desc=desc, unit="map", file=sys.stderr, disable=not progress) as bar:
        try:
            for fut in ac:
                a, b = futures.pop(fut)
                parts[a] = fut.result()
                bar.update(b - a)
                submit(ac)
        finally:
            for fut in list(futures):
                fut.cancel()
    return [parts[a] for a, _ in bounds]


def baseline_features(
    spec: SimulationSpec,
    client: Client,
    block: int = 8,
    bin_width: int = BIN_WIDTH,
    window: int | None = None,
    progress: bool = True,
) -> dict[str, np.ndarray]:
    """Features ``{baseline: (spec.n, n_features)}`` of every map of ``spec``, computed on ``client``.

    ``block`` maps per task; at most ``window`` tasks in flight (default 2 x worker threads).
    A task that raises is retried twice by Dask, then its error propagates (nothing is skipped).
    """
    linear = cubic_linear_term(spec)
    parts = _run_blocks(client, baseline_block, (spec.to_dict(), bin_width, linear), spec.n, block, window,
                        "baseline features", progress)
    return {name: np.concatenate([p[name] for p in parts], axis=0) for name in BASELINES}


def logistic_scores(
    features: np.ndarray,
    labels: np.ndarray,
    map_ids: list[str] | np.ndarray,
    val_fraction: float,
    test_fraction: float,
    l2: float = 1.0,
    split: np.ndarray | None = None,
) -> dict[str, Any]:
    """Logistic regression on ``features`` fitted on the train split; accuracy on val and test.

    The split is :func:`scatterdist.train.data.split_of` of the map ids, stratified by
    ``labels``, with the trainer's fractions, i.e. exactly the maps the CNNs train, are
    validated and evaluated on. Returns ``{"accuracy", "n_test", "val_accuracy", "n_val",
    "predicted": {class: test maps predicted as it}, "test_ids", "test_labels", "test_predicted"}``
    (the last three: per-sky lists in test-split order, for paired tests). ``split`` (``(n,)`` of
    "train"/"val"/"test"), when given, replaces the trainer's split (a fold of ``--folds``).
    """
    features = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels)
    if features.ndim != 2 or features.shape[0] != labels.shape[0]:
        raise ValueError(f"need features (n, d) and labels (n,), got {features.shape} and {labels.shape}")
    if split is None:
        split = split_of(np.asarray(map_ids, dtype=object), val_fraction, test_fraction, labels)
    elif np.shape(split) != labels.shape:
        raise ValueError(f"split has shape {np.shape(split)}, need one entry per map {labels.shape}")
    split = np.asarray(split, dtype=object)
    train, val, test = split == "train", split == "val", split == "test"
    if not train.any() or not test.any():
        raise ValueError(
            f"a baseline needs maps in both the train and test splits (got {int(train.sum())} and "
            f"{int(test.sum())}): raise --n-per-class"
        )
    model = LogisticRegression(l2=l2).fit(features[train], labels[train])
    pred = (model.predict_proba(features[test]) >= 0.5).astype(int)
    return {
        "accuracy": model.score(features[test], labels[test]), "n_test": int(test.sum()),
        "val_accuracy": model.score(features[val], labels[val]) if val.any() else float("nan"),
        "n_val": int(val.sum()),
        "predicted": {str(c): int(np.sum(pred == c)) for c in (0, 1)},
        "test_ids": [str(m) for m in np.asarray(map_ids, dtype=object)[test]],
        "test_labels": [int(v) for v in labels[test]],
        "test_predicted": [int(v) for v in pred],
    }
