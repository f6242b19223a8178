"""Where white noise overtakes the beamed CMB: the l at which N_l crosses b_l^2 C_l, for survey conditions.

``N_l = (depth in uK-arcmin converted to uK-radian)^2``; ``b_l`` the Gaussian beam window; ``C_l``
the study's spectrum (:func:`scatterdist.sims.spectrum.cmb_cl`). Prints one row per
(beam FWHM, noise depth): b_lmax^2, signal-to-noise per mode at lmax, and the first l >= 2 where
the noise dominates ("none" when it never does below lmax = 2 nside - 1).

    python scripts/cmb_noise_crossing.py --nside 128 --fwhm 5 30 --noise 45 2000
"""

from __future__ import annotations

import argparse
import math

import numpy as np

from scatterdist.sims.observe import beam_window
from scatterdist.sims.spectrum import cmb_cl


def crossing(nside: int, fwhm_arcmin: float, noise_uk_arcmin: float) -> tuple[int | None, float, float]:
    """(first l >= 2 with N_l > b_l^2 C_l or None, b_lmax^2, b_lmax^2 C_lmax / N_l) at lmax = 2 nside - 1."""
    lmax = 2 * nside - 1
    signal = beam_window(fwhm_arcmin, lmax) ** 2 * cmb_cl(lmax)
    n_l = (noise_uk_arcmin * math.pi / 10800.0) ** 2
    over = np.flatnonzero((signal < n_l) & (np.arange(lmax + 1) >= 2))
    b2 = float(beam_window(fwhm_arcmin, lmax)[-1] ** 2)
    return (int(over[0]) if over.size else None), b2, float(signal[-1] / n_l)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nside", type=int, default=128)
    ap.add_argument("--fwhm", type=float, nargs="+", default=[5.0, 30.0], help="beam FWHM, arcmin")
    ap.add_argument("--noise", type=float, nargs="+", default=[45.0, 2000.0], help="white noise, uK-arcmin")
    args = ap.parse_args()
    lmax = 2 * args.nside - 1
    print(f"| beam FWHM (arcmin) | noise (uK-arcmin) | b_l^2 at l = {lmax} | b_l^2 C_l / N_l at l = {lmax} | "
          "noise dominates from l = |")
    print("|---|---|---|---|---|")
    for fwhm in args.fwhm:
        for noise in args.noise:
            ell, b2, snr = crossing(args.nside, fwhm, noise)
            print(f"| {fwhm:g} | {noise:g} | {b2:.3f} | {snr:.3g} | {'none' if ell is None else ell} |")


if __name__ == "__main__":
    main()
