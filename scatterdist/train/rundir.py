"""A run directory has one trainer at a time: the lock ``RUN_DIR/train.lock``.

The lock file holds ``{pid, host, time}`` of the trainer (rank 0 under torchrun) and is taken
with ``O_CREAT | O_EXCL`` by :class:`scatterdist.store.StoreLock` (the same lock as a store's
writer, so the same rules): a lock whose process is dead on this host is stale and taken
over (a killed run resumes), a live one refuses the second trainer with one line naming it.
"""

from __future__ import annotations

import os
from pathlib import Path

from scatterdist.store import StoreLock, StoreLockedError, live_writer

LOCK_NAME = "train.lock"


class RunLockedError(RuntimeError):
    """Another live trainer holds the run directory."""


class RunDirError(RuntimeError):
    """The run directory (``--out``) names something that is not a directory."""


class RunLock:
    """Exclusive lock of a run directory (created if missing) for the life of one training run."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.run_dir = Path(os.path.realpath(os.fspath(run_dir)))
        self._name = self.run_dir / Path(LOCK_NAME).stem  # StoreLock(X) locks X.lock: RUN_DIR/train.lock
        self._lock = StoreLock(self._name)
        self.path = Path(self._lock.path)

    def acquire(self) -> None:
        """Take the lock or raise :class:`RunLockedError` naming the trainer that holds it
        (:class:`RunDirError` when the run directory is an existing file)."""
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise RunDirError(f"the run directory {self.run_dir} is a file, not a directory: "
                              "choose another --out (a new or existing run directory)")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire()
        except StoreLockedError:
            owner = live_writer(self._name) or {}
            raise RunLockedError(
                f"run directory {self.run_dir} is in use by another trainer (pid {owner.get('pid', '?')} on host "
                f"{owner.get('host', '?')} since {owner.get('time', '?')}, lock file {self.path}); wait for it to "
                "finish or choose another --out"
            ) from None

    def release(self) -> None:
        self._lock.release()

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
