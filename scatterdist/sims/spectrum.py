"""The LCDM CMB temperature power spectrum shipped with the package.

``data/cmb_cl.txt`` holds the lensed TT C_l in muK^2 for l = 0..6200 (C_0 = C_1 = 0),
computed by ``scripts/make_cmb_cl.py`` with CAMB and the Planck 2018 best-fit LCDM
parameters (arXiv:1807.06209, Table 2, TT,TE,EE+lowE+lensing). Reading it needs no camb.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

import numpy as np

CL_FILE = "cmb_cl.txt"


@lru_cache(maxsize=1)
def _table() -> np.ndarray:
    ref = resources.files("scatterdist").joinpath("data", CL_FILE)
    if not ref.is_file():
        raise FileNotFoundError(
            f"scatterdist/data/{CL_FILE} is missing from the installation; regenerate it with "
            "`python scripts/make_cmb_cl.py` (needs `pip install camb`)"
        )
    with ref.open("r") as fh:
        table = np.loadtxt(fh, dtype=np.float64)
    ell = table[:, 0].astype(np.int64)
    if not np.array_equal(ell, np.arange(ell.size)):
        raise ValueError(f"{CL_FILE} must list l = 0, 1, 2, ... in order")
    cl = np.ascontiguousarray(table[:, 1])
    cl.setflags(write=False)
    return cl


def cl_lmax() -> int:
    """Largest multipole available in the shipped spectrum."""
    return int(_table().size - 1)


def cmb_cl(lmax: int) -> np.ndarray:
    """LCDM lensed TT power spectrum C_l in muK^2, shape ``(lmax+1,)`` float64, C_0 = C_1 = 0.

    Raw C_l (not D_l = l(l+1)C_l/2pi), Planck 2018 best fit, from CAMB.

    >>> cl = cmb_cl(2000)
    >>> cl.shape, cl[0], cl[1], bool(4000 < 220 * 221 * cl[220] / (2 * np.pi) < 7000)
    ((2001,), 0.0, 0.0, True)
    """
    try:
        lmax = int(lmax)
    except (TypeError, ValueError):
        raise ValueError(f"lmax must be an integer, got {lmax!r}") from None
    if lmax < 0:
        raise ValueError(f"lmax must be >= 0, got {lmax}")
    table = _table()
    if lmax >= table.size:
        raise ValueError(
            f"lmax={lmax} exceeds the shipped spectrum (l <= {table.size - 1}); regenerate "
            f"it with `python scripts/make_cmb_cl.py --lmax {lmax}`"
        )
    return table[: lmax + 1].copy()
