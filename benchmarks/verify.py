"""Cost of `scatterdist verify` (full: every chunk decoded) and of the quick check every resume
runs (shard indexes only), on a store of N small maps.

    PYTHONPATH=$PWD python benchmarks/verify.py --maps 2000 --nside-out 8 --paths 16 --shard-size 32

Prints seconds and milliseconds per 1,000 maps for each depth (best of --repeat runs).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from scatterdist import store as zstore
from scatterdist.testing import write_synthetic_store


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--maps", type=int, default=2000)
    ap.add_argument("--nside-out", type=int, default=8)
    ap.add_argument("--paths", type=int, default=16)
    ap.add_argument("--shard-size", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "s.zarr"
        write_synthetic_store(path, n_maps=args.maps, nside=args.nside_out, n_channels=args.paths,
                              shard_size=args.shard_size, fields=("I",))
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        print(f"{args.maps} maps, nside_out {args.nside_out}, {args.paths} paths, shard size "
              f"{args.shard_size}: {size / 1e6:.1f} MB on disk")
        for depth in ("quick", "full"):
            best = min(_timed(path, depth) for _ in range(args.repeat))
            print(f"  {depth:<5} {best:7.3f} s  ({1000 * best / args.maps * 1000:7.1f} ms per 1,000 maps)")


def _timed(path: Path, depth: str) -> float:
    t0 = time.perf_counter()
    report = zstore.verify(path, depth=depth)
    dt = time.perf_counter() - t0
    assert report.ok, report.damaged
    return dt


if __name__ == "__main__":
    main()
