"""Write simulated skies to disk in parallel: a Zarr v3 store of maps or one FITS file per map.

Zarr layout (opens with plain ``xarray.open_zarr(PATH)``):

- ``maps (map, pixel)`` float64, muK, HEALPix RING at ``nside``; chunk = 1 map (zstd);
  maps not written yet hold the fill value NaN.
- ``label (map)`` int8 (0 Gaussian, 1 non-Gaussian), ``source (map)`` str (provenance).
- coordinate ``map`` (the spec's map ids).
- root attributes: the spec's fields, ``simulation_spec`` (its JSON), ``nside``, ``npix``,
  ``lmax``, ``ordering="RING"``, ``units="muK"``, ``scatterdist_version``, ``created``.

FITS layout: ``DIR/{map_id}.fits`` written by ``healpy.write_map`` (RING, float64, unit uK)
with header cards ``LABEL``, ``SIMKIND``, ``SIMSEED``, ``SIMINDEX``, ``SIMALPHA``, ``SIMLMAX``,
``FWHM`` (arcmin, 0 = no beam), ``NOISE`` (muK arcmin, 0 = none), ``GALCUT`` (degrees, -1 =
none) and ``SOURCE``, plus ``DIR/catalog.json`` (spec, ids, files, labels, sources) written last.

Masked specs (``mask``/``galactic_cut``): pixels of weight 0 hold ``healpy.UNSEEN`` in both
formats, so the written maps load as partial-sky maps; fractional weights of a weight mask are
not stored with the maps (pass the same mask to ``scatterdist scatter --mask``).

Each Dask task owns a contiguous block of maps, hence whole chunks (one map each): no two
tasks ever write the same chunk. At most ``max_in_flight`` tasks are pending at a time.
"""

from __future__ import annotations

import datetime as _dt
import itertools
import json
import math
import os
import shutil
import uuid
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from scatterdist import __version__
from scatterdist.sims.spec import SimulationSpec

if TYPE_CHECKING:  # pragma: no cover
    from distributed import Client

__all__ = ["output_format", "write_simulations"]

FORMATS = ("auto", "zarr", "fits")
CATALOG_FILE = "catalog.json"


