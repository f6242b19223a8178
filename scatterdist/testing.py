"""Test-data builders: small synthetic coefficient stores for tests, benchmarks and smoke runs.

Nothing in the package imports this module (the trainer depends on stores only); it uses the
catalog and the store writer to produce stores exactly as ``scatterdist scatter`` would.

Two (or more) classes of Gaussian random fields on the sphere at ``nside_out``, one field per
"path" channel, whose angular power spectra differ in slope: ``C_l ~ (l+1)**-slope_y``,
with a random overall amplitude per map (so the class is not the variance) and a positive
offset per channel (scattering coefficients are positive). Written through
:mod:`scatterdist.store` with the real schema (sharded ``coefficients``, ``status``, ``label``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np

from scatterdist.inputs import Catalog, Entry, MapRef
from scatterdist.sphere import alm_l_index, alm_size, nside2npix, synthesis
from scatterdist.store import create, write_shard


@dataclass
class SyntheticChannels:
    """Describes the synthetic channels the way ``scatterdist.store.create`` reads a transform."""

    nside_out: int
    n_channels: int
    slopes: tuple[float, ...]

    @property
    def n_paths(self) -> int:
        return self.n_channels

    @property
    def npix_out(self) -> int:
        return nside2npix(self.nside_out)

    @property
    def paths(self) -> list[tuple[int, ...]]:
        return [()] + [(c,) for c in range(1, self.n_channels)]

    @property
    def path_labels(self) -> list[str]:
        return [f"synthetic {c}" for c in range(self.n_channels)]

    def config(self) -> dict:
        return {"synthetic": True, "nside_out": self.nside_out, "n_channels": self.n_channels, "slopes": list(self.slopes)}


def synthetic_maps(
    labels: np.ndarray, nside: int = 8, n_channels: int = 3, slopes: tuple[float, ...] = (2.0, 2.6), seed: int = 0
) -> np.ndarray:
    """Maps ``(n, n_channels, 12*nside**2)`` float32 for class ``labels`` (bandlimit 2*nside-1)."""
    labels = np.asarray(labels, dtype=np.int64)
    if labels.min() < 0 or labels.max() >= len(slopes):
        raise ValueError(f"labels must be in 0..{len(slopes) - 1} (one slope per class)")
    rng = np.random.default_rng(seed)
    lmax = 2 * nside - 1
    ell = alm_l_index(lmax)
    n = len(labels)
    slope = np.asarray(slopes)[labels][:, None, None]
    channel_scale = (1.0 + np.arange(n_channels))[None, :, None]
    cl = (ell[None, None, :] + 1.0) ** (-slope) * np.exp(-ell[None, None, :] / (4.0 * channel_scale))
    cl[..., ell == 0] = 0.0
    shape = (n, n_channels, alm_size(lmax))
    alm = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)) * np.sqrt(cl / 2)
    m0 = alm_l_index(lmax) == np.arange(alm_size(lmax))  # m = 0 entries come first: index == l
    alm[..., m0] = alm[..., m0].real * np.sqrt(2)
    maps = synthesis(alm, nside, lmax=lmax, nthreads=1)
    maps /= maps.std(axis=-1, keepdims=True)
    amplitude = np.exp(0.3 * rng.standard_normal((n, n_channels, 1)))
    return (maps * amplitude + 3.0 * channel_scale).astype(np.float32)


def synthetic_coverage(
    n_maps: int, nside: int, n_paths: int, shared: bool, seed: int = 0, hole_deg: float = 40.0
) -> tuple[np.ndarray, np.ndarray]:
    """Coverage ``(n_maps, n_paths, npix)`` float32 in [0, 1] and sky fraction ``(n_maps,)`` of a
    synthetic cut sky: a disc hole of radius ``hole_deg`` (one centre for all maps when
    ``shared``, a random centre per map otherwise); path ``p``'s coverage rises linearly from 0
    at the hole's edge to 1 at ``(p + 1) * 2`` pixel sizes from it, as an eroded mask would.
    """
    import healpy as hp

    rng = np.random.default_rng([seed, 7])
    npix = nside2npix(nside)
    centres = rng.standard_normal((1 if shared else n_maps, 3))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    pix = np.asarray(hp.pix2vec(nside, np.arange(npix)))  # (3, npix)
    dist = np.arccos(np.clip(centres @ pix, -1.0, 1.0)) - np.radians(hole_deg)  # (m, npix), < 0 inside the hole
    width = 2.0 * hp.nside2resol(nside) * (1.0 + np.arange(n_paths))[None, :, None]
    coverage = np.clip(dist[:, None, :] / width, 0.0, 1.0).astype(np.float32)
    fraction = (dist > 0).mean(axis=1)
    if shared:
        coverage = np.repeat(coverage, n_maps, axis=0)
        fraction = np.repeat(fraction, n_maps)
    return coverage, fraction.astype(np.float32)


def write_synthetic_store(
    path: str | os.PathLike,
    n_maps: int = 96,
    nside: int = 8,
    n_channels: int = 3,
    shard_size: int = 8,
    n_classes: int = 2,
    failed: tuple[int, ...] = (),
    todo: tuple[int, ...] = (),
    seed: int = 0,
    fields: tuple[str, ...] | None = None,
    mask: str | None = None,
    min_coverage: float = 0.5,
) -> np.ndarray:
    """Write a synthetic store at ``path``; returns the labels ``(n_maps,)``.

    Maps listed in ``failed`` get status -1 and NaN coefficients, those in ``todo`` keep
    status 0 (never computed). Labels alternate through the classes in a seeded shuffle.
    ``n_channels`` is the number of paths.

    ``fields=None`` and ``mask=None`` write the schema of stores made before fields existed
    (``coefficients (map, path, pixel)``). ``fields`` (e.g. ``("I", "E", "B")``) writes the
    current schema ``coefficients (map, field, path, pixel)`` with every field an independent
    synthetic map of the same class. ``mask="shared"`` or ``"per_map"`` cuts a hole in every sky
    (:func:`synthetic_coverage`; one shared ``coverage (path, pixel)`` or ``(map, path, pixel)``):
    coefficients are NaN where a path's coverage is below ``min_coverage``, and ``sky_fraction``
    is recorded.
    """
    if mask not in (None, "shared", "per_map"):
        raise ValueError(f"mask must be None, 'shared' or 'per_map', got {mask!r}")
    if mask is not None and fields is None:
        fields = ("I",)
    slopes = tuple(1.0 + 1.5 * k for k in range(n_classes))
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n_maps) % n_classes)
    spec = SyntheticChannels(nside, n_channels, slopes)
    entries = [
        Entry(id=f"syn{i:05d}", source=f"synthetic:{seed}:{i}", ref=MapRef("sim", json.dumps(spec.config()), i), label=int(labels[i]))
        for i in range(n_maps)
    ]
    n_fields = 1 if fields is None else len(fields)
    create(
        path, Catalog(entries, nside), spec, shard_size, overwrite=True, fields=fields,
        per_map_coverage=None if mask is None else mask == "per_map",
    )
    maps = synthetic_maps(labels, nside, n_fields * n_channels, slopes, seed)
    if fields is not None:
        maps = maps.reshape(n_maps, n_fields, n_channels, -1)
    coverage = fraction = None
    if mask is not None:
        coverage, fraction = synthetic_coverage(n_maps, nside, n_channels, mask == "shared", seed)
        maps = np.where(coverage[:, None] < min_coverage, np.float32(np.nan), maps)
    for shard, start in enumerate(range(0, n_maps, shard_size)):
        stop = min(start + shard_size, n_maps)
        block = maps[start:stop].copy()
        status = np.ones(stop - start, dtype=np.int8)
        errors = [""] * (stop - start)
        for i in range(start, stop):
            if i in failed:
                block[i - start] = np.nan
                status[i - start], errors[i - start] = -1, "synthetic failure"
        if all(i in todo for i in range(start, stop)):
            continue
        for i in range(start, stop):
            if i in todo:
                block[i - start] = np.nan
                status[i - start] = 0
        extra = {}
        if mask is not None:
            cov = coverage[start:stop] if mask == "per_map" else coverage[0]
            extra = {"coverage": cov, "sky_fraction": fraction[start:stop]}
        write_shard(path, shard, block, status, errors, **extra)
    return labels
