"""Fields of a map: names (:data:`FIELDS`), the FITS columns they need, E/B from Q/U."""

from __future__ import annotations

from collections.abc import Sequence

from scatterdist.inputs.base import CatalogError

__all__ = ["FIELDS", "check_fields"]

#: Field names a store can hold: Stokes I, Q, U (FITS fields 0, 1, 2) and E, B from (Q, U).
FIELDS = ("I", "Q", "U", "E", "B")
_STOKES_COLUMN = {"I": 0, "Q": 1, "U": 2}


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
                           "(I, Q, U are FITS fields 0, 1, 2; E, B are made from Q, U)")
    if len(set(names)) != len(names):
        raise CatalogError(f"field(s) repeated in {list(names)}")
    return names


def _stokes_columns(fields: Sequence[str]) -> tuple[int, ...]:
    """FITS columns (0 I, 1 Q, 2 U) needed for ``fields``, in increasing order."""
    cols = set()
    for f in fields:
        cols.update((1, 2) if f in ("E", "B") else (_STOKES_COLUMN[f],))
    return tuple(sorted(cols))