def output_format(output: str | os.PathLike, fmt: str = "auto") -> str:
    """``"zarr"`` for a path ending in ``.zarr``, else ``"fits"`` (a directory), unless forced."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    if fmt != "auto":
        return fmt
    return "zarr" if os.fspath(output).rstrip("/\\").endswith(".zarr") else "fits"


def _root_attrs(spec: SimulationSpec) -> dict[str, Any]:
    d = spec.to_dict()
    attrs = {k: v for k, v in d.items() if v is not None}
    attrs.update(
        simulation_spec=json.dumps(d, sort_keys=True),
        nside=spec.nside,
        npix=spec.npix,
        lmax=spec.effective_lmax,
        n_maps=spec.n,
        ordering="RING",
        units="muK",
        labels="0 Gaussian, 1 non-Gaussian",
        scatterdist_version=__version__,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )
    return attrs


def _create_zarr(path: str, spec: SimulationSpec, overwrite: bool) -> None:
    import dask.array as da
    import xarray as xr
    import zarr

    if os.path.exists(path):
        if not overwrite:
            raise FileExistsError(f"{path} exists: choose another --output or pass --overwrite")
        if not os.path.isdir(path) or not (
            os.path.exists(os.path.join(path, "zarr.json")) or not os.listdir(path)
        ):
            raise FileExistsError(f"refusing to overwrite {path}: it is not a Zarr store")
        shutil.rmtree(path)
    n, npix = spec.n, spec.npix
    ds = xr.Dataset(
        {
            "maps": (("map", "pixel"), da.full((n, npix), np.nan, dtype=np.float64, chunks=(1, npix)),
                     {"units": "muK", "long_name": "CMB temperature", "ordering": "RING",
                      "nside": spec.nside}),
            "label": (("map",), spec.labels(), {"flag_values": [0, 1],
                                                "flag_meanings": "gaussian nongaussian"}),
            "source": (("map",), np.array([spec.source(i) for i in range(n)], dtype=object)),
        },
        coords={"map": ("map", np.array(spec.map_ids(), dtype=object))},
        attrs=_root_attrs(spec),
    )
    encoding = {"maps": {"chunks": (1, npix), "compressors": [zarr.codecs.ZstdCodec(level=3)]}}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part",
                                category=UserWarning)
        ds.to_zarr(path, mode="w", encoding=encoding, compute=False, zarr_format=3,
                   consolidated=True)


def write_zarr_block(path: str, spec_dict: dict[str, Any], start: int, stop: int,
                     nthreads: int = 1) -> int:
    """Generate maps ``[start, stop)`` and write them into ``maps`` of the store (one chunk each)."""
    import zarr

    spec = SimulationSpec.from_dict(spec_dict)
    arr = zarr.open_array(path, path="maps", mode="r+")
    for i in range(start, stop):
        arr[i] = spec.generate(i, nthreads=nthreads)
    return stop - start


def _fits_name(map_id: str) -> str:
    return f"{map_id}.fits"


def write_fits_block(directory: str, spec_dict: dict[str, Any], start: int, stop: int,
                     nthreads: int = 1) -> int:
    """Generate maps ``[start, stop)`` and write each to ``directory/{map_id}.fits`` atomically."""
    import healpy as hp

    spec = SimulationSpec.from_dict(spec_dict)
    ids = spec.map_ids()
    for i in range(start, stop):
        final = os.path.join(directory, _fits_name(ids[i]))
        tmp = f"{final}.tmp-{os.getpid()}.fits"
        header = [
            ("LABEL", spec.label(i), "0 Gaussian, 1 non-Gaussian"),
            ("SIMKIND", "gaussian" if spec.label(i) == 0 else "nongaussian", "sky model"),
            ("SIMSEED", spec.seed, "SeedSequence entropy"),
            ("SIMINDEX", i, "SeedSequence spawn key"),
            ("SIMALPHA", 0.0 if spec.label(i) == 0 else spec.alpha, "quadratic NG amplitude"),
            ("SIMLMAX", spec.effective_lmax, "bandlimit of the sky"),
            ("FWHM", spec.fwhm_arcmin or 0.0, "Gaussian beam FWHM [arcmin], 0: none"),
            ("NOISE", spec.noise_uK_arcmin or 0.0, "white noise depth [uK arcmin], 0: none"),
            ("GALCUT", -1.0 if spec.galactic_cut is None else spec.galactic_cut,
             "Galactic cut |b| [deg], -1: none"),
            ("MAPID", ids[i]),
            ("SOURCE", spec.source(i)),
        ]
        hp.write_map(tmp, spec.generate(i, nthreads=nthreads), nest=False, dtype=np.float64,
                     column_units="uK", extra_header=header, overwrite=True)
        os.replace(tmp, final)
    return stop - start


def _prepare_fits_dir(directory: str, spec: SimulationSpec, overwrite: bool) -> None:
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise FileExistsError(f"{directory} exists and is not a directory")
    os.makedirs(directory, exist_ok=True)
    targets = [CATALOG_FILE] + [_fits_name(m) for m in spec.map_ids()]
    clash = [t for t in targets if os.path.exists(os.path.join(directory, t))]
    if clash and not overwrite:
        raise FileExistsError(
            f"{directory} already holds {len(clash)} of the files to write (e.g. {clash[0]}): "
            "choose another --output or pass --overwrite"
        )


def _write_fits_catalog(directory: str, spec: SimulationSpec) -> None:
    ids = spec.map_ids()
    labels = spec.labels()
    catalog = {
        "spec": spec.to_dict(),
        "nside": spec.nside,
        "lmax": spec.effective_lmax,
        "units": "muK",
        "ordering": "RING",
        "scatterdist_version": __version__,
        "maps": [
            {"id": ids[i], "file": _fits_name(ids[i]), "label": int(labels[i]),
             "source": spec.source(i)}
            for i in range(spec.n)
        ],
    }
    tmp = os.path.join(directory, f".{CATALOG_FILE}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(catalog, fh, indent=1)
    os.replace(tmp, os.path.join(directory, CATALOG_FILE))


def _blocks(n: int, size: int) -> list[tuple[int, int]]:
    return [(s, min(s + size, n)) for s in range(0, n, size)]


def write_simulations(
    spec: SimulationSpec,
    output: str | os.PathLike,
    client: "Client | None" = None,
    maps_per_task: int | None = None,
    format: str = "auto",
    overwrite: bool = False,
    progress: bool | None = None,
    max_in_flight: int | None = None,
    nthreads: int = 1,
) -> Path:
    """Generate all maps of ``spec`` and write them to ``output``; returns the output path.

    ``output`` ending in ``.zarr`` gives a Zarr store, anything else a directory of FITS files
    (or force with ``format="zarr"|"fits"``). With a ``distributed.Client`` the maps are made
    by Dask tasks of ``maps_per_task`` maps (default: about 4 tasks per worker thread, at most
    64 maps), at most ``max_in_flight`` pending (default 2 per worker thread); without one
    they are made in this process. ``nthreads``: ducc0 threads per map. A tqdm bar counts maps
    (``progress``: True always, False never, None only on a terminal or in Jupyter).
    Existing outputs are refused unless ``overwrite``.
    """
    from scatterdist._progress import progress_bar

    if not isinstance(spec, SimulationSpec):
        raise TypeError(f"spec must be a SimulationSpec, got {type(spec).__name__}")
    fmt = output_format(output, format)
    path = os.path.abspath(os.fspath(output))
    if fmt == "zarr":
        _create_zarr(path, spec, overwrite)
        block_fn = write_zarr_block
    else:
        _prepare_fits_dir(path, spec, overwrite)
        block_fn = write_fits_block
    spec_dict = spec.to_dict()
    threads = 1
    if client is not None:
        threads = max(1, sum(client.nthreads().values()))
    if maps_per_task is None:
        maps_per_task = max(1, min(64, math.ceil(spec.n / (4 * threads))))
    elif int(maps_per_task) < 1:
        raise ValueError(f"maps_per_task must be >= 1, got {maps_per_task}")
    blocks = _blocks(spec.n, int(maps_per_task))
    window = max(1, int(max_in_flight) if max_in_flight is not None else 2 * threads)
    done = 0
    if spec.masked:
        spec.mask_weights()  # an unusable mask file fails here, before any task runs
    with progress_bar(total=spec.n, desc=f"simulate {spec.kind}", unit="map", progress=progress) as bar:
        if client is None:
            for start, stop in blocks:
                count = block_fn(path, spec_dict, start, stop, nthreads)
                done += count
                bar.update(count)
        else:
            from distributed import as_completed

            todo = iter(blocks)

            def submit(block: tuple[int, int]):
                start, stop = block
                return client.submit(block_fn, path, spec_dict, start, stop, nthreads,
                                     key=f"simulate-{fmt}-{start}-{uuid.uuid4().hex[:12]}",
                                     retries=2)

            pending = as_completed([submit(b) for b in itertools.islice(todo, window)])
            for future in pending:
                count = future.result()
                done += count
                bar.update(count)
                nxt = next(todo, None)
                if nxt is not None:
                    pending.add(submit(nxt))
        if done != spec.n:
            raise RuntimeError(f"wrote {done} of {spec.n} maps to {path}: some blocks were lost")
    if fmt == "fits":
        _write_fits_catalog(path, spec)
    return Path(path)
