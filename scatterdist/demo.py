"""``make demo``: the main job end to end on small embedded data, with the real commands.

1. the transform: random CMB-like skies through ``Scattering``, a table of invariants;
2. the service: ``scatterdist scatter`` of a few dozen simulated skies (Gaussian and
   non-Gaussian, generated inside the Dask tasks) on a local cluster into a Zarr store,
   ``scatterdist info``, and a peek at the store through plain xarray; then the real
   WMAP 7-year maps shipped in ``tests/data``, one of them cut (Galactic plane and point
   sources UNSEEN): it is scattered on the cut sky, with its sky fraction and coverage;
3. the trainer: a short ``scatterdist train`` run and ``scatterdist evaluate`` on that store.

    python -m scatterdist.demo [--out demo-output] [--n 48] [--epochs 4]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


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


def banner(text: str) -> None:
    print(f"\n=== {text} ===", flush=True)


def run(*args: str, expect: int = 0) -> None:
    """Run a scatterdist command as a user would, echoing it; stop unless it exits ``expect``."""
    cmd = [sys.executable, "-m", "scatterdist", *args]
    print("$ scatterdist " + " ".join(args), flush=True)
    code = subprocess.run(cmd).returncode
    if code != expect:
        raise SystemExit(f"demo: `scatterdist {args[0]}` exited {code}, expected {expect}")


def peek(store: Path) -> None:
    import xarray as xr

    ds = xr.open_zarr(store, consolidated=False)
    print(ds)
    means = ds.coefficients.sel(field="I").mean("pixel").load()  # (map, path)
    labels = ds.label.values
    print("\nmean of each coefficient map, Gaussian (0) vs non-Gaussian (1) skies:")
    for k, path in enumerate(ds.path.values):
        g, ng = means.values[labels == 0, k].mean(), means.values[labels == 1, k].mean()
        print(f"  {path:<16} {g:>10.4g} {ng:>10.4g}")


def cut_sky(store: Path) -> None:
    """Sky fraction of each WMAP map, and the coverage and invariants of the cut W map, path by path."""
    import xarray as xr

    ds = xr.open_zarr(store, consolidated=False)
    names = [Path(str(s)).name for s in ds.source.values]
    print("\nsky fraction of each map (share of the sky its mask keeps):")
    for name, fsky in zip(names, ds.sky_fraction.values):
        print(f"  {name:<52} {fsky:.3f}")
    cut = next(i for i, n in enumerate(names) if "masked" in n)
    threshold = float(ds.attrs["min_coverage"])
    coeffs = ds.coefficients.sel(field="I").isel(map=cut).values  # (path, pixel), NaN outside coverage
    cov = ds.coverage.isel(map=cut).values
    print(f"\ncut W map, per path: mean coverage, share of output pixels kept (coverage >= {threshold:g};")
    print("NaN elsewhere), and the invariant: the mean of the coefficient map over the kept pixels")
    print(f"  {'path':<16} {'coverage':>9} {'kept':>7} {'invariant':>11}")
    for k, path in enumerate(ds.path.values):
        kept = np.isfinite(coeffs[k])
        print(f"  {path:<16} {cov[k].mean():>9.3f} {kept.mean():>7.1%} {coeffs[k, kept].mean():>11.4g}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="demo-output", help="output directory (an earlier demo's output there is replaced; any other content is refused)")
    parser.add_argument("--n", type=int, default=64, help="simulated skies")
    parser.add_argument("--alpha", type=float, default=0.05, help="non-Gaussianity of the odd skies")
    parser.add_argument("--epochs", type=int, default=10, help="training epochs")
    parser.add_argument("--skip-training", action="store_true")
    args = parser.parse_args(argv)
    out = Path(args.out)
    marker = out / ".scatterdist-demo"
    if out.exists():
        # Replace only what an earlier demo made (or an empty directory): never a user's folder.
        if not (marker.exists() or (out.is_dir() and not any(out.iterdir()))):
            raise SystemExit(f"demo: --out {out} exists and is not an earlier demo's output: "
                             "choose another directory (nothing was touched)")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    marker.write_text("made by python -m scatterdist.demo; replaced by the next demo run\n")

    banner("1. the scattering transform")
    transform_table()

    banner("2. the distributed service")
    store = out / "sims.zarr"
    run("scatter", f"sim:kind=mixed,n={args.n},nside=64,seed=0,alpha={args.alpha}", "--output", str(store),
        "--workers", "2", "--threads-per-worker", "1", "--shard-size", "8")
    run("info", str(store))
    peek(store)
    data = ROOT / "tests" / "data"
    wmap = sorted(str(p) for p in data.glob("wmap_band_iqumap_r9_7yr_*_v4_udgraded32*.fits"))
    print("\nreal sky maps (WMAP 7-year V and W bands, nside 32, and the W map with the Galactic plane and")
    print("point sources cut, UNSEEN): the cut map is scattered on its sky, its UNSEEN pixels are the mask")
    run("scatter", *wmap, "--output", str(out / "wmap.zarr"), "--workers", "1", "--no-progress")
    run("info", str(out / "wmap.zarr"))
    cut_sky(out / "wmap.zarr")

    if not args.skip_training:
        banner("3. the hybrid equivariant CNN")
        run_dir = out / "run"
        run("train", str(store), "--out", str(run_dir), "--epochs", str(args.epochs), "--batch-size", "8",
            "--seed", "0", "--no-progress")
        run("evaluate", str(run_dir), str(store))
    print(f"\ndemo finished: outputs in {out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
