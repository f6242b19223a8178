"""``make demo``: the main job end to end on small data.

Stage 1 (always): random CMB-like skies through ``Scattering``, a table of invariants.
"""

from __future__ import annotations

import sys
import time

import numpy as np


def transform_table(nside: int = 64, n_maps: int = 4, seed: int = 0) -> None:
    from scatterdist import Scattering
    from scatterdist.equivariance import random_bandlimited_alm
    from scatterdist.sphere import synthesis

    sc = Scattering(nside)
    maps = synthesis(random_bandlimited_alm(sc.L, np.random.default_rng(seed), n=n_maps), nside, sc.L - 1)
    start = time.perf_counter()
    inv = sc.invariants(maps)
    seconds = time.perf_counter() - start
    print(f"{sc}\n{n_maps} random CMB-like maps at nside {nside}: {seconds:.3f} s ({seconds / n_maps * 1e3:.1f} ms/map)")
    print(f"{'path':<16}" + "".join(f"{'map ' + str(i):>11}" for i in range(n_maps)))
    for label, row in zip(sc.path_labels, inv.T):
        print(f"{label:<16}" + "".join(f"{v:>11.4g}" for v in row))


def main(argv: list[str] | None = None) -> int:
    transform_table()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
