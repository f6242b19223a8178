"""Simulation inputs: ``sim:KEY=VALUE,...`` specs and the per-process spec cache of the loaders.

The only module of :mod:`scatterdist.inputs` that imports :mod:`scatterdist.sims` (whose
``SimulationSpec.mask_weights`` imports :mod:`scatterdist.inputs.masks`: keeping the sims
import here keeps the module graph free of cycles).
"""

from __future__ import annotations

import json
import threading
from typing import Any

from scatterdist.inputs.base import CatalogError

__all__ = ["parse_sim_spec"]

_SPEC_CACHE: dict[str, Any] = {}
_SPEC_LOCK = threading.Lock()


def parse_sim_spec(text: str) -> Any:
    """``"sim:kind=mixed,n=64,nside=64,seed=0,alpha=1.0"`` -> ``SimulationSpec``."""
    body = text[4:] if text.startswith("sim:") else text
    params: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in body.split(","))):
        if "=" not in part:
            raise CatalogError(f"simulation spec {text!r}: {part!r} is not KEY=VALUE")
        key, value = (s.strip() for s in part.split("=", 1))
        params[key] = _parse_value(value)
    try:
        from scatterdist.sims import SimulationSpec
    except ImportError as exc:
        raise CatalogError(f"simulation inputs need scatterdist.sims: {exc}") from exc
    try:
        return SimulationSpec.from_dict(params)
    except (TypeError, ValueError, KeyError) as exc:
        raise CatalogError(f"invalid simulation spec {text!r}: {exc}") from exc



def _parse_value(value: str) -> Any:
    for conv in (int, float):
        try:
            return conv(value)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None}.get(value.lower(), value)



def _sim_spec(where: str) -> Any:
    with _SPEC_LOCK:
        spec = _SPEC_CACHE.get(where)
        if spec is None:
            from scatterdist.sims import SimulationSpec

            spec = _SPEC_CACHE[where] = SimulationSpec.from_dict(json.loads(where))
        return spec

