"""Throughput of the torch scattering backend against the numpy (ducc0) backend, in one run.

CPU: maps/s of ``Scattering(backend="numpy")`` and ``Scattering(backend="torch")`` at each
nside, same thread count, same maps, the error against the float64 ducc0 path, and the
number of aten ops one torch call dispatches (counted with ``TorchDispatchMode``: the
launch count a GPU would see). CUDA (when a device is present): batch sizes 1..64 at each
``--gpu-nside`` (default 128, 512, 1024, 2048), maps/s, peak GPU memory, the Legendre
engine used, the float32 error against ducc0, the same run's numpy baseline on all the
node's cores, and the SHT pair (analysis + synthesis) against torch-harmonics'
``RealSHT``/``InverseRealSHT`` on a Gauss-Legendre grid at the same L when torch-harmonics
is installed. Every figure is measured in this run; ``--json`` writes all rows.

    python benchmarks/torch_transform.py --threads 2 --nside 256 512 --cpu-batch 8 2 --json cpu.json
    python benchmarks/torch_transform.py --no-cpu --json gpu.json          # on a GPU node
    python benchmarks/torch_transform.py --no-cpu --gpu-nside 2048 --gpu-batch 1 4

The first call of each configuration (filters, plans, Legendre tables, kernel compilation)
is excluded from the timing; the best of ``--repeats`` timed calls is reported.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from typing import Any, Callable

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from tqdm import tqdm

from scatterdist import Scattering
from scatterdist.sphere import default_nthreads, torch_sht


class OpCounter(TorchDispatchMode):
    """Counts aten ops dispatched inside the ``with`` block (views included)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def count_ops(fn: Callable[[], Any]) -> int:
    """aten ops of one call of ``fn``."""
    with OpCounter() as counter:
        fn()
    return counter.count


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


def engine_of(nside: int, dtype: torch.dtype, device: torch.device, budget: int | None) -> str:
    """Legendre engine of the largest transform of a call (input analysis, lmax = 2*nside - 1)."""
    if not hasattr(torch_sht, "legendre_engine"):  # older versions of the engine
        return "n/a"
    return torch_sht.legendre_engine(nside, 2 * nside - 1, dtype, device, budget)


def cpu_rows(
    nside: int, batch: int, threads: int, repeats: int, depth: int, budget: int | None, dtypes: list[str],
    ops: bool,
) -> list[dict[str, Any]]:
    """numpy vs torch on the CPU at one nside, same threads and maps."""
    maps = np.random.default_rng(0).standard_normal((batch, 12 * nside**2))
    torch.set_num_threads(threads)
    sc_np = Scattering(nside, depth=depth, nthreads=threads)
    ref = sc_np(maps)
    t_np = best_time(lambda: sc_np(maps), repeats)
    rows = [dict(device="cpu", backend="numpy", dtype="float64", nside=nside, batch=batch, threads=threads,
                 seconds=t_np, maps_per_s=batch / t_np, rel_error=0.0, ratio_vs_numpy=1.0)]
    for name in dtypes:
        dtype = getattr(torch, name)
        sc = Scattering(nside, depth=depth, nthreads=threads, backend="torch", device="cpu", dtype=dtype,
                        memory_budget=budget)
        x = torch.from_numpy(maps).to(dtype)
        out = sc(x)
        t = best_time(lambda: sc(x), repeats)
        row = dict(device="cpu", backend="torch", dtype=name, nside=nside, batch=batch, threads=threads,
                   seconds=t, maps_per_s=batch / t, rel_error=rel_error(out, ref), ratio_vs_numpy=t / t_np,
                   engine=engine_of(nside, dtype, torch.device("cpu"), budget))
        if ops:
            row["aten_ops"] = count_ops(lambda: sc(x))
        rows.append(row)
    return rows


def gpu_rows(
    nside: int, batches: list[int], repeats: int, depth: int, ref_maps: int, budget: int | None
) -> list[dict[str, Any]]:
    """float32 torch on CUDA: maps/s, peak memory and aten ops per batch size, error against float64 ducc0."""
    dev = torch.device("cuda")
    name = torch.cuda.get_device_name(dev)
    rng = np.random.default_rng(1)
    maps = rng.standard_normal((max(batches), 12 * nside**2)).astype(np.float32)
    ref = Scattering(nside, depth=depth)(maps[:ref_maps].astype(np.float64))
    sc = Scattering(nside, depth=depth, backend="torch", device=dev, dtype=torch.float32, memory_budget=budget)
    x_all = torch.from_numpy(maps).to(dev)
    err = rel_error(sc(x_all[:ref_maps]), ref)
    engine = engine_of(nside, torch.float32, dev, budget)
    rows = []
    for b in batches:
        x = x_all[:b].contiguous()
        sc(x)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(dev)
        t = best_time(lambda: sc(x), repeats, sync=torch.cuda.synchronize)
        rows.append(dict(device=name, backend="torch", dtype="float32", nside=nside, batch=b, seconds=t,
                         maps_per_s=b / t, peak_gib=torch.cuda.max_memory_allocated(dev) / 2**30,
                         rel_error=err, engine=engine, aten_ops=count_ops(lambda: sc(x))))
    return rows


def numpy_node_rows(nside: int, batch: int, repeats: int, depth: int) -> list[dict[str, Any]]:
    """The numpy (ducc0) backend on all of this node's cores: the CPU baseline of a GPU run."""
    threads = default_nthreads(None)
    maps = np.random.default_rng(2).standard_normal((batch, 12 * nside**2))
    sc = Scattering(nside, depth=depth, nthreads=threads)
    t = best_time(lambda: sc(maps), repeats)
    return [dict(device=f"cpu x{threads}", backend="numpy", dtype="float64", nside=nside, batch=batch,
                 threads=threads, seconds=t, maps_per_s=batch / t)]


