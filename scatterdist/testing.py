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

from scatterdist.catalog import Catalog, Entry, MapRef
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
) -> np.ndarray:
    """Write a synthetic store at ``path``; returns the labels ``(n_maps,)``.

    Maps listed in ``failed`` get status -1 and NaN coefficients, those in ``todo`` keep
    status 0 (never computed). Labels alternate through the classes in a seeded shuffle.
    """
    slopes = tuple(1.0 + 1.5 * k for k in range(n_classes))
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n_maps) % n_classes)
    spec = SyntheticChannels(nside, n_channels, slopes)
    entries = [
        Entry(id=f"syn{i:05d}", source=f"synthetic:{seed}:{i}", ref=MapRef("sim", json.dumps(spec.config()), i), label=int(labels[i]))
        for i in range(n_maps)
    ]
    create(path, Catalog(entries, nside), spec, shard_size, overwrite=True)
    maps = synthetic_maps(labels, nside, n_channels, slopes, seed)
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
        write_shard(path, shard, block, status, errors)
    return labels
