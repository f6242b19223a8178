"""Argument checks shared by the simulation modules (a leaf module: imports nothing of
``scatterdist.sims``, so ``skies`` and ``observe`` can both use it without an import cycle)."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["check_nonnegative"]


def _check_int(name: str, value: object, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    value = int(value)
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")
    return value


def check_nonnegative(name: str, value: object, unit: str = "") -> float | None:
    """``value`` as a finite float >= 0 (None stays None), else ValueError naming ``name``."""
    if value is None:
        return None
    what = f"{name} must be a finite number >= 0" + (f" ({unit})" if unit else "") + f", got {value!r}"
    if isinstance(value, bool):
        raise ValueError(what)
    try:
        out = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(what) from None
    if not math.isfinite(out) or out < 0:
        raise ValueError(what)
    return out
