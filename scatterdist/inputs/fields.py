"""Fields of a map: names (:data:`FIELDS`), the FITS columns they need, E/B from Q/U."""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from scatterdist.inputs.base import BadMapError, CatalogError

__all__ = ["FIELDS", "STOKES_COLUMN_NAMES", "check_fields", "make_fields", "needed_stokes",
           "stokes_columns"]

#: Field names a store can hold: Stokes I, Q, U (FITS columns found by name) and E, B from (Q, U).
FIELDS = ("I", "Q", "U", "E", "B")


def check_fields(fields: str | Sequence[str]) -> tuple[str, ...]:
    """Validate field names (``"I,E,B"`` or ``("I", "E", "B")``) against :data:`FIELDS`.

    Returns the tuple of names in the order given; raises :class:`CatalogError` for an unknown,
    repeated or empty selection.
    """
    if isinstance(fields, str):
        fields = [f.strip() for f in fields.split(",") if f.strip()]
    names = tuple(str(f).strip().upper() for f in fields)
    if not names:
        raise CatalogError(f"no fields selected; choose among {', '.join(FIELDS)}")
    unknown = [f for f in names if f not in FIELDS]
    if unknown:
        raise CatalogError(f"unknown field(s) {unknown}; choose among {', '.join(FIELDS)} "
                           "(I, Q, U: Stokes columns, found by FITS column name; E, B are made from Q, U)")
    if len(set(names)) != len(names):
        raise CatalogError(f"field(s) repeated in {list(names)}")
    return names


#: FITS column names of each Stokes field, healpy's conventions (compared case-insensitively).
STOKES_COLUMN_NAMES = {
    "I": ("TEMPERATURE", "I_STOKES", "I", "T"),
    "Q": ("Q_POLARISATION", "Q_POLARIZATION", "Q_STOKES", "Q"),
    "U": ("U_POLARISATION", "U_POLARIZATION", "U_STOKES", "U"),
}
_STOKES_BY_NAME = {n: s for s, names in STOKES_COLUMN_NAMES.items() for n in names}
#: Column names that say nothing about the field (healpy's ``COLUMN_n`` for maps it cannot
#: name, ``SIGNAL``, empty names): such columns are taken by position (0 I, 1 Q, 2 U).
_GENERIC_NAME = re.compile(r"^(COLUMN|COL|SIGNAL|FIELD|MAP|DATA|VALUE|UNKNOWN)?[ _-]?\d*$")


def needed_stokes(fields: Sequence[str]) -> tuple[str, ...]:
    """Stokes components (``"I"``, ``"Q"``, ``"U"``, in that order) that ``fields`` need."""
    need = set()
    for f in fields:
        need.update(("Q", "U") if f in ("E", "B") else (f,))
    return tuple(s for s in ("I", "Q", "U") if s in need)


def _fields_from(stokes: set[str]) -> list[str]:
    out = [s for s in ("I", "Q", "U") if s in stokes]
    return out + (["E", "B"] if {"Q", "U"} <= stokes else [])


def stokes_columns(columns: Sequence[str], fields: Sequence[str], what: str) -> dict[str, int]:
    """Which of ``columns`` (a FITS table's map columns, PIXEL excluded) holds each Stokes
    component ``fields`` need: ``{"Q": 0, "U": 1}``.

    Columns are found by **name** (:data:`STOKES_COLUMN_NAMES`, case-insensitive). Only when no
    column has a Stokes name: generic names (``COLUMN_1``, ``SIGNAL``, empty) are taken by
    position (I, Q, U = columns 0, 1, 2), and a file with a single map column of any other
    name is a scalar map (field I). Raises :class:`BadMapError` naming the columns when a
    field is absent.
    """
    need = needed_stokes(fields)
    names = [str(c).strip().upper() for c in columns]
    listed = ", ".join(repr(str(c)) for c in columns) or "none"
    by_name: dict[str, int] = {}
    for k, n in enumerate(names):
        s = _STOKES_BY_NAME.get(n)
        if s is not None and s not in by_name:
            by_name[s] = k
    if by_name:
        missing = [s for s in need if s not in by_name]
        if missing:
            wanting = [f for f in fields if set(needed_stokes((f,))) & set(missing)]
            raise BadMapError(
                f"{what}: field(s) {', '.join(wanting)} need(s) Stokes {' and '.join(missing)} and no "
                f"column is named so (looked for {'; '.join('/'.join(STOKES_COLUMN_NAMES[s]) for s in missing)}); "
                f"its columns are {listed}: choose --fields among {', '.join(_fields_from(set(by_name)))}")
        return {s: by_name[s] for s in need}
    if names and all(_GENERIC_NAME.match(n) for n in names):
        positional = {s: k for k, s in enumerate(("I", "Q", "U")[: len(names)])}
        missing = [s for s in need if s not in positional]
        if missing:
            raise BadMapError(
                f"{what} has {len(names)} unnamed column(s) ({listed}), taken by position as "
                f"{', '.join(positional)}; Stokes {'/'.join(missing)} would be column(s) "
                f"{', '.join(str('IQU'.index(s)) for s in missing)}: choose --fields among "
                f"{', '.join(_fields_from(set(positional)))}")
        return {s: positional[s] for s in need}
    if len(names) == 1 and need == ("I",):
        return {"I": 0}  # one map column of another name (e.g. KAPPA): the scalar field
    raise BadMapError(
        f"{what}: no column is named as a Stokes field ({'; '.join('/'.join(v) for v in STOKES_COLUMN_NAMES.values())}) "
        f"and the columns are not unnamed, so which holds field(s) {', '.join(fields)} is unknown; "
        f"its columns are {listed}: rename them (healpy.write_map(..., column_names=[...]))")


def make_fields(stokes: dict[str, np.ndarray], fields: Sequence[str], weights: np.ndarray | None,
                valid: np.ndarray) -> list[np.ndarray]:
    """Rows of ``fields`` from the Stokes maps ``stokes`` (``{"Q": (npix,), ...}``, 0 where
    masked): I, Q, U as given; E and B from (Q, U) by the spin-2 transform
    (:func:`scatterdist.sphere.spin.qu_to_eb`, ``mask=weights``), set to 0 outside ``valid``."""
    eb: tuple[np.ndarray, np.ndarray] | None = None
    rows = []
    for f in fields:
        if f in stokes:
            rows.append(stokes[f])
            continue
        if eb is None:
            from scatterdist.sphere.spin import qu_to_eb

            e, b = qu_to_eb(stokes["Q"], stokes["U"], mask=weights)
            eb = (np.where(valid, np.asarray(e, dtype=np.float64), 0.0),
                  np.where(valid, np.asarray(b, dtype=np.float64), 0.0))
        rows.append(eb[0] if f == "E" else eb[1])
    return rows