def sht_pair_rows(L: int, batch: int, repeats: int, device: torch.device) -> list[dict[str, Any]]:
    """SHT pair (analysis + synthesis) of this engine at lmax = L - 1 (HEALPix nside L/2)
    against torch-harmonics on an (L, 2L) Gauss-Legendre grid, same device, float32."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    nside = L // 2
    x = torch.randn(batch, 12 * nside**2, device=device)

    def ours() -> None:
        torch_sht.synthesis(torch_sht.analysis(x, L - 1), nside, L - 1)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t_ours = best_time(ours, repeats, sync)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    row = dict(device=str(device), L=L, batch=batch, ours_s=t_ours, ours_peak_gib=peak)
    try:
        import torch_harmonics as th
    except ImportError:
        row["torch_harmonics"] = "not installed"
        return [row]
    fwd = th.RealSHT(L, 2 * L, lmax=L, mmax=L, grid="legendre-gauss").to(device)
    inv = th.InverseRealSHT(L, 2 * L, lmax=L, mmax=L, grid="legendre-gauss").to(device)
    grid = torch.randn(batch, L, 2 * L, device=device)
    t_th = best_time(lambda: inv(fwd(grid)), repeats, sync)
    row.update(torch_harmonics=getattr(th, "__version__", "?"), th_s=t_th, ratio_ours_vs_th=t_ours / t_th)
    return [row]


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
    parser.add_argument("--nside", type=int, nargs="+", default=[128, 256, 512], help="CPU resolutions")
    parser.add_argument("--cpu-batch", type=int, nargs="+", default=[8, 8, 2],
                        help="maps per call on CPU, one per --nside (the last is reused)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for both backends (default: all cores)")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "float64"], choices=["float32", "float64"],
                        help="torch dtypes compared on the CPU")
    parser.add_argument("--no-ops", action="store_true", help="skip the aten op count of the CPU torch calls")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--no-cpu", action="store_true", help="skip the CPU comparison")
    parser.add_argument("--gpu-nside", type=int, nargs="+", default=[128, 512, 1024, 2048])
    parser.add_argument("--gpu-batch", type=int, nargs="+", default=[1, 4, 16, 32, 64],
                        help="batch sizes on CUDA (capped at 4 maps for nside >= 2048, 16 for 1024)")
    parser.add_argument("--node-batch", type=int, default=8, help="maps per call of the numpy baseline on all cores")
    parser.add_argument("--sht-L", type=int, nargs="*", default=[256, 512, 1024],
                        help="bandlimits of the SHT-pair comparison with torch-harmonics on CUDA")
    parser.add_argument("--ref-maps", type=int, default=1, help="maps compared with ducc0 float64 for the GPU error")
    parser.add_argument("--memory-budget", type=float, default=None,
                        help="Legendre cache bytes per device for the torch backend (default: 1 GiB CPU, 1/4 of a GPU)")
    parser.add_argument("--json", default=None, help="also write every row to this JSON file")
    args = parser.parse_args(argv)

    threads = default_nthreads(args.threads)
    if args.memory_budget is not None:
        args.memory_budget = int(args.memory_budget)
    header = dict(python=platform.python_version(), torch=torch.__version__,
                  cpu=platform.processor() or platform.machine(), threads=threads, cores=os.cpu_count(),
                  legendre=getattr(torch_sht, "LEGENDRE_ENGINE", "n/a"))
    print(", ".join(f"{k} {v}" for k, v in header.items()))
    rows: list[dict[str, Any]] = []
    if not args.no_cpu:
        cpu = []
        for i, nside in enumerate(tqdm(args.nside, desc="CPU nside", file=sys.stderr)):
            batch = args.cpu_batch[min(i, len(args.cpu_batch) - 1)]
            cpu += cpu_rows(nside, batch, threads, args.repeats, args.depth, args.memory_budget, args.dtypes,
                            not args.no_ops)
        print_rows("CPU: numpy (ducc0) vs torch backend", cpu,
                   ["backend", "dtype", "nside", "batch", "maps_per_s", "ratio_vs_numpy", "rel_error", "aten_ops",
                    "engine"])
        rows += cpu
    if torch.cuda.is_available():
        gpu, node, pairs = [], [], []
        for nside in tqdm(args.gpu_nside, desc="CUDA nside", file=sys.stderr):
            cap = 4 if nside >= 2048 else 16 if nside >= 1024 else max(args.gpu_batch)
            batches = sorted({min(b, cap) for b in args.gpu_batch})
            gpu += gpu_rows(nside, batches, args.repeats, args.depth, args.ref_maps, args.memory_budget)
            node += numpy_node_rows(nside, min(args.node_batch, cap), 1 if nside >= 1024 else args.repeats,
                                    args.depth)
        for L in args.sht_L:
            pairs += sht_pair_rows(L, 16, args.repeats, torch.device("cuda"))
        print_rows(f"CUDA ({torch.cuda.get_device_name()}): torch float32", gpu,
                   ["nside", "batch", "maps_per_s", "peak_gib", "rel_error", "aten_ops", "engine"])
        print_rows("same node, numpy (ducc0) backend on all cores", node, ["nside", "batch", "threads", "maps_per_s"])
        print_rows("SHT pair (analysis + synthesis), batch 16, float32", pairs,
                   ["L", "ours_s", "ours_peak_gib", "torch_harmonics", "th_s", "ratio_ours_vs_th"])
        rows += gpu + node + [dict(kind="sht_pair", **p) for p in pairs]
    else:
        print("\nCUDA: no device visible to torch; GPU part skipped")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(dict(header=header, rows=rows), fh, indent=1, default=str)
        print(f"\nrows written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
