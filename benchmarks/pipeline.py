"""Pipeline throughput at nside 256, measured side by side in one run.

    .venv/bin/python benchmarks/pipeline.py [--nside 256] [--n 32] [--shard-size 4]

Prints maps/s of
  - a bare loop: read each map, ``Scattering`` (1 thread), ``np.save`` per map;
  - the pipeline (``scatterdist.pipeline.scatter``) on a LocalCluster of 1 worker, then 2 workers
    (1 thread each), one task per shard writing the whole shard;
  - the alternative design at 2 workers: one transform task per map plus one writer task per
    shard (the coefficients travel between processes);
the machine's own two-process ceiling (two bare loops side by side: on 2 hyperthreads or with
shared memory bandwidth it is well below 2x), and the store's bytes on disk against the
input maps' bytes. Targets: pipeline(1)/loop >= 0.9,
pipeline(2)/pipeline(1) >= 1.8 (needs 2 free cores). Workers are warmed up (imports, filters)
before timing; cluster start-up is not timed.

GPU mode (``--mode gpu``, issue 11): at each ``--nside``, on the same maps read from one Zarr
store, maps/s of
  - the bare device loop: read a batch of rows from the store, copy it to the device,
    transform (torch backend, ``--gpu-batch`` maps a call), copy the coefficients back;
    one thread, no overlap, no store writes;
  - the pipeline on ONE worker that sees the device (``--backend torch --device DEVICE``:
    prefetching loader threads, pinned memory and non_blocking copies on CUDA, whole-shard
    writes), with the fraction of the run the device was busy (from the tasks' batch timings);
  - the same node's CPU pipeline: ``--cpu-workers`` worker processes (default: every core),
    numpy backend, one task per shard (on ``--cpu-n`` of the maps: rates are per map);
and the ratios pipeline(GPU) / bare loop (target >= 0.8) and pipeline(GPU) / CPU pipeline
(target >= 5 at nside 512 on an H100 node with 16 cores). Rows go to ``--json``. Without a GPU,
``--device cpu`` runs the same code path on the CPU (what CI does):

    python benchmarks/pipeline.py --mode gpu --device cpu --nside 64 --n 32 --gpu-batch 8 --cpu-workers 2
    python3 benchmarks/pipeline.py --mode gpu --nside 256 512 --n 256 --gpu-batch 32 --json pipeline-gpu.json
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

import numpy as np
import xarray as xr
import zarr
from distributed import Client, LocalCluster, wait

from scatterdist import Scattering
from scatterdist import pipeline
from scatterdist import store as zstore
from scatterdist.inputs import Catalog, load_maps


def _du(path: str) -> int:
    total = 0
    for root, _, files in os.walk(path):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    return total


def _load(ref, nside: int) -> np.ndarray:
    """One full-sky map (field I) as the pipeline's loader reads it."""
    [m] = load_maps([ref], nside, fields=("I",))
    return m.data[0]


def _transform_one(ref, config):
    """Alternative design, step 1: one map -> its coefficients (returned to the cluster)."""
    sc = pipeline._scattering(config)
    return np.asarray(sc(_load(ref, sc.nside)), dtype=np.float32)


def _write_one_shard(path, shard, *coeffs):
    """Alternative design, step 2: a writer task per shard gathers and writes it."""
    zstore.write_shard(path, shard, np.stack(coeffs)[:, None], np.ones(len(coeffs), np.int8), [""] * len(coeffs))
    return len(coeffs)


def bench_loop(cat: Catalog, config: dict, outdir: str) -> float:
    sc = Scattering(**config, nthreads=1)
    sc(np.zeros(sc.npix))  # warm-up
    os.makedirs(outdir, exist_ok=True)
    t0 = time.perf_counter()
    for i, ref in enumerate(cat.refs):
        m = _load(ref, sc.nside)
        np.save(os.path.join(outdir, f"{i:06d}.npy"), sc(m).astype(np.float32))
    return len(cat) / (time.perf_counter() - t0)


def _loop_part(args: tuple) -> float:
    """One process of the two-process bare loop: (catalog, config, outdir, part) -> seconds."""
    cat, config, outdir, part = args
    sc = Scattering(**config, nthreads=1)
    sc(np.zeros(sc.npix))
    refs = cat.refs[part::2]
    t0 = time.perf_counter()
    for i, ref in enumerate(refs):
        m = _load(ref, sc.nside)
        np.save(os.path.join(outdir, f"p{part}-{i:06d}.npy"), sc(m).astype(np.float32))
    return time.perf_counter() - t0


