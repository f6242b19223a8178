"""Cost and accuracy of the masked cubic statistic T: block vs diagonal preconditioner, tolerance.

For ``--n`` skies of the study's survey conditions (Galactic cut, beam, white noise; nside
``--nside``), solves the Wiener filter with the diagonal preconditioner (the study's former
default) and with the m-block preconditioner (:mod:`scatterdist.experiments.cubic`) at several
tolerances, and prints per setting: CG iterations, seconds per sky (``--threads`` SHT threads, one
BLAS thread, batches of all skies; the one-off block setup is reported apart) and
``max |T - T_ref| / std(T_ref)`` against the block solve at tol 1e-10 (the spread is across skies).

    python scripts/cmb_masked_T_speed.py --nside 128 --n 16 --fwhm 30 --noise 2000
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as in the Dask workers (one BLAS thread each)

import numpy as np  # noqa: E402

from scatterdist.experiments.cubic import _operator, linear_term_maps, masked_cubic_statistic  # noqa: E402
from scatterdist.experiments.features import CUBIC_MC_SEED, survey_model  # noqa: E402
from scatterdist.sims import SimulationSpec  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nside", type=int, default=128)
    ap.add_argument("--n", type=int, default=16, help="skies (half Gaussian, half alpha = 0.01)")
    ap.add_argument("--fwhm", type=float, default=None, help="beam FWHM, arcmin (default none)")
    ap.add_argument("--noise", type=float, default=None, help="white noise, uK-arcmin (default: the 45 floor)")
    ap.add_argument("--cut", type=float, default=20.0, help="Galactic cut, degrees")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-diagonal", action="store_true", help="skip the slow diagonal-preconditioner rows")
    args = ap.parse_args()
    survey = {"galactic_cut": args.cut}
    if args.fwhm is not None:
        survey["fwhm_arcmin"] = args.fwhm
    if args.noise is not None:
        survey["noise_uK_arcmin"] = args.noise
    spec = SimulationSpec(kind="mixed", nside=args.nside, n=args.n, seed=5, alpha=0.01, **survey)
    model = survey_model(spec)
    data = np.stack([spec.generate(i) for i in range(args.n)])
    gauss = SimulationSpec(kind="gaussian", nside=args.nside, n=8, seed=CUBIC_MC_SEED, alpha=0.0, **survey)
    t0 = time.perf_counter()
    _operator(model, args.threads, "block")
    print(f"survey {survey}, nside {args.nside}, {args.n} skies; block setup (once per process) "
          f"{time.perf_counter() - t0:.1f} s", flush=True)
    linear = linear_term_maps(np.stack([gauss.generate(i) for i in range(8)]), model, args.threads, tol=1e-10)
    ref = masked_cubic_statistic(data, model, linear, args.threads, tol=1e-10)
    spread = float(ref.std(ddof=1))
    rows = [("block", tol) for tol in (1e-3, 1e-5, 1e-7)]
    if not args.skip_diagonal:
        rows += [("diagonal", 1e-5)]
    print("| preconditioner | tol | CG iterations | s per sky | max abs(T - T_ref) / std(T) |")
    print("|---|---|---|---|---|")
    for pre, tol in rows:
        t0 = time.perf_counter()
        info: dict = {}
        t = masked_cubic_statistic(data, model, linear, args.threads, tol=tol, preconditioner=pre, info=info)
        dt = (time.perf_counter() - t0) / args.n
        print(f"| {pre} | {tol:g} | {info['iterations']} | {dt:.2f} | {np.abs(t - ref).max() / spread:.1e} |", flush=True)


if __name__ == "__main__":
    main()
