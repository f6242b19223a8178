"""Throughput of the torch scattering backend against the numpy (ducc0) backend, in one run.

CPU: maps/s of ``Scattering(backend="numpy")`` and ``Scattering(backend="torch")`` (float32
and float64) at each nside, same thread count, same maps, plus the float32 error against
the float64 ducc0 path. CUDA (when a device is present): batch sizes 1..64, maps/s, peak
GPU memory and the float32 error against ducc0. Every figure is measured in this run.

    python benchmarks/torch_transform.py                      # nside 128 and 512, CPU (+ CUDA if any)
    python benchmarks/torch_transform.py --nside 128 --threads 2 --cpu-batch 8
    python benchmarks/torch_transform.py --no-cpu --gpu-nside 512 --json gpu.json

The first call of each configuration (filters, plans, Legendre tables) is excluded from
the timing; the best of ``--repeats`` timed calls is reported.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from typing import Any, Callable

import numpy as np
import torch
from tqdm import tqdm

from scatterdist import Scattering
from scatterdist.sphere import default_nthreads


def best_time(fn: Callable[[], Any], repeats: int, sync: Callable[[], None] = lambda: None) -> float:
    """Best wall time (s) of ``repeats`` calls after one untimed warm-up call."""
    fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return min(times)


def rel_error(got: Any, ref: np.ndarray) -> float:
    """max |got - ref| / max |ref|."""
    got = got.detach().cpu().numpy() if isinstance(got, torch.Tensor) else np.asarray(got)
    return float(np.abs(got.astype(np.float64) - ref).max() / np.abs(ref).max())


def cpu_rows(
    nside: int, batch: int, threads: int, repeats: int, depth: int, budget: int | None
) -> list[dict[str, Any]]:
    """numpy vs torch float32/float64 on the CPU at one nside."""
    maps = np.random.default_rng(0).standard_normal((batch, 12 * nside**2))
    torch.set_num_threads(threads)
    sc_np = Scattering(nside, depth=depth, nthreads=threads)
    ref = sc_np(maps)
    t_np = best_time(lambda: sc_np(maps), repeats)
    rows = [dict(device="cpu", backend="numpy", dtype="float64", nside=nside, batch=batch, threads=threads,
                 seconds=t_np, maps_per_s=batch / t_np, rel_error=0.0, ratio_vs_numpy=1.0)]
    for dtype in (torch.float32, torch.float64):
        sc = Scattering(nside, depth=depth, nthreads=threads, backend="torch", device="cpu", dtype=dtype,
                        memory_budget=budget)
        x = torch.from_numpy(maps).to(dtype)
        out = sc(x)
        t = best_time(lambda: sc(x), repeats)
        rows.append(dict(device="cpu", backend="torch", dtype=str(dtype).removeprefix("torch."), nside=nside,
                         batch=batch, threads=threads, seconds=t, maps_per_s=batch / t,
                         rel_error=rel_error(out, ref), ratio_vs_numpy=t / t_np))
    return rows


def gpu_rows(
    nside: int, batches: list[int], repeats: int, depth: int, ref_maps: int, budget: int | None
) -> list[dict[str, Any]]:
    """float32 torch on CUDA: maps/s and peak memory per batch size, error against float64 ducc0."""
    dev = torch.device("cuda")
    name = torch.cuda.get_device_name(dev)
    rng = np.random.default_rng(1)
    maps = rng.standard_normal((max(batches), 12 * nside**2))
    ref = Scattering(nside, depth=depth)(maps[:ref_maps])
    sc = Scattering(nside, depth=depth, backend="torch", device=dev, dtype=torch.float32, memory_budget=budget)
    x_all = torch.from_numpy(maps).to(dev, torch.float32)
    err = rel_error(sc(x_all[:ref_maps]), ref)
    rows = []
    for b in batches:
        x = x_all[:b].contiguous()
        sc(x)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(dev)
        t = best_time(lambda: sc(x), repeats, sync=torch.cuda.synchronize)
        rows.append(dict(device=name, backend="torch", dtype="float32", nside=nside, batch=b, seconds=t,
                         maps_per_s=b / t, peak_gib=torch.cuda.max_memory_allocated(dev) / 2**30,
                         rel_error=err))
    return rows


def print_rows(title: str, rows: list[dict[str, Any]], columns: list[str]) -> None:
    print(f"\n{title}")
    print("  ".join(f"{c:>14}" for c in columns))
    for row in rows:
        cells = []
        for c in columns:
            v = row.get(c, "")
            cells.append(f"{v:>14.4g}" if isinstance(v, float) else f"{v!s:>14}")
        print("  ".join(cells))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nside", type=int, nargs="+", default=[128, 512], help="CPU resolutions")
    parser.add_argument("--cpu-batch", type=int, nargs="+", default=[8, 2],
                        help="maps per call on CPU, one per --nside (the last is reused)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for both backends (default: all cores)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--no-cpu", action="store_true", help="skip the CPU comparison")
    parser.add_argument("--gpu-nside", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--gpu-batch", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    parser.add_argument("--ref-maps", type=int, default=2, help="maps compared with ducc0 float64 for the GPU error")
    parser.add_argument("--memory-budget", type=float, default=None,
                        help="Legendre cache bytes per device for the torch backend (default: 1 GiB CPU, 1/4 of a GPU)")
    parser.add_argument("--json", default=None, help="also write every row to this JSON file")
    args = parser.parse_args(argv)

    threads = default_nthreads(args.threads)
    if args.memory_budget is not None:
        args.memory_budget = int(args.memory_budget)
    print(f"python {platform.python_version()}, torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{threads} CPU threads")
    rows: list[dict[str, Any]] = []
    if not args.no_cpu:
        cpu = []
        for i, nside in enumerate(tqdm(args.nside, desc="CPU nside", file=sys.stderr)):
            batch = args.cpu_batch[min(i, len(args.cpu_batch) - 1)]
            cpu += cpu_rows(nside, batch, threads, args.repeats, args.depth, args.memory_budget)
        print_rows("CPU: numpy (ducc0) vs torch backend", cpu,
                   ["backend", "dtype", "nside", "batch", "maps_per_s", "ratio_vs_numpy", "rel_error"])
        rows += cpu
    if torch.cuda.is_available():
        gpu = []
        for nside in tqdm(args.gpu_nside, desc="CUDA nside", file=sys.stderr):
            gpu += gpu_rows(nside, args.gpu_batch, args.repeats, args.depth, args.ref_maps, args.memory_budget)
        print_rows(f"CUDA ({torch.cuda.get_device_name()}): torch float32", gpu,
                   ["nside", "batch", "maps_per_s", "peak_gib", "rel_error"])
        rows += gpu
    else:
        print("\nCUDA: no device visible to torch; GPU part skipped")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