def bench_two_loops(cat: Catalog, config: dict, outdir: str) -> float:
    """The machine's own ceiling for 2 processes: two bare loops side by side, maps/s together."""
    import multiprocessing as mp

    os.makedirs(outdir, exist_ok=True)
    with mp.get_context("spawn").Pool(2) as pool:
        seconds = pool.map(_loop_part, [(cat, config, outdir, 0), (cat, config, outdir, 1)])
    return len(cat) / max(seconds)


def _cluster(workers: int) -> tuple[LocalCluster, Client]:
    import dask

    from scatterdist.cluster import WORKER_ENVIRON

    with dask.config.set(WORKER_ENVIRON):  # the worker environment scatterdist's clusters use
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                               host="127.0.0.1", dashboard_address="127.0.0.1:0")
    client = Client(cluster)
    return cluster, client


def bench_pipeline(cat: Catalog, config: dict, path: str, workers: int, shard_size: int) -> float:
    cluster, client = _cluster(workers)
    try:
        client.run(pipeline._scattering, config)  # warm-up: imports + filters on every worker
        shutil.rmtree(path, ignore_errors=True)
        summary = pipeline.scatter(cat, path, config, client=client, shard_size=shard_size,
                                   progress=False)
        assert summary.failed == 0, summary.failures
        return summary.maps_per_s
    finally:
        client.close()
        cluster.close()


def bench_writer_design(cat: Catalog, config: dict, path: str, workers: int, shard_size: int) -> float:
    cluster, client = _cluster(workers)
    try:
        client.run(pipeline._scattering, config)
        shutil.rmtree(path, ignore_errors=True)
        zstore.create(path, cat, Scattering(**config), shard_size, fields=("I",))
        lay = zstore.layout(path)
        t0 = time.perf_counter()
        writes = []
        for s in range(lay.n_shards):
            a, b = lay.bounds(s)
            parts = [client.submit(_transform_one, cat.refs[i], config, pure=False) for i in range(a, b)]
            writes.append(client.submit(_write_one_shard, path, s, *parts, pure=False))
        wait(writes)
        n = sum(f.result() for f in writes)
        return n / (time.perf_counter() - t0)
    finally:
        client.close()
        cluster.close()


def _write_maps(path: str, n: int, nside: int, seed: int = 0, dtype=np.float32) -> None:
    """``n`` random maps ``(map, pixel)`` into a Zarr store, written in blocks (bounded memory)."""
    shutil.rmtree(path, ignore_errors=True)
    npix = 12 * nside**2
    root = zarr.open_group(path, mode="w", zarr_format=3)
    arr = root.create_array("maps", shape=(n, npix), chunks=(1, npix), dtype=dtype,
                            dimension_names=("map", "pixel"))
    ids = root.create_array("map", shape=(n,), chunks=(n,), dtype=str, dimension_names=("map",))
    ids[:] = np.array([f"sky{i:05d}" for i in range(n)])
    rng = np.random.default_rng(seed)
    for a in range(0, n, 16):
        b = min(n, a + 16)
        arr[a:b] = rng.standard_normal((b - a, npix)).astype(dtype)


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench_bare_device_loop(path: str, config: dict, device: str, batch: int) -> tuple[float, float]:
    """Read ``batch`` rows, copy to the device, transform, copy back; returns (maps/s, seconds)."""
    import torch

    if device == "cpu":  # as in a Dask worker process (OMP_NUM_THREADS=1): same thread count
        torch.set_num_threads(1)
    sc = Scattering(**config, backend="torch", device=device)
    arr = zarr.open_array(path, path="maps", mode="r")
    n = arr.shape[0]
    warm = torch.as_tensor(np.asarray(arr[:batch], dtype=np.float64), dtype=torch.float32, device=device)
    sc(warm).cpu()
    _sync(device)
    out = np.empty((n, sc.n_paths, sc.npix_out), np.float32)
    t0 = time.perf_counter()
    for a in range(0, n, batch):
        x = torch.as_tensor(np.asarray(arr[a : a + batch], dtype=np.float64), dtype=torch.float32, device=device)
        out[a : a + batch] = sc(x).cpu().numpy()
    _sync(device)
    dt = time.perf_counter() - t0
    return n / dt, dt


def bench_device_pipeline(cat: Catalog, config: dict, path: str, device: str, batch: int,
                          shard_size: int, prefetch: int) -> dict:
    """The pipeline on one worker that sees the device; returns maps/s and the device's busy fraction."""
    from scatterdist.feed import overlap_summary

    cfg = {**config, "backend": "torch", "device": device}
    cluster, client = _cluster(1)
    try:
        client.run(lambda c: pipeline._scattering(c) and None, cfg)  # warm-up: imports, filters, tables
        shutil.rmtree(path, ignore_errors=True)
        summary = pipeline.scatter(cat, path, cfg, client=client, shard_size=shard_size,
                                   batch_size=batch, prefetch=prefetch, progress=False)
        assert summary.failed == 0, summary.failures
        stats = [overlap_summary(t) for t in summary.timings]
        transform_s = sum(s["transform_s"] for s in stats)
        return {"maps_per_s": summary.maps_per_s, "seconds": summary.seconds,
                "devices": summary.devices, "tasks": len(summary.timings),
                "device_busy": transform_s / summary.seconds if summary.seconds else float("nan"),
                "load_s": sum(s["load_s"] for s in stats), "transform_s": transform_s,
                "overlapped": float(np.nanmean([s["overlapped"] for s in stats]))}
    finally:
        client.close()
        cluster.close()


