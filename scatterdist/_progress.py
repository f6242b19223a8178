"""When to draw a progress bar: on a terminal (or in a Jupyter kernel), not in logs and pipes.

A tqdm bar written to a file or a pipe leaves carriage-return fragments such as
``evaluate:   0%|`` in the log. Every long-running part of scatterdist decides through
:func:`show_progress`:

1. ``progress=False`` (e.g. ``--no-progress``) or the environment variable
   ``SCATTERDIST_PROGRESS=0`` (also ``false``, ``no``, ``off``): never. Disabling wins.
2. ``progress=True`` or ``SCATTERDIST_PROGRESS=1`` (also ``true``, ``yes``, ``on``): always.
3. otherwise (``progress=None``, the default): only when the bar's stream is a terminal
   (``stream.isatty()``), or when running inside a Jupyter kernel (tqdm draws a widget there).

:func:`progress_bar` wraps ``tqdm.auto.tqdm`` with that decision (bars go to stderr).
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Iterable
from typing import Any, TextIO

__all__ = ["ENV_VAR", "show_progress", "progress_bar"]

#: Environment variable that forces (``1``) or disables (``0``) every progress bar.
ENV_VAR = "SCATTERDIST_PROGRESS"
_ON = frozenset({"1", "true", "yes", "on"})
_OFF = frozenset({"0", "false", "no", "off"})


def _env_setting() -> bool | None:
    raw = os.environ.get(ENV_VAR)
    if raw is None or raw.strip() == "":
        return None
    value = raw.strip().lower()
    if value in _ON:
        return True
    if value in _OFF:
        return False
    warnings.warn(
        f"{ENV_VAR}={raw!r} is neither 1 nor 0 (nor true/false, yes/no, on/off): ignored, "
        "progress bars are shown on terminals only",
        RuntimeWarning,
        stacklevel=3,
    )
    return None


def _in_jupyter_kernel() -> bool:
    if "ipykernel" not in sys.modules:
        return False
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - ipykernel implies IPython
        return False
    shell = get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def show_progress(progress: bool | None = None, stream: TextIO | None = None) -> bool:
    """Whether a progress bar written to ``stream`` (default ``sys.stderr``) should be drawn.

    ``progress``: ``False`` never, ``True`` always (unless ``SCATTERDIST_PROGRESS=0``),
    ``None`` automatic (terminal or Jupyter only). See the module docstring for the rules.
    """
    env = _env_setting()
    if progress is False or env is False:
        return False
    if progress is True or env is True:
        return True
    stream = sys.stderr if stream is None else stream
    try:
        tty = bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        tty = False
    return tty or _in_jupyter_kernel()


def progress_bar(iterable: Iterable | None = None, *, progress: bool | None = None, file: TextIO | None = None,
                 **kwargs: Any):
    """``tqdm.auto.tqdm(iterable, **kwargs)`` on ``file`` (default stderr), drawn only if :func:`show_progress`."""
    from tqdm.auto import tqdm

    file = sys.stderr if file is None else file
    return tqdm(iterable, file=file, disable=not show_progress(progress, file), **kwargs)
