"""The writer lock ``PATH.lock`` of a store."""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import socket
from collections.abc import Iterator
from typing import Any

from scatterdist.store.errors import StoreLockedError

def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class StoreLock:
    """Exclusive writer lock ``PATH.lock`` (``O_CREAT | O_EXCL``) holding ``{pid, host, time}``.

    A lock whose pid is dead on this same host is stale and is taken over; a lock held by a
    live process, or by another host, raises :class:`StoreLockedError`.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.store = os.path.abspath(os.fspath(path)).rstrip(os.sep)
        self.path = self.store + ".lock"
        self.held = False

    def _owner(self) -> dict[str, Any] | None:
        try:
            with open(self.path, encoding="utf-8") as fh:
                return json.load(fh)
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, UnicodeDecodeError):
            return {}  # being written right now, or garbage: treat as held

    def acquire(self) -> None:
        """Take the lock or raise :class:`StoreLockedError`."""
        me = {"pid": os.getpid(), "host": socket.gethostname(),
              "time": _dt.datetime.now(_dt.timezone.utc).isoformat()}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if owner is None:
                    continue  # released in between: try again
                same_host = owner.get("host") == me["host"]
                pid = owner.get("pid")
                if same_host and isinstance(pid, int) and not _pid_alive(pid):
                    # Stale: move it aside atomically so only one taker wins, then retry.
                    stale = f"{self.path}.stale-{os.getpid()}"
                    with contextlib.suppress(FileNotFoundError):
                        os.rename(self.path, stale)
                        os.unlink(stale)
                    continue
                raise StoreLockedError(
                    f"store {self.store} is being written by pid {pid} on host "
                    f"{owner.get('host')} since {owner.get('time')} (lock file {self.path}); "
                    "wait for it to finish, or delete the lock file if that process is gone"
                ) from None
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(me, fh)
            self.held = True
            return
        raise StoreLockedError(f"could not take the lock {self.path}: it keeps changing owner")

    def release(self) -> None:
        """Remove the lock file if this object holds it."""
        if self.held:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            self.held = False

    def __enter__(self) -> StoreLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextlib.contextmanager
def locked(path: str | os.PathLike) -> Iterator[StoreLock]:
    """Context manager holding :class:`StoreLock` on ``path``."""
    with StoreLock(path) as lock:
        yield lock