def gpu_main(args: argparse.Namespace) -> None:
    import json
    import platform

    import torch

    from scatterdist.pipeline import resolve_device

    device = resolve_device(args.device)
    gpu_name = torch.cuda.get_device_name() if device.startswith("cuda") else None
    cpu_workers = args.cpu_workers or os.cpu_count() or 1
    meta = {"device": device, "gpu": gpu_name, "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "python": platform.python_version(), "n": args.n, "gpu_batch": args.gpu_batch,
            "prefetch": args.prefetch, "cpu_workers": cpu_workers}
    print(f"GPU-mode pipeline benchmark on {device} ({gpu_name or 'no GPU'}), {os.cpu_count()} cores", flush=True)
    work = args.workdir or tempfile.mkdtemp(prefix="scatterdist-gpubench-")
    rows = []
    try:
        for nside in args.nside:
            inputs = os.path.join(work, f"maps{nside}.zarr")
            _write_maps(inputs, args.n, nside)
            cat = Catalog.from_inputs([inputs])
            config = Scattering(nside=nside).config()
            shard = args.shard_size or max(1, args.gpu_batch // 2)
            best_bare, best_pipe, best_cpu = 0.0, None, 0.0
            for r in range(args.repeat):
                bare, _ = bench_bare_device_loop(inputs, config, device, args.gpu_batch)
                pipe = bench_device_pipeline(cat, config, os.path.join(work, f"g{nside}.zarr"), device,
                                             args.gpu_batch, shard, args.prefetch)
                cpu_n = min(args.cpu_n, args.n)
                cpu = (bench_pipeline(_first(cat, cpu_n), config, os.path.join(work, f"c{nside}.zarr"),
                                      cpu_workers, 1) if cpu_workers > 0 else float("nan"))
                print(f"nside {nside} round {r + 1}: bare {device} loop {bare:.2f}, pipeline 1 {device} worker "
                      f"{pipe['maps_per_s']:.2f} (device busy {pipe['device_busy']:.2f}), CPU pipeline "
                      f"{cpu_workers} workers {cpu:.2f} maps/s", flush=True)
                best_bare = max(best_bare, bare)
                best_cpu = max(best_cpu, cpu)
                if best_pipe is None or pipe["maps_per_s"] > best_pipe["maps_per_s"]:
                    best_pipe = pipe
            row = {"nside": nside, "bare_loop_maps_per_s": best_bare,
                   "pipeline_maps_per_s": best_pipe["maps_per_s"], "cpu_pipeline_maps_per_s": best_cpu,
                   "pipeline_over_bare": best_pipe["maps_per_s"] / best_bare,
                   "pipeline_over_cpu_pipeline": best_pipe["maps_per_s"] / best_cpu,
                   "device_busy": best_pipe["device_busy"], "overlapped": best_pipe["overlapped"],
                   "shard_size": shard, "tasks": best_pipe["tasks"], **meta}
            rows.append(row)
            print(f"nside {nside} best of {args.repeat}: pipeline/bare loop {row['pipeline_over_bare']:.2f} "
                  f"(target >= 0.8), pipeline/CPU pipeline {row['pipeline_over_cpu_pipeline']:.2f} "
                  f"(target >= 5 at nside 512 on a GPU), device busy {row['device_busy']:.2f}", flush=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)
        print(f"rows written to {args.json}")


def _first(cat: Catalog, n: int) -> Catalog:
    """The first ``n`` entries of a catalog."""
    return Catalog(cat.entries[:n], nside=cat.nside)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=("cpu", "gpu"), default="cpu",
                        help="cpu (default): the CPU pipeline against its bare loop; gpu: see above")
    parser.add_argument("--nside", type=int, nargs="+", default=None,
                        help="cpu mode: one nside (default 256); gpu mode: several (default 256 512)")
    parser.add_argument("--n", type=int, default=None, help="number of maps (default 48; gpu mode 256)")
    parser.add_argument("--shard-size", type=int, default=None,
                        help="maps per shard (default 4: 12 shards, so 2 workers finish together; "
                             "gpu mode: gpu-batch / 2, so device batches span shards)")
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto", help="gpu mode: the device")
    parser.add_argument("--gpu-batch", type=int, default=32, help="gpu mode: maps per transform call")
    parser.add_argument("--prefetch", type=int, default=2, help="gpu mode: batches loaded ahead")
    parser.add_argument("--cpu-workers", type=int, default=None,
                        help="gpu mode: worker processes of the CPU pipeline (default: every core; 0 skips it)")
    parser.add_argument("--cpu-n", type=int, default=64, help="gpu mode: maps of the CPU pipeline run")
    parser.add_argument("--json", default=None, help="write the rows to this JSON file")
    parser.add_argument("--repeat", type=int, default=2,
                        help="rounds of all four measurements, interleaved; the best of each is kept "
                             "(the machine may be shared)")
    parser.add_argument("--workdir", default=None, help="scratch folder (default: a temp dir)")
    args = parser.parse_args()
    if args.mode == "gpu":
        args.nside = args.nside or [256, 512]
        args.n = args.n or 256
        gpu_main(args)
        return
    args.nside = (args.nside or [256])[0]
    args.n = args.n or 48
    args.shard_size = args.shard_size or 4

    work = args.workdir or tempfile.mkdtemp(prefix="scatterdist-bench-")
    inputs = os.path.join(work, "maps.zarr")
    rng = np.random.default_rng(0)
    maps = rng.standard_normal((args.n, 12 * args.nside**2))
    shutil.rmtree(inputs, ignore_errors=True)
    xr.Dataset({"maps": (("map", "pixel"), maps)},
               coords={"map": np.array([f"sky{i:05d}" for i in range(args.n)], dtype=object)}
               ).to_zarr(inputs, zarr_format=3, consolidated=False)
    cat = Catalog.from_inputs([inputs])
    config = Scattering(nside=args.nside).config()
    print(f"nside {args.nside}, {args.n} maps, shard size {args.shard_size}, "
          f"{Scattering(**config).n_paths} paths at nside_out {Scattering(**config).nside_out}; "
          f"{os.cpu_count()} cores; workdir {work}")

    best = {"loop": 0.0, "loop2": 0.0, "p1": 0.0, "p2": 0.0, "w2": 0.0}
    for r in range(args.repeat):
        runs = {
            "loop": lambda: bench_loop(cat, config, os.path.join(work, "loop")),
            "loop2": lambda: bench_two_loops(cat, config, os.path.join(work, "loop2")),
            "p1": lambda: bench_pipeline(cat, config, os.path.join(work, "p1.zarr"), 1, args.shard_size),
            "p2": lambda: bench_pipeline(cat, config, os.path.join(work, "p2.zarr"), 2, args.shard_size),
            "w2": lambda: bench_writer_design(cat, config, os.path.join(work, "w2.zarr"), 2, args.shard_size),
        }
        got = {k: f() for k, f in runs.items()}
        print(f"round {r + 1}: " + ", ".join(f"{k} {v:.2f}" for k, v in got.items()) + " maps/s", flush=True)
        best = {k: max(best[k], got[k]) for k in best}
    loop, loop2, p1, p2, w2 = best["loop"], best["loop2"], best["p1"], best["p2"], best["w2"]
    print(f"best of {args.repeat} rounds:")
    print(f"bare loop (Scattering + np.save)     : {loop:7.2f} maps/s")
    print(f"pipeline, 1 worker x 1 thread        : {p1:7.2f} maps/s   ratio to loop {p1 / loop:.2f} (target >= 0.9)")
    print(f"pipeline, 2 workers x 1 thread       : {p2:7.2f} maps/s   ratio to 1 worker {p2 / p1:.2f} (target >= 1.8)")
    print(f"two bare loops side by side (ceiling): {loop2:7.2f} maps/s   ratio to one loop {loop2 / loop:.2f}; "
          f"pipeline(2) reaches {p2 / loop2:.2f} of it")
    print(f"map tasks + writer per shard, 2 wkrs : {w2:7.2f} maps/s   ratio to one-task-per-shard {w2 / p2:.2f}")

    same = np.array_equal(zarr.open_array(os.path.join(work, "p2.zarr"), path="coefficients")[:],
                          zarr.open_array(os.path.join(work, "w2.zarr"), path="coefficients")[:])
    store_bytes = _du(os.path.join(work, "p2.zarr"))
    coeff_bytes = _du(os.path.join(work, "p2.zarr", "coefficients"))
    print(f"both designs give identical stores: {same}")
    print(f"input maps: {maps.nbytes / 1e6:.1f} MB (float64), on disk {_du(inputs) / 1e6:.1f} MB; "
          f"store on disk {store_bytes / 1e6:.2f} MB (coefficients {coeff_bytes / 1e6:.2f} MB): "
          f"{maps.nbytes / store_bytes:.0f}x smaller")
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
