"""Exceptions of the store."""

from __future__ import annotations

class StoreError(RuntimeError):
    """The store is missing, malformed, or a write does not fit its layout."""


class StoreConfigError(StoreError):
    """An existing store was made with another configuration or catalog: refuse to resume."""


class StoreLockedError(StoreError):
    """Another live process holds the store's lock."""

