"""The issue-13 check of the CMB study: a threshold on the pixel skewness, fitted on half the skies.

Reads the baseline features the study computed (``<work>/nside*/alpha*-seed*/features.npz``,
written by ``scatterdist experiment cmb``), splits each cell's skies in two halves by the
trainer's stratified id-hash rule (``split_of(ids, 0, 0.5, labels)``), fits the threshold (and
its direction) on the pixel skewness that maximises accuracy on the first half, and scores it
on the second. Prints the accuracy per cell and the mean ± SE over seeds per alpha.

    python scripts/skewness_threshold.py /path/to/cmb-work/nside128-n300
"""

from __future__ import annotations

import glob
import math
import os
import re
import sys

import numpy as np

from scatterdist.train.data import split_of


def threshold_accuracy(x: np.ndarray, y: np.ndarray, fit: np.ndarray) -> float:
    """Best threshold + direction on ``x[fit]``; accuracy on ``x[~fit]``."""
    xs = np.sort(x[fit])
    cuts = np.concatenate([[xs[0] - 1], (xs[1:] + xs[:-1]) / 2, [xs[-1] + 1]])
    pred = x[fit][None, :] > cuts[:, None]
    acc_up = (pred == (y[fit] == 1)[None, :]).mean(axis=1)
    best = int(np.argmax(np.maximum(acc_up, 1 - acc_up)))
    up = acc_up[best] >= 1 - acc_up[best]
    test_pred = (x[~fit] > cuts[best]) == up
    return float(np.mean(test_pred == (y[~fit] == 1)))


def main(work: str) -> None:
    rows: dict[float, list[float]] = {}
    for path in sorted(glob.glob(os.path.join(work, "alpha*-seed*", "features.npz"))):
        alpha, seed = re.search(r"alpha([0-9.e-]+)-seed(\d+)", path).groups()
        with np.load(path) as f:
            x, y, ids = f["features_pixel_moments"][:, 0], f["labels"], f["ids"]
        fit = split_of(np.asarray(ids, dtype=object), 0.0, 0.5, y) == "train"
        acc = threshold_accuracy(x, y, fit)
        rows.setdefault(float(alpha), []).append(acc)
        print(f"alpha={alpha} seed={seed}: {100 * acc:.1f}% on {int((~fit).sum())} skies (fit on {int(fit.sum())})")
    for alpha, accs in sorted(rows.items()):
        a = np.array(accs)
        se = a.std(ddof=1) / math.sqrt(a.size) if a.size > 1 else float("nan")
        print(f"alpha={alpha:g}: skewness threshold {100 * a.mean():.1f} ± {100 * se:.1f}% ({a.size} seeds)")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
