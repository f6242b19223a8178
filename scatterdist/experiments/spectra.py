"""The power-spectrum baseline of the CMB experiment: binned log C_l computed in Dask tasks.

Each task receives a simulation spec (as a dict) and a block of map indices, regenerates those
maps from their seeds (maps never travel between processes) and returns their features
``log C_b`` (:func:`scatterdist.sims.baseline.power_spectrum_features`). The classifier is the
package's L2 logistic regression, fitted on the trainer's deterministic "train" split and
scored on its "test" split, so all three models of the experiment see the same held-out skies.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
from distributed import Client, as_completed

from scatterdist.sims.baseline import LogisticRegression, power_spectrum_features
from scatterdist.sims.spec import SimulationSpec
from scatterdist.train.data import split_of

__all__ = ["spectrum_block", "power_spectra", "power_spectrum_accuracy"]

#: Multipoles per bin of the C_l features (bins start at l = 2).
BIN_WIDTH = 8


def spectrum_block(spec_dict: dict[str, Any], start: int, stop: int, bin_width: int = BIN_WIDTH) -> np.ndarray:
    """Task body: features ``(stop - start, nbins)`` float64 of maps ``start..stop-1`` of the spec.

    C_l up to ``lmax = 2*nside - 1`` by quadrature analysis, one ducc0 thread (Dask supplies
    the parallelism).
    """
    spec = SimulationSpec.from_dict(spec_dict)
    maps = np.stack([spec.generate(i) for i in range(start, stop)])
    return power_spectrum_features(maps, bin_width=bin_width, mode="quadrature", nthreads=1)


def power_spectra(
    spec: SimulationSpec,
    client: Client,
    block: int = 8,
    bin_width: int = BIN_WIDTH,
    window: int | None = None,
    progress: bool = True,
) -> np.ndarray:
    """Power-spectrum features ``(spec.n, nbins)`` of every map of ``spec``, computed on ``client``.

    ``block`` maps per task; at most ``window`` tasks in flight (default 2 x worker threads).
    A task that raises is retried twice by Dask, then its error propagates (nothing is skipped).
    """
    from tqdm.auto import tqdm

    if block < 1:
        raise ValueError(f"block must be >= 1 maps per task, got {block}")
    bounds = [(a, min(a + block, spec.n)) for a in range(0, spec.n, block)]
    nthreads = sum(client.nthreads().values()) or 1
    window = window or max(2, 2 * nthreads)
    spec_dict = spec.to_dict()
    parts: dict[int, np.ndarray] = {}
    pending = iter(bounds)
    futures: dict[Any, int] = {}

    def submit(ac: as_completed | None) -> None:
        item = next(pending, None)
        if item is None:
            return
        fut = client.submit(spectrum_block, spec_dict, item[0], item[1], bin_width, pure=False, retries=2)
        futures[fut] = item[0]
        if ac is not None:
            ac.add(fut)

    for _ in range(window):
        submit(None)
    ac = as_completed(list(futures))
    with tqdm(total=spec.n, desc="power spectra", unit="map", file=sys.stderr, disable=not progress) as bar:
        try:
            for fut in ac:
                start = futures.pop(fut)
                parts[start] = fut.result()
                bar.update(len(parts[start]))
                submit(ac)
        finally:
            for fut in list(futures):
                fut.cancel()
    return np.concatenate([parts[a] for a, _ in bounds], axis=0)


def power_spectrum_accuracy(
    features: np.ndarray,
    labels: np.ndarray,
    map_ids: list[str] | np.ndarray,
    val_fraction: float,
    test_fraction: float,
    l2: float = 1.0,
) -> tuple[float, int]:
    """Test accuracy and test size of logistic regression on ``features`` (fit on the train split).

    The split is :func:`scatterdist.train.data.split_of` of the map ids with the trainer's
    fractions, i.e. exactly the maps the CNNs train and are evaluated on.
    """
    features = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels)
    split = split_of(np.asarray(map_ids, dtype=object), val_fraction, test_fraction)
    train, test = split == "train", split == "test"
    if not train.any() or not test.any():
        raise ValueError(
            f"the power-spectrum baseline needs maps in both the train and test splits "
            f"(got {int(train.sum())} and {int(test.sum())}): raise --n-per-class"
        )
    model = LogisticRegression(l2=l2).fit(features[train], labels[train])
    return model.score(features[test], labels[test]), int(test.sum())
